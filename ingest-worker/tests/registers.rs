//! Register readings through `write_batch` against a real PostgreSQL: every
//! stored interval, jump flag, rollup bucket (both levels) and current state
//! equals an in-order replay of what was sent (`test_support::reference`),
//! whatever the order, batching, duplication and concurrency of the writes.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::{write_batch, write_batch_with};
use serde_json::Value;
use shared::register::RegisterRules;
use test_support::postgres::{ensure_partitions, fresh_database, TestDatabase};
use test_support::readings::{decode, meter, meter_register, vehicle_register};
use test_support::reference::{Model, Stored};

fn t(minutes: f64) -> DateTime<Utc> {
    "2026-02-10T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        + TimeDelta::microseconds((minutes * 60e6) as i64)
}

async fn database() -> TestDatabase {
    let db = fresh_database().await;
    ensure_partitions(
        &db.pool,
        t(-24.0 * 60.0).date_naive(),
        t(24.0 * 60.0).date_naive(),
    )
    .await;
    db
}

async fn write(db: &TestDatabase, messages: &[Value]) -> ingest_worker::store::BatchOutcome {
    let readings: Vec<_> = messages.iter().map(decode).collect();
    write_batch(&db.pool, &readings).await.unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A stored history row: device, time, energy, register, jump flag.
type StoredRow = (String, DateTime<Utc>, f64, Option<f64>, bool);

type Buckets = BTreeMap<(String, DateTime<Utc>), (i64, f64)>;

/// (readings, energy) per device and bucket of `width`, from the model.
fn model_buckets(readings: &BTreeMap<String, Vec<Stored>>, width: TimeDelta) -> Buckets {
    let width = width.num_microseconds().unwrap();
    let mut buckets = Buckets::new();
    for (id, stored) in readings {
        for reading in stored {
            let micros = reading.at.timestamp_micros();
            let end = (micros - 1).div_euclid(width) * width + width;
            let bucket = buckets
                .entry((id.clone(), DateTime::from_timestamp_micros(end).unwrap()))
                .or_default();
            bucket.0 += 1;
            bucket.1 += reading.energy;
        }
    }
    buckets
}

/// Asserts the database holds what an in-order replay of `sent` gives:
/// every reading's energy and jump flag, every rollup bucket, current state.
async fn assert_as_replayed(db: &TestDatabase, sent: &[Value]) {
    let model = Model::new(sent);
    for (history, device, energy, register, readings, rollups) in [
        (
            "vehicle_readings",
            "vehicle_id",
            "kwh_delivered_dc",
            "kwh_register_dc",
            model.vehicle_readings(),
            [
                ("vehicle_hourly", "hour_end", "sum_dc", 60),
                ("vehicle_5min", "bucket_end", "sum_dc", 5),
            ],
        ),
        (
            "meter_readings",
            "meter_id",
            "kwh_consumed_ac",
            "kwh_register_ac",
            model.meter_readings(),
            [
                ("meter_hourly", "hour_end", "sum_ac", 60),
                ("meter_5min", "bucket_end", "sum_ac", 5),
            ],
        ),
    ] {
        let rows: Vec<StoredRow> = sqlx::query_as(&format!(
            "SELECT {device}, recorded_at, {energy}, {register}, register_jump FROM {history}
             ORDER BY {device} COLLATE \"C\", recorded_at"
        ))
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let want: Vec<(&String, &Stored)> = readings
            .iter()
            .flat_map(|(id, stored)| stored.iter().map(move |s| (id, s)))
            .collect();
        assert_eq!(rows.len(), want.len(), "{history} rows");
        for (row, (id, reading)) in rows.iter().zip(&want) {
            assert_eq!((&row.0, row.1), (*id, reading.at), "{history}");
            assert!(
                close(row.2, reading.energy) && row.3 == reading.register && row.4 == reading.jump,
                "{history} {id} at {}: stored {row:?}, replayed {reading:?}",
                reading.at
            );
        }
        for (table, end, sum, minutes) in rollups {
            let stored: Vec<(String, DateTime<Utc>, i64, f64)> = sqlx::query_as(&format!(
                "SELECT {device}, {end}, readings, {sum} FROM {table}"
            ))
            .fetch_all(&db.pool)
            .await
            .unwrap();
            let stored: Buckets = stored
                .into_iter()
                .map(|(id, at, n, e)| ((id, at), (n, e)))
                .collect();
            let want = model_buckets(readings, TimeDelta::minutes(minutes));
            assert_eq!(
                stored.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{table} buckets"
            );
            for (key, (n, energy)) in &want {
                let (stored_n, stored_energy) = stored[key];
                assert!(
                    stored_n == *n && close(stored_energy, *energy),
                    "{table} {key:?}: stored ({stored_n}, {stored_energy}), replayed ({n}, {energy})"
                );
            }
        }
    }
    for (current, device, energy, register, ids, current_of) in [
        (
            "vehicles_current",
            "vehicle_id",
            "kwh_delivered_dc",
            "kwh_register_dc",
            model.vehicle_ids().map(str::to_owned).collect::<Vec<_>>(),
            Model::current_vehicle as fn(&Model, &str) -> _,
        ),
        (
            "meters_current",
            "meter_id",
            "kwh_consumed_ac",
            "kwh_register_ac",
            model.meter_ids().map(str::to_owned).collect(),
            Model::current_meter,
        ),
    ] {
        for id in ids {
            let want = current_of(&model, &id).unwrap();
            let got: (DateTime<Utc>, f64, Option<f64>, i64, Option<DateTime<Utc>>) =
                sqlx::query_as(&format!(
                "SELECT recorded_at, {energy}, {register}, register_jumps, last_register_jump_at
                 FROM {current} WHERE {device} = $1"
            ))
                .bind(&id)
                .fetch_one(&db.pool)
                .await
                .unwrap();
            assert!(
                got.0 == want.at
                    && close(got.1, want.energy)
                    && got.2 == want.register
                    && got.3 == want.register_jumps
                    && got.4 == want.last_register_jump_at,
                "{current} {id}: {got:?} vs {want:?}"
            );
        }
    }
}

/// DOMAIN.md's example: registers with a reboot, then a reading arriving
/// late that splits an interval already stored and rolled up.
#[tokio::test]
async fn a_late_reading_splits_the_interval_it_lands_in() {
    let db = database().await;
    let reading = |m: f64, register: f64| meter_register("M", t(m), register, 230.0);
    let mut sent: Vec<Value> = [
        (1.0, 100.0),
        (2.0, 100.5),
        (3.0, 101.25),
        (4.0, 0.5),
        (5.0, 1.0),
    ]
    .into_iter()
    .map(|(m, r)| reading(m, r))
    .collect();
    write(&db, &sent).await;
    let window = |from: f64, to: f64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, f64>(
                "SELECT coalesce(sum(kwh_consumed_ac), 0) FROM meter_readings WHERE recorded_at > $1 AND recorded_at <= $2",
            )
            .bind(t(from))
            .bind(t(to))
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(window(1.0, 5.0).await, 2.25);
    assert_eq!(window(2.0, 2.75).await, 0.0);
    assert_as_replayed(&db, &sent).await;

    let late = reading(2.5, 100.75);
    write(&db, std::slice::from_ref(&late)).await;
    sent.push(late);
    assert_eq!(window(1.0, 5.0).await, 2.25);
    assert_eq!(window(2.0, 2.75).await, 0.25);
    assert_as_replayed(&db, &sent).await;
}

/// Readings of many register devices in random order and batches, with
/// duplicates of other values, then a re-read of a batch of which a part
/// was committed (the first group's transaction, not the second's).
#[tokio::test]
async fn random_order_batches_and_a_partly_committed_re_read_equal_a_replay() {
    let db = database().await;
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sent = Vec::new();
    for device in 0..12 {
        let id = format!("D-{device}");
        let mut register = 1_000.0 * rng.f64();
        let mut at = 0.0;
        for _ in 0..rng.usize(20..80) {
            at += 0.2 + 3.0 * rng.f64();
            match rng.u8(0..50) {
                0 => register = rng.f64(),
                1 => register += 500.0,
                2 => register -= 0.0005,
                _ => register += 0.5 * rng.f64(),
            }
            sent.push(if device % 2 == 0 {
                meter_register(&id, t(at), register, 230.0)
            } else {
                vehicle_register(&id, t(at), 50.0, register, 20.0)
            });
        }
    }
    rng.shuffle(&mut sent);
    let mut stored = Vec::new();
    let mut rest = sent.as_slice();
    while !rest.is_empty() {
        let (batch, tail) = rest.split_at(rng.usize(1..=rest.len().min(60)));
        write(&db, batch).await;
        stored.extend_from_slice(batch);
        rest = tail;
    }
    assert_as_replayed(&db, &stored).await;

    // A batch re-read after a crash: its first half was committed.
    let at_end = 400.0;
    let batch: Vec<Value> = (0..40)
        .map(|i| {
            let id = format!("D-{}", i % 12);
            let at = t(at_end + f64::from(i) * 0.1);
            if i % 12 % 2 == 0 {
                meter_register(&id, at, 5_000.0 + f64::from(i), 230.0)
            } else {
                vehicle_register(&id, at, 50.0, 5_000.0 + f64::from(i), 20.0)
            }
        })
        .collect();
    write(&db, &batch[..20]).await;
    let outcome = write(&db, &batch).await;
    assert_eq!(outcome.duplicates, 20);
    stored.extend(batch);
    assert_as_replayed(&db, &stored).await;
    // A duplicate with another register changes nothing.
    let mut copy = stored[0].clone();
    for field in ["kwhRegisterAc", "kwhRegisterDc"] {
        if copy.get(field).is_some() {
            copy[field] = Value::from(1.0);
        }
    }
    assert_eq!(write(&db, &[copy]).await.duplicates, 1);
    assert_as_replayed(&db, &stored).await;
}

/// Two transactions holding readings of the same devices at once (the
/// devices were published to two partitions): each derives after the
/// other's commit, so nothing is derived from a stale neighbour.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_transactions_on_the_same_devices_derive_in_turn() {
    let db = database().await;
    let mut sent = Vec::new();
    for round in 0..30 {
        let mut batches: [Vec<Value>; 2] = [Vec::new(), Vec::new()];
        for device in 0..20 {
            for step in 0..4 {
                let minute = f64::from(round * 4 + step);
                let register = 100.0 * f64::from(device) + minute / 8.0;
                batches[(step % 2) as usize].push(vehicle_register(
                    &format!("V-{device}"),
                    t(minute),
                    50.0,
                    register,
                    20.0,
                ));
            }
        }
        let decode_all = |batch: &[Value]| batch.iter().map(decode).collect::<Vec<_>>();
        let (left, right) = (decode_all(&batches[0]), decode_all(&batches[1]));
        let (a, b) = tokio::join!(write_batch(&db.pool, &left), write_batch(&db.pool, &right));
        a.unwrap();
        b.unwrap();
        sent.extend(batches.into_iter().flatten());
    }
    assert_as_replayed(&db, &sent).await;
}

/// Implausible rises are not counted but flagged and counted in current
/// state; a reading arriving late that explains one lifts the flag.
/// Devices switching between interval readings and registers count each
/// interval once.
#[tokio::test]
async fn jumps_are_flagged_and_switching_forms_counts_each_interval_once() {
    let db = database().await;
    let mut sent = vec![
        meter_register("J", t(0.0), 10.0, 230.0),
        // 20 kWh in a minute: more than 1 MW.
        meter_register("J", t(1.0), 30.0, 230.0),
        meter_register("J", t(2.0), 30.5, 230.0),
    ];
    let outcome = write(&db, &sent).await;
    assert_eq!(outcome.register_jumps, 1);
    assert_as_replayed(&db, &sent).await;
    // An interval reading between them: the register after it starts anew.
    let late = meter("J", t(0.5), 0.25, 230.0);
    assert_eq!(
        write(&db, std::slice::from_ref(&late)).await.register_jumps,
        0
    );
    sent.push(late);
    assert_as_replayed(&db, &sent).await;
    let jumps: i64 =
        sqlx::query_scalar("SELECT register_jumps FROM meters_current WHERE meter_id = 'J'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(jumps, 0, "the late reading lifted the flag");

    // Interval readings, then registers, then intervals again.
    let switching = vec![
        meter("S", t(0.0), 1.0, 230.0),
        meter("S", t(1.0), 1.0, 230.0),
        meter_register("S", t(2.0), 500.0, 230.0),
        meter_register("S", t(3.0), 501.0, 230.0),
        meter("S", t(4.0), 1.0, 230.0),
        meter_register("S", t(5.0), 502.0, 230.0),
    ];
    write(&db, &switching).await;
    sent.extend(switching);
    assert_as_replayed(&db, &sent).await;
    let total: f64 =
        sqlx::query_scalar("SELECT sum(kwh_consumed_ac) FROM meter_readings WHERE meter_id = 'S'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(total, 4.0, "1 + 1 + (baseline) + 1 + 1 + (baseline)");

    // A lower ceiling flags what the default counts.
    let strict = RegisterRules {
        max_kw: 10.0,
        ..RegisterRules::default()
    };
    let readings: Vec<_> = [
        meter_register("K", t(0.0), 1.0, 230.0),
        meter_register("K", t(1.0), 2.0, 230.0),
    ]
    .iter()
    .map(decode)
    .collect();
    assert_eq!(
        write_batch_with(&db.pool, strict, &readings)
            .await
            .unwrap()
            .register_jumps,
        1
    );
}
