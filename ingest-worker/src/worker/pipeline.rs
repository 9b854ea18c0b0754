//! The consume loop: collect messages into a batch until it is full or old
//! enough, flush it (dead letters, then the database transaction, then the
//! offsets), and retry transient failures without ever advancing past
//! something that is not durable.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use shared::retry::Backoff;
use shared::wire::ValidationRules;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::batch::Batch;
use super::dead_letter::DeadLetterProducer;
use super::store;

/// When a batch is flushed.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_messages: usize,
    pub max_wait: Duration,
}

/// Everything the loop reads from and writes to.
pub struct Sink {
    pub pool: PgPool,
    pub dead_letters: DeadLetterProducer,
    pub consumer: StreamConsumer,
    pub topic: String,
    pub rules: ValidationRules,
    pub shutdown: CancellationToken,
    pub shutdown_grace: Duration,
}

impl Sink {
    /// Commits the stored offsets synchronously and closes the consumer,
    /// which leaves the group. Blocking: call from `spawn_blocking`.
    pub fn close(self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            // NoOffset: nothing was stored since the last commit.
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "final offset commit failed: the last batch will be re-read and deduplicated")
            }
        }
        drop(self);
    }
}

/// Runs until shutdown, then flushes the open batch.
pub async fn consume(sink: &Sink, limits: BatchLimits) -> anyhow::Result<()> {
    let mut batch = Batch::default();
    let mut flush_at: Option<Instant> = None;
    let mut consume_errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
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
                    consume_errors = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
                    batch.add(&message, &sink.rules, Utc::now());
                    if flush_at.is_none() {
                        tracing::debug!(partition = message.partition(), offset = message.offset(), "batch opened");
                        flush_at = Some(Instant::now() + limits.max_wait);
                    }
                    if batch.len() >= limits.max_messages {
                        flush(sink, std::mem::take(&mut batch)).await?;
                        flush_at = None;
                    }
                }
                Err(error) => {
                    let delay = consume_errors.next_delay();
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "kafka consume error");
                    tokio::time::sleep(delay).await;
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
        // Every publish error is retried: skipping would lose the message.
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

/// Retries `operation` with backoff until it succeeds. After a shutdown
/// signal it gives up once the grace period has passed, even in the middle
/// of an attempt (a hung statement must not keep the process alive); the
/// batch then stays uncommitted and is re-read later.
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
    let give_up = async {
        sink.shutdown.cancelled().await;
        tokio::time::sleep(sink.shutdown_grace).await;
    };
    tokio::pin!(give_up);
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            result = operation() => result,
            () = &mut give_up => anyhow::bail!("{what} unfinished at shutdown: the batch stays uncommitted and will be re-read"),
        };
        let error = match attempt {
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
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = &mut give_up => anyhow::bail!("{what} still failing at shutdown: the batch stays uncommitted and will be re-read"),
        }
    }
}
