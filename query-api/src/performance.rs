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
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use shared::domain::DeviceId;
use shared::wire::format_timestamp;
use sqlx::PgPool;

use crate::answers::{AnswerCache, Kept, Revisions};
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
    statement(sources, false)
}

/// [`sql`], plus what an answer needs to be kept ([`crate::answers`]):
/// `revision`, `meters`, `meter_revisions`, `assignment_revisions` and
/// `changes_at`, with `$4` the furthest `changes_at` asked for. Its sources
/// must name the raw days through `$4`.
pub fn kept_sql(sources: &Sources) -> String {
    statement(sources, true)
}

/// The CTEs of the validity columns: the meters that could count for the
/// vehicle (every span considered), their revisions, and their first
/// readings and assignments past the window's end. A device whose current
/// state is not past the window's end has no reading there: its probe is
/// skipped (`CASE` runs a subquery only when asked).
fn validity_ctes(sources: &Sources) -> String {
    format!(
        ",
relevant AS (SELECT DISTINCT meter_id FROM spans),
relevant_revisions AS (
    SELECT array_agg(r.meter_id ORDER BY r.meter_id COLLATE \"C\") AS meters,
           array_agg(coalesce(c.revision, -1) ORDER BY r.meter_id COLLATE \"C\") AS meter_revisions,
           array_agg(coalesce(ar.revision, -1) ORDER BY r.meter_id COLLATE \"C\") AS assignment_revisions,
           min(CASE WHEN c.recorded_at > $3 THEN
               (SELECT min(x.recorded_at) FROM {meter_raw} x
                 WHERE x.meter_id = r.meter_id AND x.recorded_at > $3 AND x.recorded_at <= $4)
           END) AS entering,
           min((SELECT min(a.starts_at) FROM assignments a
                 WHERE a.meter_id = r.meter_id AND a.starts_at > $3 AND a.starts_at <= $4)) AS assigned
    FROM relevant r
    LEFT JOIN meters_current c USING (meter_id)
    LEFT JOIN meter_assignment_revisions ar USING (meter_id)
),
vehicle_now AS (SELECT revision, recorded_at FROM vehicles_current WHERE vehicle_id = $1)",
        meter_raw = sources.meter_raw,
    )
}

/// The validity columns (see [`kept_sql`]) over `relevant_revisions` and
/// `vehicle_now`: readings entering after `$3`; readings leaving, at the
/// earliest counted one's time plus the width, bounded from below by each
/// piece's `leaving_from` (no probe of its own); assignments after `$3`.
fn validity_columns(sources: &Sources) -> String {
    format!(
        ",
       (SELECT revision FROM vehicle_now) AS revision,
       rr.meters, rr.meter_revisions, rr.assignment_revisions,
       LEAST(
           CASE WHEN (SELECT recorded_at FROM vehicle_now) > $3 THEN
               (SELECT min(x.recorded_at) FROM {vehicle_raw} x
                 WHERE x.vehicle_id = $1 AND x.recorded_at > $3 AND x.recorded_at <= $4)
           END,
           v.leaving_from + ($3 - $2),
           (SELECT min(a.starts_at) FROM assignments a
             WHERE a.vehicle_id = $1 AND a.starts_at > $3 AND a.starts_at <= $4),
           rr.entering,
           (SELECT min(leaving_from) FROM meter_pieces) + ($3 - $2),
           rr.assigned,
           $4
       ) AS changes_at",
        vehicle_raw = sources.vehicle_raw,
    )
}

fn statement(sources: &Sources, kept: bool) -> String {
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
    SELECT {n} AS n, {dc} AS dc, {temp} AS temp,
           coalesce(head.first_at, c.head_hi) AS leaving_from
    FROM window_cut c{laterals}
){validity_ctes}
SELECT v.n AS vehicle_readings, v.dc AS sum_dc,
       CASE WHEN v.n > 0 THEN v.temp / v.n END AS avg_battery_temp,
       (SELECT coalesce(sum(n), 0)::bigint FROM meter_pieces) AS meter_readings,
       (SELECT coalesce(sum(ac), 0) FROM meter_pieces) AS sum_ac,
       (SELECT coalesce(array_agg(DISTINCT meter_id COLLATE \"C\" ORDER BY meter_id COLLATE \"C\"), '{{}}')
          FROM meter_pieces WHERE n > 0) AS meter_ids{validity_columns}
FROM vehicle v{validity_from}",
        spans = crate::sql::spans_cte("$2", "$3", crate::sql::Cte::Once),
        meter_cut = crate::sql::meter_cut_cte("$2", "$3", "true", crate::sql::Cte::Once),
        meter_pieces = crate::sql::meter_pieces_cte(sources),
        window_cut = crate::sql::window_cut_cte("$2", "$3", "true", crate::sql::Cte::Once),
        n = Pieces::total("n"),
        dc = Pieces::total("dc"),
        temp = Pieces::total("temp"),
        laterals = vehicle.laterals(),
        validity_ctes = if kept { validity_ctes(sources) } else { String::new() },
        validity_columns = if kept { validity_columns(sources) } else { String::new() },
        validity_from = if kept { ", relevant_revisions rr" } else { "" },
    )
}

/// The original API's response shape.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
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

/// A vehicle's sums over a window as computed, before the answer
/// rounds them ([`Charging`]).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WindowSums {
    pub vehicle_readings: i64,
    pub sum_dc: f64,
    pub avg_battery_temp: Option<f64>,
    pub meter_readings: i64,
    pub sum_ac: f64,
    /// Meters whose readings counted, in byte order.
    pub meter_ids: Vec<String>,
}

/// Which statement computed a window's sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputedBy {
    /// The worker's figures, the edges' meters read from them too.
    Figures,
    /// The worker's figures, the edges' meters resolved from the assignments.
    FiguresSpans,
    /// The raw pieces and rollups ([`sql`], or [`kept_sql`] through the
    /// answer cache).
    Pieces,
}

impl ComputedBy {
    /// Counts an answer so computed in `energy_query_answers_total`.
    fn count(self) {
        let outcome = match self {
            Self::Figures => "figures",
            Self::FiguresSpans => "figures_spans",
            Self::Pieces => "computed",
        };
        metrics::counter!("energy_query_answers_total", "outcome" => outcome).increment(1);
    }
}

impl WindowSums {
    /// The answer, or `None` when the vehicle has no readings in `window`.
    fn into_answer(self, vehicle: &DeviceId, window: Window) -> Option<Performance> {
        if self.vehicle_readings == 0 {
            return None;
        }
        Some(Performance {
            vehicle_id: vehicle.to_string(),
            charging: Charging::new(
                self.vehicle_readings,
                self.sum_dc,
                self.avg_battery_temp,
                self.meter_readings,
                self.sum_ac,
            ),
            from: format_timestamp(window.from),
            to: format_timestamp(window.to),
            meter_ids: self.meter_ids,
        })
    }
}

/// A row of [`kept_sql`].
#[derive(sqlx::FromRow)]
struct KeptRow {
    #[sqlx(flatten)]
    figures: WindowSums,
    revision: Option<i64>,
    meters: Vec<String>,
    meter_revisions: Vec<i64>,
    assignment_revisions: Vec<i64>,
    changes_at: DateTime<Utc>,
}

/// A row of [`crate::figures::sql`]: the figures and the edges' meters.
#[derive(sqlx::FromRow)]
struct FiguresAndEdgeMeters {
    #[sqlx(flatten)]
    figures: crate::figures::Figures,
    #[sqlx(flatten)]
    edge_meters: crate::figures::EdgeMeters,
}

impl From<crate::figures::Figures> for WindowSums {
    fn from(figures: crate::figures::Figures) -> Self {
        Self {
            meter_ids: figures.meter_ids(),
            vehicle_readings: figures.vehicle_readings,
            sum_dc: figures.sum_dc,
            avg_battery_temp: figures.avg_battery_temp,
            meter_readings: figures.meter_readings,
            sum_ac: figures.sum_ac,
        }
    }
}

/// The window's sums read from the worker's per-vehicle figures
/// ([`crate::figures`]), or `None` when they cannot answer it exactly:
/// with the edges' meters read from the figures, or else resolved from
/// the assignments.
async fn from_figures(
    pool: &PgPool,
    vehicle: &DeviceId,
    window: Window,
) -> Result<Option<(ComputedBy, WindowSums)>, sqlx::Error> {
    // The raw partitions of the longest tail the statement reads (an hour).
    let tail = Sources::for_window(window.to - TimeDelta::hours(1), window.to);
    let answer: Option<FiguresAndEdgeMeters> =
        crate::sql::named_or_parents(tail, Sources::parents(), |tail| {
            let statement = crate::figures::sql(tail);
            async move { fetch_optional(pool, &statement, vehicle, window).await }
        })
        .await?;
    // No row: marked, not summarised yet, or older than the figures kept;
    // the spans statement reads the same middle, so the pieces answer.
    let Some(answer) = answer else {
        return Ok(None);
    };
    let edge_meters = &answer.edge_meters;
    if edge_meters.head_meter.is_some() && edge_meters.tail_meter.is_some() {
        return Ok(Some((ComputedBy::Figures, answer.figures.into())));
    }
    let answer: Option<crate::figures::Figures> =
        optional_row(pool, vehicle, window, crate::figures::spans_sql).await?;
    Ok(answer.map(|answer| (ComputedBy::FiguresSpans, answer.into())))
}

/// [`vehicle_performance`] through the answer cache: the kept answer when
/// it covers `window` and its revisions still hold, otherwise computed
/// again (with what it takes to keep it) and kept.
pub async fn kept_vehicle_performance(
    pool: &PgPool,
    answers: &AnswerCache<Performance>,
    vehicle: &DeviceId,
    window: Window,
) -> Result<Option<Performance>, sqlx::Error> {
    if let Some(kept) = answers.candidate(vehicle.as_str(), window) {
        if kept.revisions.read_now(pool, vehicle.as_str()).await? == kept.revisions {
            metrics::counter!("energy_query_answers_total", "outcome" => "kept").increment(1);
            let mut answer = kept.figures.clone();
            answer.from = format_timestamp(window.from);
            answer.to = format_timestamp(window.to);
            return Ok(Some(answer));
        }
        metrics::counter!("energy_query_answers_total", "outcome" => "changed").increment(1);
    }
    // Read from the worker's figures when they hold the window: cheaper
    // than checking a kept answer would save, so such answers are not kept.
    if let Some((computed_by, sums)) = from_figures(pool, vehicle, window).await? {
        computed_by.count();
        return Ok(sums.into_answer(vehicle, window));
    }
    let horizon = window.to + answers.reuse_max;
    // The sources name the raw days through the horizon: readings stored
    // ahead of the window's end are looked for there.
    let reach = Window {
        from: window.from,
        to: horizon,
    };
    let row: KeptRow = crate::sql::with_named_partitions(reach, |sources| {
        let statement = kept_sql(sources);
        async move {
            sqlx::query_as(&statement)
                .bind(vehicle.as_str())
                .bind(window.from)
                .bind(window.to)
                .bind(horizon)
                .fetch_one(pool)
                .await
        }
    })
    .await?;
    ComputedBy::Pieces.count();
    let revisions = Revisions {
        vehicle: row.revision,
        meters: row.meters,
        meter_readings: row.meter_revisions,
        meter_assignments: row.assignment_revisions,
    };
    let changes_at = row.changes_at;
    let answer = row.figures.into_answer(vehicle, window);
    if let Some(figures) = &answer {
        answers.keep(
            vehicle.as_str(),
            window,
            Kept {
                to: window.to,
                changes_at,
                revisions,
                figures: figures.clone(),
            },
        );
    }
    Ok(answer)
}

/// Computes the efficiency of `vehicle` over `window`; `None` when the vehicle
/// has no readings in it.
pub async fn vehicle_performance(
    pool: &PgPool,
    vehicle: &DeviceId,
    window: Window,
) -> Result<Option<Performance>, sqlx::Error> {
    let (computed_by, sums) = window_sums(pool, vehicle, window).await?;
    computed_by.count();
    Ok(sums.into_answer(vehicle, window))
}

/// The sums of `vehicle` over `window`, exact, and which statement computed
/// them: the worker's figures when they hold the window, the pieces
/// otherwise. No reading in the window: zero readings.
pub async fn window_sums(
    pool: &PgPool,
    vehicle: &DeviceId,
    window: Window,
) -> Result<(ComputedBy, WindowSums), sqlx::Error> {
    if let Some(answer) = from_figures(pool, vehicle, window).await? {
        return Ok(answer);
    }
    let sums = optional_row(pool, vehicle, window, sql)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    Ok((ComputedBy::Pieces, sums))
}

/// The row, if any, of the statement `build` makes for the window's
/// sources, with `$1` vehicle and `$2`/`$3` the window.
async fn optional_row<T>(
    pool: &PgPool,
    vehicle: &DeviceId,
    window: Window,
    build: fn(&Sources) -> String,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    crate::sql::with_named_partitions(window, |sources| {
        let statement = build(sources);
        async move { fetch_optional(pool, &statement, vehicle, window).await }
    })
    .await
}

/// The row of `statement`, if any, with `$1` vehicle and `$2`/`$3` the
/// window.
async fn fetch_optional<T>(
    pool: &PgPool,
    statement: &str,
    vehicle: &DeviceId,
    window: Window,
) -> Result<Option<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    sqlx::query_as(statement)
        .bind(vehicle.as_str())
        .bind(window.from)
        .bind(window.to)
        .fetch_optional(pool)
        .await
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
        .read(|pool| async move {
            if state.answers.enabled() {
                kept_vehicle_performance(&pool, &state.answers, vehicle, window).await
            } else {
                vehicle_performance(&pool, vehicle, window).await
            }
        })
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
