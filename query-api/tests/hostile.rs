//! Hostile path and query parameters against every query-api route: the
//! hostile id list (`test-support/fixtures/hostile/ids.json`) in every id
//! position, and bad windows, limits, buckets, statuses and cursors. Invalid
//! input gets 400 naming the parameter, legal but unknown ids 404, and
//! nothing ever gets a 5xx or reaches SQL as text (ids are bound).

use serde_json::Value;
use test_support::fixture_path;
use test_support::http::path_segment;
use test_support::postgres::fresh_database;

mod common;
use common::Api;

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{url}: not JSON: {text}"));
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_ids_and_parameters_get_clear_answers_on_every_route() {
    let db = fresh_database().await;
    let api = Api::start(&db).await;
    let ids: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture_path("hostile/ids.json")).unwrap())
            .unwrap();
    assert!(ids.len() >= 20);
    let base = &api.url;
    for entry in &ids {
        let id = entry["id"].as_str().unwrap();
        let valid = entry["valid"].as_bool().unwrap();
        let encoded = path_segment(id);
        let query: String = url_query(id);
        let routes = [
            (
                "vehicleId",
                format!("{base}/v1/analytics/performance/{encoded}"),
            ),
            (
                "vehicleId",
                format!("{base}/v1/analytics/performance/{encoded}/series"),
            ),
            (
                "vehicleId",
                format!("{base}/v1/analytics/performance/vehicleid?vehicleId={query}"),
            ),
            ("vehicleId", format!("{base}/v1/vehicles/{encoded}")),
            ("meterId", format!("{base}/v1/meters/{encoded}")),
            ("meterId", format!("{base}/v1/meters/{encoded}/analytics")),
        ];
        for (parameter, url) in routes {
            // A URL parser resolves "." and ".." segments away before the
            // request is sent: such a request names another route (404).
            if (id == "." || id == "..") && !url.contains("vehicleid?") {
                assert_eq!(get(&url).await.0, 404, "{url}");
                continue;
            }
            let (status, body) = get(&url).await;
            let error = body["error"].as_str().unwrap_or_default();
            let shown: String = id.chars().take(20).collect();
            if valid {
                // Unknown, so 404; the series answers empty buckets, naming the id as given.
                match status {
                    404 => assert!(error.contains("no readings") || !error.is_empty(), "{body}"),
                    200 => assert_eq!(body["vehicleId"].as_str(), Some(id), "{shown:?}"),
                    _ => panic!("{shown:?} at {url}: {status} {body}"),
                }
            } else {
                assert_eq!(status, 400, "{shown:?} at {parameter}: {body}");
                assert!(
                    error.starts_with(&format!("{parameter} must")),
                    "{shown:?}: {error}"
                );
            }
        }
    }

    // Bytes that are not UTF-8 in a path.
    let (status, body) = get(&format!("{base}/v1/vehicles/EV%FF")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with("invalid path"),
        "{body}"
    );

    // Hostile parameters, each on the routes that take it.
    let perf = format!("{base}/v1/analytics/performance/EV-1");
    let fleet = format!("{base}/v1/analytics/fleet");
    let series = format!("{base}/v1/analytics/performance/EV-1/series");
    let meter = format!("{base}/v1/meters/M-1/analytics");
    let cases = [
        (
            &perf,
            "from=2026-11-29T10:00:00",
            "from must be an RFC 3339 timestamp",
        ),
        (&perf, "to=yesterday", "to must be an RFC 3339 timestamp"),
        (
            &perf,
            "to=%27%3B%20DROP%20TABLE%20x%3B--",
            "to must be an RFC 3339 timestamp",
        ),
        (
            &perf,
            "from=0001-01-01T00:00:00Z",
            "the window may span at most 31 days",
        ),
        (
            &perf,
            "from=0001-01-01T00:00:00Z&to=0001-01-02T00:00:00Z",
            "retention",
        ),
        (
            &perf,
            "to=9999-12-31T23:59:59Z",
            "to must not be more than 24 hours in the future",
        ),
        (
            &perf,
            "from=2026-11-29T10:00:00Z&to=2026-11-29T09:00:00Z",
            "from must be earlier than to",
        ),
        (&perf, "from=a&from=b", "given more than once"),
        (
            &meter,
            "to=+275760-09-13T00:00:00Z",
            "to must be an RFC 3339 timestamp",
        ),
        (&fleet, "limit=0", "limit must be an integer from 1 to 1000"),
        (
            &fleet,
            "limit=-1",
            "limit must be an integer from 1 to 1000",
        ),
        (
            &fleet,
            "limit=99999999999999999999999",
            "limit must be an integer from 1 to 1000",
        ),
        (
            &fleet,
            "limit=1e3",
            "limit must be an integer from 1 to 1000",
        ),
        (
            &fleet,
            "status=HEALTHY,OOPS",
            "status must be HEALTHY, WARNING, CRITICAL or UNKNOWN",
        ),
        (
            &fleet,
            "status=",
            "status must be HEALTHY, WARNING, CRITICAL or UNKNOWN",
        ),
        (
            &fleet,
            "cursor=%27%20OR%201%3D1",
            "cursor is not one this API issued",
        ),
        (
            &fleet,
            "cursor=WzEsIiJd",
            "cursor is not one this API issued",
        ),
        (&series, "bucket=1y", "bucket"),
        (&series, "bucket=", "bucket"),
        (
            &series,
            "bucket=5m&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z",
            "retention",
        ),
    ];
    for (route, query, expected) in cases {
        let (status, body) = get(&format!("{route}?{query}")).await;
        assert_eq!(status, 400, "{route}?{query}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "{route}?{query}: {error:?} lacks {expected:?}"
        );
    }
    api.stop().await;
}

fn url_query(id: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", [("v", id)])
        .unwrap()
        .query()
        .unwrap()
        .trim_start_matches("v=")
        .to_owned()
}
