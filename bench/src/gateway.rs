//! Gateway ingest: readings per second accepted in batch requests, and
//! single-reading requests per second with their latency at several
//! concurrencies, next to the limit: producing the same messages straight
//! to the broker from a Rust client with the gateway's producer settings
//! (acks=all, idempotent). Each run has a fresh broker and gateway.

use std::time::Duration;

use fleet_sim::send::{Destination, Sender, Summary};
use indicatif::ProgressBar;
use shared::domain::Reading;
use test_support::process::{wait_until_ok, Service};

use crate::broker::Broker;
use crate::drain::Data;
use crate::report::{count, millis, per_second, quantile, ratio, runs_cell, Report, Table};

const TOPIC: &str = "bench.gateway";
const PARTITIONS: i32 = 64;
/// Readings per batch request, and batch requests in flight.
const BATCH_SIZE: usize = 1000;
const BATCH_CONCURRENCY: usize = 8;
/// Single-reading requests in flight.
const SINGLE_CONCURRENCY: [usize; 3] = [1, 16, 64];

/// Fewest single-reading requests in a measurement.
const MIN_SINGLE_REQUESTS: usize = 2_000;

/// Requests for one concurrency level: in proportion, so each level takes
/// a similar time.
fn single_count(at_highest: usize, concurrency: usize) -> usize {
    let highest = SINGLE_CONCURRENCY[SINGLE_CONCURRENCY.len() - 1];
    (at_highest * concurrency / highest).max(MIN_SINGLE_REQUESTS)
}

pub struct Settings {
    pub batch_readings: usize,
    pub single_requests: usize,
}

struct GatewayRun {
    batch: Summary,
    direct: Summary,
    single: Vec<Summary>,
    peak_rss_kib: f64,
}

async fn send(destination: Destination, readings: &[Reading]) -> anyhow::Result<Summary> {
    let mut sender = Sender::new(&destination, ProgressBar::hidden())?;
    sender.send(readings).await?;
    let summary = sender.finish().await?;
    anyhow::ensure!(
        summary.messages == readings.len() as u64,
        "not every reading was accepted"
    );
    Ok(summary)
}

pub async fn run(
    data: &Data,
    runs: usize,
    settings: &Settings,
    report: &mut Report,
) -> anyhow::Result<()> {
    let batch_readings = &data.readings[..settings.batch_readings.min(data.readings.len())];
    let single_readings = &data.readings[..settings.single_requests.min(data.readings.len())];
    let mut results = Vec::new();
    for run in 1..=runs {
        eprintln!("gateway run {run}/{runs}");
        results.push(measure_run(settings, batch_readings, single_readings).await?);
    }
    report_batches(&results, batch_readings.len(), report);
    report_single_requests(&results, settings, report);
    let column = |f: &dyn Fn(&GatewayRun) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    report.add_peak_rss(
        "ingest-gateway",
        "the batch and single-reading runs",
        &column(&|r| r.peak_rss_kib),
    );
    Ok(())
}

/// One run: a fresh broker and gateway, the producer limit, batches, and
/// single-reading requests at each concurrency.
async fn measure_run(
    settings: &Settings,
    batch_readings: &[Reading],
    single_readings: &[Reading],
) -> anyhow::Result<GatewayRun> {
    let broker = Broker::start(&[(TOPIC, PARTITIONS)])?;
    let mut gateway = Service::start(
        "ingest-gateway",
        &[],
        &[
            ("KAFKA_BROKERS", broker.bootstrap.clone()),
            ("KAFKA_TOPIC", TOPIC.to_owned()),
            ("GATEWAY_ADDR", "127.0.0.1:0".to_owned()),
            ("AUTH_DISABLED", "true".to_owned()),
        ],
    );
    let url = gateway.listening_url(Duration::from_secs(30));
    wait_until_ok(&format!("{url}/readyz"), Duration::from_secs(30)).await;
    let via_gateway = |batch_size, concurrency| Destination::Gateway {
        url: url.clone(),
        batch_size,
        concurrency,
        api_key: None,
    };

    let direct = send(
        Destination::Kafka {
            brokers: broker.bootstrap.clone(),
            topic: TOPIC.to_owned(),
        },
        batch_readings,
    )
    .await?;
    let batch = send(via_gateway(BATCH_SIZE, BATCH_CONCURRENCY), batch_readings).await?;
    let mut single = Vec::new();
    for concurrency in SINGLE_CONCURRENCY {
        // Warm-up, not measured: the client's connections opened.
        send(
            via_gateway(1, concurrency),
            &single_readings[..(concurrency * 10).min(single_readings.len())],
        )
        .await?;
        let n = single_count(settings.single_requests, concurrency).min(single_readings.len());
        single.push(send(via_gateway(1, concurrency), &single_readings[..n]).await?);
    }
    Ok(GatewayRun {
        peak_rss_kib: gateway.peak_rss_kib().unwrap_or(0) as f64,
        batch,
        direct,
        single,
    })
}

fn report_batches(results: &[GatewayRun], n_readings: usize, report: &mut Report) {
    let column = |f: &dyn Fn(&GatewayRun) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let mut table = Table::new(&[
        "approach",
        "readings/s",
        "vs producing straight to the broker",
    ]);
    table.row(vec![
        "Rust producer straight to the broker (the limit)".into(),
        runs_cell(&column(&|r| r.direct.rate()), per_second),
        "1.00×".into(),
    ]);
    table.row(vec![
        format!("gateway, batches of {BATCH_SIZE}, {BATCH_CONCURRENCY} requests in flight"),
        runs_cell(&column(&|r| r.batch.rate()), per_second),
        runs_cell(&column(&|r| r.batch.rate() / r.direct.rate()), ratio),
    ]);
    report.add(
        "Gateway: batch ingest",
        &format!(
            "{} readings, posted as JSON arrays and answered 202 only after the broker acknowledged \
             them (acks=all); the limit produces the same readings with the gateway's producer \
             settings. Broker: `dev-broker`, {PARTITIONS} partitions.",
            count(n_readings as u64)
        ),
        &table,
    );
}

fn report_single_requests(results: &[GatewayRun], settings: &Settings, report: &mut Report) {
    let column = |f: &dyn Fn(&GatewayRun) -> f64| results.iter().map(f).collect::<Vec<f64>>();
    let mut table = Table::new(&[
        "requests in flight",
        "requests/s",
        "p50",
        "p99",
        "vs the limit's readings/s",
    ]);
    for (i, concurrency) in SINGLE_CONCURRENCY.iter().enumerate() {
        let ms =
            |q: f64| move |r: &GatewayRun| quantile(&r.single[i].latencies, q).as_secs_f64() * 1e3;
        table.row(vec![
            concurrency.to_string(),
            runs_cell(&column(&|r| r.single[i].rate()), per_second),
            runs_cell(&column(&ms(0.5)), millis),
            runs_cell(&column(&ms(0.99)), millis),
            runs_cell(&column(&|r| r.single[i].rate() / r.direct.rate()), ratio),
        ]);
    }
    report.add(
        "Gateway: single-reading requests",
        &format!(
            "{} requests with {} in flight, proportionally fewer below (at least {}), one JSON \
             object each (the original API's shape), from a Rust client (reqwest) on the same \
             machine over keep-alive connections, after an unmeasured warm-up. The gateway \
             answers once the broker has the reading (acks=all, `linger.ms` 2).",
            count(single_count(settings.single_requests, 64) as u64),
            SINGLE_CONCURRENCY[SINGLE_CONCURRENCY.len() - 1],
            count(MIN_SINGLE_REQUESTS as u64)
        ),
        &table,
    );
}
