//! Nothing lost, nothing doubled, under faults: the built binaries as
//! processes, a real PostgreSQL (stopped and restarted by the test where it
//! must be), and librdkafka's mock cluster with its fault injection. Every
//! test checks exact totals: rows and kWh per device, and current state.
//!
//! `SOAK=1` scales the volumes and outages up (a million readings, outages
//! of a minute); the default sizes keep the suite short on two cores.
//! (SIGTERM in the middle of a batch is tested in `end_to_end.rs`.)

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rdkafka::Message;
use serde_json::Value;
use test_support::fleet::{history_rows, stored, Fleet};
use test_support::http::{sample, scrape};
use test_support::kafka::{
    committed_total, end_total, header, produce_all, produce_to_partitions, producer, read_topic,
    MockKafka, RDKafkaApiKey, RDKafkaRespErr, RawMessage,
};
use test_support::postgres::{fresh_database, fresh_database_collated, TestDatabase};
use test_support::private_postgres::PrivatePostgres;
use test_support::process::wait_until_ok;
use test_support::readings::key_of;
use test_support::services::Wiring;

use test_support::services::TOPIC;
const DLQ: &str = "energy.readings.dlq";
const GROUP: &str = "fault-workers";

fn soak() -> bool {
    std::env::var_os("SOAK").is_some()
}

fn scaled(normal: usize, soak_size: usize) -> usize {
    if soak() {
        soak_size
    } else {
        normal
    }
}

/// Readings start here: recent, whole seconds.
fn start_time() -> DateTime<Utc> {
    let at = Utc::now() - TimeDelta::hours(20);
    at - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos()))
}

/// A mock cluster whose readings topic has enough partitions for `readings`.
///
/// The mock broker keeps at most 5 MiB (or 100,000 message sets) per
/// partition and deletes the oldest data beyond that, as retention would: a
/// backlog bigger than that is silently cut. Sizing partitions to hold at
/// most ~3 MiB of ~160-byte readings each keeps every test's backlog whole.
fn cluster_for(readings: usize) -> (MockKafka, i32) {
    let partitions = (readings * 160).div_ceil(3 * 1024 * 1024).max(2) as i32;
    (
        MockKafka::start(&[(TOPIC, partitions), (DLQ, 1)]),
        partitions,
    )
}

fn wiring(kafka: &MockKafka, database_url: &str) -> Wiring {
    Wiring::new(database_url.to_owned(), kafka.bootstrap())
}

/// Waits until both history tables hold `rows`, then asserts the database
/// holds exactly what `fleet` produced.
async fn assert_stored_exactly(db: &TestDatabase, fleet: &Fleet, timeout: Duration) {
    test_support::eventually("every reading stored", timeout, || async {
        (history_rows(&db.pool).await.ok()? >= fleet.total()).then_some(())
    })
    .await;
    assert_eq!(
        history_rows(&db.pool).await.unwrap(),
        fleet.total(),
        "rows beyond what was produced"
    );
    assert!(
        stored(&db.pool).await.unwrap() == fleet.expected,
        "stored totals differ from produced ones"
    );
}

/// Produces `messages` in `chunks` spread over `spread`, like a live fleet.
fn produce_paced(
    kafka: &MockKafka,
    messages: Vec<test_support::kafka::RawMessage>,
    chunks: usize,
    spread: Duration,
) -> tokio::task::JoinHandle<()> {
    let producer = producer(&kafka.bootstrap());
    tokio::spawn(async move {
        let chunk_size = messages.len().div_ceil(chunks.max(1));
        let pause = spread / chunks.max(1) as u32;
        for chunk in messages.chunks(chunk_size) {
            produce_all(&producer, TOPIC, chunk).await;
            tokio::time::sleep(pause).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    let n = scaled(200_000, 1_000_000);
    sigkill_at_random_moments(n, |n| Fleet::generate("kill-", n, 2_000, start_time())).await;
}

/// The same with devices that report cumulative registers: a batch re-read
/// after a kill (partly committed: one group's transaction in, the other's
/// not) derives every interval as an in-order replay does.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_keeps_register_intervals_exact() {
    let n = scaled(100_000, 1_000_000);
    sigkill_at_random_moments(n, |n| {
        Fleet::generate_registers("kill-reg-", n, 1_000, start_time())
    })
    .await;
}

async fn sigkill_at_random_moments(n: usize, generate: impl FnOnce(usize) -> Fleet) {
    let (kafka, _) = cluster_for(n);
    let db = fresh_database().await;
    let fleet = generate(n);
    let wiring = wiring(&kafka, &db.url);
    let worker_settings = [("BATCH_MAX_READINGS", "1000".to_owned())];
    let (mut worker, _) = wiring.start_worker(GROUP, &worker_settings).await;

    let producing = produce_paced(&kafka, fleet.messages(), 40, Duration::from_secs(60));
    let seed = fastrand::u64(..);
    eprintln!("kill schedule seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut rows_at_kills = Vec::new();
    // Each round: wait until this worker is writing, let it write for a
    // random moment, then SIGKILL it (mid-batch, mid-transaction or between
    // commits: wherever it happens to be) and start another.
    while rows_at_kills.len() < 6 {
        let before = history_rows(&db.pool).await.unwrap();
        test_support::eventually(
            "the restarted worker writing",
            Duration::from_secs(60),
            || async { (history_rows(&db.pool).await.ok()? > before).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(rng.u64(50..700))).await;
        worker.kill();
        let rows = history_rows(&db.pool).await.unwrap();
        rows_at_kills.push(rows);
        worker = wiring.start_worker(GROUP, &worker_settings).await.0;
        if rows == fleet.total() {
            break;
        }
    }
    producing.await.unwrap();
    eprintln!("rows stored at each SIGKILL: {rows_at_kills:?}");
    let mid_stream_kills = rows_at_kills
        .iter()
        .filter(|&&rows| rows < fleet.total())
        .count();
    assert!(
        mid_stream_kills >= 5,
        "only {mid_stream_kills} kills fell while readings were flowing"
    );
    assert_stored_exactly(&db, &fleet, Duration::from_secs(240)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_then_three_workers_share_the_partitions_and_survive_losing_one() {
    let n = scaled(90_000, 600_000);
    let (kafka, _) = cluster_for(n.max(60_000));
    let db = fresh_database().await;
    let fleet = Fleet::generate("group-", n, 1_500, start_time());
    let wiring = wiring(&kafka, &db.url);
    let logging = [("RUST_LOG", "warn,ingest_worker=info".to_owned())];
    let (mut first, _) = wiring.start_worker(GROUP, &logging).await;
    let (second, _) = wiring.start_worker(GROUP, &logging).await;

    let messages = fleet.messages();
    let third_of = messages.len() / 3;
    let producer = producer(&kafka.bootstrap());
    produce_all(&producer, TOPIC, &messages[..third_of]).await;
    first.wait_for_log("partitions assigned", Duration::from_secs(30));
    second.wait_for_log("partitions assigned", Duration::from_secs(30));

    let (third, _) = wiring.start_worker(GROUP, &logging).await;
    produce_all(&producer, TOPIC, &messages[third_of..2 * third_of]).await;
    third.wait_for_log("partitions assigned", Duration::from_secs(30));
    // One of three dies mid-stream; the others take over its partitions.
    first.kill();
    produce_all(&producer, TOPIC, &messages[2 * third_of..]).await;

    assert_stored_exactly(&db, &fleet, Duration::from_secs(180)).await;
    drop((second, third));
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_stopped_mid_stream_then_restarted() {
    let n = scaled(30_000, 300_000);
    let (kafka, _) = cluster_for(n);
    let postgres = PrivatePostgres::start();
    let admin = sqlx::PgPool::connect(&postgres.url()).await.unwrap();
    sqlx::query("CREATE DATABASE energy")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let database_url = format!("postgres://postgres@127.0.0.1:{}/energy", postgres.port);
    let wiring = wiring(&kafka, &database_url);
    wiring.migrate();
    let (mut worker, health) = wiring
        .start_worker(GROUP, &[("WORKER_NOT_READY_AFTER_MS", "3000".to_owned())])
        .await;

    let fleet = Fleet::generate("pg-", n, 500, start_time());
    let messages = fleet.messages();
    let producer = producer(&kafka.bootstrap());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&database_url)
        .await
        .unwrap();
    produce_all(&producer, TOPIC, &messages[..10_000]).await;
    test_support::eventually(
        "the first readings stored",
        Duration::from_secs(60),
        || async { (history_rows(&pool).await.ok()? > 0).then_some(()) },
    )
    .await;
    wait_until_ok(&format!("{health}/readyz"), Duration::from_secs(10)).await;
    pool.close().await;

    postgres.stop();
    let outage_started = Instant::now();
    produce_all(&producer, TOPIC, &messages[10_000..]).await;
    let client = reqwest::Client::new();
    test_support::eventually(
        "/readyz to report the outage",
        Duration::from_secs(30),
        || async {
            let status = client
                .get(format!("{health}/readyz"))
                .send()
                .await
                .ok()?
                .status();
            (status == 503).then_some(())
        },
    )
    .await;
    let outage = Duration::from_secs(if soak() { 60 } else { 30 });
    tokio::time::sleep(outage.saturating_sub(outage_started.elapsed())).await;
    assert!(
        worker.is_running(),
        "the worker exited while PostgreSQL was down"
    );
    postgres.start_again();

    let db = TestDatabase::existing(
        database_url.clone(),
        sqlx::postgres::PgPoolOptions::new()
            .connect(&database_url)
            .await
            .unwrap(),
        "energy".to_owned(),
    );
    assert_stored_exactly(&db, &fleet, Duration::from_secs(120)).await;
    wait_until_ok(&format!("{health}/readyz"), Duration::from_secs(30)).await;
    assert!(worker.is_running(), "the worker exited");
}

/// One request of the broker-outage test: what was sent and what came back.
struct Attempt {
    readings: Vec<Value>,
    status: u16,
    retry_after: bool,
    started: Instant,
    finished: Instant,
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_down_gateway_answers_503_never_202_and_every_202_is_stored() {
    let (kafka, _) = cluster_for(40_000);
    let db = fresh_database().await;
    let wiring = wiring(&kafka, &db.url);
    let (_gateway, gateway_url) = wiring
        .start_gateway(&[("GATEWAY_PUBLISH_TIMEOUT_MS", "2000".to_owned())])
        .await;
    let (_worker, _) = wiring.start_worker(GROUP, &[]).await;

    let fleet = Fleet::generate("outage-", 40_000, 200, start_time());
    let attempts = Arc::new(Mutex::new(Vec::<Attempt>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client_task = {
        let (attempts, stop, readings) = (attempts.clone(), stop.clone(), fleet.readings.clone());
        let url = format!("{gateway_url}/v1/ingest");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for chunk in readings.chunks(100) {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let response = client.post(&url).json(chunk).send().await.unwrap();
                let status = response.status().as_u16();
                let retry_after = response.headers().contains_key("retry-after");
                attempts.lock().unwrap().push(Attempt {
                    readings: chunk.to_vec(),
                    status,
                    retry_after,
                    started,
                    finished: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.broker_down();
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(if soak() { 60 } else { 12 })).await;
    kafka.broker_up();
    let up_at = Instant::now();
    // Clients reconnect with backoff (librdkafka's reconnect.backoff.max.ms):
    // keep the load on until the gateway has acknowledged again.
    test_support::eventually(
        "a 202 after the broker is back",
        Duration::from_secs(45),
        || async {
            let acked_again = attempts
                .lock()
                .unwrap()
                .iter()
                .any(|a| a.status == 202 && a.started > up_at);
            acked_again.then_some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client_task.await.unwrap();

    let attempts = std::mem::take(&mut *attempts.lock().unwrap());
    let during_outage: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.started > down_at && a.finished < up_at)
        .collect();
    assert!(
        !during_outage.is_empty(),
        "no request fell inside the outage"
    );
    for attempt in &during_outage {
        assert_eq!(
            attempt.status, 503,
            "a request during the outage was answered {}",
            attempt.status
        );
        assert!(attempt.retry_after, "503 without Retry-After");
    }
    let accepted: Vec<&Value> = attempts
        .iter()
        .filter(|a| a.status == 202)
        .flat_map(|a| &a.readings)
        .collect();
    assert!(
        attempts
            .iter()
            .any(|a| a.status == 202 && a.started > up_at),
        "the gateway did not recover"
    );
    let sent: usize = attempts.iter().map(|a| a.readings.len()).sum();

    // Every acknowledged reading is stored; nothing is stored that was not sent.
    let accepted_keys: HashSet<(String, String)> = accepted
        .iter()
        .map(|r| (key_of(r), r["timestamp"].as_str().unwrap().to_owned()))
        .collect();
    test_support::eventually("every 202'd reading stored", Duration::from_secs(120), || async {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT vehicle_id, recorded_at FROM vehicle_readings UNION ALL SELECT meter_id, recorded_at FROM meter_readings",
        )
        .fetch_all(&db.pool)
        .await
        .ok()?;
        let stored: HashSet<(String, String)> =
            rows.into_iter().map(|(id, at)| (id, shared::wire::format_timestamp(at))).collect();
        (stored.len() <= sent && accepted_keys.is_subset(&stored)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_poison_message_in_a_thousand_goes_to_the_dead_letter_topic_with_its_reason() {
    let n = scaled(20_000, 200_000);
    let (kafka, partitions) = cluster_for(n);
    let db = fresh_database().await;
    // A rule the wire format does not know: a valid reading the database refuses.
    sqlx::query(
        "ALTER TABLE meter_readings ADD CONSTRAINT test_refuses_voltage_666 CHECK (voltage <> 666)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let fleet = Fleet::generate("poison-", n, 300, start_time());
    // Valid on the wire (and recent), refused by the constraint above.
    let refused_by_database = format!(
        r#"{{"type":"METER","meterId":"poison-meter","kwhConsumedAc":1,"voltage":666,"timestamp":"{}"}}"#,
        shared::wire::format_timestamp(start_time())
    );
    let poison_kinds: [(&[u8], &str); 5] = [
        (b"{not json", "payload is not valid JSON"),
        (b"", "empty payload"),
        (br#"{"type":"VEHICLE","vehicleId":"poison","soc":101,"kwhDeliveredDc":1,"batteryTemp":20,"timestamp":"2026-01-01T00:00:00Z"}"#, "invalid reading: soc must be between 0 and 100"),
        (br#"{"type":"BUS","vehicleId":"poison","timestamp":"2026-01-01T00:00:00Z"}"#, "invalid reading: type must be one of"),
        (refused_by_database.as_bytes(), "database refused the reading"),
    ];
    let mut messages = fleet.messages();
    let mut poison = Vec::new();
    for (n, position) in (999..messages.len()).step_by(1000).enumerate() {
        let (payload, reason) = poison_kinds[n % poison_kinds.len()];
        let key = format!("poison-{n}").into_bytes();
        messages.insert(position, (Some(key.clone()), Some(payload.to_vec())));
        poison.push((key, payload.to_vec(), reason));
    }
    produce_all(&producer(&kafka.bootstrap()), TOPIC, &messages).await;
    // The dead-letter topic refuses the first writes: the worker must retry, not skip.
    kafka.request_errors(
        RDKafkaApiKey::Produce,
        vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 5],
    );

    let wiring = wiring(&kafka, &db.url);
    let (_worker, _) = wiring
        .start_worker(GROUP, &[("BATCH_MAX_READINGS", "2500".to_owned())])
        .await;
    assert_stored_exactly(&db, &fleet, Duration::from_secs(120)).await;
    test_support::eventually(
        "every offset committed",
        Duration::from_secs(60),
        || async {
            (committed_total(&kafka.bootstrap(), GROUP, TOPIC, partitions)
                == end_total(&kafka.bootstrap(), TOPIC))
            .then_some(())
        },
    )
    .await;

    // Each poison message is in the dead-letter topic with its reason (a
    // failed publish may repeat some: at least once, never zero times).
    let dead = read_topic(
        &kafka.bootstrap(),
        DLQ,
        poison.len() * 2,
        Duration::from_secs(10),
    );
    let mut found = BTreeSet::new();
    for message in &dead {
        let key = message.key().unwrap_or_default().to_vec();
        let (_, payload, reason) = poison
            .iter()
            .find(|(k, _, _)| *k == key)
            .expect("only poison is dead-lettered");
        assert_eq!(message.payload().unwrap_or_default(), payload.as_slice());
        let got = header(message, "dlq.reason").unwrap_or_default();
        assert!(
            got.starts_with(reason),
            "reason {got:?} for {:?}",
            String::from_utf8_lossy(payload)
        );
        found.insert(key);
    }
    assert_eq!(
        found.len(),
        poison.len(),
        "some poison messages are missing from the dead-letter topic"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_readings_twice_through_the_gateway_and_again_through_kafka_are_stored_once() {
    let (kafka, partitions) = cluster_for(150_000);
    let db = fresh_database().await;
    let wiring = wiring(&kafka, &db.url);
    let (_gateway, gateway_url) = wiring.start_gateway(&[]).await;
    let (_worker, _) = wiring.start_worker(GROUP, &[]).await;
    let fleet = Fleet::generate("twice-", 50_000, 1_000, start_time());

    let client = reqwest::Client::new();
    for _ in 0..2 {
        for chunk in fleet.readings.chunks(2_000) {
            let body: String = chunk.iter().map(|r| format!("{r}\n")).collect();
            let response = client
                .post(format!("{gateway_url}/v1/ingest"))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 202);
        }
    }
    produce_all(&producer(&kafka.bootstrap()), TOPIC, &fleet.messages()).await;
    test_support::eventually(
        "all 150,000 messages consumed",
        Duration::from_secs(180),
        || async {
            (committed_total(&kafka.bootstrap(), GROUP, TOPIC, partitions) == 150_000).then_some(())
        },
    )
    .await;
    assert_stored_exactly(&db, &fleet, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn draining_a_backlog_keeps_worker_memory_bounded() {
    let n = scaled(200_000, 1_000_000);
    let (kafka, _) = cluster_for(n);
    let db = fresh_database().await;
    let fleet = Fleet::generate("backlog-", n, 10_000, start_time());
    produce_all(&producer(&kafka.bootstrap()), TOPIC, &fleet.messages()).await;

    let wiring = wiring(&kafka, &db.url);
    let (worker, _) = wiring.start_worker(GROUP, &[]).await;
    let started = Instant::now();
    assert_stored_exactly(&db, &fleet, Duration::from_secs(600)).await;
    let peak_kib = worker.peak_rss_kib().expect("worker peak RSS");
    eprintln!(
        "drained {n} readings in {:.1} s; worker peak RSS {} MiB",
        started.elapsed().as_secs_f64(),
        peak_kib / 1024
    );
    // Prefetch (32 MiB), a fetch in flight, two batches (one writing, one
    // filling) and the binary's own footprint, whatever the backlog. 200,000
    // readings give batches of a fifth of BATCH_MAX_READINGS: 160 MiB is
    // ample. Under SOAK=1 the batches are full (100,000 readings each, as in
    // BENCHMARKS.md's drain, 185 MiB): the bound is ARCHITECTURE.md's for
    // the defaults, 256 MiB, while the backlog's payloads alone are ~160 MiB
    // and their decoded readings as much again, so a worker that buffered
    // the backlog would fail either.
    let bound_mib = if soak() { 256 } else { 160 };
    assert!(
        peak_kib < bound_mib * 1024,
        "worker peak RSS {peak_kib} KiB, bound {bound_mib} MiB"
    );
}

/// One device's readings on two partitions, consumed by two workers at
/// once (explicit partition numbers stand in for another client's
/// partitioner, keyless messages or a changed partition count), a tenth of
/// them sent again on the other partition so the duplicate path meets the
/// direct one over the same devices, on a database whose collation is not
/// C and ids whose order it changes: totals exact, current state the newest,
/// and no batch retried (a deadlock would be).
#[tokio::test(flavor = "multi_thread")]
async fn the_same_devices_on_two_partitions_are_stored_exactly_without_retries() {
    same_devices_on_two_partitions(Fleet::generate("split-", 20_000, 100, start_time())).await;
}

/// The same with register devices: two workers' transactions holding
/// readings of one device derive its intervals one after the other, each
/// seeing the other's readings, so every interval comes out as an in-order
/// replay derives it.
#[tokio::test(flavor = "multi_thread")]
async fn register_devices_on_two_partitions_derive_exact_intervals() {
    same_devices_on_two_partitions(Fleet::generate_registers(
        "split-reg-",
        20_000,
        100,
        start_time(),
    ))
    .await;
}

async fn same_devices_on_two_partitions(fleet: Fleet) {
    let kafka = MockKafka::start(&[(TOPIC, 2), (DLQ, 1)]);
    let db = fresh_database_collated().await;
    let messages = fleet.messages();
    let mut placed: Vec<(i32, RawMessage)> = messages
        .iter()
        .enumerate()
        .map(|(i, message)| ((i / 2 % 2) as i32, message.clone()))
        .collect();
    placed.extend(
        messages
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 10 == 0)
            .map(|(i, message)| ((1 - i / 2 % 2) as i32, message.clone())),
    );
    let wiring = wiring(&kafka, &db.url);
    let settings = [
        ("BATCH_MAX_READINGS", "500".to_owned()),
        ("RUST_LOG", "warn,ingest_worker=info".to_owned()),
    ];
    let (first, first_health) = wiring.start_worker(GROUP, &settings).await;
    let (second, second_health) = wiring.start_worker(GROUP, &settings).await;
    first.wait_for_log("partitions assigned", Duration::from_secs(30));
    second.wait_for_log("partitions assigned", Duration::from_secs(30));
    produce_to_partitions(&producer(&kafka.bootstrap()), TOPIC, &placed).await;

    assert_stored_exactly(&db, &fleet, Duration::from_secs(120)).await;
    for health in [first_health, second_health] {
        let metrics = scrape(&health).await;
        let batches = sample(&metrics, "energy_worker_batches_total", &[]).unwrap_or(0.0);
        assert!(batches > 0.0, "both workers wrote: {health}");
        let retried = sample(
            &metrics,
            "energy_worker_retries_total",
            &[("operation", "batch write")],
        );
        assert_eq!(retried, None, "{health} retried batches");
    }
}
