//! `ingest-worker`: consumes the readings topic in a consumer group and
//! writes it to PostgreSQL in batches.
//!
//! The loop collects messages until the batch is full or its oldest message
//! has waited `batch_max_wait`, then flushes: rejects to the dead-letter
//! topic, readings to PostgreSQL in one transaction ([`store::write_batch`]),
//! and only then the batch's offsets are stored for the next commit. A crash
//! anywhere before that re-reads the batch, and the database's primary keys
//! turn the re-read into no-ops: nothing is lost, nothing is doubled.
//!
//! - [`batch`]: collecting and decoding messages;
//! - [`store`]: the database transaction;
//! - [`copy`]: binary COPY encoding;
//! - [`dead_letter`]: the dead-letter topic;

pub mod batch;
pub mod copy;
pub mod dead_letter;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use shared::config::{DbArgs, KafkaArgs, ValidationArgs};
use shared::db;
use shared::wire::ValidationRules;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::batch::Batch;
use self::dead_letter::DeadLetterProducer;
use shared::retry::Backoff;

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

    /// Flush a batch once it holds this many messages. 10,000 rows is one
    /// COPY of well under a megabyte: large enough to drain a backlog at
    /// COPY speed, small enough to keep each transaction short
    #[arg(long, env = "BATCH_MAX_READINGS", default_value_t = 10_000)]
    pub batch_max_readings: usize,

    /// Flush a batch once its first message has waited this long. A steady
    /// 10,000-device fleet sends ~333 readings/s, so 500 ms gives ~170-row
    /// batches and keeps readings queryable within a second
    #[arg(long, env = "BATCH_MAX_WAIT_MS", default_value_t = 500)]
    pub batch_max_wait_ms: u64,

    /// After a shutdown signal, how long a failing flush keeps retrying
    /// before the worker exits without committing (the batch is re-read later)
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
}

impl WorkerArgs {
    pub fn dead_letter_topic(&self) -> String {
        self.kafka_dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.kafka.kafka_topic))
    }
}

/// Everything a flush needs.
struct Sink {
    pool: PgPool,
    dead_letters: DeadLetterProducer,
    consumer: Arc<StreamConsumer>,
    topic: String,
    shutdown: CancellationToken,
    shutdown_grace: Duration,
}

/// Runs the worker until `shutdown` completes: then it stops fetching,
/// flushes and commits the open batch, leaves the group and returns.
pub async fn run(
    args: WorkerArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let pool = db::pool(&args.db).context("invalid database settings")?;
    db::wait_until_migrated(&pool).await?;

    let consumer: StreamConsumer = consumer_config(&args)
        .create()
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .context("cannot subscribe to the readings topic")?;
    let consumer = Arc::new(consumer);

    let token = CancellationToken::new();
    let signal_token = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_token.cancel();
    });

    let sink = Sink {
        pool,
        dead_letters: DeadLetterProducer::new(
            &args.kafka.kafka_brokers,
            &args.kafka.kafka_topic,
            &args.dead_letter_topic(),
        )?,
        consumer: consumer.clone(),
        topic: args.kafka.kafka_topic.clone(),
        shutdown: token.clone(),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
    };
    tracing::info!(
        topic = %args.kafka.kafka_topic,
        group = %args.kafka_group_id,
        dead_letter_topic = %sink.dead_letters.topic(),
        "ingest-worker consuming"
    );

    let rules = args.validation.rules();
    let max_wait = Duration::from_millis(args.batch_max_wait_ms);
    let result = consume(&sink, &rules, args.batch_max_readings, max_wait).await;

    // Commit what was stored, then leave the group; both block, so off the executor.
    let committed = tokio::task::spawn_blocking(move || {
        let outcome = match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing was stored since the last commit.
            Err(rdkafka::error::KafkaError::ConsumerCommit(
                rdkafka::types::RDKafkaErrorCode::NoOffset,
            )) => Ok(()),
            Err(error) => Err(error),
        };
        drop(consumer);
        outcome
    })
    .await?;
    if let Err(error) = committed {
        tracing::warn!(%error, "final offset commit failed: the last batch will be re-read and deduplicated");
    }
    result
}

fn consumer_config(args: &WorkerArgs) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &args.kafka.kafka_brokers)
        .set("group.id", &args.kafka_group_id)
        .set("auto.offset.reset", "earliest")
        // Offsets are stored by hand after the batch's transaction commits and
        // the background auto-commit sends only those (Vector's pattern).
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "1000")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // Bound the prefetch queue: memory stays flat whatever the backlog.
        .set("queued.max.messages.kbytes", "65536")
        .set("enable.partition.eof", "false");
    config
}

async fn consume(
    sink: &Sink,
    rules: &ValidationRules,
    max_readings: usize,
    max_wait: Duration,
) -> anyhow::Result<()> {
    let mut batch = Batch::default();
    let mut flush_at: Option<Instant> = None;
    loop {
        let flush_due = async {
            match flush_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = sink.shutdown.cancelled() => break,
            () = flush_due => {
                flush(sink, std::mem::take(&mut batch)).await?;
                flush_at = None;
            }
            received = sink.consumer.recv() => match received {
                Ok(message) => {
                    batch.add(&message, rules, Utc::now());
                    if flush_at.is_none() {
                        tracing::debug!(partition = message.partition(), offset = message.offset(), "batch opened");
                        flush_at = Some(Instant::now() + max_wait);
                    }
                    if batch.len() >= max_readings {
                        flush(sink, std::mem::take(&mut batch)).await?;
                        flush_at = None;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "kafka consume error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    flush(sink, batch).await
}

/// Makes a batch durable, then stores its offsets. Transient failures are
/// retried with backoff without advancing offsets; after a shutdown signal
/// retries stop after the grace period and the batch stays uncommitted.
#[tracing::instrument(skip_all, fields(messages = batch.len(), rejected = batch.rejected.len()))]
async fn flush(sink: &Sink, batch: Batch) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    if !batch.rejected.is_empty() {
        retry(
            sink,
            "dead-letter publish",
            || sink.dead_letters.publish(&batch.rejected),
            |_| true,
        )
        .await?;
        for rejected in &batch.rejected {
            tracing::warn!(
                partition = rejected.partition,
                offset = rejected.offset,
                reason = %rejected.reason,
                "message dead-lettered"
            );
        }
    }
    // Permanent errors are retried too: after validation none is expected,
    // and skipping the batch would lose readings. Isolating a poison row is
    // future work (see ARCHITECTURE.md).
    let outcome = retry(
        sink,
        "batch write",
        || store::write_batch(&sink.pool, &batch.readings),
        store::WriteError::is_transient,
    )
    .await?;
    for (&partition, &last_offset) in &batch.last_offsets {
        // `store_offset` stores last_offset + 1: the next message to read.
        if let Err(error) = sink
            .consumer
            .store_offset(&sink.topic, partition, last_offset)
        {
            // The partition was revoked meanwhile; its new owner re-reads the
            // batch and the primary keys make that a no-op.
            tracing::info!(partition, %error, "offset not stored: partition no longer assigned");
        }
    }
    tracing::info!(
        vehicle_rows = outcome.vehicle_rows,
        meter_rows = outcome.meter_rows,
        assignment_rows = outcome.assignment_rows,
        duplicates = outcome.duplicates,
        dead_lettered = batch.rejected.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch committed"
    );
    Ok(())
}

/// Retries `operation` with backoff until it succeeds, or until the shutdown
/// grace period has passed after a shutdown signal.
async fn retry<T, E, F, Fut>(
    sink: &Sink,
    what: &'static str,
    mut operation: F,
    is_transient: impl Fn(&E) -> bool,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let mut backoff = Backoff::default();
    let mut give_up_at: Option<Instant> = None;
    loop {
        let error = match operation().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let transient = is_transient(&error);
        let chain = format!("{:#}", anyhow::Error::from(error));
        if transient {
            tracing::warn!(error = %chain, "{what} failed, retrying");
        } else {
            tracing::error!(error = %chain, "{what} failed permanently, retrying so nothing is skipped");
        }
        if sink.shutdown.is_cancelled() {
            let deadline = *give_up_at.get_or_insert_with(|| Instant::now() + sink.shutdown_grace);
            if Instant::now() >= deadline {
                anyhow::bail!("{what} still failing at shutdown: the batch stays uncommitted and will be re-read");
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}
