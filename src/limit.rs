//! Rate and count limits: a token bucket (per session: messages/s and
//! bytes/s; per IP: new connections/s), the per-IP table of open
//! connections, whose [`IpSlot`] guard gives a slot back when the session
//! ends, and [`KeyedRate`], a table of buckets by key (the REST API's
//! per-IP and per-credential request rates) that forgets idle keys.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens, refilled at `rate` per second.
/// A rate of 0 disables it (every take succeeds).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, capacity: f64) -> TokenBucket {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: Instant::now(),
        }
    }

    /// Takes `n` tokens at `now`; false (and nothing taken) if too few.
    pub fn take_at(&mut self, n: f64, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens at `now` even if that leaves the bucket in debt;
    /// returns how long until the debt is paid back (zero: no debt).
    pub fn charge_at(&mut self, n: f64, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// True when, at `now`, the bucket holds at least half its capacity
    /// (always, when disabled).
    fn is_half_full_at(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        self.refill(now);
        self.tokens >= self.capacity / 2.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Takes `n` tokens now.
    pub fn take(&mut self, n: f64) -> bool {
        self.take_at(n, Instant::now())
    }

    /// Takes `n` tokens at `now`, or says how long until there are enough.
    pub fn take_or_wait(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        if self.take_at(n, now) {
            return Ok(());
        }
        Err(Duration::from_secs_f64((n - self.tokens) / self.rate))
    }

    /// Whether the bucket has refilled completely by `now` (it then says
    /// nothing a fresh bucket would not).
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.capacity
    }
}

/// Token buckets by key (client IP, credential): `rate` per second, burst
/// `burst`. Keys whose bucket has refilled are forgotten by a sweep that
/// runs when the table has doubled since the last one, so the table holds
/// about the keys seen in the last `burst / rate` seconds (×2), not every
/// key ever seen.
#[derive(Debug)]
pub struct KeyedRate<K> {
    rate: f64,
    burst: f64,
    table: Mutex<KeyedTable<K>>,
}

#[derive(Debug)]
struct KeyedTable<K> {
    buckets: HashMap<K, TokenBucket>,
    /// Size at which the next sweep runs.
    sweep_at: usize,
}

/// Smallest table size at which idle keys are swept.
const SWEEP_MIN: usize = 1024;

impl<K: Hash + Eq> KeyedRate<K> {
    /// `rate` requests per second (0: no limit), burst `burst` (at least
    /// `rate`).
    pub fn new(rate: u32, burst: u32) -> KeyedRate<K> {
        KeyedRate {
            rate: f64::from(rate),
            burst: f64::from(burst.max(rate)),
            table: Mutex::new(KeyedTable {
                buckets: HashMap::new(),
                sweep_at: SWEEP_MIN,
            }),
        }
    }

    /// Counts one request for `key` at `now`; `Err` is how long to wait.
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        // A panic while holding the lock leaves buckets that are still valid.
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let (rate, burst) = (self.rate, self.burst);
        let res = t
            .buckets
            .entry(key)
            .or_insert_with(|| {
                let mut b = TokenBucket::new(rate, burst);
                b.last = now;
                b
            })
            .take_or_wait(1.0, now);
        if t.buckets.len() >= t.sweep_at {
            t.buckets.retain(|_, b| !b.full_at(now));
            t.sweep_at = (t.buckets.len() * 2).max(SWEEP_MIN);
        }
        res
    }

    /// Counts one request for `key` now.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .buckets
            .len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a connection was refused by [`IpLimiter::admit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpRefusal {
    /// `max_connections_per_ip` connections are open already.
    #[error("too many open connections from this address")]
    TooManyConnections,
    /// Over `connections_per_ip_per_sec`.
    #[error("too many new connections from this address; slow down")]
    TooFast,
}

#[derive(Debug)]
struct IpEntry {
    open: usize,
    bucket: TokenBucket,
}

/// Open connections and connection rate, per client IP.
#[derive(Debug)]
pub struct IpLimiter {
    max_open: usize,
    per_sec: u32,
    table: Mutex<HashMap<IpAddr, IpEntry>>,
}

impl IpLimiter {
    /// Limits of `max_open` open connections (0: none) and `per_sec` new
    /// ones per second (0: none) per IP.
    pub fn new(max_open: usize, per_sec: u32) -> Arc<IpLimiter> {
        Arc::new(IpLimiter {
            max_open,
            per_sec,
            table: Mutex::new(HashMap::new()),
        })
    }

    fn table(&self) -> MutexGuard<'_, HashMap<IpAddr, IpEntry>> {
        // A panic while holding the lock leaves counts that are still valid.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections holding a slot, all addresses together.
    pub fn open_total(&self) -> usize {
        self.table().values().map(|e| e.open).sum()
    }

    /// Admits one connection from `ip`, or says why not. The slot is held
    /// until the returned guard is dropped.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<IpSlot, IpRefusal> {
        let mut table = self.table();
        let rate = f64::from(self.per_sec);
        let entry = table.entry(ip).or_insert_with(|| IpEntry {
            open: 0,
            bucket: TokenBucket::new(rate, rate),
        });
        if self.max_open > 0 && entry.open >= self.max_open {
            return Err(IpRefusal::TooManyConnections);
        }
        if !entry.bucket.take(1.0) {
            return Err(IpRefusal::TooFast);
        }
        entry.open += 1;
        // Forget addresses with nothing open and a full bucket, so the
        // table does not grow with every address ever seen.
        if table.len() > 4096 {
            table.retain(|_, e| e.open > 0 || !e.bucket.clone().take(rate.max(1.0)));
        }
        Ok(IpSlot {
            limiter: self.clone(),
            ip,
        })
    }

    /// Open connections from `ip`.
    pub fn open(&self, ip: IpAddr) -> usize {
        self.table().get(&ip).map_or(0, |e| e.open)
    }
}

/// One admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct IpSlot {
    limiter: Arc<IpLimiter>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(e) = self.limiter.table().get_mut(&self.ip) {
            e.open = e.open.saturating_sub(1);
        }
    }
}

/// Per-session inbound limits: messages/s and bytes/s. What a session
/// sends is always charged, even past the limit (the buckets go into
/// debt); the debt says how long the session must stop reading its socket
/// ([`SessionRate::charge`]), so a client over the rate is slowed by TCP
/// backpressure rather than closed.
#[derive(Debug, Clone)]
pub struct SessionRate {
    messages: TokenBucket,
    bytes: TokenBucket,
    /// Since when the session has been over its rate without slowing down
    /// (its buckets never back to half full in between).
    throttled_since: Option<Instant>,
}

impl SessionRate {
    /// From the configured limits.
    pub fn new(limits: &crate::config::Limits) -> SessionRate {
        let m = f64::from(limits.max_messages_per_sec);
        let b = limits.max_bytes_per_sec as f64;
        SessionRate {
            messages: TokenBucket::new(m, m),
            bytes: TokenBucket::new(b, b.max(limits.max_frame_bytes as f64)),
            throttled_since: None,
        }
    }

    /// Charges `messages` inbound messages totalling `len` bytes at `now`.
    /// Returns how long the session must stop reading before both buckets
    /// are out of debt (zero: within the rate).
    pub fn charge_at(&mut self, messages: usize, len: usize, now: Instant) -> Duration {
        // A client that let its buckets refill to half has slowed down:
        // whatever it does next starts a new episode.
        if self.messages.is_half_full_at(now) && self.bytes.is_half_full_at(now) {
            self.throttled_since = None;
        }
        let wait = self
            .messages
            .charge_at(messages as f64, now)
            .max(self.bytes.charge_at(len as f64, now));
        if !wait.is_zero() {
            self.throttled_since.get_or_insert(now);
        }
        wait
    }

    /// [`Self::charge_at`] now.
    pub fn charge(&mut self, messages: usize, len: usize) -> Duration {
        self.charge_at(messages, len, Instant::now())
    }

    /// How long, at `now`, the session has been over its rate without a
    /// break (zero when it is within it).
    pub fn throttled_for(&self, now: Instant) -> Duration {
        self.throttled_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }
}

/// The per-IP and per-credential request rates of the API.
pub struct ApiRates {
    /// Per client IP.
    pub by_ip: KeyedRate<std::net::IpAddr>,
    /// Keyed by a digest of the credential, so no secret is kept.
    pub by_key: KeyedRate<[u8; 16]>,
}

impl ApiRates {
    /// From `--api-requests-per-sec`, `--api-key-requests-per-sec` and
    /// `--api-requests-burst`.
    pub fn new(api: &crate::config::ApiConfig) -> ApiRates {
        ApiRates {
            by_ip: KeyedRate::new(api.api_requests_per_sec, api.api_requests_burst),
            by_key: KeyedRate::new(api.api_key_requests_per_sec, api.api_requests_burst),
        }
    }

    /// Client IPs currently tracked (for tests and metrics).
    pub fn tracked_ips(&self) -> usize {
        self.by_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 10.0);
        b.last = t0;
        for _ in 0..10 {
            assert!(b.take_at(1.0, t0));
        }
        assert!(!b.take_at(1.0, t0));
        assert!(b.take_at(1.0, t0 + Duration::from_millis(110)));
        assert!(TokenBucket::new(0.0, 0.0).take(1e9));
    }

    #[test]
    fn keyed_rate_limits_and_forgets_idle_keys() {
        let r = KeyedRate::<u32>::new(10, 20);
        let t0 = Instant::now();
        for _ in 0..20 {
            assert!(r.check_at(1, t0).is_ok());
        }
        let wait = r.check_at(1, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(r.check_at(2, t0).is_ok(), "keys are independent");
        // Many keys, once each, one per ms: a key's bucket refills in
        // 100 ms, then the key is forgotten by the next sweep.
        for k in 0..20_000u32 {
            let now = t0 + Duration::from_millis(u64::from(k));
            r.check_at(100 + k, now).unwrap();
            assert!(r.len() <= 2 * SWEEP_MIN, "{k}: {}", r.len());
        }
        assert!(KeyedRate::<u32>::new(0, 0).check(1).is_ok());
    }

    #[test]
    fn ip_slots_are_returned() {
        let l = IpLimiter::new(2, 0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = l.admit(ip).unwrap();
        let _b = l.admit(ip).unwrap();
        assert_eq!(l.admit(ip).unwrap_err(), IpRefusal::TooManyConnections);
        drop(a);
        assert_eq!(l.open(ip), 1);
        assert!(l.admit(ip).is_ok());
        let r = IpLimiter::new(0, 2);
        let _x = r.admit(ip).unwrap();
        let _y = r.admit(ip).unwrap();
        assert_eq!(r.admit(ip).unwrap_err(), IpRefusal::TooFast);
    }

    #[test]
    fn a_session_over_its_rate_is_charged_into_debt() {
        let mut limits = crate::config::Config::default().limits;
        limits.max_messages_per_sec = 10;
        let mut rate = SessionRate::new(&limits);
        let t0 = Instant::now();
        rate.messages.last = t0;
        rate.bytes.last = t0;
        assert_eq!(rate.charge_at(10, 10, t0), Duration::ZERO);
        // 20 messages in one frame: 20 in debt, two seconds of silence.
        let wait = rate.charge_at(20, 20, t0);
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6, "{wait:?}");
        assert_eq!(
            rate.throttled_for(t0 + Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // Paid back just after the wait, and over again: still throttled.
        let t1 = t0 + Duration::from_millis(2050);
        assert!(!rate.charge_at(1, 1, t1).is_zero());
        assert!(rate.throttled_for(t1) >= Duration::from_secs(2));
        // Silent until the bucket is half full: a new episode.
        let t2 = t1 + Duration::from_millis(600);
        assert_eq!(rate.charge_at(1, 1, t2), Duration::ZERO);
        assert_eq!(rate.throttled_for(t2), Duration::ZERO);
    }
}
