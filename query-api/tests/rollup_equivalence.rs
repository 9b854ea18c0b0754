//! The rollup-based performance query equals the same computation over raw
//! history, for random fleets: many devices, irregular and very frequent
//! reporting, duplicates with other values, out-of-order and late readings
//! (arriving after their hour was rolled up), reassignments mid-hour and on
//! whole hours, ends of assignment, ties, and windows that start and end
//! mid-hour, on whole hours, and exactly on readings.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use query_api::performance;
use query_api::sql::Sources;
use serde_json::Value;
use test_support::oracle::{figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::{fresh_database, fresh_database_collated, TestDatabase};
use test_support::readings::{assignment, decode, meter, vehicle};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// A random instant in the data range: sometimes exactly on a whole hour or
/// minute, usually anywhere down to the microsecond.
fn instant(rng: &mut fastrand::Rng, origin: DateTime<Utc>, hours: i64) -> DateTime<Utc> {
    match rng.u8(0..10) {
        0 => origin + TimeDelta::hours(rng.i64(0..=hours)),
        1 | 2 => origin + TimeDelta::minutes(rng.i64(0..=hours * 60)),
        _ => origin + TimeDelta::microseconds(rng.i64(0..=hours * 3_600_000_000)),
    }
}

/// How the fleet's devices are named.
struct Names {
    vehicle: fn(usize) -> String,
    meter: fn(usize) -> String,
}

#[tokio::test(flavor = "multi_thread")]
async fn rollup_query_equals_raw_computation_on_random_fleets() {
    let names = Names {
        vehicle: |i| format!("V{i}"),
        meter: |i| format!("M{i}"),
    };
    compare_on_a_random_fleet(fresh_database().await, names).await;
}

/// The same on a database whose collation is not C, with ids whose order
/// differs between it and byte order ("B-7" < "a-8" in bytes, not in en_US).
#[tokio::test(flavor = "multi_thread")]
async fn rollup_query_equals_raw_computation_under_another_collation() {
    let names = Names {
        vehicle: |i| {
            if i % 2 == 0 {
                format!("a-{i}")
            } else {
                format!("B-{i}")
            }
        },
        meter: |i| {
            if i % 2 == 0 {
                format!("m_{i}")
            } else {
                format!("M-{i}")
            }
        },
    };
    compare_on_a_random_fleet(fresh_database_collated().await, names).await;
}

async fn compare_on_a_random_fleet(db: TestDatabase, names: Names) {
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let hours = 10;
    let origin = {
        let start = Utc::now() - TimeDelta::hours(30);
        start - TimeDelta::nanoseconds(i64::from(start.timestamp_subsec_nanos()))
    };
    let vehicles: Vec<String> = (0..10).map(names.vehicle).collect();
    // Meters named like vehicles pair implicitly until assignments say otherwise.
    let meters: Vec<String> = (0..6)
        .map(names.vehicle)
        .chain((0..6).map(names.meter))
        .collect();

    let mut messages: Vec<Value> = Vec::new();
    for (i, id) in vehicles.iter().enumerate() {
        // One vehicle reports every second, the others irregularly.
        let count = if i == 0 { 3_000 } else { rng.usize(100..400) };
        for _ in 0..count {
            let at = if i == 0 {
                origin + TimeDelta::seconds(rng.i64(0..hours * 3600))
            } else {
                instant(&mut rng, origin, hours)
            };
            messages.push(vehicle(
                id,
                at,
                rng.f64() * 100.0,
                rng.f64() * 2.0,
                rng.f64() * 60.0 - 10.0,
            ));
        }
    }
    for id in &meters {
        for _ in 0..rng.usize(100..400) {
            messages.push(meter(
                id,
                instant(&mut rng, origin, hours),
                rng.f64() * 2.5,
                200.0 + rng.f64() * 50.0,
            ));
        }
    }
    for _ in 0..25 {
        let vehicle_id = &vehicles[rng.usize(0..vehicles.len())];
        let meter_id = (rng.u8(0..6) > 0).then(|| meters[rng.usize(0..meters.len())].as_str());
        messages.push(assignment(
            vehicle_id,
            meter_id,
            instant(&mut rng, origin, hours),
        ));
    }
    // A tie: one meter assigned to two vehicles at the same instant.
    let tie_at = instant(&mut rng, origin, hours);
    let tied_meter = (names.meter)(5);
    messages.push(assignment(&vehicles[7], Some(&tied_meter), tie_at));
    messages.push(assignment(&vehicles[8], Some(&tied_meter), tie_at));
    // Duplicates of earlier readings with other values (the first stored must win).
    let duplicates: Vec<Value> = (0..300)
        .map(|_| {
            let mut copy = messages[rng.usize(0..messages.len())].clone();
            for field in ["kwhDeliveredDc", "kwhConsumedAc"] {
                if copy.get(field).is_some() {
                    copy[field] = Value::from(99.0);
                }
            }
            copy
        })
        .collect();
    rng.shuffle(&mut messages);
    // Later batches bring duplicates and late readings into hours already rolled up.
    let late = messages.split_off(messages.len() * 4 / 5);
    let mut batches: Vec<Vec<Value>> = messages.chunks(700).map(<[Value]>::to_vec).collect();
    batches.push(duplicates);
    batches.extend(late.chunks(500).map(<[Value]>::to_vec));
    for batch in &batches {
        let readings: Vec<_> = batch.iter().map(decode).collect();
        write_batch(&db.pool, &readings).await.unwrap();
    }

    let mut windows = vec![
        (origin, origin + TimeDelta::hours(hours)),
        (origin + TimeDelta::hours(2), origin + TimeDelta::hours(5)),
    ];
    // Windows that start and end exactly on stored readings.
    let stored: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT recorded_at FROM meter_readings ORDER BY random() LIMIT 10")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    windows.extend(
        stored
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (p[0].min(p[1]), p[0].max(p[1]))),
    );
    while windows.len() < 40 {
        let (a, b) = (
            instant(&mut rng, origin, hours),
            instant(&mut rng, origin, hours),
        );
        if a != b {
            windows.push((a.min(b), a.max(b)));
        }
    }

    let mut compared = 0;
    let mut nonzero = BTreeSet::new();
    for (from, to) in windows {
        let service_sql = performance::sql(&Sources::for_window(from, to));
        for id in &vehicles {
            let rolled = figures(&db.pool, &service_sql, id, from, to).await;
            let raw = figures(&db.pool, RAW_PERFORMANCE_SQL, id, from, to).await;
            let context = format!("seed {seed}, vehicle {id}, window ({from}, {to}]: rollups {rolled:?} vs raw {raw:?}");
            assert_eq!(
                (rolled.vehicle_readings, rolled.meter_readings),
                (raw.vehicle_readings, raw.meter_readings),
                "{context}"
            );
            assert!(
                close(rolled.sum_dc, raw.sum_dc) && close(rolled.sum_ac, raw.sum_ac),
                "{context}"
            );
            match (rolled.avg_battery_temp, raw.avg_battery_temp) {
                (Some(a), Some(b)) => assert!(close(a, b), "{context}"),
                (a, b) => assert_eq!(a, b, "{context}"),
            }
            assert_eq!(rolled.meter_ids, raw.meter_ids, "{context}");
            if raw.meter_readings > 0 {
                nonzero.insert(id.clone());
            }
            compared += 1;
        }
    }
    assert_eq!(compared, 400);
    // The data exercised meters for most vehicles, not only empty results.
    assert!(nonzero.len() >= 5, "only {nonzero:?} had AC in any window");
}
