//! The three services as child processes, wired to one database and one
//! Kafka cluster, each on its own free port.

use crate::process::{free_port, Service};

/// Where the services find their database and topic.
#[derive(Clone, Debug)]
pub struct Wiring {
    pub database_url: String,
    pub bootstrap: String,
    pub topic: String,
}

impl Wiring {
    fn env(&self, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("DATABASE_URL", self.database_url.clone()),
            ("KAFKA_BROKERS", self.bootstrap.clone()),
            ("KAFKA_TOPIC", self.topic.clone()),
            // Tests of access control give API_KEYS instead (extra wins).
            ("AUTH_DISABLED", "true".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        if env.iter().any(|(name, _)| *name == "API_KEYS") {
            env.retain(|(name, _)| *name != "AUTH_DISABLED");
        }
        env
    }

    /// An `ingest-worker` in consumer group `group`; returns it with the URL of its health listener.
    pub fn start_worker(&self, group: &str, extra: &[(&'static str, String)]) -> (Service, String) {
        let port = free_port();
        let mut env = vec![
            ("KAFKA_GROUP_ID", group.to_owned()),
            ("WORKER_HEALTH_ADDR", format!("127.0.0.1:{port}")),
            ("BATCH_MAX_WAIT_MS", "100".to_owned()),
            // Short enough that tests which kill workers do not wait long for
            // a rebalance; the mock cluster needs more than 3 s.
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        (
            Service::start("ingest-worker", &[], &self.env(&env)),
            format!("http://127.0.0.1:{port}"),
        )
    }

    /// An `ingest-gateway`; returns it with its base URL.
    pub fn start_gateway(&self, extra: &[(&'static str, String)]) -> (Service, String) {
        let port = free_port();
        let mut env = vec![("GATEWAY_ADDR", format!("127.0.0.1:{port}"))];
        env.extend(extra.iter().cloned());
        (
            Service::start("ingest-gateway", &[], &self.env(&env)),
            format!("http://127.0.0.1:{port}"),
        )
    }

    /// A `query-api`; returns it with its base URL.
    pub fn start_query_api(&self, extra: &[(&'static str, String)]) -> (Service, String) {
        let port = free_port();
        let mut env = vec![("QUERY_API_ADDR", format!("127.0.0.1:{port}"))];
        env.extend(extra.iter().cloned());
        (
            Service::start("query-api", &[], &self.env(&env)),
            format!("http://127.0.0.1:{port}"),
        )
    }

    /// Runs `ingest-worker migrate` and asserts it succeeded.
    pub fn migrate(&self) {
        let mut migrate = Service::start("ingest-worker", &["migrate"], &self.env(&[]));
        assert!(
            migrate
                .wait_exit(std::time::Duration::from_secs(60))
                .success(),
            "ingest-worker migrate failed"
        );
    }
}
