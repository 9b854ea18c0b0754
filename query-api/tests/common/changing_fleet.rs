//! A small fleet that keeps changing through the worker's write path, and
//! the checks of its answers against the in-order replay
//! (`test_support::reference`), shared by the tests of the answer cache and
//! of the per-vehicle figures.

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use serde_json::Value;
use test_support::readings::{
    assignment, decode, meter, meter_register, vehicle, vehicle_register,
};
use test_support::reference::{assert_answers_charging, Model};

use super::Api;

pub const VEHICLES: [&str; 3] = ["EV-1", "EV-2", "EV-3"];
/// "EV-1" is EV-1's implicit meter until it is assigned elsewhere.
pub const METERS: [&str; 3] = ["EV-1", "MTR-2", "MTR-3"];

/// kWh in sixteenths, so that sums do not depend on their order.
pub fn kwh(rng: &mut fastrand::Rng) -> f64 {
    f64::from(rng.u32(1..=32)) / 16.0
}

/// A reading of device `index` of the vehicles (`is_vehicle`) or meters at
/// `at`; EV-3 and MTR-3 report registers, rising with the event time so
/// that a late reading splits the interval it lands in.
pub fn reading(
    rng: &mut fastrand::Rng,
    is_vehicle: bool,
    index: usize,
    at: DateTime<Utc>,
    origin: DateTime<Utc>,
) -> Value {
    let register = 100.0 + (at - origin).num_seconds() as f64 / 64.0;
    match (is_vehicle, index) {
        (true, 2) => vehicle_register(VEHICLES[2], at, 50.0, register, 30.0),
        (true, i) => vehicle(VEHICLES[i], at, 50.0, kwh(rng), f64::from(rng.u32(20..40))),
        (false, 2) => meter_register(METERS[2], at, register, 230.0),
        (false, i) => meter(METERS[i], at, kwh(rng), 230.0),
    }
}

/// A fresh seed (printed, so that a failure can be replayed), its
/// generator, and the time now in whole seconds.
pub fn seeded_now() -> (u64, fastrand::Rng, DateTime<Utc>) {
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let now = Utc::now();
    let now = now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    (seed, fastrand::Rng::with_seed(seed), now)
}

/// Whether the service counted `outcome` at least once (from `/metrics`).
pub async fn answers_counted(api: &Api, outcome: &str) -> f64 {
    let text = test_support::http::scrape(&api.url).await;
    test_support::http::sample(&text, "energy_query_answers_total", &[("outcome", outcome)])
        .unwrap_or(0.0)
}

/// Every device's reading of each minute of the first 100 after `origin`,
/// about one in ten held back (returned apart) to be sent late.
pub fn hundred_minutes(rng: &mut fastrand::Rng, origin: DateTime<Utc>) -> (Vec<Value>, Vec<Value>) {
    let (mut sent, mut held_back) = (Vec::new(), Vec::new());
    for minute in 0..100 {
        let at = origin + TimeDelta::minutes(minute);
        for is_vehicle in [true, false] {
            for index in 0..3 {
                let message = reading(rng, is_vehicle, index, at, origin);
                if rng.u8(0..10) == 0 {
                    held_back.push(message);
                } else {
                    sent.push(message);
                }
            }
        }
    }
    (sent, held_back)
}

/// One round's changes (`round` picks which): the next of the readings
/// held back, sent late, and one of: new readings at `end`, one stamped
/// ahead of it; a late assignment moving EV-1; a meter taken by another
/// vehicle; duplicates with other values; a late reading inside an hour
/// already summarised.
pub fn changes(
    rng: &mut fastrand::Rng,
    round: usize,
    end: DateTime<Utc>,
    origin: DateTime<Utc>,
    sent: &[Value],
    held_back: &mut Vec<Value>,
) -> Vec<Value> {
    let mut batch = Vec::new();
    let late = held_back.len().min(rng.usize(1..8));
    batch.extend(held_back.drain(..late));
    match round % 5 {
        // New readings at the end, one stamped ahead of the windows asked.
        0 => {
            for is_vehicle in [true, false] {
                for index in 0..3 {
                    let at = end + TimeDelta::seconds(rng.i64(1..90));
                    batch.push(reading(rng, is_vehicle, index, at, origin));
                }
            }
        }
        // A late assignment moves EV-1 to MTR-3 from some past minute.
        1 => batch.push(assignment(
            "EV-1",
            Some(METERS[rng.usize(1..3)]),
            origin + TimeDelta::minutes(rng.i64(10..110)),
        )),
        // EV-1's implicit meter, or MTR-2, is taken by another vehicle.
        2 => batch.push(assignment(
            VEHICLES[rng.usize(1..3)],
            Some(METERS[rng.usize(0..2)]),
            origin + TimeDelta::minutes(rng.i64(10..110)),
        )),
        // Duplicates of stored readings, with other values: the first counts.
        3 => {
            for _ in 0..4 {
                let mut again = sent[rng.usize(2..sent.len())].clone();
                if let Some(value) = again.get_mut("kwhDeliveredDc") {
                    *value = Value::from(99.0);
                }
                batch.push(again);
            }
        }
        // A late reading inside an hour already summarised and answered.
        _ => {
            let at = origin + TimeDelta::minutes(rng.i64(1..99)) + TimeDelta::seconds(30);
            let (is_vehicle, index) = (rng.bool(), rng.usize(0..3));
            batch.push(reading(rng, is_vehicle, index, at, origin));
        }
    }
    batch
}

pub async fn store(pool: &sqlx::PgPool, messages: &[Value]) {
    let readings: Vec<_> = messages.iter().map(decode).collect();
    write_batch(pool, &readings).await.expect("write readings");
}

pub async fn ask(
    api: &Api,
    model: &Model,
    id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seed: u64,
    round: usize,
) {
    let format = shared::wire::format_timestamp;
    let context = format!("seed {seed}, round {round}, {id} ({from}, {to}]");
    let want = model.charging(id, from, to);
    let (status, body) = api
        .get_with(
            &format!("/v1/analytics/performance/{id}"),
            &[("from", format(from)), ("to", format(to))],
        )
        .await;
    if want.vehicle_readings == 0 {
        assert_eq!(status, 404, "{context}: {body}");
        return;
    }
    assert_eq!(status, 200, "{context}: {body}");
    assert_answers_charging(&body, &want, &context);
    assert_eq!(
        body["meterIds"],
        serde_json::json!(want.meter_ids),
        "{context}"
    );
}

/// The fleet view of `(from, to]` against the replay: every vehicle that
/// reported in it, with its figures, and no other.
pub async fn ask_fleet(
    api: &Api,
    model: &Model,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seed: u64,
    round: usize,
) {
    let format = shared::wire::format_timestamp;
    let context = format!("seed {seed}, round {round}, fleet ({from}, {to}]");
    let (status, body) = api
        .get_with(
            "/v1/analytics/fleet",
            &[("from", format(from)), ("to", format(to))],
        )
        .await;
    assert_eq!(status, 200, "{context}: {body}");
    let listed = body["vehicles"].as_array().expect("vehicles");
    let mut reported = 0;
    for id in VEHICLES {
        let want = model.charging(id, from, to);
        let entry = listed.iter().find(|v| v["vehicleId"] == id);
        match entry {
            None => assert_eq!(want.vehicle_readings, 0, "{context}: {id} missing: {body}"),
            Some(entry) => {
                reported += 1;
                assert_answers_charging(entry, &want, &format!("{context}, {id}"));
            }
        }
    }
    assert_eq!(listed.len(), reported, "{context}: {body}");
}

/// Fleet-view vehicles the service answered from `source` (`/metrics`).
pub async fn fleet_vehicles_counted(api: &Api, source: &str) -> f64 {
    let text = test_support::http::scrape(&api.url).await;
    test_support::http::sample(
        &text,
        "energy_query_fleet_vehicles_total",
        &[("source", source)],
    )
    .unwrap_or(0.0)
}
