//! A Kafka-protocol broker in a process of its own (`dev-broker`, librdkafka's
//! mock cluster), fresh for every run so no run inherits another's data.

use std::time::{Duration, Instant};

use test_support::process::Service;

pub struct Broker {
    pub bootstrap: String,
    process: Service,
    bootstrap_file: std::path::PathBuf,
}

impl Broker {
    /// Starts a broker with `topics` (name, partitions) and waits for it.
    pub fn start(topics: &[(&str, i32)]) -> anyhow::Result<Self> {
        let bootstrap_file = std::env::temp_dir().join(format!(
            "bench-broker-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        let mut args = vec![
            "--bootstrap-file".to_owned(),
            bootstrap_file.display().to_string(),
            // The harness pre-fills topics before any worker runs, with
            // partitions sized to hold them: no backlog guard.
            "--guard-group".to_owned(),
            "none".to_owned(),
        ];
        for (name, partitions) in topics {
            args.push("--topic".to_owned());
            args.push(format!("{name}:{partitions}"));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let process = Service::start("dev-broker", &args, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let bootstrap = loop {
            if let Ok(bootstrap) = std::fs::read_to_string(&bootstrap_file) {
                if !bootstrap.trim().is_empty() {
                    break bootstrap.trim().to_owned();
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "dev-broker did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self {
            bootstrap,
            process,
            bootstrap_file,
        })
    }
}

impl Broker {
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.bootstrap_file);
    }
}
