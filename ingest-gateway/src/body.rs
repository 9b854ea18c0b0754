//! Request bodies: one JSON reading, a JSON array of readings, or NDJSON
//! (`application/x-ndjson`, one reading per line), read and decoded within
//! stated bounds.
//!
//! Memory per request is bounded whatever the body holds: the body is read
//! into one buffer of at most `GATEWAY_MAX_BODY_BYTES`; an array is split
//! into its elements' texts without building them (serde_json's `RawValue`,
//! slices of the buffer), counting as it goes and stopping past
//! `GATEWAY_MAX_BATCH_READINGS`; then each element is parsed and decoded on
//! its own, at most `MAX_READING_BYTES` of text at a time, and only the
//! decoded reading is kept. So a body of four million zeros costs its 8 MiB
//! and nothing more (ARCHITECTURE.md, "Memory is bounded").

use std::cell::Cell;
use std::fmt;

use axum::body::Body;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt as _;
use serde::de::{DeserializeSeed, Deserializer, Error as _, SeqAccess, Visitor};
use serde_json::value::RawValue;
use shared::domain::Reading;
use shared::wire::{decode_value, ValidationRules, MAX_READING_BYTES};

use crate::error::{ApiError, ReadingError};

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

/// Bytes of a refused body still read (and discarded) before answering 413:
/// a client that is still sending when the connection closes gets a broken
/// pipe instead of the answer, so a body moderately over the limit is read
/// out first. A larger one is cut off (its sender is told by the closed
/// connection).
const DRAIN_ALLOWANCE: usize = 1024 * 1024;

/// Reads the whole body into one buffer of at most `limit` bytes, refusing
/// (413) once it would pass it. The buffer grows to what arrived, never
/// beyond the limit, and is not copied again.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Vec<u8>, ApiError> {
    let too_large =
        || ApiError::PayloadTooLarge(format!("the request body is larger than {limit} bytes"));
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        drain(body, DRAIN_ALLOWANCE).await;
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ApiError::Malformed(format!("the request body could not be read: {error}"))
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let needed = bytes.len() + data.len();
        if needed > limit {
            drain(body, DRAIN_ALLOWANCE.saturating_sub(data.len())).await;
            return Err(too_large());
        }
        if needed > bytes.capacity() {
            let target = needed.max(bytes.capacity() * 2).min(limit);
            bytes.reserve_exact(target - bytes.len());
        }
        bytes.extend_from_slice(&data);
    }
    Ok(bytes)
}

/// Reads and discards at most `allowance` more bytes of `body`.
async fn drain(mut body: Body, allowance: usize) {
    let mut left = allowance;
    while left > 0 {
        match body.frame().await {
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, |data| data.len());
                left = left.saturating_sub(n.max(1));
            }
            _ => return,
        }
    }
}

/// One reading's JSON text in a body, and the NDJSON line it is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadingText<'a> {
    pub text: &'a [u8],
    pub line: Option<usize>,
}

/// Each reading of a body as its JSON text, in order; at most `max_readings`.
pub fn split(
    bytes: &[u8],
    format: BodyFormat,
    max_readings: usize,
) -> Result<Vec<ReadingText<'_>>, ApiError> {
    let texts = match format {
        BodyFormat::Json => split_json(bytes, max_readings)?,
        BodyFormat::NdJson => split_lines(bytes, max_readings)?,
    };
    if texts.is_empty() {
        return Err(ApiError::Malformed("the request holds no readings".into()));
    }
    Ok(texts)
}

fn split_json(bytes: &[u8], max_readings: usize) -> Result<Vec<ReadingText<'_>>, ApiError> {
    let text = bytes.trim_ascii();
    match text.first() {
        Some(b'{') => Ok(vec![ReadingText { text, line: None }]),
        Some(b'[') => {
            let too_many = Cell::new(false);
            let mut deserializer = serde_json::Deserializer::from_slice(text);
            let elements = BoundedArray {
                max: max_readings,
                too_many: &too_many,
            }
            .deserialize(&mut deserializer)
            .and_then(|elements| deserializer.end().map(|()| elements));
            match elements {
                Ok(elements) => Ok(elements
                    .into_iter()
                    .map(|raw| ReadingText {
                        text: raw.get().as_bytes(),
                        line: None,
                    })
                    .collect()),
                Err(_) if too_many.get() => Err(too_many_readings(max_readings)),
                Err(error) => Err(ApiError::Malformed(format!("malformed JSON: {error}"))),
            }
        }
        // Not a reading nor an array: say whether it is JSON at all.
        _ => match shared::json::from_slice(text) {
            Ok(_) => Err(ApiError::Malformed(
                "the body must be a reading object or an array of readings".into(),
            )),
            Err(error) => Err(ApiError::Malformed(format!("malformed JSON: {error}"))),
        },
    }
}

fn split_lines(bytes: &[u8], max_readings: usize) -> Result<Vec<ReadingText<'_>>, ApiError> {
    let mut lines = Vec::new();
    for (index, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if lines.len() == max_readings {
            return Err(too_many_readings(max_readings));
        }
        lines.push(ReadingText {
            text: line,
            line: Some(index + 1),
        });
    }
    Ok(lines)
}

/// Decodes each reading's text on its own: every invalid reading is named
/// by its index (422, nothing published); a text that is not JSON makes the
/// whole body malformed (400), naming the line of NDJSON.
pub fn decode(
    texts: &[ReadingText<'_>],
    rules: &ValidationRules,
    now: DateTime<Utc>,
) -> Result<Vec<Reading>, ApiError> {
    let mut readings = Vec::with_capacity(texts.len());
    let mut errors = Vec::new();
    for (index, &ReadingText { text, line }) in texts.iter().enumerate() {
        if text.len() > MAX_READING_BYTES {
            errors.push(ReadingError {
                index,
                field: "reading".into(),
                error: format!(
                    "is {} bytes, more than the {MAX_READING_BYTES} a reading may take",
                    text.len()
                ),
            });
            continue;
        }
        let value = shared::json::from_slice(text).map_err(|error| match line {
            None => ApiError::Malformed(format!("malformed JSON: {error}")),
            Some(line) => ApiError::Malformed(format!("malformed JSON on line {line}: {error}")),
        })?;
        match decode_value(&value, rules, now) {
            Ok(reading) => readings.push(reading),
            Err(field_errors) => errors.extend(field_errors.into_iter().map(|e| ReadingError {
                index,
                field: e.field,
                error: e.error,
            })),
        }
    }
    if errors.is_empty() {
        Ok(readings)
    } else {
        Err(ApiError::InvalidReadings(errors))
    }
}

fn too_many_readings(max_readings: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "a request may carry at most {max_readings} readings"
    ))
}

/// A JSON array read as its elements' raw texts, failing at element
/// `max + 1` (and saying so in `too_many`) instead of reading further.
struct BoundedArray<'c> {
    max: usize,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedArray<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of readings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<&'de RawValue>()? {
            if elements.len() == self.max {
                self.too_many.set(true);
                return Err(A::Error::custom("too many readings"));
            }
            elements.push(element);
        }
        Ok(elements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8], format: BodyFormat, max: usize) -> Result<Vec<&[u8]>, ApiError> {
        split(bytes, format, max).map(|texts| texts.iter().map(|t| t.text).collect())
    }

    #[test]
    fn ndjson_skips_blank_lines_and_names_the_bad_line() {
        let ok = parse(b"{\"a\":1}\r\n\n{\"b\":2}\n", BodyFormat::NdJson, 10).unwrap();
        assert_eq!(ok, [b"{\"a\":1}".as_slice(), b"{\"b\":2}".as_slice()]);
        let body = b"{}\n\n{oops\n";
        let texts = split(body, BodyFormat::NdJson, 10).unwrap();
        let Err(ApiError::Malformed(message)) =
            decode(&texts, &ValidationRules::default(), Utc::now())
        else {
            panic!("expected malformed")
        };
        assert!(message.starts_with("malformed JSON on line 3"), "{message}");
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
        assert!(matches!(
            parse(b"[1,", BodyFormat::Json, 2),
            Err(ApiError::Malformed(_))
        ));
        assert_eq!(
            parse(b" {} ", BodyFormat::Json, 2).unwrap(),
            [b"{}".as_slice()]
        );
        assert_eq!(
            parse(b"[ {\"a\": [1, 2]} , 3 ]", BodyFormat::Json, 2).unwrap(),
            [b"{\"a\": [1, 2]}".as_slice(), b"3".as_slice()]
        );
    }

    #[test]
    fn an_array_far_longer_than_allowed_is_refused_at_the_first_element_too_many() {
        let body = format!("[{}0]", "0,".repeat(4_000_000));
        assert!(matches!(
            parse(body.as_bytes(), BodyFormat::Json, 10_000),
            Err(ApiError::PayloadTooLarge(_))
        ));
    }
}
