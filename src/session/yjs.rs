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
//! session closes with 4440 when its token expires, and with 4429 over
//! the message or byte rate.
//!
//! Liveness: the server pings every `heartbeat_ms`; a connection that sends
//! nothing (no frame, no pong) for `client_timeout_ms` is closed with 4000
//! (transient: the client reconnects), so a dead client is dropped at most
//! `client_timeout_ms + heartbeat_ms` after its last frame (20 s by default).

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;

use super::core::{session_handlers, Session, SessionCore};
use super::{Admission, Shared};
use crate::outbox::{Frame, Outbox};
use crate::protocol::{close, validate_room_id};
use crate::room::{
    AwarenessUpdate, ClientUpdate, Protocol, QueryAwareness, Room, RoomId, SyncStep1,
};
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
}

impl YjsSession {
    /// A session for room `room_name` that writes through `outbox`,
    /// admitted as `admission` says.
    pub fn new(
        shared: Shared,
        outbox: Arc<Outbox>,
        room_name: String,
        mut admission: Admission,
    ) -> Self {
        let refusal = admission
            .refusal
            .take()
            .map(|(code, reason)| Refusal::Denied { code, reason });
        YjsSession {
            core: SessionCore::new(shared, outbox, admission, close::YJS_TOO_LARGE),
            room_name,
            sync: None,
            refusal,
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

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        if let Err(limit) = self.core.admit(bytes.len()) {
            return self.core.close(ctx, close::RATE_LIMITED, limit);
        }
        let messages = match sync::decode(bytes) {
            Ok(messages) => messages,
            Err(refusal) => return self.refuse(ctx, &refusal),
        };
        let (Some(sync), Some(room)) = (&self.sync, self.room()) else {
            return;
        };
        let outcome = sync.receive(messages);
        let member = &self.core.id;
        for action in outcome.actions {
            let member = member.clone();
            match action {
                Action::SyncStep1(sv) => room.do_send(SyncStep1 { member, sv }),
                Action::Update(data) => room.do_send(ClientUpdate {
                    member,
                    data,
                    rid: None,
                }),
                Action::Awareness(entries) => room.do_send(AwarenessUpdate { member, entries }),
                Action::QueryAwareness => room.do_send(QueryAwareness { member }),
            }
        }
        if let Some(refusal) = outcome.refusal {
            self.refuse(ctx, &refusal);
        }
    }
}

impl Session for YjsSession {
    fn core(&mut self) -> &mut SessionCore {
        &mut self.core
    }

    /// Close 1013 (try again later): y-websocket reconnects with backoff.
    fn join_refused(
        &mut self,
        ctx: &mut Self::Context,
        _: &RoomId,
        _: Option<u64>,
        reason: String,
    ) {
        self.core.close(ctx, close::TRY_AGAIN_LATER, &reason);
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

session_handlers!(YjsSession);
