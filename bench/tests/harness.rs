//! The benchmark harness itself, at a tiny scale: every scenario runs
//! against the real binaries, passes its own checks (every message stored,
//! answers equal to the raw computation), and prints every table of
//! BENCHMARKS.md. No figure is judged: timings are not asserted anywhere.
//!
//! The harness gets a PostgreSQL cluster of its own, as `scripts/bench.sh`
//! gives it one: its replica comparison takes a base backup of the whole
//! server, which on the shared test server would copy every other test's
//! database too.

use std::time::Duration;

use test_support::private_postgres::PrivatePostgres;
use test_support::process::Service;

#[test]
fn every_scenario_runs_checks_its_results_and_prints_every_table() {
    let output = std::env::temp_dir().join(format!("bench-smoke-{}.md", std::process::id()));
    let output_arg = output.display().to_string();
    let postgres = PrivatePostgres::start();
    let mut bench = Service::start(
        "bench",
        &[
            "--runs",
            "1",
            "--drain-vehicles",
            "40",
            "--drain-steps",
            "5",
            "--naive-sample",
            "100",
            "--gateway-batch-readings",
            "2000",
            "--gateway-single-requests",
            "200",
            "--query-vehicles",
            "20",
            "--query-hours",
            "2",
            "--measure-seconds",
            "0.2",
            "--autovacuum-quiet-seconds",
            "1",
            "--output",
            &output_arg,
        ],
        &[("TEST_DATABASE_URL", postgres.url())],
    );
    assert!(
        bench.wait_exit(Duration::from_secs(600)).success(),
        "the harness failed (its log is above)"
    );
    let report = std::fs::read_to_string(&output).expect("the report was written");
    for section in [
        "### Worker drain\n",
        "### Worker drain: what each default buys",
        "### Worker drain: where the CPU goes",
        "### Gateway: batch ingest",
        "### Gateway: single-reading requests",
        "### Query: 24-hour performance",
        "### Query: where the CPU goes",
        "### PostgreSQL sizes",
        "### Peak memory of the services",
    ] {
        assert!(
            report.contains(section),
            "no {section:?} in the report:\n{report}"
        );
    }
    // 40 vehicles and 40 meters × 5 steps, plus 40 assignments.
    assert!(report.contains("440 messages (400 readings"), "{report}");
    assert!(
        report.contains("`fsync="),
        "the server settings are reported:\n{report}"
    );
    let _ = std::fs::remove_file(output);
}
