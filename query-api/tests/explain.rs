//! The analytics queries read history only through indexes, and only the
//! partitions their window touches: checked on analysed tables big enough
//! that the planner would otherwise prefer scans, with EXPLAIN ANALYZE
//! (partitions pruned at plan time are absent; pruned at run time, never
//! executed); and their plans do not wait for statistics.
//!
//! Distribution by device (ARCHITECTURE.md, "Beyond one machine"): every
//! statement but the fleet view reads each device-keyed table (history,
//! rollups, current state) only by one device's key, so on a database
//! sharded by device each of its reads is a single-shard lookup, and only
//! `assignments`, a reference table, is read across devices.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use query_api::sql::Sources;
use query_api::{devices, figures, fleet, meters, performance, series};
use serde_json::Value;
use test_support::postgres::{ensure_partitions, fresh_database};

/// One node of an EXPLAIN (ANALYZE, FORMAT JSON) plan.
struct Node {
    node_type: String,
    relation: String,
    loops: f64,
    /// The index condition (or a bitmap heap scan's recheck condition).
    key: String,
}

/// Every node of an EXPLAIN (ANALYZE, FORMAT JSON) plan.
fn nodes(plan: &Value, out: &mut Vec<Node>) {
    if let Some(object) = plan.as_object() {
        if let Some(node_type) = object.get("Node Type").and_then(Value::as_str) {
            let field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or("");
            out.push(Node {
                node_type: node_type.to_owned(),
                relation: field("Relation Name").to_owned(),
                loops: object
                    .get("Actual Loops")
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0),
                key: format!("{}{}", field("Index Cond"), field("Recheck Cond")),
            });
        }
        object.values().for_each(|value| nodes(value, out));
    } else if let Some(array) = plan.as_array() {
        array.iter().for_each(|value| nodes(value, out));
    }
}

/// Tables a distributed PostgreSQL would shard by device, and their key.
const DEVICE_KEYED: [(&str, &str); 8] = [
    ("vehicle_readings", "vehicle_id"),
    ("meter_readings", "meter_id"),
    ("vehicle_5min", "vehicle_id"),
    ("meter_5min", "meter_id"),
    ("vehicle_hourly", "vehicle_id"),
    ("meter_hourly", "meter_id"),
    ("vehicles_current", "vehicle_id"),
    ("meters_current", "meter_id"),
];

/// Whether `node` reads a device-keyed table other than by one device's
/// key (an equality on its device column, to a parameter or to a column of
/// the reference table `assignments`).
fn reads_across_devices(node: &Node) -> bool {
    DEVICE_KEYED.iter().any(|(table, column)| {
        node.relation.starts_with(table) && !node.key.contains(&format!("{column} = "))
    })
}

const HISTORY: [&str; 6] = [
    "vehicle_readings",
    "meter_readings",
    "vehicle_5min",
    "meter_5min",
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
        "INSERT INTO vehicle_5min SELECT vehicle_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_delivered_dc), sum(battery_temp) FROM vehicle_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
        "INSERT INTO meter_5min SELECT meter_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), max(voltage) FROM meter_readings WHERE $1 IS NOT NULL GROUP BY 1, 2",
    ] {
        sqlx::query(sql).bind(first_day).execute(&db.pool).await.unwrap();
    }
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();

    // A window inside 2026-02-10, starting and ending mid-hour, with a reassignment in it.
    let from = first_day + TimeDelta::days(2) + TimeDelta::minutes(10 * 60 + 17);
    let to = first_day + TimeDelta::days(2) + TimeDelta::minutes(20 * 60 + 43);
    // Only the window's day (raw, five-minute) and month (hourly) may be read.
    let allowed: BTreeSet<String> = [
        "vehicle_readings_p20260210",
        "meter_readings_p20260210",
        "vehicle_5min_p20260210",
        "meter_5min_p20260210",
        "vehicle_hourly_p202602",
        "meter_hourly_p202602",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let hour = TimeDelta::hours(1);
    // Each query with the window's partitions named, as query-api sends
    // it, and on the partitioned tables, its fallback.
    let mut queries: Vec<(String, String, Vec<Bind>)> = Vec::new();
    for (sources, how) in [
        (Sources::for_window(from, to), "named"),
        (Sources::parents(), "parents"),
    ] {
        let named = |what: &str| format!("{what} ({how})");
        queries.extend([
            (
                named("performance V-7"),
                performance::sql(&sources),
                vec![Bind::Text("V-7"), Bind::At(from), Bind::At(to)],
            ),
            (
                named("performance of an unknown vehicle"),
                performance::sql(&sources),
                vec![Bind::Text("NO-SUCH"), Bind::At(from), Bind::At(to)],
            ),
            (
                named("hourly series"),
                series::sql(&sources),
                vec![
                    Bind::Text("V-7"),
                    Bind::At(from),
                    Bind::At(to),
                    Bind::Interval(hour),
                    Bind::Flag(true),
                ],
            ),
            (
                named("meter statistics"),
                meters::sql(&sources),
                vec![Bind::Text("M-7"), Bind::At(from), Bind::At(to)],
            ),
            (
                named("fleet"),
                fleet::sql(&sources),
                vec![Bind::At(from), Bind::At(to)],
            ),
        ]);
    }
    for (name, sql) in [
        ("vehicle state (named)", devices::VEHICLE_STATE_SQL),
        ("meter state (named)", devices::METER_STATE_SQL),
    ] {
        let device = if name.starts_with("vehicle") {
            "V-7"
        } else {
            "M-7"
        };
        queries.push((name.to_owned(), sql.to_owned(), vec![Bind::Text(device)]));
    }
    sqlx::query(
        "INSERT INTO vehicles_current (vehicle_id, soc, kwh_delivered_dc, battery_temp, recorded_at)
         SELECT 'V-' || d, 50, 0.5, 20, $1 FROM generate_series(1, 2000) d",
    )
    .bind(first_day)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO meters_current (meter_id, kwh_consumed_ac, voltage, recorded_at)
         SELECT 'M-' || d, 0.6, 230, $1 FROM generate_series(1, 2000) d",
    )
    .bind(first_day)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE vehicles_current, meters_current")
        .execute(&db.pool)
        .await
        .unwrap();
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
        let as_sent = name.ends_with("(named)");
        let across: Vec<&Node> = found
            .iter()
            .filter(|node| node.loops > 0.0 && reads_across_devices(node))
            .collect();
        if as_sent && name.starts_with("fleet") {
            // The one statement over every device: the check sees it.
            assert!(!across.is_empty(), "{name}: keyed by device? {plan:#}");
        } else if as_sent {
            assert!(
                across.is_empty(),
                "{name}: reads {:?} across devices: {plan:#}",
                across.iter().map(|n| &n.relation).collect::<Vec<_>>()
            );
        }
        let mut touched = BTreeSet::new();
        for Node {
            node_type: node,
            relation,
            loops,
            ..
        } in &found
        {
            let is_history = HISTORY.iter().any(|table| relation.starts_with(table));
            // Nodes of partitions pruned at run time never execute: their
            // plan shape is moot. Only the queries as query-api sends them
            // (partitions named) must read through indexes; the fallback on
            // the partitioned tables must still read only the window's.
            if as_sent && (is_history || relation == "assignments") && *loops > 0.0 {
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
        if !name.starts_with("performance of an unknown vehicle") && !name.contains("state") {
            assert!(
                !touched.is_empty(),
                "{name}: read no history at all: {plan:#}"
            );
        }
    }
}

#[derive(Clone, Copy)]
enum Bind {
    Text(&'static str),
    At(DateTime<Utc>),
    Interval(TimeDelta),
    Flag(bool),
}

impl Bind {
    /// Its SQL type, as a prepared statement declares it.
    fn type_name(&self) -> &'static str {
        match self {
            Bind::Text(_) => "text",
            Bind::At(_) => "timestamptz",
            Bind::Interval(_) => "interval",
            Bind::Flag(_) => "boolean",
        }
    }

    /// The value as an SQL literal of its type.
    fn literal(&self) -> String {
        match self {
            Bind::Text(text) => format!("'{}'", text.replace('\'', "''")),
            Bind::At(at) => format!("'{}'::timestamptz", at.to_rfc3339()),
            Bind::Interval(interval) => format!(
                "'{} microseconds'::interval",
                interval.num_microseconds().unwrap_or(0)
            ),
            Bind::Flag(flag) => flag.to_string(),
        }
    }
}

/// The shape of a plan, in plan order: every scan, its type and what it
/// reads (`Seq Scan on …`, `Index Only Scan using …`, `Index Scan using
/// …`), and every join's method (`Nested Loop`, `Hash Join`, `Merge
/// Join`): scan types and join order. A bitmap scan counts as an index
/// scan of its index: both read the same rows of the heap through the same
/// key, the bitmap visiting them in page order, and the planner trades one
/// for the other on near-equal costs (seen: the pieces statement's raw
/// edge in yesterday's partition, before and after ANALYZE).
fn shape(plan: &Value, out: &mut Vec<String>) {
    if let Some(object) = plan.as_object() {
        let field = |name: &str| object.get(name).and_then(Value::as_str).unwrap_or("");
        let node = field("Node Type");
        match node {
            "Seq Scan" => out.push(format!("Seq Scan on {}", field("Relation Name"))),
            "Index Only Scan" => out.push(format!("{node} using {}", field("Index Name"))),
            "Index Scan" | "Bitmap Index Scan" => {
                out.push(format!("Index Scan using {}", field("Index Name")))
            }
            "Nested Loop" | "Hash Join" | "Merge Join" => out.push(node.to_owned()),
            _ => {}
        }
        if let Some(plans) = object.get("Plans") {
            shape(plans, out);
        }
        if let Some(root) = object.get("Plan") {
            shape(root, out);
        }
    } else if let Some(array) = plan.as_array() {
        array.iter().for_each(|value| shape(value, out));
    }
}

/// Right after an ingest through the worker's write path, before any
/// statistics exist for the new rows, the endpoints' plans already have the
/// shape they have after a manual ANALYZE: the queries name only their
/// window's partitions and read them by key, so no plan hangs on
/// statistics PostgreSQL would only gather later (autovacuum never analyses
/// a partitioned parent at all). So do the statements over the worker's
/// per-vehicle figures, right after its first catch-up: the figures are
/// analysed after a catch-up that wrote as many rows as their statistics
/// counted, the marks and ranges by their migration. Each statement's
/// plan for the values bound and its generic plan are compared.
/// (The fleet view over the figures is not compared: on 300 vehicles its
/// meters' edges are read by key or by time on a near tie of costs, which
/// two samples of the same rows can tip either way.)
#[tokio::test(flavor = "multi_thread")]
async fn plans_right_after_an_ingest_have_the_shape_they_have_after_analyze() {
    let db = fresh_database().await;
    let end = Utc::now() - TimeDelta::minutes(1);
    let end = end - TimeDelta::nanoseconds(i64::from(end.timestamp_subsec_nanos()));
    let mut readings = Vec::new();
    for device in 0..300 {
        let id = format!("P-{device}");
        // A history of assignments, as a fleet accumulates: a meter a week.
        for week in (1..=40).rev() {
            readings.push(test_support::readings::decode(
                &test_support::readings::assignment(
                    &id,
                    Some(&format!("PM-{device}")),
                    end - TimeDelta::hours(30) - TimeDelta::weeks(week - 1),
                ),
            ));
        }
        for minute in 0..(26 * 60) {
            let at = end - TimeDelta::minutes(minute);
            readings.push(test_support::readings::decode(
                &test_support::readings::vehicle(&id, at, 50.0, 0.5, 20.0),
            ));
            readings.push(test_support::readings::decode(
                &test_support::readings::meter(&format!("PM-{device}"), at, 0.6, 230.0),
            ));
        }
    }
    let batches: Vec<_> = readings.chunks(50_000).collect();
    for (i, batch) in batches.iter().enumerate() {
        ingest_worker::store::write_batch(&db.pool, *batch)
            .await
            .unwrap();
        // Autovacuum may analyse any table on its first rows, and come back
        // only minutes later: done here after the first batch (seen in a
        // full test run: statistics of `assignments` so taken made the
        // spans statement join a whole day of meter readings by hash, until
        // the worker kept the fleet's tables' statistics up as well).
        if i == 0 {
            sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
        }
    }
    // The write path kept the statistics of the partitions it filled and
    // of the fleet's tables counting at least about half their rows (it
    // analyses a table each time it doubles).
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_class
         WHERE relkind = 'r' AND (relname LIKE '%\\_p2%' OR relname IN
               ('assignments', 'vehicles_current', 'meters_current', 'meter_assignment_revisions'))",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for table in tables {
        let (rows, counted): (i64, f32) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {table}), reltuples FROM pg_class WHERE relname = '{table}'"
        ))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert!(
            rows == 0 || f64::from(counted) >= 0.4 * rows as f64,
            "{table}: statistics count {counted} rows of {rows}"
        );
    }
    // The worker's per-vehicle figures, as its upkeep writes them (fewer
    // buckets than its catch-up analyses the table after).
    let written = ingest_worker::figures::catch_up(&db.pool, Utc::now(), TimeDelta::hours(26))
        .await
        .unwrap();
    assert_eq!(
        written,
        300 * 26 * 12,
        "every vehicle's buckets of 26 hours"
    );
    // ...and left the figures' statistics counting them, even when
    // autovacuum analysed the table on its first rows part way through.
    let counted: f32 = sqlx::query_scalar(
        "SELECT reltuples FROM pg_class WHERE oid = 'vehicle_figures'::regclass",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(
        f64::from(counted) >= 0.9 * written as f64,
        "the figures' statistics count {counted} rows of {written}"
    );

    let (from, to) = (end - TimeDelta::hours(24), end);
    let sources = Sources::for_window(from, to);
    let tail = Sources::for_window(to - TimeDelta::hours(1), to);
    let hour = TimeDelta::hours(1);
    let queries: Vec<(&str, String, Vec<Bind>)> = vec![
        (
            "performance",
            performance::sql(&sources),
            vec![Bind::Text("P-7"), Bind::At(from), Bind::At(to)],
        ),
        (
            "performance from the figures",
            figures::sql(&tail),
            vec![Bind::Text("P-7"), Bind::At(from), Bind::At(to)],
        ),
        (
            "performance from the figures, the edges' meters from the spans",
            figures::spans_sql(&sources),
            vec![Bind::Text("P-7"), Bind::At(from), Bind::At(to)],
        ),
        (
            "hourly series",
            series::sql(&sources),
            vec![
                Bind::Text("P-7"),
                Bind::At(from),
                Bind::At(to),
                Bind::Interval(hour),
                Bind::Flag(true),
            ],
        ),
        (
            "meter statistics",
            meters::sql(&sources),
            vec![Bind::Text("PM-7"), Bind::At(from), Bind::At(to)],
        ),
        (
            "fleet",
            fleet::sql(&sources),
            vec![Bind::At(from), Bind::At(to)],
        ),
    ];
    // Each statement's plan for the values bound (as PostgreSQL plans its
    // first executions) and its generic plan (which query-api's prepared
    // statements may switch to after five).
    let plans = |analysed: &'static str| {
        let pool = db.pool.clone();
        let queries = &queries;
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let mut shapes = Vec::new();
            for (name, sql, binds) in queries {
                for generic in [false, true] {
                    let (name, explain) = if generic {
                        let types: Vec<&str> = binds.iter().map(Bind::type_name).collect();
                        sqlx::raw_sql(&format!(
                            "SET plan_cache_mode = force_generic_plan;
                             PREPARE shaped ({}) AS {sql}",
                            types.join(", ")
                        ))
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                        // EXECUTE's values are literals: it takes no parameters.
                        let values: Vec<String> = binds.iter().map(Bind::literal).collect();
                        (
                            format!("{name}, generic plan"),
                            format!(
                                "EXPLAIN (FORMAT JSON) EXECUTE shaped ({})",
                                values.join(", ")
                            ),
                        )
                    } else {
                        (name.to_string(), format!("EXPLAIN (FORMAT JSON) {sql}"))
                    };
                    let mut query = sqlx::query_scalar::<_, Value>(&explain);
                    for bind in binds.iter().filter(|_| !generic) {
                        query = match bind {
                            Bind::Text(text) => query.bind(*text),
                            Bind::At(at) => query.bind(*at),
                            Bind::Interval(interval) => query.bind(*interval),
                            Bind::Flag(flag) => query.bind(*flag),
                        };
                    }
                    let plan = query.fetch_one(&mut *conn).await.unwrap();
                    if generic {
                        sqlx::raw_sql("DEALLOCATE shaped; RESET plan_cache_mode")
                            .execute(&mut *conn)
                            .await
                            .unwrap();
                    }
                    let mut nodes = Vec::new();
                    shape(&plan, &mut nodes);
                    eprintln!("{name} ({analysed}): {nodes:?}");
                    shapes.push((name, nodes));
                }
            }
            shapes
        }
    };
    let fresh = plans("right after the ingest").await;
    sqlx::query("ANALYZE").execute(&db.pool).await.unwrap();
    let analysed = plans("after ANALYZE").await;
    for ((name, before), (_, after)) in fresh.iter().zip(&analysed) {
        assert_eq!(
            before, after,
            "{name}: the plan changed shape after ANALYZE"
        );
        // One vehicle's answer from the figures reads every relation by
        // key, but the marks: empty while nothing is late, and scanned
        // whole then (autovacuum analyses them again as they grow).
        if name.starts_with("performance from the figures") {
            assert!(
                after
                    .iter()
                    .filter(|node| node.starts_with("Seq Scan on "))
                    .all(|scan| scan == "Seq Scan on figure_marks"),
                "{name}: {after:?}"
            );
        }
    }
}

/// Every SQL function of the schema's time grid (`energy_*_start`,
/// `energy_*_end`) is inlined into the statement calling it. One that is
/// not runs through PostgreSQL's SQL-function executor on every call: per
/// row in the worker's rollups, per cut point in the analytics queries,
/// which cost the 24-hour answer almost half its time (BENCHMARKS.md). A
/// SQL function is inlined only while its body is no more volatile than its
/// declaration, so an `IMMUTABLE` over `timestamptz - interval` (`STABLE`)
/// silently is not.
#[tokio::test(flavor = "multi_thread")]
async fn the_time_grid_functions_are_inlined() {
    let db = fresh_database().await;
    let functions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT p.proname::text, p.pronargs::bigint FROM pg_proc p
         JOIN pg_language l ON l.oid = p.prolang
         WHERE l.lanname = 'sql' AND p.pronamespace = 'public'::regnamespace
           AND p.proname ~ '^energy_.*_(start|end)$'
         ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let names: Vec<&str> = functions.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "energy_bucket_end",
            "energy_bucket_start",
            "energy_hour_end",
            "energy_hour_start"
        ]
    );
    for (name, arguments) in functions {
        let call = match arguments {
            1 => format!("{name}(recorded_at)"),
            _ => format!("{name}(recorded_at, interval '5 minutes')"),
        };
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (VERBOSE) SELECT {call} FROM vehicle_readings WHERE vehicle_id = $1"
        ))
        .bind("V-1")
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("date_bin") && !plan.contains(&name),
            "{name} is not inlined:\n{plan}"
        );
    }
}
