//! The binary COPY encoder on arbitrary rows: the stream it writes must
//! parse back, by the format's own rules, to exactly the rows given (ids
//! byte for byte, floats bit for bit, timestamps to the microsecond).
#![no_main]

use chrono::DateTime;
use ingest_worker::copy::encode_rows;
use libfuzzer_sys::fuzz_target;
use shared::domain::{DeviceId, EventTime, MeterReading, VehicleReading};

/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn f64(&mut self) -> Option<f64> {
        Some(f64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn i64(&mut self) -> Option<i64> {
        Some(i64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<DeviceId> {
        let n = usize::from(self.u8()? % 80);
        DeviceId::parse(std::str::from_utf8(self.take(n)?).ok()?).ok()
    }
    fn time(&mut self) -> Option<EventTime> {
        // Within PostgreSQL's timestamptz range.
        let micros = self.i64()? % 200_000_000_000_000_000;
        Some(EventTime::new(DateTime::from_timestamp_micros(micros)?))
    }
}

/// Splits a binary COPY stream into tuples of fields, checking its framing.
fn parse(stream: &[u8], fields_per_row: i16) -> Vec<Vec<Vec<u8>>> {
    let mut input = Input { bytes: stream };
    assert_eq!(input.take(11).unwrap(), b"PGCOPY\n\xff\r\n\0");
    assert_eq!(input.take(4).unwrap(), [0, 0, 0, 0], "flags");
    assert_eq!(input.take(4).unwrap(), [0, 0, 0, 0], "extension length");
    let mut rows = Vec::new();
    loop {
        let count = i16::from_be_bytes(input.take(2).unwrap().try_into().unwrap());
        if count == -1 {
            assert!(input.bytes.is_empty(), "bytes after the trailer");
            return rows;
        }
        assert_eq!(count, fields_per_row);
        let fields = (0..count)
            .map(|_| {
                let length = i32::from_be_bytes(input.take(4).unwrap().try_into().unwrap());
                input
                    .take(usize::try_from(length).unwrap())
                    .unwrap()
                    .to_vec()
            })
            .collect();
        rows.push(fields);
    }
}

fn timestamp_field(at: &EventTime) -> Vec<u8> {
    (at.instant().timestamp_micros() - PG_EPOCH_MICROS)
        .to_be_bytes()
        .to_vec()
}

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input { bytes };
    let (mut vehicles, mut meters) = (Vec::new(), Vec::new());
    while let Some(kind) = input.u8() {
        if kind % 2 == 0 {
            let Some(vehicle_id) = input.id() else { break };
            let (Some(recorded_at), Some(soc), Some(kwh), Some(temp)) =
                (input.time(), input.f64(), input.f64(), input.f64())
            else {
                break;
            };
            vehicles.push(VehicleReading {
                vehicle_id,
                recorded_at,
                soc,
                kwh_delivered_dc: kwh,
                battery_temp: temp,
            });
        } else {
            let Some(meter_id) = input.id() else { break };
            let (Some(recorded_at), Some(kwh), Some(voltage)) =
                (input.time(), input.f64(), input.f64())
            else {
                break;
            };
            meters.push(MeterReading {
                meter_id,
                recorded_at,
                kwh_consumed_ac: kwh,
                voltage,
            });
        }
    }
    let vehicle_refs: Vec<&VehicleReading> = vehicles.iter().collect();
    let rows = parse(&encode_rows(&vehicle_refs), 5);
    assert_eq!(rows.len(), vehicles.len());
    for (row, v) in rows.iter().zip(&vehicles) {
        assert_eq!(row[0], v.vehicle_id.as_str().as_bytes());
        assert_eq!(row[1], timestamp_field(&v.recorded_at));
        assert_eq!(row[2], v.soc.to_be_bytes());
        assert_eq!(row[3], v.kwh_delivered_dc.to_be_bytes());
        assert_eq!(row[4], v.battery_temp.to_be_bytes());
    }
    let meter_refs: Vec<&MeterReading> = meters.iter().collect();
    let rows = parse(&encode_rows(&meter_refs), 4);
    assert_eq!(rows.len(), meters.len());
    for (row, m) in rows.iter().zip(&meters) {
        assert_eq!(row[0], m.meter_id.as_str().as_bytes());
        assert_eq!(row[1], timestamp_field(&m.recorded_at));
        assert_eq!(row[2], m.kwh_consumed_ac.to_be_bytes());
        assert_eq!(row[3], m.voltage.to_be_bytes());
    }
});
