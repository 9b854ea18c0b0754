//! Per-vehicle five-minute figures with the meters' energy attributed
//! (`vehicle_figures`), so that query-api reads a vehicle's closed buckets
//! as one range of one table. How they stay exact (marks written by the
//! writers' triggers, the marked range read FOR SHARE) is told in the
//! migration `vehicle_figures`; this module is the pass that computes them.
//!
//! A pass, under a session advisory lock so that one worker of the group
//! runs it at a time:
//!
//! 1. picks the range to hold: closed buckets up to `now - GRACE`, back to
//!    `keep` before that; it grows forwards only, at most [`CHUNK`] per
//!    pass, from `keep` ago at first;
//! 2. widens the marked range to cover it (its own transaction, which
//!    waits for every writer that read the old range);
//! 3. in one REPEATABLE READ snapshot: computes the new buckets of every
//!    vehicle and the buckets the marks it sees cover, derives the running
//!    totals from them on, deletes those marks and the buckets that left
//!    the range, and records the range.
//!
//! The figures of a bucket are what query-api's pieces would read for it:
//! the vehicle's five-minute rollup, and for each span of a meter on the
//! vehicle clipped to the bucket, the meter's rollup when it covers the
//! whole bucket or its raw readings otherwise ([`shared::analytics_sql`]);
//! and, for an answer whose window starts inside the bucket, the bucket's
//! own readings: their times and the sums from each on, the vehicle's and
//! its whole meter's (the migration `figures_bucket_readings`).

use chrono::{DateTime, TimeDelta, Utc};
use shared::analytics_sql::{cut, spans_cte, Cte, PieceRows, Sources};
use sqlx::{Connection as _, PgConnection, PgPool};

/// Buckets are summarised once this long past their end, so that readings
/// on their way when a bucket closes rarely arrive after it was computed
/// (they would be marked and computed again).
pub const GRACE: TimeDelta = TimeDelta::seconds(60);
/// Most buckets added at either end of the range in one pass.
pub const CHUNK: TimeDelta = TimeDelta::hours(1);
/// Most marks handled in one pass; the others wait for the next.
const MARKS_PER_PASS: i64 = 20_000;
const WIDTH: TimeDelta = TimeDelta::minutes(5);
/// How old a chain of running totals grows before it starts again at the
/// range's first bucket (see [`compute_statement`]).
const REANCHOR_AFTER: TimeDelta = TimeDelta::days(1);
/// `pg_try_advisory_lock` key of the pass ("figures" in ASCII).
const LOCK_KEY: i64 = 0x0066_6967_7572_6573;

/// The summarised range `(after, through]` of bucket ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub after: DateTime<Utc>,
    pub through: DateTime<Utc>,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Another worker's pass holds the lock.
    Busy,
    Done {
        range: Range,
        /// Vehicle buckets computed.
        buckets: u64,
        /// Marks handled and deleted.
        marks: u64,
        /// Whether the range is where `now` wants it and no mark is left.
        current: bool,
    },
}

/// The last bucket end at or before `at`.
fn floor_to_bucket(at: DateTime<Utc>) -> DateTime<Utc> {
    let width = WIDTH.num_microseconds().unwrap_or(300_000_000);
    let micros = at.timestamp_micros().div_euclid(width) * width;
    DateTime::from_timestamp_micros(micros).unwrap_or(at)
}

/// The range the figures should cover at `now`, keeping `keep`.
pub fn wanted_range(now: DateTime<Utc>, keep: TimeDelta) -> Range {
    let through = floor_to_bucket(now - GRACE);
    Range {
        after: floor_to_bucket(through - keep),
        through,
    }
}

/// The range `name`, `None` before the first pass.
async fn read_range(conn: &mut PgConnection, name: &str) -> Result<Option<Range>, sqlx::Error> {
    let (after, through): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT after, through FROM figure_ranges WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    Ok(after
        .zip(through)
        .map(|(after, through)| Range { after, through }))
}

/// Buckets written in one catch-up past which the figures' table is
/// vacuumed at once: the answers read it by index-only scans, which need
/// its pages marked all-visible, and autovacuum may come minutes later.
const VACUUM_AFTER_BUCKETS: u64 = 100_000;

/// Passes at `now` until the figures are current (or another worker's pass
/// holds the lock); returns the buckets written. After a large catch-up
/// (the first fill, a backlog), or one that wrote at least as many buckets
/// as the table's statistics count, the table is vacuumed and analysed.
pub async fn catch_up(
    pool: &PgPool,
    now: DateTime<Utc>,
    keep: TimeDelta,
) -> Result<u64, sqlx::Error> {
    catch_up_while(pool, now, keep, || true).await
}

/// [`catch_up`], stopping before any pass after the first when
/// `keep_going` says no (the worker fell behind its partitions).
pub async fn catch_up_while(
    pool: &PgPool,
    now: DateTime<Utc>,
    keep: TimeDelta,
    keep_going: impl Fn() -> bool,
) -> Result<u64, sqlx::Error> {
    let mut written = 0;
    while let Pass::Done {
        range,
        buckets,
        marks,
        current,
    } = pass(pool, now, keep).await?
    {
        tracing::debug!(after = %range.after, through = %range.through, buckets, marks, current, "figures pass");
        written += buckets;
        if current || !keep_going() {
            break;
        }
    }
    if written > 0
        && (written >= VACUUM_AFTER_BUCKETS || statistics_outgrown(pool, written).await?)
    {
        sqlx::query("VACUUM (ANALYZE) vehicle_figures")
            .execute(pool)
            .await?;
    }
    Ok(written)
}

/// Whether `written` buckets are at least as many rows as the figures'
/// statistics count (`reltuples`; -1 never analysed): the statistics then
/// describe at most half the table, and its answers are planned on them
/// until autovacuum comes again. Autovacuum may have analysed the table part
/// way through a catch-up, on its first rows (seen in the plan-shape test:
/// 47,000–58,000 rows counted of 93,600 written, and a plan that changed
/// shape after ANALYZE). A current worker's rounds write one bucket per
/// vehicle against the hundreds each vehicle keeps: never outgrown.
async fn statistics_outgrown(pool: &PgPool, written: u64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT reltuples <= $1 FROM pg_class WHERE oid = 'vehicle_figures'::regclass",
    )
    .bind(written as f64)
    .fetch_one(pool)
    .await
}

/// One pass at `now` (see the module's doc), keeping `keep` of buckets.
#[tracing::instrument(skip_all, fields(now = %now))]
pub async fn pass(pool: &PgPool, now: DateTime<Utc>, keep: TimeDelta) -> Result<Pass, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Pass::Busy);
    }
    let result = locked_pass(&mut conn, now, keep).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    let outcome = result?;
    unlocked?;
    Ok(outcome)
}

async fn locked_pass(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    keep: TimeDelta,
) -> Result<Pass, sqlx::Error> {
    let wanted = wanted_range(now, keep);
    let held = read_range(conn, "summarised").await?;
    // Where the range grows from: what is held, or, at first (or when what
    // is held has all left the range), nothing at the range's start. It
    // grows forwards only, so that each new bucket's totals follow the
    // previous bucket's; a range kept longer than before fills in as time
    // passes.
    let start = match held {
        Some(held) if held.through >= wanted.after => held,
        _ => Range {
            after: wanted.after,
            through: wanted.after,
        },
    };
    let next = Range {
        through: start.through.max(wanted.through.min(start.through + CHUNK)),
        after: start.after.max(wanted.after),
    };
    // The marked range covers what is held and what is about to be.
    let marked = held.map_or(next, |held| Range {
        after: held.after.min(next.after),
        through: held.through.max(next.through),
    });
    sqlx::query("UPDATE figure_ranges SET after = $1, through = $2 WHERE name = 'marked'")
        .bind(marked.after)
        .bind(marked.through)
        .execute(&mut *conn)
        .await?;

    let mut tx = conn.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    let marks: Vec<i64> = sqlx::query_scalar("SELECT id FROM figure_marks ORDER BY id LIMIT $1")
        .bind(MARKS_PER_PASS)
        .fetch_all(&mut *tx)
        .await?;
    // Only the partitions of the range's days and months are named; when
    // one is missing (upkeep behind, dropped by hand), the partitioned
    // tables are read instead, after a savepoint to come back to.
    let mut attempt = tx.begin().await?;
    let buckets = match compute(
        &mut attempt,
        &Sources::for_window(next.after, next.through),
        start,
        next,
        &marks,
    )
    .await
    {
        Ok(buckets) => {
            attempt.commit().await?;
            buckets
        }
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
            tracing::warn!(%error, "a partition the figures need is missing: reading the partitioned tables");
            attempt.rollback().await?;
            compute(&mut tx, &Sources::parents(), start, next, &marks).await?
        }
        Err(error) => return Err(error),
    };
    sqlx::query("DELETE FROM figure_marks WHERE id = ANY($1)")
        .bind(&marks)
        .execute(&mut *tx)
        .await?;
    // Buckets that left the range.
    sqlx::query("DELETE FROM vehicle_figures WHERE bucket_end <= $1")
        .bind(next.after)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE figure_ranges SET after = $1, through = $2 WHERE name = 'summarised'")
        .bind(next.after)
        .bind(next.through)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let marks_left = marks.len() as i64 == MARKS_PER_PASS;
    Ok(Pass::Done {
        range: next,
        buckets,
        marks: marks.len() as u64,
        current: next == wanted && !marks_left,
    })
}

/// Runs [`compute_statement`] for a pass from `start` to `next` with
/// `marks`; returns how many vehicle buckets it computed.
async fn compute(
    conn: &mut PgConnection,
    sources: &Sources,
    start: Range,
    next: Range,
    marks: &[i64],
) -> Result<u64, sqlx::Error> {
    let (computed, written): (i64, i64) = sqlx::query_as(&compute_statement(sources))
        .bind(start.through)
        .bind(next.through)
        .bind(marks)
        .bind(next.after)
        .bind(REANCHOR_AFTER)
        .fetch_one(&mut *conn)
        .await?;
    tracing::debug!(computed, written, "figures computed");
    Ok(computed as u64)
}

/// Computes the figures of the new buckets and the marked ones and writes
/// them with every row after them whose totals they move: `$1`/`$2` the
/// new bucket ends `(after, through]` (of every vehicle with a current
/// state), `$3` the marks' ids, `$4`/`$2` the range after the pass, `$5`
/// how old a chain may grow before its totals start again from the range's
/// first bucket. Returns the buckets computed and the rows written.
///
/// Totals (the migration `figures_running_totals`): for each vehicle, its
/// rows from its first computed bucket on are derived again, in runs of
/// consecutive buckets; the run starting there continues the chain of the
/// vehicle's row just before it when that row is kept, every other run
/// starts a chain. A chain older than `$5` (plus a spread per vehicle, so
/// that vehicles filled together do not all start again in one pass)
/// starts again at the range's first bucket: the totals stay sums of a
/// few days, whose differences lose nothing a kWh figure needs.
fn compute_statement(sources: &Sources) -> String {
    let bucket_intervals = "SELECT s.vehicle_id, s.meter_id, p.bucket_end,
               GREATEST(p.bucket_end - interval '5 minutes', s.starts_at - interval '1 microsecond') AS lo,
               LEAST(p.bucket_end, s.ends_at - interval '1 microsecond') AS hi
        FROM spans s JOIN pairs p ON p.vehicle_id = s.vehicle_id";
    let meter_rows = PieceRows {
        raw: &sources.meter_raw,
        five: &sources.meter_5min,
        hourly: &sources.meter_hourly,
        cut: "bucket_cut",
        device: "x.meter_id = c.meter_id",
        each_interval_by_key: false,
        raw_columns:
            "c.vehicle_id, c.bucket_end, c.meter_id, 1::bigint AS n, x.kwh_consumed_ac AS ac",
        bucket_columns:
            "c.vehicle_id, c.bucket_end, c.meter_id, x.readings::bigint AS n, x.sum_ac AS ac",
    };
    let totals = FIGURE_SUMS
        .iter()
        .map(|(figure, total)| {
            format!(
                "CASE WHEN b.bucket_end = r.run THEN b.{total} ELSE 0 END
               + sum(r.{figure}) OVER upto AS {total}"
            )
        })
        .collect::<Vec<_>>()
        .join(",\n           ");
    let figure_columns = FIGURE_COLUMNS.join(", ");
    let total_columns: Vec<&str> = FIGURE_SUMS.iter().map(|(_, total)| *total).collect();
    // As the INSERT below writes them: the chain, its totals, its meters.
    let derived: Vec<&str> = ["chain_from"]
        .into_iter()
        .chain(total_columns.iter().copied())
        .chain(RECENT_COLUMNS.iter().copied())
        .collect();
    let derived_columns = derived.join(", ");
    let updates = FIGURE_COLUMNS
        .iter()
        .chain(&derived)
        .map(|column| format!("{column} = EXCLUDED.{column}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "WITH pairs AS MATERIALIZED (
    SELECT v.vehicle_id, b.bucket_end
    FROM vehicles_current v
    CROSS JOIN generate_series($1::timestamptz + interval '5 minutes', $2::timestamptz,
                               interval '5 minutes') AS b(bucket_end)
    UNION
    SELECT k.device_id, b.bucket_end
    FROM figure_marks k
    CROSS JOIN LATERAL generate_series(
        GREATEST(k.from_end, $4::timestamptz + interval '5 minutes'),
        LEAST(k.to_end, $2::timestamptz), interval '5 minutes') AS b(bucket_end)
    WHERE k.id = ANY($3) AND k.device_kind = 'v'
    UNION
    SELECT f.vehicle_id, f.bucket_end
    FROM figure_marks k
    JOIN vehicle_figures f ON f.meters @> ARRAY[k.device_id]
    WHERE k.id = ANY($3) AND k.device_kind = 'm'
      AND f.bucket_end >= k.from_end AND f.bucket_end <= k.to_end
      AND f.bucket_end > $4 AND f.bucket_end <= $2
),
wanted AS (
    SELECT vehicle_id, min(bucket_end) - interval '5 minutes' AS lo, max(bucket_end) AS hi
    FROM pairs GROUP BY vehicle_id
),
{spans},
bucket_cut AS MATERIALIZED (
    {bucket_cut}
),
meter_sums AS (
    SELECT vehicle_id, bucket_end, meter_id, sum(n) AS n, sum(ac) AS ac
    FROM ({meter_rows}) piece
    GROUP BY vehicle_id, bucket_end, meter_id
),
meters AS (
    SELECT vehicle_id, bucket_end, sum(n)::bigint AS n, sum(ac) AS ac,
           array_agg(meter_id ORDER BY meter_id COLLATE \"C\") FILTER (WHERE n > 0) AS meter_ids
    FROM meter_sums GROUP BY vehicle_id, bucket_end
),
spanned AS (
    SELECT vehicle_id, bucket_end, array_agg(DISTINCT meter_id) AS meters,
           -- One span, over the whole bucket: its meter counts throughout.
           CASE WHEN count(*) = 1
                 AND bool_and(lo = bucket_end - interval '5 minutes' AND hi = bucket_end)
                THEN min(meter_id) END AS whole_meter
    FROM bucket_cut GROUP BY vehicle_id, bucket_end
),
-- Each computed bucket's own readings, for the answers' heads (the
-- migration `figures_bucket_readings`): their times and the sums from
-- each reading on; the meter's only for a bucket with a whole meter.
{vehicle_times},
{meter_times},
fresh AS MATERIALIZED (
    SELECT p.vehicle_id, p.bucket_end, coalesce(v.readings, 0)::bigint AS vehicle_readings,
           coalesce(v.sum_dc, 0)::float8 AS sum_dc,
           coalesce(v.sum_battery_temp, 0)::float8 AS sum_battery_temp,
           coalesce(m.n, 0)::bigint AS meter_readings, coalesce(m.ac, 0)::float8 AS sum_ac,
           coalesce(s.meters, '{{}}') AS meters, coalesce(m.meter_ids, '{{}}') AS meter_ids,
           -- No span touches the bucket: no meter counts in it.
           CASE WHEN s.meters IS NULL THEN '' ELSE s.whole_meter END AS whole_meter,
           coalesce(vt.times, '{{}}') AS vehicle_times, coalesce(vt.dc_from, '{{0}}') AS dc_from,
           coalesce(vt.temp_from, '{{0}}') AS battery_temp_from,
           CASE WHEN s.meters IS NULL THEN '{{}}'
                WHEN s.whole_meter IS NOT NULL THEN coalesce(mt.times, '{{}}') END AS meter_times,
           CASE WHEN s.meters IS NULL THEN '{{0}}'
                WHEN s.whole_meter IS NOT NULL THEN coalesce(mt.ac_from, '{{0}}') END AS ac_from
    FROM pairs p
    LEFT JOIN {vehicle_5min} v ON v.vehicle_id = p.vehicle_id AND v.bucket_end = p.bucket_end
    LEFT JOIN meters m ON m.vehicle_id = p.vehicle_id AND m.bucket_end = p.bucket_end
    LEFT JOIN spanned s ON s.vehicle_id = p.vehicle_id AND s.bucket_end = p.bucket_end
    LEFT JOIN vehicle_times vt ON vt.vehicle_id = p.vehicle_id AND vt.bucket_end = p.bucket_end
    LEFT JOIN meter_times mt ON mt.vehicle_id = p.vehicle_id AND mt.bucket_end = p.bucket_end
),
-- Where each vehicle's rows are derived again: its first computed bucket,
-- or the range's first when its chain has grown old.
starts AS MATERIALIZED (
    SELECT vehicle_id, min(from_end) AS from_end FROM (
        SELECT vehicle_id, min(bucket_end) AS from_end FROM fresh GROUP BY vehicle_id
        UNION ALL
        SELECT f.vehicle_id, f.bucket_end FROM vehicle_figures f
        WHERE f.bucket_end = $4::timestamptz + interval '5 minutes'
          AND f.chain_from < $4 - $5::interval
                             - (hashtext(f.vehicle_id) & 255) * interval '5 minutes'
    ) s GROUP BY vehicle_id
),
-- Every row from there on: computed now, or kept with totals to move.
affected AS (
    SELECT vehicle_id, bucket_end, {figure_columns} FROM fresh
    UNION ALL
    SELECT h.vehicle_id, h.bucket_end, {held_figure_columns}
    FROM starts s JOIN vehicle_figures h ON h.vehicle_id = s.vehicle_id AND h.bucket_end >= s.from_end
    WHERE NOT EXISTS (SELECT FROM fresh f WHERE f.vehicle_id = h.vehicle_id AND f.bucket_end = h.bucket_end)
),
-- The kept row just before each start, whose chain the first run continues.
base AS MATERIALIZED (
    SELECT b.* FROM starts s JOIN vehicle_figures b
      ON b.vehicle_id = s.vehicle_id AND b.bucket_end = s.from_end - interval '5 minutes'
    WHERE b.bucket_end > $4
),
-- Runs of consecutive buckets: `run` is equal within one, and equal to
-- the base's bucket for the run that continues it.
runs AS (
    SELECT a.*, a.bucket_end - row_number() OVER (PARTITION BY a.vehicle_id ORDER BY a.bucket_end)
                               * interval '5 minutes' AS run
    FROM affected a
),
totals AS MATERIALIZED (
    SELECT r.*,
           CASE WHEN b.bucket_end = r.run THEN b.chain_from ELSE min(r.bucket_end) OVER whole_run END
               AS chain_from,
           {totals}
    FROM runs r LEFT JOIN base b ON b.vehicle_id = r.vehicle_id
    WINDOW whole_run AS (PARTITION BY r.vehicle_id, r.run),
           upto AS (PARTITION BY r.vehicle_id, r.run ORDER BY r.bucket_end)
),
-- The base's meters still in the range, for the run continuing it.
base_meters AS (
    SELECT b.vehicle_id, b.bucket_end AS run, m.meter_id, m.spanned_at, m.counted_at
    FROM base b
    CROSS JOIN LATERAL unnest(b.recent_meters, b.spanned_at, b.counted_at)
        AS m(meter_id, spanned_at, counted_at)
    WHERE m.spanned_at > $4
),
run_meters AS (
    SELECT DISTINCT vehicle_id, run, meter_id FROM (
        SELECT vehicle_id, run, unnest(meters) AS meter_id FROM totals
        UNION ALL
        SELECT vehicle_id, run, meter_id FROM base_meters
    ) named
),
-- For each row and meter of its run: the last bucket up to the row its
-- spans touched and the last its readings counted in.
lasts AS (
    SELECT t.vehicle_id, t.bucket_end, rm.meter_id,
           GREATEST(bm.spanned_at,
                    max(CASE WHEN rm.meter_id = ANY (t.meters) THEN t.bucket_end END) OVER upto)
               AS spanned_at,
           GREATEST(bm.counted_at,
                    max(CASE WHEN rm.meter_id = ANY (t.meter_ids) THEN t.bucket_end END) OVER upto)
               AS counted_at
    FROM totals t
    JOIN run_meters rm ON rm.vehicle_id = t.vehicle_id AND rm.run = t.run
    LEFT JOIN base_meters bm
      ON bm.vehicle_id = t.vehicle_id AND bm.run = t.run AND bm.meter_id = rm.meter_id
    WINDOW upto AS (PARTITION BY t.vehicle_id, t.run, rm.meter_id ORDER BY t.bucket_end)
),
recent AS (
    SELECT vehicle_id, bucket_end,
           array_agg(meter_id ORDER BY meter_id) AS recent_meters,
           array_agg(spanned_at ORDER BY meter_id) AS spanned_at,
           array_agg(counted_at ORDER BY meter_id) AS counted_at
    FROM lasts WHERE spanned_at IS NOT NULL
    GROUP BY vehicle_id, bucket_end
),
written AS (
    INSERT INTO vehicle_figures AS f (vehicle_id, bucket_end, {figure_columns}, {derived_columns})
    SELECT t.vehicle_id, t.bucket_end, {totals_figure_columns},
           t.chain_from, {totals_total_columns},
           coalesce(m.recent_meters, '{{}}'), coalesce(m.spanned_at, '{{}}'),
           coalesce(m.counted_at, '{{}}')
    FROM totals t LEFT JOIN recent m ON m.vehicle_id = t.vehicle_id AND m.bucket_end = t.bucket_end
    ON CONFLICT (vehicle_id, bucket_end) DO UPDATE SET {updates}
    RETURNING 1
)
SELECT (SELECT count(*) FROM fresh), (SELECT count(*) FROM written)",
        spans = spans_cte("w.lo", "w.hi", Cte::Inline),
        bucket_cut = cut(bucket_intervals, "false"),
        meter_rows = meter_rows.union_all(),
        vehicle_5min = sources.vehicle_5min,
        vehicle_times = bucket_readings(
            "vehicle_times",
            "pairs",
            &sources.vehicle_raw,
            "x.vehicle_id = b.vehicle_id",
            &[("kwh_delivered_dc", "dc_from"), ("battery_temp", "temp_from")],
        ),
        meter_times = bucket_readings(
            "meter_times",
            "spanned",
            &sources.meter_raw,
            "x.meter_id = b.whole_meter",
            &[("kwh_consumed_ac", "ac_from")],
        ),
        held_figure_columns = prefixed("h", FIGURE_COLUMNS),
        totals_figure_columns = prefixed("t", FIGURE_COLUMNS),
        totals_total_columns = prefixed("t", &total_columns),
    )
}

/// The CTE `name`: for each bucket of `buckets` (`vehicle_id`,
/// `bucket_end`), the readings of `raw` that `device` picks in it: their
/// times, ascending (`times`), and for each `(column, name)` of `sums` the
/// sums of `column` from each reading on, followed by 0 (the migration
/// `figures_bucket_readings`). Buckets without readings have no row.
fn bucket_readings(
    name: &str,
    buckets: &str,
    raw: &str,
    device: &str,
    sums: &[(&str, &str)],
) -> String {
    let aggregated: String = sums
        .iter()
        .map(|(_, sum)| {
            format!(",\n           array_agg(x.{sum} ORDER BY x.recorded_at) || 0::float8 AS {sum}")
        })
        .collect();
    let windowed: String = sums
        .iter()
        .map(|(column, sum)| format!(", sum(x.{column}) OVER later AS {sum}"))
        .collect();
    format!(
        "{name} AS (
    SELECT b.vehicle_id, b.bucket_end,
           array_agg(x.recorded_at ORDER BY x.recorded_at) AS times{aggregated}
    FROM {buckets} b
    CROSS JOIN LATERAL (
        SELECT x.recorded_at{windowed}
        FROM {raw} x
        WHERE {device}
          AND x.recorded_at > b.bucket_end - interval '5 minutes' AND x.recorded_at <= b.bucket_end
        WINDOW later AS (ORDER BY x.recorded_at DESC)
    ) x
    GROUP BY b.vehicle_id, b.bucket_end
)"
    )
}

/// A bucket's own figures, as stored.
const FIGURE_COLUMNS: &[&str] = &[
    "vehicle_readings",
    "sum_dc",
    "sum_battery_temp",
    "meter_readings",
    "sum_ac",
    "meters",
    "meter_ids",
    "whole_meter",
    "vehicle_times",
    "dc_from",
    "battery_temp_from",
    "meter_times",
    "ac_from",
];

/// Each summed figure and its running total's column.
const FIGURE_SUMS: &[(&str, &str)] = &[
    ("vehicle_readings", "total_vehicle_readings"),
    ("sum_dc", "total_dc"),
    ("sum_battery_temp", "total_battery_temp"),
    ("meter_readings", "total_meter_readings"),
    ("sum_ac", "total_ac"),
];

/// The chain's recent meters and when each last was spanned and counted.
const RECENT_COLUMNS: &[&str] = &["recent_meters", "spanned_at", "counted_at"];

/// `alias.column, …`.
fn prefixed(alias: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        raw.parse().unwrap()
    }

    #[test]
    fn the_wanted_range_ends_at_the_last_bucket_closed_a_grace_ago() {
        let range = wanted_range(at("2026-12-02T10:06:59Z"), TimeDelta::hours(25));
        assert_eq!(range.through, at("2026-12-02T10:05:00Z"));
        assert_eq!(range.after, at("2026-12-01T09:05:00Z"));
        let range = wanted_range(at("2026-12-02T10:05:59Z"), TimeDelta::hours(25));
        assert_eq!(range.through, at("2026-12-02T10:00:00Z"));
    }
}
