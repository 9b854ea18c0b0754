//! The figures every analytics answer reports (one window, one bucket, one
//! vehicle of the fleet): DC against AC, efficiency, and the health band
//! efficiency puts a vehicle in; and the precision answers report them in.
//!
//! Sums are computed exactly (in float8, from rollups and raw readings) and
//! rounded only when answered: energy to the watt-hour (three decimals of
//! kWh, what a meter shows and a bill counts), temperatures and voltages to
//! two decimals, efficiency to two decimals from the unrounded sums.

use serde::Serialize;

use crate::error::ApiError;

/// Energy as answered: kWh to the watt-hour.
pub fn kwh(value: f64) -> f64 {
    round_to(value, 1_000.0)
}

/// Temperatures (°C) and voltages (V) as answered: two decimals.
pub fn hundredths(value: f64) -> f64 {
    round_to(value, 100.0)
}

/// `value` to the nearest `1 / scale`, halves away from zero, as if the
/// sum had been exact. A float8 sum carries noise in its last bits that
/// depends on the order it was added in (rollups, raw readings, per-vehicle
/// figures): a total of exactly 111.3805 kWh comes out as 111.38049999…
/// one way and 111.3805000…1 another. Snapped first to a millionth of the
/// unit it is rounded to (far above that noise, far below anything a
/// reading carries), it rounds the same whichever way it was added.
fn round_to(value: f64, scale: f64) -> f64 {
    let units = value * scale;
    // Beyond 2^53 / 10^6 units a millionth is below float8's resolution.
    let snapped = if units.abs() < 1e9 {
        (units * 1e6).round() / 1e6
    } else {
        units
    };
    snapped.round() / scale
}

/// DC against AC over some interval: the figures every analytics answer
/// (one window, one bucket, one vehicle of the fleet) reports, in the
/// original API's field names.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Charging {
    /// kWh, to the watt-hour (3 decimals).
    #[serde(rename = "sumDC")]
    pub sum_dc: f64,
    /// kWh, to the watt-hour (3 decimals).
    #[serde(rename = "sumAC")]
    pub sum_ac: f64,
    /// 100 × DC / AC of the unrounded sums, to 2 decimals; `null` when no AC was drawn.
    pub efficiency: Option<f64>,
    /// °C, to 2 decimals.
    pub avg_battery_temp: Option<f64>,
    pub vehicle_readings: i64,
    pub meter_readings: i64,
}

impl Charging {
    pub fn new(
        vehicle_readings: i64,
        sum_dc: f64,
        avg_battery_temp: Option<f64>,
        meter_readings: i64,
        sum_ac: f64,
    ) -> Self {
        Self {
            sum_dc: kwh(sum_dc),
            sum_ac: kwh(sum_ac),
            efficiency: efficiency(sum_dc, sum_ac),
            avg_battery_temp: avg_battery_temp.map(hundredths),
            vehicle_readings,
            meter_readings,
        }
    }
}

/// 100 × DC / AC rounded to 2 decimals; `None` when no AC was drawn.
pub fn efficiency(sum_dc: f64, sum_ac: f64) -> Option<f64> {
    (sum_ac > 0.0).then(|| hundredths(100.0 * sum_dc / sum_ac))
}

/// Where a vehicle's efficiency puts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Health {
    Healthy,
    Warning,
    Critical,
    /// No AC energy was drawn in the window: efficiency is undefined.
    Unknown,
}

impl Health {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        match raw {
            "HEALTHY" => Ok(Self::Healthy),
            "WARNING" => Ok(Self::Warning),
            "CRITICAL" => Ok(Self::Critical),
            "UNKNOWN" => Ok(Self::Unknown),
            _ => Err(ApiError::BadRequest(
                "status must be HEALTHY, WARNING, CRITICAL or UNKNOWN (comma-separated for several)".into(),
            )),
        }
    }
}

/// Efficiency bands, in percent: at or above `healthy` is HEALTHY, at or
/// above `warning` WARNING, below it CRITICAL.
#[derive(Clone, Copy, Debug, Serialize, utoipa::ToSchema)]
pub struct Thresholds {
    pub healthy: f64,
    pub warning: f64,
}

impl Thresholds {
    pub fn classify(&self, efficiency: Option<f64>) -> Health {
        match efficiency {
            None => Health::Unknown,
            Some(e) if e >= self.healthy => Health::Healthy,
            Some(e) if e >= self.warning => Health::Warning,
            Some(_) => Health::Critical,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_answered_without_binary_tails() {
        let charging = Charging::new(3, 0.1 + 0.2 + 11.3812, Some(26.236666), 3, 15.0);
        assert_eq!(charging.sum_dc, 11.681);
        assert_eq!(
            serde_json::to_value(&charging).unwrap()["sumDC"],
            serde_json::json!(11.681)
        );
        assert_eq!(charging.avg_battery_temp, Some(26.24));
        // Efficiency from the unrounded sums: 100 × 11.6812 / 15 = 77.874…
        assert_eq!(charging.efficiency, Some(77.87));
        assert_eq!(kwh(0.0004999), 0.0);
        assert_eq!(kwh(2.0005), 2.001);
    }

    #[test]
    fn a_sum_on_a_half_rounds_the_same_whichever_order_it_was_added_in() {
        // The same exact total, 111.3805 kWh, as two summation orders
        // leave it: one ulp either side.
        let below = 111.3805_f64.next_down();
        let above = 111.3805_f64.next_up();
        assert_eq!(kwh(below), 111.381);
        assert_eq!(kwh(above), 111.381);
        assert_eq!(kwh(-below), -111.381);
        assert_eq!(hundredths(29.125_f64.next_down()), 29.13);
        // Real differences stay: a hundredth of a Wh is not noise.
        assert_eq!(kwh(111.38049), 111.38);
    }

    #[test]
    fn bands() {
        let t = Thresholds {
            healthy: 85.0,
            warning: 70.0,
        };
        assert_eq!(t.classify(Some(85.0)), Health::Healthy);
        assert_eq!(t.classify(Some(84.99)), Health::Warning);
        assert_eq!(t.classify(Some(70.0)), Health::Warning);
        assert_eq!(t.classify(Some(69.99)), Health::Critical);
        assert_eq!(t.classify(None), Health::Unknown);
    }
}
