//! `/openapi.json` describes every route query-api serves, and what it
//! describes is true: each operation called with its documented examples
//! against the real service answers 200 with a body matching the documented
//! schema, and the operations marked as needing a key refuse requests
//! without one.

use std::collections::BTreeSet;

use chrono::{TimeDelta, Utc};
use serde_json::Value;
use test_support::openapi::{assert_matches, example_target, operations, response_schema};
use test_support::postgres::fresh_database;
use test_support::readings::{assignment, decode, meter, vehicle};

mod common;
use common::{args_with, Api};

const READ_KEY: &str = "openapi-read-0123456789";

/// Every route of query-api: the README's API section and the operations routes.
const ROUTES: [&str; 14] = [
    "/",
    "/dashboard.css",
    "/dashboard.js",
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/readyz",
    "/v1/analytics/fleet",
    "/v1/analytics/performance/vehicleid",
    "/v1/analytics/performance/{vehicleId}",
    "/v1/analytics/performance/{vehicleId}/series",
    "/v1/meters/{meterId}",
    "/v1/meters/{meterId}/analytics",
    "/v1/vehicles/{vehicleId}",
];

async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let request = reqwest::Client::new().get(url);
    let request = match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let json = response
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/json"));
    let body = if json {
        response.json().await.unwrap()
    } else {
        Value::String(response.text().await.unwrap())
    };
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_described_and_its_examples_get_the_described_answers() {
    let db = fresh_database().await;
    // The examples' devices, with an hour of readings.
    let start = Utc::now() - TimeDelta::hours(2);
    let mut values = vec![assignment("EV-03", Some("MTR-03"), start)];
    for minute in 1..=60 {
        let at = start + TimeDelta::minutes(minute);
        values.push(vehicle("EV-03", at, 50.0, 0.2, 25.0));
        values.push(meter("MTR-03", at, 0.25, 230.0));
    }
    let readings: Vec<_> = values.iter().map(decode).collect();
    ingest_worker::store::write_batch(&db.pool, &readings)
        .await
        .unwrap();
    let api = Api::start_with(args_with(&db, &[&format!("--api-keys=read:{READ_KEY}")])).await;

    let (status, description) = get(&format!("{}/openapi.json", api.url), None).await;
    assert_eq!(status, 200);
    assert!(description["openapi"].as_str().unwrap().starts_with("3.1"));
    let described: BTreeSet<&str> = description["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(described, ROUTES.into_iter().collect());

    let operations = operations(&description);
    assert_eq!(operations.len(), ROUTES.len(), "one GET per route");
    for operation in &operations {
        let what = format!("{} {}", operation.method, operation.path);
        assert_eq!(operation.method, "get", "{what}");
        assert!(
            operation.spec["summary"].is_string(),
            "{what} has a summary"
        );
        let url = format!("{}{}", api.url, example_target(operation));
        let needs_key = operation.spec["security"].is_array();
        assert_eq!(
            needs_key,
            operation.path.starts_with("/v1/"),
            "{what}: security"
        );
        if needs_key {
            assert!(
                operation.spec["responses"]["401"].is_object(),
                "{what}: 401 described"
            );
            for header in ["x-data-source", "x-data-lag-ms"] {
                assert!(
                    operation.spec["responses"]["200"]["headers"][header]["description"]
                        .is_string(),
                    "{what}: the freshness header {header} described"
                );
            }
            let (status, body) = get(&url, None).await;
            assert_eq!(status, 401, "{what} without a key");
            assert_matches(
                &description,
                response_schema(operation, 401).unwrap(),
                &body,
                &what,
            );
        }
        let (status, body) = get(&url, needs_key.then_some(READ_KEY)).await;
        assert_eq!(status, 200, "{what} ({url}): {body}");
        if let Some(schema) = response_schema(operation, 200) {
            assert_matches(&description, schema, &body, &what);
        }
    }

    // A described error answer, for real.
    let fleet = operations
        .iter()
        .find(|o| o.path == "/v1/analytics/fleet")
        .unwrap();
    let (status, body) = get(
        &format!("{}/v1/analytics/fleet?limit=0", api.url),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(status, 400);
    assert_matches(
        &description,
        response_schema(fleet, 400).unwrap(),
        &body,
        "fleet 400",
    );

    // The examples really found data: the performance example is not empty.
    let (_, performance) = get(
        &format!("{}/v1/analytics/performance/EV-03", api.url),
        Some(READ_KEY),
    )
    .await;
    assert_eq!(performance["vehicleReadings"], 60);
    assert_eq!(performance["efficiency"], 80.0);
}
