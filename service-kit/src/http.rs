//! The HTTP server every service runs: an axum router on hyper, with the
//! limits that keep a hostile or broken client from holding the service's
//! resources (SECURITY.md, "Limits"):
//!
//! - at most `HTTP_MAX_CONNECTIONS` connections: beyond it, new ones wait in
//!   the kernel's accept queue until one closes;
//! - a request's headers must arrive within `HTTP_HEADER_READ_TIMEOUT_MS`
//!   (a client trickling headers is disconnected) and total at most
//!   `HTTP_MAX_HEADER_BYTES` (431);
//! - the whole request, body included, within `HTTP_REQUEST_TIMEOUT_MS`
//!   (408): each service applies it with its own error type.
//!
//! On shutdown it stops accepting, lets requests in flight finish and closes
//! idle connections. [`observe`] adds what every request of both services
//! gets: a request id on its span and in the answer, and its count and
//! latency by route and status.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Args;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::{ServiceBuilder, ServiceExt as _};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::metrics::RequestMetrics;

/// Connection and request limits, the same settings on every service.
#[derive(Args, Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Most connections open at once; further ones wait in the kernel's
    /// accept queue until one closes
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// How long a client may take to send a request's headers before its
    /// connection is closed (slow-client protection), in milliseconds
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Largest total size of a request's header names and values, in bytes;
    /// beyond it the answer is 431
    #[arg(long, env = "HTTP_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,

    /// Longest a request may take, body included, in milliseconds; beyond it
    /// the answer is 408
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub request_timeout_ms: u64,
}

impl HttpLimits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// What a service prints on stdout once it listens, before the address:
/// a supervisor or a test that started it with port 0 reads the port there.
pub const LISTENING_ON: &str = "listening on http://";

/// Binds `addr` (the setting `setting` names it) and announces it: a log line,
/// and `<service> listening on http://<address>` on stdout.
pub async fn bind(service: &str, addr: SocketAddr, setting: &str) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({setting})"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "{service} listening");
    println!("{service} {LISTENING_ON}{bound}");
    Ok(listener)
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes,
/// then waits for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        limits.max_connections > 0,
        "HTTP_MAX_CONNECTIONS must be at least 1"
    );
    let app = app.layer(axum::middleware::from_fn_with_state(
        limits.max_header_bytes,
        limit_header_bytes,
    ));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    builder.http2().timer(TokioTimer::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: at the limit, stop accepting rather than accept and drop.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: wait instead of spinning.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(app.clone().map_request(
            |request: Request<hyper::body::Incoming>| request.map(axum::body::Body::new),
        ));
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// 431 when the request's header names and values total more than `max` bytes.
async fn limit_header_bytes(State(max): State<usize>, request: Request, next: Next) -> Response {
    let total: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if total > max {
        return (
            http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            axum::Json(serde_json::json!({
                "error": format!("the request's headers total {total} bytes, more than the {max} allowed")
            })),
        )
            .into_response();
    }
    next.run(request).await
}

/// The outermost layers of the HTTP services: an incoming `x-request-id` is kept
/// (else a UUID is made), recorded on the request's span and returned; and
/// each request is counted by route template and status, with its latency.
pub fn observe<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    metrics: &'static RequestMetrics,
) -> Router<S> {
    let header = || http::HeaderName::from_static(crate::telemetry::REQUEST_ID_HEADER);
    router
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(header(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(crate::telemetry::request_span))
                .layer(PropagateRequestIdLayer::new(header())),
        )
        .layer(axum::middleware::from_fn_with_state(metrics, count_request))
}

async fn count_request(
    State(metrics): State<&'static RequestMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or(crate::metrics::UNMATCHED_ROUTE.to_owned(), |path| {
            path.as_str().to_owned()
        });
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::metrics::record_request(
        metrics,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}
