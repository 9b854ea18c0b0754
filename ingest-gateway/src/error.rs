//! The gateway's one mapping from its failures to HTTP responses. Every
//! error body is JSON `{"error": "..."}`; internal details are logged, not
//! sent. Probes, fallbacks, timeouts and API-key refusals are the shell's
//! (`service_kit::shell::ShellError`).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use service_kit::shell::{error_response as json_error, unavailable};

use crate::publish::PublishError;

/// One problem with one reading of a request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
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
    Publish(#[from] PublishError),
    #[error("the gateway is at its concurrent request limit: retry later")]
    Overloaded,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            ApiError::UnsupportedMediaType(_) => {
                json_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message)
            }
            ApiError::Malformed(_) => json_error(StatusCode::BAD_REQUEST, &message),
            ApiError::PayloadTooLarge(_) => json_error(StatusCode::PAYLOAD_TOO_LARGE, &message),
            ApiError::InvalidReadings(errors) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({ "error": message, "errors": errors })),
            )
                .into_response(),
            ApiError::Publish(PublishError::Encode(error)) => {
                tracing::error!(%error, "reading could not be encoded");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
            }
            ApiError::Publish(cause) => {
                tracing::warn!(error = %cause, "publish failed, answering 503");
                match cause {
                    PublishError::Overloaded => {
                        unavailable("the gateway is overloaded: retry later")
                    }
                    _ => unavailable(
                        "kafka did not acknowledge the readings in time: retry the whole request",
                    ),
                }
            }
            ApiError::Overloaded => unavailable(&message),
        }
    }
}
