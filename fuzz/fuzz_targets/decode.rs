//! Any bytes through the decoder the gateway and the worker share: it must
//! never panic, and whatever it accepts must encode to a message that
//! decodes to the same reading.
#![no_main]

use chrono::{TimeDelta, TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use shared::wire::{decode_message, encode, ValidationRules};

fuzz_target!(|bytes: &[u8]| {
    let rules = ValidationRules {
        max_future: TimeDelta::seconds(300),
        retention_days: Some(90),
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 12, 0, 0).unwrap();
    if let Ok(reading) = decode_message(bytes, &rules, now) {
        let encoded = encode(&reading).expect("an accepted reading encodes");
        let again = decode_message(&encoded, &rules, now).expect("its encoding decodes");
        assert_eq!(again, reading);
    }
});
