//! `write_batch` against a real PostgreSQL: exact rows, duplicates stored
//! once, current state moving forward in event time only.

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::store::{write_batch, BatchOutcome, WriteError};
use shared::domain::Reading;
use test_support::postgres::{ensure_partitions, fresh_database, TestDatabase};
use test_support::readings::{assignment, decode, meter, vehicle};

fn t(minute: i64) -> DateTime<Utc> {
    "2026-02-10T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::minutes(minute)
}

/// A fresh database with partitions for the days these tests write.
async fn database() -> TestDatabase {
    let db = fresh_database().await;
    ensure_partitions(&db.pool, t(-24 * 60).date_naive(), t(24 * 60).date_naive()).await;
    db
}

/// (readings, kWh) per table, from history and from the hourly rollups: equal
/// when every stored reading is rolled up exactly once.
async fn history_and_rollups(
    db: &TestDatabase,
) -> ((i64, f64), (i64, f64), (i64, f64), (i64, f64)) {
    let q = |sql: &'static str| sqlx::query_as::<_, (i64, f64)>(sql).fetch_one(&db.pool);
    (
        q("SELECT count(*), coalesce(sum(kwh_delivered_dc), 0) FROM vehicle_readings").await.unwrap(),
        q("SELECT coalesce(sum(readings), 0)::bigint, coalesce(sum(sum_dc), 0) FROM vehicle_hourly").await.unwrap(),
        q("SELECT count(*), coalesce(sum(kwh_consumed_ac), 0) FROM meter_readings").await.unwrap(),
        q("SELECT coalesce(sum(readings), 0)::bigint, coalesce(sum(sum_ac), 0) FROM meter_hourly").await.unwrap(),
    )
}

/// The state of charge current state holds for `vehicle`.
async fn current_soc(db: &TestDatabase, vehicle: &str) -> f64 {
    sqlx::query_scalar("SELECT soc FROM vehicles_current WHERE vehicle_id = $1")
        .bind(vehicle)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn batch(values: &[serde_json::Value]) -> Vec<Reading> {
    values.iter().map(decode).collect()
}

#[tokio::test]
async fn a_batch_lands_in_history_current_state_and_assignments() {
    let db = database().await;
    let readings = batch(&[
        vehicle("V-1", t(1), 50.0, 1.0, 20.0),
        vehicle("V-1", t(3), 52.0, 1.5, 21.0),
        vehicle("V-1", t(2), 51.0, 1.25, 22.0), // out of order: must not become current
        meter("M-1", t(1), 1.2, 230.0),
        meter("M-1", t(2), 1.3, 231.0),
        assignment("V-1", Some("M-1"), t(0)),
        assignment("V-2", None, t(0)),
    ]);
    let outcome = write_batch(&db.pool, &readings).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            vehicle_rows: 3,
            meter_rows: 2,
            assignment_rows: 2,
            duplicates: 0,
            register_jumps: 0,
        }
    );
    assert_eq!(db.count("SELECT count(*) FROM vehicle_readings").await, 3);
    let sum: f64 = sqlx::query_scalar("SELECT sum(kwh_delivered_dc) FROM vehicle_readings")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(sum, 3.75);
    let current: (f64, DateTime<Utc>) =
        sqlx::query_as("SELECT soc, recorded_at FROM vehicles_current WHERE vehicle_id = 'V-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(current, (52.0, t(3)));
    let meter_current: (f64, DateTime<Utc>) =
        sqlx::query_as("SELECT voltage, recorded_at FROM meters_current WHERE meter_id = 'M-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(meter_current, (231.0, t(2)));
    let ended: Option<String> =
        sqlx::query_scalar("SELECT meter_id FROM assignments WHERE vehicle_id = 'V-2'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(ended, None);
}

#[tokio::test]
async fn duplicates_are_stored_once_and_the_first_one_wins() {
    let db = database().await;
    let first = batch(&[
        vehicle("V-1", t(1), 50.0, 1.0, 20.0),
        vehicle("V-1", t(1), 99.0, 9.0, 99.0), // same key in the same batch
        meter("M-1", t(1), 1.2, 230.0),
    ]);
    let outcome = write_batch(&db.pool, &first).await.unwrap();
    assert_eq!(
        (outcome.vehicle_rows, outcome.meter_rows, outcome.duplicates),
        (1, 1, 1)
    );

    // A redelivery of the whole batch plus one new reading: the COPY fast path
    // hits the primary key, the staged path stores only the new reading.
    let mut second = first.clone();
    second.extend(batch(&[
        vehicle("V-1", t(2), 51.0, 2.0, 21.0),
        assignment("V-1", Some("M-1"), t(0)),
    ]));
    let outcome = write_batch(&db.pool, &second).await.unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            vehicle_rows: 1,
            meter_rows: 0,
            assignment_rows: 1,
            duplicates: 3,
            register_jumps: 0,
        }
    );
    // And the assignment again: a duplicate too.
    let outcome = write_batch(&db.pool, &batch(&[assignment("V-1", Some("M-2"), t(0))]))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        BatchOutcome {
            duplicates: 1,
            ..BatchOutcome::default()
        }
    );

    assert_eq!(db.count("SELECT count(*) FROM vehicle_readings").await, 2);
    assert_eq!(db.count("SELECT count(*) FROM meter_readings").await, 1);
    let first_value: f64 = sqlx::query_scalar(
        "SELECT soc FROM vehicle_readings WHERE vehicle_id = 'V-1' AND recorded_at = $1",
    )
    .bind(t(1))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(first_value, 50.0);
    let (history_v, rollup_v, history_m, rollup_m) = history_and_rollups(&db).await;
    assert_eq!((history_v, history_m), ((2, 3.0), (1, 1.2)));
    assert_eq!(
        (rollup_v, rollup_m),
        (history_v, history_m),
        "a duplicate was rolled up"
    );
    let meter_of: String =
        sqlx::query_scalar("SELECT meter_id FROM assignments WHERE vehicle_id = 'V-1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(meter_of, "M-1");
}

#[tokio::test]
async fn current_state_never_moves_back_in_event_time() {
    let db = database().await;
    write_batch(&db.pool, &batch(&[vehicle("V-1", t(10), 80.0, 1.0, 20.0)]))
        .await
        .unwrap();
    // Older, and equally old with other values: neither replaces the stored state.
    write_batch(&db.pool, &batch(&[vehicle("V-1", t(5), 10.0, 1.0, 20.0)]))
        .await
        .unwrap();
    write_batch(&db.pool, &batch(&[vehicle("V-1", t(10), 11.0, 1.0, 20.0)]))
        .await
        .unwrap();
    assert_eq!(current_soc(&db, "V-1").await, 80.0);
    // Several readings of one device in a batch collapse to the newest.
    write_batch(
        &db.pool,
        &batch(&[
            vehicle("V-1", t(12), 82.0, 1.0, 20.0),
            vehicle("V-1", t(14), 84.0, 1.0, 20.0),
            vehicle("V-1", t(13), 83.0, 1.0, 20.0),
        ]),
    )
    .await
    .unwrap();
    assert_eq!(current_soc(&db, "V-1").await, 84.0);
}

#[tokio::test]
async fn unusual_ids_and_extreme_values_round_trip_through_binary_copy() {
    let db = database().await;
    let ids = [
        "a\\N",
        "tab-free 'quote\"; DROP TABLE x;--",
        "électrique-🚗",
        "\u{200F}rtl",
        "e\u{0301}",
    ];
    let values: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            vehicle(
                id,
                t(i as i64) + TimeDelta::microseconds(123_456),
                100.0,
                0.0,
                -60.0,
            )
        })
        .collect();
    write_batch(&db.pool, &batch(&values)).await.unwrap();
    let stored: Vec<(String, DateTime<Utc>, f64, f64)> = sqlx::query_as(
        "SELECT vehicle_id, recorded_at, soc, battery_temp FROM vehicle_readings ORDER BY recorded_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let expected: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.to_string(),
                t(i as i64) + TimeDelta::microseconds(123_456),
                100.0,
                -60.0,
            )
        })
        .collect();
    assert_eq!(stored, expected);
}

#[tokio::test]
async fn a_large_batch_is_written_exactly() {
    let db = database().await;
    let values: Vec<_> = (0..20_000)
        .map(|i| {
            if i % 2 == 0 {
                vehicle(&format!("V-{}", i % 500), t(i / 500), 50.0, 0.5, 20.0)
            } else {
                meter(&format!("M-{}", i % 500), t(i / 500), 0.25, 230.0)
            }
        })
        .collect();
    let outcome = write_batch(&db.pool, &batch(&values)).await.unwrap();
    assert_eq!(
        (outcome.vehicle_rows, outcome.meter_rows, outcome.duplicates),
        (10_000, 10_000, 0)
    );
    let (n, dc): (i64, f64) =
        sqlx::query_as("SELECT count(*), sum(kwh_delivered_dc) FROM vehicle_readings")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((n, dc), (10_000, 5_000.0));
    assert_eq!(db.count("SELECT count(*) FROM vehicles_current").await, 250);
    assert_eq!(db.count("SELECT count(*) FROM meters_current").await, 250);
}

/// With PostgreSQL's messages in German, a row whose day has no partition is
/// still told apart from a row the database refuses: the data is fine, and
/// must be retried once the partition exists, never dead-lettered.
#[tokio::test]
async fn a_missing_partition_is_recognised_in_any_language() {
    let db = database().await;
    sqlx::query(&format!(
        "ALTER DATABASE {} SET lc_messages = 'de_DE.UTF-8'",
        db.name
    ))
    .execute(&db.pool)
    .await
    .unwrap();
    // New sessions take the database's setting.
    let german = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let division = sqlx::query("SELECT 1 / 0")
        .execute(&german)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        division.contains("Division durch Null"),
        "messages are not German ({division}): scripts/test.sh generates the de_DE.UTF-8 locale"
    );
    sqlx::query(&format!(
        "DROP TABLE vehicle_readings_p{}",
        t(0).format("%Y%m%d")
    ))
    .execute(&db.pool)
    .await
    .unwrap();

    let readings = batch(&[vehicle("V-1", t(1), 50.0, 1.0, 20.0)]);
    let error = write_batch(&german, &readings).await.unwrap_err();
    assert!(
        matches!(error, WriteError::MissingPartition(_)),
        "{error:?}"
    );
    // A refused row is still a data error, in German as in English.
    let refused = batch(&[vehicle("V-1", t(1), 50.0, 1.0, 20.0)]);
    sqlx::query(
        "ALTER TABLE vehicle_readings ADD CONSTRAINT no_v1 CHECK (vehicle_id <> 'V-1') NOT VALID",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    ensure_partitions(&db.pool, t(0).date_naive(), t(0).date_naive()).await;
    let error = write_batch(&german, &refused).await.unwrap_err();
    assert!(matches!(error, WriteError::Data(_)), "{error:?}");
}
