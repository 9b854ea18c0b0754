//! The worker against a real PostgreSQL and a real Kafka-protocol broker:
//! exact rows with duplicates and out-of-order input, poison messages
//! dead-lettered with the rest of their batch written, offsets committed only
//! after the rows are stored, transient database failures retried.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use ingest_worker::WorkerArgs;
use rdkafka::Message;
use serde_json::Value;
use sqlx::Connection;
use test_support::eventually;
use test_support::in_process::InProcess;
use test_support::kafka::{
    committed_offsets, end_offsets, header, produce_all, producer, read_topic, MockKafka,
};
use test_support::postgres::{fresh_database, fresh_unmigrated_database, TestDatabase};
use test_support::readings::{message, meter, vehicle};

use test_support::services::TOPIC;
const DLQ: &str = "energy.readings.dlq";
const GROUP: &str = "test-workers";
const PARTITIONS: i32 = 3;

struct Worker {
    service: InProcess,
}

fn worker_args(kafka: &MockKafka, db: &TestDatabase, extra: &[&str]) -> WorkerArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }
    let mut argv = vec![
        "ingest-worker".to_owned(),
        format!("--database-url={}", db.url),
        format!("--kafka-brokers={}", kafka.bootstrap()),
        format!("--kafka-topic={TOPIC}"),
        format!("--kafka-group-id={GROUP}"),
    ];
    argv.extend(extra.iter().map(|s| s.to_string()));
    Cli::parse_from(argv).worker
}

impl Worker {
    /// The worker in this process, its probes on port 0; not waited for.
    async fn start(args: WorkerArgs) -> Self {
        Self {
            service: InProcess::spawn(|listener, shutdown| {
                ingest_worker::run(args, listener, shutdown)
            })
            .await,
        }
    }

    async fn stop(self) {
        self.service.stop().await;
    }
}

fn base_time() -> DateTime<Utc> {
    // Whole minutes, an hour ago: valid, and exact in every representation.
    let now = Utc::now() - TimeDelta::hours(1);
    now - TimeDelta::seconds(now.timestamp() % 60)
        - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()))
}

async fn rows(db: &TestDatabase, table: &str) -> i64 {
    db.count(&format!("SELECT count(*) FROM {table}")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_equal_readings_with_duplicates_out_of_order_and_poison_messages() {
    let kafka = MockKafka::start(&[(TOPIC, PARTITIONS), (DLQ, 1)]);
    let db = fresh_database().await;
    let t0 = base_time();

    // 10 vehicles and 10 meters, 30 readings each, sent newest first per device
    // (out of order); kWh in eighths so every sum is exact.
    let mut messages = Vec::new();
    let mut expected_dc: BTreeMap<String, f64> = BTreeMap::new();
    for minute in (0..30).rev() {
        for device in 0..10 {
            let kwh = f64::from((minute * 7 + device) % 16) / 8.0;
            let v = vehicle(
                &format!("V-{device}"),
                t0 + TimeDelta::minutes(minute.into()),
                f64::from(minute),
                kwh,
                20.0,
            );
            *expected_dc.entry(format!("V-{device}")).or_default() += kwh;
            messages.push(message(&v));
            messages.push(message(&meter(
                &format!("M-{device}"),
                t0 + TimeDelta::minutes(minute.into()),
                kwh * 2.0,
                230.0,
            )));
        }
    }
    // Every 7th message again, with other values: the first one wins.
    let duplicates: Vec<_> = messages
        .iter()
        .step_by(7)
        .map(|(key, payload)| {
            let mut value: Value = serde_json::from_slice(payload.as_ref().unwrap()).unwrap();
            if value["type"] == "VEHICLE" {
                value["kwhDeliveredDc"] = 99.0.into();
                value["soc"] = 99.0.into();
                value["batteryTemp"] = 99.0.into();
            } else {
                value["kwhConsumedAc"] = 99.0.into();
            }
            (key.clone(), Some(value.to_string().into_bytes()))
        })
        .collect();
    // (key, payload, expected reason)
    #[allow(clippy::type_complexity)]
    let poison: Vec<(Option<Vec<u8>>, Option<Vec<u8>>, &str)> = vec![
        (Some(b"V-0".to_vec()), Some(b"not json at all".to_vec()), "payload is not valid JSON"),
        (Some(b"V-1".to_vec()), Some(br#"{"type":"VEHICLE","vehicleId":"V-1"}"#.to_vec()), "invalid reading: soc is required"),
        (Some(b"V-2".to_vec()), None, "empty payload"),
        (None, Some(br#"{"type":"METER","meterId":"M-1","kwhConsumedAc":-1,"voltage":230,"timestamp":"2026-01-01T00:00:00Z"}"#.to_vec()), "invalid reading: kwhConsumedAc must be at least 0"),
        (Some(b"M-2".to_vec()), Some(br#"{"type":"METER","meterId":"M-2","kwhConsumedAc":1,"voltage":230,"timestamp":"2020-01-01T00:00:00Z"}"#.to_vec()), "invalid reading: timestamp is older than the 90-day retention"),
    ];
    let mut all = messages.clone();
    all.extend(duplicates.iter().cloned());
    // Poison in the middle of the stream, between valid readings of the same batch.
    for (i, (key, payload, _)) in poison.iter().enumerate() {
        all.insert(100 + i * 50, (key.clone(), payload.clone()));
    }
    let producer = producer(&kafka.bootstrap());
    produce_all(&producer, TOPIC, &all).await;

    let worker = Worker::start(worker_args(
        &kafka,
        &db,
        &["--batch-max-readings=64", "--batch-max-wait-ms=100"],
    ))
    .await;
    eventually("all rows stored", Duration::from_secs(60), || async {
        (rows(&db, "vehicle_readings").await == 300 && rows(&db, "meter_readings").await == 300)
            .then_some(())
    })
    .await;
    worker.stop().await;

    // Exact per-device sums: duplicates (value 99) never counted.
    let stored: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT vehicle_id, count(*), sum(kwh_delivered_dc) FROM vehicle_readings GROUP BY vehicle_id ORDER BY vehicle_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<(String, i64, f64)> = expected_dc
        .into_iter()
        .map(|(id, dc)| (id, 30, dc))
        .collect();
    assert_eq!(stored, expected);
    let max_ac: f64 = sqlx::query_scalar("SELECT max(kwh_consumed_ac) FROM meter_readings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(max_ac < 99.0);
    // Current state is the newest reading by event time (minute 29), though it
    // was sent first; V-0's minute-29 reading was also re-sent with other
    // values (soc 99), and the first one must have won.
    let current: Vec<(String, DateTime<Utc>, f64, f64)> = sqlx::query_as(
        "SELECT vehicle_id, recorded_at, soc, battery_temp FROM vehicles_current ORDER BY vehicle_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(current.len(), 10);
    for (_, at, soc, battery_temp) in current {
        assert_eq!(
            (at, soc, battery_temp),
            (t0 + TimeDelta::minutes(29), 29.0, 20.0)
        );
    }

    // Every poison message is in the dead-letter topic, unchanged, with its reason and origin.
    let dead = read_topic(
        &kafka.bootstrap(),
        DLQ,
        poison.len(),
        Duration::from_secs(10),
    );
    assert_eq!(dead.len(), poison.len());
    for (key, payload, reason) in &poison {
        let found = dead
            .iter()
            .find(|m| {
                m.key().map(<[u8]>::to_vec) == *key
                    && m.payload().unwrap_or_default() == payload.as_deref().unwrap_or_default()
            })
            .unwrap_or_else(|| panic!("poison message {reason} not dead-lettered"));
        assert!(
            header(found, "dlq.reason").unwrap().starts_with(reason),
            "{:?}",
            header(found, "dlq.reason")
        );
        assert_eq!(header(found, "dlq.source.topic").as_deref(), Some(TOPIC));
        let partition: i32 = header(found, "dlq.source.partition")
            .unwrap()
            .parse()
            .unwrap();
        let offset: i64 = header(found, "dlq.source.offset").unwrap().parse().unwrap();
        assert!((0..PARTITIONS).contains(&partition) && offset >= 0);
    }

    // After a clean stop every consumed message is committed.
    let committed = committed_offsets(&kafka.bootstrap(), GROUP, TOPIC, PARTITIONS);
    let ends = end_offsets(&kafka.bootstrap(), TOPIC);
    assert_eq!(
        committed,
        ends.into_iter().map(|(p, o)| (p, Some(o))).collect()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn offsets_are_committed_only_after_the_rows_are_in_postgres() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let t0 = base_time();
    let producer = producer(&kafka.bootstrap());
    let batch = |from: i64, n: i64| -> Vec<_> {
        (from..from + n)
            .map(|i| message(&vehicle("V-1", t0 + TimeDelta::minutes(i), 50.0, 1.0, 20.0)))
            .collect()
    };
    let committed = || committed_offsets(&kafka.bootstrap(), GROUP, TOPIC, 1)[&0];

    produce_all(&producer, TOPIC, &batch(0, 10)).await;
    let worker = Worker::start(worker_args(&kafka, &db, &["--batch-max-wait-ms=50"])).await;
    eventually(
        "first rows and their commit",
        Duration::from_secs(30),
        || async {
            (rows(&db, "vehicle_readings").await == 10 && committed() == Some(10)).then_some(())
        },
    )
    .await;

    // Hold the table so the next batch cannot be written.
    let mut blocker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("LOCK TABLE vehicle_readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .unwrap();
    produce_all(&producer, TOPIC, &batch(10, 5)).await;
    // Several auto-commit intervals pass: the offset must not move while the rows are not stored.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(committed(), Some(10));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM vehicle_readings")
        .fetch_one(&mut blocker)
        .await
        .unwrap();
    assert_eq!(stored, 10);

    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    eventually(
        "the held batch stored, then committed",
        Duration::from_secs(30),
        || async {
            (rows(&db, "vehicle_readings").await == 15 && committed() == Some(15)).then_some(())
        },
    )
    .await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_database_connections_are_retried_and_nothing_is_lost_or_doubled() {
    let kafka = MockKafka::start(&[(TOPIC, 2), (DLQ, 1)]);
    let db = fresh_database().await;
    let t0 = base_time();
    let messages: Vec<_> = (0..3000)
        .map(|i| {
            message(&meter(
                &format!("M-{}", i % 30),
                t0 + TimeDelta::seconds(i / 30),
                0.5,
                230.0,
            ))
        })
        .collect();
    let producer = producer(&kafka.bootstrap());
    let worker = Worker::start(worker_args(
        &kafka,
        &db,
        &["--batch-max-readings=100", "--batch-max-wait-ms=20"],
    ))
    .await;

    // Start killing only once the worker has joined the group and is writing.
    produce_all(&producer, TOPIC, &messages[..100]).await;
    eventually("the worker writing", Duration::from_secs(30), || async {
        (rows(&db, "meter_readings").await > 0).then_some(())
    })
    .await;
    let feeding = {
        let messages = messages.clone();
        async move {
            for chunk in messages[100..].chunks(100) {
                produce_all(&producer, TOPIC, chunk).await;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
    };
    // Meanwhile, keep killing the worker's database sessions (SQLSTATE 57P01).
    let killing = async {
        let mut killed = 0;
        for _ in 0..40 {
            let terminated: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'ingest-worker'",
            )
            .bind(&db.name)
            .fetch_all(&db.pool)
            .await
            .unwrap_or_default();
            killed += terminated.into_iter().filter(|&t| t).count();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        killed
    };
    let ((), killed) = tokio::join!(feeding, killing);
    assert!(killed > 0, "the test never cut a worker connection");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&db.url)
        .await
        .unwrap();
    eventually("all 3000 rows", Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM meter_readings")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 3000).then_some(())
    })
    .await;
    let (n, sum): (i64, f64) =
        sqlx::query_as("SELECT count(*), sum(kwh_consumed_ac) FROM meter_readings")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((n, sum), (3000, 1500.0));
    // Each stored reading rolled up exactly once, through every retry.
    let (rolled, rolled_kwh): (i64, f64) =
        sqlx::query_as("SELECT sum(readings)::bigint, sum(sum_ac) FROM meter_hourly")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((rolled, rolled_kwh), (3000, 1500.0));
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn refuses_to_start_against_an_unmigrated_database() {
    let kafka = MockKafka::start(&[(TOPIC, 1)]);
    let db = fresh_unmigrated_database().await;
    let worker = Worker::start(worker_args(&kafka, &db, &[])).await;
    let error = worker.service.outcome().await.unwrap_err();
    assert!(
        error.to_string().contains("run `ingest-worker migrate`"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_broker_outage_the_worker_rejoins_and_resumes_at_once() {
    let kafka = MockKafka::start(&[(TOPIC, 2), (DLQ, 1)]);
    let db = fresh_database().await;
    let t0 = base_time();
    let batch = |from: i64, n: i64| -> Vec<_> {
        (from..from + n)
            .map(|i| message(&meter("M-1", t0 + TimeDelta::seconds(i), 0.5, 230.0)))
            .collect()
    };
    let producer = producer(&kafka.bootstrap());
    produce_all(&producer, TOPIC, &batch(0, 100)).await;
    let worker = Worker::start(worker_args(
        &kafka,
        &db,
        &["--batch-max-wait-ms=50", "--kafka-session-timeout-ms=6000"],
    ))
    .await;
    eventually("the first readings", Duration::from_secs(30), || async {
        (rows(&db, "meter_readings").await == 100).then_some(())
    })
    .await;

    // Long enough for the session to expire and for errors to pile up in the
    // consumer's queue ahead of the rebalance that follows the outage.
    kafka.broker_down();
    tokio::time::sleep(Duration::from_secs(12)).await;
    kafka.broker_up();
    produce_all(&producer, TOPIC, &batch(100, 100)).await;
    eventually(
        "readings produced after the outage",
        Duration::from_secs(30),
        || async { (rows(&db, "meter_readings").await == 200).then_some(()) },
    )
    .await;
    worker.stop().await;
}

/// A clock a test sets: the worker's "now" is `base` plus the offset it holds.
#[derive(Clone)]
struct TestClock {
    micros: Arc<AtomicI64>,
}

impl TestClock {
    fn at(instant: DateTime<Utc>) -> Self {
        Self {
            micros: Arc::new(AtomicI64::new(instant.timestamp_micros())),
        }
    }

    fn set(&self, instant: DateTime<Utc>) {
        self.micros
            .store(instant.timestamp_micros(), Ordering::SeqCst);
    }

    fn clock(&self) -> ingest_worker::Clock {
        let micros = self.micros.clone();
        Arc::new(move || {
            DateTime::from_timestamp_micros(micros.load(Ordering::SeqCst)).expect("a valid instant")
        })
    }
}

/// A batch waits across midnight (its table is locked), and meanwhile the
/// oldest day's partition is dropped, as any worker's upkeep does at
/// midnight. The reading of that day has aged out: it is dead-lettered with
/// the retention's reason, the rest of the batch is stored, and the day's
/// partition is not created again.
#[tokio::test(flavor = "multi_thread")]
async fn a_batch_that_waits_across_midnight_dead_letters_what_aged_out() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let today = Utc::now().date_naive();
    let at = |day: chrono::NaiveDate, h: u32, m: u32| day.and_hms_opt(h, m, 0).unwrap().and_utc();
    let oldest = today - chrono::Days::new(2);
    let clock = TestClock::at(at(today, 23, 59));
    let args = worker_args(
        &kafka,
        &db,
        &["--retention-days=2", "--batch-max-wait-ms=100"],
    );
    let worker = InProcess::spawn({
        let clock = clock.clock();
        |listener, shutdown| ingest_worker::run_with_clock(args, listener, shutdown, clock)
    })
    .await;
    test_support::process::wait_until_ok(
        &format!("{}/readyz", worker.url),
        Duration::from_secs(30),
    )
    .await;

    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE vehicle_readings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    produce_all(
        &producer(&kafka.bootstrap()),
        TOPIC,
        &[
            message(&vehicle("OLD", at(oldest, 12, 0), 50.0, 1.0, 20.0)),
            message(&vehicle("NEW", at(today, 23, 0), 50.0, 1.0, 20.0)),
        ],
    )
    .await;
    eventually(
        "the batch's COPY waiting for the lock",
        Duration::from_secs(30),
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE application_name = 'ingest-worker' AND wait_event_type = 'Lock'
               AND query LIKE 'COPY vehicle_readings %'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            (waiting > 0).then_some(())
        },
    )
    .await;
    // Midnight passes; the oldest day expires and its partition is dropped.
    clock.set(at(today + chrono::Days::new(1), 0, 0) + TimeDelta::seconds(30));
    let oldest_partition = format!("vehicle_readings_p{}", oldest.format("%Y%m%d"));
    sqlx::query(&format!("DROP TABLE {oldest_partition}"))
        .execute(&mut *lock)
        .await
        .unwrap();
    lock.commit().await.unwrap();

    eventually(
        "NEW stored and both offsets committed",
        Duration::from_secs(30),
        || async {
            let committed = committed_offsets(&kafka.bootstrap(), GROUP, TOPIC, 1);
            (rows(&db, "vehicle_readings").await == 1 && committed[&0] == Some(2)).then_some(())
        },
    )
    .await;
    let stored: String = sqlx::query_scalar("SELECT vehicle_id FROM vehicle_readings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, "NEW");
    let dead = read_topic(&kafka.bootstrap(), DLQ, 2, Duration::from_secs(10));
    assert_eq!(dead.len(), 1);
    assert_eq!(
        header(&dead[0], "dlq.reason").unwrap(),
        format!(
            "invalid reading: timestamp is older than the 2-day retention (before {}T00:00:00Z)",
            today - chrono::Days::new(1)
        )
    );
    let recreated: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(&oldest_partition)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        recreated, None,
        "an expired day's partition is never created again"
    );
    worker.stop().await;
}

/// A backlog's readings land in the buckets the per-vehicle figures
/// summarise: while the worker drains one, the figures' rounds wait (each
/// batch would mark buckets that every pass computes again, on the cores the
/// drain needs): from the first stored batch to the last, at most the round
/// already under way completes. Once it has caught up, even on a last batch
/// that was full, the figures hold every reading and no mark is left.
#[tokio::test(flavor = "multi_thread")]
async fn the_figures_wait_while_a_backlog_drains_then_hold_every_reading() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let t0 = base_time();
    // 40 full batches of 200: the drain ends on a full batch.
    let backlog: Vec<_> = (0..80)
        .flat_map(|minute| {
            (0..100).map(move |v| {
                message(&vehicle(
                    &format!("V-{v}"),
                    t0 - TimeDelta::minutes(minute),
                    50.0,
                    1.0,
                    20.0,
                ))
            })
        })
        .collect();
    produce_all(&producer(&kafka.bootstrap()), TOPIC, &backlog).await;
    let worker = Worker::start(worker_args(
        &kafka,
        &db,
        &[
            "--batch-max-readings=200",
            "--batch-max-wait-ms=3000",
            "--figures-interval-ms=100",
            "--figures-keep-hours=3",
        ],
    ))
    .await;
    // From the first stored batch to the last, at most the round already
    // under way when the drain began completes: the rest wait.
    let rounds_done = || async {
        let metrics = test_support::http::scrape(&worker.service.url).await;
        test_support::http::sample(
            &metrics,
            "energy_worker_figure_rounds_total",
            &[("outcome", "done")],
        )
        .unwrap_or(0.0)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut done_when_draining = None;
    let done_when_drained = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the backlog was not stored in 60 s"
        );
        let stored = rows(&db, "vehicle_readings").await;
        let done = rounds_done().await;
        if stored > 0 && done_when_draining.is_none() {
            done_when_draining = Some(done);
        }
        if stored == 8_000 {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done_when_draining = done_when_draining.unwrap_or(done_when_drained);
    assert!(
        done_when_drained - done_when_draining <= 1.0,
        "figure rounds ran while the backlog drained: {done_when_draining} when the first \
         batch was stored, {done_when_drained} when the last was"
    );
    eventually(
        "every reading in the figures, no mark left",
        Duration::from_secs(60),
        || async {
            let summarised = db
                .count("SELECT coalesce(sum(vehicle_readings), 0)::bigint FROM vehicle_figures")
                .await;
            let marks = rows(&db, "figure_marks").await;
            (summarised == 8_000 && marks == 0).then_some(())
        },
    )
    .await;
    let metrics = test_support::http::scrape(&worker.service.url).await;
    let rounds = |outcome| {
        test_support::http::sample(
            &metrics,
            "energy_worker_figure_rounds_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert!(rounds("deferred") > 0.0, "no round waited:\n{metrics}");
    worker.stop().await;
}

/// The services' sessions never compile statements to machine code
/// (`service_kit::db`): with PostgreSQL's JIT on, each per-vehicle figures
/// pass spent about 3 s compiling a statement that then ran in 1.5 ms.
#[tokio::test]
async fn database_sessions_run_without_jit_compilation() {
    let db = fresh_database().await;
    let args = {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            worker: WorkerArgs,
        }
        Cli::parse_from([
            "ingest-worker".to_owned(),
            format!("--database-url={}", db.url),
            "--kafka-brokers=127.0.0.1:9".to_owned(),
        ])
        .worker
    };
    let pool = service_kit::db::pool(&args.db, "ingest-worker").unwrap();
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jit, "off");
}
