//! What every session kind does the same way, in one [`SessionCore`] that
//! each session actor embeds: registration in [`Sessions`](super::Sessions),
//! the heartbeat and the slow-consumer resync, intake of the WebSocket
//! stream (fragments, ping / pong, close echo, oversize and invalid
//! framing, eviction), the per-session rate, the per-IP slot, the rooms
//! joined, token expiry, and closing. A protocol file keeps only what its
//! protocol decides: what a message means and how a failure is told.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use super::flow::{Gate, Tracked};
use super::intake::{Inbound, Intake};
use super::watchdog::{self, Liveness};
use super::{Admission, Shared};
use crate::auth::Grants;
use crate::ids::{MemberId, RoomId};
use crate::limit::{IpSlot, SessionRate};
use crate::outbox::{echo_close, Drained, Frame, Outbound, Outbox};
use crate::protocol::close;
use crate::room::{
    AwarenessUpdate, ClientUpdate, Join, Leave, MemberLink, Protocol, QueryAwareness, Resync, Room,
    SyncStep1,
};
use crate::sync::Action;

/// A session actor built on a [`SessionCore`]: the heartbeat timer and the
/// outbox's drain signal reach the core through it, and whole messages
/// from the client reach the protocol. `session_handlers!` implements
/// the actix handlers on top of it.
pub trait Session:
    Actor<Context = ws::WebsocketContext<Self>> + Handler<Outbound> + Handler<Drained>
{
    /// The embedded core.
    fn core(&mut self) -> &mut SessionCore;

    /// A whole binary message (counted in the metrics, not rate-checked).
    fn binary(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>);

    /// A whole text message, by its length (no protocol here uses text).
    fn text(&mut self, len: usize, ctx: &mut ws::WebsocketContext<Self>);

    /// A join could not be sent: the registry is full of busy rooms
    /// (`max_live_rooms`). Tell the client it may retry later; by default
    /// close 1013 (try again later), which y-websocket and the Hocuspocus
    /// provider retry with backoff.
    fn join_refused(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        _room: &RoomId,
        _rid: Option<u64>,
        reason: String,
    ) {
        self.core().close(ctx, close::TRY_AGAIN_LATER, &reason);
    }
}

/// Implements for a [`Session`] the actix handlers every session has:
/// messages from rooms ([`Outbound`]) and the drain signal ([`Drained`])
/// go to its core, and the WebSocket stream goes through
/// [`SessionCore::feed`], whole messages on to [`Session::binary`] /
/// [`Session::text`]. `session_handlers!(S, pumped)` also hands
/// [`super::flow::Pump`] to `S::pump(ctx)`, for a session that holds work
/// back while its rooms are busy. (A macro: actix's traits cannot be
/// implemented for every `Session` at once.)
macro_rules! session_handlers {
    ($session:ty, pumped) => {
        $crate::session::core::session_handlers!($session);

        /// Held work goes on to the rooms as they make room for it.
        impl actix::Handler<$crate::session::flow::Pump> for $session {
            type Result = ();

            fn handle(&mut self, _: $crate::session::flow::Pump, ctx: &mut Self::Context) {
                self.pump(ctx);
            }
        }
    };
    ($session:ty) => {
        impl actix::Handler<$crate::outbox::Outbound> for $session {
            type Result = ();

            fn handle(&mut self, msg: $crate::outbox::Outbound, ctx: &mut Self::Context) {
                $crate::session::core::Session::core(self).outbound(msg, ctx);
            }
        }

        impl actix::Handler<$crate::outbox::Drained> for $session {
            type Result = ();

            fn handle(&mut self, _: $crate::outbox::Drained, _: &mut Self::Context) {
                $crate::session::core::Session::core(self).resync();
            }
        }

        impl
            actix::StreamHandler<
                Result<actix_web_actors::ws::Message, actix_web_actors::ws::ProtocolError>,
            > for $session
        {
            fn handle(
                &mut self,
                item: Result<actix_web_actors::ws::Message, actix_web_actors::ws::ProtocolError>,
                ctx: &mut Self::Context,
            ) {
                use $crate::session::core::{Payload, Session};
                match self.core().feed(item, ctx) {
                    Some(Payload::Binary(bytes)) => self.binary(&bytes, ctx),
                    Some(Payload::Text(len)) => self.text(len, ctx),
                    None => {}
                }
            }

            fn finished(&mut self, ctx: &mut Self::Context) {
                actix::ActorContext::stop(ctx);
            }
        }
    };
}
pub(super) use session_handlers;

/// A whole message from the client, for the protocol to read. Everything
/// else the stream yields is handled by [`SessionCore::feed`].
#[derive(Debug)]
pub enum Payload {
    /// A binary message (counted in the metrics, not yet rate-checked).
    Binary(Bytes),
    /// A text message, by its length (no protocol here uses text).
    Text(usize),
}

/// The state and duties every session shares, whatever its protocol.
pub struct SessionCore {
    /// This connection's member id, unique in the cluster.
    pub id: MemberId,
    /// Configuration, rooms, the session table.
    pub shared: Arc<Shared>,
    /// Where every frame to the client goes, in order; shared with rooms.
    pub outbox: Arc<Outbox>,
    /// Rooms joined, by id. A room stays live while this session is a
    /// member; each is left when the session stops.
    pub rooms: HashMap<RoomId, Addr<Room>>,
    /// What this session may do: from the connection (URL / header token,
    /// or anonymous) or, natively, from `hello.token`. Checked on every
    /// message.
    pub grants: Option<Grants>,
    /// Last frame (of any kind) from the client: the heartbeat's clock.
    last_seen: Instant,
    /// Reassembles fragmented messages within `max_frame_bytes`.
    intake: Intake,
    /// Inbound messages/s and bytes/s.
    rate: SessionRate,
    /// Whether the session reads its socket: closed over the rate and while
    /// too much of its work waits in rooms (see [`super::flow`]).
    pub gate: Arc<Gate>,
    /// Beaten while the session runs and its client is alive; a watchdog
    /// shuts the socket when it goes stale (see [`super::watchdog`]).
    liveness: Arc<Liveness>,
    /// Close code for a message over `max_frame_bytes` (the protocols differ).
    too_big: u16,
    /// `native` or `yjs`, for the log line at close.
    protocol: &'static str,
    /// When the connection was accepted.
    opened: Instant,
    /// Inbound message bytes so far.
    bytes_in: u64,
    /// How the session ended: the code and reason it closed with (set by
    /// the first close; a client's close counts as its own code, or 1005).
    ended: std::cell::RefCell<Option<(u16, String)>>,
    /// Per-IP connection slot, freed when the session ends.
    _slot: Option<IpSlot>,
}

impl SessionCore {
    /// The core of a session admitted as `admission` says (its refusal,
    /// if any, is the protocol's to deliver), writing through `outbox`,
    /// that closes with `too_big` on a message over `max_frame_bytes`, and
    /// reads its socket through `gate`.
    pub fn new(
        shared: Arc<Shared>,
        outbox: Arc<Outbox>,
        admission: Admission,
        too_big: u16,
        gate: Arc<Gate>,
    ) -> Self {
        let protocol = if too_big == close::TOO_BIG {
            "native"
        } else {
            "yjs"
        };
        SessionCore {
            protocol,
            opened: Instant::now(),
            bytes_in: 0,
            ended: Default::default(),
            gate,
            liveness: Liveness::new(admission.abort),
            id: shared.sessions.next_id(),
            rate: SessionRate::new(&shared.config.limits),
            intake: Intake::new(shared.config.limits.max_frame_bytes),
            shared,
            outbox,
            rooms: HashMap::new(),
            grants: admission.grants,
            last_seen: Instant::now(),
            too_big,
            _slot: admission.slot,
        }
    }

    /// Registers the session, starts its heartbeat and the watchdog of its
    /// connection; called first from `started`.
    pub fn start<A: Session>(&self, ctx: &mut ws::WebsocketContext<A>) {
        let limits = &self.shared.config.limits;
        let stale = limits.client_timeout() + limits.heartbeat();
        watchdog::watch(&self.liveness, limits.heartbeat(), stale);
        self.outbox.set_waker(ctx.address().recipient());
        self.shared
            .sessions
            .register(self.id.clone(), ctx.address().recipient());
        ctx.run_interval(self.shared.config.limits.heartbeat(), |act, ctx| {
            act.core().tick(ctx)
        });
    }

    /// One heartbeat: closes a client silent for `client_timeout_ms`
    /// (4000), else pings it, and resyncs it if it lagged and has drained.
    /// A session that stopped reading on purpose (its gate is closed)
    /// does not hold its client's silence against it.
    fn tick<A: Session>(&mut self, ctx: &mut ws::WebsocketContext<A>) {
        if self.gate.is_closed() {
            self.last_seen = Instant::now();
        }
        if self.last_seen.elapsed() > self.shared.config.limits.client_timeout() {
            return self.close(ctx, close::TIMEOUT, "heartbeat timeout");
        }
        if self.room_lost() {
            return self.close(ctx, close::TRY_AGAIN_LATER, "room restarting");
        }
        self.liveness.beat();
        self.outbox.push(&Frame::ping(b""));
        if self.outbox.is_lagging() && self.outbox.is_drained() {
            self.resync();
        }
    }

    /// True when a room this session joined is gone without having closed
    /// it: a room that dies closes its members itself, but a join still in
    /// its mailbox was lost with it. The client reconnects and rejoins.
    fn room_lost(&self) -> bool {
        self.rooms.values().any(|room| !room.connected())
    }

    /// Asks every room joined to resync this session, if a room dropped
    /// frames for it since the last resync.
    pub fn resync(&self) {
        if self.outbox.take_lagging() {
            for room in self.rooms.values() {
                room.do_send(Resync {
                    member: self.id.clone(),
                });
            }
        }
    }

    /// Leaves every room and the session table, and reports the close
    /// (one info line; `chorus_closes_total` by code); called from
    /// `stopping`.
    pub fn stop(&mut self) {
        let (code, reason) = self
            .ended
            .borrow_mut()
            .take()
            .unwrap_or((1006, "connection lost".into()));
        let mut rooms: Vec<&str> = self.rooms.keys().map(|r| &**r).collect();
        rooms.sort_unstable();
        tracing::info!(
            session = %self.id,
            protocol = self.protocol,
            rooms = ?rooms,
            code,
            reason = %reason,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            bytes_in = self.bytes_in,
            bytes_out = self.outbox.written(),
            "connection closed"
        );
        self.shared.metrics.closed(code);
        for (_, room) in self.rooms.drain() {
            room.do_send(Leave {
                member: self.id.clone(),
            });
        }
        self.shared.sessions.unregister(&self.id);
    }

    /// Queues a close frame (`reason` cut to fit) after everything queued
    /// before it, and stops the actor.
    pub fn close<A>(&self, ctx: &mut ws::WebsocketContext<A>, code: u16, reason: &str)
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        tracing::debug!(session = %self.id, code, "closing session: {reason}");
        self.ended
            .borrow_mut()
            .get_or_insert_with(|| (code, reason.to_owned()));
        self.outbox.push_close(&Frame::close(Some(code), reason));
        ctx.stop();
    }

    /// Acts on a message from a room or the session table: closes, or
    /// forgets a room that refused the join (it does not count as joined).
    pub fn outbound<A>(&mut self, msg: Outbound, ctx: &mut ws::WebsocketContext<A>)
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        match msg {
            Outbound::Close { code, reason } => self.close(ctx, code, &reason),
            Outbound::Refused { room } => {
                self.rooms.remove(&room);
            }
        }
    }

    /// Charges `messages` inbound messages of `len` bytes in all against
    /// the session's rate. Over the rate the session stops reading its
    /// socket until the debt is paid back; `Err` (the close reason) once it
    /// has been, or its debt says it will be, over the rate for longer than
    /// `rate_limit_grace_ms`.
    pub fn charge(&mut self, messages: usize, len: usize) -> Result<(), String> {
        let wait = self.rate.charge(messages, len);
        if wait.is_zero() {
            return Ok(());
        }
        self.gate.pause_for(wait);
        // Over the rate since `throttled_for`, and for `wait` more at least.
        let grace = self.shared.config.limits.rate_limit_grace();
        if self.rate.throttled_for(Instant::now()) + wait > grace {
            return Err(format!(
                "over the message or byte rate for longer than rate_limit_grace_ms ({} ms)",
                grace.as_millis()
            ));
        }
        Ok(())
    }

    /// [`SessionCore::charge`] for a protocol with no error message of its
    /// own: past the grace, closes with 1013 (try again later; clients
    /// retry it) and returns false.
    pub fn charge_or_close<A>(
        &mut self,
        ctx: &mut ws::WebsocketContext<A>,
        messages: usize,
        len: usize,
    ) -> bool
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        match self.charge(messages, len) {
            Ok(()) => true,
            Err(reason) => {
                self.close(ctx, close::TRY_AGAIN_LATER, &reason);
                false
            }
        }
    }

    /// Sends `room` what the y-protocols sync logic decided
    /// ([`crate::sync::Action`]), counted as queued work: step 1 (the room
    /// answers with step 2), an update (acked to `rid` when given),
    /// awareness, or a query of the awareness states.
    pub fn send_action(&self, room: &Addr<Room>, action: Action, rid: Option<u64>) {
        let member = self.id.clone();
        match action {
            Action::SyncStep1(sv) => room.do_send(self.track(SyncStep1 { member, sv }, 0)),
            Action::Update(data) => {
                let len = data.len();
                let update = ClientUpdate { member, data, rid };
                room.do_send(self.track(update, len));
            }
            Action::Awareness(entries) => {
                let len = entries.iter().map(|(e, _)| e.json.len()).sum();
                room.do_send(self.track(AwarenessUpdate { member, entries }, len));
            }
            Action::QueryAwareness => room.do_send(self.track(QueryAwareness { member }, 0)),
        }
    }

    /// `msg` for a room, counted as this session's queued work until the
    /// room has handled it (`bytes`: its payload size).
    pub fn track<M>(&self, msg: M, bytes: usize) -> Tracked<M> {
        Tracked {
            msg,
            ticket: self.gate.ticket(bytes),
        }
    }

    /// Takes one item of the WebSocket stream: answers pings, echoes a
    /// close, closes on a slow consumer (4008), an oversize message or
    /// invalid framing; returns a whole message for the protocol to read.
    pub fn feed<A>(
        &mut self,
        item: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<A>,
    ) -> Option<Payload>
    where
        A: Actor<Context = ws::WebsocketContext<A>>,
    {
        self.last_seen = Instant::now();
        self.liveness.beat();
        if self.outbox.is_evicted() {
            self.close(ctx, close::SLOW_CONSUMER, "slow consumer");
            return None;
        }
        match self.intake.feed(item) {
            Inbound::Binary(bytes) => {
                self.bytes_in += bytes.len() as u64;
                self.shared.metrics.received(bytes.len());
                return Some(Payload::Binary(bytes));
            }
            Inbound::Text(len) => {
                self.bytes_in += len as u64;
                return Some(Payload::Text(len));
            }
            Inbound::Ping(payload) => {
                self.outbox.push(&Frame::pong(&payload));
            }
            Inbound::Close(reason) => {
                let ended = match &reason {
                    Some(r) => (u16::from(r.code), r.description.clone().unwrap_or_default()),
                    None => (1005, String::new()),
                };
                let ended = (ended.0, format!("client closed: {}", ended.1));
                self.ended.borrow_mut().get_or_insert(ended);
                self.outbox.push_close(&echo_close(reason));
                ctx.stop();
            }
            Inbound::Nothing => {}
            Inbound::TooBig => {
                let max = self.shared.config.limits.max_frame_bytes;
                let reason = format!("message over max_frame_bytes ({max})");
                self.close(ctx, self.too_big, &reason);
            }
            Inbound::Invalid(e) => {
                tracing::debug!(session = %self.id, "websocket protocol error: {e}");
                self.close(ctx, close::PROTOCOL_ERROR, "websocket protocol error");
            }
        }
        None
    }

    /// Joins `room` as a member speaking `protocol`: the registry finds or
    /// starts the room, which answers the join itself. When the registry
    /// is full, the session handles nothing else until idle rooms made
    /// room (or [`Session::join_refused`] was called), so later messages
    /// of the client still follow its join.
    pub fn join<A: Session>(
        &mut self,
        ctx: &mut ws::WebsocketContext<A>,
        room: RoomId,
        protocol: Protocol,
        sv: Option<Vec<u8>>,
        presence: Option<serde_json::Value>,
        rid: Option<u64>,
    ) {
        let user = self.grants.as_ref().and_then(|g| g.user.clone());
        self.join_as(ctx, room, protocol, user, sv, presence, rid);
    }

    /// [`SessionCore::join`] as `user` (a protocol with a token per room).
    #[allow(clippy::too_many_arguments)]
    pub fn join_as<A: Session>(
        &mut self,
        ctx: &mut ws::WebsocketContext<A>,
        room: RoomId,
        protocol: Protocol,
        user: Option<Arc<str>>,
        sv: Option<Vec<u8>>,
        presence: Option<serde_json::Value>,
        rid: Option<u64>,
    ) {
        let join = Join {
            member: MemberLink {
                id: self.id.clone(),
                user,
                protocol,
                recipient: ctx.address().recipient(),
                outbox: self.outbox.clone(),
            },
            sv,
            presence,
            rid,
        };
        let join = match self.shared.registry.try_join(&room, join) {
            Ok(addr) => {
                self.rooms.insert(room, addr);
                return;
            }
            Err(join) => join,
        };
        let registry = self.shared.registry.clone();
        let wanted = room.clone();
        let wait = async move { registry.enter_waiting(&wanted).await };
        let wait = actix::fut::wrap_future::<_, A>(wait);
        ctx.wait(wait.map(move |res, act, ctx| match res {
            Ok(addr) => {
                addr.do_send(join);
                act.core().rooms.insert(room, addr);
            }
            Err(full) => act.join_refused(ctx, &room, rid, full.to_string()),
        }));
    }

    /// Names the protocol in the log line at close (`native` and `yjs` are
    /// told apart by their `too_big` code).
    pub fn named(mut self, protocol: &'static str) -> Self {
        self.protocol = protocol;
        self
    }

    /// Schedules the close of the session when its token expires (`exp`,
    /// in seconds since the epoch), with [`close::TOKEN_EXPIRED`].
    pub fn schedule_expiry<A: Session>(&self, ctx: &mut ws::WebsocketContext<A>) {
        if let Some(exp) = self.grants.as_ref().and_then(|g| g.exp) {
            Self::expire_at(ctx, exp);
        }
    }

    /// Schedules the close of the session at `exp` (seconds since the
    /// epoch), with [`close::TOKEN_EXPIRED`]: for a token other than the
    /// connection's (a Hocuspocus document's).
    pub fn expire_at<A: Session>(ctx: &mut ws::WebsocketContext<A>, exp: u64) {
        let at = UNIX_EPOCH + Duration::from_secs(exp);
        let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
        ctx.run_later(wait, |_, ctx| {
            ctx.address().do_send(Outbound::Close {
                code: close::TOKEN_EXPIRED,
                reason: "token expired".into(),
            });
        });
    }
}
