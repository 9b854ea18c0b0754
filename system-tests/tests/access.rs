//! Access control of the running services: API keys with roles on both HTTP
//! services (401 without a key, 403 with the wrong role, nothing published or
//! read), the explicit switch to serve without keys, and the PostgreSQL
//! roles: the worker stores readings as `energy_writer`, query-api answers as
//! `energy_reader`, and neither can do more than that.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use sqlx::Connection as _;
use test_support::eventually;
use test_support::kafka::{end_total, MockKafka};
use test_support::postgres::{fresh_database, TestDatabase};
use test_support::readings::{meter, vehicle};
use test_support::services::Wiring;

use test_support::services::TOPIC;
const INGEST_KEY: &str = "ingest-0123456789abcdef";
const READ_KEY: &str = "read-0123456789abcdef";

fn keys() -> (&'static str, String) {
    ("API_KEYS", format!("ingest:{INGEST_KEY},read:{READ_KEY}"))
}

struct Reply {
    status: u16,
    challenge: Option<String>,
    body: Value,
}

async fn call(request: reqwest::RequestBuilder, key: Option<&str>) -> Reply {
    let request = match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    };
    let response = request.send().await.expect("service reachable");
    Reply {
        status: response.status().as_u16(),
        challenge: response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_owned()),
        body: response.json().await.unwrap_or(Value::Null),
    }
}

/// Asserts the answers to no key, an unknown key and a key of the other role.
async fn assert_refusals(
    request: impl Fn() -> reqwest::RequestBuilder,
    wrong_role_key: &str,
    role: &str,
) {
    let missing = call(request(), None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.challenge.as_deref(),
        Some("Bearer realm=\"energy-ingestion-engine\"")
    );
    assert_eq!(
        missing.body["error"],
        "missing API key: send the header `Authorization: Bearer <key>`"
    );
    let unknown = call(request(), Some("not-a-key-0123456789abcdef")).await;
    assert_eq!(
        (unknown.status, unknown.body["error"].as_str()),
        (401, Some("the API key is not valid"))
    );
    let wrong_role = call(request(), Some(wrong_role_key)).await;
    assert_eq!(wrong_role.status, 403);
    assert_eq!(
        wrong_role.body["error"],
        format!("this API key lacks the {role} role")
    );
    assert_eq!(wrong_role.challenge, None);
}

/// Probes and metrics answer without a key: orchestrators and Prometheus have none.
async fn assert_probes_open(client: &reqwest::Client, url: &str) {
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            call(client.get(format!("{url}{path}")), None).await.status,
            200,
            "{path}"
        );
    }
}

#[tokio::test]
async fn ingest_needs_a_key_with_the_ingest_role() {
    let kafka = MockKafka::start(&[(TOPIC, 2)]);
    let wiring = Wiring::new(String::new(), kafka.bootstrap());
    let (_gateway, url) = wiring.start_gateway(&[keys()]).await;
    let client = reqwest::Client::new();
    let reading = vehicle("V-1", Utc::now() - TimeDelta::minutes(1), 50.0, 1.0, 25.0);
    let post = || client.post(format!("{url}/v1/ingest")).json(&reading);

    assert_refusals(post, READ_KEY, "ingest").await;
    assert_eq!(
        end_total(&kafka.bootstrap(), TOPIC),
        0,
        "a refused request published"
    );

    let accepted = call(post(), Some(INGEST_KEY)).await;
    assert_eq!(accepted.status, 202, "{}", accepted.body);
    assert_eq!(end_total(&kafka.bootstrap(), TOPIC), 1);

    assert_probes_open(&client, &url).await;
}

#[tokio::test]
async fn analytics_need_a_key_with_the_read_role() {
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), String::new());
    let (_api, url) = wiring.start_query_api(&[keys()]).await;
    let client = reqwest::Client::new();
    for path in [
        "/v1/analytics/fleet",
        "/v1/analytics/performance/V-1",
        "/v1/analytics/performance/vehicleid?vehicleId=V-1",
        "/v1/analytics/performance/V-1/series",
        "/v1/vehicles/V-1",
        "/v1/meters/M-1",
        "/v1/meters/M-1/analytics",
    ] {
        assert_refusals(|| client.get(format!("{url}{path}")), INGEST_KEY, "read").await;
    }
    let fleet = call(
        client.get(format!("{url}/v1/analytics/fleet")),
        Some(READ_KEY),
    )
    .await;
    assert_eq!((fleet.status, &fleet.body["total"]), (200, &json!(0)));
    assert_probes_open(&client, &url).await;
}

#[tokio::test]
async fn services_refuse_to_start_without_keys_unless_told_to_serve_without() {
    let no_keys_no_switch = [("AUTH_DISABLED", "false".to_owned())];
    let wiring = Wiring::new(
        "postgres://nobody@127.0.0.1:1/none".to_owned(),
        "127.0.0.1:1".to_owned(),
    );
    let mut gateway = wiring.spawn_gateway(&no_keys_no_switch);
    let mut api = wiring.spawn_query_api(&no_keys_no_switch);
    for service in [&mut gateway, &mut api] {
        assert!(!service.wait_exit(Duration::from_secs(30)).success());
        service.wait_for_log(
            "no API keys: set API_KEYS or API_KEYS_FILE, or AUTH_DISABLED=true",
            Duration::from_secs(5),
        );
    }
    let mut short_key = wiring.spawn_gateway(&[("API_KEYS", "ingest:short".to_owned())]);
    assert!(!short_key.wait_exit(Duration::from_secs(30)).success());
    short_key.wait_for_log("shorter than 16 characters", Duration::from_secs(5));
}

/// A login role in `group`, named after the test database so tests sharing
/// the cluster do not collide; returns the URL to connect as it.
async fn login_role(db: &TestDatabase, group: &str) -> String {
    let role = format!("{}_{group}", db.name);
    sqlx::query(&format!(
        "CREATE ROLE \"{role}\" LOGIN PASSWORD 'secret-{role}' IN ROLE {group}"
    ))
    .execute(&db.pool)
    .await
    .expect("create login role");
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(Some(&format!("secret-{role}"))).unwrap();
    url.to_string()
}

/// SQLSTATE of a statement run as the connection at `url` (`None`: it succeeded).
async fn sqlstate(url: &str, statement: &str) -> Option<String> {
    let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
    match sqlx::query(statement).execute(&mut connection).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(error)) => error.code().map(|code| code.into_owned()),
        Err(other) => panic!("{statement}: {other}"),
    }
}

#[tokio::test]
async fn worker_writes_as_energy_writer_and_query_api_reads_as_energy_reader() {
    let kafka = MockKafka::start(&[(TOPIC, 2), ("energy.readings.dlq", 1)]);
    let db = fresh_database().await;
    let writer_url = login_role(&db, "energy_writer").await;
    let reader_url = login_role(&db, "energy_reader").await;

    let as_writer = Wiring::new(writer_url.clone(), kafka.bootstrap());
    let as_reader = as_writer.with_database(reader_url.clone());
    // The worker creates its partitions (through the owner's functions) at start-up.
    let (_worker, _) = as_writer.start_worker("roles", &[]).await;
    let (_gateway, gateway_url) = as_writer.start_gateway(&[]).await;
    let (_api, api_url) = as_reader.start_query_api(&[]).await;

    let at = Utc::now() - TimeDelta::minutes(5);
    let readings = json!([
        vehicle("1", at, 60.0, 1.7, 25.0),
        meter("1", at, 2.0, 230.0),
    ]);
    let answer =
        test_support::http::ingest(&gateway_url, "application/json", readings.to_string()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);

    let performance = eventually(
        "the reading stored by the writer role",
        Duration::from_secs(60),
        || async {
            let reply = call(
                reqwest::Client::new().get(format!("{api_url}/v1/analytics/performance/1")),
                None,
            )
            .await;
            (reply.status == 200).then_some(reply.body)
        },
    )
    .await;
    assert_eq!(performance["efficiency"], json!(85.0));

    // The reader reads and nothing else; 42501 is insufficient_privilege.
    let today = Utc::now().date_naive();
    let denied = Some("42501".to_owned());
    assert_eq!(
        sqlstate(&reader_url, "SELECT count(*) FROM vehicle_readings").await,
        None
    );
    for statement in [
        format!("INSERT INTO vehicle_readings VALUES ('x', '{at}', 1, 1, 1)"),
        "UPDATE vehicles_current SET soc = 0".to_owned(),
        "DELETE FROM meter_readings".to_owned(),
        "CREATE TABLE intruder (x int)".to_owned(),
        format!("SELECT energy_ensure_partitions('vehicle_readings', '{today}', '{today}')"),
        format!("SELECT energy_drop_partitions_before('vehicle_readings', '{today}')"),
    ] {
        assert_eq!(
            sqlstate(&reader_url, &statement).await,
            denied,
            "reader: {statement}"
        );
    }
    // The writer changes rows, not the schema nor the migration history, and
    // manages partitions only of the partitioned tables, for a bounded span.
    assert_eq!(
        sqlstate(&writer_url, "UPDATE vehicles_current SET soc = soc").await,
        None
    );
    for statement in [
        "DROP TABLE vehicle_readings",
        "ALTER TABLE vehicle_readings ADD COLUMN x int",
        "CREATE TABLE intruder (x int)",
        "CREATE FUNCTION to_char(date, text) RETURNS text LANGUAGE sql AS 'SELECT 1::text'",
        "DELETE FROM _sqlx_migrations",
        "SELECT energy_ensure_partitions('assignments', '2026-01-01', '2026-01-02')",
        "SELECT energy_drop_partitions_before('vehicles_current', '2100-01-01')",
        // The partition functions' allow-list is the schema's, not the writer's.
        "INSERT INTO energy_partitioned_tables (parent, granularity, retention) VALUES ('assignments', 'day', 'readings')",
    ] {
        assert_eq!(
            sqlstate(&writer_url, statement).await,
            denied,
            "writer: {statement}"
        );
    }
    let century = "SELECT energy_ensure_partitions('vehicle_readings', '2000-01-01', '2100-01-01')";
    assert_eq!(
        sqlstate(&writer_url, century).await,
        Some("54000".to_owned()),
        "a century of day partitions is refused (program_limit_exceeded)"
    );
    let tomorrow = today + chrono::Days::new(1);
    let needed =
        format!("SELECT energy_ensure_partitions('vehicle_readings', '{today}', '{tomorrow}')");
    assert_eq!(sqlstate(&writer_url, &needed).await, None);
    // The writer reads the migration history: the start-up check needs it.
    assert_eq!(
        sqlstate(&writer_url, "SELECT count(*) FROM _sqlx_migrations").await,
        None
    );
}
