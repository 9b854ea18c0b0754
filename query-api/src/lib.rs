//! `query-api`: read-only HTTP analytics over the readings that
//! `ingest-worker` stored.
//!
//! - [`performance`]: the 24-hour charging efficiency of a vehicle;
//! - [`series`]: the same per time bucket, for charts;
//! - [`fleet`]: every vehicle ranked by efficiency, with a health status;
//! - [`meters`]: a meter's energy and voltage statistics over a window;
//! - [`devices`]: current state of a vehicle or a meter;
//! - [`dashboard`]: the HTML dashboard at `/`, a client of the API above;
//! - [`charging`]: the figures every analytics answer reports, efficiency
//!   and the health bands;
//! - [`state`]: what every handler is given, and the window checks;
//! - [`reads`]: where answers are read (the primary or streaming replicas),
//!   the replicas' lag monitor, and the freshness headers;
//! - [`sql`]: the interval-cutting SQL blocks the queries share;
//! - [`params`]: parsing and validating path and query parameters;
//! - [`openapi`]: the OpenAPI description, generated from the handlers;
//! - [`error`]: the one mapping from the API's failures to HTTP responses.
//!
//! Every module looks down: handlers take [`state::AppState`] and the answer
//! types from their own modules, never from this file, which only mounts them.
//! Probes, metrics, the description and the fallbacks come from
//! `service_kit::shell`.
//!
//! Invariant: nothing here writes to the database.

pub mod answers;
pub mod charging;
pub mod dashboard;
pub mod devices;
pub mod error;
pub mod figures;
pub mod fleet;
pub mod meters;
pub mod openapi;
pub mod params;
pub mod performance;
pub mod reads;
pub mod series;
pub mod sql;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use futures::future::BoxFuture;
use service_kit::auth::{ApiKeys, AuthArgs, Role};
use service_kit::config::DbArgs;
use service_kit::shell::{Probes, Shell};
use sqlx::PgPool;
use tokio::net::TcpListener;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::answers::{AnswerCache, AnswerCacheArgs};
use crate::charging::Thresholds;
use crate::reads::{ReadArgs, ReadPools};
use crate::state::AppState;

/// Settings of `query-api`.
#[derive(Args, Clone)]
pub struct QueryArgs {
    /// Address the HTTP server listens on
    #[arg(long, env = "QUERY_API_ADDR", default_value = "127.0.0.1:3001")]
    pub query_api_addr: SocketAddr,

    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub reads: ReadArgs,

    #[command(flatten)]
    pub answers: AnswerCacheArgs,

    #[command(flatten)]
    pub auth: AuthArgs,

    #[command(flatten)]
    pub http: service_kit::http::HttpLimits,

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

/// Ready while some server may answer (see [`ReadPools::readiness`]); the
/// pools' use is read at scrape time.
struct QueryProbes {
    reads: Arc<ReadPools>,
}

impl Probes for QueryProbes {
    fn readiness(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(self.reads.readiness())
    }

    fn before_scrape(&self) {
        for (source, pool) in self.reads.pools() {
            let idle = pool.num_idle() as f64;
            let open = f64::from(pool.size());
            let source = source.to_owned();
            metrics::gauge!("energy_query_db_pool_connections", "source" => source.clone(), "state" => "idle")
                .set(idle);
            metrics::gauge!("energy_query_db_pool_connections", "source" => source, "state" => "in_use")
                .set(open - idle);
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
    service_kit::metrics::handle();
    describe_metrics();
    let keys = ApiKeys::from_args(&args.auth)?;
    if keys.is_disabled() {
        tracing::warn!(
            "AUTH_DISABLED: anyone who can reach this API may read every fleet's analytics"
        );
    }
    let pool = service_kit::db::pool(&args.db, "query-api").context("invalid database settings")?;
    service_kit::db::wait_until_migrated(&pool).await?;
    ensure_same_retention_as_the_workers(&pool, args.retention_days).await?;
    let reads = Arc::new(
        ReadPools::from_args(pool, &args.reads, &args.db).context("invalid QUERY_DATABASE_URLS")?,
    );
    // Rotation is known before the first request; the monitor stops with the server.
    let _monitor = reads
        .clone()
        .start_monitor(args.reads.lag_check_interval())
        .await;
    let state = AppState {
        reads: reads.clone(),
        max_window: chrono::TimeDelta::days(i64::from(args.max_window_days)),
        retention_days: args.retention_days,
        answers: Arc::new(AnswerCache::new(&args.answers)),
        thresholds: Thresholds {
            healthy: args.healthy_efficiency,
            warning: args.warning_efficiency,
        },
    };
    let shell = Shell {
        probes: Arc::new(QueryProbes { reads }),
        request_metrics: Some(&service_kit::metrics::QUERY_REQUESTS),
        request_timeout: args.http.request_timeout(),
        // No route reads a body: a large one is a mistake or an attempt to tie up the server.
        max_declared_body: Some(args.max_body_bytes),
        api_key_description: Some(openapi::API_KEY_DESCRIPTION),
        refresh_description: None,
    };
    let app =
        shell.wrap(openapi::with_freshness_headers(documented_routes(keys)).with_state(state));
    tracing::info!("query-api serving");
    service_kit::http::serve(listener, app, args.http, shutdown).await
}

/// Refuses a RETENTION_DAYS other than the workers' (they record theirs at
/// start-up): windows would reach days the workers have dropped, or refuse
/// days they keep. Before any worker has run there is nothing to compare.
async fn ensure_same_retention_as_the_workers(
    pool: &PgPool,
    retention_days: u32,
) -> anyhow::Result<()> {
    let recorded = service_kit::db::recorded_setting(pool, service_kit::db::RETENTION_DAYS_SETTING)
        .await
        .context("cannot read the workers' settings")?;
    if let Some(workers) = recorded {
        anyhow::ensure!(
            workers == retention_days.to_string(),
            "RETENTION_DAYS is {retention_days} here but {workers} for the workers: set the \
             same value on query-api and every ingest-worker"
        );
    }
    Ok(())
}

fn describe_metrics() {
    service_kit::metrics::describe_requests(&service_kit::metrics::QUERY_REQUESTS);
    service_kit::metrics::describe(&[
        (
            service_kit::metrics::Kind::Gauge,
            "energy_query_db_pool_connections",
            "Database pool connections by source (primary, replica-N) and state (idle, in_use), read at scrape time",
        ),
        (
            service_kit::metrics::Kind::Counter,
            "energy_query_reads_total",
            "Answers read, by source (primary, replica-N)",
        ),
        (
            service_kit::metrics::Kind::Gauge,
            "energy_query_replica_lag_seconds",
            "How long ago the primary first held data the replica has not replayed (+Inf: unreachable), by replica",
        ),
        (
            service_kit::metrics::Kind::Gauge,
            "energy_query_replica_in_rotation",
            "1 while the replica is read from, 0 while it lags beyond QUERY_MAX_LAG_MS or is down",
        ),
        (
            service_kit::metrics::Kind::Counter,
            "energy_query_answers_total",
            "Performance answers, by outcome: figures (read from the worker's per-vehicle figures), kept, changed, computed",
        ),
        (
            service_kit::metrics::Kind::Counter,
            "energy_query_fleet_vehicles_total",
            "Vehicles of fleet views answered, by source: figures (the worker's per-vehicle figures), computed (the pieces)",
        ),
    ]);
}

/// The routes with their descriptions: `#[utoipa::path]` on each handler
/// gives both, so every route served is described in `/openapi.json`.
pub fn documented_routes(keys: ApiKeys) -> OpenApiRouter<AppState> {
    // Everything under /v1 needs a key with the read role; the page, the
    // probes, metrics and the API description do not.
    let analytics = OpenApiRouter::new()
        .routes(routes!(performance::by_query))
        .routes(routes!(performance::by_path))
        .routes(routes!(series::series))
        .routes(routes!(fleet::fleet))
        .routes(routes!(devices::vehicle))
        .routes(routes!(devices::meter))
        .routes(routes!(meters::analytics))
        .route_layer(axum::middleware::from_fn(reads::freshness))
        .route_layer(axum::middleware::from_fn_with_state(
            (keys, Role::Read),
            service_kit::auth::require,
        ));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(analytics)
        .merge(dashboard::routes())
}
