//! The workspace's layering, read from `cargo tree` (normal dependencies,
//! as a release build links them): what each crate must never pull in.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Every crate `package` links in a normal build, itself included.
fn linked_crates(package: &str) -> BTreeSet<String> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("test-support lives in the workspace");
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--package",
            package,
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(workspace)
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("cargo tree prints UTF-8")
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_never_links(package: &str, forbidden: &[&str]) {
    let linked = linked_crates(package);
    assert!(
        linked.contains(package),
        "{package} is not in the workspace"
    );
    let found: Vec<&&str> = forbidden
        .iter()
        .filter(|name| linked.contains(**name))
        .collect();
    assert!(found.is_empty(), "{package} links {found:?}");
}

#[test]
fn the_core_compiles_without_a_runtime_web_database_or_kafka_stack() {
    assert_never_links(
        "shared",
        &["tokio", "axum", "hyper", "sqlx", "rdkafka", "tower", "clap"],
    );
}

#[test]
fn kafka_clients_need_no_web_or_database_stack() {
    for package in ["kafka-kit", "fleet-sim"] {
        assert_never_links(package, &["axum", "sqlx"]);
    }
}

#[test]
fn query_api_and_the_service_kit_never_build_librdkafka() {
    for package in ["query-api", "service-kit"] {
        assert_never_links(package, &["rdkafka", "rdkafka-sys"]);
    }
}

#[test]
fn the_gateway_and_the_worker_never_link_each_other() {
    assert_never_links("ingest-gateway", &["ingest-worker", "query-api"]);
    assert_never_links("ingest-worker", &["ingest-gateway", "query-api"]);
}
