//! The query API under test: the real service on port 0, in this process,
//! against a test database, and the HTTP calls the tests make to it.
//!
//! Each test binary uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod changing_fleet;

use clap::Parser;
use query_api::QueryArgs;
use serde_json::Value;
use test_support::in_process::InProcess;
use test_support::postgres::TestDatabase;

/// The settings a deployment would give it, pointed at `db`, without API keys.
pub fn args(db: &TestDatabase) -> QueryArgs {
    args_with(db, &["--auth-disabled"])
}

/// The settings pointed at `db`, plus `extra` flags.
pub fn args_with(db: &TestDatabase, extra: &[&str]) -> QueryArgs {
    args_at(&db.url, extra)
}

/// The settings pointed at the database at `url`, plus `extra` flags.
pub fn args_at(url: &str, extra: &[&str]) -> QueryArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        query: QueryArgs,
    }
    let database_url = format!("--database-url={url}");
    let argv = ["query-api", database_url.as_str()]
        .into_iter()
        .chain(extra.iter().copied());
    Cli::parse_from(argv).query
}

pub struct Api {
    pub url: String,
    service: InProcess,
}

impl Api {
    /// Starts the service without API keys and waits until it is ready.
    pub async fn start(db: &TestDatabase) -> Self {
        Self::start_with(args(db)).await
    }

    /// Starts the service with `args` and waits until it is ready.
    pub async fn start_with(args: QueryArgs) -> Self {
        let service =
            InProcess::start(|listener, shutdown| query_api::serve(args, listener, shutdown)).await;
        Self {
            url: service.url.clone(),
            service,
        }
    }

    /// GET `path_and_query`: the status and the JSON body (`Null` if none).
    pub async fn get(&self, path_and_query: &str) -> (u16, Value) {
        self.get_with(path_and_query, &[]).await
    }

    /// GET `path` with `query` parameters, encoded.
    pub async fn get_with(&self, path: &str, query: &[(&str, String)]) -> (u16, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Shuts the service down gracefully and checks it ended cleanly.
    pub async fn stop(self) {
        self.service.stop().await;
    }
}
