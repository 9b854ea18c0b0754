//! Current state of a device: its newest reading by event time.

use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::wire::format_timestamp;

use crate::error::ApiError;
use crate::params::device_id;
use crate::AppState;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VehicleState {
    vehicle_id: String,
    soc: f64,
    kwh_delivered_dc: f64,
    battery_temp: f64,
    timestamp: String,
    updated_at: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeterState {
    meter_id: String,
    kwh_consumed_ac: f64,
    voltage: f64,
    timestamp: String,
    updated_at: String,
}

pub async fn vehicle(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<VehicleState>, ApiError> {
    let id = device_id("vehicleId", &raw_id)?;
    let row: Option<(f64, f64, f64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT soc, kwh_delivered_dc, battery_temp, recorded_at, updated_at
         FROM vehicles_current WHERE vehicle_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&state.pool)
    .await?;
    let Some((soc, kwh_delivered_dc, battery_temp, recorded_at, updated_at)) = row else {
        return Err(ApiError::NotFound(format!("no readings for vehicle {id}")));
    };
    Ok(Json(VehicleState {
        vehicle_id: id.to_string(),
        soc,
        kwh_delivered_dc,
        battery_temp,
        timestamp: format_timestamp(recorded_at),
        updated_at: format_timestamp(updated_at),
    }))
}

pub async fn meter(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
) -> Result<Json<MeterState>, ApiError> {
    let id = device_id("meterId", &raw_id)?;
    let row: Option<(f64, f64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT kwh_consumed_ac, voltage, recorded_at, updated_at FROM meters_current WHERE meter_id = $1",
    )
    .bind(id.as_str())
    .fetch_optional(&state.pool)
    .await?;
    let Some((kwh_consumed_ac, voltage, recorded_at, updated_at)) = row else {
        return Err(ApiError::NotFound(format!("no readings for meter {id}")));
    };
    Ok(Json(MeterState {
        meter_id: id.to_string(),
        kwh_consumed_ac,
        voltage,
        timestamp: format_timestamp(recorded_at),
        updated_at: format_timestamp(updated_at),
    }))
}
