//! `POST /v1/ocpp/{version}/{stationId}`: a charging station's OCPP meter
//! values, as the central system received them, published as METER readings
//! with cumulative registers. The mapping (measurand, unit, context, phase,
//! location) is [`shared::ocpp`]; the readings it gives are validated and
//! published like those of `/v1/ingest`, all or nothing.

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use shared::domain::DeviceId;
use shared::ocpp::{self, Version};
use shared::wire::{decode_value, FieldError};

use crate::body::{self, BodyFormat};
use crate::error::{ApiError, ReadingError};
use crate::openapi;
use crate::AppState;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct OcppParams {
    /// Volts, for meter values that carry an energy register but no
    /// `Voltage` sample (without it, such a meter value is refused).
    #[param(minimum = 0, maximum = 2000, example = 230)]
    nominal_voltage: Option<f64>,
}

#[utoipa::path(
    post,
    path = "/v1/ocpp/{version}/{stationId}",
    tag = "ingest",
    summary = "Publish a station's OCPP meter values as METER register readings; 202 once Kafka acknowledged them",
    description = "The body is the OCPP-J CALL frame the station sent: 1.6J `MeterValues`, or 2.0.1 \
        `MeterValues` or `TransactionEvent`. Each meter value with an `Energy.Active.Import.Register` \
        becomes a reading of meter `<stationId>-<connector or EVSE>` (`<stationId>` for 0) with \
        `kwhRegisterAc`: Wh are converted to kWh, the grid-side `Inlet` is preferred to `Outlet`, the \
        total to the sum of three phases, every context counts; meter values without a register are \
        skipped. Errors name the frame's JSON path.",
    params(
        ("version" = String, Path, description = "The OCPP version the station speaks: `1.6` or `2.0.1`", example = "1.6"),
        ("stationId" = String, Path, description = "The station's id (its charge point identity)", example = "CP-7"),
        OcppParams,
    ),
    request_body(content = Vec<serde_json::Value>, content_type = "application/json",
        description = "An OCPP-J CALL frame: [2, \"<messageId>\", \"<action>\", {payload}]"),
    responses(
        (status = 202, description = "Every reading acknowledged by Kafka (acks=all)", body = OcppAccepted),
        openapi::IngestErrors
    ),
    security(("api_key" = []))
)]
pub(crate) async fn meter_values(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    params: Result<Query<OcppParams>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<OcppAccepted>), ApiError> {
    let Path((version, station)) = path.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let Query(params) = params.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let Some(version) = Version::parse(&version) else {
        return Err(invalid(
            0,
            "version",
            format!("must be 1.6 or 2.0.1, not {version:?}"),
        ));
    };
    if let Err(error) = DeviceId::parse(&station) {
        return Err(invalid(0, "stationId", error.to_string()));
    }
    if BodyFormat::from_headers(&headers)? != BodyFormat::Json {
        return Err(ApiError::UnsupportedMediaType(
            "an OCPP-J frame is sent as application/json".to_owned(),
        ));
    }
    let bytes = body::read_limited(&headers, body, state.max_body_bytes).await?;
    let frame = shared::json::from_slice(&bytes)
        .map_err(|error| ApiError::Malformed(format!("malformed JSON: {error}")))?;
    let converted = ocpp::meter_readings(version, &station, &frame, params.nominal_voltage)
        .map_err(|errors| invalid_fields(0, errors))?;
    if converted.readings.len() > state.max_batch_readings {
        return Err(ApiError::PayloadTooLarge(format!(
            "a request may carry at most {} readings",
            state.max_batch_readings
        )));
    }
    let now = Utc::now();
    let mut readings = Vec::with_capacity(converted.readings.len());
    let mut errors = Vec::new();
    for (index, value) in converted.readings.iter().enumerate() {
        match decode_value(value, &state.rules, now) {
            Ok(reading) => readings.push(reading),
            Err(field_errors) => errors.extend(to_reading_errors(index, field_errors)),
        }
    }
    if !errors.is_empty() {
        return Err(crate::count_invalid(ApiError::InvalidReadings(errors)));
    }
    crate::publish_counted(&state, &readings).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(OcppAccepted {
            message: "Data ingested successfully",
            accepted: readings.len(),
            skipped: converted.skipped,
        }),
    ))
}

/// The 202 answer to OCPP meter values.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct OcppAccepted {
    #[schema(example = "Data ingested successfully")]
    pub message: &'static str,
    /// Readings Kafka acknowledged: one per meter value with an energy register.
    pub accepted: usize,
    /// Meter values without an energy register (SoC, power, current alone).
    pub skipped: usize,
}

fn to_reading_errors(index: usize, errors: Vec<FieldError>) -> impl Iterator<Item = ReadingError> {
    errors.into_iter().map(move |e| ReadingError {
        index,
        field: e.field,
        error: e.error,
    })
}

fn invalid_fields(index: usize, errors: Vec<FieldError>) -> ApiError {
    crate::count_invalid(ApiError::InvalidReadings(
        to_reading_errors(index, errors).collect(),
    ))
}

fn invalid(index: usize, field: &str, error: String) -> ApiError {
    invalid_fields(index, vec![FieldError::new(field, error)])
}
