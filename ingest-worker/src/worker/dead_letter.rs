//! The dead-letter topic: messages that cannot become readings are copied
//! there, key and payload unchanged, with why and where they came from in
//! headers, so one bad message never stops its partition and is never lost.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::batch::Rejected;
use crate::kafka::reliable_producer_config;

/// Header names carried by every dead-lettered message.
pub const REASON_HEADER: &str = "dlq.reason";
pub const SOURCE_TOPIC_HEADER: &str = "dlq.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "dlq.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "dlq.source.offset";

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
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: REASON_HEADER,
                    value: Some(message.reason.as_str()),
                })
                .insert(Header {
                    key: SOURCE_TOPIC_HEADER,
                    value: Some(self.source_topic.as_str()),
                })
                .insert(Header {
                    key: SOURCE_PARTITION_HEADER,
                    value: Some(partition.as_str()),
                })
                .insert(Header {
                    key: SOURCE_OFFSET_HEADER,
                    value: Some(offset.as_str()),
                });
            let mut record = FutureRecord::to(&self.dead_letter_topic)
                .payload(message.payload.as_slice())
                .headers(headers);
            if let Some(key) = &message.key {
                record = record.key(key.as_slice());
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
