//! `write_batch`: one batch of readings into PostgreSQL in one transaction.
//!
//! History rows go in with binary COPY straight into the tables, the fast path
//! for the common case of no duplicates. When a reading is already stored (a
//! retried request, a redelivery after a crash), COPY aborts on the primary
//! key; the batch is then redone through temporary staging tables with
//! `INSERT .. ON CONFLICT DO NOTHING`, so the first stored reading wins.
//! Hourly rollups are added in the same transaction, from exactly the rows
//! stored ([`super::rollup`]). Current state is upserted from the newest
//! reading per device in the batch and only ever moves forward in event time.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use shared::domain::{Assignment, DeviceId, EventTime, MeterReading, Reading, VehicleReading};
use sqlx::{PgConnection, PgPool};

use super::copy::{encode_meter_rows, encode_vehicle_rows, METER_COLUMNS, VEHICLE_COLUMNS};
use super::rollup;

/// What a committed batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub vehicle_rows: u64,
    pub meter_rows: u64,
    pub assignment_rows: u64,
    /// Readings and assignments not stored because they were already there
    /// (in the database or earlier in the same batch).
    pub duplicates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Worth retrying unchanged: connection lost, pool timeout, serialization
    /// failure, server shutting down or out of resources.
    #[error("transient database failure")]
    Transient(#[source] sqlx::Error),
    /// The rows themselves were refused (SQLSTATE class 22 data exception or
    /// 23 integrity constraint violation): some reading of the batch will
    /// never be stored, and the others can be.
    #[error("the database refused a row of the batch")]
    Data(#[source] sqlx::Error),
    /// A row's day has no partition (dropped by hand, or upkeep behind): the
    /// data is fine and must not be dead-lettered; recreate and retry.
    #[error("no partition for a row of the batch")]
    MissingPartition(#[source] sqlx::Error),
    /// Anything else (missing table, permissions, ...): not the data's fault,
    /// so nothing may be dropped; an operator has to fix it.
    #[error("database rejected the batch")]
    Permanent(#[source] sqlx::Error),
}

impl WriteError {
    pub fn is_transient(&self) -> bool {
        matches!(self, WriteError::Transient(_))
    }
}

impl std::ops::AddAssign for BatchOutcome {
    fn add_assign(&mut self, other: Self) {
        self.vehicle_rows += other.vehicle_rows;
        self.meter_rows += other.meter_rows;
        self.assignment_rows += other.assignment_rows;
        self.duplicates += other.duplicates;
    }
}

fn classify(error: sqlx::Error) -> WriteError {
    let is_data_error = matches!(&error, sqlx::Error::Database(db)
        if db.code().is_some_and(|code| code.starts_with("22") || code.starts_with("23")));
    // PostgreSQL reports a row without a partition as check_violation (23514),
    // a data error by class; only its message tells it apart.
    let is_missing_partition = matches!(&error, sqlx::Error::Database(db)
        if db.code().as_deref() == Some("23514") && db.message().starts_with("no partition of relation"));
    if shared::db::is_transient(&error) {
        WriteError::Transient(error)
    } else if is_missing_partition {
        WriteError::MissingPartition(error)
    } else if is_data_error {
        WriteError::Data(error)
    } else {
        WriteError::Permanent(error)
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// A batch split by kind, with duplicates inside the batch removed (first wins).
struct BatchRows<'a> {
    vehicles: Vec<&'a VehicleReading>,
    meters: Vec<&'a MeterReading>,
    assignments: Vec<&'a Assignment>,
    duplicates_in_batch: u64,
}

impl<'a> BatchRows<'a> {
    fn split(readings: &'a [Reading]) -> Self {
        let mut seen: HashSet<(u8, &DeviceId, EventTime)> = HashSet::with_capacity(readings.len());
        let mut rows = BatchRows {
            vehicles: Vec::new(),
            meters: Vec::new(),
            assignments: Vec::new(),
            duplicates_in_batch: 0,
        };
        for reading in readings {
            let is_new = match reading {
                Reading::Vehicle(v) => seen.insert((0, &v.vehicle_id, v.recorded_at)),
                Reading::Meter(m) => seen.insert((1, &m.meter_id, m.recorded_at)),
                Reading::Assignment(a) => seen.insert((2, &a.vehicle_id, a.starts_at)),
            };
            if !is_new {
                rows.duplicates_in_batch += 1;
                continue;
            }
            match reading {
                Reading::Vehicle(v) => rows.vehicles.push(v),
                Reading::Meter(m) => rows.meters.push(m),
                Reading::Assignment(a) => rows.assignments.push(a),
            }
        }
        rows
    }

    fn n_rows(&self) -> u64 {
        (self.vehicles.len() + self.meters.len() + self.assignments.len()) as u64
    }
}

#[derive(Clone, Copy)]
enum HistoryPath {
    /// COPY straight into the history tables; fails on any duplicate.
    Direct,
    /// COPY into temporary tables, then INSERT .. ON CONFLICT DO NOTHING.
    Staged,
}

/// Writes a batch in one transaction and commits it.
#[tracing::instrument(skip_all, fields(readings = readings.len()))]
pub async fn write_batch(pool: &PgPool, readings: &[Reading]) -> Result<BatchOutcome, WriteError> {
    let rows = BatchRows::split(readings);
    if rows.n_rows() == 0 {
        return Ok(BatchOutcome {
            duplicates: rows.duplicates_in_batch,
            ..BatchOutcome::default()
        });
    }
    match write_in_transaction(pool, &rows, HistoryPath::Direct).await {
        Err(error) if is_unique_violation(&error) => {
            tracing::debug!(
                "batch holds readings already stored, redoing it through staging tables"
            );
            write_in_transaction(pool, &rows, HistoryPath::Staged).await
        }
        other => other,
    }
    .map_err(classify)
}

async fn write_in_transaction(
    pool: &PgPool,
    rows: &BatchRows<'_>,
    path: HistoryPath,
) -> Result<BatchOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let vehicle_rows = if rows.vehicles.is_empty() {
        0
    } else {
        let copy_data = encode_vehicle_rows(&rows.vehicles);
        match path {
            HistoryPath::Direct => {
                let stored =
                    copy_binary(&mut tx, "vehicle_readings", VEHICLE_COLUMNS, copy_data).await?;
                rollup::add_vehicle_hours(&mut tx, &rows.vehicles).await?;
                stored
            }
            HistoryPath::Staged => {
                let staging =
                    stage(&mut tx, "vehicle_readings", VEHICLE_COLUMNS, copy_data).await?;
                insert_staged(
                    &mut tx,
                    &rollup::staged_vehicle_insert(&staging, VEHICLE_COLUMNS),
                )
                .await?
            }
        }
    };
    let meter_rows = if rows.meters.is_empty() {
        0
    } else {
        let copy_data = encode_meter_rows(&rows.meters);
        match path {
            HistoryPath::Direct => {
                let stored =
                    copy_binary(&mut tx, "meter_readings", METER_COLUMNS, copy_data).await?;
                rollup::add_meter_hours(&mut tx, &rows.meters).await?;
                stored
            }
            HistoryPath::Staged => {
                let staging = stage(&mut tx, "meter_readings", METER_COLUMNS, copy_data).await?;
                insert_staged(
                    &mut tx,
                    &rollup::staged_meter_insert(&staging, METER_COLUMNS),
                )
                .await?
            }
        }
    };
    let assignment_rows = insert_assignments(&mut tx, &rows.assignments).await?;
    upsert_current_vehicles(&mut tx, &rows.vehicles).await?;
    upsert_current_meters(&mut tx, &rows.meters).await?;
    tx.commit().await?;
    let stored = vehicle_rows + meter_rows + assignment_rows;
    Ok(BatchOutcome {
        vehicle_rows,
        meter_rows,
        assignment_rows,
        duplicates: rows.duplicates_in_batch + (rows.n_rows() - stored),
    })
}

/// Copies encoded rows into a temporary table shaped like `table`
/// (dropped at commit); returns its name.
async fn stage(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    copy_data: Vec<u8>,
) -> Result<String, sqlx::Error> {
    let staging = format!("{table}_staging");
    sqlx::query(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DROP"
    ))
    .execute(&mut *conn)
    .await?;
    copy_binary(conn, &staging, columns, copy_data).await?;
    Ok(staging)
}

/// Runs a staged insert statement that returns the number of rows inserted.
async fn insert_staged(conn: &mut PgConnection, statement: &str) -> Result<u64, sqlx::Error> {
    let inserted: i64 = sqlx::query_scalar(statement).fetch_one(conn).await?;
    Ok(inserted as u64)
}

async fn copy_binary(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    data: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    if let Err(error) = copy.send(data).await {
        // Aborting tells the server to end the COPY so the connection stays usable.
        let _ = copy.abort("encoding failed").await;
        return Err(error);
    }
    copy.finish().await
}

async fn insert_assignments(
    conn: &mut PgConnection,
    assignments: &[&Assignment],
) -> Result<u64, sqlx::Error> {
    if assignments.is_empty() {
        return Ok(0);
    }
    let vehicle_ids: Vec<&str> = assignments.iter().map(|a| a.vehicle_id.as_str()).collect();
    let starts: Vec<DateTime<Utc>> = assignments.iter().map(|a| a.starts_at.instant()).collect();
    let meter_ids: Vec<Option<&str>> = assignments
        .iter()
        .map(|a| a.meter_id.as_ref().map(DeviceId::as_str))
        .collect();
    let result = sqlx::query(
        "INSERT INTO assignments (vehicle_id, starts_at, meter_id)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(vehicle_ids)
    .bind(starts)
    .bind(meter_ids)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The newest reading per device; on equal event times the first one wins.
fn newest_per_device<'a, T>(
    rows: &[&'a T],
    key: impl Fn(&T) -> (&DeviceId, EventTime),
) -> Vec<&'a T> {
    let mut newest: HashMap<&DeviceId, &'a T> = HashMap::new();
    for &row in rows {
        let (id, at) = key(row);
        newest
            .entry(id)
            .and_modify(|current| {
                if key(current).1 < at {
                    *current = row;
                }
            })
            .or_insert(row);
    }
    // Sorted by device id so concurrent transactions lock rows in the same
    // order and cannot deadlock each other.
    let mut rows: Vec<&'a T> = newest.into_values().collect();
    rows.sort_by(|a, b| key(a).0.cmp(key(b).0));
    rows
}

async fn upsert_current_vehicles(
    conn: &mut PgConnection,
    vehicles: &[&VehicleReading],
) -> Result<(), sqlx::Error> {
    if vehicles.is_empty() {
        return Ok(());
    }
    let newest = newest_per_device(vehicles, |v| (&v.vehicle_id, v.recorded_at));
    // The WHERE clause makes current state move forward in event time only:
    // an older or equally old reading never replaces the stored one.
    sqlx::query(
        "INSERT INTO vehicles_current (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::float8[], $4::float8[], $5::float8[])
         ON CONFLICT (vehicle_id) DO UPDATE SET
             recorded_at = EXCLUDED.recorded_at,
             soc = EXCLUDED.soc,
             kwh_delivered_dc = EXCLUDED.kwh_delivered_dc,
             battery_temp = EXCLUDED.battery_temp,
             updated_at = now()
         WHERE vehicles_current.recorded_at < EXCLUDED.recorded_at",
    )
    .bind(newest.iter().map(|v| v.vehicle_id.as_str()).collect::<Vec<_>>())
    .bind(newest.iter().map(|v| v.recorded_at.instant()).collect::<Vec<_>>())
    .bind(newest.iter().map(|v| v.soc).collect::<Vec<_>>())
    .bind(newest.iter().map(|v| v.kwh_delivered_dc).collect::<Vec<_>>())
    .bind(newest.iter().map(|v| v.battery_temp).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_current_meters(
    conn: &mut PgConnection,
    meters: &[&MeterReading],
) -> Result<(), sqlx::Error> {
    if meters.is_empty() {
        return Ok(());
    }
    let newest = newest_per_device(meters, |m| (&m.meter_id, m.recorded_at));
    sqlx::query(
        "INSERT INTO meters_current (meter_id, recorded_at, kwh_consumed_ac, voltage)
         SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::float8[], $4::float8[])
         ON CONFLICT (meter_id) DO UPDATE SET
             recorded_at = EXCLUDED.recorded_at,
             kwh_consumed_ac = EXCLUDED.kwh_consumed_ac,
             voltage = EXCLUDED.voltage,
             updated_at = now()
         WHERE meters_current.recorded_at < EXCLUDED.recorded_at",
    )
    .bind(
        newest
            .iter()
            .map(|m| m.meter_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        newest
            .iter()
            .map(|m| m.recorded_at.instant())
            .collect::<Vec<_>>(),
    )
    .bind(newest.iter().map(|m| m.kwh_consumed_ac).collect::<Vec<_>>())
    .bind(newest.iter().map(|m| m.voltage).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
