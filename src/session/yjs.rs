//! The `/yjs/{room}` session: one stock y-websocket client, one room.
//!
//! It talks to the same room actor as native sessions (as a member with
//! [`Protocol::Yjs`]), through the same [`Outbox`] accounting. Inbound
//! frames may hold several y-protocols messages
//! ([`crate::protocol::yjs::decode_frame`]); everything the server writes
//! is one message per frame, since the y-websocket 3.x client reads only
//! the first message of a frame.
//!
//! What a message means is decided by the sans-I/O sync logic
//! ([`crate::sync::DocSync`]); this adapter feeds it the frames and turns
//! its actions into room messages: sync step 1 → [`SyncStep1`] (the room
//! answers with step 2), an update → [`ClientUpdate`] without a request id
//! (y-protocols has no ack), awareness → [`AwarenessUpdate`], query
//! awareness → [`QueryAwareness`]; a refusal is told as the sync logic
//! says (auth "permission denied" or not, then the close code).
//!
//! Authorization: the token (`?token=` or `Authorization: Bearer`) is
//! checked before the upgrade; a refusal is delivered after it, as an auth
//! "permission denied" message and close 4401 (no / bad / expired token) or
//! 4403 (room outside the grants, `Origin` not allowed), because
//! y-websocket cannot read an HTTP status and would retry forever. A session
//! without the write right that sends a non-empty update gets "permission
//! denied" and close 4403; awareness from a session without the presence
//! right is ignored (a stock client always sends its own state). The
//! session closes with 4440 when its token expires. Over the message or
//! byte rate it is slowed (see [`super::flow`]); past `rate_limit_grace_ms`
//! it closes with 1013, which y-websocket retries.
//!
//! Liveness: the server pings every `heartbeat_ms`; a connection that sends
//! nothing (no frame, no pong) for `client_timeout_ms` is closed with 4000
//! (transient: the client reconnects), so a dead client is dropped at most
//! `client_timeout_ms + heartbeat_ms` after its last frame (20 s by default).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use super::core::{session_handlers, Session, SessionCore};
use super::flow::Gate;
use super::{Admission, Shared};
use crate::outbox::{Frame, Outbox};
use crate::protocol::{close, validate_room_id};
use crate::room::{Protocol, QueryAwareness, Room, RoomId};
use crate::sync::{self, Action, DocSync, Refusal, SyncLimits};

/// The y-websocket session actor.
pub struct YjsSession {
    /// Heartbeat, intake, rate, close, the room joined, grants.
    core: SessionCore,
    /// The room name from the URL, validated when the session starts.
    room_name: String,
    /// The sync logic of this client with its room: set when the room is
    /// joined, with the rights the grants give there.
    sync: Option<DocSync>,
    /// Set by the HTTP layer: refused with this on start.
    refusal: Option<Refusal>,
    /// When the last query awareness went to the room: a query is answered
    /// at most once per tick.
    last_query: Option<Instant>,
    /// A query came within the tick of the last one: it goes to the room
    /// when the tick ends (once, however many came).
    query_deferred: bool,
    /// Actions of the last frame not sent yet: at most `max_queued_messages`
    /// wait in the room at once; the rest are sent as the room handles
    /// earlier ones ([`super::flow::Pump`]), and the socket is not read meanwhile.
    held: VecDeque<Action>,
}

impl YjsSession {
    /// A session for room `room_name` that writes through `outbox`,
    /// admitted as `admission` says.
    pub fn new(
        shared: Arc<Shared>,
        outbox: Arc<Outbox>,
        room_name: String,
        mut admission: Admission,
        gate: Arc<Gate>,
    ) -> Self {
        let refusal = admission
            .refusal
            .take()
            .map(|(code, reason)| Refusal::Denied { code, reason });
        YjsSession {
            core: SessionCore::new(shared, outbox, admission, close::YJS_TOO_LARGE, gate),
            room_name,
            sync: None,
            refusal,
            last_query: None,
            query_deferred: false,
            held: VecDeque::new(),
        }
    }

    /// Tells the client why it is refused ("permission denied" first when
    /// the refusal is a denial), then closes.
    fn refuse(&self, ctx: &mut ws::WebsocketContext<Self>, refusal: &Refusal) {
        if let Some(denial) = refusal.denial() {
            self.core.outbox.push(&Frame::binary(&denial));
        }
        self.core.close(ctx, refusal.code(), refusal.reason());
    }

    /// The room joined, if any.
    fn room(&self) -> Option<&Addr<Room>> {
        self.core.rooms.get(self.room_name.as_str())
    }

    /// Joins the room named in the URL, if the grants allow it.
    fn join(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let limits = &self.core.shared.config.limits;
        if let Err(e) = validate_room_id(&self.room_name, limits.max_room_id_bytes) {
            return self.core.close(ctx, close::YJS_BAD_ROOM, e);
        }
        let Some(grants) = &self.core.grants else {
            let refusal = Refusal::Denied {
                code: close::UNAUTHORIZED,
                reason: "a token is required".into(),
            };
            return self.refuse(ctx, &refusal);
        };
        let Some(rights) = grants.rights(&self.room_name) else {
            let refusal = Refusal::Denied {
                code: close::YJS_FORBIDDEN,
                reason: "the token grants no access to this room".into(),
            };
            return self.refuse(ctx, &refusal);
        };
        self.sync = Some(DocSync::new(rights, SyncLimits::new(limits)));
        self.core.schedule_expiry(ctx);
        let id: RoomId = Arc::from(self.room_name.as_str());
        self.core.join(ctx, id, Protocol::Yjs, None, None, None);
    }

    /// Sends the room a query awareness, at most once per tick: one that
    /// comes sooner is deferred to the end of the tick, and further ones
    /// within it are answered by that one.
    fn query_awareness(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let tick = self.core.shared.config.limits.tick();
        let now = Instant::now();
        let since = self.last_query.map(|t| now.saturating_duration_since(t));
        if since.is_none_or(|since| since >= tick) && !self.query_deferred {
            self.last_query = Some(now);
            if let Some(room) = self.room() {
                room.do_send(self.core.track(
                    QueryAwareness {
                        member: self.core.id.clone(),
                    },
                    0,
                ));
            }
            return;
        }
        if self.query_deferred {
            return;
        }
        self.query_deferred = true;
        let wait = tick.saturating_sub(since.unwrap_or_default());
        ctx.run_later(wait, |act, ctx| {
            act.query_deferred = false;
            act.query_awareness(ctx);
        });
    }

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        let max = self.core.shared.config.limits.max_messages_per_frame;
        let messages = match sync::decode_at_most(bytes, max) {
            Ok(messages) => messages,
            Err(refusal) => return self.refuse(ctx, &refusal),
        };
        if !self.core.charge_or_close(ctx, messages.len(), bytes.len()) {
            return;
        }
        let Some(sync) = &self.sync else {
            return;
        };
        let outcome = sync.receive(messages);
        self.held.extend(outcome.actions);
        self.pump(ctx);
        if let Some(refusal) = outcome.refusal {
            self.refuse(ctx, &refusal);
        }
    }

    /// Sends held actions to the room while it has room for them; holds
    /// the socket closed while some are left.
    fn pump(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(room) = self.room().cloned() else {
            self.held.clear();
            self.core.gate.hold(false);
            return;
        };
        // Held from before the first send: a ticket returned meanwhile
        // then asks for the next pump instead of waking the reader.
        self.core.gate.hold(true);
        let mut query = false;
        while self.core.gate.has_room() {
            let Some(action) = self.held.pop_front() else {
                break;
            };
            match action {
                // At most one per tick (see `query_awareness`).
                Action::QueryAwareness => query = true,
                action => self.core.send_action(&room, action, None),
            }
        }
        if query {
            self.query_awareness(ctx);
        }
        if self.held.is_empty() {
            self.core.gate.hold(false);
        }
    }
}

impl Session for YjsSession {
    fn core(&mut self) -> &mut SessionCore {
        &mut self.core
    }

    fn binary(&mut self, bytes: &[u8], ctx: &mut Self::Context) {
        self.handle_frame(bytes, ctx);
    }

    fn text(&mut self, _: usize, ctx: &mut Self::Context) {
        let refusal = Refusal::Malformed("y-protocols uses binary frames".into());
        self.refuse(ctx, &refusal);
    }
}

impl Actor for YjsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.start(ctx);
        self.core.gate.set_pump(ctx.address().recipient());
        match self.refusal.take() {
            Some(refusal) => self.refuse(ctx, &refusal),
            None => self.join(ctx),
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.core.stop();
        Running::Stop
    }
}

session_handlers!(YjsSession, pumped);
