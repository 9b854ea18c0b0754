//! Current state of a device: its newest reading by event time, and for
//! devices that report registers, the register and its implausible jumps.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Serialize;
use shared::domain::DeviceId;
use shared::wire::format_timestamp;

use crate::error::ApiError;
use crate::params::device_id;
use crate::state::AppState;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VehicleState {
    vehicle_id: String,
    soc: f64,
    /// The newest reading's interval energy: as stated, or derived from its register.
    kwh_delivered_dc: f64,
    /// The newest reading's cumulative register, when it carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    kwh_register_dc: Option<f64>,
    battery_temp: f64,
    #[serde(flatten)]
    registers: RegisterState,
    timestamp: String,
    updated_at: String,
}

/// What a device's registers did that was not counted.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterState {
    /// Stored register readings whose rise was implausible for the elapsed
    /// time (above REGISTER_MAX_KW): their intervals are not counted.
    register_jumps: i64,
    /// Event time of the newest reading flagged so.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_register_jump_at: Option<String>,
}

impl RegisterState {
    fn new(register_jumps: i64, last_register_jump_at: Option<DateTime<Utc>>) -> Self {
        Self {
            register_jumps,
            last_register_jump_at: last_register_jump_at.map(format_timestamp),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeterState {
    meter_id: String,
    /// The newest reading's interval energy: as stated, or derived from its register.
    kwh_consumed_ac: f64,
    /// The newest reading's cumulative register, when it carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    kwh_register_ac: Option<f64>,
    voltage: f64,
    #[serde(flatten)]
    registers: RegisterState,
    timestamp: String,
    updated_at: String,
}

#[derive(sqlx::FromRow)]
struct VehicleRow {
    soc: f64,
    kwh_delivered_dc: f64,
    kwh_register_dc: Option<f64>,
    battery_temp: f64,
    register_jumps: i64,
    last_register_jump_at: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct MeterRow {
    kwh_consumed_ac: f64,
    kwh_register_ac: Option<f64>,
    voltage: f64,
    register_jumps: i64,
    last_register_jump_at: Option<DateTime<Utc>>,
    recorded_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// A vehicle's current state, by its id ($1).
pub const VEHICLE_STATE_SQL: &str =
    "SELECT soc, kwh_delivered_dc, kwh_register_dc, battery_temp, register_jumps,
            last_register_jump_at, recorded_at, updated_at
     FROM vehicles_current WHERE vehicle_id = $1";

/// A meter's current state, by its id ($1).
pub const METER_STATE_SQL: &str =
    "SELECT kwh_consumed_ac, kwh_register_ac, voltage, register_jumps, last_register_jump_at,
            recorded_at, updated_at
     FROM meters_current WHERE meter_id = $1";

/// The current-state row of device `id` by `sql` (one of the two above).
async fn current_state<R>(
    state: &AppState,
    sql: &'static str,
    id: &DeviceId,
) -> Result<Option<R>, ApiError>
where
    R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let key = id.as_str();
    let row = state
        .reads
        .read(|pool| async move { sqlx::query_as(sql).bind(key).fetch_optional(&pool).await })
        .await?;
    Ok(row)
}

/// `GET /v1/vehicles/{vehicleId}`
#[utoipa::path(
    get,
    path = "/v1/vehicles/{vehicleId}",
    tag = "devices",
    summary = "A vehicle's newest reading by event time",
    params(("vehicleId" = String, Path, description = "The vehicle's id: 1–64 characters, no control characters", example = "EV-03")),
    responses((status = 200, description = "The newest reading and when it was stored", body = VehicleState), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
pub async fn vehicle(
    State(state): State<AppState>,
    raw_id: Result<Path<String>, PathRejection>,
) -> Result<Json<VehicleState>, ApiError> {
    let Path(raw_id) = raw_id?;
    let id = device_id("vehicleId", &raw_id)?;
    let Some(row) = current_state::<VehicleRow>(&state, VEHICLE_STATE_SQL, &id).await? else {
        return Err(ApiError::NotFound(format!("no readings for vehicle {id}")));
    };
    Ok(Json(VehicleState {
        vehicle_id: id.to_string(),
        soc: row.soc,
        kwh_delivered_dc: row.kwh_delivered_dc,
        kwh_register_dc: row.kwh_register_dc,
        battery_temp: row.battery_temp,
        registers: RegisterState::new(row.register_jumps, row.last_register_jump_at),
        timestamp: format_timestamp(row.recorded_at),
        updated_at: format_timestamp(row.updated_at),
    }))
}

/// `GET /v1/meters/{meterId}`
#[utoipa::path(
    get,
    path = "/v1/meters/{meterId}",
    tag = "devices",
    summary = "A meter's newest reading by event time",
    params(("meterId" = String, Path, description = "The meter's id: 1–64 characters, no control characters", example = "MTR-03")),
    responses((status = 200, description = "The newest reading and when it was stored", body = MeterState), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
pub async fn meter(
    State(state): State<AppState>,
    raw_id: Result<Path<String>, PathRejection>,
) -> Result<Json<MeterState>, ApiError> {
    let Path(raw_id) = raw_id?;
    let id = device_id("meterId", &raw_id)?;
    let Some(row) = current_state::<MeterRow>(&state, METER_STATE_SQL, &id).await? else {
        return Err(ApiError::NotFound(format!("no readings for meter {id}")));
    };
    Ok(Json(MeterState {
        meter_id: id.to_string(),
        kwh_consumed_ac: row.kwh_consumed_ac,
        kwh_register_ac: row.kwh_register_ac,
        voltage: row.voltage,
        registers: RegisterState::new(row.register_jumps, row.last_register_jump_at),
        timestamp: format_timestamp(row.recorded_at),
        updated_at: format_timestamp(row.updated_at),
    }))
}
