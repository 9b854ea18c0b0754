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
//! - [`settings`]: `WorkerArgs` and the Kafka consumer they configure;
//! - [`pipeline`]: the consume loop, flushing and retrying;
//! - [`rebalance`]: dropping buffered messages of revoked partitions;
//! - [`health`]: what `/readyz` and `/metrics` report (served by `service_kit::shell`);
//! - [`batch`]: collecting and decoding messages;
//! - [`store`]: the database transaction;
//! - [`stream`]: the vehicle and meter streams, each described once;
//! - [`copy`]: binary COPY encoding;
//! - [`rollup`]: hourly and five-minute rollups kept with the history rows;
//! - [`registers`]: interval energy of register readings, exact out of order;
//! - [`partitions`]: day and month partitions created ahead, dropped past retention;
//! - [`dead_letter`]: the dead-letter topic.
//!
//! The binary (`src/main.rs`) parses configuration, binds the health
//! listener and calls [`run`]; `migrate` and `create-topics` are its
//! subcommands.

pub mod batch;
pub mod copy;
pub mod dead_letter;
pub mod figures;
pub mod health;
pub mod partitions;
pub mod pipeline;
pub mod rebalance;
pub mod registers;
pub mod rollup;
pub mod settings;
pub mod store;
pub mod stream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use service_kit::db;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::dead_letter::DeadLetterProducer;
use self::health::Health;
use self::partitions::Partitions;
use self::pipeline::{Backlog, Sink};
use self::rebalance::WorkerContext;
pub use self::settings::WorkerArgs;

fn describe_metrics() {
    use service_kit::metrics::Kind::{Counter, Gauge, Histogram};
    service_kit::metrics::describe(&[
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
            "energy_worker_register_jumps_total",
            "Register readings whose rise was implausible for the elapsed time (not counted)",
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
            Counter,
            "energy_worker_figure_rounds_total",
            "Rounds of the per-vehicle figures' upkeep, by outcome: done (current, or another worker's pass holds the lock), deferred (the consumer is behind), failed",
        ),
        (
            Counter,
            "energy_worker_figure_buckets_total",
            "Vehicle buckets of the per-vehicle figures computed (new and marked ones)",
        ),
        (
            Gauge,
            "energy_worker_newest_stored_reading_age_seconds",
            "Now minus the event time of the newest reading stored",
        ),
    ]);
}

/// What time it is. The retention cutoff and the partitions' days follow
/// it, so a test can move it across midnight; the worker uses [`system_clock`].
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The host's clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// Runs the worker until `shutdown` completes, serving its probes on
/// `health_listener`: then it stops fetching, flushes and commits the open
/// batch, leaves the group and returns.
pub async fn run(
    args: WorkerArgs,
    health_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_with_clock(args, health_listener, shutdown, system_clock()).await
}

/// [`run`], with the time taken from `clock`.
pub async fn run_with_clock(
    args: WorkerArgs,
    health_listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: Clock,
) -> anyhow::Result<()> {
    args.check()?;
    // Before anything is counted: metrics recorded earlier would be lost.
    service_kit::metrics::handle();
    describe_metrics();
    let pool = db::pool(&args.db, "ingest-worker").context("invalid database settings")?;
    db::wait_until_migrated(&pool).await?;
    db::ensure_temp_privilege(&pool).await?;
    db::record_setting(
        &pool,
        db::RETENTION_DAYS_SETTING,
        &args.validation.retention_days.to_string(),
    )
    .await
    .context("cannot record the worker's settings")?;
    let partitions = Arc::new(Partitions::new(
        args.validation.retention_days,
        args.rollup_retention_days,
        Duration::from_millis(args.partition_lock_timeout_ms),
    ));
    prepare_partitions_until_done(&pool, &partitions, &clock).await;
    let dead_letter_topic = args.dead_letter_topic();
    ensure_topics_exist(
        &args.kafka.kafka_brokers,
        &[&args.kafka.kafka_topic, &dead_letter_topic],
    )
    .await?;
    let backlog = Arc::new(Backlog::new(&args.batch_limits()));
    let consumer = subscribe(&args, backlog.clone())?;

    let token = CancellationToken::new();
    let signal_token = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        signal_token.cancel();
    });
    let health = Arc::new(Health::new(Duration::from_millis(args.not_ready_after_ms)));
    tokio::spawn(keep_partitions(
        pool.clone(),
        partitions.clone(),
        clock.clone(),
        Duration::from_secs(args.partition_upkeep_interval_secs.max(1)),
        token.clone(),
    ));
    if args.figures_keep_hours > 0 {
        tokio::spawn(keep_figures(
            pool.clone(),
            clock.clone(),
            chrono::TimeDelta::hours(i64::from(args.figures_keep_hours)),
            Duration::from_millis(args.figures_interval_ms.max(1)),
            backlog.clone(),
            token.clone(),
        ));
    }
    let health_server = tokio::spawn(health::serve(
        health_listener,
        health.clone(),
        args.http,
        token.clone().cancelled_owned(),
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
        register_rules: args.register_rules(),
        health,
        partitions,
        clock,
        shutdown: token.clone(),
        shutdown_grace: Duration::from_millis(args.shutdown_grace_ms),
        write_concurrency: args.batch_write_concurrency.max(1),
        backlog,
    };
    tracing::info!(
        topic = %args.kafka.kafka_topic,
        group = %args.kafka_group_id,
        dead_letter_topic = %dead_letter_topic,
        "ingest-worker consuming"
    );
    let result = pipeline::consume(&sink, args.batch_limits()).await;
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

/// The group's consumer, subscribed to the readings topic.
fn subscribe(
    args: &WorkerArgs,
    backlog: Arc<Backlog>,
) -> anyhow::Result<StreamConsumer<WorkerContext>> {
    let consumer: StreamConsumer<WorkerContext> = settings::consumer_config(args)
        .create_with_context(WorkerContext::new(backlog))
        .context("cannot create the Kafka consumer")?;
    consumer
        .subscribe(&[&args.kafka.kafka_topic])
        .context("cannot subscribe to the readings topic")?;
    Ok(consumer)
}

/// Start-up partition creation, retried until it succeeds: the first
/// batch must find its partitions. Dropping expired ones is left to the
/// background upkeep, so a lock held elsewhere cannot hold up the start.
async fn prepare_partitions_until_done(
    pool: &sqlx::PgPool,
    partitions: &Partitions,
    clock: &Clock,
) {
    let mut backoff =
        service_kit::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while let Err(error) = partitions.prepare(pool, clock().date_naive()).await {
        tracing::warn!(error = %format!("{error:#}"), "partition upkeep failed, retrying");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The background upkeep, at once and then every `interval`: creates the
/// days ahead, drops expired ones, refreshes the statistics of the days
/// being filled; whatever fails or is deferred is tried again at the next
/// round.
async fn keep_partitions(
    pool: sqlx::PgPool,
    partitions: Arc<Partitions>,
    clock: Clock,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {
                let today = clock().date_naive();
                if let Err(error) = partitions.prepare(&pool, today).await {
                    tracing::warn!(error = %format!("{error:#}"), "partition creation failed; will try again");
                }
                if let Err(error) = partitions.drop_expired(&pool, today).await {
                    tracing::warn!(error = %format!("{error:#}"), "dropping expired partitions failed; will try again");
                }
                let yesterday = today - chrono::Days::new(1);
                if let Err(error) = partitions.analyze_days(&pool, yesterday, today).await {
                    tracing::warn!(error = %format!("{error:#}"), "refreshing statistics failed; will try again");
                }
            }
        }
    }
}

/// Longest the per-vehicle figures wait for a worker that stays behind:
/// answers stay exact meanwhile (they read what is not summarised from the
/// rollups), only slower, so draining comes first, but not forever.
const FIGURES_MOST_DEFERRED: Duration = Duration::from_secs(300);

/// The per-vehicle figures, every `interval`: passes until they are
/// current (or another worker runs them); a failed pass is tried again at
/// the next round. Cancelled mid-pass, a pass's transaction rolls back.
///
/// While the worker is behind (a backlog after an outage), rounds wait, up
/// to [`FIGURES_MOST_DEFERRED`] after the last one ended, and a round stops
/// between passes once it is behind: the backlog's readings land in the
/// buckets a pass would summarise, so each batch would mark them and each
/// pass compute them again, on the cores the drain needs (measured in
/// BENCHMARKS.md, "Worker drain").
async fn keep_figures(
    pool: sqlx::PgPool,
    clock: Clock,
    keep: chrono::TimeDelta,
    interval: Duration,
    backlog: Arc<Backlog>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_round_ended: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let waited_enough =
            last_round_ended.is_none_or(|ended| ended.elapsed() >= FIGURES_MOST_DEFERRED);
        if backlog.is_behind() && !waited_enough {
            tracing::debug!("per-vehicle figures deferred: the consumer is behind");
            metrics::counter!("energy_worker_figure_rounds_total", "outcome" => "deferred")
                .increment(1);
            continue;
        }
        let caught_up = tokio::select! {
            () = shutdown.cancelled() => return,
            caught_up = figures::catch_up_while(&pool, clock(), keep, || !backlog.is_behind()) => caught_up,
        };
        last_round_ended = Some(std::time::Instant::now());
        let outcome = match caught_up {
            Ok(buckets) => {
                if buckets > 0 {
                    tracing::debug!(buckets, "per-vehicle figures computed");
                }
                metrics::counter!("energy_worker_figure_buckets_total").increment(buckets);
                "done"
            }
            Err(error) => {
                tracing::warn!(%error, "computing the per-vehicle figures failed; will try again");
                "failed"
            }
        };
        metrics::counter!("energy_worker_figure_rounds_total", "outcome" => outcome).increment(1);
    }
}

/// Fails with a clear message when a topic does not exist, instead of
/// consuming nothing or retrying dead-letter publishes forever.
async fn ensure_topics_exist(brokers: &str, topics: &[&str]) -> anyhow::Result<()> {
    let brokers = brokers.to_owned();
    let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = kafka_kit::client_config(
            &[("bootstrap.servers", brokers.clone())],
            &[("allow.auto.create.topics", "false")],
        )
        .create()
        .context("cannot create the Kafka metadata client")?;
        let mut backoff =
            service_kit::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
            anyhow::ensure!(
                kafka_kit::topics::partition_count(&metadata, topic).is_some(),
                "kafka topic {topic} does not exist: create it with `ingest-worker create-topics` (README, \"Topics and their partition count\")"
            );
        }
        Ok(())
    })
    .await?
}
