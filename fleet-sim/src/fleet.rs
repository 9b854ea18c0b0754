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
//! A fraction of the devices reports cumulative registers instead of each
//! interval's energy, as OCPP meters and battery systems do; their counts
//! start anywhere, restart from zero when a device reboots, and jump to an
//! unrelated count when a device is replaced (the system does not count
//! that interval, so its energy is lost, as it is in the field).
//! Everything derives from the seed: the same [`FleetSpec`] gives the same
//! readings in the same order.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};
use shared::domain::{
    Assignment, DeviceId, Energy, EventTime, MeterReading, Reading, VehicleReading,
};

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
    /// Fraction of vehicles, and of meters, that report a cumulative
    /// register (`kwhRegisterDc`, `kwhRegisterAc`), spread evenly.
    pub register_fraction: f64,
    /// Chance, per register device and step, that it rebooted during the
    /// step: its register restarts from zero.
    pub reboot_probability: f64,
    /// Chance, per register device and step, that it was replaced during
    /// the step: the new device's register holds an unrelated count.
    pub replacement_probability: f64,
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
            register_fraction: 0.0,
            reboot_probability: 0.0,
            replacement_probability: 0.0,
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
            ("register fraction", self.register_fraction),
            ("reboot probability", self.reboot_probability),
            ("replacement probability", self.replacement_probability),
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

/// Whether device `i` (from 0) is among an evenly spread `fraction`: with
/// 0.2, every fifth.
fn evenly_spread(i: usize, fraction: f64) -> bool {
    let n = i as f64 + 1.0;
    (n * fraction).floor() > ((n - 1.0) * fraction).floor()
}

/// A device's cumulative register, for devices that report one.
struct Register {
    kwh: f64,
}

impl Register {
    /// A register that has counted for a while already.
    fn new(rng: &mut fastrand::Rng) -> Self {
        Self {
            kwh: 20_000.0 * rng.f64(),
        }
    }

    /// Counts one interval's `kwh`, after a reboot or a replacement by
    /// chance; returns what the device reports.
    fn count(
        &mut self,
        kwh: f64,
        spec: &FleetSpec,
        rng: &mut fastrand::Rng,
        stats: &mut DeliveryStats,
    ) -> Energy {
        if rng.f64() < spec.replacement_probability {
            stats.replacements += 1;
            self.kwh = 1_000.0 + 49_000.0 * rng.f64();
        } else if rng.f64() < spec.reboot_probability {
            stats.reboots += 1;
            self.kwh = 0.0;
        }
        self.kwh += kwh;
        Energy::Register(round_to(self.kwh, 4))
    }
}

struct Vehicle {
    id: DeviceId,
    /// Its battery system's lifetime DC count, if it reports one.
    register: Option<Register>,
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
    /// Register devices rebooted (count restarted from zero).
    pub reboots: u64,
    /// Register devices replaced (count jumped; that interval is not counted).
    pub replacements: u64,
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
    /// The registers of the meters that report one.
    meter_registers: Vec<Option<Register>>,
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
                let faulty = evenly_spread(i, spec.faulty_fraction);
                Vehicle {
                    id,
                    register: evenly_spread(i, spec.register_fraction)
                        .then(|| Register::new(&mut rng)),
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
        let meter_registers = (0..meters.len())
            .map(|i| evenly_spread(i, spec.register_fraction).then(|| Register::new(&mut rng)))
            .collect();
        Ok(Self {
            spec,
            rng,
            vehicles,
            meters,
            meter_registers,
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
            let dc = match &mut vehicle.register {
                Some(register) => {
                    register.count(kwh_dc, &self.spec, &mut self.rng, &mut self.stats)
                }
                None => Energy::Interval(round_to(kwh_dc, 4)),
            };
            generated.push(Reading::Vehicle(VehicleReading {
                vehicle_id: vehicle.id.clone(),
                recorded_at,
                soc: round_to(vehicle.soc, 1),
                dc,
                battery_temp: round_to(
                    22.0 + if vehicle.charging { 8.0 } else { 2.0 } + 3.0 * self.rng.f64(),
                    1,
                ),
            }));
        }
        for ((meter, register), kwh_ac) in self
            .meters
            .iter()
            .zip(&mut self.meter_registers)
            .zip(drawn_ac)
        {
            let recorded_at = jittered(at, self.spec.jitter, &mut self.rng);
            let ac = match register {
                Some(register) => {
                    register.count(kwh_ac, &self.spec, &mut self.rng, &mut self.stats)
                }
                None => Energy::Interval(round_to(kwh_ac, 4)),
            };
            generated.push(Reading::Meter(MeterReading {
                meter_id: meter.clone(),
                recorded_at,
                ac,
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

    /// Each vehicle's DC and its meters' AC over a day, registers replayed
    /// in order by the system's rule.
    fn a_days_energy(
        spec: FleetSpec,
    ) -> (HashMap<String, f64>, HashMap<String, f64>, DeliveryStats) {
        use shared::register::{Previous, RegisterRules};
        let rules = RegisterRules::default();
        let mut previous: HashMap<(u8, String), Previous> = HashMap::new();
        let mut interval = |kind: u8, id: &DeviceId, at: EventTime, energy: Energy| match energy {
            Energy::Interval(kwh) => kwh,
            Energy::Register(register) => {
                let last = previous.insert(
                    (kind, id.to_string()),
                    Previous {
                        recorded_at: at,
                        register: Some(register),
                    },
                );
                rules.derive(last, at, register).energy()
            }
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
                        *dc.entry(v.vehicle_id.to_string()).or_default() +=
                            interval(0, &v.vehicle_id, v.recorded_at, v.dc)
                    }
                    Reading::Meter(m) => {
                        *ac.entry(assigned[m.meter_id.as_str()].clone()).or_default() +=
                            interval(1, &m.meter_id, m.recorded_at, m.ac)
                    }
                    Reading::Assignment(_) => {}
                }
            }
        }
        assert_eq!(assigned.len(), 10, "every meter serves one vehicle");
        (dc, ac, fleet.stats())
    }

    /// Every fifth vehicle is faulty; the others are healthy.
    fn assert_efficiency_bands(dc: &HashMap<String, f64>, ac: &HashMap<String, f64>) {
        for (n, id) in (1..=10).map(|n| (n, format!("EV-{n:02}"))) {
            let e = 100.0 * dc[&id] / ac[&id];
            if n % 5 == 0 {
                assert!((70.0..75.0).contains(&e), "{id}: {e}");
            } else {
                assert!((85.0..95.0).contains(&e), "{id}: {e}");
            }
        }
    }

    #[test]
    fn each_meter_draws_what_its_assigned_vehicle_stores_over_its_efficiency() {
        let spec = FleetSpec {
            reassign_every: Some(TimeDelta::minutes(30)),
            faulty_fraction: 0.2,
            ..FleetSpec::new(10, start())
        };
        let (dc, ac, _) = a_days_energy(spec);
        assert_efficiency_bands(&dc, &ac);
    }

    #[test]
    fn register_devices_reboot_and_get_replaced_and_still_tell_the_same_efficiency() {
        let spec = FleetSpec {
            reassign_every: Some(TimeDelta::minutes(30)),
            faulty_fraction: 0.2,
            register_fraction: 0.5,
            reboot_probability: 0.002,
            replacement_probability: 0.0005,
            ..FleetSpec::new(10, start())
        };
        let registers = |readings: &[Reading]| {
            readings
                .iter()
                .filter(|r| match r {
                    Reading::Vehicle(v) => v.dc.register().is_some(),
                    Reading::Meter(m) => m.ac.register().is_some(),
                    Reading::Assignment(_) => false,
                })
                .count()
        };
        let first = Fleet::new(spec.clone()).unwrap().tick().readings;
        // Half the vehicles and half the meters: 5 + 5 of 20 readings.
        assert_eq!(registers(&first), 10);
        let (dc, ac, stats) = a_days_energy(spec);
        assert!(stats.reboots > 10 && stats.replacements > 2, "{stats:?}");
        assert_efficiency_bands(&dc, &ac);
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
