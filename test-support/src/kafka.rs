//! librdkafka's mock cluster as a test broker, and raw Kafka helpers.
//!
//! `MockCluster` is not `Send`, so it lives on a thread of its own and this
//! handle sends it commands (topic creation, fault injection).
//!
//! Beware: the mock broker keeps at most 5 MiB (or 100,000 message sets) per
//! partition and deletes the oldest data past that, like retention. A test
//! with a large backlog needs enough partitions to hold it.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
pub use rdkafka::types::RDKafkaApiKey;
pub use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};

enum Command {
    CreateTopic(String, i32, mpsc::Sender<KafkaResult<()>>),
    RequestErrors(
        RDKafkaApiKey,
        Vec<RDKafkaRespErr>,
        mpsc::Sender<KafkaResult<()>>,
    ),
    BrokerDown(i32, mpsc::Sender<KafkaResult<()>>),
    BrokerUp(i32, mpsc::Sender<KafkaResult<()>>),
}

pub struct MockKafka {
    bootstrap: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl MockKafka {
    /// Starts a one-broker cluster with the given topics (name, partitions).
    pub fn start(topics: &[(&str, i32)]) -> Self {
        let (command_tx, command_rx) = mpsc::channel::<Command>();
        let (bootstrap_tx, bootstrap_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let cluster = MockCluster::new(1).expect("start the mock cluster");
            bootstrap_tx
                .send(cluster.bootstrap_servers())
                .expect("send bootstrap");
            // Ends when the handle drops its sender.
            for command in command_rx {
                match command {
                    Command::CreateTopic(name, partitions, reply) => {
                        let _ = reply.send(cluster.create_topic(&name, partitions, 1));
                    }
                    Command::RequestErrors(api, errors, reply) => {
                        cluster.request_errors(api, &errors);
                        let _ = reply.send(Ok(()));
                    }
                    Command::BrokerDown(id, reply) => {
                        let _ = reply.send(cluster.broker_down(id));
                    }
                    Command::BrokerUp(id, reply) => {
                        let _ = reply.send(cluster.broker_up(id));
                    }
                }
            }
        });
        let bootstrap = bootstrap_rx.recv().expect("mock cluster started");
        let kafka = Self {
            bootstrap,
            commands: Some(command_tx),
            thread: Some(thread),
        };
        for (name, partitions) in topics {
            kafka.create_topic(name, *partitions);
        }
        kafka
    }

    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    fn call(&self, command: impl FnOnce(mpsc::Sender<KafkaResult<()>>) -> Command) {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.commands
            .as_ref()
            .expect("cluster running")
            .send(command(reply_tx))
            .expect("mock cluster thread alive");
        reply_rx
            .recv()
            .expect("mock cluster replied")
            .expect("mock cluster command");
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        self.call(|reply| Command::CreateTopic(name.to_owned(), partitions, reply));
    }

    /// Takes the (only) broker down: connections are closed and refused.
    pub fn broker_down(&self) {
        self.call(|reply| Command::BrokerDown(1, reply));
    }

    pub fn broker_up(&self) {
        self.call(|reply| Command::BrokerUp(1, reply));
    }

    /// The next requests of kind `api` (e.g. Produce) fail with `errors`, one each, in order.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: Vec<RDKafkaRespErr>) {
        self.call(|reply| Command::RequestErrors(api, errors, reply));
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw Kafka message as a producer sends it: optional key, optional payload.
pub type RawMessage = (Option<Vec<u8>>, Option<Vec<u8>>);

/// An acks=all producer for feeding topics directly, as fleet chargers do.
pub fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("create test producer")
}

/// Produces raw messages and waits for every acknowledgement. Sends at most
/// 50,000 at a time, within the producer's local queue.
pub async fn produce_all(producer: &FutureProducer, topic: &str, messages: &[RawMessage]) {
    let unplaced: Vec<(Option<i32>, &RawMessage)> = messages.iter().map(|m| (None, m)).collect();
    produce(producer, topic, &unplaced).await;
}

/// Produces each message into the partition given with it, as a producer
/// with its own partitioner (or none) may: the key does not decide.
pub async fn produce_to_partitions(
    producer: &FutureProducer,
    topic: &str,
    messages: &[(i32, RawMessage)],
) {
    let placed: Vec<(Option<i32>, &RawMessage)> =
        messages.iter().map(|(p, m)| (Some(*p), m)).collect();
    produce(producer, topic, &placed).await;
}

async fn produce(producer: &FutureProducer, topic: &str, messages: &[(Option<i32>, &RawMessage)]) {
    for chunk in messages.chunks(50_000) {
        let mut deliveries = Vec::with_capacity(chunk.len());
        for (partition, (key, payload)) in chunk {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
            if let Some(partition) = partition {
                record = record.partition(*partition);
            }
            if let Some(key) = key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = payload {
                record = record.payload(payload.as_slice());
            }
            deliveries.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for delivery in deliveries {
            delivery
                .await
                .expect("delivery")
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    }
    producer.flush(Duration::from_secs(10)).expect("flush");
}

/// Reads every partition of `topic` from the beginning until `expected`
/// messages arrived or `timeout` passed, and returns what it read.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, partition.id(), Offset::Beginning)
            .expect("add partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + timeout;
    let mut messages = Vec::new();
    while messages.len() < expected && Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            messages.push(message.detach());
        }
    }
    messages
}

/// The committed offset of each partition of `topic` for consumer `group`.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> BTreeMap<i32, Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create offset reader");
    let mut wanted = TopicPartitionList::new();
    for partition in 0..partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(10))
        .expect("fetch committed offsets");
    committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (e.partition(), offset)
        })
        .collect()
}

/// Header value of a message as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::Headers;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The end offset (high watermark) of each partition of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str) -> BTreeMap<i32, i64> {
    watermarks(bootstrap, topic)
        .into_iter()
        .map(|(partition, (_, high))| (partition, high))
        .collect()
}

/// The (low, high) watermarks of each partition of `topic`: the oldest
/// offset still held and the next one to be written. A low watermark above
/// zero means the broker has dropped the partition's oldest messages.
pub fn watermarks(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i64, i64)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "test-watermarks")
        .create()
        .expect("create watermark reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let watermarks = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), watermarks)
        })
        .collect()
}

/// Messages of `topic` committed by `group`, all partitions together.
pub fn committed_total(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    committed_offsets(bootstrap, group, topic, partitions)
        .values()
        .map(|offset| offset.unwrap_or(0))
        .sum()
}

/// Messages in `topic`, all partitions together.
pub fn end_total(bootstrap: &str, topic: &str) -> i64 {
    end_offsets(bootstrap, topic).values().sum()
}
