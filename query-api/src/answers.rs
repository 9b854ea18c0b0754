//! Answers of the 24-hour performance endpoint kept between requests, and
//! the proof that one still holds.
//!
//! Computing a vehicle's window costs PostgreSQL a few dozen index probes;
//! checking that nothing it read has changed costs a few key lookups. An
//! answer for the window `(f0, t0]` is kept with
//!
//! - the **revisions** of the rows it read (see the migration
//!   `revisions`): the vehicle's, and for each meter that could count for
//!   it, the meter's and the meter's assignments'. The worker gives a
//!   device's row its transaction id whenever it stores a reading of it
//!   (late ones included) or an assignment naming it, in the batch's
//!   transaction. Equal revisions, read in one snapshot, mean the same rows.
//! - **`changes_at`**: a `t` no later than the first at which the
//!   same-width window `(t - width, t]` can hold other rows than `(f0, t0]`
//!   did: the first stored reading or assignment after `t0` (it enters),
//!   the first counted reading after `f0` plus the width (it leaves), or
//!   `t0` plus `QUERY_ANSWER_REUSE_MAX_MS`, whichever comes first. Where
//!   finding a reading exactly would cost a probe of its own, a bound read
//!   on the way is used instead (a raw edge's end when it holds no reading;
//!   no probe past `t0` for a device whose current state is not past it):
//!   earlier is never wrong, only computed again sooner.
//!
//! A request for `(f, t]` of the same width with `t0 <= t < changes_at`
//! whose revisions are unchanged gets the kept figures; anything else is
//! computed again and kept. A reading the worker commits changes a
//! revision, so the next answer includes it: the cache is exact, never
//! stale, and the revision check runs where the request's reads run
//! (primary or replica), so the answer is as fresh as that source.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Args;
use quick_cache::sync::Cache;
use sqlx::PgPool;

use crate::params::Window;

/// Settings of the answer cache.
#[derive(Args, Clone, Debug)]
pub struct AnswerCacheArgs {
    /// Performance answers kept between requests (one per vehicle and
    /// window width); 0 turns the cache off
    #[arg(long, env = "QUERY_ANSWER_CACHE_ENTRIES", default_value_t = 100_000)]
    pub answer_cache_entries: usize,

    /// Longest time, in milliseconds, a kept answer is served for a sliding
    /// window without being computed again (an answer is never served once
    /// its revisions changed)
    #[arg(long, env = "QUERY_ANSWER_REUSE_MAX_MS", default_value_t = 60_000)]
    pub answer_reuse_max_ms: u64,
}

/// What a kept answer depends on, as read in the snapshot that computed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revisions {
    /// The vehicle's current-state revision (None: no row).
    pub vehicle: Option<i64>,
    /// Meters that could count for the vehicle, in byte order.
    pub meters: Vec<String>,
    /// Their current-state revisions, -1 for none.
    pub meter_readings: Vec<i64>,
    /// Their assignment revisions, -1 for none.
    pub meter_assignments: Vec<i64>,
}

impl Revisions {
    /// The same revisions read now (one statement, one snapshot).
    pub async fn read_now(&self, pool: &PgPool, vehicle: &str) -> Result<Self, sqlx::Error> {
        let (vehicle_revision, meter_readings, meter_assignments): (Option<i64>, Vec<i64>, Vec<i64>) =
            sqlx::query_as(
                "SELECT (SELECT revision FROM vehicles_current WHERE vehicle_id = $1),
                        ARRAY(SELECT coalesce(c.revision, -1)
                                FROM unnest($2::text[]) WITH ORDINALITY m(meter_id, i)
                                LEFT JOIN meters_current c USING (meter_id) ORDER BY i),
                        ARRAY(SELECT coalesce(r.revision, -1)
                                FROM unnest($2::text[]) WITH ORDINALITY m(meter_id, i)
                                LEFT JOIN meter_assignment_revisions r USING (meter_id) ORDER BY i)",
            )
            .bind(vehicle)
            .bind(&self.meters)
            .fetch_one(pool)
            .await?;
        Ok(Self {
            vehicle: vehicle_revision,
            meters: self.meters.clone(),
            meter_readings,
            meter_assignments,
        })
    }
}

/// A kept answer: the figures `T` of the window `(from, to]`, valid for
/// same-width windows ending before `changes_at` while `revisions` hold.
#[derive(Clone, Debug)]
pub struct Kept<T> {
    pub to: DateTime<Utc>,
    pub changes_at: DateTime<Utc>,
    pub revisions: Revisions,
    pub figures: T,
}

impl<T> Kept<T> {
    /// Whether the window `(from, to]` can be answered by these figures if
    /// the revisions still hold.
    pub fn covers(&self, window: Window) -> bool {
        self.to <= window.to && window.to < self.changes_at
    }
}

type Key = (String, i64);

/// The kept answers, bounded in number (least recently used go first).
pub struct AnswerCache<T: Clone> {
    entries: Option<Cache<Key, Arc<Kept<T>>>>,
    /// How far past its window's end an answer may be reused.
    pub reuse_max: TimeDelta,
}

impl<T: Clone> AnswerCache<T> {
    pub fn new(args: &AnswerCacheArgs) -> Self {
        Self {
            entries: (args.answer_cache_entries > 0).then(|| Cache::new(args.answer_cache_entries)),
            reuse_max: TimeDelta::milliseconds(
                i64::try_from(args.answer_reuse_max_ms).unwrap_or(i64::MAX / 1_000_000),
            ),
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    fn key(vehicle: &str, window: Window) -> Key {
        (
            vehicle.to_owned(),
            (window.to - window.from)
                .num_microseconds()
                .unwrap_or(i64::MAX),
        )
    }

    /// The kept answer that may cover `window`, still to be checked against
    /// the revisions.
    pub fn candidate(&self, vehicle: &str, window: Window) -> Option<Arc<Kept<T>>> {
        let kept = self.entries.as_ref()?.get(&Self::key(vehicle, window))?;
        kept.covers(window).then_some(kept)
    }

    pub fn keep(&self, vehicle: &str, window: Window, kept: Kept<T>) {
        if let Some(entries) = &self.entries {
            entries.insert(Self::key(vehicle, window), Arc::new(kept));
        }
    }
}
