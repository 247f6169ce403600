//! Process counters and histograms, rendered as Prometheus text by
//! `GET /metrics`. Plain atomics: recording never takes a lock, so rooms
//! and sessions can count on their hot paths.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets (`BUCKETS`).
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative; summed when rendered).
    counts: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations, in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Every counter the server keeps (one set per server, shared by `Arc`).
#[derive(Default)]
pub struct Metrics {
    /// Client messages received (WebSocket frames of both protocols, API updates).
    pub messages_in: AtomicU64,
    /// Bytes of those messages.
    pub bytes_in: AtomicU64,
    /// Frames rooms handed to sessions and subscribers.
    pub messages_out: AtomicU64,
    /// Bytes of those frames.
    pub bytes_out: AtomicU64,
    /// Open SSE / NDJSON / long-poll subscriptions.
    pub subscribers: AtomicU64,
    /// Subscribers closed with `reset` because they fell behind.
    pub subscribers_lagged: AtomicU64,
    /// Droppable frames (deltas, presence, ephemeral) not queued for a
    /// WebSocket member because its outbox was over the soft limit.
    pub frames_dropped: AtomicU64,
    /// Lagging WebSocket members resynced once their outbox drained.
    pub resyncs: AtomicU64,
    /// Webhook deliveries accepted (2xx).
    pub webhooks_delivered: AtomicU64,
    /// Webhook deliveries given up after every attempt.
    pub webhooks_failed: AtomicU64,
    /// Webhook deliveries dropped because the queue was full.
    pub webhooks_dropped: AtomicU64,
    /// Webhook attempts retried.
    pub webhooks_retried: AtomicU64,
    /// Time from applying an update to its frames being offered to members.
    pub fanout_latency: Histogram,
    /// Time of a store append (until durable).
    pub store_latency: Histogram,
    /// Errors sent to clients (WebSocket `error` messages and API errors), by code.
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Counts an error sent with `code`.
    pub fn error(&self, code: &'static str) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(code).or_default() += 1;
    }

    /// Adds one message of `bytes` to the inbound counters.
    pub fn received(&self, bytes: usize) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
        self.bytes_in.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Adds one frame of `bytes` to the outbound counters.
    pub fn sent(&self, bytes: usize) {
        self.messages_out.fetch_add(1, Ordering::Relaxed);
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Appends this set in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &str, &str, &AtomicU64); 12] = [
            (
                "chorus_messages_in_total",
                "counter",
                "Client messages received.",
                &self.messages_in,
            ),
            (
                "chorus_bytes_in_total",
                "counter",
                "Bytes of client messages received.",
                &self.bytes_in,
            ),
            (
                "chorus_messages_out_total",
                "counter",
                "Frames handed to sessions and subscribers.",
                &self.messages_out,
            ),
            (
                "chorus_bytes_out_total",
                "counter",
                "Bytes of frames handed to sessions and subscribers.",
                &self.bytes_out,
            ),
            (
                "chorus_subscribers",
                "gauge",
                "Open SSE, NDJSON and long-poll subscriptions.",
                &self.subscribers,
            ),
            (
                "chorus_subscribers_lagged_total",
                "counter",
                "Subscribers closed with reset because they fell behind.",
                &self.subscribers_lagged,
            ),
            (
                "chorus_frames_dropped_total",
                "counter",
                "Frames not queued for a member over its outbound soft limit.",
                &self.frames_dropped,
            ),
            (
                "chorus_resyncs_total",
                "counter",
                "Lagging members resynced from their state vector.",
                &self.resyncs,
            ),
            (
                "chorus_webhooks_delivered_total",
                "counter",
                "Webhook deliveries accepted by the receiver.",
                &self.webhooks_delivered,
            ),
            (
                "chorus_webhooks_failed_total",
                "counter",
                "Webhook deliveries given up after every attempt.",
                &self.webhooks_failed,
            ),
            (
                "chorus_webhooks_dropped_total",
                "counter",
                "Webhook deliveries dropped because the queue was full.",
                &self.webhooks_dropped,
            ),
            (
                "chorus_webhooks_retried_total",
                "counter",
                "Webhook attempts retried.",
                &self.webhooks_retried,
            ),
        ];
        for (name, kind, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        self.fanout_latency.render(
            out,
            "chorus_fanout_latency_seconds",
            "Time from applying an update to offering its frames to members.",
        );
        self.store_latency.render(
            out,
            "chorus_store_latency_seconds",
            "Time of a store append until durable.",
        );
        let _ = writeln!(
            out,
            "# HELP chorus_errors_total Errors sent to clients, by code.\n# TYPE chorus_errors_total counter"
        );
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        for (code, n) in errors.iter() {
            let _ = writeln!(out, "chorus_errors_total{{code=\"{code}\"}} {n}");
        }
    }
}
