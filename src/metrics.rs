//! Process metrics and their exposition at `GET /metrics`, through one
//! `prometheus_client` registry (OpenMetrics text).
//!
//! Recording costs one relaxed atomic add: counters and the gauge are
//! `prometheus_client` atomics, and the latency histograms are this
//! module's [`Histogram`] (atomic buckets; the crate's own histogram takes a
//! lock per observation). The one exception is [`Metrics::error`]: the
//! per-code error counters live in a `Family`, which takes a read lock to
//! find the code's counter (a write lock the first time a code is seen);
//! errors are not a hot path.
//!
//! Values that other parts own (open sessions, live rooms, the cluster
//! bridge's counters) are read when the registry is encoded, through a
//! [`Sampled`] collector.
//!
//! Sample names are the ones dashboards know (`chorus_messages_in_total`,
//! ...): counters are registered without `_total`, which the encoder
//! appends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// Upper bounds of histogram buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A latency histogram with fixed buckets (`BUCKETS`) whose observations
/// are atomic adds; cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    inner: Arc<HistogramCounts>,
}

#[derive(Debug, Default)]
struct HistogramCounts {
    /// Observations per bucket (not cumulative; the encoder sums them); the
    /// last one is `+Inf`.
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
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets = [(0.0, 0); BUCKETS.len() + 1];
        let mut count = 0;
        for (i, slot) in buckets.iter_mut().enumerate() {
            let n = self.inner.counts[i].load(Ordering::Relaxed);
            // f64::MAX is the encoder's `+Inf`.
            *slot = (BUCKETS.get(i).copied().unwrap_or(f64::MAX), n);
            count += n;
        }
        let sum = self.inner.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Label set of the error counters: `code="..."`.
type ErrorCode = [(&'static str, &'static str); 1];

/// Every counter the server records itself (one set per server, shared by
/// `Arc`; the fields are shared handles, registered by [`Metrics::register`]).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Client messages received (WebSocket frames of both protocols, API updates).
    pub messages_in: Counter,
    /// Bytes of those messages.
    pub bytes_in: Counter,
    /// Frames rooms handed to sessions and subscribers.
    pub messages_out: Counter,
    /// Bytes of those frames.
    pub bytes_out: Counter,
    /// Open SSE / NDJSON / long-poll subscriptions.
    pub subscribers: Gauge,
    /// Subscribers closed with `reset` because they fell behind.
    pub subscribers_lagged: Counter,
    /// Droppable frames (deltas, presence, ephemeral) not queued for a
    /// WebSocket member because its outbox was over the soft limit.
    pub frames_dropped: Counter,
    /// Lagging WebSocket members resynced once their outbox drained.
    pub resyncs: Counter,
    /// Webhook deliveries accepted (2xx).
    pub webhooks_delivered: Counter,
    /// Webhook deliveries given up after every attempt.
    pub webhooks_failed: Counter,
    /// Webhook deliveries dropped because the queue was full.
    pub webhooks_dropped: Counter,
    /// Webhook attempts retried.
    pub webhooks_retried: Counter,
    /// Room actors that died (a panic) and were dropped, to be started
    /// afresh from the store on the next request.
    pub rooms_restarted: Counter,
    /// Sessions closed (1012) to rebalance the cluster.
    pub sessions_shed: Counter,
    /// Time from applying an update to its frames being offered to members.
    pub fanout_latency: Histogram,
    /// Time of a store append (until durable).
    pub store_latency: Histogram,
    /// Store appends that failed, first tries and retries alike.
    pub store_append_failures: Counter,
    /// Appends of kept updates tried again (see `store_unstored_updates`).
    pub store_append_retries: Counter,
    /// Updates that rooms applied (and showed to their members) but could
    /// not store yet: kept by their room and retried until stored. Above 0,
    /// the store is failing.
    pub store_unstored_updates: Gauge,
    /// Bytes of those updates.
    pub store_unstored_bytes: Gauge,
    /// Errors sent to clients (WebSocket `error` messages and API errors), by code.
    errors: Family<ErrorCode, Counter>,
    /// WebSocket connections closed, by close code.
    closes: Family<CloseCode, Counter>,
    /// Connections and requests refused before a session existed, by reason.
    refusals: Family<RefusalReason, Counter>,
    /// When a refusal of each reason was last logged, and how many were
    /// not logged since (see [`Metrics::refused`]).
    refusal_log:
        std::sync::Mutex<std::collections::HashMap<&'static str, (std::time::Instant, u64)>>,
}

/// At most one log line per refusal reason in this interval; the next line
/// says how many were not logged in between.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Label set of the close counters: `code="4000"`.
type CloseCode = [(&'static str, u16); 1];

/// Label set of the refusal counters: `reason="..."`.
type RefusalReason = [(&'static str, &'static str); 1];

impl Metrics {
    /// Counts an error sent with `code`.
    pub fn error(&self, code: &'static str) {
        self.errors.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a WebSocket connection closed with `code`.
    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&[("code", code)]).inc();
    }

    /// Counts a connection or request refused for `reason` (a short
    /// snake_case name). `Some(n)` when the refusal should be logged, `n`
    /// being the refusals of that reason not logged since the last line: at
    /// most one line per reason per [`REFUSAL_LOG_INTERVAL`], so a flood of
    /// refusals cannot flood the log.
    #[must_use = "log the refusal when asked to"]
    pub fn refused(&self, reason: &'static str) -> Option<u64> {
        self.refusals.get_or_create(&[("reason", reason)]).inc();
        let now = std::time::Instant::now();
        let mut log = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        match log.get_mut(reason) {
            Some((last, skipped)) if now.duration_since(*last) < REFUSAL_LOG_INTERVAL => {
                *skipped += 1;
                None
            }
            Some((last, skipped)) => {
                *last = now;
                Some(std::mem::take(skipped))
            }
            None => {
                log.insert(reason, (now, 0));
                Some(0)
            }
        }
    }

    /// Adds one message of `bytes` to the inbound counters.
    pub fn received(&self, bytes: usize) {
        self.messages_in.inc();
        self.bytes_in.inc_by(bytes as u64);
    }

    /// Adds one frame of `bytes` to the outbound counters.
    pub fn sent(&self, bytes: usize) {
        self.messages_out.inc();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// Registers this set in `registry` (counter names without `_total`;
    /// help texts without their final period, which `Registry::register`
    /// adds).
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "chorus_messages_in",
                "Client messages received",
                &self.messages_in,
            ),
            (
                "chorus_bytes_in",
                "Bytes of client messages received",
                &self.bytes_in,
            ),
            (
                "chorus_messages_out",
                "Frames handed to sessions and subscribers",
                &self.messages_out,
            ),
            (
                "chorus_bytes_out",
                "Bytes of frames handed to sessions and subscribers",
                &self.bytes_out,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "chorus_subscribers",
            "Open SSE, NDJSON and long-poll subscriptions",
            self.subscribers.clone(),
        );
        let counters = [
            (
                "chorus_subscribers_lagged",
                "Subscribers closed with reset because they fell behind",
                &self.subscribers_lagged,
            ),
            (
                "chorus_frames_dropped",
                "Frames not queued for a member over its outbound soft limit",
                &self.frames_dropped,
            ),
            (
                "chorus_resyncs",
                "Lagging members resynced from their state vector",
                &self.resyncs,
            ),
            (
                "chorus_webhooks_delivered",
                "Webhook deliveries accepted by the receiver",
                &self.webhooks_delivered,
            ),
            (
                "chorus_webhooks_failed",
                "Webhook deliveries given up after every attempt",
                &self.webhooks_failed,
            ),
            (
                "chorus_webhooks_dropped",
                "Webhook deliveries dropped because the queue was full",
                &self.webhooks_dropped,
            ),
            (
                "chorus_webhooks_retried",
                "Webhook attempts retried",
                &self.webhooks_retried,
            ),
            (
                "chorus_rooms_restarted",
                "Room actors that panicked and were replaced by a fresh one loaded from the store",
                &self.rooms_restarted,
            ),
            (
                "chorus_sessions_shed",
                "Sessions closed with 1012 to rebalance the cluster",
                &self.sessions_shed,
            ),
            (
                "chorus_store_append_failures",
                "Store appends that failed (first tries and retries)",
                &self.store_append_failures,
            ),
            (
                "chorus_store_append_retries",
                "Appends of updates kept by their room after a failed append, tried again",
                &self.store_append_retries,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "chorus_fanout_latency_seconds",
            "Time from applying an update to offering its frames to members",
            self.fanout_latency.clone(),
        );
        registry.register(
            "chorus_store_latency_seconds",
            "Time of a store append until durable",
            self.store_latency.clone(),
        );
        registry.register(
            "chorus_store_unstored_updates",
            "Updates applied and shown to members but not stored yet, kept by their room and retried",
            self.store_unstored_updates.clone(),
        );
        registry.register(
            "chorus_store_unstored_bytes",
            "Bytes of updates applied and shown to members but not stored yet",
            self.store_unstored_bytes.clone(),
        );
        registry.register(
            "chorus_errors",
            "Errors sent to clients, by code",
            self.errors.clone(),
        );
        registry.register(
            "chorus_closes",
            "WebSocket connections closed, by close code (1005: the client closed without one; 1006: the socket was lost or shut)",
            self.closes.clone(),
        );
        registry.register(
            "chorus_refusals",
            "WebSocket upgrades and REST requests refused before a session or route ran, by reason",
            self.refusals.clone(),
        );
    }
}

/// Reads one value owned elsewhere.
type Read = Box<dyn Fn() -> u64 + Send + Sync>;

/// Gauges and counters whose values other parts own (the session table,
/// the room registry, the cluster bridge), read at each scrape. Registered
/// with `Registry::register_collector`.
#[derive(Default)]
pub struct Sampled {
    values: Vec<(&'static str, &'static str, MetricType, Read)>,
}

impl Sampled {
    /// Adds a gauge `name` whose value `read` returns.
    pub fn gauge(
        self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.with(MetricType::Gauge, name, help, Box::new(read))
    }

    /// Adds a counter `name` (without `_total`, which the encoder appends)
    /// whose value `read` returns.
    pub fn counter(
        self,
        name: &'static str,
        help: &'static str,
        read: impl Fn() -> u64 + Send + Sync + 'static,
    ) -> Self {
        self.with(MetricType::Counter, name, help, Box::new(read))
    }

    fn with(
        mut self,
        kind: MetricType,
        name: &'static str,
        help: &'static str,
        read: Read,
    ) -> Self {
        self.values.push((name, help, kind, read));
        self
    }
}

impl std::fmt::Debug for Sampled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.values.iter().map(|(name, ..)| name))
            .finish()
    }
}

impl Collector for Sampled {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, kind, read) in &self.values {
            let metric = encoder.encode_descriptor(name, help, None, *kind)?;
            let value = read();
            match kind {
                MetricType::Counter => ConstCounter::new(value).encode(metric)?,
                _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(metric)?,
            }
        }
        Ok(())
    }
}

/// The registry in OpenMetrics text (ends with `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would come from
    // a metric, and none of ours returns one.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::error!("encoding metrics: {e}");
    }
    out
}

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_types_and_histogram_buckets() {
        let m = Metrics::default();
        m.received(10);
        m.error("bad_update");
        m.error("bad_update");
        m.fanout_latency.observe(Duration::from_micros(700));
        m.fanout_latency.observe(Duration::from_secs(5));
        let mut registry = Registry::default();
        m.register(&mut registry);
        registry.register_collector(Box::new(
            Sampled::default()
                .gauge("chorus_connections", "Open sessions.", || 3)
                .counter("chorus_rooms_started", "Rooms started.", || 7),
        ));
        let text = encode(&registry);
        for line in [
            "chorus_messages_in_total 1",
            "chorus_bytes_in_total 10",
            "chorus_subscribers 0",
            "chorus_errors_total{code=\"bad_update\"} 2",
            "chorus_fanout_latency_seconds_bucket{le=\"0.0005\"} 0",
            "chorus_fanout_latency_seconds_bucket{le=\"0.001\"} 1",
            "chorus_fanout_latency_seconds_bucket{le=\"2.5\"} 1",
            "chorus_fanout_latency_seconds_bucket{le=\"+Inf\"} 2",
            "chorus_fanout_latency_seconds_count 2",
            "chorus_fanout_latency_seconds_sum 5.0007",
            "chorus_connections 3",
            "chorus_rooms_started_total 7",
            "# TYPE chorus_rooms_started counter",
            "# HELP chorus_messages_in Client messages received.",
            "# HELP chorus_connections Open sessions.",
            "# TYPE chorus_fanout_latency_seconds histogram",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
