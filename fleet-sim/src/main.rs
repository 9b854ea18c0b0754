//! `fleet-sim`: sends a simulated fleet's readings to ingest-gateway, to
//! Kafka, or to an NDJSON file: first `--history-minutes` of history as fast
//! as the destination takes it, then (with `--live`) one step per interval
//! in real time until stopped. Seeded: with `--start` fixed, two runs send
//! the same messages.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::{Parser, ValueEnum};
use fleet_sim::fleet::{Fleet, FleetSpec};
use fleet_sim::send::{Destination, Sender};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Target {
    /// POST to ingest-gateway's /v1/ingest
    Gateway,
    /// Produce straight into the Kafka topic, keyed by device id
    Kafka,
    /// Write one JSON message per line to --output
    Ndjson,
}

/// Simulates a fleet of electric vehicles and their chargers' meters.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Number of vehicles (and as many meters)
    #[arg(long, env = "FLEET_SIM_VEHICLES", default_value_t = 5)]
    vehicles: u32,

    /// Seconds between two readings of one device
    #[arg(long, env = "FLEET_SIM_INTERVAL_SECONDS", default_value_t = 60.0)]
    interval_seconds: f64,

    /// Minutes of history to send first (ending now, or starting at --start)
    #[arg(long, env = "FLEET_SIM_HISTORY_MINUTES", default_value_t = 60)]
    history_minutes: u64,

    /// First step's time (RFC 3339); default: --history-minutes before now
    #[arg(long, env = "FLEET_SIM_START")]
    start: Option<DateTime<Utc>>,

    /// Largest clock error of a device, in milliseconds (less than half the interval)
    #[arg(long, env = "FLEET_SIM_JITTER_MS", default_value_t = 1500)]
    jitter_ms: u64,

    /// Fraction of readings sent twice (retried requests)
    #[arg(long, env = "FLEET_SIM_DUPLICATES", default_value_t = 0.0)]
    duplicates: f64,

    /// Fraction of readings that arrive late, out of order
    #[arg(long, env = "FLEET_SIM_LATE", default_value_t = 0.0)]
    late: f64,

    /// Late readings and second copies arrive up to this many intervals later
    #[arg(long, env = "FLEET_SIM_MAX_DELAY_STEPS", default_value_t = 5)]
    max_delay_steps: u32,

    /// Minutes between fleet-wide meter reassignments (0: never)
    #[arg(long, env = "FLEET_SIM_REASSIGN_MINUTES", default_value_t = 240)]
    reassign_minutes: u64,

    /// Fraction of vehicles with a faulty charger, spread evenly (0.2: every fifth)
    #[arg(long, env = "FLEET_SIM_FAULTY", default_value_t = 0.2)]
    faulty: f64,

    /// Fraction of vehicles, and of meters, that report cumulative registers
    /// (kwhRegisterDc, kwhRegisterAc) instead of each interval's energy
    #[arg(long, env = "FLEET_SIM_REGISTERS", default_value_t = 0.0)]
    registers: f64,

    /// Chance per register device and interval that it reboots (its count restarts from zero)
    #[arg(long, env = "FLEET_SIM_REBOOTS", default_value_t = 0.001)]
    reboots: f64,

    /// Chance per register device and interval that it is replaced (its count jumps)
    #[arg(long, env = "FLEET_SIM_REPLACEMENTS", default_value_t = 0.0001)]
    replacements: f64,

    /// Random seed
    #[arg(long, env = "FLEET_SIM_SEED", default_value_t = 42)]
    seed: u64,

    /// Where the readings go
    #[arg(long, env = "FLEET_SIM_TO", value_enum, default_value = "gateway")]
    to: Target,

    /// Base URL of ingest-gateway
    #[arg(
        long,
        env = "FLEET_SIM_GATEWAY_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    gateway_url: String,

    /// Readings per gateway request (1: single-reading requests)
    #[arg(long, env = "FLEET_SIM_BATCH_SIZE", default_value_t = 1000)]
    batch_size: usize,

    /// Gateway requests in flight at once
    #[arg(long, env = "FLEET_SIM_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,

    /// API key with the ingest role, sent to the gateway as a bearer token
    #[arg(long, env = "FLEET_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Kafka bootstrap servers (with --to kafka)
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    kafka_brokers: String,

    /// Kafka topic (with --to kafka)
    #[arg(long, env = "KAFKA_TOPIC", default_value = "energy.readings")]
    kafka_topic: String,

    /// NDJSON output file, `-` for standard output (with --to ndjson)
    #[arg(long, env = "FLEET_SIM_OUTPUT", default_value = "-")]
    output: PathBuf,

    /// After the history, keep sending one step per interval in real time until stopped
    #[arg(long, env = "FLEET_SIM_LIVE")]
    live: bool,
}

impl Cli {
    fn spec(&self) -> anyhow::Result<(FleetSpec, u64)> {
        anyhow::ensure!(
            self.interval_seconds.is_finite() && self.interval_seconds >= 0.001,
            "--interval-seconds must be at least 0.001"
        );
        let interval = TimeDelta::microseconds((self.interval_seconds * 1e6).round() as i64);
        let history = TimeDelta::minutes(i64::try_from(self.history_minutes)?);
        let steps = (history
            .num_microseconds()
            .context("--history-minutes too large")?
            / interval.num_microseconds().unwrap_or(1)) as u64;
        let start = match self.start {
            Some(start) => start,
            // Whole seconds, so that the live steps land on round times.
            None => Utc::now().duration_trunc(TimeDelta::seconds(1))? - interval * steps as i32,
        };
        let spec = FleetSpec {
            jitter: TimeDelta::milliseconds(i64::try_from(self.jitter_ms)?),
            duplicate_fraction: self.duplicates,
            late_fraction: self.late,
            max_delay_steps: self.max_delay_steps,
            reassign_every: (self.reassign_minutes > 0)
                .then(|| TimeDelta::minutes(self.reassign_minutes as i64)),
            faulty_fraction: self.faulty,
            register_fraction: self.registers,
            reboot_probability: self.reboots,
            replacement_probability: self.replacements,
            seed: self.seed,
            interval,
            ..FleetSpec::new(self.vehicles, start)
        };
        spec.validate()?;
        Ok((spec, steps))
    }

    fn destination(&self) -> Destination {
        match self.to {
            Target::Gateway => Destination::Gateway {
                url: self.gateway_url.clone(),
                batch_size: self.batch_size,
                api_key: self.api_key.clone(),
                concurrency: self.concurrency,
            },
            Target::Kafka => Destination::Kafka {
                brokers: self.kafka_brokers.clone(),
                topic: self.kafka_topic.clone(),
            },
            Target::Ndjson => Destination::Ndjson {
                path: self.output.clone(),
            },
        }
    }
}

fn progress_bar(len: u64) -> ProgressBar {
    // Hidden when stderr is not a terminal (logs, CI), drawn otherwise.
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {human_pos}/{human_len} messages, {per_sec}, ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// Logs to stderr (the progress bar draws there too); `RUST_LOG` sets the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Ends live mode: Ctrl-C, or SIGTERM as `scripts/run.sh` sends it.
async fn stop_requested() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let (spec, steps) = cli.spec()?;
    let mut fleet = Fleet::new(spec.clone())?;
    let expected = spec.unique_messages(steps);
    let bar = progress_bar(expected);
    let mut sender = Sender::new(&cli.destination(), bar.clone())?;

    for _ in 0..steps {
        let tick = fleet.tick();
        sender.send(&tick.readings).await?;
        bar.set_length(expected + fleet.stats().duplicates);
    }
    if cli.live {
        tracing::info!(
            vehicles = spec.vehicles,
            interval_s = cli.interval_seconds,
            "history sent; sending live readings until stopped"
        );
        let shutdown = stop_requested();
        tokio::pin!(shutdown);
        loop {
            let due = fleet.next_time();
            let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                stopped = &mut shutdown => {
                    stopped?;
                    break;
                }
                () = tokio::time::sleep(wait) => {
                    let tick = fleet.tick();
                    sender.send(&tick.readings).await?;
                    bar.set_length(bar.position().max(bar.length().unwrap_or(0)) + tick.readings.len() as u64);
                }
            }
        }
    }
    sender.send(&fleet.finish()).await?;
    let summary = sender.finish().await?;
    let stats = fleet.stats();
    eprintln!(
        "fleet-sim: {summary}; {} distinct readings and assignments from {} vehicles and {} meters, {} second copies, {} late",
        stats.unique, spec.vehicles, spec.vehicles, stats.duplicates, stats.late
    );
    Ok(())
}
