//! `bench`: the benchmark harness behind BENCHMARKS.md. Every figure is
//! measured next to its comparison in the same run (the physical limit, or
//! the naive approach), each run on the same generated data, and reported as
//! the median of the runs. Run it with `scripts/bench.sh`, which starts a
//! PostgreSQL server with stated settings and builds the release binaries.
//!
//! - [`drain`]: the worker draining a pre-filled topic, vs binary COPY and
//!   vs one INSERT plus one UPSERT per reading;
//! - [`gateway`]: batch and single-reading ingest, vs producing straight to
//!   the broker;
//! - [`query`]: the 24-hour performance endpoint over a day of a fleet's
//!   history, vs the plain SQL aggregate over raw history; table sizes.
//!
//! The harness checks what it measures (every reading stored, answers equal
//! to the raw computation) and fails rather than report a figure for a
//! wrong result. It asserts no time: figures are printed, never judged.

mod broker;
mod cpu;
mod drain;
mod gateway;
mod load;
mod query;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::report::Report;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Drain,
    Gateway,
    Query,
}

/// Runs the benchmarks and prints their tables as Markdown.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Scenarios to run (default: all)
    #[arg(long, value_enum, value_delimiter = ',')]
    scenario: Vec<Scenario>,

    /// Runs per scenario; figures are medians
    #[arg(long, default_value_t = 3)]
    runs: usize,

    /// Also write the report to this file
    #[arg(long)]
    output: Option<PathBuf>,

    /// Drain and gateway data: vehicles (and as many meters)...
    #[arg(long, default_value_t = 10_000)]
    drain_vehicles: u32,

    /// ...times one-minute steps (2 readings per vehicle per step)
    #[arg(long, default_value_t = 100)]
    drain_steps: u64,

    /// Readings written the naive way (one INSERT and one UPSERT each) per run
    #[arg(long, default_value_t = 100_000)]
    naive_sample: usize,

    /// Readings sent in batch requests to the gateway per run
    #[arg(long, default_value_t = 1_000_000)]
    gateway_batch_readings: usize,

    /// Single-reading requests per gateway concurrency level per run
    #[arg(long, default_value_t = 60_000)]
    gateway_single_requests: usize,

    /// Query data: vehicles (and meters) with per-minute history...
    #[arg(long, default_value_t = 10_000)]
    query_vehicles: u32,

    /// ...over this many hours (plus one vehicle reporting every second)
    #[arg(long, default_value_t = 24)]
    query_hours: u32,

    /// Extra environment for the drained worker, as NAME=VALUE (repeatable),
    /// to measure a setting against the defaults
    #[arg(long, value_parser = parse_setting)]
    worker_setting: Vec<(String, String)>,

    /// Skip the drains that set one default back (the "what each default buys" table)
    #[arg(long)]
    skip_variants: bool,

    /// Seconds each query measurement runs
    #[arg(long, default_value_t = 5.0)]
    measure_seconds: f64,

    /// Query measurements start once autovacuum has run no worker for this
    /// many seconds (longer than its one-minute naptime, so no table is
    /// still due), or after 15 minutes
    #[arg(long, default_value_t = 75.0)]
    autovacuum_quiet_seconds: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.runs >= 1, "--runs must be at least 1");
    let scenarios = if cli.scenario.is_empty() {
        vec![Scenario::Drain, Scenario::Gateway, Scenario::Query]
    } else {
        cli.scenario.clone()
    };
    let mut report = Report::new(&cli_line()).await?;

    if scenarios
        .iter()
        .any(|s| matches!(s, Scenario::Drain | Scenario::Gateway))
    {
        let data = drain::Data::generate(cli.drain_vehicles, cli.drain_steps)?;
        if scenarios.contains(&Scenario::Drain) {
            let register_data = drain::REGISTER_SETS
                .iter()
                .map(|(_, reporting)| {
                    drain::Data::generate_as(cli.drain_vehicles, cli.drain_steps, *reporting)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            drain::run(
                &data,
                &register_data,
                cli.runs,
                cli.naive_sample,
                &cli.worker_setting,
                !cli.skip_variants,
                &mut report,
            )
            .await?;
        }
        if scenarios.contains(&Scenario::Gateway) {
            let settings = gateway::Settings {
                batch_readings: cli.gateway_batch_readings,
                single_requests: cli.gateway_single_requests,
            };
            gateway::run(&data, cli.runs, &settings, &mut report).await?;
        }
    }
    if scenarios.contains(&Scenario::Query) {
        let settings = query::Settings {
            vehicles: cli.query_vehicles,
            hours: cli.query_hours,
            measure: Duration::from_secs_f64(cli.measure_seconds),
            autovacuum_quiet: Duration::from_secs_f64(cli.autovacuum_quiet_seconds),
        };
        query::run(&settings, cli.runs, &mut report).await?;
    }

    let markdown = report.markdown();
    println!("{markdown}");
    if let Some(path) = &cli.output {
        std::fs::write(path, &markdown)?;
    }
    Ok(())
}

fn parse_setting(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not NAME=VALUE"))
}

/// The command line as run, for the report.
fn cli_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "bench".to_owned()
    } else {
        format!("bench {}", args.join(" "))
    }
}
