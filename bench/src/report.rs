//! Collecting figures over runs and printing them as Markdown: medians,
//! latency quantiles, and the machine and server they were measured on.

use std::time::Duration;

/// The whole report: a header about the machine, then one section per table.
pub struct Report {
    header: String,
    sections: Vec<String>,
    /// (service, while doing what, peak RSS cell)
    resources: Vec<[String; 3]>,
}

impl Report {
    pub async fn new(command: &str) -> anyhow::Result<Self> {
        let pool = sqlx::PgPool::connect(&admin_url()?).await?;
        let version: String = sqlx::query_scalar("SELECT version()")
            .fetch_one(&pool)
            .await?;
        let mut settings = Vec::new();
        for name in [
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_buffers",
            "max_wal_size",
            "wal_compression",
        ] {
            let value: String = sqlx::query_scalar(&format!("SHOW {name}"))
                .fetch_one(&pool)
                .await?;
            settings.push(format!("`{name}={value}`"));
        }
        pool.close().await;
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".to_owned());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|info| {
                let kib: f64 = info
                    .lines()
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some(kib / 1024.0 / 1024.0)
            })
            .unwrap_or(0.0);
        let header = format!(
            "Measured {date} with `{command}` (release build).\n\n\
             Machine: {cores} cores ({cpu}), {memory_gib:.0} GiB; services, PostgreSQL and the broker \
             (librdkafka's mock cluster in the `dev-broker` process) all on it.\n\n\
             PostgreSQL: {version}; {settings}.",
            date = chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
            settings = settings.join(", "),
        );
        Ok(Self {
            header,
            sections: Vec::new(),
            resources: Vec::new(),
        })
    }

    pub fn add(&mut self, title: &str, notes: &str, table: &Table) {
        self.sections
            .push(format!("### {title}\n\n{notes}\n\n{}", table.markdown()));
        eprintln!("\n### {title}\n\n{}", table.markdown());
    }

    /// Records a service's peak RSS (KiB) over the runs of a scenario.
    pub fn add_peak_rss(&mut self, service: &str, during: &str, kib_per_run: &[f64]) {
        self.resources.push([
            format!("`{service}`"),
            during.to_owned(),
            runs_cell(kib_per_run, mebibytes),
        ]);
    }

    pub fn markdown(&self) -> String {
        let mut out = self.header.clone();
        for section in &self.sections {
            out.push_str("\n\n");
            out.push_str(section);
        }
        if !self.resources.is_empty() {
            let mut table = Table::new(&["service", "during", "peak RSS (VmHWM)"]);
            for row in &self.resources {
                table.row(row.to_vec());
            }
            out.push_str(&format!(
                "\n\n### Peak memory of the services\n\n{}",
                table.markdown()
            ));
        }
        out.push('\n');
        out
    }
}

/// The server that `scripts/bench.sh` started (the tests' variable name, so
/// test-support's fresh databases work unchanged).
pub fn admin_url() -> anyhow::Result<String> {
    std::env::var("TEST_DATABASE_URL").map_err(|_| {
        anyhow::anyhow!(
            "TEST_DATABASE_URL is not set: run the harness with scripts/bench.sh, which starts PostgreSQL"
        )
    })
}

/// A Markdown table.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let mut out = vec![
            line(&self.header),
            line(&vec!["---".to_owned(); self.header.len()]),
        ];
        out.extend(self.rows.iter().map(|r| line(r)));
        out.join("\n")
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile of `samples` (nearest rank).
pub fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[(((n - 1) as f64) * q).round() as usize],
    }
}

/// Per-run values of one figure, with how to print their median.
pub fn runs_cell(values: &[f64], format: fn(f64) -> String) -> String {
    let runs: Vec<String> = values.iter().map(|v| format(*v)).collect();
    if values.len() == 1 {
        format(values[0])
    } else {
        format!("**{}** ({})", format(median(values)), runs.join(", "))
    }
}

pub fn per_second(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.1}k/s", x / 1000.0)
    } else {
        format!("{x:.0}/s")
    }
}

pub fn seconds(x: f64) -> String {
    format!("{x:.2} s")
}

pub fn millis(x: f64) -> String {
    if x < 1.0 {
        format!("{x:.3} ms")
    } else {
        format!("{x:.2} ms")
    }
}

pub fn ratio(x: f64) -> String {
    format!("{x:.2}×")
}

/// A share (0–1) as a percentage.
pub fn percent(x: f64) -> String {
    format!("{:.1} %", 100.0 * x)
}

pub fn mebibytes(kib: f64) -> String {
    format!("{:.0} MiB", kib / 1024.0)
}

/// Thousands with a separator, for counts.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
