//! The binary COPY encoder, as a property: arbitrary valid readings (any
//! Unicode id the rules allow, COPY and SQL metacharacters included, any
//! value in range, microsecond timestamps, interval energies and registers)
//! written by the worker's store come back from PostgreSQL unchanged, bit
//! for bit. (A register reading's energy is derived, `tests/registers.rs`.)

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shared::domain::{DeviceId, Energy, EventTime, MeterReading, Reading, VehicleReading};
use test_support::postgres::fresh_database;

fn device_id() -> impl Strategy<Value = DeviceId> {
    prop_oneof![
        // Anything the rules allow: no control or format characters, no
        // surrounding whitespace.
        "[^\\p{C}\\s][^\\p{C}]{0,62}[^\\p{C}\\s]",
        "[^\\p{C}\\s]",
        // The characters COPY's text format and SQL would care about.
        "[\\\\N'\";,(){}\\[\\]% ]{1,8}[a-z]",
    ]
    .prop_filter_map("allowed by the id rules", |raw| DeviceId::parse(&raw).ok())
}

fn event_time() -> impl Strategy<Value = EventTime> {
    // Within the partitions a fresh test database has (the last 40 days).
    (0i64..39 * 86_400 * 1_000_000)
        .prop_map(|micros_ago| EventTime::new(Utc::now() - TimeDelta::microseconds(micros_ago)))
}

fn energy() -> impl Strategy<Value = Energy> {
    prop_oneof![
        (0.0f64..=1_000_000.0).prop_map(Energy::Interval),
        (0.0f64..=1_000_000_000.0).prop_map(Energy::Register),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        (
            device_id(),
            event_time(),
            0.0f64..=100.0,
            energy(),
            -60.0f64..=120.0
        )
            .prop_map(|(vehicle_id, recorded_at, soc, dc, battery_temp)| {
                Reading::Vehicle(VehicleReading {
                    vehicle_id,
                    recorded_at,
                    soc,
                    dc,
                    battery_temp,
                })
            }),
        (device_id(), event_time(), energy(), 0.0f64..=2000.0).prop_map(
            |(meter_id, recorded_at, ac, voltage)| {
                Reading::Meter(MeterReading {
                    meter_id,
                    recorded_at,
                    ac,
                    voltage,
                })
            }
        ),
    ]
}

/// The bits of an energy as stored: the interval's and no register, or the
/// register (its interval's energy is derived, so not compared here).
fn energy_bits(energy: Energy) -> [Option<u64>; 2] {
    match energy {
        Energy::Interval(kwh) => [Some(kwh.to_bits()), None],
        Energy::Register(kwh) => [None, Some(kwh.to_bits())],
    }
}

/// The same from the stored columns.
fn stored_energy_bits(energy: f64, register: Option<f64>) -> [Option<u64>; 2] {
    match register {
        None => [Some(energy.to_bits()), None],
        Some(kwh) => [None, Some(kwh.to_bits())],
    }
}

type Row = (String, DateTime<Utc>, Vec<Option<u64>>);
/// A stored vehicle row: id, time, soc, energy, temperature, register.
type StoredVehicle = (String, DateTime<Utc>, f64, f64, f64, Option<f64>);
/// A stored meter row: id, time, energy, voltage, register.
type StoredMeter = (String, DateTime<Utc>, f64, f64, Option<f64>);
/// Rows by (id, time): the bits of their values.
type Rows = BTreeMap<(String, DateTime<Utc>), Vec<Option<u64>>>;

/// The rows a batch should leave: one per (id, time), the first one sent.
fn expected(readings: &[Reading]) -> (Rows, Rows) {
    let (mut vehicles, mut meters) = (BTreeMap::new(), BTreeMap::new());
    for reading in readings {
        match reading {
            Reading::Vehicle(v) => {
                vehicles
                    .entry((v.vehicle_id.as_str().to_owned(), v.recorded_at.instant()))
                    .or_insert_with(|| {
                        let mut values =
                            vec![Some(v.soc.to_bits()), Some(v.battery_temp.to_bits())];
                        values.extend(energy_bits(v.dc));
                        values
                    });
            }
            Reading::Meter(m) => {
                meters
                    .entry((m.meter_id.as_str().to_owned(), m.recorded_at.instant()))
                    .or_insert_with(|| {
                        let mut values = vec![Some(m.voltage.to_bits())];
                        values.extend(energy_bits(m.ac));
                        values
                    });
            }
            Reading::Assignment(_) => {}
        }
    }
    (vehicles, meters)
}

fn by_key(rows: Vec<Row>) -> Rows {
    rows.into_iter()
        .map(|(id, at, values)| ((id, at), values))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn binary_copy_round_trips_arbitrary_valid_readings() {
    let db = fresh_database().await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(reading(), 1..60), |readings| {
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                sqlx::query("TRUNCATE vehicle_readings, meter_readings, vehicles_current, meters_current, vehicle_hourly, meter_hourly")
                    .execute(&db.pool)
                    .await
                    .unwrap();
                write_batch(&db.pool, &readings).await.unwrap();
                let vehicles: Vec<StoredVehicle> = sqlx::query_as(
                    "SELECT vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp, kwh_register_dc
                     FROM vehicle_readings",
                )
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let meters: Vec<StoredMeter> = sqlx::query_as(
                    "SELECT meter_id, recorded_at, kwh_consumed_ac, voltage, kwh_register_ac FROM meter_readings",
                )
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let (want_vehicles, want_meters) = expected(&readings);
                let got_vehicles = by_key(
                    vehicles
                        .into_iter()
                        .map(|(id, at, soc, dc, temp, register)| {
                            let mut values = vec![Some(soc.to_bits()), Some(temp.to_bits())];
                            values.extend(stored_energy_bits(dc, register));
                            (id, at, values)
                        })
                        .collect(),
                );
                let got_meters = by_key(
                    meters
                        .into_iter()
                        .map(|(id, at, ac, voltage, register)| {
                            let mut values = vec![Some(voltage.to_bits())];
                            values.extend(stored_energy_bits(ac, register));
                            (id, at, values)
                        })
                        .collect(),
                );
                prop_assert_eq!(got_vehicles, want_vehicles);
                prop_assert_eq!(got_meters, want_meters);
                Ok(())
            })
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}
