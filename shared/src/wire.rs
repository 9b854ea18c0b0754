//! The wire format of a reading: the original API's camelCase JSON, one
//! reading per Kafka message (key = device id). Decoding validates every
//! rule and names each offending field; encoding writes the canonical form
//! that the gateway publishes.
//!
//! The decoder walks a `serde_json::Value` rather than deriving
//! `Deserialize` so that a missing or mistyped field yields one precise
//! `{field, error}` per problem, all of them at once, instead of serde's first
//! error only.

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{
    Assignment, DeviceId, Energy, EventTime, MeterReading, Reading, VehicleReading,
};

/// One problem with one field of one reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub error: String,
}

impl FieldError {
    pub fn new(field: &str, error: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            error: error.into(),
        }
    }
}

/// Rules that depend on configuration rather than on the format.
#[derive(Clone, Copy, Debug)]
pub struct ValidationRules {
    /// How far past the receiver's clock a timestamp may lie (clock skew allowance).
    pub max_future: TimeDelta,
    /// Readings (not assignments) must lie on one of the last this many UTC
    /// days before today, or today: older days' partitions are dropped.
    pub retention_days: Option<u32>,
}

impl Default for ValidationRules {
    fn default() -> Self {
        Self {
            max_future: TimeDelta::minutes(5),
            retention_days: None,
        }
    }
}

impl ValidationRules {
    /// The oldest instant a reading may have at `now`: midnight UTC,
    /// `retention_days` days before today.
    pub fn retention_cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let days = self.retention_days?;
        let day = now.date_naive() - chrono::Days::new(u64::from(days));
        Some(day.and_hms_opt(0, 0, 0)?.and_utc())
    }

    /// Refuses a reading taken at `at` that is older than the retention at
    /// `now`; the error names the cutoff. The decoder applies it, and the
    /// worker again when a batch is flushed (a reading can age past the
    /// cutoff at midnight while it waits).
    pub fn check_retention(&self, at: EventTime, now: DateTime<Utc>) -> Result<(), FieldError> {
        match self.retention_cutoff(now) {
            Some(cutoff) if at.instant() < cutoff => Err(FieldError::new(
                "timestamp",
                format!(
                    "is older than the {}-day retention (before {})",
                    self.retention_days.unwrap_or_default(),
                    format_timestamp(cutoff)
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Why a Kafka message could not become a [`Reading`].
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("payload is not valid JSON: {0}")]
    NotJson(String),
    #[error("invalid reading: {}", describe(.0))]
    Invalid(Vec<FieldError>),
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{} {}", e.field, e.error))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Largest JSON text of one reading, in bytes. A canonical reading is about
/// 200 bytes; this leaves room for unknown fields while bounding what one
/// message or one element of a request may cost to hold and parse. The
/// gateway refuses a larger reading, the worker dead-letters a larger message.
pub const MAX_READING_BYTES: usize = 64 * 1024;

/// Most energy one reading may report, in kWh: far beyond any charger's
/// interval, low enough that sums over millions of readings stay finite.
pub const MAX_KWH_PER_READING: f64 = 1_000_000.0;

/// Largest cumulative register accepted, in kWh: a lifetime count of a
/// busy charger, with room to spare (OCPP meters count in Wh).
pub const MAX_REGISTER_KWH: f64 = 1_000_000_000.0;

/// Decodes one Kafka message payload.
pub fn decode_message(
    payload: &[u8],
    rules: &ValidationRules,
    now: DateTime<Utc>,
) -> Result<Reading, MessageError> {
    let value =
        crate::json::from_slice(payload).map_err(|e| MessageError::NotJson(e.to_string()))?;
    decode_value(&value, rules, now).map_err(MessageError::Invalid)
}

/// Validates one reading already parsed as JSON.
pub fn decode_value(
    value: &Value,
    rules: &ValidationRules,
    now: DateTime<Utc>,
) -> Result<Reading, Vec<FieldError>> {
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new("reading", "must be a JSON object")]);
    };
    let mut fields = Fields {
        object,
        errors: Vec::new(),
    };
    let kind = match object.get("type") {
        None => {
            fields.errors.push(FieldError::new("type", "is required"));
            return Err(fields.errors);
        }
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => {
            fields
                .errors
                .push(FieldError::new("type", "must be a string"));
            return Err(fields.errors);
        }
    };
    let reading = match kind {
        "VEHICLE" => fields.vehicle(rules, now),
        "METER" => fields.meter(rules, now),
        "ASSIGNMENT" => fields.assignment(rules, now),
        _ => {
            fields.errors.push(FieldError::new(
                "type",
                "must be one of VEHICLE, METER, ASSIGNMENT",
            ));
            None
        }
    };
    reading.ok_or(fields.errors)
}

/// Reads fields of one JSON object, collecting an error per bad field.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    /// Every field of a vehicle reading is read, so each bad one is named.
    fn vehicle(&mut self, rules: &ValidationRules, now: DateTime<Utc>) -> Option<Reading> {
        let vehicle_id = self.device_id("vehicleId");
        let soc = self.number_in("soc", 0.0, 100.0);
        let dc = self.energy_report("kwhDeliveredDc", "kwhRegisterDc");
        let battery_temp = self.number_in("batteryTemp", -60.0, 120.0);
        let recorded_at = self.reading_timestamp(rules, now);
        Some(Reading::Vehicle(VehicleReading {
            vehicle_id: vehicle_id?,
            recorded_at: recorded_at?,
            soc: soc?,
            dc: dc?,
            battery_temp: battery_temp?,
        }))
    }

    fn meter(&mut self, rules: &ValidationRules, now: DateTime<Utc>) -> Option<Reading> {
        let meter_id = self.device_id("meterId");
        let ac = self.energy_report("kwhConsumedAc", "kwhRegisterAc");
        let voltage = self.number_in("voltage", 0.0, 2000.0);
        let recorded_at = self.reading_timestamp(rules, now);
        Some(Reading::Meter(MeterReading {
            meter_id: meter_id?,
            recorded_at: recorded_at?,
            ac: ac?,
            voltage: voltage?,
        }))
    }

    fn assignment(&mut self, rules: &ValidationRules, now: DateTime<Utc>) -> Option<Reading> {
        let vehicle_id = self.device_id("vehicleId");
        let meter_id = self.nullable_device_id("meterId");
        let starts_at = self.timestamp(rules, now);
        Some(Reading::Assignment(Assignment {
            vehicle_id: vehicle_id?,
            meter_id: meter_id?,
            starts_at: starts_at?,
        }))
    }

    fn required(&mut self, field: &str) -> Option<&'a Value> {
        let value = self.object.get(field);
        if value.is_none() {
            self.errors.push(FieldError::new(field, "is required"));
        }
        value
    }

    fn device_id(&mut self, field: &str) -> Option<DeviceId> {
        match self.required(field)? {
            Value::String(raw) => self.parse_id(field, raw),
            _ => {
                self.errors.push(FieldError::new(field, "must be a string"));
                None
            }
        }
    }

    /// `Some(None)` for an explicit JSON null; a missing field is still an error.
    fn nullable_device_id(&mut self, field: &str) -> Option<Option<DeviceId>> {
        match self.object.get(field) {
            None => {
                self.errors.push(FieldError::new(
                    field,
                    "is required (null ends the vehicle's assignment)",
                ));
                None
            }
            Some(Value::Null) => Some(None),
            Some(Value::String(raw)) => self.parse_id(field, raw).map(Some),
            Some(_) => {
                self.errors
                    .push(FieldError::new(field, "must be a string or null"));
                None
            }
        }
    }

    fn parse_id(&mut self, field: &str, raw: &str) -> Option<DeviceId> {
        DeviceId::parse(raw)
            .map_err(|error| self.errors.push(FieldError::new(field, error.to_string())))
            .ok()
    }

    fn number(&mut self, field: &str) -> Option<f64> {
        let value = self.required(field)?;
        match value.as_f64() {
            Some(n) if n.is_finite() => Some(n),
            Some(_) => {
                self.errors
                    .push(FieldError::new(field, "must be a finite number"));
                None
            }
            None => {
                self.errors.push(FieldError::new(field, "must be a number"));
                None
            }
        }
    }

    fn number_in(&mut self, field: &str, min: f64, max: f64) -> Option<f64> {
        let n = self.number(field)?;
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.errors.push(FieldError::new(
                field,
                format!("must be between {min} and {max}"),
            ));
            None
        }
    }

    /// Exactly one of the interval's energy (`interval`) and a cumulative
    /// register (`register`).
    fn energy_report(&mut self, interval: &str, register: &str) -> Option<Energy> {
        match (
            self.object.contains_key(interval),
            self.object.contains_key(register),
        ) {
            (true, false) => self.energy(interval).map(Energy::Interval),
            (false, true) => self.register(register).map(Energy::Register),
            (true, true) => {
                self.errors.push(FieldError::new(
                    register,
                    format!(
                        "must not be given with {interval}: a reading carries the energy of its \
                         interval or a cumulative register, not both"
                    ),
                ));
                None
            }
            (false, false) => {
                self.errors.push(FieldError::new(
                    interval,
                    format!("is required (or {register}, a cumulative register)"),
                ));
                None
            }
        }
    }

    /// A cumulative register in kWh: not negative, and below an impossible count.
    fn register(&mut self, field: &str) -> Option<f64> {
        let n = self.number(field)?;
        if (0.0..=MAX_REGISTER_KWH).contains(&n) {
            Some(n)
        } else {
            self.errors.push(FieldError::new(
                field,
                format!("must be between 0 and {MAX_REGISTER_KWH} kWh"),
            ));
            None
        }
    }

    /// kWh of one reading: not negative, and below an impossible amount, so
    /// that sums over millions of readings stay finite.
    fn energy(&mut self, field: &str) -> Option<f64> {
        let n = self.number(field)?;
        if n < 0.0 {
            self.errors
                .push(FieldError::new(field, "must be at least 0"));
            None
        } else if n > MAX_KWH_PER_READING {
            self.errors.push(FieldError::new(
                field,
                format!("must be at most {MAX_KWH_PER_READING} kWh per reading"),
            ));
            None
        } else {
            Some(n)
        }
    }

    /// A reading's timestamp: also within the retention.
    fn reading_timestamp(
        &mut self,
        rules: &ValidationRules,
        now: DateTime<Utc>,
    ) -> Option<EventTime> {
        let at = self.timestamp(rules, now)?;
        match rules.check_retention(at, now) {
            Err(error) => {
                self.errors.push(error);
                None
            }
            Ok(()) => Some(at),
        }
    }

    fn timestamp(&mut self, rules: &ValidationRules, now: DateTime<Utc>) -> Option<EventTime> {
        const FIELD: &str = "timestamp";
        let Value::String(raw) = self.required(FIELD)? else {
            self.errors.push(FieldError::new(FIELD, "must be a string"));
            return None;
        };
        let Ok(parsed) = DateTime::parse_from_rfc3339(raw) else {
            self.errors.push(FieldError::new(
                FIELD,
                "must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-02-10T10:00:00Z",
            ));
            return None;
        };
        // chrono reads "23:59:60" as a leap second; PostgreSQL and most
        // clients cannot represent one, so it is refused rather than moved.
        if parsed.timestamp_subsec_nanos() >= 1_000_000_000 {
            self.errors.push(FieldError::new(
                FIELD,
                "must not be a leap second (:60): send :59.999999 or the next second",
            ));
            return None;
        }
        let instant = parsed.with_timezone(&Utc);
        if instant > now + rules.max_future {
            self.errors.push(FieldError::new(
                FIELD,
                format!(
                    "must not be more than {} seconds in the future",
                    rules.max_future.num_seconds()
                ),
            ));
            return None;
        }
        Some(EventTime::new(instant))
    }
}

/// The canonical JSON of a reading, as published to Kafka.
#[derive(Serialize)]
#[serde(
    tag = "type",
    rename_all = "SCREAMING_SNAKE_CASE",
    rename_all_fields = "camelCase"
)]
enum WireReading<'a> {
    Vehicle {
        vehicle_id: &'a str,
        soc: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        kwh_delivered_dc: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kwh_register_dc: Option<f64>,
        battery_temp: f64,
        timestamp: String,
    },
    Meter {
        meter_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        kwh_consumed_ac: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        kwh_register_ac: Option<f64>,
        voltage: f64,
        timestamp: String,
    },
    Assignment {
        vehicle_id: &'a str,
        meter_id: Option<&'a str>,
        timestamp: String,
    },
}

/// RFC 3339 in UTC, with as many fractional digits as the instant needs.
pub fn format_timestamp(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Encodes a reading as its canonical JSON message payload.
pub fn encode(reading: &Reading) -> Result<Vec<u8>, serde_json::Error> {
    let wire = match reading {
        Reading::Vehicle(v) => WireReading::Vehicle {
            vehicle_id: v.vehicle_id.as_str(),
            soc: v.soc,
            kwh_delivered_dc: v.dc.interval(),
            kwh_register_dc: v.dc.register(),
            battery_temp: v.battery_temp,
            timestamp: format_timestamp(v.recorded_at.instant()),
        },
        Reading::Meter(m) => WireReading::Meter {
            meter_id: m.meter_id.as_str(),
            kwh_consumed_ac: m.ac.interval(),
            kwh_register_ac: m.ac.register(),
            voltage: m.voltage,
            timestamp: format_timestamp(m.recorded_at.instant()),
        },
        Reading::Assignment(a) => WireReading::Assignment {
            vehicle_id: a.vehicle_id.as_str(),
            meter_id: a.meter_id.as_ref().map(DeviceId::as_str),
            timestamp: format_timestamp(a.starts_at.instant()),
        },
    };
    serde_json::to_vec(&wire)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-02-10T12:00:00Z".parse().unwrap()
    }

    fn decode(value: Value) -> Result<Reading, Vec<FieldError>> {
        decode_value(&value, &ValidationRules::default(), now())
    }

    fn errors_of(value: Value) -> Vec<(String, String)> {
        decode(value)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.field, e.error))
            .collect()
    }

    fn vehicle() -> Value {
        json!({"type":"VEHICLE","vehicleId":"V-1","soc":80,"kwhDeliveredDc":1.25,"batteryTemp":25.5,"timestamp":"2026-02-10T10:00:00Z"})
    }

    fn with(mut value: Value, field: &str, new: Value) -> Value {
        value[field] = new;
        value
    }

    fn without(mut value: Value, field: &str) -> Value {
        value.as_object_mut().unwrap().remove(field);
        value
    }

    #[test]
    fn the_original_api_examples_decode_and_round_trip() {
        let examples = [
            vehicle(),
            json!({"type":"METER","meterId":"M-1","kwhConsumedAc":1.4,"voltage":231.5,"timestamp":"2026-02-10T10:00:00Z"}),
            json!({"type":"ASSIGNMENT","vehicleId":"V-1","meterId":"M-1","timestamp":"2026-02-10T09:00:00Z"}),
            json!({"type":"ASSIGNMENT","vehicleId":"V-1","meterId":null,"timestamp":"2026-02-10T09:00:00Z"}),
        ];
        for example in examples {
            let reading = decode(example.clone()).unwrap();
            let encoded: Value = serde_json::from_slice(&encode(&reading).unwrap()).unwrap();
            assert_eq!(decode(encoded).unwrap(), reading);
        }
    }

    #[test]
    fn unknown_fields_are_ignored_and_offsets_are_normalised_to_utc() {
        let value = with(
            with(vehicle(), "extra", json!(1)),
            "timestamp",
            json!("2026-02-10T12:00:00+02:00"),
        );
        let Reading::Vehicle(v) = decode(value).unwrap() else {
            panic!()
        };
        assert_eq!(
            v.recorded_at.instant(),
            "2026-02-10T10:00:00Z".parse::<DateTime<Utc>>().unwrap()
        );
    }

    #[test]
    fn every_rule_names_its_field() {
        let cases = [
            (without(vehicle(), "type"), "type", "is required"),
            (
                with(vehicle(), "type", json!("TRUCK")),
                "type",
                "must be one of VEHICLE, METER, ASSIGNMENT",
            ),
            (
                with(vehicle(), "type", json!(3)),
                "type",
                "must be a string",
            ),
            (without(vehicle(), "vehicleId"), "vehicleId", "is required"),
            (
                with(vehicle(), "vehicleId", json!(7)),
                "vehicleId",
                "must be a string",
            ),
            (
                with(vehicle(), "vehicleId", json!("")),
                "vehicleId",
                "must not be empty",
            ),
            (
                with(vehicle(), "vehicleId", json!("x".repeat(65))),
                "vehicleId",
                "must be at most 64 characters",
            ),
            (
                with(vehicle(), "vehicleId", json!("a\u{0007}b")),
                "vehicleId",
                "must not contain control characters",
            ),
            (
                with(vehicle(), "vehicleId", json!(" V-1")),
                "vehicleId",
                "must not start or end with whitespace",
            ),
            (
                with(vehicle(), "soc", json!(100.5)),
                "soc",
                "must be between 0 and 100",
            ),
            (
                with(vehicle(), "soc", json!(-1)),
                "soc",
                "must be between 0 and 100",
            ),
            (
                with(vehicle(), "soc", json!("80")),
                "soc",
                "must be a number",
            ),
            (
                with(vehicle(), "kwhDeliveredDc", json!(-0.1)),
                "kwhDeliveredDc",
                "must be at least 0",
            ),
            (
                with(vehicle(), "batteryTemp", json!(120.1)),
                "batteryTemp",
                "must be between -60 and 120",
            ),
            (
                with(vehicle(), "batteryTemp", json!(-60.1)),
                "batteryTemp",
                "must be between -60 and 120",
            ),
            (
                with(vehicle(), "timestamp", json!("2026-02-10T10:00:00")),
                "timestamp",
                "must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-02-10T10:00:00Z",
            ),
            (
                with(vehicle(), "timestamp", json!("yesterday")),
                "timestamp",
                "must be an RFC 3339 timestamp with an explicit offset, e.g. 2026-02-10T10:00:00Z",
            ),
            (
                with(vehicle(), "timestamp", json!(1_700_000_000)),
                "timestamp",
                "must be a string",
            ),
            (
                with(vehicle(), "timestamp", json!("2026-02-10T12:05:01Z")),
                "timestamp",
                "must not be more than 300 seconds in the future",
            ),
            (
                json!({"type":"METER","meterId":"M","kwhConsumedAc":1,"voltage":2000.5,"timestamp":"2026-02-10T10:00:00Z"}),
                "voltage",
                "must be between 0 and 2000",
            ),
            (
                json!({"type":"METER","meterId":"M","kwhConsumedAc":-1,"voltage":230,"timestamp":"2026-02-10T10:00:00Z"}),
                "kwhConsumedAc",
                "must be at least 0",
            ),
            (
                json!({"type":"ASSIGNMENT","vehicleId":"V","timestamp":"2026-02-10T10:00:00Z"}),
                "meterId",
                "is required (null ends the vehicle's assignment)",
            ),
            (
                json!({"type":"ASSIGNMENT","vehicleId":"V","meterId":5,"timestamp":"2026-02-10T10:00:00Z"}),
                "meterId",
                "must be a string or null",
            ),
            (json!([1]), "reading", "must be a JSON object"),
        ];
        for (input, field, error) in cases {
            assert_eq!(
                errors_of(input.clone()),
                vec![(field.to_owned(), error.to_owned())],
                "input {input}"
            );
        }
    }

    #[test]
    fn a_reading_carries_its_interval_or_a_register_not_both() {
        let register = without(
            with(vehicle(), "kwhRegisterDc", json!(1234.5)),
            "kwhDeliveredDc",
        );
        let Reading::Vehicle(v) = decode(register.clone()).unwrap() else {
            panic!()
        };
        assert_eq!(v.dc, Energy::Register(1234.5));
        let encoded: Value =
            serde_json::from_slice(&encode(&Reading::Vehicle(v)).unwrap()).unwrap();
        assert_eq!(encoded["kwhRegisterDc"], json!(1234.5));
        assert!(encoded.get("kwhDeliveredDc").is_none());
        let meter = json!({"type":"METER","meterId":"M","kwhRegisterAc":0,"voltage":230,"timestamp":"2026-02-10T10:00:00Z"});
        assert!(decode(meter).is_ok());
        assert_eq!(
            errors_of(with(vehicle(), "kwhRegisterDc", json!(1.0))),
            [(
                "kwhRegisterDc".to_owned(),
                "must not be given with kwhDeliveredDc: a reading carries the energy of its \
                 interval or a cumulative register, not both"
                    .to_owned()
            )]
        );
        assert_eq!(
            errors_of(without(vehicle(), "kwhDeliveredDc")),
            [(
                "kwhDeliveredDc".to_owned(),
                "is required (or kwhRegisterDc, a cumulative register)".to_owned()
            )]
        );
        assert_eq!(
            errors_of(with(register, "kwhRegisterDc", json!(-1))),
            [(
                "kwhRegisterDc".to_owned(),
                "must be between 0 and 1000000000 kWh".to_owned()
            )]
        );
    }

    #[test]
    fn all_bad_fields_are_reported_together() {
        let value = json!({"type":"METER","meterId":"","voltage":-3,"timestamp":"soon"});
        let fields: Vec<String> = decode(value)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["meterId", "kwhConsumedAc", "voltage", "timestamp"]);
    }

    #[test]
    fn readings_older_than_the_retention_are_refused_assignments_are_not() {
        let rules = ValidationRules {
            retention_days: Some(90),
            ..ValidationRules::default()
        };
        // now = 2026-02-10T12:00Z: the oldest accepted day is 2025-11-12.
        let reading =
            |at: &str| decode_value(&with(vehicle(), "timestamp", json!(at)), &rules, now());
        assert!(reading("2025-11-12T00:00:00Z").is_ok());
        let errors = reading("2025-11-11T23:59:59Z").unwrap_err();
        assert_eq!(
            errors[0].error,
            "is older than the 90-day retention (before 2025-11-12T00:00:00Z)"
        );
        let old_assignment = json!({"type":"ASSIGNMENT","vehicleId":"V","meterId":"M","timestamp":"2020-01-01T00:00:00Z"});
        assert!(decode_value(&old_assignment, &rules, now()).is_ok());
    }

    #[test]
    fn exactly_at_the_future_limit_is_accepted() {
        assert!(decode(with(vehicle(), "timestamp", json!("2026-02-10T12:05:00Z"))).is_ok());
    }

    #[test]
    fn bad_payloads_are_classified() {
        let rules = ValidationRules::default();
        assert!(matches!(
            decode_message(b"{not json", &rules, now()),
            Err(MessageError::NotJson(_))
        ));
        assert!(matches!(
            decode_message(b"{}", &rules, now()),
            Err(MessageError::Invalid(_))
        ));
    }
}
