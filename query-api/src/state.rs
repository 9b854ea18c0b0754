//! What every handler is given ([`AppState`]), and the one check of the
//! window a request asks for against the configured limits.

use std::future::Future;
use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use shared::wire::{format_timestamp, ValidationRules};
use sqlx::PgPool;

use crate::answers::AnswerCache;
use crate::charging::Thresholds;
use crate::error::ApiError;
use crate::params::{QueryParams, Window};
use crate::performance::Performance;
use crate::reads::ReadPools;
use crate::sql::{with_named_partitions, Sources};

#[derive(Clone)]
pub struct AppState {
    /// Where answers are read: the primary, or replicas (QUERY_DATABASE_URLS).
    pub reads: Arc<ReadPools>,
    /// Longest window a request may ask for (MAX_WINDOW_DAYS).
    pub max_window: TimeDelta,
    pub thresholds: Thresholds,
    /// Days of raw readings the worker keeps (RETENTION_DAYS).
    pub retention_days: u32,
    /// Performance answers kept between requests ([`crate::answers`]).
    pub answers: Arc<AnswerCache<Performance>>,
}

impl AppState {
    /// Runs a query over `window` where reads run ([`ReadPools::read`]):
    /// `query` makes it for the window's partitions and runs it on the pool
    /// it is given (again on the partitioned tables should one be missing,
    /// [`with_named_partitions`]).
    pub async fn read_window<T, F, Fut>(&self, window: Window, query: F) -> Result<T, ApiError>
    where
        F: Fn(&Sources, PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let query = &query;
        let answer = self
            .reads
            .read(|pool| async move {
                with_named_partitions(window, |sources| query(sources, pool.clone())).await
            })
            .await?;
        Ok(answer)
    }

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
