//! `ingest-worker`: consumes the readings topic in a consumer group and
//! writes it to PostgreSQL in batches.
//!
//! The loop collects messages until the batch is full or its oldest message
//! has waited `batch_max_wait`, then flushes while the next batch fills:
//! readings to PostgreSQL ([`store::write_batch`]; one transaction per group
//! of partitions, the groups concurrently; readings the database refuses
//! are isolated), then rejects to the dead-letter topic, and only when all
//! of that is durable the batch's offsets are stored for the next commit. A crash
//! anywhere before that re-reads the batch, and the database's primary keys
//! turn the re-read into no-ops: nothing is lost, nothing is doubled.
//!
//! - [`pipeline`]: the consume loop, flushing and retrying;
//! - [`rebalance`]: dropping buffered messages of revoked partitions;
//! - [`health`]: the `/healthz` and `/readyz` listener;
//! - [`batch`]: collecting and decoding messages;
//! - [`store`]: the database transaction;
//! - [`copy`]: binary COPY encoding;
//! - [`rollup`]: hourly rollups kept with the history rows;
//! - [`partitions`]: day and month partitions created ahead, dropped past retention;
//! - [`dead_letter`]: the dead-letter topic;

pub mod batch;
pub mod copy;
pub mod dead_letter;
pub mod health;
pub mod partitions;
pub mod pipeline;
pub mod rebalance;
pub mod rollup;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use shared::config::{DbArgs, KafkaArgs, ValidationArgs};
use shared::db;
use tokio_util::sync::CancellationToken;

use self::dead_letter::DeadLetterProducer;
use self::health::Health;
use self::partitions::Partitions;
use self::pipeline::{BatchLimits, Sink};
use self::rebalance::WorkerContext;

/// Settings of `ingest-worker`.
#[derive(Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    /// Consumer group shared by all workers; run as many workers as the topic has partitions
    #[arg(long, env = "KAFKA_GROUP_ID", default_value = "energy-ingest-worker")]
    pub kafka_group_id: String,

    /// Topic for messages that cannot be decoded or validated (default: <KAFKA_TOPIC>.dlq)
    #[arg(long, env = "KAFKA_DLQ_TOPIC")]
    pub kafka_dlq_topic: Option<String>,

    /// Flush a batch once it holds this many messages. Only a backlog fills
    /// a batch (live traffic is flushed by BATCH_MAX_WAIT_MS first), and in
    /// a backlog a large batch holds several readings per device: rollup and
    /// current-state rows are upserted once per device and hour per batch,
    /// so they shrink per reading. 100,000 drained 1.8× as fast as 10,000
    /// (BENCHMARKS.md); the price is memory: two batches (one
    /// writing, one filling) of ~1 KiB per message, ~185 MiB peak in all
    #[arg(long, env = "BATCH_MAX_READINGS", default_value_t = 100_000)]
    pub batch_max_readings: usize,

    /// Flush a batch once its first message has waited this long. A steady
    /// 10,000-device fleet sends ~333 readings/s, so 500 ms gives ~170-row
    /// batches and keeps readings queryable within a second
    #[arg(long, env = "BATCH_MAX_WAIT_MS", default_value_t = 500)]
    pub batch_max_wait_ms: u64,

    /// Concurrent transactions a batch is written with, each holding a
    /// disjoint group of topic partitions (so no two touch the same device).
    /// One PostgreSQL backend works on one core: with 2, a backlog drains
    /// about 1.3× faster on a 2-core server (BENCHMARKS.md). Each takes a
    /// pooled connection, so keep DB_MAX_CONNECTIONS above it
    #[arg(long, env = "BATCH_WRITE_CONCURRENCY", default_value_t = 2)]
    pub batch_write_concurrency: usize,

    /// After a shutdown signal, how long a failing flush keeps retrying
    /// before the worker exits without committing (the batch is re-read later)
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,

    /// Address of the worker's health listener (/healthz, /readyz)
    #[arg(long, env = "WORKER_HEALTH_ADDR", default_value = "127.0.0.1:3002")]
    pub health_addr: SocketAddr,

    /// /readyz reports not-ready once batches have failed to be stored for
    /// this long (e.g. PostgreSQL down); the worker keeps retrying meanwhile
    #[arg(long, env = "WORKER_NOT_READY_AFTER_MS", default_value_t = 30_000)]
    pub not_ready_after_ms: u64,

    /// Consumer group session timeout: how long after a worker dies its
    /// partitions move to the others. librdkafka sends heartbeats from a
    /// background thread every third of it, so a busy batch never expires it
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u32,

    /// Days of hourly rollups kept (longer than raw readings: RETENTION_DAYS)
    #[arg(long, env = "ROLLUP_RETENTION_DAYS", default_value_t = 730)]
    pub rollup_retention_days: u32,
}

impl WorkerArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.kafka_dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.kafka.kafka_topic))
    }
}

fn describe_metrics() {
    use shared::metrics::Kind::{Counter, Gauge, Histogram};
    shared::metrics::describe(&[
        (Counter, "energy_worker_batches_total", "Batches committed"),
        (
            Histogram,
            "energy_worker_batch_duration_seconds",
            "Time to make a batch durable (database, dead letters)",
        ),
        (
            Counter,
            "energy_worker_rows_written_total",
            "Rows stored, by table",
        ),
        (
            Counter,
            "energy_worker_duplicates_total",
            "Readings not stored because already stored",
        ),
        (
            Counter,
            "energy_worker_dead_lettered_total",
            "Messages sent to the dead-letter topic, by kind of reason",
        ),
        (
            Counter,
            "energy_worker_retries_total",
            "Failed attempts retried, by operation",
        ),
        (
            Counter,
            "energy_worker_rebalances_total",
            "Partitions assigned or revoked, by kind",
        ),
        (
            Gauge,
            "energy_worker_consumer_lag_messages",
            "Messages behind the partition's end, by partition (librdkafka statistics)",
        ),
        (
            Gauge,
            "energy_worker_newest_stored_reading_age_seconds",
            "Now minus the event time of the newest reading stored",
        ),
    ]);
}

/// Runs the worker until `shutdown` completes: then it stops fetching,
/// flushes and commits the open batch, leaves the group and returns.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Before anything is counted: metrics recorded earlier would be lost.
    shared::metrics::handle();
    describe_metrics();
    let pool = db::pool(&args.db, "ingest-worker").context("invalid database settings")?;
    db::wait_until_migrated(&pool).await?;
    let partitions = Arc::new(Partitions::new(
        args.validation.retention_days,
        args.rollup_retention_days,
    ));
    maintain_partitions_until_done(&pool, &partitions).await;
    let dead_letter_topic = args.dead_letter_topic();
    ensure_topics_exist(
        &args.kafka.kafka_brokers,
        &[&args.kafka.kafka_topic, &dead_letter_topic],
    )
    .await?;

    let consumer: StreamConsumer<WorkerContext> = consumer_config(&args)
        .create_with_context(WorkerContext::default())
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .context("cannot subscribe to the readings topic")?;

    let token = CancellationToken::new();
    let signal_token = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_token.cancel();
    });
    let health = Arc::new(Health::new(Duration::from_millis(args.not_ready_after_ms)));
    tokio::spawn(maintain_partitions_hourly(
        pool.clone(),
        partitions.clone(),
        token.clone(),
    ));
    let health_listener = tokio::net::TcpListener::bind(args.health_addr)
        .await
        .with_context(|| format!("cannot listen on {} (WORKER_HEALTH_ADDR)", args.health_addr))?;
    let health_server = tokio::spawn(health::serve(
        health_listener,
        health.clone(),
        token.clone(),
    ));

    let sink = Sink {
        pool,
        dead_letters: DeadLetterProducer::new(
            &args.kafka.kafka_brokers,
            &args.kafka.kafka_topic,
            &dead_letter_topic,
        )?,
        consumer,
        topic: args.kafka.kafka_topic.clone(),
        rules: args.validation.rules(),
        health,
        partitions,
        shutdown: token.clone(),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        write_concurrency: args.batch_write_concurrency.max(1),
    };
    tracing::info!(
        topic = %args.kafka.kafka_topic,
        group = %args.kafka_group_id,
        dead_letter_topic = %dead_letter_topic,
        "ingest-worker consuming"
    );
    let limits = BatchLimits {
        max_messages: args.batch_max_readings.max(1),
        max_wait: Duration::from_millis(args.batch_max_wait_ms),
    };
    let result = pipeline::consume(&sink, limits).await;
    // Committing and closing the consumer block: off the executor, with the
    // only handle to the consumer, so that closing (leaving the group) happens there.
    tokio::task::spawn_blocking(move || sink.close()).await?;
    token.cancel();
    match health_server.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(error = %format!("{error:#}"), "health listener failed"),
        Err(error) => tracing::warn!(%error, "health listener panicked"),
    }
    result
}

/// Start-up partition upkeep, retried until PostgreSQL answers: the first
/// batch must find its partitions.
async fn maintain_partitions_until_done(pool: &sqlx::PgPool, partitions: &Partitions) {
    let mut backoff =
        shared::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while let Err(error) = partitions
        .maintain(pool, chrono::Utc::now().date_naive())
        .await
    {
        tracing::warn!(%error, "partition upkeep failed, retrying");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Creates tomorrow's partitions and drops expired ones every hour.
async fn maintain_partitions_hourly(
    pool: sqlx::PgPool,
    partitions: Arc<Partitions>,
    shutdown: CancellationToken,
) {
    let mut every_hour = tokio::time::interval(Duration::from_secs(3600));
    every_hour.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every_hour.tick() => {
                if let Err(error) = partitions.maintain(&pool, chrono::Utc::now().date_naive()).await {
                    tracing::warn!(%error, "hourly partition upkeep failed; will try again");
                }
            }
        }
    }
}

/// Fails with a clear message when a topic does not exist, instead of
/// consuming nothing or retrying dead-letter publishes forever.
async fn ensure_topics_exist(brokers: &str, topics: &[&str]) -> anyhow::Result<()> {
    let brokers = brokers.to_owned();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
let client: BaseConsumer = crate::kafka::client_config(
            &[("bootstrap.servers", brokers.clone())],
            &[("allow.auto.create.topics", "false")],
        )
        .create()
            .context("cannot create the Kafka metadata client")?;
        let mut backoff = shared::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        for topic in &topics {
            // The cluster may still be starting: retry until it answers.
            let metadata = loop {
                match client.fetch_metadata(Some(topic), Duration::from_secs(5)) {
                    Ok(metadata) => break metadata,
                    Err(error) => {
                        tracing::warn!(%error, "kafka not reachable yet");
                        std::thread::sleep(backoff.next_delay());
                    }
                }
            };
            let exists = metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            anyhow::ensure!(exists, "kafka topic {topic} does not exist: create it with `ingest-worker create-topics` (README, \"Topics and their partition count\")");
        }
        Ok(())
    })
    .await?
}

fn consumer_config(args: &WorkerArgs) -> ClientConfig {
    let session_timeout = args.kafka_session_timeout_ms;
    crate::kafka::client_config(
        &[
            ("bootstrap.servers", args.kafka.kafka_brokers.clone()),
            ("group.id", args.kafka_group_id.clone()),
            ("auto.offset.reset", "earliest".to_owned()),
            ("auto.commit.interval.ms", "1000".to_owned()),
            // Cooperative rebalancing moves only the partitions that change
            // owner; the others keep flowing while a worker joins or leaves.
            (
                "partition.assignment.strategy",
                "cooperative-sticky".to_owned(),
            ),
            ("session.timeout.ms", session_timeout.to_string()),
            (
                "heartbeat.interval.ms",
                (session_timeout / 3).max(100).to_string(),
            ),
            // Bound the prefetch queue: memory stays flat whatever the backlog.
            ("queued.max.messages.kbytes", "32768".to_owned()),
            ("fetch.max.bytes", "16777216".to_owned()),
            // When that queue is full (a backlog, the worker busy writing),
            // librdkafka postpones the partitions' next fetch by this much;
            // its default of 1 s left the worker idle for most of a second
            // after each full queue had drained (BENCHMARKS.md).
            ("fetch.queue.backoff.ms", "20".to_owned()),
            // Per-partition consumer lag for /metrics (WorkerContext::stats).
            ("statistics.interval.ms", "5000".to_owned()),
            ("enable.partition.eof", "false".to_owned()),
        ],
        // Offsets are stored by hand after the batch's transaction commits and
        // the background auto-commit sends only those (Vector's pattern):
        // the guarantee rests on these two, so no override may change them.
        &[
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
        ],
    )
}
