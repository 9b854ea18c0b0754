//! The binary COPY encoder on arbitrary rows: the stream it writes must
//! parse back, by the format's own rules, to exactly the rows given (ids
//! byte for byte, floats bit for bit, timestamps to the microsecond, an
//! absent register as NULL, a register reading's energy NaN until derived).
#![no_main]

use chrono::DateTime;
use ingest_worker::copy::encode_rows;
use ingest_worker::stream::HistoryRow;
use libfuzzer_sys::fuzz_target;
use shared::domain::{DeviceId, Energy, EventTime, MeterReading, VehicleReading};
use shared::register::Derived;

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

/// Splits a binary COPY stream into tuples of fields (`None`: NULL),
/// checking its framing.
fn parse(stream: &[u8], fields_per_row: i16) -> Vec<Vec<Option<Vec<u8>>>> {
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
                if length == -1 {
                    return None;
                }
                Some(
                    input
                        .take(usize::try_from(length).unwrap())
                        .unwrap()
                        .to_vec(),
                )
            })
            .collect();
        rows.push(fields);
    }
}

fn timestamp_field(at: &EventTime) -> Option<Vec<u8>> {
    Some(
        (at.instant().timestamp_micros() - PG_EPOCH_MICROS)
            .to_be_bytes()
            .to_vec(),
    )
}

fn float8(value: f64) -> Option<Vec<u8>> {
    Some(value.to_be_bytes().to_vec())
}

/// An energy of either form, from the kind byte's upper bits.
fn energy(kind: u8, kwh: f64) -> Energy {
    if kind & 2 == 0 {
        Energy::Interval(kwh)
    } else {
        Energy::Register(kwh)
    }
}

/// What a register reading's energy was derived as, from the kind byte.
fn derived(kind: u8, kwh: f64) -> Option<Derived> {
    match kind >> 2 & 3 {
        0 => None,
        1 => Some(Derived::Counted(kwh)),
        2 => Some(Derived::Jump),
        _ => Some(Derived::Baseline),
    }
}

/// The energy and register fields and the jump flag a row must carry.
fn energy_fields(row: &HistoryRow<'_, impl Sized>, energy: Energy) -> [Option<Vec<u8>>; 3] {
    let (stored, register) = match (energy, row.derived) {
        (Energy::Interval(kwh), _) => (kwh, None),
        (Energy::Register(register), Some(derived)) => (derived.energy(), float8(register)),
        (Energy::Register(register), None) => (f64::NAN, float8(register)),
    };
    let jump = matches!(row.derived, Some(Derived::Jump)) && energy.register().is_some();
    [float8(stored), register, Some(vec![u8::from(jump)])]
}

fuzz_target!(|bytes: &[u8]| {
    let mut input = Input { bytes };
    let (mut vehicles, mut meters) = (Vec::new(), Vec::new());
    let (mut vehicle_derived, mut meter_derived) = (Vec::new(), Vec::new());
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
                dc: energy(kind, kwh),
                battery_temp: temp,
            });
            vehicle_derived.push(derived(kind, kwh));
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
                ac: energy(kind, kwh),
                voltage,
            });
            meter_derived.push(derived(kind, kwh));
        }
    }
    // An interval reading is never derived.
    let history =
        |energy: Energy, derived: Option<Derived>| derived.filter(|_| energy.register().is_some());
    let vehicle_rows: Vec<HistoryRow<VehicleReading>> = vehicles
        .iter()
        .zip(&vehicle_derived)
        .map(|(reading, &derived)| HistoryRow {
            reading,
            derived: history(reading.dc, derived),
        })
        .collect();
    let rows = parse(&encode_rows(&vehicle_rows), 7);
    assert_eq!(rows.len(), vehicles.len());
    for ((row, v), history_row) in rows.iter().zip(&vehicles).zip(&vehicle_rows) {
        let [energy, register, jump] = energy_fields(history_row, v.dc);
        assert_eq!(row[0].as_deref(), Some(v.vehicle_id.as_str().as_bytes()));
        assert_eq!(row[1], timestamp_field(&v.recorded_at));
        assert_eq!(row[2], float8(v.soc));
        assert_eq!(row[3], energy);
        assert_eq!(row[4], float8(v.battery_temp));
        assert_eq!(row[5], register);
        assert_eq!(row[6], jump);
    }
    let meter_rows: Vec<HistoryRow<MeterReading>> = meters
        .iter()
        .zip(&meter_derived)
        .map(|(reading, &derived)| HistoryRow {
            reading,
            derived: history(reading.ac, derived),
        })
        .collect();
    let rows = parse(&encode_rows(&meter_rows), 5);
    assert_eq!(rows.len(), meters.len());
    for ((row, m), history_row) in rows.iter().zip(&meters).zip(&meter_rows) {
        let [energy, register, jump] = energy_fields(history_row, m.ac);
        assert_eq!(row[0].as_deref(), Some(m.meter_id.as_str().as_bytes()));
        assert_eq!(row[1], timestamp_field(&m.recorded_at));
        assert_eq!(row[2], energy);
        assert_eq!(row[3], float8(m.voltage));
        assert_eq!(row[4], register);
        assert_eq!(row[5], jump);
    }
});
