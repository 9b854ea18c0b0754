//! `GET /v1/analytics/performance/{vehicleId}/series`: DC, AC, efficiency
//! and mean battery temperature per time bucket, for charts.
//!
//! Buckets are aligned to UTC (`5m`, `15m`, `1h`, `1d` multiples since
//! 2000-01-01T00:00Z) and, like windows, left-open: a bucket covers
//! `(start, end]`; the first and last are clipped to the window. Every bucket
//! of the window is returned, empty ones with zero readings. Buckets come
//! from rollups (five-minute ones, and hourly ones for buckets of an hour or
//! more) plus raw readings at the window's and assignments' edges.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use shared::wire::format_timestamp;

use crate::charging::Charging;
use crate::error::ApiError;
use crate::params::{device_id, QueryParams};
use crate::sql::{PieceRows, Sources};
use crate::state::AppState;

/// Most points one series may have.
pub const MAX_POINTS: i64 = 2_000;

/// The series query, reading from `sources`. `$1` vehicle, `$2`/`$3`
/// window, `$4` bucket size, `$5` whether whole hours may come from hourly
/// rollups (bucket sizes of an hour or more).
pub fn sql(sources: &Sources) -> String {
    // Each row at the instant that bins it: a reading's time, or a
    // bucket's end, which lies in the same series bucket as every reading
    // it holds (series buckets are multiples of five minutes).
    let vehicle_rows = PieceRows {
        raw: &sources.vehicle_raw,
        five: &sources.vehicle_5min,
        hourly: &sources.vehicle_hourly,
        cut: "window_cut",
        device: "x.vehicle_id = $1",
        each_interval_by_key: false,
        raw_columns: "x.recorded_at AS at, 1::bigint AS v_n, x.kwh_delivered_dc AS dc, \
                      x.battery_temp AS temp, 0::bigint AS m_n, 0::float8 AS ac",
        bucket_columns: "x.{end}, x.readings, x.sum_dc, x.sum_battery_temp, 0, 0",
    }
    .union_all();
    let meter_rows = PieceRows {
        raw: &sources.meter_raw,
        five: &sources.meter_5min,
        hourly: &sources.meter_hourly,
        cut: "meter_cut",
        device: "x.meter_id = c.meter_id",
        each_interval_by_key: true,
        raw_columns: "x.recorded_at, 0, 0, 0, 1, x.kwh_consumed_ac",
        bucket_columns: "x.{end}, 0, 0, 0, x.readings, x.sum_ac",
    }
    .union_all();
    format!(
        "WITH wanted AS (SELECT $1::text AS vehicle_id),
{spans},
{meter_cut},
{window_cut},
parts AS (
    {vehicle_rows}
    UNION ALL
    {meter_rows}
)
SELECT date_bin($4, at - interval '1 microsecond', timestamptz '2000-01-01 00:00:00+00') + $4 AS bucket_end,
       sum(v_n)::bigint AS vehicle_readings, sum(dc) AS sum_dc, sum(temp) AS sum_temp,
       sum(m_n)::bigint AS meter_readings, sum(ac) AS sum_ac
FROM parts
GROUP BY 1
ORDER BY 1",
        spans = crate::sql::spans_cte("$2", "$3", crate::sql::Cte::Inline),
        meter_cut = crate::sql::meter_cut_cte("$2", "$3", "$5", crate::sql::Cte::Inline),
        window_cut = crate::sql::window_cut_cte("$2", "$3", "$5", crate::sql::Cte::Inline),
    )
}

/// A supported bucket size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub name: &'static str,
    pub size: TimeDelta,
}

impl Bucket {
    const ALL: [Bucket; 4] = [
        Bucket {
            name: "5m",
            size: TimeDelta::minutes(5),
        },
        Bucket {
            name: "15m",
            size: TimeDelta::minutes(15),
        },
        Bucket {
            name: "1h",
            size: TimeDelta::hours(1),
        },
        Bucket {
            name: "1d",
            size: TimeDelta::days(1),
        },
    ];

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|bucket| bucket.name == raw)
            .ok_or_else(|| ApiError::BadRequest("bucket must be one of 5m, 15m, 1h, 1d".into()))
    }

    /// Whether whole hours can come from hourly rollups (five-minute
    /// rollups always can: every bucket size is a multiple of five minutes).
    fn uses_hourly_rollups(&self) -> bool {
        self.size >= TimeDelta::hours(1)
    }

    /// The end of the bucket that holds `at` (buckets are left-open).
    fn end_of(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let size = self.size.num_microseconds().unwrap_or(i64::MAX);
        let origin = DateTime::<Utc>::from_timestamp(946_684_800, 0).unwrap_or_default();
        let since = (at - origin).num_microseconds().unwrap_or(0) - 1;
        origin + TimeDelta::microseconds(since.div_euclid(size) * size + size)
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub start: String,
    pub end: String,
    #[serde(flatten)]
    pub charging: Charging,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    pub vehicle_id: String,
    pub bucket: &'static str,
    pub from: String,
    pub to: String,
    pub points: Vec<Point>,
}

#[derive(sqlx::FromRow)]
struct BucketRow {
    bucket_end: DateTime<Utc>,
    vehicle_readings: i64,
    sum_dc: f64,
    sum_temp: f64,
    meter_readings: i64,
    sum_ac: f64,
}

#[utoipa::path(
    get,
    path = "/v1/analytics/performance/{vehicleId}/series",
    tag = "analytics",
    summary = "A vehicle's efficiency per time bucket, for charts",
    description = "One point per bucket aligned to UTC, each covering (start, end], the first and last clipped to the window; empty buckets included; at most 2,000 points.",
    params(
        ("vehicleId" = String, Path, description = "The vehicle's id: 1–64 characters, no control characters", example = "EV-03"),
        crate::openapi::WindowParams,
        ("bucket" = Option<String>, Query, description = "5m, 15m, 1h or 1d (default 1h)", example = "1h")
    ),
    responses((status = 200, description = "The points, oldest first", body = Series), crate::openapi::ReadErrors),
    security(("api_key" = [])),
)]
/// `GET /v1/analytics/performance/{vehicleId}/series?from=&to=&bucket=1h`
pub async fn series(
    State(state): State<AppState>,
    raw_id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<Series>, ApiError> {
    let Path(raw_id) = raw_id?;
    let vehicle = device_id("vehicleId", &raw_id)?;
    let params = QueryParams::parse(query.as_deref())?;
    let window = state.window(&params)?;
    let bucket = Bucket::parse(params.get("bucket").unwrap_or("1h"))?;
    let first_end = bucket.end_of(window.from + TimeDelta::microseconds(1));
    let last_end = bucket.end_of(window.to);
    let n_points = (last_end - first_end)
        .num_microseconds()
        .unwrap_or(i64::MAX)
        / bucket.size.num_microseconds().unwrap_or(1)
        + 1;
    if n_points > MAX_POINTS {
        return Err(ApiError::BadRequest(format!(
            "bucket {} over this window gives {n_points} points, more than {MAX_POINTS}: use a larger bucket or a shorter window",
            bucket.name
        )));
    }

    let vehicle = vehicle.as_str();
    let rows: Vec<BucketRow> = state
        .read_window(window, |sources, pool| {
            let statement = sql(sources);
            async move {
                sqlx::query_as(&statement)
                    .bind(vehicle)
                    .bind(window.from)
                    .bind(window.to)
                    .bind(bucket.size)
                    .bind(bucket.uses_hourly_rollups())
                    .fetch_all(&pool)
                    .await
            }
        })
        .await?;
    let mut rows = rows.into_iter().peekable();
    let mut points = Vec::with_capacity(n_points as usize);
    let mut end = first_end;
    while end <= last_end {
        let row = rows.next_if(|row| row.bucket_end == end);
        let (vehicle_readings, sum_dc, sum_temp, meter_readings, sum_ac) = row
            .map(|r| {
                (
                    r.vehicle_readings,
                    r.sum_dc,
                    r.sum_temp,
                    r.meter_readings,
                    r.sum_ac,
                )
            })
            .unwrap_or_default();
        points.push(Point {
            start: format_timestamp((end - bucket.size).max(window.from)),
            end: format_timestamp(end.min(window.to)),
            charging: Charging::new(
                vehicle_readings,
                sum_dc,
                (vehicle_readings > 0).then(|| sum_temp / vehicle_readings as f64),
                meter_readings,
                sum_ac,
            ),
        });
        end += bucket.size;
    }
    Ok(Json(Series {
        vehicle_id: vehicle.to_string(),
        bucket: bucket.name,
        from: format_timestamp(window.from),
        to: format_timestamp(window.to),
        points,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_left_open_and_aligned_to_utc() {
        let hour = Bucket::parse("1h").unwrap();
        let at = |raw: &str| raw.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            hour.end_of(at("2026-02-10T10:00:00Z")),
            at("2026-02-10T10:00:00Z")
        );
        assert_eq!(
            hour.end_of(at("2026-02-10T10:00:00.000001Z")),
            at("2026-02-10T11:00:00Z")
        );
        let day = Bucket::parse("1d").unwrap();
        assert_eq!(
            day.end_of(at("2026-02-10T10:00:00Z")),
            at("2026-02-11T00:00:00Z")
        );
        let five = Bucket::parse("5m").unwrap();
        assert_eq!(
            five.end_of(at("2026-02-10T10:01:00Z")),
            at("2026-02-10T10:05:00Z")
        );
        assert!(Bucket::parse("2h").is_err());
    }
}
