//! The workspace's binaries as child processes.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use service_kit::http::LISTENING_ON;

/// Path of a binary built in the same target directory as the running
/// executable: a test (`target/<profile>/deps/<test>`) or a binary such as
/// the benchmark harness (`target/<profile>/<bin>`). `cargo test --workspace`
/// (and nextest) build every binary first.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current executable");
    let mut dir = exe.parent().expect("executable lives in a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("deps lives in target/<profile>");
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "binary {} is not built: run the tests with `cargo test --workspace` or scripts/test.sh",
        path.display()
    );
    path
}

/// A port that was free a moment ago, for servers that cannot bind port 0
/// and report it (PostgreSQL). Our own services bind port 0 and say where
/// they listen ([`Service::listening_url`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A running child process, killed (SIGKILL) when dropped. Its stderr (the
/// logs) is echoed to the test's stderr and kept for [`Service::wait_for_log`];
/// its stdout is watched for the address it announces it listens on.
pub struct Service {
    pub name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    listening: Arc<Mutex<Option<String>>>,
}

impl Service {
    /// Starts `name` with `env` added to the environment; logs go to the test's stderr.
    pub fn start(name: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = Command::new(binary(name));
        command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TEST_SERVICE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let (lines, prefix) = (log.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[{prefix}] {line}");
                lines.lock().expect("log lock").push(line);
            }
        });
        let listening = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().expect("piped stdout");
        let (url, prefix) = (listening.clone(), name.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("[{prefix} stdout] {line}");
                if let Some((_, address)) = line.split_once(LISTENING_ON) {
                    *url.lock().expect("url lock") = Some(format!("http://{}", address.trim()));
                }
            }
        });
        Self {
            name: name.to_owned(),
            child,
            log,
            listening,
        }
    }

    /// The URL the service announced it listens on (it binds port 0 and
    /// prints `... listening on http://ADDRESS`); waits up to `timeout`.
    pub fn listening_url(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(url) = self.listening.lock().expect("url lock").clone() {
                return url;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before listening", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not announce its address within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the process has logged a line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self
            .log
            .lock()
            .expect("log lock")
            .iter()
            .any(|line| line.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The log lines from the `from`th on (0-based), and the index to pass next time.
    pub fn log_lines_from(&self, from: usize) -> (Vec<String>, usize) {
        let log = self.log.lock().expect("log lock");
        let lines = log.get(from..).map(<[String]>::to_vec).unwrap_or_default();
        (lines, log.len().max(from))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        self.wait_exit(timeout)
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for child") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size so far (VmHWM), in KiB; Linux only.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: no chance to flush, commit or leave the group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `url` answers 200.
pub async fn wait_until_ok(url: &str, timeout: Duration) {
    let client = reqwest::Client::new();
    crate::eventually(&format!("{url} to answer 200"), timeout, || async {
        match client.get(url).send().await {
            Ok(response) if response.status().is_success() => Some(()),
            _ => None,
        }
    })
    .await
}
