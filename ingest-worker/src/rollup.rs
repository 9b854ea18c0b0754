//! Hourly rollups, kept in the same transaction as the history rows they
//! summarise, counting each stored reading exactly once. What each stream's
//! rollup keeps is described in [`crate::stream`].
//!
//! A rollup row covers the half-open hour `(hour_end - 1h, hour_end]`, the
//! shape of analytics windows `(from, to]` (see `energy_hour_end` in the
//! migrations, which this module mirrors). On the fast path every row of
//! the batch was stored, so the batch is aggregated here; on the duplicate
//! path the aggregate is taken in SQL from the rows the INSERT returned
//! ([`crate::stream::Stream::staged_insert`]), so a duplicate never counts twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use shared::domain::{DeviceId, EventTime};
use sqlx::PgConnection;

use crate::stream::{Stream, StreamReading};

const HOUR_MICROS: i64 = 3_600_000_000;

/// The end of the rollup hour that holds `at`.
pub fn hour_end(at: EventTime) -> DateTime<Utc> {
    let micros = at.instant().timestamp_micros();
    let end = (micros - 1).div_euclid(HOUR_MICROS) * HOUR_MICROS + HOUR_MICROS;
    DateTime::from_timestamp_micros(end).unwrap_or(at.instant())
}

/// One device's hour of a batch: its count and one value per rollup column.
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

    fn add<R: StreamReading>(&mut self, reading: &R) {
        self.readings += 1;
        for (value, rollup) in self.values.iter_mut().zip(R::STREAM.rollups) {
            *value = rollup.aggregate.fold(*value, reading.field(rollup.field));
        }
    }
}

/// Adds the hours of `rows` (all of them stored by this transaction) to the
/// stream's rollup. Keys are sorted so concurrent transactions lock rollup
/// rows in one order.
pub async fn add_hours<R: StreamReading>(
    conn: &mut PgConnection,
    rows: &[&R],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let stream = R::STREAM;
    let mut hours: BTreeMap<(&DeviceId, DateTime<Utc>), Hour> = BTreeMap::new();
    for row in rows {
        hours
            .entry((row.device(), hour_end(row.recorded_at())))
            .or_insert_with(|| Hour::new(stream))
            .add(*row);
    }
    let statement = stream.hourly_upsert();
    let mut query = sqlx::query(&statement)
        .bind(hours.keys().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        .bind(hours.keys().map(|(_, end)| *end).collect::<Vec<_>>())
        .bind(hours.values().map(|h| h.readings).collect::<Vec<_>>());
    for index in 0..stream.rollups.len() {
        query = query.bind(hours.values().map(|h| h.values[index]).collect::<Vec<_>>());
    }
    query.execute(conn).await?;
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
    }
}
