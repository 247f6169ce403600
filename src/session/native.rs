//! The native-protocol session on `/ws`: MessagePack messages
//! ([`crate::protocol::native`]), `hello` first (version and token), then
//! any number of rooms joined, each message authorized against the grants
//! and answered with an `error` when refused. What every session shares
//! (heartbeat, intake, rate, close) is in [`SessionCore`].

use std::sync::Arc;

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use super::core::{session_handlers, Session, SessionCore};
use super::flow::{Gate, Tracked};
use super::{Admission, Shared};
use crate::auth::{now_secs, Rights};
use crate::ids::MemberId;
use crate::outbox::{Frame, Outbox};
use crate::protocol::native::{
    decode_client, encode_server, Bin, ClientMessage, ServerMessage, WireLimits,
};
use crate::protocol::{close, validate_room_id, ErrorCode, PROTOCOL_VERSION};
use crate::room::history::{
    check_version_name, parse_version_id, version_view, VersionAsk, VersionReply, VersionRequest,
    DEFAULT_VERSIONS_PAGE, MAX_VERSIONS_PAGE,
};
use crate::room::{
    Broadcast, ClientUpdate, Leave, ListPresence, Protocol, Room, RoomId, SetCursor, SetPresence,
    SetTyping,
};

/// The native-protocol session actor.
pub struct NativeSession {
    /// Heartbeat, intake, rate, close, rooms joined, grants.
    core: SessionCore,
    /// Set by `hello`; nothing but `hello` and `ping` is accepted before.
    greeted: bool,
    /// Size of the frame being handled: what a forwarded message weighs in
    /// the session's queued work.
    frame_len: usize,
    /// History requests sent to rooms and not answered yet
    /// (`--max-history-requests-in-flight`).
    history_inflight: usize,
    /// A `version_restore` of this session is in flight (one at a time:
    /// each is charged, when done, for the bytes it changed).
    restoring: bool,
    /// A `presence_list` of this session is in flight (one at a time: each
    /// page is charged to the byte rate when sent).
    listing: bool,
}

impl NativeSession {
    /// A session that writes through `outbox`, admitted as `admission` says.
    /// It reads its socket through `gate`.
    pub fn new(
        shared: Arc<Shared>,
        outbox: Arc<Outbox>,
        admission: Admission,
        gate: Arc<Gate>,
    ) -> Self {
        NativeSession {
            core: SessionCore::new(shared, outbox, admission, close::TOO_BIG, gate),
            greeted: false,
            frame_len: 0,
            history_inflight: 0,
            restoring: false,
            listing: false,
        }
    }

    /// Whether the session may do what `needs` asks in `room` (`what` names
    /// the message); `Err` holds the text of the `forbidden` answer.
    fn may(&self, room: &str, needs: fn(Rights) -> bool, what: &str) -> Result<(), String> {
        match self.core.grants.as_ref().and_then(|g| g.rights(room)) {
            Some(rights) if needs(rights) => Ok(()),
            None => Err(format!("the token grants no access to this room ({what})")),
            Some(r) => Err(format!("not allowed with rights {r:?} ({what})")),
        }
    }

    /// Authenticates `hello`: its token (if the server checks tokens),
    /// else the grants the connection already has, else anonymous grants.
    /// On failure answers `forbidden` and closes with 4401.
    fn authenticate(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        token: Option<String>,
        rid: Option<u64>,
    ) -> bool {
        let verified = match (&self.core.shared.auth, token) {
            (Some(verifier), Some(token)) => verifier.verify(&token, now_secs()).map(Some),
            _ => Ok(None),
        };
        match verified {
            Ok(Some(grants)) => self.core.grants = Some(grants),
            Ok(None) if self.core.grants.is_none() => {
                self.core.grants = self.core.shared.anonymous_grants()
            }
            Ok(None) => {}
            Err(e) => {
                self.error(ctx, ErrorCode::Forbidden, e.to_string(), rid, None);
                self.core.close(ctx, close::UNAUTHORIZED, &e.to_string());
                return false;
            }
        }
        if self.core.grants.is_none() {
            let text =
                "this server requires a token (hello.token, ?token= or Authorization: Bearer)";
            self.error(ctx, ErrorCode::Forbidden, text, rid, None);
            self.core.close(ctx, close::UNAUTHORIZED, "token required");
            return false;
        }
        self.core.schedule_expiry(ctx);
        true
    }

    fn send(&self, _: &mut ws::WebsocketContext<Self>, msg: &ServerMessage) {
        self.core.outbox.push(&Frame::binary(&encode_server(msg)));
    }

    fn error(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        code: ErrorCode,
        message: impl Into<String>,
        rid: Option<u64>,
        room: Option<&str>,
    ) {
        self.send(
            ctx,
            &ServerMessage::Error {
                code,
                message: message.into(),
                rid,
                room: room.map(str::to_owned),
            },
        );
    }

    /// Charges one inbound message of `len` bytes (over the rate the
    /// session is slowed); past the grace answers `rate_limited` and
    /// closes with 1013.
    fn admit(&mut self, ctx: &mut ws::WebsocketContext<Self>, len: usize) -> bool {
        self.charge(ctx, 1, len)
    }

    /// Charges `messages` and `bytes` to the session's rates (a large
    /// answer it asked for counts as bytes it sent); past the grace answers
    /// `rate_limited` and closes with 1013. False when it closed. (The
    /// native side of [`SessionCore::charge_or_close`], which has no error
    /// message to send first.)
    fn charge(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        messages: usize,
        bytes: usize,
    ) -> bool {
        let Err(reason) = self.core.charge(messages, bytes) else {
            return true;
        };
        self.error(ctx, ErrorCode::RateLimited, reason.clone(), None, None);
        self.core.close(ctx, close::TRY_AGAIN_LATER, &reason);
        false
    }

    /// Finds the room a message is for, or answers `not_joined`.
    fn joined(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: &str,
        rid: Option<u64>,
    ) -> Option<Addr<Room>> {
        let addr = self.core.rooms.get(room).cloned();
        if addr.is_none() {
            self.error(
                ctx,
                ErrorCode::NotJoined,
                "join the room first",
                rid,
                Some(room),
            );
        }
        addr
    }

    /// Sends the room a message made by `make` for this member, when the
    /// session may do what `needs` asks there ([`Self::may`]) and has
    /// joined it ([`Self::joined`]); else answers why not.
    fn forward<M>(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: &str,
        rid: Option<u64>,
        needs: fn(Rights) -> bool,
        what: &str,
        make: impl FnOnce(MemberId) -> M,
    ) where
        M: Message<Result = ()> + Send + 'static,
        Room: Handler<Tracked<M>>,
    {
        if let Err(text) = self.may(room, needs, what) {
            return self.error(ctx, ErrorCode::Forbidden, text, rid, Some(room));
        }
        if let Some(addr) = self.joined(ctx, room, rid) {
            addr.do_send(self.core.track(make(self.core.id.clone()), self.frame_len));
        }
    }

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        if !self.admit(ctx, bytes.len()) {
            return;
        }
        self.frame_len = bytes.len();
        let msg = match decode_client(bytes) {
            Ok(msg) => msg,
            Err(e) => return self.error(ctx, e.code, e.message, e.rid, None),
        };
        if !self.greeted
            && !matches!(
                msg,
                ClientMessage::Hello { .. } | ClientMessage::Ping { .. }
            )
        {
            return self.error(
                ctx,
                ErrorCode::HelloRequired,
                "send hello first",
                None,
                None,
            );
        }
        let config = self.core.shared.config.clone();
        let limits = &config.limits;
        match msg {
            ClientMessage::Hello { v, rid, token, .. } => {
                if v != PROTOCOL_VERSION {
                    let text = format!("this server speaks protocol version {PROTOCOL_VERSION}");
                    self.error(ctx, ErrorCode::UnsupportedVersion, text, rid, None);
                    return self.core.close(
                        ctx,
                        close::UNSUPPORTED_VERSION,
                        "unsupported protocol version",
                    );
                }
                // A second hello is answered again and changes nothing.
                if !self.greeted && !self.authenticate(ctx, token, rid) {
                    return;
                }
                self.greeted = true;
                let welcome = ServerMessage::Welcome {
                    v: PROTOCOL_VERSION,
                    session: self.core.id.to_string(),
                    server: concat!("chorus/", env!("CARGO_PKG_VERSION")).to_owned(),
                    limits: WireLimits {
                        max_frame_bytes: limits.max_frame_bytes as u64,
                        max_rooms: limits.max_rooms_per_connection as u64,
                        max_doc_bytes: limits.max_doc_bytes as u64,
                        max_presence_bytes: limits.max_presence_bytes as u64,
                        typing_ttl_ms: limits.typing_ttl_ms,
                        heartbeat_ms: limits.heartbeat_ms,
                        client_timeout_ms: limits.client_timeout_ms,
                        max_event_bytes: limits.max_event_bytes as u64,
                        max_room_id_bytes: limits.max_room_id_bytes as u64,
                    },
                };
                self.send(ctx, &welcome);
            }
            ClientMessage::Join {
                room,
                sv,
                presence,
                rid,
            } => {
                if let Err(e) = validate_room_id(&room, limits.max_room_id_bytes) {
                    return self.error(ctx, ErrorCode::BadRoom, e, rid, Some(&room));
                }
                if self.core.rooms.contains_key(room.as_str()) {
                    return self.error(
                        ctx,
                        ErrorCode::AlreadyJoined,
                        "already joined",
                        rid,
                        Some(&room),
                    );
                }
                let needs: fn(Rights) -> bool = if presence.is_some() {
                    Rights::can_presence
                } else {
                    |_| true
                };
                if let Err(text) = self.may(&room, needs, "join") {
                    return self.error(ctx, ErrorCode::Forbidden, text, rid, Some(&room));
                }
                if self.core.rooms.len() >= limits.max_rooms_per_connection {
                    let text = format!(
                        "at most {} rooms per connection (max_rooms_per_connection)",
                        limits.max_rooms_per_connection
                    );
                    return self.error(ctx, ErrorCode::TooManyRooms, text, rid, Some(&room));
                }
                let id: RoomId = Arc::from(room);
                let sv = sv.map(|b| b.0);
                self.core.join(ctx, id, Protocol::Native, sv, presence, rid);
            }
            ClientMessage::Leave { room, rid } => match self.core.rooms.remove(room.as_str()) {
                Some(addr) => addr.do_send(Leave {
                    member: self.core.id.clone(),
                }),
                None => self.error(
                    ctx,
                    ErrorCode::NotJoined,
                    "not in this room",
                    rid,
                    Some(&room),
                ),
            },
            ClientMessage::Update { room, data, rid } => {
                // An empty update (`[0, 0]`, step 5 of a join with nothing
                // new) writes nothing, so any joined session may send it.
                let empty = data.0 == crate::protocol::yjs::EMPTY_UPDATE;
                let allowed = if empty {
                    Ok(())
                } else {
                    self.may(&room, Rights::can_write, "update")
                };
                if let Err(text) = allowed {
                    return self.error(ctx, ErrorCode::Forbidden, text, rid, Some(&room));
                }
                if let Some(addr) = self.joined(ctx, &room, rid) {
                    let len = data.0.len();
                    let update = ClientUpdate {
                        member: self.core.id.clone(),
                        data: Bytes::from(data.0),
                        rid,
                    };
                    addr.do_send(self.core.track(update, len));
                }
            }
            ClientMessage::Presence { room, state, rid } => {
                let set = |member| SetPresence { member, state, rid };
                self.forward(ctx, &room, rid, Rights::can_presence, "presence", set);
            }
            ClientMessage::Cursor {
                room,
                anchor,
                head,
                rid,
            } => {
                if let Err(text) = self.may(&room, Rights::can_presence, "cursor") {
                    return self.error(ctx, ErrorCode::Forbidden, text, rid, Some(&room));
                }
                let Some(addr) = self.joined(ctx, &room, rid) else {
                    return;
                };
                let max = limits.max_presence_bytes;
                let size = anchor.as_ref().map_or(0, |b| b.0.len())
                    + head.as_ref().map_or(0, |b| b.0.len());
                if size > max {
                    let text = format!("cursor is {size} bytes, over max_presence_bytes ({max})");
                    return self.error(ctx, ErrorCode::PresenceTooLarge, text, rid, Some(&room));
                }
                let cursor = SetCursor {
                    member: self.core.id.clone(),
                    anchor: anchor.map(|b| b.0),
                    head: head.map(|b| b.0),
                    rid,
                };
                addr.do_send(self.core.track(cursor, size));
            }
            ClientMessage::Typing { room, on, rid } => {
                let set = |member| SetTyping { member, on };
                self.forward(ctx, &room, rid, Rights::can_presence, "typing", set);
            }
            ClientMessage::Event {
                room,
                name,
                data,
                rid,
            } => {
                let event = |member| Broadcast {
                    member,
                    name,
                    data,
                    rid,
                };
                self.forward(ctx, &room, rid, Rights::can_presence, "event", event);
            }
            ClientMessage::Ping { rid } => self.send(ctx, &ServerMessage::Pong { rid }),
            ClientMessage::Versions {
                room,
                limit,
                before,
                rid,
            } => {
                let limit = limit.map_or(DEFAULT_VERSIONS_PAGE as u64, |l| l);
                if limit == 0 || limit > MAX_VERSIONS_PAGE as u64 {
                    let text = format!("limit must be 1 to {MAX_VERSIONS_PAGE}");
                    return self.error(ctx, ErrorCode::BadMessage, text, rid, Some(&room));
                }
                let before = match before.as_deref().map(parse_version_id).transpose() {
                    Ok(b) => b,
                    Err(e) => return self.error(ctx, ErrorCode::BadMessage, e, rid, Some(&room)),
                };
                let ask = VersionAsk::List {
                    before,
                    limit: limit as usize,
                };
                self.version(ctx, room, rid, ask, |_| true, "versions");
            }
            ClientMessage::VersionCreate { room, name, rid } => {
                let max = limits_history_name(&config);
                if let Err(e) = check_version_name(&name, max) {
                    return self.error(ctx, ErrorCode::BadMessage, e, rid, Some(&room));
                }
                let ask = VersionAsk::Create { name };
                self.version(ctx, room, rid, ask, Rights::can_write, "version_create");
            }
            ClientMessage::VersionView { room, id, rid } => {
                let Some(id) = self.version_id(ctx, &room, &id, rid) else {
                    return;
                };
                let ask = VersionAsk::View { id, json: false };
                self.version(ctx, room, rid, ask, |_| true, "version_view");
            }
            ClientMessage::VersionRestore { room, id, rid } => {
                let Some(id) = self.version_id(ctx, &room, &id, rid) else {
                    return;
                };
                let ask = VersionAsk::Restore { id };
                self.version(ctx, room, rid, ask, Rights::can_write, "version_restore");
            }
            ClientMessage::VersionDelete { room, id, rid } => {
                let Some(id) = self.version_id(ctx, &room, &id, rid) else {
                    return;
                };
                let ask = VersionAsk::Delete { id };
                self.version(ctx, room, rid, ask, Rights::can_write, "version_delete");
            }
            ClientMessage::PresenceList {
                room,
                after,
                limit,
                rid,
            } => {
                let max = limits.presence_list_max_members;
                match crate::room::presence::check_page(after.as_deref(), limit, max) {
                    Ok((after, limit)) => self.presence_list(ctx, room, rid, after, limit),
                    Err(e) => self.error(ctx, ErrorCode::BadMessage, e, rid, Some(&room)),
                }
            }
        }
    }

    /// Asks a joined room for a page of its member list (one request at a
    /// time per connection) and sends it, its bytes charged to the rate.
    fn presence_list(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: String,
        rid: Option<u64>,
        after: Option<u64>,
        limit: usize,
    ) {
        let Some(addr) = self.joined(ctx, &room, rid) else {
            return;
        };
        if self.listing {
            let text = "one presence_list at a time on a connection: wait for the answer";
            return self.error(ctx, ErrorCode::RateLimited, text, rid, Some(&room));
        }
        self.listing = true;
        let ask = ListPresence {
            member: self.core.id.clone(),
            after,
            limit,
        };
        let answer = addr.send(ask).into_actor(self).map(move |res, act, ctx| {
            act.listing = false;
            let msg = match res {
                Ok(Ok(page)) => ServerMessage::PresencePage {
                    room,
                    members: page.members,
                    next: page.next.map(|n| n.to_string()),
                    total: page.total,
                    rid,
                },
                Ok(Err((code, message))) => ServerMessage::Error {
                    code,
                    message,
                    rid,
                    room: Some(room),
                },
                Err(e) => room_did_not_answer(&e, rid, room),
            };
            let bytes = encode_server(&msg);
            act.core.outbox.push(&Frame::binary(&bytes));
            act.charge(ctx, 0, bytes.len());
        });
        ctx.spawn(answer);
    }

    /// Parses a version id, or answers `bad_message`.
    fn version_id(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: &str,
        id: &str,
        rid: Option<u64>,
    ) -> Option<u64> {
        match parse_version_id(id) {
            Ok(id) => Some(id),
            Err(e) => {
                self.error(ctx, ErrorCode::BadMessage, e, rid, Some(room));
                None
            }
        }
    }

    /// Asks a joined room's history, when the rights allow (`needs`), and
    /// answers with the room's reply or an `error`.
    fn version(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: String,
        rid: Option<u64>,
        ask: VersionAsk,
        needs: fn(Rights) -> bool,
        what: &str,
    ) {
        if let Err(text) = self.may(&room, needs, what) {
            return self.error(ctx, ErrorCode::Forbidden, text, rid, Some(&room));
        }
        let Some(addr) = self.joined(ctx, &room, rid) else {
            return;
        };
        // A restore is a small message that makes the room store and send
        // a change as large as the document: one at a time, each charged
        // to the session's byte rate for what it changed.
        let restore = matches!(ask, VersionAsk::Restore { .. });
        if restore && self.restoring {
            let text = "one version_restore at a time on a connection: wait for the answer";
            return self.error(ctx, ErrorCode::RateLimited, text, rid, Some(&room));
        }
        let max = self
            .core
            .shared
            .config
            .history
            .max_history_requests_in_flight;
        if self.history_inflight >= max {
            let text = format!(
                "at most {max} history requests at a time (max_history_requests_in_flight)"
            );
            return self.error(ctx, ErrorCode::RateLimited, text, rid, Some(&room));
        }
        self.history_inflight += 1;
        self.restoring |= restore;
        let id_of = match &ask {
            VersionAsk::View { id, .. } | VersionAsk::Delete { id } => id.to_string(),
            _ => String::new(),
        };
        let request = VersionRequest {
            ask,
            user: self
                .core
                .grants
                .as_ref()
                .and_then(|g| g.user.as_deref().map(str::to_owned)),
            member: Some(self.core.id.clone()),
            counted: false,
        };
        let answer = addr
            .send(request)
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.history_inflight -= 1;
                let changed = match &res {
                    Ok(Ok(VersionReply::Version(meta))) if restore => meta.bytes as usize,
                    _ => 0,
                };
                if restore {
                    act.restoring = false;
                }
                let msg = match res {
                    Ok(Ok(VersionReply::Page(page))) => ServerMessage::Versions {
                        room,
                        versions: page.versions.iter().map(version_view).collect(),
                        next: page.next.map(|n| n.to_string()),
                        rid,
                    },
                    Ok(Ok(VersionReply::Version(meta))) => ServerMessage::Version {
                        room,
                        version: version_view(&meta),
                        rid,
                    },
                    Ok(Ok(VersionReply::Update(update))) => ServerMessage::VersionDoc {
                        room,
                        id: id_of,
                        update: Bin(update.to_vec()),
                        rid,
                    },
                    Ok(Ok(VersionReply::Deleted)) => ServerMessage::VersionDeleted {
                        room,
                        id: id_of,
                        rid,
                    },
                    Ok(Ok(VersionReply::Json(_))) => ServerMessage::Error {
                        code: ErrorCode::BadMessage,
                        message: "unexpected answer".into(),
                        rid,
                        room: Some(room),
                    },
                    Ok(Err(e)) => ServerMessage::Error {
                        code: e.code,
                        message: e.message,
                        rid,
                        room: Some(room),
                    },
                    Err(e) => room_did_not_answer(&e, rid, room),
                };
                act.send(ctx, &msg);
                act.charge(ctx, 0, changed);
            });
        ctx.spawn(answer);
    }
}

/// Longest version name in `config`.
fn limits_history_name(config: &crate::config::Config) -> usize {
    config.history.max_version_name_bytes
}

impl Session for NativeSession {
    fn core(&mut self) -> &mut SessionCore {
        &mut self.core
    }

    /// `error room_unavailable` for the join; the connection stays open.
    fn join_refused(
        &mut self,
        ctx: &mut Self::Context,
        room: &RoomId,
        rid: Option<u64>,
        reason: String,
    ) {
        self.error(ctx, ErrorCode::RoomUnavailable, reason, rid, Some(room));
    }

    fn binary(&mut self, bytes: &[u8], ctx: &mut Self::Context) {
        self.handle_frame(bytes, ctx);
    }

    /// Counted against the rate, then refused with `bad_message` (the
    /// connection stays open).
    fn text(&mut self, len: usize, ctx: &mut Self::Context) {
        if self.admit(ctx, len) {
            let text = "the native protocol uses binary frames";
            self.error(ctx, ErrorCode::BadMessage, text, None, None);
        }
    }
}

impl Actor for NativeSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.start(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.core.stop();
        Running::Stop
    }
}

session_handlers!(NativeSession);

/// The error for a request whose room did not answer (it stopped, or its
/// mailbox is gone).
fn room_did_not_answer(e: &MailboxError, rid: Option<u64>, room: String) -> ServerMessage {
    ServerMessage::Error {
        code: ErrorCode::RoomUnavailable,
        message: format!("the room did not answer: {e}"),
        rid,
        room: Some(room),
    }
}
