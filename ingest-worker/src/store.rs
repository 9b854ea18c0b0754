//! `write_batch`: one batch of readings into PostgreSQL in one transaction.
//!
//! History rows go in with binary COPY straight into the tables, the fast path
//! for the common case of no duplicates. When a reading is already stored (a
//! retried request, a redelivery after a crash), COPY aborts on the primary
//! key; the batch is then redone through temporary staging tables with
//! `INSERT .. ON CONFLICT DO NOTHING`, so the first stored reading wins.
//! Hourly rollups are added in the same transaction, from exactly the rows
//! stored ([`crate::rollup`]). Current state is upserted from the newest
//! reading per device in the batch and only ever moves forward in event time.
//! Vehicles and meters take the same path, each described by its
//! [`crate::stream::Stream`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use shared::domain::{Assignment, DeviceId, EventTime, MeterReading, Reading, VehicleReading};
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgConnection, PgPool};

use crate::copy::encode_rows;
use crate::rollup;
use crate::stream::{Stream, StreamReading};

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
    if service_kit::db::is_transient(&error) {
        WriteError::Transient(error)
    } else if is_missing_partition(&error) {
        WriteError::MissingPartition(error)
    } else if is_data_error {
        WriteError::Data(error)
    } else {
        WriteError::Permanent(error)
    }
}

/// A row without a partition: PostgreSQL reports it as a check violation
/// (23514), a data error by class, naming the partitioned table but no
/// constraint, where a failed CHECK names its constraint. Recognised by
/// that structure, not by the message, which `lc_messages` translates.
fn is_missing_partition(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = error else {
        return false;
    };
    let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() else {
        return false;
    };
    pg.code() == "23514" && pg.constraint().is_none() && pg.table().is_some()
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
    fn split(readings: impl IntoIterator<Item = &'a Reading>) -> Self {
        let readings = readings.into_iter();
        let mut seen: HashSet<(u8, &DeviceId, EventTime)> =
            HashSet::with_capacity(readings.size_hint().0);
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
#[tracing::instrument(skip_all, fields(readings = tracing::field::Empty))]
pub async fn write_batch<'a>(
    pool: &PgPool,
    readings: impl IntoIterator<Item = &'a Reading>,
) -> Result<BatchOutcome, WriteError> {
    let rows = BatchRows::split(readings);
    tracing::Span::current().record("readings", rows.n_rows() + rows.duplicates_in_batch);
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
    let vehicle_rows = write_history(&mut tx, &rows.vehicles, path).await?;
    let meter_rows = write_history(&mut tx, &rows.meters, path).await?;
    let assignment_rows = insert_assignments(&mut tx, &rows.assignments).await?;
    upsert_current(&mut tx, &rows.vehicles).await?;
    upsert_current(&mut tx, &rows.meters).await?;
    tx.commit().await?;
    let stored = vehicle_rows + meter_rows + assignment_rows;
    Ok(BatchOutcome {
        vehicle_rows,
        meter_rows,
        assignment_rows,
        duplicates: rows.duplicates_in_batch + (rows.n_rows() - stored),
    })
}

/// Stores one stream's history rows and their rollups; returns how many
/// rows were stored (on the staged path, duplicates are not).
async fn write_history<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[&R],
    path: HistoryPath,
) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let stream = R::STREAM;
    let copy_data = encode_rows(rows);
    match path {
        HistoryPath::Direct => {
            let stored =
                copy_binary(conn, &stream.copy_statement(stream.history), copy_data).await?;
            rollup::add_rollups(conn, rows).await?;
            Ok(stored)
        }
        HistoryPath::Staged => {
            let staging = stage(conn, stream, copy_data).await?;
            let inserted: i64 = sqlx::query_scalar(&stream.staged_insert(&staging))
                .fetch_one(conn)
                .await?;
            Ok(inserted as u64)
        }
    }
}

/// Copies encoded rows into a temporary table shaped like the stream's
/// history table (dropped at commit); returns its name.
async fn stage(
    conn: &mut PgConnection,
    stream: &Stream,
    copy_data: Vec<u8>,
) -> Result<String, sqlx::Error> {
    let staging = format!("{}_staging", stream.history);
    sqlx::query(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {}) ON COMMIT DROP",
        stream.history
    ))
    .execute(&mut *conn)
    .await?;
    copy_binary(conn, &stream.copy_statement(&staging), copy_data).await?;
    Ok(staging)
}

async fn copy_binary(
    conn: &mut PgConnection,
    statement: &str,
    data: Vec<u8>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(statement).await?;
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
/// Sorted by device id so concurrent transactions lock rows in the same
/// order and cannot deadlock each other.
fn newest_per_device<'a, R: StreamReading>(rows: &[&'a R]) -> Vec<&'a R> {
    let mut newest: HashMap<&DeviceId, &'a R> = HashMap::new();
    for &row in rows {
        newest
            .entry(row.device())
            .and_modify(|current| {
                if current.recorded_at() < row.recorded_at() {
                    *current = row;
                }
            })
            .or_insert(row);
    }
    let mut rows: Vec<&'a R> = newest.into_values().collect();
    rows.sort_by(|a, b| a.device().cmp(b.device()));
    rows
}

/// Moves each device's current state forward to its newest reading of the batch.
async fn upsert_current<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[&R],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let newest = newest_per_device(rows);
    let statement = R::STREAM.current_upsert();
    let mut query = sqlx::query(&statement)
        .bind(
            newest
                .iter()
                .map(|r| r.device().as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            newest
                .iter()
                .map(|r| r.recorded_at().instant())
                .collect::<Vec<_>>(),
        );
    for index in 0..R::STREAM.fields.len() {
        query = query.bind(newest.iter().map(|r| r.field(index)).collect::<Vec<_>>());
    }
    query.execute(conn).await?;
    Ok(())
}
