//! Inbound flow control of one session: whether it reads its socket.
//!
//! A session that is over its rate, or that has too much work queued on its
//! rooms, stops reading: its [`Gate`] closes, the [`GatedPayload`] between
//! the socket and the WebSocket decoder answers `Pending` instead of
//! reading, and TCP backpressure slows the client down. Nothing is buffered
//! on the server for it beyond the frame being decoded, and nothing is
//! refused: an honest client that bursts is slowed, not closed.
//!
//! Work queued on rooms is counted with a [`Ticket`] carried by every room
//! message a session sends ([`Tracked`]); the room drops it when it has
//! handled the message, which may reopen the gate. So the room mailbox
//! holds at most `max_queued_messages` (or `max_frame_bytes` of) messages
//! per session beyond one frame's worth, whatever the client sends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use actix::prelude::*;
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::room::{
    AwarenessUpdate, Broadcast, ClientUpdate, QueryAwareness, Room, SetCursor, SetPresence,
    SetTyping, SyncStep1,
};

/// Whether a session reads its socket: shared by the session (which pauses
/// it over the rate and takes tickets), its rooms (which return tickets)
/// and its [`GatedPayload`].
#[derive(Debug)]
pub struct Gate {
    /// The session reads nothing before this instant (rate debt).
    resume_at: Mutex<Option<Instant>>,
    /// Room messages sent and not yet handled.
    queued: AtomicUsize,
    /// Their payload bytes.
    queued_bytes: AtomicUsize,
    /// Reading stops at this many queued messages...
    max_queued: usize,
    /// ...or this many queued bytes.
    max_queued_bytes: usize,
    /// The reader waiting for the gate to open (the session's context).
    waker: AtomicWaker,
    /// The session holds messages of a frame it could not send yet (more
    /// than `max_queued` at once): closed until it has sent them all.
    holding: AtomicBool,
    /// Told when a returned ticket makes room for held messages.
    pump: OnceLock<Recipient<Pump>>,
    /// A [`Pump`] is on its way (one at a time).
    pump_sent: AtomicBool,
}

/// Sent to a session holding messages when its rooms handled some of its
/// earlier ones: send more.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Pump;

impl Gate {
    /// An open gate that closes at `max_queued` messages or
    /// `max_queued_bytes` bytes queued on rooms.
    pub fn new(max_queued: usize, max_queued_bytes: usize) -> Arc<Gate> {
        Arc::new(Gate {
            resume_at: Mutex::new(None),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            max_queued: max_queued.max(1),
            max_queued_bytes: max_queued_bytes.max(1),
            waker: AtomicWaker::new(),
            holding: AtomicBool::new(false),
            pump: OnceLock::new(),
            pump_sent: AtomicBool::new(false),
        })
    }

    /// Where to send [`Pump`] (the session, once started).
    pub fn set_pump(&self, to: Recipient<Pump>) {
        let _ = self.pump.set(to);
    }

    /// True when one more room message may be sent now.
    pub fn has_room(&self) -> bool {
        !self.is_full()
    }

    /// Marks the session as holding messages (the gate stays closed) or
    /// not (the reader is woken).
    pub fn hold(&self, holding: bool) {
        self.holding.store(holding, Ordering::Release);
        if holding {
            self.pump_sent.store(false, Ordering::Release);
        } else {
            self.waker.wake();
        }
    }

    fn resume(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A single assignment under the lock: a poisoned value is consistent.
        self.resume_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops reading for `wait` from now (or longer, if already paused
    /// past that).
    pub fn pause_for(&self, wait: std::time::Duration) {
        let at = Instant::now() + wait;
        let mut resume = self.resume();
        if resume.is_none_or(|r| r < at) {
            *resume = Some(at);
        }
    }

    /// True while the session must not read: paused for its rate, or too
    /// much of its work waits in rooms.
    pub fn is_closed(&self) -> bool {
        self.resume().is_some_and(|at| at > Instant::now())
            || self.is_full()
            || self.holding.load(Ordering::Acquire)
    }

    fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.max_queued
            || self.queued_bytes.load(Ordering::Acquire) >= self.max_queued_bytes
    }

    /// Room messages sent and not yet handled.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Counts one room message of `bytes` payload until the returned
    /// ticket is dropped.
    pub fn ticket(self: &Arc<Self>, bytes: usize) -> Ticket {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        Ticket {
            gate: self.clone(),
            bytes,
        }
    }
}

/// One room message of a session, counted in its [`Gate`] until dropped.
#[derive(Debug)]
pub struct Ticket {
    gate: Arc<Gate>,
    bytes: usize,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.queued.fetch_sub(1, Ordering::AcqRel);
        self.gate
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
        let gate = &self.gate;
        if gate.is_full() {
            return;
        }
        if gate.holding.load(Ordering::Acquire) {
            if !gate.pump_sent.swap(true, Ordering::AcqRel) {
                if let Some(pump) = gate.pump.get() {
                    pump.do_send(Pump);
                }
            }
        } else {
            gate.waker.wake();
        }
    }
}

/// A room message sent by a session, with the ticket that counts it as
/// queued until the room has handled it.
#[derive(Debug)]
pub struct Tracked<M> {
    /// The message for the room.
    pub msg: M,
    /// Dropped once the room handled `msg` (or dropped it).
    pub ticket: Ticket,
}

impl<M: Message<Result = ()>> Message for Tracked<M> {
    type Result = ();
}

/// `Handler<Tracked<M>>` for the room, for each message a session sends
/// on its client's behalf: the room handles `M`, then the ticket drops.
/// (A list, not a blanket impl: one over every `M` the room handles sends
/// the trait solver in circles.)
macro_rules! tracked_handlers {
    ($($msg:ty),* $(,)?) => {$(
        impl Handler<Tracked<$msg>> for Room {
            type Result = ();

            fn handle(&mut self, tracked: Tracked<$msg>, ctx: &mut actix::Context<Room>) {
                let Tracked { msg, ticket } = tracked;
                <Room as Handler<$msg>>::handle(self, msg, ctx);
                drop(ticket);
            }
        }
    )*};
}

tracked_handlers!(
    ClientUpdate,
    SyncStep1,
    AwarenessUpdate,
    QueryAwareness,
    SetPresence,
    SetCursor,
    SetTyping,
    Broadcast,
);

/// The request payload of a WebSocket session, read only while its
/// [`Gate`] is open. While it is closed the payload is not polled, so
/// the connection stops reading the socket once its payload queue is full
/// (`crate::http` upgrade pump, 32 KiB).
pub struct GatedPayload<S> {
    inner: S,
    gate: Arc<Gate>,
    /// Wakes the reader when a rate pause ends.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S> GatedPayload<S> {
    /// Reads `inner` through `gate`.
    pub fn new(inner: S, gate: Arc<Gate>) -> Self {
        GatedPayload {
            inner,
            gate,
            sleep: None,
        }
    }
}

impl<S: Stream + Unpin> Stream for GatedPayload<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let resume = *this.gate.resume();
        if let Some(at) = resume.filter(|at| *at > Instant::now()) {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        this.gate.waker.register(cx.waker());
        if this.gate.is_full() || this.gate.holding.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_next(cx)
    }
}

/// The request payload of a WebSocket session, stopped at the header of a
/// frame longer than `max` bytes.
///
/// actix-http's WebSocket parser checks a frame's length against its
/// `max_size` only once the whole frame has arrived: until then the
/// decoder buffers what the header announced, up to 2^63 bytes, so one
/// client could make the server hold gigabytes for a frame it would then
/// refuse. This stream reads the frame headers as the bytes go by, and in
/// place of a header announcing more than `max` it yields a header whose
/// length has its most significant bit set (RFC 6455 §5.2 forbids it),
/// which the parser refuses at once with `Overflow` (the session closes
/// with its "too big" code); then it ends.
pub struct FrameGuard<S> {
    inner: S,
    max: u64,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// The bytes of a frame header seen so far (at most 14), held back
    /// until it is whole.
    head: [u8; 14],
    head_len: usize,
    /// An oversized header was replaced: nothing more is read.
    tripped: bool,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` against frames longer than `max` bytes.
    pub fn new(inner: S, max: usize) -> Self {
        FrameGuard {
            inner,
            max: max as u64,
            skip: 0,
            head: [0; 14],
            head_len: 0,
            tripped: false,
        }
    }

    /// The header's full length once its first two bytes are known.
    fn head_needed(&self) -> usize {
        if self.head_len < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    /// The payload length of the whole header held.
    fn head_length(&self) -> u64 {
        match self.head[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.head[2], self.head[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.head[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        }
    }

    /// Passes `chunk` on, holding back an incomplete header; replaces an
    /// oversized one (and trips).
    fn filter(&mut self, chunk: bytes::Bytes) -> bytes::Bytes {
        if self.head_len == 0 && self.skip >= chunk.len() as u64 {
            self.skip -= chunk.len() as u64;
            return chunk;
        }
        let mut out = bytes::BytesMut::with_capacity(chunk.len() + self.head_len);
        let mut at = 0;
        while at < chunk.len() {
            if self.skip > 0 {
                let n = (chunk.len() - at).min(usize::try_from(self.skip).unwrap_or(usize::MAX));
                out.extend_from_slice(&chunk[at..at + n]);
                self.skip -= n as u64;
                at += n;
                continue;
            }
            while self.head_len < self.head_needed() && at < chunk.len() {
                self.head[self.head_len] = chunk[at];
                self.head_len += 1;
                at += 1;
            }
            if self.head_len < self.head_needed() {
                break; // the rest of the header comes with the next chunk
            }
            let length = self.head_length();
            if length > self.max {
                out.extend_from_slice(&[self.head[0], 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0]);
                out.extend_from_slice(&[0; 4]);
                self.tripped = true;
                return out.freeze();
            }
            out.extend_from_slice(&self.head[..self.head_len]);
            self.head_len = 0;
            self.skip = length;
        }
        out.freeze()
    }
}

impl<S, E> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        loop {
            if this.tripped {
                // The parser has refused the frame; the session closes.
                return Poll::Pending;
            }
            match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(chunk)) => {
                    let chunk = this.filter(chunk);
                    if !chunk.is_empty() {
                        return Poll::Ready(Some(Ok(chunk)));
                    }
                }
                other => return Poll::Ready(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

    #[tokio::test]
    async fn the_frame_guard_replaces_an_oversized_header_and_passes_the_rest() {
        // Two small masked frames, cut anywhere, then one announcing 1 GiB.
        let small = [0x82u8, 0x83, 1, 2, 3, 4, 9, 9, 9];
        let mut wire = Vec::new();
        wire.extend_from_slice(&small);
        wire.extend_from_slice(&small);
        let big_at = wire.len();
        wire.extend_from_slice(&[0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4]);
        wire.extend_from_slice(&[7; 100]);
        for cut in 1..wire.len() {
            let chunks: Vec<Result<bytes::Bytes, ()>> = wire
                .chunks(cut)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            let mut guard = FrameGuard::new(futures_util::stream::iter(chunks), 1000);
            let mut out = Vec::new();
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            while let Poll::Ready(Some(chunk)) = Pin::new(&mut guard).poll_next(&mut cx) {
                out.extend_from_slice(&chunk.unwrap());
            }
            assert_eq!(&out[..big_at], &wire[..big_at], "cut {cut}");
            assert_eq!(out.len(), big_at + 14, "cut {cut}");
            assert_eq!(out[big_at + 1], 0x80 | 127, "cut {cut}");
            assert_eq!(
                out[big_at + 2] & 0x80,
                0x80,
                "cut {cut}: length with its top bit"
            );
        }
    }

    #[tokio::test]
    async fn a_full_gate_stops_reading_until_a_ticket_returns() {
        let gate = Gate::new(2, 1 << 20);
        let items = futures_util::stream::iter([1, 2, 3]);
        let mut payload = GatedPayload::new(items, gate.clone());
        assert_eq!(payload.next().await, Some(1));
        let a = gate.ticket(10);
        let _b = gate.ticket(10);
        assert!(gate.is_closed());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut payload).poll_next(&mut cx).is_pending());
        drop(a);
        assert!(!gate.is_closed());
        assert_eq!(payload.next().await, Some(2));
    }

    #[tokio::test]
    async fn a_paused_gate_reads_again_when_the_pause_ends() {
        let gate = Gate::new(10, 1 << 20);
        let mut payload = GatedPayload::new(futures_util::stream::iter([1, 2]), gate.clone());
        gate.pause_for(Duration::from_millis(60));
        let started = std::time::Instant::now();
        assert_eq!(payload.next().await, Some(1));
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert!(!gate.is_closed());
    }
}
