//! Validated domain types. Their fields are private and their constructors
//! enforce the rules, so code past the wire decoder never re-checks a reading.

use std::fmt;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

/// Longest accepted device id, in characters.
pub const MAX_ID_CHARS: usize = 64;

/// A vehicle or meter id: 1–64 characters, no control characters, no
/// leading or trailing whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// Why a string is not a [`DeviceId`]; the messages complete "vehicleId ...".
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most 64 characters")]
    TooLong,
    #[error("must not contain control characters")]
    ControlCharacter,
    #[error("must not start or end with whitespace")]
    SurroundingWhitespace,
    #[error("must not contain bidirectional override or isolate characters (U+202A–U+202E, U+2066–U+2069)")]
    BidiControl,
    #[error("must not be \".\" or \"..\": a URL path cannot carry them")]
    DotSegment,
}

/// Characters that reorder the text around them: an id holding one can
/// display as a different id (the "Trojan Source" trick).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl DeviceId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let n_chars = raw.chars().count();
        if n_chars == 0 {
            return Err(IdError::Empty);
        }
        if n_chars > MAX_ID_CHARS {
            return Err(IdError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(IdError::ControlCharacter);
        }
        if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
            return Err(IdError::SurroundingWhitespace);
        }
        if raw == "." || raw == ".." {
            return Err(IdError::DotSegment);
        }
        if raw.chars().any(is_bidi_control) {
            return Err(IdError::BidiControl);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The event time of a reading, truncated to the microsecond because that is
/// PostgreSQL's `timestamptz` precision: two readings that the database would
/// store under the same key must already compare equal here, or in-batch
/// de-duplication would miss them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventTime(DateTime<Utc>);

impl EventTime {
    pub fn new(instant: DateTime<Utc>) -> Self {
        // A leap second (chrono keeps it as nanosecond >= 1e9) rounds down to
        // the last microsecond of its minute's 59th second; truncation cannot fail
        // for the one-microsecond step, so the fallback is never taken.
        let truncated = instant
            .duration_trunc(TimeDelta::microseconds(1))
            .unwrap_or(instant);
        Self(truncated)
    }

    pub fn instant(&self) -> DateTime<Utc> {
        self.0
    }

    /// Microseconds since 2000-01-01T00:00:00Z, PostgreSQL's binary timestamp encoding.
    pub fn postgres_micros(&self) -> i64 {
        const POSTGRES_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
        (self.0.timestamp() - POSTGRES_EPOCH_UNIX_SECONDS) * 1_000_000
            + i64::from(self.0.timestamp_subsec_micros().min(999_999))
    }
}

/// What a reading says of energy, in kWh.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Energy {
    /// The energy of the interval that ends at the reading (`kwhDeliveredDc`,
    /// `kwhConsumedAc`): a window's energy is the sum of these.
    Interval(f64),
    /// A cumulative register (`kwhRegisterDc`, `kwhRegisterAc`), as meters
    /// and battery systems count: the interval's energy is this minus the
    /// device's previous register in event time (the worker derives it).
    Register(f64),
}

impl Energy {
    /// The interval's energy when the reading states it.
    pub fn interval(self) -> Option<f64> {
        match self {
            Energy::Interval(kwh) => Some(kwh),
            Energy::Register(_) => None,
        }
    }

    /// The register when the reading carries one.
    pub fn register(self) -> Option<f64> {
        match self {
            Energy::Interval(_) => None,
            Energy::Register(kwh) => Some(kwh),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct VehicleReading {
    pub vehicle_id: DeviceId,
    pub recorded_at: EventTime,
    pub soc: f64,
    /// DC energy stored: `kwhDeliveredDc` or `kwhRegisterDc`.
    pub dc: Energy,
    pub battery_temp: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MeterReading {
    pub meter_id: DeviceId,
    pub recorded_at: EventTime,
    /// AC energy drawn: `kwhConsumedAc` or `kwhRegisterAc`.
    pub ac: Energy,
    pub voltage: f64,
}

/// From `starts_at` on, `vehicle_id` charges through `meter_id`; `None` ends
/// the vehicle's current assignment.
#[derive(Clone, Debug, PartialEq)]
pub struct Assignment {
    pub vehicle_id: DeviceId,
    pub meter_id: Option<DeviceId>,
    pub starts_at: EventTime,
}

/// One validated message of the readings topic.
///
/// The numeric fields of the readings are public but only [`crate::wire`]
/// constructs these values, after range checks.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    Vehicle(VehicleReading),
    Meter(MeterReading),
    Assignment(Assignment),
}

impl Reading {
    /// When a vehicle or meter reading was taken; `None` for an assignment,
    /// which is not a reading of a stream.
    pub fn recorded_at(&self) -> Option<EventTime> {
        match self {
            Reading::Vehicle(v) => Some(v.recorded_at),
            Reading::Meter(m) => Some(m.recorded_at),
            Reading::Assignment(_) => None,
        }
    }

    /// The Kafka message key: the device whose order of events matters.
    pub fn device_id(&self) -> &DeviceId {
        match self {
            Reading::Vehicle(v) => &v.vehicle_id,
            Reading::Meter(m) => &m.meter_id,
            Reading::Assignment(a) => &a.vehicle_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::parse("EV-01").is_ok());
        assert!(DeviceId::parse("électrique-🚗").is_ok());
        assert_eq!(DeviceId::parse(""), Err(IdError::Empty));
        assert!(DeviceId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(DeviceId::parse(&"x".repeat(65)), Err(IdError::TooLong));
        // 64 multi-byte characters are fine: the limit counts characters, not bytes.
        assert!(DeviceId::parse(&"é".repeat(64)).is_ok());
        assert_eq!(DeviceId::parse("a\tb"), Err(IdError::ControlCharacter));
        assert_eq!(DeviceId::parse(" a"), Err(IdError::SurroundingWhitespace));
        assert_eq!(DeviceId::parse("a "), Err(IdError::SurroundingWhitespace));
    }

    #[test]
    fn event_time_truncates_to_microseconds_and_encodes_for_postgres() {
        let t = DateTime::parse_from_rfc3339("2000-01-01T00:00:01.000002999Z")
            .unwrap()
            .with_timezone(&Utc);
        let e = EventTime::new(t);
        assert_eq!(e.postgres_micros(), 1_000_002);
        let before_epoch = EventTime::new(
            DateTime::parse_from_rfc3339("1999-12-31T23:59:59.5Z")
                .unwrap()
                .with_timezone(&Utc),
        );
        assert_eq!(before_epoch.postgres_micros(), -500_000);
    }
}
