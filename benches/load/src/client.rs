//! Clients: joining a room, receiving and timing updates, writing,
//! draining, and opening many connections at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Options, ReadTxn, StateVector, Text, Transact, Update};

use crate::protocol::yupdate::inserted_ranges;
use crate::protocol::{Incoming, Synced};
use crate::target::{Target, Ws};

/// The sending half of a client's WebSocket.
pub type Sink = SplitSink<Ws, Message>;
/// The receiving half of a client's WebSocket.
pub type Source = SplitStream<Ws>;

/// First yrs client id of the writers; writer `w` is `WRITER_BASE + w`.
/// Under 2^31 so every Yjs implementation keeps it as is.
pub const WRITER_BASE: u64 = 0x4000_0000;

/// Connects and joins `room`; returns the split socket and how it synced.
pub async fn join(
    target: &Target,
    room: &str,
    presence: Option<Value>,
    wait_sync: bool,
) -> Result<(Sink, Source, Option<Synced>)> {
    let ws = target.connect(room).await?;
    let (mut sink, mut source) = ws.split();
    for f in target.join_frames(room, presence) {
        sink.send(Message::Binary(f.into())).await?;
    }
    if !wait_sync {
        return Ok((sink, source, None));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let frame = match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(Message::Close(c)))) => bail!("closed before sync: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("before sync: {e}"),
            Ok(None) => bail!("connection ended before sync"),
            Err(_) => bail!("no sync within 120 s"),
        };
        match target.classify(&frame) {
            Incoming::Synced(s) => return Ok((sink, source, Some(s))),
            Incoming::Error(e) => bail!("server error: {e}"),
            _ => {}
        }
    }
}

/// Send instants of every writer's clocks, µs since the run's origin
/// (0 = not sent).
pub struct SendTable {
    origin: Instant,
    /// `sent[writer][clock]`.
    pub sent: Vec<Vec<AtomicU64>>,
}

impl SendTable {
    /// A table of `per_writer` clocks for each writer, none sent.
    pub fn new(writers: usize, per_writer: usize) -> Self {
        SendTable {
            origin: Instant::now(),
            sent: (0..writers)
                .map(|_| (0..per_writer).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }
    /// µs since the origin.
    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Clocks seen per writer, from a state vector.
pub fn writer_clocks(sv: &StateVector, writers: usize) -> Vec<u32> {
    (0..writers)
        .map(|w| sv.get(&yrs::block::ClientID::new(WRITER_BASE + w as u64)))
        .collect()
}

/// What one receiver measured.
#[derive(Default)]
pub struct Received {
    /// Latency of each clock sent in the measured window, in µs.
    pub latencies_us: Vec<u32>,
    /// Writer clocks received (each counted once).
    pub updates: u64,
    /// Frames received.
    pub frames: u64,
    /// Bytes received.
    pub bytes: u64,
}

/// A fanout / rooms receiver: times every writer clock it sees for the first
/// time; stops at `until`.
pub async fn receive(
    target: Arc<Target>,
    mut source: Source,
    mut seen: Vec<u32>,
    table: Arc<SendTable>,
    measure_from_us: u64,
    until: tokio::time::Instant,
) -> Received {
    let mut out = Received::default();
    loop {
        let frame = match tokio::time::timeout_at(until, source.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let now = table.now_us();
        out.frames += 1;
        out.bytes += frame.len() as u64;
        let data = match target.classify(&frame) {
            Incoming::Update(d) => d,
            _ => continue,
        };
        let mut time = |client: u64, start: u32, end: u32| {
            let Some(w) = client
                .checked_sub(WRITER_BASE)
                .map(|w| w as usize)
                .filter(|w| *w < seen.len())
            else {
                return;
            };
            for clock in start.max(seen[w])..end {
                let sent = table.sent[w]
                    .get(clock as usize)
                    .map_or(0, |a| a.load(Ordering::Relaxed));
                out.updates += 1;
                if sent >= measure_from_us && sent > 0 {
                    out.latencies_us
                        .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                }
            }
            seen[w] = seen[w].max(end);
        };
        if inserted_ranges(&data, &mut time).is_some() {
            continue;
        }
        let Ok(update) = Update::decode_v1(&data) else {
            continue;
        };
        // The clock ranges it inserts (`state_vector()` would only count
        // updates that start at clock 0).
        for (client, ranges) in update.insertions(true).iter() {
            for range in ranges.iter() {
                time(client.get(), range.start, range.end);
            }
        }
    }
    out
}

/// Reads and drops everything until `until` (writers, idle connections);
/// keeps the connection answering pings. Returns (frames, bytes).
pub async fn drain(mut source: Source, until: tokio::time::Instant) -> (u64, u64) {
    let (mut frames, mut bytes) = (0, 0);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
        frames += 1;
        bytes += m.len() as u64;
    }
    (frames, bytes)
}

/// A writer: a yrs doc with its own client id, one character per update.
pub struct Writer {
    /// The writer's document.
    pub doc: Doc,
    /// The text it appends to.
    pub text: yrs::TextRef,
}

impl Writer {
    /// A writer with yrs client id `client`.
    pub fn new(client: u64) -> Self {
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(client),
            ..Options::default()
        });
        let text = doc.get_or_insert_text("t");
        Writer { doc, text }
    }
    /// Appends `s` and returns the update (one clock per character).
    pub fn write(&self, s: &str) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            self.text.insert(&mut txn, len, s);
        }
        self.doc.transact().encode_diff_v1(&before)
    }
}

/// Connects `n` clients with bounded concurrency; `f(i)` opens client `i`.
pub async fn open_many<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let fut = f(i);
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    out
}
