//! Kafka client settings shared by the gateway's producer, the worker's
//! consumer and its dead-letter producer, and fleet-sim.
//!
//! Operators reach every librdkafka property through the environment:
//! `KAFKA_<PROPERTY>` with dots as underscores, e.g.
//! `KAFKA_SECURITY_PROTOCOL=sasl_ssl` sets `security.protocol` and
//! `KAFKA_SASL_MECHANISM=SCRAM-SHA-512` sets `sasl.mechanism`. They override
//! this project's defaults, except the few settings the delivery guarantee
//! rests on, which are applied last.

use std::time::Duration;

use clap::Args;
use rdkafka::config::ClientConfig;

/// Where the Kafka cluster and the readings topic are.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Comma-separated bootstrap brokers, host:port
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub kafka_brokers: String,

    /// Topic that carries readings, one JSON reading per message, keyed by device id
    #[arg(long, env = "KAFKA_TOPIC", default_value = "energy.readings")]
    pub kafka_topic: String,
}

impl KafkaArgs {
    /// The dead-letter topic: `explicit`, else `<KAFKA_TOPIC>.dlq`.
    pub fn dead_letter_topic(&self, explicit: Option<&str>) -> String {
        explicit.map_or_else(|| format!("{}.dlq", self.kafka_topic), str::to_owned)
    }
}

/// `KAFKA_*` variables that are this project's own settings, not librdkafka's.
const OWN_SETTINGS: [&str; 5] = [
    "KAFKA_BROKERS",
    "KAFKA_TOPIC",
    "KAFKA_GROUP_ID",
    "KAFKA_DLQ_TOPIC",
    "KAFKA_SESSION_TIMEOUT_MS",
];

/// librdkafka properties named by `KAFKA_<PROPERTY>` variables among `vars`.
pub fn env_overrides(vars: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
    let mut overrides: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| !OWN_SETTINGS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let property = name.strip_prefix("KAFKA_")?;
            (!property.is_empty()).then(|| (property.to_ascii_lowercase().replace('_', "."), value))
        })
        .collect();
    overrides.sort();
    overrides
}

/// A client config: `defaults`, then the operator's `KAFKA_*` overrides from
/// this process' environment, then `fixed`, which nothing overrides.
pub fn client_config(defaults: &[(&str, String)], fixed: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (property, value) in defaults {
        config.set(*property, value);
    }
    let overrides = env_overrides(std::env::vars());
    if !overrides.is_empty() {
        // Names only: values may be credentials.
        let names: Vec<&str> = overrides
            .iter()
            .map(|(property, _)| property.as_str())
            .collect();
        tracing::info!(properties = ?names, "librdkafka settings from the environment");
    }
    for (property, value) in overrides {
        config.set(property, value);
    }
    for (property, value) in fixed {
        config.set(*property, *value);
    }
    config
}

/// A producer that never reports a message delivered before every in-sync
/// replica has it (`acks=all`) and never duplicates or reorders on retry
/// (idempotence). `message_timeout` bounds how long a send may wait for a
/// broker: after it, the delivery fails and the caller can answer or retry.
pub fn reliable_producer_config(brokers: &str, message_timeout: Duration) -> ClientConfig {
    client_config(
        &[
            ("bootstrap.servers", brokers.to_owned()),
            (
                "message.timeout.ms",
                message_timeout.as_millis().to_string(),
            ),
            // Small linger: requests are already batched by callers, and a
            // single reading should not wait long for company.
            ("linger.ms", "2".to_owned()),
            // A bounded local queue: when the broker cannot keep up, sends
            // fail at once with QueueFull (the gateway answers 503) instead of growing.
            ("queue.buffering.max.messages", "200000".to_owned()),
            ("queue.buffering.max.kbytes", "65536".to_owned()),
        ],
        &[("acks", "all"), ("enable.idempotence", "true")],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_is_built_with_tls_sasl_and_every_compression() {
        let features = ClientConfig::new()
            .create_native_config()
            .unwrap()
            .get("builtin.features")
            .unwrap();
        let features: Vec<&str> = features.split(',').collect();
        for wanted in [
            "ssl",
            "sasl_plain",
            "sasl_scram",
            "zstd",
            "lz4",
            "snappy",
            "gzip",
        ] {
            assert!(
                features.contains(&wanted),
                "{wanted} missing from {features:?}"
            );
        }
        // librdkafka checks these when the client is created.
        let producer: Result<rdkafka::producer::BaseProducer, _> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:9093")
            .set("security.protocol", "sasl_ssl")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "worker")
            .set("sasl.password", "secret")
            .set("compression.type", "zstd")
            .create();
        assert!(producer.is_ok(), "{:?}", producer.err());
    }

    #[test]
    fn kafka_variables_become_librdkafka_properties_except_our_own() {
        let vars = [
            ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_BROKERS", "b:9092"),
            ("KAFKA_SESSION_TIMEOUT_MS", "10000"),
            ("KAFKA_", "x"),
            ("DATABASE_URL", "postgres://"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            env_overrides(vars),
            vec![
                ("sasl.mechanism".to_owned(), "SCRAM-SHA-512".to_owned()),
                ("security.protocol".to_owned(), "sasl_ssl".to_owned()),
            ]
        );
    }
}
