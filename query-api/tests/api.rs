//! The real query API on port 0 against a fresh database, seeded with SQL,
//! answering over HTTP with values this test computes on its own.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::wire::format_timestamp;
use sqlx::PgPool;
use test_support::in_process::InProcess;
use test_support::oracle::{answered_hundredths as round2, answered_kwh};
use test_support::postgres::{fresh_database, fresh_database_collated, fresh_unmigrated_database};

mod common;
use common::{args, Api};

/// Minute `m` after a fixed origin, as the domain's worked example counts time.
fn t(origin: DateTime<Utc>, minutes: f64) -> DateTime<Utc> {
    origin + TimeDelta::milliseconds((minutes * 60_000.0).round() as i64)
}

/// Stores readings through the worker's own write path, so history rows
/// and hourly rollups are exactly what production would hold.
async fn store(pool: &PgPool, values: &[Value]) {
    let readings: Vec<_> = values.iter().map(test_support::readings::decode).collect();
    ingest_worker::store::write_batch(pool, &readings)
        .await
        .expect("write readings");
}

async fn insert_vehicle(pool: &PgPool, id: &str, at: DateTime<Utc>, dc: f64, temp: f64) {
    store(
        pool,
        &[test_support::readings::vehicle(id, at, 50.0, dc, temp)],
    )
    .await;
}

async fn insert_meter(pool: &PgPool, id: &str, at: DateTime<Utc>, ac: f64) {
    store(pool, &[test_support::readings::meter(id, at, ac, 230.0)]).await;
}

async fn insert_assignment(pool: &PgPool, vehicle: &str, meter: Option<&str>, at: DateTime<Utc>) {
    store(
        pool,
        &[test_support::readings::assignment(vehicle, meter, at)],
    )
    .await;
}

/// kWh of a device at minute m: distinct per device and minute, in
/// sixteenths so that every sum below is exact.
fn kwh(device: u32, minute: u32) -> f64 {
    f64::from((device * 5 + minute * 3) % 32 + 1) / 16.0
}

fn sum(device: u32, minutes: std::ops::RangeInclusive<u32>) -> f64 {
    minutes.map(|m| kwh(device, m)).sum()
}

/// The domain's worked example: EV-03→MTR-03 and EV-04→MTR-04 from t=-60,
/// then EV-03→MTR-04 at t=100.67 (ending both), readings every minute 0..=200.
async fn seed_worked_example(pool: &PgPool, origin: DateTime<Utc>) {
    insert_assignment(pool, "EV-03", Some("MTR-03"), t(origin, -60.0)).await;
    insert_assignment(pool, "EV-04", Some("MTR-04"), t(origin, -60.0)).await;
    insert_assignment(pool, "EV-03", Some("MTR-04"), t(origin, 100.67)).await;
    for minute in 0..=200u32 {
        let at = t(origin, f64::from(minute));
        insert_vehicle(
            pool,
            "EV-03",
            at,
            kwh(3, minute),
            20.0 + f64::from(minute % 10),
        )
        .await;
        insert_vehicle(pool, "EV-04", at, kwh(4, minute), 30.0).await;
        insert_meter(pool, "MTR-03", at, kwh(103, minute)).await;
        insert_meter(pool, "MTR-04", at, kwh(104, minute)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn efficiency_follows_assignments_in_event_time_and_half_open_windows() {
    let db = fresh_database().await;
    let origin = Utc::now() - TimeDelta::hours(10);
    let origin = origin - TimeDelta::nanoseconds(i64::from(origin.timestamp_subsec_nanos()));
    seed_worked_example(&db.pool, origin).await;
    let api = Api::start(&db).await;
    let (from, to) = (
        format_timestamp(t(origin, 30.0)),
        format_timestamp(t(origin, 150.0)),
    );
    let query = format!(
        "from={}&to={}",
        from.replace('+', "%2B"),
        to.replace('+', "%2B")
    );

    // Window (30, 150]: minute 30 is outside, minute 150 inside.
    let (status, body) = api
        .get(&format!("/v1/analytics/performance/EV-03?{query}"))
        .await;
    assert_eq!(status, 200, "{body}");
    let dc = sum(3, 31..=150);
    let ac = sum(103, 31..=100) + sum(104, 101..=150);
    let temp = (31..=150u32).map(|m| 20.0 + f64::from(m % 10)).sum::<f64>() / 120.0;
    assert_eq!(
        body,
        json!({
            "vehicleId": "EV-03", "sumDC": answered_kwh(dc), "sumAC": answered_kwh(ac),
            "efficiency": round2(100.0 * dc / ac), "avgBatteryTemp": round2(temp),
            "from": from, "to": to, "meterIds": ["MTR-03", "MTR-04"],
            "vehicleReadings": 120, "meterReadings": 120
        })
    );

    // EV-04 lost MTR-04 at 100.67 and has no meter after it.
    let (status, body) = api
        .get(&format!(
            "/v1/analytics/performance/vehicleid?vehicleId=EV-04&{query}"
        ))
        .await;
    assert_eq!(status, 200);
    let dc = sum(4, 31..=150);
    let ac = sum(104, 31..=100);
    assert_eq!(
        (body["sumDC"].as_f64(), body["sumAC"].as_f64()),
        (Some(answered_kwh(dc)), Some(answered_kwh(ac)))
    );
    assert_eq!(body["efficiency"], json!(round2(100.0 * dc / ac)));
    assert_eq!(
        (
            body["vehicleReadings"].clone(),
            body["meterReadings"].clone()
        ),
        (json!(120), json!(70))
    );
    assert_eq!(body["meterIds"], json!(["MTR-04"]));
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn default_pairing_ended_assignments_and_the_default_window() {
    let db = fresh_database().await;
    let now = Utc::now();
    let now = now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    // Vehicle "1" never had an assignment: paired with meter "1".
    for minute in 1..=10 {
        insert_vehicle(&db.pool, "1", now - TimeDelta::minutes(minute), 1.0, 25.0).await;
        insert_meter(&db.pool, "1", now - TimeDelta::minutes(minute), 1.25).await;
        insert_meter(&db.pool, "2", now - TimeDelta::minutes(minute), 1.0).await;
    }
    // Outside the default 24 hours: not counted.
    insert_vehicle(&db.pool, "1", now - TimeDelta::hours(25), 100.0, 25.0).await;
    // Vehicle "2" charged through meter "2" until its assignment was ended 5.5 minutes ago.
    insert_assignment(&db.pool, "2", Some("2"), now - TimeDelta::hours(1)).await;
    insert_assignment(&db.pool, "2", None, now - TimeDelta::seconds(330)).await;
    for minute in 1..=10 {
        insert_vehicle(&db.pool, "2", now - TimeDelta::minutes(minute), 0.5, 25.0).await;
    }
    // Vehicle "3" has readings but its meter drew nothing: efficiency is null.
    insert_vehicle(&db.pool, "3", now - TimeDelta::minutes(1), 0.5, 25.0).await;
    let api = Api::start(&db).await;

    let (status, body) = api.get("/v1/analytics/performance/1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["sumDC"].clone(),
            body["sumAC"].clone(),
            body["efficiency"].clone(),
            body["meterIds"].clone()
        ),
        (json!(10.0), json!(12.5), json!(80.0), json!(["1"]))
    );
    let from: DateTime<Utc> = body["from"].as_str().unwrap().parse().unwrap();
    let to: DateTime<Utc> = body["to"].as_str().unwrap().parse().unwrap();
    assert_eq!(to - from, TimeDelta::hours(24));
    assert!((to - Utc::now()).num_seconds().abs() < 60);

    let (_, body) = api.get("/v1/analytics/performance/2").await;
    // Meter "2" readings at minutes 10..=6 ago count; 5..=1 came after the end.
    assert_eq!(
        (
            body["sumDC"].clone(),
            body["sumAC"].clone(),
            body["meterReadings"].clone()
        ),
        (json!(5.0), json!(5.0), json!(5))
    );
    assert_eq!(body["efficiency"], json!(100.0));

    let (_, body) = api.get("/v1/analytics/performance/3").await;
    assert_eq!(
        (
            body["sumAC"].clone(),
            body["efficiency"].clone(),
            body["meterIds"].clone()
        ),
        (json!(0.0), Value::Null, json!([]))
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_json_with_the_right_status() {
    let db = fresh_database().await;
    insert_vehicle(
        &db.pool,
        "V-1",
        Utc::now() - TimeDelta::hours(30),
        1.0,
        20.0,
    )
    .await;
    let api = Api::start(&db).await;
    let cases: Vec<(String, u16, &str)> = vec![
        (
            "/v1/analytics/performance/V-1".into(),
            404,
            "vehicle V-1 has no readings between",
        ),
        (
            "/v1/analytics/performance/NOPE".into(),
            404,
            "vehicle NOPE has no readings between",
        ),
        (
            "/v1/analytics/performance/vehicleid".into(),
            400,
            "query parameter vehicleId is required",
        ),
        (
            format!("/v1/analytics/performance/{}", "x".repeat(65)),
            400,
            "vehicleId must be at most 64 characters",
        ),
        (
            "/v1/analytics/performance/V-1?from=yesterday".into(),
            400,
            "from must be an RFC 3339 timestamp",
        ),
        (
            "/v1/analytics/performance/V-1?to=2026-01-01T00:00:00".into(),
            400,
            "to must be an RFC 3339 timestamp",
        ),
        (
            "/v1/analytics/performance/V-1?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z"
                .into(),
            400,
            "from must be earlier than to",
        ),
        (
            "/v1/analytics/performance/V-1?from=2026-01-01T00:00:00Z&to=2026-03-01T00:00:00Z"
                .into(),
            400,
            "the window may span at most 31 days",
        ),
        (
            "/v1/vehicles/NOPE".into(),
            404,
            "no readings for vehicle NOPE",
        ),
        ("/v1/meters/NOPE".into(), 404, "no readings for meter NOPE"),
        (
            "/v1/meters/%20M".into(),
            400,
            "meterId must not start or end with whitespace",
        ),
        ("/no/such/route".into(), 404, "no such route"),
        (
            format!(
                "/v1/analytics/performance/V-1?from={}&to={}",
                format_timestamp(Utc::now() - TimeDelta::days(100)),
                format_timestamp(Utc::now() - TimeDelta::days(99))
            ),
            400,
            "from is before the 90-day retention of raw readings",
        ),
        ("/v1/vehicles/%FF".into(), 400, "invalid path"),
    ];
    for (path, status, error) in cases {
        let (got, body) = api.get(&path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with(error),
            "{path}: {body}"
        );
    }
    test_support::http::assert_fallbacks(&api.url, reqwest::Method::POST, "/v1/vehicles/V-1").await;
    // A window that reaches back 30 hours finds it.
    let from = format_timestamp(Utc::now() - TimeDelta::hours(31));
    let (status, _) = api
        .get(&format!("/v1/analytics/performance/V-1?from={from}"))
        .await;
    assert_eq!(status, 200);
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn current_state_and_health() {
    let db = fresh_database().await;
    let at: DateTime<Utc> = "2026-02-10T10:00:00Z".parse().unwrap();
    sqlx::query("INSERT INTO vehicles_current (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp) VALUES ('V-1', $1, 80, 1.25, 25.5)")
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO meters_current (meter_id, recorded_at, kwh_consumed_ac, voltage) VALUES ('M-1', $1, 1.4, 231.5)")
        .bind(at)
        .execute(&db.pool)
        .await
        .unwrap();
    let api = Api::start(&db).await;
    let (status, mut body) = api.get("/v1/vehicles/V-1").await;
    assert_eq!(status, 200);
    assert!(body.as_object_mut().unwrap().remove("updatedAt").is_some());
    assert_eq!(
        body,
        json!({"vehicleId":"V-1","soc":80.0,"kwhDeliveredDc":1.25,"batteryTemp":25.5,"registerJumps":0,"timestamp":"2026-02-10T10:00:00Z"})
    );
    let (status, mut body) = api.get("/v1/meters/M-1").await;
    assert_eq!(status, 200);
    assert!(body.as_object_mut().unwrap().remove("updatedAt").is_some());
    assert_eq!(
        body,
        json!({"meterId":"M-1","kwhConsumedAc":1.4,"voltage":231.5,"registerJumps":0,"timestamp":"2026-02-10T10:00:00Z"})
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", api.url))
            .await
            .unwrap()
            .status(),
        200
    );
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_against_an_unmigrated_database() {
    let db = fresh_unmigrated_database().await;
    let args = args(&db);
    let api =
        InProcess::spawn(|listener, shutdown| query_api::serve(args, listener, shutdown)).await;
    let error = api.outcome().await.unwrap_err();
    assert!(
        error.to_string().contains("run `ingest-worker migrate`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn assignment_edges_ties_and_the_end_of_the_implicit_pairing() {
    let db = fresh_database().await;
    let origin = Utc::now() - TimeDelta::hours(3);
    let origin = origin - TimeDelta::nanoseconds(i64::from(origin.timestamp_subsec_nanos()));
    let at = |minute: i64| origin + TimeDelta::minutes(minute);
    for minute in 0..=60 {
        for id in ["A", "B", "C"] {
            insert_vehicle(&db.pool, id, at(minute), 1.0, 20.0).await;
            insert_meter(&db.pool, id, at(minute), f64::from(minute as u32)).await;
        }
    }
    // A charges through its own meter "A" (never assigned) until B takes meter
    // "A" at minute 20. B was on its own meter until then too.
    insert_assignment(&db.pool, "B", Some("A"), at(20)).await;
    // Meter "C" goes to A and to C at the same instant (minute 40): the greater id, C, gets it.
    insert_assignment(&db.pool, "A", Some("C"), at(40)).await;
    insert_assignment(&db.pool, "C", Some("C"), at(40)).await;
    let api = Api::start(&db).await;
    let window = |vehicle: &str| {
        format!(
            "/v1/analytics/performance/{vehicle}?from={}&to={}",
            format_timestamp(at(0)).replace('+', "%2B"),
            format_timestamp(at(60)).replace('+', "%2B")
        )
    };
    let minutes = |range: std::ops::RangeInclusive<u32>| -> f64 { range.map(f64::from).sum() };

    // A: meter "A" at minutes 1..=19 (the reading at 20, B's start, is B's);
    // nothing from meter "C" (tie lost) after its own first assignment at 40.
    let (_, body) = api.get(&window("A")).await;
    assert_eq!(
        (body["sumAC"].as_f64(), body["meterReadings"].clone()),
        (Some(minutes(1..=19)), json!(19))
    );
    assert_eq!(body["meterIds"], json!(["A"]));
    // B: its own meter "B" until minute 20 (its first assignment), then meter "A" from 20 on.
    let (_, body) = api.get(&window("B")).await;
    assert_eq!(
        body["sumAC"].as_f64(),
        Some(minutes(1..=19) + minutes(20..=60))
    );
    assert_eq!(body["meterIds"], json!(["A", "B"]));
    // C: its own meter throughout: implicitly before minute 40, by assignment (tie won) after.
    let (_, body) = api.get(&window("C")).await;
    assert_eq!(
        (body["sumAC"].as_f64(), body["meterReadings"].clone()),
        (Some(minutes(1..=60)), json!(60))
    );
    api.stop().await;
}

/// On a database whose collation is not C, ties and the order of meter ids
/// still follow byte order: "B-2" < "a-1" in bytes, while en_US puts "a-1"
/// first. So the tie goes to "a-1", and "B-m" is listed before "a-m".
#[tokio::test(flavor = "multi_thread")]
async fn ties_and_meter_ids_follow_byte_order_under_any_collation() {
    let db = fresh_database_collated().await;
    let origin = Utc::now() - TimeDelta::hours(3);
    let origin = origin - TimeDelta::nanoseconds(i64::from(origin.timestamp_subsec_nanos()));
    let at = |minute: i64| origin + TimeDelta::minutes(minute);
    for minute in 0..=60 {
        for id in ["a-1", "B-2", "V-x"] {
            insert_vehicle(&db.pool, id, at(minute), 1.0, 20.0).await;
        }
        for id in ["MTR", "a-m", "B-m"] {
            insert_meter(&db.pool, id, at(minute), 1.0).await;
        }
    }
    insert_assignment(&db.pool, "a-1", Some("MTR"), at(30)).await;
    insert_assignment(&db.pool, "B-2", Some("MTR"), at(30)).await;
    insert_assignment(&db.pool, "V-x", Some("a-m"), at(10)).await;
    insert_assignment(&db.pool, "V-x", Some("B-m"), at(20)).await;
    let api = Api::start(&db).await;
    let window = |vehicle: &str| {
        (
            format!("/v1/analytics/performance/{vehicle}"),
            vec![
                ("from", format_timestamp(at(0))),
                ("to", format_timestamp(at(60))),
            ],
        )
    };
    let (path, query) = window("a-1");
    let (_, won) = api.get_with(&path, &query).await;
    assert_eq!(
        (won["meterReadings"].clone(), won["meterIds"].clone()),
        (json!(31), json!(["MTR"]))
    );
    let (path, query) = window("B-2");
    let (_, lost) = api.get_with(&path, &query).await;
    assert_eq!(lost["meterReadings"], json!(0));
    let (path, query) = window("V-x");
    let (_, both) = api.get_with(&path, &query).await;
    assert_eq!(both["meterIds"], json!(["B-m", "a-m"]));
    api.stop().await;
}
