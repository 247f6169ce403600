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

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use std::time::Duration;

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
