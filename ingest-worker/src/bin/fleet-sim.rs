//! `fleet-sim`: a small fleet for the live demo. It assigns each vehicle to
//! a meter, backfills recent history, then posts one reading per vehicle and
//! per meter every interval to the gateway, as a fleet's chargers would.
//! Seeded, so a run can be reproduced.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::Parser;
use serde_json::{json, Value};
use shared::wire::format_timestamp;

/// Posts simulated vehicle and meter readings to ingest-gateway.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Base URL of ingest-gateway
    #[arg(
        long,
        env = "FLEET_SIM_GATEWAY_URL",
        default_value = "http://127.0.0.1:3000"
    )]
    gateway_url: String,

    /// Number of vehicles (each with its own meter)
    #[arg(long, env = "FLEET_SIM_VEHICLES", default_value_t = 5)]
    vehicles: u32,

    /// Seconds between readings of one device
    #[arg(long, env = "FLEET_SIM_INTERVAL_SECONDS", default_value_t = 10)]
    interval_seconds: u32,

    /// Minutes of history sent at start-up, so analytics have numbers at once
    #[arg(long, env = "FLEET_SIM_BACKFILL_MINUTES", default_value_t = 60)]
    backfill_minutes: u32,

    /// Random seed
    #[arg(long, env = "FLEET_SIM_SEED", default_value_t = 42)]
    seed: u64,
}

/// One simulated vehicle charging through one meter.
struct Charger {
    vehicle_id: String,
    meter_id: String,
    /// Charging power at the grid, kW.
    power_kw: f64,
    /// DC stored / AC drawn; one vehicle of the fleet is deliberately faulty.
    efficiency: f64,
    soc: f64,
}

impl Charger {
    fn readings(
        &mut self,
        at: DateTime<Utc>,
        interval: TimeDelta,
        rng: &mut fastrand::Rng,
    ) -> [Value; 2] {
        let hours = interval.num_milliseconds() as f64 / 3_600_000.0;
        let kwh_ac = self.power_kw * hours * (0.95 + 0.1 * rng.f64());
        let kwh_dc = kwh_ac * self.efficiency * (0.99 + 0.02 * rng.f64());
        self.soc = if self.soc >= 99.0 {
            20.0
        } else {
            (self.soc + kwh_dc * 1.5).min(100.0)
        };
        let timestamp = format_timestamp(at);
        [
            json!({"type":"VEHICLE","vehicleId":self.vehicle_id,"soc":(self.soc * 10.0).round() / 10.0,
                   "kwhDeliveredDc":round3(kwh_dc),"batteryTemp":round1(22.0 + 8.0 * rng.f64()),"timestamp":timestamp}),
            json!({"type":"METER","meterId":self.meter_id,"kwhConsumedAc":round3(kwh_ac),
                   "voltage":round1(225.0 + 10.0 * rng.f64()),"timestamp":timestamp}),
        ]
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

async fn post(client: &reqwest::Client, url: &str, readings: &[Value]) -> anyhow::Result<()> {
    for chunk in readings.chunks(5_000) {
        let response = client
            .post(url)
            .json(chunk)
            .send()
            .await
            .context("gateway unreachable")?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("gateway answered {status}: {body}");
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = Cli::parse();
    let mut rng = fastrand::Rng::with_seed(cli.seed);
    let interval = TimeDelta::seconds(i64::from(cli.interval_seconds.max(1)));
    let url = format!("{}/v1/ingest", cli.gateway_url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let mut fleet: Vec<Charger> = (1..=cli.vehicles)
        .map(|i| Charger {
            vehicle_id: format!("EV-{i:02}"),
            meter_id: format!("MTR-{i:02}"),
            power_kw: 7.0 + 4.0 * rng.f64(),
            efficiency: if i == 3 {
                0.72
            } else {
                0.86 + 0.07 * rng.f64()
            },
            soc: 20.0 + 60.0 * rng.f64(),
        })
        .collect();
    let now = Utc::now().duration_trunc(TimeDelta::seconds(1))?;
    let start = now - TimeDelta::minutes(i64::from(cli.backfill_minutes));
    let assignments: Vec<Value> = fleet
        .iter()
        .map(|c| json!({"type":"ASSIGNMENT","vehicleId":c.vehicle_id,"meterId":c.meter_id,"timestamp":format_timestamp(start - TimeDelta::minutes(1))}))
        .collect();
    // The gateway may still be starting.
    let mut attempts = 0;
    while let Err(error) = post(&client, &url, &assignments).await {
        attempts += 1;
        anyhow::ensure!(attempts < 60, "giving up on the gateway: {error:#}");
        tracing::info!(error = %format!("{error:#}"), "waiting for the gateway");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let mut backfill = Vec::new();
    let mut at = start + interval;
    while at <= now {
        for charger in &mut fleet {
            backfill.extend(charger.readings(at, interval, &mut rng));
        }
        at += interval;
    }
    post(&client, &url, &backfill).await?;
    tracing::info!(
        readings = backfill.len(),
        vehicles = fleet.len(),
        "history backfilled; sending live readings"
    );

    let mut ticker = tokio::time::interval(interval.to_std()?);
    ticker.tick().await;
    let mut sent = backfill.len();
    let shutdown = shared::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = ticker.tick() => {
                let at = Utc::now().duration_trunc(TimeDelta::seconds(1))?;
                let readings: Vec<Value> = fleet.iter_mut().flat_map(|c| c.readings(at, interval, &mut rng)).collect();
                match post(&client, &url, &readings).await {
                    Ok(()) => sent += readings.len(),
                    Err(error) => tracing::warn!(error = %format!("{error:#}"), "readings not accepted, they will be skipped"),
                }
            }
        }
    }
    tracing::info!(sent, "fleet-sim stopped");
    Ok(())
}
