//! What sits between a session actor and its socket: the session's
//! [`Outbox`], a queue of ready-to-write WebSocket frames shared with the
//! rooms that send to the session, and the byte count of what waits in it.
//!
//! Rooms do not send frames to a session through its actor mailbox: they
//! push pre-framed bytes ([`Frame`]) into the session's outbox, and the
//! response body ([`OutboxBody`]) hands them to the socket as it takes
//! more. A frame encoded once per fan-out is shared by every recipient (a
//! `Bytes` clone, no copy), and the body task is woken only when the queue
//! goes from empty to non-empty. The session actor writes through the same
//! queue (welcome, errors, pings, close), so every frame keeps its order.
//!
//! The body is polled only as the socket drains, so a client that stops
//! reading stops the body, and with it its session actor
//! (the actor runs inside the body's poll). The byte count makes that pile
//! visible to the *senders*: every frame pushed adds its wire size, and the
//! body subtracts what it yields to the socket. Rooms consult the backlog
//! before sending ([`Outbox::offer`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Wake, Waker};

use actix::prelude::*;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;

/// A message for a session actor. Frames do not travel this way (they go
/// through the [`Outbox`]); these change the session's state.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Outbound {
    /// The room refused a join (the error frame precedes this): forget it.
    Refused {
        /// The room that refused.
        room: crate::ids::RoomId,
    },
    /// Close the connection with this code.
    Close {
        /// WebSocket close code (see `protocol::close`).
        code: u16,
        /// Short reason for the close frame.
        reason: String,
    },
}

/// Sent by [`OutboxBody`] to its session when a lagging session's backlog
/// has drained below half the buffer: time to resync.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Drained;

/// How a frame may be treated when the recipient is behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Document delta: dropped when over the buffer; the room resyncs the
    /// session from its state vector once it drains.
    Delta,
    /// Presence diff or cursor batch: dropped when over the buffer; the room
    /// sends a fresh presence snapshot on resync.
    Presence,
    /// Ephemeral (events, typing): dropped when over the buffer, not replayed.
    Ephemeral,
    /// Must be delivered (synced, ack, error): past the hard limit the
    /// session is disconnected instead.
    Control,
}

/// What [`Outbox::offer`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The frame was queued for the session.
    Sent,
    /// The frame was dropped; the session is marked lagging.
    Dropped,
    /// The session is hopelessly behind (it was told to close, 4008) or
    /// its connection is gone: nothing was queued.
    Evicted,
}

const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Largest close reason that fits a control frame (125 bytes, less the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// One server→client WebSocket frame, header included, as one or more
/// byte chunks written back to back. Cloning shares the bytes: a frame
/// encoded once is queued for any number of sessions without a copy.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The wire bytes, in order; the first chunk starts with the header.
    parts: Vec<Bytes>,
    /// Payload size (the wire size less the header).
    payload: usize,
}

/// Size of a server→client WebSocket frame carrying `payload` bytes
/// (server frames are not masked).
pub fn ws_frame_len(payload: usize) -> u64 {
    (header_len(payload) + payload) as u64
}

fn header_len(payload: usize) -> usize {
    if payload < 126 {
        2
    } else if payload <= u16::MAX as usize {
        4
    } else {
        10
    }
}

/// Writes an RFC 6455 header: FIN set, `opcode`, unmasked, `payload` bytes.
fn put_header(buf: &mut BytesMut, opcode: u8, payload: usize) {
    buf.put_u8(0x80 | opcode);
    if payload < 126 {
        buf.put_u8(payload as u8);
    } else if payload <= u16::MAX as usize {
        buf.put_u8(126);
        buf.put_u16(payload as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(payload as u64);
    }
}

impl Frame {
    fn single(opcode: u8, payload: &[u8]) -> Frame {
        let mut buf = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
        put_header(&mut buf, opcode, payload.len());
        buf.put_slice(payload);
        Frame {
            parts: vec![buf.freeze()],
            payload: payload.len(),
        }
    }

    /// A binary frame carrying `payload` (copied once, with the header).
    pub fn binary(payload: &[u8]) -> Frame {
        Frame::single(OP_BINARY, payload)
    }

    /// A binary frame whose payload is `head`, then `shared`, then `tail`:
    /// `head` and `tail` are copied (keep them small), `shared` is not, so a
    /// large payload made once is sent to many sessions without a copy.
    pub fn binary_parts(head: &[u8], shared: Bytes, tail: &[u8]) -> Frame {
        let payload = head.len() + shared.len() + tail.len();
        let mut first = BytesMut::with_capacity(header_len(payload) + head.len());
        put_header(&mut first, OP_BINARY, payload);
        first.put_slice(head);
        let mut parts = vec![first.freeze()];
        if !shared.is_empty() {
            parts.push(shared);
        }
        if !tail.is_empty() {
            parts.push(Bytes::copy_from_slice(tail));
        }
        Frame { parts, payload }
    }

    /// A ping carrying `payload` (at most 125 bytes).
    pub fn ping(payload: &[u8]) -> Frame {
        Frame::single(OP_PING, &payload[..payload.len().min(125)])
    }

    /// A pong echoing `payload` (at most 125 bytes).
    pub fn pong(payload: &[u8]) -> Frame {
        Frame::single(OP_PONG, &payload[..payload.len().min(125)])
    }

    /// A close frame; `None` closes without a code. The reason is cut to
    /// fit a control frame.
    pub fn close(code: Option<u16>, reason: &str) -> Frame {
        let Some(code) = code else {
            return Frame::single(OP_CLOSE, &[]);
        };
        let reason = close_reason(reason);
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(reason.as_bytes());
        Frame::single(OP_CLOSE, &payload)
    }

    /// Bytes on the wire, header included.
    pub fn wire_len(&self) -> u64 {
        ws_frame_len(self.payload)
    }

    /// Payload bytes.
    pub fn payload_len(&self) -> usize {
        self.payload
    }

    /// The wire bytes as one buffer (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        self.parts.iter().flat_map(|p| p.iter().copied()).collect()
    }
}

/// One broadcast on its way to the sockets: how many of its recipients
/// still hold it in their outbox. A room sends its next update at once
/// while the last one is out of every (or almost every) outbox, and merges
/// what arrives while it is still being written, so merging grows with the
/// load by itself instead of following a fixed window.
///
/// Each tracked recipient gets the frame with a token on its last chunk
/// ([`Flight::track`]; the bytes stay shared); the token counts down when
/// that chunk has been written to the socket (or the frame was dropped
/// or discarded), and the `done` callback runs when the count reaches the
/// threshold given to [`Flight::arm`].
pub struct Flight {
    /// Tracked recipients still holding the frame, plus one while the
    /// fan-out runs (released by [`Flight::arm`]).
    remaining: AtomicUsize,
    /// Done at or below this many; `usize::MAX` until armed (no callback
    /// while the fan-out runs).
    threshold: AtomicUsize,
    /// Called (from whichever thread dropped the token) when the count
    /// reaches the threshold.
    done: Box<dyn Fn() + Send + Sync>,
}

impl Flight {
    /// A broadcast about to be fanned out; `done` is called at most once
    /// after [`Flight::arm`] (possibly more than once in a race with it:
    /// make it idempotent).
    pub fn new(done: impl Fn() + Send + Sync + 'static) -> Arc<Flight> {
        Arc::new(Flight {
            remaining: AtomicUsize::new(1),
            threshold: AtomicUsize::new(usize::MAX),
            done: Box::new(done),
        })
    }

    /// `frame` for one more recipient, counted until its last chunk is
    /// written. The bytes are shared, not copied.
    pub fn track(self: &Arc<Self>, frame: &Frame) -> Frame {
        let mut parts = frame.parts.clone();
        let Some(last) = parts.pop() else {
            return frame.clone();
        };
        self.remaining.fetch_add(1, Ordering::SeqCst);
        parts.push(Bytes::from_owner(Token {
            bytes: last,
            flight: self.clone(),
        }));
        Frame {
            parts,
            payload: frame.payload,
        }
    }

    /// The fan-out is over: the flight is done once at most `threshold`
    /// tracked recipients still hold the frame. True when it already is
    /// (then `done` may not be called).
    pub fn arm(&self, threshold: usize) -> bool {
        self.threshold.store(threshold, Ordering::SeqCst);
        self.remaining.fetch_sub(1, Ordering::SeqCst) - 1 <= threshold
    }

    /// True once armed and at most the threshold still hold the frame.
    pub fn is_done(&self) -> bool {
        self.remaining.load(Ordering::SeqCst) <= self.threshold.load(Ordering::SeqCst)
    }
}

/// The owner of a tracked chunk: counts its flight down when the last
/// handle on the chunk is dropped.
struct Token {
    bytes: Bytes,
    flight: Arc<Flight>,
}

impl AsRef<[u8]> for Token {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let left = self.flight.remaining.fetch_sub(1, Ordering::SeqCst) - 1;
        if left == self.flight.threshold.load(Ordering::SeqCst) {
            (self.flight.done)();
        }
    }
}

/// The longest prefix of `reason` that fits a close frame
/// ([`MAX_CLOSE_REASON`] bytes), cut on a character boundary.
pub fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The close frame answering a client's close (the same code and reason).
pub fn echo_close(reason: Option<actix_http::ws::CloseReason>) -> Frame {
    match reason {
        Some(r) => Frame::close(Some(r.code.into()), r.description.as_deref().unwrap_or("")),
        None => Frame::close(None, ""),
    }
}

/// Wakes the response body, and marks the session actor as woken when the
/// waker is the one its context polls with.
#[derive(Default)]
struct Signal {
    /// The body's task (the connection's pump), registered on every poll.
    body: AtomicWaker,
    /// Something the actor waits on (mailbox, socket input, timer) fired:
    /// the body polls the actor at its next poll, and only then.
    actor_woken: AtomicBool,
}

/// The waker handed to the session actor's context.
struct ActorWaker(Arc<Signal>);

impl Wake for ActorWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.actor_woken.store(true, Ordering::Release);
        self.0.body.wake();
    }
}

/// Frames waiting for the socket.
#[derive(Default)]
struct Lane {
    /// Wire chunks in order (a frame may span several).
    chunks: VecDeque<Bytes>,
    /// The body is gone (connection closed): pushes are discarded.
    closed: bool,
}

/// One session's outbound queue and its byte accounting, shared by the
/// session, its rooms and its response body.
#[derive(Default)]
pub struct Outbox {
    /// Wire bytes queued so far.
    queued: AtomicU64,
    /// Wire bytes yielded to the socket so far.
    written: AtomicU64,
    /// A room dropped frames for this session; cleared when it resyncs.
    lagging: AtomicBool,
    /// Set once the session exceeded the hard limit and must close.
    evicted: AtomicBool,
    /// The session's address, to tell it when it drained (set on start).
    waker: OnceLock<Recipient<Drained>>,
    /// Soft limit: droppable frames are dropped past it.
    soft_limit: u64,
    /// Hard limit: past it even control frames are refused and the session closes.
    hard_limit: u64,
    /// Frames not yet taken by the body. Locked for a push or a swap only.
    lane: Mutex<Lane>,
    /// Who to wake when the lane goes non-empty.
    signal: Arc<Signal>,
}

impl Outbox {
    /// A new outbox with the session's buffer limits.
    pub fn new(soft_limit: usize, hard_limit: usize) -> Self {
        Outbox {
            soft_limit: soft_limit as u64,
            hard_limit: hard_limit as u64,
            ..Default::default()
        }
    }

    fn lane(&self) -> MutexGuard<'_, Lane> {
        // Critical sections are a push or a swap; a poisoned lane is consistent.
        self.lane.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Remembers the session to wake when a lagging backlog drains.
    pub fn set_waker(&self, waker: Recipient<Drained>) {
        let _ = self.waker.set(waker);
    }

    /// Wire bytes written to the socket so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Bytes queued and not yet written to the socket.
    pub fn backlog(&self) -> u64 {
        let written = self.written.load(Ordering::Acquire);
        self.queued.load(Ordering::Acquire).saturating_sub(written)
    }

    /// Queues `frame` whatever the backlog (the session's own frames:
    /// welcome, errors, pings, close). False when the connection is gone.
    pub fn push(&self, frame: &Frame) -> bool {
        self.enqueue(frame, false)
    }

    /// Queues the session's close frame, last: the lane takes nothing after
    /// it (a room pushing at the same moment must not put data behind a
    /// close). What is already queued is still written.
    pub fn push_close(&self, frame: &Frame) {
        self.enqueue(frame, true);
    }

    /// Appends `frame` to the lane unless it is closed (closing it after
    /// when `last`), and wakes the body if the lane was empty.
    fn enqueue(&self, frame: &Frame, last: bool) -> bool {
        let was_empty = {
            let mut lane = self.lane();
            if lane.closed {
                return false;
            }
            lane.closed = last;
            let was_empty = lane.chunks.is_empty();
            lane.chunks.extend(frame.parts.iter().cloned());
            // Counted under the lock, so the body never yields bytes not
            // yet counted (the backlog never reads low).
            self.queued.fetch_add(frame.wire_len(), Ordering::AcqRel);
            was_empty
        };
        if was_empty {
            self.signal.body.wake();
        }
        true
    }

    /// True when a room dropped frames for this session since its last resync.
    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Acquire)
    }

    /// Clears the lagging mark; true when it was set.
    pub fn take_lagging(&self) -> bool {
        self.lagging.swap(false, Ordering::AcqRel)
    }

    /// True once the session went past the hard limit.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// True when the backlog is low enough to resync a lagging session.
    pub fn is_drained(&self) -> bool {
        self.backlog() <= self.soft_limit / 2
    }

    /// Offers `frame` of `class` to the session behind `to`, applying the
    /// buffer limits. The frame's bytes are shared, never copied. Past the
    /// hard limit the session is told (through its actor) to close.
    pub fn offer(&self, to: &Recipient<Outbound>, frame: &Frame, class: Class) -> Offer {
        if self.is_evicted() {
            return Offer::Evicted;
        }
        let backlog = self.backlog();
        if class != Class::Control && backlog > self.soft_limit {
            self.lagging.store(true, Ordering::Release);
            return Offer::Dropped;
        }
        if backlog > self.hard_limit {
            self.evicted.store(true, Ordering::Release);
            to.do_send(Outbound::Close {
                code: crate::protocol::close::SLOW_CONSUMER,
                reason: "slow consumer".into(),
            });
            return Offer::Evicted;
        }
        if self.push(frame) {
            Offer::Sent
        } else {
            Offer::Evicted
        }
    }

    fn on_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::AcqRel);
        if self.is_lagging() && self.is_drained() {
            if let Some(waker) = self.waker.get() {
                waker.do_send(Drained);
            }
        }
    }

    /// The connection is gone: drop what waits and refuse further pushes.
    fn close_lane(&self) {
        let chunks = {
            let mut lane = self.lane();
            lane.closed = true;
            std::mem::take(&mut lane.chunks)
        };
        drop(chunks);
    }
}

/// The response body of a WebSocket session: the outbox's frames, with the
/// session actor driven inside (the stream `WebsocketContext::with_codec`
/// returns runs the actor when polled).
///
/// The actor is polled only when something it waits on woke it; a poll
/// caused by the socket draining or by a room pushing a frame just moves
/// frames. The actor writes nothing through its context: every frame goes
/// through the [`Outbox`], so frames from the actor and from rooms keep the
/// order in which they were pushed. (Bytes the context yields anyway are
/// passed on, uncounted.)
pub struct OutboxBody<S> {
    /// The actor's context stream.
    actor: Pin<Box<S>>,
    /// The actor's context stream ended (the actor stopped).
    actor_done: bool,
    /// The waker the actor's context is polled with.
    actor_waker: Waker,
    outbox: Arc<Outbox>,
    /// Chunks taken from the lane, not yet yielded (counted as backlog).
    ready: VecDeque<Bytes>,
}

// How much the body yields at once: slices of a larger frame (shared, not
// copied), so that the backlog counts as written only what the socket is
// about to take (src/http/upgrade.rs writes each chunk as it comes, with no
// buffer of its own). 64 KiB keeps a large frame (a 10 MB join) to a few
// hundred writes.

/// Largest chunk the body yields.
const PIECE: usize = 64 * 1024;

/// Lane capacity kept across swaps; a larger one (left by a burst) is freed.
const KEEP_LANE_CAPACITY: usize = 4;

impl<S> OutboxBody<S> {
    /// Wraps the stream returned by `WebsocketContext::with_codec`.
    pub fn new(actor: S, outbox: Arc<Outbox>) -> Self {
        outbox.signal.actor_woken.store(true, Ordering::Release);
        let actor_waker = Waker::from(Arc::new(ActorWaker(outbox.signal.clone())));
        OutboxBody {
            actor: Box::pin(actor),
            actor_done: false,
            actor_waker,
            outbox,
            ready: VecDeque::new(),
        }
    }

    /// Moves the lane's chunks into `ready` (one swap under the lock).
    fn take_lane(&mut self) {
        let mut lane = self.outbox.lane();
        std::mem::swap(&mut lane.chunks, &mut self.ready);
        if lane.chunks.capacity() > KEEP_LANE_CAPACITY {
            lane.chunks = VecDeque::new();
        }
    }
}

impl<S, E> Stream for OutboxBody<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.outbox.signal.body.register(cx.waker());
        if !this.actor_done && this.outbox.signal.actor_woken.swap(false, Ordering::AcqRel) {
            let mut actor_cx = Context::from_waker(&this.actor_waker);
            match this.actor.as_mut().poll_next(&mut actor_cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    // The context wrote something itself: pass it on, and
                    // poll the actor again next time (it may have more).
                    this.outbox
                        .signal
                        .actor_woken
                        .store(true, Ordering::Release);
                    return Poll::Ready(Some(Ok(bytes)));
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => this.actor_done = true,
                Poll::Pending => {}
            }
        }
        if this.ready.is_empty() {
            this.take_lane();
        }
        if let Some(mut chunk) = this.ready.pop_front() {
            if chunk.len() > PIECE {
                this.ready.push_front(chunk.split_off(PIECE));
            }
            this.outbox.on_written(chunk.len());
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.actor_done {
            // The actor pushed its close frame before stopping; all of it
            // has been yielded.
            this.outbox.close_lane();
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

impl<S> Drop for OutboxBody<S> {
    fn drop(&mut self) {
        self.outbox.close_lane();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_len_matches_rfc6455_headers() {
        assert_eq!(ws_frame_len(0), 2);
        assert_eq!(ws_frame_len(125), 127);
        assert_eq!(ws_frame_len(126), 130);
        assert_eq!(ws_frame_len(65_535), 65_539);
        assert_eq!(ws_frame_len(65_536), 65_546);
        for n in [0, 125, 126, 65_535, 65_536] {
            let f = Frame::binary(&vec![7; n]);
            assert_eq!(f.to_vec().len() as u64, ws_frame_len(n));
            assert_eq!(f.wire_len(), ws_frame_len(n));
        }
    }

    /// Frames parse with actix-http's WebSocket parser (client side).
    #[test]
    fn frames_parse_as_websocket_frames() {
        use actix_http::ws::{OpCode, Parser};
        let parse = |frame: &Frame| {
            let mut buf = BytesMut::from(&frame.to_vec()[..]);
            let parsed = Parser::parse(&mut buf, false, 1 << 20);
            assert!(buf.is_empty(), "one frame, nothing left");
            match parsed {
                Ok(Some((true, op, payload))) => {
                    (op, payload.map(|p| p.to_vec()).unwrap_or_default())
                }
                other => panic!("not a whole frame: {other:?}"),
            }
        };
        let big = Bytes::from(vec![9u8; 70_000]);
        let cases: Vec<(Frame, Vec<u8>)> = vec![
            (Frame::binary(b"abc"), b"abc".to_vec()),
            (
                Frame::binary_parts(b"h", big.clone(), b"t"),
                [&b"h"[..], &big[..], b"t"].concat(),
            ),
            (
                Frame::binary_parts(&[1; 200], Bytes::new(), &[]),
                vec![1; 200],
            ),
        ];
        for (frame, payload) in cases {
            let (op, got) = parse(&frame);
            assert_eq!(op, OpCode::Binary);
            assert_eq!(got, payload);
        }
        let (op, got) = parse(&Frame::close(Some(4008), "slow consumer"));
        assert_eq!(op, OpCode::Close);
        let reason = Parser::try_parse_close_payload(&got)
            .ok()
            .flatten()
            .expect("a close reason");
        assert_eq!(u16::from(reason.code), 4008);
        assert_eq!(reason.description.as_deref(), Some("slow consumer"));
        assert_eq!(parse(&Frame::ping(b"")).0, OpCode::Ping);
        assert_eq!(parse(&Frame::pong(b"x")), (OpCode::Pong, b"x".to_vec()));
        let long = "é".repeat(100);
        assert!(Frame::close(Some(1000), &long).payload_len() <= 125);
    }

    #[test]
    fn close_reasons_are_cut_on_a_char_boundary() {
        assert_eq!(close_reason("bye"), "bye");
        let ascii = "x".repeat(200);
        assert_eq!(close_reason(&ascii).len(), MAX_CLOSE_REASON);
        // "é" is two bytes: 61 of them (122 bytes) fit, the 62nd would not.
        let accented = "é".repeat(100);
        assert_eq!(close_reason(&accented), "é".repeat(61));
    }

    #[test]
    fn backlog_is_queued_minus_written() {
        let outbox = Outbox::new(100, 1000);
        outbox.push(&Frame::binary(&[0; 50]));
        assert_eq!(outbox.backlog(), 52);
        outbox.on_written(40);
        assert_eq!(outbox.backlog(), 12);
        assert!(outbox.is_drained());
    }

    /// Frames come out in push order, large ones in slices; the actor is
    /// polled on the first poll and then only when its waker fired.
    #[test]
    fn the_body_drains_in_order_and_polls_the_actor_only_when_woken() {
        use std::sync::atomic::AtomicUsize;
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let actor_waker = Arc::new(Mutex::new(None::<Waker>));
        let keep = actor_waker.clone();
        let actor = futures_util::stream::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::SeqCst);
            *keep.lock().unwrap() = Some(cx.waker().clone());
            Poll::<Option<Result<Bytes, ()>>>::Pending
        });
        let outbox = Arc::new(Outbox::new(1 << 20, 1 << 21));
        let mut body = OutboxBody::new(actor, outbox.clone());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut drain = |body: &mut OutboxBody<_>| {
            let mut out = Vec::new();
            loop {
                match Pin::new(&mut *body).poll_next(&mut cx) {
                    Poll::Ready(Some(Ok(b))) => {
                        assert!(b.len() <= PIECE);
                        out.extend_from_slice(&b);
                    }
                    Poll::Pending => return out,
                    Poll::Ready(other) => panic!("unexpected {other:?}"),
                }
            }
        };
        assert!(drain(&mut body).is_empty());
        assert_eq!(polls.load(Ordering::SeqCst), 1);
        let big = Frame::binary_parts(b"h", Bytes::from(vec![1u8; 200_000]), b"t");
        let frames = [Frame::binary(b"a"), big, Frame::binary(b"b")];
        for f in &frames {
            assert!(outbox.push(f));
        }
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        assert_eq!(drain(&mut body), expected);
        assert_eq!(outbox.backlog(), 0);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "frames do not run the actor"
        );
        if let Some(w) = actor_waker.lock().unwrap().take() {
            w.wake();
        }
        drain(&mut body);
        assert_eq!(polls.load(Ordering::SeqCst), 2, "its waker does");
    }

    #[test]
    fn nothing_follows_a_close_frame() {
        let outbox = Outbox::new(100, 1000);
        assert!(outbox.push(&Frame::binary(b"before")));
        outbox.push_close(&Frame::close(Some(1000), "bye"));
        assert!(!outbox.push(&Frame::binary(b"after")));
        outbox.push_close(&Frame::close(Some(1001), "again"));
        let queued: Vec<u8> = outbox
            .lane()
            .chunks
            .iter()
            .flat_map(|c| c.to_vec())
            .collect();
        let expected = [
            Frame::binary(b"before").to_vec(),
            Frame::close(Some(1000), "bye").to_vec(),
        ]
        .concat();
        assert_eq!(queued, expected);
    }

    /// A flight is done when the recipients' bodies have yielded its
    /// frame (or dropped it), at the threshold, and calls back once.
    #[test]
    fn a_flight_is_done_when_its_frames_are_written() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let flight = Flight::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let frame = Frame::binary_parts(b"h", Bytes::from(vec![3u8; 20_000]), b"t");
        let outboxes: Vec<Arc<Outbox>> = (0..3)
            .map(|_| Arc::new(Outbox::new(1 << 20, 1 << 21)))
            .collect();
        for o in &outboxes {
            assert!(o.push(&flight.track(&frame)));
        }
        assert!(!flight.arm(0), "three outboxes hold it");
        assert!(!flight.is_done());
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut bodies: Vec<_> = outboxes
            .iter()
            .map(|o| {
                let actor = futures_util::stream::pending::<Result<Bytes, ()>>();
                OutboxBody::new(actor, o.clone())
            })
            .collect();
        let mut drain = |body: &mut OutboxBody<_>| {
            let mut out = Vec::new();
            while let Poll::Ready(Some(Ok(b))) = Pin::new(&mut *body).poll_next(&mut cx) {
                out.extend_from_slice(&b);
            }
            out
        };
        // Written in slices: not done until the last slice is gone.
        assert_eq!(drain(&mut bodies[0]), frame.to_vec(), "bytes unchanged");
        assert_eq!(drain(&mut bodies[1]), frame.to_vec());
        assert!(!flight.is_done(), "one outbox still holds it");
        outboxes[2].close_lane();
        assert!(flight.is_done());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Untracked recipients and an immediate arm.
        let quick = Flight::new(|| panic!("nobody to wait for"));
        drop(quick.track(&frame));
        assert!(quick.arm(0));
    }

    #[test]
    fn a_closed_lane_takes_nothing() {
        let outbox = Outbox::new(100, 1000);
        outbox.push(&Frame::binary(&[0; 10]));
        outbox.close_lane();
        assert!(!outbox.push(&Frame::binary(&[0; 10])));
        assert!(outbox.lane().chunks.is_empty());
    }
}
