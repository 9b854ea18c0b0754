//! `ingest-gateway`: HTTP readings in, Kafka out. See `ingest_worker::gateway`.

use anyhow::Context as _;
use clap::Parser;
use ingest_worker::gateway::{self, GatewayArgs};

/// Validates readings posted over HTTP and publishes them to Kafka, answering
/// 202 only once Kafka has acknowledged them.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    gateway: GatewayArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.gateway.gateway_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.gateway.gateway_addr))?;
    gateway::serve(cli.gateway, listener, shared::shutdown::signal()).await
}
