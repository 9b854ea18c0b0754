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
use crate::sql::{Pieces, Sources};
use crate::state::AppState;

/// The efficiency query, reading from `sources`: one round trip. The
/// vehicle's window and each of its meters' spans are cut into raw edges
/// of at most five minutes and rollup buckets (see [`crate::sql`]), so it
/// reads a few dozen rows per stream however often a device reports, and
/// every access is an index range scan on (device id, time) in the
/// partitions of the window's days and months. `$1` vehicle, `$2`/`$3` window.
pub fn sql(sources: &Sources) -> String {
    let vehicle = Pieces {
        raw: &sources.vehicle_raw,
        five: &sources.vehicle_5min,
        hourly: &sources.vehicle_hourly,
        cut: "c",
        device: "x.vehicle_id = $1",
        sums: &[
            ("dc", "x.kwh_delivered_dc", "sum_dc"),
            ("temp", "x.battery_temp", "sum_battery_temp"),
        ],
    };
    format!(
        "WITH wanted AS (SELECT $1::text AS vehicle_id),
{spans},
{meter_cut},
{meter_pieces},
{window_cut},
vehicle AS (
    SELECT {n} AS n, {dc} AS dc, {temp} AS temp
    FROM window_cut c{laterals}
)
SELECT v.n AS vehicle_readings, v.dc AS sum_dc,
       CASE WHEN v.n > 0 THEN v.temp / v.n END AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM meter_pieces) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM meter_pieces) AS sum_ac,
       (SELECT coalesce(array_agg(DISTINCT meter_id COLLATE \"C\" ORDER BY meter_id COLLATE \"C\"), '{{}}')
          FROM meter_pieces WHERE n > 0) AS meter_ids
FROM vehicle v",
        spans = crate::sql::spans_cte("$2", "$3"),
        meter_cut = crate::sql::meter_cut_cte("$2", "$3", "true"),
        meter_pieces = crate::sql::meter_pieces_cte(sources),
        window_cut = crate::sql::window_cut_cte("$2", "$3", "true"),
        n = Pieces::total("n"),
        dc = Pieces::total("dc"),
        temp = Pieces::total("temp"),
        laterals = vehicle.laterals(),
    )
}

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
    let row: PerformanceRow = crate::sql::with_named_partitions(window, |sources| {
        let statement = sql(sources);
        async move {
            sqlx::query_as(&statement)
                .bind(vehicle.as_str())
                .bind(window.from)
                .bind(window.to)
                .fetch_one(pool)
                .await
        }
    })
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
    let vehicle = &vehicle;
    let performance = state
        .reads
        .read(|pool| async move { vehicle_performance(&pool, vehicle, window).await })
        .await?;
    match performance {
        Some(performance) => Ok(Json(performance)),
        None => Err(ApiError::NotFound(format!(
            "vehicle {vehicle} has no readings between {} and {}",
            format_timestamp(window.from),
            format_timestamp(window.to)
        ))),
    }
}
