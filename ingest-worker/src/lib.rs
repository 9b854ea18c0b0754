//! The write side of the Energy Ingestion Engine.
//!
//! - [`gateway`]: `ingest-gateway`, HTTP in, Kafka out; answers 202 only once
//!   Kafka has acknowledged every reading of the request.
//! - [`worker`]: `ingest-worker`, Kafka in, PostgreSQL out, in batches, with
//!   offsets committed only after the batch's transaction.
//! - [`kafka`]: client settings both sides share.
//! - [`topics`]: `ingest-worker create-topics`, the topics with their partition counts.
//!
//! The binaries in `src/bin/` only parse configuration and call into here.

pub mod gateway;
pub mod kafka;
pub mod topics;
pub mod worker;
