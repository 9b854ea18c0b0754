//! Builders for readings in their wire form, so tests state data the way
//! producers send it.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use shared::domain::Reading;
use shared::wire::{decode_value, format_timestamp, ValidationRules};

pub fn vehicle(id: &str, at: DateTime<Utc>, soc: f64, kwh_dc: f64, battery_temp: f64) -> Value {
    json!({"type":"VEHICLE","vehicleId":id,"soc":soc,"kwhDeliveredDc":kwh_dc,"batteryTemp":battery_temp,"timestamp":format_timestamp(at)})
}

pub fn meter(id: &str, at: DateTime<Utc>, kwh_ac: f64, voltage: f64) -> Value {
    json!({"type":"METER","meterId":id,"kwhConsumedAc":kwh_ac,"voltage":voltage,"timestamp":format_timestamp(at)})
}

/// A vehicle reading carrying its battery system's cumulative DC register.
pub fn vehicle_register(
    id: &str,
    at: DateTime<Utc>,
    soc: f64,
    register: f64,
    battery_temp: f64,
) -> Value {
    json!({"type":"VEHICLE","vehicleId":id,"soc":soc,"kwhRegisterDc":register,"batteryTemp":battery_temp,"timestamp":format_timestamp(at)})
}

/// A meter reading carrying its cumulative AC register.
pub fn meter_register(id: &str, at: DateTime<Utc>, register: f64, voltage: f64) -> Value {
    json!({"type":"METER","meterId":id,"kwhRegisterAc":register,"voltage":voltage,"timestamp":format_timestamp(at)})
}

pub fn assignment(vehicle_id: &str, meter_id: Option<&str>, at: DateTime<Utc>) -> Value {
    json!({"type":"ASSIGNMENT","vehicleId":vehicle_id,"meterId":meter_id,"timestamp":format_timestamp(at)})
}

/// Decodes a wire value that the test knows is valid.
pub fn decode(value: &Value) -> Reading {
    decode_value(value, &ValidationRules::default(), Utc::now())
        .unwrap_or_else(|errors| panic!("test reading {value} is invalid: {errors:?}"))
}

/// The Kafka key a producer would use: the device id.
pub fn key_of(value: &Value) -> String {
    value
        .get("vehicleId")
        .or_else(|| value.get("meterId"))
        .and_then(Value::as_str)
        .expect("reading has a device id")
        .to_owned()
}

/// The Kafka message a producer would send for `value`: keyed by its device.
pub fn message(value: &Value) -> crate::kafka::RawMessage {
    (
        Some(key_of(value).into_bytes()),
        Some(value.to_string().into_bytes()),
    )
}
