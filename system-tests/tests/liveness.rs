//! Liveness: every valid reading is eventually stored, whatever the input
//! does to the worker's queues and memory. Real processes, a real
//! PostgreSQL, the test broker.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::{Days, TimeDelta, Utc};
use rdkafka::Message;
use serde_json::json;
use shared::wire::format_timestamp;
use test_support::eventually;
use test_support::http::{json_of, sample, scrape};
use test_support::kafka::{
    committed_total, end_total, header, produce_all, produce_to_partitions, producer, read_topic,
    MockKafka, RawMessage,
};
use test_support::oracle::{answers_kwh, figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::fresh_database;
use test_support::readings::{message, meter, vehicle};
use test_support::services::{Stack, Wiring, TOPIC};

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

/// A day's partitions are dropped by hand while the day is still accepted,
/// and the same readings are sent again: the partitions are created again,
/// the day's rollups follow them, and each reading counts once. The answer
/// equals the raw computation.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_day_sent_again_counts_once() {
    let stack = Stack::start(2, "dropped-day", &[]).await;
    let day = Utc::now().date_naive() - Days::new(1);
    let midnight = day.and_hms_opt(0, 0, 0).unwrap().and_utc();
    let readings: String = (0..144)
        .flat_map(|i| {
            let at = midnight + TimeDelta::minutes(10 * i + 5);
            [
                vehicle("DAY", at, 50.0, 0.5 + i as f64 / 100.0, 20.0),
                meter("DAY", at, 0.6 + i as f64 / 100.0, 230.0),
            ]
        })
        .map(|reading| format!("{reading}\n"))
        .collect();
    assert_eq!(
        stack
            .post("application/x-ndjson", readings.clone())
            .await
            .status,
        202
    );
    stack.wait_for_rows(144, 144, 0).await;

    let suffix = day.format("%Y%m%d");
    for table in ["vehicle_readings", "meter_readings"] {
        sqlx::query(&format!("DROP TABLE {table}_p{suffix}"))
            .execute(&stack.db.pool)
            .await
            .unwrap();
    }
    stack.wait_for_rows(0, 0, 0).await;
    assert_eq!(
        stack.post("application/x-ndjson", readings).await.status,
        202
    );
    stack.wait_for_rows(144, 144, 0).await;

    let (from, to) = (midnight, midnight + TimeDelta::days(1));
    let raw = figures(&stack.db.pool, RAW_PERFORMANCE_SQL, "DAY", from, to).await;
    let answer = json_of(
        reqwest::Client::new()
            .get(format!("{}/v1/analytics/performance/DAY", stack.api_url))
            .query(&[
                ("from", format_timestamp(from)),
                ("to", format_timestamp(to)),
            ]),
    )
    .await;
    assert_eq!(answer["vehicleReadings"], json!(raw.vehicle_readings));
    assert_eq!(answer["meterReadings"], json!(raw.meter_readings));
    for (field, expected) in [("sumDC", raw.sum_dc), ("sumAC", raw.sum_ac)] {
        let got = answer[field].as_f64().unwrap();
        assert!(
            answers_kwh(got, expected),
            "{field}: {got} against {expected}"
        );
    }
    let rolled: (i64, f64) = sqlx::query_as(
        "SELECT sum(readings)::bigint, sum(sum_dc) FROM vehicle_hourly WHERE vehicle_id = 'DAY'",
    )
    .fetch_one(&stack.db.pool)
    .await
    .unwrap();
    assert_eq!(rolled.0, 144, "each reading rolled up once");
}

/// A long query holds a lock on the readings tables while the worker's
/// upkeep tries to drop an expired day every second: readings are still
/// stored within the partition lock timeout, and the day is dropped once the
/// query ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_long_query_never_holds_up_ingest_beyond_the_lock_timeout() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let expired = Utc::now().date_naive() - Days::new(100);
    sqlx::query("SELECT energy_ensure_partitions('vehicle_readings', $1, $1)")
        .bind(expired)
        .execute(&db.pool)
        .await
        .unwrap();
    let mut long_query = db.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM vehicle_readings")
        .execute(&mut *long_query)
        .await
        .unwrap();

    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let (_worker, _) = wiring
        .start_worker(
            "long-query",
            &[
                ("PARTITION_LOCK_TIMEOUT_MS", "500".to_owned()),
                ("PARTITION_UPKEEP_INTERVAL_SECS", "1".to_owned()),
            ],
        )
        .await;
    let producer = producer(&kafka.bootstrap());
    let mut slowest = Duration::ZERO;
    // The first reading also waits for the worker to join its group: not measured.
    for i in 0..11 {
        let at = Utc::now() - TimeDelta::minutes(1);
        let sent = Instant::now();
        produce_all(
            &producer,
            TOPIC,
            &[message(&vehicle(&format!("LQ-{i}"), at, 50.0, 1.0, 20.0))],
        )
        .await;
        eventually("the reading stored", Duration::from_secs(30), || async {
            (db.count("SELECT count(*) FROM vehicles_current").await == i + 1).then_some(())
        })
        .await;
        if i > 0 {
            slowest = slowest.max(sent.elapsed());
        }
    }
    // The lock timeout, the batch wait (100 ms) and polling, with room for a
    // busy machine; without the timeout a drop waits 60 s (the statement
    // timeout) and every insert behind it.
    assert!(
        slowest < Duration::from_secs(3),
        "a reading took {slowest:?}"
    );
    let partition = format!("vehicle_readings_p{}", expired.format("%Y%m%d"));
    let exists = || async {
        sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
            .bind(&partition)
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .is_some()
    };
    assert!(exists().await, "the drop waits for the long query");
    long_query.rollback().await.unwrap();
    eventually(
        "the expired day dropped",
        Duration::from_secs(30),
        || async { (!exists().await).then_some(()) },
    )
    .await;
}
