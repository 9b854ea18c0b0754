//! The query API's one mapping from its failures to HTTP responses. Bodies
//! are JSON `{"error": "..."}`; database errors are logged inside the
//! request span and answered with an opaque 500 (or a 503 when retrying may
//! help, as when no replica is fresh enough to read). Probes, fallbacks,
//! timeouts, body limits and API-key refusals are the shell's
//! (`service_kit::shell::ShellError`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::shell::{error_response, unavailable};

use crate::reads::ReadError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("internal error")]
    Database(#[from] sqlx::Error),
    /// Every replica lags or is down, and the primary may not be read.
    #[error("{0}")]
    NoFreshSource(String),
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Database(error) => ApiError::Database(error),
            ReadError::NoFreshReplica => ApiError::NoFreshSource(format!("{error}: retry later")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::BadRequest(message) => error_response(StatusCode::BAD_REQUEST, message),
            ApiError::NotFound(message) => error_response(StatusCode::NOT_FOUND, message),
            // The database is down or saturated: a retry later may succeed.
            ApiError::Database(error) if service_kit::db::is_transient(error) => {
                tracing::warn!(%error, "database unavailable");
                unavailable("the database is unavailable: retry later")
            }
            ApiError::NoFreshSource(message) => {
                tracing::warn!(%message, "no server to read from");
                unavailable(message)
            }
            ApiError::Database(error) => {
                tracing::error!(%error, "database error");
                error_response(StatusCode::INTERNAL_SERVER_ERROR, &self.to_string())
            }
        }
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}
