//! Generated readings with their exact expected effect on the database, for
//! tests that must prove "nothing lost, nothing doubled".
//!
//! kWh values are multiples of 1/16 (1/256 for register fleets), so every
//! sum and every register difference is exact in any order and totals can
//! be compared with `==`.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::kafka::RawMessage;
use crate::readings::{key_of, meter, meter_register, vehicle, vehicle_register};

/// Per device: number of readings, sum of kWh (for register devices, of
/// the intervals derived from the registers), (event time, value) of the
/// newest reading, which current state must hold, and (readings, kWh) as
/// the hourly and the five-minute rollups count them, which must equal the
/// first two.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceTotals {
    pub readings: i64,
    pub kwh: f64,
    pub newest: Option<(DateTime<Utc>, f64)>,
    pub rolled_up: (i64, f64),
    pub rolled_up_5min: (i64, f64),
}

/// What the database must hold once every reading of a [`Fleet`] is stored.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Expected {
    pub vehicles: BTreeMap<String, DeviceTotals>,
    pub meters: BTreeMap<String, DeviceTotals>,
}

pub struct Fleet {
    pub readings: Vec<Value>,
    pub expected: Expected,
}

fn kwh(step: i64, device: i64) -> f64 {
    ((step * 7 + device * 3) % 16) as f64 / 16.0
}

/// A device's id: `{prefix}{kind}-{n}`, the kind in lower case for every
/// other device, so that byte order and a database collation such as
/// en_US sort the ids differently ("V-1" < "v-0" in bytes, not in en_US).
fn device_id(prefix: &str, kind: &str, device: i64) -> String {
    if device % 2 == 0 {
        format!("{prefix}{}-{device}", kind.to_lowercase())
    } else {
        format!("{prefix}{kind}-{device}")
    }
}

/// How the devices of a generated fleet report energy.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Interval,
    /// Cumulative registers: each device's count starts somewhere, rises by
    /// multiples of 1/256 kWh (below the jump ceiling at one reading a
    /// second) and resets every 97 steps.
    Register,
}

impl Fleet {
    /// `n` unique readings from `devices` vehicles and as many meters, one
    /// per device per second from `start`, interleaved across devices.
    /// `prefix` keeps ids of concurrent tests apart.
    pub fn generate(prefix: &str, n: usize, devices: usize, start: DateTime<Utc>) -> Self {
        Self::generate_as(prefix, n, devices, start, Form::Interval)
    }

    /// The same with every device reporting cumulative registers; the
    /// expected kWh are the intervals an in-order replay derives.
    pub fn generate_registers(
        prefix: &str,
        n: usize,
        devices: usize,
        start: DateTime<Utc>,
    ) -> Self {
        Self::generate_as(prefix, n, devices, start, Form::Register)
    }

    fn generate_as(
        prefix: &str,
        n: usize,
        devices: usize,
        start: DateTime<Utc>,
        form: Form,
    ) -> Self {
        let mut readings = Vec::with_capacity(n);
        let mut expected = Expected::default();
        let devices = devices.max(1) as i64;
        for i in 0..n as i64 {
            let slot = i / 2;
            let (device, step) = (slot % devices, slot / devices);
            let at = start + TimeDelta::seconds(step);
            let (energy, register) = match form {
                Form::Interval => (kwh(step, device), None),
                Form::Register => {
                    let (interval, register) = register_at(step, device);
                    (interval, Some(register))
                }
            };
            let (value, totals, newest_value) = if i % 2 == 0 {
                let id = device_id(prefix, "V", device);
                let soc = (step % 101) as f64;
                let value = match register {
                    None => vehicle(&id, at, soc, energy, 20.0),
                    Some(register) => vehicle_register(&id, at, soc, register, 20.0),
                };
                (value, expected.vehicles.entry(id).or_default(), soc)
            } else {
                let id = device_id(prefix, "M", device);
                let voltage = 200.0 + (step % 50) as f64;
                let value = match register {
                    None => meter(&id, at, energy, voltage),
                    Some(register) => meter_register(&id, at, register, voltage),
                };
                (value, expected.meters.entry(id).or_default(), voltage)
            };
            totals.readings += 1;
            totals.kwh += energy;
            totals.rolled_up = (totals.readings, totals.kwh);
            totals.rolled_up_5min = totals.rolled_up;
            if totals.newest.is_none_or(|(newest_at, _)| newest_at < at) {
                totals.newest = Some((at, newest_value));
            }
            readings.push(value);
        }
        Self { readings, expected }
    }

    /// The readings as Kafka messages keyed by device id.
    pub fn messages(&self) -> Vec<RawMessage> {
        self.readings
            .iter()
            .map(|r| {
                (
                    Some(key_of(r).into_bytes()),
                    Some(r.to_string().into_bytes()),
                )
            })
            .collect()
    }

    pub fn total(&self) -> i64 {
        self.readings.len() as i64
    }
}

/// A register device's count at `step` and the energy of the interval
/// ending there, as an in-order replay derives it: none at the first step,
/// the new count after a reset (every 97 steps), else the rise.
fn register_at(step: i64, device: i64) -> (f64, f64) {
    let rise = |s: i64| kwh(s, device) / 16.0;
    let since_reset = (step + device) % 97;
    let first_counted = step - since_reset;
    // Whole 1/256 kWh below 2^20 kWh: every count and difference is exact.
    let base = if first_counted <= 0 {
        (device % 50) as f64 * 8.0
    } else {
        0.0
    };
    let register = base + (first_counted.max(0)..=step).map(rise).sum::<f64>();
    let interval = if step == 0 {
        0.0
    } else if since_reset == 0 {
        register
    } else {
        rise(step)
    };
    (interval, register)
}

type TotalsRow = (String, i64, f64, Option<DateTime<Utc>>, Option<f64>);

/// Reads what the database holds, in the shape of [`Expected`].
pub async fn stored(pool: &PgPool) -> Result<Expected, sqlx::Error> {
    let collect = |rows: Vec<TotalsRow>,
                   rollups: Vec<(String, i64, f64)>,
                   five_minutes: Vec<(String, i64, f64)>|
     -> BTreeMap<String, DeviceTotals> {
        let mut devices: BTreeMap<String, DeviceTotals> = rows
            .into_iter()
            .map(|(id, readings, kwh, at, value)| {
                let newest = at.zip(value);
                (
                    id,
                    DeviceTotals {
                        readings,
                        kwh,
                        newest,
                        rolled_up: (0, 0.0),
                        rolled_up_5min: (0, 0.0),
                    },
                )
            })
            .collect();
        for (id, readings, kwh) in rollups {
            devices.entry(id).or_default().rolled_up = (readings, kwh);
        }
        for (id, readings, kwh) in five_minutes {
            devices.entry(id).or_default().rolled_up_5min = (readings, kwh);
        }
        devices
    };
    let vehicles: Vec<TotalsRow> = sqlx::query_as(
        "SELECT r.vehicle_id, count(*), sum(r.kwh_delivered_dc), c.recorded_at, c.soc
         FROM vehicle_readings r LEFT JOIN vehicles_current c USING (vehicle_id)
         GROUP BY r.vehicle_id, c.recorded_at, c.soc",
    )
    .fetch_all(pool)
    .await?;
    let meters: Vec<TotalsRow> = sqlx::query_as(
        "SELECT r.meter_id, count(*), sum(r.kwh_consumed_ac), c.recorded_at, c.voltage
         FROM meter_readings r LEFT JOIN meters_current c USING (meter_id)
         GROUP BY r.meter_id, c.recorded_at, c.voltage",
    )
    .fetch_all(pool)
    .await?;
    let vehicle_rollups: Vec<(String, i64, f64)> =
        sqlx::query_as("SELECT vehicle_id, sum(readings)::bigint, sum(sum_dc) FROM vehicle_hourly GROUP BY vehicle_id")
            .fetch_all(pool)
            .await?;
    let meter_rollups: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT meter_id, sum(readings)::bigint, sum(sum_ac) FROM meter_hourly GROUP BY meter_id",
    )
    .fetch_all(pool)
    .await?;
    let vehicle_5min: Vec<(String, i64, f64)> =
        sqlx::query_as("SELECT vehicle_id, sum(readings)::bigint, sum(sum_dc) FROM vehicle_5min GROUP BY vehicle_id")
            .fetch_all(pool)
            .await?;
    let meter_5min: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT meter_id, sum(readings)::bigint, sum(sum_ac) FROM meter_5min GROUP BY meter_id",
    )
    .fetch_all(pool)
    .await?;
    Ok(Expected {
        vehicles: collect(vehicles, vehicle_rollups, vehicle_5min),
        meters: collect(meters, meter_rollups, meter_5min),
    })
}

/// Total rows in both history tables.
pub async fn history_rows(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM vehicle_readings) + (SELECT count(*) FROM meter_readings)",
    )
    .fetch_one(pool)
    .await
}
