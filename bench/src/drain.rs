//! Worker drain: a topic pre-filled with a fleet's readings, drained by one
//! `ingest-worker` with its default settings, timed until every reading is
//! committed in PostgreSQL. In the same run, on fresh databases: (a) the
//! limit, binary COPY of the same rows into the same empty tables from one
//! client connection; (b) the original API's approach, one INSERT into
//! history plus one UPSERT of current state per reading, from a pool of 10
//! connections (its ORM's default), on a sample of the readings; (c) the
//! same fleet reporting cumulative registers instead, in order and with
//! late readings, drained by the same worker: what registers cost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DurationRound, TimeDelta, Utc};
use fleet_sim::fleet::{Fleet, FleetSpec};
use fleet_sim::send::{Destination, Sender};
use indicatif::ProgressBar;
use shared::domain::Reading;
use test_support::postgres::fresh_database;
use test_support::process::Service;

use crate::broker::Broker;
use crate::cpu::{process_cpu_seconds, MachineCpu, STOLEN_ROW};
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

/// How the fleet of a [`Data`] reports energy.
#[derive(Clone, Copy, PartialEq)]
pub enum Reporting {
    Intervals,
    /// Every device a cumulative register (reboots and replacements as
    /// fleet-sim's defaults), with this fraction of readings arriving late.
    Registers {
        late: f64,
    },
}

impl Data {
    /// `vehicles` vehicles and as many meters, one reading each per minute
    /// for `steps` minutes ending now, with realistic clock jitter.
    pub fn generate(vehicles: u32, steps: u64) -> anyhow::Result<Self> {
        Self::generate_as(vehicles, steps, Reporting::Intervals)
    }

    /// The same fleet reporting as `reporting` says.
    pub fn generate_as(vehicles: u32, steps: u64, reporting: Reporting) -> anyhow::Result<Self> {
        let now = Utc::now().duration_trunc(TimeDelta::minutes(1))?;
        let (register_fraction, late_fraction) = match reporting {
            Reporting::Intervals => (0.0, 0.0),
            Reporting::Registers { late } => (1.0, late),
        };
        let spec = FleetSpec {
            jitter: TimeDelta::milliseconds(1500),
            faulty_fraction: 0.05,
            register_fraction,
            reboot_probability: 0.001,
            replacement_probability: 0.0001,
            late_fraction,
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
    /// Readings/s after joining, per entry of `variants`, same run.
    variant_rates: Vec<f64>,
    /// Readings/s after joining, per register data set, same run.
    register_rates: Vec<f64>,
}

/// Each default the drain depends on, set back to what it replaced: the
/// table shows what the default buys, measured in the same run.
pub const VARIANTS: [(&str, &str, &str); 3] = [
    (
        "BATCH_MAX_READINGS",
        "10000",
        "batches of 10,000 (the former default)",
    ),
    ("BATCH_WRITE_CONCURRENCY", "1", "one transaction per batch"),
    (
        "KAFKA_FETCH_QUEUE_BACKOFF_MS",
        "1000",
        "librdkafka's default fetch backoff (1 s)",
    ),
];

/// The register data sets drained beside the interval readings.
pub const REGISTER_SETS: [(&str, Reporting); 2] = [
    ("registers, in order", Reporting::Registers { late: 0.0 }),
    (
        "registers, 2% of readings late (up to 5 min)",
        Reporting::Registers { late: 0.02 },
    ),
];

pub async fn run(
    data: &Data,
    register_data: &[Data],
    runs: usize,
    naive_sample: usize,
    worker_settings: &[(String, String)],
    with_variants: bool,
    report: &mut Report,
) -> anyhow::Result<()> {
    let variants: Vec<(&str, &str)> = if with_variants {
        VARIANTS
            .iter()
            .map(|(name, value, _)| (*name, *value))
            .collect()
    } else {
        Vec::new()
    };
    let rows = Rows::split(&data.readings);
    let encoded = Encoded::new(&rows);
    let results = measure_runs(
        data,
        register_data,
        runs,
        naive_sample,
        worker_settings,
        &variants,
        &encoded,
    )
    .await?;
    let worker_rates = report_drain(data, &rows, &encoded, naive_sample, &results, report);
    if with_variants {
        report_variants(&results, &worker_rates, report);
    }
    if !register_data.is_empty() {
        report_registers(&results, &worker_rates, report);
    }
    report_cpu(&results, report);
    let messages = data.readings.len() as f64;
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

/// Each run: a pre-filled broker, the bare consumer, the worker with its
/// defaults and with each variant, the COPY limit and the naive writer.
async fn measure_runs(
    data: &Data,
    register_data: &[Data],
    runs: usize,
    naive_sample: usize,
    worker_settings: &[(String, String)],
    variants: &[(&str, &str)],
    encoded: &Encoded,
) -> anyhow::Result<Vec<DrainRun>> {
    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("drain run {run}/{runs}");
        let broker = prefilled_broker(data).await?;
        let consume_only = {
            let (bootstrap, expected) = (broker.bootstrap.clone(), data.readings.len());
            tokio::task::spawn_blocking(move || consume_only(&bootstrap, expected)).await??
        };
        let drained = drain_with_worker(data, &broker, "bench-drain", worker_settings).await?;
        let mut variant_rates = Vec::new();
        for (i, (name, value)) in variants.iter().enumerate() {
            let mut settings = worker_settings.to_vec();
            settings.push(((*name).to_owned(), (*value).to_owned()));
            let variant =
                drain_with_worker(data, &broker, &format!("bench-variant-{i}"), &settings).await?;
            variant_rates.push(data.readings.len() as f64 / variant.after_join.as_secs_f64());
        }
        drop(broker);
        let mut register_rates = Vec::new();
        for (i, registers) in register_data.iter().enumerate() {
            let broker = prefilled_broker(registers).await?;
            let drained = drain_with_worker(
                registers,
                &broker,
                &format!("bench-registers-{i}"),
                worker_settings,
            )
            .await?;
            register_rates.push(registers.readings.len() as f64 / drained.after_join.as_secs_f64());
        }
        let copy = copy_limit(encoded).await?;
        let naive_rate = naive(&data.readings, naive_sample).await?;
        results.push(DrainRun {
            register_rates,
            total: drained.total,
            after_join: drained.after_join,
            copy,
            consume_only,
            variant_rates,
            cpu: drained.cpu,
            naive_rate,
            worker_peak_rss_kib: drained.peak_rss_kib,
        });
    }

    Ok(results)
}

/// The drain table; returns the worker's rate per run.
fn report_drain(
    data: &Data,
    rows: &Rows<'_>,
    encoded: &Encoded,
    naive_sample: usize,
    results: &[DrainRun],
    report: &mut Report,
) -> Vec<f64> {
    let messages = data.readings.len() as f64;
    let history = encoded.rows as f64;
    let column = |f: &dyn Fn(&DrainRun) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let copy_rates = column(&|r| history / r.copy.as_secs_f64());
    let worker_rates = column(&|r| messages / r.after_join.as_secs_f64());
    let naive_rates = column(&|r| r.naive_rate);
    let mut table = Table::new(&["approach", "time", "readings/s", "vs binary COPY"]);
    table.row(vec![
        "binary COPY of the history rows (the limit)".into(),
        runs_cell(&column(&|r| r.copy.as_secs_f64()), seconds),
        runs_cell(&copy_rates, per_second),
        "1.00×".into(),
    ]);
    // Rows timed over all messages: time, rate, and COPY's time over theirs.
    let timed: [(&str, RunTime); 3] = [
        (
            "librdkafka consumer alone reading the topic back (the broker side's limit)",
            |r| r.consume_only,
        ),
        ("ingest-worker, defaults, after joining the group", |r| {
            r.after_join
        }),
        ("ingest-worker, from process start", |r| r.total),
    ];
    for (label, time) in timed {
        table.row(vec![
            label.into(),
            runs_cell(&column(&|r| time(r).as_secs_f64()), seconds),
            runs_cell(&column(&|r| messages / time(r).as_secs_f64()), per_second),
            runs_cell(
                &column(&|r| r.copy.as_secs_f64() / time(r).as_secs_f64()),
                ratio,
            ),
        ]);
    }
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
    worker_rates
}

/// What each default buys: the drain with one default set back.
fn report_variants(results: &[DrainRun], worker_rates: &[f64], report: &mut Report) {
    let mut table = Table::new(&[
        "worker setting",
        "readings/s after joining",
        "vs the defaults",
    ]);
    table.row(vec![
        "the defaults".into(),
        runs_cell(worker_rates, per_second),
        "1.00×".into(),
    ]);
    for (i, (name, value, what)) in VARIANTS.iter().enumerate() {
        let rates: Vec<f64> = results.iter().map(|r| r.variant_rates[i]).collect();
        let ratios: Vec<f64> = rates.iter().zip(worker_rates).map(|(v, d)| v / d).collect();
        table.row(vec![
            format!("`{name}={value}`: {what}"),
            runs_cell(&rates, per_second),
            runs_cell(&ratios, ratio),
        ]);
    }
    report.add(
        "Worker drain: what each default buys",
        "The same drain with one default set back to what it replaced, in the same run, on \
         the same pre-filled topic (a new consumer group each) and a fresh database.",
        &table,
    );
}

/// What registers cost: the same fleet reporting registers, drained by the
/// same worker in the same run.
fn report_registers(results: &[DrainRun], worker_rates: &[f64], report: &mut Report) {
    let mut table = Table::new(&[
        "readings",
        "readings/s after joining",
        "vs interval readings",
    ]);
    table.row(vec![
        "interval readings (the drain above)".into(),
        runs_cell(worker_rates, per_second),
        "1.00×".into(),
    ]);
    for (i, (what, _)) in REGISTER_SETS.iter().enumerate() {
        let rates: Vec<f64> = results.iter().map(|r| r.register_rates[i]).collect();
        let ratios: Vec<f64> = rates.iter().zip(worker_rates).map(|(v, d)| v / d).collect();
        table.row(vec![
            (*what).to_owned(),
            runs_cell(&rates, per_second),
            runs_cell(&ratios, ratio),
        ]);
    }
    report.add(
        "Worker drain: registers against interval readings",
        "The same fleet (same seed, size and clock jitter) with every vehicle and meter          reporting a cumulative register (reboots 0.1% and replacements 0.01% per device and          minute), drained by the same worker with the same settings, in the same run, on a          topic of its own and a fresh database. In order, each interval is derived in the          worker from the reading current state held; a late reading is derived after the          insert from the stored readings around it and its rollup buckets are recomputed.",
        &table,
    );
}

/// Where the CPU went during the drains.
fn report_cpu(results: &[DrainRun], report: &mut Report) {
    let mut cpu = Table::new(&["process", "CPU seconds", "share of the machine's capacity"]);
    let column = |f: fn(&CpuUse) -> f64| results.iter().map(|r| f(&r.cpu)).collect::<Vec<f64>>();
    let share = |f: fn(&CpuUse) -> f64| {
        results
            .iter()
            .map(|r| 100.0 * f(&r.cpu) / r.cpu.available)
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
            c.machine.busy - c.worker - c.broker
        }),
        ("the machine, busy", |c| c.machine.busy),
        (STOLEN_ROW, |c| c.machine.stolen),
    ] {
        cpu.row(vec![
            name.to_owned(),
            runs_cell(&column(f), |x| format!("{x:.1}")),
            runs_cell(&share(f), percent),
        ]);
    }
    report.add(
        "Worker drain: where the CPU goes",
        "CPU time used from the worker's start to the last commit, read from `/proc`; the \
         capacity is the drain's wall time × the cores. A busy machine well under 100% means \
         the drain waits rather than computes.",
        &cpu,
    );
}

#[derive(Clone, Copy, Debug, Default)]
struct CpuUse {
    worker: f64,
    broker: f64,
    machine: MachineCpu,
    available: f64,
}

/// What one drain measured.
struct Drained {
    total: Duration,
    after_join: Duration,
    cpu: CpuUse,
    peak_rss_kib: f64,
}

/// Pre-fills a topic, times a bare consumer reading it back, then starts a
/// worker and times it until every message is committed.
/// Picks one measured duration out of a run.
type RunTime = fn(&DrainRun) -> Duration;

/// A fresh broker whose topic holds every message of `data`.
async fn prefilled_broker(data: &Data) -> anyhow::Result<Broker> {
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

    Ok(broker)
}

/// Starts a worker in consumer group `group` on the pre-filled topic (a new
/// group reads it from the start) with a fresh database, and times it until
/// every message is committed.
async fn drain_with_worker(
    data: &Data,
    broker: &Broker,
    group: &str,
    settings: &[(String, String)],
) -> anyhow::Result<Drained> {
    let db = fresh_database().await;
    let mut env: Vec<(&str, String)> = vec![
        ("DATABASE_URL", db.url.clone()),
        ("KAFKA_BROKERS", broker.bootstrap.clone()),
        ("KAFKA_TOPIC", TOPIC.to_owned()),
        ("KAFKA_GROUP_ID", group.to_owned()),
        ("WORKER_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
        (
            "RUST_LOG",
            "warn,ingest_worker::pipeline=info,ingest_worker::rebalance=info".to_owned(),
        ),
    ];
    env.extend(
        settings
            .iter()
            .map(|(name, value)| (name.as_str(), value.clone())),
    );
    let (machine_before, broker_before) = (MachineCpu::now(), process_cpu_seconds(broker.pid()));
    let started = Instant::now();
    let mut worker = Service::start("ingest-worker", &[], &env);
    let (joined, finished) =
        wait_until_committed(&mut worker, data.readings.len() as u64, started).await?;
    let cpu = CpuUse {
        worker: process_cpu_seconds(worker.pid()),
        broker: process_cpu_seconds(broker.pid()) - broker_before,
        machine: MachineCpu::now().since(machine_before),
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
    db.drop_database().await?;
    Ok(Drained {
        total: finished - started,
        after_join: finished - joined,
        cpu,
        peak_rss_kib: peak,
    })
}

/// Follows the worker's log until it has committed `expected` messages;
/// returns when it joined the group (its first assignment) and when it was done.
async fn wait_until_committed(
    worker: &mut Service,
    expected: u64,
    started: Instant,
) -> anyhow::Result<(Instant, Instant)> {
    let (mut done, mut next_line, mut joined) = (0u64, 0usize, None);
    loop {
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
            return Ok((joined.unwrap_or(started), Instant::now()));
        }
        anyhow::ensure!(worker.is_running(), "the worker exited during the drain");
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(1800),
            "the drain took over 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    db.drop_database().await?;
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
    pool.close().await;
    db.drop_database().await?;
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
            .bind(v.dc.interval())
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
            .bind(v.dc.interval())
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
            .bind(m.ac.interval())
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
            .bind(m.ac.interval())
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
