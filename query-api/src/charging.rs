//! The figures every analytics answer reports (one window, one bucket, one
//! vehicle of the fleet): DC against AC, efficiency, and the health band
//! efficiency puts a vehicle in.

use serde::Serialize;

use crate::error::ApiError;

/// DC against AC over some interval: the figures every analytics answer
/// (one window, one bucket, one vehicle of the fleet) reports, in the
/// original API's field names.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Charging {
    #[serde(rename = "sumDC")]
    pub sum_dc: f64,
    #[serde(rename = "sumAC")]
    pub sum_ac: f64,
    /// 100 × DC / AC rounded to 2 decimals; `null` when no AC was drawn.
    pub efficiency: Option<f64>,
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
            sum_dc,
            sum_ac,
            efficiency: efficiency(sum_dc, sum_ac),
            avg_battery_temp,
            vehicle_readings,
            meter_readings,
        }
    }
}

/// 100 × DC / AC rounded to 2 decimals; `None` when no AC was drawn.
pub fn efficiency(sum_dc: f64, sum_ac: f64) -> Option<f64> {
    (sum_ac > 0.0).then(|| (100.0 * sum_dc / sum_ac * 100.0).round() / 100.0)
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
