//! `dev-broker`: DEVELOPMENT ONLY. Hosts librdkafka's in-memory mock Kafka
//! cluster (`rdkafka::mocking`) so the whole system can run on a machine
//! without Kafka. It keeps nothing on disk and is not a production broker:
//! production uses a real Kafka cluster (see docker-compose.yml).
//!
//! The mock keeps at most 5 MiB (and 100,000 message sets) per partition and
//! silently drops the oldest data beyond that, read or not. So that a 202
//! from the gateway is never followed by silent loss, a guard follows the
//! readings topic and the workers' committed offsets: while any partition
//! holds more than `--max-backlog-bytes` (or `--max-backlog-messages`) that
//! the workers have not committed, every produce request is refused
//! (a retriable "not enough replicas"), so the gateway answers 503 until the
//! workers catch up.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Message, Offset, TopicPartitionList};

/// Development-only in-memory Kafka-protocol broker (librdkafka mock cluster).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Topics to create, with their partition count, as name:partitions; the
    /// first is the readings topic the guard follows
    #[arg(long = "topic", default_values_t = ["energy.readings:4".to_owned(), "energy.readings.dlq:1".to_owned()])]
    topics: Vec<String>,

    /// Number of mock brokers
    #[arg(long, default_value_t = 1)]
    brokers: i32,

    /// Write the bootstrap servers to this file once the cluster is up
    #[arg(long)]
    bootstrap_file: Option<PathBuf>,

    /// Consumer group whose committed offsets tell what the workers have
    /// stored; `none` turns the guard off (the benchmark pre-fills topics)
    #[arg(long, default_value = "energy-ingest-worker")]
    guard_group: String,

    /// Most bytes (keys, payloads and a per-message allowance) one partition
    /// may hold beyond the guard group's offset before produce requests are
    /// refused; the mock drops data past 5 MiB
    #[arg(long, default_value_t = 3 * 1024 * 1024)]
    max_backlog_bytes: usize,

    /// Most messages one partition may hold beyond the guard group's offset;
    /// the mock drops data past 100,000 message sets
    #[arg(long, default_value_t = 60_000)]
    max_backlog_messages: usize,
}

/// What a message costs in the mock's log besides its key and payload: its
/// record and, at worst, a batch of its own.
const MESSAGE_OVERHEAD_BYTES: usize = 100;

fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let cli = Cli::parse();
    // MockCluster is not Send: it lives on this thread for the process' life.
    let cluster = MockCluster::new(cli.brokers).context("cannot start the mock cluster")?;
    let mut readings_topic = None;
    for topic in &cli.topics {
        let (name, partitions) = topic
            .rsplit_once(':')
            .and_then(|(name, n)| Some((name, n.parse::<i32>().ok()?)))
            .with_context(|| format!("--topic {topic:?} is not name:partitions"))?;
        cluster
            .create_topic(name, partitions, 1)
            .with_context(|| format!("cannot create topic {name}"))?;
        readings_topic.get_or_insert((name.to_owned(), partitions));
    }
    let bootstrap = cluster.bootstrap_servers();
    if let Some(path) = &cli.bootstrap_file {
        std::fs::write(path, &bootstrap)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{bootstrap}");
    tracing::warn!(%bootstrap, "DEVELOPMENT-ONLY in-memory Kafka mock cluster running; data is lost on exit");

    let stop = Arc::new(AtomicBool::new(false));
    let signal = stop.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a signal runtime");
        runtime.block_on(service_kit::shutdown::signal());
        signal.store(true, Ordering::SeqCst);
    });
    match readings_topic {
        Some((topic, partitions)) if cli.guard_group != "none" => {
            let mut guard = Guard::new(&cli, &bootstrap, &topic, partitions)?;
            while !stop.load(Ordering::SeqCst) {
                guard.step(&cluster)?;
            }
        }
        _ => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    drop(cluster);
    Ok(())
}

/// One partition's log beyond the group's committed offset.
#[derive(Default)]
struct Backlog {
    /// (offset, bytes appended to the partition through it), oldest first.
    entries: VecDeque<(i64, usize)>,
    /// Bytes appended through the group's committed offset.
    committed_bytes: usize,
}

impl Backlog {
    fn append(&mut self, offset: i64, size: usize) {
        let through = self
            .entries
            .back()
            .map_or(self.committed_bytes, |(_, bytes)| *bytes);
        self.entries.push_back((offset, through + size));
    }

    /// Forgets the messages before `committed` (the next offset to read).
    fn commit(&mut self, committed: i64) {
        while let Some(&(offset, bytes)) = self.entries.front() {
            if offset >= committed {
                break;
            }
            self.committed_bytes = bytes;
            self.entries.pop_front();
        }
    }

    fn bytes(&self) -> usize {
        self.entries
            .back()
            .map_or(0, |(_, bytes)| bytes - self.committed_bytes)
    }
}

/// Follows the readings topic and the workers' progress, and refuses
/// produce requests while a partition's backlog is near what the mock keeps.
struct Guard {
    /// Reads every message, to know what each offset adds to the log.
    follower: BaseConsumer,
    /// Reads the guard group's committed offsets (it never joins the group).
    progress: BaseConsumer,
    topic: String,
    partitions: i32,
    /// Per partition, what the group has not committed yet.
    logs: BTreeMap<i32, Backlog>,
    max_bytes: usize,
    max_messages: usize,
    refusing: bool,
    checked_at: Instant,
}

impl Guard {
    fn new(cli: &Cli, bootstrap: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let client = |group: &str| {
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create::<BaseConsumer>()
        };
        let follower = client("dev-broker-guard").context("cannot create the guard's reader")?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        follower.assign(&assignment)?;
        Ok(Self {
            follower,
            progress: client(&cli.guard_group)
                .context("cannot create the guard's offset reader")?,
            topic: topic.to_owned(),
            partitions,
            logs: BTreeMap::new(),
            max_bytes: cli.max_backlog_bytes,
            max_messages: cli.max_backlog_messages,
            refusing: false,
            checked_at: Instant::now(),
        })
    }

    /// Reads what arrived, and four times a second compares each
    /// partition's backlog with the limits.
    fn step(
        &mut self,
        cluster: &MockCluster<'static, DefaultProducerContext>,
    ) -> anyhow::Result<()> {
        while let Some(message) = self.follower.poll(Duration::from_millis(20)) {
            let Ok(message) = message else { continue };
            let size = message.key().map_or(0, <[u8]>::len)
                + message.payload().map_or(0, <[u8]>::len)
                + MESSAGE_OVERHEAD_BYTES;
            self.logs
                .entry(message.partition())
                .or_default()
                .append(message.offset(), size);
        }
        if self.checked_at.elapsed() < Duration::from_millis(250) {
            return Ok(());
        }
        self.checked_at = Instant::now();
        let over = self.over_limit();
        if over && !self.refusing {
            tracing::warn!(
                max_backlog_bytes = self.max_bytes,
                max_backlog_messages = self.max_messages,
                "a partition holds nearly what the development broker keeps and the workers have \
                 not stored it: refusing produce requests (the gateway answers 503) until they catch up"
            );
            cluster.request_errors(
                RDKafkaApiKey::Produce,
                &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 1_000_000],
            );
        } else if !over && self.refusing {
            tracing::info!("the workers caught up: accepting produce requests again");
            cluster.clear_request_errors(RDKafkaApiKey::Produce);
        }
        self.refusing = over;
        Ok(())
    }

    /// Whether any partition's log beyond the group's committed offset is
    /// over a limit; forgets what the group has committed.
    fn over_limit(&mut self) -> bool {
        let mut wanted = TopicPartitionList::new();
        for partition in 0..self.partitions {
            wanted.add_partition(&self.topic, partition);
        }
        // Unreachable offsets (the cluster busy): judge on what is known.
        let committed = self
            .progress
            .committed_offsets(wanted, Duration::from_secs(1))
            .unwrap_or_default();
        let mut over = false;
        for (&partition, log) in &mut self.logs {
            let done = committed
                .find_partition(&self.topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            if let Some(done) = done {
                log.commit(done);
            }
            over |= log.bytes() > self.max_bytes || log.entries.len() > self.max_messages;
        }
        over
    }
}
