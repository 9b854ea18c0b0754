//! Rollups (hourly and five-minute), kept in the same transaction as the
//! history rows they summarise, counting each stored reading exactly once.
//! What each stream's rollups keep is described in [`crate::stream`].
//!
//! A rollup row covers the half-open bucket `(end - width, end]`, the shape
//! of analytics windows `(from, to]` (see `energy_bucket_end` in the
//! migrations, which this module mirrors). On the fast path every row of
//! the batch was stored, so the batch is aggregated here; on the duplicate
//! path the aggregate is taken in SQL from the rows the INSERT returned
//! ([`crate::stream::Stream::staged_insert`]), so a duplicate never counts twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shared::domain::{DeviceId, EventTime};
use sqlx::PgConnection;

use crate::stream::{HistoryRow, Stream, StreamReading};

const HOUR_MICROS: i64 = 3_600_000_000;

/// The end of the bucket of `width_micros` that holds `at`.
pub fn bucket_end(at: EventTime, width_micros: i64) -> DateTime<Utc> {
    let micros = at.instant().timestamp_micros();
    let end = (micros - 1).div_euclid(width_micros) * width_micros + width_micros;
    DateTime::from_timestamp_micros(end).unwrap_or(at.instant())
}

/// The end of the rollup hour that holds `at`.
pub fn hour_end(at: EventTime) -> DateTime<Utc> {
    bucket_end(at, HOUR_MICROS)
}

/// One device's bucket of a batch: its count and one value per rollup column.
struct Hour {
    readings: i64,
    values: Vec<f64>,
}

impl Hour {
    fn new(stream: &Stream) -> Self {
        Self {
            readings: 0,
            values: stream
                .rollups
                .iter()
                .map(|r| r.aggregate.identity())
                .collect(),
        }
    }

    fn add<R: StreamReading>(&mut self, row: &HistoryRow<'_, R>) {
        self.readings += 1;
        for (value, rollup) in self.values.iter_mut().zip(R::STREAM.rollups) {
            // Rolled-up fields are never the (nullable) register.
            let field = row.value(rollup.field).unwrap_or(f64::NAN);
            *value = rollup.aggregate.fold(*value, field);
        }
    }
}

/// Adds `rows` (all of them stored by this transaction) whose energy is
/// final to every level of the stream's rollups; the others, register
/// readings that arrived late for their device, are rolled up once their
/// energy is derived ([`crate::registers`]). Keys are sorted so concurrent
/// transactions lock rollup rows in one order.
pub async fn add_rollups<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[HistoryRow<'_, R>],
) -> Result<(), sqlx::Error> {
    let rows: Vec<&HistoryRow<'_, R>> = rows.iter().filter(|row| row.is_final()).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let stream = R::STREAM;
    for level in stream.levels {
        let mut buckets: BTreeMap<(&DeviceId, DateTime<Utc>), Hour> = BTreeMap::new();
        for row in &rows {
            buckets
                .entry((
                    row.reading.device(),
                    bucket_end(row.reading.recorded_at(), level.width_micros),
                ))
                .or_insert_with(|| Hour::new(stream))
                .add(row);
        }
        let statement = stream.rollup_upsert(level);
        let mut query = sqlx::query(&statement)
            .bind(
                buckets
                    .keys()
                    .map(|(id, _)| id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(buckets.keys().map(|(_, end)| *end).collect::<Vec<_>>())
            .bind(buckets.values().map(|h| h.readings).collect::<Vec<_>>());
        for index in 0..stream.rollups.len() {
            query = query.bind(
                buckets
                    .values()
                    .map(|h| h.values[index])
                    .collect::<Vec<_>>(),
            );
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> EventTime {
        EventTime::new(raw.parse().unwrap())
    }

    #[test]
    fn an_hour_is_left_open_and_right_closed() {
        let end = |raw| hour_end(at(raw)).to_rfc3339();
        assert_eq!(end("2026-11-29T10:00:00Z"), "2026-11-29T10:00:00+00:00");
        assert_eq!(
            end("2026-11-29T10:00:00.000001Z"),
            "2026-11-29T11:00:00+00:00"
        );
        assert_eq!(
            end("2026-11-29T10:59:59.999999Z"),
            "2026-11-29T11:00:00+00:00"
        );
        assert_eq!(end("1999-12-31T23:30:00Z"), "2000-01-01T00:00:00+00:00");
        let five = |raw| bucket_end(at(raw), 300_000_000).to_rfc3339();
        assert_eq!(five("2026-11-29T10:05:00Z"), "2026-11-29T10:05:00+00:00");
        assert_eq!(
            five("2026-11-29T10:05:00.000001Z"),
            "2026-11-29T10:10:00+00:00"
        );
    }
}
