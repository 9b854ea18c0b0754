//! The gateway's one mapping from failures to HTTP responses. Every error
//! body is JSON `{"error": "..."}`; internal details are logged, not sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::publish::PublishError;

/// One problem with one reading of a request.
#[derive(Debug, Serialize)]
pub struct ReadingError {
    pub index: usize,
    pub field: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("invalid readings: nothing was published")]
    InvalidReadings(Vec<ReadingError>),
    #[error("kafka did not acknowledge the readings")]
    Unavailable(#[from] PublishError),
    #[error("{0}")]
    NotReady(&'static str),
}

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Json(json!({ "error": message })),
            )
                .into_response(),
            ApiError::Malformed(_) => {
                (StatusCode::BAD_REQUEST, Json(json!({ "error": message }))).into_response()
            }
            ApiError::PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({ "error": message })),
            )
                .into_response(),
            ApiError::InvalidReadings(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": message, "errors": errors })),
            )
                .into_response(),
            ApiError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "publish failed, answering 503");
                let message = match cause {
                    PublishError::Overloaded => "the gateway is overloaded: retry later",
                    _ => "kafka did not acknowledge the readings in time: retry the whole request",
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                    Json(json!({ "error": message })),
                )
                    .into_response()
            }
            ApiError::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
                Json(json!({ "error": message })),
            )
                .into_response(),
        }
    }
}
