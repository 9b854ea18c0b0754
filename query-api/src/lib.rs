//! `query-api`: read-only HTTP analytics over the readings that
//! `ingest-worker` stored.
//!
//! - [`performance`]: the 24-hour charging efficiency of a vehicle;
//! - [`series`]: the same per time bucket, for charts;
//! - [`sql`]: the interval-cutting SQL blocks those queries share;
//! - [`fleet`]: every vehicle ranked by efficiency, with a health status;
//! - [`dashboard`]: the HTML dashboard at `/`, a client of the API above;
//! - [`devices`]: current state of a vehicle or a meter;
//! - [`meters`]: a meter's energy and voltage statistics over a window;
//! - [`openapi`]: the OpenAPI description, generated from the handlers;
//! - [`params`]: parsing and validating path and query parameters;
//! - [`error`]: the one mapping from failures to HTTP responses.
//!
//! Invariant: nothing here writes to the database.

pub mod dashboard;
pub mod devices;
pub mod error;
pub mod fleet;
pub mod meters;
pub mod openapi;
pub mod params;
pub mod performance;
pub mod series;
pub mod sql;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::error_handling::HandleErrorLayer;
use axum::extract::State;
use axum::BoxError;
use axum::Router;
use clap::Args;
use shared::auth::{ApiKeys, AuthArgs, Role};
use shared::config::DbArgs;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;

/// Settings of `query-api`.
#[derive(Args, Clone)]
pub struct QueryArgs {
    /// Address the HTTP server listens on
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:3001")]
    pub query_api_addr: SocketAddr,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub http: shared::http::HttpLimits,

    /// Largest request body accepted, in bytes (no route takes one); beyond it 413
    #[arg(long, env = "HTTP_MAX_BODY_BYTES", default_value_t = 16 * 1024)]
    pub max_body_bytes: u64,

    /// Longest analytics window a request may ask for, in days
    #[arg(long, env = "MAX_WINDOW_DAYS", default_value_t = 31)]
    pub max_window_days: u32,

    /// Days of raw readings the worker keeps (RETENTION_DAYS): a window may
    /// not start earlier, since its edges need raw readings
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,

    /// Efficiency (percent) at or above which a vehicle is HEALTHY
    #[arg(long, env = "HEALTHY_EFFICIENCY", default_value_t = 85.0)]
    pub healthy_efficiency: f64,

    /// Efficiency (percent) at or above which a vehicle below HEALTHY is WARNING; below it, CRITICAL
    #[arg(long, env = "WARNING_EFFICIENCY", default_value_t = 70.0)]
    pub warning_efficiency: f64,
}

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub max_window: chrono::TimeDelta,
    pub thresholds: fleet::Thresholds,
    pub retention_days: u32,
    pub keys: ApiKeys,
    /// Longest a request may take (HTTP_REQUEST_TIMEOUT_MS).
    pub request_timeout: Duration,
    /// Largest request body accepted (HTTP_MAX_BODY_BYTES).
    pub max_body_bytes: u64,
}

impl AppState {
    /// The window a request asks for, checked against the limits.
    pub fn window(&self, params: &params::QueryParams) -> Result<params::Window, ApiError> {
        let now = chrono::Utc::now();
        let window = params::Window::from_params(params, now, self.max_window)?;
        let rules = shared::wire::ValidationRules {
            retention_days: Some(self.retention_days),
            ..Default::default()
        };
        match rules.retention_cutoff(now) {
            Some(cutoff) if window.from < cutoff => Err(ApiError::BadRequest(format!(
                "from is before the {}-day retention of raw readings ({}): a window's edges need them",
                self.retention_days,
                shared::wire::format_timestamp(cutoff)
            ))),
            _ => Ok(window),
        }
    }
}

/// Runs the API on `listener` until `shutdown` completes. Refuses to start
/// against a database that is not migrated.
pub async fn serve(
    args: QueryArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.warning_efficiency < args.healthy_efficiency,
        "WARNING_EFFICIENCY ({}) must be below HEALTHY_EFFICIENCY ({})",
        args.warning_efficiency,
        args.healthy_efficiency
    );
    // Before anything is counted: metrics recorded earlier would be lost.
    shared::metrics::handle();
    shared::metrics::describe_requests(&shared::metrics::QUERY_REQUESTS);
    shared::metrics::describe(&[(
        shared::metrics::Kind::Gauge,
        "energy_query_db_pool_connections",
        "Database pool connections by state (idle, in_use), read at scrape time",
    )]);
    let keys = ApiKeys::from_args(&args.auth)?;
    if keys.is_disabled() {
        tracing::warn!(
            "AUTH_DISABLED: anyone who can reach this API may read every fleet's analytics"
        );
    }
    let pool = shared::db::pool(&args.db, "query-api").context("invalid database settings")?;
    shared::db::wait_until_migrated(&pool).await?;
    let state = AppState {
        pool,
        max_window: chrono::TimeDelta::days(i64::from(args.max_window_days)),
        retention_days: args.retention_days,
        keys,
        request_timeout: args.http.request_timeout(),
        max_body_bytes: args.max_body_bytes,
        thresholds: fleet::Thresholds {
            healthy: args.healthy_efficiency,
            warning: args.warning_efficiency,
        },
    };
    tracing::info!(addr = %listener.local_addr()?, "query-api listening");
    shared::http::serve(listener, router(state), args.http, shutdown).await
}

/// The routes with their descriptions: `#[utoipa::path]` on each handler
/// gives both, so every route served is described in `/openapi.json`.
pub fn documented_routes(keys: ApiKeys) -> OpenApiRouter<AppState> {
    // Everything under /v1 needs a key with the read role; the page, health,
    // metrics and the API description do not.
    let analytics = OpenApiRouter::new()
        .routes(routes!(performance::by_query))
        .routes(routes!(performance::by_path))
        .routes(routes!(series::series))
        .routes(routes!(fleet::fleet))
        .routes(routes!(devices::vehicle))
        .routes(routes!(devices::meter))
        .routes(routes!(meters::analytics))
        .route_layer(axum::middleware::from_fn_with_state(
            (keys, Role::Read),
            shared::auth::require::<ApiError>,
        ));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(analytics)
        .merge(dashboard::routes())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(openapi_json))
}

pub fn router(state: AppState) -> Router {
    let (routes, description) = documented_routes(state.keys.clone()).split_for_parts();
    let description = Description(Arc::from(
        description
            .to_pretty_json()
            .expect("the OpenAPI description serializes"),
    ));
    let router = routes
        .layer(axum::Extension(description))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|_: BoxError| async {
                    ApiError::Timeout
                }))
                .timeout(state.request_timeout),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.max_body_bytes,
            refuse_large_bodies,
        ))
        .with_state(state);
    shared::http::observe(router, &shared::metrics::QUERY_REQUESTS)
}

/// 413 for a declared body over HTTP_MAX_BODY_BYTES: no route reads a body,
/// so a large one can only be a mistake or an attempt to tie up the server.
async fn refuse_large_bodies(
    State(max): State<u64>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(length) if length > max => Err(ApiError::PayloadTooLarge(format!(
            "the request body is {length} bytes, more than the {max} allowed"
        ))),
        _ => Ok(next.run(request).await),
    }
}

/// Prometheus text format, with the connection pool's use read at scrape time.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format); README lists them",
    responses((status = 200, description = "Metrics", content_type = "text/plain"))
)]
async fn metrics_text(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    let idle = state.pool.num_idle() as f64;
    let open = f64::from(state.pool.size());
    metrics::gauge!("energy_query_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("energy_query_db_pool_connections", "state" => "in_use").set(open - idle);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            shared::metrics::CONTENT_TYPE,
        )],
        shared::metrics::handle().render(),
    )
}

/// The OpenAPI description, serialized once at start-up.
#[derive(Clone)]
struct Description(Arc<str>);

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This description (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json(
    axum::Extension(Description(json)): axum::Extension<Description>,
) -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
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
    summary = "Readiness: the database answers",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "The database is not reachable", body = openapi::ErrorBody)
    )
)]
async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if shared::db::is_reachable(&state.pool).await {
        Ok("ready")
    } else {
        Err(ApiError::Unavailable("the database is not reachable"))
    }
}
