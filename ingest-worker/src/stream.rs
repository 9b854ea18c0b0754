//! The history streams, each described once: its tables, its measured
//! columns, its rollup levels and what they keep, and how a reading gives its
//! values. COPY encoding ([`crate::copy`]), rollups ([`crate::rollup`]) and
//! the transaction ([`crate::store`]) are written once against this
//! description, so adding a measured field is one edit here (and a
//! migration adding the column).
//!
//! Which tables are partitioned, and how, is the schema's own list
//! (`energy_partitioned_tables`, read by [`crate::partitions`]).

use shared::domain::{DeviceId, Energy, EventTime, MeterReading, VehicleReading};
use shared::register::Derived;

/// How a rollup column folds one field over an hour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Sum,
    Min,
    Max,
}

impl Aggregate {
    /// The value of an hour with no reading yet.
    pub fn identity(self) -> f64 {
        match self {
            Aggregate::Sum => 0.0,
            Aggregate::Min => f64::INFINITY,
            Aggregate::Max => f64::NEG_INFINITY,
        }
    }

    /// Folds `value` into `into`.
    pub fn fold(self, into: f64, value: f64) -> f64 {
        match self {
            Aggregate::Sum => into + value,
            Aggregate::Min => into.min(value),
            Aggregate::Max => into.max(value),
        }
    }

    /// The SQL aggregate function over a group.
    pub fn sql_function(self) -> &'static str {
        match self {
            Aggregate::Sum => "sum",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
        }
    }

    /// How a stored hour `h.column` and a batch's `EXCLUDED.column` merge.
    fn sql_merge(self, column: &str) -> String {
        match self {
            Aggregate::Sum => format!("{column} = h.{column} + EXCLUDED.{column}"),
            Aggregate::Min => format!("{column} = LEAST(h.{column}, EXCLUDED.{column})"),
            Aggregate::Max => format!("{column} = GREATEST(h.{column}, EXCLUDED.{column})"),
        }
    }
}

/// One column of a stream's rollups besides the reading count.
#[derive(Debug)]
pub struct RollupColumn {
    pub column: &'static str,
    /// Index into [`Stream::fields`] of the field it folds.
    pub field: usize,
    pub aggregate: Aggregate,
}

/// One level of a stream's rollups: buckets of `width`, each the
/// half-open interval `(end - width, end]`.
#[derive(Debug)]
pub struct RollupLevel {
    pub table: &'static str,
    /// The key column holding a bucket's end.
    pub end_column: &'static str,
    pub width_micros: i64,
    /// The width as an SQL interval literal.
    pub width_sql: &'static str,
}

/// Whole hours, kept `ROLLUP_RETENTION_DAYS`: what long windows and the
/// fleet view sum.
const HOUR_MICROS: i64 = 3_600_000_000;
/// Five minutes, kept as long as raw readings: a window's edge hours are
/// read from them, so at most five minutes at each edge come from raw
/// readings, however often a device reports.
const FIVE_MINUTES_MICROS: i64 = 300_000_000;

/// One history stream.
#[derive(Debug)]
pub struct Stream {
    /// History, day-partitioned, keyed (device, recorded_at).
    pub history: &'static str,
    /// Its rollups, coarsest first; each level keeps the same columns.
    pub levels: &'static [RollupLevel],
    /// Current state: one row per device, its newest reading.
    pub current: &'static str,
    /// The device id column of all three.
    pub device: &'static str,
    /// The measured columns (float8), after the device and `recorded_at`, in
    /// history and current state alike.
    pub fields: &'static [&'static str],
    /// Index into `fields` of the interval's energy: stated by the reading,
    /// or derived from registers ([`crate::registers`]).
    pub energy_field: usize,
    /// Index into `fields` of the cumulative register, NULL for readings
    /// that state their interval's energy.
    pub register_field: usize,
    /// The rollup's columns after `readings`.
    pub rollups: &'static [RollupColumn],
}

pub const VEHICLES: Stream = Stream {
    history: "vehicle_readings",
    levels: &[
        RollupLevel {
            table: "vehicle_hourly",
            end_column: "hour_end",
            width_micros: HOUR_MICROS,
            width_sql: "1 hour",
        },
        RollupLevel {
            table: "vehicle_5min",
            end_column: "bucket_end",
            width_micros: FIVE_MINUTES_MICROS,
            width_sql: "5 minutes",
        },
    ],
    current: "vehicles_current",
    device: "vehicle_id",
    fields: &["soc", "kwh_delivered_dc", "battery_temp", "kwh_register_dc"],
    energy_field: 1,
    register_field: 3,
    rollups: &[
        RollupColumn {
            column: "sum_dc",
            field: 1,
            aggregate: Aggregate::Sum,
        },
        RollupColumn {
            column: "sum_battery_temp",
            field: 2,
            aggregate: Aggregate::Sum,
        },
    ],
};

pub const METERS: Stream = Stream {
    history: "meter_readings",
    levels: &[
        RollupLevel {
            table: "meter_hourly",
            end_column: "hour_end",
            width_micros: HOUR_MICROS,
            width_sql: "1 hour",
        },
        RollupLevel {
            table: "meter_5min",
            end_column: "bucket_end",
            width_micros: FIVE_MINUTES_MICROS,
            width_sql: "5 minutes",
        },
    ],
    current: "meters_current",
    device: "meter_id",
    fields: &["kwh_consumed_ac", "voltage", "kwh_register_ac"],
    energy_field: 0,
    register_field: 2,
    rollups: &[
        RollupColumn {
            column: "sum_ac",
            field: 0,
            aggregate: Aggregate::Sum,
        },
        RollupColumn {
            column: "min_ac",
            field: 0,
            aggregate: Aggregate::Min,
        },
        RollupColumn {
            column: "max_ac",
            field: 0,
            aggregate: Aggregate::Max,
        },
        RollupColumn {
            column: "sum_voltage",
            field: 1,
            aggregate: Aggregate::Sum,
        },
        RollupColumn {
            column: "min_voltage",
            field: 1,
            aggregate: Aggregate::Min,
        },
        RollupColumn {
            column: "max_voltage",
            field: 1,
            aggregate: Aggregate::Max,
        },
    ],
};

/// A reading of a history stream.
pub trait StreamReading: Sync {
    const STREAM: &'static Stream;

    fn device(&self) -> &DeviceId;
    fn recorded_at(&self) -> EventTime;
    /// The value of `STREAM.fields[index]` as the reading states it: `None`
    /// for the register of an interval reading and for the energy of a
    /// register reading (derived, [`HistoryRow`]).
    fn field(&self, index: usize) -> Option<f64>;
    /// What the reading says of energy.
    fn energy(&self) -> Energy;
}

impl StreamReading for VehicleReading {
    const STREAM: &'static Stream = &VEHICLES;

    fn device(&self) -> &DeviceId {
        &self.vehicle_id
    }

    fn recorded_at(&self) -> EventTime {
        self.recorded_at
    }

    fn field(&self, index: usize) -> Option<f64> {
        [
            Some(self.soc),
            self.dc.interval(),
            Some(self.battery_temp),
            self.dc.register(),
        ][index]
    }

    fn energy(&self) -> Energy {
        self.dc
    }
}

impl StreamReading for MeterReading {
    const STREAM: &'static Stream = &METERS;

    fn device(&self) -> &DeviceId {
        &self.meter_id
    }

    fn recorded_at(&self) -> EventTime {
        self.recorded_at
    }

    fn field(&self, index: usize) -> Option<f64> {
        [self.ac.interval(), Some(self.voltage), self.ac.register()][index]
    }

    fn energy(&self) -> Energy {
        self.ac
    }
}

/// A reading on its way into history, with the energy derived for it when
/// it carries a register.
pub struct HistoryRow<'a, R> {
    pub reading: &'a R,
    /// `None` for an interval reading, and for a register reading whose
    /// energy is derived after the insert (it arrived late for its device).
    pub derived: Option<Derived>,
}

impl<R> Clone for HistoryRow<'_, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for HistoryRow<'_, R> {}

impl<R: StreamReading> HistoryRow<'_, R> {
    /// The value stored in `STREAM.fields[index]`.
    pub fn value(&self, index: usize) -> Option<f64> {
        if index != R::STREAM.energy_field {
            return self.reading.field(index);
        }
        Some(match (self.reading.energy(), self.derived) {
            (Energy::Interval(kwh), _) => kwh,
            (Energy::Register(_), Some(derived)) => derived.energy(),
            // Derived later in the same transaction. NaN marks the row as
            // not derived yet, and would poison any sum that read it.
            (Energy::Register(_), None) => f64::NAN,
        })
    }

    pub fn is_register_jump(&self) -> bool {
        self.derived.is_some_and(Derived::is_jump)
    }

    /// Whether the energy written is final, so the row can be rolled up as
    /// it is inserted.
    pub fn is_final(&self) -> bool {
        self.reading.energy().interval().is_some() || self.derived.is_some()
    }
}

/// `$first::float8[], $first+1::float8[], …`: `n` array parameters.
fn float8_arrays(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}::float8[]"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Stream {
    /// The history columns in COPY order: device, `recorded_at`, fields,
    /// `register_jump`.
    pub fn history_columns(&self) -> String {
        let mut columns = vec![self.device, "recorded_at"];
        columns.extend(self.fields);
        columns.push("register_jump");
        columns.join(", ")
    }

    pub fn energy(&self) -> &'static str {
        self.fields[self.energy_field]
    }

    pub fn register(&self) -> &'static str {
        self.fields[self.register_field]
    }

    /// The rollup columns' aggregates over history rows, in order.
    fn rollup_aggregates(&self) -> Vec<String> {
        self.rollups
            .iter()
            .map(|r| format!("{}({})", r.aggregate.sql_function(), self.fields[r.field]))
            .collect()
    }

    /// `COPY table (columns) FROM STDIN (FORMAT binary)` into `table`
    /// (the history table or a staging copy of it).
    pub fn copy_statement(&self, table: &str) -> String {
        format!(
            "COPY {table} ({}) FROM STDIN (FORMAT binary)",
            self.history_columns()
        )
    }

    fn rollup_columns(&self, level: &RollupLevel) -> String {
        let mut columns = vec![self.device, level.end_column, "readings"];
        columns.extend(self.rollups.iter().map(|r| r.column));
        columns.join(", ")
    }

    /// `ON CONFLICT` clause adding a batch's bucket to what is stored.
    fn rollup_merge(&self, level: &RollupLevel) -> String {
        let mut sets = vec!["readings = h.readings + EXCLUDED.readings".to_owned()];
        sets.extend(self.rollups.iter().map(|r| r.aggregate.sql_merge(r.column)));
        format!(
            "ON CONFLICT ({}, {}) DO UPDATE SET {}",
            self.device,
            level.end_column,
            sets.join(", ")
        )
    }

    /// Adds buckets aggregated in Rust to `level`: `$1` devices, `$2` bucket
    /// ends, `$3` counts, then one float8 array per rollup column.
    pub fn rollup_upsert(&self, level: &RollupLevel) -> String {
        format!(
            "INSERT INTO {} AS h ({}) SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], {}) {}",
            level.table,
            self.rollup_columns(level),
            float8_arrays(4, self.rollups.len()),
            self.rollup_merge(level)
        )
    }

    /// Recomputes buckets of `level` from the raw readings and replaces
    /// what is stored: `$1` devices, `$2` bucket ends (each bucket holds a
    /// reading, so none comes out empty).
    pub fn rollup_rebuild(&self, level: &RollupLevel) -> String {
        let aggregates: Vec<String> = self
            .rollup_aggregates()
            .into_iter()
            .zip(self.rollups)
            .map(|(aggregate, r)| format!("{aggregate} AS {}", r.column))
            .collect();
        let sets: Vec<String> = std::iter::once("readings")
            .chain(self.rollups.iter().map(|r| r.column))
            .map(|column| format!("{column} = EXCLUDED.{column}"))
            .collect();
        // LATERAL: one probe of the device's key per bucket, pruned at run
        // time to the bucket's partition.
        format!(
            "INSERT INTO {table} AS h ({columns})
             SELECT b.device, b.bucket_end, r.*
             FROM UNNEST($1::text[], $2::timestamptz[]) AS b(device, bucket_end)
             CROSS JOIN LATERAL (
                 SELECT count(*) AS readings, {aggregates} FROM {history} x
                 WHERE x.{device} = b.device
                   AND x.recorded_at > b.bucket_end - interval '{width}' AND x.recorded_at <= b.bucket_end
             ) AS r
             ON CONFLICT ({device}, {end}) DO UPDATE SET {sets}",
            table = level.table,
            columns = self.rollup_columns(level),
            aggregates = aggregates.join(", "),
            history = self.history,
            device = self.device,
            width = level.width_sql,
            end = level.end_column,
            sets = sets.join(", "),
        )
    }

    /// Inserts the rows of `staging` that are not stored yet and rolls up
    /// exactly those, at every level (so a duplicate never counts twice),
    /// but register readings: [`crate::registers`] rolls them up once their
    /// energy is derived. Returns how many it inserted and the devices
    /// they are of. Rollup rows are locked in byte order
    /// of the device id, the order the direct path sorts them in Rust,
    /// whatever the database's collation: two workers taking the two paths
    /// over the same devices cannot deadlock.
    pub fn staged_insert(&self, staging: &str) -> String {
        let columns = self.history_columns();
        let aggregates = self.rollup_aggregates();
        let rolled: Vec<String> = self
            .levels
            .iter()
            .enumerate()
            .map(|(i, level)| {
                format!(
                    "rolled_{i} AS (
                 INSERT INTO {table} AS h ({rollup_columns})
                 SELECT {device}, energy_bucket_end(recorded_at, interval '{width}'), count(*), {aggregates}
                 FROM inserted WHERE {register} IS NULL GROUP BY 1, 2 ORDER BY {device} COLLATE \"C\", 2
                 {merge}
             )",
                    table = level.table,
                    rollup_columns = self.rollup_columns(level),
                    device = self.device,
                    register = self.register(),
                    width = level.width_sql,
                    aggregates = aggregates.join(", "),
                    merge = self.rollup_merge(level),
                )
            })
            .collect();
        format!(
            "WITH inserted AS (
                 INSERT INTO {history} ({columns}) SELECT {columns} FROM {staging}
                 ON CONFLICT DO NOTHING
                 RETURNING {columns}
             ), {rolled}
             SELECT count(*), coalesce(array_agg(DISTINCT {device}), '{{}}') FROM inserted",
            history = self.history,
            rolled = rolled.join(", "),
            device = self.device,
        )
    }

    /// Upserts the newest reading per device: `$1` devices, `$2` event
    /// times, one float8 array per field, then whether the batch holds a
    /// register reading of the device. The `WHERE` clause makes current
    /// state move forward in event time only: an older or equally old
    /// reading never replaces the stored one (but its row is locked all
    /// the same, until commit). Every row it writes takes the
    /// transaction's revision. Returns each device that moved forward (new
    /// ones included), whether it reports registers, and the reading it
    /// moved from (NULLs for a new device): what [`crate::registers`]
    /// derives in-order readings from.
    pub fn current_upsert(&self) -> String {
        let sets: Vec<String> = self
            .fields
            .iter()
            .map(|field| format!("{field} = EXCLUDED.{field}"))
            .collect();
        let mut columns = vec![self.device, "recorded_at"];
        columns.extend(self.fields);
        columns.push("reports_registers");
        columns.push("revision");
        format!(
            "WITH moved AS (
                 INSERT INTO {current} AS c ({columns})
                 SELECT *, pg_current_xact_id()::text::bigint
                 FROM UNNEST($1::text[], $2::timestamptz[], {arrays}, ${flags}::bool[])
                 ON CONFLICT ({device}) DO UPDATE SET
                     recorded_at = EXCLUDED.recorded_at, {sets}, updated_at = now(),
                     reports_registers = c.reports_registers OR EXCLUDED.reports_registers,
                     superseded_at = c.recorded_at, superseded_register = c.{register},
                     revision = EXCLUDED.revision
                 WHERE c.recorded_at < EXCLUDED.recorded_at
                 RETURNING {device}, reports_registers, superseded_at, superseded_register
             )
             SELECT {device}, reports_registers, superseded_at, superseded_register FROM moved",
            current = self.current,
            columns = columns.join(", "),
            arrays = float8_arrays(3, self.fields.len()),
            flags = 3 + self.fields.len(),
            device = self.device,
            register = self.register(),
            sets = sets.join(", "),
        )
    }

    /// Gives devices (`$1`) whose current state this transaction did not
    /// move (all their readings in the batch were older) the transaction's
    /// revision all the same: their history changed.
    pub fn revision_update(&self) -> String {
        format!(
            "UPDATE {current} SET revision = pg_current_xact_id()::text::bigint
             WHERE {device} = ANY($1::text[])",
            current = self.current,
            device = self.device,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_divides_the_next_coarser_one_and_a_day() {
        for stream in [&VEHICLES, &METERS] {
            for pair in stream.levels.windows(2) {
                assert_eq!(pair[0].width_micros % pair[1].width_micros, 0);
            }
            for level in stream.levels {
                assert_eq!(86_400_000_000 % level.width_micros, 0, "{}", level.table);
            }
        }
    }

    #[test]
    fn every_rollup_folds_a_field_of_its_stream() {
        for stream in [&VEHICLES, &METERS] {
            for rollup in stream.rollups {
                assert!(rollup.field < stream.fields.len(), "{}", rollup.column);
                assert_ne!(rollup.field, stream.register_field, "{}", rollup.column);
            }
            assert!(stream.energy().starts_with("kwh_"));
            assert!(stream.register().starts_with("kwh_register_"));
        }
    }

    #[test]
    fn the_generated_statements_name_every_column() {
        assert_eq!(
            METERS.copy_statement("meter_readings"),
            "COPY meter_readings (meter_id, recorded_at, kwh_consumed_ac, voltage, kwh_register_ac, \
             register_jump) FROM STDIN (FORMAT binary)"
        );
        assert_eq!(
            VEHICLES.rollup_upsert(&VEHICLES.levels[0]),
            "INSERT INTO vehicle_hourly AS h (vehicle_id, hour_end, readings, sum_dc, sum_battery_temp) \
             SELECT * FROM UNNEST($1::text[], $2::timestamptz[], $3::int8[], $4::float8[], $5::float8[]) \
             ON CONFLICT (vehicle_id, hour_end) DO UPDATE SET readings = h.readings + EXCLUDED.readings, \
             sum_dc = h.sum_dc + EXCLUDED.sum_dc, sum_battery_temp = h.sum_battery_temp + EXCLUDED.sum_battery_temp"
        );
        let staged = METERS.staged_insert("meter_readings_staging");
        for level in METERS.levels {
            assert!(staged.contains(&format!(
                "INSERT INTO {} AS h (meter_id, {}, readings, sum_ac",
                level.table, level.end_column
            )));
        }
        assert!(staged.contains(
            "SELECT meter_id, energy_bucket_end(recorded_at, interval '5 minutes'), count(*), \
             sum(kwh_consumed_ac), min(kwh_consumed_ac), max(kwh_consumed_ac), sum(voltage), min(voltage), \
             max(voltage)"
        ));
        assert!(staged.contains("max_voltage = GREATEST(h.max_voltage, EXCLUDED.max_voltage)"));
    }
}
