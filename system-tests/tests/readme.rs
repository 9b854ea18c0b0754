//! The README's examples work when pasted today: every `curl` command in
//! its shell blocks is run, as written, against the real services (their
//! documented addresses swapped for the test's), and must succeed.

use std::path::Path;
use std::process::Command;

use chrono::{TimeDelta, Utc};
use serde_json::{json, Value};
use test_support::readings::{assignment, meter, vehicle};
use test_support::services::Stack;

/// The `curl` commands of README.md's `sh` blocks, continuation lines joined.
fn readme_curl_commands() -> Vec<String> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let text = std::fs::read_to_string(&readme).expect("README.md");
    let mut commands = Vec::new();
    let mut in_shell = false;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_shell = trimmed == "```sh";
            continue;
        }
        if !in_shell {
            continue;
        }
        if !pending.is_empty() || trimmed.starts_with("curl ") {
            match trimmed.strip_suffix('\\') {
                Some(head) => pending.push_str(head),
                None => {
                    pending.push_str(trimmed);
                    commands.push(std::mem::take(&mut pending));
                }
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread")]
async fn every_curl_example_in_the_readme_works_today() {
    let stack = Stack::start(2, "readme", &[]).await;
    // The data the examples ask about: EV-03 charging through MTR-03.
    let now = Utc::now();
    let mut seed: Vec<Value> = vec![assignment(
        "EV-03",
        Some("MTR-03"),
        now - TimeDelta::hours(2),
    )];
    for minute in 1..=60 {
        let at = now - TimeDelta::minutes(minute);
        seed.push(vehicle("EV-03", at, 50.0, 0.5, 26.0));
        seed.push(meter("MTR-03", at, 0.7, 230.0));
    }
    let answer = stack
        .post("application/json", Value::from(seed).to_string())
        .await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    stack.wait_for_rows(60, 60, 1).await;

    let commands = readme_curl_commands();
    assert!(commands.len() >= 4, "found only {commands:?}");
    for documented in &commands {
        let command = documented
            .replace("http://127.0.0.1:3000", &stack.gateway_url)
            .replace("http://127.0.0.1:3001", &stack.api_url);
        // The keys the access-control example generates in its shell; the
        // stack runs without keys (AUTH_DISABLED), as `scripts/run.sh` does.
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!("{command} -w '\\n%{{http_code}}'"))
            .env("read_key", "0123456789abcdef0123456789abcdef")
            .env("ingest_key", "fedcba9876543210fedcba9876543210")
            .output()
            .expect("run bash");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        let status: u16 = status.trim().parse().unwrap_or(0);
        assert!(
            (200..300).contains(&status),
            "README example answered {status}: {documented}\n{body}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        if documented.contains("/v1/ingest") {
            assert_eq!(
                serde_json::from_str::<Value>(body).unwrap(),
                json!({"message": "Data ingested successfully", "accepted": 1})
            );
        }
    }
}
