//! Worker drain: a topic pre-filled with a fleet's readings, drained by one
//! `ingest-worker` with its default settings, timed until every reading is
//! committed in PostgreSQL. In the same run, on fresh databases: (a) the
//! limit, binary COPY of the same rows into the same empty tables from one
//! client connection; (b) the original API's approach, one INSERT into
//! history plus one UPSERT of current state per reading, from a pool of 10
//! connections (its ORM's default), on a sample of the readings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use fleet_sim::fleet::{Fleet, FleetSpec};
use fleet_sim::send::{Destination, Sender};
use indicatif::ProgressBar;
use shared::domain::Reading;
use test_support::postgres::fresh_database;
use test_support::process::{free_port, Service};

use crate::broker::Broker;
use crate::load::{copy_history, Encoded, Rows};
use crate::report::{count, per_second, ratio, runs_cell, seconds, Report, Table};

const TOPIC: &str = "bench.drain";

/// Enough partitions that the mock broker (5 MiB kept per partition) holds
/// the whole backlog.
const PARTITIONS: i32 = 100;

/// The generated readings, shared by the drain and gateway scenarios.
pub struct Data {
    pub readings: Vec<Reading>,
    pub vehicles: u32,
}

impl Data {
    /// `vehicles` vehicles and as many meters, one reading each per minute
    /// for `steps` minutes ending now, with realistic clock jitter.
    pub fn generate(vehicles: u32, steps: u64) -> anyhow::Result<Self> {
        let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
        let spec = FleetSpec {
            jitter: TimeDelta::milliseconds(1500),
            faulty_fraction: 0.05,
            seed: 2026,
            ..FleetSpec::new(vehicles, now - TimeDelta::minutes(steps as i64))
        };
        let readings: Vec<Reading> = Fleet::new(spec)?.history(steps).flatten().collect();
        Ok(Self { readings, vehicles })
    }

    pub fn history_rows(&self) -> u64 {
        self.readings
            .iter()
            .filter(|r| !matches!(r, Reading::Assignment(_)))
            .count() as u64
    }
}

struct DrainRun {
    /// From the worker's start until the last reading is committed.
    total: Duration,
    /// From the consumer group's assignment until the last commit.
    after_join: Duration,
    copy: Duration,
    /// librdkafka reading the same topic back, nothing else.
    consume_only: Duration,
    /// CPU seconds during the worker's drain: worker, broker, the rest
    /// of the machine (PostgreSQL, mostly).
    cpu: CpuUse,
    naive_rate: f64,
    worker_peak_rss_kib: f64,
}

pub async fn run(
    data: &Data,
    runs: usize,
    naive_sample: usize,
    worker_settings: &[(String, String)],
    report: &mut Report,
) -> anyhow::Result<()> {
    let rows = Rows::split(&data.readings);
    let encoded = Encoded::new(&rows);
    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("drain run {run}/{runs}");
        let drained = drain_with_worker(data, worker_settings).await?;
        let copy = copy_limit(&encoded).await?;
        let naive_rate = naive(&data.readings, naive_sample).await?;
        results.push(DrainRun {
            total: drained.total,
            after_join: drained.after_join,
            copy,
            consume_only: drained.consume_only,
            cpu: drained.cpu,
            naive_rate,
            worker_peak_rss_kib: drained.peak_rss_kib,
        });
    }

    let messages = data.readings.len() as f64;
    let history = encoded.rows as f64;
    let worker_rates: Vec<f64> = results
        .iter()
        .map(|r| messages / r.after_join.as_secs_f64())
        .collect();
    let copy_rates: Vec<f64> = results
        .iter()
        .map(|r| history / r.copy.as_secs_f64())
        .collect();
    let naive_rates: Vec<f64> = results.iter().map(|r| r.naive_rate).collect();
    let mut table = Table::new(&["approach", "time", "readings/s", "vs binary COPY"]);
    table.row(vec![
        "binary COPY of the history rows (the limit)".into(),
        runs_cell(
            &results
                .iter()
                .map(|r| r.copy.as_secs_f64())
                .collect::<Vec<_>>(),
            seconds,
        ),
        runs_cell(&copy_rates, per_second),
        "1.00×".into(),
    ]);
    table.row(vec![
        "librdkafka consumer alone reading the topic back (the broker side's limit)".into(),
        runs_cell(
            &results
                .iter()
                .map(|r| r.consume_only.as_secs_f64())
                .collect::<Vec<_>>(),
            seconds,
        ),
        runs_cell(
            &results
                .iter()
                .map(|r| messages / r.consume_only.as_secs_f64())
                .collect::<Vec<_>>(),
            per_second,
        ),
        runs_cell(
            &results
                .iter()
                .map(|r| r.copy.as_secs_f64() / r.consume_only.as_secs_f64())
                .collect::<Vec<_>>(),
            ratio,
        ),
    ]);
    table.row(vec![
        "ingest-worker, defaults, after joining the group".into(),
        runs_cell(
            &results
                .iter()
                .map(|r| r.after_join.as_secs_f64())
                .collect::<Vec<_>>(),
            seconds,
        ),
        runs_cell(&worker_rates, per_second),
        runs_cell(
            &results
                .iter()
                .map(|r| r.copy.as_secs_f64() / r.after_join.as_secs_f64())
                .collect::<Vec<_>>(),
            ratio,
        ),
    ]);
    table.row(vec![
        "ingest-worker, from process start".into(),
        runs_cell(
            &results
                .iter()
                .map(|r| r.total.as_secs_f64())
                .collect::<Vec<_>>(),
            seconds,
        ),
        runs_cell(
            &results
                .iter()
                .map(|r| messages / r.total.as_secs_f64())
                .collect::<Vec<_>>(),
            per_second,
        ),
        runs_cell(
            &results
                .iter()
                .map(|r| r.copy.as_secs_f64() / r.total.as_secs_f64())
                .collect::<Vec<_>>(),
            ratio,
        ),
    ]);
    table.row(vec![
        format!(
            "one INSERT + one UPSERT per reading (sample of {})",
            count(naive_sample as u64)
        ),
        "".into(),
        runs_cell(&naive_rates, per_second),
        runs_cell(
            &results
                .iter()
                .zip(&copy_rates)
                .map(|(r, copy)| r.naive_rate / copy)
                .collect::<Vec<_>>(),
            ratio,
        ),
    ]);
    report.add(
        "Worker drain",
        &format!(
            "{} messages ({} readings from {} vehicles and {} meters, one per minute, plus {} \
             assignments) pre-filled in a {PARTITIONS}-partition topic; one `ingest-worker` with \
             default settings, timed until the worker has logged every message committed, then \
             checked row by row count. Bold: median of the runs (each run in brackets).",
            count(messages as u64),
            count(history as u64),
            count(u64::from(data.vehicles)),
            count(u64::from(data.vehicles)),
            count(rows.assignments.len() as u64),
        ),
        &table,
    );
    let mut cpu = Table::new(&["process", "CPU seconds", "share of the machine's busy time"]);
    let column = |f: fn(&CpuUse) -> f64| results.iter().map(|r| f(&r.cpu)).collect::<Vec<f64>>();
    let share = |f: fn(&CpuUse) -> f64| {
        results
            .iter()
            .map(|r| 100.0 * f(&r.cpu) / r.cpu.machine)
            .collect::<Vec<f64>>()
    };
    let percent = |x: f64| format!("{x:.0}%");
    for (name, f) in [
        (
            "ingest-worker",
            (|c: &CpuUse| c.worker) as fn(&CpuUse) -> f64,
        ),
        ("dev-broker (mock Kafka)", |c| c.broker),
        ("everything else (PostgreSQL, mostly)", |c| {
            c.machine - c.worker - c.broker
        }),
        ("the machine, busy", |c| c.machine),
        ("the machine, available (wall time × cores)", |c| {
            c.available
        }),
    ] {
        cpu.row(vec![
            name.to_owned(),
            runs_cell(&column(f), |x| format!("{x:.1}")),
            runs_cell(&share(f), percent),
        ]);
    }
    report.add(
        "Worker drain: where the CPU goes",
        "CPU time used from the worker's start to the last commit, read from `/proc`. \
         When busy time is close to what is available, the drain is CPU-bound on this machine.",
        &cpu,
    );
    report.add_peak_rss(
        "ingest-worker",
        &format!("draining {} messages", count(messages as u64)),
        &results
            .iter()
            .map(|r| r.worker_peak_rss_kib)
            .collect::<Vec<_>>(),
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    worker: f64,
    broker: f64,
    machine: f64,
    available: f64,
}

/// What one drain measured.
struct Drained {
    total: Duration,
    after_join: Duration,
    consume_only: Duration,
    cpu: CpuUse,
    peak_rss_kib: f64,
}

/// Pre-fills a topic, times a bare consumer reading it back, then starts a
/// worker and times it until every message is committed.
async fn drain_with_worker(data: &Data, settings: &[(String, String)]) -> anyhow::Result<Drained> {
    let broker = Broker::start(&[(TOPIC, PARTITIONS), ("bench.drain.dlq", 1)])?;
    let mut sender = Sender::new(
        &Destination::Kafka {
            brokers: broker.bootstrap.clone(),
            topic: TOPIC.to_owned(),
        },
        ProgressBar::hidden(),
    )?;
    sender.send(&data.readings).await?;
    let produced = sender.finish().await?;
    anyhow::ensure!(
        produced.messages == data.readings.len() as u64,
        "not every message was produced"
    );

    let consume_only = {
        let (bootstrap, expected) = (broker.bootstrap.clone(), data.readings.len());
        tokio::task::spawn_blocking(move || consume_only(&bootstrap, expected)).await??
    };

    let db = fresh_database().await;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", broker.bootstrap.clone()),
        ("KAFKA_TOPIC", TOPIC.to_owned()),
        ("KAFKA_GROUP_ID", "bench-drain".to_owned()),
        ("WORKER_HEALTH_ADDR", format!("127.0.0.1:{}", free_port())),
        (
            "RUST_LOG",
            "warn,ingest_worker::worker::pipeline=info,ingest_worker::worker::rebalance=info"
                .to_owned(),
        ),
    ];
    env.extend(
        settings
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone())),
    );
    let (machine_before, broker_before) =
        (machine_busy_seconds(), process_cpu_seconds(broker.pid()));
    let started = Instant::now();
    let mut worker = Service::start("ingest-worker", &[], &env);
    let expected = data.readings.len() as u64;
    let (mut done, mut next_line, mut joined) = (0u64, 0usize, None);
    let finished = loop {
        let (lines, next) = worker.log_lines_from(next_line);
        next_line = next;
        for line in &lines {
            if joined.is_none() && line.contains("partitions assigned") {
                joined = Some(Instant::now());
            }
            if line.contains("batch committed") {
                done += [
                    "vehicle_rows",
                    "meter_rows",
                    "assignment_rows",
                    "duplicates",
                    "dead_lettered",
                ]
                .iter()
                .map(|field| log_field(line, field))
                .sum::<u64>();
            }
        }
        if done >= expected {
            break Instant::now();
        }
        anyhow::ensure!(worker.is_running(), "the worker exited during the drain");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the drain took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let cpu = CpuUse {
        worker: process_cpu_seconds(worker.pid()),
        broker: process_cpu_seconds(broker.pid()) - broker_before,
        machine: machine_busy_seconds() - machine_before,
        available: (finished - started).as_secs_f64()
            * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
    };
    let peak = worker.peak_rss_kib().unwrap_or(0) as f64;
    worker.terminate(Duration::from_secs(30));
    let stored = test_support::fleet::history_rows(&db.pool).await? as u64;
    anyhow::ensure!(
        stored == data.history_rows(),
        "the worker stored {stored} history rows, not {}",
        data.history_rows()
    );
    let joined = joined.unwrap_or(started);
    Ok(Drained {
        total: finished - started,
        after_join: finished - joined,
        consume_only,
        cpu,
        peak_rss_kib: peak,
    })
}

/// Reads every partition of the topic from the beginning with the worker's
/// fetch settings, touching each payload, until `expected` messages came.
fn consume_only(bootstrap: &str, expected: usize) -> anyhow::Result<Duration> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-consume-only")
        .set("enable.auto.commit", "false")
        .set("queued.max.messages.kbytes", "32768")
        .set("fetch.max.bytes", "16777216")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment.add_partition_offset(TOPIC, partition, Offset::Beginning)?;
    }
    let started = Instant::now();
    consumer.assign(&assignment)?;
    let (mut received, mut bytes) = (0, 0);
    while received < expected {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "read {received} of {expected} messages"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            bytes += message?.payload().map_or(0, <[u8]>::len);
            received += 1;
        }
    }
    anyhow::ensure!(bytes > 0, "the messages had no payload");
    Ok(started.elapsed())
}

/// User and system CPU time of a process so far, in seconds (Linux).
fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// CPU time the whole machine spent busy (not idle, not waiting for I/O), in seconds.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    busy / CLOCK_TICKS_PER_SECOND
}

/// USER_HZ, 100 on the Linux architectures this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// `name=<digits>` from a log line, 0 when absent.
fn log_field(line: &str, name: &str) -> u64 {
    let pattern = format!("{name}=");
    line.find(&pattern)
        .map(|at| &line[at + pattern.len()..])
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0)
}

async fn copy_limit(encoded: &Encoded) -> anyhow::Result<Duration> {
    let db = fresh_database().await;
    let started = Instant::now();
    let stored = copy_history(&db.pool, encoded).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        stored == encoded.rows,
        "COPY stored {stored} of {} rows",
        encoded.rows
    );
    Ok(elapsed)
}

/// The original API's way: every reading its own INSERT and UPSERT, each
/// committed on its own, from 10 connections. Returns readings per second.
async fn naive(readings: &[Reading], sample: usize) -> anyhow::Result<f64> {
    let db = fresh_database().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&db.url)
        .await?;
    let sample: Arc<Vec<Reading>> = Arc::new(
        readings
            .iter()
            .filter(|r| !matches!(r, Reading::Assignment(_)))
            .take(sample)
            .cloned()
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (pool, sample, next) = (pool.clone(), sample.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(reading) = sample.get(i) else {
                    return Ok::<_, sqlx::Error>(());
                };
                write_one(&pool, reading).await?;
            }
        });
    }
    while let Some(task) = tasks.join_next().await {
        task??;
    }
    let elapsed = started.elapsed();
    let stored = test_support::fleet::history_rows(&db.pool).await? as usize;
    anyhow::ensure!(
        stored == sample.len(),
        "naive path stored {stored} of {}",
        sample.len()
    );
    Ok(sample.len() as f64 / elapsed.as_secs_f64())
}

async fn write_one(pool: &sqlx::PgPool, reading: &Reading) -> Result<(), sqlx::Error> {
    match reading {
        Reading::Vehicle(v) => {
            sqlx::query(
                "INSERT INTO vehicle_readings (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(v.vehicle_id.as_str())
            .bind(v.recorded_at.instant())
            .bind(v.soc)
            .bind(v.kwh_delivered_dc)
            .bind(v.battery_temp)
            .execute(pool)
            .await?;
            sqlx::query(
                "INSERT INTO vehicles_current (vehicle_id, recorded_at, soc, kwh_delivered_dc, battery_temp)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (vehicle_id) DO UPDATE SET recorded_at = EXCLUDED.recorded_at,
                     soc = EXCLUDED.soc, kwh_delivered_dc = EXCLUDED.kwh_delivered_dc,
                     battery_temp = EXCLUDED.battery_temp, updated_at = now()",
            )
            .bind(v.vehicle_id.as_str())
            .bind(v.recorded_at.instant())
            .bind(v.soc)
            .bind(v.kwh_delivered_dc)
            .bind(v.battery_temp)
            .execute(pool)
            .await?;
        }
        Reading::Meter(m) => {
            sqlx::query(
                "INSERT INTO meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(m.meter_id.as_str())
            .bind(m.recorded_at.instant())
            .bind(m.kwh_consumed_ac)
            .bind(m.voltage)
            .execute(pool)
            .await?;
            sqlx::query(
                "INSERT INTO meters_current (meter_id, recorded_at, kwh_consumed_ac, voltage)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (meter_id) DO UPDATE SET recorded_at = EXCLUDED.recorded_at,
                     kwh_consumed_ac = EXCLUDED.kwh_consumed_ac, voltage = EXCLUDED.voltage,
                     updated_at = now()",
            )
            .bind(m.meter_id.as_str())
            .bind(m.recorded_at.instant())
            .bind(m.kwh_consumed_ac)
            .bind(m.voltage)
            .execute(pool)
            .await?;
        }
        Reading::Assignment(_) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::log_field;

    #[test]
    fn fields_are_read_from_a_log_line() {
        let line = "INFO flush{messages=10 rejected=0}: batch committed vehicle_rows=5 meter_rows=4 duplicates=1 elapsed_ms=3";
        assert_eq!(log_field(line, "vehicle_rows"), 5);
        assert_eq!(log_field(line, "duplicates"), 1);
        assert_eq!(log_field(line, "assignment_rows"), 0);
    }
}
