//! The three services as child processes, wired to one database and one
//! Kafka cluster. Each binds port 0 itself and announces its address; the
//! `start_*` methods wait until it answers `/readyz`, the `spawn_*` ones
//! return at once (for tests of start-up failures).

use std::time::Duration;

use crate::kafka::MockKafka;
use crate::postgres::{fresh_unmigrated_database, TestDatabase};
use crate::process::{wait_until_ok, Service};

/// The readings topic the tests use unless told otherwise.
pub const TOPIC: &str = "energy.readings";

/// How long a service may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Where the services find their database and topic.
#[derive(Clone, Debug)]
pub struct Wiring {
    pub database_url: String,
    pub bootstrap: String,
    pub topic: String,
}

impl Wiring {
    /// Services on `database_url` and the Kafka cluster at `bootstrap`, topic [`TOPIC`].
    pub fn new(database_url: impl Into<String>, bootstrap: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            bootstrap: bootstrap.into(),
            topic: TOPIC.to_owned(),
        }
    }

    /// The same services on another database (e.g. another login role).
    pub fn with_database(&self, database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            ..self.clone()
        }
    }

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

    /// An `ingest-worker` in consumer group `group`, not waited for.
    pub fn spawn_worker(&self, group: &str, extra: &[(&'static str, String)]) -> Service {
        let mut env = vec![
            ("KAFKA_GROUP_ID", group.to_owned()),
            ("WORKER_HEALTH_ADDR", "127.0.0.1:0".to_owned()),
            ("BATCH_MAX_WAIT_MS", "100".to_owned()),
            // Short enough that tests which kill workers do not wait long for
            // a rebalance; the mock cluster needs more than 3 s.
            ("KAFKA_SESSION_TIMEOUT_MS", "6000".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        Service::start("ingest-worker", &[], &self.env(&env))
    }

    /// An `ingest-gateway`, not waited for.
    pub fn spawn_gateway(&self, extra: &[(&'static str, String)]) -> Service {
        let mut env = vec![("GATEWAY_ADDR", "127.0.0.1:0".to_owned())];
        env.extend(extra.iter().cloned());
        Service::start("ingest-gateway", &[], &self.env(&env))
    }

    /// A `query-api`, not waited for.
    pub fn spawn_query_api(&self, extra: &[(&'static str, String)]) -> Service {
        let mut env = vec![("QUERY_API_ADDR", "127.0.0.1:0".to_owned())];
        env.extend(extra.iter().cloned());
        Service::start("query-api", &[], &self.env(&env))
    }

    /// An `ingest-worker` that answers `/readyz` (migrations checked,
    /// partitions made, topics found); returns it with its health URL.
    pub async fn start_worker(
        &self,
        group: &str,
        extra: &[(&'static str, String)],
    ) -> (Service, String) {
        ready(self.spawn_worker(group, extra)).await
    }

    /// An `ingest-gateway` that answers `/readyz`; returns it with its base URL.
    pub async fn start_gateway(&self, extra: &[(&'static str, String)]) -> (Service, String) {
        ready(self.spawn_gateway(extra)).await
    }

    /// A `query-api` that answers `/readyz`; returns it with its base URL.
    pub async fn start_query_api(&self, extra: &[(&'static str, String)]) -> (Service, String) {
        ready(self.spawn_query_api(extra)).await
    }

    /// Runs `ingest-worker migrate` and asserts it succeeded.
    pub fn migrate(&self) {
        let mut migrate = Service::start("ingest-worker", &["migrate"], &self.env(&[]));
        assert!(
            migrate.wait_exit(Duration::from_secs(60)).success(),
            "ingest-worker migrate failed"
        );
    }
}

/// Waits for `service`'s address, then for its `/readyz`.
async fn ready(mut service: Service) -> (Service, String) {
    let url = service.listening_url(READY_WITHIN);
    wait_until_ok(&format!("{url}/readyz"), READY_WITHIN).await;
    (service, url)
}

/// The whole system on a fresh database and a fresh Kafka cluster: the
/// database migrated by `ingest-worker migrate`, then a gateway, a worker
/// and query-api, each ready.
pub struct Stack {
    pub kafka: MockKafka,
    pub db: TestDatabase,
    pub wiring: Wiring,
    pub gateway_url: String,
    pub api_url: String,
    pub worker: Service,
    pub gateway: Service,
    pub api: Service,
}

impl Stack {
    /// The readings topic with `partitions` partitions (and its dead-letter
    /// topic), the worker in consumer group `group`, the gateway with `gateway_env`.
    pub async fn start(
        partitions: i32,
        group: &str,
        gateway_env: &[(&'static str, String)],
    ) -> Self {
        let dead_letters = format!("{TOPIC}.dlq");
        let kafka = MockKafka::start(&[(TOPIC, partitions), (&dead_letters, 1)]);
        let db = fresh_unmigrated_database().await;
        let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
        wiring.migrate();
        let (gateway, gateway_url) = wiring.start_gateway(gateway_env).await;
        let (worker, _) = wiring.start_worker(group, &[]).await;
        let (api, api_url) = wiring.start_query_api(&[]).await;
        Self {
            kafka,
            db,
            wiring,
            gateway_url,
            api_url,
            worker,
            gateway,
            api,
        }
    }

    /// Posts `body` to the gateway's ingest route.
    pub async fn post(&self, content_type: &str, body: String) -> crate::http::Answer {
        crate::http::ingest(&self.gateway_url, content_type, body).await
    }

    /// Waits until exactly these numbers of rows are stored.
    pub async fn wait_for_rows(&self, vehicles: i64, meters: i64, assignments: i64) {
        crate::eventually("every reading stored", Duration::from_secs(90), || async {
            let counts = (
                self.db.count("SELECT count(*) FROM vehicle_readings").await,
                self.db.count("SELECT count(*) FROM meter_readings").await,
                self.db.count("SELECT count(*) FROM assignments").await,
            );
            (counts == (vehicles, meters, assignments)).then_some(())
        })
        .await;
    }
}
