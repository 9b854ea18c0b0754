//! Partition upkeep against a real PostgreSQL: every accepted day has its
//! partition before a reading needs it, and retention drops whole days.

use std::time::{Duration, Instant};

use chrono::{Days, NaiveDate, Utc};
use ingest_worker::partitions::{Partitions, DAYS_AHEAD};
use sqlx::PgPool;
use test_support::postgres::fresh_unmigrated_database;

async fn partitions_of(pool: &PgPool, parent: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
    )
    .bind(parent)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn day_name(parent: &str, day: NaiveDate) -> String {
    format!("{parent}_p{}", day.format("%Y%m%d"))
}

fn partitions() -> Partitions {
    Partitions::new(90, 730, Duration::from_millis(500))
}

#[tokio::test]
async fn upkeep_creates_every_accepted_day_ahead_and_drops_expired_ones() {
    let db = fresh_unmigrated_database().await;
    service_kit::db::migrate(&db.pool).await.unwrap();
    let today = Utc::now().date_naive();
    // An expired day that holds data, as if left from long ago.
    let expired = today - Days::new(120);
    sqlx::query("SELECT energy_ensure_partitions('vehicle_readings', $1, $1)")
        .bind(expired)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT energy_ensure_partitions('vehicle_hourly', $1, $1)")
        .bind(expired)
        .execute(&db.pool)
        .await
        .unwrap();

    let partitions = partitions();
    partitions.prepare(&db.pool, today).await.unwrap();
    let upkeep = partitions.drop_expired(&db.pool, today).await.unwrap();
    assert_eq!(
        (upkeep.dropped, upkeep.deferred),
        (1, 0),
        "the expired raw day is dropped, its rollup month kept"
    );

    // Every day from the retention cutoff through a week ahead, nothing else.
    let expected: Vec<String> = (0..=90 + DAYS_AHEAD)
        .map(|n| day_name("vehicle_readings", today - Days::new(90) + Days::new(n)))
        .collect();
    assert_eq!(partitions_of(&db.pool, "vehicle_readings").await, expected);
    assert_eq!(partitions_of(&db.pool, "meter_readings").await.len(), 98);
    let months = partitions_of(&db.pool, "vehicle_hourly").await;
    assert!(months.contains(&format!("vehicle_hourly_p{}", expired.format("%Y%m"))));
    assert!(months.contains(&format!(
        "vehicle_hourly_p{}",
        (today + Days::new(DAYS_AHEAD + 1)).format("%Y%m")
    )));

    // A second pass changes nothing; a reading for a day beyond the upkeep
    // horizon gets its partition before it is written.
    assert_eq!(
        partitions.prepare(&db.pool, today).await.unwrap().created,
        0
    );
    let far = today + Days::new(20);
    partitions
        .ensure_days(&db.pool, partitions.first_accepted_day(today), far, false)
        .await
        .unwrap();
    assert!(partitions_of(&db.pool, "meter_readings")
        .await
        .contains(&day_name("meter_readings", far)));
    sqlx::query("INSERT INTO meter_readings VALUES ('M', $1, 1, 230)")
        .bind(far.and_hms_opt(23, 59, 0).unwrap().and_utc())
        .execute(&db.pool)
        .await
        .unwrap();
}

/// A long query holds a lock on the partitioned tables. Creating a
/// partition still goes ahead (it is attached, which does not wait for
/// readers), and a drop gives up after the lock timeout instead of waiting
/// (and making every insert and query wait behind it); the next upkeep,
/// once the query is over, drops it.
#[tokio::test]
async fn partition_changes_never_wait_behind_a_long_query_beyond_the_lock_timeout() {
    let db = fresh_unmigrated_database().await;
    service_kit::db::migrate(&db.pool).await.unwrap();
    let today = Utc::now().date_naive();
    let partitions = partitions();
    partitions.prepare(&db.pool, today).await.unwrap();
    let expired = today - Days::new(100);
    sqlx::query("SELECT energy_ensure_partitions('vehicle_readings', $1, $1)")
        .bind(expired)
        .execute(&db.pool)
        .await
        .unwrap();

    let mut long_query = db.pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM vehicle_readings")
        .execute(&mut *long_query)
        .await
        .unwrap();

    let started = Instant::now();
    let upkeep = partitions.drop_expired(&db.pool, today).await.unwrap();
    assert_eq!((upkeep.dropped, upkeep.deferred), (0, 1));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the drop waited {:?}",
        started.elapsed()
    );
    let far = today + Days::new(30);
    partitions
        .ensure_days(&db.pool, partitions.first_accepted_day(today), far, false)
        .await
        .unwrap();
    assert!(partitions_of(&db.pool, "vehicle_readings")
        .await
        .contains(&day_name("vehicle_readings", far)));

    long_query.rollback().await.unwrap();
    let upkeep = partitions.drop_expired(&db.pool, today).await.unwrap();
    assert_eq!((upkeep.dropped, upkeep.deferred), (1, 0));
}
