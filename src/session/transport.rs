//! What sits between a session actor and its socket: a byte count of what is
//! waiting to be written, shared with the rooms that send to the session.
//!
//! actix-web-actors queues written frames without bound, and the session
//! actor is polled only when actix-http polls the response body, which it
//! does only as the socket drains. So a client that stops reading freezes
//! its session actor and everything sent to it piles up unseen. The
//! [`Outbox`] makes that pile visible to the *senders*: every frame handed to
//! a session adds its encoded size, and [`CountingBody`] subtracts what it
//! yields to the socket. Rooms consult the backlog before sending.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use actix::prelude::*;
use bytes::Bytes;
use futures_util::Stream;

/// A message for a session to write to its socket.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub enum Outbound {
    /// An encoded frame, already counted in the session's [`Outbox`].
    Frame(Bytes),
    /// The room refused a join (the error frame precedes this): forget it.
    Refused {
        /// The room that refused.
        room: crate::room::RoomId,
    },
    /// Close the connection with this code.
    Close {
        /// WebSocket close code (see `protocol::close`).
        code: u16,
        /// Short reason for the close frame.
        reason: String,
    },
}

/// Sent by [`CountingBody`] to its session when a lagging session's backlog
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
    /// The frame was handed to the session.
    Sent,
    /// The frame was dropped; the session is marked lagging.
    Dropped,
    /// The session is hopelessly behind: it was told to close (4008).
    Evicted,
}

/// Shared accounting of one session's outbound bytes.
#[derive(Default)]
pub struct Outbox {
    /// Encoded bytes handed to the session so far.
    queued: AtomicU64,
    /// Bytes yielded to the socket so far.
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
}

/// Size of a server→client WebSocket frame carrying `payload` bytes
/// (server frames are not masked).
pub fn ws_frame_len(payload: usize) -> u64 {
    let header = if payload < 126 {
        2
    } else if payload <= u16::MAX as usize {
        4
    } else {
        10
    };
    (header + payload) as u64
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

    /// Remembers the session to wake when a lagging backlog drains.
    pub fn set_waker(&self, waker: Recipient<Drained>) {
        let _ = self.waker.set(waker);
    }

    /// Bytes handed to the session and not yet written to the socket.
    pub fn backlog(&self) -> u64 {
        let written = self.written.load(Ordering::Acquire);
        self.queued.load(Ordering::Acquire).saturating_sub(written)
    }

    /// Counts a frame the session writes itself (pong, error, welcome).
    pub fn count(&self, payload: usize) {
        self.queued
            .fetch_add(ws_frame_len(payload), Ordering::AcqRel);
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
    /// buffer limits. The frame's bytes are shared, never copied.
    pub fn offer(&self, to: &Recipient<Outbound>, frame: &Bytes, class: Class) -> Offer {
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
        self.count(frame.len());
        to.do_send(Outbound::Frame(frame.clone()));
        Offer::Sent
    }

    fn on_written(&self, n: usize) {
        self.written.fetch_add(n as u64, Ordering::AcqRel);
        if self.is_lagging() && self.is_drained() {
            if let Some(waker) = self.waker.get() {
                waker.do_send(Drained);
            }
        }
    }
}

/// The response body of a WebSocket session: the actor context's stream,
/// counting what it yields into the session's [`Outbox`].
pub struct CountingBody<S> {
    inner: Pin<Box<S>>,
    outbox: Arc<Outbox>,
}

impl<S> CountingBody<S> {
    /// Wraps the stream returned by `WebsocketContext::with_codec`.
    pub fn new(inner: S, outbox: Arc<Outbox>) -> Self {
        CountingBody {
            inner: Box::pin(inner),
            outbox,
        }
    }
}

impl<S, E> Stream for CountingBody<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            self.outbox.on_written(bytes.len());
        }
        polled
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
    }

    #[test]
    fn backlog_is_queued_minus_written() {
        let outbox = Outbox::new(100, 1000);
        outbox.count(50);
        assert_eq!(outbox.backlog(), 52);
        outbox.on_written(40);
        assert_eq!(outbox.backlog(), 12);
        assert!(outbox.is_drained());
    }
}
