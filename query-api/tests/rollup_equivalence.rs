//! The service's sums equal the same computation over raw history (to
//! 1e-9, relative), for random fleets: many devices, irregular and very
//! frequent reporting, duplicates with other values, out-of-order and late
//! readings (arriving after their hour was rolled up, or their bucket
//! summarised in the worker's per-vehicle figures), reassignments mid-hour
//! and on whole hours, assignments arriving late, ends of assignment, ties,
//! and windows that start and end mid-hour, on whole hours, and exactly on
//! readings. Both ways the service computes a window are compared: the
//! rollup statement (the pieces), and the per-vehicle figures with their
//! fallbacks, for one vehicle and for the fleet view.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use query_api::fleet::{fleet_sums, FleetRow};
use query_api::params::Window;
use query_api::performance::{self, window_sums};
use query_api::sql::Sources;
use serde_json::Value;
use shared::domain::DeviceId;
use sqlx::PgPool;
use test_support::oracle::{self, figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::{fresh_database, fresh_database_collated, TestDatabase};
use test_support::readings::{assignment, decode, meter, vehicle};

use common::changing_fleet::seeded_now;

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

/// A random fleet's messages, in the batches the worker stores them in.
struct RandomFleet {
    vehicles: Vec<String>,
    /// Four fifths of the messages, shuffled.
    first: Vec<Vec<Value>>,
    /// Duplicates of earlier readings with other values (the first stored
    /// must win), then the last fifth: readings and assignments late into
    /// hours already rolled up or summarised.
    late: Vec<Vec<Value>>,
}

/// Ten vehicles (one reporting every second) and twelve meters (six named
/// like vehicles, which pair implicitly until assignments say otherwise)
/// over `hours` from `origin`.
fn random_fleet(
    rng: &mut fastrand::Rng,
    names: &Names,
    origin: DateTime<Utc>,
    hours: i64,
) -> RandomFleet {
    let vehicles: Vec<String> = (0..10).map(names.vehicle).collect();
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
                instant(rng, origin, hours)
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
                instant(rng, origin, hours),
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
            instant(rng, origin, hours),
        ));
    }
    // A tie: one meter assigned to two vehicles at the same instant.
    let tie_at = instant(rng, origin, hours);
    let tied_meter = (names.meter)(5);
    messages.push(assignment(&vehicles[7], Some(&tied_meter), tie_at));
    messages.push(assignment(&vehicles[8], Some(&tied_meter), tie_at));
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
    let late = messages.split_off(messages.len() * 4 / 5);
    RandomFleet {
        vehicles,
        first: messages.chunks(700).map(<[Value]>::to_vec).collect(),
        late: std::iter::once(duplicates)
            .chain(late.chunks(500).map(<[Value]>::to_vec))
            .collect(),
    }
}

/// Stores `batches` through the worker's write path, one transaction each.
async fn store(pool: &PgPool, batches: &[Vec<Value>]) {
    for batch in batches {
        let readings: Vec<_> = batch.iter().map(decode).collect();
        write_batch(pool, &readings).await.unwrap();
    }
}

/// Forty windows in the data: the whole of it, a few hours, five that
/// start and end exactly on stored readings, and random ones.
async fn random_windows(
    pool: &PgPool,
    rng: &mut fastrand::Rng,
    origin: DateTime<Utc>,
    hours: i64,
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut windows = vec![
        (origin, origin + TimeDelta::hours(hours)),
        (origin + TimeDelta::hours(2), origin + TimeDelta::hours(5)),
    ];
    let stored: Vec<DateTime<Utc>> =
        sqlx::query_scalar("SELECT recorded_at FROM meter_readings ORDER BY random() LIMIT 10")
            .fetch_all(pool)
            .await
            .unwrap();
    windows.extend(
        stored
            .chunks(2)
            .filter(|p| p.len() == 2)
            .map(|p| (p[0].min(p[1]), p[0].max(p[1]))),
    );
    while windows.len() < 40 {
        let (a, b) = (instant(rng, origin, hours), instant(rng, origin, hours));
        if a != b {
            windows.push((a.min(b), a.max(b)));
        }
    }
    windows
}

/// The raw computation of `vehicle` over `(from, to]`.
async fn raw(
    pool: &PgPool,
    vehicle: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> oracle::Figures {
    figures(pool, RAW_PERFORMANCE_SQL, vehicle, from, to).await
}

/// Asserts `computed` equals `raw`: counts and meters exactly, sums and
/// the average to 1e-9.
fn assert_equal(computed: &oracle::Figures, raw: &oracle::Figures, context: &str) {
    let context = format!("{context}: computed {computed:?} vs raw {raw:?}");
    assert_eq!(
        (computed.vehicle_readings, computed.meter_readings),
        (raw.vehicle_readings, raw.meter_readings),
        "{context}"
    );
    assert!(
        close(computed.sum_dc, raw.sum_dc) && close(computed.sum_ac, raw.sum_ac),
        "{context}"
    );
    match (computed.avg_battery_temp, raw.avg_battery_temp) {
        (Some(a), Some(b)) => assert!(close(a, b), "{context}"),
        (a, b) => assert_eq!(a, b, "{context}"),
    }
    assert_eq!(computed.meter_ids, raw.meter_ids, "{context}");
}

async fn compare_on_a_random_fleet(db: TestDatabase, names: Names) {
    let (seed, mut rng, now) = seeded_now();
    let hours = 10;
    let origin = now - TimeDelta::hours(30);
    let fleet = random_fleet(&mut rng, &names, origin, hours);
    store(&db.pool, &fleet.first).await;
    store(&db.pool, &fleet.late).await;

    let mut compared = 0;
    let mut nonzero = BTreeSet::new();
    for (from, to) in random_windows(&db.pool, &mut rng, origin, hours).await {
        let service_sql = performance::sql(&Sources::for_window(from, to));
        for id in &fleet.vehicles {
            let rolled = figures(&db.pool, &service_sql, id, from, to).await;
            let raw = raw(&db.pool, id, from, to).await;
            assert_equal(
                &rolled,
                &raw,
                &format!("seed {seed}, vehicle {id}, window ({from}, {to}]"),
            );
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

/// When the figures test compares: the order of its moments.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// One late vehicle reading stored, before any pass.
    OneLateReading,
    /// The rest of the late data stored, before any pass.
    RestOfTheLateData,
    /// The next pass has run.
    AfterTheNextPass,
}

/// The answers read from the worker's per-vehicle figures, and their
/// fallbacks, equal the raw computation: a random fleet is stored and
/// summarised, then its late fifth arrives (late readings in summarised
/// buckets, duplicates, late assignments that change who owned past
/// buckets). Every window of every vehicle, and the fleet view of every
/// window, is compared after one late reading of one vehicle (its mark
/// sends that vehicle's windows over it to the pieces, the others' stay
/// with the figures), after the rest (before the next pass: the marks send
/// what changed to the pieces or to the spans statement) and after the
/// next pass (the figures hold every change); each way of computing them
/// is seen to answer.
#[tokio::test(flavor = "multi_thread")]
async fn figures_answers_equal_raw_computation_on_random_fleets() {
    let db = fresh_database().await;
    let names = Names {
        vehicle: |i| format!("V{i}"),
        meter: |i| format!("M{i}"),
    };
    let (seed, mut rng, now) = seeded_now();
    let hours = 5;
    // The data ends an hour ago; the figures keep the last eight hours.
    let origin = now - TimeDelta::hours(hours + 1);
    let keep = TimeDelta::hours(8);
    let mut fleet = random_fleet(&mut rng, &names, origin, hours);
    store(&db.pool, &fleet.first).await;
    ingest_worker::figures::catch_up(&db.pool, now, keep)
        .await
        .unwrap();
    let mut windows = random_windows(&db.pool, &mut rng, origin, hours).await;
    // Windows ending in the hour after the data (an empty tail), and
    // beyond the hour of raw tail the figures' statement reads.
    windows.push((
        origin + TimeDelta::hours(1),
        origin + TimeDelta::hours(hours) + TimeDelta::minutes(30),
    ));
    windows.push((origin + TimeDelta::hours(2), now));
    let lone = {
        let batch = fleet.late.last_mut().unwrap();
        let at = batch
            .iter()
            .position(|message| message["type"] == "VEHICLE")
            .expect("a late vehicle reading");
        batch.remove(at)
    };

    let mut counted = Vec::new();
    for moment in [
        Moment::OneLateReading,
        Moment::RestOfTheLateData,
        Moment::AfterTheNextPass,
    ] {
        match moment {
            Moment::OneLateReading => store(&db.pool, &[vec![lone.clone()]]).await,
            Moment::RestOfTheLateData => store(&db.pool, &fleet.late).await,
            Moment::AfterTheNextPass => {
                ingest_worker::figures::catch_up(&db.pool, now, keep)
                    .await
                    .unwrap();
            }
        }
        let mut by: BTreeMap<String, usize> = BTreeMap::new();
        for &(from, to) in &windows {
            let window = Window { from, to };
            let context =
                |what: &str| format!("seed {seed}, {moment:?}, {what}, window ({from}, {to}]");
            let mut reported = BTreeMap::new();
            for id in &fleet.vehicles {
                let raw = raw(&db.pool, id, from, to).await;
                let vehicle = DeviceId::parse(id).unwrap();
                let (computed_by, sums) = window_sums(&db.pool, &vehicle, window).await.unwrap();
                *by.entry(format!("{computed_by:?}")).or_default() += 1;
                let computed = oracle::Figures {
                    vehicle_readings: sums.vehicle_readings,
                    sum_dc: sums.sum_dc,
                    avg_battery_temp: sums.avg_battery_temp,
                    meter_readings: sums.meter_readings,
                    sum_ac: sums.sum_ac,
                    meter_ids: sums.meter_ids,
                };
                assert_equal(
                    &computed,
                    &raw,
                    &context(&format!("vehicle {id} by {computed_by:?}")),
                );
                if raw.vehicle_readings > 0 {
                    reported.insert(id.clone(), raw);
                }
            }
            let fleet_view = fleet_sums(&db.pool, &Sources::for_window(from, to), window)
                .await
                .unwrap();
            *by.entry("fleet rows from figures".into()).or_default() +=
                fleet_view.from_figures.len();
            *by.entry("fleet rows from pieces".into()).or_default() += fleet_view.from_pieces.len();
            let rows: Vec<&FleetRow> = fleet_view
                .from_figures
                .iter()
                .chain(&fleet_view.from_pieces)
                .collect();
            assert_eq!(
                rows.iter()
                    .map(|row| row.vehicle_id.clone())
                    .collect::<BTreeSet<_>>(),
                reported.keys().cloned().collect::<BTreeSet<_>>(),
                "{}",
                context("the fleet view's vehicles")
            );
            assert_eq!(
                rows.len(),
                reported.len(),
                "{}",
                context("a vehicle listed twice")
            );
            for row in rows {
                let raw = &reported[&row.vehicle_id];
                let computed = oracle::Figures {
                    vehicle_readings: row.vehicle_readings,
                    sum_dc: row.sum_dc,
                    avg_battery_temp: Some(row.avg_battery_temp),
                    meter_readings: row.meter_readings,
                    sum_ac: row.sum_ac,
                    meter_ids: raw.meter_ids.clone(),
                };
                assert_equal(
                    &computed,
                    raw,
                    &context(&format!("the fleet view of {}", row.vehicle_id)),
                );
            }
        }
        eprintln!("{moment:?}: {by:?}");
        counted.push(by);
    }
    // Each way of computing answered: around one vehicle's mark, the
    // figures for the others and the pieces for it; with the late data
    // stored, the pieces for most; after the pass, the figures again, the
    // edges' meters read from them or resolved from the spans.
    let count = |moment: Moment, key: &str| counted[moment as usize].get(key).copied().unwrap_or(0);
    for (moment, key) in [
        (Moment::OneLateReading, "Figures"),
        (Moment::OneLateReading, "Pieces"),
        (Moment::OneLateReading, "fleet rows from figures"),
        (Moment::OneLateReading, "fleet rows from pieces"),
        (Moment::RestOfTheLateData, "Pieces"),
        (Moment::AfterTheNextPass, "Figures"),
        (Moment::AfterTheNextPass, "FiguresSpans"),
        (Moment::AfterTheNextPass, "fleet rows from figures"),
    ] {
        assert!(count(moment, key) > 0, "{key} at {moment:?}: {counted:?}");
    }
}
