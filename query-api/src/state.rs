//! What every handler is given ([`AppState`]), and the one check of the
//! window a request asks for against the configured limits.

use chrono::{TimeDelta, Utc};
use shared::wire::{format_timestamp, ValidationRules};
use sqlx::PgPool;

use crate::charging::Thresholds;
use crate::error::ApiError;
use crate::params::{QueryParams, Window};

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Longest window a request may ask for (MAX_WINDOW_DAYS).
    pub max_window: TimeDelta,
    pub thresholds: Thresholds,
    /// Days of raw readings the worker keeps (RETENTION_DAYS).
    pub retention_days: u32,
}

impl AppState {
    /// The window a request asks for, checked against the limits: at most
    /// `max_window` long, and not starting before the raw readings'
    /// retention, since a window's edges are read from raw readings.
    pub fn window(&self, params: &QueryParams) -> Result<Window, ApiError> {
        let now = Utc::now();
        let window = Window::from_params(params, now, self.max_window)?;
        let rules = ValidationRules {
            retention_days: Some(self.retention_days),
            ..Default::default()
        };
        match rules.retention_cutoff(now) {
            Some(cutoff) if window.from < cutoff => Err(ApiError::BadRequest(format!(
                "from is before the {}-day retention of raw readings ({}): a window's edges need them",
                self.retention_days,
                format_timestamp(cutoff)
            ))),
            _ => Ok(window),
        }
    }
}
