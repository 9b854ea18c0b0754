//! Request bodies: one JSON reading, a JSON array of readings, or NDJSON
//! (`application/x-ndjson`, one reading per line).

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderMap;
use serde_json::Value;

use crate::error::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    NdJson,
}

impl BodyFormat {
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(content_type) = headers.get(CONTENT_TYPE) else {
            return Err(ApiError::UnsupportedMediaType(
                "a Content-Type header is required: application/json or application/x-ndjson"
                    .into(),
            ));
        };
        let essence = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(Self::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Self::NdJson),
            other if other.ends_with("+json") => Ok(Self::Json),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {other:?} is not supported: use application/json or application/x-ndjson"
            ))),
        }
    }
}

/// Reads the whole body, refusing (413) once it passes `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|error| {
        let is_limit = std::error::Error::source(&error)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if is_limit {
            ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"))
        } else {
            ApiError::Malformed(format!("the request body could not be read: {error}"))
        }
    })
}

/// Splits a body into one JSON value per reading.
pub fn parse(
    bytes: &[u8],
    format: BodyFormat,
    max_readings: usize,
) -> Result<Vec<Value>, ApiError> {
    let values = match format {
        BodyFormat::Json => match shared::json::from_slice(bytes) {
            Ok(Value::Array(values)) => values,
            Ok(object @ Value::Object(_)) => vec![object],
            Ok(_) => {
                return Err(ApiError::Malformed(
                    "the body must be a reading object or an array of readings".into(),
                ))
            }
            Err(error) => return Err(ApiError::Malformed(format!("malformed JSON: {error}"))),
        },
        BodyFormat::NdJson => {
            let mut values = Vec::new();
            for (line_index, line) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                if values.len() == max_readings {
                    return Err(too_many(max_readings));
                }
                let value = shared::json::from_slice(line).map_err(|error| {
                    ApiError::Malformed(format!(
                        "malformed JSON on line {}: {error}",
                        line_index + 1
                    ))
                })?;
                values.push(value);
            }
            values
        }
    };
    if values.is_empty() {
        return Err(ApiError::Malformed("the request holds no readings".into()));
    }
    if values.len() > max_readings {
        return Err(too_many(max_readings));
    }
    Ok(values)
}

fn too_many(max_readings: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "a request may carry at most {max_readings} readings"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_skips_blank_lines_and_names_the_bad_line() {
        let ok = parse(b"{\"a\":1}\r\n\n{\"b\":2}\n", BodyFormat::NdJson, 10).unwrap();
        assert_eq!(ok.len(), 2);
        let Err(ApiError::Malformed(message)) = parse(b"{}\n{oops\n", BodyFormat::NdJson, 10)
        else {
            panic!("expected malformed")
        };
        assert!(message.starts_with("malformed JSON on line 2"), "{message}");
    }

    #[test]
    fn limits_and_shapes() {
        assert!(matches!(
            parse(b"[{},{},{}]", BodyFormat::Json, 2),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            parse(b"{}\n{}\n{}", BodyFormat::NdJson, 2),
            Err(ApiError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            parse(b"[]", BodyFormat::Json, 2),
            Err(ApiError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"42", BodyFormat::Json, 2),
            Err(ApiError::Malformed(_))
        ));
        assert_eq!(parse(b"{}", BodyFormat::Json, 2).unwrap().len(), 1);
    }
}
