//! The pure core of the Energy Ingestion Engine: what a reading is, on the
//! wire and once validated. Every producer, the gateway, the worker, the
//! fuzzer and fleet-sim read and write readings through here.
//!
//! - [`wire`]: the original API's camelCase JSON, decoded with every bad
//!   field named, and the canonical encoding published to Kafka;
//! - [`domain`]: the validated types past the decoder (`DeviceId`,
//!   `EventTime`, `Reading`), whose constructors enforce the rules;
//! - [`json`]: strict JSON for untrusted input (duplicate keys refused);
//! - [`ocpp`]: OCPP 1.6J and 2.0.1 meter values as METER readings;
//! - [`register`]: interval energy from cumulative registers (resets,
//!   jitter, implausible jumps), the one statement of the rule;
//! - [`analytics_sql`]: the analytics' SQL text (cutting intervals, which
//!   meter counts), shared by query-api and the worker's figures.
//!
//! Invariant: no async runtime, no web, database or Kafka stack
//! (`test-support/tests/layering.rs` checks it with `cargo tree`).

pub mod analytics_sql;
pub mod domain;
pub mod json;
pub mod ocpp;
pub mod register;
pub mod wire;
