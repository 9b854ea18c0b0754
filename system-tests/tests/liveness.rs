//! Liveness: every valid reading is eventually stored, whatever the input
//! does to the worker's queues and memory. Real processes, a real
//! PostgreSQL, the test broker.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use rdkafka::Message;
use serde_json::json;
use test_support::eventually;
use test_support::http::{sample, scrape};
use test_support::kafka::{
    committed_total, end_total, header, produce_all, produce_to_partitions, producer, read_topic,
    MockKafka, RawMessage,
};
use test_support::postgres::fresh_database;
use test_support::readings::{message, vehicle};
use test_support::services::{Wiring, TOPIC};

const DLQ: &str = "energy.readings.dlq";

/// More rejects in one batch than the dead-letter producer's queue holds
/// (50 here, 200,000 or 64 MiB by default): each goes to the dead-letter
/// topic exactly once, the batch commits, and the partition flows on.
#[tokio::test(flavor = "multi_thread")]
async fn more_rejects_than_the_producer_queue_holds_go_through_once_each() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let (_worker, _) = wiring
        .start_worker(
            "dlq-flood",
            &[
                ("KAFKA_QUEUE_BUFFERING_MAX_MESSAGES", "50".to_owned()),
                ("BATCH_MAX_WAIT_MS", "5000".to_owned()),
            ],
        )
        .await;
    let producer = producer(&kafka.bootstrap());
    let at = Utc::now() - TimeDelta::minutes(5);
    let mut messages: Vec<RawMessage> = (0..200)
        .map(|i| {
            (
                Some(b"poison".to_vec()),
                Some(format!("not json {i}").into_bytes()),
            )
        })
        .collect();
    messages.push(message(&vehicle("V1", at, 50.0, 1.0, 20.0)));
    produce_all(&producer, TOPIC, &messages).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    produce_all(
        &producer,
        TOPIC,
        &[message(&vehicle("V2", at, 51.0, 1.0, 20.0))],
    )
    .await;

    eventually(
        "V1 and V2 stored, every offset committed",
        Duration::from_secs(60),
        || async {
            let stored = db.count("SELECT count(*) FROM vehicle_readings").await;
            let committed = committed_total(&kafka.bootstrap(), "dlq-flood", TOPIC, 1);
            (stored == 2 && committed == end_total(&kafka.bootstrap(), TOPIC)).then_some(())
        },
    )
    .await;
    // Ask for more than expected: a copy too many would show.
    let dead = read_topic(&kafka.bootstrap(), DLQ, 201, Duration::from_secs(10));
    let offsets: BTreeSet<i64> = dead
        .iter()
        .map(|m| header(m, "dlq.source.offset").unwrap().parse().unwrap())
        .collect();
    assert_eq!(dead.len(), 200, "one dead letter per reject");
    assert_eq!(offsets, (0..200).collect::<BTreeSet<i64>>());
    assert!(dead.iter().all(|m| m.key() == Some(b"poison".as_slice())));
}

/// Messages far over the size of a reading are refused unread, and
/// batches are bounded in bytes as well as in number: draining a backlog of
/// 300 readings padded to 900 KB (270 MB) and 2,000 padded to 60 KB (120 MB)
/// stays within the worker's stated memory (ARCHITECTURE.md).
#[tokio::test(flavor = "multi_thread")]
async fn oversized_messages_are_refused_and_batches_are_bounded_in_bytes() {
    // The test broker keeps at most 5 MiB per partition: enough partitions
    // to hold the whole backlog.
    let kafka = MockKafka::start(&[(TOPIC, 128), (DLQ, 16)]);
    let db = fresh_database().await;
    let at = Utc::now() - TimeDelta::minutes(30);
    let padded = |id: String, bytes: usize| {
        let mut reading = vehicle(&id, at, 50.0, 1.0, 20.0);
        reading["padding"] = json!("x".repeat(bytes));
        message(&reading)
    };
    // Spread evenly, whatever the keys hash to.
    let backlog: Vec<(i32, RawMessage)> = (0..300)
        .map(|i| padded(format!("HUGE-{i}"), 900_000))
        .chain((0..2_000).map(|i| padded(format!("LARGE-{i}"), 60_000)))
        .enumerate()
        .map(|(i, message)| (i as i32 % 128, message))
        .collect();
    produce_to_partitions(&producer(&kafka.bootstrap()), TOPIC, &backlog).await;

    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    // A long wait, so batches fill up to their limits instead of the timer.
    let (worker, health) = wiring
        .start_worker("oversized", &[("BATCH_MAX_WAIT_MS", "5000".to_owned())])
        .await;
    eventually(
        "every message committed",
        Duration::from_secs(180),
        || async {
            let committed = committed_total(&kafka.bootstrap(), "oversized", TOPIC, 128);
            (committed == 2_300).then_some(())
        },
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM vehicle_readings").await,
        2_000
    );
    let metrics = scrape(&health).await;
    assert_eq!(
        sample(
            &metrics,
            "energy_worker_dead_lettered_total",
            &[("reason", "too_large")]
        ),
        Some(300.0)
    );
    let peak_mib = worker.peak_rss_kib().expect("worker peak RSS") / 1024;
    eprintln!("worker peak RSS {peak_mib} MiB");
    // ARCHITECTURE.md, "Memory is bounded": the worker's figure with the defaults.
    assert!(peak_mib < 256, "worker peak RSS {peak_mib} MiB");
}
