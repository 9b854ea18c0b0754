//! The 24-hour answer read from the worker's per-vehicle figures: whole
//! buckets and hours of the window's middle with the meters' energy
//! already attributed (the migration `vehicle_figures`, ingest-worker's
//! `figures.rs`), and only the window's two raw edges read here.
//!
//! The figures are used only when they answer exactly: every bucket of the
//! middle `(a5, m]` is held (`a5` the window's first five-minute boundary,
//! `m` its last one or the last summarised, whichever is earlier), none of
//! them is marked stale for the vehicle or a meter that could count for it,
//! and the tail `(m, to]` is at most an hour (`m` is the vehicle's
//! newest five-minute figure: the worker writes every vehicle's buckets
//! together, and removes those leaving the range in the same transaction). The marks are written in the
//! same transactions as the readings and assignments that make them, so a
//! snapshot that sees a change sees its mark. Otherwise the statement says
//! so (`usable` false) and the pieces statement ([`crate::performance`])
//! answers.
//!
//! Which meter counts at the two raw edges is read from the figures too
//! when it can be ([`sql`]): the bucket holding the head names the one
//! meter that counts throughout it (`whole_meter`), and so does the last
//! summarised bucket for the tail, as long as no assignment of the vehicle
//! or of that meter starts after it. Otherwise ([`spans_sql`]) the edges'
//! meters are resolved from the vehicle's assignments, as the pieces
//! statement does.

use crate::sql::{spans_cte, Cte, Sources};

/// `grid(a5, m, a60, b60)`: the middle `(a5, m]` of a window ending at `to`
/// read from a preceding `bounds(a5, m)`, and its whole hours `(a60, b60]`
/// (`a60 = b60 = m` when it holds none). Empty when the figures cannot
/// answer: no bucket in the middle, a tail of more than an hour (figures
/// behind), or `condition` (over `g`) false.
fn grid_cte(to: &str, condition: &str) -> String {
    format!(
        "grid AS MATERIALIZED (
    SELECT g.a5, g.m,
           CASE WHEN h.a60 < h.b60 THEN h.a60 ELSE g.m END AS a60,
           CASE WHEN h.a60 < h.b60 THEN h.b60 ELSE g.m END AS b60
    FROM bounds g
    CROSS JOIN LATERAL (
        SELECT energy_bucket_end(g.a5, interval '1 hour') AS a60,
               energy_bucket_start(g.m, interval '1 hour') AS b60
    ) h
    WHERE g.a5 < g.m AND {to} - g.m <= interval '1 hour' AND {condition}
)"
    )
}

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

/// The figures of `vehicle` (an SQL expression) over the middle of grid
/// `g`: buckets up to the first whole hour, the whole hours, buckets after
/// them; `buckets` counts five-minute buckets (12 for an hour).
fn held_rows(vehicle: &str) -> String {
    let range = |buckets: u32, minutes: u32, lo: &str, hi: &str| {
        format!(
            "SELECT {buckets} AS buckets, f.vehicle_readings, f.sum_dc, f.sum_battery_temp,
               f.meter_readings, f.sum_ac, f.meters, f.meter_ids
        FROM vehicle_figures f
        WHERE f.vehicle_id = {vehicle} AND f.minutes = {minutes}
          AND f.bucket_end > g.{lo} AND f.bucket_end <= g.{hi}"
        )
    };
    [
        range(1, 5, "a5", "a60"),
        range(12, 60, "a60", "b60"),
        range(1, 5, "b60", "m"),
    ]
    .join("\n        UNION ALL\n        ")
}

/// The marks that make the figures of vehicle `$1` over `[o.a5, o.m]`
/// stale: its own, and those of the meters named in `meters` (an SQL
/// array of the meters its figures there could count from).
fn unmarked(meters: &str) -> String {
    format!(
        "NOT EXISTS (
          SELECT FROM figure_marks k
          WHERE k.device_kind = 'v' AND k.device_id = $1
            AND k.from_end <= o.m AND k.to_end >= o.a5)
      AND NOT EXISTS (
          SELECT FROM figure_marks k
          WHERE k.device_kind = 'm' AND k.device_id = ANY ({meters})
            AND k.from_end <= o.m AND k.to_end >= o.a5)"
    )
}

/// The columns of an answer from `middle` (`n`, `dc`, `temp`, `meter_n`,
/// `ac` or NULL when the figures cannot answer), `vehicle_edges` (one row
/// `n`, `dc`, `temp`), `meter_edges` (`meter_id`, `n`, `ac`) and `held`.
const ANSWER_COLUMNS: &str = "SELECT EXISTS (SELECT FROM middle) AS usable,
       v.n + coalesce(mid.n, 0) AS vehicle_readings, v.dc + coalesce(mid.dc, 0) AS sum_dc,
       CASE WHEN v.n + coalesce(mid.n, 0) > 0
            THEN (v.temp + coalesce(mid.temp, 0)) / (v.n + coalesce(mid.n, 0)) END AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM meter_edges) + coalesce(mid.meter_n, 0) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM meter_edges) + coalesce(mid.ac, 0) AS sum_ac,
       ARRAY(SELECT meter_id FROM (
                 SELECT meter_id FROM meter_edges WHERE n > 0
                 UNION
                 SELECT unnest(meter_ids) FROM held
             ) counted ORDER BY meter_id COLLATE \"C\") AS meter_ids
FROM vehicle_edges v LEFT JOIN middle mid ON true";

/// The sums of the middle's figures, `h(buckets, n, dc, temp, meter_n, ac)`.
const HELD_SUMS: &str = "(
        SELECT sum(buckets) AS buckets, sum(vehicle_readings)::bigint AS n, sum(sum_dc) AS dc,
               sum(sum_battery_temp) AS temp, sum(meter_readings)::bigint AS meter_n,
               sum(sum_ac) AS ac
        FROM held
    ) h";

/// The figures statement with the edges' meters read from the figures (see
/// the module's doc): `$1` vehicle, `$2`/`$3` window; `head` names the raw
/// partitions of `($2, $2 + 5 min]`, `tail` those of `($3 - 1 h, $3]`.
/// Columns: `usable`, `middle_held`, then those of the pieces statement.
/// Not usable but `middle_held` when only the edges' meters are not known
/// here, and [`spans_sql`] may answer: an edge's bucket without
/// `whole_meter` (a span starts or ends in it, or it was written before
/// the column), or an assignment of the vehicle or of the tail's meter
/// starting in the tail. Otherwise the figures do not hold the window.
///
/// The head's bucket `a5` is checked for marks with the middle: an
/// assignment that changes who owns it marks the vehicle, or the meter
/// that owned it, from its bucket on. Neither statement computes validity
/// for [`crate::answers`]: reading the revisions would take it past 16
/// relations, where PostgreSQL's locks leave the backend's fast path
/// (BENCHMARKS.md), and it is cheap enough to run again.
pub fn sql(head: &Sources, tail: &Sources) -> String {
    format!(
        "WITH tail AS MATERIALIZED (
    SELECT f.bucket_end, f.meters, f.whole_meter FROM vehicle_figures f
    WHERE f.vehicle_id = $1 AND f.minutes = 5
      AND f.bucket_end <= energy_bucket_start($3, interval '5 minutes')
    ORDER BY f.bucket_end DESC LIMIT 1
),
bounds AS MATERIALIZED (
    SELECT energy_bucket_end($2, interval '5 minutes') AS a5, (SELECT bucket_end FROM tail) AS m
),
{grid},
head AS MATERIALIZED (
    SELECT f.meters, f.whole_meter FROM grid g JOIN vehicle_figures f
      ON f.vehicle_id = $1 AND f.minutes = 5 AND f.bucket_end = g.a5
),
held AS MATERIALIZED (
    SELECT r.* FROM grid g CROSS JOIN LATERAL (
        {held}
    ) r
),
-- The meter counting throughout each edge: '' none, NULL not known here.
owners AS MATERIALIZED (
    SELECT g.a5, g.m,
           CASE WHEN g.a5 = $2 OR cardinality(h.meters) = 0 THEN ''
                ELSE h.whole_meter END AS head_meter,
           CASE WHEN EXISTS (SELECT FROM assignments a
                              WHERE a.vehicle_id = $1 AND a.starts_at > g.m AND a.starts_at <= $3)
                THEN NULL
                WHEN cardinality(t.meters) = 0 THEN ''
                WHEN NOT EXISTS (SELECT FROM assignments a
                                  WHERE a.meter_id = t.whole_meter AND a.vehicle_id <> $1
                                    AND a.starts_at > g.m AND a.starts_at <= $3)
                THEN t.whole_meter END AS tail_meter
    FROM grid g CROSS JOIN tail t LEFT JOIN head h ON true
),
middle AS MATERIALIZED (
    SELECT o.a5, o.m, o.head_meter, o.tail_meter, h.n, h.dc, h.temp, h.meter_n, h.ac
    FROM owners o, {held_sums}
    WHERE h.buckets = (extract(epoch FROM o.m - o.a5) / 300)::bigint
      AND {unmarked}
),
one AS (SELECT)
SELECT d.head_meter IS NOT NULL AND d.tail_meter IS NOT NULL AS usable,
       d.a5 IS NOT NULL AS middle_held,
       hv.n + tv.n + coalesce(d.n, 0) AS vehicle_readings,
       hv.dc + tv.dc + coalesce(d.dc, 0) AS sum_dc,
       CASE WHEN hv.n + tv.n + coalesce(d.n, 0) > 0
            THEN (hv.temp + tv.temp + coalesce(d.temp, 0)) / (hv.n + tv.n + coalesce(d.n, 0))
       END AS avg_battery_temp,
       hm.n + tm.n + coalesce(d.meter_n, 0) AS meter_readings,
       hm.ac + tm.ac + coalesce(d.ac, 0) AS sum_ac,
       ARRAY(SELECT DISTINCT meter_id COLLATE \"C\" FROM (
                 SELECT unnest(meter_ids) AS meter_id FROM held
                 UNION ALL SELECT d.head_meter WHERE hm.n > 0
                 UNION ALL SELECT d.tail_meter WHERE tm.n > 0
             ) counted ORDER BY 1) AS meter_ids
FROM one LEFT JOIN middle d ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_delivered_dc), 0) AS dc,
           coalesce(sum(x.battery_temp), 0) AS temp
    FROM {head_vehicle} x
    WHERE x.vehicle_id = $1 AND x.recorded_at > $2 AND x.recorded_at <= d.a5
) hv
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_delivered_dc), 0) AS dc,
           coalesce(sum(x.battery_temp), 0) AS temp
    FROM {tail_vehicle} x
    WHERE x.vehicle_id = $1 AND x.recorded_at > d.m AND x.recorded_at <= $3
) tv
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_consumed_ac), 0) AS ac
    FROM {head_meter} x
    WHERE x.meter_id = d.head_meter AND x.recorded_at > $2 AND x.recorded_at <= d.a5
) hm
CROSS JOIN LATERAL (
    SELECT count(*) AS n, coalesce(sum(x.kwh_consumed_ac), 0) AS ac
    FROM {tail_meter} x
    WHERE x.meter_id = d.tail_meter AND x.recorded_at > d.m AND x.recorded_at <= $3
) tm",
        grid = grid_cte("$3", "true"),
        held = held_rows("$1"),
        held_sums = HELD_SUMS,
        unmarked = unmarked("ARRAY(SELECT unnest(meters) FROM held) || (SELECT meters FROM head)"),
        head_vehicle = head.vehicle_raw,
        tail_vehicle = tail.vehicle_raw,
        head_meter = head.meter_raw,
        tail_meter = tail.meter_raw,
    )
}

/// The figures statement with the edges' meters resolved from the
/// vehicle's assignments; `$1` vehicle, `$2`/`$3` window, `sources` the
/// window's. Columns as [`sql`]'s.
pub fn spans_sql(sources: &Sources) -> String {
    format!(
        "WITH wanted AS (SELECT $1::text AS vehicle_id),
{spans},
bounds AS MATERIALIZED (
    SELECT energy_bucket_end($2, interval '5 minutes') AS a5,
           (SELECT max(f.bucket_end) FROM vehicle_figures f
             WHERE f.vehicle_id = $1 AND f.minutes = 5
               AND f.bucket_end <= energy_bucket_start($3, interval '5 minutes')) AS m
),
{grid},
held AS MATERIALIZED (
    SELECT r.* FROM grid g CROSS JOIN LATERAL (
        {held}
    ) r
),
middle AS MATERIALIZED (
    SELECT o.a5, o.m, h.n, h.dc, h.temp, h.meter_n, h.ac
    FROM grid o, {held_sums}
    WHERE h.buckets = (extract(epoch FROM o.m - o.a5) / 300)::bigint
      AND {unmarked}
),
edges AS MATERIALIZED (
    SELECT $2::timestamptz AS lo, a5 AS hi FROM middle
    UNION ALL
    SELECT m, $3::timestamptz FROM middle
),
{clipped},
meter_edges AS (
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
{answer}",
        spans = spans_cte("$2", "$3", Cte::Once),
        grid = grid_cte("$3", "true"),
        clipped = CLIPPED_CTE,
        held = held_rows("$1"),
        held_sums = HELD_SUMS,
        unmarked = unmarked("ARRAY(SELECT meter_id FROM spans)"),
        answer = ANSWER_COLUMNS,
        meter_raw = sources.meter_raw,
        vehicle_raw = sources.vehicle_raw,
    )
}

/// The fleet view's statement over the figures; `$1`/`$2` the window.
/// Rows `(vehicle_id, usable, …the fleet's columns)`: every vehicle whose
/// middle the figures hold, unmarked, and that reported in the window,
/// `usable`; every other vehicle that may have reported in it, not
/// `usable`, for the pieces to answer ([`crate::fleet`]); and one row with
/// no vehicle when the figures cannot answer the window at all.
///
/// The middle `(a5, m]` is the same for every vehicle (`m` the summarised
/// range's end: the worker writes every vehicle's buckets together); the
/// bucket count per vehicle still checks it. A vehicle is stale when a mark
/// covers it in the middle, or covers a meter its figures there counted
/// from (the worker finds the figures a meter's mark touches the same
/// way). The two edges are read raw, as in [`sql`]: every vehicle's and
/// meter's readings in them by time, the meters' joined to the usable
/// vehicles' spans clipped to them (one pass over each edge, instead of
/// five index probes per span and edge).
pub fn fleet_sql(sources: &Sources) -> String {
    format!(
        "WITH bounds AS MATERIALIZED (
    SELECT energy_bucket_end($1, interval '5 minutes') AS a5,
           LEAST(r.through, energy_bucket_start($2, interval '5 minutes')) AS m, r.after
    FROM figure_ranges r WHERE r.name = 'summarised'
),
{grid},
held AS MATERIALIZED (
    SELECT v.vehicle_id, h.buckets, h.n, h.dc, h.temp, h.meter_n, h.ac
    FROM grid g CROSS JOIN vehicles_current v CROSS JOIN LATERAL (
        SELECT sum(buckets) AS buckets, sum(vehicle_readings)::bigint AS n, sum(sum_dc) AS dc,
               sum(sum_battery_temp) AS temp, sum(meter_readings)::bigint AS meter_n,
               sum(sum_ac) AS ac
        FROM (
        {held}
        ) r
    ) h
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
      ON f.meters @> ARRAY[k.device_id] AND f.minutes = 5
     AND f.bucket_end >= k.from_end AND f.bucket_end <= k.to_end
     AND f.bucket_end > g.a5 AND f.bucket_end <= g.m
),
middle AS MATERIALIZED (
    SELECT h.* FROM held h, grid g
    WHERE h.buckets = (extract(epoch FROM g.m - g.a5) / 300)::bigint
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
        grid = grid_cte("$2", "g.after <= g.a5"),
        clipped = CLIPPED_CTE,
        held = held_rows("v.vehicle_id"),
        spans = spans_cte("$1", "$2", Cte::Once),
        vehicle_raw = sources.vehicle_raw,
        meter_raw = sources.meter_raw,
    )
}
