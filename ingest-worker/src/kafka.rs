//! Kafka client settings shared by the gateway's producer, the worker's
//! consumer and its dead-letter producer.

use std::time::Duration;

use rdkafka::config::ClientConfig;

/// A producer that never reports a message delivered before every in-sync
/// replica has it (`acks=all`) and never duplicates or reorders on retry
/// (idempotence). `message_timeout` bounds how long a send may wait for a
/// broker: after it, the delivery fails and the caller can answer or retry.
pub fn reliable_producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        )
        // Small linger: requests are already batched by callers, and a single
        // reading should not wait long for company.
        .set("linger.ms", "2")
        // A bounded local queue: when the broker cannot keep up, sends fail at
        // once with QueueFull (the gateway answers 503) instead of growing.
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "65536");
    config
}
