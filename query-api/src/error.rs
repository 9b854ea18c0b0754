//! The query API's one mapping from failures to HTTP responses. Bodies are
//! JSON `{"error": "..."}`; database errors are logged inside the request
//! span and answered with an opaque 500.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("the request took too long")]
    Timeout,
    #[error("internal error")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Unauthorized(#[from] shared::auth::AuthError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, self.to_string()),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, self.to_string()),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, self.to_string()),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, self.to_string()),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, self.to_string()),
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, self.to_string()),
            // The database is down or saturated: a retry later may succeed.
            ApiError::Database(error) if shared::db::is_transient(error) => {
                tracing::warn!(%error, "database unavailable");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable: retry later".to_owned(),
                )
            }
            ApiError::Database(error) => {
                tracing::error!(%error, "database error");
                (StatusCode::INTERNAL_SERVER_ERROR, self.to_string())
            }
            ApiError::Unauthorized(error) => {
                let mut response =
                    (error.status(), Json(json!({ "error": self.to_string() }))).into_response();
                if let Some(challenge) = error.challenge() {
                    response.headers_mut().insert(
                        axum::http::header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static(challenge),
                    );
                }
                return response;
            }
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", rejection.body_text()))
    }
}
