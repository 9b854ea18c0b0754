//! The SQL building blocks of the analytics: how an interval is cut into raw
//! edges and rollup buckets, which meter counts for a vehicle, and where
//! the statements read from. query-api's statements and the worker's
//! per-vehicle figures ([`figures`-table]) are built from them, so both
//! state each rule once.
//!
//! **Cutting.** Every interval is left-open and right-closed, like a window
//! `(from, to]` and like a rollup bucket `(end - width, end]`. An interval
//! `(lo, hi]` to sum is cut into five pieces: raw readings `(lo, head_hi]`,
//! five-minute buckets `(head_hi, a]`, hourly buckets `(a, b]`, five-minute
//! buckets `(b, tail_lo]` and raw readings `(tail_lo, hi]`. `head_hi` is the
//! first five-minute boundary at or after `lo` and `tail_lo` the last at or
//! before `hi`; `a` and `b` are the first and last whole hours between them.
//! Pieces that do not fit are empty: without a whole hour inside, the
//! five-minute buckets cover all between `head_hi` and `tail_lo`; without a
//! whole five minutes, the raw head is the whole interval. So a query reads
//! at most five minutes of raw readings at each edge of an interval, a few
//! dozen rollup rows per hour-edge and one per hour in between, however
//! often a device reports.
//!
//! **Sources.** A partitioned table named in a query costs PostgreSQL a
//! plan over, and a lock on, every one of its partitions: a hundred per
//! history table with 90 days kept. [`Sources::for_window`] names only the
//! partitions a window's rows can be in (its days, its months), so that
//! cost does not grow with retention; [`Sources::parents`] names the
//! partitioned tables, for when a partition is missing.
//!
//! **Cut once, where pieces are rescanned.** A statement reading the pieces
//! in lateral subqueries (the 24-hour answer; the fleet view's meter spans)
//! rescans them once per span; with its CTEs of spans and cut points
//! inlined, PostgreSQL would evaluate their expressions again in every index
//! condition of every rescan, so it asks for them [`Cte::Once`] (a quarter
//! less time for the answer, about 1.5× for the fleet view, BENCHMARKS.md).
//! The statements joining pieces as sets leave them [`Cte::Inline`]: their
//! plans rest on the planner's estimates through the CTEs. (The series reads
//! its meter spans in fenced laterals, [`PieceRows::each_interval_by_key`],
//! for plans that do not wait on statistics; its CTEs stay inline, as they
//! were measured.)
//!
//! **Which meter counts.** An assignment of vehicle V to meter M at `start`
//! holds until V's next assignment event, or until M is assigned to another
//! vehicle (on a tie, the greater vehicle id gets it, by byte order:
//! `COLLATE "C"`, whatever the database's collation); before its first
//! assignment a vehicle is paired with the meter of its own id, until that
//! meter is assigned to another vehicle. `[start, end)` is the interval
//! `(start - 1µs, end - 1µs]` on PostgreSQL's microsecond grid.

use chrono::{DateTime, Datelike as _, Days, NaiveDate, TimeDelta, Utc};

/// The relations a query reads history and rollups from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sources {
    pub vehicle_raw: String,
    pub meter_raw: String,
    pub vehicle_5min: String,
    pub meter_5min: String,
    pub vehicle_hourly: String,
    pub meter_hourly: String,
}

impl Sources {
    /// The partitioned tables themselves.
    pub fn parents() -> Self {
        Self {
            vehicle_raw: "vehicle_readings".into(),
            meter_raw: "meter_readings".into(),
            vehicle_5min: "vehicle_5min".into(),
            meter_5min: "meter_5min".into(),
            vehicle_hourly: "vehicle_hourly".into(),
            meter_hourly: "meter_hourly".into(),
        }
    }

    /// Only the partitions rows of the window `(from, to]` can be in: the
    /// days it touches for raw readings, the days and months of the bucket
    /// ends it can sum for rollups.
    pub fn for_window(from: DateTime<Utc>, to: DateTime<Utc>) -> Self {
        let days = |last: DateTime<Utc>| day_range(from.date_naive(), last.date_naive());
        let raw_days = days(to);
        let five_days = days(to + TimeDelta::minutes(5));
        let hour_months = months(from.date_naive(), (to + TimeDelta::hours(1)).date_naive());
        Self {
            vehicle_raw: union("vehicle_readings", &raw_days),
            meter_raw: union("meter_readings", &raw_days),
            vehicle_5min: union("vehicle_5min", &five_days),
            meter_5min: union("meter_5min", &five_days),
            vehicle_hourly: union("vehicle_hourly", &hour_months),
            meter_hourly: union("meter_hourly", &hour_months),
        }
    }
}

/// Day-partition suffixes `YYYYMMDD` from `first` through `last`.
fn day_range(first: NaiveDate, last: NaiveDate) -> Vec<String> {
    first
        .iter_days()
        .take_while(|day| *day <= last)
        .map(|day| day.format("%Y%m%d").to_string())
        .collect()
}

/// Month-partition suffixes `YYYYMM` from `first`'s month through `last`'s.
fn months(first: NaiveDate, last: NaiveDate) -> Vec<String> {
    let mut month = first.with_day(1).unwrap_or(first);
    let mut names = Vec::new();
    while month <= last {
        names.push(month.format("%Y%m").to_string());
        month = month
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(last + Days::new(1));
    }
    names
}

/// `parent_pSUFFIX`, or a `UNION ALL` of them: PostgreSQL plans each
/// branch with its own index, as it would each partition.
fn union(parent: &str, suffixes: &[String]) -> String {
    match suffixes {
        [one] => format!("{parent}_p{one}"),
        many => {
            let branches: Vec<String> = many
                .iter()
                .map(|suffix| format!("SELECT * FROM {parent}_p{suffix}"))
                .collect();
            format!("({})", branches.join(" UNION ALL "))
        }
    }
}

/// How a statement has PostgreSQL evaluate a CTE of spans or cut points
/// (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cte {
    /// `MATERIALIZED`: computed once, for pieces read in lateral subqueries.
    Once,
    /// Left to the planner, which may inline it, for pieces joined as sets.
    Inline,
}

impl Cte {
    fn keyword(self) -> &'static str {
        match self {
            Cte::Once => "AS MATERIALIZED",
            Cte::Inline => "AS",
        }
    }
}

/// `spans(vehicle_id, meter_id, starts_at, ends_at)` of the vehicles in a
/// preceding CTE `wanted(vehicle_id)` that can matter for the window
/// `(from, to]`; `ends_at` is NULL while open. Assignments before a
/// vehicle's last event at or before `from` ended by then, so the query
/// reads only a few per vehicle however long the assignment history.
pub fn spans_cte(from: &str, to: &str, cte: Cte) -> String {
    let evaluated = cte.keyword();
    format!(
        "spans {evaluated} (
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
      AND a.starts_at <= {to}
      AND a.starts_at >= coalesce(
              (SELECT max(p.starts_at) FROM assignments p
                WHERE p.vehicle_id = w.vehicle_id AND p.starts_at <= {from}),
              '-infinity')
    UNION ALL
    SELECT w.vehicle_id, w.vehicle_id, '-infinity'::timestamptz,
           LEAST(
               (SELECT min(n.starts_at) FROM assignments n WHERE n.vehicle_id = w.vehicle_id),
               (SELECT min(o.starts_at) FROM assignments o
                 WHERE o.meter_id = w.vehicle_id AND o.vehicle_id <> w.vehicle_id)
           )
    FROM wanted w
)"
    )
}

/// The intervals `(lo, hi]` of the SELECT `intervals` (empty ones left
/// out) with all their columns and their cut points `head_hi, a, b,
/// tail_lo` (see the module's doc). With `hourly` false (an SQL boolean)
/// no hour is summed from hourly rollups (series buckets smaller than an
/// hour).
pub fn cut(intervals: &str, hourly: &str) -> String {
    format!(
        "SELECT *,
           CASE WHEN a5 < b5 THEN a5 ELSE hi END AS head_hi,
           CASE WHEN a60 < b60 THEN a60 WHEN a5 < b5 THEN b5 ELSE hi END AS a,
           CASE WHEN a60 < b60 THEN b60 WHEN a5 < b5 THEN b5 ELSE hi END AS b,
           CASE WHEN a5 < b5 THEN b5 ELSE hi END AS tail_lo
    FROM (
        SELECT *, energy_bucket_end(lo, interval '5 minutes') AS a5,
               energy_bucket_start(hi, interval '5 minutes') AS b5,
               CASE WHEN {hourly} THEN energy_bucket_end(lo, interval '1 hour') ELSE hi END AS a60,
               energy_bucket_start(hi, interval '1 hour') AS b60
        FROM ({intervals}) intervals
        WHERE lo < hi
    ) grid"
    )
}

/// The one window `(from, to]`, as a SELECT of `lo, hi`.
pub fn one_window(from: &str, to: &str) -> String {
    format!("SELECT {from}::timestamptz AS lo, {to}::timestamptz AS hi")
}

/// `meter_cut(vehicle_id, meter_id, lo, hi, head_hi, a, b, tail_lo)`: each
/// span clipped to the window `(from, to]` and cut.
pub fn meter_cut_cte(from: &str, to: &str, hourly: &str, cte: Cte) -> String {
    meter_cut_in(&one_window(from, to), hourly, cte)
}

/// [`meter_cut_cte`] for each window `(lo, hi]` of the SELECT `windows`.
pub fn meter_cut_in(windows: &str, hourly: &str, cte: Cte) -> String {
    let evaluated = cte.keyword();
    let clipped = format!(
        "SELECT s.vehicle_id, s.meter_id,
               GREATEST(w.lo, s.starts_at - interval '1 microsecond') AS lo,
               LEAST(w.hi, s.ends_at - interval '1 microsecond') AS hi
        FROM spans s CROSS JOIN ({windows}) w"
    );
    format!("meter_cut {evaluated} (\n    {}\n)", cut(&clipped, hourly))
}

/// `window_cut(lo, hi, head_hi, a, b, tail_lo)` of the window `(from, to]`.
pub fn window_cut_cte(from: &str, to: &str, hourly: &str, cte: Cte) -> String {
    window_cut_in(&one_window(from, to), hourly, cte)
}

/// [`window_cut_cte`] for each window `(lo, hi]` of the SELECT `windows`.
pub fn window_cut_in(windows: &str, hourly: &str, cte: Cte) -> String {
    let evaluated = cte.keyword();
    format!("window_cut {evaluated} (\n    {}\n)", cut(windows, hourly))
}

/// One stream's five pieces of a cut interval (see the module's doc), as
/// `CROSS JOIN LATERAL` subqueries `head`, `head5`, `hours`, `tail5` and
/// `tail`, each giving `n` (readings) and the `sums` columns. `cut` names the
/// relation holding `lo, head_hi, a, b, tail_lo, hi`; `device` is the
/// condition tying rows to it, on `x.<device column>`.
pub struct Pieces<'a> {
    pub raw: &'a str,
    pub five: &'a str,
    pub hourly: &'a str,
    pub cut: &'a str,
    pub device: &'a str,
    /// (output column, raw expression over `x`, rollup column).
    pub sums: &'a [(&'a str, &'a str, &'a str)],
}

impl Pieces<'_> {
    /// The five lateral subqueries. The raw head also gives `first_at`, its
    /// earliest reading's time.
    pub fn laterals(&self) -> String {
        let raw = |lo: &str, hi: &str, first_at: &str| {
            let sums: Vec<String> = self
                .sums
                .iter()
                .map(|(name, expression, _)| format!("coalesce(sum({expression}), 0) AS {name}"))
                .collect();
            format!(
                "SELECT count(*) AS n, {sums}{first_at} FROM {table} x
        WHERE {device} AND x.recorded_at > {cut}.{lo} AND x.recorded_at <= {cut}.{hi}",
                sums = sums.join(", "),
                table = self.raw,
                device = self.device,
                cut = self.cut,
            )
        };
        let buckets = |table: &str, end: &str, lo: &str, hi: &str| {
            let sums: Vec<String> = self
                .sums
                .iter()
                .map(|(name, _, column)| format!("coalesce(sum(x.{column}), 0) AS {name}"))
                .collect();
            format!(
                "SELECT coalesce(sum(x.readings), 0)::bigint AS n, {sums} FROM {table} x
        WHERE {device} AND x.{end} > {cut}.{lo} AND x.{end} <= {cut}.{hi}",
                sums = sums.join(", "),
                device = self.device,
                cut = self.cut,
            )
        };
        [
            (
                "head",
                raw("lo", "head_hi", ", min(x.recorded_at) AS first_at"),
            ),
            ("head5", buckets(self.five, "bucket_end", "head_hi", "a")),
            ("hours", buckets(self.hourly, "hour_end", "a", "b")),
            ("tail5", buckets(self.five, "bucket_end", "b", "tail_lo")),
            ("tail", raw("tail_lo", "hi", "")),
        ]
        .into_iter()
        .map(|(alias, subquery)| format!("\n    CROSS JOIN LATERAL ({subquery}) {alias}"))
        .collect()
    }

    /// `head.c + head5.c + hours.c + tail5.c + tail.c` for an output column `c`.
    pub fn total(column: &str) -> String {
        ["head", "head5", "hours", "tail5", "tail"]
            .map(|piece| format!("{piece}.{column}"))
            .join(" + ")
    }
}

/// One stream's rows in the five pieces of cut intervals, as one `UNION
/// ALL`: raw readings at the edges, five-minute and hourly buckets between.
/// `cut` names the relation of intervals (each row of it joined with its
/// device's rows by `device`); `raw_columns` are expressions over a raw
/// reading `x`, `bucket_columns` over a bucket row `x`, where `{end}` stands
/// for the bucket's end column.
pub struct PieceRows<'a> {
    pub raw: &'a str,
    pub five: &'a str,
    pub hourly: &'a str,
    pub cut: &'a str,
    pub device: &'a str,
    /// Many intervals, each of one device (meter spans): each reads its
    /// rows by key in a lateral subquery fenced by `OFFSET 0`, whatever the
    /// statistics say (before a partition's first ANALYZE a hash join over
    /// sequential scans can look cheaper to PostgreSQL). Otherwise the
    /// intervals are joined with the rows as sets (one window, read by
    /// time across devices in the fleet view).
    pub each_interval_by_key: bool,
    pub raw_columns: &'a str,
    pub bucket_columns: &'a str,
}

impl PieceRows<'_> {
    pub fn union_all(&self) -> String {
        let (join, on, close) = if self.each_interval_by_key {
            ("CROSS JOIN LATERAL (SELECT * FROM", "WHERE", " OFFSET 0) x")
        } else {
            ("JOIN", "ON", "")
        };
        let raw_piece = |lo: &str, hi: &str| {
            format!(
                "SELECT {columns} FROM {cut} c {join} {raw} x
      {on} {device} AND x.recorded_at > c.{lo} AND x.recorded_at <= c.{hi}{close}",
                columns = self.raw_columns,
                cut = self.cut,
                raw = self.raw,
                device = self.device,
            )
        };
        let bucket_piece = |table: &str, end: &str, lo: &str, hi: &str| {
            format!(
                "SELECT {columns} FROM {cut} c {join} {table} x
      {on} {device} AND x.{end} > c.{lo} AND x.{end} <= c.{hi}{close}",
                columns = self.bucket_columns.replace("{end}", end),
                cut = self.cut,
                device = self.device,
            )
        };
        [
            raw_piece("lo", "head_hi"),
            bucket_piece(self.five, "bucket_end", "head_hi", "a"),
            bucket_piece(self.hourly, "hour_end", "a", "b"),
            bucket_piece(self.five, "bucket_end", "b", "tail_lo"),
            raw_piece("tail_lo", "hi"),
        ]
        .join("\n    UNION ALL\n    ")
    }
}

/// `meter_pieces(vehicle_id, meter_id, n, ac, leaving_from)`: readings and
/// kWh of each cut span, and a time at or before its earliest reading (the
/// earliest one in its raw head, or the head's end when that holds none).
pub fn meter_pieces_cte(sources: &Sources) -> String {
    let pieces = Pieces {
        raw: &sources.meter_raw,
        five: &sources.meter_5min,
        hourly: &sources.meter_hourly,
        cut: "c",
        device: "x.meter_id = c.meter_id",
        sums: &[("ac", "x.kwh_consumed_ac", "sum_ac")],
    };
    format!(
        "meter_pieces AS (
    SELECT c.vehicle_id, c.meter_id, {n} AS n, {ac} AS ac,
           coalesce(head.first_at, c.head_hi) AS leaving_from
    FROM meter_cut c{laterals}
)",
        n = Pieces::total("n"),
        ac = Pieces::total("ac"),
        laterals = pieces.laterals(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        raw.parse().unwrap()
    }

    #[test]
    fn a_window_names_the_partitions_of_its_days_and_months() {
        let sources = Sources::for_window(at("2026-11-30T15:00:00Z"), at("2026-12-01T15:00:00Z"));
        assert_eq!(
            sources.vehicle_raw,
            "(SELECT * FROM vehicle_readings_p20261130 UNION ALL SELECT * FROM vehicle_readings_p20261201)"
        );
        assert_eq!(
            sources.meter_hourly,
            "(SELECT * FROM meter_hourly_p202611 UNION ALL SELECT * FROM meter_hourly_p202612)"
        );
        // A window ending on the last minutes of a day may sum the bucket
        // ending at midnight, in the next day's partition.
        let late = Sources::for_window(at("2026-12-01T10:00:00Z"), at("2026-12-01T23:58:00Z"));
        assert_eq!(late.vehicle_raw, "vehicle_readings_p20261201");
        assert_eq!(
            late.vehicle_5min,
            "(SELECT * FROM vehicle_5min_p20261201 UNION ALL SELECT * FROM vehicle_5min_p20261202)"
        );
        assert_eq!(late.vehicle_hourly, "vehicle_hourly_p202612");
    }
}
