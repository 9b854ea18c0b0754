//! The built binaries as processes: ingest-gateway, ingest-worker and
//! query-api against a fresh database and a real Kafka-protocol broker, fed
//! through HTTP and straight into Kafka, answering analytics with values
//! computed here, and reproducing the independently computed golden figures.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{json, Value};
use shared::wire::format_timestamp;
use test_support::kafka::{committed_total, end_total, produce_all, producer, MockKafka};
use test_support::oracle::{answered_hundredths, answered_kwh, answers_kwh};
use test_support::process::Service;
use test_support::readings::{assignment, key_of, meter, meter_register, vehicle};
use test_support::services::{Stack, Wiring};
use test_support::{eventually, fixture_path};

use test_support::services::TOPIC;
const GROUP: &str = "e2e-workers";
const PARTITIONS: i32 = 4;

/// The performance endpoint of `stack`'s query-api for one vehicle and window.
async fn analytics(
    stack: &Stack,
    vehicle: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/analytics/performance/{vehicle}",
            stack.api_url
        ))
        .query(&[
            ("from", format_timestamp(from)),
            ("to", format_timestamp(to)),
        ])
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn whole_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    at - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
}

fn kwh(device: u32, minute: u32) -> f64 {
    f64::from((device * 5 + minute * 3) % 32 + 1) / 16.0
}

fn sum(device: u32, minutes: std::ops::RangeInclusive<u32>) -> f64 {
    minutes.map(|m| kwh(device, m)).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_kafka_producers_get_exact_analytics_and_sigterm_commits() {
    let mut stack = Stack::start(PARTITIONS, GROUP, &[]).await;
    let origin = whole_seconds(Utc::now() - TimeDelta::hours(5));
    let at = |minute: f64| origin + TimeDelta::milliseconds((minute * 60_000.0) as i64);

    // The domain's worked example: EV-03 moves from MTR-03 to MTR-04 at t=100.67,
    // which also ends EV-04's assignment to MTR-04.
    let assignments = vec![
        assignment("EV-03", Some("MTR-03"), at(-60.0)),
        assignment("EV-04", Some("MTR-04"), at(-60.0)),
        assignment("EV-03", Some("MTR-04"), at(100.67)),
    ];
    let mut vehicles = Vec::new();
    let mut meters = Vec::new();
    for minute in 0..=200u32 {
        vehicles.push(vehicle(
            "EV-03",
            at(f64::from(minute)),
            50.0,
            kwh(3, minute),
            25.0,
        ));
        vehicles.push(vehicle(
            "EV-04",
            at(f64::from(minute)),
            50.0,
            kwh(4, minute),
            35.0,
        ));
        meters.push(meter(
            "MTR-03",
            at(f64::from(minute)),
            kwh(103, minute),
            230.0,
        ));
        meters.push(meter(
            "MTR-04",
            at(f64::from(minute)),
            kwh(104, minute),
            230.0,
        ));
    }
    // Vehicles and assignments through the gateway (array, NDJSON, and a
    // retried request); meters straight into Kafka, as fleet chargers publish.
    let answer = stack
        .post("application/json", json!(assignments).to_string())
        .await;
    assert_eq!(
        (answer.status, answer.body["accepted"].clone()),
        (202, json!(3))
    );
    let (first, second) = vehicles.split_at(200);
    assert_eq!(
        stack
            .post("application/json", json!(first).to_string())
            .await
            .status,
        202
    );
    let ndjson: String = second.iter().map(|v| format!("{v}\n")).collect();
    assert_eq!(
        stack
            .post("application/x-ndjson", ndjson.clone())
            .await
            .status,
        202
    );
    assert_eq!(stack.post("application/x-ndjson", ndjson).await.status, 202);
    let direct: Vec<_> = meters
        .iter()
        .map(|m| {
            (
                Some(key_of(m).into_bytes()),
                Some(m.to_string().into_bytes()),
            )
        })
        .collect();
    produce_all(&producer(&stack.kafka.bootstrap()), TOPIC, &direct).await;
    stack.wait_for_rows(402, 402, 3).await;

    // Window (30, 150]: both edges fall exactly on readings.
    let (status, body) = analytics(&stack, "EV-03", at(30.0), at(150.0)).await;
    assert_eq!(status, 200, "{body}");
    let dc = sum(3, 31..=150);
    let ac = sum(103, 31..=100) + sum(104, 101..=150);
    assert_eq!(
        (
            body["sumDC"].as_f64().unwrap(),
            body["sumAC"].as_f64().unwrap()
        ),
        (answered_kwh(dc), answered_kwh(ac))
    );
    assert_eq!(
        body["efficiency"],
        json!((100.0 * dc / ac * 100.0).round() / 100.0)
    );
    assert_eq!(
        (
            body["vehicleReadings"].clone(),
            body["meterReadings"].clone()
        ),
        (json!(120), json!(120))
    );
    assert_eq!(
        (body["avgBatteryTemp"].clone(), body["meterIds"].clone()),
        (json!(25.0), json!(["MTR-03", "MTR-04"]))
    );
    let (_, body) = analytics(&stack, "EV-04", at(30.0), at(150.0)).await;
    assert_eq!(
        (
            body["sumDC"].as_f64().unwrap(),
            body["sumAC"].as_f64().unwrap()
        ),
        (
            answered_kwh(sum(4, 31..=150)),
            answered_kwh(sum(104, 31..=100))
        )
    );
    assert_eq!(body["meterReadings"], json!(70));

    // Current state through the API.
    let current: Value = reqwest::get(format!("{}/v1/vehicles/EV-03", stack.api_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(current["timestamp"], json!(format_timestamp(at(200.0))));

    // SIGTERM in the middle of a batch. The first worker stops cleanly; a
    // second one, whose batches only flush after a minute, takes over, opens
    // a batch of late readings and is told to stop: it must commit that batch
    // and exit 0 within 10 s.
    assert!(stack.worker.terminate(Duration::from_secs(10)).success());
    let late: Vec<_> = (201..=260u32)
        .map(|minute| {
            let m = meter("MTR-03", at(f64::from(minute)), 1.0, 230.0);
            (
                Some(key_of(&m).into_bytes()),
                Some(m.to_string().into_bytes()),
            )
        })
        .collect();
    produce_all(&producer(&stack.kafka.bootstrap()), TOPIC, &late).await;
    let (mut slow_worker, _) = stack
        .wiring
        .start_worker(
            GROUP,
            &[
                ("BATCH_MAX_WAIT_MS", "60000".to_owned()),
                ("RUST_LOG", "warn,ingest_worker=debug".to_owned()),
            ],
        )
        .await;
    slow_worker.wait_for_log("batch opened", Duration::from_secs(30));
    assert_eq!(
        stack.db.count("SELECT count(*) FROM meter_readings").await,
        402,
        "nothing flushed before SIGTERM"
    );
    let status = slow_worker.terminate(Duration::from_secs(10));
    assert!(status.success(), "worker exited with {status}");
    // Whatever the open batch held is stored and committed, and nothing else
    // is committed: committed offsets advanced by exactly the stored late readings.
    let stored_late = stack.db.count("SELECT count(*) FROM meter_readings").await - 402;
    assert!(
        stored_late >= 1,
        "the open batch was not flushed at SIGTERM"
    );
    let bootstrap = stack.kafka.bootstrap();
    let total_messages = end_total(&bootstrap, TOPIC);
    assert_eq!(
        committed_total(&bootstrap, GROUP, TOPIC, PARTITIONS),
        total_messages - 60 + stored_late
    );

    // A worker started again finds the rest where the committed offsets say.
    let _worker = stack.wiring.start_worker(GROUP, &[]).await;
    stack.wait_for_rows(402, 462, 3).await;
    eventually("all offsets committed", Duration::from_secs(30), || async {
        (committed_total(&bootstrap, GROUP, TOPIC, PARTITIONS) == total_messages).then_some(())
    })
    .await;
}

/// Shifts a golden timestamp by `shift`.
fn shifted(raw: &str, shift: TimeDelta) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw)
        .unwrap()
        .with_timezone(&Utc)
        + shift
}

#[tokio::test(flavor = "multi_thread")]
async fn the_golden_fixture_gives_the_expected_analytics() {
    let readings = std::fs::read_to_string(fixture_path("golden/readings.ndjson")).unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_path("golden/expected.json")).unwrap(),
    )
    .unwrap();
    let mut lines: Vec<Value> = readings
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    // Move the data so its newest reading is two hours old.
    let newest = lines
        .iter()
        .map(|l| shifted(l["timestamp"].as_str().unwrap(), TimeDelta::zero()))
        .max()
        .unwrap();
    let shift = whole_seconds(Utc::now() - TimeDelta::hours(2)) - newest;
    let mut unique = HashSet::new();
    for line in &mut lines {
        let at = shifted(line["timestamp"].as_str().unwrap(), shift);
        line["timestamp"] = json!(format_timestamp(at));
        unique.insert((line["type"].as_str().unwrap().to_owned(), key_of(line), at));
    }
    let count = |kind: &str| unique.iter().filter(|(k, _, _)| k == kind).count() as i64;

    let stack = Stack::start(PARTITIONS, GROUP, &[]).await;
    for chunk in lines.chunks(1000) {
        let body: String = chunk.iter().map(|l| format!("{l}\n")).collect();
        let answer = stack.post("application/x-ndjson", body).await;
        let (status, response) = (answer.status, answer.body);
        assert_eq!(status, 202, "{response}");
    }
    stack
        .wait_for_rows(count("VEHICLE"), count("METER"), count("ASSIGNMENT"))
        .await;

    let mut checked = 0;
    for window in expected["windows"].as_array().unwrap() {
        let from = shifted(window["from"].as_str().unwrap(), shift);
        let to = shifted(window["to"].as_str().unwrap(), shift);
        for (vehicle, figures) in window["vehicles"].as_object().unwrap() {
            let (status, body) = analytics(&stack, vehicle, from, to).await;
            let context = format!("window {} vehicle {vehicle}: {body}", window["name"]);
            assert_eq!(status, 200, "{context}");
            // The golden figures are exact; the API answers them rounded
            // (sums to the watt-hour, the temperature to 0.01 °C).
            for field in ["sumDC", "sumAC"] {
                let (got, golden) = (
                    body[field].as_f64().unwrap(),
                    figures[field].as_f64().unwrap(),
                );
                assert!(
                    answers_kwh(got, golden),
                    "{field} of {context}: {got} against golden {golden}"
                );
            }
            let (got, golden) = (
                body["avgBatteryTemp"].as_f64().unwrap(),
                figures["avgBatteryTemp"].as_f64().unwrap(),
            );
            assert!(
                got == answered_hundredths(got) && (got - golden).abs() <= 0.005 * (1.0 + 1e-9),
                "avgBatteryTemp of {context}: {got} against golden {golden}"
            );
            assert_eq!(body["efficiency"], figures["efficiency"], "{context}");
            assert_eq!(
                body["vehicleReadings"], figures["vehicleReadings"],
                "{context}"
            );
            assert_eq!(body["meterReadings"], figures["meterReadings"], "{context}");
            checked += 1;
        }
    }
    assert_eq!(checked, 36, "three windows of twelve vehicles");
}

#[tokio::test(flavor = "multi_thread")]
async fn librdkafka_settings_from_the_environment_reach_the_clients() {
    // A property librdkafka does not know makes the client refuse to start,
    // naming it: proof the KAFKA_* variable got through.
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let mut gateway = Service::start(
        "ingest-gateway",
        &[],
        &[
            ("KAFKA_BROKERS", kafka.bootstrap()),
            ("GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
            ("KAFKA_NO_SUCH_SETTING", "1".to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
        ],
    );
    assert!(!gateway.wait_exit(Duration::from_secs(30)).success());
    gateway.wait_for_log("no.such.setting", Duration::from_secs(5));
}

/// Producers may compress (`KAFKA_COMPRESSION_TYPE`): zstd and lz4 batches
/// from two gateways reach the worker and are stored.
#[tokio::test(flavor = "multi_thread")]
async fn compressed_batches_are_stored() {
    let kafka = MockKafka::start(&[(TOPIC, 2), ("energy.readings.dlq", 1)]);
    let db = test_support::postgres::fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let (_worker, _) = wiring.start_worker("compressed", &[]).await;
    let at = Utc::now() - TimeDelta::minutes(5);
    let mut gateways = Vec::new();
    for (codec, vehicle_id) in [("zstd", "Z"), ("lz4", "L")] {
        let (gateway, url) = wiring
            .start_gateway(&[("KAFKA_COMPRESSION_TYPE", codec.to_owned())])
            .await;
        let body = json!([
            vehicle(vehicle_id, at, 50.0, 1.0, 25.0),
            vehicle(vehicle_id, at + TimeDelta::minutes(1), 51.0, 1.0, 25.0),
        ]);
        let answer = test_support::http::ingest(&url, "application/json", body.to_string()).await;
        assert_eq!(answer.status, 202, "{codec}: {}", answer.body);
        gateways.push(gateway);
    }
    eventually(
        "the compressed readings stored",
        Duration::from_secs(60),
        || async {
            let stored = db
                .count("SELECT count(*) FROM vehicle_readings WHERE vehicle_id IN ('Z', 'L')")
                .await;
            (stored == 4).then_some(())
        },
    )
    .await;
}

/// Every service serves Prometheus metrics of what it did: requests by
/// route and status, readings accepted and rejected, rows per table, dead
/// letters by reason, consumer lag and the age of the newest stored reading,
/// query latency and pool use. No label ever carries a device id. And the
/// HTTP services answer with a request id, the one their logs' spans carry.
#[tokio::test(flavor = "multi_thread")]
async fn every_service_counts_what_it_did_in_prometheus_metrics() {
    use test_support::http::{sample, scrape};

    let kafka = MockKafka::start(&[(TOPIC, 2), ("energy.readings.dlq", 1)]);
    let db = test_support::postgres::fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let (_worker, worker_url) = wiring
        .start_worker(
            "metrics-test",
            &[("KAFKA_STATISTICS_INTERVAL_MS", "200".to_owned())],
        )
        .await;
    let (_gateway, gateway_url) = wiring.start_gateway(&[]).await;
    let (_api, api_url) = wiring.start_query_api(&[]).await;

    let at = Utc::now() - TimeDelta::minutes(10);
    let valid = json!([
        vehicle("MX-VEHICLE-1", at, 50.0, 1.5, 25.0),
        vehicle("MX-VEHICLE-1", at + TimeDelta::minutes(1), 51.0, 1.5, 25.0),
        meter("MX-METER-1", at, 1.75, 230.0),
        // A register rising 90 kWh in a minute: an implausible jump.
        meter_register("MX-METER-2", at, 10.0, 230.0),
        meter_register("MX-METER-2", at + TimeDelta::minutes(1), 100.0, 230.0),
    ]);
    let answer =
        test_support::http::ingest(&gateway_url, "application/json", valid.to_string()).await;
    assert_eq!(answer.status, 202);
    let invalid = json!([{"type": "VEHICLE"}, {"type": "METER"}]);
    let answer =
        test_support::http::ingest(&gateway_url, "application/json", invalid.to_string()).await;
    assert_eq!(answer.status, 422);
    // A poison message straight into the topic, bound for the dead-letter topic.
    produce_all(
        &producer(&kafka.bootstrap()),
        TOPIC,
        &[(Some(b"MX-POISON".to_vec()), Some(b"not json".to_vec()))],
    )
    .await;

    let gateway = scrape(&gateway_url).await;
    assert_eq!(
        sample(&gateway, "energy_gateway_readings_accepted_total", &[]),
        Some(5.0),
        "{gateway}"
    );
    assert_eq!(
        sample(
            &gateway,
            "energy_gateway_readings_rejected_total",
            &[("reason", "invalid")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &gateway,
            "energy_gateway_requests_total",
            &[("route", "/v1/ingest"), ("status", "202")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &gateway,
            "energy_gateway_requests_total",
            &[("route", "/v1/ingest"), ("status", "422")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &gateway,
            "energy_gateway_produce_duration_seconds_count",
            &[("outcome", "acknowledged")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&gateway, "energy_gateway_producer_queue_messages", &[]),
        Some(0.0)
    );

    let worker = eventually(
        "the worker's metrics count every message",
        Duration::from_secs(60),
        || async {
            let text = scrape(&worker_url).await;
            let rows = |table| {
                sample(
                    &text,
                    "energy_worker_rows_written_total",
                    &[("table", table)],
                )
            };
            let lag_known = text.contains("energy_worker_consumer_lag_messages{");
            (rows("vehicle_readings") == Some(2.0)
                && rows("meter_readings") == Some(3.0)
                && sample(
                    &text,
                    "energy_worker_dead_lettered_total",
                    &[("reason", "undecodable")],
                ) == Some(1.0)
                && lag_known)
                .then_some(text)
        },
    )
    .await;
    assert!(sample(&worker, "energy_worker_batches_total", &[]).is_some_and(|n| n >= 1.0));
    assert_eq!(
        sample(&worker, "energy_worker_register_jumps_total", &[]),
        Some(1.0),
        "{worker}"
    );
    assert!(
        sample(&worker, "energy_worker_batch_duration_seconds_count", &[])
            .is_some_and(|n| n >= 1.0)
    );
    assert!(sample(
        &worker,
        "energy_worker_rebalances_total",
        &[("kind", "assign")]
    )
    .is_some_and(|n| n >= 1.0));
    let age = sample(
        &worker,
        "energy_worker_newest_stored_reading_age_seconds",
        &[],
    )
    .expect("age of the newest reading");
    assert!(
        (540.0..3600.0).contains(&age),
        "the newest stored reading is 9 minutes old, not {age} s"
    );
    // Once the offsets are committed, every partition with a known lag is at 0.
    eventually(
        "consumer lag drops to zero",
        Duration::from_secs(30),
        || async {
            let text = scrape(&worker_url).await;
            let lags: Vec<Option<f64>> = (0..2)
                .map(|p| {
                    sample(
                        &text,
                        "energy_worker_consumer_lag_messages",
                        &[("partition", &p.to_string())],
                    )
                })
                .collect();
            lags.iter()
                .all(|lag| lag.is_none_or(|messages| messages == 0.0))
                .then_some(())
        },
    )
    .await;

    let performance = reqwest::get(format!("{api_url}/v1/analytics/performance/MX-VEHICLE-1"))
        .await
        .unwrap();
    assert_eq!(performance.status(), 200);
    let api = scrape(&api_url).await;
    let route = [
        ("route", "/v1/analytics/performance/{vehicleId}"),
        ("status", "200"),
    ];
    assert_eq!(
        sample(&api, "energy_query_requests_total", &route),
        Some(1.0),
        "{api}"
    );
    assert_eq!(
        sample(
            &api,
            "energy_query_request_duration_seconds_count",
            &[("route", "/v1/analytics/performance/{vehicleId}")]
        ),
        Some(1.0)
    );
    assert!(sample(
        &api,
        "energy_query_db_pool_connections",
        &[("state", "idle")]
    )
    .is_some());

    for text in [&gateway, &worker, &api] {
        assert!(
            !text.contains("MX-"),
            "a device id leaked into a label:\n{text}"
        );
    }

    // Every answer carries a request id: the client's own, or a new UUID.
    let client = reqwest::Client::new();
    for url in [
        format!("{gateway_url}/readyz"),
        format!("{api_url}/v1/analytics/performance/MX-VEHICLE-1"),
    ] {
        let made = client.get(&url).send().await.unwrap();
        let id = made
            .headers()
            .get("x-request-id")
            .expect("a request id")
            .to_str()
            .unwrap();
        assert_eq!(id.len(), 36, "a UUID, not {id:?}");
        let echoed = client
            .get(&url)
            .header("x-request-id", "trace-me-42")
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.headers().get("x-request-id").unwrap(), "trace-me-42");
    }
}

/// `ingest-worker create-topics` reports the topics that exist with their
/// partition counts, leaves one with fewer partitions than asked for
/// unchanged (with a warning), and asks the cluster to create a missing one.
/// The mock broker does not implement CreateTopics, so for a missing topic
/// this test sees the cluster's refusal reported, not a creation.
#[tokio::test(flavor = "multi_thread")]
async fn create_topics_reports_existing_topics_and_asks_for_missing_ones() {
    let kafka = MockKafka::start(&[(TOPIC, 4), ("energy.readings.dlq", 1)]);
    let run = |env: &[(&'static str, &str)]| {
        let mut env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        env.push(("KAFKA_BROKERS", kafka.bootstrap()));
        env.push(("RUST_LOG", "info".to_owned()));
        Service::start("ingest-worker", &["create-topics"], &env)
    };
    let mut matching = run(&[("READINGS_PARTITIONS", "4")]);
    assert!(matching.wait_exit(Duration::from_secs(60)).success());
    matching.wait_for_log(
        "kafka topic exists topic=energy.readings partitions=4",
        Duration::from_secs(5),
    );
    matching.wait_for_log(
        "kafka topic exists topic=energy.readings.dlq partitions=1",
        Duration::from_secs(5),
    );

    let mut smaller = run(&[("READINGS_PARTITIONS", "8")]);
    assert!(smaller.wait_exit(Duration::from_secs(60)).success());
    smaller.wait_for_log(
        "kafka topic has fewer partitions than asked for; left unchanged, since adding partitions moves device keys (see README) topic=energy.readings partitions=4 wanted=8",
        Duration::from_secs(5),
    );

    let mut missing = run(&[
        ("KAFKA_TOPIC", "other.readings"),
        ("TOPIC_ADMIN_TIMEOUT_MS", "2000"),
    ]);
    assert!(!missing.wait_exit(Duration::from_secs(60)).success());
    missing.wait_for_log(
        "cannot create kafka topics [\"other.readings\", \"other.readings.dlq\"]",
        Duration::from_secs(5),
    );

    let mut bad = run(&[("READINGS_PARTITIONS", "0")]);
    assert!(!bad.wait_exit(Duration::from_secs(60)).success());
    bad.wait_for_log(
        "partition counts must be at least 1",
        Duration::from_secs(5),
    );
}

/// `LOG_FORMAT=json` gives one JSON object per line, and the lines a request
/// logs carry the request id its client got back.
#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_request_id() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let wiring = Wiring::new(String::new(), kafka.bootstrap());
    let (gateway, url) = wiring
        .start_gateway(&[
            ("LOG_FORMAT", "json".to_owned()),
            ("RUST_LOG", "info,tower_http=debug".to_owned()),
        ])
        .await;
    let response = reqwest::Client::new()
        .post(format!("{url}/v1/ingest"))
        .header("x-request-id", "trace-me-0042")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["x-request-id"], "trace-me-0042");
    let lines = eventually(
        "the request's log lines",
        Duration::from_secs(10),
        || async {
            let (lines, _) = gateway.log_lines_from(0);
            let of_request: Vec<Value> = lines
                .iter()
                .map(|line| {
                    serde_json::from_str::<Value>(line)
                        .unwrap_or_else(|_| panic!("not JSON: {line}"))
                })
                .filter(|line| line["span"]["request_id"] == "trace-me-0042")
                .collect();
            (of_request.len() >= 2).then_some(of_request)
        },
    )
    .await;
    for line in &lines {
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["method"], "POST");
        assert_eq!(line["span"]["path"], "/v1/ingest");
        assert!(line["timestamp"].is_string() && line["level"].is_string());
    }
}

/// Posts `readings` as NDJSON and waits until `vehicle` has `rows` history
/// rows: the worker has committed them.
async fn post_and_wait(stack: &Stack, readings: &[Value], vehicle: &str, rows: i64) {
    let body: String = readings.iter().map(|r| format!("{r}\n")).collect();
    let answer = stack.post("application/x-ndjson", body).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let sql = format!("SELECT count(*) FROM vehicle_readings WHERE vehicle_id = '{vehicle}'");
    eventually(
        "the readings committed",
        Duration::from_secs(30),
        || async { (stack.db.count(&sql).await == rows).then_some(()) },
    )
    .await;
}

/// FRESH's answer for `(from, to]`, asked twice: the second is the kept one.
async fn asked_twice(stack: &Stack, from: DateTime<Utc>, to: DateTime<Utc>) -> (u16, Value) {
    let first = analytics(stack, "FRESH", from, to).await;
    let again = analytics(stack, "FRESH", from, to).await;
    assert_eq!(
        first, again,
        "the kept answer differs from the one computed"
    );
    first
}

/// A reading the worker has committed is in the very next answer, late ones
/// landing in buckets already summarised included, and a duplicate changes
/// nothing. Each question is asked twice: the second answer is the one
/// query-api kept, served because no revision it was computed from moved;
/// the next commit moves one, and the kept answer is computed again.
#[tokio::test(flavor = "multi_thread")]
async fn a_committed_reading_is_in_the_next_answer() {
    let stack = Stack::start(2, "fresh", &[]).await;
    let now = Utc::now();
    let now = now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let (from, to) = (now - TimeDelta::hours(3), now);
    let reading = |minutes_ago: i64, kwh: f64| {
        vehicle(
            "FRESH",
            now - TimeDelta::minutes(minutes_ago),
            50.0,
            kwh,
            20.0,
        )
    };
    let answer = |body: &Value| (body["vehicleReadings"].clone(), body["sumDC"].clone());

    post_and_wait(&stack, &[reading(60, 1.5)], "FRESH", 1).await;
    let (status, body) = asked_twice(&stack, from, to).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&body), (json!(1), json!(1.5)));

    // Late, into the five minutes and the hour already summarised.
    post_and_wait(&stack, &[reading(61, 0.25)], "FRESH", 2).await;
    let (_, body) = asked_twice(&stack, from, to).await;
    assert_eq!(answer(&body), (json!(2), json!(1.75)));

    // The same reading again, with another value: the first stored wins.
    post_and_wait(&stack, &[reading(60, 9.0), reading(30, 0.5)], "FRESH", 3).await;
    let (_, body) = asked_twice(&stack, from, to).await;
    assert_eq!(answer(&body), (json!(3), json!(2.25)));
}

/// A charging station speaking OCPP 1.6J through the gateway's OCPP route
/// (registers in Wh, a reboot, a frame arriving late) and its vehicle's
/// battery system reporting a DC register: the analytics hold the energy
/// the registers counted.
#[tokio::test(flavor = "multi_thread")]
async fn ocpp_meter_values_and_registers_give_the_charged_energy() {
    let stack = Stack::start(2, "ocpp", &[]).await;
    let start = whole_seconds(Utc::now() - TimeDelta::hours(2));
    let at = |minute: f64| start + TimeDelta::milliseconds((minute * 60_000.0) as i64);
    // 250 Wh a minute; the meter reboots at minute 20 and counts from zero.
    let register_wh = |minute: u32| {
        if minute < 20 {
            5_000_000 + 250 * minute
        } else {
            250 * (minute - 19)
        }
    };
    let meter_value = |minute: f64, wh: u32| {
        json!({"timestamp": format_timestamp(at(minute)), "sampledValue": [
            {"value": wh.to_string(), "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
             "location": "Outlet", "unit": "Wh"},
            {"value": "230.1", "measurand": "Voltage", "phase": "L1-N", "unit": "V"}
        ]})
    };
    let frame = |values: Vec<Value>| json!([2, "m-1", "MeterValues", {"connectorId": 1, "meterValue": values}]);
    let post_frame = |frame: Value| {
        let url = format!("{}/v1/ocpp/1.6/CP-9", stack.gateway_url);
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(frame.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status().as_u16(),
                202,
                "{}",
                response.text().await.unwrap()
            );
        }
    };
    post_frame(frame(
        (0..15)
            .map(|m| meter_value(f64::from(m), register_wh(m)))
            .collect(),
    ))
    .await;
    post_frame(frame(
        (15..=30)
            .map(|m| meter_value(f64::from(m), register_wh(m)))
            .collect(),
    ))
    .await;
    // The vehicle's battery system: 7/32 kWh a minute into a lifetime count.
    let mut readings: Vec<Value> = (0..=30)
        .map(|m| {
            json!({"type": "VEHICLE", "vehicleId": "EV-9", "soc": 50, "batteryTemp": 24,
                        "kwhRegisterDc": 800.0 + f64::from(m) * 0.21875,
                        "timestamp": format_timestamp(at(f64::from(m)))})
        })
        .collect();
    readings.push(assignment("EV-9", Some("CP-9-1"), at(-1.0)));
    let body: String = readings.iter().map(|r| format!("{r}\n")).collect();
    assert_eq!(stack.post("application/x-ndjson", body).await.status, 202);
    stack.wait_for_rows(31, 31, 1).await;

    let (from, to) = (at(0.0), at(30.0));
    let (status, body) = analytics(&stack, "EV-9", from, to).await;
    assert_eq!(status, 200, "{body}");
    // AC: 19 minutes of 0.25, 0.25 since the reboot, 10 more minutes of 0.25.
    assert_eq!(
        (
            &body["sumAC"],
            &body["sumDC"],
            &body["efficiency"],
            &body["meterIds"]
        ),
        (&json!(7.5), &json!(6.563), &json!(87.5), &json!(["CP-9-1"])),
        "{body}"
    );

    // A frame arriving late splits an interval: the total stays, the reading counts.
    post_frame(frame(vec![meter_value(10.5, register_wh(10) + 100)])).await;
    stack.wait_for_rows(31, 32, 1).await;
    let (_, body) = analytics(&stack, "EV-9", from, to).await;
    assert_eq!(
        (&body["sumAC"], &body["meterReadings"]),
        (&json!(7.5), &json!(31)),
        "{body}"
    );
    let meter: Value = reqwest::get(format!("{}/v1/meters/CP-9-1", stack.api_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            &meter["kwhRegisterAc"],
            &meter["kwhConsumedAc"],
            &meter["registerJumps"],
            &meter["voltage"]
        ),
        (&json!(2.75), &json!(0.25), &json!(0), &json!(230.1)),
        "{meter}"
    );
}
