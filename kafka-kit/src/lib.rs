//! Kafka as the Energy Ingestion Engine's services and tools use it.
//!
//! - [`settings`]: where the cluster and the readings topic are
//!   ([`settings::KafkaArgs`]), client settings with the operator's `KAFKA_*`
//!   pass-through, and the producer the delivery guarantee rests on;
//! - [`topics`]: `ingest-worker create-topics`, and what a topic's metadata says.
//!
//! Invariant: no web or database stack, so a producer such as fleet-sim
//! takes Kafka from here without building axum or sqlx.

pub mod settings;
pub mod topics;

pub use settings::{client_config, reliable_producer_config, KafkaArgs};
