//! The analytics queries read history only through indexes, and only the
//! partitions their window touches: checked on analysed tables big enough
//! that the planner would otherwise prefer scans, with EXPLAIN ANALYZE
//! (partitions pruned at plan time are absent; pruned at run time, never
//! executed).

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use query_api::fleet::FLEET_SQL;
use query_api::meters::METER_STATS_SQL;
use query_api::performance::PERFORMANCE_SQL;
use query_api::series::SERIES_SQL;
use serde_json::Value;
use test_support::postgres::{ensure_partitions, fresh_database};

/// (node type, relation, loops executed) of every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan.
fn nodes(plan: &Value, out: &mut Vec<(String, String, f64)>) {
    if let Some(object) = plan.as_object() {
        if let Some(node_type) = object.get("Node Type").and_then(Value::as_str) {
            let relation = object
                .get("Relation Name")
                .and_then(Value::as_str)
                .unwrap_or("");
            let loops = object
                .get("Actual Loops")
                .and_then(Value::as_f64)
                .unwrap_or(0.0);
            out.push((node_type.to_owned(), relation.to_owned(), loops));
        }
        object.values().for_each(|value| nodes(value, out));
    } else if let Some(array) = plan.as_array() {
        array.iter().for_each(|value| nodes(value, out));
    }
}

const HISTORY: [&str; 4] = [
    "vehicle_readings",
    "meter_readings",
    "vehicle_hourly",
    "meter_hourly",
];

#[tokio::test(flavor = "multi_thread")]
async fn the_analytics_queries_use_indexes_and_prune_partitions() {
    let db = fresh_database().await;
    // Four days, 2,000 vehicles and meters reporting every 10 minutes:
    // 1.15 million rows per history table, in four day partitions.
    let first_day: DateTime<Utc> = "2026-02-08T00:00:00Z".parse().unwrap();
    ensure_partitions(
        &db.pool,
        first_day.date_naive(),
        (first_day + TimeDelta::days(3)).date_naive(),
    )
    .await;
    for sql in [
        "INSERT INTO vehicle_readings SELECT 'V-' || d, $1 + make_interval(mins => m * 10), 50, 0.5, 20 FROM generate_series(1, 2000) d, generate_series(1, 575) m",
        "INSERT INTO meter_readings SELECT 'M-' || d, $1 + make_interval(mins => m * 10), 0.6, 230 FROM generate_series(1, 2000) d, generate_series(1, 575) m",
        "INSERT INTO assignments SELECT 'V-' || d, $1, 'M-' || d FROM generate_series(1, 2000) d",
        "INSERT INTO assignments SELECT 'V-' || d, $1 + interval '2 days 13 hours 20 minutes', 'M-' || (d % 2000 + 1) FROM generate_series(1, 2000) d",
        "INSERT INTO vehicle_hourly SELECT vehicle_id, energy_hour_end(recorded_at), count(*), sum(kwh_delivered_dc), sum(battery_temp) FROM vehicle_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
        "INSERT INTO meter_hourly SELECT meter_id, energy_hour_end(recorded_at), count(*), sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage) FROM meter_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
    ] {
        sqlx::query(sql).bind(first_day).execute(&db.pool).await.unwrap();
    }
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    // A window inside 2026-02-10, starting and ending mid-hour, with a reassignment in it.
    let from = first_day + TimeDelta::days(2) + TimeDelta::minutes(10 * 60 + 17);
    let to = first_day + TimeDelta::days(2) + TimeDelta::minutes(20 * 60 + 43);
    // Only the window's day (raw) and month (rollups) may be read.
    let allowed: BTreeSet<String> = [
        "vehicle_readings_p20260210",
        "meter_readings_p20260210",
        "vehicle_hourly_p202602",
        "meter_hourly_p202602",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let hour = TimeDelta::hours(1);
    let queries: Vec<(&str, &str, Vec<Bind>)> = vec![
        (
            "performance V-7",
            PERFORMANCE_SQL,
            vec![Bind::Text("V-7"), Bind::At(from), Bind::At(to)],
        ),
        (
            "performance of an unknown vehicle",
            PERFORMANCE_SQL,
            vec![Bind::Text("NO-SUCH"), Bind::At(from), Bind::At(to)],
        ),
        (
            "hourly series",
            SERIES_SQL,
            vec![
                Bind::Text("V-7"),
                Bind::At(from),
                Bind::At(to),
                Bind::Interval(hour),
                Bind::Flag(true),
            ],
        ),
        (
            "meter statistics",
            METER_STATS_SQL,
            vec![Bind::Text("M-7"), Bind::At(from), Bind::At(to)],
        ),
        ("fleet", FLEET_SQL, vec![Bind::At(from), Bind::At(to)]),
    ];
    for (name, sql, binds) in queries {
        let explain = format!("EXPLAIN (ANALYZE, FORMAT JSON) {sql}");
        let mut query = sqlx::query_scalar::<_, Value>(&explain);
        for bind in binds {
            query = match bind {
                Bind::Text(text) => query.bind(text),
                Bind::At(at) => query.bind(at),
                Bind::Interval(interval) => query.bind(interval),
                Bind::Flag(flag) => query.bind(flag),
            };
        }
        let plan = query.fetch_one(&db.pool).await.unwrap();
        let mut found = Vec::new();
        nodes(&plan, &mut found);
        let mut touched = BTreeSet::new();
        for (node, relation, loops) in &found {
            let is_history = HISTORY.iter().any(|table| relation.starts_with(table));
            // Nodes of partitions pruned at run time never execute: their plan shape is moot.
            if (is_history || relation == "assignments") && *loops > 0.0 {
                assert!(
                    node.contains("Index") || node == "Bitmap Heap Scan",
                    "{name}: {relation} is read by a {node}, not through an index: {plan:#}"
                );
            }
            if is_history && *loops > 0.0 {
                touched.insert(relation.clone());
            }
        }
        assert!(
            touched.is_subset(&allowed),
            "{name}: read {touched:?}; plan {plan:#}"
        );
        if name != "performance of an unknown vehicle" {
            assert!(
                !touched.is_empty(),
                "{name}: read no history at all: {plan:#}"
            );
        }
    }
}

enum Bind {
    Text(&'static str),
    At(DateTime<Utc>),
    Interval(TimeDelta),
    Flag(bool),
}
