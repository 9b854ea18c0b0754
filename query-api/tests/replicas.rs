//! query-api reading from PostgreSQL streaming replicas: real standbys made
//! with `pg_basebackup -R` from the same binaries as the primary (the
//! shared test server's standby, started by `scripts/test.sh`, and private
//! clusters for the tests that stop or pause one). Checked: answers equal
//! the primary's once caught up, as the `energy_reader` role; a stopped
//! standby moves reads to the other one, then to the primary, without a
//! 5xx; a paused one leaves rotation (and readiness) and comes back after a
//! resume; every answer names its source and lag.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use ingest_worker::store::write_batch;
use serde_json::Value;
use sqlx::PgPool;
use test_support::eventually;
use test_support::postgres::{ensure_partitions, fresh_database, standby_url, wait_for_replay};
use test_support::private_postgres::PrivatePostgres;
use test_support::readings::{assignment, decode, meter, meter_register, vehicle};

use common::{args_at, Api};

/// One answer: status, `X-Data-Source`, `X-Data-Lag-Ms`, JSON body.
struct Answer {
    status: u16,
    source: Option<String>,
    lag_ms: Option<u64>,
    body: Value,
}

async fn get(api: &Api, path: &str) -> Answer {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", api.url))
        .send()
        .await
        .expect("query-api answers");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let source = header("x-data-source");
    let lag_ms = header("x-data-lag-ms").map(|v| v.parse().expect("a lag in ms"));
    Answer {
        status: response.status().as_u16(),
        source,
        lag_ms,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

async fn readyz(api: &Api) -> u16 {
    get(api, "/readyz").await.status
}

/// A small fleet over the three hours before `end`: three vehicles on
/// their meters, one reassigned half-way, and a meter reporting a
/// cumulative register.
fn fleet(end: DateTime<Utc>) -> Vec<shared::domain::Reading> {
    let start = end - TimeDelta::hours(3);
    let mut readings = vec![
        assignment("V-1", Some("M-1"), start - TimeDelta::hours(1)),
        assignment("V-2", Some("M-2"), start - TimeDelta::hours(1)),
        assignment("V-3", Some("M-3"), start - TimeDelta::hours(1)),
        assignment("V-2", Some("M-4"), start + TimeDelta::minutes(90)),
    ];
    for step in 0..36 {
        let at = start + TimeDelta::minutes(5 * step);
        let k = step as f64;
        for (v, dc) in [("V-1", 0.51), ("V-2", 0.47), ("V-3", 0.33)] {
            readings.push(vehicle(v, at, 20.0 + k, dc + 0.001 * k, 25.0 + 0.1 * k));
        }
        for (m, ac) in [("M-1", 0.6), ("M-2", 0.55), ("M-3", 0.5)] {
            readings.push(meter(m, at, ac + 0.002 * k, 229.0 + 0.1 * k));
        }
        readings.push(meter_register("M-4", at, 1_000.0 + 0.58 * k, 231.0));
    }
    readings.iter().map(decode).collect()
}

/// The paths every endpoint is asked, over a fixed window ending at `end`.
fn paths(end: DateTime<Utc>) -> Vec<String> {
    let window = format!(
        "from={}&to={}",
        (end - TimeDelta::hours(24)).format("%Y-%m-%dT%H:%M:%SZ"),
        end.format("%Y-%m-%dT%H:%M:%SZ")
    );
    vec![
        format!("/v1/analytics/performance/V-1?{window}"),
        format!("/v1/analytics/performance/V-2?{window}"),
        format!("/v1/analytics/performance/vehicleid?vehicleId=V-3&{window}"),
        format!("/v1/analytics/performance/V-2/series?bucket=1h&{window}"),
        format!("/v1/analytics/fleet?{window}"),
        format!("/v1/meters/M-4/analytics?{window}"),
        "/v1/vehicles/V-2".to_owned(),
        "/v1/meters/M-4".to_owned(),
    ]
}

/// The end of the data: the last whole minute, so the window is fixed.
fn data_end() -> DateTime<Utc> {
    Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap() - TimeDelta::minutes(1)
}

/// A login role in `energy_reader`, as a deployment gives query-api, made
/// on the primary (roles replicate to the standbys).
async fn create_reader(pool: &PgPool, role: &str) {
    sqlx::query(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret' IN ROLE energy_reader"
    ))
    .execute(pool)
    .await
    .expect("create the reader role");
}

/// `url` with the login of [`create_reader`]'s `role`.
fn as_role(url: &str, role: &str) -> String {
    let mut url = reqwest::Url::parse(url).unwrap();
    url.set_username(role).unwrap();
    url.set_password(Some("secret")).unwrap();
    url.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_from_the_standby_equal_the_primarys_once_it_has_caught_up() {
    let db = fresh_database().await;
    let end = data_end();
    write_batch(&db.pool, &fleet(end)).await.expect("stored");
    let role = format!("{}_reader", db.name);
    create_reader(&db.pool, &role).await;
    let on_primary = as_role(&db.url, &role);
    let on_standby = as_role(&standby_url(&db), &role);
    wait_for_replay(&db.pool, &standby_url(&db)).await;

    let from_primary = Api::start_with(args_at(&on_primary, &["--auth-disabled"])).await;
    let replicas = format!("--query-database-urls={on_standby}");
    // The shared standby replays every test's writes: a generous limit.
    let from_standby = Api::start_with(args_at(
        &on_primary,
        &["--auth-disabled", &replicas, "--query-max-lag-ms=60000"],
    ))
    .await;
    for path in paths(end) {
        let primary = get(&from_primary, &path).await;
        let standby = get(&from_standby, &path).await;
        assert_eq!(primary.status, 200, "{path}: {}", primary.body);
        assert_eq!(standby.status, 200, "{path}: {}", standby.body);
        assert_eq!(standby.body, primary.body, "{path}");
        assert_eq!(primary.source.as_deref(), Some("primary"), "{path}");
        assert_eq!(primary.lag_ms, Some(0), "{path}");
        assert_eq!(standby.source.as_deref(), Some("replica-1"), "{path}");
        assert!(standby.lag_ms.is_some(), "{path}: no lag header");
    }
    // The probes and the description are not reads: no freshness headers.
    let description = get(&from_standby, "/openapi.json").await;
    assert_eq!(description.source, None);
    assert_eq!(readyz(&from_standby).await, 200);
    from_standby.stop().await;
    from_primary.stop().await;
}

/// A private primary with the schema and [`fleet`] written, ready to be copied.
async fn private_primary(end: DateTime<Utc>) -> (PrivatePostgres, PgPool) {
    let primary = PrivatePostgres::start();
    let pool = PgPool::connect(&primary.url()).await.expect("connect");
    service_kit::db::migrate(&pool)
        .await
        .expect("migrations apply");
    let today = Utc::now().date_naive();
    ensure_partitions(
        &pool,
        today - chrono::Days::new(2),
        today + chrono::Days::new(1),
    )
    .await;
    write_batch(&pool, &fleet(end)).await.expect("stored");
    (primary, pool)
}

/// An answer's status and `X-Data-Source`.
type Sourced = (u16, Option<String>);

/// Requests `path` over and over until stopped, recording every answer's
/// status and source.
struct Traffic {
    answers: Arc<Mutex<Vec<Sourced>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(url: String, path: String) -> Self {
        let answers: Arc<Mutex<Vec<Sourced>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (answers, stop) = (answers.clone(), stop.clone());
            async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let response = client.get(format!("{url}{path}")).send().await.unwrap();
                    let source = response
                        .headers()
                        .get("x-data-source")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    answers
                        .lock()
                        .unwrap()
                        .push((response.status().as_u16(), source));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            answers,
            stop,
            task,
        }
    }

    /// Waits until the answers come from `source` alone, checking that
    /// every answer meanwhile was a 200.
    async fn settles_on(&self, source: &str) {
        eventually(
            &format!("reads from {source} alone"),
            Duration::from_secs(20),
            || async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let recent = self.take();
                assert!(
                    recent.iter().all(|(status, _)| *status == 200),
                    "{recent:?}"
                );
                (sources(&recent) == [source]).then_some(())
            },
        )
        .await;
    }

    /// The answers since the last call.
    fn take(&self) -> Vec<Sourced> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }

    async fn stop(self) -> Vec<Sourced> {
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.answers.clone();
        self.task.await.unwrap();
        let rest = std::mem::take(&mut *answers.lock().unwrap());
        rest
    }
}

fn sources(answers: &[Sourced]) -> Vec<&str> {
    let mut sources: Vec<&str> = answers.iter().filter_map(|(_, s)| s.as_deref()).collect();
    sources.sort_unstable();
    sources.dedup();
    sources
}

fn statuses(answers: &[Sourced]) -> Vec<u16> {
    let mut statuses: Vec<u16> = answers.iter().map(|(status, _)| *status).collect();
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_standby_moves_reads_to_the_other_then_to_the_primary_without_a_5xx() {
    let end = data_end();
    let (primary, _pool) = private_primary(end).await;
    let (first, second) = (primary.standby(), primary.standby());
    let replicas = format!("--query-database-urls={},{}", first.url(), second.url());
    let settings = [
        "--auth-disabled",
        replicas.as_str(),
        "--query-lag-check-interval-ms=200",
        "--query-max-lag-ms=2000",
    ];
    let with_fallback = [&settings[..], &["--query-primary-fallback"]].concat();
    let api = Api::start_with(args_at(&primary.url(), &with_fallback)).await;
    let strict = Api::start_with(args_at(&primary.url(), &settings)).await;
    let path = paths(end).remove(1);

    let traffic = Traffic::start(api.url.clone(), path.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let both = traffic.take();
    assert_eq!(statuses(&both), [200]);
    assert_eq!(sources(&both), ["replica-1", "replica-2"], "round robin");

    let first = tokio::task::spawn_blocking(move || {
        first.stop();
        first
    })
    .await
    .unwrap();
    traffic.settles_on("replica-2").await;
    assert_eq!(readyz(&strict).await, 200);

    let second = tokio::task::spawn_blocking(move || {
        second.stop();
        second
    })
    .await
    .unwrap();
    traffic.settles_on("primary").await;
    assert_eq!(readyz(&api).await, 200, "the primary stands in");
    // Without the fallback, no server may answer: 503 with a reason, never a 500.
    eventually("strict not ready", Duration::from_secs(20), || async {
        (readyz(&strict).await == 503).then_some(())
    })
    .await;
    let refused = get(&strict, &path).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body["error"]
            .as_str()
            .is_some_and(|e| e.contains("QUERY_MAX_LAG_MS")),
        "{}",
        refused.body
    );

    // A standby that comes back returns to rotation.
    let second = tokio::task::spawn_blocking(move || {
        second.start_again();
        second
    })
    .await
    .unwrap();
    eventually(
        "the second standby back in rotation",
        Duration::from_secs(30),
        || async { (readyz(&strict).await == 200).then_some(()) },
    )
    .await;
    traffic.settles_on("replica-2").await;
    let last = traffic.stop().await;
    assert!(last.iter().all(|(status, _)| *status == 200), "{last:?}");
    api.stop().await;
    strict.stop().await;
    drop((first, second));
}

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

async fn metrics(api: &Api) -> String {
    reqwest::get(format!("{}/metrics", api.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_standby_leaves_rotation_and_comes_back_after_a_resume() {
    let end = data_end();
    let (primary, pool) = private_primary(end).await;
    let standby = primary.standby();
    let replicas = format!("--query-database-urls={}", standby.url());
    let api = Api::start_with(args_at(
        &primary.url(),
        &[
            "--auth-disabled",
            &replicas,
            "--query-lag-check-interval-ms=100",
            "--query-max-lag-ms=1000",
        ],
    ))
    .await;
    let state = "/v1/vehicles/V-1";
    let before = get(&api, state).await;
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.source.as_deref(), Some("replica-1"));
    assert!(
        before.lag_ms.is_some_and(|lag| lag <= 1000),
        "{:?}",
        before.lag_ms
    );

    let paused = tokio::task::spawn_blocking(move || {
        standby.psql("SELECT pg_wal_replay_pause()");
        standby
    })
    .await
    .unwrap();
    // A newer reading on the primary, which the paused standby cannot replay.
    let newest = end + TimeDelta::seconds(30);
    write_batch(&pool, &[decode(&vehicle("V-1", newest, 99.0, 0.5, 25.0))])
        .await
        .expect("stored");
    eventually(
        "the paused standby out of rotation",
        Duration::from_secs(20),
        || async { (readyz(&api).await == 503).then_some(()) },
    )
    .await;
    let exposition = metrics(&api).await;
    let in_rotation = r#"energy_query_replica_in_rotation{replica="replica-1"}"#;
    let lag = r#"energy_query_replica_lag_seconds{replica="replica-1"}"#;
    assert_eq!(sample(&exposition, in_rotation), Some(0.0), "{exposition}");
    assert!(
        sample(&exposition, lag).is_some_and(|lag| lag > 1.0),
        "{exposition}"
    );
    let refused = get(&api, state).await;
    assert_eq!(refused.status, 503, "{}", refused.body);

    let resumed = tokio::task::spawn_blocking(move || {
        paused.psql("SELECT pg_wal_replay_resume()");
        paused
    })
    .await
    .unwrap();
    eventually(
        "the standby back in rotation",
        Duration::from_secs(20),
        || async { (readyz(&api).await == 200).then_some(()) },
    )
    .await;
    let after = get(&api, state).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(after.source.as_deref(), Some("replica-1"));
    assert_eq!(after.body["soc"], 99.0, "the newest reading, replayed");
    let exposition = metrics(&api).await;
    assert_eq!(sample(&exposition, in_rotation), Some(1.0), "{exposition}");
    api.stop().await;
    drop((primary, resumed));
}
