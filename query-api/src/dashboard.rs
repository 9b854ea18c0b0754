//! The dashboard page at `/`: static HTML, CSS and JavaScript compiled into
//! the binary (no build step, nothing fetched from elsewhere). The page calls
//! the public API from the browser, with the API key the user gives it, so
//! it sees exactly what any other client sees; serving it needs no key.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const PAGE: &str = include_str!("../static/dashboard.html");
const SCRIPT: &str = include_str!("../static/dashboard.js");
const STYLE: &str = include_str!("../static/dashboard.css");

/// Only this origin's own script, style and API: injected markup could
/// neither run inline script nor send data elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> OpenApiRouter<S> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(style))
}

#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    summary = "The dashboard page (HTML); it calls the analytics routes with the user's key",
    responses((status = 200, description = "The page", content_type = "text/html"))
)]
async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

#[utoipa::path(
    get,
    path = "/dashboard.js",
    tag = "operations",
    summary = "The dashboard's script",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript"))
)]
async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[utoipa::path(
    get,
    path = "/dashboard.css",
    tag = "operations",
    summary = "The dashboard's style sheet",
    responses((status = 200, description = "CSS", content_type = "text/css"))
)]
async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Short: a new release's page is picked up within minutes.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
