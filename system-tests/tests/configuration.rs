//! Configuration that cannot work is refused at start, with a message that
//! names the setting and how to fix it, instead of failing later or
//! quietly doing something else.

use std::time::Duration;

use test_support::kafka::MockKafka;
use test_support::postgres::fresh_database;
use test_support::services::{Wiring, TOPIC};

const DLQ: &str = "energy.readings.dlq";

/// Waits for `service` to exit with a failure and to have said `why`.
fn assert_refused(mut service: test_support::process::Service, why: &str) {
    assert!(
        !service.wait_exit(Duration::from_secs(30)).success(),
        "{} started",
        service.name
    );
    service.wait_for_log(why, Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn retentions_the_partitions_cannot_hold_are_refused() {
    let wiring = Wiring::new("postgres://nobody@127.0.0.1:1/none", "127.0.0.1:1");
    assert_refused(
        wiring.spawn_worker("config", &[("ROLLUP_RETENTION_DAYS", "4000".to_owned())]),
        "ROLLUP_RETENTION_DAYS (4000) and RETENTION_DAYS may be at most 3993 days",
    );
    assert_refused(
        wiring.spawn_worker(
            "config",
            &[
                ("RETENTION_DAYS", "120".to_owned()),
                ("ROLLUP_RETENTION_DAYS", "60".to_owned()),
            ],
        ),
        "ROLLUP_RETENTION_DAYS (60) must be at least RETENTION_DAYS (120)",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_without_the_temp_privilege_is_refused() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let role = format!("{}_no_temp", db.name);
    for statement in [
        format!("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC", db.name),
        format!("CREATE ROLE {role} LOGIN IN ROLE energy_writer"),
    ] {
        sqlx::query(&statement).execute(&db.pool).await.unwrap();
    }
    let url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    let wiring = Wiring::new(url, kafka.bootstrap());
    assert_refused(
        wiring.spawn_worker("config", &[]),
        &format!(
            "may not create temporary tables in {}: the worker stages batches",
            db.name
        ),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn query_api_refuses_a_retention_other_than_the_workers() {
    let kafka = MockKafka::start(&[(TOPIC, 1), (DLQ, 1)]);
    let db = fresh_database().await;
    let wiring = Wiring::new(db.url.clone(), kafka.bootstrap());
    let thirty = [("RETENTION_DAYS", "30".to_owned())];
    let (_worker, _) = wiring.start_worker("config", &thirty).await;
    assert_refused(
        wiring.spawn_query_api(&[]),
        "RETENTION_DAYS is 90 here but 30 for the workers",
    );
    // The same setting on both: it serves.
    let (_api, _) = wiring.start_query_api(&thirty).await;
}
