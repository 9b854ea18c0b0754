//! Partition upkeep against a real PostgreSQL: every accepted day has its
//! partition before a reading needs it, and retention drops whole days.

use chrono::{Days, NaiveDate, Utc};
use ingest_worker::partitions::Partitions;
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

    let partitions = Partitions::new(90, 730);
    let upkeep = partitions.maintain(&db.pool, today).await.unwrap();
    assert_eq!(
        upkeep.dropped, 1,
        "the expired raw day is dropped, its rollup month kept"
    );

    // Every day from the retention cutoff through the day after tomorrow, nothing else.
    let expected: Vec<String> = (0..=92)
        .map(|n| day_name("vehicle_readings", today - Days::new(90) + Days::new(n)))
        .collect();
    assert_eq!(partitions_of(&db.pool, "vehicle_readings").await, expected);
    assert_eq!(partitions_of(&db.pool, "meter_readings").await.len(), 93);
    let months = partitions_of(&db.pool, "vehicle_hourly").await;
    assert!(months.contains(&format!("vehicle_hourly_p{}", expired.format("%Y%m"))));
    assert!(months.contains(&format!(
        "vehicle_hourly_p{}",
        (today + Days::new(2)).format("%Y%m")
    )));

    // A second pass changes nothing; a reading for a day beyond the upkeep
    // horizon gets its partition before it is written.
    assert_eq!(
        partitions.maintain(&db.pool, today).await.unwrap().created,
        0
    );
    let far = today + Days::new(10);
    partitions.ensure_through(&db.pool, far).await.unwrap();
    assert!(partitions_of(&db.pool, "meter_readings")
        .await
        .contains(&day_name("meter_readings", far)));
    sqlx::query("INSERT INTO meter_readings VALUES ('M', $1, 1, 230)")
        .bind(far.and_hms_opt(23, 59, 0).unwrap().and_utc())
        .execute(&db.pool)
        .await
        .unwrap();
}
