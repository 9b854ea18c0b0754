//! CPU time from `/proc`: per process, and the whole machine's busy time,
//! to tell a CPU-bound benchmark from one that waits.

/// User and system CPU time of a process so far, in seconds (Linux).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SECOND
}

/// The whole machine's CPU time so far, from `/proc/stat`, in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct MachineCpu {
    /// Busy: user, nice, system, irq and softirq time.
    pub busy: f64,
    /// Stolen: time this virtual machine's CPUs were ready to run while
    /// the hypervisor ran another guest. On a shared host it slows every
    /// process here at once, and not evenly: a run measured while
    /// neighbours were busy is told apart by it.
    pub stolen: f64,
}

impl MachineCpu {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let ticks: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let seconds = |fields: &[usize]| {
            fields.iter().filter_map(|&i| ticks.get(i)).sum::<f64>() / CLOCK_TICKS_PER_SECOND
        };
        Self {
            busy: seconds(&[0, 1, 2, 5, 6]),
            stolen: seconds(&[7]),
        }
    }

    /// The time spent since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            busy: self.busy - earlier.busy,
            stolen: self.stolen - earlier.stolen,
        }
    }
}

/// The CPU tables' row for [`MachineCpu::stolen`], outside "busy".
pub const STOLEN_ROW: &str = "other guests of the host (steal: ready to run, not run)";

/// USER_HZ, 100 on the Linux architectures this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// This harness's own CPU time (the load generator's).
pub fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id())
}
