//! Writing generated readings into PostgreSQL: straight with binary COPY,
//! the limit the worker's drain is compared with; and through the worker's
//! own write path, for the query benchmark's day of history.

use fleet_sim::fleet::{Fleet, FleetSpec};
use ingest_worker::copy::encode_rows;
use ingest_worker::store::write_batch;
use ingest_worker::stream::{HistoryRow, Stream, StreamReading, METERS, VEHICLES};
use shared::domain::{Assignment, MeterReading, Reading, VehicleReading};
use sqlx::{PgConnection, PgPool};

/// Rows per COPY statement: large enough that per-statement costs vanish.
const CHUNK_ROWS: usize = 200_000;

/// Readings split by table.
#[derive(Default)]
pub struct Rows<'a> {
    pub vehicles: Vec<&'a VehicleReading>,
    pub meters: Vec<&'a MeterReading>,
    pub assignments: Vec<&'a Assignment>,
}

impl<'a> Rows<'a> {
    pub fn split(readings: &'a [Reading]) -> Self {
        let mut rows = Self::default();
        for reading in readings {
            match reading {
                Reading::Vehicle(v) => rows.vehicles.push(v),
                Reading::Meter(m) => rows.meters.push(m),
                Reading::Assignment(a) => rows.assignments.push(a),
            }
        }
        rows
    }
}

/// Binary COPY streams of the history rows, ready to send.
pub struct Encoded {
    pub vehicles: Vec<Vec<u8>>,
    pub meters: Vec<Vec<u8>>,
    pub rows: u64,
}

impl Encoded {
    pub fn new(rows: &Rows<'_>) -> Self {
        Self {
            vehicles: rows.vehicles.chunks(CHUNK_ROWS).map(encode).collect(),
            meters: rows.meters.chunks(CHUNK_ROWS).map(encode).collect(),
            rows: (rows.vehicles.len() + rows.meters.len()) as u64,
        }
    }
}

/// The COPY stream of interval readings, as the worker writes them.
fn encode<R: StreamReading>(chunk: &[&R]) -> Vec<u8> {
    let rows: Vec<HistoryRow<R>> = chunk
        .iter()
        .map(|&reading| HistoryRow {
            reading,
            derived: None,
        })
        .collect();
    encode_rows(&rows)
}

/// Sends COPY streams into `stream`'s history table; returns the rows stored.
pub async fn copy(
    conn: &mut PgConnection,
    stream: &Stream,
    encoded: &[Vec<u8>],
) -> anyhow::Result<u64> {
    let mut stored = 0;
    for data in encoded {
        let mut copy = conn
            .copy_in_raw(&stream.copy_statement(stream.history))
            .await?;
        copy.send(data.as_slice()).await?;
        stored += copy.finish().await?;
    }
    Ok(stored)
}

/// Both history tables from one client connection in one transaction, as
/// fast as PostgreSQL takes them: the limit for the worker.
pub async fn copy_history(pool: &PgPool, encoded: &Encoded) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let stored = copy(&mut tx, &VEHICLES, &encoded.vehicles).await?
        + copy(&mut tx, &METERS, &encoded.meters).await?;
    tx.commit().await?;
    Ok(stored)
}

/// Readings stored per `write_batch` call: the worker's default batch.
const BATCH_READINGS: usize = 100_000;

/// Generates `steps` steps of `spec` and stores them through the worker's
/// own write path (`write_batch`: history, rollups at every level and
/// current state in one transaction), two batches at a time over
/// device-disjoint halves, as the worker writes partition groups; returns
/// (vehicle rows, meter rows).
pub async fn store_fleet(pool: &PgPool, spec: FleetSpec, steps: u64) -> anyhow::Result<(u64, u64)> {
    let mut fleet = Fleet::new(spec)?;
    let (mut vehicle_rows, mut meter_rows) = (0, 0);
    let mut pending: Vec<Reading> = Vec::new();
    for step in 0..steps {
        pending.extend(fleet.tick().readings);
        let last = step + 1 == steps;
        if last {
            pending.extend(fleet.finish());
        }
        if pending.len() < BATCH_READINGS && !last {
            continue;
        }
        let (even, odd): (Vec<Reading>, Vec<Reading>) = pending
            .drain(..)
            .partition(|reading| half_of(reading.device_id().as_str()));
        let (a, b) = tokio::join!(write_batch(pool, &even), write_batch(pool, &odd));
        for outcome in [a?, b?] {
            vehicle_rows += outcome.vehicle_rows;
            meter_rows += outcome.meter_rows;
        }
    }
    Ok((vehicle_rows, meter_rows))
}

/// Which of two device-disjoint halves a device's readings go to.
fn half_of(device: &str) -> bool {
    device.bytes().fold(0u32, |hash, b| {
        hash.wrapping_mul(31).wrapping_add(u32::from(b))
    }) % 2
        == 0
}
