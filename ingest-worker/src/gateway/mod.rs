//! `ingest-gateway`: validates readings posted over HTTP and publishes them to
//! the readings topic, answering 202 only once Kafka has acknowledged every
//! one of them.
//!
//! - [`body`] turns a request body (one object, an array, or NDJSON) into JSON values;
//! - [`publish`] sends validated readings to Kafka and waits for the acks;
//! - [`error`] is the one place that maps failures to HTTP statuses;
//! - [`openapi`] describes the API, from the handlers' annotations.

pub mod body;
pub mod error;
pub mod openapi;
pub mod publish;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::BoxError;
use axum::Json;
use chrono::Utc;
use clap::Args;
use shared::auth::{ApiKeys, AuthArgs, Role};
use shared::config::{KafkaArgs, ValidationArgs};
use shared::wire::{decode_value, ValidationRules};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub http: shared::http::HttpLimits,

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
    metrics: metrics_exporter_prometheus::PrometheusHandle,
}

/// Runs the gateway on `listener` until `shutdown` completes, then waits for
/// in-flight requests and flushes the producer.
pub async fn serve(
    args: GatewayArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let keys = ApiKeys::from_args(&args.auth)?;
    if keys.is_disabled() {
        tracing::warn!("AUTH_DISABLED: anyone who can reach this gateway may ingest readings");
    }
    let publisher = Arc::new(Publisher::new(
        &args.kafka,
        Duration::from_millis(args.publish_timeout_ms),
    )?);
    let state = AppState {
        publisher: publisher.clone(),
        rules: args.validation.rules(),
        max_batch_readings: args.max_batch_readings,
        max_body_bytes: args.max_body_bytes,
        metrics: shared::metrics::handle(),
    };
    describe_metrics();
    anyhow::ensure!(
        args.http.request_timeout_ms > args.publish_timeout_ms,
        "HTTP_REQUEST_TIMEOUT_MS ({}) must exceed GATEWAY_PUBLISH_TIMEOUT_MS ({}): a request waits that long for Kafka",
        args.http.request_timeout_ms,
        args.publish_timeout_ms
    );
    // The ingest route's own layers: the key check outermost, so a request
    // without the key takes no slot of the concurrency limit.
    let (schemas, paths, ingest_route) = routes!(ingest);
    let ingest_route = ingest_route
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(args.max_concurrent_requests.max(1)),
        )
        .layer(axum::middleware::from_fn_with_state(
            (keys, Role::Ingest),
            shared::auth::require::<ApiError>,
        ));
    let (routes, description) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes((schemas, paths, ingest_route))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
        .split_for_parts();
    let app = routes
        .layer(axum::Extension(Arc::new(description)))
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Timeout
                }))
                .timeout(args.http.request_timeout()),
        )
        .with_state(state);
    let app = shared::http::observe(app, &shared::metrics::GATEWAY_REQUESTS);
    tracing::info!(addr = %listener.local_addr()?, topic = %args.kafka.kafka_topic, "ingest-gateway listening");
    shared::http::serve(listener, app, args.http, shutdown).await?;
    publisher.flush().await;
    Ok(())
}

#[utoipa::path(
    post,
    path = "/v1/ingest",
    tag = "ingest",
    summary = "Publish readings to Kafka; 202 once Kafka acknowledged every one",
    request_body(
        description = "One reading, a JSON array of readings, or NDJSON (one reading per line)",
        content(
            (openapi::IngestBody = "application/json"),
            (String = "application/x-ndjson")
        )
    ),
    responses(
        (status = 202, description = "Every reading acknowledged by Kafka (acks=all)", body = openapi::Accepted),
        openapi::IngestErrors
    ),
    security(("api_key" = []))
)]
async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<openapi::Accepted>), ApiError> {
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
        let invalid = errors
            .iter()
            .map(|e| e.index)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        metrics::counter!("energy_gateway_readings_rejected_total", "reason" => "invalid")
            .increment(invalid as u64);
        return Err(ApiError::InvalidReadings(errors));
    }

    if let Err(error) = state.publisher.publish(&readings).await {
        metrics::counter!("energy_gateway_readings_rejected_total", "reason" => "not_published")
            .increment(readings.len() as u64);
        return Err(error.into());
    }
    metrics::counter!("energy_gateway_readings_accepted_total").increment(readings.len() as u64);
    Ok((
        StatusCode::ACCEPTED,
        Json(openapi::Accepted {
            message: "Data ingested successfully",
            accepted: readings.len(),
        }),
    ))
}

fn describe_metrics() {
    use shared::metrics::Kind::{Counter, Gauge, Histogram};
    shared::metrics::describe_requests(&shared::metrics::GATEWAY_REQUESTS);
    shared::metrics::describe(&[
        (
            Counter,
            "energy_gateway_readings_accepted_total",
            "Readings acknowledged by Kafka and answered 202",
        ),
        (
            Counter,
            "energy_gateway_readings_rejected_total",
            "Readings refused, by reason (invalid, not_published)",
        ),
        (
            Histogram,
            "energy_gateway_produce_duration_seconds",
            "Time from publishing a request's readings to the last acknowledgement",
        ),
        (
            Gauge,
            "energy_gateway_producer_queue_messages",
            "Messages in the producer's queue, not yet acknowledged",
        ),
    ]);
}

/// Prometheus text format; gauges read at scrape time are set first.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format); README lists them",
    responses((status = 200, description = "Metrics", content_type = "text/plain"))
)]
async fn metrics_text(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    metrics::gauge!("energy_gateway_producer_queue_messages")
        .set(f64::from(state.publisher.queued_messages()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            shared::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
}

/// The description, with request examples made now.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This description (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json(
    axum::Extension(description): axum::Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json(openapi::with_examples((*description).clone(), Utc::now()))
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    summary = "Liveness: the process answers",
    responses((status = 200, description = "Alive", body = String, example = "ok"))
)]
async fn healthz() -> &'static str {
    "ok"
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    summary = "Readiness: the Kafka cluster answers",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "The Kafka cluster is not reachable", body = openapi::ErrorBody)
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.publisher.broker_reachable().await {
        Ok("ready")
    } else {
        Err(ApiError::NotReady("the Kafka cluster is not reachable"))
    }
}
