//! The `fleet-sim` binary against the real services: what it sends through
//! the gateway and straight into Kafka is stored exactly once, second
//! copies and late readings included; NDJSON output is reproducible.

use std::time::Duration;

use test_support::eventually;
use test_support::kafka::MockKafka;
use test_support::postgres::fresh_database;
use test_support::process::Service;
use test_support::services::Wiring;

use test_support::services::TOPIC;

fn run_fleet_sim(args: &[&str], env: &[(&str, String)]) {
    let mut sim = Service::start("fleet-sim", args, env);
    assert!(
        sim.wait_exit(Duration::from_secs(120)).success(),
        "fleet-sim {args:?} failed"
    );
}

/// 20 vehicles, 30 one-minute steps, reassigned every 10 minutes, with
/// second copies and late readings, starting at `start`.
const FLEET: [&str; 14] = [
    "--vehicles",
    "20",
    "--history-minutes",
    "30",
    "--reassign-minutes",
    "10",
    "--duplicates",
    "0.1",
    "--late",
    "0.1",
    "--jitter-ms",
    "2000",
    "--faulty",
    "0.2",
];

#[tokio::test(flavor = "multi_thread")]
async fn readings_sent_through_the_gateway_and_kafka_are_stored_once() {
    let kafka = MockKafka::start(&[(TOPIC, 4), ("energy.readings.dlq", 1)]);
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let (_worker, _) = wiring.start_worker("fleet-sim-test", &[]).await;
    let (_gateway, gateway_url) = wiring.start_gateway(&[]).await;

    let recent = (chrono::Utc::now() - chrono::TimeDelta::hours(3))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let earlier = (chrono::Utc::now() - chrono::TimeDelta::hours(6))
        .format("%Y-%m-%dT%H:00:00Z")
        .to_string();
    let mut through_gateway = FLEET.to_vec();
    through_gateway.extend([
        "--to",
        "gateway",
        "--gateway-url",
        &gateway_url,
        "--batch-size",
        "7",
        "--concurrency",
        "3",
        "--start",
        &recent,
    ]);
    run_fleet_sim(&through_gateway, &[]);
    let mut into_kafka = FLEET.to_vec();
    into_kafka.extend([
        "--to",
        "kafka",
        "--kafka-topic",
        TOPIC,
        "--seed",
        "9",
        "--start",
        &earlier,
    ]);
    run_fleet_sim(&into_kafka, &[("KAFKA_BROKERS", kafka.bootstrap())]);

    // Per run: 20 vehicle and 20 meter readings per step, 20 assignments per 10 minutes.
    let expected = (2 * 20 * 30 * 2, 20 * 3 * 2);
    let stored = eventually(
        "every simulated message stored",
        Duration::from_secs(60),
        || async {
            let counts: (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM vehicle_readings) + (SELECT count(*) FROM meter_readings),
                    (SELECT count(*) FROM assignments)",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
            (counts == expected).then_some(counts)
        },
    )
    .await;
    assert_eq!(stored, expected);
    let devices: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM vehicles_current) + (SELECT count(*) FROM meters_current)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(devices, 40);
}

#[test]
fn ndjson_output_is_reproducible_from_the_seed() {
    let dir = std::env::temp_dir().join(format!("fleet-sim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, seed: &str| {
        let path = dir.join(name);
        let mut args = FLEET.to_vec();
        let output = path.display().to_string();
        args.extend([
            "--to",
            "ndjson",
            "--output",
            &output,
            "--seed",
            seed,
            "--start",
            "2026-01-01T00:00:00Z",
        ]);
        run_fleet_sim(&args, &[]);
        std::fs::read_to_string(path).unwrap()
    };
    let (first, again, other) = (write("a", "1"), write("b", "1"), write("c", "2"));
    assert_eq!(first, again);
    assert_ne!(first, other);
    let lines: Vec<serde_json::Value> = first
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let distinct: std::collections::HashSet<&serde_json::Value> = lines.iter().collect();
    assert_eq!(distinct.len(), 2 * 20 * 30 + 20 * 3);
    assert!(lines.len() > distinct.len(), "second copies are sent");
    std::fs::remove_dir_all(dir).unwrap();
}
