//! OCPP meter values as readings: how a charging station's
//! `Energy.Active.Import.Register` becomes METER readings with
//! `kwhRegisterAc`.
//!
//! Input is an OCPP-J CALL frame, `[2, "<messageId>", "<action>", {payload}]`,
//! as a central system receives it from a station:
//!
//! - OCPP 1.6J `MeterValues` (`connectorId`, `meterValue[]`);
//! - OCPP 2.0.1 `MeterValues` (`evseId`, `meterValue[]`) and
//!   `TransactionEvent` (`evse.id`, `meterValue[]`).
//!
//! Each `meterValue` (a timestamp and its `sampledValue[]`) gives at most one
//! reading, of meter `<station>-<connector>` (`<station>` alone for
//! connector or EVSE 0, the station's main meter):
//!
//! - **measurand**: `Energy.Active.Import.Register` (OCPP's default when
//!   absent) is the register; `Voltage` the voltage; others are ignored.
//! - **location**: `Inlet` (the grid side, what the fleet is billed for) is
//!   preferred to `Outlet` (OCPP's default); `EV`, `Cable` and `Body` are
//!   not the charger's meter and are ignored.
//! - **phase**: the total (no phase) is used; without it, the sum of the
//!   three phases' registers (L1, L2, L3, or L1-N, L2-N, L3-N). Voltage is
//!   the phase-less value, or the mean of the phases given.
//! - **unit**: `Wh` (the default) or `kWh` for energy, with 2.0.1's
//!   `unitOfMeasure.multiplier` (a power of ten); `V` for voltage.
//! - **context**: every context (`Sample.Periodic`, `Sample.Clock`,
//!   `Transaction.Begin`/`End`, `Trigger`, `Interruption.*`) is a reading
//!   of the same register; two at one timestamp are one reading.
//! - **format**: 1.6 `SignedData` values are not numbers and are ignored.
//!
//! A `meterValue` with no energy register is skipped (stations send SoC,
//! power or current alone). One with a register but no voltage takes the
//! caller's nominal voltage, or is an error naming the way out. The readings
//! come out as the original API's JSON, so they are validated like any other.

use serde_json::{json, Map, Value};

use crate::wire::FieldError;

/// The OCPP version a frame speaks (its WebSocket subprotocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V16,
    V201,
}

impl Version {
    /// From the version in a URL: `1.6` or `2.0.1`.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "1.6" | "1.6J" | "ocpp1.6" => Some(Version::V16),
            "2.0.1" | "ocpp2.0.1" => Some(Version::V201),
            _ => None,
        }
    }
}

/// What one frame gave.
#[derive(Debug, PartialEq)]
pub struct Converted {
    /// METER readings in the original API's JSON.
    pub readings: Vec<Value>,
    /// `meterValue`s without an energy register.
    pub skipped: usize,
}

const REGISTER: &str = "Energy.Active.Import.Register";
const PHASES: [[&str; 3]; 2] = [["L1", "L2", "L3"], ["L1-N", "L2-N", "L3-N"]];

/// The METER readings of one OCPP-J CALL frame from station `station`;
/// `nominal_voltage` stands in for a missing `Voltage` sample. Errors name
/// the JSON path of what is wrong.
pub fn meter_readings(
    version: Version,
    station: &str,
    frame: &Value,
    nominal_voltage: Option<f64>,
) -> Result<Converted, Vec<FieldError>> {
    let (action, payload) = call(frame)?;
    let (connector, meter_values) = match (version, action) {
        (Version::V16, "MeterValues") => (
            integer(payload, "connectorId", "payload.connectorId")?,
            payload.get("meterValue"),
        ),
        (Version::V201, "MeterValues") => (
            integer(payload, "evseId", "payload.evseId")?,
            payload.get("meterValue"),
        ),
        (Version::V201, "TransactionEvent") => {
            let Some(evse) = payload.get("evse").and_then(Value::as_object) else {
                return Err(vec![FieldError::new(
                    "payload.evse",
                    "is required to place the meter values: the station sends it in a \
                     transaction's first event; forward it with every event",
                )]);
            };
            (
                integer(evse, "id", "payload.evse.id")?,
                payload.get("meterValue"),
            )
        }
        (_, other) => {
            let expected = match version {
                Version::V16 => "MeterValues",
                Version::V201 => "MeterValues or TransactionEvent",
            };
            return Err(vec![FieldError::new(
                "action",
                format!("must be {expected} (meter values), not {other:?}"),
            )]);
        }
    };
    let meter_id = if connector == 0 {
        station.to_owned()
    } else {
        format!("{station}-{connector}")
    };
    let meter_values = match meter_values {
        // A TransactionEvent without meter values (a state change) gives none.
        None if action == "TransactionEvent" => {
            return Ok(Converted {
                readings: Vec::new(),
                skipped: 0,
            })
        }
        None => return Err(vec![FieldError::new("payload.meterValue", "is required")]),
        Some(Value::Array(values)) => values,
        Some(_) => {
            return Err(vec![FieldError::new(
                "payload.meterValue",
                "must be an array",
            )])
        }
    };
    let mut converted = Converted {
        readings: Vec::new(),
        skipped: 0,
    };
    let mut errors = Vec::new();
    for (i, meter_value) in meter_values.iter().enumerate() {
        let path = format!("payload.meterValue[{i}]");
        match reading(version, &meter_id, meter_value, nominal_voltage, &path) {
            Ok(Some(reading)) => converted.readings.push(reading),
            Ok(None) => converted.skipped += 1,
            Err(error) => errors.extend(error),
        }
    }
    if errors.is_empty() {
        Ok(converted)
    } else {
        Err(errors)
    }
}

/// The action and payload of a CALL frame.
fn call(frame: &Value) -> Result<(&str, &Map<String, Value>), Vec<FieldError>> {
    let refuse = |error: &str| vec![FieldError::new("frame", error)];
    let Some(items) = frame.as_array() else {
        return Err(refuse(
            "must be an OCPP-J CALL frame: [2, \"<messageId>\", \"<action>\", {payload}]",
        ));
    };
    match items.as_slice() {
        [kind, id, action, payload] if kind.as_u64() == Some(2) && id.is_string() => {
            let action = action
                .as_str()
                .ok_or_else(|| vec![FieldError::new("action", "must be a string")])?;
            let payload = payload
                .as_object()
                .ok_or_else(|| vec![FieldError::new("payload", "must be an object")])?;
            Ok((action, payload))
        }
        _ => Err(refuse(
            "must be an OCPP-J CALL frame: [2, \"<messageId>\", \"<action>\", {payload}] \
             (results and errors carry no meter values)",
        )),
    }
}

fn integer(object: &Map<String, Value>, key: &str, path: &str) -> Result<u64, Vec<FieldError>> {
    object
        .get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| vec![FieldError::new(path, "must be an integer of 0 or more")])
}

/// One sampled value, as far as the mapping cares.
struct Sample<'a> {
    measurand: &'a str,
    location: &'a str,
    phase: Option<&'a str>,
    /// In the sample's own unit, multiplier applied.
    value: f64,
    unit: &'a str,
}

/// The reading of one `meterValue`, or `None` when it has no energy register.
fn reading(
    version: Version,
    meter_id: &str,
    meter_value: &Value,
    nominal_voltage: Option<f64>,
    path: &str,
) -> Result<Option<Value>, Vec<FieldError>> {
    let Some(object) = meter_value.as_object() else {
        return Err(vec![FieldError::new(path, "must be an object")]);
    };
    let Some(timestamp) = object.get("timestamp").and_then(Value::as_str) else {
        return Err(vec![FieldError::new(
            &format!("{path}.timestamp"),
            "is required (a string)",
        )]);
    };
    let Some(sampled) = object.get("sampledValue").and_then(Value::as_array) else {
        return Err(vec![FieldError::new(
            &format!("{path}.sampledValue"),
            "must be an array",
        )]);
    };
    let mut samples = Vec::new();
    for (j, value) in sampled.iter().enumerate() {
        if let Some(sample) = sample(version, value, &format!("{path}.sampledValue[{j}]"))? {
            samples.push(sample);
        }
    }
    let Some(kwh) = register_kwh(&samples).map_err(|e| vec![FieldError::new(path, e)])? else {
        return Ok(None);
    };
    let voltage = match voltage(&samples).or(nominal_voltage) {
        Some(voltage) => voltage,
        None => {
            return Err(vec![FieldError::new(
                path,
                "has an energy register but no Voltage sampled value: pass nominalVoltage \
                 to use the grid's nominal voltage",
            )])
        }
    };
    Ok(Some(json!({
        "type": "METER",
        "meterId": meter_id,
        "kwhRegisterAc": kwh,
        "voltage": voltage,
        "timestamp": timestamp,
    })))
}

/// A sampled value; `None` for what the mapping does not use (signed data).
fn sample<'a>(
    version: Version,
    value: &'a Value,
    path: &str,
) -> Result<Option<Sample<'a>>, Vec<FieldError>> {
    let Some(object) = value.as_object() else {
        return Err(vec![FieldError::new(path, "must be an object")]);
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str);
    let (number, unit, multiplier) = match version {
        Version::V16 => {
            if text("format") == Some("SignedData") {
                return Ok(None);
            }
            let number = text("value").and_then(|v| v.trim().parse::<f64>().ok());
            (number, text("unit"), 0)
        }
        Version::V201 => {
            let unit_of_measure = object.get("unitOfMeasure").and_then(Value::as_object);
            let unit = unit_of_measure
                .and_then(|u| u.get("unit"))
                .and_then(Value::as_str);
            let multiplier = unit_of_measure
                .and_then(|u| u.get("multiplier"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            (
                object.get("value").and_then(Value::as_f64),
                unit,
                multiplier,
            )
        }
    };
    let Some(number) = number.filter(|n| n.is_finite()) else {
        return Err(vec![FieldError::new(
            &format!("{path}.value"),
            "must be a number",
        )]);
    };
    let measurand = text("measurand").unwrap_or(REGISTER);
    let default_unit = if measurand == "Voltage" { "V" } else { "Wh" };
    Ok(Some(Sample {
        measurand,
        location: text("location").unwrap_or("Outlet"),
        phase: text("phase"),
        value: number * 10f64.powi(multiplier.clamp(-30, 30) as i32),
        unit: unit.unwrap_or(default_unit),
    }))
}

/// The register in kWh: the preferred location's total, or its three
/// phases summed; `None` when there is no register.
fn register_kwh(samples: &[Sample]) -> Result<Option<f64>, String> {
    for location in ["Inlet", "Outlet"] {
        let registers: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.measurand == REGISTER && s.location == location)
            .collect();
        if registers.is_empty() {
            continue;
        }
        let total = registers
            .iter()
            .find(|s| s.phase.is_none())
            .map(|s| vec![*s]);
        let phases = || {
            PHASES.iter().find_map(|names| {
                names
                    .iter()
                    .map(|name| registers.iter().find(|s| s.phase == Some(name)).copied())
                    .collect::<Option<Vec<&Sample>>>()
            })
        };
        let Some(parts) = total.or_else(phases) else {
            return Err(format!(
                "has {REGISTER} at {location} for some phases only: send the total or all three phases"
            ));
        };
        let mut kwh = 0.0;
        for part in parts {
            kwh += match part.unit {
                "Wh" => part.value / 1000.0,
                "kWh" => part.value,
                other => return Err(format!("has {REGISTER} in {other:?}: Wh or kWh expected")),
            };
        }
        return Ok(Some(kwh));
    }
    Ok(None)
}

/// The voltage in V: the phase-less sample, or the mean of the phases'.
fn voltage(samples: &[Sample]) -> Option<f64> {
    let voltages: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.measurand == "Voltage" && s.unit == "V")
        .collect();
    if let Some(total) = voltages.iter().find(|s| s.phase.is_none()) {
        return Some(total.value);
    }
    (!voltages.is_empty())
        .then(|| voltages.iter().map(|s| s.value).sum::<f64>() / voltages.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1.6J MeterValues as stations send it: a periodic sample with the
    /// register in Wh, current and voltage per phase, and a signed copy.
    fn v16_meter_values() -> Value {
        json!([2, "19223201", "MeterValues", {
            "connectorId": 2,
            "transactionId": 170,
            "meterValue": [{
                "timestamp": "2026-03-01T10:00:00Z",
                "sampledValue": [
                    {"value": "1234567", "context": "Sample.Periodic", "format": "Raw",
                     "measurand": "Energy.Active.Import.Register", "location": "Outlet", "unit": "Wh"},
                    {"value": "16.1", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                    {"value": "231.0", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                    {"value": "229.0", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
                    {"value": "0A1B2C", "format": "SignedData", "measurand": "Energy.Active.Import.Register"}
                ]
            }, {
                "timestamp": "2026-03-01T10:01:00Z",
                "sampledValue": [{"value": "48", "measurand": "SoC", "location": "EV", "unit": "Percent"}]
            }]
        }])
    }

    #[test]
    fn a_16_meter_values_frame_becomes_a_register_reading_in_kwh() {
        let converted = meter_readings(Version::V16, "CP-7", &v16_meter_values(), None).unwrap();
        assert_eq!(converted.skipped, 1, "the SoC-only meter value");
        assert_eq!(
            converted.readings,
            [
                json!({"type": "METER", "meterId": "CP-7-2", "kwhRegisterAc": 1234.567,
                    "voltage": 230.0, "timestamp": "2026-03-01T10:00:00Z"})
            ]
        );
    }

    #[test]
    fn a_201_transaction_event_with_phases_multiplier_and_both_locations() {
        let frame = json!([2, "a1b2", "TransactionEvent", {
            "eventType": "Updated",
            "timestamp": "2026-03-01T10:05:00Z",
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 4,
            "transactionInfo": {"transactionId": "tx-9"},
            "evse": {"id": 1, "connectorId": 1},
            "meterValue": [{
                "timestamp": "2026-03-01T10:05:00Z",
                "sampledValue": [
                    {"value": 100.5, "measurand": "Energy.Active.Import.Register", "location": "Outlet",
                     "unitOfMeasure": {"unit": "kWh"}},
                    {"value": 40.0, "measurand": "Energy.Active.Import.Register", "location": "Inlet",
                     "phase": "L1", "unitOfMeasure": {"unit": "Wh", "multiplier": 3}},
                    {"value": 35.5, "measurand": "Energy.Active.Import.Register", "location": "Inlet",
                     "phase": "L2", "unitOfMeasure": {"unit": "kWh"}},
                    {"value": 25.5, "measurand": "Energy.Active.Import.Register", "location": "Inlet",
                     "phase": "L3", "unitOfMeasure": {"unit": "kWh"}}
                ]
            }]
        }]);
        let converted = meter_readings(Version::V201, "CS-1", &frame, Some(400.0)).unwrap();
        // Inlet wins over Outlet; its phases sum; no voltage sample, so the nominal one.
        assert_eq!(
            converted.readings,
            [
                json!({"type": "METER", "meterId": "CS-1-1", "kwhRegisterAc": 101.0,
                    "voltage": 400.0, "timestamp": "2026-03-01T10:05:00Z"})
            ]
        );
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_with_the_way_out() {
        let errors = |version, frame: Value, nominal| {
            meter_readings(version, "CS", &frame, nominal)
                .unwrap_err()
                .into_iter()
                .map(|e| format!("{} {}", e.field, e.error))
                .collect::<Vec<_>>()
        };
        let no_voltage = json!([2, "1", "MeterValues", {"evseId": 0, "meterValue": [
            {"timestamp": "2026-03-01T10:00:00Z", "sampledValue": [{"value": 5.0}]}]}]);
        assert!(errors(Version::V201, no_voltage.clone(), None)[0].contains("pass nominalVoltage"));
        let ok = meter_readings(Version::V201, "CS", &no_voltage, Some(230.0)).unwrap();
        // EVSE 0 is the station's main meter; Wh by default.
        assert_eq!(ok.readings[0]["meterId"], "CS");
        assert_eq!(ok.readings[0]["kwhRegisterAc"], 0.005);
        assert_eq!(
            errors(Version::V16, json!([3, "1", {}]), None),
            ["frame must be an OCPP-J CALL frame: [2, \"<messageId>\", \"<action>\", {payload}] \
              (results and errors carry no meter values)"]
        );
        assert_eq!(
            errors(Version::V16, json!([2, "1", "TransactionEvent", {}]), None),
            ["action must be MeterValues (meter values), not \"TransactionEvent\""]
        );
        assert!(errors(
            Version::V201,
            json!([2, "1", "TransactionEvent", {"eventType": "Updated", "meterValue": []}]),
            None
        )[0]
        .starts_with("payload.evse is required"));
        let varh = json!([2, "1", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-03-01T10:00:00Z", "sampledValue": [{"value": "5", "unit": "varh"}]}]}]);
        assert_eq!(
            errors(Version::V16, varh, Some(230.0)),
            ["payload.meterValue[0] has Energy.Active.Import.Register in \"varh\": Wh or kWh expected"]
        );
        let one_phase = json!([2, "1", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-03-01T10:00:00Z", "sampledValue": [{"value": "5", "phase": "L1"}]}]}]);
        assert!(errors(Version::V16, one_phase, Some(230.0))[0].contains("some phases only"));
        let not_a_number = json!([2, "1", "MeterValues", {"connectorId": 1, "meterValue": [
            {"timestamp": "2026-03-01T10:00:00Z", "sampledValue": [{"value": "lots"}]}]}]);
        assert_eq!(
            errors(Version::V16, not_a_number, Some(230.0)),
            ["payload.meterValue[0].sampledValue[0].value must be a number"]
        );
    }
}
