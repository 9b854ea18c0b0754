//! The 24-hour answer read from the worker's per-vehicle figures: the
//! window's middle as the difference of two rows of running totals (the
//! migrations `vehicle_figures` and `figures_running_totals`, ingest-worker's
//! `figures.rs`), the window's head (the part of its first bucket after its
//! start) from the readings that bucket's row keeps (the migration
//! `figures_bucket_readings`), and only its tail read raw here.
//!
//! The figures are used only when they answer exactly: the rows of the
//! bucket holding the window's start (`a5`, its first five-minute
//! boundary) and of the vehicle's newest summarised bucket at or before
//! its end (`m`) are held and belong to the same chain (no bucket missing
//! between them), no mark makes the buckets `[a5, m]` stale for the
//! vehicle or a meter that could count for it, and the tail `(m, to]` is at
//! most an hour (the worker writes every vehicle's buckets together). The
//! marks are written in the same transactions as the readings and
//! assignments that make them, so a snapshot that sees a change sees its
//! mark. Otherwise the statement returns no row and the pieces statement
//! ([`crate::performance`]) answers.
//!
//! Which meter counts at the two edges is read from the figures too
//! when it can be ([`sql`]): the bucket holding the head names the one
//! meter that counts throughout it (`whole_meter`, whose readings the row
//! keeps), and so does the last
//! summarised bucket for the tail, as long as no assignment of the vehicle
//! or of that meter starts after it. Otherwise ([`spans_sql`]) the edges'
//! meters are resolved from the vehicle's assignments, as the pieces
//! statement does.
//!
//! The meters counted in the middle (`meterIds`) are those whose readings
//! last counted after `a5`, from the newest row ([`Figures::meter_ids`]).

use chrono::{DateTime, Utc};

use crate::sql::{spans_cte, Cte, Sources};

/// `clipped(vehicle_id, meter_id, lo, hi)`: each span of the preceding
/// `spans` clipped to each of the preceding `edges(lo, hi)`, empty ones left
/// out: the meters' readings that count at the window's raw edges.
const CLIPPED_CTE: &str = "clipped AS MATERIALIZED (
    SELECT * FROM (
        SELECT s.vehicle_id, s.meter_id,
               GREATEST(e.lo, s.starts_at - interval '1 microsecond') AS lo,
               LEAST(e.hi, s.ends_at - interval '1 microsecond') AS hi
        FROM spans s, edges e
    ) c
    WHERE lo < hi
)";

/// `t` and `h`: the vehicle's (`$1`) newest row at or before the end of a
/// window (`$3`) and the row of the bucket holding its start (`$2`), when
/// they are of one chain.
const MIDDLE_ROWS: &str = "(
    SELECT f.bucket_end, f.chain_from, f.whole_meter, f.total_vehicle_readings, f.total_dc,
           f.total_battery_temp, f.total_meter_readings, f.total_ac, f.recent_meters, f.counted_at
    FROM vehicle_figures f
    WHERE f.vehicle_id = $1 AND f.bucket_end <= energy_bucket_start($3, interval '5 minutes')
    ORDER BY f.bucket_end DESC LIMIT 1
) t
JOIN vehicle_figures h
  ON h.vehicle_id = $1 AND h.bucket_end = energy_bucket_end($2, interval '5 minutes')
 AND h.bucket_end <= t.bucket_end AND h.chain_from = t.chain_from";

/// No mark makes the buckets `[h, t]` stale for vehicle `$1` or for a
/// meter that could count for it there (the newest row's recent meters:
/// those of every kept bucket of its chain, a superset), and the tail is at
/// most an hour.
const HELD: &str = "$3 - t.bucket_end <= interval '1 hour'
  AND NOT EXISTS (
      SELECT FROM figure_marks k
      WHERE k.from_end <= t.bucket_end AND k.to_end >= h.bucket_end
        AND ((k.device_kind = 'v' AND k.device_id = $1)
             OR (k.device_kind = 'm' AND k.device_id = ANY (t.recent_meters))))";

/// The difference of running total `column` between `t` and `h`.
fn middle(column: &str) -> String {
    format!("(t.{column} - h.{column})")
}

/// The middle's sums between `t` and `h`: `n, dc, temp, meter_n, ac`.
fn middle_sums() -> String {
    [
        ("total_vehicle_readings", "n"),
        ("total_dc", "dc"),
        ("total_battery_temp", "temp"),
        ("total_meter_readings", "meter_n"),
        ("total_ac", "ac"),
    ]
    .map(|(column, name)| format!("{} AS {name}", middle(column)))
    .join(", ")
}

/// The figures statement with the edges' meters read from the figures (see
/// the module's doc): `$1` vehicle, `$2`/`$3` window; `tail` names the raw
/// partitions of `($3 - 1 h, $3]`. The head `($2, a5]` is read from the
/// readings `h` keeps of its bucket (the migration
/// `figures_bucket_readings`): how many are at or before `$2` is a binary
/// search of their times, the sums of the others an element of the sums
/// from each reading on.
/// No row when the figures do not hold the window's middle; a row whose
/// `head_meter` or `tail_meter` is NULL when only the edges' meters are
/// not known here, and [`spans_sql`] may answer: an edge's bucket without
/// a `whole_meter` (a span starts or ends in it, or several touch it), or
/// an assignment of the vehicle or of the tail's meter starting in the
/// tail. Columns: those of [`Figures`] and [`EdgeMeters`].
///
/// The head's bucket `a5` is checked for marks with the middle: a late
/// reading in it, or an assignment that changes who owns it, marks the
/// vehicle or the meter from its bucket on. Neither statement computes
/// validity for [`crate::answers`]: reading the revisions would take it
/// past 16 relations, where PostgreSQL's locks leave the backend's fast
/// path (BENCHMARKS.md), and it is cheap enough to run again.
pub fn sql(tail: &Sources) -> String {
    let n = format!("({} + hv.n + tv.n)", middle("total_vehicle_readings"));
    format!(
        "SELECT h.bucket_end AS head_end, o.head_meter, o.tail_meter,
       {n} AS vehicle_readings,
       {dc} + hv.dc + tv.dc AS sum_dc,
       CASE WHEN {n} > 0 THEN ({temp} + hv.temp + tv.temp) / {n} END AS avg_battery_temp,
       {meter_n} + hm.n + tm.n AS meter_readings,
       {ac} + hm.ac + tm.ac AS sum_ac,
       array_remove(ARRAY[CASE WHEN hm.n > 0 THEN o.head_meter END,
                          CASE WHEN tm.n > 0 THEN o.tail_meter END], NULL) AS edge_meter_ids,
       t.recent_meters, t.counted_at
FROM {rows}
-- The meter counting throughout each edge: '' none, NULL not known here.
-- (OFFSET 0: the probe runs once, not once per column naming it.)
CROSS JOIN LATERAL (
    SELECT CASE WHEN h.bucket_end = $2 THEN '' ELSE h.whole_meter END AS head_meter,
           CASE WHEN NOT EXISTS (
                    SELECT FROM assignments a
                    WHERE (a.vehicle_id = $1 OR a.meter_id = t.whole_meter)
                      AND a.starts_at > t.bucket_end AND a.starts_at <= $3)
                THEN t.whole_meter END AS tail_meter
    OFFSET 0
) o
-- The head: how many of the bucket's readings are at or before `$2`.
CROSS JOIN LATERAL (
    SELECT width_bucket($2, h.vehicle_times) AS vehicle, width_bucket($2, h.meter_times) AS meter
) skipped
CROSS JOIN LATERAL (
    SELECT cardinality(h.vehicle_times) - skipped.vehicle AS n,
           h.dc_from[skipped.vehicle + 1] AS dc, h.battery_temp_from[skipped.vehicle + 1] AS temp
) hv
-- No meter arrays (several meters in the bucket) matter only when the
-- head is empty: otherwise `head_meter` is NULL and the row unused.
CROSS JOIN LATERAL (
    SELECT coalesce(cardinality(h.meter_times) - skipped.meter, 0) AS n,
           coalesce(h.ac_from[skipped.meter + 1], 0) AS ac
) hm
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_delivered_dc), 0) AS dc,
           coalesce(sum(x.battery_temp), 0) AS temp
    FROM {tail_vehicle} x
    WHERE x.vehicle_id = $1 AND x.recorded_at > t.bucket_end AND x.recorded_at <= $3
) tv
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_consumed_ac), 0) AS ac
    FROM {tail_meter} x
    WHERE x.meter_id = o.tail_meter AND x.recorded_at > t.bucket_end AND x.recorded_at <= $3
) tm
WHERE {held}",
        dc = middle("total_dc"),
        temp = middle("total_battery_temp"),
        meter_n = middle("total_meter_readings"),
        ac = middle("total_ac"),
        rows = MIDDLE_ROWS,
        held = HELD,
        tail_vehicle = tail.vehicle_raw,
        tail_meter = tail.meter_raw,
    )
}

/// The figures statement with the edges' meters resolved from the
/// vehicle's assignments; `$1` vehicle, `$2`/`$3` window, `sources` the
/// window's. No row when the figures do not hold the middle; columns
/// those of [`Figures`].
pub fn spans_sql(sources: &Sources) -> String {
    format!(
        "WITH wanted AS (SELECT $1::text AS vehicle_id),
{spans},
middle AS MATERIALIZED (
    SELECT h.bucket_end AS a5, t.bucket_end AS m,
           {middle_sums}, t.recent_meters, t.counted_at
    FROM {rows}
    WHERE {held}
),
edges AS MATERIALIZED (
    SELECT $2::timestamptz AS lo, a5 AS hi FROM middle
    UNION ALL
    SELECT m, $3::timestamptz FROM middle
),
{clipped},
meter_edges AS MATERIALIZED (
    SELECT c.meter_id, count(*) AS n, sum(x.kwh_consumed_ac) AS ac
    FROM clipped c
    JOIN {meter_raw} x ON x.meter_id = c.meter_id AND x.recorded_at > c.lo AND x.recorded_at <= c.hi
    GROUP BY c.meter_id
),
vehicle_edges AS (
    SELECT count(*) AS n, coalesce(sum(x.kwh_delivered_dc), 0) AS dc,
           coalesce(sum(x.battery_temp), 0) AS temp
    FROM edges e
    JOIN {vehicle_raw} x ON x.vehicle_id = $1 AND x.recorded_at > e.lo AND x.recorded_at <= e.hi
)
SELECT d.a5 AS head_end,
       d.n + v.n AS vehicle_readings, d.dc + v.dc AS sum_dc,
       CASE WHEN d.n + v.n > 0 THEN (d.temp + v.temp) / (d.n + v.n) END AS avg_battery_temp,
       d.meter_n + (SELECT coalesce(sum(n), 0) FROM meter_edges)::bigint AS meter_readings,
       d.ac + (SELECT coalesce(sum(ac), 0) FROM meter_edges) AS sum_ac,
       ARRAY(SELECT meter_id FROM meter_edges WHERE n > 0) AS edge_meter_ids,
       d.recent_meters, d.counted_at
FROM middle d, vehicle_edges v",
        spans = spans_cte("$2", "$3", Cte::Once),
        middle_sums = middle_sums(),
        rows = MIDDLE_ROWS,
        held = HELD,
        clipped = CLIPPED_CTE,
        meter_raw = sources.meter_raw,
        vehicle_raw = sources.vehicle_raw,
    )
}

/// A row of [`sql`] or [`spans_sql`]: the window's figures, middle and
/// edges summed, and what names the meters that counted.
#[derive(Debug, sqlx::FromRow)]
pub struct Figures {
    /// `a5`: the end of the bucket holding the window's start.
    pub head_end: DateTime<Utc>,
    pub vehicle_readings: i64,
    pub sum_dc: f64,
    pub avg_battery_temp: Option<f64>,
    pub meter_readings: i64,
    pub sum_ac: f64,
    /// Meters whose readings counted at the edges.
    pub edge_meter_ids: Vec<String>,
    /// The newest row's recent meters, and the last bucket each one's
    /// readings counted in (`None`: not in the chain's kept buckets).
    pub recent_meters: Vec<String>,
    pub counted_at: Vec<Option<DateTime<Utc>>>,
}

/// [`sql`]'s edges' meters: `None` when not known from the figures.
#[derive(Debug, sqlx::FromRow)]
pub struct EdgeMeters {
    pub head_meter: Option<String>,
    pub tail_meter: Option<String>,
}

impl Figures {
    /// The meters whose readings counted in the window, in byte order:
    /// those of the edges, and those that counted in the middle
    /// `(head_end, m]` (their last counted bucket is after `head_end`).
    pub fn meter_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .recent_meters
            .iter()
            .zip(&self.counted_at)
            .filter(|(_, counted_at)| counted_at.is_some_and(|at| at > self.head_end))
            .map(|(meter, _)| meter.clone())
            .chain(self.edge_meter_ids.iter().cloned())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// The fleet view's statement over the figures; `$1`/`$2` the window.
/// Rows `(vehicle_id, usable, …the fleet's columns)`: every vehicle whose
/// middle the figures hold, unmarked, and that reported in the window,
/// `usable`; every other vehicle that may have reported in it, not
/// `usable`, for the pieces to answer ([`crate::fleet`]); and one row with
/// no vehicle when the figures cannot answer the window at all.
///
/// The middle `(a5, m]` is the same for every vehicle (`m` the summarised
/// range's end: the worker writes every vehicle's buckets together), the
/// difference of the vehicle's rows at `m` and `a5` when they are of one
/// chain (a vehicle new since the last pass has no row at `m`, one that
/// was not there at `a5` none there). A vehicle is stale when a mark
/// covers it in the middle, or covers a meter its figures there counted
/// from (the worker finds the figures a meter's mark touches the same
/// way). The two edges are read raw, as in [`sql`]: every vehicle's and
/// meter's readings in them by time, the meters' joined to the usable
/// vehicles' spans clipped to them (one pass over each edge, instead of
/// five index probes per span and edge).
pub fn fleet_sql(sources: &Sources) -> String {
    format!(
        "WITH grid AS MATERIALIZED (
    SELECT * FROM (
        SELECT energy_bucket_end($1, interval '5 minutes') AS a5,
               LEAST(r.through, energy_bucket_start($2, interval '5 minutes')) AS m, r.after
        FROM figure_ranges r WHERE r.name = 'summarised'
    ) g
    WHERE g.after < g.a5 AND g.a5 <= g.m AND $2 - g.m <= interval '1 hour'
),
-- Every vehicle's middle: the difference of its rows at m and at a5 when
-- they are of one chain (`whole`), NULL without them.
held AS MATERIALIZED (
    SELECT v.vehicle_id, h.chain_from = t.chain_from AS whole, {middle_sums}
    FROM grid g CROSS JOIN vehicles_current v
    LEFT JOIN vehicle_figures t ON t.vehicle_id = v.vehicle_id AND t.bucket_end = g.m
    LEFT JOIN vehicle_figures h ON h.vehicle_id = v.vehicle_id AND h.bucket_end = g.a5
),
stale AS MATERIALIZED (
    SELECT k.device_id AS vehicle_id
    FROM grid g JOIN figure_marks k
      ON k.device_kind = 'v' AND k.from_end <= g.m AND k.to_end > g.a5
    UNION
    SELECT f.vehicle_id
    FROM grid g JOIN figure_marks k
      ON k.device_kind = 'm' AND k.from_end <= g.m AND k.to_end > g.a5
    JOIN vehicle_figures f
      ON f.meters @> ARRAY[k.device_id] AND f.bucket_end >= k.from_end AND f.bucket_end <= k.to_end
     AND f.bucket_end > g.a5 AND f.bucket_end <= g.m
),
middle AS MATERIALIZED (
    SELECT h.* FROM held h
    WHERE h.whole
      AND NOT EXISTS (SELECT FROM stale s WHERE s.vehicle_id = h.vehicle_id)
),
edges AS MATERIALIZED (
    SELECT $1::timestamptz AS lo, g.a5 AS hi FROM grid g
    UNION ALL
    SELECT g.m, $2::timestamptz FROM grid g
),
vehicle_edges AS (
    SELECT x.vehicle_id, count(*) AS n, sum(x.kwh_delivered_dc) AS dc, sum(x.battery_temp) AS temp
    FROM edges e
    JOIN {vehicle_raw} x ON x.recorded_at > e.lo AND x.recorded_at <= e.hi
    GROUP BY x.vehicle_id
),
wanted AS (SELECT vehicle_id FROM middle),
{spans},
{clipped},
meter_edges AS (
    SELECT c.vehicle_id, count(*) AS n, sum(x.kwh_consumed_ac) AS ac
    FROM edges e
    JOIN {meter_raw} x ON x.recorded_at > e.lo AND x.recorded_at <= e.hi
    JOIN clipped c ON c.meter_id = x.meter_id AND x.recorded_at > c.lo AND x.recorded_at <= c.hi
    GROUP BY c.vehicle_id
),
answered AS (
    SELECT m.vehicle_id, m.n + coalesce(v.n, 0) AS n, m.dc + coalesce(v.dc, 0) AS dc,
           m.temp + coalesce(v.temp, 0) AS temp, m.meter_n + coalesce(e.n, 0) AS meter_n,
           m.ac + coalesce(e.ac, 0) AS ac
    FROM middle m
    LEFT JOIN vehicle_edges v USING (vehicle_id)
    LEFT JOIN meter_edges e USING (vehicle_id)
)
SELECT vehicle_id, true AS usable, n AS vehicle_readings, dc AS sum_dc,
       temp / n AS avg_battery_temp, meter_n AS meter_readings, ac AS sum_ac
FROM answered WHERE n > 0
UNION ALL
SELECT o.vehicle_id, false, 0, 0, NULL, 0, 0
FROM (SELECT vehicle_id FROM held UNION SELECT vehicle_id FROM vehicle_edges
      UNION SELECT vehicle_id FROM stale) o
WHERE NOT EXISTS (SELECT FROM middle m WHERE m.vehicle_id = o.vehicle_id)
UNION ALL
SELECT NULL, false, 0, 0, NULL, 0, 0 WHERE NOT EXISTS (SELECT FROM grid)",
        middle_sums = middle_sums(),
        clipped = CLIPPED_CTE,
        spans = spans_cte("$1", "$2", Cte::Once),
        vehicle_raw = sources.vehicle_raw,
        meter_raw = sources.meter_raw,
    )
}
