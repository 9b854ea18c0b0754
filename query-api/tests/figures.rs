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

use chrono::{DateTime, TimeDelta, Utc};
use ingest_worker::figures::{self, Pass};
use serde_json::Value;
use test_support::postgres::fresh_database;
use test_support::readings::{assignment, meter, vehicle};
use test_support::reference::Model;

use common::changing_fleet::{
    answers_counted, ask, ask_fleet, changes, fleet_vehicles_counted, hundred_minutes, kwh,
    seeded_now, store, VEHICLES,
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
    let (seed, mut rng, now) = seeded_now();
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

/// Which way the last answer was read: the counters that moved since
/// `before` (outcome, count).
async fn outcomes_since(api: &Api, before: &[(&'static str, f64)]) -> Vec<&'static str> {
    let mut moved = Vec::new();
    for (outcome, count) in before {
        if answers_counted(api, outcome).await > *count {
            moved.push(*outcome);
        }
    }
    moved
}

async fn outcome_counts(api: &Api) -> Vec<(&'static str, f64)> {
    let mut counts = Vec::new();
    for outcome in ["figures", "figures_spans", "computed"] {
        counts.push((outcome, answers_counted(api, outcome).await));
    }
    counts
}

/// The meter of an answer's edges is read from the figures when the
/// edge's bucket has one meter throughout (or none) and no assignment
/// starts in the tail; otherwise the assignments are resolved. Each case is
/// answered exactly, by the path it should take.
#[tokio::test(flavor = "multi_thread")]
async fn the_edges_meter_is_read_from_the_figures_only_while_it_holds() {
    let db = fresh_database().await;
    let (seed, mut rng, now) = seeded_now();
    // Bucket-aligned, so that the minutes below name buckets.
    let origin = now - TimeDelta::hours(3);
    let origin = origin - TimeDelta::seconds(origin.timestamp().rem_euclid(300));
    let at = |minutes: i64, seconds: i64| {
        origin + TimeDelta::minutes(minutes) + TimeDelta::seconds(seconds)
    };
    let api = Api::start_with(common::args_with(
        &db,
        &["--auth-disabled", "--answer-cache-entries", "0"],
    ))
    .await;

    let mut sent = vec![
        assignment("EV-1", Some("MTR-1"), at(-60, 0)),
        // In the middle of the bucket (60, 65]: two meters count in it.
        assignment("EV-1", Some("MTR-2"), at(62, 30)),
        // EV-3 takes MTR-2 from EV-1 in the middle of (85, 90].
        assignment("EV-3", Some("MTR-2"), at(87, 30)),
        // EV-2 has no meter: its implicit one, "EV-2", does not count.
        assignment("EV-2", None, at(-60, 0)),
    ];
    for step in 0..200 {
        let when = at(0, 30 * step);
        for id in ["EV-1", "EV-2", "EV-3"] {
            sent.push(vehicle(id, when, 50.0, kwh(&mut rng), 30.0));
        }
        for id in ["MTR-1", "MTR-2", "EV-2"] {
            sent.push(meter(id, when, kwh(&mut rng), 230.0));
        }
    }
    store(&db.pool, &sent).await;
    summarise(&db.pool, now).await;
    let model = Model::new(&sent);

    let cases: [(&str, DateTime<Utc>, DateTime<Utc>, &str); 9] = [
        // Both edges' buckets have MTR-1 throughout.
        ("EV-1", at(10, 17), at(40, 17), "figures"),
        // The window starts at a reading's time: that reading (and the
        // meter's at the same time) is left out, the next one counts.
        ("EV-1", at(10, 30), at(40, 17), "figures"),
        // The head's bucket (60, 65] has two meters.
        ("EV-1", at(61, 7), at(80, 0), "figures_spans"),
        // EV-1's own assignment starts in the tail (60, 62:50].
        ("EV-1", at(20, 0), at(62, 50), "figures_spans"),
        // MTR-2, the tail's meter, is taken by EV-3 in the tail (85, 88:10].
        ("EV-1", at(66, 0), at(88, 10), "figures_spans"),
        // Before the tail: MTR-2 throughout (80, 85].
        ("EV-1", at(66, 0), at(85, 40), "figures"),
        // MTR-2 counts for EV-1 in only part of the head's bucket (85, 90]:
        // EV-3 takes it at 87:30, and EV-1 has no meter after that.
        ("EV-1", at(86, 40), at(99, 0), "figures_spans"),
        // No meter at all, at either edge.
        ("EV-2", at(10, 17), at(40, 17), "figures"),
        ("EV-1", at(90, 0), at(99, 0), "figures"),
    ];
    for (round, (id, from, to, path)) in cases.into_iter().enumerate() {
        let before = outcome_counts(&api).await;
        ask(&api, &model, id, from, to, seed, round).await;
        assert_eq!(
            outcomes_since(&api, &before).await,
            [path],
            "{id} ({from}, {to}]"
        );
    }
    api.stop().await;
}

/// The running totals stay exact while the range moves on for two and a
/// half days, an hour per step: buckets leave it, every vehicle's chain
/// starts again at the range's first bucket once it is more than a day old
/// (plus its spread, at most 255 buckets), a vehicle appears halfway (with
/// a late reading from before, alone in its chain), a vehicle moves to
/// another meter. Every answer and fleet view at the checkpoints equals the
/// replay; single-vehicle answers are read from the figures, except those
/// of windows they do not hold (starting before the range or the vehicle's
/// chain, ending over an hour after the last pass), which are computed.
#[tokio::test(flavor = "multi_thread")]
async fn running_totals_stay_exact_while_the_range_moves_on_for_days() {
    let db = fresh_database().await;
    let (seed, mut rng, now) = seeded_now();
    let hours = 60;
    let start = now - TimeDelta::hours(hours);
    let keep = TimeDelta::hours(3);
    let api = Api::start_with(common::args_with(
        &db,
        &["--auth-disabled", "--answer-cache-entries", "0"],
    ))
    .await;

    // Each hour's messages, stored just before that hour's passes, as they
    // would arrive.
    let mut hourly: Vec<Vec<Value>> = vec![Vec::new(); hours as usize + 1];
    hourly[0] = vec![
        assignment("EV-2", Some("MTR-2"), start - TimeDelta::hours(1)),
        assignment("EV-3", Some("MTR-3"), start - TimeDelta::hours(1)),
    ];
    // EV-1 leaves its implicit meter for MTR-3, whose vehicle has not
    // reported yet, and EV-3 takes it back when it comes.
    hourly[20].push(assignment(
        "EV-1",
        Some("MTR-3"),
        start + TimeDelta::hours(19),
    ));
    hourly[30].push(assignment(
        "EV-3",
        Some("MTR-3"),
        start + TimeDelta::hours(29),
    ));
    for step in 0..hours * 12 {
        let bucket = start + TimeDelta::minutes(5 * step);
        for is_vehicle in [true, false] {
            for index in 0..3 {
                if is_vehicle && index == 2 && step < 29 * 12 {
                    continue;
                }
                let at = bucket + TimeDelta::seconds(rng.i64(1..300));
                let hour = (step / 12 + 1) as usize;
                hourly[hour].push(common::changing_fleet::reading(
                    &mut rng, is_vehicle, index, at, start,
                ));
            }
        }
    }

    // A reading of EV-3 from before it reported, stored alone ahead of the
    // rest: its bucket gets a row of its own, with a gap after it.
    let lone = start + TimeDelta::hours(28) + TimeDelta::minutes(2);
    let lone_reading = vehicle("EV-3", lone, 50.0, 1.0, 30.0);

    let before = outcome_counts(&api).await;
    let (mut sent, mut from_figures, mut computed) = (Vec::new(), 0.0, 0.0);
    for (hour, messages) in hourly.into_iter().enumerate() {
        if hour == 30 {
            store(&db.pool, std::slice::from_ref(&lone_reading)).await;
            sent.push(lone_reading.clone());
        }
        store(&db.pool, &messages).await;
        sent.extend(messages);
        let at = start + TimeDelta::hours(hour as i64);
        if hour < 4 {
            continue;
        }
        for _ in 0..20 {
            match figures::pass(&db.pool, at, keep).await.unwrap() {
                Pass::Done { current: true, .. } => break,
                Pass::Done { .. } => {}
                Pass::Busy => panic!("no other pass runs in this test"),
            }
        }
        if hour % 6 != 0 {
            continue;
        }
        let model = Model::new(&sent);
        let to = at - TimeDelta::seconds(150);
        let from = to - TimeDelta::hours(2) - TimeDelta::seconds(rng.i64(0..600));
        for id in VEHICLES {
            ask(&api, &model, id, from, to, seed, hour).await;
            // EV-3 has figures from the pass after it first reported (in
            // its 30th hour) on; windows starting before are computed.
            if id != "EV-3" || hour > 30 {
                from_figures += 1.0;
            } else {
                computed += 1.0;
            }
        }
        ask_fleet(&api, &model, from, to, seed, hour).await;
        if hour == 30 {
            // Its head is the lone row, its tail of another chain: the
            // figures do not hold the window between them.
            ask(
                &api,
                &model,
                "EV-3",
                lone - TimeDelta::minutes(1),
                to,
                seed,
                hour,
            )
            .await;
            computed += 1.0;
        }
        // Windows the figures cannot answer, each vehicle and the fleet
        // computed from the pieces: one starting before the range kept,
        // one ending more than an hour after the last pass (still in the
        // past: the test's hours end now).
        let mut unheld = vec![(at - TimeDelta::hours(5), to)];
        if at + TimeDelta::minutes(90) < now {
            unheld.push((at - TimeDelta::hours(1), at + TimeDelta::minutes(90)));
        }
        for (from, to) in unheld {
            for id in VEHICLES {
                ask(&api, &model, id, from, to, seed, hour).await;
                computed += 1.0;
            }
            ask_fleet(&api, &model, from, to, seed, hour).await;
        }
    }
    let after = outcome_counts(&api).await;
    let moved = |outcome| {
        let count = |counts: &[(&str, f64)]| {
            counts
                .iter()
                .find(|(name, _)| *name == outcome)
                .map_or(0.0, |(_, count)| *count)
        };
        count(&after) - count(&before)
    };
    assert_eq!(
        moved("figures") + moved("figures_spans"),
        from_figures,
        "seed {seed}: answers read from the figures (computed: {})",
        moved("computed")
    );
    assert_eq!(moved("computed"), computed, "seed {seed}: answers computed");

    // Each vehicle's chain started again since the first pass (its first
    // bucket about an hour after `start`), or (EV-3) began when it came.
    let chains: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT vehicle_id, min(chain_from) FROM vehicle_figures GROUP BY vehicle_id ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let firsts: Vec<&str> = chains.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(firsts, VEHICLES, "seed {seed}");
    for (id, chain_from) in &chains {
        assert!(
            *chain_from > start + TimeDelta::hours(2),
            "seed {seed}: {id}'s chain from {chain_from} never started again"
        );
    }
    api.stop().await;
}
