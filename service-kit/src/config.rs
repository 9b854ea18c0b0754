//! Configuration groups shared by the binaries, `#[command(flatten)]`ed into
//! each one's clap struct. Every setting has an environment variable; doc
//! comments become `--help`.
//!
//! Secrets (the database URL and password) are never printed: these structs
//! deliberately do not derive `Debug`.

use chrono::TimeDelta;
use clap::Args;
use sqlx::postgres::PgConnectOptions;

use shared::wire::ValidationRules;

/// Where PostgreSQL is. `DATABASE_URL` wins; otherwise the original API's
/// `DB_*` variables are used.
#[derive(Args, Clone)]
pub struct DbArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/energy
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Database host, used when DATABASE_URL is not set
    #[arg(long, env = "DB_HOST", default_value = "localhost")]
    pub db_host: String,

    /// Database port, used when DATABASE_URL is not set
    #[arg(long, env = "DB_PORT", default_value_t = 5432)]
    pub db_port: u16,

    /// Database user, used when DATABASE_URL is not set
    #[arg(long, env = "DB_USER", default_value = "postgres")]
    pub db_user: String,

    /// Database password, used when DATABASE_URL is not set
    #[arg(long, env = "DB_PASS", hide_env_values = true)]
    pub db_pass: Option<String>,

    /// Database name, used when DATABASE_URL is not set
    #[arg(long, env = "DB_NAME", default_value = "energy")]
    pub db_name: String,

    /// Most connections this process opens to PostgreSQL
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Longest a single SQL statement may run before PostgreSQL cancels it, in milliseconds
    #[arg(long, env = "DB_STATEMENT_TIMEOUT_MS", default_value_t = 60_000)]
    pub db_statement_timeout_ms: u64,
}

impl DbArgs {
    pub fn connect_options(&self) -> Result<PgConnectOptions, sqlx::Error> {
        if let Some(url) = &self.database_url {
            return url.parse();
        }
        let mut options = PgConnectOptions::new()
            .host(&self.db_host)
            .port(self.db_port)
            .username(&self.db_user)
            .database(&self.db_name);
        if let Some(password) = &self.db_pass {
            options = options.password(password);
        }
        Ok(options)
    }
}

/// Validation settings that operators may tune.
#[derive(Args, Clone, Copy, Debug)]
pub struct ValidationArgs {
    /// How many seconds past this host's clock a reading's timestamp may be (clock skew allowance)
    #[arg(long, env = "MAX_FUTURE_SECONDS", default_value_t = 300)]
    pub max_future_seconds: u32,

    /// Days of raw readings kept: older day partitions are dropped, and a
    /// reading older than that is refused (422) or dead-lettered
    #[arg(long, env = "RETENTION_DAYS", default_value_t = 90)]
    pub retention_days: u32,
}

impl ValidationArgs {
    pub fn rules(&self) -> ValidationRules {
        ValidationRules {
            max_future: TimeDelta::seconds(i64::from(self.max_future_seconds)),
            retention_days: Some(self.retention_days),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        db: DbArgs,
    }

    #[test]
    fn the_original_api_db_variables_build_the_connection() {
        let cli = Cli::parse_from([
            "test",
            "--db-host=db.internal",
            "--db-port=6543",
            "--db-user=fleet",
            "--db-pass=secret",
            "--db-name=telemetry",
        ]);
        let options = cli.db.connect_options().unwrap();
        assert_eq!(
            (
                options.get_host(),
                options.get_port(),
                options.get_username(),
                options.get_database()
            ),
            ("db.internal", 6543, "fleet", Some("telemetry"))
        );
    }

    #[test]
    fn database_url_wins_over_db_variables() {
        let cli = Cli::parse_from([
            "test",
            "--database-url=postgres://u@h:1111/d",
            "--db-host=ignored",
        ]);
        let options = cli.db.connect_options().unwrap();
        assert_eq!(
            (
                options.get_host(),
                options.get_port(),
                options.get_database()
            ),
            ("h", 1111, Some("d"))
        );
    }
}
