//! Interval energy of register readings, derived as a batch is stored and
//! kept exact whatever order readings arrive in. The rule for one interval
//! is [`shared::register`]; this module decides which readings it applies
//! to and keeps history, rollups and current state in step.
//!
//! The energy of a register reading depends on the device's previous reading
//! in event time, which may be stored already, be in the same batch, or
//! arrive later. Within the batch's transaction ([`crate::store`]):
//!
//! 1. The current-state upsert runs first. It locks every device of the
//!    batch until commit (in byte order, so transactions cannot deadlock),
//!    so two transactions holding readings of one device (the device was
//!    published to two partitions) derive it one after the other, the
//!    second seeing the first's readings. For devices that report
//!    registers and moved forward it returns the reading they moved from.
//! 2. [`plan`]: a device whose batch readings are all newer than that
//!    reading (the common case: devices report in order) is derived here in
//!    Rust, from it: the readings are written with their final energy and
//!    rolled up like interval readings, and no history is read.
//! 3. Any other device that reports registers (a late or duplicate reading,
//!    a late interval reading between two register readings) is written with
//!    NaN energy and derived by [`Plan::finish`] after the insert: its
//!    readings are read back from the stored reading before the batch's
//!    earliest to the one after its latest, every register reading from the
//!    earliest on is derived again, the rows whose energy or jump flag
//!    changed are updated, and every rollup bucket (both levels) holding a
//!    changed row is recomputed from the raw readings. Each interval depends
//!    on its two ends only, so nothing outside that span can change.
//!
//! Current state then gets the newest reading's energy and the device's
//! jump count.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use shared::domain::{DeviceId, EventTime};
use shared::register::{Derived, Previous, RegisterRules};
use sqlx::PgConnection;

use crate::rollup::bucket_end;
use crate::stream::{HistoryRow, Stream, StreamReading};

/// Devices of a batch that report registers and moved forward, by id, with
/// the reading they moved from (`None`: the device is new).
pub type Moved = HashMap<String, Option<Previous>>;

/// How the register devices of one stream's batch are derived.
pub struct Plan<'a> {
    rules: RegisterRules,
    /// Energies of register readings newer than all their device's stored
    /// readings, derived before the insert.
    derived: HashMap<(&'a DeviceId, EventTime), Derived>,
    /// Devices derived after the insert, with their batch readings' earliest
    /// and latest event times.
    late: BTreeMap<&'a DeviceId, (EventTime, EventTime)>,
    /// What current state of the in-order devices needs.
    in_order: Vec<CurrentFix<'a>>,
    /// Devices with a register reading in the batch.
    with_registers: HashSet<&'a DeviceId>,
}

/// The current-state correction of one device.
struct CurrentFix<'a> {
    device: &'a DeviceId,
    /// The newest reading's derived energy; `None`: the upsert wrote it
    /// (an interval reading's), or read it back from history (late devices).
    energy: Option<f64>,
    jumps: i64,
    last_jump_at: Option<DateTime<Utc>>,
    /// A flag was lifted: the newest flagged reading is looked up again.
    recount_last_jump: bool,
}

/// One stored reading of a late device's span.
struct SpanRow {
    recorded_at: EventTime,
    register: Option<f64>,
    energy: f64,
    register_jump: bool,
}

/// A span row as read: device, event time, register, energy, jump flag.
type SpanRecord = (String, DateTime<Utc>, Option<f64>, f64, bool);

/// A stored reading whose derivation changed.
struct Change {
    device: String,
    recorded_at: EventTime,
    energy: f64,
    register_jump: bool,
    was_jump: bool,
}

/// Which devices of `rows` report registers and how each is derived; the
/// energies of in-order devices are derived here.
pub async fn plan<'a, R: StreamReading>(
    conn: &mut PgConnection,
    rules: RegisterRules,
    rows: &[&'a R],
    moved: &Moved,
) -> Result<Plan<'a>, sqlx::Error> {
    let with_registers: HashSet<&DeviceId> = rows
        .iter()
        .filter(|row| row.energy().register().is_some())
        .map(|row| row.device())
        .collect();
    let devices: HashSet<&DeviceId> = rows.iter().map(|row| row.device()).collect();
    let reporting = reporting_devices(conn, R::STREAM, &devices, &with_registers, moved).await?;
    let mut plan = Plan {
        rules,
        derived: HashMap::new(),
        late: BTreeMap::new(),
        in_order: Vec::new(),
        with_registers,
    };
    let mut by_device: HashMap<&DeviceId, Vec<&R>> = reporting
        .iter()
        .map(|&device| (device, Vec::new()))
        .collect();
    for &row in rows {
        if let Some(readings) = by_device.get_mut(row.device()) {
            readings.push(row);
        }
    }
    for (device, mut readings) in by_device {
        readings.sort_by_key(|row| row.recorded_at());
        let (first, last) = (
            readings[0].recorded_at(),
            readings[readings.len() - 1].recorded_at(),
        );
        match moved.get(device.as_str()) {
            Some(&previous) if previous.is_none_or(|p| first > p.recorded_at) => {
                plan.derive_in_order(device, previous, &readings);
            }
            _ => {
                plan.late.insert(device, (first, last));
            }
        }
    }
    Ok(plan)
}

/// The batch's devices that report registers: those with a register reading
/// in it, those the upsert returned, and those whose stored state says so
/// (looked up for the rest only, in a partial index that is empty for a
/// fleet sending interval readings only).
async fn reporting_devices<'a>(
    conn: &mut PgConnection,
    stream: &Stream,
    devices: &HashSet<&'a DeviceId>,
    with_registers: &HashSet<&DeviceId>,
    moved: &Moved,
) -> Result<Vec<&'a DeviceId>, sqlx::Error> {
    let is_known =
        |device: &DeviceId| with_registers.contains(device) || moved.contains_key(device.as_str());
    let unknown: Vec<&str> = devices
        .iter()
        .filter(|device| !is_known(device))
        .map(|device| device.as_str())
        .collect();
    let stored: HashSet<String> = if unknown.is_empty() {
        HashSet::new()
    } else {
        sqlx::query_scalar(&format!(
            "SELECT {device} FROM {current} WHERE reports_registers AND {device} = ANY($1)",
            device = stream.device,
            current = stream.current,
        ))
        .bind(unknown)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect()
    };
    Ok(devices
        .iter()
        .copied()
        .filter(|device| is_known(device) || stored.contains(device.as_str()))
        .collect())
}

impl<'a> Plan<'a> {
    /// Derives one device's readings, sorted by event time, from the stored
    /// reading before them all.
    fn derive_in_order<R: StreamReading>(
        &mut self,
        device: &'a DeviceId,
        mut previous: Option<Previous>,
        readings: &[&'a R],
    ) {
        let mut fix = CurrentFix {
            device,
            energy: None,
            jumps: 0,
            last_jump_at: None,
            recount_last_jump: false,
        };
        for reading in readings {
            let recorded_at = reading.recorded_at();
            let energy = reading.energy();
            fix.energy = None;
            if let Some(register) = energy.register() {
                let derived = self.rules.derive(previous, recorded_at, register);
                self.derived.insert((device, recorded_at), derived);
                fix.energy = Some(derived.energy());
                if derived.is_jump() {
                    fix.jumps += 1;
                    fix.last_jump_at = Some(recorded_at.instant());
                }
            }
            previous = Some(Previous {
                recorded_at,
                register: energy.register(),
            });
        }
        self.in_order.push(fix);
    }

    /// `reading` as it is inserted: with its energy when derived already.
    pub fn history_row<R: StreamReading>(&self, reading: &'a R) -> HistoryRow<'a, R> {
        HistoryRow {
            reading,
            derived: self
                .derived
                .get(&(reading.device(), reading.recorded_at()))
                .copied(),
        }
    }

    /// Derives the late devices from their stored readings, updates what
    /// changed, recomputes the rollup buckets it changed, and corrects
    /// current state. `inserted`: the devices that had a reading stored by
    /// this transaction, when not all of the batch's were (the duplicate
    /// path). Returns how many readings were newly flagged as implausible
    /// jumps.
    pub async fn finish<R: StreamReading>(
        mut self,
        conn: &mut PgConnection,
        inserted: Option<&HashSet<String>>,
    ) -> Result<u64, sqlx::Error> {
        let stream = R::STREAM;
        if let Some(inserted) = inserted {
            // A device none of whose readings was new (a batch read again)
            // has nothing to derive: what is stored was derived when stored.
            self.late
                .retain(|device, _| inserted.contains(device.as_str()));
        }
        let changes = if self.late.is_empty() {
            Vec::new()
        } else {
            // These statements probe partitioned tables per device through
            // LATERAL joins: generic plans prune partitions per probe at run
            // time, where the first custom plans of a connection were found
            // 5 to 20 times slower (hundreds of ms a batch).
            sqlx::query("SET LOCAL plan_cache_mode = force_generic_plan")
                .execute(&mut *conn)
                .await?;
            let spans = read_spans(conn, stream, &self.late).await?;
            let changes = self.derive_late(spans);
            update_history(conn, stream, &changes).await?;
            rebuild_buckets(conn, stream, &changes).await?;
            changes
        };
        let newly_flagged = self
            .in_order
            .iter()
            .map(|fix| fix.jumps as u64)
            .sum::<u64>()
            + changes
                .iter()
                .filter(|c| c.register_jump && !c.was_jump)
                .count() as u64;
        self.fix_current(conn, stream, &changes).await?;
        Ok(newly_flagged)
    }

    /// The changed derivations of the late devices' stored readings.
    fn derive_late(&self, mut spans: BTreeMap<String, Vec<SpanRow>>) -> Vec<Change> {
        let mut changes = Vec::new();
        for (device, (first, _)) in &self.late {
            let Some(rows) = spans.get_mut(device.as_str()) else {
                continue;
            };
            rows.sort_by_key(|row| row.recorded_at);
            let mut previous = None;
            for row in rows.iter() {
                if let (Some(register), true) = (row.register, row.recorded_at >= *first) {
                    let derived = self.rules.derive(previous, row.recorded_at, register);
                    let energy = derived.energy();
                    if energy.to_bits() != row.energy.to_bits()
                        || derived.is_jump() != row.register_jump
                    {
                        changes.push(Change {
                            device: device.as_str().to_owned(),
                            recorded_at: row.recorded_at,
                            energy,
                            register_jump: derived.is_jump(),
                            was_jump: row.register_jump,
                        });
                    }
                }
                previous = Some(Previous {
                    recorded_at: row.recorded_at,
                    register: row.register,
                });
            }
        }
        changes
    }

    /// Current state of every device derived: the newest reading's energy
    /// (read back from history for late devices), the register flag and the
    /// jump count.
    async fn fix_current(
        &self,
        conn: &mut PgConnection,
        stream: &Stream,
        changes: &[Change],
    ) -> Result<(), sqlx::Error> {
        // In order: the newest reading is the batch's, its energy known
        // (or, an interval reading's, written by the upsert).
        let in_order: Vec<&CurrentFix> = self
            .in_order
            .iter()
            .filter(|fix| fix.energy.is_some() || fix.jumps > 0)
            .collect();
        if !in_order.is_empty() {
            sqlx::query(&format!(
                "UPDATE {current} AS c SET
                     {energy} = coalesce(f.energy, c.{energy}),
                     register_jumps = c.register_jumps + f.jumps,
                     last_register_jump_at = greatest(c.last_register_jump_at, f.last_jump_at)
                 FROM UNNEST($1::text[], $2::float8[], $3::int8[], $4::timestamptz[])
                     AS f(device, energy, jumps, last_jump_at)
                 WHERE c.{device} = f.device",
                current = stream.current,
                device = stream.device,
                energy = stream.energy(),
            ))
            .bind(
                in_order
                    .iter()
                    .map(|f| f.device.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(in_order.iter().map(|f| f.energy).collect::<Vec<_>>())
            .bind(in_order.iter().map(|f| f.jumps).collect::<Vec<_>>())
            .bind(in_order.iter().map(|f| f.last_jump_at).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
        }
        if self.late.is_empty() {
            return Ok(());
        }
        // Late: the newest reading may be a stored one whose energy changed.
        let mut late: BTreeMap<&str, CurrentFix> = self
            .late
            .keys()
            .map(|&device| {
                let fix = CurrentFix {
                    device,
                    energy: None,
                    jumps: 0,
                    last_jump_at: None,
                    recount_last_jump: false,
                };
                (device.as_str(), fix)
            })
            .collect();
        for change in changes {
            let fix = late.get_mut(change.device.as_str()).expect("a late device");
            match (change.was_jump, change.register_jump) {
                (false, true) => {
                    fix.jumps += 1;
                    fix.last_jump_at = fix.last_jump_at.max(Some(change.recorded_at.instant()));
                }
                (true, false) => {
                    fix.jumps -= 1;
                    fix.recount_last_jump = true;
                }
                _ => {}
            }
        }
        let late: Vec<&CurrentFix> = late.values().collect();
        sqlx::query(&format!(
            "UPDATE {current} AS c SET
                 {energy} = (SELECT h.{energy} FROM {history} h
                             WHERE h.{device} = c.{device} AND h.recorded_at = c.recorded_at),
                 reports_registers = c.reports_registers OR f.reports_registers,
                 register_jumps = c.register_jumps + f.jumps,
                 last_register_jump_at = CASE
                     WHEN f.recount THEN (SELECT max(h.recorded_at) FROM {history} h
                                          WHERE h.{device} = c.{device} AND h.register_jump)
                     ELSE greatest(c.last_register_jump_at, f.last_jump_at) END
             FROM UNNEST($1::text[], $2::bool[], $3::int8[], $4::timestamptz[], $5::bool[])
                 AS f(device, reports_registers, jumps, last_jump_at, recount)
             WHERE c.{device} = f.device",
            current = stream.current,
            history = stream.history,
            device = stream.device,
            energy = stream.energy(),
        ))
        .bind(late.iter().map(|f| f.device.as_str()).collect::<Vec<_>>())
        .bind(
            late.iter()
                .map(|f| self.with_registers.contains(f.device))
                .collect::<Vec<_>>(),
        )
        .bind(late.iter().map(|f| f.jumps).collect::<Vec<_>>())
        .bind(late.iter().map(|f| f.last_jump_at).collect::<Vec<_>>())
        .bind(late.iter().map(|f| f.recount_last_jump).collect::<Vec<_>>())
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The stored readings of each late device from the one before its
/// earliest batch reading to the one after its latest, by device.
async fn read_spans(
    conn: &mut PgConnection,
    stream: &Stream,
    late: &BTreeMap<&DeviceId, (EventTime, EventTime)>,
) -> Result<BTreeMap<String, Vec<SpanRow>>, sqlx::Error> {
    // LATERAL keeps each lookup a probe of one device's key, pruned at run
    // time to the partitions its bounds reach. The neighbours are looked
    // for within a day first (a device reporting at all reported then),
    // and only then in every partition; current state tells when there is
    // no later reading at all.
    let statement = format!(
        "SELECT s.device, h.recorded_at, h.{register}, h.{energy}, h.register_jump
         FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[]) AS s(device, first_at, last_at)
         JOIN {current} c ON c.{device} = s.device
         CROSS JOIN LATERAL (
             SELECT coalesce(
                        (SELECT b.recorded_at FROM {history} b
                         WHERE b.{device} = s.device AND b.recorded_at < s.first_at
                           AND b.recorded_at >= s.first_at - interval '1 day'
                         ORDER BY b.recorded_at DESC LIMIT 1),
                        (SELECT b.recorded_at FROM {history} b
                         WHERE b.{device} = s.device AND b.recorded_at < s.first_at - interval '1 day'
                         ORDER BY b.recorded_at DESC LIMIT 1),
                        s.first_at) AS from_at,
                    CASE WHEN c.recorded_at <= s.last_at THEN s.last_at ELSE coalesce(
                        (SELECT a.recorded_at FROM {history} a
                         WHERE a.{device} = s.device AND a.recorded_at > s.last_at
                           AND a.recorded_at <= s.last_at + interval '1 day'
                         ORDER BY a.recorded_at LIMIT 1),
                        (SELECT a.recorded_at FROM {history} a
                         WHERE a.{device} = s.device AND a.recorded_at > s.last_at + interval '1 day'
                         ORDER BY a.recorded_at LIMIT 1)) END AS to_at
         ) AS span
         CROSS JOIN LATERAL (
             SELECT recorded_at, {register}, {energy}, register_jump FROM {history} h
             WHERE h.{device} = s.device AND h.recorded_at BETWEEN span.from_at AND span.to_at
         ) AS h",
        history = stream.history,
        current = stream.current,
        device = stream.device,
        register = stream.register(),
        energy = stream.energy(),
    );
    let rows: Vec<SpanRecord> = sqlx::query_as(&statement)
        .bind(late.keys().map(|d| d.as_str()).collect::<Vec<_>>())
        .bind(
            late.values()
                .map(|(first, _)| first.instant())
                .collect::<Vec<_>>(),
        )
        .bind(
            late.values()
                .map(|(_, last)| last.instant())
                .collect::<Vec<_>>(),
        )
        .fetch_all(conn)
        .await?;
    let mut spans: BTreeMap<String, Vec<SpanRow>> = BTreeMap::new();
    for (device, recorded_at, register, energy, register_jump) in rows {
        spans.entry(device).or_default().push(SpanRow {
            recorded_at: EventTime::new(recorded_at),
            register,
            energy,
            register_jump,
        });
    }
    Ok(spans)
}

/// Writes the changed energies and jump flags.
async fn update_history(
    conn: &mut PgConnection,
    stream: &Stream,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    let (Some(earliest), Some(latest)) = (
        changes.iter().map(|c| c.recorded_at).min(),
        changes.iter().map(|c| c.recorded_at).max(),
    ) else {
        return Ok(());
    };
    // The bounds let PostgreSQL skip the partitions no change is in.
    sqlx::query(&format!(
        "UPDATE {history} AS h SET {energy} = c.energy, register_jump = c.register_jump
         FROM UNNEST($1::text[], $2::timestamptz[], $3::float8[], $4::bool[])
             AS c(device, recorded_at, energy, register_jump)
         WHERE h.{device} = c.device AND h.recorded_at = c.recorded_at
           AND h.recorded_at BETWEEN $5 AND $6",
        history = stream.history,
        device = stream.device,
        energy = stream.energy(),
    ))
    .bind(
        changes
            .iter()
            .map(|c| c.device.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        changes
            .iter()
            .map(|c| c.recorded_at.instant())
            .collect::<Vec<_>>(),
    )
    .bind(changes.iter().map(|c| c.energy).collect::<Vec<_>>())
    .bind(changes.iter().map(|c| c.register_jump).collect::<Vec<_>>())
    .bind(earliest.instant())
    .bind(latest.instant())
    .execute(conn)
    .await?;
    Ok(())
}

/// Recomputes, from the raw readings, every rollup bucket holding a changed
/// reading, at every level, replacing what was stored. Keys go in byte
/// order of the device, like every other rollup write.
async fn rebuild_buckets(
    conn: &mut PgConnection,
    stream: &Stream,
    changes: &[Change],
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    for level in stream.levels {
        let buckets: BTreeSet<(&str, DateTime<Utc>)> = changes
            .iter()
            .map(|c| {
                (
                    c.device.as_str(),
                    bucket_end(c.recorded_at, level.width_micros),
                )
            })
            .collect();
        sqlx::query(&stream.rollup_rebuild(level))
            .bind(
                buckets
                    .iter()
                    .map(|(device, _)| *device)
                    .collect::<Vec<_>>(),
            )
            .bind(buckets.iter().map(|(_, end)| *end).collect::<Vec<_>>())
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
