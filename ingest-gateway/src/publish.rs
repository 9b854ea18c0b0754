//! Publishing validated readings to the readings topic, keyed by device id,
//! and waiting until Kafka has acknowledged each one (acks=all, idempotent).

use std::time::Duration;

use kafka_kit::{reliable_producer_config, KafkaArgs};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use shared::domain::Reading;
use shared::wire;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The local producer queue is full: shed load instead of growing.
    #[error("the producer queue is full")]
    Overloaded,
    #[error("kafka delivery failed")]
    Kafka(#[from] KafkaError),
    #[error("no acknowledgement within the publish timeout")]
    TimedOut,
    #[error("a reading could not be encoded")]
    Encode(#[from] serde_json::Error),
}

pub struct Publisher {
    producer: FutureProducer,
    topic: String,
    message_timeout: Duration,
}

impl Publisher {
    pub fn new(kafka: &KafkaArgs, message_timeout: Duration) -> Result<Self, KafkaError> {
        let producer = reliable_producer_config(&kafka.kafka_brokers, message_timeout).create()?;
        Ok(Self {
            producer,
            topic: kafka.kafka_topic.clone(),
            message_timeout,
        })
    }

    /// Returns once every reading is acknowledged, or with the first failure.
    /// On failure some readings may have been published: the caller retries
    /// the whole request and the worker stores each duplicate once.
    pub async fn publish(&self, readings: &[Reading]) -> Result<(), PublishError> {
        let started = std::time::Instant::now();
        let published = self.publish_all(readings).await;
        let outcome = if published.is_ok() {
            "acknowledged"
        } else {
            "failed"
        };
        metrics::histogram!("energy_gateway_produce_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        published
    }

    /// Messages handed to librdkafka and not yet acknowledged or failed.
    pub fn queued_messages(&self) -> i32 {
        self.producer.in_flight_count()
    }

    async fn publish_all(&self, readings: &[Reading]) -> Result<(), PublishError> {
        let mut deliveries = Vec::with_capacity(readings.len());
        for reading in readings {
            let payload = wire::encode(reading)?;
            let record = FutureRecord::to(&self.topic)
                .key(reading.device_id().as_str())
                .payload(&payload);
            // `send_result` enqueues without waiting, so the whole request is in
            // flight at once; librdkafka copies the payload.
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    return Err(PublishError::Overloaded)
                }
                Err((error, _)) => return Err(PublishError::Kafka(error)),
            }
        }
        let all_acknowledged = async {
            for delivery in deliveries {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((error, _))) => return Err(PublishError::Kafka(error)),
                    // The producer was dropped: only at shutdown.
                    Err(_canceled) => return Err(PublishError::TimedOut),
                }
            }
            Ok(())
        };
        // librdkafka fails each message after message.timeout.ms; this is a backstop.
        tokio::time::timeout(
            self.message_timeout + Duration::from_secs(2),
            all_acknowledged,
        )
        .await
        .map_err(|_| PublishError::TimedOut)?
    }

    /// True when the cluster answers a metadata request for the topic.
    pub async fn broker_reachable(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Delivers whatever is still queued (shutdown).
    pub async fn flush(&self) {
        let producer = self.producer.clone();
        let timeout = self.message_timeout;
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(error) = producer.flush(timeout) {
                tracing::warn!(%error, "producer flush at shutdown did not complete");
            }
        })
        .await;
    }
}
