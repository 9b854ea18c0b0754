//! SQL building blocks shared by the analytics queries, as macros expanding
//! to string literals (so each query is one `concat!`-ed constant).
//!
//! Every interval is left-open and right-closed, like a window `(from, to]`
//! and like an hourly rollup row `(hour_end - 1h, hour_end]`. An interval to
//! sum is cut at whole hours into a raw *head* `(lo, head_hi]`, rollup hours
//! `(a, b]` and a raw *tail* `(tail_lo, hi]`, where `a` is the first whole
//! hour at or after `lo` and `b` the last at or before `hi`; when no whole
//! hour lies inside, the head is the whole interval and the rest is empty.
//! So a query reads at most two partial hours of raw rows per interval,
//! however often a device reports.
//!
//! Which meter counts for which vehicle: an assignment of vehicle V to meter
//! M at `start` holds until V's next assignment event, or until M is
//! assigned to another vehicle (on a tie, the greater vehicle id gets it,
//! by byte order: `COLLATE "C"`, whatever the database's collation);
//! before its first assignment a vehicle is paired with the meter of its own
//! id, until that meter is assigned to another vehicle. `[start, end)` is
//! the interval `(start - 1µs, end - 1µs]` on PostgreSQL's microsecond grid.

/// `spans(vehicle_id, meter_id, starts_at, ends_at)` of the vehicles in a
/// preceding CTE `wanted(vehicle_id)` that can matter for the window
/// `($from, $to]`; `ends_at` is NULL while open. Assignments before a
/// vehicle's last event at or before `$from` ended by then, so the query
/// reads only a few per vehicle however long the assignment history.
macro_rules! spans_cte {
    ($from:literal, $to:literal) => {
        concat!("spans AS (
    SELECT a.vehicle_id, a.meter_id, a.starts_at,
           LEAST(
               (SELECT min(n.starts_at) FROM assignments n
                 WHERE n.vehicle_id = a.vehicle_id AND n.starts_at > a.starts_at),
               (SELECT min(o.starts_at) FROM assignments o
                 WHERE o.meter_id = a.meter_id AND o.vehicle_id <> a.vehicle_id
                   AND (o.starts_at > a.starts_at
                        OR (o.starts_at = a.starts_at AND o.vehicle_id COLLATE \"C\" > a.vehicle_id COLLATE \"C\")))
           ) AS ends_at
    FROM wanted w JOIN assignments a ON a.vehicle_id = w.vehicle_id
    WHERE a.meter_id IS NOT NULL
      AND a.starts_at <= ", $to, "
      AND a.starts_at >= coalesce(
              (SELECT max(p.starts_at) FROM assignments p
                WHERE p.vehicle_id = w.vehicle_id AND p.starts_at <= ", $from, "),
              '-infinity')
    UNION ALL
    SELECT w.vehicle_id, w.vehicle_id, '-infinity'::timestamptz,
           LEAST(
               (SELECT min(n.starts_at) FROM assignments n WHERE n.vehicle_id = w.vehicle_id),
               (SELECT min(o.starts_at) FROM assignments o
                 WHERE o.meter_id = w.vehicle_id AND o.vehicle_id <> w.vehicle_id)
           )
    FROM wanted w
)")
    };
}

/// `meter_cut(vehicle_id, meter_id, lo, hi, a, b, head_hi, tail_lo)`: each
/// span clipped to the window `($from, $to]` and cut at whole hours; with
/// `$rollups` false (an SQL boolean), no hour comes from rollups.
macro_rules! meter_cut_cte {
    ($from:literal, $to:literal, $rollups:literal) => {
        concat!(
            "meter_cut AS (
    SELECT vehicle_id, meter_id, lo, hi, a, b,
           CASE WHEN a < b THEN a ELSE hi END AS head_hi,
           CASE WHEN a < b THEN b ELSE hi END AS tail_lo
    FROM (
        SELECT vehicle_id, meter_id, lo, hi,
               CASE WHEN ",
            $rollups,
            " THEN energy_hour_end(lo) ELSE hi END AS a,
               energy_hour_start(hi) AS b
        FROM (
            SELECT vehicle_id, meter_id,
                   GREATEST(",
            $from,
            ", starts_at - interval '1 microsecond') AS lo,
                   LEAST(",
            $to,
            ", ends_at - interval '1 microsecond') AS hi
            FROM spans
        ) clipped
        WHERE lo < hi
    ) bounded
)"
        )
    };
}

/// `meter_pieces(vehicle_id, meter_id, n, ac)`: readings and kWh of each cut span.
macro_rules! meter_pieces_cte {
    () => {
        "meter_pieces AS (
    SELECT c.vehicle_id, c.meter_id, head.n + tail.n + hours.n AS n, head.ac + tail.ac + hours.ac AS ac
    FROM meter_cut c
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, coalesce(sum(m.kwh_consumed_ac), 0) AS ac FROM meter_readings m
        WHERE m.meter_id = c.meter_id AND m.recorded_at > c.lo AND m.recorded_at <= c.head_hi
    ) head
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, coalesce(sum(m.kwh_consumed_ac), 0) AS ac FROM meter_readings m
        WHERE m.meter_id = c.meter_id AND m.recorded_at > c.tail_lo AND m.recorded_at <= c.hi
    ) tail
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(h.readings), 0)::bigint AS n, coalesce(sum(h.sum_ac), 0) AS ac FROM meter_hourly h
        WHERE h.meter_id = c.meter_id AND h.hour_end > c.a AND h.hour_end <= c.b
    ) hours
)"
    };
}

/// `window_cut(a, b, head_hi, tail_lo)` of the window `($from, $to]`.
macro_rules! window_cut_cte {
    ($from:literal, $to:literal, $rollups:literal) => {
        concat!(
            "window_cut AS (
    SELECT a, b,
           CASE WHEN a < b THEN a ELSE ",
            $to,
            " END AS head_hi,
           CASE WHEN a < b THEN b ELSE ",
            $to,
            " END AS tail_lo
    FROM (SELECT CASE WHEN ",
            $rollups,
            " THEN energy_hour_end(",
            $from,
            ") ELSE ",
            $to,
            " END AS a,
                 energy_hour_start(",
            $to,
            ") AS b) bounded
)"
        )
    };
}

pub(crate) use {meter_cut_cte, meter_pieces_cte, spans_cte, window_cut_cte};
