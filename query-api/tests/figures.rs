//! The per-vehicle figures (ingest-worker's `figures.rs`, query-api's
//! `figures.rs`) against the reference model: a random fleet is stored,
//! the worker's passes summarise it, and then it keeps changing through the
//! worker's write path (late and out-of-order readings inside buckets
//! already summarised, register devices whose late readings split an
//! interval, duplicates, assignments that arrive late and move a vehicle's
//! meter, meters taken by another vehicle). Every answer equals the
//! in-order replay: right after each change, before any pass (the marks
//! written with it send the answer to the raw pieces), and after the next
//! pass (the figures hold the change); so does the fleet view, which takes
//! from the figures the vehicles they answer and the others from the
//! pieces. The metrics show both paths ran, and the passes leave no mark
//! behind.

mod common;

use chrono::{TimeDelta, Utc};
use ingest_worker::figures::{self, Pass};
use serde_json::Value;
use test_support::postgres::fresh_database;
use test_support::readings::assignment;
use test_support::reference::Model;

use common::changing_fleet::{
    answers_counted, ask, ask_fleet, changes, fleet_vehicles_counted, hundred_minutes, store,
    VEHICLES,
};
use common::Api;

/// Passes at `now` until the figures are current.
async fn summarise(pool: &sqlx::PgPool, now: chrono::DateTime<Utc>) {
    for _ in 0..20 {
        match figures::pass(pool, now, TimeDelta::hours(5)).await.unwrap() {
            Pass::Done { current: true, .. } => return,
            Pass::Done { .. } => {}
            Pass::Busy => panic!("no other pass runs in this test"),
        }
    }
    panic!("the figures did not become current in 20 passes");
}

async fn marks_left(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM figure_marks")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_from_figures_equal_an_in_order_replay_while_the_data_changes() {
    let db = fresh_database().await;
    let seed = fastrand::u64(..);
    eprintln!("seed: {seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let now = Utc::now();
    let now = now - TimeDelta::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let origin = now - TimeDelta::hours(3);
    let width = TimeDelta::hours(2);
    // No answer is kept: each one is read from the figures or the pieces.
    let api = Api::start_with(common::args_with(
        &db,
        &["--auth-disabled", "--answer-cache-entries", "0"],
    ))
    .await;

    let mut sent: Vec<Value> = vec![
        assignment("EV-2", Some("MTR-2"), origin - TimeDelta::hours(1)),
        assignment("EV-3", Some("MTR-3"), origin - TimeDelta::hours(1)),
        // EV-1 moves to MTR-2 in the middle of a bucket: its figures hold
        // the change, and EV-2's lose MTR-2 from then on.
        assignment(
            "EV-1",
            Some("MTR-2"),
            origin + TimeDelta::seconds(47 * 60 + 150),
        ),
    ];
    let (minutes, mut held_back) = hundred_minutes(&mut rng, origin);
    sent.extend(minutes);
    store(&db.pool, &sent).await;
    summarise(&db.pool, now).await;

    let mut end = origin + TimeDelta::minutes(125);
    for round in 0..10 {
        let model = Model::new(&sent);
        for id in VEHICLES {
            ask(&api, &model, id, end - width, end, seed, round).await;
        }
        ask_fleet(&api, &model, end - width, end, seed, round).await;
        end += TimeDelta::seconds(rng.i64(5..40));
        let batch = changes(&mut rng, round, end, origin, &sent, &mut held_back);
        store(&db.pool, &batch).await;
        sent.extend(batch);
        let model = Model::new(&sent);
        // Before any pass: the change is marked, and answered exactly.
        for id in VEHICLES {
            ask(&api, &model, id, end - width, end, seed, round).await;
        }
        ask_fleet(&api, &model, end - width, end, seed, round).await;
        summarise(&db.pool, now).await;
        assert_eq!(marks_left(&db.pool).await, 0, "seed {seed}, round {round}");
        for id in VEHICLES {
            ask(&api, &model, id, end - width, end, seed, round).await;
        }
        ask_fleet(&api, &model, end - width, end, seed, round).await;
    }

    for outcome in ["figures", "computed"] {
        assert!(
            answers_counted(&api, outcome).await > 0.0,
            "seed {seed}: no answer was read from {outcome}"
        );
        assert!(
            fleet_vehicles_counted(&api, outcome).await > 0.0,
            "seed {seed}: no fleet vehicle was read from {outcome}"
        );
    }
    api.stop().await;
}
