//! What the worker's probes report, served on its health listener by
//! `service_kit::shell` like every service's: `/readyz` turns 503 once
//! flushing has failed for longer than a configured limit (e.g. while
//! PostgreSQL is down; the worker keeps retrying meanwhile, readiness only
//! tells operators), and `/metrics` carries the age of the newest stored
//! reading.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use service_kit::http::HttpLimits;
use service_kit::shell::{Probes, Shell};
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

pub struct Health {
    failing_since: Mutex<Option<Instant>>,
    not_ready_after: Duration,
    /// Event time (µs since the Unix epoch) of the newest reading stored so far.
    newest_stored_micros: AtomicI64,
}

impl Health {
    pub fn new(not_ready_after: Duration) -> Self {
        Self {
            failing_since: Mutex::new(None),
            not_ready_after,
            newest_stored_micros: AtomicI64::new(i64::MIN),
        }
    }

    fn failing_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.failing_since
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A flush step failed; the first failure of a streak starts the clock.
    pub fn record_failure(&self) {
        self.failing_since().get_or_insert_with(Instant::now);
    }

    /// A flush completed: the streak is over.
    pub fn record_success(&self) {
        *self.failing_since() = None;
    }

    /// A batch holding readings up to event time `newest` was stored.
    pub fn record_stored(&self, newest: DateTime<Utc>) {
        self.newest_stored_micros
            .fetch_max(newest.timestamp_micros(), Ordering::Relaxed);
    }

    /// How long flushing has been failing, if it has been failing for longer than allowed.
    pub fn failing_for_too_long(&self) -> Option<Duration> {
        self.failing_since()
            .map(|since| since.elapsed())
            .filter(|elapsed| *elapsed > self.not_ready_after)
    }
}

impl Probes for Health {
    fn readiness(&self) -> BoxFuture<'_, Result<(), String>> {
        let outcome = match self.failing_for_too_long() {
            None => Ok(()),
            Some(elapsed) => Err(format!(
                "batches have failed to be stored for {} s; retrying",
                elapsed.as_secs()
            )),
        };
        Box::pin(std::future::ready(outcome))
    }

    /// The age of the newest stored reading (event time against now) is the
    /// lag in time: how far behind reality the database is.
    fn before_scrape(&self) {
        let newest = self.newest_stored_micros.load(Ordering::Relaxed);
        if newest != i64::MIN {
            let age = (Utc::now().timestamp_micros() - newest) as f64 / 1e6;
            metrics::gauge!("energy_worker_newest_stored_reading_age_seconds").set(age);
        }
    }
}

/// The worker's description: its probes only (the shell adds them).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Energy Ingestion Engine: ingest-worker",
        description = "The worker's health listener: probes and metrics. The worker's work \
            is Kafka in, PostgreSQL out; it serves no other HTTP route.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags((name = "operations", description = "Probes, metrics and this description"))
)]
struct WorkerDoc;

/// Serves the probes on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let shell = Shell {
        probes: health,
        request_metrics: None,
        request_timeout: limits.request_timeout(),
        max_declared_body: None,
        api_key_description: None,
        refresh_description: None,
    };
    let app = shell.wrap(OpenApiRouter::with_openapi(WorkerDoc::openapi()));
    service_kit::http::serve(listener, app, limits, shutdown).await
}
