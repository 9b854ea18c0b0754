//! The fleet model: vehicles that charge and drive, meters that measure what
//! their charger draws from the grid, and the assignments between them.
//!
//! Time advances in steps of one reporting interval. At every step each
//! vehicle and each meter sends one reading, stamped with its own slightly
//! wrong clock (jitter). A vehicle charges through one meter at a time; every
//! `reassign_every` the whole fleet moves on to the next meter (vehicle `i`
//! uses meter `i + epoch`), and an assignment message says so, as a depot's
//! charger scheduling would. Meter `j` then measures exactly what its vehicle
//! draws, so a vehicle's efficiency over any window is its DC energy over
//! the AC energy of the meters it used.
//!
//! Delivery is as messy as real fleets: a fraction of readings arrives late
//! (held back a few steps) and a fraction is sent twice (a retried request).
//! Everything derives from the seed: the same [`FleetSpec`] gives the same
//! readings in the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use shared::domain::{Assignment, DeviceId, EventTime, MeterReading, Reading, VehicleReading};

/// Everything that defines a simulated fleet and how it reports.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    /// Vehicles, and as many meters.
    pub vehicles: u32,
    /// Ids are `<vehicle_prefix><n>` and `<meter_prefix><n>`, `n` from 1,
    /// zero-padded to at least two digits (`EV-01`).
    pub vehicle_prefix: String,
    pub meter_prefix: String,
    /// Nominal time of the first reporting step.
    pub start: DateTime<Utc>,
    /// Time between two readings of one device.
    pub interval: TimeDelta,
    /// Each reading's clock is off by up to this much either way; less than
    /// half the interval, so a device's readings keep their order.
    pub jitter: TimeDelta,
    /// Fraction of readings sent a second time.
    pub duplicate_fraction: f64,
    /// Fraction of readings that arrive late.
    pub late_fraction: f64,
    /// Late readings and second copies arrive up to this many steps later.
    pub max_delay_steps: u32,
    /// How often the fleet moves on to the next meter; `None` keeps every
    /// vehicle on its first meter.
    pub reassign_every: Option<TimeDelta>,
    /// Fraction of vehicles with a faulty charger (efficiency around 72%),
    /// spread evenly over the fleet.
    pub faulty_fraction: f64,
    pub seed: u64,
}

impl FleetSpec {
    /// A fleet of `vehicles` reporting every minute from `start`, delivered
    /// cleanly (no jitter, duplicates or late readings) and never reassigned.
    pub fn new(vehicles: u32, start: DateTime<Utc>) -> Self {
        Self {
            vehicles,
            vehicle_prefix: "EV-".to_owned(),
            meter_prefix: "MTR-".to_owned(),
            start,
            interval: TimeDelta::minutes(1),
            jitter: TimeDelta::zero(),
            duplicate_fraction: 0.0,
            late_fraction: 0.0,
            max_delay_steps: 5,
            reassign_every: None,
            faulty_fraction: 0.0,
            seed: 42,
        }
    }

    /// Checks the spec for values the model cannot honour.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.vehicles >= 1, "a fleet needs at least one vehicle");
        anyhow::ensure!(
            self.interval >= TimeDelta::milliseconds(1),
            "the reporting interval must be at least 1 ms"
        );
        anyhow::ensure!(
            self.jitter >= TimeDelta::zero() && self.jitter * 2 < self.interval,
            "the clock jitter must be less than half the reporting interval"
        );
        for (name, fraction) in [
            ("duplicate fraction", self.duplicate_fraction),
            ("late fraction", self.late_fraction),
            ("faulty fraction", self.faulty_fraction),
        ] {
            anyhow::ensure!(
                (0.0..=1.0).contains(&fraction),
                "the {name} must be between 0 and 1, not {fraction}"
            );
        }
        if let Some(every) = self.reassign_every {
            anyhow::ensure!(
                every >= self.interval,
                "reassignments must be at least one reporting interval apart"
            );
        }
        Ok(())
    }

    /// Nominal time of step `step`.
    pub fn step_time(&self, step: u64) -> DateTime<Utc> {
        self.start + self.interval * i32::try_from(step).unwrap_or(i32::MAX)
    }

    /// The assignment epoch that step `step` falls in.
    fn epoch(&self, step: u64) -> u64 {
        match self.reassign_every {
            None => 0,
            Some(every) => {
                let elapsed = (self.interval * step as i32).num_milliseconds();
                (elapsed / every.num_milliseconds()).max(0) as u64
            }
        }
    }

    /// Distinct readings and assignments in the first `steps` steps (without
    /// second copies, with the late ones).
    pub fn unique_messages(&self, steps: u64) -> u64 {
        let epochs = if steps == 0 {
            0
        } else {
            self.epoch(steps - 1) + 1
        };
        u64::from(self.vehicles) * (2 * steps + epochs)
    }
}

fn device_ids(prefix: &str, n: u32) -> Vec<DeviceId> {
    let width = n.to_string().len().max(2);
    (1..=n)
        .map(|i| DeviceId::parse(&format!("{prefix}{i:0width$}")).expect("generated ids are valid"))
        .collect()
}

struct Vehicle {
    id: DeviceId,
    /// Charging power at the grid, kW.
    power_kw: f64,
    /// DC stored / AC drawn.
    efficiency: f64,
    capacity_kwh: f64,
    soc: f64,
    charging: bool,
}

/// What a tick sent, counted as the fleet goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    /// Distinct readings and assignments generated so far.
    pub unique: u64,
    /// Second copies scheduled.
    pub duplicates: u64,
    /// Readings held back to arrive late.
    pub late: u64,
}

/// The messages one step sends, in sending order.
pub struct Tick {
    pub step: u64,
    /// Nominal time of the step.
    pub at: DateTime<Utc>,
    pub readings: Vec<Reading>,
}

/// A running fleet: call [`Fleet::tick`] once per step, and
/// [`Fleet::finish`] at the end for what is still held back.
pub struct Fleet {
    spec: FleetSpec,
    rng: fastrand::Rng,
    vehicles: Vec<Vehicle>,
    meters: Vec<DeviceId>,
    next_step: u64,
    epoch: Option<u64>,
    /// Held-back readings by the step they arrive at.
    held_back: BTreeMap<u64, Vec<Reading>>,
    stats: DeliveryStats,
}

const FAULTY_EFFICIENCY: f64 = 0.72;

impl Fleet {
    pub fn new(spec: FleetSpec) -> anyhow::Result<Self> {
        spec.validate()?;
        let mut rng = fastrand::Rng::with_seed(spec.seed);
        let vehicles = device_ids(&spec.vehicle_prefix, spec.vehicles)
            .into_iter()
            .enumerate()
            .map(|(i, id)| {
                // Evenly spread: with 0.2, every fifth vehicle.
                let n = i as f64 + 1.0;
                let faulty =
                    (n * spec.faulty_fraction).floor() > ((n - 1.0) * spec.faulty_fraction).floor();
                Vehicle {
                    id,
                    power_kw: 7.0 + 15.0 * rng.f64(),
                    efficiency: if faulty {
                        FAULTY_EFFICIENCY + 0.02 * rng.f64()
                    } else {
                        0.87 + 0.07 * rng.f64()
                    },
                    capacity_kwh: 50.0 + 50.0 * rng.f64(),
                    soc: 20.0 + 60.0 * rng.f64(),
                    charging: rng.bool(),
                }
            })
            .collect();
        let meters = device_ids(&spec.meter_prefix, spec.vehicles);
        Ok(Self {
            spec,
            rng,
            vehicles,
            meters,
            next_step: 0,
            epoch: None,
            held_back: BTreeMap::new(),
            stats: DeliveryStats::default(),
        })
    }

    pub fn spec(&self) -> &FleetSpec {
        &self.spec
    }

    pub fn stats(&self) -> DeliveryStats {
        self.stats
    }

    /// Nominal time of the next step.
    pub fn next_time(&self) -> DateTime<Utc> {
        self.spec.step_time(self.next_step)
    }

    /// Generates the next step: assignments when the fleet moves on, one
    /// reading per vehicle and per meter, then whatever was held back until now.
    pub fn tick(&mut self) -> Tick {
        let step = self.next_step;
        self.next_step += 1;
        let at = self.spec.step_time(step);
        let n = self.vehicles.len();
        let mut generated = Vec::with_capacity(2 * n);

        let epoch = self.spec.epoch(step);
        if self.epoch != Some(epoch) {
            self.epoch = Some(epoch);
            // Half an interval before the step: between two readings of any device.
            let starts_at = EventTime::new(at - self.spec.interval / 2);
            for (i, vehicle) in self.vehicles.iter().enumerate() {
                generated.push(Reading::Assignment(Assignment {
                    vehicle_id: vehicle.id.clone(),
                    meter_id: Some(self.meters[(i + epoch as usize) % n].clone()),
                    starts_at,
                }));
            }
        }

        let hours = self.spec.interval.num_milliseconds() as f64 / 3_600_000.0;
        let mut drawn_ac = vec![0.0; n];
        for (i, vehicle) in self.vehicles.iter_mut().enumerate() {
            let (kwh_ac, kwh_dc) = vehicle.advance(hours, &mut self.rng);
            drawn_ac[(i + epoch as usize) % n] = kwh_ac;
            let recorded_at = jittered(at, self.spec.jitter, &mut self.rng);
            generated.push(Reading::Vehicle(VehicleReading {
                vehicle_id: vehicle.id.clone(),
                recorded_at,
                soc: round_to(vehicle.soc, 1),
                kwh_delivered_dc: round_to(kwh_dc, 4),
                battery_temp: round_to(
                    22.0 + if vehicle.charging { 8.0 } else { 2.0 } + 3.0 * self.rng.f64(),
                    1,
                ),
            }));
        }
        for (meter, kwh_ac) in self.meters.iter().zip(drawn_ac) {
            let recorded_at = jittered(at, self.spec.jitter, &mut self.rng);
            generated.push(Reading::Meter(MeterReading {
                meter_id: meter.clone(),
                recorded_at,
                kwh_consumed_ac: round_to(kwh_ac, 4),
                voltage: round_to(228.0 + 6.0 * self.rng.f64(), 1),
            }));
        }
        self.stats.unique += generated.len() as u64;

        let mut readings = Vec::with_capacity(generated.len());
        let max_delay = u64::from(self.spec.max_delay_steps.max(1));
        for reading in generated {
            if self.rng.f64() < self.spec.duplicate_fraction {
                self.stats.duplicates += 1;
                let due = step + self.rng.u64(0..=max_delay);
                self.held_back.entry(due).or_default().push(reading.clone());
            }
            if self.rng.f64() < self.spec.late_fraction {
                self.stats.late += 1;
                let due = step + self.rng.u64(1..=max_delay);
                self.held_back.entry(due).or_default().push(reading);
            } else {
                readings.push(reading);
            }
        }
        if let Some(due) = self.held_back.remove(&step) {
            readings.extend(due);
        }
        Tick { step, at, readings }
    }

    /// Everything still held back, in arrival order: the end of a run.
    pub fn finish(&mut self) -> Vec<Reading> {
        std::mem::take(&mut self.held_back)
            .into_values()
            .flatten()
            .collect()
    }

    /// Runs `steps` steps and [`Fleet::finish`]es: every message of a
    /// finite history, in sending order.
    pub fn history(mut self, steps: u64) -> impl Iterator<Item = Vec<Reading>> {
        let mut finished = false;
        std::iter::from_fn(move || {
            if self.next_step < steps {
                Some(self.tick().readings)
            } else if !finished {
                finished = true;
                Some(self.finish())
            } else {
                None
            }
        })
    }
}

impl Vehicle {
    /// One interval of charging or driving; returns (AC drawn, DC stored) in kWh.
    fn advance(&mut self, hours: f64, rng: &mut fastrand::Rng) -> (f64, f64) {
        if self.charging {
            let kwh_ac = self.power_kw * hours * (0.95 + 0.1 * rng.f64());
            let kwh_dc = kwh_ac * self.efficiency * (0.99 + 0.02 * rng.f64());
            self.soc = (self.soc + 100.0 * kwh_dc / self.capacity_kwh).min(100.0);
            if self.soc >= 90.0 + 10.0 * rng.f64() {
                self.charging = false;
            }
            (kwh_ac, kwh_dc)
        } else {
            // Driving at 10-20 kW on average.
            let used = (10.0 + 10.0 * rng.f64()) * hours;
            self.soc = (self.soc - 100.0 * used / self.capacity_kwh).max(0.0);
            if self.soc <= 20.0 + 20.0 * rng.f64() {
                self.charging = true;
            }
            (0.0, 0.0)
        }
    }
}

fn jittered(at: DateTime<Utc>, jitter: TimeDelta, rng: &mut fastrand::Rng) -> EventTime {
    let micros = jitter.num_microseconds().unwrap_or(0);
    if micros == 0 {
        return EventTime::new(at);
    }
    EventTime::new(at + TimeDelta::microseconds(rng.i64(-micros..=micros)))
}

fn round_to(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    fn start() -> DateTime<Utc> {
        "2026-11-29T00:00:00Z".parse().unwrap()
    }

    fn messy(seed: u64) -> FleetSpec {
        FleetSpec {
            jitter: TimeDelta::seconds(2),
            duplicate_fraction: 0.05,
            late_fraction: 0.05,
            reassign_every: Some(TimeDelta::hours(1)),
            faulty_fraction: 0.2,
            seed,
            ..FleetSpec::new(50, start())
        }
    }

    fn encoded(spec: FleetSpec, steps: u64) -> Vec<Vec<u8>> {
        Fleet::new(spec)
            .unwrap()
            .history(steps)
            .flatten()
            .map(|r| shared::wire::encode(&r).unwrap())
            .collect()
    }

    fn key(reading: &Reading) -> (u8, String, DateTime<Utc>) {
        match reading {
            Reading::Vehicle(v) => (0, v.vehicle_id.to_string(), v.recorded_at.instant()),
            Reading::Meter(m) => (1, m.meter_id.to_string(), m.recorded_at.instant()),
            Reading::Assignment(a) => (2, a.vehicle_id.to_string(), a.starts_at.instant()),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_messages_and_another_seed_others() {
        assert_eq!(encoded(messy(7), 120), encoded(messy(7), 120));
        assert_ne!(encoded(messy(7), 120), encoded(messy(8), 120));
    }

    #[test]
    fn every_unique_message_is_sent_and_the_fractions_hold() {
        let spec = messy(1);
        let steps = 180;
        let mut fleet = Fleet::new(spec.clone()).unwrap();
        let mut sent = Vec::new();
        for _ in 0..steps {
            sent.extend(fleet.tick().readings);
        }
        sent.extend(fleet.finish());
        let stats = fleet.stats();
        let unique: HashSet<_> = sent.iter().map(key).collect();

        // 50 vehicles + 50 meters per step, and 50 assignments per hour.
        assert_eq!(unique.len() as u64, spec.unique_messages(steps));
        assert_eq!(unique.len() as u64, 100 * steps + 50 * 3);
        assert_eq!(stats.unique, unique.len() as u64);
        assert_eq!(sent.len() as u64, stats.unique + stats.duplicates);
        let share = |n: u64| n as f64 / stats.unique as f64;
        assert!((0.04..0.06).contains(&share(stats.duplicates)), "{stats:?}");
        assert!((0.04..0.06).contains(&share(stats.late)), "{stats:?}");
    }

    #[test]
    fn clocks_jitter_within_bounds_and_keep_each_device_in_order() {
        let spec = messy(3);
        let mut by_device: HashMap<(u8, String), Vec<DateTime<Utc>>> = HashMap::new();
        let mut fleet = Fleet::new(spec.clone()).unwrap();
        for _ in 0..60 {
            let tick = fleet.tick();
            for reading in &tick.readings {
                let (kind, id, at) = key(reading);
                if kind == 2 {
                    continue;
                }
                if at > tick.at - TimeDelta::seconds(3) {
                    // Sent on time: within the jitter of this step.
                    assert!((at - tick.at).abs() <= spec.jitter, "{at} vs {}", tick.at);
                }
                by_device.entry((kind, id)).or_default().push(at);
            }
        }
        for times in by_device.values_mut() {
            times.sort();
            times.dedup();
            assert!(times
                .windows(2)
                .all(|w| w[1] - w[0] >= spec.interval - spec.jitter * 2));
        }
    }

    #[test]
    fn each_meter_draws_what_its_assigned_vehicle_stores_over_its_efficiency() {
        let spec = FleetSpec {
            reassign_every: Some(TimeDelta::minutes(30)),
            faulty_fraction: 0.2,
            ..FleetSpec::new(10, start())
        };
        let mut assigned: HashMap<String, String> = HashMap::new();
        let (mut dc, mut ac): (HashMap<String, f64>, HashMap<String, f64>) = Default::default();
        let mut fleet = Fleet::new(spec).unwrap();
        for _ in 0..24 * 60 {
            let readings = fleet.tick().readings;
            for reading in &readings {
                if let Reading::Assignment(a) = reading {
                    let meter = a.meter_id.as_ref().unwrap().to_string();
                    assigned.insert(meter, a.vehicle_id.to_string());
                }
            }
            for reading in &readings {
                match reading {
                    Reading::Vehicle(v) => {
                        *dc.entry(v.vehicle_id.to_string()).or_default() += v.kwh_delivered_dc
                    }
                    Reading::Meter(m) => {
                        *ac.entry(assigned[m.meter_id.as_str()].clone()).or_default() +=
                            m.kwh_consumed_ac
                    }
                    Reading::Assignment(_) => {}
                }
            }
        }
        let efficiency = |id: &str| 100.0 * dc[id] / ac[id];
        assert_eq!(assigned.len(), 10, "every meter serves one vehicle");
        // Every fifth vehicle is faulty; the others are healthy.
        for (n, id) in (1..=10).map(|n| (n, format!("EV-{n:02}"))) {
            let e = efficiency(&id);
            if n % 5 == 0 {
                assert!((70.0..75.0).contains(&e), "{id}: {e}");
            } else {
                assert!((85.0..95.0).contains(&e), "{id}: {e}");
            }
        }
    }

    #[test]
    fn impossible_specs_are_refused_with_the_reason() {
        let refused = |spec: FleetSpec| Fleet::new(spec).err().unwrap().to_string();
        let base = FleetSpec::new(3, start());
        assert!(refused(FleetSpec {
            jitter: TimeDelta::seconds(30),
            ..base.clone()
        })
        .contains("jitter"));
        assert!(refused(FleetSpec {
            vehicles: 0,
            ..base.clone()
        })
        .contains("at least one vehicle"));
        assert!(refused(FleetSpec {
            duplicate_fraction: 1.5,
            ..base
        })
        .contains("duplicate fraction"));
    }
}
