//! `ingest-worker`: Kafka in, PostgreSQL out. See the `ingest_worker` library.
//! `ingest-worker migrate` applies the database migrations;
//! `ingest-worker create-topics` creates the Kafka topics.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ingest_worker::WorkerArgs;
use kafka_kit::topics::{self, Outcome, TopicArgs};
use service_kit::config::DbArgs;

/// Consumes readings from Kafka in a consumer group and writes them to
/// PostgreSQL in batches, committing offsets only after each batch is stored.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    worker: WorkerArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations and exit
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create the readings and dead-letter topics if they do not exist, and exit
    CreateTopics {
        #[command(flatten)]
        topics: TopicArgs,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service_kit::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Migrate { db }) => {
            let pool = service_kit::db::pool(&db, "ingest-worker migrate")
                .context("invalid database settings")?;
            service_kit::db::migrate(&pool)
                .await
                .context("migration failed")?;
            tracing::info!("database migrated");
            Ok(())
        }
        Some(Command::CreateTopics { topics }) => {
            for (topic, outcome) in topics::create_topics(&topics).await? {
                match outcome {
                    Outcome::Created { partitions } => {
                        tracing::info!(%topic, partitions, "kafka topic created")
                    }
                    Outcome::Exists { partitions } => {
                        tracing::info!(%topic, partitions, "kafka topic exists")
                    }
                    Outcome::Smaller { partitions, wanted } => tracing::warn!(
                        %topic,
                        partitions,
                        wanted,
                        "kafka topic has fewer partitions than asked for; left unchanged, since \
                         adding partitions moves device keys (see README)"
                    ),
                }
            }
            Ok(())
        }
        None => {
            let listener = service_kit::http::bind(
                "ingest-worker health",
                cli.worker.health_addr,
                "WORKER_HEALTH_ADDR",
            )
            .await?;
            ingest_worker::run(cli.worker, listener, service_kit::shutdown::signal()).await
        }
    }
}
