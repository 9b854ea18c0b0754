//! Path and query parameters, validated once: device ids by the same rules
//! as ingestion, windows as half-open `(from, to]` intervals.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use shared::domain::{DeviceId, EventTime};

use crate::error::ApiError;

/// The default analytics window: the last 24 hours.
pub const DEFAULT_WINDOW: TimeDelta = TimeDelta::hours(24);

/// How far past now a window's `to` may be.
pub const MAX_TO_AHEAD: TimeDelta = TimeDelta::hours(24);

/// Query-string parameters; a repeated parameter is an error, not a guess.
pub struct QueryParams(HashMap<String, String>);

impl QueryParams {
    pub fn parse(raw: Option<&str>) -> Result<Self, ApiError> {
        let mut params = HashMap::new();
        for (key, value) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if params.insert(key.to_string(), value.into_owned()).is_some() {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {key} is given more than once"
                )));
            }
        }
        Ok(Self(params))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

pub fn device_id(name: &str, raw: &str) -> Result<DeviceId, ApiError> {
    DeviceId::parse(raw).map_err(|rule| ApiError::BadRequest(format!("{name} {rule}")))
}

/// A half-open analytics window `(from, to]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

fn timestamp(name: &str, raw: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::BadRequest(format!(
                "{name} must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-02-10T10:00:00Z"
            ))
        })
}

impl Window {
    /// `from`/`to` from the query string; a missing `to` is `now`, a missing
    /// `from` is 24 hours before `to`.
    pub fn from_params(
        params: &QueryParams,
        now: DateTime<Utc>,
        max_span: TimeDelta,
    ) -> Result<Self, ApiError> {
        let to = params
            .get("to")
            .map(|raw| timestamp("to", raw))
            .transpose()?
            .unwrap_or(now);
        // Nothing is stored that far ahead, and a year-9999 bound would only
        // waste a query (and overflow `to - 24 h` arithmetic near the end of time).
        if to > now + MAX_TO_AHEAD {
            return Err(ApiError::BadRequest(format!(
                "to must not be more than {} hours in the future",
                MAX_TO_AHEAD.num_hours()
            )));
        }
        let from = match params.get("from") {
            Some(raw) => timestamp("from", raw)?,
            None => to - DEFAULT_WINDOW,
        };
        // PostgreSQL keeps microseconds: bounds are compared, and reported, at that precision.
        let (from, to) = (EventTime::new(from).instant(), EventTime::new(to).instant());
        if from >= to {
            return Err(ApiError::BadRequest("from must be earlier than to".into()));
        }
        if to - from > max_span {
            return Err(ApiError::BadRequest(format!(
                "the window may span at most {} days",
                max_span.num_days()
            )));
        }
        Ok(Self { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        raw.parse().unwrap()
    }

    fn window(query: &str) -> Result<Window, ApiError> {
        let params = QueryParams::parse(Some(query))?;
        Window::from_params(&params, at("2026-02-10T12:00:00Z"), TimeDelta::days(31))
    }

    #[test]
    fn defaults_to_the_last_24_hours() {
        assert_eq!(
            window("").unwrap(),
            Window {
                from: at("2026-02-09T12:00:00Z"),
                to: at("2026-02-10T12:00:00Z")
            }
        );
        assert_eq!(
            window("to=2026-02-01T00:00:00%2B01:00").unwrap(),
            Window {
                from: at("2026-01-30T23:00:00Z"),
                to: at("2026-01-31T23:00:00Z")
            }
        );
    }

    #[test]
    fn rejects_bad_windows() {
        for query in [
            "from=2026-02-10T10:00:00",
            "to=tomorrow",
            "from=2026-02-10T10:00:00Z&to=2026-02-10T10:00:00Z",
            "from=2026-01-01T00:00:00Z&to=2026-02-02T00:00:00Z",
            "from=2026-02-10T10:00:00Z&from=2026-02-10T11:00:00Z",
        ] {
            assert!(
                matches!(window(query), Err(ApiError::BadRequest(_))),
                "{query}"
            );
        }
    }
}
