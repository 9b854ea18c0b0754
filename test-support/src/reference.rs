//! The reference model: the domain of `DOMAIN.md` computed in memory from
//! the messages a test sent, with none of the service's code. Readings are
//! kept per device in event-time order (the first one sent of a device and
//! timestamp wins), registers are replayed in that order into interval
//! energies, and meter readings are given to vehicles by the assignment
//! rules. Tests compare every endpoint with it.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

/// The limits a register delta is judged by, as the worker's defaults
/// (`REGISTER_MAX_KW`, `REGISTER_RESET_TOLERANCE_KWH`), restated.
pub const MAX_KW: f64 = 1_000.0;
pub const RESET_TOLERANCE_KWH: f64 = 0.001;

/// One stored reading of a device, with its interval's energy.
#[derive(Clone, Debug)]
pub struct Stored {
    pub at: DateTime<Utc>,
    /// The energy of the interval ending here: stated, or replayed from registers.
    pub energy: f64,
    pub register: Option<f64>,
    /// The register rose implausibly: the energy is not counted.
    pub jump: bool,
    /// Battery temperature (vehicles) or voltage (meters).
    pub other: f64,
}

/// What a window (or a bucket) of one vehicle holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Charging {
    pub vehicle_readings: i64,
    pub sum_dc: f64,
    pub sum_temp: f64,
    pub meter_readings: i64,
    pub sum_ac: f64,
    /// Meters whose readings counted, in byte order.
    pub meter_ids: Vec<String>,
}

impl Charging {
    pub fn avg_battery_temp(&self) -> Option<f64> {
        (self.vehicle_readings > 0).then(|| self.sum_temp / self.vehicle_readings as f64)
    }
}

/// A meter's figures over a window.
#[derive(Clone, Debug, PartialEq)]
pub struct MeterFigures {
    pub readings: i64,
    pub sum_ac: f64,
    pub min_ac: f64,
    pub max_ac: f64,
    pub sum_voltage: f64,
    pub min_voltage: f64,
    pub max_voltage: f64,
}

/// A device's current state: its newest reading and its jumps.
#[derive(Clone, Debug, PartialEq)]
pub struct Current {
    pub at: DateTime<Utc>,
    pub energy: f64,
    pub register: Option<f64>,
    pub register_jumps: i64,
    pub last_register_jump_at: Option<DateTime<Utc>>,
}

/// A meter a vehicle charges through, from `.1` (or always) until `.2` (or for ever).
type Span = (String, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// An assignment: from `starts_at` on, `vehicle` charges through `meter`.
#[derive(Clone, Debug)]
struct Assignment {
    vehicle: String,
    starts_at: DateTime<Utc>,
    meter: Option<String>,
}

/// Every message of a test, as the domain says they add up.
#[derive(Default)]
pub struct Model {
    vehicles: BTreeMap<String, Vec<Stored>>,
    meters: BTreeMap<String, Vec<Stored>>,
    assignments: Vec<Assignment>,
}

/// A reading as sent, before the replay.
struct Sent {
    at: DateTime<Utc>,
    interval: Option<f64>,
    register: Option<f64>,
    other: f64,
}

impl Model {
    /// The model of `messages` in sending order (wire JSON, all valid).
    pub fn new(messages: &[Value]) -> Self {
        let mut vehicles: BTreeMap<String, BTreeMap<DateTime<Utc>, Sent>> = BTreeMap::new();
        let mut meters: BTreeMap<String, BTreeMap<DateTime<Utc>, Sent>> = BTreeMap::new();
        let mut assignments: BTreeMap<(String, DateTime<Utc>), Option<String>> = BTreeMap::new();
        for message in messages {
            let text = |key: &str| message[key].as_str().map(str::to_owned);
            let number = |key: &str| message[key].as_f64();
            let at: DateTime<Utc> = message["timestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("a valid timestamp");
            // PostgreSQL keeps microseconds.
            let at = at - TimeDelta::nanoseconds(i64::from(at.timestamp_subsec_nanos() % 1_000));
            match message["type"].as_str() {
                Some("VEHICLE") => {
                    vehicles
                        .entry(text("vehicleId").unwrap())
                        .or_default()
                        .entry(at)
                        .or_insert(Sent {
                            at,
                            interval: number("kwhDeliveredDc"),
                            register: number("kwhRegisterDc"),
                            other: number("batteryTemp").unwrap(),
                        });
                }
                Some("METER") => {
                    meters
                        .entry(text("meterId").unwrap())
                        .or_default()
                        .entry(at)
                        .or_insert(Sent {
                            at,
                            interval: number("kwhConsumedAc"),
                            register: number("kwhRegisterAc"),
                            other: number("voltage").unwrap(),
                        });
                }
                Some("ASSIGNMENT") => {
                    assignments
                        .entry((text("vehicleId").unwrap(), at))
                        .or_insert(text("meterId"));
                }
                other => panic!("not a reading: {other:?}"),
            }
        }
        let replay_all = |devices: BTreeMap<String, BTreeMap<DateTime<Utc>, Sent>>| {
            devices
                .into_iter()
                .map(|(id, sent)| (id, replay(sent.into_values())))
                .collect()
        };
        Self {
            vehicles: replay_all(vehicles),
            meters: replay_all(meters),
            assignments: assignments
                .into_iter()
                .map(|((vehicle, starts_at), meter)| Assignment {
                    vehicle,
                    starts_at,
                    meter,
                })
                .collect(),
        }
    }

    /// Every stored vehicle reading by vehicle, in event-time order.
    pub fn vehicle_readings(&self) -> &BTreeMap<String, Vec<Stored>> {
        &self.vehicles
    }

    /// Every stored meter reading by meter, in event-time order.
    pub fn meter_readings(&self) -> &BTreeMap<String, Vec<Stored>> {
        &self.meters
    }

    pub fn vehicle_ids(&self) -> impl Iterator<Item = &str> {
        self.vehicles.keys().map(String::as_str)
    }

    pub fn meter_ids(&self) -> impl Iterator<Item = &str> {
        self.meters.keys().map(String::as_str)
    }

    /// The spans `[start, end)` in which `vehicle` charges through each meter.
    fn spans(&self, vehicle: &str) -> Vec<Span> {
        let own: Vec<&Assignment> = self
            .assignments
            .iter()
            .filter(|a| a.vehicle == vehicle)
            .collect();
        let mut spans = Vec::new();
        for a in &own {
            let Some(meter) = &a.meter else { continue };
            let next_own = own
                .iter()
                .map(|n| n.starts_at)
                .filter(|s| *s > a.starts_at)
                .min();
            let taken = self
                .assignments
                .iter()
                .filter(|o| o.meter.as_ref() == Some(meter) && o.vehicle != vehicle)
                .filter(|o| {
                    o.starts_at > a.starts_at
                        || (o.starts_at == a.starts_at && o.vehicle.as_bytes() > vehicle.as_bytes())
                })
                .map(|o| o.starts_at)
                .min();
            spans.push((meter.clone(), Some(a.starts_at), earliest(next_own, taken)));
        }
        // Paired with the meter of its own id until either is assigned.
        let first_own = own.iter().map(|a| a.starts_at).min();
        let meter_taken = self
            .assignments
            .iter()
            .filter(|o| o.meter.as_deref() == Some(vehicle) && o.vehicle != vehicle)
            .map(|o| o.starts_at)
            .min();
        spans.push((vehicle.to_owned(), None, earliest(first_own, meter_taken)));
        spans
    }

    /// What `vehicle` holds in `(from, to]`.
    pub fn charging(&self, vehicle: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Charging {
        let mut charging = Charging::default();
        for reading in in_window(self.vehicles.get(vehicle), from, to) {
            charging.vehicle_readings += 1;
            charging.sum_dc += reading.energy;
            charging.sum_temp += reading.other;
        }
        for (meter, start, end) in self.spans(vehicle) {
            let mut counted = false;
            for reading in in_window(self.meters.get(&meter), from, to) {
                let after_start = start.is_none_or(|s| reading.at >= s);
                let before_end = end.is_none_or(|e| reading.at < e);
                if after_start && before_end {
                    charging.meter_readings += 1;
                    charging.sum_ac += reading.energy;
                    counted = true;
                }
            }
            if counted && !charging.meter_ids.contains(&meter) {
                charging.meter_ids.push(meter);
            }
        }
        charging
            .meter_ids
            .sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        charging
    }

    /// `vehicle`'s buckets of `size` over `(from, to]`: aligned to UTC
    /// multiples since 2000-01-01, left-open, the first and last clipped.
    pub fn series(
        &self,
        vehicle: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        size: TimeDelta,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>, Charging)> {
        let origin = DateTime::<Utc>::from_timestamp(946_684_800, 0).unwrap();
        let size_micros = size.num_microseconds().unwrap();
        let end_of = |at: DateTime<Utc>| {
            let since = (at - origin).num_microseconds().unwrap() - 1;
            origin
                + TimeDelta::microseconds(since.div_euclid(size_micros) * size_micros + size_micros)
        };
        let mut points = Vec::new();
        let mut end = end_of(from + TimeDelta::microseconds(1));
        loop {
            let (lo, hi) = ((end - size).max(from), end.min(to));
            points.push((lo, hi, self.charging(vehicle, lo, hi)));
            if end >= to {
                return points;
            }
            end += size;
        }
    }

    /// `meter`'s figures over `(from, to]`; `None` without readings.
    pub fn meter(
        &self,
        meter: &str,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Option<MeterFigures> {
        let readings: Vec<&Stored> = in_window(self.meters.get(meter), from, to).collect();
        let first = readings.first()?;
        let mut figures = MeterFigures {
            readings: 0,
            sum_ac: 0.0,
            min_ac: first.energy,
            max_ac: first.energy,
            sum_voltage: 0.0,
            min_voltage: first.other,
            max_voltage: first.other,
        };
        for reading in readings {
            figures.readings += 1;
            figures.sum_ac += reading.energy;
            figures.min_ac = figures.min_ac.min(reading.energy);
            figures.max_ac = figures.max_ac.max(reading.energy);
            figures.sum_voltage += reading.other;
            figures.min_voltage = figures.min_voltage.min(reading.other);
            figures.max_voltage = figures.max_voltage.max(reading.other);
        }
        Some(figures)
    }

    pub fn current_vehicle(&self, vehicle: &str) -> Option<Current> {
        current(self.vehicles.get(vehicle)?)
    }

    pub fn current_meter(&self, meter: &str) -> Option<Current> {
        current(self.meters.get(meter)?)
    }

    /// Every register reading flagged as a jump, of both streams.
    pub fn jumps(&self) -> usize {
        self.vehicles
            .values()
            .chain(self.meters.values())
            .flatten()
            .filter(|r| r.jump)
            .count()
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn in_window(
    readings: Option<&Vec<Stored>>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> impl Iterator<Item = &Stored> {
    readings
        .into_iter()
        .flatten()
        .filter(move |r| r.at > from && r.at <= to)
}

fn current(readings: &[Stored]) -> Option<Current> {
    let newest = readings.last()?;
    let jumps: Vec<&Stored> = readings.iter().filter(|r| r.jump).collect();
    Some(Current {
        at: newest.at,
        energy: newest.energy,
        register: newest.register,
        register_jumps: jumps.len() as i64,
        last_register_jump_at: jumps.last().map(|r| r.at),
    })
}

/// One device's readings in event-time order, registers turned into the
/// energy of each interval: the register minus the previous reading's; none
/// for the first reading or after an interval reading; after a fall beyond
/// the tolerance (a reset) the new register; none for a smaller fall
/// (jitter); none, and flagged, when more than MAX_KW over the elapsed time
/// (plus the tolerance) would have been drawn.
fn replay(sent: impl Iterator<Item = Sent>) -> Vec<Stored> {
    let mut stored: Vec<Stored> = Vec::new();
    for reading in sent {
        let (energy, jump) = match (reading.interval, reading.register) {
            (Some(kwh), None) => (kwh, false),
            (None, Some(register)) => match stored.last() {
                Some(Stored {
                    at,
                    register: Some(previous),
                    ..
                }) => {
                    let hours = (reading.at - *at).num_microseconds().unwrap() as f64 / 3.6e9;
                    let ceiling = MAX_KW * hours + RESET_TOLERANCE_KWH;
                    let counted = if register >= *previous {
                        register - previous
                    } else if previous - register <= RESET_TOLERANCE_KWH {
                        0.0
                    } else {
                        register
                    };
                    if counted > ceiling {
                        (0.0, true)
                    } else {
                        (counted, false)
                    }
                }
                _ => (0.0, false),
            },
            _ => panic!("a reading states its interval's energy or a register"),
        };
        stored.push(Stored {
            at: reading.at,
            energy,
            register: reading.register,
            jump,
            other: reading.other,
        });
    }
    stored
}

/// Whether `answered` is how the API may answer a figure of two decimals
/// whose exact value is `exact`.
pub fn answers_hundredths(answered: f64, exact: f64) -> bool {
    answered == crate::oracle::answered_hundredths(answered)
        && (answered - exact).abs() <= 0.005 + 1e-9 * (1.0 + exact.abs())
}

/// Checks a performance answer's figures (not its meters) against what the
/// model holds, each to the API's rounding.
pub fn assert_answers_charging(got: &Value, want: &Charging, context: &str) {
    use crate::oracle::answers_kwh;
    assert_eq!(
        got["vehicleReadings"], want.vehicle_readings,
        "{context}: {got}"
    );
    assert_eq!(
        got["meterReadings"], want.meter_readings,
        "{context}: {got}"
    );
    assert!(
        answers_kwh(got["sumDC"].as_f64().unwrap(), want.sum_dc),
        "{context}: {got} vs {want:?}"
    );
    assert!(
        answers_kwh(got["sumAC"].as_f64().unwrap(), want.sum_ac),
        "{context}: {got} vs {want:?}"
    );
    match (got["efficiency"].as_f64(), want.sum_ac > 0.0) {
        (Some(e), true) => assert!(
            answers_hundredths(e, 100.0 * want.sum_dc / want.sum_ac),
            "{context}: {got}"
        ),
        (None, false) => {}
        _ => panic!("{context}: efficiency {got} vs {want:?}"),
    }
    match (got["avgBatteryTemp"].as_f64(), want.avg_battery_temp()) {
        (Some(t), Some(w)) => assert!(answers_hundredths(t, w), "{context}: {got}"),
        (None, None) => {}
        _ => panic!("{context}: temperature {got} vs {want:?}"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_domain_example() {
        // DOMAIN.md: one meter, minutes; 100.75 @2.5 arrives last.
        let minute = |m: f64| {
            let base: DateTime<Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
            base + TimeDelta::seconds((m * 60.0) as i64)
        };
        let reading = |m: f64, register: f64| {
            json!({"type": "METER", "meterId": "M", "kwhRegisterAc": register, "voltage": 230,
                   "timestamp": shared::wire::format_timestamp(minute(m))})
        };
        let mut messages: Vec<Value> = [
            (1.0, 100.0),
            (2.0, 100.5),
            (3.0, 101.25),
            (4.0, 0.5),
            (5.0, 1.0),
        ]
        .into_iter()
        .map(|(m, r)| reading(m, r))
        .collect();
        let model = Model::new(&messages);
        assert_eq!(
            model.meter("M", minute(1.0), minute(5.0)).unwrap().sum_ac,
            2.25
        );
        messages.push(reading(2.5, 100.75));
        let model = Model::new(&messages);
        assert_eq!(
            model.meter("M", minute(1.0), minute(5.0)).unwrap().sum_ac,
            2.25
        );
        assert_eq!(
            model.meter("M", minute(2.0), minute(2.75)).unwrap().sum_ac,
            0.25
        );
        assert_eq!(model.current_meter("M").unwrap().energy, 0.5);
    }
}
