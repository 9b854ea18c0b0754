//! Interval energy from cumulative registers: the rule, for one pair of
//! consecutive readings of a device in event time. The worker applies it
//! while it stores readings, in order or late (`ingest-worker`'s
//! `registers` module); this is the only place it is written.
//!
//! The energy of the interval ending at a register reading is its register
//! minus the register of the device's previous reading in event time:
//!
//! - **no previous reading**, or a previous reading that stated its
//!   interval's energy instead (a device switching from interval readings to
//!   registers): a *baseline*, no energy. The interval readings before it
//!   already counted their own energy, so nothing is counted twice;
//! - **a decrease beyond the tolerance**: the meter rebooted, was replaced
//!   or wrapped, and started counting again from zero; the energy is the
//!   new register (the energy since the reset);
//! - **a decrease within the tolerance**: float jitter, no energy;
//! - **more energy than the ceiling allows for the elapsed time** (a delta
//!   or a post-reset count above `max_kw` × hours, plus the tolerance): an
//!   implausible jump, not counted but flagged, so operators see it;
//! - otherwise the difference.
//!
//! Each interval depends on its two ends only, so a late reading changes
//! exactly the interval it lands in (split in two), and an in-order replay
//! and any arrival order give the same energies.

use crate::domain::EventTime;

/// The limits a register delta is judged by.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RegisterRules {
    /// The most power a device can plausibly deliver or draw, in kW: a
    /// delta above it for the elapsed time is a jump.
    pub max_kw: f64,
    /// A decrease of at most this many kWh is float jitter, not a reset.
    pub reset_tolerance_kwh: f64,
}

impl RegisterRules {
    /// 1 MW, more than any car or bus charger draws (megawatt truck
    /// chargers want a higher ceiling: `REGISTER_MAX_KW`).
    pub const DEFAULT_MAX_KW: f64 = 1_000.0;
    /// 1 Wh: a meter counting in Wh rounds to it, and a float32 register
    /// near a million kWh is this coarse.
    pub const DEFAULT_RESET_TOLERANCE_KWH: f64 = 0.001;
}

impl Default for RegisterRules {
    fn default() -> Self {
        Self {
            max_kw: Self::DEFAULT_MAX_KW,
            reset_tolerance_kwh: Self::DEFAULT_RESET_TOLERANCE_KWH,
        }
    }
}

/// The reading before the one being derived, as far as the rule cares.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Previous {
    pub recorded_at: EventTime,
    /// Its register, or `None` when it stated its interval's energy.
    pub register: Option<f64>,
}

/// What the rule made of one register reading.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Derived {
    /// The device's first register reading, or its first after interval readings.
    Baseline,
    /// The register rose (or stayed) by this much.
    Counted(f64),
    /// The register fell: a new count, holding this much since the reset.
    Reset(f64),
    /// The register fell by no more than the tolerance.
    Jitter,
    /// More energy than the ceiling allows for the elapsed time: not counted.
    Jump,
}

impl Derived {
    /// The interval's energy in kWh.
    pub fn energy(self) -> f64 {
        match self {
            Derived::Counted(kwh) | Derived::Reset(kwh) => kwh,
            Derived::Baseline | Derived::Jitter | Derived::Jump => 0.0,
        }
    }

    pub fn is_jump(self) -> bool {
        matches!(self, Derived::Jump)
    }
}

impl RegisterRules {
    /// The energy of the interval ending at a reading of `register` kWh at
    /// `recorded_at`, after `previous` (same device, the newest earlier reading).
    pub fn derive(
        &self,
        previous: Option<Previous>,
        recorded_at: EventTime,
        register: f64,
    ) -> Derived {
        let Some(Previous {
            recorded_at: previous_at,
            register: Some(previous_register),
        }) = previous
        else {
            return Derived::Baseline;
        };
        let hours = (recorded_at.instant() - previous_at.instant()).as_seconds_f64() / 3600.0;
        let ceiling = self.max_kw * hours + self.reset_tolerance_kwh;
        let delta = register - previous_register;
        if delta >= 0.0 {
            if delta > ceiling {
                Derived::Jump
            } else {
                Derived::Counted(delta)
            }
        } else if -delta <= self.reset_tolerance_kwh {
            Derived::Jitter
        } else if register > ceiling {
            Derived::Jump
        } else {
            Derived::Reset(register)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minute(m: f64) -> EventTime {
        let base: chrono::DateTime<chrono::Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
        EventTime::new(base + chrono::TimeDelta::microseconds((m * 60e6) as i64))
    }

    /// Replays registers in event-time order through the rule.
    fn replay(readings: &[(f64, f64)]) -> Vec<f64> {
        let rules = RegisterRules::default();
        let mut previous = None;
        readings
            .iter()
            .map(|&(m, register)| {
                let derived = rules.derive(previous, minute(m), register);
                previous = Some(Previous {
                    recorded_at: minute(m),
                    register: Some(register),
                });
                derived.energy()
            })
            .collect()
    }

    #[test]
    fn the_domain_example_holds_with_and_without_the_late_reading() {
        // DOMAIN.md: a reboot at minute 4, and 100.75 @2.5 arriving late.
        let in_order = [
            (1.0, 100.0),
            (2.0, 100.5),
            (3.0, 101.25),
            (4.0, 0.5),
            (5.0, 1.0),
        ];
        assert_eq!(replay(&in_order), [0.0, 0.5, 0.75, 0.5, 0.5]);
        let with_late = [
            (1.0, 100.0),
            (2.0, 100.5),
            (2.5, 100.75),
            (3.0, 101.25),
            (4.0, 0.5),
            (5.0, 1.0),
        ];
        assert_eq!(replay(&with_late), [0.0, 0.5, 0.25, 0.5, 0.5, 0.5]);
    }

    #[test]
    fn jitter_jumps_and_switches_of_form() {
        let rules = RegisterRules::default();
        let after = |register| {
            Some(Previous {
                recorded_at: minute(0.0),
                register,
            })
        };
        assert_eq!(
            rules.derive(after(Some(10.0)), minute(1.0), 9.9995),
            Derived::Jitter
        );
        assert_eq!(
            rules.derive(after(Some(10.0)), minute(1.0), 9.99),
            Derived::Reset(9.99)
        );
        // One minute at 1 MW is 16.67 kWh.
        assert_eq!(
            rules.derive(after(Some(10.0)), minute(1.0), 26.0),
            Derived::Counted(16.0)
        );
        assert_eq!(
            rules.derive(after(Some(10.0)), minute(1.0), 27.0),
            Derived::Jump
        );
        // A replacement meter that starts far above the old one's count, or
        // far above zero, is a jump either way.
        assert_eq!(
            rules.derive(after(Some(10.0)), minute(1.0), 5000.0),
            Derived::Jump
        );
        assert_eq!(
            rules.derive(after(Some(9000.0)), minute(1.0), 5000.0),
            Derived::Jump
        );
        assert_eq!(
            rules.derive(after(None), minute(1.0), 5000.0),
            Derived::Baseline
        );
        assert_eq!(rules.derive(None, minute(1.0), 5000.0), Derived::Baseline);
        assert!(Derived::Jump.is_jump() && Derived::Jump.energy() == 0.0);
    }
}
