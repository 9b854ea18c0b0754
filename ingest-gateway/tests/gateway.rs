//! The real gateway on port 0, speaking HTTP, publishing to a real
//! Kafka-protocol broker (librdkafka's mock cluster).

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use clap::Parser;
use ingest_gateway::GatewayArgs;
use serde_json::{json, Value};
use test_support::in_process::InProcess;
use test_support::kafka::{read_topic, MockKafka};
use test_support::readings::{meter, vehicle};

use test_support::services::TOPIC;

struct Gateway {
    service: InProcess,
    url: String,
}

impl Gateway {
    async fn start(kafka: &MockKafka, extra: &[&str]) -> Self {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            gateway: GatewayArgs,
        }
        let mut argv = vec![
            "ingest-gateway".to_owned(),
            format!("--kafka-brokers={}", kafka.bootstrap()),
            format!("--kafka-topic={TOPIC}"),
            "--publish-timeout-ms=1500".to_owned(),
            "--auth-disabled".to_owned(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        let args = Cli::parse_from(argv).gateway;
        let service =
            InProcess::spawn(|listener, shutdown| ingest_gateway::serve(args, listener, shutdown))
                .await;
        Self {
            url: service.url.clone(),
            service,
        }
    }

    async fn post(
        &self,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Option<String>, Value) {
        let answer = test_support::http::ingest(&self.url, content_type, body).await;
        (answer.status, answer.retry_after, answer.body)
    }

    async fn post_json(&self, body: &Value) -> (u16, Value) {
        let (status, _, body) = self.post("application/json", body.to_string()).await;
        (status, body)
    }

    async fn get_status(&self, path: &str) -> u16 {
        reqwest::get(format!("{}{path}", self.url))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

fn now_minus(minutes: i64) -> chrono::DateTime<Utc> {
    let now = Utc::now();
    now - TimeDelta::minutes(minutes)
        - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
}

fn payloads(bootstrap: &str, expected: usize) -> Vec<(String, Value)> {
    read_topic(bootstrap, TOPIC, expected, Duration::from_secs(5))
        .into_iter()
        .map(|m| {
            use rdkafka::Message;
            (
                String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
                serde_json::from_slice(m.payload().unwrap()).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn accepted_readings_are_in_kafka_keyed_by_device_before_the_202() {
    let kafka = MockKafka::start(&[(TOPIC, 4)]);
    let gateway = Gateway::start(&kafka, &[]).await;
    let at = now_minus(10);

    let single = vehicle("V-1", at, 80.0, 1.25, 25.5);
    assert_eq!(
        gateway.post_json(&single).await,
        (
            202,
            json!({"message":"Data ingested successfully","accepted":1})
        )
    );
    let array = json!([
        meter("M-1", at, 1.4, 231.5),
        vehicle("V-2", at, 10.0, 0.5, 20.0)
    ]);
    assert_eq!(gateway.post_json(&array).await.1["accepted"], 2);
    let ndjson = format!(
        "{}\n{}\n",
        meter("M-2", at, 1.0, 230.0),
        meter("M-3", at, 2.0, 229.0)
    );
    let (status, _, body) = gateway.post("application/x-ndjson", ndjson).await;
    assert_eq!((status, body["accepted"].clone()), (202, json!(2)));

    let mut published = payloads(&kafka.bootstrap(), 5);
    published.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<&str> = published.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["M-1", "M-2", "M-3", "V-1", "V-2"]);
    // The canonical payload is the original API's shape.
    let v1 = &published[3].1;
    assert_eq!(v1, &single);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_validation_rule_answers_422_naming_the_field_and_publishes_nothing() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let gateway = Gateway::start(&kafka, &["--max-future-seconds=300"]).await;
    let at = now_minus(1);
    let ok = vehicle("V-1", at, 80.0, 1.25, 25.5);
    let ok_meter = meter("M-1", at, 1.4, 231.5);
    let with = |base: &Value, field: &str, value: Value| {
        let mut v = base.clone();
        v[field] = value;
        v
    };
    let without = |base: &Value, field: &str| {
        let mut v = base.clone();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    let future = shared::wire::format_timestamp(Utc::now() + TimeDelta::minutes(6));
    let cutoff = (Utc::now().date_naive() - chrono::Days::new(90))
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let retention_error = format!(
        "is older than the 90-day retention (before {})",
        shared::wire::format_timestamp(cutoff)
    );
    let cases: Vec<(Value, &str, &str)> = vec![
        (without(&ok, "type"), "type", "is required"),
        (
            with(&ok, "type", json!("BUS")),
            "type",
            "must be one of VEHICLE, METER, ASSIGNMENT",
        ),
        (without(&ok, "vehicleId"), "vehicleId", "is required"),
        (
            with(&ok, "vehicleId", json!(12)),
            "vehicleId",
            "must be a string",
        ),
        (
            with(&ok, "vehicleId", json!("")),
            "vehicleId",
            "must not be empty",
        ),
        (
            with(&ok, "vehicleId", json!("v".repeat(65))),
            "vehicleId",
            "must be at most 64 characters",
        ),
        (
            with(&ok, "vehicleId", json!("V\n1")),
            "vehicleId",
            "must not contain control characters",
        ),
        (
            with(&ok, "vehicleId", json!("V-1 ")),
            "vehicleId",
            "must not start or end with whitespace",
        ),
        (
            with(&ok, "soc", json!(101)),
            "soc",
            "must be between 0 and 100",
        ),
        (with(&ok, "soc", json!("80")), "soc", "must be a number"),
        (without(&ok, "soc"), "soc", "is required"),
        (
            with(&ok, "kwhDeliveredDc", json!(-1)),
            "kwhDeliveredDc",
            "must be at least 0",
        ),
        (
            with(&ok, "batteryTemp", json!(121)),
            "batteryTemp",
            "must be between -60 and 120",
        ),
        (
            with(&ok, "batteryTemp", json!(-61)),
            "batteryTemp",
            "must be between -60 and 120",
        ),
        (
            with(&ok_meter, "kwhConsumedAc", json!(-0.5)),
            "kwhConsumedAc",
            "must be at least 0",
        ),
        (
            with(&ok_meter, "voltage", json!(2001)),
            "voltage",
            "must be between 0 and 2000",
        ),
        (
            with(&ok_meter, "voltage", json!(-1)),
            "voltage",
            "must be between 0 and 2000",
        ),
        (
            with(&ok_meter, "meterId", json!(null)),
            "meterId",
            "must be a string",
        ),
        (
            with(&ok, "timestamp", json!("2026-02-10T10:00:00")),
            "timestamp",
            "must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-02-10T10:00:00Z",
        ),
        (
            with(&ok, "timestamp", json!(future)),
            "timestamp",
            "must not be more than 300 seconds in the future",
        ),
        (
            json!({"type":"ASSIGNMENT","vehicleId":"V-1","timestamp":shared::wire::format_timestamp(at)}),
            "meterId",
            "is required (null ends the vehicle's assignment)",
        ),
        (
            json!({"type":"ASSIGNMENT","vehicleId":"V-1","meterId":5,"timestamp":shared::wire::format_timestamp(at)}),
            "meterId",
            "must be a string or null",
        ),
        (
            with(&ok, "timestamp", json!("2020-01-01T00:00:00Z")),
            "timestamp",
            &retention_error,
        ),
        (json!("a string"), "reading", "must be a JSON object"),
    ];
    for (reading, field, error) in cases {
        // Each bad reading goes second in a batch: the whole batch is refused.
        let (status, body) = gateway
            .post_json(&json!([ok.clone(), reading.clone()]))
            .await;
        assert_eq!(status, 422, "{reading}");
        assert_eq!(
            body["errors"],
            json!([{"index":1,"field":field,"error":error}]),
            "{reading}"
        );
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("nothing was published"));
    }
    // Numbers that JSON cannot hold are malformed JSON: 400.
    let (status, _, body) = gateway
        .post("application/json", r#"{"type":"VEHICLE","vehicleId":"V","soc":1e999,"kwhDeliveredDc":1,"batteryTemp":1,"timestamp":"2026-01-01T00:00:00Z"}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        payloads(&kafka.bootstrap(), 1).is_empty(),
        "a refused batch published something"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_oversized_and_mistyped_bodies_get_clear_errors() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let gateway =
        Gateway::start(&kafka, &["--max-batch-readings=3", "--max-body-bytes=2000"]).await;
    let at = now_minus(1);
    let r = vehicle("V-1", at, 80.0, 1.25, 25.5);

    let (status, _, body) = gateway
        .post("application/json", "{\"type\":\"VEHICLE\",")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{body}"
    );
    let (status, _, body) = gateway
        .post("application/x-ndjson", format!("{r}\nnot json\n"))
        .await;
    assert_eq!(
        (
            status,
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("malformed JSON on line 2")
        ),
        (400, true)
    );
    let (status, _, _) = gateway.post("application/json", "[]").await;
    assert_eq!(status, 400);
    let (status, _, body) = gateway.post("text/plain", r.to_string()).await;
    assert_eq!(status, 415, "{body}");
    let (status, _, body) = gateway
        .post("application/json", json!([r, r, r, r]).to_string())
        .await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (413, "a request may carry at most 3 readings")
    );
    let (status, _, body) = gateway.post("application/json", " ".repeat(2001)).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (413, "the request body is larger than 2000 bytes")
    );
    test_support::http::assert_fallbacks(&gateway.url, reqwest::Method::GET, "/v1/ingest").await;
    assert!(payloads(&kafka.bootstrap(), 1).is_empty());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_means_503_with_retry_after_never_202_then_recovery() {
    let kafka = MockKafka::start(&[(TOPIC, 2)]);
    let gateway = Gateway::start(&kafka, &[]).await;
    let at = now_minus(5);
    assert_eq!(
        gateway
            .post_json(&vehicle("V-1", at, 50.0, 1.0, 20.0))
            .await
            .0,
        202
    );
    assert_eq!(gateway.get_status("/readyz").await, 200);

    kafka.broker_down();
    for i in 0..3 {
        let started = Instant::now();
        let (status, retry_after, body) = gateway
            .post(
                "application/json",
                vehicle("V-1", at + TimeDelta::seconds(i + 1), 50.0, 1.0, 20.0).to_string(),
            )
            .await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(retry_after.as_deref(), Some("5"));
        // Bounded by the publish timeout (1.5 s) plus slack.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(gateway.get_status("/readyz").await, 503);
    assert_eq!(gateway.get_status("/healthz").await, 200);

    kafka.broker_up();
    test_support::eventually(
        "a 202 after the broker is back",
        Duration::from_secs(30),
        || async {
            let (status, _) = gateway
                .post_json(&vehicle("V-9", at, 50.0, 1.0, 20.0))
                .await;
            (status == 202).then_some(())
        },
    )
    .await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn overload_is_shed_with_503_at_once_instead_of_queueing() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let gateway = Gateway::start(&kafka, &["--max-concurrent-requests=2"]).await;
    // With the broker down every admitted request holds its slot until the publish timeout.
    kafka.broker_down();
    let at = now_minus(1);
    let requests = (0..12).map(|i| {
        let body = vehicle("V-1", at + TimeDelta::seconds(i), 50.0, 1.0, 20.0).to_string();
        let gateway = &gateway;
        async move {
            let started = Instant::now();
            let (status, retry_after, body) = gateway.post("application/json", body).await;
            (status, retry_after, body, started.elapsed())
        }
    });
    let results = futures::future::join_all(requests).await;
    let shed: Vec<_> = results
        .iter()
        .filter(|(_, _, body, _)| {
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("concurrent request limit"))
        })
        .collect();
    assert_eq!(shed.len(), 10, "{results:?}");
    for (status, retry_after, _, elapsed) in &shed {
        assert_eq!((*status, retry_after.as_deref()), (503, Some("5")));
        assert!(
            *elapsed < Duration::from_secs(2),
            "a shed request waited {elapsed:?}"
        );
    }
    assert!(
        results.iter().all(|(status, ..)| *status == 503),
        "{results:?}"
    );
    // Health stays answerable under overload.
    assert_eq!(gateway.get_status("/healthz").await, 200);
    kafka.broker_up();
    gateway.stop().await;
}

/// `/openapi.json` describes every route the gateway serves, and its request
/// examples, made fresh for each request of the description, match the
/// described schema and are accepted by the real endpoint.
#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_described_and_the_described_examples_are_accepted() {
    use test_support::openapi::{assert_matches, operations, response_schema, violations};
    let kafka = MockKafka::start(&[(TOPIC, 2)]);
    let gateway = Gateway::start(&kafka, &[]).await;
    test_support::process::wait_until_ok(
        &format!("{}/readyz", gateway.url),
        Duration::from_secs(30),
    )
    .await;
    let description: Value = reqwest::get(format!("{}/openapi.json", gateway.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(description["openapi"].as_str().unwrap().starts_with("3.1"));
    let described: Vec<(&str, &str)> = operations(&description)
        .iter()
        .map(|o| (o.method, o.path))
        .collect();
    assert_eq!(
        described,
        [
            ("get", "/healthz"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
            ("get", "/readyz"),
            ("post", "/v1/ingest"),
            ("post", "/v1/ocpp/{version}/{stationId}"),
        ]
    );
    for path in ["/healthz", "/metrics", "/openapi.json", "/readyz"] {
        assert_eq!(gateway.get_status(path).await, 200, "{path}");
    }

    let operations = operations(&description);
    let ingest = operations.iter().find(|o| o.method == "post").unwrap();
    assert_eq!(ingest.spec["security"], json!([{"api_key": []}]));
    for status in ["202", "400", "401", "403", "413", "415", "422", "503"] {
        assert!(
            ingest.spec["responses"][status].is_object(),
            "{status} described"
        );
    }
    let content = &ingest.spec["requestBody"]["content"];
    let mut published = 0;
    for (content_type, example_count) in [("application/json", 2), ("application/x-ndjson", 1)] {
        let examples = content[content_type]["examples"].as_object().unwrap();
        assert_eq!(examples.len(), example_count, "{content_type} examples");
        for (name, example) in examples {
            let value = &example["value"];
            let what = format!("{content_type} example {name}");
            let (body, readings) = match value {
                Value::String(lines) => (lines.clone(), lines.lines().count()),
                Value::Array(items) => (value.to_string(), items.len()),
                _ => (value.to_string(), 1),
            };
            if content_type == "application/json" {
                assert_matches(&description, &content[content_type]["schema"], value, &what);
            }
            let (status, _, answer) = gateway.post(content_type, body).await;
            assert_eq!(status, 202, "{what}: {answer}");
            assert_eq!(answer["accepted"], readings, "{what}");
            assert_matches(
                &description,
                response_schema(ingest, 202).unwrap(),
                &answer,
                &what,
            );
            published += readings;
        }
    }
    assert_eq!(published, 1 + 3 + 3);
    assert_eq!(
        test_support::kafka::end_total(&kafka.bootstrap(), TOPIC),
        published as i64
    );

    // The schema refuses what the endpoint refuses, and the 422 is as described.
    let invalid = json!({"type": "VEHICLE", "vehicleId": "EV-03", "soc": 101, "kwhDeliveredDc": 1,
                         "batteryTemp": 20, "timestamp": shared::wire::format_timestamp(Utc::now())});
    let (status, answer) = gateway.post_json(&invalid).await;
    assert_eq!(status, 422);
    assert_matches(
        &description,
        response_schema(ingest, 422).unwrap(),
        &answer,
        "422",
    );
    assert!(
        !violations(
            &description,
            &content["application/json"]["schema"],
            &invalid
        )
        .is_empty(),
        "soc 101 matches the described schema"
    );
    gateway.stop().await;
}

/// POSTs an OCPP-J frame for `station` speaking `version`.
async fn post_ocpp(gateway: &Gateway, path: &str, frame: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gateway.url))
        .header("content-type", "application/json")
        .body(frame.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// OCPP meter values as stations send them become METER register readings
/// in kWh, keyed by station and connector; what cannot be mapped is a 422
/// naming the frame's JSON path, and nothing of the request is published.
#[tokio::test(flavor = "multi_thread")]
async fn ocpp_meter_values_are_published_as_register_readings() {
    let kafka = MockKafka::start(&[(TOPIC, 2)]);
    let gateway = Gateway::start(&kafka, &[]).await;
    let at = shared::wire::format_timestamp(now_minus(5));
    let v16 = json!([2, "19223201", "MeterValues", {
        "connectorId": 1,
        "transactionId": 170,
        "meterValue": [{
            "timestamp": at,
            "sampledValue": [
                {"value": "2500300", "context": "Sample.Periodic", "format": "Raw",
                 "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
                {"value": "230.4", "measurand": "Voltage", "phase": "L1-N", "unit": "V"}
            ]
        }, {
            "timestamp": at,
            "sampledValue": [{"value": "61", "measurand": "SoC", "location": "EV", "unit": "Percent"}]
        }]
    }]);
    assert_eq!(
        post_ocpp(&gateway, "/v1/ocpp/1.6/CP-7", &v16).await,
        (
            202,
            json!({"message": "Data ingested successfully", "accepted": 1, "skipped": 1})
        )
    );
    let v201 = json!([2, "a1b2", "TransactionEvent", {
        "eventType": "Updated", "timestamp": at, "triggerReason": "MeterValuePeriodic", "seqNo": 2,
        "transactionInfo": {"transactionId": "tx-1"}, "evse": {"id": 2, "connectorId": 1},
        "meterValue": [{"timestamp": at, "sampledValue": [
            {"value": 75.25, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "kWh"}}
        ]}]
    }]);
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/2.0.1/CS-2?nominalVoltage=400", &v201).await;
    assert_eq!((status, &body["accepted"]), (202, &json!(1)), "{body}");

    let mut published = payloads(&kafka.bootstrap(), 2);
    published.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        published,
        [
            (
                "CP-7-1".to_owned(),
                json!({"type": "METER", "meterId": "CP-7-1", "kwhRegisterAc": 2500.3,
                                         "voltage": 230.4, "timestamp": at})
            ),
            (
                "CS-2-2".to_owned(),
                json!({"type": "METER", "meterId": "CS-2-2", "kwhRegisterAc": 75.25,
                                         "voltage": 400.0, "timestamp": at})
            ),
        ]
    );

    // Refusals: each names what is wrong, and nothing more is published.
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/2.0.1/CS-2", &v201).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["field"], "payload.meterValue[0]");
    assert!(
        body["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("nominalVoltage"),
        "{body}"
    );
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/1.5/CP-7", &v16).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (422, &json!("version")),
        "{body}"
    );
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/1.6/CP-7", &json!({"connectorId": 1})).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (422, &json!("frame")),
        "{body}"
    );
    let stale = json!([2, "1", "MeterValues", {"connectorId": 1, "meterValue": [{
        "timestamp": "2001-01-01T00:00:00Z", "sampledValue": [{"value": "5"}]}]}]);
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/1.6/CP-7?nominalVoltage=230", &stale).await;
    assert_eq!(
        (status, &body["errors"][0]["field"]),
        (422, &json!("timestamp")),
        "{body}"
    );
    let (status, body) = post_ocpp(&gateway, "/v1/ocpp/1.6/CP-7?nominalVoltage=lots", &v16).await;
    assert_eq!(status, 400, "{body}");
    assert!(read_topic(&kafka.bootstrap(), TOPIC, 3, Duration::from_secs(2)).len() == 2);
    gateway.stop().await;
}
