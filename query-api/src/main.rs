//! `query-api`: HTTP analytics over the stored readings. See the `query_api` library.

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
    service_kit::telemetry::init();
    let cli = Cli::parse();
    let listener =
        service_kit::http::bind("query-api", cli.query.query_api_addr, "QUERY_API_ADDR").await?;
    query_api::serve(cli.query, listener, service_kit::shutdown::signal()).await
}
