//! The worker's small HTTP listener: `/healthz` (the process runs),
//! `/readyz` (batches are being stored: not ready once flushing has failed
//! for longer than a configured limit, e.g. while PostgreSQL is down; the
//! worker keeps retrying meanwhile, readiness only tells operators) and
//! `/metrics` (Prometheus).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

async fn readyz(State(health): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
    match health.failing_for_too_long() {
        None => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        Some(elapsed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "error": format!("batches have failed to be stored for {} s; retrying", elapsed.as_secs())
            })),
        ),
    }
}

/// Prometheus text format. The age of the newest stored reading (event time
/// against now) is the lag in time: how far behind reality the database is.
async fn metrics_text(State(health): State<Arc<Health>>) -> impl axum::response::IntoResponse {
    let newest = health.newest_stored_micros.load(Ordering::Relaxed);
    if newest != i64::MIN {
        let age = (Utc::now().timestamp_micros() - newest) as f64 / 1e6;
        metrics::gauge!("energy_worker_newest_stored_reading_age_seconds").set(age);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            shared::metrics::CONTENT_TYPE,
        )],
        shared::metrics::handle().render(),
    )
}

/// Serves the health endpoints on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "worker health listener");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(health);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
