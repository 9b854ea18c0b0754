//! Hourly rollups, kept in the same transaction as the history rows they
//! summarise, counting each stored reading exactly once.
//!
//! A rollup row covers the half-open hour `(hour_end - 1h, hour_end]`, the
//! shape of analytics windows `(from, to]` (see `energy_hour_end` in the
//! migrations, which this module mirrors). On the fast path every row of
//! the batch was stored, so the batch is aggregated here; on the duplicate
//! path the aggregate is taken in SQL from the rows the INSERT returned, so
//! a duplicate never counts twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shared::domain::{DeviceId, EventTime, MeterReading, VehicleReading};
use sqlx::PgConnection;

const HOUR_MICROS: i64 = 3_600_000_000;

/// The end of the rollup hour that holds `at`.
pub fn hour_end(at: EventTime) -> DateTime<Utc> {
    let micros = at.instant().timestamp_micros();
    let end = (micros - 1).div_euclid(HOUR_MICROS) * HOUR_MICROS + HOUR_MICROS;
    DateTime::from_timestamp_micros(end).unwrap_or(at.instant())
}

/// `ON CONFLICT` clauses that add a batch's hour to what is stored.
pub const VEHICLE_HOUR_MERGE: &str = "ON CONFLICT (vehicle_id, hour_end) DO UPDATE SET
    readings = h.readings + EXCLUDED.readings,
    sum_dc = h.sum_dc + EXCLUDED.sum_dc,
    sum_battery_temp = h.sum_battery_temp + EXCLUDED.sum_battery_temp";

pub const METER_HOUR_MERGE: &str = "ON CONFLICT (meter_id, hour_end) DO UPDATE SET
    readings = h.readings + EXCLUDED.readings,
    sum_ac = h.sum_ac + EXCLUDED.sum_ac,
    min_ac = LEAST(h.min_ac, EXCLUDED.min_ac),
    max_ac = GREATEST(h.max_ac, EXCLUDED.max_ac),
    sum_voltage = h.sum_voltage + EXCLUDED.sum_voltage,
    min_voltage = LEAST(h.min_voltage, EXCLUDED.min_voltage),
    max_voltage = GREATEST(h.max_voltage, EXCLUDED.max_voltage)";

/// Inserts the staged rows that are not duplicates and rolls up exactly
/// those; returns how many were inserted.
pub fn staged_vehicle_insert(staging: &str, columns: &str) -> String {
    format!(
        "WITH inserted AS (
             INSERT INTO vehicle_readings ({columns}) SELECT {columns} FROM {staging}
             ON CONFLICT DO NOTHING
             RETURNING vehicle_id, recorded_at, kwh_delivered_dc, battery_temp
         ), rolled AS (
             INSERT INTO vehicle_hourly AS h (vehicle_id, hour_end, readings, sum_dc, sum_battery_temp)
             SELECT vehicle_id, energy_hour_end(recorded_at), count(*), sum(kwh_delivered_dc), sum(battery_temp)
             FROM inserted GROUP BY 1, 2 ORDER BY 1, 2
             {VEHICLE_HOUR_MERGE}
         )
         SELECT count(*) FROM inserted"
    )
}

pub fn staged_meter_insert(staging: &str, columns: &str) -> String {
    format!(
        "WITH inserted AS (
             INSERT INTO meter_readings ({columns}) SELECT {columns} FROM {staging}
             ON CONFLICT DO NOTHING
             RETURNING meter_id, recorded_at, kwh_consumed_ac, voltage
         ), rolled AS (
             INSERT INTO meter_hourly AS h
                 (meter_id, hour_end, readings, sum_ac, min_ac, max_ac, sum_voltage, min_voltage, max_voltage)
             SELECT meter_id, energy_hour_end(recorded_at), count(*), sum(kwh_consumed_ac),
                    min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage)
             FROM inserted GROUP BY 1, 2 ORDER BY 1, 2
             {METER_HOUR_MERGE}
         )
         SELECT count(*) FROM inserted"
    )
}

#[derive(Default)]
struct VehicleHour {
    readings: i64,
    sum_dc: f64,
    sum_battery_temp: f64,
}

struct MeterHour {
    readings: i64,
    sum_ac: f64,
    min_ac: f64,
    max_ac: f64,
    sum_voltage: f64,
    min_voltage: f64,
    max_voltage: f64,
}

impl MeterHour {
    fn add(&mut self, reading: &MeterReading) {
        self.readings += 1;
        self.sum_ac += reading.kwh_consumed_ac;
        self.min_ac = self.min_ac.min(reading.kwh_consumed_ac);
        self.max_ac = self.max_ac.max(reading.kwh_consumed_ac);
        self.sum_voltage += reading.voltage;
        self.min_voltage = self.min_voltage.min(reading.voltage);
        self.max_voltage = self.max_voltage.max(reading.voltage);
    }
}

impl Default for MeterHour {
    fn default() -> Self {
        Self {
            readings: 0,
            sum_ac: 0.0,
            min_ac: f64::INFINITY,
            max_ac: f64::NEG_INFINITY,
            sum_voltage: 0.0,
            min_voltage: f64::INFINITY,
            max_voltage: f64::NEG_INFINITY,
        }
    }
}

/// Adds the hours of `vehicles` (all of them stored by this transaction).
/// Keys are sorted so concurrent transactions lock rollup rows in one order.
pub async fn add_vehicle_hours(
    conn: &mut PgConnection,
    vehicles: &[&VehicleReading],
) -> Result<(), sqlx::Error> {
    if vehicles.is_empty() {
        return Ok(());
    }
    let mut hours: BTreeMap<(&DeviceId, DateTime<Utc>), VehicleHour> = BTreeMap::new();
    for v in vehicles {
        let hour = hours
            .entry((&v.vehicle_id, hour_end(v.recorded_at)))
            .or_default();
        hour.readings += 1;
        hour.sum_dc += v.kwh_delivered_dc;
        hour.sum_battery_temp += v.battery_temp;
    }
    sqlx::query(&format!(
        "INSERT INTO vehicle_hourly AS h (vehicle_id, hour_end, readings, sum_dc, sum_battery_temp)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::float8[], $5::float8[])
         {VEHICLE_HOUR_MERGE}"
    ))
    .bind(hours.keys().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
    .bind(hours.keys().map(|(_, end)| *end).collect::<Vec<_>>())
    .bind(hours.values().map(|h| h.readings).collect::<Vec<_>>())
    .bind(hours.values().map(|h| h.sum_dc).collect::<Vec<_>>())
    .bind(
        hours
            .values()
            .map(|h| h.sum_battery_temp)
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds the hours of `meters` (all of them stored by this transaction).
pub async fn add_meter_hours(
    conn: &mut PgConnection,
    meters: &[&MeterReading],
) -> Result<(), sqlx::Error> {
    if meters.is_empty() {
        return Ok(());
    }
    let mut hours: BTreeMap<(&DeviceId, DateTime<Utc>), MeterHour> = BTreeMap::new();
    for m in meters {
        hours
            .entry((&m.meter_id, hour_end(m.recorded_at)))
            .or_default()
            .add(m);
    }
    let column = |f: fn(&MeterHour) -> f64| hours.values().map(f).collect::<Vec<_>>();
    sqlx::query(&format!(
        "INSERT INTO meter_hourly AS h
             (meter_id, hour_end, readings, sum_ac, min_ac, max_ac, sum_voltage, min_voltage, max_voltage)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::float8[], $5::float8[],
                              $6::float8[], $7::float8[], $8::float8[], $9::float8[])
         {METER_HOUR_MERGE}"
    ))
    .bind(hours.keys().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
    .bind(hours.keys().map(|(_, end)| *end).collect::<Vec<_>>())
    .bind(hours.values().map(|h| h.readings).collect::<Vec<_>>())
    .bind(column(|h| h.sum_ac))
    .bind(column(|h| h.min_ac))
    .bind(column(|h| h.max_ac))
    .bind(column(|h| h.sum_voltage))
    .bind(column(|h| h.min_voltage))
    .bind(column(|h| h.max_voltage))
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> EventTime {
        EventTime::new(raw.parse().unwrap())
    }

    #[test]
    fn an_hour_is_left_open_and_right_closed() {
        let end = |raw| hour_end(at(raw)).to_rfc3339();
        assert_eq!(end("2026-11-29T10:00:00Z"), "2026-11-29T10:00:00+00:00");
        assert_eq!(
            end("2026-11-29T10:00:00.000001Z"),
            "2026-11-29T11:00:00+00:00"
        );
        assert_eq!(
            end("2026-11-29T10:59:59.999999Z"),
            "2026-11-29T11:00:00+00:00"
        );
        assert_eq!(end("1999-12-31T23:30:00Z"), "2000-01-01T00:00:00+00:00");
    }
}
