//! `GET /v1/meters/{id}/analytics`: a meter's energy and voltage statistics
//! over a window `(from, to]`, from rollups for whole hours and five
//! minutes and raw readings for the partial five minutes at the edges.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Serialize;
use shared::wire::format_timestamp;

use crate::charging::{hundredths, kwh};
use crate::error::ApiError;
use crate::params::{device_id, QueryParams};
use crate::sql::{PieceRows, Sources};
use crate::state::AppState;

/// The meter statistics query, reading from `sources`: the window cut as
/// in [`crate::performance`]. `$1` meter, `$2`/`$3` window.
pub fn sql(sources: &Sources) -> String {
    let rows = PieceRows {
        raw: &sources.meter_raw,
        five: &sources.meter_5min,
        hourly: &sources.meter_hourly,
        cut: "window_cut",
        device: "x.meter_id = $1",
        each_interval_by_key: false,
        raw_columns: "1::bigint AS n, x.kwh_consumed_ac AS sum_ac, x.kwh_consumed_ac AS min_ac, \
                      x.kwh_consumed_ac AS max_ac, x.voltage AS sum_voltage, x.voltage AS min_voltage, \
                      x.voltage AS max_voltage",
        bucket_columns: "x.readings, x.sum_ac, x.min_ac, x.max_ac, x.sum_voltage, x.min_voltage, x.max_voltage",
    }
    .union_all();
    format!(
        "WITH {window_cut},
parts AS (
    {rows}
)
SELECT coalesce(sum(n), 0)::bigint AS readings, coalesce(sum(sum_ac), 0) AS sum_ac,
       min(min_ac) AS min_ac, max(max_ac) AS max_ac, coalesce(sum(sum_voltage), 0) AS sum_voltage,
       min(min_voltage) AS min_voltage, max(max_voltage) AS max_voltage
FROM parts",
        window_cut = crate::sql::window_cut_cte("$2", "$3", "true", crate::sql::Cte::Inline),
    )
}

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
/// Volts, to 2 decimals.
pub struct Stats {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnergyStats {
    /// kWh drawn over the window; every figure here to the watt-hour (3 decimals).
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
    let meter_id = meter.as_str();
    let row: StatsRow = state
        .read_window(window, |sources, pool| {
            let statement = sql(sources);
            async move {
                sqlx::query_as(&statement)
                    .bind(meter_id)
                    .bind(window.from)
                    .bind(window.to)
                    .fetch_one(&pool)
                    .await
            }
        })
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
            total: kwh(row.sum_ac),
            min: kwh(min_ac),
            max: kwh(max_ac),
            mean: kwh(row.sum_ac / n),
        },
        voltage: Stats {
            min: hundredths(min_voltage),
            max: hundredths(max_voltage),
            mean: hundredths(row.sum_voltage / n),
        },
    }))
}
