//! Where a query-api statement runs: on only the partitions its window
//! needs, or on the partitioned tables when one is missing. The SQL
//! building blocks themselves live in [`shared::analytics_sql`], shared
//! with the worker's per-vehicle figures.

use std::future::Future;

pub use shared::analytics_sql::*;

use crate::params::Window;

/// Runs a query on only the partitions `window` needs; if one of them is
/// missing (the worker's upkeep has not made it yet, or it was dropped by
/// hand), runs it again on the partitioned tables, which miss nothing.
pub async fn with_named_partitions<T, F, Fut>(window: Window, run: F) -> Result<T, sqlx::Error>
where
    F: Fn(&Sources) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    named_or_parents(
        Sources::for_window(window.from, window.to),
        Sources::parents(),
        run,
    )
    .await
}

/// Runs a query on the partitions `named`; if one of them is missing, runs
/// it again on `parents`, the same sources with the partitioned tables.
pub async fn named_or_parents<S, T, F, Fut>(named: S, parents: S, run: F) -> Result<T, sqlx::Error>
where
    F: Fn(&S) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match run(&named).await {
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42P01") => {
            tracing::warn!(%error, "a partition the window needs is missing: reading the partitioned tables");
            run(&parents).await
        }
        other => other,
    }
}
