//! `dev-broker`: DEVELOPMENT ONLY. Hosts librdkafka's in-memory mock Kafka
//! cluster (`rdkafka::mocking`) so the whole system can run on a machine
//! without Kafka. It keeps nothing on disk and is not a production broker:
//! production uses a real Kafka cluster (see docker-compose.yml).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use rdkafka::mocking::MockCluster;

/// Development-only in-memory Kafka-protocol broker (librdkafka mock cluster).
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Topics to create, with their partition count, as name:partitions
    #[arg(long = "topic", default_values_t = ["energy.readings:4".to_owned(), "energy.readings.dlq:1".to_owned()])]
    topics: Vec<String>,

    /// Number of mock brokers
    #[arg(long, default_value_t = 1)]
    brokers: i32,

    /// Write the bootstrap servers to this file once the cluster is up
    #[arg(long)]
    bootstrap_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let cli = Cli::parse();
    // MockCluster is not Send: it lives on this thread for the process' life.
    let cluster = MockCluster::new(cli.brokers).context("cannot start the mock cluster")?;
    for topic in &cli.topics {
        let (name, partitions) = topic
            .rsplit_once(':')
            .and_then(|(name, n)| Some((name, n.parse::<i32>().ok()?)))
            .with_context(|| format!("--topic {topic:?} is not name:partitions"))?;
        cluster
            .create_topic(name, partitions, 1)
            .with_context(|| format!("cannot create topic {name}"))?;
    }
    let bootstrap = cluster.bootstrap_servers();
    if let Some(path) = &cli.bootstrap_file {
        std::fs::write(path, &bootstrap)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{bootstrap}");
    tracing::warn!(%bootstrap, "DEVELOPMENT-ONLY in-memory Kafka mock cluster running; data is lost on exit");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(service_kit::shutdown::signal());
    drop(cluster);
    Ok(())
}
