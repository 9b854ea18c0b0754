//! The reference computation of a vehicle's performance: every sum straight
//! from raw history, without rollups, in plain SQL. Tests compare the
//! service's answers with it, and the benchmark harness measures it as the
//! naive baseline.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The reference: every sum straight from raw history, with the same
/// assignment rules (explicit spans, implicit pairing by equal id, ties to
/// the greater vehicle id by byte order).
pub const RAW_PERFORMANCE_SQL: &str = "
WITH spans AS (
    SELECT a.meter_id, a.starts_at,
           LEAST(
               (SELECT min(n.starts_at) FROM assignments n
                 WHERE n.vehicle_id = a.vehicle_id AND n.starts_at > a.starts_at),
               (SELECT min(o.starts_at) FROM assignments o
                 WHERE o.meter_id = a.meter_id AND o.vehicle_id <> a.vehicle_id
                   AND (o.starts_at > a.starts_at
                        OR (o.starts_at = a.starts_at AND o.vehicle_id COLLATE \"C\" > a.vehicle_id COLLATE \"C\")))
           ) AS ends_at
    FROM assignments a
    WHERE a.vehicle_id = $1 AND a.meter_id IS NOT NULL
    UNION ALL
    SELECT $1::text, '-infinity'::timestamptz,
           LEAST(
               (SELECT min(n.starts_at) FROM assignments n WHERE n.vehicle_id = $1),
               (SELECT min(o.starts_at) FROM assignments o WHERE o.meter_id = $1 AND o.vehicle_id <> $1)
           )
),
per_span AS (
    SELECT s.meter_id, count(m.*) AS n, coalesce(sum(m.kwh_consumed_ac), 0) AS ac
    FROM spans s
    LEFT JOIN meter_readings m
      ON m.meter_id = s.meter_id AND m.recorded_at > $2 AND m.recorded_at <= $3
     AND m.recorded_at >= s.starts_at AND (s.ends_at IS NULL OR m.recorded_at < s.ends_at)
    GROUP BY s.meter_id, s.starts_at
)
SELECT (SELECT count(*) FROM vehicle_readings WHERE vehicle_id = $1 AND recorded_at > $2 AND recorded_at <= $3) AS vehicle_readings,
       (SELECT coalesce(sum(kwh_delivered_dc), 0) FROM vehicle_readings WHERE vehicle_id = $1 AND recorded_at > $2 AND recorded_at <= $3) AS sum_dc,
       (SELECT avg(battery_temp) FROM vehicle_readings WHERE vehicle_id = $1 AND recorded_at > $2 AND recorded_at <= $3) AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM per_span) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM per_span) AS sum_ac,
       (SELECT coalesce(array_agg(DISTINCT meter_id COLLATE \"C\" ORDER BY meter_id COLLATE \"C\"), '{}') FROM per_span WHERE n > 0) AS meter_ids";

#[derive(Debug, sqlx::FromRow)]
pub struct Figures {
    pub vehicle_readings: i64,
    pub sum_dc: f64,
    pub avg_battery_temp: Option<f64>,
    pub meter_readings: i64,
    pub sum_ac: f64,
    pub meter_ids: Vec<String>,
}

/// Runs `sql` for one vehicle and window: [`RAW_PERFORMANCE_SQL`], or the
/// service's own query, which takes the same parameters and returns the same columns.
pub async fn figures(
    pool: &PgPool,
    sql: &str,
    vehicle: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Figures {
    sqlx::query_as(sql)
        .bind(vehicle)
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Energy as the API answers it: kWh to the watt-hour (three decimals).
/// Restated here, not taken from query-api, so the tests check the rule.
pub fn answered_kwh(value: f64) -> f64 {
    answered_to(value, 1_000.0)
}

/// Temperatures, voltages and efficiencies as the API answers them: two decimals.
pub fn answered_hundredths(value: f64) -> f64 {
    answered_to(value, 100.0)
}

/// The API's rounding: to the nearest `1 / scale`, halves away from zero,
/// of the sum as if it were exact: first snapped to a millionth of that
/// unit, below which a float8 sum's digits are noise of its order.
fn answered_to(value: f64, scale: f64) -> f64 {
    let units = value * scale;
    let snapped = if units.abs() < 1e9 {
        (units * 1e6).round() / 1e6
    } else {
        units
    };
    snapped.round() / scale
}

/// Whether `answered` is how the API may answer an exact kWh figure `exact`:
/// a whole number of watt-hours within half of one of it, give or take the
/// float noise of a sum of `exact`'s size. Exact equality with the rounded
/// figure would be too strict at a half watt-hour, where two orders of
/// adding the same readings may round apart.
pub fn answers_kwh(answered: f64, exact: f64) -> bool {
    answered == answered_kwh(answered)
        && (answered - exact).abs() <= 0.000_5 + 1e-9 * (1.0 + exact.abs())
}
