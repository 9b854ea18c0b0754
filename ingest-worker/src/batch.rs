//! A batch being collected from the topic: the readings that decoded, the
//! messages that did not (bound for the dead-letter topic), and the highest
//! offset seen per partition (stored only after the batch is durable).

use std::collections::BTreeMap;
use std::ops::Range;

use chrono::{DateTime, NaiveDate, Utc};
use rdkafka::message::{BorrowedMessage, Message};
use shared::domain::Reading;
use shared::wire::{decode_message, MessageError, ValidationRules, MAX_READING_BYTES};

use crate::dead_letter::{Reason, Rejected};

/// The instant "at most N minutes in the future" is measured from: the
/// message's Kafka timestamp when it is ahead of this host's clock (by at
/// most the allowance itself), else now. A reading the gateway accepted near
/// the limit is then not refused here because this host's clock lags the
/// gateway's, while a producer's timestamp cannot widen the window by more
/// than one allowance.
fn future_check_reference(
    message: &BorrowedMessage<'_>,
    rules: &ValidationRules,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        .filter(|produced_at| *produced_at > now)
        .map_or(now, |produced_at| produced_at.min(now + rules.max_future))
}

/// Where a decoded reading came from, so it can still be dead-lettered with
/// its original bytes if the database refuses it.
struct Origin {
    partition: i32,
    offset: i64,
    key: Option<Range<usize>>,
    payload: Range<usize>,
}

#[derive(Default)]
pub struct Batch {
    pub readings: Vec<Reading>,
    /// Parallel to `readings`.
    origins: Vec<Origin>,
    /// Keys and payloads of `readings`, back to back: one growing buffer
    /// instead of two allocations per message.
    raw: Vec<u8>,
    pub rejected: Vec<Rejected>,
    /// Bytes the rejects hold (their keys and payload heads).
    rejected_bytes: usize,
    /// Highest offset consumed per partition of the readings topic.
    pub last_offsets: BTreeMap<i32, i64>,
}

impl Batch {
    /// Number of messages in the batch, readings and rejects alike.
    pub fn len(&self) -> usize {
        self.readings.len() + self.rejected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of message data the batch holds (keys and payloads of its
    /// readings, what its rejects keep): what `BATCH_MAX_BYTES` bounds.
    pub fn bytes(&self) -> usize {
        self.raw.len() + self.rejected_bytes
    }

    /// Decodes and validates a message and files it as a reading or a reject.
    pub fn add(
        &mut self,
        message: &BorrowedMessage<'_>,
        rules: &ValidationRules,
        now: DateTime<Utc>,
    ) {
        let reference = future_check_reference(message, rules, now);
        let decoded = match message.payload() {
            None | Some([]) => Err(Reason::Empty),
            // Refused unread: parsing a huge payload is what it would cost.
            Some(payload) if payload.len() > MAX_READING_BYTES => Err(Reason::TooLarge {
                bytes: payload.len(),
            }),
            Some(payload) => decode_message(payload, rules, reference).map_err(Reason::Message),
        };
        match decoded {
            Ok(reading) => {
                let key = message.key().map(|key| self.keep(key));
                let payload = self.keep(message.payload().unwrap_or_default());
                self.readings.push(reading);
                self.origins.push(Origin {
                    partition: message.partition(),
                    offset: message.offset(),
                    key,
                    payload,
                });
            }
            Err(reason) => {
                let rejected = Rejected::new(
                    message.key(),
                    message.payload().unwrap_or_default(),
                    (message.partition(), message.offset()),
                    reason,
                );
                self.rejected_bytes += rejected.held_bytes();
                self.rejected.push(rejected);
            }
        }
        let last = self
            .last_offsets
            .entry(message.partition())
            .or_insert(message.offset());
        *last = (*last).max(message.offset());
    }

    /// The event time of the newest reading (assignments aside).
    pub fn newest_reading_time(&self) -> Option<DateTime<Utc>> {
        self.readings
            .iter()
            .filter_map(Reading::recorded_at)
            .max()
            .map(|at| at.instant())
    }

    /// The UTC day of the newest reading (assignments are not partitioned).
    pub fn last_reading_day(&self) -> Option<NaiveDate> {
        self.newest_reading_time().map(|at| at.date_naive())
    }

    fn keep(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.raw.len();
        self.raw.extend_from_slice(bytes);
        start..self.raw.len()
    }

    /// The original message of `readings[index]`, as a reject with `reason`.
    pub fn reject_reading(&self, index: usize, reason: Reason) -> Rejected {
        let origin = &self.origins[index];
        Rejected::new(
            origin.key.clone().map(|range| &self.raw[range]),
            &self.raw[origin.payload.clone()],
            (origin.partition, origin.offset),
            reason,
        )
    }

    /// Moves readings older than the retention cutoff at `now` to the rejects,
    /// with the reason the decoder gives.
    pub fn reject_expired(&mut self, rules: &ValidationRules, now: DateTime<Utc>) {
        let expired: Vec<(usize, Reason)> = self
            .readings
            .iter()
            .enumerate()
            .filter_map(|(index, reading)| {
                let at = reading.recorded_at()?;
                let error = rules.check_retention(at, now).err()?;
                Some((index, Reason::Message(MessageError::Invalid(vec![error]))))
            })
            .collect();
        if expired.is_empty() {
            return;
        }
        let mut keep = vec![true; self.readings.len()];
        for (index, reason) in expired {
            keep[index] = false;
            let rejected = self.reject_reading(index, reason);
            self.rejected_bytes += rejected.held_bytes();
            self.rejected.push(rejected);
        }
        self.retain_readings(&keep);
    }

    /// Forgets everything read from `partitions` (revoked in a rebalance):
    /// none of it was committed, so the partitions' new owner reads it again.
    pub fn drop_partitions(&mut self, partitions: &[i32]) {
        if partitions.is_empty() || self.is_empty() {
            return;
        }
        let keep: Vec<bool> = self
            .origins
            .iter()
            .map(|o| !partitions.contains(&o.partition))
            .collect();
        self.retain_readings(&keep);
        self.rejected
            .retain(|rejected| !partitions.contains(&rejected.partition));
        self.rejected_bytes = self.rejected.iter().map(Rejected::held_bytes).sum();
        self.last_offsets
            .retain(|partition, _| !partitions.contains(partition));
    }

    /// Reorders the readings into `groups` runs by topic partition
    /// (partition mod `groups`), keeping the order within each partition,
    /// and returns the runs' index ranges. Messages are keyed by device, so
    /// two runs never share a device: their rows, rollup rows and current
    /// state rows are disjoint, and they can be written concurrently.
    pub fn group_by_partition(&mut self, groups: usize) -> Vec<Range<usize>> {
        let groups = groups.max(1);
        let group_of = |origin: &Origin| origin.partition.unsigned_abs() as usize % groups;
        let mut rows: Vec<(Reading, Origin)> = std::mem::take(&mut self.readings)
            .into_iter()
            .zip(std::mem::take(&mut self.origins))
            .collect();
        // Stable: a device's readings keep their order.
        rows.sort_by_key(|(_, origin)| group_of(origin));
        let mut ranges: Vec<Range<usize>> = Vec::with_capacity(groups);
        for (index, (_, origin)) in rows.iter().enumerate() {
            match ranges.last_mut() {
                Some(last) if group_of(&rows[last.start].1) == group_of(origin) => {
                    last.end = index + 1
                }
                _ => ranges.push(index..index + 1),
            }
        }
        (self.readings, self.origins) = rows.into_iter().unzip();
        ranges
    }

    /// Keeps the readings (and their origins) whose flag in `keep` is set.
    fn retain_readings(&mut self, keep: &[bool]) {
        let mut flags = keep.iter();
        self.readings.retain(|_| *flags.next().unwrap_or(&true));
        let mut flags = keep.iter();
        self.origins.retain(|_| *flags.next().unwrap_or(&true));
    }
}
