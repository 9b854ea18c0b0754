//! The HTTP limits of both services (SECURITY.md, "Limits"), each set low
//! and exceeded against the real process: header size (431), a body that
//! stops arriving (408, not a stuck connection), headers that never finish
//! (the connection is closed), body size (413), the connection limit (the
//! next connection waits until one closes), and a slow request (408).

use std::time::{Duration, Instant};

use test_support::kafka::MockKafka;
use test_support::postgres::fresh_database;
use test_support::process::Service;
use test_support::services::Wiring;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use test_support::services::TOPIC;

/// Low limits, so a test exceeds them quickly.
fn limits(max_connections: usize) -> Vec<(&'static str, String)> {
    vec![
        ("HTTP_MAX_CONNECTIONS", max_connections.to_string()),
        ("HTTP_HEADER_READ_TIMEOUT_MS", "1000".to_owned()),
        ("HTTP_MAX_HEADER_BYTES", "4096".to_owned()),
        ("HTTP_REQUEST_TIMEOUT_MS", "1500".to_owned()),
        ("GATEWAY_PUBLISH_TIMEOUT_MS", "1000".to_owned()),
    ]
}

async fn gateway(kafka: &MockKafka, max_connections: usize) -> (Service, String) {
    let wiring = Wiring::new(String::new(), kafka.bootstrap());
    let (service, url) = wiring.start_gateway(&limits(max_connections)).await;
    (service, url)
}

/// Sends `request` on a new connection and reads until the server closes it
/// or `within` passes; returns what came back and how long it took.
async fn raw(url: &str, request: &[u8], within: Duration) -> (String, Duration) {
    let address = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

fn status_of(answer: &str) -> Option<u16> {
    answer.split_whitespace().nth(1)?.parse().ok()
}

async fn assert_header_limit(url: &str, path: &str) {
    let big = "x".repeat(5000);
    let response = reqwest::Client::new()
        .get(format!("{url}{path}"))
        .header("x-padding", &big)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("more than the 4096 allowed"),
        "{body}"
    );
    // Just under the limit is fine.
    let fits = reqwest::Client::new()
        .get(format!("{url}/healthz"))
        .header("x-padding", "x".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
}

async fn assert_unfinished_headers_are_cut_off(url: &str) {
    let (_, took) = raw(
        url,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(10),
    )
    .await;
    assert!(
        took < Duration::from_secs(5),
        "the connection stayed open {took:?}"
    );
}

/// At the limit the next connection is not served until one closes.
async fn assert_connection_limit(url: &str) {
    let address = url.trim_start_matches("http://").to_owned();
    // Two connections that hold their slot: a request started, never finished.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = tokio::spawn({
        let url = url.to_owned();
        async move {
            raw(
                &url,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Duration::from_secs(10),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served while two were held"
    );
    drop(held);
    let (answer, _) = waiting.await.unwrap();
    assert_eq!(status_of(&answer), Some(200), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_enforces_its_limits() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let (_gateway, url) = gateway(&kafka, 2).await;
    assert_header_limit(&url, "/healthz").await;

    // A body that stops arriving: 408 once the request timeout passes.
    let (answer, took) = raw(
        &url,
        b"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"type\":",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status_of(&answer), Some(408), "{answer}");
    assert!(answer.contains("the request took too long"), "{answer}");
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );

    assert_unfinished_headers_are_cut_off(&url).await;
    assert_connection_limit(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_api_enforces_its_limits() {
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), String::new());
    let (_api, url) = wiring.start_query_api(&limits(2)).await;
    assert_header_limit(&url, "/v1/analytics/fleet").await;

    // No route takes a body: a large one is refused before anything is read.
    let response = reqwest::Client::new()
        .get(format!("{url}/v1/analytics/fleet"))
        .body(vec![b'x'; 20_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // A request the database holds up: 408 when the timeout passes.
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE vehicles_current IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = Instant::now();
    let held_up = reqwest::get(format!("{url}/v1/vehicles/EV-1"))
        .await
        .unwrap();
    assert_eq!(held_up.status(), 408);
    assert!(started.elapsed() < Duration::from_secs(5));
    lock.rollback().await.unwrap();
    assert_eq!(
        reqwest::get(format!("{url}/v1/vehicles/EV-1"))
            .await
            .unwrap()
            .status(),
        404
    );

    assert_unfinished_headers_are_cut_off(&url).await;
    assert_connection_limit(&url).await;
}

/// The gateway's worst case, as ARCHITECTURE.md states it: 96 MiB (the
/// process and librdkafka's producer queue), plus per request in flight
/// the body limit and 4 MiB (one reading parsed at a time, the decoded
/// readings).
fn gateway_memory_bound_mib(concurrent_requests: u64, body_mib: u64) -> u64 {
    96 + concurrent_requests * (body_mib + 4)
}

/// GATEWAY_MAX_CONCURRENT_REQUESTS hostile bodies at once, each an array of
/// four million zeros just under the 8 MiB body limit: each is refused (413,
/// too many readings) without the array being built, the gateway's peak
/// memory stays under the stated bound, and it answers afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_arrays_at_the_concurrency_limit_stay_within_the_stated_memory() {
    const CONCURRENT: usize = 16;
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let wiring = Wiring::new(String::new(), kafka.bootstrap());
    let (gateway, url) = wiring
        .start_gateway(&[("GATEWAY_MAX_CONCURRENT_REQUESTS", CONCURRENT.to_string())])
        .await;
    let body = format!("[{}0]", "0,".repeat(4_190_000));
    assert!(body.len() < 8 * 1024 * 1024);
    let client = reqwest::Client::new();
    let requests = (0..CONCURRENT).map(|_| {
        client
            .post(format!("{url}/v1/ingest"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
    });
    for response in futures::future::join_all(requests).await {
        let response = response.unwrap();
        assert_eq!(response.status().as_u16(), 413);
    }
    let peak_mib = gateway.peak_rss_kib().expect("gateway peak RSS") / 1024;
    eprintln!("gateway peak RSS {peak_mib} MiB");
    let bound = gateway_memory_bound_mib(CONCURRENT as u64, 8);
    assert!(
        peak_mib < bound,
        "gateway peak RSS {peak_mib} MiB, bound {bound} MiB"
    );

    let reading = test_support::readings::vehicle(
        "STILL-HERE",
        chrono::Utc::now() - chrono::TimeDelta::minutes(1),
        50.0,
        1.0,
        20.0,
    );
    let answer = test_support::http::ingest(&url, "application/json", reading.to_string()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
}
