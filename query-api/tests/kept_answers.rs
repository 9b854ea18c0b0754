//! The answer cache (`query_api::answers`) against the reference model: a
//! random fleet keeps changing through the worker's write path (new
//! readings, late and out-of-order ones landing inside hours already
//! summarised and already answered, duplicates, readings stamped ahead of
//! the window's end, register devices whose late readings split an
//! interval, assignments that arrive late and move a vehicle's meter, and
//! meters taken by another vehicle) while the same vehicles are asked
//! again and again for sliding windows, some of whose readings leave and
//! enter between two asks. Every answer equals the in-order replay
//! (`test_support::reference`), and the metrics show that answers were
//! kept, reused, and computed again when something changed.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use serde_json::Value;
use test_support::postgres::fresh_database;
use test_support::readings::{
    assignment, decode, meter, meter_register, vehicle, vehicle_register,
};
use test_support::reference::{assert_answers_charging, Model};

use common::Api;

const VEHICLES: [&str; 3] = ["EV-1", "EV-2", "EV-3"];
/// "EV-1" is EV-1's implicit meter until it is assigned elsewhere.
const METERS: [&str; 3] = ["EV-1", "MTR-2", "MTR-3"];

/// kWh in sixteenths, so that sums do not depend on their order.
fn kwh(rng: &mut fastrand::Rng) -> f64 {
    f64::from(rng.u32(1..=32)) / 16.0
}

/// A reading of device `index` of the vehicles (`is_vehicle`) or meters at
/// `at`; EV-3 and MTR-3 report registers, rising with the event time so
/// that a late reading splits the interval it lands in.
fn reading(
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

/// Whether the service counted `outcome` at least once (from `/metrics`).
async fn answers_counted(api: &Api, outcome: &str) -> f64 {
    let text = test_support::http::scrape(&api.url).await;
    let prefix = format!("energy_query_answers_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn kept_answers_equal_an_in_order_replay_while_the_data_changes() {
    let db = fresh_database().await;
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let now = Utc::now();
    let now = now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let origin = now - TimeDelta::hours(3);
    let width = TimeDelta::hours(2);
    let api = Api::start(&db).await;

    // Every device reports each minute of the first 100 minutes, some
    // minutes skipped, to be sent late below.
    let mut sent: Vec<Value> = vec![
        assignment("EV-2", Some("MTR-2"), origin - TimeDelta::hours(1)),
        assignment("EV-3", Some("MTR-3"), origin - TimeDelta::hours(1)),
    ];
    let mut held_back = Vec::new();
    for minute in 0..100 {
        let at = origin + TimeDelta::minutes(minute);
        for is_vehicle in [true, false] {
            for index in 0..3 {
                let message = reading(&mut rng, is_vehicle, index, at, origin);
                if rng.u8(0..10) == 0 {
                    held_back.push(message);
                } else {
                    sent.push(message);
                }
            }
        }
    }
    store(&db.pool, &sent).await;

    // Each round: some windows are asked twice (the second from the cache,
    // or computed again if a reading crossed an edge), then the data changes.
    let mut end = origin + TimeDelta::minutes(125);
    for round in 0..14 {
        let model = Model::new(&sent);
        for _ in 0..3 {
            for id in VEHICLES {
                ask(&api, &model, id, end - width, end, seed, round).await;
            }
            // Less than a minute: sometimes no reading crosses an edge.
            end += TimeDelta::seconds(rng.i64(5..40));
        }
        let mut batch = Vec::new();
        let late = held_back.len().min(rng.usize(1..8));
        batch.extend(held_back.drain(..late));
        match round % 5 {
            // New readings at the end, one stamped ahead of the windows asked.
            0 => {
                for is_vehicle in [true, false] {
                    for index in 0..3 {
                        let at = end + TimeDelta::seconds(rng.i64(1..90));
                        batch.push(reading(&mut rng, is_vehicle, index, at, origin));
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
                batch.push(reading(&mut rng, is_vehicle, index, at, origin));
            }
        }
        store(&db.pool, &batch).await;
        sent.extend(batch);
    }
    let model = Model::new(&sent);
    for id in VEHICLES {
        ask(&api, &model, id, end - width, end, seed, 99).await;
    }

    // A meter taken by another vehicle, and nothing else written: only the
    // meter's assignment revision tells EV-1's kept answer that its span
    // with the meter ended. (Later than every assignment above.)
    for change in [
        assignment("EV-1", Some("MTR-3"), origin + TimeDelta::minutes(111)),
        assignment("EV-2", Some("MTR-3"), origin + TimeDelta::minutes(118)),
    ] {
        store(&db.pool, std::slice::from_ref(&change)).await;
        sent.push(change);
        let model = Model::new(&sent);
        ask(&api, &model, "EV-1", end - width, end, seed, 100).await;
        ask(&api, &model, "EV-1", end - width, end, seed, 100).await;
    }

    for outcome in ["computed", "kept", "changed"] {
        assert!(
            answers_counted(&api, outcome).await > 0.0,
            "seed {seed}: no answer was {outcome}"
        );
    }
    api.stop().await;
}

async fn store(pool: &sqlx::PgPool, messages: &[Value]) {
    let readings: Vec<_> = messages.iter().map(decode).collect();
    write_batch(pool, &readings).await.expect("write readings");
}

async fn ask(
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
