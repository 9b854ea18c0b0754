//! Partition upkeep: day partitions of the history tables and month
//! partitions of the hourly rollups are created ahead of need and dropped
//! past their retention, by the SQL functions of the migrations. Which
//! tables are partitioned, how, and under which retention is the schema's
//! own list, `energy_partitioned_tables`.
//!
//! Every accepted reading lies between the retention cutoff and a few
//! minutes past now, so partitions from the cutoff through [`DAYS_AHEAD`]
//! days ahead cover it. [`Partitions::prepare`] makes them at start-up and
//! in the background upkeep, well before a batch needs them; should upkeep
//! have failed for days, [`Partitions::ensure_days`] creates what a batch
//! needs before it is written. Only the background upkeep drops partitions
//! ([`Partitions::drop_expired`]), never the write path: a batch that finds
//! a day's partition gone has it created again if the day is still
//! accepted, and dead-letters its readings of that day otherwise.
//!
//! Every change waits at most `lock_timeout` for its lock (partitions are
//! attached, and dropped, under the parent's lock): behind a long query it
//! is deferred to the next attempt instead of freezing ingest and queries.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{Days, NaiveDate};
use sqlx::PgPool;

/// Days ahead of today that always have partitions: creating them a week
/// early leaves days of upkeep attempts before a batch needs one.
pub const DAYS_AHEAD: u64 = 7;

/// Most days `energy_ensure_partitions` creates in one call (the migration's
/// bound against filling the catalog).
pub const MAX_PARTITION_DAYS: u64 = 4000;

pub struct Partitions {
    raw_retention_days: u32,
    rollup_retention_days: u32,
    /// Longest a partition change waits for its lock before it is deferred.
    lock_timeout: Duration,
    /// The last day known to have partitions in every table.
    ensured_through: Mutex<Option<NaiveDate>>,
}

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub created: i64,
    pub dropped: i64,
    /// Changes given up because their lock was not granted in time; the
    /// next pass tries again.
    pub deferred: i64,
}

impl std::ops::AddAssign for Upkeep {
    fn add_assign(&mut self, other: Self) {
        self.created += other.created;
        self.dropped += other.dropped;
        self.deferred += other.deferred;
    }
}

/// A partition change that had to be deferred: the caller retries.
#[derive(Debug, thiserror::Error)]
pub enum UpkeepError {
    #[error("{0} partition changes waited longer than the lock timeout; deferred")]
    Deferred(i64),
    #[error("partition upkeep failed")]
    Database(#[from] sqlx::Error),
}

/// A partitioned table, as `energy_partitioned_tables` lists it.
#[derive(sqlx::FromRow)]
struct Partitioned {
    parent: String,
    /// `readings` (RETENTION_DAYS) or `rollups` (ROLLUP_RETENTION_DAYS).
    retention: String,
}

async fn partitioned_tables(pool: &PgPool) -> Result<Vec<Partitioned>, sqlx::Error> {
    sqlx::query_as("SELECT parent, retention FROM energy_partitioned_tables ORDER BY parent")
        .fetch_all(pool)
        .await
}

impl Partitions {
    pub fn new(
        raw_retention_days: u32,
        rollup_retention_days: u32,
        lock_timeout: Duration,
    ) -> Self {
        Self {
            raw_retention_days,
            rollup_retention_days: rollup_retention_days.max(raw_retention_days),
            lock_timeout,
            ensured_through: Mutex::new(None),
        }
    }

    fn ensured_through(&self) -> std::sync::MutexGuard<'_, Option<NaiveDate>> {
        self.ensured_through
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest day a table keeps at `today`.
    fn cutoff(&self, table: &Partitioned, today: NaiveDate) -> NaiveDate {
        let days = match table.retention.as_str() {
            "rollups" => self.rollup_retention_days,
            _ => self.raw_retention_days,
        };
        today - Days::new(u64::from(days))
    }

    /// The oldest day whose readings are accepted at `today`.
    pub fn first_accepted_day(&self, today: NaiveDate) -> NaiveDate {
        today - Days::new(u64::from(self.raw_retention_days))
    }

    /// Creates every partition from the retention cutoffs through
    /// [`DAYS_AHEAD`] days after `today`. Fails if a creation was deferred.
    pub async fn prepare(&self, pool: &PgPool, today: NaiveDate) -> Result<Upkeep, UpkeepError> {
        let through = today + Days::new(DAYS_AHEAD);
        let mut upkeep = Upkeep::default();
        for table in partitioned_tables(pool).await? {
            let cutoff = self.cutoff(&table, today);
            upkeep += self.ensure(pool, &table.parent, cutoff, through).await?;
        }
        if upkeep.deferred > 0 {
            return Err(UpkeepError::Deferred(upkeep.deferred));
        }
        *self.ensured_through() = Some(through);
        log(&upkeep);
        Ok(upkeep)
    }

    /// Drops the partitions entirely past their retention at `today`; a
    /// drop whose lock is not granted in time is deferred (counted, not an
    /// error).
    pub async fn drop_expired(
        &self,
        pool: &PgPool,
        today: NaiveDate,
    ) -> Result<Upkeep, UpkeepError> {
        let mut upkeep = Upkeep::default();
        for table in partitioned_tables(pool).await? {
            let cutoff = self.cutoff(&table, today);
            let mut tx = self.with_lock_timeout(pool).await?;
            let (dropped, deferred): (i32, i32) = sqlx::query_as(
                "SELECT dropped, deferred FROM energy_drop_partitions_before($1, $2)",
            )
            .bind(&table.parent)
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            upkeep += Upkeep {
                dropped: i64::from(dropped),
                deferred: i64::from(deferred),
                ..Upkeep::default()
            };
        }
        log(&upkeep);
        Ok(upkeep)
    }

    /// Makes sure partitions hold readings of `first..=last` in every
    /// table; a no-op while upkeep keeps ahead, unless `recheck` (a
    /// partition went missing). Fails if a creation was deferred.
    pub async fn ensure_days(
        &self,
        pool: &PgPool,
        first: NaiveDate,
        last: NaiveDate,
        recheck: bool,
    ) -> Result<(), UpkeepError> {
        if !recheck
            && self
                .ensured_through()
                .is_some_and(|through| through >= last)
        {
            return Ok(());
        }
        let mut upkeep = Upkeep::default();
        for table in partitioned_tables(pool).await? {
            upkeep += self.ensure(pool, &table.parent, first, last).await?;
        }
        if upkeep.deferred > 0 {
            return Err(UpkeepError::Deferred(upkeep.deferred));
        }
        log(&upkeep);
        let mut through = self.ensured_through();
        *through = Some(through.map_or(last, |known| known.max(last)));
        Ok(())
    }

    /// Refreshes the planner's statistics of the partitions holding days
    /// `first..=last` (history and rollups): the days being filled, so a
    /// day a backlog filled is planned well before autovacuum's next round.
    /// Returns how many tables it analysed (with the fleet's grown ones,
    /// [`analyze`]).
    pub async fn analyze_days(
        &self,
        pool: &PgPool,
        first: NaiveDate,
        last: NaiveDate,
    ) -> Result<i64, UpkeepError> {
        let analysed = analyze(pool, first, last, Analyse::Every, self.lock_timeout).await?;
        Ok(i64::from(analysed))
    }

    /// A transaction whose statements wait at most `lock_timeout` for a lock.
    async fn with_lock_timeout(
        &self,
        pool: &PgPool,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        with_lock_timeout(pool, self.lock_timeout).await
    }

    /// Creates the partitions of `table` holding readings of `first..=last`.
    async fn ensure(
        &self,
        pool: &PgPool,
        table: &str,
        first: NaiveDate,
        last: NaiveDate,
    ) -> Result<Upkeep, sqlx::Error> {
        let mut tx = self.with_lock_timeout(pool).await?;
        let (created, deferred): (i32, i32) =
            sqlx::query_as("SELECT created, deferred FROM energy_ensure_partitions($1, $2, $3)")
                .bind(table)
                .bind(first)
                .bind(last)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(Upkeep {
            created: i64::from(created),
            deferred: i64::from(deferred),
            ..Upkeep::default()
        })
    }
}

fn log(upkeep: &Upkeep) {
    if upkeep.deferred > 0 {
        tracing::warn!(
            deferred = upkeep.deferred,
            "partition changes deferred: their lock was not granted within PARTITION_LOCK_TIMEOUT_MS"
        );
    }
    if upkeep.created > 0 || upkeep.dropped > 0 {
        tracing::info!(
            created = upkeep.created,
            dropped = upkeep.dropped,
            "partitions maintained"
        );
    }
}

/// Which partitions of the days given [`analyze`] refreshes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Analyse {
    /// Every one (the upkeep's refresh of the days being filled).
    Every,
    /// Those at least twice the size their last analysis saw, never
    /// analysed included (after each batch, for the days it wrote).
    Grown,
}

/// Refreshes the statistics of the partitions (history and rollups) of
/// days `first..=last` (`energy_analyze_partitions`), and of the fleet's
/// own tables (assignments, current state) that have doubled since last
/// analysed (`energy_analyze_grown_fleet_tables`: autovacuum may have
/// analysed them on a loading fleet's first devices), waiting at most
/// `lock_timeout` for a lock. Returns how many tables it analysed.
pub async fn analyze(
    pool: &PgPool,
    first: NaiveDate,
    last: NaiveDate,
    which: Analyse,
    lock_timeout: Duration,
) -> Result<i32, sqlx::Error> {
    let mut tx = with_lock_timeout(pool, lock_timeout).await?;
    let analysed: i32 = sqlx::query_scalar(
        "SELECT energy_analyze_partitions($1, $2, $3) + energy_analyze_grown_fleet_tables()",
    )
    .bind(first)
    .bind(last)
    .bind(which == Analyse::Grown)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(analysed)
}

/// A transaction whose statements wait at most `lock_timeout` for a lock.
async fn with_lock_timeout(
    pool: &PgPool,
    lock_timeout: Duration,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // SET cannot take a bound parameter; the value is a number we format.
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}
