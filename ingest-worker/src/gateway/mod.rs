//! `ingest-gateway`: validates readings posted over HTTP and publishes them to
//! the readings topic, answering 202 only once Kafka has acknowledged every
//! one of them.
//!
//! - [`body`] turns a request body (one object, an array, or NDJSON) into JSON values;
//! - [`publish`] sends validated readings to Kafka and waits for the acks;
//! - [`error`] is the one place that maps failures to HTTP statuses.

pub mod body;
pub mod error;
pub mod publish;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::BoxError;
use axum::{Json, Router};
use chrono::Utc;
use clap::Args;
use serde::Serialize;
use shared::config::{KafkaArgs, ValidationArgs};
use shared::wire::{decode_value, ValidationRules};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::trace::TraceLayer;

use self::body::BodyFormat;
use self::error::{ApiError, ReadingError};
use self::publish::Publisher;

/// Settings of `ingest-gateway`.
#[derive(Args, Clone, Debug)]
pub struct GatewayArgs {
    /// Address the HTTP server listens on
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:3000")]
    pub gateway_addr: SocketAddr,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(flatten)]
    pub validation: ValidationArgs,

    /// Most readings one request may carry (a JSON array or NDJSON lines)
    #[arg(long, env = "GATEWAY_MAX_BATCH_READINGS", default_value_t = 10_000)]
    pub max_batch_readings: usize,

    /// Largest accepted request body, in bytes
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// How long a request waits for Kafka's acknowledgement before answering 503 (librdkafka's message.timeout.ms)
    #[arg(long, env = "GATEWAY_PUBLISH_TIMEOUT_MS", default_value_t = 5_000)]
    pub publish_timeout_ms: u64,

    /// Most ingest requests handled at once; beyond it requests are refused
    /// at once with 503 instead of queueing. With the body limit this bounds
    /// the memory requests can hold (about this × body limit × 6 for the
    /// parsed JSON)
    #[arg(long, env = "GATEWAY_MAX_CONCURRENT_REQUESTS", default_value_t = 64)]
    pub max_concurrent_requests: usize,
}

#[derive(Clone)]
struct AppState {
    publisher: Arc<Publisher>,
    rules: ValidationRules,
    max_batch_readings: usize,
    max_body_bytes: usize,
}

#[derive(Serialize)]
struct IngestResponse {
    message: &'static str,
    accepted: usize,
}

/// Runs the gateway on `listener` until `shutdown` completes, then waits for
/// in-flight requests and flushes the producer.
pub async fn serve(
    args: GatewayArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let publisher = Arc::new(Publisher::new(
        &args.kafka,
        Duration::from_millis(args.publish_timeout_ms),
    )?);
    let state = AppState {
        publisher: publisher.clone(),
        rules: args.validation.rules(),
        max_batch_readings: args.max_batch_readings,
        max_body_bytes: args.max_body_bytes,
    };
    // Requests never outlive the publish timeout by much; the HTTP timeout is
    // a backstop for slow clients.
    let request_timeout = Duration::from_millis(args.publish_timeout_ms) + Duration::from_secs(25);
    let app = Router::new()
        .route(
            "/v1/ingest",
            post(ingest).layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        ApiError::Overloaded
                    }))
                    .load_shed()
                    .concurrency_limit(args.max_concurrent_requests.max(1)),
            ),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Timeout
                }))
                .timeout(request_timeout),
        )
        .layer(TraceLayer::new_for_http())
        .with_state(state);
    tracing::info!(addr = %listener.local_addr()?, topic = %args.kafka.kafka_topic, "ingest-gateway listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    publisher.flush().await;
    Ok(())
}

async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<IngestResponse>), ApiError> {
    let format = BodyFormat::from_headers(&headers)?;
    let bytes = body::read_limited(body, state.max_body_bytes).await?;
    let values = body::parse(&bytes, format, state.max_batch_readings)?;

    let now = Utc::now();
    let mut readings = Vec::with_capacity(values.len());
    let mut errors = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match decode_value(value, &state.rules, now) {
            Ok(reading) => readings.push(reading),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| ReadingError {
                index,
                field: e.field,
                error: e.error,
            })),
        }
    }
    // All or nothing: one invalid reading and nothing of the request is published.
    if !errors.is_empty() {
        return Err(ApiError::InvalidReadings(errors));
    }

    state.publisher.publish(&readings).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(IngestResponse {
            message: "Data ingested successfully",
            accepted: readings.len(),
        }),
    ))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.publisher.broker_reachable().await {
        Ok("ready")
    } else {
        Err(ApiError::NotReady("the Kafka cluster is not reachable"))
    }
}
