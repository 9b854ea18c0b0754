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
//!    `keep` before that; at most [`CHUNK`] more at either end per pass;
//! 2. widens the marked range to cover it (its own transaction, which
//!    waits for every writer that read the old range);
//! 3. in one REPEATABLE READ snapshot: computes the new buckets of every
//!    vehicle and the buckets the marks it sees cover, deletes those marks
//!    and the buckets that left the range, and records the range.
//!
//! The figures of a bucket are what query-api's pieces would read for it:
//! the vehicle's five-minute rollup, and for each span of a meter on the
//! vehicle clipped to the bucket, the meter's rollup when it covers the
//! whole bucket or its raw readings otherwise ([`shared::analytics_sql`]).

use std::collections::BTreeSet;

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
/// (the first fill, a backlog) the table is vacuumed and analysed.
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
    if written >= VACUUM_AFTER_BUCKETS {
        sqlx::query("VACUUM (ANALYZE) vehicle_figures")
            .execute(pool)
            .await?;
    }
    Ok(written)
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
    // Where the range grows from: what is held, or, at first, nothing at
    // the newest closed bucket (filled backwards from there).
    let start = held.unwrap_or(Range {
        after: wanted.through,
        through: wanted.through,
    });
    let next = Range {
        through: if start.through < wanted.through {
            wanted.through.min(start.through + CHUNK)
        } else {
            start.through
        },
        after: if start.after > wanted.after {
            wanted.after.max(start.after - CHUNK)
        } else {
            wanted.after
        },
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
    // Buckets and hours that are not wholly in the range any more.
    sqlx::query(
        "DELETE FROM vehicle_figures WHERE bucket_end - make_interval(mins => minutes) < $1",
    )
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
/// `marks`, then sums the hours of the buckets it wrote
/// ([`HOURS_STATEMENT`]); returns how many vehicle buckets it wrote.
async fn compute(
    conn: &mut PgConnection,
    sources: &Sources,
    start: Range,
    next: Range,
    marks: &[i64],
) -> Result<u64, sqlx::Error> {
    // New buckets: forward (start.through, next.through], backward
    // (next.after, start.after].
    let written: Vec<(String, DateTime<Utc>)> = sqlx::query_as(&compute_statement(sources))
        .bind(start.through)
        .bind(next.through)
        .bind(next.after)
        .bind(start.after.max(next.after))
        .bind(marks)
        .bind(next.after)
        .bind(next.through)
        .fetch_all(&mut *conn)
        .await?;
    let hours: BTreeSet<(&str, DateTime<Utc>)> = written
        .iter()
        .map(|(vehicle, hour_end)| (vehicle.as_str(), *hour_end))
        .collect();
    let (vehicles, hour_ends): (Vec<&str>, Vec<DateTime<Utc>>) = hours.into_iter().unzip();
    sqlx::query(HOURS_STATEMENT)
        .bind(vehicles)
        .bind(hour_ends)
        .execute(&mut *conn)
        .await?;
    Ok(written.len() as u64)
}

/// The hourly figures of `$1` vehicles' `$2` hours, from their five-minute
/// figures: written when all twelve buckets are held, deleted otherwise.
const HOURS_STATEMENT: &str = "
WITH hours AS (
    SELECT * FROM unnest($1::text[], $2::timestamptz[]) AS h(vehicle_id, hour_end)
),
sums AS (
    SELECT h.vehicle_id, h.hour_end, count(*) AS buckets,
           sum(f.vehicle_readings)::bigint AS vehicle_readings, sum(f.sum_dc) AS sum_dc,
           sum(f.sum_battery_temp) AS sum_battery_temp,
           sum(f.meter_readings)::bigint AS meter_readings, sum(f.sum_ac) AS sum_ac,
           (SELECT array_agg(DISTINCT m ORDER BY m) FROM vehicle_figures g, unnest(g.meters) m
             WHERE g.vehicle_id = h.vehicle_id AND g.minutes = 5
               AND g.bucket_end > h.hour_end - interval '1 hour' AND g.bucket_end <= h.hour_end) AS meters,
           (SELECT array_agg(DISTINCT m COLLATE \"C\" ORDER BY m COLLATE \"C\") FROM vehicle_figures g, unnest(g.meter_ids) m
             WHERE g.vehicle_id = h.vehicle_id AND g.minutes = 5
               AND g.bucket_end > h.hour_end - interval '1 hour' AND g.bucket_end <= h.hour_end) AS meter_ids
    FROM hours h
    JOIN vehicle_figures f ON f.vehicle_id = h.vehicle_id AND f.minutes = 5
     AND f.bucket_end > h.hour_end - interval '1 hour' AND f.bucket_end <= h.hour_end
    GROUP BY h.vehicle_id, h.hour_end
),
incomplete AS (
    DELETE FROM vehicle_figures d USING hours h
    WHERE d.vehicle_id = h.vehicle_id AND d.minutes = 60 AND d.bucket_end = h.hour_end
      AND NOT EXISTS (SELECT FROM sums s
                       WHERE s.vehicle_id = h.vehicle_id AND s.hour_end = h.hour_end AND s.buckets = 12)
)
INSERT INTO vehicle_figures AS f (vehicle_id, minutes, bucket_end, vehicle_readings, sum_dc,
    sum_battery_temp, meter_readings, sum_ac, meters, meter_ids)
SELECT vehicle_id, 60, hour_end, vehicle_readings, sum_dc, sum_battery_temp, meter_readings, sum_ac,
       coalesce(meters, '{}'), coalesce(meter_ids, '{}')
FROM sums WHERE buckets = 12
ON CONFLICT (vehicle_id, minutes, bucket_end) DO UPDATE SET
    vehicle_readings = EXCLUDED.vehicle_readings, sum_dc = EXCLUDED.sum_dc,
    sum_battery_temp = EXCLUDED.sum_battery_temp, meter_readings = EXCLUDED.meter_readings,
    sum_ac = EXCLUDED.sum_ac, meters = EXCLUDED.meters, meter_ids = EXCLUDED.meter_ids";

/// Computes and upserts the figures of the new buckets and the marked ones:
/// `$1`/`$2` forward and `$3`/`$4` backward new bucket ends `(after,
/// through]` (of every vehicle with a current state), `$5` the marks' ids,
/// `$6`/`$7` the range after the pass.
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
    format!(
        "WITH pairs AS MATERIALIZED (
    SELECT v.vehicle_id, b.bucket_end
    FROM vehicles_current v
    CROSS JOIN (
        SELECT generate_series($1::timestamptz + interval '5 minutes', $2::timestamptz, interval '5 minutes') AS bucket_end
        UNION ALL
        SELECT generate_series($3::timestamptz + interval '5 minutes', $4::timestamptz, interval '5 minutes')
    ) b
    UNION
    SELECT k.device_id, b.bucket_end
    FROM figure_marks k
    CROSS JOIN LATERAL generate_series(
        GREATEST(k.from_end, $6::timestamptz + interval '5 minutes'),
        LEAST(k.to_end, $7::timestamptz), interval '5 minutes') AS b(bucket_end)
    WHERE k.id = ANY($5) AND k.device_kind = 'v'
    UNION
    SELECT f.vehicle_id, f.bucket_end
    FROM figure_marks k
    JOIN vehicle_figures f ON f.meters @> ARRAY[k.device_id]
    WHERE k.id = ANY($5) AND k.device_kind = 'm' AND f.minutes = 5
      AND f.bucket_end >= k.from_end AND f.bucket_end <= k.to_end
      AND f.bucket_end > $6 AND f.bucket_end <= $7
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
)
INSERT INTO vehicle_figures AS f (vehicle_id, minutes, bucket_end, vehicle_readings, sum_dc,
    sum_battery_temp, meter_readings, sum_ac, meters, meter_ids, whole_meter)
SELECT p.vehicle_id, 5, p.bucket_end, coalesce(v.readings, 0), coalesce(v.sum_dc, 0),
       coalesce(v.sum_battery_temp, 0), coalesce(m.n, 0), coalesce(m.ac, 0),
       coalesce(s.meters, '{{}}'), coalesce(m.meter_ids, '{{}}'), s.whole_meter
FROM pairs p
LEFT JOIN {vehicle_5min} v ON v.vehicle_id = p.vehicle_id AND v.bucket_end = p.bucket_end
LEFT JOIN meters m ON m.vehicle_id = p.vehicle_id AND m.bucket_end = p.bucket_end
LEFT JOIN spanned s ON s.vehicle_id = p.vehicle_id AND s.bucket_end = p.bucket_end
ON CONFLICT (vehicle_id, minutes, bucket_end) DO UPDATE SET
    vehicle_readings = EXCLUDED.vehicle_readings, sum_dc = EXCLUDED.sum_dc,
    sum_battery_temp = EXCLUDED.sum_battery_temp, meter_readings = EXCLUDED.meter_readings,
    sum_ac = EXCLUDED.sum_ac, meters = EXCLUDED.meters, meter_ids = EXCLUDED.meter_ids,
    whole_meter = EXCLUDED.whole_meter
RETURNING f.vehicle_id, energy_hour_end(f.bucket_end)",
        spans = spans_cte("w.lo", "w.hi", Cte::Inline),
        bucket_cut = cut(bucket_intervals, "false"),
        meter_rows = meter_rows.union_all(),
        vehicle_5min = sources.vehicle_5min,
    )
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
