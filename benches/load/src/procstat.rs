//! Server process accounting: CPU and memory of a process from `/proc`.

/// A snapshot of the server process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    /// utime + stime, in seconds.
    pub cpu_secs: f64,
    /// VmRSS.
    pub rss_kb: u64,
    /// VmHWM: the peak RSS since the process started.
    pub hwm_kb: u64,
}

/// The CPU and memory of process `pid` (zeroes for what cannot be read).
pub fn proc_stat(pid: u32) -> ProcStat {
    let mut out = ProcStat::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is f[0], utime f[11], stime f[12] (USER_HZ = 100).
            if f.len() > 12 {
                let t = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
                out.cpu_secs = t / 100.0;
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                out.rss_kb = kb(line);
            } else if line.starts_with("VmHWM:") {
                out.hwm_kb = kb(line);
            }
        }
    }
    out
}

/// CPU seconds the load generator itself has used.
pub fn self_cpu() -> f64 {
    proc_stat(std::process::id()).cpu_secs
}
