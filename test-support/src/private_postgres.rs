//! A PostgreSQL cluster of a test's own, for tests that stop and restart the
//! server (the shared test server must stay up for everyone else).

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
    /// Initialises a new cluster in a temporary directory and starts it.
    pub fn start() -> Self {
        let datadir = std::env::temp_dir().join(format!(
            "private-pg-{}-{}",
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
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.datadir_str()
        );
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

    /// Stops the server at once (fast shutdown: sessions are cut).
    pub fn stop(&self) {
        self.run_as_owner(
            "pg_ctl",
            &["-D", &self.datadir_str(), "-m", "fast", "-w", "stop"],
        );
    }

    /// URL of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let datadir = self.datadir_str();
        let _ = self.try_run_as_owner("pg_ctl", &["-D", &datadir, "-m", "immediate", "-w", "stop"]);
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}
