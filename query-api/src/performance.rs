//! The charging efficiency of one vehicle over a window `(from, to]`:
//! DC energy the vehicle stored against AC energy its meters drew while they
//! were assigned to it.
//!
//! Which meter counts for the vehicle (assignments in event time, the
//! implicit pairing by equal id, ties) and how each interval is read
//! (rollups for whole hours, raw readings at the edges) are described once,
//! in [`crate::sql`].

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use serde::Serialize;
use shared::domain::DeviceId;
use shared::wire::format_timestamp;
use sqlx::PgPool;

use crate::charging::Charging;
use crate::error::ApiError;
use crate::params::{device_id, QueryParams, Window};
use crate::state::AppState;

/// One round trip: the vehicle's window and each of its meters' spans cut
/// at whole hours (see [`crate::sql`]), so it reads a few dozen rows per
/// stream however often a device reports, and every access is an index
/// range scan on (device id, time) in the partitions of the edge days.
pub const PERFORMANCE_SQL: &str = concat!(
    "WITH wanted AS (SELECT $1::text AS vehicle_id),\n",
    crate::sql::spans_cte!("$2", "$3"),
    ",\n",
    crate::sql::meter_cut_cte!("$2", "$3", "true"),
    ",\n",
    crate::sql::meter_pieces_cte!(),
    ",\n",
    crate::sql::window_cut_cte!("$2", "$3", "true"),
    ",
vehicle AS (
    SELECT head.n + tail.n + hours.n AS n, head.dc + tail.dc + hours.dc AS dc,
           head.temp + tail.temp + hours.temp AS temp
    FROM window_cut c
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, coalesce(sum(r.kwh_delivered_dc), 0) AS dc, coalesce(sum(r.battery_temp), 0) AS temp
        FROM vehicle_readings r
        WHERE r.vehicle_id = $1 AND r.recorded_at > $2 AND r.recorded_at <= c.head_hi
    ) head
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, coalesce(sum(r.kwh_delivered_dc), 0) AS dc, coalesce(sum(r.battery_temp), 0) AS temp
        FROM vehicle_readings r
        WHERE r.vehicle_id = $1 AND r.recorded_at > c.tail_lo AND r.recorded_at <= $3
    ) tail
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(h.readings), 0)::bigint AS n, coalesce(sum(h.sum_dc), 0) AS dc,
               coalesce(sum(h.sum_battery_temp), 0) AS temp
        FROM vehicle_hourly h
        WHERE h.vehicle_id = $1 AND h.hour_end > c.a AND h.hour_end <= c.b
    ) hours
)
SELECT v.n AS vehicle_readings, v.dc AS sum_dc,
       CASE WHEN v.n > 0 THEN v.temp / v.n END AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM meter_pieces) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM meter_pieces) AS sum_ac,
       (SELECT coalesce(array_agg(DISTINCT meter_id COLLATE \"C\" ORDER BY meter_id COLLATE \"C\"), '{}') FROM meter_pieces WHERE n > 0) AS meter_ids
FROM vehicle v"
);

/// The original API's response shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Performance {
    pub vehicle_id: String,
    #[serde(flatten)]
    pub charging: Charging,
    pub from: String,
    pub to: String,
    /// Meters whose readings counted towards `sumAC`.
    pub meter_ids: Vec<String>,
}

#[derive(sqlx::FromRow)]
struct PerformanceRow {
    vehicle_readings: i64,
    sum_dc: f64,
    avg_battery_temp: Option<f64>,
    meter_readings: i64,
    sum_ac: f64,
    meter_ids: Vec<String>,
}

/// Computes the efficiency of `vehicle` over `window`; `None` when the vehicle
/// has no readings in it.
pub async fn vehicle_performance(
    pool: &PgPool,
    vehicle: &DeviceId,
    window: Window,
) -> Result<Option<Performance>, sqlx::Error> {
    let row: PerformanceRow = sqlx::query_as(PERFORMANCE_SQL)
        .bind(vehicle.as_str())
        .bind(window.from)
        .bind(window.to)
        .fetch_one(pool)
        .await?;
    if row.vehicle_readings == 0 {
        return Ok(None);
    }
    Ok(Some(Performance {
        vehicle_id: vehicle.to_string(),
        charging: Charging::new(
            row.vehicle_readings,
            row.sum_dc,
            row.avg_battery_temp,
            row.meter_readings,
            row.sum_ac,
        ),
        from: format_timestamp(window.from),
        to: format_timestamp(window.to),
        meter_ids: row.meter_ids,
    }))
}

#[utoipa::path(
    get,
    path = "/v1/analytics/performance/{vehicleId}",
    tag = "analytics",
    summary = "A vehicle's charging efficiency over a window",
    description = "sumDC: the vehicle's DC energy in the window. sumAC: the AC energy of the meters it was assigned to, while assigned. efficiency = 100 × sumDC / sumAC, null without AC.",
    params(("vehicleId" = String, Path, description = "The vehicle's id: 1–64 characters, no control characters", example = "EV-03"), crate::openapi::WindowParams),
    responses((status = 200, description = "The vehicle's figures", body = Performance), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
/// `GET /v1/analytics/performance/{vehicleId}?from=&to=`
pub async fn by_path(
    State(state): State<AppState>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Performance>, ApiError> {
    let Path(raw_id) = raw_id?;
    let params = QueryParams::parse(query.as_deref())?;
    respond(&state, &raw_id, &params).await
}

#[utoipa::path(
    get,
    path = "/v1/analytics/performance/vehicleid",
    tag = "analytics",
    summary = "The same, with the id in the query string (the original API's form)",
    params(("vehicleId" = String, Query, description = "The vehicle's id", example = "EV-03"), crate::openapi::WindowParams),
    responses((status = 200, description = "The vehicle's figures", body = Performance), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
/// The original API's `GET /v1/analytics/performance/vehicleid?vehicleId=…`.
pub async fn by_query(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Performance>, ApiError> {
    let params = QueryParams::parse(query.as_deref())?;
    let Some(raw_id) = params.get("vehicleId") else {
        return Err(ApiError::BadRequest(
            "query parameter vehicleId is required".into(),
        ));
    };
    respond(&state, raw_id, &params).await
}

async fn respond(
    state: &AppState,
    raw_id: &str,
    params: &QueryParams,
) -> Result<Json<Performance>, ApiError> {
    let vehicle = device_id("vehicleId", raw_id)?;
    let window = state.window(params)?;
    match vehicle_performance(&state.pool, &vehicle, window).await? {
        Some(performance) => Ok(Json(performance)),
        None => Err(ApiError::NotFound(format!(
            "vehicle {vehicle} has no readings between {} and {}",
            format_timestamp(window.from),
            format_timestamp(window.to)
        ))),
    }
}
