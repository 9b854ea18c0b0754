//! The shell every service runs inside: what it answers besides its own
//! work, written once so that the gateway, the worker and query-api keep
//! one contract for probes and for the answers no handler gives.
//!
//! - `GET /healthz`: 200 `ok` while the process serves;
//! - `GET /readyz`: 200 `ready`, or 503 `{"error": why}` with `Retry-After`
//!   when the service cannot do its work ([`Probes::readiness`]);
//! - `GET /metrics`: Prometheus text, after [`Probes::before_scrape`] has
//!   set the gauges that are read at scrape time;
//! - `GET /openapi.json`: the service's description, the shell's routes
//!   included (each route is registered from its `#[utoipa::path]`);
//! - no such route 404, wrong method 405, past `HTTP_REQUEST_TIMEOUT_MS`
//!   408, a declared body over the service's limit 413, an API key refused
//!   401/403: JSON `{"error": "..."}` bodies, mapped here ([`ShellError`]).
//!
//! Each service maps its own domain's errors in its own `error.rs`.

use std::sync::Arc;
use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Extension, Json, Router};
use futures::future::BoxFuture;
use serde::Serialize;
use tower::ServiceBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::AuthError;
use crate::metrics::RequestMetrics;

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: &str = "5";

/// The name secured operations use for the API key in OpenAPI.
pub const API_KEY_SCHEME: &str = "api_key";

/// The body of every error answer, of the shell and of the services.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, for a person to read.
    pub error: String,
}

/// A JSON `{"error": message}` answer with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.to_owned(),
        }),
    )
        .into_response()
}

/// A 503 with `Retry-After`: the client may try again in a few seconds.
pub fn unavailable(message: &str) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
}

/// The shell's own answers.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request took too long")]
    Timeout,
    #[error("the request body is {declared} bytes, more than the {max} allowed")]
    BodyTooLarge { declared: u64, max: u64 },
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Refused(#[from] AuthError),
}

impl IntoResponse for ShellError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ShellError::NotFound => error_response(StatusCode::NOT_FOUND, &message),
            ShellError::MethodNotAllowed => {
                error_response(StatusCode::METHOD_NOT_ALLOWED, &message)
            }
            ShellError::Timeout => error_response(StatusCode::REQUEST_TIMEOUT, &message),
            ShellError::BodyTooLarge { .. } => {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, &message)
            }
            ShellError::NotReady(_) => unavailable(&message),
            ShellError::Refused(refusal) => {
                let mut response = error_response(refusal.status(), &message);
                if let Some(challenge) = refusal.challenge() {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(challenge),
                    );
                }
                response
            }
        }
    }
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        ShellError::from(self).into_response()
    }
}

/// What a service tells its probes. One implementation per service: the
/// gateway asks Kafka, query-api PostgreSQL, the worker its flush history.
pub trait Probes: Send + Sync + 'static {
    /// `Ok` when the service can do its work now; `Err` says why not.
    fn readiness(&self) -> BoxFuture<'_, Result<(), String>>;

    /// Sets the gauges read at scrape time, just before `/metrics` renders.
    fn before_scrape(&self) {}
}

/// How a service is wrapped.
pub struct Shell {
    pub probes: Arc<dyn Probes>,
    /// Request count and latency names; `None` leaves requests uncounted
    /// (the worker's listener serves only probes).
    pub request_metrics: Option<&'static RequestMetrics>,
    /// Longest a request may take (`HTTP_REQUEST_TIMEOUT_MS`): 408 beyond it.
    pub request_timeout: Duration,
    /// Declared bodies (`Content-Length`) over this many bytes get 413 before
    /// any handler runs; `None` when a handler reads bodies with its own limit.
    pub max_declared_body: Option<u64>,
    /// Describes the API key its secured operations need (`None`: none are).
    pub api_key_description: Option<&'static str>,
    /// Recomputes parts of the description per request (the gateway's
    /// examples carry a recent timestamp); `None` serves it as built.
    pub refresh_description: Option<fn(&OpenApi) -> OpenApi>,
}

/// The description as built, and serialized once when it never changes.
#[derive(Clone)]
struct Description {
    built: Arc<OpenApi>,
    serialized: Arc<str>,
    refresh: Option<fn(&OpenApi) -> OpenApi>,
}

impl Shell {
    /// The service's documented routes inside the shell: probes, metrics,
    /// the description, fallbacks, limits, and (outermost) request ids,
    /// traces and request counts.
    pub fn wrap(self, service: OpenApiRouter) -> Router {
        let operations = OpenApiRouter::new()
            .routes(routes!(healthz))
            .routes(routes!(readyz))
            .routes(routes!(metrics_text))
            .routes(routes!(openapi_json))
            .with_state(self.probes);
        let (router, mut built) = service.merge(operations).split_for_parts();
        if let Some(description) = self.api_key_description {
            add_bearer_key(&mut built, description);
        }
        let serialized = Arc::from(
            built
                .to_pretty_json()
                .expect("an OpenAPI description serializes"),
        );
        let description = Description {
            built: Arc::new(built),
            serialized,
            refresh: self.refresh_description,
        };
        let mut router = router
            .layer(Extension(description))
            .fallback(|| async { ShellError::NotFound })
            .method_not_allowed_fallback(|| async { ShellError::MethodNotAllowed })
            .layer(
                ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: BoxError| async {
                        ShellError::Timeout
                    }))
                    .timeout(self.request_timeout),
            );
        if let Some(max) = self.max_declared_body {
            router = router.layer(axum::middleware::from_fn_with_state(
                max,
                refuse_large_bodies,
            ));
        }
        match self.request_metrics {
            Some(metrics) => crate::http::observe(router, metrics),
            None => router,
        }
    }
}

/// Declares the bearer API key scheme secured operations refer to.
fn add_bearer_key(openapi: &mut OpenApi, description: &str) {
    let components = openapi.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        API_KEY_SCHEME,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(description))
                .build(),
        ),
    );
}

/// 413 for a declared body over the limit, before any handler reads it.
async fn refuse_large_bodies(
    State(max): State<u64>,
    request: Request,
    next: Next,
) -> Result<Response, ShellError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    match declared {
        Some(declared) if declared > max => Err(ShellError::BodyTooLarge { declared, max }),
        _ => Ok(next.run(request).await),
    }
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
    summary = "Readiness: the service can do its work (its README section says what it checks)",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "Not ready, and why; retry after Retry-After seconds", body = ErrorBody)
    )
)]
async fn readyz(State(probes): State<Arc<dyn Probes>>) -> Result<&'static str, ShellError> {
    probes.readiness().await.map_err(ShellError::NotReady)?;
    Ok("ready")
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics (text exposition format); README lists them",
    responses((status = 200, description = "Metrics", content_type = "text/plain"))
)]
async fn metrics_text(State(probes): State<Arc<dyn Probes>>) -> impl IntoResponse {
    probes.before_scrape();
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::handle().render(),
    )
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This description (OpenAPI 3.1)",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
async fn openapi_json(Extension(description): Extension<Description>) -> Response {
    let json: Arc<str> = match description.refresh {
        None => description.serialized,
        Some(refresh) => match refresh(&description.built).to_pretty_json() {
            Ok(json) => Arc::from(json),
            Err(error) => {
                tracing::error!(%error, "the OpenAPI description does not serialize");
                return error_response(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
            }
        },
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response()
}
