//! The analytics query never scans history sequentially: checked on tables
//! big enough (and analysed) that the planner would otherwise pick a scan.

use chrono::{DateTime, TimeDelta, Utc};
use query_api::performance::PERFORMANCE_SQL;
use serde_json::Value;
use test_support::postgres::fresh_database;

/// Collects (node type, relation) of every node of an EXPLAIN (FORMAT JSON) plan.
fn nodes(plan: &Value, out: &mut Vec<(String, String)>) {
    if let Some(object) = plan.as_object() {
        if let Some(node_type) = object.get("Node Type").and_then(Value::as_str) {
            let relation = object
                .get("Relation Name")
                .and_then(Value::as_str)
                .unwrap_or("");
            out.push((node_type.to_owned(), relation.to_owned()));
        }
        for value in object.values() {
            nodes(value, out);
        }
    } else if let Some(array) = plan.as_array() {
        for value in array {
            nodes(value, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_performance_query_uses_indexes_only() {
    let db = fresh_database().await;
    // 2,000 vehicles and meters × 150 minutes = 300,000 rows per history table.
    let origin: DateTime<Utc> = "2026-02-10T00:00:00Z".parse().unwrap();
    test_support::postgres::ensure_partitions(&db.pool, origin.date_naive(), origin.date_naive())
        .await;
    for sql in [
        "INSERT INTO vehicle_readings SELECT 'V-' || d, $1 + make_interval(mins => m), 50, 0.5, 20 FROM generate_series(1, 2000) d, generate_series(1, 150) m",
        "INSERT INTO meter_readings SELECT 'M-' || d, $1 + make_interval(mins => m), 0.6, 230 FROM generate_series(1, 2000) d, generate_series(1, 150) m",
        "INSERT INTO assignments SELECT 'V-' || d, $1, 'M-' || d FROM generate_series(1, 2000) d",
        "INSERT INTO assignments SELECT 'V-' || d, $1 + interval '1 hour', 'M-' || (d % 2000 + 1) FROM generate_series(1, 2000) d",
        "INSERT INTO vehicle_hourly SELECT vehicle_id, energy_hour_end(recorded_at), count(*), sum(kwh_delivered_dc), sum(battery_temp) FROM vehicle_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
        "INSERT INTO meter_hourly SELECT meter_id, energy_hour_end(recorded_at), count(*), sum(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage) FROM meter_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
    ] {
        sqlx::query(sql).bind(origin).execute(&db.pool).await.unwrap();
    }
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    for vehicle in ["V-7", "NO-SUCH-VEHICLE"] {
        let explain = format!("EXPLAIN (FORMAT JSON) {PERFORMANCE_SQL}");
        let plan: Value = sqlx::query_scalar(&explain)
            .bind(vehicle)
            .bind(origin + TimeDelta::minutes(30))
            .bind(origin + TimeDelta::minutes(120))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let mut found = Vec::new();
        nodes(&plan, &mut found);
        let history_scans: Vec<_> = found
            .iter()
            .filter(|(_, relation)| relation.ends_with("_readings") || relation == "assignments")
            .collect();
        assert!(
            !history_scans.is_empty(),
            "plan has no table access: {plan}"
        );
        for (node, relation) in &history_scans {
            assert!(
                node.contains("Index") || node == "Bitmap Heap Scan",
                "{relation} is read by a {node}, not an index: {plan:#}"
            );
        }
    }
}
