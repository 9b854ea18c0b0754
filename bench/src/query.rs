//! Query latency and throughput: the 24-hour performance endpoint over a
//! fleet with a day of per-minute history and for one vehicle reporting
//! every second, beside a primary-key lookup through the same HTTP stack
//! (`/v1/vehicles/{id}`), the endpoint's SQL alone (with its window's
//! partitions named, and on the partitioned tables), and the plain SQL
//! aggregate over raw history, in the same run; the fleet view's first and
//! a deep page. Also the tables' sizes per million readings, and the same
//! requests answered from a streaming replica of the database beside the
//! primary's answers.
//!
//! The data is stored through the worker's own write path
//! (`ingest_worker::store::write_batch`, which keeps rollups and current
//! state) into the partitions a worker keeps, and the statistics are what
//! the worker's upkeep refreshes: nothing an operator would not run. Before
//! timing, the endpoint's answers are checked against the raw computation.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use fleet_sim::fleet::FleetSpec;
use ingest_worker::partitions::Partitions;
use query_api::performance;
use query_api::sql::Sources;
use test_support::oracle::{figures, RAW_PERFORMANCE_SQL};
use test_support::postgres::{fresh_database, wait_for_replay};
use test_support::private_postgres::PrivatePostgres;
use test_support::process::{wait_until_ok, Service};

use crate::cpu::{own_cpu_seconds, process_cpu_seconds, MachineCpu, STOLEN_ROW};
use crate::load::store_fleet;
use crate::report::{
    count, millis, per_second, percent, quantile, ratio, runs_cell, Report, Table,
};

pub struct Settings {
    pub vehicles: u32,
    pub hours: u32,
    pub measure: Duration,
    /// How long autovacuum must have run no worker before measuring.
    pub autovacuum_quiet: Duration,
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

/// What one measurement asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// `GET /v1/analytics/performance/{id}`, the window ending now.
    Performance,
    /// `GET /v1/vehicles/{id}`: one primary-key lookup through the same
    /// HTTP stack, pool and database.
    Lookup,
    /// The endpoint's SQL alone, its window's partitions named (sqlx, no HTTP).
    NamedSql,
    /// The same on the partitioned tables (query-api's fallback).
    ParentsSql,
    /// Plain SQL over raw history, without rollups.
    RawSql,
    /// `GET /v1/analytics/fleet?limit=100`.
    FleetFirstPage,
    /// The same, 50 pages (5,000 vehicles) deep.
    FleetDeepPage,
}

impl Ask {
    fn is_fleet(self) -> bool {
        matches!(self, Ask::FleetFirstPage | Ask::FleetDeepPage)
    }

    fn label(self) -> &'static str {
        match self {
            Ask::Performance => "`/v1/analytics/performance/{id}` (query-api, HTTP)",
            Ask::Lookup => "`/v1/vehicles/{id}`: a primary-key lookup (query-api, HTTP)",
            Ask::NamedSql => "the endpoint's SQL alone, its partitions named (sqlx)",
            Ask::ParentsSql => "the same SQL on the partitioned tables (sqlx)",
            Ask::RawSql => "plain SQL over raw history (sqlx)",
            Ask::FleetFirstPage => "`/v1/analytics/fleet?limit=100`, first page",
            Ask::FleetDeepPage => "the same, half way down the ranking (page 51 of 100)",
        }
    }
}

/// One kind of request, one measurement per run.
struct Case {
    vehicle: &'static str,
    ask: Ask,
    single: Vec<Measured>,
    parallel: Vec<Measured>,
    /// Per run, the share of performance answers served kept (after the
    /// revision check) during the measurement at THROUGHPUT_CONCURRENCY.
    kept: Vec<f64>,
    /// The same, read from the worker's per-vehicle figures.
    from_figures: Vec<f64>,
    /// The same, read from the figures with the edges' meter from them too
    /// (no assignments resolved).
    edges_from_figures: Vec<f64>,
    /// Per run, the share of the machine's capacity stolen by other guests
    /// of the host during the measurement at THROUGHPUT_CONCURRENCY.
    stolen: Vec<f64>,
}

/// Everything one request of a measurement needs.
#[derive(Clone)]
struct Request {
    ask: Ask,
    client: reqwest::Client,
    base: String,
    pool: sqlx::PgPool,
    ids: Arc<Vec<String>>,
    deep_cursor: Arc<String>,
    page_size: usize,
}

impl Request {
    /// The `i`th request: a vehicle picked from the ids, the window ending now.
    async fn send(self, i: u64) -> anyhow::Result<()> {
        let id = &self.ids[pick(i, self.ids.len())];
        let to = Utc::now();
        let from = to - TimeDelta::hours(24);
        let url = match self.ask {
            Ask::Performance => format!("{}/v1/analytics/performance/{id}", self.base),
            Ask::Lookup => format!("{}/v1/vehicles/{id}", self.base),
            Ask::FleetFirstPage => {
                format!("{}/v1/analytics/fleet?limit={}", self.base, self.page_size)
            }
            Ask::FleetDeepPage => format!(
                "{}/v1/analytics/fleet?limit={}&cursor={}",
                self.base, self.page_size, self.deep_cursor
            ),
            Ask::NamedSql | Ask::ParentsSql | Ask::RawSql => {
                let sql = match self.ask {
                    Ask::NamedSql => performance::sql(&Sources::for_window(from, to)),
                    Ask::ParentsSql => performance::sql(&Sources::parents()),
                    _ => RAW_PERFORMANCE_SQL.to_owned(),
                };
                figures(&self.pool, &sql, id, from, to).await;
                return Ok(());
            }
        };
        let response = self.client.get(url).send().await?;
        anyhow::ensure!(
            response.status().is_success(),
            "{:?} answered {}",
            self.ask,
            response.status()
        );
        response.bytes().await?;
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
    // Sessions as query-api opens them (no JIT compilation, `service_kit::db`).
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(THROUGHPUT_CONCURRENCY as u32)
        .connect_with(
            db.url
                .parse::<sqlx::postgres::PgConnectOptions>()?
                .options([("jit", "off")]),
        )
        .await?;
    check_answers(&client, &base, &pool, settings.vehicles, loaded.end).await?;
    // Half way down the ranking: 50 pages of 100 for 10,000 vehicles.
    let page_size = fleet_page_size(settings.vehicles);
    let pages = (settings.vehicles as usize / (2 * page_size)).max(1);
    let deep_cursor = cursor_after_pages(&client, &base, page_size, pages).await?;
    let settled = autovacuum_settled(&db.pool, settings.autovacuum_quiet).await?;
    let target = Target {
        client,
        base,
        pool: pool.clone(),
        api_pid: api.pid(),
        deep_cursor: Arc::new(deep_cursor),
    };
    let (cases, cpu_splits) = measure_runs(settings, runs, &target).await?;
    let on_replica = measure_on_replica(settings, runs, &db, &target).await?;
    let api_peak_rss_kib = api.peak_rss_kib().unwrap_or(0) as f64;
    api.terminate(Duration::from_secs(10));
    report_latencies(settings, &loaded, &settled, &cases, report);
    report_targets(settings, &cases, report);
    report_cpu(settings, &cpu_splits, report);
    report_replica(&on_replica, report);
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
#[derive(Clone)]
struct Target {
    client: reqwest::Client,
    base: String,
    pool: sqlx::PgPool,
    api_pid: u32,
    deep_cursor: Arc<String>,
}

/// The fleet and the every-second vehicle, stored as the worker stores
/// them, in the partitions a worker keeps, with the statistics its upkeep
/// refreshes.
async fn load(
    db: &test_support::postgres::TestDatabase,
    settings: &Settings,
) -> anyhow::Result<Loaded> {
    // The partitions a worker keeps (90 days back, a week ahead): their
    // number is part of what a query on the partitioned tables costs.
    let today = Utc::now().date_naive();
    let partitions = Partitions::new(90, 730, Duration::from_secs(1));
    partitions.prepare(&db.pool, today).await?;
    let end = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
    let start = end - TimeDelta::hours(i64::from(settings.hours));
    eprintln!(
        "storing {} vehicles × {} h of per-minute history through the worker's write path",
        settings.vehicles, settings.hours
    );
    let loading = Instant::now();
    // Half the devices report cumulative registers: the targets hold for
    // both forms (their energy is stored in the same column either way).
    let fleet = FleetSpec {
        jitter: TimeDelta::milliseconds(1500),
        reassign_every: Some(TimeDelta::hours(6)),
        faulty_fraction: 0.05,
        register_fraction: 0.5,
        reboot_probability: 0.001,
        replacement_probability: 0.0001,
        seed: 7,
        ..FleetSpec::new(settings.vehicles, start)
    };
    let (fleet_vehicle_rows, fleet_meter_rows) =
        store_fleet(&db.pool, fleet, u64::from(settings.hours) * 60).await?;
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
        store_fleet(&db.pool, every_second, u64::from(settings.hours) * 3600).await?;
    // What the worker's upkeep does after each round, for the days it fills;
    // like the upkeep, tried again when a lock (autovacuum's, the batches'
    // own statistics step) outlasts its lock timeout.
    let mut attempt = 0;
    while let Err(error) = partitions
        .analyze_days(&db.pool, start.date_naive(), today)
        .await
    {
        attempt += 1;
        anyhow::ensure!(attempt < 10, "partition statistics: {error}");
        eprintln!("partition statistics deferred ({error}); trying again");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!("stored in {:.0} s", loading.elapsed().as_secs_f64());
    // What the worker's figure upkeep does (every few seconds, at most an
    // hour of buckets a pass): the per-vehicle figures of the kept range.
    let summarising = Instant::now();
    let buckets =
        ingest_worker::figures::catch_up(&db.pool, Utc::now(), TimeDelta::hours(26)).await?;
    eprintln!(
        "per-vehicle figures: {buckets} buckets in {:.0} s",
        summarising.elapsed().as_secs_f64()
    );
    Ok(Loaded {
        vehicle_rows: fleet_vehicle_rows + second_vehicle_rows,
        meter_rows: fleet_meter_rows + second_meter_rows,
        end,
    })
}

/// How long the measurements waited for autovacuum after the load.
struct Settled {
    waited: Duration,
    /// Whether autovacuum went quiet (false: the wait gave up).
    quiet: bool,
}

/// The longest the measurements wait for autovacuum to go quiet.
const AUTOVACUUM_WAIT_MAX: Duration = Duration::from_secs(900);

/// Waits until autovacuum has run no worker for `quiet_for`, at most
/// [`AUTOVACUUM_WAIT_MAX`]. After a load of millions of readings it
/// vacuums and analyzes every partition and the figures the load filled, for
/// minutes, as it does on a production server after a backlog; the targets
/// are about the state the system then settles in, and a measurement taken
/// while autovacuum holds a core would measure the two competing for the
/// cores. (In the runs of 2026-12-03 it had finished during the figures'
/// catch-up already: the wait rules it out, it did not explain the slower
/// runs of the day before; BENCHMARKS.md.) Nothing is run that an operator
/// would not: the harness only waits.
async fn autovacuum_settled(pool: &sqlx::PgPool, quiet_for: Duration) -> anyhow::Result<Settled> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let workers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'",
        )
        .fetch_one(pool)
        .await?;
        if workers > 0 {
            quiet_since = Instant::now();
        }
        let quiet = quiet_since.elapsed() >= quiet_for;
        if quiet || started.elapsed() >= AUTOVACUUM_WAIT_MAX {
            let waited = started.elapsed();
            eprintln!(
                "autovacuum {} after {:.0} s",
                if quiet { "quiet" } else { "still busy" },
                waited.as_secs_f64()
            );
            return Ok(Settled { waited, quiet });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Vehicles per fleet page: 100, fewer for a small fleet (the harness' own test).
fn fleet_page_size(vehicles: u32) -> usize {
    (vehicles as usize / 4).clamp(1, 100)
}

/// The `nextCursor` after `pages` pages of `page_size` of the fleet ranking.
async fn cursor_after_pages(
    client: &reqwest::Client,
    base: &str,
    page_size: usize,
    pages: usize,
) -> anyhow::Result<String> {
    let mut cursor: Option<String> = None;
    for _ in 0..pages {
        let mut request = client
            .get(format!("{base}/v1/analytics/fleet"))
            .query(&[("limit", page_size)]);
        if let Some(cursor) = &cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        let page: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
        cursor = Some(
            page["nextCursor"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("the fleet has fewer than {pages} pages"))?
                .to_owned(),
        );
    }
    cursor.ok_or_else(|| anyhow::anyhow!("no pages"))
}

/// Each run: every case, one in flight and many.
async fn measure_runs(
    settings: &Settings,
    runs: usize,
    service: &Target,
) -> anyhow::Result<(Vec<Case>, Vec<[f64; 6]>)> {
    let width = settings.vehicles.to_string().len().max(2);
    let fleet_ids: Arc<Vec<String>> = Arc::new(
        (1..=settings.vehicles)
            .map(|n| format!("EV-{n:0width$}"))
            .collect(),
    );
    let second_ids = Arc::new(vec![SECOND_VEHICLE.to_owned()]);
    let per_minute = "random of the fleet, per minute";
    let mut cases: Vec<Case> = [
        (per_minute, Ask::Performance),
        (per_minute, Ask::Lookup),
        (per_minute, Ask::NamedSql),
        (per_minute, Ask::ParentsSql),
        (per_minute, Ask::RawSql),
        ("every second", Ask::Performance),
        ("every second", Ask::NamedSql),
        ("every second", Ask::RawSql),
        ("the whole fleet", Ask::FleetFirstPage),
        ("the whole fleet", Ask::FleetDeepPage),
    ]
    .into_iter()
    .map(|(vehicle, ask)| Case {
        vehicle,
        ask,
        single: Vec::new(),
        parallel: Vec::new(),
        kept: Vec::new(),
        from_figures: Vec::new(),
        edges_from_figures: Vec::new(),
        stolen: Vec::new(),
    })
    .collect();
    let mut cpu_splits = Vec::new();
    for run in 1..=runs {
        eprintln!("query run {run}/{runs}");
        for case in &mut cases {
            let ids = if case.vehicle == "every second" {
                second_ids.clone()
            } else {
                fleet_ids.clone()
            };
            let request = Request {
                ask: case.ask,
                client: service.client.clone(),
                base: service.base.clone(),
                pool: service.pool.clone(),
                ids,
                deep_cursor: service.deep_cursor.clone(),
                page_size: fleet_page_size(settings.vehicles),
            };
            // The fleet view takes a second or more over the whole fleet:
            // measured one at a time, as a dashboard asks for it (at
            // THROUGHPUT_CONCURRENCY in flight it only queues for the pool).
            let concurrency = if case.ask.is_fleet() {
                1
            } else {
                THROUGHPUT_CONCURRENCY
            };
            // Warm-up, not measured: every pooled connection opened and
            // its prepared statement planned.
            measure(
                concurrency,
                Duration::from_secs(1),
                request.clone().into_fn(),
            )
            .await?;
            case.single
                .push(measure(1, settings.measure, request.clone().into_fn()).await?);
            let (machine, api_cpu, own_cpu) = (
                MachineCpu::now(),
                process_cpu_seconds(service.api_pid),
                own_cpu_seconds(),
            );
            if !case.ask.is_fleet() {
                let before = answer_outcomes(&service.client, &service.base).await?;
                case.parallel.push(
                    measure(THROUGHPUT_CONCURRENCY, settings.measure, request.into_fn()).await?,
                );
                case.stolen
                    .push(MachineCpu::now().since(machine).stolen / capacity(settings.measure));
                if case.ask == Ask::Performance {
                    let after = answer_outcomes(&service.client, &service.base).await?;
                    let kept = after.kept - before.kept;
                    let edges_from_figures = after.figures - before.figures;
                    let from_figures =
                        edges_from_figures + after.figures_spans - before.figures_spans;
                    let all = kept + from_figures + after.computed - before.computed;
                    let share = |part: f64| if all > 0.0 { part / all } else { 0.0 };
                    case.kept.push(share(kept));
                    case.from_figures.push(share(from_figures));
                    case.edges_from_figures.push(share(edges_from_figures));
                }
            }
            if case.ask == Ask::Performance && case.vehicle == per_minute {
                let machine = MachineCpu::now().since(machine);
                let api_cpu = process_cpu_seconds(service.api_pid) - api_cpu;
                let own_cpu = own_cpu_seconds() - own_cpu;
                cpu_splits.push([
                    api_cpu,
                    own_cpu,
                    machine.busy - api_cpu - own_cpu,
                    machine.busy,
                    machine.stolen,
                    capacity(settings.measure),
                ]);
            }
        }
    }
    Ok((cases, cpu_splits))
}

/// query-api's performance answers so far, by outcome (`/metrics`).
struct Outcomes {
    kept: f64,
    /// Read from the figures, the edges' meter too.
    figures: f64,
    /// Read from the figures, the edges' meter from the assignments.
    figures_spans: f64,
    computed: f64,
}

async fn answer_outcomes(client: &reqwest::Client, base: &str) -> anyhow::Result<Outcomes> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let count = |outcome: &str| {
        let prefix = format!("energy_query_answers_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(Outcomes {
        kept: count("kept"),
        figures: count("figures"),
        figures_spans: count("figures_spans"),
        computed: count("computed"),
    })
}

/// Requests/s at THROUGHPUT_CONCURRENCY in flight, per run, of each
/// request on the primary and on a replica: (ask, primary, replica).
type ReplicaRates = Vec<(Ask, Vec<f64>, Vec<f64>)>;

/// The performance endpoint and the lookup, answered by a query-api that
/// reads a streaming standby of the database (`pg_basebackup -R`, the
/// primary's memory settings) beside the one that reads the primary,
/// alternating within each run.
async fn measure_on_replica(
    settings: &Settings,
    runs: usize,
    db: &test_support::postgres::TestDatabase,
    primary: &Target,
) -> anyhow::Result<ReplicaRates> {
    let admin: sqlx::postgres::PgConnectOptions = std::env::var("TEST_DATABASE_URL")?.parse()?;
    let port = admin.get_port();
    eprintln!("copying the database to a streaming standby");
    // The primary's memory, and its max_connections (a hot standby refuses fewer).
    let mut server_settings = Vec::new();
    for name in ["shared_buffers", "max_connections"] {
        let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
            .fetch_one(&db.pool)
            .await?;
        server_settings.push(format!("{name}={value}"));
    }
    let standby = tokio::task::spawn_blocking(move || {
        let server_settings: Vec<&str> = server_settings.iter().map(String::as_str).collect();
        PrivatePostgres::standby_of(port, &server_settings)
    })
    .await?;
    let standby_url = standby.database_url(&db.name);
    wait_for_replay(&db.pool, &standby_url).await;
    let mut api = Service::start(
        "query-api",
        &[],
        &[
            ("DATABASE_URL", db.url.clone()),
            ("QUERY_DATABASE_URLS", standby_url),
            ("QUERY_API_ADDR", "127.0.0.1:0".to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
        ],
    );
    let base = api.listening_url(Duration::from_secs(30));
    wait_until_ok(&format!("{base}/readyz"), Duration::from_secs(30)).await;
    let replica = Target {
        base,
        api_pid: api.pid(),
        ..primary.clone()
    };
    let source = primary
        .client
        .get(format!("{}/v1/vehicles/EV-01", replica.base))
        .send()
        .await?;
    anyhow::ensure!(
        source
            .headers()
            .get("x-data-source")
            .is_some_and(|s| s == "replica-1"),
        "the replica's query-api did not read the replica: {:?}",
        source.headers()
    );
    let width = settings.vehicles.to_string().len().max(2);
    let ids: Arc<Vec<String>> = Arc::new(
        (1..=settings.vehicles)
            .map(|n| format!("EV-{n:0width$}"))
            .collect(),
    );
    let mut rates: ReplicaRates = [Ask::Performance, Ask::Lookup]
        .into_iter()
        .map(|ask| (ask, Vec::new(), Vec::new()))
        .collect();
    for run in 1..=runs {
        eprintln!("replica run {run}/{runs}");
        for (ask, on_primary, on_replica) in &mut rates {
            for (target, out) in [(primary, on_primary), (&replica, on_replica)] {
                let request = Request {
                    ask: *ask,
                    client: target.client.clone(),
                    base: target.base.clone(),
                    pool: target.pool.clone(),
                    ids: ids.clone(),
                    deep_cursor: target.deep_cursor.clone(),
                    page_size: fleet_page_size(settings.vehicles),
                };
                let warm_up = Duration::from_secs(1);
                measure(THROUGHPUT_CONCURRENCY, warm_up, request.clone().into_fn()).await?;
                let measured =
                    measure(THROUGHPUT_CONCURRENCY, settings.measure, request.into_fn()).await?;
                out.push(measured.rate);
            }
        }
    }
    api.terminate(Duration::from_secs(10));
    drop(standby);
    Ok(rates)
}

fn report_replica(rates: &ReplicaRates, report: &mut Report) {
    let mut table = Table::new(&[
        "request",
        "read on the primary, requests/s",
        "read on a replica, requests/s",
        "replica ÷ primary",
    ]);
    for (ask, on_primary, on_replica) in rates {
        let per_run: Vec<f64> = on_replica
            .iter()
            .zip(on_primary)
            .map(|(r, p)| r / p)
            .collect();
        table.row(vec![
            ask.label().to_owned(),
            runs_cell(on_primary, per_second),
            runs_cell(on_replica, per_second),
            runs_cell(&per_run, ratio),
        ]);
    }
    report.add(
        "Query: reads on a streaming replica",
        &format!(
            "{THROUGHPUT_CONCURRENCY} in flight. The replica is a `pg_basebackup -R` standby of the \
             same database on the same machine, read through a second query-api with \
             `QUERY_DATABASE_URLS`; the two are measured alternately in each run. Both servers \
             share this machine's cores, so the ratio shows what routing to a replica costs, \
             not the capacity a replica on its own machine adds."
        ),
        &table,
    );
}

/// Milliseconds at quantile `q` of each run of `runs`.
fn quantiles(runs: &[Measured], q: f64) -> Vec<f64> {
    runs.iter()
        .map(|m| quantile(&m.latencies, q).as_secs_f64() * 1e3)
        .collect()
}

fn rates(runs: &[Measured]) -> Vec<f64> {
    runs.iter().map(|m| m.rate).collect()
}

fn report_latencies(
    settings: &Settings,
    loaded: &Loaded,
    settled: &Settled,
    cases: &[Case],
    report: &mut Report,
) {
    let mut table = Table::new(&[
        "vehicle",
        "request",
        "p50 (1 in flight)",
        "p99 (1 in flight)",
        "requests/s (1 in flight)",
        &format!("requests/s ({THROUGHPUT_CONCURRENCY} in flight)"),
        &format!("p99 ({THROUGHPUT_CONCURRENCY} in flight)"),
    ]);
    for case in cases {
        table.row(vec![
            case.vehicle.to_owned(),
            case.ask.label().to_owned(),
            runs_cell(&quantiles(&case.single, 0.5), millis),
            runs_cell(&quantiles(&case.single, 0.99), millis),
            runs_cell(&rates(&case.single), per_second),
            if case.parallel.is_empty() {
                "(1 at a time)".to_owned()
            } else {
                runs_cell(&rates(&case.parallel), per_second)
            },
            if case.parallel.is_empty() {
                "".to_owned()
            } else {
                runs_cell(&quantiles(&case.parallel, 0.99), millis)
            },
        ]);
    }
    report.add(
        "Query: 24-hour performance",
        &format!(
            "{} vehicles and {} meters with {} h of per-minute history ({} vehicle and {} meter \
             rows, reassigned every 6 h; half the vehicles and half the meters report cumulative \
             registers), plus one vehicle and its meter reporting every second, \
             stored through the worker's write path into the 98 day partitions a worker keeps. \
             Measured once autovacuum had run no worker for {:.0} s ({}). \
             Each measurement is closed-loop for {:.1} s over the window ending now, after 1 s \
             of unmeasured warm-up; HTTP answers are JSON.",
            count(u64::from(settings.vehicles)),
            count(u64::from(settings.vehicles)),
            settings.hours,
            count(loaded.vehicle_rows),
            count(loaded.meter_rows),
            settings.autovacuum_quiet.as_secs_f64(),
            if settled.quiet {
                format!(
                    "{:.0} s after the answers were checked",
                    settled.waited.as_secs_f64()
                )
            } else {
                format!(
                    "it was still busy after {:.0} s: measured anyway",
                    settled.waited.as_secs_f64()
                )
            },
            settings.measure.as_secs_f64(),
        ),
        &table,
    );
}

/// The targets of issue 13 as ratios within each run.
fn report_targets(settings: &Settings, cases: &[Case], report: &mut Report) {
    let find = |vehicle: &str, ask: Ask| {
        cases
            .iter()
            .find(|c| c.vehicle.starts_with(vehicle) && c.ask == ask)
            .expect("every case is measured")
    };
    let performance = find("random", Ask::Performance);
    let lookup = find("random", Ask::Lookup);
    let second = find("every second", Ask::Performance);
    let named = find("random", Ask::NamedSql);
    let parents = find("random", Ask::ParentsSql);
    let per_run = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a / b).collect::<Vec<_>>();
    let mut table = Table::new(&["comparison", "ratio", "target"]);
    table.row(vec![
        format!(
            "performance ÷ primary-key lookup, requests/s at {THROUGHPUT_CONCURRENCY} in flight"
        ),
        runs_cell(
            &per_run(&rates(&performance.parallel), &rates(&lookup.parallel)),
            ratio,
        ),
        "≥ 0.50×".into(),
    ]);
    for (case, what) in [(performance, "performance"), (lookup, "primary-key lookup")] {
        table.row(vec![
            format!(
                "machine's capacity taken by other guests of the host (steal) while the {what} \
                 was measured at {THROUGHPUT_CONCURRENCY} in flight"
            ),
            runs_cell(&case.stolen, percent),
            "(the ratio holds when both are alike)".into(),
        ]);
    }
    table.row(vec![
        format!(
            "share of those performance answers served kept (revisions checked, not computed): per-minute vehicles, random of {}",
            settings.vehicles
        ),
        runs_cell(&performance.kept, percent),
        "(what the rate rests on)".into(),
    ]);
    table.row(vec![
        format!(
            "share read from the worker's per-vehicle figures (middle from figures, raw edges): per-minute vehicles, random of {}",
            settings.vehicles
        ),
        runs_cell(&performance.from_figures, percent),
        "(the rest: computed from the pieces)".into(),
    ]);
    table.row(vec![
        "… of which the edges' meter was read from the figures too (no assignments resolved)"
            .into(),
        runs_cell(&performance.edges_from_figures, percent),
        "(the rest: resolved from the assignments)".into(),
    ]);
    table.row(vec![
        format!(
            "the pieces statement alone (partitions named, sqlx), as on a request the figures cannot answer, ÷ primary-key lookup over HTTP, requests/s at {THROUGHPUT_CONCURRENCY} in flight"
        ),
        runs_cell(
            &per_run(&rates(&named.parallel), &rates(&lookup.parallel)),
            ratio,
        ),
        "(an answer computed again)".into(),
    ]);
    table.row(vec![
        "every-second vehicle's p99 ÷ per-minute vehicle's p99, 1 in flight".into(),
        runs_cell(
            &per_run(
                &quantiles(&second.single, 0.99),
                &quantiles(&performance.single, 0.99),
            ),
            ratio,
        ),
        "≤ 1.50×".into(),
    ]);
    table.row(vec![
        format!("the SQL with partitions named ÷ on the partitioned tables, requests/s at {THROUGHPUT_CONCURRENCY} in flight"),
        runs_cell(&per_run(&rates(&named.parallel), &rates(&parents.parallel)), ratio),
        "(what naming them buys)".into(),
    ]);
    let vehicles = f64::from(settings.vehicles);
    for ask in [Ask::FleetFirstPage, Ask::FleetDeepPage] {
        let fleet = find("the whole fleet", ask);
        table.row(vec![
            format!(
                "{}: p50 per vehicle ranked ÷ one vehicle's p50, 1 in flight",
                ask.label()
            ),
            runs_cell(
                &per_run(
                    &quantiles(&fleet.single, 0.5)
                        .iter()
                        .map(|p| p / vehicles)
                        .collect::<Vec<_>>(),
                    &quantiles(&performance.single, 0.5),
                ),
                ratio,
            ),
            "well under 1×".into(),
        ]);
    }
    report.add(
        "Query: targets",
        "Each ratio is computed within a run from the table above; bold is the median of the runs.",
        &table,
    );
}

fn report_cpu(settings: &Settings, cpu_splits: &[[f64; 6]], report: &mut Report) {
    let mut cpu = Table::new(&["process", "CPU seconds", "share of the machine's capacity"]);
    for (i, name) in [
        "query-api",
        "the load generator (this harness)",
        "everything else (PostgreSQL, mostly)",
        "the machine, busy",
        STOLEN_ROW,
    ]
    .iter()
    .enumerate()
    {
        let seconds: Vec<f64> = cpu_splits.iter().map(|split| split[i]).collect();
        let share: Vec<f64> = cpu_splits
            .iter()
            .map(|split| 100.0 * split[i] / split[5])
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
        // Answered to the watt-hour.
        let close = |field: &str, expected: f64| {
            answer[field]
                .as_f64()
                .is_some_and(|got| test_support::oracle::answers_kwh(got, expected))
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
        ("vehicle_5min", vehicle_rows),
        ("meter_5min", meter_rows),
        ("vehicle_hourly", vehicle_rows),
        ("meter_hourly", meter_rows),
        ("vehicle_figures", vehicle_rows),
    ] {
        let (rows, table_bytes, index_bytes): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {name}),
                    sum(pg_table_size(relid))::bigint, sum(pg_indexes_size(relid))::bigint
             FROM (SELECT relid FROM pg_partition_tree('{name}') UNION SELECT '{name}'::regclass) r"
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
        "After loading the query data set (all partitions, TOAST included). The rollups' and the \
         per-vehicle figures' size is per million readings of the history table they summarise \
         (the vehicles' for the figures).",
        &table,
    );
    Ok(())
}
