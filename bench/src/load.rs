//! Writing generated readings straight into PostgreSQL with binary COPY: the
//! limit the worker's drain is compared with, and the fast way to load the
//! query benchmark's day of history (rollups and current state are then
//! derived in SQL, as the worker would have kept them).

use fleet_sim::fleet::{Fleet, FleetSpec};
use ingest_worker::copy::encode_rows;
use ingest_worker::stream::{Stream, METERS, VEHICLES};
use shared::domain::{Assignment, MeterReading, Reading, VehicleReading};
use sqlx::{PgConnection, PgPool};

/// Rows per COPY statement: large enough that per-statement costs vanish.
const CHUNK_ROWS: usize = 200_000;

/// Readings split by table.
#[derive(Default)]
pub struct Rows<'a> {
    pub vehicles: Vec<&'a VehicleReading>,
    pub meters: Vec<&'a MeterReading>,
    pub assignments: Vec<&'a Assignment>,
}

impl<'a> Rows<'a> {
    pub fn split(readings: &'a [Reading]) -> Self {
        let mut rows = Self::default();
        for reading in readings {
            match reading {
                Reading::Vehicle(v) => rows.vehicles.push(v),
                Reading::Meter(m) => rows.meters.push(m),
                Reading::Assignment(a) => rows.assignments.push(a),
            }
        }
        rows
    }
}

/// Binary COPY streams of the history rows, ready to send.
pub struct Encoded {
    pub vehicles: Vec<Vec<u8>>,
    pub meters: Vec<Vec<u8>>,
    pub rows: u64,
}

impl Encoded {
    pub fn new(rows: &Rows<'_>) -> Self {
        Self {
            vehicles: rows.vehicles.chunks(CHUNK_ROWS).map(encode_rows).collect(),
            meters: rows.meters.chunks(CHUNK_ROWS).map(encode_rows).collect(),
            rows: (rows.vehicles.len() + rows.meters.len()) as u64,
        }
    }
}

/// Sends COPY streams into `stream`'s history table; returns the rows stored.
pub async fn copy(
    conn: &mut PgConnection,
    stream: &Stream,
    encoded: &[Vec<u8>],
) -> anyhow::Result<u64> {
    let mut stored = 0;
    for data in encoded {
        let mut copy = conn
            .copy_in_raw(&stream.copy_statement(stream.history))
            .await?;
        copy.send(data.as_slice()).await?;
        stored += copy.finish().await?;
    }
    Ok(stored)
}

/// Both history tables from one client connection in one transaction, as
/// fast as PostgreSQL takes them: the limit for the worker.
pub async fn copy_history(pool: &PgPool, encoded: &Encoded) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let stored = copy(&mut tx, &VEHICLES, &encoded.vehicles).await?
        + copy(&mut tx, &METERS, &encoded.meters).await?;
    tx.commit().await?;
    Ok(stored)
}

pub async fn insert_assignments(pool: &PgPool, assignments: &[&Assignment]) -> anyhow::Result<()> {
    for chunk in assignments.chunks(CHUNK_ROWS) {
        sqlx::query(
            "INSERT INTO assignments (vehicle_id, starts_at, meter_id)
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[])",
        )
        .bind(
            chunk
                .iter()
                .map(|a| a.vehicle_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|a| a.starts_at.instant())
                .collect::<Vec<_>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|a| a.meter_id.as_ref().map(|m| m.as_str()))
                .collect::<Vec<_>>(),
        )
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Generates `steps` steps of `spec` and loads them, vehicles and meters on
/// two connections at once; returns (vehicle rows, meter rows).
pub async fn load_fleet(pool: &PgPool, spec: FleetSpec, steps: u64) -> anyhow::Result<(u64, u64)> {
    let mut fleet = Fleet::new(spec)?;
    let (mut vehicle_conn, mut meter_conn) = (pool.acquire().await?, pool.acquire().await?);
    let (mut vehicle_rows, mut meter_rows) = (0, 0);
    let mut pending: Vec<Reading> = Vec::new();
    let mut assignments: Vec<Reading> = Vec::new();
    for step in 0..steps {
        for reading in fleet.tick().readings {
            match reading {
                Reading::Assignment(_) => assignments.push(reading),
                other => pending.push(other),
            }
        }
        if pending.len() >= 2 * CHUNK_ROWS || step + 1 == steps {
            pending.extend(
                fleet
                    .finish()
                    .into_iter()
                    .filter(|r| !matches!(r, Reading::Assignment(_))),
            );
            let rows = Rows::split(&pending);
            let encoded = Encoded::new(&rows);
            let (v, m) = tokio::join!(
                copy(&mut vehicle_conn, &VEHICLES, &encoded.vehicles),
                copy(&mut meter_conn, &METERS, &encoded.meters),
            );
            vehicle_rows += v?;
            meter_rows += m?;
            pending.clear();
        }
    }
    insert_assignments(pool, &Rows::split(&assignments).assignments).await?;
    Ok((vehicle_rows, meter_rows))
}

/// Derives the hourly rollups and current state from raw history, exactly
/// as the worker keeps them, then refreshes the planner's statistics.
pub async fn derive_rollups_and_current_state(pool: &PgPool) -> anyhow::Result<()> {
    let statements = [
        "INSERT INTO vehicle_hourly (vehicle_id, hour_end, readings, sum_dc, sum_battery_temp)
         SELECT vehicle_id, energy_hour_end(recorded_at), count(*), sum(kwh_delivered_dc), sum(battery_temp)
         FROM vehicle_readings GROUP BY 1, 2",
        "INSERT INTO meter_hourly
             (meter_id, hour_end, readings, sum_ac, min_ac, max_ac, sum_voltage, min_voltage, max_voltage)
         SELECT meter_id, energy_hour_end(recorded_at), count(*), sum(kwh_consumed_ac),
                min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage)
         FROM meter_readings GROUP BY 1, 2",
        "INSERT INTO vehicle_5min (vehicle_id, bucket_end, readings, sum_dc, sum_battery_temp)
         SELECT vehicle_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_delivered_dc),
                sum(battery_temp)
         FROM vehicle_readings GROUP BY 1, 2",
        "INSERT INTO meter_5min
             (meter_id, bucket_end, readings, sum_ac, min_ac, max_ac, sum_voltage, min_voltage, max_voltage)
         SELECT meter_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_consumed_ac),
                min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage)
         FROM meter_readings GROUP BY 1, 2",
        "INSERT INTO vehicles_current (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
         SELECT DISTINCT ON (vehicle_id) vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp
         FROM vehicle_readings ORDER BY vehicle_id, recorded_at DESC",
        "INSERT INTO meters_current (meter_id, recorded_at, kwh_consumed_ac, voltage)
         SELECT DISTINCT ON (meter_id) meter_id, recorded_at, kwh_consumed_ac, voltage
         FROM meter_readings ORDER BY meter_id, recorded_at DESC",
        "VACUUM ANALYZE",
    ];
    for statement in statements {
        sqlx::query(statement).execute(pool).await?;
    }
    Ok(())
}
