//! The consume loop: collect messages into a batch until it is full or old
//! enough, flush it (the database transaction, dead letters, then the
//! offsets) while the next batch fills, and retry failures without ever
//! advancing past something that is not durable.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use service_kit::retry::Backoff;
use shared::domain::Reading;
use shared::register::RegisterRules;
use shared::wire::{MessageError, ValidationRules};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::dead_letter::{DeadLetterProducer, Reason, Rejected};
use crate::health::Health;
use crate::partitions::Partitions;
use crate::rebalance::WorkerContext;
use crate::store::{self, BatchOutcome, WriteError};
use crate::Clock;

/// When a batch is flushed.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_messages: usize,
    /// Bytes of message data ([`Batch::bytes`]): with `max_messages`, what
    /// bounds a batch's memory whatever its messages' sizes.
    pub max_bytes: usize,
    pub max_wait: Duration,
}

impl BatchLimits {
    fn is_full(&self, batch: &Batch) -> bool {
        batch.len() >= self.max_messages || batch.bytes() >= self.max_bytes
    }
}

/// Whether the worker is behind its partitions' ends. Two signs, either
/// enough: librdkafka's consumer lag (statistics every few seconds) of at
/// least a full batch; or the consume loop's last flush was of a full batch
/// and the next one started within twice the batch wait (a loop that starts
/// no flush for that long has taken all there was, even when its last batch
/// was full). Background work that competes with the drain for the
/// database (the per-vehicle figures) waits while the worker is behind.
#[derive(Debug)]
pub struct Backlog {
    /// A loop still behind starts its next flush within this of the last
    /// one's end (the next batch fills, or its timer fires, meanwhile).
    idle_after: Duration,
    /// Messages of lag that count as behind: a full batch.
    lag_behind: i64,
    /// The assigned partitions' summed lag, -1 until known.
    lag: AtomicI64,
    state: Mutex<BacklogState>,
}

#[derive(Debug, Default)]
struct BacklogState {
    /// The last flush was of a full batch.
    full: bool,
    flushing: bool,
    last_flush_ended: Option<std::time::Instant>,
}

impl Backlog {
    /// For a loop flushing by `limits`.
    pub fn new(limits: &BatchLimits) -> Self {
        Self {
            idle_after: limits.max_wait * 2 + Duration::from_millis(100),
            lag_behind: i64::try_from(limits.max_messages).unwrap_or(i64::MAX),
            lag: AtomicI64::new(-1),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BacklogState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record_flush_started(&self, full: bool) {
        let mut state = self.state();
        state.full = full;
        state.flushing = true;
    }

    fn record_flush_ended(&self) {
        let mut state = self.state();
        state.flushing = false;
        state.last_flush_ended = Some(std::time::Instant::now());
    }

    /// The consumer's lag over its assigned partitions, from librdkafka's
    /// statistics ([`crate::rebalance`]).
    pub fn record_lag(&self, messages: i64) {
        self.lag.store(messages, Ordering::Relaxed);
    }

    /// Whether messages are waiting for the worker.
    pub fn is_behind(&self) -> bool {
        if self.lag.load(Ordering::Relaxed) >= self.lag_behind {
            return true;
        }
        let state = self.state();
        state.full
            && (state.flushing
                || state
                    .last_flush_ended
                    .is_some_and(|ended| ended.elapsed() < self.idle_after))
    }
}

/// Everything the loop reads from and writes to.
pub struct Sink {
    pub pool: PgPool,
    pub dead_letters: DeadLetterProducer,
    pub consumer: StreamConsumer<WorkerContext>,
    pub topic: String,
    pub rules: ValidationRules,
    /// How register readings' energy is derived.
    pub register_rules: RegisterRules,
    pub health: Arc<Health>,
    pub partitions: Arc<Partitions>,
    /// What time it is: the retention and the partitions' days follow it.
    pub clock: Clock,
    pub shutdown: CancellationToken,
    pub shutdown_grace: Duration,
    /// Concurrent transactions a batch is written with, each holding the
    /// messages of a disjoint group of partitions.
    pub write_concurrency: usize,
    /// Where the loop tells whether it is behind.
    pub backlog: Arc<Backlog>,
}

/// What retrying needs: when to give up, and where to report failures.
#[derive(Clone)]
struct Retrier {
    shutdown: CancellationToken,
    grace: Duration,
    health: Arc<Health>,
}

/// What writing one group of a batch needs, owned, so that each group is
/// written from a task of its own: the groups' client-side work (encoding
/// COPY data, aggregating rollups) then runs on all cores, alongside the
/// consume loop, instead of taking turns on one.
#[derive(Clone)]
struct GroupWriter {
    pool: PgPool,
    partitions: Arc<Partitions>,
    rules: ValidationRules,
    register_rules: RegisterRules,
    clock: Clock,
    retrier: Retrier,
}

impl Sink {
    fn retrier(&self) -> Retrier {
        Retrier {
            shutdown: self.shutdown.clone(),
            grace: self.shutdown_grace,
            health: self.health.clone(),
        }
    }

    fn group_writer(&self) -> GroupWriter {
        GroupWriter {
            pool: self.pool.clone(),
            partitions: self.partitions.clone(),
            rules: self.rules,
            register_rules: self.register_rules,
            clock: self.clock.clone(),
            retrier: self.retrier(),
        }
    }

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
///
/// One batch is flushed while the next one fills: reading and decoding
/// messages overlaps the database transaction instead of waiting for it.
/// Flushes still happen one at a time and in order, so offsets are stored
/// in order and at most two batches are held in memory. When the filling
/// batch is full before the flush is done, consumption pauses until it is.
pub async fn consume(sink: &Sink, limits: BatchLimits) -> anyhow::Result<()> {
    let mut batch = Batch::default();
    let mut flush_at: Option<Instant> = None;
    let mut in_flight: Option<Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>>> = None;
    loop {
        let due = limits.is_full(&batch) || flush_at.is_some_and(|at| at <= Instant::now());
        if in_flight.is_none() && due && !batch.is_empty() {
            sink.backlog.record_flush_started(limits.is_full(&batch));
            in_flight = Some(Box::pin(flush(sink, std::mem::take(&mut batch))));
            flush_at = None;
        }
        // Only worth waking for when a new flush could start.
        let wake_at = flush_at.filter(|_| in_flight.is_none());
        let flushing = async {
            match in_flight.as_mut() {
                Some(flush) => flush.await,
                None => std::future::pending().await,
            }
        };
        let flush_due = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            () = sink.shutdown.cancelled() => break,
            flushed = flushing => {
                in_flight = None;
                sink.backlog.record_flush_ended();
                flushed?;
            }
            () = flush_due => {}
            received = sink.consumer.recv(), if !limits.is_full(&batch) => {
                // A rebalance inside recv() may have taken partitions away.
                batch.drop_partitions(&sink.consumer.context().take_revoked());
                if batch.is_empty() {
                    flush_at = None;
                }
                match received {
                    Ok(message) => {
                        batch.add(&message, &sink.rules, (sink.clock)());
                        if flush_at.is_none() {
                            tracing::debug!(partition = message.partition(), offset = message.offset(), "batch opened");
                            flush_at = Some(Instant::now() + limits.max_wait);
                        }
                    }
                    // Consumer errors are reports, not failures to handle: librdkafka
                    // reconnects by itself. Keep polling at once: a queue of errors
                    // from an outage can stand before the rebalance that assigns this
                    // worker its partitions, and sleeping per error would stall it
                    // (recv() blocks while nothing is queued, so this cannot spin).
                    Err(error) => tracing::warn!(%error, "kafka consumer reported an error"),
                }
            }
        }
    }
    // The flush in flight has its own shutdown grace (see `retry`).
    if let Some(flush) = in_flight {
        flush.await?;
    }
    flush(sink, batch).await
}

/// Makes a batch durable, then stores its offsets: readings in one
/// transaction (or, when the database refuses some row, in parts around the
/// refused readings), then every reject in the dead-letter topic, and only
/// then the offsets. A crash anywhere before the offsets re-reads the batch.
#[tracing::instrument(skip_all, fields(messages = batch.len(), rejected = batch.rejected.len()))]
async fn flush(sink: &Sink, mut batch: Batch) -> anyhow::Result<()> {
    // Revocations served by a recv() that then returned no message have not
    // been applied yet: a timer or shutdown flush must not write them.
    batch.drop_partitions(&sink.consumer.context().take_revoked());
    // A reading that passed the retention check when it arrived may have
    // aged past it since (midnight): its day's partition may be gone.
    let now = (sink.clock)();
    batch.reject_expired(&sink.rules, now);
    if batch.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    if let Some(last_day) = batch.last_reading_day() {
        let first_day = sink.partitions.first_accepted_day(now.date_naive());
        retry(
            &sink.retrier(),
            "partition upkeep",
            || {
                sink.partitions
                    .ensure_days(&sink.pool, first_day, last_day.max(first_day), false)
            },
            |_| Decision::Retry,
        )
        .await??;
    }
    let (batch, outcome) = write_groups(sink, batch).await?;
    publish_dead_letters(sink, &batch).await?;
    sink.health.record_success();
    if let Some(newest) = batch.newest_reading_time() {
        sink.health.record_stored(newest);
    }
    record_batch_metrics(&batch, &outcome, started.elapsed());
    store_offsets(sink, &batch);
    tracing::info!(
        vehicle_rows = outcome.vehicle_rows,
        meter_rows = outcome.meter_rows,
        assignment_rows = outcome.assignment_rows,
        duplicates = outcome.duplicates,
        register_jumps = outcome.register_jumps,
        dead_lettered = batch.rejected.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "batch committed"
    );
    Ok(())
}

/// Writes each group of partitions in its own transaction, concurrently:
/// one PostgreSQL backend works on one core, and the groups share no row.
/// Readings the database refused come back among the batch's rejects.
async fn write_groups(sink: &Sink, mut batch: Batch) -> anyhow::Result<(Batch, BatchOutcome)> {
    let groups = batch.group_by_partition(sink.write_concurrency);
    let shared = Arc::new(batch);
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|range| {
            let (writer, batch) = (sink.group_writer(), shared.clone());
            tokio::spawn(
                async move { write_isolating_refused(&writer, &batch, range.collect()).await },
            )
        })
        .collect();
    let written = futures::future::join_all(tasks).await;
    let mut batch = Arc::try_unwrap(shared)
        .map_err(|_| anyhow::anyhow!("a batch was still shared after its writes ended"))?;
    let mut outcome = BatchOutcome::default();
    for group in written {
        let (written, refused) = group??;
        outcome += written;
        batch.rejected.extend(refused);
    }
    Ok((batch, outcome))
}

/// Publishes the batch's rejects to the dead-letter topic. Every publish
/// error is retried, and a retry sends only what Kafka has not
/// acknowledged yet: a reject is never skipped, and however many there are,
/// they get through the producer's bounded queue.
async fn publish_dead_letters(sink: &Sink, batch: &Batch) -> anyhow::Result<()> {
    if batch.rejected.is_empty() {
        return Ok(());
    }
    let delivered: Vec<AtomicBool> = batch
        .rejected
        .iter()
        .map(|_| AtomicBool::default())
        .collect();
    retry(
        &sink.retrier(),
        "dead-letter publish",
        || sink.dead_letters.publish(&batch.rejected, &delivered),
        |_| Decision::Retry,
    )
    .await??;
    for rejected in &batch.rejected {
        tracing::warn!(
            partition = rejected.partition,
            offset = rejected.offset,
            reason = %rejected.reason,
            "message dead-lettered"
        );
    }
    Ok(())
}

/// Stores the batch's offsets for the next commit: everything it read is durable.
fn store_offsets(sink: &Sink, batch: &Batch) {
    for (&partition, &last_offset) in &batch.last_offsets {
        // `store_offset` stores last_offset + 1: the next message to read.
        if let Err(error) = sink
            .consumer
            .store_offset(&sink.topic, partition, last_offset)
        {
            // Only possible if the partition was lost without a rebalance
            // callback (session expiry); its new owner re-reads the batch and
            // the primary keys make that a no-op.
            tracing::info!(partition, %error, "offset not stored: partition no longer assigned");
        }
    }
}

/// Counts a committed batch: rows per table, duplicates, dead letters by
/// kind of reason, its duration, and the newest event time now stored.
fn record_batch_metrics(batch: &Batch, outcome: &BatchOutcome, elapsed: Duration) {
    metrics::counter!("energy_worker_batches_total").increment(1);
    metrics::histogram!("energy_worker_batch_duration_seconds").record(elapsed.as_secs_f64());
    for (table, rows) in [
        ("vehicle_readings", outcome.vehicle_rows),
        ("meter_readings", outcome.meter_rows),
        ("assignments", outcome.assignment_rows),
    ] {
        metrics::counter!("energy_worker_rows_written_total", "table" => table).increment(rows);
    }
    metrics::counter!("energy_worker_duplicates_total").increment(outcome.duplicates);
    metrics::counter!("energy_worker_register_jumps_total").increment(outcome.register_jumps);
    for rejected in &batch.rejected {
        metrics::counter!("energy_worker_dead_lettered_total", "reason" => rejected.reason.kind())
            .increment(1);
    }
}

/// Writes the batch's readings at `indices`. When the database refuses a
/// row (a data error), the readings are halved until the refused ones
/// stand alone; the rest is written and the refused ones come back as
/// rejects. Halves are written in order, so the first of two duplicates
/// still wins. When a reading's day has no partition, the readings that
/// have aged past the retention meanwhile (a batch that waited across
/// midnight) come back as rejects, the partitions of the others are
/// created again, and they are written.
async fn write_isolating_refused(
    writer: &GroupWriter,
    batch: &Batch,
    indices: Vec<usize>,
) -> anyhow::Result<(BatchOutcome, Vec<Rejected>)> {
    let mut outcome = BatchOutcome::default();
    let mut refused = Vec::new();
    // A stack of index lists; the left half is pushed last so it goes first.
    let mut pending = vec![indices];
    while let Some(indices) = pending.pop() {
        if indices.is_empty() {
            continue;
        }
        let readings: Vec<&Reading> = indices.iter().map(|&i| &batch.readings[i]).collect();
        let attempt = retry(
            &writer.retrier,
            "batch write",
            || {
                store::write_batch_with(
                    &writer.pool,
                    writer.register_rules,
                    readings.iter().copied(),
                )
            },
            |error: &WriteError| match error {
                WriteError::Data(_) | WriteError::MissingPartition(_) => Decision::GiveBack,
                WriteError::Transient(_) | WriteError::Permanent(_) => Decision::Retry,
            },
        )
        .await?;
        match attempt {
            Ok(part) => outcome += part,
            Err(WriteError::MissingPartition(_)) => {
                let (live, expired) = writer.expired_ones(batch, indices);
                refused.extend(expired);
                if let Some(last_day) = last_reading_day(batch, &live) {
                    writer.recreate_partitions(last_day).await?;
                }
                pending.push(live);
            }
            Err(error) if indices.len() == 1 => {
                let reason = Reason::RefusedByDatabase(format!("{:#}", anyhow::Error::from(error)));
                refused.push(batch.reject_reading(indices[0], reason));
            }
            Err(_) => {
                let right = indices[indices.len() / 2..].to_vec();
                let left = indices[..indices.len() / 2].to_vec();
                pending.push(right);
                pending.push(left);
            }
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            refused = refused.len(),
            "readings refused, isolated for the dead-letter topic"
        );
    }
    Ok((outcome, refused))
}

/// The UTC day of the newest reading at `indices` (assignments have none).
fn last_reading_day(batch: &Batch, indices: &[usize]) -> Option<NaiveDate> {
    indices
        .iter()
        .filter_map(|&i| batch.readings[i].recorded_at())
        .max()
        .map(|at| at.instant().date_naive())
}

impl GroupWriter {
    /// Splits `indices` into the readings still within the retention now
    /// and rejects for those past it, with the retention's reason.
    fn expired_ones(&self, batch: &Batch, indices: Vec<usize>) -> (Vec<usize>, Vec<Rejected>) {
        let now = (self.clock)();
        let mut expired = Vec::new();
        let live = indices
            .into_iter()
            .filter(|&index| {
                let Some(at) = batch.readings[index].recorded_at() else {
                    return true;
                };
                match self.rules.check_retention(at, now) {
                    Ok(()) => true,
                    Err(error) => {
                        let reason = Reason::Message(MessageError::Invalid(vec![error]));
                        expired.push(batch.reject_reading(index, reason));
                        false
                    }
                }
            })
            .collect();
        (live, expired)
    }

    /// Creates again every missing partition of an accepted day through
    /// `last_day`; never drops one. Retried until it succeeds (a lock may
    /// be held for a while), like any failed step of a flush.
    async fn recreate_partitions(&self, last_day: NaiveDate) -> anyhow::Result<()> {
        let first_day = self
            .partitions
            .first_accepted_day((self.clock)().date_naive());
        retry(
            &self.retrier,
            "partition upkeep",
            || {
                self.partitions
                    .ensure_days(&self.pool, first_day, last_day.max(first_day), true)
            },
            |_| Decision::Retry,
        )
        .await??;
        Ok(())
    }
}

/// What to do with a failed attempt.
enum Decision {
    /// Back off and try again (the failure may pass, or skipping would lose data).
    Retry,
    /// Hand the error back to the caller, who can act on it.
    GiveBack,
}

/// Retries `operation` with backoff while `decide` says so. After a shutdown
/// signal it gives up once the grace period has passed, even in the middle
/// of an attempt (a hung statement must not keep the process alive): that is
/// the outer error, and the batch then stays uncommitted and is re-read
/// later. The inner result is the operation's success or a given-back error.
async fn retry<T, E, F, Fut>(
    retrier: &Retrier,
    what: &'static str,
    mut operation: F,
    decide: impl Fn(&E) -> Decision,
) -> anyhow::Result<Result<T, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: std::error::Error + Send + Sync + 'static,
{
    let give_up = async {
        retrier.shutdown.cancelled().await;
        tokio::time::sleep(retrier.grace).await;
    };
    tokio::pin!(give_up);
    let mut backoff = Backoff::default();
    loop {
        let attempt = tokio::select! {
            result = operation() => result,
            () = &mut give_up => anyhow::bail!("{what} unfinished at shutdown: the batch stays uncommitted and will be re-read"),
        };
        let error = match attempt {
            Ok(value) => return Ok(Ok(value)),
            Err(error) => error,
        };
        if let Decision::GiveBack = decide(&error) {
            return Ok(Err(error));
        }
        retrier.health.record_failure();
        metrics::counter!("energy_worker_retries_total", "operation" => what).increment(1);
        let chain = format!("{:#}", anyhow::Error::from(error));
        tracing::warn!(error = %chain, "{what} failed, retrying");
        tokio::select! {
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = &mut give_up => anyhow::bail!("{what} still failing at shutdown: the batch stays uncommitted and will be re-read"),
        }
    }
}
