//! Partition upkeep: day partitions of the history tables and month
//! partitions of the hourly rollups are created ahead of need and dropped
//! past their retention, by the SQL functions of the migrations. Which
//! tables are partitioned, how, and under which retention is the schema's
//! own list, `energy_partitioned_tables`.
//!
//! Every accepted reading lies between the retention cutoff and a few
//! minutes past now, so partitions from the cutoff through the day after
//! tomorrow always cover it; `maintain` runs at start-up and hourly. Should
//! it have failed for days, `ensure_through` creates what a batch needs
//! before the batch is written.

use std::sync::Mutex;

use chrono::{Days, NaiveDate, Utc};
use sqlx::PgPool;

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

/// Days ahead of today that always have partitions.
const DAYS_AHEAD: u64 = 2;

pub struct Partitions {
    raw_retention_days: u32,
    rollup_retention_days: u32,
    /// The last day known to have partitions in every table.
    ensured_through: Mutex<Option<NaiveDate>>,
}

/// What one maintenance pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Upkeep {
    pub created: i64,
    pub dropped: i64,
}

impl Partitions {
    pub fn new(raw_retention_days: u32, rollup_retention_days: u32) -> Self {
        Self {
            raw_retention_days,
            rollup_retention_days: rollup_retention_days.max(raw_retention_days),
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

    /// Creates every partition from the retention cutoffs through the day
    /// after tomorrow, and drops those entirely past their retention.
    pub async fn maintain(&self, pool: &PgPool, today: NaiveDate) -> Result<Upkeep, sqlx::Error> {
        let through = today + Days::new(DAYS_AHEAD);
        let mut upkeep = Upkeep::default();
        for table in partitioned_tables(pool).await? {
            let cutoff = self.cutoff(&table, today);
            upkeep.dropped += drop_before(pool, &table.parent, cutoff).await?;
            upkeep.created += ensure(pool, &table.parent, cutoff, through).await?;
        }
        *self.ensured_through() = Some(through);
        if upkeep != Upkeep::default() {
            tracing::info!(
                created = upkeep.created,
                dropped = upkeep.dropped,
                "partitions maintained"
            );
        }
        Ok(upkeep)
    }

    /// Makes sure partitions exist through `last_day` (the newest day of a
    /// batch); a no-op while maintenance keeps ahead.
    pub async fn ensure_through(
        &self,
        pool: &PgPool,
        last_day: NaiveDate,
    ) -> Result<(), sqlx::Error> {
        if self
            .ensured_through()
            .is_some_and(|through| through >= last_day)
        {
            return Ok(());
        }
        let first_day = Utc::now().date_naive() - Days::new(u64::from(self.raw_retention_days));
        for table in partitioned_tables(pool).await? {
            ensure(pool, &table.parent, first_day, last_day).await?;
        }
        let mut through = self.ensured_through();
        *through = Some(through.map_or(last_day, |known| known.max(last_day)));
        Ok(())
    }
}

/// Creates the partitions of `table` holding readings of `first..=last`.
async fn ensure(
    pool: &PgPool,
    table: &str,
    first: NaiveDate,
    last: NaiveDate,
) -> Result<i64, sqlx::Error> {
    let created: i32 = sqlx::query_scalar("SELECT energy_ensure_partitions($1, $2, $3)")
        .bind(table)
        .bind(first)
        .bind(last)
        .fetch_one(pool)
        .await?;
    Ok(i64::from(created))
}

async fn drop_before(pool: &PgPool, table: &str, cutoff: NaiveDate) -> Result<i64, sqlx::Error> {
    let dropped: i32 = sqlx::query_scalar("SELECT energy_drop_partitions_before($1, $2)")
        .bind(table)
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
    Ok(i64::from(dropped))
}
