//! A room's recent events, for clients that follow a room over HTTP (SSE,
//! long polling, NDJSON) instead of a WebSocket.
//!
//! Every document update (merged per tick, base64 Yjs v1), presence diff and
//! ephemeral event gets the next sequence number of the room and goes into a
//! bounded ring ([`EventRing`], `--event-window` events and
//! `--event-window-bytes` bytes). The room serializes each event once, to
//! JSON; its SSE and NDJSON frames are built from that on first use, by the
//! HTTP task that streams it (not on the room's thread), and shared by every
//! subscriber. A room starts recording only when it is first followed over
//! HTTP, so rooms that only have WebSocket members pay nothing for this
//! ([`EventWindow`]).
//!
//! Sequence numbers start, for each incarnation of a room in memory, at the
//! load time in microseconds since the Unix epoch, and grow by one per
//! event: a resume point from an earlier incarnation (or from before the
//! window) is older than the ring and gets a `reset`, never a wrong replay.
//!
//! Subscribers receive events through a bounded channel
//! (`--subscriber-buffer`); one that falls behind is dropped by the room and
//! its stream ends with a `reset` event (refetch the document, then resume
//! from the `seq` it carries).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// One event of a room, serialized once for every kind of subscriber.
#[derive(Debug)]
pub struct RoomEvent {
    /// Sequence number (the SSE `id:`).
    pub seq: u64,
    /// `update`, `presence`, `event` or `reset`.
    pub kind: &'static str,
    /// The JSON object (it carries `seq` and `type` too).
    pub json: Bytes,
    /// SSE frame, built on first use.
    sse: OnceLock<Bytes>,
    /// NDJSON line, built on first use.
    ndjson: OnceLock<Bytes>,
}

impl RoomEvent {
    /// Builds an event: `body` is a JSON object to which `seq` and `type`
    /// are added.
    pub fn new(seq: u64, kind: &'static str, body: Value) -> RoomEvent {
        let mut obj = match body {
            Value::Object(m) => m,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("data".into(), other);
                m
            }
        };
        obj.insert("seq".into(), json!(seq));
        obj.insert("type".into(), json!(kind));
        // unwrap_or_default: a map of JSON values always serializes.
        let json = serde_json::to_string(&Value::Object(obj)).unwrap_or_default();
        RoomEvent {
            seq,
            kind,
            json: Bytes::from(json),
            sse: OnceLock::new(),
            ndjson: OnceLock::new(),
        }
    }

    /// The SSE frame: `id: <seq>\nevent: <kind>\ndata: <json>\n\n`.
    pub fn sse(&self) -> Bytes {
        self.sse
            .get_or_init(|| {
                let mut out =
                    format!("id: {}\nevent: {}\ndata: ", self.seq, self.kind).into_bytes();
                out.extend_from_slice(&self.json);
                out.extend_from_slice(b"\n\n");
                Bytes::from(out)
            })
            .clone()
    }

    /// The NDJSON line: `<json>\n`.
    pub fn ndjson(&self) -> Bytes {
        self.ndjson
            .get_or_init(|| {
                let mut out = Vec::with_capacity(self.json.len() + 1);
                out.extend_from_slice(&self.json);
                out.push(b'\n');
                Bytes::from(out)
            })
            .clone()
    }

    /// The `reset` event: the subscriber missed events; it should refetch
    /// the document and continue after `seq`.
    pub fn reset(seq: u64, reason: &str) -> RoomEvent {
        RoomEvent::new(seq, "reset", json!({ "reason": reason }))
    }
}

/// The bounded window of a room's recent events.
pub struct EventRing {
    events: VecDeque<Arc<RoomEvent>>,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    /// Sequence number of the latest event (or the starting point).
    head: u64,
}

/// What a subscriber resuming after some `seq` gets.
pub enum Replay {
    /// These events (possibly none) follow `since` without a gap.
    Events(Vec<Arc<RoomEvent>>),
    /// `since` is outside the window: refetch, then resume from `head`.
    Reset {
        /// The latest sequence number.
        head: u64,
    },
}

impl EventRing {
    /// An empty ring holding at most `max_events` events and `max_bytes`
    /// bytes of JSON.
    pub fn new(max_events: usize, max_bytes: usize) -> EventRing {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        EventRing {
            events: VecDeque::new(),
            bytes: 0,
            max_events,
            max_bytes,
            head: start,
        }
    }

    /// Sequence number of the latest event.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Appends an event built from `body`, evicting the oldest ones past
    /// the window, and returns it.
    pub fn push(&mut self, kind: &'static str, body: Value) -> Arc<RoomEvent> {
        self.head += 1;
        let event = Arc::new(RoomEvent::new(self.head, kind, body));
        self.bytes += event.json.len();
        self.events.push_back(event.clone());
        while self.events.len() > self.max_events
            || (self.bytes > self.max_bytes && self.events.len() > 1)
        {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.json.len();
            }
        }
        event
    }

    /// Events after `since`, or a reset when `since` is not in the window
    /// (older than its first event, or from the future / another incarnation).
    pub fn since(&self, since: u64) -> Replay {
        let first = self.events.front().map_or(self.head + 1, |e| e.seq);
        if since > self.head || since + 1 < first {
            return Replay::Reset { head: self.head };
        }
        let skip = (since + 1 - first) as usize;
        Replay::Events(self.events.iter().skip(skip).cloned().collect())
    }

    /// Forgets every event (the document was deleted).
    pub fn clear(&mut self) {
        self.events.clear();
        self.bytes = 0;
    }
}

/// A subscriber (SSE, NDJSON, long poll) as the room tracks it.
pub struct Subscriber {
    /// Where events go; bounded (`--subscriber-buffer`).
    pub tx: mpsc::Sender<Arc<RoomEvent>>,
    /// Set when the room dropped the subscriber for falling behind (or the
    /// room was deleted): the stream ends with a `reset`.
    pub lagged: Arc<AtomicBool>,
}

impl Subscriber {
    /// Offers an event; false when the subscriber is gone or behind (and
    /// must be dropped; a lagging one is marked so its stream says `reset`).
    pub fn offer(&self, event: &Arc<RoomEvent>) -> bool {
        match self.tx.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// A new subscription: what to replay, then live events from `rx`.
pub struct Subscription {
    /// Subscriber id, to unsubscribe.
    pub id: u64,
    /// Events to send first (a `reset` when `since` was outside the window).
    pub replay: Vec<Arc<RoomEvent>>,
    /// The latest sequence number at subscription time.
    pub head: u64,
    /// Live events.
    pub rx: mpsc::Receiver<Arc<RoomEvent>>,
    /// Set when the room dropped the subscriber (behind, or room deleted).
    pub lagged: Arc<AtomicBool>,
}

/// A room's HTTP followers and the window of events they resume from.
pub struct EventWindow {
    ring: EventRing,
    /// Subscribers by id; they keep the room live like members do.
    subscribers: HashMap<u64, Subscriber>,
    /// Set by the first subscriber: from then on the room keeps its event
    /// window, so followers can resume. Rooms never followed skip the
    /// per-event JSON rendering.
    followed: bool,
    /// Last subscriber id given.
    last_id: u64,
    /// Each subscriber's channel holds this many events.
    buffer: usize,
    metrics: Arc<Metrics>,
}

impl EventWindow {
    /// An empty window of `max_events` events and `max_bytes` bytes whose
    /// subscribers buffer `buffer` events each.
    pub fn new(max_events: usize, max_bytes: usize, buffer: usize, metrics: Arc<Metrics>) -> Self {
        EventWindow {
            ring: EventRing::new(max_events, max_bytes),
            subscribers: HashMap::new(),
            followed: false,
            last_id: 0,
            buffer,
            metrics,
        }
    }

    /// Number of subscribers.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// True without subscribers.
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// Latest sequence number.
    pub fn head(&self) -> u64 {
        self.ring.head()
    }

    /// Records an event and offers it to every subscriber; subscribers that
    /// are gone or behind are dropped. A room nobody has followed records
    /// nothing: `body` is not even built.
    pub fn record(&mut self, kind: &'static str, body: impl FnOnce() -> Value) {
        if !self.followed {
            return;
        }
        let event = self.ring.push(kind, body());
        if self.subscribers.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for (id, sub) in &self.subscribers {
            if sub.offer(&event) {
                self.metrics.sent(event.json.len());
            } else {
                gone.push(*id);
            }
        }
        for id in gone {
            if let Some(sub) = self.subscribers.remove(&id) {
                self.metrics.subscribers.dec();
                if sub.lagged.load(Ordering::Acquire) {
                    self.metrics.subscribers_lagged.inc();
                }
            }
        }
    }

    /// Records a document update (base64 Yjs v1) by `origin`.
    pub fn record_update(&mut self, data: &[u8], origin: Option<&str>) {
        self.record("update", || {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(data);
            json!({ "update": b64, "origin": origin })
        });
    }

    /// Adds a subscriber resuming after `since` (from now when `None`).
    pub fn subscribe(&mut self, since: Option<u64>) -> Subscription {
        self.followed = true;
        let head = self.ring.head();
        let replay = match since {
            None => Vec::new(),
            Some(since) => match self.ring.since(since) {
                Replay::Events(events) => events,
                Replay::Reset { head } => vec![Arc::new(RoomEvent::reset(head, "outside_window"))],
            },
        };
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        self.last_id += 1;
        let id = self.last_id;
        let sub = Subscriber {
            tx,
            lagged: lagged.clone(),
        };
        self.subscribers.insert(id, sub);
        self.metrics.subscribers.inc();
        Subscription {
            id,
            replay,
            head,
            rx,
            lagged,
        }
    }

    /// Removes subscriber `id`.
    pub fn unsubscribe(&mut self, id: u64) {
        if self.subscribers.remove(&id).is_some() {
            self.metrics.subscribers.dec();
        }
    }

    /// Ends every subscription with a `reset` and forgets the window (the
    /// room was deleted).
    pub fn reset(&mut self) {
        for (_, sub) in self.subscribers.drain() {
            sub.lagged.store(true, Ordering::Release);
            self.metrics.subscribers.dec();
        }
        self.ring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_inside_the_window_and_resets_outside() {
        let mut ring = EventRing::new(3, usize::MAX);
        let start = ring.head();
        for i in 0..5 {
            ring.push("event", json!({ "i": i }));
        }
        assert_eq!(ring.head(), start + 5);
        match ring.since(start + 3) {
            Replay::Events(ev) => {
                assert_eq!(
                    ev.iter().map(|e| e.seq).collect::<Vec<_>>(),
                    [start + 4, start + 5]
                )
            }
            Replay::Reset { .. } => panic!("inside the window"),
        }
        assert!(matches!(ring.since(start + 2), Replay::Events(ev) if ev.len() == 3));
        assert!(matches!(ring.since(start + 1), Replay::Reset { .. }));
        assert!(matches!(ring.since(start + 6), Replay::Reset { .. }));
        assert!(matches!(ring.since(start + 5), Replay::Events(ev) if ev.is_empty()));
    }

    #[test]
    fn frames_are_built_once_per_event() {
        let e = RoomEvent::new(7, "event", json!({ "name": "x" }));
        let sse = e.sse();
        let text = std::str::from_utf8(&sse).unwrap();
        assert!(text.starts_with("id: 7\nevent: event\ndata: {"));
        assert!(text.ends_with("}\n\n"));
        assert!(e.ndjson().ends_with(b"}\n"));
        // Built once: every subscriber shares the same bytes.
        assert_eq!(e.sse().as_ptr(), sse.as_ptr());
    }
}
