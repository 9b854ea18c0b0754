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

use crate::sql::{spans_cte, Cte, Sources};

/// The figures statement (see the module's doc); `$1` vehicle, `$2`/`$3`
/// window. Columns: `usable`, then those of the pieces statement. It
/// computes no validity for [`crate::answers`]: reading the revisions
/// would take it past 16 relations, where PostgreSQL's locks leave the
/// backend's fast path (BENCHMARKS.md), and it is cheap enough to run
/// again.
pub fn sql(sources: &Sources) -> String {
    format!(
        "WITH wanted AS (SELECT $1::text AS vehicle_id),
{spans},
bounds AS MATERIALIZED (
    SELECT energy_bucket_end($2, interval '5 minutes') AS a5,
           (SELECT max(f.bucket_end) FROM vehicle_figures f
             WHERE f.vehicle_id = $1 AND f.minutes = 5
               AND f.bucket_end <= energy_bucket_start($3, interval '5 minutes')) AS m
),
grid AS MATERIALIZED (
    SELECT g.a5, g.m,
           CASE WHEN h.a60 < h.b60 THEN h.a60 ELSE g.m END AS a60,
           CASE WHEN h.a60 < h.b60 THEN h.b60 ELSE g.m END AS b60
    FROM bounds g
    CROSS JOIN LATERAL (
        SELECT energy_bucket_end(g.a5, interval '1 hour') AS a60,
               energy_bucket_start(g.m, interval '1 hour') AS b60
    ) h
    WHERE g.a5 < g.m AND $3 - g.m <= interval '1 hour'
),
held AS MATERIALIZED (
    SELECT r.* FROM grid g CROSS JOIN LATERAL (
        SELECT 1 AS buckets, f.vehicle_readings, f.sum_dc, f.sum_battery_temp,
               f.meter_readings, f.sum_ac, f.meter_ids
        FROM vehicle_figures f
        WHERE f.vehicle_id = $1 AND f.minutes = 5 AND f.bucket_end > g.a5 AND f.bucket_end <= g.a60
        UNION ALL
        SELECT 12, f.vehicle_readings, f.sum_dc, f.sum_battery_temp,
               f.meter_readings, f.sum_ac, f.meter_ids
        FROM vehicle_figures f
        WHERE f.vehicle_id = $1 AND f.minutes = 60 AND f.bucket_end > g.a60 AND f.bucket_end <= g.b60
        UNION ALL
        SELECT 1, f.vehicle_readings, f.sum_dc, f.sum_battery_temp,
               f.meter_readings, f.sum_ac, f.meter_ids
        FROM vehicle_figures f
        WHERE f.vehicle_id = $1 AND f.minutes = 5 AND f.bucket_end > g.b60 AND f.bucket_end <= g.m
    ) r
),
middle AS MATERIALIZED (
    SELECT g.a5, g.m, h.n, h.dc, h.temp, h.meter_n, h.ac
    FROM grid g, (
        SELECT sum(buckets) AS buckets, sum(vehicle_readings)::bigint AS n, sum(sum_dc) AS dc,
               sum(sum_battery_temp) AS temp, sum(meter_readings)::bigint AS meter_n,
               sum(sum_ac) AS ac
        FROM held
    ) h
    WHERE h.buckets = (extract(epoch FROM g.m - g.a5) / 300)::bigint
      AND NOT EXISTS (
          SELECT FROM figure_marks k
          WHERE k.device_kind = 'v' AND k.device_id = $1
            AND k.from_end <= g.m AND k.to_end > g.a5)
      AND NOT EXISTS (
          SELECT FROM figure_marks k
          WHERE k.device_kind = 'm' AND k.device_id IN (SELECT meter_id FROM spans)
            AND k.from_end <= g.m AND k.to_end > g.a5)
),
edges AS MATERIALIZED (
    SELECT $2::timestamptz AS lo, a5 AS hi FROM middle
    UNION ALL
    SELECT m, $3::timestamptz FROM middle
),
clipped AS MATERIALIZED (
    SELECT * FROM (
        SELECT s.meter_id,
               GREATEST(e.lo, s.starts_at - interval '1 microsecond') AS lo,
               LEAST(e.hi, s.ends_at - interval '1 microsecond') AS hi
        FROM spans s, edges e
    ) c
    WHERE lo < hi
),
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
SELECT EXISTS (SELECT FROM middle) AS usable,
       v.n + coalesce(mid.n, 0) AS vehicle_readings, v.dc + coalesce(mid.dc, 0) AS sum_dc,
       CASE WHEN v.n + coalesce(mid.n, 0) > 0
            THEN (v.temp + coalesce(mid.temp, 0)) / (v.n + coalesce(mid.n, 0)) END AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM meter_edges) + coalesce(mid.meter_n, 0) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM meter_edges) + coalesce(mid.ac, 0) AS sum_ac,
       ARRAY(SELECT meter_id FROM (
                 SELECT meter_id FROM meter_edges
                 UNION
                 SELECT unnest(meter_ids) FROM held
             ) counted ORDER BY meter_id COLLATE \"C\") AS meter_ids
FROM vehicle_edges v LEFT JOIN middle mid ON true",
        spans = spans_cte("$2", "$3", Cte::Once),
        meter_raw = sources.meter_raw,
        vehicle_raw = sources.vehicle_raw,
    )
}
