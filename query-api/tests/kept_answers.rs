//! The answer cache (`query_api::answers`) against the reference model: a
//! random fleet keeps changing through the worker's write path (new
//! readings, late and out-of-order ones landing inside hours already
//! summarised and already answered, duplicates, readings stamped ahead of
//! the window's end, register devices whose late readings split an
//! interval, assignments that arrive late and move a vehicle's meter, and
//! meters taken by another vehicle) while the same vehicles are asked
//! again and again for sliding windows, some of whose readings leave and
//! enter between two asks. Every answer equals the in-order replay
//! (`test_support::reference`), and the metrics show that answers were
//! kept, reused, and computed again when something changed.

mod common;

use chrono::TimeDelta;
use serde_json::Value;
use test_support::postgres::fresh_database;
use test_support::readings::assignment;
use test_support::reference::Model;

use common::changing_fleet::{
    answers_counted, ask, changes, hundred_minutes, seeded_now, store, VEHICLES,
};
use common::Api;

#[tokio::test(flavor = "multi_thread")]
async fn kept_answers_equal_an_in_order_replay_while_the_data_changes() {
    let db = fresh_database().await;
    let (seed, mut rng, now) = seeded_now();
    let origin = now - TimeDelta::hours(3);
    let width = TimeDelta::hours(2);
    let api = Api::start(&db).await;

    // Every device reports each minute of the first 100 minutes, some
    // minutes skipped, to be sent late below.
    let mut sent: Vec<Value> = vec![
        assignment("EV-2", Some("MTR-2"), origin - TimeDelta::hours(1)),
        assignment("EV-3", Some("MTR-3"), origin - TimeDelta::hours(1)),
    ];
    let (minutes, mut held_back) = hundred_minutes(&mut rng, origin);
    sent.extend(minutes);
    store(&db.pool, &sent).await;

    // Each round: some windows are asked twice (the second from the cache,
    // or computed again if a reading crossed an edge), then the data changes.
    let mut end = origin + TimeDelta::minutes(125);
    for round in 0..14 {
        let model = Model::new(&sent);
        for _ in 0..3 {
            for id in VEHICLES {
                ask(&api, &model, id, end - width, end, seed, round).await;
            }
            // Less than a minute: sometimes no reading crosses an edge.
            end += TimeDelta::seconds(rng.i64(5..40));
        }
        let batch = changes(&mut rng, round, end, origin, &sent, &mut held_back);
        store(&db.pool, &batch).await;
        sent.extend(batch);
    }
    let model = Model::new(&sent);
    for id in VEHICLES {
        ask(&api, &model, id, end - width, end, seed, 99).await;
    }

    // A meter taken by another vehicle, and nothing else written: only the
    // meter's assignment revision tells EV-1's kept answer that its span
    // with the meter ended. (Later than every assignment above.)
    for change in [
        assignment("EV-1", Some("MTR-3"), origin + TimeDelta::minutes(111)),
        assignment("EV-2", Some("MTR-3"), origin + TimeDelta::minutes(118)),
    ] {
        store(&db.pool, std::slice::from_ref(&change)).await;
        sent.push(change);
        let model = Model::new(&sent);
        ask(&api, &model, "EV-1", end - width, end, seed, 100).await;
        ask(&api, &model, "EV-1", end - width, end, seed, 100).await;
    }

    for outcome in ["computed", "kept", "changed"] {
        assert!(
            answers_counted(&api, outcome).await > 0.0,
            "seed {seed}: no answer was {outcome}"
        );
    }
    api.stop().await;
}
