//! The binary COPY encoder, as a property: arbitrary valid readings (any
//! Unicode id the rules allow, COPY and SQL metacharacters included, any
//! value in range, microsecond timestamps) written by the worker's store
//! come back from PostgreSQL unchanged, bit for bit.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use shared::domain::{DeviceId, EventTime, MeterReading, Reading, VehicleReading};
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

fn reading() -> impl Strategy<Value = Reading> {
    prop_oneof![
        (
            device_id(),
            event_time(),
            0.0f64..=100.0,
            0.0f64..=1_000_000.0,
            -60.0f64..=120.0
        )
            .prop_map(
                |(vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)| {
                    Reading::Vehicle(VehicleReading {
                        vehicle_id,
                        recorded_at,
                        soc,
                        kwh_delivered_dc,
                        battery_temp,
                    })
                }
            ),
        (
            device_id(),
            event_time(),
            0.0f64..=1_000_000.0,
            0.0f64..=2000.0
        )
            .prop_map(|(meter_id, recorded_at, kwh_consumed_ac, voltage)| {
                Reading::Meter(MeterReading {
                    meter_id,
                    recorded_at,
                    kwh_consumed_ac,
                    voltage,
                })
            }),
    ]
}

type Row = (String, DateTime<Utc>, Vec<u64>);
/// Rows by (id, time): the bits of their values.
type Rows = BTreeMap<(String, DateTime<Utc>), Vec<u64>>;

/// The rows a batch should leave: one per (id, time), the first one sent.
fn expected(readings: &[Reading]) -> (Rows, Rows) {
    let (mut vehicles, mut meters) = (BTreeMap::new(), BTreeMap::new());
    for reading in readings {
        match reading {
            Reading::Vehicle(v) => {
                vehicles
                    .entry((v.vehicle_id.as_str().to_owned(), v.recorded_at.instant()))
                    .or_insert_with(|| {
                        vec![
                            v.soc.to_bits(),
                            v.kwh_delivered_dc.to_bits(),
                            v.battery_temp.to_bits(),
                        ]
                    });
            }
            Reading::Meter(m) => {
                meters
                    .entry((m.meter_id.as_str().to_owned(), m.recorded_at.instant()))
                    .or_insert_with(|| vec![m.kwh_consumed_ac.to_bits(), m.voltage.to_bits()]);
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
                let vehicles: Vec<(String, DateTime<Utc>, f64, f64, f64)> = sqlx::query_as(
                    "SELECT vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp FROM vehicle_readings",
                )
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let meters: Vec<(String, DateTime<Utc>, f64, f64)> = sqlx::query_as(
                    "SELECT meter_id, recorded_at, kwh_consumed_ac, voltage FROM meter_readings",
                )
                .fetch_all(&db.pool)
                .await
                .unwrap();
                let (want_vehicles, want_meters) = expected(&readings);
                let got_vehicles = by_key(
                    vehicles
                        .into_iter()
                        .map(|(id, at, a, b, c)| (id, at, vec![a.to_bits(), b.to_bits(), c.to_bits()]))
                        .collect(),
                );
                let got_meters = by_key(
                    meters
                        .into_iter()
                        .map(|(id, at, a, b)| (id, at, vec![a.to_bits(), b.to_bits()]))
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
