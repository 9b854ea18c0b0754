//! The dead-letter topic: messages that cannot become readings are copied
//! there, key and payload unchanged, with why and where they came from in
//! headers, so one bad message never stops its partition and is never lost.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use kafka_kit::reliable_producer_config;
use shared::wire::MessageError;

/// Why a message is dead-lettered: its kind (the metric label) and its text
/// (the `dlq.reason` header) come from this one value.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Reason {
    #[error("empty payload")]
    Empty,
    /// Not JSON, or not a valid reading (the retention included).
    #[error(transparent)]
    Message(#[from] MessageError),
    /// The database refused the row (a data error, isolated to this reading).
    #[error("database refused the reading: {0}")]
    RefusedByDatabase(String),
}

impl Reason {
    /// The label of `energy_worker_dead_lettered_total`: a few fixed values.
    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Empty => "empty",
            Reason::Message(MessageError::NotJson(_)) => "undecodable",
            Reason::Message(MessageError::Invalid(_)) => "invalid",
            Reason::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// A message that could not become a reading, with why.
#[derive(Clone, Debug)]
pub struct Rejected {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
    pub reason: Reason,
}

/// Header names carried by every dead-lettered message.
pub const REASON_HEADER: &str = "dlq.reason";
pub const SOURCE_TOPIC_HEADER: &str = "dlq.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "dlq.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "dlq.source.offset";
/// Present when the payload was cut; holds the original length in bytes.
pub const TRUNCATED_HEADER: &str = "dlq.payload.truncated";

/// Largest payload copied to the dead-letter topic. Kafka refuses messages
/// over `message.max.bytes` (1 MB by default) for good, so an oversized
/// poison message would otherwise block its partition forever; its head is
/// enough to diagnose it, and the reason and origin headers locate it.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = 512 * 1024;
/// Largest key copied (device ids are at most 64 characters).
pub const MAX_DEAD_LETTER_KEY: usize = 4 * 1024;

pub struct DeadLetterProducer {
    producer: FutureProducer,
    source_topic: String,
    dead_letter_topic: String,
}

impl DeadLetterProducer {
    pub fn new(
        brokers: &str,
        source_topic: &str,
        dead_letter_topic: &str,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: reliable_producer_config(brokers, Duration::from_secs(30)).create()?,
            source_topic: source_topic.to_owned(),
            dead_letter_topic: dead_letter_topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.dead_letter_topic
    }

    /// Publishes every rejected message and waits for all acknowledgements;
    /// any failure fails the whole call, and the caller retries it (a
    /// rejected message is never skipped, at worst dead-lettered twice).
    pub async fn publish(&self, rejected: &[Rejected]) -> Result<(), KafkaError> {
        let mut deliveries = Vec::with_capacity(rejected.len());
        for message in rejected {
            let partition = message.partition.to_string();
            let offset = message.offset.to_string();
            let original_length = message.payload.len().to_string();
            let reason = message.reason.to_string();
            let payload = &message.payload[..message.payload.len().min(MAX_DEAD_LETTER_PAYLOAD)];
            let mut headers = vec![
                (REASON_HEADER, reason.as_str()),
                (SOURCE_TOPIC_HEADER, self.source_topic.as_str()),
                (SOURCE_PARTITION_HEADER, partition.as_str()),
                (SOURCE_OFFSET_HEADER, offset.as_str()),
            ];
            if payload.len() < message.payload.len() {
                headers.push((TRUNCATED_HEADER, original_length.as_str()));
            }
            let headers = headers
                .into_iter()
                .fold(OwnedHeaders::new(), |all, (key, value)| {
                    all.insert(Header {
                        key,
                        value: Some(value),
                    })
                });
            let mut record = FutureRecord::to(&self.dead_letter_topic)
                .payload(payload)
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(&key[..key.len().min(MAX_DEAD_LETTER_KEY)]);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => return Err(error),
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error),
                Err(_canceled) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }
}
