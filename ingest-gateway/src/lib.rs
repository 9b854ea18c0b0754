//! `ingest-gateway`: validates readings posted over HTTP and publishes them to
//! the readings topic, answering 202 only once Kafka has acknowledged every
//! one of them.
//!
//! - [`body`] turns a request body (one object, an array, or NDJSON) into JSON values;
//! - [`publish`] sends validated readings to Kafka and waits for the acks;
//! - [`ocpp`] takes a charging station's OCPP meter values as register readings;
//! - [`error`] is the one place that maps the gateway's failures to HTTP statuses;
//! - [`openapi`] describes the API, from the handlers' annotations.
//!
//! Probes, metrics, the description and the fallbacks come from
//! `service_kit::shell`.

pub mod body;
pub mod error;
pub mod ocpp;
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
use futures::future::BoxFuture;
use kafka_kit::KafkaArgs;
use service_kit::auth::{ApiKeys, AuthArgs, Role};
use service_kit::config::ValidationArgs;
use service_kit::shell::{Probes, Shell};
use shared::wire::ValidationRules;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::body::BodyFormat;
use self::error::ApiError;
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
    pub http: service_kit::http::HttpLimits,

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

/// Counts the readings of an [`ApiError::InvalidReadings`] as rejected.
fn count_invalid(error: ApiError) -> ApiError {
    if let ApiError::InvalidReadings(errors) = &error {
        let invalid = errors
            .iter()
            .map(|e| e.index)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        metrics::counter!("energy_gateway_readings_rejected_total", "reason" => "invalid")
            .increment(invalid as u64);
    }
    error
}

/// Publishes validated readings and counts them as accepted or not published.
async fn publish_counted(
    state: &AppState,
    readings: &[shared::domain::Reading],
) -> Result<(), ApiError> {
    if let Err(error) = state.publisher.publish(readings).await {
        metrics::counter!("energy_gateway_readings_rejected_total", "reason" => "not_published")
            .increment(readings.len() as u64);
        return Err(error.into());
    }
    metrics::counter!("energy_gateway_readings_accepted_total").increment(readings.len() as u64);
    Ok(())
}

/// Ready while the Kafka cluster answers; the producer's queue is read at scrape time.
struct GatewayProbes {
    publisher: Arc<Publisher>,
}

impl Probes for GatewayProbes {
    fn readiness(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async {
            if self.publisher.broker_reachable().await {
                Ok(())
            } else {
                Err("the Kafka cluster is not reachable".to_owned())
            }
        })
    }

    fn before_scrape(&self) {
        metrics::gauge!("energy_gateway_producer_queue_messages")
            .set(f64::from(self.publisher.queued_messages()));
    }
}

/// Runs the gateway on `listener` until `shutdown` completes, then waits for
/// in-flight requests and flushes the producer.
pub async fn serve(
    args: GatewayArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.http.request_timeout_ms > args.publish_timeout_ms,
        "HTTP_REQUEST_TIMEOUT_MS ({}) must exceed GATEWAY_PUBLISH_TIMEOUT_MS ({}): a request waits that long for Kafka",
        args.http.request_timeout_ms,
        args.publish_timeout_ms
    );
    let keys = ApiKeys::from_args(&args.auth)?;
    if keys.is_disabled() {
        tracing::warn!("AUTH_DISABLED: anyone who can reach this gateway may ingest readings");
    }
    // Before anything is counted: metrics recorded earlier would be lost.
    service_kit::metrics::handle();
    describe_metrics();
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
    let shell = Shell {
        probes: Arc::new(GatewayProbes {
            publisher: publisher.clone(),
        }),
        request_metrics: Some(&service_kit::metrics::GATEWAY_REQUESTS),
        request_timeout: args.http.request_timeout(),
        // The ingest route reads its body with its own limit, GATEWAY_MAX_BODY_BYTES.
        max_declared_body: None,
        api_key_description: Some(openapi::API_KEY_DESCRIPTION),
        refresh_description: Some(openapi::with_fresh_examples),
    };
    let app = shell.wrap(routes(state, keys, args.max_concurrent_requests));
    tracing::info!(topic = %args.kafka.kafka_topic, "ingest-gateway serving");
    service_kit::http::serve(listener, app, args.http, shutdown).await?;
    publisher.flush().await;
    Ok(())
}

/// The ingest routes under one set of layers: the key check outermost, so
/// a request without the key takes no slot of the concurrency limit, which
/// the routes share (it bounds the memory their bodies hold).
fn routes(state: AppState, keys: ApiKeys, max_concurrent_requests: usize) -> OpenApiRouter {
    let ingest_routes = OpenApiRouter::new()
        .routes(routes!(ingest))
        .routes(routes!(ocpp::meter_values))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Overloaded
                }))
                .load_shed()
                .concurrency_limit(max_concurrent_requests.max(1)),
        )
        .layer(axum::middleware::from_fn_with_state(
            (keys, Role::Ingest),
            service_kit::auth::require,
        ));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(ingest_routes)
        .with_state(state)
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
    let bytes = body::read_limited(&headers, body, state.max_body_bytes).await?;
    let texts = body::split(&bytes, format, state.max_batch_readings)?;
    // All or nothing: one invalid reading and nothing of the request is published.
    let readings = body::decode(&texts, &state.rules, Utc::now()).map_err(count_invalid)?;
    drop(texts);
    drop(bytes);
    publish_counted(&state, &readings).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(openapi::Accepted {
            message: "Data ingested successfully",
            accepted: readings.len(),
        }),
    ))
}

fn describe_metrics() {
    use service_kit::metrics::Kind::{Counter, Gauge, Histogram};
    service_kit::metrics::describe_requests(&service_kit::metrics::GATEWAY_REQUESTS);
    service_kit::metrics::describe(&[
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
