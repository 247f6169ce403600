//! The `/yjs/{room}` session: one stock y-websocket client, one room.
//!
//! It talks to the same room actor as native sessions (as a member with
//! [`Protocol::Yjs`]), through the same [`Outbox`] accounting. Inbound
//! frames may hold several y-protocols messages ([`yjs::decode_frame`]);
//! everything the server writes is one message per frame, since the
//! y-websocket 3.x client reads only the first message of a frame.
//!
//! What arrives, and where it goes:
//! - sync step 1 → the room answers with step 2 (what the client lacks);
//! - sync step 2 / update → the room's update path (apply, store, fan out),
//!   as a native `update` without a request id (y-protocols has no ack);
//!   an empty update (`[0, 0]`, the step 2 of a client with nothing new) is
//!   skipped;
//! - awareness → the room's awareness table; states over
//!   `max_presence_bytes` are dropped;
//! - query awareness → every awareness state;
//! - auth → ignored (clients do not send it; the server sends "permission
//!   denied" before closing with 4401 / 4403).
//!
//! Authorization: the token (`?token=` or `Authorization: Bearer`) is
//! checked before the upgrade; a refusal is delivered after it, as an auth
//! "permission denied" message and close 4401 (no / bad / expired token) or
//! 4403 (room outside the grants, `Origin` not allowed), because
//! y-websocket cannot read an HTTP status and would retry forever. A session
//! without the write right that sends a non-empty update gets "permission
//! denied" and close 4403; awareness from a session without the presence
//! right is ignored (a stock client always sends its own state). The
//! session closes with 4440 when its token expires, and with 4429 over
//! the message or byte rate.
//!
//! Liveness: the server pings every `heartbeat_ms`; a connection that sends
//! nothing (no frame, no pong) for `client_timeout_ms` is closed with 4000
//! (transient: the client reconnects), so a dead client is dropped at most
//! `client_timeout_ms + heartbeat_ms` after its last frame (20 s by default).

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use super::intake::{Inbound, Intake};
use super::{schedule_expiry, Admission, Shared};
use crate::auth::{Grants, Rights};
use crate::ids::MemberId;
use crate::limit::{IpSlot, SessionRate};
use crate::outbox::{echo_close, Drained, Frame, Outbound, Outbox};
use crate::protocol::yjs::{self, YjsMessage};
use crate::protocol::{close, validate_room_id};
use crate::room::{
    AwarenessUpdate, ClientUpdate, Join, Leave, MemberLink, Protocol, QueryAwareness, Resync, Room,
    RoomId, SyncStep1,
};

/// The y-websocket session actor.
pub struct YjsSession {
    id: MemberId,
    shared: Shared,
    outbox: Arc<Outbox>,
    /// The room name from the URL, validated when the session starts.
    room_name: String,
    /// The room, once joined. A room stays live while this session is a member.
    room: Option<Addr<Room>>,
    /// Last frame (of any kind) from the client: the heartbeat's clock.
    last_seen: Instant,
    /// Reassembles fragmented messages within `max_frame_bytes`.
    intake: Intake,
    /// Who this is and what it may do; `None` only with a refusal pending.
    grants: Option<Grants>,
    /// Rights in this session's room, fixed at join.
    rights: Rights,
    /// Set by the HTTP layer: close with this code and reason on start.
    refusal: Option<(u16, String)>,
    /// Inbound messages/s and bytes/s.
    rate: SessionRate,
    /// Per-IP connection slot, freed when the session ends.
    _slot: Option<IpSlot>,
}

impl YjsSession {
    /// A session for room `room_name` that writes through `outbox`,
    /// admitted as `admission` says.
    pub fn new(
        shared: Shared,
        outbox: Arc<Outbox>,
        room_name: String,
        admission: Admission,
    ) -> Self {
        YjsSession {
            id: shared.sessions.next_id(),
            rate: SessionRate::new(&shared.config.limits),
            intake: Intake::new(shared.config.limits.max_frame_bytes),
            shared,
            outbox,
            room_name,
            room: None,
            last_seen: Instant::now(),
            grants: admission.grants,
            rights: Rights::Read,
            refusal: admission.refusal,
            _slot: admission.slot,
        }
    }

    /// Sends y-protocols "permission denied" with `reason`, then closes.
    fn deny(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        self.outbox.push(&Frame::binary(&yjs::auth_denied(reason)));
        self.close(ctx, code, reason);
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        tracing::debug!(session = %self.id, code, "closing /yjs session: {reason}");
        self.outbox.push_close(&Frame::close(Some(code), reason));
        ctx.stop();
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.run_interval(self.shared.config.limits.heartbeat(), |act, ctx| {
            if act.last_seen.elapsed() > act.shared.config.limits.client_timeout() {
                return act.close(ctx, close::TIMEOUT, "heartbeat timeout");
            }
            act.outbox.push(&Frame::ping(b""));
            if act.outbox.is_lagging() && act.outbox.is_drained() {
                act.resync();
            }
        });
    }

    fn resync(&self) {
        if let Some(room) = &self.room {
            if self.outbox.take_lagging() {
                room.do_send(Resync {
                    member: self.id.clone(),
                });
            }
        }
    }

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        self.shared.metrics.received(bytes.len());
        if let Err(limit) = self.rate.admit(bytes.len()) {
            return self.close(ctx, close::RATE_LIMITED, limit);
        }
        let messages = match yjs::decode_frame(bytes) {
            Ok(m) => m,
            Err(e) => return self.close(ctx, close::YJS_BAD_MESSAGE, &e.to_string()),
        };
        let Some(room) = self.room.clone() else {
            return;
        };
        let max_state = self.shared.config.limits.max_presence_bytes;
        for msg in messages {
            match msg {
                YjsMessage::SyncStep1(sv) => room.do_send(SyncStep1 {
                    member: self.id.clone(),
                    sv,
                }),
                YjsMessage::SyncStep2(update) | YjsMessage::Update(update) => {
                    if update != yjs::EMPTY_UPDATE && !self.rights.can_write() {
                        return self.deny(
                            ctx,
                            close::YJS_FORBIDDEN,
                            "read-only: this token may not write the document",
                        );
                    }
                    if update != yjs::EMPTY_UPDATE {
                        room.do_send(ClientUpdate {
                            member: self.id.clone(),
                            data: Bytes::from(update),
                            rid: None,
                        });
                    }
                }
                YjsMessage::Awareness(_) if !self.rights.can_presence() => {
                    tracing::debug!(session = %self.id, "awareness without the presence right ignored");
                }
                YjsMessage::Awareness(entries) => {
                    let mut parsed = Vec::with_capacity(entries.len());
                    for entry in entries {
                        if entry.json.len() > max_state {
                            tracing::debug!(session = %self.id, "awareness state over max_presence_bytes dropped");
                            continue;
                        }
                        match entry.state() {
                            Ok(state) => parsed.push((entry, state)),
                            Err(e) => {
                                return self.close(ctx, close::YJS_BAD_MESSAGE, &e.to_string())
                            }
                        }
                    }
                    if !parsed.is_empty() {
                        room.do_send(AwarenessUpdate {
                            member: self.id.clone(),
                            entries: parsed,
                        });
                    }
                }
                YjsMessage::QueryAwareness => room.do_send(QueryAwareness {
                    member: self.id.clone(),
                }),
                YjsMessage::Auth(_) => {
                    tracing::debug!(session = %self.id, "ignoring auth message from a client");
                }
            }
        }
    }
}

impl Actor for YjsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.outbox.set_waker(ctx.address().recipient());
        self.shared
            .sessions
            .register(self.id.clone(), ctx.address().recipient());
        self.heartbeat(ctx);
        if let Some((code, reason)) = self.refusal.take() {
            return self.deny(ctx, code, &reason);
        }
        let limits = &self.shared.config.limits;
        if let Err(e) = validate_room_id(&self.room_name, limits.max_room_id_bytes) {
            return self.close(ctx, close::YJS_BAD_ROOM, e);
        }
        let Some(grants) = self.grants.clone() else {
            return self.deny(ctx, close::UNAUTHORIZED, "a token is required");
        };
        let Some(rights) = grants.rights(&self.room_name) else {
            return self.deny(
                ctx,
                close::YJS_FORBIDDEN,
                "the token grants no access to this room",
            );
        };
        self.rights = rights;
        schedule_expiry(&grants, ctx);
        let id: RoomId = Arc::from(self.room_name.as_str());
        let join = Join {
            member: MemberLink {
                id: self.id.clone(),
                user: grants.user.clone(),
                protocol: Protocol::Yjs,
                recipient: ctx.address().recipient(),
                outbox: self.outbox.clone(),
            },
            sv: None,
            presence: None,
            rid: None,
        };
        self.room = Some(self.shared.registry.join(&id, join));
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        if let Some(room) = self.room.take() {
            room.do_send(Leave {
                member: self.id.clone(),
            });
        }
        self.shared.sessions.unregister(&self.id);
        Running::Stop
    }
}

impl Handler<Outbound> for YjsSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Close { code, reason } => self.close(ctx, code, &reason),
            // A /yjs connection has exactly one room; a refused join is
            // followed by a close with the refusal's code.
            Outbound::Refused { .. } => {}
        }
    }
}

impl Handler<Drained> for YjsSession {
    type Result = ();

    fn handle(&mut self, _: Drained, _: &mut Self::Context) {
        self.resync();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for YjsSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        if self.outbox.is_evicted() {
            return self.close(ctx, close::SLOW_CONSUMER, "slow consumer");
        }
        match self.intake.feed(item) {
            Inbound::Binary(bytes) => self.handle_frame(&bytes, ctx),
            Inbound::Text(_) => self.close(
                ctx,
                close::YJS_BAD_MESSAGE,
                "y-protocols uses binary frames",
            ),
            Inbound::Ping(payload) => {
                self.outbox.push(&Frame::pong(&payload));
            }
            Inbound::Close(reason) => {
                self.outbox.push_close(&echo_close(reason));
                ctx.stop();
            }
            Inbound::Nothing => {}
            Inbound::TooBig => {
                let max = self.shared.config.limits.max_frame_bytes;
                self.close(
                    ctx,
                    close::YJS_TOO_LARGE,
                    &format!("message over max_frame_bytes ({max})"),
                );
            }
            Inbound::Invalid(e) => {
                tracing::debug!(session = %self.id, "websocket protocol error: {e}");
                self.close(ctx, close::PROTOCOL_ERROR, "websocket protocol error");
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
