//! Query latency and throughput: the 24-hour performance endpoint over a
//! fleet with a day of per-minute history, and for one vehicle reporting
//! every second, next to the plain SQL aggregate over raw history (no
//! rollups) in the same run. Also the tables' sizes per million readings.
//!
//! The data is loaded once with binary COPY; rollups and current state are
//! derived from it in SQL exactly as the worker keeps them. Before timing,
//! the endpoint's answers are checked against the raw computation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use fleet_sim::fleet::FleetSpec;
use test_support::oracle::{figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::fresh_database;
use test_support::process::{free_port, wait_until_ok, Service};

use crate::load::{derive_rollups_and_current_state, load_fleet};
use crate::report::{count, millis, per_second, quantile, ratio, runs_cell, Report, Table};

pub struct Settings {
    pub vehicles: u32,
    pub hours: u32,
    pub measure: Duration,
}

const SECOND_VEHICLE: &str = "SEC-EV-01";
/// Requests in flight for the throughput figures.
const THROUGHPUT_CONCURRENCY: usize = 16;

/// Latencies and rate of one closed-loop measurement.
struct Measured {
    latencies: Vec<Duration>,
    rate: f64,
}

/// Runs `request` from `concurrency` tasks until `duration` has passed.
async fn measure<F, Fut>(
    concurrency: usize,
    duration: Duration,
    request: F,
) -> anyhow::Result<Measured>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (request, counter) = (request.clone(), counter.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let sent = Instant::now();
                request(i).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(task) = tasks.join_next().await {
        latencies.extend(task??);
    }
    let rate = latencies.len() as f64 / started.elapsed().as_secs_f64();
    Ok(Measured { latencies, rate })
}

/// One target (fleet vehicles or the every-second vehicle) measured both ways.
#[derive(Default)]
struct TargetRun {
    endpoint_single: Vec<Measured>,
    endpoint_parallel: Vec<Measured>,
    raw_single: Vec<Measured>,
    raw_parallel: Vec<Measured>,
}

pub async fn run(settings: &Settings, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let db = fresh_database().await;
    let end = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    let start = end - TimeDelta::hours(i64::from(settings.hours));
    eprintln!(
        "loading {} vehicles × {} h of per-minute history",
        settings.vehicles, settings.hours
    );
    let loading = Instant::now();
    let fleet = FleetSpec {
        jitter: TimeDelta::milliseconds(1500),
        reassign_every: Some(TimeDelta::hours(6)),
        faulty_fraction: 0.05,
        seed: 7,
        ..FleetSpec::new(settings.vehicles, start)
    };
    let (fleet_vehicle_rows, fleet_meter_rows) =
        load_fleet(&db.pool, fleet, u64::from(settings.hours) * 60).await?;
    let every_second = FleetSpec {
        vehicle_prefix: "SEC-EV-".to_owned(),
        meter_prefix: "SEC-MTR-".to_owned(),
        interval: TimeDelta::seconds(1),
        jitter: TimeDelta::milliseconds(200),
        reassign_every: Some(TimeDelta::hours(6)),
        seed: 8,
        ..FleetSpec::new(1, start)
    };
    let (second_vehicle_rows, second_meter_rows) =
        load_fleet(&db.pool, every_second, u64::from(settings.hours) * 3600).await?;
    derive_rollups_and_current_state(&db.pool).await?;
    eprintln!("loaded in {:.0} s", loading.elapsed().as_secs_f64());
    let vehicle_rows = fleet_vehicle_rows + second_vehicle_rows;
    let meter_rows = fleet_meter_rows + second_meter_rows;

    let port = free_port();
    let mut api = Service::start(
        "query-api",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("QUERY_API_ADDR", format!("127.0.0.1:{port}")),
        ],
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_until_ok(&format!("{base}/readyz"), Duration::from_secs(30)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(THROUGHPUT_CONCURRENCY)
        .build()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(THROUGHPUT_CONCURRENCY as u32)
        .connect(&db.url)
        .await?;
    check_answers(&client, &base, &pool, settings.vehicles, end).await?;

    let fleet_ids: Arc<Vec<String>> = Arc::new(
        (1..=settings.vehicles)
            .map(|n| {
                format!(
                    "EV-{n:0width$}",
                    width = settings.vehicles.to_string().len().max(2)
                )
            })
            .collect(),
    );
    let second_ids = Arc::new(vec![SECOND_VEHICLE.to_owned()]);
    let mut targets = [TargetRun::default(), TargetRun::default()];
    for run in 1..=runs {
        eprintln!("query run {run}/{runs}");
        for (target, ids) in targets
            .iter_mut()
            .zip([fleet_ids.clone(), second_ids.clone()])
        {
            let endpoint = {
                let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
                move |i: u64| {
                    let url = format!(
                        "{base}/v1/analytics/performance/{}",
                        ids[pick(i, ids.len())]
                    );
                    let client = client.clone();
                    async move {
                        let response = client.get(url).send().await?;
                        anyhow::ensure!(
                            response.status().is_success(),
                            "endpoint answered {}",
                            response.status()
                        );
                        response.bytes().await?;
                        Ok(())
                    }
                }
            };
            let raw = {
                let (pool, ids) = (pool.clone(), ids.clone());
                move |i: u64| {
                    let (pool, id) = (pool.clone(), ids[pick(i, ids.len())].clone());
                    async move {
                        let to = Utc::now();
                        figures(
                            &pool,
                            RAW_PERFORMANCE_SQL,
                            &id,
                            to - TimeDelta::hours(24),
                            to,
                        )
                        .await;
                        Ok(())
                    }
                }
            };
            target
                .endpoint_single
                .push(measure(1, settings.measure, endpoint.clone()).await?);
            target
                .endpoint_parallel
                .push(measure(THROUGHPUT_CONCURRENCY, settings.measure, endpoint).await?);
            target
                .raw_single
                .push(measure(1, settings.measure, raw.clone()).await?);
            target
                .raw_parallel
                .push(measure(THROUGHPUT_CONCURRENCY, settings.measure, raw).await?);
        }
    }
    let api_peak_rss_kib = api.peak_rss_kib().unwrap_or(0) as f64;
    api.terminate(Duration::from_secs(10));

    let mut table = Table::new(&[
        "vehicle",
        "approach",
        "p50 (1 in flight)",
        "p99 (1 in flight)",
        "requests/s (1 in flight)",
        &format!("requests/s ({THROUGHPUT_CONCURRENCY} in flight)"),
        &format!("p99 ({THROUGHPUT_CONCURRENCY} in flight)"),
        "speed-up over raw SQL",
    ]);
    let figures_of =
        |runs: &[Measured], f: &dyn Fn(&Measured) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let p = |q: f64| move |m: &Measured| quantile(&m.latencies, q).as_secs_f64() * 1e3;
    let fleet_name = format!(
        "random of {}, per minute",
        count(u64::from(settings.vehicles))
    );
    for (name, target) in [
        (fleet_name, &targets[0]),
        ("every second".to_owned(), &targets[1]),
    ] {
        for (approach, single, parallel) in [
            (
                "`/v1/analytics/performance/{id}` (query-api)",
                &target.endpoint_single,
                &target.endpoint_parallel,
            ),
            (
                "plain SQL over raw history (sqlx, no HTTP)",
                &target.raw_single,
                &target.raw_parallel,
            ),
        ] {
            let speedup: Vec<f64> = target
                .endpoint_parallel
                .iter()
                .zip(&target.raw_parallel)
                .map(|(e, r)| e.rate / r.rate)
                .collect();
            table.row(vec![
                name.clone(),
                approach.to_owned(),
                runs_cell(&figures_of(single, &p(0.5)), millis),
                runs_cell(&figures_of(single, &p(0.99)), millis),
                runs_cell(&figures_of(single, &|m| m.rate), per_second),
                runs_cell(&figures_of(parallel, &|m| m.rate), per_second),
                runs_cell(&figures_of(parallel, &p(0.99)), millis),
                if approach.contains("query-api") {
                    runs_cell(&speedup, ratio)
                } else {
                    "1.00×".to_owned()
                },
            ]);
        }
    }
    report.add(
        "Query: 24-hour performance",
        &format!(
            "{} vehicles and {} meters with {} h of per-minute history ({} vehicle and {} meter \
             rows, reassigned every 6 h), plus one vehicle and its meter reporting every second. \
             Each measurement is closed-loop for {:.1} s over the window ending now; the endpoint \
             answers over HTTP with JSON, the plain SQL is the same computation over raw rows \
             without rollups. Speed-up: requests/s with {THROUGHPUT_CONCURRENCY} in flight.",
            count(u64::from(settings.vehicles)),
            count(u64::from(settings.vehicles)),
            settings.hours,
            count(vehicle_rows),
            count(meter_rows),
            settings.measure.as_secs_f64(),
        ),
        &table,
    );
    report.add_peak_rss("query-api", "every query run", &[api_peak_rss_kib]);
    sizes(&db.pool, vehicle_rows, meter_rows, report).await
}

/// A spread of ids from a counter, so consecutive requests hit different vehicles.
fn pick(i: u64, n: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) % n as u64) as usize
}

/// The endpoint's answers for a sample of vehicles over a fixed window equal
/// the raw computation; a benchmark of wrong answers would mean nothing.
async fn check_answers(
    client: &reqwest::Client,
    base: &str,
    pool: &sqlx::PgPool,
    vehicles: u32,
    end: chrono::DateTime<Utc>,
) -> anyhow::Result<()> {
    let (from, to) = (
        end - TimeDelta::minutes(23 * 60 + 17),
        end - TimeDelta::minutes(7),
    );
    let width = vehicles.to_string().len().max(2);
    let mut ids: Vec<String> = (0..20u64)
        .map(|i| format!("EV-{:0width$}", pick(i, vehicles as usize) + 1))
        .collect();
    ids.push(SECOND_VEHICLE.to_owned());
    for id in ids {
        let answer: serde_json::Value = client
            .get(format!("{base}/v1/analytics/performance/{id}"))
            .query(&[
                ("from", shared::wire::format_timestamp(from)),
                ("to", shared::wire::format_timestamp(to)),
            ])
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let raw = figures(pool, RAW_PERFORMANCE_SQL, &id, from, to).await;
        let close = |field: &str, expected: f64| {
            answer[field]
                .as_f64()
                .is_some_and(|got| (got - expected).abs() <= 1e-6 * expected.abs().max(1.0))
        };
        anyhow::ensure!(
            answer["vehicleReadings"] == raw.vehicle_readings
                && answer["meterReadings"] == raw.meter_readings
                && close("sumDC", raw.sum_dc)
                && close("sumAC", raw.sum_ac),
            "{id}: the endpoint answered {answer} but raw history gives {raw:?}"
        );
    }
    Ok(())
}

async fn sizes(
    pool: &sqlx::PgPool,
    vehicle_rows: u64,
    meter_rows: u64,
    report: &mut Report,
) -> anyhow::Result<()> {
    let mut table = Table::new(&[
        "table",
        "rows",
        "table MiB",
        "index MiB",
        "total per million readings",
    ]);
    for (name, readings) in [
        ("vehicle_readings", vehicle_rows),
        ("meter_readings", meter_rows),
        ("vehicle_hourly", vehicle_rows),
        ("meter_hourly", meter_rows),
    ] {
        let (rows, table_bytes, index_bytes): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {name}),
                    sum(pg_table_size(relid))::bigint, sum(pg_indexes_size(relid))::bigint
             FROM pg_partition_tree('{name}') WHERE isleaf"
        ))
        .fetch_one(pool)
        .await?;
        let mib = |bytes: i64| bytes as f64 / 1024.0 / 1024.0;
        table.row(vec![
            format!("`{name}`"),
            count(rows as u64),
            format!("{:.0}", mib(table_bytes)),
            format!("{:.0}", mib(index_bytes)),
            format!(
                "{:.1} MiB",
                mib(table_bytes + index_bytes) / (readings as f64 / 1e6)
            ),
        ]);
    }
    report.add(
        "PostgreSQL sizes",
        "After loading the query data set (all partitions, TOAST included). The rollups' size is \
         per million readings of the history table they summarise.",
        &table,
    );
    Ok(())
}
