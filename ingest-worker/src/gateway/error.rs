//! The gateway's one mapping from failures to HTTP responses. Every error
//! body is JSON `{"error": "..."}`; internal details are logged, not sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;

use super::publish::PublishError;

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
    #[error("{0}")]
    NotReady(&'static str),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("the request took too long")]
    Timeout,
    #[error("the gateway is at its concurrent request limit: retry later")]
    Overloaded,
    #[error("{0}")]
    Unauthorized(#[from] shared::auth::AuthError),
}

/// Seconds a client should wait before retrying after a 503.
const RETRY_AFTER_SECONDS: &str = "5";

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unavailable(message: &str) -> Response {
    let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        header::HeaderValue::from_static(RETRY_AFTER_SECONDS),
    );
    response
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
            ApiError::NotReady(_) => unavailable(&message),
            ApiError::NotFound => json_error(StatusCode::NOT_FOUND, &message),
            ApiError::MethodNotAllowed => json_error(StatusCode::METHOD_NOT_ALLOWED, &message),
            ApiError::Timeout => json_error(StatusCode::REQUEST_TIMEOUT, &message),
            ApiError::Overloaded => unavailable(&message),
            ApiError::Unauthorized(error) => {
                let mut response = json_error(error.status(), &message);
                if let Some(challenge) = error.challenge() {
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        header::HeaderValue::from_static(challenge),
                    );
                }
                response
            }
        }
    }
}
