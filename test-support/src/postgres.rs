//! A fresh database per test on the server named by `TEST_DATABASE_URL`
//! (set by `scripts/test.sh`, which starts a private PostgreSQL cluster),
//! the same database on that server's streaming standby
//! (`TEST_STANDBY_DATABASE_URL`), and waiting for a standby to catch up.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub struct TestDatabase {
    /// Connection URL of this test's own database.
    pub url: String,
    pub pool: PgPool,
    pub name: String,
    /// Whether this value made the database on the test server, and so
    /// drops it when it goes: a run makes hundreds of databases, and a
    /// fresh CI machine's disk does not hold them all, twice over with the
    /// standby.
    made_here: bool,
}

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect(
        "TEST_DATABASE_URL is not set: run the tests with scripts/test.sh, which starts a private PostgreSQL",
    )
}

/// A new empty database with every migration applied and partitions for
/// the last 40 days through the day after tomorrow (what a worker would
/// create; tests with older data call [`ensure_partitions`]).
pub async fn fresh_database() -> TestDatabase {
    migrated(fresh_unmigrated_database().await).await
}

/// The locale of databases whose text does not sort like bytes:
/// `scripts/test.sh` generates it when the system lacks it.
pub const NON_C_LOCALE: &str = "en_US.UTF-8";

/// [`fresh_database`], but its default collation is [`NON_C_LOCALE`]'s,
/// where `"a-2" < "B-1"`, whereas in byte order `"B-1" < "a-2"`.
pub async fn fresh_database_collated() -> TestDatabase {
    let options =
        format!("TEMPLATE template0 LC_COLLATE '{NON_C_LOCALE}' LC_CTYPE '{NON_C_LOCALE}'");
    migrated(create_database(&options).await).await
}

async fn migrated(database: TestDatabase) -> TestDatabase {
    service_kit::db::migrate(&database.pool)
        .await
        .expect("migrations apply");
    let today = chrono::Utc::now().date_naive();
    ensure_partitions(
        &database.pool,
        today - chrono::Days::new(40),
        today + chrono::Days::new(2),
    )
    .await;
    database
}

/// Creates the partitions of every partitioned table (the schema's list,
/// `energy_partitioned_tables`) that hold readings of `first..=last`.
pub async fn ensure_partitions(pool: &PgPool, first: chrono::NaiveDate, last: chrono::NaiveDate) {
    sqlx::query("SELECT energy_ensure_partitions(parent, $1, $2) FROM energy_partitioned_tables")
        .bind(first)
        .bind(last)
        .execute(pool)
        .await
        .expect("create partitions");
}

/// A new empty database with no schema at all.
pub async fn fresh_unmigrated_database() -> TestDatabase {
    create_database("").await
}

/// A new database made with `CREATE DATABASE name options`.
async fn create_database(options: &str) -> TestDatabase {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_micros()
    );
    let admin: PgConnectOptions = admin_url()
        .parse()
        .expect("TEST_DATABASE_URL is a valid URL");
    let mut connection = PgConnection::connect_with(&admin)
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name} {options}"))
        .execute(&mut connection)
        .await
        .expect("create test database");
    connection.close().await.ok();
    let options = admin.database(&name);
    let url = options.to_url_lossy().to_string();
    // Sessions as the services open them (`service_kit::db`): statements a
    // test runs itself, such as a figures pass, are not JIT-compiled either.
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options.options([("jit", "off")]))
        .await
        .expect("connect to the test database");
    TestDatabase {
        url,
        pool,
        name,
        made_here: true,
    }
}

impl TestDatabase {
    /// A database somebody else made (on a private cluster, say), which
    /// this value never drops.
    pub fn existing(url: String, pool: PgPool, name: String) -> Self {
        Self {
            url,
            pool,
            name,
            made_here: false,
        }
    }

    /// Drops the database now (its connections cut) and reports how that
    /// went, for callers that make many large ones, like the benchmark
    /// harness; otherwise it is dropped when the value goes.
    pub async fn drop_database(mut self) -> Result<(), sqlx::Error> {
        self.made_here = false;
        self.pool.close().await;
        drop_on_test_server(&self.name).await
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect(sql)
    }
}

async fn drop_on_test_server(name: &str) -> Result<(), sqlx::Error> {
    let mut connection = PgConnection::connect(&admin_url()).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut connection)
        .await?;
    connection.close().await
}

impl Drop for TestDatabase {
    /// Drops the database at the end of the test, passed or failed. `Drop`
    /// cannot await, and may run on the test's runtime, so the statement
    /// runs on a thread with a runtime of its own; a failure only costs
    /// disk, so it is reported, not raised.
    fn drop(&mut self) {
        if !self.made_here {
            return;
        }
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(sqlx::Error::Io)?
                .block_on(drop_on_test_server(&name))
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("could not drop test database {}: {error}", self.name),
            Err(_) => eprintln!("dropping test database {} panicked", self.name),
        }
    }
}

/// The URL of `db` on the streaming standby of the test server that
/// `scripts/test.sh` starts (`TEST_STANDBY_DATABASE_URL`): every database
/// made on the server appears there once replayed.
pub fn standby_url(db: &TestDatabase) -> String {
    let standby: PgConnectOptions = std::env::var("TEST_STANDBY_DATABASE_URL")
        .expect(
            "TEST_STANDBY_DATABASE_URL is not set: run the tests with scripts/test.sh, which starts a standby",
        )
        .parse()
        .expect("TEST_STANDBY_DATABASE_URL is a valid URL");
    standby.database(&db.name).to_url_lossy().to_string()
}

/// Waits until the standby at `standby_url` has replayed everything
/// `primary` had written when this was called (and accepts connections to
/// the database: a database created on the primary appears with its replay).
pub async fn wait_for_replay(primary: &PgPool, standby_url: &str) {
    let written: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
        .expect("read the primary's WAL position");
    crate::eventually(
        "the standby to replay the primary's writes",
        std::time::Duration::from_secs(60),
        || {
            let written = written.clone();
            async move {
                let mut standby = PgConnection::connect(standby_url).await.ok()?;
                let behind: bool = sqlx::query_scalar(
                    "SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()) > 0",
                )
                .bind(&written)
                .fetch_one(&mut standby)
                .await
                .ok()?;
                standby.close().await.ok();
                (!behind).then_some(())
            }
        },
    )
    .await;
}
