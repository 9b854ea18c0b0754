//! `write_batch`: one batch of readings into PostgreSQL in one transaction.
//!
//! History rows go in with binary COPY straight into the tables, the fast path
//! for the common case of no duplicates. When a reading is already stored (a
//! retried request, a redelivery after a crash), COPY aborts on the primary
//! key; the batch is then redone through temporary staging tables with
//! `INSERT .. ON CONFLICT DO NOTHING`, so the first stored reading wins.
//! Rollups are added in the same transaction, from exactly the rows stored
//! ([`crate::rollup`]). Current state is upserted first, from the newest
//! reading per device in the batch, and only ever moves forward in event
//! time; the upsert also locks the batch's devices, which the derivation of
//! register readings' energy relies on ([`crate::registers`]). Vehicles and
//! meters take the same path, each described by its [`crate::stream::Stream`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, NaiveDate, Utc};
use shared::domain::{Assignment, DeviceId, EventTime, MeterReading, Reading, VehicleReading};
use shared::register::{Previous, RegisterRules};
use sqlx::postgres::PgDatabaseError;
use sqlx::{PgConnection, PgPool};
use std::time::Duration;

use crate::copy::encode_rows;
use crate::partitions::{self, Analyse};
use crate::registers::{self, Moved};
use crate::rollup;
use crate::stream::{HistoryRow, Stream, StreamReading, VEHICLES};

/// What a committed batch changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub vehicle_rows: u64,
    pub meter_rows: u64,
    pub assignment_rows: u64,
    /// Readings and assignments not stored because they were already there
    /// (in the database or earlier in the same batch).
    pub duplicates: u64,
    /// Register readings newly found to jump implausibly (not counted).
    pub register_jumps: u64,
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
        self.register_jumps += other.register_jumps;
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

/// Writes a batch in one transaction and commits it, with the default
/// [`RegisterRules`].
pub async fn write_batch<'a>(
    pool: &PgPool,
    readings: impl IntoIterator<Item = &'a Reading>,
) -> Result<BatchOutcome, WriteError> {
    write_batch_with(pool, RegisterRules::default(), readings).await
}

/// Writes a batch in one transaction and commits it; register readings'
/// energy is derived by `rules`.
#[tracing::instrument(skip_all, fields(readings = tracing::field::Empty))]
pub async fn write_batch_with<'a>(
    pool: &PgPool,
    rules: RegisterRules,
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
    let outcome = match write_in_transaction(pool, rules, &rows, HistoryPath::Direct).await {
        Err(error) if is_unique_violation(&error) => {
            tracing::debug!(
                "batch holds readings already stored, redoing it through staging tables"
            );
            write_in_transaction(pool, rules, &rows, HistoryPath::Staged).await
        }
        other => other,
    }
    .map_err(classify)?;
    analyze_grown_tables(pool, &rows).await;
    Ok(outcome)
}

/// Refreshes the statistics of the partitions this batch wrote, and of the
/// fleet's own tables (assignments, current state), when they have doubled
/// since last analysed ([`partitions::analyze`]), so a filling day's and a
/// loading fleet's queries are planned as they will be after a full
/// ANALYZE, not on guesses or on statistics of the first few devices. Best effort:
/// the batch is committed, and a failure (a lock not granted within 100 ms,
/// say) only leaves the job to the next batch.
async fn analyze_grown_tables(pool: &PgPool, rows: &BatchRows<'_>) {
    let days = rows
        .vehicles
        .iter()
        .map(|v| v.recorded_at.instant())
        .chain(rows.meters.iter().map(|m| m.recorded_at.instant()))
        .map(|at| at.date_naive());
    // A batch of assignments alone: today's partitions are looked at, for
    // the fleet's tables' sake.
    let (first, last) = days
        .fold(None, |range: Option<(NaiveDate, NaiveDate)>, day| {
            Some(range.map_or((day, day), |(first, last)| (first.min(day), last.max(day))))
        })
        .unwrap_or_else(|| {
            let today = chrono::Utc::now().date_naive();
            (today, today)
        });
    // A backlog spanning more than a month: its newest days matter most.
    let first = first.max(last - chrono::Days::new(31));
    let lock_timeout = Duration::from_millis(100);
    match partitions::analyze(pool, first, last, Analyse::Grown, lock_timeout).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(tables = n, "statistics of grown tables refreshed"),
        Err(error) => tracing::warn!(%error, "statistics of grown tables deferred"),
    }
}

async fn write_in_transaction(
    pool: &PgPool,
    rules: RegisterRules,
    rows: &BatchRows<'_>,
    path: HistoryPath,
) -> Result<BatchOutcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let vehicles = write_stream(&mut tx, rules, &rows.vehicles, path).await?;
    let meters = write_stream(&mut tx, rules, &rows.meters, path).await?;
    let assignment_rows = insert_assignments(&mut tx, &rows.assignments).await?;
    tx.commit().await?;
    let stored = vehicles.stored + meters.stored + assignment_rows;
    Ok(BatchOutcome {
        vehicle_rows: vehicles.stored,
        meter_rows: meters.stored,
        assignment_rows,
        duplicates: rows.duplicates_in_batch + (rows.n_rows() - stored),
        register_jumps: vehicles.register_jumps + meters.register_jumps,
    })
}

/// What one stream's part of a batch changed.
#[derive(Default)]
struct StreamWrite {
    /// History rows stored (on the staged path, duplicates are not).
    stored: u64,
    register_jumps: u64,
}

/// Stores one stream's part of a batch: current state (first: it locks the
/// devices), history and rollups, and the energy of register readings.
async fn write_stream<R: StreamReading>(
    conn: &mut PgConnection,
    rules: RegisterRules,
    rows: &[&R],
    path: HistoryPath,
) -> Result<StreamWrite, sqlx::Error> {
    if rows.is_empty() {
        return Ok(StreamWrite::default());
    }
    let moved = upsert_current(conn, rows).await?;
    let plan = registers::plan(conn, rules, rows, &moved).await?;
    let history: Vec<HistoryRow<R>> = rows.iter().map(|row| plan.history_row(*row)).collect();
    let (stored, inserted) = write_history(conn, &history, path).await?;
    let register_jumps = plan.finish::<R>(conn, inserted.as_ref()).await?;
    Ok(StreamWrite {
        stored,
        register_jumps,
    })
}

/// Stores one stream's history rows and the rollups of those whose energy
/// is final; returns how many rows were stored and, on the staged path
/// (where duplicates are not), the devices that had one stored.
async fn write_history<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[HistoryRow<'_, R>],
    path: HistoryPath,
) -> Result<(u64, Option<HashSet<String>>), sqlx::Error> {
    let stream = R::STREAM;
    let copy_data = encode_rows(rows);
    match path {
        HistoryPath::Direct => {
            let stored =
                copy_binary(conn, &stream.copy_statement(stream.history), copy_data).await?;
            rollup::add_rollups(conn, rows).await?;
            Ok((stored, None))
        }
        HistoryPath::Staged => {
            let staging = stage(conn, stream, copy_data).await?;
            // Rolls up the interval readings it inserted.
            let (inserted, devices): (i64, Vec<String>) =
                sqlx::query_as(&stream.staged_insert(&staging))
                    .fetch_one(&mut *conn)
                    .await?;
            // Register readings derived in order are newer than anything
            // stored, so none of them was a duplicate.
            let derived: Vec<HistoryRow<R>> = rows
                .iter()
                .filter(|row| row.derived.is_some())
                .copied()
                .collect();
            rollup::add_rollups(conn, &derived).await?;
            Ok((inserted as u64, Some(devices.into_iter().collect())))
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
    .bind(&vehicle_ids)
    .bind(starts)
    .bind(&meter_ids)
    .execute(&mut *conn)
    .await?;
    // An assignment changes which meter counts for its vehicle, and for
    // the meter's other vehicles: both get the transaction's revision (see
    // the migration `revisions` for why the meter's is a table apart). The
    // meters are sorted, so concurrent transactions lock them in one order.
    sqlx::query(&VEHICLES.revision_update())
        .bind(&vehicle_ids)
        .execute(&mut *conn)
        .await?;
    let mut meter_ids: Vec<&str> = meter_ids.into_iter().flatten().collect();
    meter_ids.sort_unstable();
    meter_ids.dedup();
    sqlx::query(
        "INSERT INTO meter_assignment_revisions AS r (meter_id, revision)
         SELECT meter_id, pg_current_xact_id()::text::bigint FROM UNNEST($1::text[]) AS m(meter_id)
         ON CONFLICT (meter_id) DO UPDATE SET revision = EXCLUDED.revision",
    )
    .bind(meter_ids)
    .execute(&mut *conn)
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

/// A device the current-state upsert moved forward: its id, whether it
/// reports registers, and the time and register of the reading it left.
type MovedRow = (String, bool, Option<DateTime<Utc>>, Option<f64>);

/// Moves each device's current state forward to its newest reading of the
/// batch, locking every device's row until commit; returns the devices
/// that report registers and moved, with the reading they moved from. A
/// register reading's energy is written as NaN here and corrected by
/// [`registers::Plan::finish`].
async fn upsert_current<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[&R],
) -> Result<Moved, sqlx::Error> {
    let with_registers: HashSet<&DeviceId> = rows
        .iter()
        .filter(|row| row.energy().register().is_some())
        .map(|row| row.device())
        .collect();
    let newest: Vec<HistoryRow<R>> = newest_per_device(rows)
        .into_iter()
        .map(|reading| HistoryRow {
            reading,
            derived: None,
        })
        .collect();
    let statement = R::STREAM.current_upsert();
    let mut query = sqlx::query_as(&statement)
        .bind(
            newest
                .iter()
                .map(|r| r.reading.device().as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            newest
                .iter()
                .map(|r| r.reading.recorded_at().instant())
                .collect::<Vec<_>>(),
        );
    for index in 0..R::STREAM.fields.len() {
        query = query.bind(newest.iter().map(|r| r.value(index)).collect::<Vec<_>>());
    }
    let moved: Vec<MovedRow> = query
        .bind(
            newest
                .iter()
                .map(|r| with_registers.contains(r.reading.device()))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await?;
    // Devices whose readings were all older than their current state: the
    // upsert left their rows alone, but their history changes, and the
    // answers query-api keeps for them must see it (the revision).
    let moved_devices: HashSet<&str> = moved.iter().map(|row| row.0.as_str()).collect();
    let unmoved: Vec<&str> = newest
        .iter()
        .map(|r| r.reading.device().as_str())
        .filter(|device| !moved_devices.contains(device))
        .collect();
    if !unmoved.is_empty() {
        sqlx::query(&R::STREAM.revision_update())
            .bind(unmoved)
            .execute(&mut *conn)
            .await?;
    }
    Ok(moved
        .into_iter()
        .filter(|(_, reports_registers, _, _)| *reports_registers)
        .map(|(device, _, superseded_at, register)| {
            let previous = superseded_at.map(|at| Previous {
                recorded_at: EventTime::new(at),
                register,
            });
            (device, previous)
        })
        .collect())
}
