//! The dashboard endpoints against a fresh database filled through the
//! worker's write path: the fleet ranking, time series and meter statistics
//! agree with the per-vehicle endpoint and with plain SQL over raw history.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use shared::wire::format_timestamp;
use test_support::oracle::{answered_hundredths, answered_kwh};
use test_support::postgres::{fresh_database, TestDatabase};
use test_support::readings::{assignment, decode, meter, vehicle};

mod common;
use common::Api;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn origin() -> DateTime<Utc> {
    let at = Utc::now() - TimeDelta::hours(8);
    at - TimeDelta::seconds(at.timestamp() % 3600)
        - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
}

/// Five vehicles over six hours, one reading every two minutes each:
/// efficiencies of about 95, 90, 78 and 50 %, and one without any meter.
/// F-SWITCH moves from its own meter to meter X-1 at 2 h 31 min.
async fn seed(db: &TestDatabase) -> DateTime<Utc> {
    let origin = origin();
    let mut values = Vec::new();
    let fleet = [
        ("F-95", 0.95),
        ("F-90", 0.90),
        ("F-78", 0.78),
        ("F-50", 0.50),
        ("F-SWITCH", 0.88),
    ];
    for step in 0..180 {
        let at = origin + TimeDelta::minutes(2 * step);
        let ac = 0.5 + f64::from((step % 7) as i32) / 16.0;
        for (id, efficiency) in fleet {
            values.push(vehicle(
                id,
                at,
                50.0,
                ac * efficiency,
                20.0 + f64::from((step % 5) as i32),
            ));
            values.push(meter(id, at, ac, 225.0 + f64::from((step % 11) as i32)));
        }
        values.push(meter("X-1", at, ac, 230.0));
        values.push(vehicle("F-NOAC", at, 50.0, 0.3, 25.0));
    }
    values.push(assignment(
        "F-SWITCH",
        Some("X-1"),
        origin + TimeDelta::minutes(151),
    ));
    for chunk in values.chunks(1_000) {
        let readings: Vec<_> = chunk.iter().map(decode).collect();
        ingest_worker::store::write_batch(&db.pool, &readings)
            .await
            .unwrap();
    }
    origin
}

fn window(
    origin: DateTime<Utc>,
    from_minutes: i64,
    to_minutes: i64,
) -> Vec<(&'static str, String)> {
    vec![
        (
            "from",
            format_timestamp(origin + TimeDelta::minutes(from_minutes)),
        ),
        (
            "to",
            format_timestamp(origin + TimeDelta::minutes(to_minutes)),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn fleet_ranks_every_vehicle_worst_first_and_pages_through_them() {
    let db = fresh_database().await;
    let origin = seed(&db).await;
    let api = Api::start(&db).await;
    let query = window(origin, 17, 343);

    let (status, all) = api.get_with("/v1/analytics/fleet", &query).await;
    assert_eq!(status, 200, "{all}");
    let vehicles = all["vehicles"].as_array().unwrap();
    let ids: Vec<&str> = vehicles
        .iter()
        .map(|v| v["vehicleId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["F-50", "F-78", "F-SWITCH", "F-90", "F-95", "F-NOAC"]);
    let statuses: Vec<&str> = vehicles
        .iter()
        .map(|v| v["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["CRITICAL", "WARNING", "HEALTHY", "HEALTHY", "HEALTHY", "UNKNOWN"]
    );
    assert_eq!(all["total"], 6);
    assert!(all.get("nextCursor").is_none());

    // Each entry equals what the per-vehicle endpoint says for the same window.
    for entry in vehicles {
        let id = entry["vehicleId"].as_str().unwrap();
        let (status, single) = api
            .get_with(&format!("/v1/analytics/performance/{id}"), &query)
            .await;
        assert_eq!(status, 200);
        for field in ["sumDC", "sumAC", "avgBatteryTemp"] {
            assert!(
                close(
                    entry[field].as_f64().unwrap(),
                    single[field].as_f64().unwrap()
                ),
                "{id} {field}"
            );
        }
        for field in ["vehicleReadings", "meterReadings", "efficiency"] {
            assert_eq!(entry[field], single[field], "{id} {field}");
        }
    }

    // Two at a time: every vehicle exactly once, in the same order.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut page_query = query.clone();
        page_query.push(("limit", "2".to_owned()));
        if let Some(cursor) = &cursor {
            page_query.push(("cursor", cursor.clone()));
        }
        let (status, page) = api.get_with("/v1/analytics/fleet", &page_query).await;
        assert_eq!(status, 200, "{page}");
        paged.extend(
            page["vehicles"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["vehicleId"].as_str().unwrap().to_owned()),
        );
        match page.get("nextCursor").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, ids);

    let mut filtered = query.clone();
    filtered.push(("status", "CRITICAL,WARNING".to_owned()));
    let (_, page) = api.get_with("/v1/analytics/fleet", &filtered).await;
    let ids: Vec<&str> = page["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vehicleId"].as_str().unwrap())
        .collect();
    assert_eq!(
        (ids, page["total"].clone()),
        (vec!["F-50", "F-78"], Value::from(2))
    );

    for (param, value, error) in [
        (
            "status",
            "FINE",
            "status must be HEALTHY, WARNING, CRITICAL or UNKNOWN",
        ),
        ("limit", "0", "limit must be an integer from 1 to 1000"),
        ("limit", "many", "limit must be an integer from 1 to 1000"),
        ("cursor", "bogus", "cursor is not one this API issued"),
    ] {
        let mut bad = query.clone();
        bad.push((param, value.to_owned()));
        let (status, body) = api.get_with("/v1/analytics/fleet", &bad).await;
        assert_eq!(
            (
                status,
                body["error"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(error)
            ),
            (400, true),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn series_points_equal_the_performance_of_their_own_windows() {
    let db = fresh_database().await;
    let origin = seed(&db).await;
    let api = Api::start(&db).await;

    for (bucket, from, to) in [
        ("1h", 17, 343),
        ("15m", 47, 200),
        ("5m", 139, 167),
        ("1d", 17, 343),
    ] {
        let mut query = window(origin, from, to);
        query.push(("bucket", bucket.to_owned()));
        let (status, series) = api
            .get_with("/v1/analytics/performance/F-SWITCH/series", &query)
            .await;
        assert_eq!(status, 200, "{series}");
        let points = series["points"].as_array().unwrap();
        assert_eq!(
            points.first().unwrap()["start"],
            Value::from(query[0].1.clone())
        );
        assert_eq!(
            points.last().unwrap()["end"],
            Value::from(query[1].1.clone())
        );
        let (mut total_dc, n_points) = (0.0, points.len());
        for point in points {
            let (status, single) = api
                .get_with(
                    "/v1/analytics/performance/F-SWITCH",
                    &[
                        ("from", point["start"].as_str().unwrap().to_owned()),
                        ("to", point["end"].as_str().unwrap().to_owned()),
                    ],
                )
                .await;
            if point["vehicleReadings"] == 0 {
                assert_eq!(status, 404);
                continue;
            }
            for field in ["sumDC", "sumAC", "avgBatteryTemp"] {
                assert!(
                    close(
                        point[field].as_f64().unwrap(),
                        single[field].as_f64().unwrap()
                    ),
                    "{bucket} {point} {single}"
                );
            }
            assert_eq!(
                (
                    point["vehicleReadings"].clone(),
                    point["meterReadings"].clone()
                ),
                (
                    single["vehicleReadings"].clone(),
                    single["meterReadings"].clone()
                )
            );
            total_dc += point["sumDC"].as_f64().unwrap();
        }
        let (_, whole) = api
            .get_with(
                "/v1/analytics/performance/F-SWITCH",
                &window(origin, from, to),
            )
            .await;
        // Each point and the whole are rounded to the watt-hour on their own.
        let whole_dc = whole["sumDC"].as_f64().unwrap();
        assert!(
            (total_dc - whole_dc).abs() <= 0.0005 * (n_points as f64 + 1.0),
            "{bucket}: {total_dc} against {whole_dc}"
        );
    }
    let expected_points = [("1h", 6), ("5m", 7)];
    for (bucket, n) in expected_points {
        let mut query = window(
            origin,
            if bucket == "1h" { 17 } else { 139 },
            if bucket == "1h" { 343 } else { 167 },
        );
        query.push(("bucket", bucket.to_owned()));
        let (_, series) = api
            .get_with("/v1/analytics/performance/F-SWITCH/series", &query)
            .await;
        assert_eq!(series["points"].as_array().unwrap().len(), n, "{bucket}");
    }

    let mut bad = window(origin, 0, 60);
    bad.push(("bucket", "2h".to_owned()));
    let (status, body) = api
        .get_with("/v1/analytics/performance/F-SWITCH/series", &bad)
        .await;
    assert_eq!(
        (status, body["error"].clone()),
        (400, Value::from("bucket must be one of 5m, 15m, 1h, 1d"))
    );
    let mut too_many = window(origin, -20 * 24 * 60, 0);
    too_many.push(("bucket", "5m".to_owned()));
    let (status, body) = api
        .get_with("/v1/analytics/performance/F-SWITCH/series", &too_many)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("more than 2000"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn meter_statistics_equal_plain_sql_over_raw_readings() {
    let db = fresh_database().await;
    let origin = seed(&db).await;
    let api = Api::start(&db).await;
    let (from, to) = (
        origin + TimeDelta::minutes(17),
        origin + TimeDelta::minutes(343),
    );
    let (status, body) = api
        .get_with("/v1/meters/F-78/analytics", &window(origin, 17, 343))
        .await;
    assert_eq!(status, 200, "{body}");
    let raw: (i64, f64, f64, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT count(*), sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac),
                min(voltage), max(voltage), avg(voltage)
         FROM meter_readings WHERE meter_id = 'F-78' AND recorded_at > $1 AND recorded_at <= $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(body["readings"], raw.0);
    // Answered as documented: kWh to the watt-hour, volts to 0.01 V.
    let energy = &body["kwhConsumedAc"];
    assert_eq!(
        [
            energy["total"].as_f64(),
            energy["min"].as_f64(),
            energy["max"].as_f64(),
            energy["mean"].as_f64()
        ],
        [raw.1, raw.2, raw.3, raw.1 / raw.0 as f64].map(|x| Some(answered_kwh(x)))
    );
    let voltage = &body["voltage"];
    assert_eq!(
        [
            voltage["min"].as_f64(),
            voltage["max"].as_f64(),
            voltage["mean"].as_f64()
        ],
        [raw.4, raw.5, raw.6].map(|x| Some(answered_hundredths(x)))
    );

    let (status, body) = api
        .get_with("/v1/meters/NO-SUCH/analytics", &window(origin, 17, 343))
        .await;
    assert_eq!(
        (
            status,
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("meter NO-SUCH has no readings")
        ),
        (404, true)
    );
    let (status, _) = api
        .get_with(
            "/v1/meters/F-78/analytics",
            &[("from", "yesterday".to_owned())],
        )
        .await;
    assert_eq!(status, 400);
}
