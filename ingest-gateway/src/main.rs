//! `ingest-gateway`: HTTP readings in, Kafka out. See the `ingest_gateway` library.

use clap::Parser;
use ingest_gateway::GatewayArgs;

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
    service_kit::telemetry::init();
    let cli = Cli::parse();
    let listener =
        service_kit::http::bind("ingest-gateway", cli.gateway.gateway_addr, "GATEWAY_ADDR").await?;
    ingest_gateway::serve(cli.gateway, listener, service_kit::shutdown::signal()).await
}
