//! Hostile input against the running services, from the corpus in
//! `test-support/fixtures/hostile/gateway.json`: every request gets its
//! expected status and an error that names the problem, nothing of a refused
//! request is published, and the legal but unusual ids come back byte for
//! byte through Kafka, PostgreSQL and the query API. The same bodies,
//! produced straight into Kafka with binary, empty and keyless messages,
//! are stored or dead-lettered with their reason, and the worker goes on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, FixedOffset, SecondsFormat, TimeDelta, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use test_support::http::{json_of, path_segment};
use test_support::kafka::{committed_total, end_total, header, producer, read_topic};
use test_support::services::Stack;
use test_support::{eventually, fixture_path};

use test_support::services::TOPIC;
const DLQ: &str = "energy.readings.dlq";

/// One hostile request and what it must get.
#[derive(Debug)]
struct Case {
    name: String,
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
    status: u16,
    error: Option<String>,
    field: Option<String>,
    index: Option<u64>,
    /// A legal but unusual id this case stores, to be read back.
    roundtrip: Option<String>,
    /// In the topic: "stored" or "dead-lettered".
    in_topic: String,
}

/// Expands the corpus' placeholders: `{{NOW}}` (a minute ago, UTC) and its
/// spellings in other offsets, and `{{REPEAT n}}…{{END}}`.
fn expand(template: &str, now: DateTime<Utc>) -> String {
    let mut text = template.to_owned();
    while let Some(start) = text.find("{{REPEAT ") {
        let count_end = start + text[start..].find("}}").unwrap();
        let count: usize = text[start + 9..count_end].parse().unwrap();
        let end = count_end + text[count_end..].find("{{END}}").unwrap();
        let repeated = text[count_end + 2..end].repeat(count);
        text.replace_range(start..end + 7, &repeated);
    }
    let at = now - TimeDelta::minutes(1);
    let in_offset = |hours: i32| {
        at.with_timezone(&FixedOffset::east_opt(hours * 3600).unwrap())
            .to_rfc3339_opts(SecondsFormat::Secs, false)
    };
    let at_seconds = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    text.replace("{{NOW}}", &at_seconds)
        .replace("{{NOW_PLUS14}}", &in_offset(14))
        .replace("{{NOW_MINUS12}}", &in_offset(-12))
        .replace("{{NOW_NAIVE}}", at_seconds.trim_end_matches('Z'))
        .replace(
            "{{NOW_NANOS}}",
            &at.to_rfc3339_opts(SecondsFormat::Nanos, true),
        )
        .replace(
            "{{NOW_LEAP}}",
            &format!("{}T23:59:60Z", (at - TimeDelta::days(1)).date_naive()),
        )
}

fn corpus(now: DateTime<Utc>) -> Vec<Case> {
    let text = std::fs::read_to_string(fixture_path("hostile/gateway.json")).unwrap();
    let raw: Vec<Value> = serde_json::from_str(&text).unwrap();
    raw.iter()
        .map(|case| {
            let text = |key: &str| case[key].as_str().map(str::to_owned);
            let body = match (&case["body"], &case["body_base64"]) {
                (Value::String(body), _) => expand(body, now).into_bytes(),
                (_, Value::String(encoded)) => base64_decode(encoded),
                _ => panic!("{case}: no body"),
            };
            Case {
                name: text("name").unwrap(),
                method: text("method").unwrap_or_else(|| "POST".to_owned()),
                path: text("path").unwrap_or_else(|| "/v1/ingest".to_owned()),
                content_type: match &case["content_type"] {
                    Value::Null if case.get("content_type").is_some() => None,
                    Value::String(content_type) => Some(content_type.clone()),
                    _ => Some("application/json".to_owned()),
                },
                body,
                status: case["status"].as_u64().unwrap() as u16,
                error: text("error"),
                field: text("field"),
                index: case["index"].as_u64(),
                roundtrip: text("roundtrip"),
                in_topic: text("in_topic").unwrap_or_else(|| panic!("{case}: in_topic")),
            }
        })
        .collect()
}

fn base64_decode(encoded: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap()
}

/// The system with the gateway's limits low enough for the corpus' large cases.
async fn hostile_stack(group: &str) -> Stack {
    Stack::start(
        2,
        group,
        &[
            ("GATEWAY_MAX_BODY_BYTES", "65536".to_owned()),
            ("GATEWAY_MAX_BATCH_READINGS", "100".to_owned()),
        ],
    )
    .await
}

/// Every message of `errors`' "error" and each of "errors"' field errors.
fn messages(body: &Value) -> Vec<String> {
    let mut found: Vec<String> = body["error"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    for error in body["errors"].as_array().into_iter().flatten() {
        found.push(format!(
            "{} {}",
            error["field"].as_str().unwrap_or(""),
            error["error"].as_str().unwrap_or("")
        ));
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn every_hostile_request_gets_a_clear_answer_and_legal_ids_round_trip() {
    let stack = hostile_stack("hostile-http").await;
    let cases = corpus(Utc::now());
    assert!(cases.len() >= 60, "{} cases", cases.len());
    let client = reqwest::Client::new();
    let mut accepted = 0;
    for case in &cases {
        let mut request = client.request(
            case.method.parse().unwrap(),
            format!("{}{}", stack.gateway_url, case.path),
        );
        if let Some(content_type) = &case.content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.body(case.body.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, case.status, "{}: {text}", case.name);
        if status == 202 {
            accepted += 1;
            continue;
        }
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{}: the error is not JSON: {text}", case.name));
        let found = messages(&body);
        let expected = case
            .error
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no expected error", case.name));
        assert!(
            found.iter().any(|message| message.contains(expected)),
            "{}: expected an error containing {expected:?}, got {found:?}",
            case.name
        );
        if let Some(field) = &case.field {
            let fields: Vec<&str> = body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["field"].as_str().unwrap())
                .collect();
            assert!(
                fields.contains(&field.as_str()),
                "{}: fields {fields:?}",
                case.name
            );
        }
        if let Some(index) = case.index {
            assert!(
                body["errors"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|e| e["index"] == index),
                "{}",
                case.name
            );
        }
    }
    // Refused requests published nothing: one message per accepted reading.
    assert_eq!(end_total(&stack.kafka.bootstrap(), TOPIC), accepted);
    assert_eq!(
        reqwest::get(format!("{}/healthz", stack.gateway_url))
            .await
            .unwrap()
            .status(),
        200
    );

    // The legal but unusual ids, byte for byte: in Kafka, in PostgreSQL and from the API.
    let unusual: BTreeSet<String> = cases.iter().filter_map(|c| c.roundtrip.clone()).collect();
    assert!(unusual.len() >= 10);
    let in_kafka: BTreeSet<String> = read_topic(
        &stack.kafka.bootstrap(),
        TOPIC,
        accepted as usize,
        Duration::from_secs(30),
    )
    .iter()
    .filter_map(|m| {
        let reading: Value = serde_json::from_slice(rdkafka::Message::payload(m)?).ok()?;
        let id = reading["vehicleId"].as_str()?.to_owned();
        assert_eq!(
            rdkafka::Message::key(m),
            Some(id.as_bytes()),
            "the key is the id"
        );
        unusual.contains(&id).then_some(id)
    })
    .collect();
    assert_eq!(in_kafka, unusual);
    let stored: BTreeSet<String> = eventually(
        "the unusual ids stored",
        Duration::from_secs(60),
        || async {
            let ids: Vec<String> = sqlx::query_scalar(
                "SELECT vehicle_id FROM vehicles_current WHERE vehicle_id = ANY($1)",
            )
            .bind(unusual.iter().cloned().collect::<Vec<_>>())
            .fetch_all(&stack.db.pool)
            .await
            .unwrap();
            (ids.len() == unusual.len()).then(|| ids.into_iter().collect())
        },
    )
    .await;
    assert_eq!(stored, unusual);
    for id in &unusual {
        let state = json_of(client.get(format!(
            "{}/v1/vehicles/{}",
            stack.api_url,
            path_segment(id)
        )))
        .await;
        assert_eq!(
            state["vehicleId"].as_str(),
            Some(id.as_str()),
            "{id:?} from /v1/vehicles"
        );
        let by_query = client
            .get(format!(
                "{}/v1/analytics/performance/vehicleid",
                stack.api_url
            ))
            .query(&[("vehicleId", id)]);
        let performance = json_of(by_query).await;
        assert_eq!(
            performance["vehicleId"].as_str(),
            Some(id.as_str()),
            "{id:?} from the original API's route"
        );
        assert_eq!(performance["vehicleReadings"], 1, "{id:?}");
    }
}

/// A message to produce: key, payload, "stored" or "dead-lettered", and the
/// text its dead-letter reason must hold.
type Produced<'a> = (Option<Vec<u8>>, Vec<u8>, &'a str, Option<String>);

#[tokio::test(flavor = "multi_thread")]
async fn hostile_messages_in_the_topic_are_dead_lettered_with_their_reason_and_the_rest_stored() {
    let stack = hostile_stack("hostile-topic").await;
    let cases = corpus(Utc::now());
    let producer: FutureProducer = producer(&stack.kafka.bootstrap());
    // Every corpus body as a message, keyed like a device, then the extras.
    let mut messages: Vec<Produced<'_>> = cases
        .iter()
        .map(|case| {
            (
                Some(b"hostile".to_vec()),
                case.body.clone(),
                case.in_topic.as_str(),
                case.error.clone(),
            )
        })
        .collect();
    let valid = test_support::readings::vehicle(
        "EV-KEYLESS",
        Utc::now() - TimeDelta::minutes(2),
        50.0,
        1.0,
        20.0,
    );
    messages.push((None, valid.to_string().into_bytes(), "stored", None));
    messages.push((
        None,
        Vec::new(),
        "dead-lettered",
        Some("empty payload".to_owned()),
    ));
    messages.push((
        Some(b"bin".to_vec()),
        (0..=255u8).collect(),
        "dead-lettered",
        Some("not valid JSON".to_owned()),
    ));
    messages.push((
        Some(b"bin".to_vec()),
        vec![0; 1024],
        "dead-lettered",
        Some("not valid JSON".to_owned()),
    ));
    messages.push((
        Some(Vec::new()),
        b"\x1f\x8b\x08\x00gzip?".to_vec(),
        "dead-lettered",
        Some("not valid JSON".to_owned()),
    ));
    // One partition, in this order: offsets are the indexes.
    for (key, payload, _, _) in &messages {
        let mut record = FutureRecord::<[u8], [u8]>::to(TOPIC)
            .payload(payload.as_slice())
            .partition(0);
        if let Some(key) = key {
            record = record.key(key.as_slice());
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let expected_dead: BTreeMap<i64, Option<String>> = messages
        .iter()
        .enumerate()
        .filter(|(_, (_, _, fate, _))| *fate == "dead-lettered")
        .map(|(offset, (_, _, _, error))| (offset as i64, error.clone()))
        .collect();
    let dead = read_topic(
        &stack.kafka.bootstrap(),
        DLQ,
        expected_dead.len(),
        Duration::from_secs(90),
    );
    let mut reasons = BTreeMap::new();
    for message in &dead {
        let offset: i64 = header(message, "dlq.source.offset")
            .unwrap()
            .parse()
            .unwrap();
        reasons.insert(offset, header(message, "dlq.reason").unwrap());
    }
    assert_eq!(
        reasons.keys().collect::<Vec<_>>(),
        expected_dead.keys().collect::<Vec<_>>()
    );
    for (offset, reason) in &reasons {
        assert!(!reason.is_empty());
        let case_error = expected_dead[offset].as_deref();
        // A single reading's field errors read the same in the topic as over
        // HTTP (an array or NDJSON body is one invalid message in the topic).
        let single_reading_refused = cases
            .get(*offset as usize)
            .is_none_or(|c| c.status == 422 && c.body.starts_with(b"{"));
        if let (Some(expected), true) = (case_error, single_reading_refused) {
            assert!(
                reason.contains(expected),
                "offset {offset}: {reason:?} lacks {expected:?}"
            );
        }
    }
    // Every valid message stored (the same device and time is one reading),
    // and the worker went on to commit everything.
    let total = messages.len() as i64;
    eventually("all offsets committed", Duration::from_secs(60), || async {
        (committed_total(&stack.kafka.bootstrap(), "hostile-topic", TOPIC, 2) == total)
            .then_some(())
    })
    .await;
    let stored_ids: BTreeSet<String> =
        sqlx::query_scalar("SELECT DISTINCT vehicle_id FROM vehicle_readings")
            .fetch_all(&stack.db.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    for (offset, (_, payload, fate, _)) in messages.iter().enumerate() {
        if *fate == "stored" {
            let reading: Value = serde_json::from_slice(payload).unwrap();
            let id = reading["vehicleId"]
                .as_str()
                .or(reading["meterId"].as_str())
                .unwrap();
            let in_meters: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM meter_readings WHERE meter_id = $1)",
            )
            .bind(id)
            .fetch_one(&stack.db.pool)
            .await
            .unwrap();
            let table_has = stored_ids.contains(id) || in_meters;
            assert!(table_has, "offset {offset}: {id:?} not stored");
        }
    }
    let mut worker = stack.worker;
    assert!(worker.is_running(), "the worker stopped");
}
