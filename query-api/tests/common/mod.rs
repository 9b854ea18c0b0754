//! The query API under test: the real service on port 0, in this process,
//! against a test database, and the HTTP calls the tests make to it.
//!
//! Each test binary uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::time::Duration;

use clap::Parser;
use query_api::QueryArgs;
use serde_json::Value;
use test_support::postgres::TestDatabase;
use tokio::sync::oneshot;

/// The settings a deployment would give it, pointed at `db`, without API keys.
pub fn args(db: &TestDatabase) -> QueryArgs {
    args_with(db, &["--auth-disabled"])
}

/// The settings pointed at `db`, plus `extra` flags.
pub fn args_with(db: &TestDatabase, extra: &[&str]) -> QueryArgs {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        query: QueryArgs,
    }
    let database_url = format!("--database-url={}", db.url);
    let argv = ["query-api", database_url.as_str()]
        .into_iter()
        .chain(extra.iter().copied());
    Cli::parse_from(argv).query
}

pub struct Api {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Api {
    /// Starts the service without API keys and waits until it answers.
    pub async fn start(db: &TestDatabase) -> Self {
        Self::start_with(args(db)).await
    }

    /// Starts the service with `args` and waits until it answers.
    pub async fn start_with(args: QueryArgs) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(query_api::serve(args, listener, async {
            let _ = stopped.await;
        }));
        test_support::process::wait_until_ok(&format!("{url}/healthz"), Duration::from_secs(10))
            .await;
        Self {
            url,
            stop: Some(stop),
            task,
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
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}
