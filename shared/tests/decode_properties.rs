//! Properties of the decoder every message passes through, gateway and
//! worker alike: it never panics, whatever the bytes, and a reading it
//! accepts encodes to a message that decodes to the same reading.

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value};
use shared::wire::{decode_message, encode, ValidationRules};

fn rules() -> ValidationRules {
    ValidationRules {
        max_future: TimeDelta::seconds(300),
        retention_days: Some(90),
    }
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap()
}

/// JSON values shaped like readings: the real keys, hostile values.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,80}".prop_map(Value::String),
        prop_oneof![
            Just("VEHICLE"),
            Just("METER"),
            Just("ASSIGNMENT"),
            Just("2026-11-29T11:59:00Z"),
            Just("2026-11-29T11:59:60Z"),
            Just("0001-01-01T00:00:00+14:00"),
        ]
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    let keys = prop_oneof![
        Just("type"),
        Just("vehicleId"),
        Just("meterId"),
        Just("soc"),
        Just("kwhDeliveredDc"),
        Just("kwhConsumedAc"),
        Just("batteryTemp"),
        Just("voltage"),
        Just("timestamp"),
        Just("x"),
    ];
    leaf.prop_recursive(4, 64, 10, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((keys.clone(), inner), 0..10).prop_map(|pairs| {
                Value::Object(
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k.to_owned(), v))
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_message(&bytes, &rules(), now());
    }

    #[test]
    fn decoding_reading_shaped_json_never_panics_and_accepted_readings_round_trip(value in json_value()) {
        let text = value.to_string();
        if let Ok(reading) = decode_message(text.as_bytes(), &rules(), now()) {
            let encoded = encode(&reading).unwrap();
            prop_assert_eq!(decode_message(&encoded, &rules(), now()).unwrap(), reading);
        }
    }

    #[test]
    fn valid_vehicle_readings_round_trip(
        id in "[^\\p{C}\\s][^\\p{C}]{0,62}[^\\p{C}\\s]",
        soc in 0.0f64..=100.0,
        kwh in 0.0f64..=1_000_000.0,
        temperature in -60.0f64..=120.0,
        micros_ago in 0i64..80 * 86_400 * 1_000_000,
    ) {
        let at = now() - TimeDelta::microseconds(micros_ago);
        let message = serde_json::json!({
            "type": "VEHICLE", "vehicleId": id, "soc": soc, "kwhDeliveredDc": kwh,
            "batteryTemp": temperature, "timestamp": shared::wire::format_timestamp(at),
        });
        let decoded = decode_message(message.to_string().as_bytes(), &rules(), now());
        // Ids with a bidirectional control or "."/".." are refused; the rest round-trip.
        if let Ok(reading) = decoded {
            let again = decode_message(&encode(&reading).unwrap(), &rules(), now()).unwrap();
            prop_assert_eq!(again, reading);
        } else {
            let bidi = id
                .chars()
                .any(|c| matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'));
            prop_assert!(bidi || id == "..", "refused: {:?}", id);
        }
    }
}
