//! Results: the report of a run, printed and as a JSON line.

use anyhow::Result;
use serde_json::Value;

use crate::procstat::{self_cpu, ProcStat};

/// The result of a run: printed, and appended as one JSON line to `--json`.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    /// The scenario (`fanout`, `rooms`, `idle`, `join-storm`, `presence`).
    pub scenario: String,
    /// The server's name (`--label`).
    pub server: String,
    /// The protocol the clients spoke.
    pub proto: String,
    /// The scenario's sizes.
    pub params: Value,
    /// Clients that connected (and joined).
    pub clients: usize,
    /// Clients that failed to connect or join.
    pub failed_connects: usize,
    /// Measured seconds.
    pub secs: f64,
    /// Delivery latency: receive instant − send instant (fanout).
    pub latency_ms: Option<Latency>,
    /// Updates delivered (fanout), or sent (rooms).
    pub delivered: u64,
    /// Deliveries expected: updates sent × receivers (fanout).
    pub expected: u64,
    /// Deliveries per second in the measured window.
    pub delivered_per_sec: f64,
    /// Frames the clients received.
    pub frames_in: u64,
    /// Bytes the clients received.
    pub bytes_in: u64,
    /// Server CPU (utime + stime) over the measured window.
    pub server_cpu_secs: f64,
    /// Server CPU seconds per second of the window.
    pub server_cpu_cores: f64,
    /// Server CPU µs per measured delivery (fanout).
    pub server_cpu_us_per_delivered: Option<f64>,
    /// Server RSS before the run.
    pub server_rss_before_kb: u64,
    /// Server RSS after the measured window.
    pub server_rss_after_kb: u64,
    /// Server peak RSS (VmHWM).
    pub server_peak_rss_kb: u64,
    /// RSS growth per `unit` (idle, rooms).
    pub rss_per_unit_kb: Option<f64>,
    /// What `rss_per_unit_kb` counts.
    pub unit: Option<String>,
    /// Time from the start of the storm to each client's sync (join-storm).
    pub sync_ms: Option<Latency>,
    /// CPU seconds of the load generator over the whole run.
    pub load_cpu_secs: f64,
    /// Remarks: setup time, first failure, ...
    pub notes: Vec<String>,
}

impl Report {
    /// Keeps the connections that opened; counts the others (noting the
    /// first failure, with `what` it was).
    pub fn keep_opened<T>(&mut self, opened: Vec<Result<T>>, what: &str) -> Vec<T> {
        let mut kept = Vec::new();
        for o in opened {
            match o {
                Ok(c) => kept.push(c),
                Err(e) => {
                    if self.failed_connects == 0 {
                        self.notes.push(format!("first failed {what}: {e:#}"));
                    }
                    self.failed_connects += 1;
                }
            }
        }
        kept
    }
}

/// Percentiles of a latency, in ms.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Percentiles of latencies in µs (`None` when there are none).
pub fn latency(mut us: Vec<u32>) -> Option<Latency> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let p = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Some(Latency {
        n: us.len(),
        p50: p(0.50),
        p95: p(0.95),
        p99: p(0.99),
        max: us[us.len() - 1] as f64 / 1000.0,
    })
}

/// Prints the report for people.
pub fn print_report(r: &Report) {
    println!(
        "== {} / {} ({})  params {}",
        r.scenario, r.server, r.proto, r.params
    );
    println!(
        "  clients {} (failed {}), {:.1} s measured",
        r.clients, r.failed_connects, r.secs
    );
    if let Some(l) = &r.latency_ms {
        println!(
            "  delivery latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n = {})",
            l.p50, l.p95, l.p99, l.max, l.n
        );
    }
    if let Some(l) = &r.sync_ms {
        println!(
            "  time to synced ms:   p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}  (n = {})",
            l.p50, l.p95, l.p99, l.max, l.n
        );
    }
    if r.expected > 0 {
        println!(
            "  delivered {} of {} expected ({:.0}/s)",
            r.delivered, r.expected, r.delivered_per_sec
        );
    }
    println!(
        "  frames in {}, bytes in {:.1} MB",
        r.frames_in,
        r.bytes_in as f64 / 1e6
    );
    println!(
        "  server cpu {:.2} s ({:.2} cores){}",
        r.server_cpu_secs,
        r.server_cpu_cores,
        r.server_cpu_us_per_delivered
            .map_or(String::new(), |u| format!(
                ", {u:.2} µs per delivered update"
            ))
    );
    println!(
        "  server rss {:.1} → {:.1} MB, peak {:.1} MB{}",
        r.server_rss_before_kb as f64 / 1024.0,
        r.server_rss_after_kb as f64 / 1024.0,
        r.server_peak_rss_kb as f64 / 1024.0,
        r.rss_per_unit_kb.map_or(String::new(), |k| format!(
            ", {k:.2} KB per {}",
            r.unit.as_deref().unwrap_or("unit")
        ))
    );
    println!("  load generator cpu {:.2} s", r.load_cpu_secs);
    for n in &r.notes {
        println!("  note: {n}");
    }
}

/// Fills in the server's cost between `before` and `after` (over `wall`
/// seconds) and the generator's own CPU.
pub fn finish(r: &mut Report, before: ProcStat, after: ProcStat, wall: f64) {
    r.server_cpu_secs = after.cpu_secs - before.cpu_secs;
    r.server_cpu_cores = if wall > 0.0 {
        r.server_cpu_secs / wall
    } else {
        0.0
    };
    r.server_rss_before_kb = before.rss_kb;
    r.server_rss_after_kb = after.rss_kb;
    r.server_peak_rss_kb = after.hwm_kb;
    r.load_cpu_secs = self_cpu();
}
