//! Pieces that more than one Energy Ingestion Engine binary needs: the wire
//! format of a reading, the validated domain types it is parsed into, the
//! command-line/env configuration groups, database access (pool, migrations,
//! the "is this database migrated" check), telemetry and shutdown signals.
//!
//! Also the HTTP server both services run ([`http`]) and strict JSON parsing
//! for untrusted input ([`json`]).
//!
//! Invariant: this crate never depends on rdkafka, so query-api never builds
//! librdkafka.

pub mod auth;
pub mod config;
pub mod db;
pub mod domain;
pub mod http;
pub mod json;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod wire;
