//! `GET /v1/analytics/fleet`: every vehicle that reported in a window, with
//! its efficiency and a health status, worst first, a page at a time.
//!
//! Where the worker's per-vehicle figures hold the window's middle, every
//! vehicle they answer exactly is summed from them, with only the window's
//! two edges read raw ([`crate::figures::fleet_sql`]); the vehicles they do
//! not (marked stale, or without every bucket of the middle summarised, as
//! a vehicle new since the last pass) are computed from the pieces by key,
//! and every vehicle is when the figures do not hold the window. The pieces statement reads by time over all devices: rollups for
//! whole hours, raw rows for the window's partial hours through BRIN
//! indexes, then each vehicle's meter spans through the per-device indexes.
//! Sorting, the status filter and the cursor are applied here, with the
//! same efficiency rounding as the per-vehicle endpoint. Pages are
//! recomputed per request: a cursor is a position in the ranking
//! (efficiency, vehicle id), so new readings between two pages can move a
//! vehicle across it.

use std::cmp::Ordering;

use axum::extract::{RawQuery, State};
use axum::Json;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Serialize;
use shared::wire::format_timestamp;
use sqlx::PgPool;

use crate::charging::{Charging, Health, Thresholds};
use crate::error::ApiError;
use crate::params::{QueryParams, Window};
use crate::sql::{PieceRows, Sources};
use crate::state::AppState;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1_000;

/// The fleet query, reading from `sources`; `$1`/`$2`: the window. Every
/// vehicle's pieces are read by time (BRIN on raw readings at the window's
/// edges, B-trees on the bucket ends), then each reporting vehicle's meter
/// spans by key.
pub fn sql(sources: &Sources) -> String {
    statement(sources, "true")
}

/// [`sql`] for the `$3` vehicles only (those the figures could not
/// answer), read by key.
pub fn listed_sql(sources: &Sources) -> String {
    statement(sources, "x.vehicle_id = ANY($3)")
}

/// The vehicles' pieces (`vehicle_id, n, dc, temp`) of every interval in a
/// preceding `window_cut`, for the vehicles `x.vehicle_id` for which
/// `vehicles` holds, read across devices by time (or by key).
fn vehicle_rows(sources: &Sources, vehicles: &str) -> String {
    PieceRows {
        raw: &sources.vehicle_raw,
        five: &sources.vehicle_5min,
        hourly: &sources.vehicle_hourly,
        cut: "window_cut",
        device: vehicles,
        each_interval_by_key: false,
        raw_columns:
            "x.vehicle_id, 1::bigint AS n, x.kwh_delivered_dc AS dc, x.battery_temp AS temp",
        bucket_columns: "x.vehicle_id, x.readings, x.sum_dc, x.sum_battery_temp",
    }
    .union_all()
}

fn statement(sources: &Sources, vehicles: &str) -> String {
    let vehicle_rows = vehicle_rows(sources, vehicles);
    format!(
        "WITH {window_cut},
vehicle_parts AS (
    {vehicle_rows}
),
fleet AS (
    SELECT vehicle_id, sum(n)::bigint AS n, sum(dc) AS dc, sum(temp) AS temp
    FROM vehicle_parts GROUP BY vehicle_id
),
wanted AS (SELECT vehicle_id FROM fleet WHERE n > 0),
{spans},
{meter_cut},
{meter_pieces},
meters AS (SELECT vehicle_id, sum(n)::bigint AS n, sum(ac) AS ac FROM meter_pieces GROUP BY vehicle_id)
SELECT f.vehicle_id, f.n AS vehicle_readings, f.dc AS sum_dc, f.temp / f.n AS avg_battery_temp,
       coalesce(m.n, 0)::bigint AS meter_readings, coalesce(m.ac, 0) AS sum_ac
FROM fleet f LEFT JOIN meters m USING (vehicle_id)
WHERE f.n > 0",
        window_cut = crate::sql::window_cut_cte("$1", "$2", "true", crate::sql::Cte::Inline),
        spans = crate::sql::spans_cte("$1", "$2", crate::sql::Cte::Once),
        meter_cut = crate::sql::meter_cut_cte("$1", "$2", "true", crate::sql::Cte::Once),
        meter_pieces = crate::sql::meter_pieces_cte(sources),
    )
}

/// A row of [`crate::figures::fleet_sql`].
#[derive(sqlx::FromRow)]
struct FiguresRow {
    vehicle_id: Option<String>,
    usable: bool,
    vehicle_readings: i64,
    sum_dc: f64,
    avg_battery_temp: Option<f64>,
    meter_readings: i64,
    sum_ac: f64,
}

/// Every reporting vehicle's sums over a window, exact (a page rounds
/// them), by the statement that computed them.
#[derive(Debug)]
pub struct FleetSums {
    pub from_figures: Vec<FleetRow>,
    pub from_pieces: Vec<FleetRow>,
}

/// Every reporting vehicle's sums: from the worker's figures where they
/// answer exactly, the others from the pieces by key; all of them from the
/// pieces when the figures do not hold the window, or answer fewer
/// vehicles than they leave (passes deferred during a backlog), where
/// reading the whole fleet by time is cheaper than by key. Both statements
/// read one snapshot, so a page is one state of the data. `sources`: the
/// window's.
pub async fn fleet_sums(
    pool: &PgPool,
    sources: &Sources,
    window: Window,
) -> Result<FleetSums, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let read: Vec<FiguresRow> = sqlx::query_as(&crate::figures::fleet_sql(sources))
        .bind(window.from)
        .bind(window.to)
        .fetch_all(&mut *tx)
        .await?;
    let (mut answered, mut listed, mut unanswerable) = (Vec::new(), Vec::new(), false);
    for row in read {
        match (row.vehicle_id, row.usable) {
            (None, _) => unanswerable = true,
            (Some(vehicle_id), true) => answered.push(FleetRow {
                vehicle_id,
                vehicle_readings: row.vehicle_readings,
                sum_dc: row.sum_dc,
                avg_battery_temp: row.avg_battery_temp.unwrap_or_default(),
                meter_readings: row.meter_readings,
                sum_ac: row.sum_ac,
            }),
            (Some(vehicle_id), false) => listed.push(vehicle_id),
        }
    }
    let computed: Vec<FleetRow> = if unanswerable || listed.len() > answered.len() {
        answered.clear();
        sqlx::query_as(&sql(sources))
            .bind(window.from)
            .bind(window.to)
            .fetch_all(&mut *tx)
            .await?
    } else if listed.is_empty() {
        Vec::new()
    } else {
        sqlx::query_as(&listed_sql(sources))
            .bind(window.from)
            .bind(window.to)
            .bind(&listed)
            .fetch_all(&mut *tx)
            .await?
    };
    tx.commit().await?;
    Ok(FleetSums {
        from_figures: answered,
        from_pieces: computed,
    })
}

/// One vehicle's sums in the fleet view (it reported in the window).
#[derive(Debug, sqlx::FromRow)]
pub struct FleetRow {
    pub vehicle_id: String,
    pub vehicle_readings: i64,
    pub sum_dc: f64,
    pub avg_battery_temp: f64,
    pub meter_readings: i64,
    pub sum_ac: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetVehicle {
    pub vehicle_id: String,
    pub status: Health,
    #[serde(flatten)]
    pub charging: Charging,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetPage {
    pub from: String,
    pub to: String,
    pub thresholds: Thresholds,
    /// Vehicles matching the status filter, on all pages.
    pub total: usize,
    pub vehicles: Vec<FleetVehicle>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Worst first: lowest efficiency, vehicles without AC last, then by id.
fn ranking(a: (Option<f64>, &str), b: (Option<f64>, &str)) -> Ordering {
    let by_efficiency = match (a.0, b.0) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_efficiency.then_with(|| a.1.cmp(b.1))
}

fn encode_cursor(efficiency: Option<f64>, vehicle_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::json!([efficiency, vehicle_id]).to_string())
}

fn decode_cursor(raw: &str) -> Result<(Option<f64>, String), ApiError> {
    let invalid = || ApiError::BadRequest("cursor is not one this API issued".into());
    let bytes = URL_SAFE_NO_PAD.decode(raw).map_err(|_| invalid())?;
    let (efficiency, vehicle_id) =
        serde_json::from_slice::<(Option<f64>, String)>(&bytes).map_err(|_| invalid())?;
    // Only what this API could have issued: a vehicle id by the ingestion rules.
    shared::domain::DeviceId::parse(&vehicle_id).map_err(|_| invalid())?;
    Ok((efficiency, vehicle_id))
}

fn limit(params: &QueryParams) -> Result<usize, ApiError> {
    let Some(raw) = params.get("limit") else {
        return Ok(DEFAULT_LIMIT);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "limit must be an integer from 1 to {MAX_LIMIT}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/analytics/fleet",
    tag = "analytics",
    summary = "Every vehicle that reported in the window, worst efficiency first",
    params(
        crate::openapi::WindowParams,
        ("status" = Option<String>, Query, description = "Only these statuses, comma-separated: HEALTHY, WARNING, CRITICAL, UNKNOWN", example = "CRITICAL,WARNING"),
        ("limit" = Option<u32>, Query, description = "Vehicles per page, 1–1000 (default 100)", example = 100),
        ("cursor" = Option<String>, Query, description = "nextCursor of the previous page")
    ),
    responses((status = 200, description = "One page of the ranking", body = FleetPage), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
/// `GET /v1/analytics/fleet?from=&to=&status=&limit=&cursor=`
pub async fn fleet(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<FleetPage>, ApiError> {
    let params = QueryParams::parse(query.as_deref())?;
    let window = state.window(&params)?;
    let statuses: Option<Vec<Health>> = params
        .get("status")
        .map(|raw| raw.split(',').map(str::trim).map(Health::parse).collect())
        .transpose()?;
    let limit = limit(&params)?;
    let after = params.get("cursor").map(decode_cursor).transpose()?;

    let sums = state
        .read_window(window, |sources, pool| {
            let sources = sources.clone();
            async move { fleet_sums(&pool, &sources, window).await }
        })
        .await?;
    let counted = |source, rows: &[FleetRow]| {
        metrics::counter!("energy_query_fleet_vehicles_total", "source" => source)
            .increment(rows.len() as u64)
    };
    counted("figures", &sums.from_figures);
    counted("computed", &sums.from_pieces);
    let mut vehicles: Vec<FleetVehicle> = sums
        .from_figures
        .into_iter()
        .chain(sums.from_pieces)
        .map(|row| {
            let charging = Charging::new(
                row.vehicle_readings,
                row.sum_dc,
                Some(row.avg_battery_temp),
                row.meter_readings,
                row.sum_ac,
            );
            FleetVehicle {
                status: state.thresholds.classify(charging.efficiency),
                charging,
                vehicle_id: row.vehicle_id,
            }
        })
        .filter(|v| {
            statuses
                .as_ref()
                .is_none_or(|wanted| wanted.contains(&v.status))
        })
        .collect();
    vehicles.sort_by(|a, b| {
        ranking(
            (a.charging.efficiency, &a.vehicle_id),
            (b.charging.efficiency, &b.vehicle_id),
        )
    });
    let total = vehicles.len();
    let start = match &after {
        Some((efficiency, id)) => vehicles
            .iter()
            .position(|v| {
                ranking((v.charging.efficiency, &v.vehicle_id), (*efficiency, id))
                    == Ordering::Greater
            })
            .unwrap_or(total),
        None => 0,
    };
    let mut page: Vec<FleetVehicle> = vehicles.drain(start..).take(limit + 1).collect();
    let next_cursor = if page.len() > limit {
        page.truncate(limit);
        page.last()
            .map(|v| encode_cursor(v.charging.efficiency, &v.vehicle_id))
    } else {
        None
    };
    Ok(Json(FleetPage {
        from: format_timestamp(window.from),
        to: format_timestamp(window.to),
        thresholds: state.thresholds,
        total,
        vehicles: page,
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_first_then_by_id() {
        let mut keys = vec![
            (None, "a"),
            (Some(90.0), "b"),
            (Some(60.0), "c"),
            (Some(60.0), "a"),
        ];
        keys.sort_by(|a, b| ranking(*a, *b));
        assert_eq!(
            keys,
            vec![
                (Some(60.0), "a"),
                (Some(60.0), "c"),
                (Some(90.0), "b"),
                (None, "a")
            ]
        );
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        let cursor = encode_cursor(Some(71.5), "EV-☃");
        assert_eq!(
            decode_cursor(&cursor).unwrap(),
            (Some(71.5), "EV-☃".to_owned())
        );
        assert!(decode_cursor("not-a-cursor!").is_err());
    }
}
