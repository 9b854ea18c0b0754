//! `query-api`: HTTP analytics over the stored readings. See the `query_api` library.

use anyhow::Context as _;
use clap::Parser;
use query_api::QueryArgs;

/// Answers charging-efficiency analytics and current device state over HTTP.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    query: QueryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::telemetry::init();
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.query.query_api_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.query.query_api_addr))?;
    query_api::serve(cli.query, listener, shared::shutdown::signal()).await
}
