//! The production shape, checked without a Docker engine (none runs on the
//! development machines): the Dockerfile's stages and user, the compose
//! file's wiring (one-shot steps in order, healthchecks, settings the
//! binaries really take, ports that agree with Prometheus' scrape targets),
//! and the database login-role script, run for real with psql.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use test_support::postgres::fresh_database;
use test_support::process::binary;

const IMAGE: &str = "energy-ingestion-engine:latest";

fn workspace_file(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(workspace_file(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(relative)).unwrap();
    let mut value = value;
    // Apply `<<: *anchor` merges, as compose does.
    value.apply_merge().unwrap();
    serde_json::to_value(value).unwrap()
}

fn compose() -> Value {
    yaml("docker-compose.yml")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    let service = &compose["services"][name];
    assert!(service.is_object(), "compose has no service {name}");
    service
}

/// The `condition` under which `name` waits for `dependency`.
fn waits_for<'a>(compose: &'a Value, name: &str, dependency: &str) -> &'a str {
    service(compose, name)["depends_on"][dependency]["condition"]
        .as_str()
        .unwrap_or_else(|| panic!("{name} does not wait for {dependency}"))
}

/// The port of a `host:port` setting.
fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn env<'a>(compose: &'a Value, name: &str, variable: &str) -> &'a str {
    service(compose, name)["environment"][variable]
        .as_str()
        .unwrap_or_else(|| panic!("{name} has no {variable}"))
}

/// The command line of a service of ours, e.g. ["ingest-worker", "migrate"].
fn command(compose: &Value, name: &str) -> Vec<String> {
    service(compose, name)["command"]
        .as_array()
        .unwrap_or_else(|| panic!("{name} has no command list"))
        .iter()
        .map(|part| part.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_dockerfile_builds_in_one_stage_and_runs_as_a_non_root_user_in_another() {
    let dockerfile = read("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "{stages:?}");
    assert!(stages[0].ends_with(" AS builder"));
    assert!(
        stages[1].contains("-slim"),
        "a small runtime base: {}",
        stages[1]
    );
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    let user = runtime
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    assert!(!["root", "0", "0:0"].contains(&user.trim()), "USER {user}");
    assert!(runtime.contains("useradd --system --uid 10001"));
    for binary in ["ingest-gateway", "ingest-worker", "query-api"] {
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "{binary} is copied out of the build"
        );
    }
    assert!(runtime.contains("COPY --from=builder"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    // The build context leaves out build output and local data.
    let ignored = read(".dockerignore");
    for path in ["target/", ".git/", ".data/"] {
        assert!(
            ignored.lines().any(|line| line == path),
            ".dockerignore: {path}"
        );
    }
}

#[test]
fn compose_runs_the_one_shot_steps_in_order_and_checks_every_service() {
    let compose = compose();
    let services: BTreeSet<&str> = compose["services"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let expected = [
        "db-roles",
        "ingest-gateway",
        "ingest-worker",
        "kafka",
        "kafka-topics",
        "migrate",
        "postgres",
        "postgres-replica",
        "prometheus",
        "query-api",
    ];
    assert_eq!(services, expected.into_iter().collect());

    // One-shot steps: run once, in order.
    assert_eq!(
        command(&compose, "kafka-topics"),
        ["ingest-worker", "create-topics"]
    );
    assert_eq!(
        env(&compose, "kafka-topics", "READINGS_PARTITIONS"),
        "${READINGS_PARTITIONS:-12}"
    );
    assert_eq!(command(&compose, "migrate"), ["ingest-worker", "migrate"]);
    assert!(command(&compose, "db-roles").contains(&"/deploy/db-login-roles.sql".to_owned()));
    for step in ["kafka-topics", "migrate", "db-roles"] {
        assert_eq!(service(&compose, step)["restart"], "no", "{step}");
    }
    assert_eq!(
        waits_for(&compose, "kafka-topics", "kafka"),
        "service_healthy"
    );
    assert_eq!(
        waits_for(&compose, "migrate", "postgres"),
        "service_healthy"
    );
    assert_eq!(
        waits_for(&compose, "db-roles", "migrate"),
        "service_completed_successfully"
    );
    for name in ["ingest-gateway", "ingest-worker"] {
        assert_eq!(
            waits_for(&compose, name, "kafka-topics"),
            "service_completed_successfully"
        );
    }
    for name in ["ingest-worker", "query-api"] {
        assert_eq!(
            waits_for(&compose, name, "db-roles"),
            "service_completed_successfully"
        );
    }

    // Every long-running service has a healthcheck and restarts.
    for name in [
        "kafka",
        "postgres",
        "postgres-replica",
        "ingest-gateway",
        "ingest-worker",
        "query-api",
        "prometheus",
    ] {
        let service = service(&compose, name);
        assert!(
            service["healthcheck"]["test"].is_array(),
            "{name} healthcheck"
        );
        assert_eq!(service["restart"], "unless-stopped", "{name}");
    }

    // Our image, built once, runs our services.
    assert_eq!(service(&compose, "kafka-topics")["build"], ".");
    for name in [
        "kafka-topics",
        "migrate",
        "ingest-gateway",
        "ingest-worker",
        "query-api",
    ] {
        assert_eq!(service(&compose, name)["image"], IMAGE, "{name}");
    }

    // Least privilege: keys required, the services on their own database roles.
    for name in ["ingest-gateway", "query-api"] {
        assert!(
            env(&compose, name, "API_KEYS").starts_with("${API_KEYS:?"),
            "{name} requires API_KEYS"
        );
        assert!(service(&compose, name)["environment"]["AUTH_DISABLED"].is_null());
    }
    assert_eq!(env(&compose, "ingest-worker", "DB_USER"), "energy_worker");
    assert_eq!(env(&compose, "query-api", "DB_USER"), "energy_query_api");
    // No default secrets: compose refuses to start without them.
    let text = read("docker-compose.yml");
    for secret in [
        "POSTGRES_PASSWORD",
        "WORKER_DB_PASSWORD",
        "QUERY_API_DB_PASSWORD",
        "API_KEYS",
    ] {
        assert!(
            !text.contains(&format!("${{{secret}:-")),
            "{secret} has a default"
        );
        assert!(
            text.contains(&format!("${{{secret}:?")),
            "{secret} is required"
        );
    }
}

#[test]
fn the_replica_profile_adds_a_streaming_standby_that_query_api_can_read() {
    let compose = compose();
    let replica = service(&compose, "postgres-replica");
    assert_eq!(replica["profiles"], serde_json::json!(["replica"]));
    assert_eq!(
        replica["image"],
        service(&compose, "postgres")["image"],
        "same binaries"
    );
    let script = command(&compose, "postgres-replica").join(" ");
    for part in [
        "pg_basebackup -h postgres -U replicator",
        " -R ",
        "-X stream",
        "hot_standby=on",
    ] {
        assert!(script.contains(part), "{part} in {script}");
    }
    // Its own data, never the primary's.
    let volumes = replica["volumes"].as_array().unwrap();
    assert!(volumes
        .iter()
        .all(|v| v.as_str().unwrap().starts_with("postgres-replica-data:")));
    // The primary makes the replication role on its first start.
    let primary_volumes = service(&compose, "postgres")["volumes"].as_array().unwrap();
    assert!(primary_volumes.iter().any(|v| {
        v.as_str().unwrap()
            == "./deploy/postgres-replication.sh:/docker-entrypoint-initdb.d/postgres-replication.sh:ro"
    }));
    assert!(read("deploy/postgres-replication.sh").contains("host replication replicator"));
    // query-api reads the replica when told to, and the primary otherwise.
    assert_eq!(
        env(&compose, "query-api", "QUERY_DATABASE_URLS"),
        "${QUERY_DATABASE_URLS:-}"
    );
    assert_eq!(env(&compose, "query-api", "QUERY_PRIMARY_FALLBACK"), "true");
}

#[test]
fn compose_gives_only_settings_the_binaries_take() {
    let compose = compose();
    // Read by the logging setup rather than the argument parser.
    let logging = ["RUST_LOG", "LOG_FORMAT"];
    for name in [
        "kafka-topics",
        "migrate",
        "ingest-gateway",
        "ingest-worker",
        "query-api",
    ] {
        let argv = command(&compose, name);
        let help = Command::new(binary(&argv[0]))
            .args(&argv[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(help.status.success(), "{argv:?} --help");
        let help = String::from_utf8(help.stdout).unwrap();
        for variable in service(&compose, name)["environment"]
            .as_object()
            .unwrap()
            .keys()
        {
            assert!(
                logging.contains(&variable.as_str()) || help.contains(&format!("[env: {variable}")),
                "{name} is given {variable}, which {argv:?} does not take"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_each_service_where_it_listens() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    assert!(prometheus["volumes"]
        .as_array()
        .unwrap()
        .contains(&Value::from(
            "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        )));
    let config = yaml("deploy/prometheus.yml");
    let jobs = config["scrape_configs"].as_array().unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|job| job["job_name"] == name)
            .unwrap_or_else(|| panic!("no scrape job {name}"))
    };
    for (name, address) in [
        ("ingest-gateway", "GATEWAY_ADDR"),
        ("query-api", "QUERY_API_ADDR"),
    ] {
        let port = port_of(env(&compose, name, address));
        assert_eq!(job(name)["metrics_path"], "/metrics");
        assert_eq!(
            job(name)["static_configs"][0]["targets"][0],
            format!("{name}:{port}")
        );
        let probe = service(&compose, name)["healthcheck"]["test"].to_string();
        assert!(
            probe.contains(&format!("localhost:{port}/readyz")),
            "{name}: {probe}"
        );
        assert_eq!(
            service(&compose, name)["ports"][0],
            format!("${{PUBLISH_ADDR:-127.0.0.1}}:{port}:{port}"),
            "{name} published on the loopback interface unless told otherwise"
        );
    }
    // Every worker replica, found by the service name.
    let worker_port = port_of(env(&compose, "ingest-worker", "WORKER_HEALTH_ADDR"));
    let discovery = &job("ingest-worker")["dns_sd_configs"][0];
    assert_eq!(discovery["names"][0], "ingest-worker");
    assert_eq!(discovery["port"], worker_port);
    let probe = service(&compose, "ingest-worker")["healthcheck"]["test"].to_string();
    assert!(
        probe.contains(&format!("localhost:{worker_port}/healthz")),
        "{probe}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_login_role_script_puts_each_service_in_its_group_and_can_run_again() {
    let db = fresh_database().await;
    let psql = PathBuf::from(std::env::var("TEST_PG_BINDIR").unwrap_or_else(|_| "/usr/bin".into()))
        .join("psql");
    for _ in 0..2 {
        let run = Command::new(&psql)
            // Without the parameters only sqlx understands.
            .arg(db.url.split('?').next().unwrap())
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-v",
                "worker_password=worker-secret",
            ])
            .args(["-v", "query_api_password=query-secret", "-f"])
            .arg(workspace_file("deploy/db-login-roles.sql"))
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let memberships: Vec<(String, bool, bool, bool)> = sqlx::query_as(
        "SELECT r.rolname, r.rolcanlogin,
                pg_has_role(r.rolname, 'energy_writer', 'member'),
                pg_has_role(r.rolname, 'energy_reader', 'member')
         FROM pg_roles r WHERE r.rolname IN ('energy_worker', 'energy_query_api') ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        memberships,
        [
            ("energy_query_api".to_owned(), true, false, true),
            ("energy_worker".to_owned(), true, true, false),
        ]
    );
}
