//! A PostgreSQL cluster of a test's own, for tests that stop and restart the
//! server (the shared test server must stay up for everyone else), and
//! streaming standbys of it, for tests of reads on replicas.

use std::path::PathBuf;
use std::process::Command;

use crate::process::free_port;

pub struct PrivatePostgres {
    bindir: PathBuf,
    datadir: PathBuf,
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .pop()
        .expect("PostgreSQL server binaries not found: run the tests with scripts/test.sh")
}

impl PrivatePostgres {
    /// A cluster not started yet, in a new temporary directory.
    fn new_directory(kind: &str) -> Self {
        let datadir = std::env::temp_dir().join(format!(
            "private-pg-{kind}-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        std::fs::create_dir_all(&datadir).expect("create data directory");
        let cluster = Self {
            bindir: bindir(),
            datadir,
            port: free_port(),
        };
        if is_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.datadir)
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "chown the data directory"
            );
        }
        // PostgreSQL refuses a data directory others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cluster.datadir, std::fs::Permissions::from_mode(0o700))
            .expect("restrict the data directory");
        cluster
    }

    /// Initialises a new cluster in a temporary directory and starts it.
    pub fn start() -> Self {
        let cluster = Self::new_directory("primary");
        cluster.run_as_owner(
            "initdb",
            &[
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                &cluster.datadir_str(),
            ],
        );
        cluster.start_again();
        cluster
    }

    fn datadir_str(&self) -> String {
        self.datadir.display().to_string()
    }

    fn run_as_owner(&self, program: &str, args: &[&str]) {
        if let Err(error) = self.try_run_as_owner(program, args) {
            panic!("{error}");
        }
    }

    fn try_run_as_owner(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let binary = self.bindir.join(program);
        let output = if is_root() {
            Command::new("runuser")
                .arg("-u")
                .arg("postgres")
                .arg("--")
                .arg(&binary)
                .args(args)
                .output()
        } else {
            Command::new(&binary).args(args).output()
        }
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        self.start_with(&[]);
    }

    /// Starts the server with `settings` (`name=value`) beyond the defaults.
    fn start_with(&self, settings: &[&str]) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.datadir_str()
        );
        for setting in settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let log = self.datadir.join("server.log").display().to_string();
        self.run_as_owner(
            "pg_ctl",
            &[
                "-D",
                &self.datadir_str(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// A streaming standby of this (running) cluster: a base backup taken
    /// with `pg_basebackup -R` (which writes the connection to the primary
    /// and `standby.signal`), started as a hot standby that accepts reads.
    pub fn standby(&self) -> Self {
        Self::standby_of(self.port, &[])
    }

    /// A streaming standby of the server on 127.0.0.1:`primary_port` (any
    /// cluster of the same major version that trusts local replication),
    /// started with `settings` (`name=value`; a hot standby needs at least
    /// the primary's `max_connections`).
    pub fn standby_of(primary_port: u16, settings: &[&str]) -> Self {
        let standby = Self::new_directory("standby");
        standby.run_as_owner(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port.to_string(),
                "-U",
                "postgres",
                "-D",
                &standby.datadir_str(),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        standby.start_with(settings);
        standby
    }

    /// Runs `sql` as the superuser on database `postgres` (psql).
    pub fn psql(&self, sql: &str) -> String {
        let binary = self.bindir.join("psql");
        let output = Command::new(&binary)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "postgres", "-tAc", sql])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        assert!(
            output.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops the server at once (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        self.run_as_owner(
            "pg_ctl",
            &["-D", &self.datadir_str(), "-m", "fast", "-w", "stop"],
        );
    }

    /// URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// URL of `database` on this server, as the superuser.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let datadir = self.datadir_str();
        let _ = self.try_run_as_owner("pg_ctl", &["-D", &datadir, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}
