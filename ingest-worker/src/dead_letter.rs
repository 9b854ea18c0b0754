//! The dead-letter topic: messages that cannot become readings are copied
//! there, key and payload unchanged, with why and where they came from in
//! headers, so one bad message never stops its partition and is never lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use kafka_kit::reliable_producer_config;
use shared::wire::{MessageError, MAX_READING_BYTES};

/// Why a message is dead-lettered: its kind (the metric label) and its text
/// (the `dlq.reason` header) come from this one value.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Reason {
    #[error("empty payload")]
    Empty,
    /// Not JSON, or not a valid reading (the retention included).
    #[error(transparent)]
    Message(#[from] MessageError),
    /// Larger than any reading may be (`shared::wire::MAX_READING_BYTES`).
    #[error("message is {bytes} bytes, more than the {MAX_READING_BYTES} a reading may take")]
    TooLarge { bytes: usize },
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
            Reason::TooLarge { .. } => "too_large",
            Reason::RefusedByDatabase(_) => "refused_by_database",
        }
    }
}

/// A message that could not become a reading, with why.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// The key, cut to [`MAX_DEAD_LETTER_KEY`].
    pub key: Option<Vec<u8>>,
    /// The payload's head, at most [`MAX_DEAD_LETTER_PAYLOAD`] bytes.
    pub payload: Vec<u8>,
    /// The whole payload's length.
    pub payload_len: usize,
    pub partition: i32,
    pub offset: i64,
    pub reason: Reason,
}

impl Rejected {
    /// Keeps what the dead-letter topic will get: the key and the payload's
    /// head, never a whole oversized payload.
    pub fn new(
        key: Option<&[u8]>,
        payload: &[u8],
        (partition, offset): (i32, i64),
        reason: Reason,
    ) -> Self {
        Self {
            key: key.map(|key| key[..key.len().min(MAX_DEAD_LETTER_KEY)].to_vec()),
            payload: payload[..payload.len().min(MAX_DEAD_LETTER_PAYLOAD)].to_vec(),
            payload_len: payload.len(),
            partition,
            offset,
            reason,
        }
    }

    /// Bytes it holds, for the batch's byte bound.
    pub fn held_bytes(&self) -> usize {
        self.payload.len() + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// Header names carried by every dead-lettered message.
pub const REASON_HEADER: &str = "dlq.reason";
pub const SOURCE_TOPIC_HEADER: &str = "dlq.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "dlq.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "dlq.source.offset";
/// Present when the payload was cut; holds the original length in bytes.
pub const TRUNCATED_HEADER: &str = "dlq.payload.truncated";

/// Largest payload copied to the dead-letter topic: the most a reading may
/// be. A larger message is refused for its size and copied cut, with its
/// length in a header: its head is enough to diagnose it, the reason and
/// origin headers locate it, and the batch never holds the whole of it.
pub const MAX_DEAD_LETTER_PAYLOAD: usize = MAX_READING_BYTES;
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

    /// Publishes the rejected messages not yet marked in `delivered`, and
    /// marks each one as Kafka acknowledges it. When the producer's local
    /// queue is full, it waits for what is in flight and goes on, so any
    /// number of rejects gets through a bounded queue. A failure fails the
    /// call after what was in flight has settled; the caller retries it, and
    /// the retry sends only what is still unmarked (a reject is never
    /// skipped, and never published again once acknowledged).
    pub async fn publish(
        &self,
        rejected: &[Rejected],
        delivered: &[AtomicBool],
    ) -> Result<(), KafkaError> {
        let mut in_flight = Vec::new();
        for (index, message) in rejected.iter().enumerate() {
            if delivered[index].load(Ordering::Relaxed) {
                continue;
            }
            loop {
                match self.send(message) {
                    Ok(delivery) => {
                        in_flight.push((index, delivery));
                        break;
                    }
                    Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull))
                        if !in_flight.is_empty() =>
                    {
                        settle(&mut in_flight, delivered).await?;
                    }
                    Err(error) => {
                        settle(&mut in_flight, delivered).await?;
                        return Err(error);
                    }
                }
            }
        }
        settle(&mut in_flight, delivered).await
    }

    /// Enqueues one reject, its origin and reason in headers.
    fn send(&self, message: &Rejected) -> Result<DeliveryFuture, KafkaError> {
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        let original_length = message.payload_len.to_string();
        let reason = message.reason.to_string();
        let mut headers = vec![
            (REASON_HEADER, reason.as_str()),
            (SOURCE_TOPIC_HEADER, self.source_topic.as_str()),
            (SOURCE_PARTITION_HEADER, partition.as_str()),
            (SOURCE_OFFSET_HEADER, offset.as_str()),
        ];
        if message.payload.len() < message.payload_len {
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
            .payload(message.payload.as_slice())
            .headers(headers);
        if let Some(key) = &message.key {
            record = record.key(key.as_slice());
        }
        self.producer
            .send_result(record)
            .map_err(|(error, _)| error)
    }
}

/// Awaits every delivery in flight, marking the acknowledged ones; the
/// first failure, if any, once all have settled.
async fn settle(
    in_flight: &mut Vec<(usize, DeliveryFuture)>,
    delivered: &[AtomicBool],
) -> Result<(), KafkaError> {
    let mut first_error = None;
    for (index, delivery) in in_flight.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => delivered[index].store(true, Ordering::Relaxed),
            Ok(Err((error, _))) => {
                first_error.get_or_insert(error);
            }
            Err(_canceled) => {
                first_error.get_or_insert(KafkaError::Canceled);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}
