//! Where answers are read: the primary, or PostgreSQL streaming replicas.
//!
//! With `QUERY_DATABASE_URLS` set, requests are spread round-robin over the
//! replicas in rotation. A monitor measures each replica's staleness every
//! `QUERY_LAG_CHECK_INTERVAL_MS`, on a connection of its own: it samples
//! the primary's WAL position, and a replica's lag is how long ago the
//! primary first held WAL the replica has not replayed (zero when it has
//! replayed everything the primary had; exact to one interval). This says
//! how old an answer's data can be, whether the replica is slow, paused or
//! cut off, and unlike the replay timestamp it does not grow while the
//! primary is idle. A replica behind even the oldest sample (just after
//! start-up) counts as stale as its last replayed commit. A replica further
//! behind than `QUERY_MAX_LAG_MS`, or unreachable, leaves rotation until it
//! catches up.
//!
//! A read that fails for a reason another server may not share (connection
//! lost, server shutting down or short of connections, a standby's
//! recovery conflict) is retried on the next replica in rotation, then,
//! with `QUERY_PRIMARY_FALLBACK`, on the primary; a replica that is down
//! (not merely busy) also leaves rotation until the monitor sees it again. Every answer says where it was read and how stale that
//! source was (`X-Data-Source`, `X-Data-Lag-Ms`, set by [`freshness`]).
//! Replicas need no write: query-api only reads, and the rollups and
//! partitions it reads are made by the workers on the primary and arrive
//! by replication.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use clap::Args;
use service_kit::config::DbArgs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// Where query-api reads: streaming replicas, how stale they may be, and
/// whether the primary stands in for them.
#[derive(Args, Clone, Debug)]
pub struct ReadArgs {
    /// Streaming replicas to read from, as comma-separated PostgreSQL URLs;
    /// none: every answer is read from the primary (DATABASE_URL)
    #[arg(
        long,
        env = "QUERY_DATABASE_URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub query_database_urls: Vec<String>,

    /// A replica further behind the primary than this, in milliseconds,
    /// leaves rotation until it catches up; /readyz answers 503 when every
    /// replica does (unless QUERY_PRIMARY_FALLBACK)
    #[arg(long, env = "QUERY_MAX_LAG_MS", default_value_t = 5_000)]
    pub query_max_lag_ms: u64,

    /// Read the primary when no replica is in rotation or a read fails on
    /// all of them (without it: 503, and the primary carries only writes)
    #[arg(long, env = "QUERY_PRIMARY_FALLBACK")]
    pub query_primary_fallback: bool,

    /// How often each replica's lag is measured, in milliseconds
    #[arg(long, env = "QUERY_LAG_CHECK_INTERVAL_MS", default_value_t = 1_000)]
    pub query_lag_check_interval_ms: u64,
}

impl ReadArgs {
    pub fn max_lag(&self) -> Duration {
        Duration::from_millis(self.query_max_lag_ms)
    }

    pub fn lag_check_interval(&self) -> Duration {
        Duration::from_millis(self.query_lag_check_interval_ms.max(10))
    }
}

/// The response header naming where an answer was read: `primary`, `replica-1`, …
pub const SOURCE_HEADER: &str = "x-data-source";
/// The response header holding how many milliseconds the source lagged
/// the primary when last measured (0 for the primary).
pub const LAG_HEADER: &str = "x-data-lag-ms";

/// Where one read ran, and how stale its source was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadSource {
    pub name: String,
    pub lag_ms: u64,
}

tokio::task_local! {
    /// The source of the read(s) of the request being answered.
    static ANSWERED_FROM: Arc<Mutex<Option<ReadSource>>>;
}

/// Middleware: puts the source of a request's reads in its response headers.
pub async fn freshness(request: Request, next: Next) -> Response {
    let slot: Arc<Mutex<Option<ReadSource>>> = Arc::default();
    let mut response = ANSWERED_FROM.scope(slot.clone(), next.run(request)).await;
    let source = slot.lock().map(|s| s.clone()).unwrap_or(None);
    if let Some(source) = source {
        let headers = response.headers_mut();
        if let Ok(name) = HeaderValue::from_str(&source.name) {
            headers.insert(SOURCE_HEADER, name);
        }
        headers.insert(LAG_HEADER, HeaderValue::from(source.lag_ms));
    }
    response
}

/// One streaming replica and what the monitor last saw of it.
struct Replica {
    name: String,
    pool: PgPool,
    /// One connection of its own for the lag monitor.
    monitor: PgPool,
    in_rotation: AtomicBool,
    lag_ms: AtomicU64,
}

/// A replica's pools: one for reads, one connection for the lag monitor.
pub struct ReplicaPools {
    pub reads: PgPool,
    pub monitor: PgPool,
}

/// The read pools: the primary, and the replicas if any.
pub struct ReadPools {
    primary: PgPool,
    replicas: Vec<Replica>,
    fallback_to_primary: bool,
    max_lag: Duration,
    next: AtomicUsize,
}

/// The replicas' lag monitor; stops when dropped.
pub struct Monitor(Option<tokio::task::AbortHandle>);

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Why no server could answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("no replica is within QUERY_MAX_LAG_MS of the primary")]
    NoFreshReplica,
}

impl ReadPools {
    /// The primary and the replicas `args` name, with the primary's pool
    /// settings (`db`). A replica's pool gives up on a connection after a
    /// second, so a request to a replica that just went down moves on
    /// quickly instead of waiting the primary's five seconds.
    pub fn from_args(primary: PgPool, args: &ReadArgs, db: &DbArgs) -> Result<Self, sqlx::Error> {
        let patience = monitor_patience(args.lag_check_interval());
        let replicas = args
            .query_database_urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .map(|url| {
                Ok(ReplicaPools {
                    reads: service_kit::db::pool_at(url, db, "query-api", Duration::from_secs(1))?,
                    // Its own connection: a pool busy with requests must not
                    // read as a replica that is down.
                    monitor: PgPoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(patience)
                        .connect_lazy_with(
                            url.parse::<PgConnectOptions>()?
                                .application_name("query-api lag monitor"),
                        ),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Self::new(
            primary,
            replicas,
            args.query_primary_fallback,
            args.max_lag(),
        ))
    }

    /// `replicas`, named `replica-N` in order, in rotation until the
    /// monitor says otherwise.
    pub fn new(
        primary: PgPool,
        replicas: Vec<ReplicaPools>,
        fallback_to_primary: bool,
        max_lag: Duration,
    ) -> Self {
        Self {
            primary,
            replicas: replicas
                .into_iter()
                .enumerate()
                .map(|(i, pools)| Replica {
                    name: format!("replica-{}", i + 1),
                    pool: pools.reads,
                    monitor: pools.monitor,
                    in_rotation: AtomicBool::new(true),
                    lag_ms: AtomicU64::new(0),
                })
                .collect(),
            fallback_to_primary,
            max_lag,
            next: AtomicUsize::new(0),
        }
    }

    /// The servers to try, in order: the replicas in rotation, from the
    /// next in turn (so each gets an equal share), then the primary when
    /// there are no replicas or falling back to it is allowed.
    fn candidates(&self) -> Vec<(&PgPool, ReadSource)> {
        let mut candidates: Vec<(&PgPool, ReadSource)> = self
            .replicas
            .iter()
            .filter(|r| r.in_rotation.load(Ordering::Relaxed))
            .map(|r| {
                let source = ReadSource {
                    name: r.name.clone(),
                    lag_ms: r.lag_ms.load(Ordering::Relaxed),
                };
                (&r.pool, source)
            })
            .collect();
        if !candidates.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
            candidates.rotate_left(start);
        }
        if self.replicas.is_empty() || self.fallback_to_primary {
            let source = ReadSource {
                name: "primary".to_owned(),
                lag_ms: 0,
            };
            candidates.push((&self.primary, source));
        }
        candidates
    }

    /// Runs `read` on the first server that answers, recording where in
    /// the response's headers and in `/metrics`.
    pub async fn read<T, F, Fut>(&self, read: F) -> Result<T, ReadError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut last_error = None;
        for (pool, source) in self.candidates() {
            match read(pool.clone()).await {
                Err(error) if another_server_may_answer(&error) => {
                    tracing::warn!(source = %source.name, %error, "read failed: trying another server");
                    if let Some(replica) = self.replicas.iter().find(|r| r.name == source.name) {
                        if server_is_down(&error, pool) {
                            // Out until the monitor sees it answer again.
                            replica.in_rotation.store(false, Ordering::Relaxed);
                        }
                    }
                    last_error = Some(error);
                }
                result => {
                    metrics::counter!("energy_query_reads_total", "source" => source.name.clone())
                        .increment(1);
                    let _ = ANSWERED_FROM.try_with(|slot| {
                        if let Ok(mut slot) = slot.lock() {
                            *slot = Some(source);
                        }
                    });
                    return result.map_err(ReadError::from);
                }
            }
        }
        Err(last_error.map_or(ReadError::NoFreshReplica, ReadError::from))
    }

    /// Ready while some server may answer: a replica in rotation, or the
    /// primary when there are no replicas or falling back to it is allowed.
    pub async fn readiness(&self) -> Result<(), String> {
        if self
            .replicas
            .iter()
            .any(|r| r.in_rotation.load(Ordering::Relaxed))
        {
            return Ok(());
        }
        if self.replicas.is_empty() || self.fallback_to_primary {
            return if service_kit::db::is_reachable(&self.primary).await {
                Ok(())
            } else {
                Err("the database is not reachable".to_owned())
            };
        }
        Err(format!(
            "every replica is unreachable or more than {} ms behind the primary",
            self.max_lag.as_millis()
        ))
    }

    /// Every pool, for the pool-use gauges: (name, pool).
    pub fn pools(&self) -> impl Iterator<Item = (&str, &PgPool)> {
        std::iter::once(("primary", &self.primary))
            .chain(self.replicas.iter().map(|r| (r.name.as_str(), &r.pool)))
    }

    /// Measures every replica's lag once, so rotation is known before the
    /// first request, then every `interval` while the returned monitor lives.
    pub async fn start_monitor(self: Arc<Self>, interval: Duration) -> Monitor {
        if self.replicas.is_empty() {
            return Monitor(None);
        }
        let mut primary_positions = PrimaryPositions::default();
        self.measure(&mut primary_positions, interval).await;
        let task = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                self.measure(&mut primary_positions, interval).await;
            }
        });
        Monitor(Some(task.abort_handle()))
    }

    /// One round of the monitor: sample the primary, then every replica at
    /// once (an unreachable one must not delay the others' verdicts).
    async fn measure(&self, primary_positions: &mut PrimaryPositions, interval: Duration) {
        // A server that does not answer within this is as good as down.
        let patience = monitor_patience(interval);
        let now = Instant::now();
        let primary_lsn = tokio::time::timeout(
            patience,
            sqlx::query_scalar::<_, i64>(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint",
            )
            .fetch_one(&self.primary),
        )
        .await;
        // Samples are kept for twice the longest lag that matters, so a
        // replica behind by more is still measured (not just "behind").
        let keep = self.max_lag.max(Duration::from_secs(60)) * 2;
        match primary_lsn {
            Ok(Ok(lsn)) => primary_positions.record(now, lsn, keep),
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the primary's WAL position"),
            Err(_) => tracing::warn!("the primary's WAL position did not come in time"),
        }
        let positions = futures::future::join_all(
            self.replicas
                .iter()
                .map(|replica| tokio::time::timeout(patience, replica_position(&replica.monitor))),
        )
        .await;
        for (replica, measured) in self.replicas.iter().zip(positions) {
            let lag = match measured {
                Err(_) => {
                    tracing::warn!(replica = %replica.name, "replica did not answer in time");
                    None
                }
                Ok(Err(error)) => {
                    tracing::warn!(replica = %replica.name, %error, "replica unreachable");
                    None
                }
                // A promoted standby, or a primary given as a replica: current by definition.
                Ok(Ok(ReplicaPosition {
                    in_recovery: false, ..
                })) => Some(Duration::ZERO),
                Ok(Ok(position)) => {
                    Some(position.lag(primary_positions.behind(now, position.replayed)))
                }
            };
            replica.record(lag, self.max_lag);
        }
    }
}

impl Replica {
    /// Records a measured lag (`None`: unreachable), and takes the replica
    /// out of rotation or back in accordingly.
    fn record(&self, lag: Option<Duration>, max_lag: Duration) {
        let fresh = lag.is_some_and(|lag| lag <= max_lag);
        let lag_ms = lag.map_or(u64::MAX, |lag| {
            u64::try_from(lag.as_millis()).unwrap_or(u64::MAX)
        });
        self.lag_ms.store(lag_ms, Ordering::Relaxed);
        let was = self.in_rotation.swap(fresh, Ordering::Relaxed);
        if was != fresh {
            tracing::warn!(replica = %self.name, lag_ms, in_rotation = fresh, "replica rotation changed");
        }
        let lag_seconds = lag.map_or(f64::INFINITY, |lag| lag.as_secs_f64());
        metrics::gauge!("energy_query_replica_lag_seconds", "replica" => self.name.clone())
            .set(lag_seconds);
        metrics::gauge!("energy_query_replica_in_rotation", "replica" => self.name.clone())
            .set(if fresh { 1.0 } else { 0.0 });
    }
}

/// Whether a read failed because its server is down or going away (not
/// busy): the connection failed, the server is shutting down, or no
/// connection could be opened although the pool had room for one.
fn server_is_down(error: &sqlx::Error, pool: &PgPool) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        sqlx::Error::PoolTimedOut => pool.size() < pool.options().get_max_connections(),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// How long the monitor waits for a server's answer before it counts it as
/// down.
fn monitor_patience(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(1))
}

/// Whether a failed read may succeed on another server: a transient failure
/// (`service_kit::db::is_transient`: the connection, the server shutting
/// down or short of resources, a standby's recovery conflict), except a
/// statement timeout, which the same statement would meet anywhere.
fn another_server_may_answer(error: &sqlx::Error) -> bool {
    const QUERY_CANCELED: &str = "57014";
    let timed_out =
        matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED));
    service_kit::db::is_transient(error) && !timed_out
}

/// What a replica says of its replay.
struct ReplicaPosition {
    in_recovery: bool,
    replayed: i64,
    received: i64,
    /// How long ago (on the replica's clock) the last transaction it
    /// replayed committed on the primary; `None` before any.
    last_replayed_commit_age: Option<Duration>,
}

impl ReplicaPosition {
    /// The replica's lag, given how far behind the primary's samples it is.
    fn lag(&self, behind: Option<Behind>) -> Duration {
        // What the replica lacks was committed after its last replayed
        // transaction: an upper bound where the samples give none.
        let at_most = self.last_replayed_commit_age.unwrap_or(Duration::MAX);
        match behind {
            Some(Behind::Nothing) => Duration::ZERO,
            Some(Behind::Since(lag)) => lag,
            Some(Behind::AtLeast(lag)) => lag.max(at_most),
            // The primary's position is unknown (it is down): current if
            // everything received is replayed.
            None if self.replayed >= self.received => Duration::ZERO,
            None => at_most,
        }
    }
}

async fn replica_position(pool: &PgPool) -> Result<ReplicaPosition, sqlx::Error> {
    let (in_recovery, replayed, received, age): (bool, Option<i64>, Option<i64>, Option<f64>) =
        sqlx::query_as(
            "SELECT pg_is_in_recovery(),
                    pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
                    pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
                    extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8",
        )
        .fetch_one(pool)
        .await?;
    Ok(ReplicaPosition {
        in_recovery,
        replayed: replayed.unwrap_or(0),
        received: received.unwrap_or(0),
        last_replayed_commit_age: age.map(|age| Duration::from_secs_f64(age.max(0.0))),
    })
}

/// How far behind the primary's sampled positions a replica is.
#[derive(Debug, PartialEq)]
enum Behind {
    /// It has replayed the newest sample.
    Nothing,
    /// It lacks WAL the primary first held this long ago (to within one
    /// sampling interval: it has the sample before).
    Since(Duration),
    /// It lacks even the oldest sample's WAL: at least this long.
    AtLeast(Duration),
}

/// The primary's WAL position over the last minutes, oldest first.
#[derive(Default)]
struct PrimaryPositions {
    samples: VecDeque<(Instant, i64)>,
}

impl PrimaryPositions {
    fn record(&mut self, at: Instant, lsn: i64, keep: Duration) {
        // A position going back is another primary (restored, or a
        // replica promoted): the history is of no use any more.
        if self.samples.back().is_some_and(|&(_, last)| lsn < last) {
            self.samples.clear();
        }
        // Only positions that moved matter: the first sample at each.
        if self.samples.back().is_none_or(|&(_, last)| lsn > last) {
            self.samples.push_back((at, lsn));
        }
        while self.samples.len() > 1 && at.duration_since(self.samples[1].0) > keep {
            self.samples.pop_front();
        }
    }

    /// How long ago the primary first held WAL beyond `replayed`; `None`
    /// before any sample.
    fn behind(&self, now: Instant, replayed: i64) -> Option<Behind> {
        let &(_, newest) = self.samples.back()?;
        if replayed >= newest {
            return Some(Behind::Nothing);
        }
        // The first sample beyond what the replica replayed: its data has
        // been missing on the replica since then, at the latest.
        let first_lacking = self.samples.iter().position(|&(_, lsn)| lsn > replayed)?;
        let lag = now.duration_since(self.samples[first_lacking].0);
        Some(if first_lacking == 0 {
            Behind::AtLeast(lag)
        } else {
            Behind::Since(lag)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_first_primary_position_the_replica_lacks() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let ms = Duration::from_millis;
        let mut positions = PrimaryPositions::default();
        assert_eq!(positions.behind(at(0), 0), None);
        positions.record(at(0), 100, Duration::from_secs(60));
        // An idle primary: the same position again is not a new sample.
        positions.record(at(500), 100, Duration::from_secs(60));
        positions.record(at(1_000), 250, Duration::from_secs(60));
        positions.record(at(1_500), 400, Duration::from_secs(60));
        assert_eq!(positions.behind(at(2_000), 400), Some(Behind::Nothing));
        assert_eq!(
            positions.behind(at(2_000), 250),
            Some(Behind::Since(ms(500)))
        );
        assert_eq!(
            positions.behind(at(2_000), 120),
            Some(Behind::Since(ms(1_000)))
        );
        // Behind the first sample: how far before it is unknown.
        assert_eq!(
            positions.behind(at(2_000), 0),
            Some(Behind::AtLeast(ms(2_000)))
        );
        // Old samples are dropped, but one before the window is kept.
        positions.record(at(70_000), 500, Duration::from_secs(60));
        assert!(positions.samples.len() <= 3);
        // A position going back starts the history again.
        positions.record(at(71_000), 50, Duration::from_secs(60));
        assert_eq!(positions.samples, [(at(71_000), 50)]);
    }

    #[test]
    fn a_replica_behind_every_sample_is_as_stale_as_its_last_replayed_commit() {
        let position = |replayed, received, age: Option<u64>| ReplicaPosition {
            in_recovery: true,
            replayed,
            received,
            last_replayed_commit_age: age.map(Duration::from_secs),
        };
        let secs = Duration::from_secs;
        // Just after start-up the only sample is seconds old, but the
        // replica's last replayed commit is an hour old.
        let stale = position(10, 10, Some(3_600));
        assert_eq!(stale.lag(Some(Behind::AtLeast(secs(1)))), secs(3_600));
        assert_eq!(stale.lag(Some(Behind::Since(secs(2)))), secs(2));
        assert_eq!(stale.lag(Some(Behind::Nothing)), Duration::ZERO);
        // The primary unknown: current once everything received is replayed.
        assert_eq!(position(10, 20, Some(3_600)).lag(None), secs(3_600));
        assert_eq!(stale.lag(None), Duration::ZERO);
        assert_eq!(position(10, 20, None).lag(None), Duration::MAX);
    }

    #[test]
    fn only_failures_of_the_server_try_another() {
        assert!(another_server_may_answer(&sqlx::Error::PoolTimedOut));
        assert!(another_server_may_answer(&sqlx::Error::Io(
            std::io::ErrorKind::ConnectionReset.into()
        )));
        assert!(!another_server_may_answer(&sqlx::Error::RowNotFound));
    }
}
