//! `GET /v1/meters/{id}/analytics`: a meter's energy and voltage statistics
//! over a window `(from, to]`, from hourly rollups for the whole hours and
//! raw readings for the partial hours at the edges.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Serialize;
use shared::wire::format_timestamp;

use crate::error::ApiError;
use crate::params::{device_id, QueryParams};
use crate::state::AppState;

/// The window cut at whole hours exactly as in [`crate::performance`].
pub const METER_STATS_SQL: &str = concat!(
    "WITH ",
    crate::sql::window_cut_cte!("$2", "$3", "true"),
    ",
parts AS (
    SELECT count(*) AS n, coalesce(sum(m.kwh_consumed_ac), 0) AS sum_ac,
           min(m.kwh_consumed_ac) AS min_ac, max(m.kwh_consumed_ac) AS max_ac,
           coalesce(sum(m.voltage), 0) AS sum_voltage, min(m.voltage) AS min_voltage, max(m.voltage) AS max_voltage
    FROM window_cut c JOIN meter_readings m
      ON m.meter_id = $1 AND m.recorded_at > $2 AND m.recorded_at <= c.head_hi
    UNION ALL
    SELECT count(*), coalesce(sum(m.kwh_consumed_ac), 0), min(m.kwh_consumed_ac), max(m.kwh_consumed_ac),
           coalesce(sum(m.voltage), 0), min(m.voltage), max(m.voltage)
    FROM window_cut c JOIN meter_readings m
      ON m.meter_id = $1 AND m.recorded_at > c.tail_lo AND m.recorded_at <= $3
    UNION ALL
    SELECT coalesce(sum(h.readings), 0), coalesce(sum(h.sum_ac), 0), min(h.min_ac), max(h.max_ac),
           coalesce(sum(h.sum_voltage), 0), min(h.min_voltage), max(h.max_voltage)
    FROM window_cut c JOIN meter_hourly h
      ON h.meter_id = $1 AND h.hour_end > c.a AND h.hour_end <= c.b
)
SELECT sum(n)::bigint AS readings, sum(sum_ac) AS sum_ac, min(min_ac) AS min_ac, max(max_ac) AS max_ac,
       sum(sum_voltage) AS sum_voltage, min(min_voltage) AS min_voltage, max(max_voltage) AS max_voltage
FROM parts"
);

#[derive(sqlx::FromRow)]
struct StatsRow {
    readings: i64,
    sum_ac: f64,
    min_ac: Option<f64>,
    max_ac: Option<f64>,
    sum_voltage: f64,
    min_voltage: Option<f64>,
    max_voltage: Option<f64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyStats {
    /// kWh drawn over the window.
    pub total: f64,
    /// Per reading (the energy of one reporting interval).
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterAnalytics {
    pub meter_id: String,
    pub from: String,
    pub to: String,
    pub readings: i64,
    pub kwh_consumed_ac: EnergyStats,
    pub voltage: Stats,
}

#[utoipa::path(
    get,
    path = "/v1/meters/{meterId}/analytics",
    tag = "analytics",
    summary = "A meter's energy and voltage statistics over a window",
    params(("meterId" = String, Path, description = "The meter's id: 1–64 characters, no control characters", example = "MTR-03"), crate::openapi::WindowParams),
    responses((status = 200, description = "Totals and per-reading minimum, maximum and mean", body = MeterAnalytics), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
/// `GET /v1/meters/{meterId}/analytics?from=&to=`
pub async fn analytics(
    State(state): State<AppState>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<MeterAnalytics>, ApiError> {
    let Path(raw_id) = raw_id?;
    let meter = device_id("meterId", &raw_id)?;
    let params = QueryParams::parse(query.as_deref())?;
    let window = state.window(&params)?;
    let row: StatsRow = sqlx::query_as(METER_STATS_SQL)
        .bind(meter.as_str())
        .bind(window.from)
        .bind(window.to)
        .fetch_one(&state.pool)
        .await?;
    let (Some(min_ac), Some(max_ac), Some(min_voltage), Some(max_voltage)) =
        (row.min_ac, row.max_ac, row.min_voltage, row.max_voltage)
    else {
        return Err(ApiError::NotFound(format!(
            "meter {meter} has no readings between {} and {}",
            format_timestamp(window.from),
            format_timestamp(window.to)
        )));
    };
    let n = row.readings as f64;
    Ok(Json(MeterAnalytics {
        meter_id: meter.to_string(),
        from: format_timestamp(window.from),
        to: format_timestamp(window.to),
        readings: row.readings,
        kwh_consumed_ac: EnergyStats {
            total: row.sum_ac,
            min: min_ac,
            max: max_ac,
            mean: row.sum_ac / n,
        },
        voltage: Stats {
            min: min_voltage,
            max: max_voltage,
            mean: row.sum_voltage / n,
        },
    }))
}
