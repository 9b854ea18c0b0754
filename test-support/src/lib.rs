//! Test fixtures shared by the workspace's integration tests: real
//! components, never mocks of our own code.
//!
//! - [`browser`]: headless Chromium rendering a page;
//! - [`postgres`]: a fresh, migrated database per test on the private
//!   PostgreSQL server that `scripts/test.sh` starts;
//! - [`kafka`]: librdkafka's mock cluster (a real Kafka-protocol broker) on
//!   its own thread, with fault injection, plus raw produce/consume helpers;
//! - [`openapi`]: operations, examples and schemas of an OpenAPI description;
//! - [`oracle`]: analytics computed in plain SQL over raw history;
//! - [`reference`]: the domain computed in memory from the messages sent
//!   (registers replayed in event-time order), for every endpoint;
//! - [`process`]: the built binaries as child processes, killed on drop;
//! - [`services`]: the three services as child processes on one database
//!   and topic ([`services::Wiring`]), started and awaited until ready;
//! - [`in_process`]: one service inside the test's process, on port 0;
//! - [`fixture_path`]: data files kept in `test-support/fixtures/`.

pub mod browser;
pub mod fleet;
pub mod http;
pub mod in_process;
pub mod kafka;
pub mod openapi;
pub mod oracle;
pub mod postgres;
pub mod private_postgres;
pub mod process;
pub mod readings;
pub mod reference;
pub mod services;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A file under `test-support/fixtures/`.
pub fn fixture_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(relative)
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
