//! Database access that more than one binary needs: the connection pool, the
//! embedded migrations, and the start-up check that refuses to run against a
//! database whose schema is older than this build.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::config::DbArgs;
use crate::retry::Backoff;

/// The migrations in `migrations/`, embedded at build time (no live database needed).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("the database is not migrated (missing migration {missing}): run `ingest-worker migrate` first")]
    NotMigrated { missing: i64 },
    #[error("cannot read the migration state")]
    Database(#[from] sqlx::Error),
}

/// Opens a pool whose sessions carry `application_name` (so operators can
/// tell them apart in `pg_stat_activity`) and a statement timeout (a hung
/// statement fails as a transient error instead of blocking forever).
/// Connections are made lazily so a service can start (and report
/// not-ready) while PostgreSQL is still coming up.
pub fn pool(args: &DbArgs, application_name: &str) -> Result<PgPool, sqlx::Error> {
    Ok(pool_with(
        args.connect_options()?,
        args,
        application_name,
        Duration::from_secs(5),
    ))
}

/// A pool to the server at `url` (a streaming replica, say), with the same
/// sizing and session settings as [`pool`] gives the one in `args`, and its
/// own `acquire_timeout`: how long a request waits for a connection (sqlx
/// keeps retrying a refused connection until then) before it may try
/// another server.
pub fn pool_at(
    url: &str,
    args: &DbArgs,
    application_name: &str,
    acquire_timeout: Duration,
) -> Result<PgPool, sqlx::Error> {
    Ok(pool_with(
        url.parse()?,
        args,
        application_name,
        acquire_timeout,
    ))
}

fn pool_with(
    options: sqlx::postgres::PgConnectOptions,
    args: &DbArgs,
    application_name: &str,
    acquire_timeout: Duration,
) -> PgPool {
    let options = options.application_name(application_name).options([
        (
            "statement_timeout",
            format!("{}ms", args.db_statement_timeout_ms),
        ),
        // PostgreSQL compiles a statement to machine code (JIT) once the
        // planner's cost estimate passes `jit_above_cost`, and estimates on
        // tables it has no statistics of yet pass it easily: compiling the
        // per-vehicle figures' pass took about 3 s, every pass, for a
        // statement that then ran in 1.5 ms (BENCHMARKS.md). These statements
        // are index probes and set joins over modest row counts, never the
        // long expression-heavy scans JIT pays off for.
        ("jit", "off".to_owned()),
    ]);
    PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(options)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Fails unless every migration this build knows has been applied.
pub async fn ensure_migrated(pool: &PgPool) -> Result<(), SchemaError> {
    let table_exists: bool =
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(pool)
            .await?;
    let applied: Vec<i64> = if table_exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    match MIGRATOR
        .iter()
        .map(|migration| migration.version)
        .find(|version| !applied.contains(version))
    {
        Some(missing) => Err(SchemaError::NotMigrated { missing }),
        None => Ok(()),
    }
}

/// Waits for PostgreSQL, retrying transient failures with backoff (the
/// database may still be starting), then fails unless it is migrated.
pub async fn wait_until_migrated(pool: &PgPool) -> Result<(), SchemaError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match ensure_migrated(pool).await {
            Err(SchemaError::Database(error)) if is_transient(&error) => {
                let delay = backoff.next_delay();
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "database not reachable yet");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}

/// Whether retrying the same statement later may succeed: SQLSTATE classes
/// 08 (connection), 40 (transaction rollback, e.g. serialization failure),
/// 53 (insufficient resources), 57 (operator intervention, e.g. the server
/// shutting down), and client-side connection or pool failures.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// True when PostgreSQL answers a trivial query (readiness probes).
pub async fn is_reachable(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

/// The name, in `energy_settings`, of the workers' RETENTION_DAYS.
pub const RETENTION_DAYS_SETTING: &str = "retention_days";

/// Records a setting the worker runs with, for the other services to check.
pub async fn record_setting(pool: &PgPool, name: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO energy_settings (name, value) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
    )
    .bind(name)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}

/// A setting the workers recorded; `None` before any worker has run.
pub async fn recorded_setting(pool: &PgPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT value FROM energy_settings WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Fails, saying how to fix it, unless this role may create temporary
/// tables in the database (the worker stages duplicate-bearing batches in them).
pub async fn ensure_temp_privilege(pool: &PgPool) -> anyhow::Result<()> {
    let (database, role, allowed): (String, String, bool) = sqlx::query_as(
        "SELECT current_database(), current_user::text,
                has_database_privilege(current_database(), 'TEMPORARY')",
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(
        allowed,
        "the database role {role} may not create temporary tables in {database}: the worker \
         stages batches that hold already stored readings in them; \
         GRANT TEMPORARY ON DATABASE {database} TO {role}"
    );
    Ok(())
}
