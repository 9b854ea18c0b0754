//! Register devices against the reference model: random fleets whose
//! meters and battery systems report cumulative registers (with resets,
//! replacements, jitter and implausible jumps, and a device switching form),
//! stored by the worker's write path in random batches, out of order, late
//! and duplicated, with reassignments mid-window, answer on every endpoint
//! what an in-order replay per device gives (`test_support::reference`):
//! the service's queries to 1e-9, and its HTTP answers to their rounding.

mod common;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use query_api::sql::Sources;
use query_api::{fleet, meters, performance, series};
use serde_json::Value;
use sqlx::Row;
use test_support::oracle::{answers_kwh, figures};
use test_support::postgres::fresh_database;
use test_support::readings::{
    assignment, decode, meter, meter_register, vehicle, vehicle_register,
};
use test_support::reference::{answers_hundredths, assert_answers_charging, Charging, Model};

use common::Api;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// How a device reports energy.
#[derive(Clone, Copy)]
enum Form {
    Interval,
    Register,
    /// Interval readings, then registers, then intervals again.
    Switching,
}

/// A device's readings in event-time order: from `origin`, 10 s to 4 min
/// apart (sometimes on a whole minute), registers with resets,
/// replacements, jitter and implausible rises.
fn device_readings(
    rng: &mut fastrand::Rng,
    origin: DateTime<Utc>,
    end: DateTime<Utc>,
    form: Form,
    mut reading: impl FnMut(&mut fastrand::Rng, DateTime<Utc>, Result<f64, f64>) -> Value,
) -> Vec<Value> {
    let mut at = origin + TimeDelta::seconds(rng.i64(0..600));
    let mut register = 20_000.0 * rng.f64();
    let mut readings = Vec::new();
    while at < end {
        let n = readings.len();
        let as_register = match form {
            Form::Interval => false,
            Form::Register => true,
            Form::Switching => (40..100).contains(&n),
        };
        let energy = if as_register {
            match rng.u8(0..100) {
                0..=1 => register = 0.3 * rng.f64(),
                2 => register += 50_000.0 + 1_000.0 * rng.f64(),
                3..=4 => register -= 0.0004,
                5 => register += 1_000.0,
                _ => register += 0.4 * rng.f64(),
            }
            Err(register)
        } else {
            Ok(0.4 * rng.f64())
        };
        readings.push(reading(rng, at, energy));
        let previous = at;
        at += TimeDelta::milliseconds(rng.i64(10_000..240_000));
        let on_minute = at.duration_trunc(TimeDelta::minutes(1)).unwrap();
        if rng.u8(0..8) == 0 && on_minute > previous {
            at = on_minute;
        }
    }
    readings
}

/// The fleet: six vehicles and eight meters, most reporting registers, in
/// the messages a test sends, and the ids.
struct Fleet {
    messages: Vec<Value>,
    vehicles: Vec<String>,
    meters: Vec<String>,
}

fn random_fleet(rng: &mut fastrand::Rng, origin: DateTime<Utc>, hours: i64) -> Fleet {
    let end = origin + TimeDelta::hours(hours);
    let vehicles: Vec<String> = (0..6).map(|i| format!("V{i}")).collect();
    // Meters named like vehicles pair implicitly until assignments say otherwise.
    let meters: Vec<String> = (0..4)
        .map(|i| format!("V{i}"))
        .chain((0..4).map(|i| format!("M{i}")))
        .collect();
    let forms = [
        Form::Register,
        Form::Register,
        Form::Switching,
        Form::Interval,
    ];
    let mut messages = Vec::new();
    for (i, id) in vehicles.iter().enumerate() {
        messages.extend(device_readings(
            rng,
            origin,
            end,
            forms[i % 4],
            |rng, at, energy| {
                let (soc, temp) = (100.0 * rng.f64(), 60.0 * rng.f64() - 10.0);
                match energy {
                    Ok(kwh) => vehicle(id, at, soc, kwh, temp),
                    Err(register) => vehicle_register(id, at, soc, register, temp),
                }
            },
        ));
    }
    for (i, id) in meters.iter().enumerate() {
        messages.extend(device_readings(
            rng,
            origin,
            end,
            forms[(i + 1) % 4],
            |rng, at, energy| {
                let voltage = 200.0 + 50.0 * rng.f64();
                match energy {
                    Ok(kwh) => meter(id, at, kwh, voltage),
                    Err(register) => meter_register(id, at, register, voltage),
                }
            },
        ));
    }
    let instant = |rng: &mut fastrand::Rng| origin + TimeDelta::seconds(rng.i64(0..hours * 3600));
    for _ in 0..20 {
        let vehicle_id = &vehicles[rng.usize(0..vehicles.len())];
        let meter_id = (rng.u8(0..6) > 0).then(|| meters[rng.usize(0..meters.len())].as_str());
        messages.push(assignment(vehicle_id, meter_id, instant(rng)));
    }
    Fleet {
        messages,
        vehicles,
        meters,
    }
}

/// Sends `messages` as producers would: half the devices in event-time
/// order in small batches, the rest shuffled into batches of random sizes,
/// then second copies with other values (the first stored must win), then
/// a fifth held back to arrive last. Returns them in the order stored.
async fn store_messily(
    pool: &sqlx::PgPool,
    rng: &mut fastrand::Rng,
    mut messages: Vec<Value>,
) -> Vec<Value> {
    let in_order = |m: &Value| {
        let id = m["vehicleId"]
            .as_str()
            .or(m["meterId"].as_str())
            .unwrap_or("");
        m["type"] != "ASSIGNMENT" && id.ends_with(['0', '2'])
    };
    let (mut ordered, mut shuffled): (Vec<Value>, Vec<Value>) =
        messages.drain(..).partition(in_order);
    ordered.sort_by_key(|m| {
        m["timestamp"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
    });
    rng.shuffle(&mut shuffled);
    let late = shuffled.split_off(shuffled.len() * 4 / 5);
    let duplicates: Vec<Value> = (0..200)
        .map(|_| {
            let mut copy = shuffled[rng.usize(0..shuffled.len())].clone();
            for field in [
                "kwhDeliveredDc",
                "kwhConsumedAc",
                "kwhRegisterDc",
                "kwhRegisterAc",
            ] {
                if copy.get(field).is_some() {
                    copy[field] = Value::from(7.0);
                }
            }
            copy
        })
        .collect();
    let mut batches: Vec<Vec<Value>> = Vec::new();
    let (mut ordered, mut shuffled) = (
        ordered.into_iter().peekable(),
        shuffled.into_iter().peekable(),
    );
    while ordered.peek().is_some() || shuffled.peek().is_some() {
        let mut batch: Vec<Value> = ordered.by_ref().take(rng.usize(1..40)).collect();
        batch.extend(shuffled.by_ref().take(rng.usize(0..400)));
        batches.push(batch);
    }
    batches.push(duplicates);
    batches.extend(late.chunks(150).map(<[Value]>::to_vec));
    let mut sent = Vec::new();
    for batch in batches {
        let readings: Vec<_> = batch.iter().map(decode).collect();
        write_batch(pool, &readings).await.unwrap();
        sent.extend(batch);
    }
    sent
}

/// Windows over the data: all of it, on readings, on whole hours, and random.
fn windows(
    rng: &mut fastrand::Rng,
    origin: DateTime<Utc>,
    hours: i64,
    sent: &[Value],
) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let mut windows = vec![
        (
            origin - TimeDelta::hours(1),
            origin + TimeDelta::hours(hours + 1),
        ),
        (origin + TimeDelta::hours(2), origin + TimeDelta::hours(5)),
    ];
    let on_reading = |rng: &mut fastrand::Rng| -> DateTime<Utc> {
        sent[rng.usize(0..sent.len())]["timestamp"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    for _ in 0..4 {
        let (a, b) = (on_reading(rng), on_reading(rng));
        if a != b {
            windows.push((a.min(b), a.max(b)));
        }
    }
    while windows.len() < 16 {
        let at = |rng: &mut fastrand::Rng| {
            origin + TimeDelta::microseconds(rng.i64(0..hours * 3_600_000_000))
        };
        let (a, b) = (at(rng), at(rng));
        if a != b {
            windows.push((a.min(b), a.max(b)));
        }
    }
    windows
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_equals_an_in_order_replay_of_register_devices() {
    let db = fresh_database().await;
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let hours = 8;
    let origin = {
        let start = Utc::now() - TimeDelta::hours(30);
        start - TimeDelta::nanoseconds(i64::from(start.timestamp_subsec_nanos()))
    };
    let fleet = random_fleet(&mut rng, origin, hours);
    let sent = store_messily(&db.pool, &mut rng, fleet.messages).await;
    let model = Model::new(&sent);
    assert!(
        model.jumps() > 0,
        "seed {seed}: the data holds implausible jumps"
    );
    let windows = windows(&mut rng, origin, hours, &sent);

    compare_queries(
        &db.pool,
        &model,
        &fleet.vehicles,
        &fleet.meters,
        &windows,
        seed,
    )
    .await;
    let api = Api::start(&db).await;
    compare_answers(
        &api,
        &model,
        &fleet.vehicles,
        &fleet.meters,
        &windows[..4],
        seed,
    )
    .await;
    api.stop().await;
}

/// The service's queries, unrounded, against the model to 1e-9.
async fn compare_queries(
    pool: &sqlx::PgPool,
    model: &Model,
    vehicles: &[String],
    meters: &[String],
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    seed: u64,
) {
    let same = |got: &Charging, want: &Charging| {
        got.vehicle_readings == want.vehicle_readings
            && got.meter_readings == want.meter_readings
            && close(got.sum_dc, want.sum_dc)
            && close(got.sum_ac, want.sum_ac)
            && close(got.sum_temp, want.sum_temp)
    };
    let mut with_ac = 0;
    for &(from, to) in windows {
        let sources = Sources::for_window(from, to);
        let fleet_rows = sqlx::query(&fleet::sql(&sources))
            .bind(from)
            .bind(to)
            .fetch_all(pool)
            .await
            .unwrap();
        let mut fleet_ids = Vec::new();
        for row in fleet_rows {
            let id: String = row.get("vehicle_id");
            let n: i64 = row.get("vehicle_readings");
            let got = Charging {
                vehicle_readings: n,
                sum_dc: row.get("sum_dc"),
                sum_temp: row.get::<f64, _>("avg_battery_temp") * n as f64,
                meter_readings: row.get("meter_readings"),
                sum_ac: row.get("sum_ac"),
                meter_ids: Vec::new(),
            };
            let want = model.charging(&id, from, to);
            assert!(
                same(&got, &want),
                "seed {seed}, fleet, {id} ({from}, {to}]: {got:?} vs {want:?}"
            );
            fleet_ids.push(id);
        }
        fleet_ids.sort();
        let reporting: Vec<String> = vehicles
            .iter()
            .filter(|id| model.charging(id, from, to).vehicle_readings > 0)
            .cloned()
            .collect();
        assert_eq!(fleet_ids, reporting, "seed {seed}, fleet ({from}, {to}]");

        for id in vehicles {
            let want = model.charging(id, from, to);
            let got = figures(pool, &performance::sql(&sources), id, from, to).await;
            let context =
                format!("seed {seed}, performance {id} ({from}, {to}]: {got:?} vs {want:?}");
            assert_eq!(
                (got.vehicle_readings, got.meter_readings, &got.meter_ids),
                (want.vehicle_readings, want.meter_readings, &want.meter_ids),
                "{context}"
            );
            assert!(
                close(got.sum_dc, want.sum_dc) && close(got.sum_ac, want.sum_ac),
                "{context}"
            );
            match (got.avg_battery_temp, want.avg_battery_temp()) {
                (Some(a), Some(b)) => assert!(close(a, b), "{context}"),
                (a, b) => assert_eq!(a, b, "{context}"),
            }
            with_ac += usize::from(want.sum_ac > 0.0);
        }

        for id in meters {
            let row = sqlx::query(&meters::sql(&sources))
                .bind(id)
                .bind(from)
                .bind(to)
                .fetch_one(pool)
                .await
                .unwrap();
            let readings: i64 = row.get("readings");
            let context = format!("seed {seed}, meter {id} ({from}, {to}]");
            match model.meter(id, from, to) {
                None => assert_eq!(readings, 0, "{context}"),
                Some(want) => {
                    assert_eq!(readings, want.readings, "{context}");
                    for (column, value) in [
                        ("sum_ac", want.sum_ac),
                        ("min_ac", want.min_ac),
                        ("max_ac", want.max_ac),
                        ("sum_voltage", want.sum_voltage),
                        ("min_voltage", want.min_voltage),
                        ("max_voltage", want.max_voltage),
                    ] {
                        let got: f64 = row.get(column);
                        assert!(close(got, value), "{context}: {column} {got} vs {value}");
                    }
                }
            }
        }
    }
    assert!(
        with_ac >= 10,
        "seed {seed}: AC counted in only {with_ac} vehicle windows"
    );

    // Series, in five-minute and hourly buckets, over the first windows.
    for &(from, to) in &windows[..6] {
        for size in [TimeDelta::minutes(5), TimeDelta::hours(1)] {
            for id in &vehicles[..3] {
                let rows = sqlx::query(&series::sql(&Sources::for_window(from, to)))
                    .bind(id)
                    .bind(from)
                    .bind(to)
                    .bind(size)
                    .bind(size >= TimeDelta::hours(1))
                    .fetch_all(pool)
                    .await
                    .unwrap();
                let mut rows = rows.into_iter().peekable();
                for (_, end, want) in model.series(id, from, to, size) {
                    let row = rows.next_if(|row| {
                        let row_end: DateTime<Utc> = row.get("bucket_end");
                        row_end.min(to) == end
                    });
                    let got = row.map_or_else(Charging::default, |row| Charging {
                        vehicle_readings: row.get("vehicle_readings"),
                        sum_dc: row.get("sum_dc"),
                        sum_temp: row.get("sum_temp"),
                        meter_readings: row.get("meter_readings"),
                        sum_ac: row.get("sum_ac"),
                        meter_ids: Vec::new(),
                    });
                    assert!(
                        same(&got, &want),
                        "seed {seed}, series {id} {size} ({from}, {to}] bucket to {end}: {got:?} vs {want:?}"
                    );
                }
                assert!(
                    rows.next().is_none(),
                    "seed {seed}: a series row outside the window"
                );
            }
        }
    }
}

/// The HTTP answers against the model, rounded as the API rounds.
async fn compare_answers(
    api: &Api,
    model: &Model,
    vehicles: &[String],
    meters: &[String],
    windows: &[(DateTime<Utc>, DateTime<Utc>)],
    seed: u64,
) {
    let format = shared::wire::format_timestamp;
    let check_charging = assert_answers_charging;
    for &(from, to) in windows {
        let window = [("from", format(from)), ("to", format(to))];
        for id in vehicles {
            let want = model.charging(id, from, to);
            let context = format!("seed {seed}, GET performance {id} ({from}, {to}]");
            let (status, body) = api
                .get_with(&format!("/v1/analytics/performance/{id}"), &window)
                .await;
            if want.vehicle_readings == 0 {
                assert_eq!(status, 404, "{context}: {body}");
                continue;
            }
            assert_eq!(status, 200, "{context}: {body}");
            check_charging(&body, &want, &context);
            assert_eq!(
                body["meterIds"],
                serde_json::json!(want.meter_ids),
                "{context}"
            );
        }
        for id in &vehicles[..2] {
            let mut query = window.to_vec();
            query.push(("bucket", "5m".to_owned()));
            let (status, body) = api
                .get_with(&format!("/v1/analytics/performance/{id}/series"), &query)
                .await;
            let context = format!("seed {seed}, GET series {id} ({from}, {to}]");
            assert_eq!(status, 200, "{context}: {body}");
            let points = body["points"].as_array().unwrap();
            let want = model.series(id, from, to, TimeDelta::minutes(5));
            assert_eq!(points.len(), want.len(), "{context}");
            for (point, (start, end, want)) in points.iter().zip(&want) {
                assert_eq!(
                    (&point["start"], &point["end"]),
                    (&Value::from(format(*start)), &Value::from(format(*end))),
                    "{context}"
                );
                check_charging(point, want, &context);
            }
        }
        let mut query = window.to_vec();
        query.push(("limit", "1000".to_owned()));
        let (status, body) = api.get_with("/v1/analytics/fleet", &query).await;
        assert_eq!(status, 200, "seed {seed}, GET fleet: {body}");
        let listed = body["vehicles"].as_array().unwrap();
        let reporting = vehicles
            .iter()
            .filter(|id| model.charging(id, from, to).vehicle_readings > 0)
            .count();
        assert_eq!(
            listed.len(),
            reporting,
            "seed {seed}, fleet ({from}, {to}]: {body}"
        );
        for entry in listed {
            let id = entry["vehicleId"].as_str().unwrap();
            check_charging(
                entry,
                &model.charging(id, from, to),
                &format!("seed {seed}, GET fleet {id}"),
            );
        }
        for id in meters {
            let (status, body) = api
                .get_with(&format!("/v1/meters/{id}/analytics"), &window)
                .await;
            let context = format!("seed {seed}, GET meter analytics {id} ({from}, {to}]");
            let Some(want) = model.meter(id, from, to) else {
                assert_eq!(status, 404, "{context}: {body}");
                continue;
            };
            assert_eq!(status, 200, "{context}: {body}");
            assert_eq!(body["readings"], want.readings, "{context}");
            let energy = &body["kwhConsumedAc"];
            for (field, exact) in [
                ("total", want.sum_ac),
                ("min", want.min_ac),
                ("max", want.max_ac),
                ("mean", want.sum_ac / want.readings as f64),
            ] {
                assert!(
                    answers_kwh(energy[field].as_f64().unwrap(), exact),
                    "{context}: {field} {energy} vs {exact}"
                );
            }
            assert!(
                answers_hundredths(
                    body["voltage"]["mean"].as_f64().unwrap(),
                    want.sum_voltage / want.readings as f64
                ),
                "{context}"
            );
        }
    }
    for (id, want, path, energy_field, register_field) in vehicles
        .iter()
        .map(|id| {
            (
                id,
                model.current_vehicle(id),
                "vehicles",
                "kwhDeliveredDc",
                "kwhRegisterDc",
            )
        })
        .chain(meters.iter().map(|id| {
            (
                id,
                model.current_meter(id),
                "meters",
                "kwhConsumedAc",
                "kwhRegisterAc",
            )
        }))
    {
        let want = want.unwrap();
        let (status, body) = api.get(&format!("/v1/{path}/{id}")).await;
        let context = format!("seed {seed}, GET {path}/{id}: {body} vs {want:?}");
        assert_eq!(status, 200, "{context}");
        assert_eq!(body["timestamp"], format(want.at), "{context}");
        assert!(
            close(body[energy_field].as_f64().unwrap(), want.energy),
            "{context}"
        );
        assert_eq!(body[register_field].as_f64(), want.register, "{context}");
        assert_eq!(body["registerJumps"], want.register_jumps, "{context}");
        assert_eq!(
            body["lastRegisterJumpAt"].as_str().map(str::to_owned),
            want.last_register_jump_at.map(format),
            "{context}"
        );
    }
}
