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
use query_api::performance;
use query_api::sql::Sources;
use test_support::oracle::{figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::fresh_database;
use test_support::process::{wait_until_ok, Service};

use crate::cpu::{machine_busy_seconds, own_cpu_seconds, process_cpu_seconds};
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Approach {
    Endpoint,
    ServiceSql,
    RawSql,
}

const APPROACHES: [(Approach, &str); 3] = [
    (
        Approach::Endpoint,
        "`/v1/analytics/performance/{id}` (query-api, HTTP)",
    ),
    (
        Approach::ServiceSql,
        "the endpoint's SQL alone (sqlx, no HTTP)",
    ),
    (
        Approach::RawSql,
        "plain SQL over raw history (sqlx, no HTTP)",
    ),
];

/// One approach on one target, one measurement per run.
#[derive(Default)]
struct Measurements {
    single: Vec<Measured>,
    parallel: Vec<Measured>,
}

/// Everything one request of a measurement needs.
#[derive(Clone)]
struct Request {
    approach: Approach,
    client: reqwest::Client,
    base: String,
    pool: sqlx::PgPool,
    ids: Arc<Vec<String>>,
}

impl Request {
    /// The `i`th request: a vehicle picked from the ids, the window ending now.
    async fn send(self, i: u64) -> anyhow::Result<()> {
        let id = &self.ids[pick(i, self.ids.len())];
        match self.approach {
            Approach::Endpoint => {
                let url = format!("{}/v1/analytics/performance/{id}", self.base);
                let response = self.client.get(url).send().await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "endpoint answered {}",
                    response.status()
                );
                response.bytes().await?;
            }
            Approach::ServiceSql | Approach::RawSql => {
                let to = Utc::now();
                let from = to - TimeDelta::hours(24);
                let sql = if self.approach == Approach::ServiceSql {
                    performance::sql(&Sources::for_window(from, to))
                } else {
                    RAW_PERFORMANCE_SQL.to_owned()
                };
                figures(&self.pool, &sql, id, from, to).await;
            }
        }
        Ok(())
    }

    fn into_fn(
        self,
    ) -> impl Fn(u64) -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
           + Clone
           + Send
           + 'static {
        move |i| Box::pin(self.clone().send(i))
    }
}

pub async fn run(settings: &Settings, runs: usize, report: &mut Report) -> anyhow::Result<()> {
    let db = fresh_database().await;
    let loaded = load(&db, settings).await?;
    let mut api = Service::start(
        "query-api",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("QUERY_API_ADDR", "127.0.0.1:0".to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
        ],
    );
    let base = api.listening_url(Duration::from_secs(30));
    wait_until_ok(&format!("{base}/readyz"), Duration::from_secs(30)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(THROUGHPUT_CONCURRENCY)
        .build()?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(THROUGHPUT_CONCURRENCY as u32)
        .connect(&db.url)
        .await?;
    check_answers(&client, &base, &pool, settings.vehicles, loaded.end).await?;
    let target = Target {
        client,
        base,
        pool: pool.clone(),
        api_pid: api.pid(),
    };
    let (measured, cpu_splits) = measure_runs(settings, runs, &target).await?;
    let api_peak_rss_kib = api.peak_rss_kib().unwrap_or(0) as f64;
    api.terminate(Duration::from_secs(10));
    report_latencies(settings, &loaded, &measured, report);
    report_cpu(settings, &cpu_splits, report);
    report.add_peak_rss("query-api", "every query run", &[api_peak_rss_kib]);
    sizes(&db.pool, loaded.vehicle_rows, loaded.meter_rows, report).await?;
    pool.close().await;
    Ok(db.drop_database().await?)
}

/// What was loaded, and the end of its history.
struct Loaded {
    vehicle_rows: u64,
    meter_rows: u64,
    end: chrono::DateTime<Utc>,
}

/// The service under measurement and the ways to reach it.
struct Target {
    client: reqwest::Client,
    base: String,
    pool: sqlx::PgPool,
    api_pid: u32,
}

/// [target][approach], each with one measurement per run.
type Measured3x2 = [[Measurements; 3]; 2];

/// The fleet and the every-second vehicle, with the partitions a worker keeps.
async fn load(
    db: &test_support::postgres::TestDatabase,
    settings: &Settings,
) -> anyhow::Result<Loaded> {
    // The partitions a worker keeps: from the retention cutoff (90 days by
    // default) through the day after tomorrow. Their number is part of what
    // a query costs (see BENCHMARKS.md), so the benchmark has all of them.
    let today = Utc::now().date_naive();
    test_support::postgres::ensure_partitions(
        &db.pool,
        today - chrono::Days::new(90),
        today + chrono::Days::new(2),
    )
    .await;
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
    Ok(Loaded {
        vehicle_rows,
        meter_rows,
        end,
    })
}

/// Each run: every approach for each target, one in flight and many.
async fn measure_runs(
    settings: &Settings,
    runs: usize,
    service: &Target,
) -> anyhow::Result<(Measured3x2, Vec<[f64; 5]>)> {
    let (client, base, pool) = (&service.client, &service.base, &service.pool);
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
    let mut measured: [[Measurements; 3]; 2] = Default::default();
    let mut cpu_splits = Vec::new();
    for run in 1..=runs {
        eprintln!("query run {run}/{runs}");
        for (target, ids) in measured
            .iter_mut()
            .zip([fleet_ids.clone(), second_ids.clone()])
        {
            for (approach, measurements) in APPROACHES.iter().zip(target.iter_mut()) {
                let request = Request {
                    approach: approach.0,
                    client: client.clone(),
                    base: base.clone(),
                    pool: pool.clone(),
                    ids: ids.clone(),
                };
                // Warm-up, not measured: every pooled connection opened and
                // its prepared statement planned.
                measure(
                    THROUGHPUT_CONCURRENCY,
                    Duration::from_secs(1),
                    request.clone().into_fn(),
                )
                .await?;
                measurements
                    .single
                    .push(measure(1, settings.measure, request.clone().into_fn()).await?);
                let (machine, api_cpu, own_cpu) = (
                    machine_busy_seconds(),
                    process_cpu_seconds(service.api_pid),
                    own_cpu_seconds(),
                );
                measurements.parallel.push(
                    measure(THROUGHPUT_CONCURRENCY, settings.measure, request.into_fn()).await?,
                );
                if approach.0 == Approach::Endpoint && Arc::ptr_eq(&ids, &fleet_ids) {
                    let machine = machine_busy_seconds() - machine;
                    let api_cpu = process_cpu_seconds(service.api_pid) - api_cpu;
                    let own_cpu = own_cpu_seconds() - own_cpu;
                    cpu_splits.push([
                        api_cpu,
                        own_cpu,
                        machine - api_cpu - own_cpu,
                        machine,
                        capacity(settings.measure),
                    ]);
                }
            }
        }
    }
    Ok((measured, cpu_splits))
}

fn report_latencies(
    settings: &Settings,
    loaded: &Loaded,
    measured: &Measured3x2,
    report: &mut Report,
) {
    let (vehicle_rows, meter_rows) = (loaded.vehicle_rows, loaded.meter_rows);
    let mut table = Table::new(&[
        "vehicle",
        "approach",
        "p50 (1 in flight)",
        "p99 (1 in flight)",
        "requests/s (1 in flight)",
        &format!("requests/s ({THROUGHPUT_CONCURRENCY} in flight)"),
        &format!("p99 ({THROUGHPUT_CONCURRENCY} in flight)"),
        &format!("vs raw SQL ({THROUGHPUT_CONCURRENCY} in flight)"),
    ]);
    let figures_of =
        |runs: &[Measured], f: &dyn Fn(&Measured) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
    let p = |q: f64| move |m: &Measured| quantile(&m.latencies, q).as_secs_f64() * 1e3;
    let fleet_name = format!(
        "random of {}, per minute",
        count(u64::from(settings.vehicles))
    );
    for (name, target) in [
        (fleet_name, &measured[0]),
        ("every second".to_owned(), &measured[1]),
    ] {
        let raw = &target[2].parallel;
        for ((_, label), m) in APPROACHES.iter().zip(target) {
            let speedup: Vec<f64> = m
                .parallel
                .iter()
                .zip(raw)
                .map(|(a, r)| a.rate / r.rate)
                .collect();
            table.row(vec![
                name.clone(),
                (*label).to_owned(),
                runs_cell(&figures_of(&m.single, &p(0.5)), millis),
                runs_cell(&figures_of(&m.single, &p(0.99)), millis),
                runs_cell(&figures_of(&m.single, &|m| m.rate), per_second),
                runs_cell(&figures_of(&m.parallel, &|m| m.rate), per_second),
                runs_cell(&figures_of(&m.parallel, &p(0.99)), millis),
                runs_cell(&speedup, ratio),
            ]);
        }
    }
    report.add(
        "Query: 24-hour performance",
        &format!(
            "{} vehicles and {} meters with {} h of per-minute history ({} vehicle and {} meter \
             rows, reassigned every 6 h), plus one vehicle and its meter reporting every second. \
             Each measurement is closed-loop for {:.1} s over the window ending now, after 1 s \
             of unmeasured warm-up; the endpoint answers over HTTP with JSON. The service's SQL \
             is the endpoint's query sent straight from sqlx (what PostgreSQL alone costs); the \
             raw SQL is the same computation over raw rows without rollups.",
            count(u64::from(settings.vehicles)),
            count(u64::from(settings.vehicles)),
            settings.hours,
            count(vehicle_rows),
            count(meter_rows),
            settings.measure.as_secs_f64(),
        ),
        &table,
    );
}

fn report_cpu(settings: &Settings, cpu_splits: &[[f64; 5]], report: &mut Report) {
    let mut cpu = Table::new(&["process", "CPU seconds", "share of the machine's capacity"]);
    for (i, name) in [
        "query-api",
        "the load generator (this harness)",
        "everything else (PostgreSQL, mostly)",
        "the machine, busy",
    ]
    .iter()
    .enumerate()
    {
        let seconds: Vec<f64> = cpu_splits.iter().map(|split| split[i]).collect();
        let share: Vec<f64> = cpu_splits
            .iter()
            .map(|split| 100.0 * split[i] / split[4])
            .collect();
        cpu.row(vec![
            (*name).to_owned(),
            runs_cell(&seconds, |x| format!("{x:.1}")),
            runs_cell(&share, |x| format!("{x:.0}%")),
        ]);
    }
    report.add(
        "Query: where the CPU goes",
        &format!(
            "CPU time while the endpoint answered fleet vehicles with {THROUGHPUT_CONCURRENCY} \
                          requests in flight for {:.1} s, read from `/proc`; the capacity is that time × the cores.",
            settings.measure.as_secs_f64(),
        ),
        &cpu,
    );
}

/// CPU seconds the machine can give in `duration`.
fn capacity(duration: Duration) -> f64 {
    duration.as_secs_f64() * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
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
