//! The OpenAPI 3 description served at `/openapi.json`. It is generated from
//! the `#[utoipa::path]` annotation on each handler and the response types,
//! and the router is built from the same annotations (`utoipa_axum::routes!`),
//! so a route cannot be served without being described.

use service_kit::shell::ErrorBody;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::{Header, RefOr};
use utoipa::{IntoParams, IntoResponses, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::reads::{LAG_HEADER, SOURCE_HEADER};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Energy Ingestion Engine: query-api",
        description = "Charging efficiency of electric vehicle fleets: DC energy stored by each \
            vehicle against AC energy drawn by the meter it charged through. Below 85 % \
            suggests a fault or energy leakage. Analytics windows are half-open, `(from, to]`, \
            RFC 3339 with an explicit offset; the default is the last 24 hours.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    tags(
        (name = "analytics", description = "Charging efficiency over a window"),
        (name = "devices", description = "Current state of a device"),
        (name = "operations", description = "Probes, metrics and this description")
    )
)]
pub struct ApiDoc;

/// The API key the analytics routes need, as the description states it.
pub const API_KEY_DESCRIPTION: &str = "An API key with the read role (API_KEYS on the server), unless the server runs with AUTH_DISABLED=true";

/// The window of an analytics request.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // describes the query string; handlers parse it raw to name bad parameters
pub struct WindowParams {
    /// Start of the window, exclusive (RFC 3339 with an offset). Default: `to` − 24 h
    from: Option<String>,
    /// End of the window, inclusive (RFC 3339 with an offset). Default: now
    to: Option<String>,
}

/// The errors every analytics and device route may answer.
#[derive(IntoResponses)]
#[allow(dead_code)]
pub enum ReadErrors {
    /// A malformed id, a bad window or parameter; the message names it.
    #[response(status = 400)]
    BadRequest(#[to_schema] ErrorBody),
    /// No API key, or an unknown one.
    #[response(status = 401)]
    Unauthorized(#[to_schema] ErrorBody),
    /// The API key lacks the read role.
    #[response(status = 403)]
    Forbidden(#[to_schema] ErrorBody),
    /// Nothing recorded for the device (in the window).
    #[response(status = 404)]
    NotFound(#[to_schema] ErrorBody),
    /// The database is unavailable: retry later.
    #[response(status = 503)]
    Unavailable(#[to_schema] ErrorBody),
}

/// `routes` with the freshness headers described on the 200 answer of
/// every operation under `/v1` (each reads the database, and the
/// `reads::freshness` layer sets both on every answer it reads).
pub fn with_freshness_headers<S>(routes: OpenApiRouter<S>) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    let (router, mut description) = routes.split_for_parts();
    let header = |schema_type: Type, text: &str| {
        let mut header = Header::new(Object::with_type(schema_type));
        header.description = Some(text.to_owned());
        header
    };
    for (path, item) in description.paths.paths.iter_mut() {
        let Some(operation) = item.get.as_mut().filter(|_| path.starts_with("/v1/")) else {
            continue;
        };
        if let Some(RefOr::T(ok)) = operation.responses.responses.get_mut("200") {
            ok.headers.insert(
                SOURCE_HEADER.to_owned(),
                header(
                    Type::String,
                    "Where the answer was read: `primary`, or `replica-N` (the Nth of QUERY_DATABASE_URLS)",
                ),
            );
            ok.headers.insert(
                LAG_HEADER.to_owned(),
                header(
                    Type::Integer,
                    "How stale the source was when last measured, in milliseconds: how long ago the \
                     primary first held data the replica had not replayed (0: the primary, or a \
                     replica that had replayed everything)",
                ),
            );
        }
    }
    OpenApiRouter::with_openapi(description).merge(OpenApiRouter::from(router))
}
