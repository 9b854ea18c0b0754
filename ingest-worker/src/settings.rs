//! The worker's settings ([`WorkerArgs`], flattened into the binary's clap
//! struct) and the Kafka consumer they configure.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use kafka_kit::KafkaArgs;
use rdkafka::config::ClientConfig;
use service_kit::config::{DbArgs, ValidationArgs};
use service_kit::http::HttpLimits;
use shared::register::RegisterRules;

use crate::partitions::{DAYS_AHEAD, MAX_PARTITION_DAYS};
use crate::pipeline::BatchLimits;

/// Settings of `ingest-worker`.
#[derive(Args, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub http: HttpLimits,

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
    /// (BENCHMARKS.md); the price is memory: two batches (one writing, one
    /// filling), each held to BATCH_MAX_BYTES of message data besides
    #[arg(long, env = "BATCH_MAX_READINGS", default_value_t = 100_000)]
    pub batch_max_readings: usize,

    /// Flush a batch once its messages' keys and payloads total this many
    /// bytes, whatever their number: with BATCH_MAX_READINGS this bounds a
    /// batch's memory (ARCHITECTURE.md, "Memory is bounded"). 100,000
    /// canonical readings take about 23 MiB, so the default never cuts a
    /// batch of ordinary readings short
    #[arg(long, env = "BATCH_MAX_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub batch_max_bytes: usize,

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

    /// Address of the worker's health listener (/healthz, /readyz, /metrics);
    /// the binary binds it and passes the listener to `run`
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

    /// Longest a partition change (creating tomorrow's, dropping an expired
    /// one) waits for its lock on the partitioned table before it is
    /// deferred to the next upkeep: behind a long query it would otherwise
    /// hold up every insert and query queued behind it
    #[arg(long, env = "PARTITION_LOCK_TIMEOUT_MS", default_value_t = 1_000)]
    pub partition_lock_timeout_ms: u64,

    /// Hours of closed five-minute buckets kept as per-vehicle figures
    /// (the summarised range query-api reads a window's middle from); 0
    /// computes none
    #[arg(long, env = "FIGURES_KEEP_HOURS", default_value_t = 26)]
    pub figures_keep_hours: u32,

    /// Milliseconds between passes over the per-vehicle figures (each adds
    /// the buckets that closed and recomputes the marked ones)
    #[arg(long, env = "FIGURES_INTERVAL_MS", default_value_t = 5_000)]
    pub figures_interval_ms: u64,

    /// Seconds between partition upkeeps (create days ahead, drop expired
    /// ones, retry what was deferred)
    #[arg(long, env = "PARTITION_UPKEEP_INTERVAL_SECS", default_value_t = 600)]
    pub partition_upkeep_interval_secs: u64,

    /// Most power a device can plausibly deliver or draw, in kW: a register
    /// rising faster than this over the elapsed time is an implausible jump,
    /// not counted, flagged in current state and in
    /// energy_worker_register_jumps_total. 1,000 kW is above any car or bus
    /// charger; raise it for megawatt truck chargers
    #[arg(long, env = "REGISTER_MAX_KW", default_value_t = RegisterRules::DEFAULT_MAX_KW)]
    pub register_max_kw: f64,

    /// A register falling by at most this many kWh is float jitter (no
    /// energy), not a reset (the new count is the interval's energy)
    #[arg(long, env = "REGISTER_RESET_TOLERANCE_KWH", default_value_t = RegisterRules::DEFAULT_RESET_TOLERANCE_KWH)]
    pub register_reset_tolerance_kwh: f64,

    /// Days of hourly rollups kept (longer than raw readings: RETENTION_DAYS)
    #[arg(long, env = "ROLLUP_RETENTION_DAYS", default_value_t = 730)]
    pub rollup_retention_days: u32,
}

impl WorkerArgs {
    /// Refuses settings that cannot work, naming them.
    pub fn check(&self) -> anyhow::Result<()> {
        let (raw, rollups) = (
            u64::from(self.validation.retention_days),
            u64::from(self.rollup_retention_days),
        );
        anyhow::ensure!(
            rollups >= raw,
            "ROLLUP_RETENTION_DAYS ({rollups}) must be at least RETENTION_DAYS ({raw}): \
             analytics read whole hours from the rollups"
        );
        // energy_ensure_partitions creates at most this many days at once.
        let most = MAX_PARTITION_DAYS - DAYS_AHEAD;
        anyhow::ensure!(
            rollups <= most,
            "ROLLUP_RETENTION_DAYS ({rollups}) and RETENTION_DAYS may be at most {most} days: \
             partitions are kept from the retention cutoff through {DAYS_AHEAD} days ahead, \
             at most {MAX_PARTITION_DAYS} days"
        );
        let (max_kw, tolerance) = (self.register_max_kw, self.register_reset_tolerance_kwh);
        anyhow::ensure!(
            max_kw.is_finite() && max_kw > 0.0,
            "REGISTER_MAX_KW ({max_kw}) must be a positive number of kW"
        );
        anyhow::ensure!(
            tolerance.is_finite() && tolerance >= 0.0,
            "REGISTER_RESET_TOLERANCE_KWH ({tolerance}) must be a number of kWh, 0 or more"
        );
        Ok(())
    }

    pub fn register_rules(&self) -> RegisterRules {
        RegisterRules {
            max_kw: self.register_max_kw,
            reset_tolerance_kwh: self.register_reset_tolerance_kwh,
        }
    }

    pub fn dead_letter_topic(&self) -> String {
        self.kafka
            .dead_letter_topic(self.kafka_dlq_topic.as_deref())
    }

    pub fn batch_limits(&self) -> BatchLimits {
        BatchLimits {
            max_messages: self.batch_max_readings.max(1),
            max_bytes: self.batch_max_bytes.max(1),
            max_wait: Duration::from_millis(self.batch_max_wait_ms),
        }
    }
}

/// The consumer: a member of the group, offsets stored by hand.
pub fn consumer_config(args: &WorkerArgs) -> ClientConfig {
    let session_timeout = args.kafka_session_timeout_ms;
    kafka_kit::client_config(
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
