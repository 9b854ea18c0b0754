//! The development broker `scripts/run.sh` starts: a 202 is never followed
//! by silent loss. The mock cluster drops a partition's oldest data past 5
//! MiB; with no worker running, the gateway answers 503 before that.

use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use serde_json::Value;
use test_support::kafka::watermarks;
use test_support::postgres::fresh_database;
use test_support::process::Service;
use test_support::readings::vehicle;
use test_support::services::{Wiring, TOPIC};

/// `dev-broker` with the readings topic in one partition; its bootstrap address.
fn dev_broker() -> (Service, String) {
    let file = std::env::temp_dir().join(format!(
        "dev-broker-test-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    ));
    let path = file.display().to_string();
    let broker = Service::start(
        "dev-broker",
        &[
            "--topic",
            &format!("{TOPIC}:1"),
            "--topic",
            &format!("{TOPIC}.dlq:1"),
            "--bootstrap-file",
            &path,
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bootstrap) = std::fs::read_to_string(&file) {
            if !bootstrap.is_empty() {
                std::fs::remove_file(&file).ok();
                return (broker, bootstrap.trim().to_owned());
            }
        }
        assert!(Instant::now() < deadline, "dev-broker did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// With no worker running, readings of one device (one partition) are
/// posted until the gateway refuses: everything it accepted is still in the
/// topic, and stored once a worker starts; then it accepts again.
#[tokio::test(flavor = "multi_thread")]
async fn the_development_broker_refuses_before_it_would_drop() {
    let (_broker, bootstrap) = dev_broker();
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), bootstrap.clone());
    let (_gateway, url) = wiring
        .start_gateway(&[("GATEWAY_PUBLISH_TIMEOUT_MS", "1500".to_owned())])
        .await;
    let start = Utc::now() - TimeDelta::hours(2);
    let batch = |n: i64| -> String {
        let readings: Vec<Value> = (0..1_000)
            .map(|i| {
                let at = start + TimeDelta::milliseconds((n * 1_000 + i) * 100);
                vehicle("ONE-DEVICE", at, 50.0, 0.01, 20.0)
            })
            .collect();
        Value::from(readings).to_string()
    };
    let (mut accepted, mut refused) = (0_i64, 0);
    // 60,000 readings would be about 15 MB: three times what the mock keeps.
    for n in 0..60 {
        let answer = test_support::http::ingest(&url, "application/json", batch(n)).await;
        match answer.status {
            202 => accepted += 1_000,
            503 => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert!(
        refused > 0,
        "the broker never refused; {accepted} readings accepted"
    );
    let (low, high) = watermarks(&bootstrap, TOPIC)[&0];
    assert_eq!(low, 0, "the broker dropped the oldest {low} messages");
    assert!(
        high >= accepted,
        "{accepted} readings accepted but {high} in the topic"
    );

    let (_worker, _) = wiring.start_worker("energy-ingest-worker", &[]).await;
    test_support::eventually("the backlog stored", Duration::from_secs(120), || async {
        (db.count("SELECT count(*) FROM vehicle_readings").await >= accepted).then_some(())
    })
    .await;
    let more = test_support::eventually(
        "the gateway accepting again",
        Duration::from_secs(30),
        || async {
            let answer = test_support::http::ingest(&url, "application/json", batch(60)).await;
            (answer.status == 202).then_some(())
        },
    );
    more.await;
}
