//! What the Energy Ingestion Engine's three services share, so that each
//! service's crate holds only its own work:
//!
//! - [`config`]: clap groups flattened into each binary (`DbArgs`, `ValidationArgs`);
//! - [`db`]: the pool, the embedded migrations, the "migrated?" start-up
//!   check, transient-error classification;
//! - [`http`]: the HTTP server with its connection and request limits, and
//!   the request-id, trace and request-count layers;
//! - [`shell`]: what every service answers besides its own work: `/healthz`,
//!   `/readyz`, `/metrics`, `/openapi.json`, and the 404/405/408 fallbacks;
//! - [`auth`]: API keys and roles, and the middleware that checks them;
//! - [`metrics`], [`telemetry`], [`shutdown`], [`retry`]: the Prometheus
//!   recorder, logging, SIGTERM/Ctrl-C, capped jittered backoff.
//!
//! Invariant: no Kafka client here; the worker and the gateway take Kafka
//! from `kafka-kit`, and query-api never builds librdkafka.

pub mod auth;
pub mod config;
pub mod db;
pub mod http;
pub mod metrics;
pub mod retry;
pub mod shell;
pub mod shutdown;
pub mod telemetry;
