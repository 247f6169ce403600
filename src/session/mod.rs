//! One actor per WebSocket connection. It decodes frames, checks them
//! against the connection's state and limits, forwards them to its rooms, and
//! writes what rooms send it. Outbound bytes are accounted in an [`Outbox`]
//! shared with the rooms (see [`crate::outbox`]). [`NativeSession`] speaks the
//! native protocol on `/ws`; [`yjs::YjsSession`] speaks y-protocols on
//! `/yjs/{room}` to the same room actors.

pub mod intake;
pub mod yjs;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use crate::auth::{now_secs, Grants, Rights, Verifier};
use crate::config::Config;
use crate::ids::MemberId;
use crate::limit::{IpLimiter, IpSlot, SessionRate};
use crate::outbox::{Drained, Frame, Outbound, Outbox};
use crate::protocol::native::{
    decode_client, encode_server, ClientMessage, ServerMessage, WireLimits,
};
use crate::protocol::{close, validate_room_id, ErrorCode, PROTOCOL_VERSION};
use crate::room::{
    Broadcast, ClientUpdate, Join, Leave, MemberLink, Protocol, Registry, Resync, Room, RoomId,
    SetCursor, SetPresence, SetTyping,
};
use intake::{Inbound, Intake};

/// Every live session, so shutdown can tell each one to go away and
/// metrics can count them.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<MemberId, Recipient<Outbound>>>,
    next: AtomicU64,
    /// Node id prefix of member ids.
    node: String,
}

impl Sessions {
    /// A session table for the node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Sessions {
            node: node.into(),
            ..Default::default()
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<MemberId, Recipient<Outbound>>> {
        // Critical sections are single map operations; a poisoned lock is consistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh member id, unique in the cluster.
    pub fn next_id(&self) -> MemberId {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        crate::ids::member_id(&self.node, n)
    }

    /// Number of open sessions.
    pub fn count(&self) -> usize {
        self.live().len()
    }

    fn register(&self, id: MemberId, to: Recipient<Outbound>) {
        self.live().insert(id, to);
    }

    fn unregister(&self, id: &MemberId) {
        self.live().remove(id);
    }

    /// Tells every session to close with `code`.
    pub fn close_all(&self, code: u16, reason: &str) {
        for to in self.live().values() {
            to.do_send(Outbound::Close {
                code,
                reason: reason.to_owned(),
            });
        }
    }
}

/// What every session shares: configuration, rooms, the session table.
#[derive(Clone)]
pub struct Shared {
    /// Server configuration.
    pub config: Arc<Config>,
    /// Live rooms.
    pub registry: Registry,
    /// Server counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where documents are stored (for `/readyz`; rooms have their own handle).
    pub store: Arc<dyn crate::store::DocStore>,
    /// The bridge to the other nodes, in cluster mode only.
    pub bridge: Option<crate::cluster::Bridge>,
    /// Live sessions.
    pub sessions: Arc<Sessions>,
    /// Token verifier; `None`: authentication is off (open server).
    pub auth: Option<Arc<Verifier>>,
    /// Open connections and connection rate per client IP.
    pub ips: Arc<IpLimiter>,
}

impl Shared {
    /// Grants of a session that presents no token: everything on an open
    /// server, read-only with `--allow-anonymous-read`, else none.
    pub fn anonymous_grants(&self) -> Option<Grants> {
        match &self.auth {
            None => Some(Grants::open()),
            Some(_) if self.config.allow_anonymous_read => Some(Grants::anonymous(Rights::Read)),
            Some(_) => None,
        }
    }
}

/// What the HTTP layer decided about a connection before the upgrade.
#[derive(Debug, Default)]
pub struct Admission {
    /// Grants from a token in the URL or `Authorization` header, or the
    /// anonymous grants. `None` on `/ws`: the session authenticates with
    /// `hello.token`.
    pub grants: Option<Grants>,
    /// The per-IP slot, held for the life of the session.
    pub slot: Option<IpSlot>,
    /// `/yjs` only: refused after the upgrade with this close code and
    /// reason (y-websocket cannot read an HTTP status).
    pub refusal: Option<(u16, String)>,
}

/// Schedules the close of a session when its token expires (`exp`, in
/// seconds since the epoch), with [`close::TOKEN_EXPIRED`].
fn schedule_expiry<A>(grants: &Grants, ctx: &mut ws::WebsocketContext<A>)
where
    A: Actor<Context = ws::WebsocketContext<A>> + Handler<Outbound>,
{
    let Some(exp) = grants.exp else { return };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(exp);
    let wait = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    ctx.run_later(wait, |_, ctx| {
        ctx.address().do_send(Outbound::Close {
            code: close::TOKEN_EXPIRED,
            reason: "token expired".into(),
        });
    });
}

/// The native-protocol session actor.
pub struct NativeSession {
    id: MemberId,
    shared: Shared,
    outbox: Arc<Outbox>,
    /// Set by `hello`; nothing but `hello` and `ping` is accepted before.
    greeted: bool,
    /// Rooms joined, by id. A room stays live while this session is a member.
    rooms: HashMap<RoomId, Addr<Room>>,
    /// Last frame (of any kind) from the client: the heartbeat's clock.
    last_seen: Instant,
    /// Reassembles fragmented messages within `max_frame_bytes`.
    intake: Intake,
    /// What this session may do: from the connection (URL / header token,
    /// or anonymous) or from `hello.token`. Checked on every message.
    grants: Option<Grants>,
    /// Inbound messages/s and bytes/s.
    rate: SessionRate,
    /// Per-IP connection slot, freed when the session ends.
    _slot: Option<IpSlot>,
}

impl NativeSession {
    /// A session that writes through `outbox`, admitted as `admission` says.
    pub fn new(shared: Shared, outbox: Arc<Outbox>, admission: Admission) -> Self {
        NativeSession {
            id: shared.sessions.next_id(),
            rate: SessionRate::new(&shared.config.limits),
            intake: Intake::new(shared.config.limits.max_frame_bytes),
            shared,
            outbox,
            greeted: false,
            rooms: HashMap::new(),
            last_seen: Instant::now(),
            grants: admission.grants,
            _slot: admission.slot,
        }
    }

    /// The rights in `room`, or answers `forbidden` and returns `None`
    /// when the session may not do what `needs` asks there.
    fn allowed(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: &str,
        rid: Option<u64>,
        needs: fn(Rights) -> bool,
        what: &str,
    ) -> bool {
        let rights = self.grants.as_ref().and_then(|g| g.rights(room));
        if rights.is_some_and(needs) {
            return true;
        }
        let text = match rights {
            None => format!("the token grants no access to this room ({what})"),
            Some(r) => format!("not allowed with rights {r:?} ({what})"),
        };
        self.error(ctx, ErrorCode::Forbidden, text, rid, Some(room));
        false
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
        let verified = match (&self.shared.auth, token) {
            (Some(verifier), Some(token)) => verifier.verify(&token, now_secs()).map(Some),
            _ => Ok(None),
        };
        match verified {
            Ok(Some(grants)) => self.grants = Some(grants),
            Ok(None) if self.grants.is_none() => self.grants = self.shared.anonymous_grants(),
            Ok(None) => {}
            Err(e) => {
                self.error(ctx, ErrorCode::Forbidden, e.to_string(), rid, None);
                self.close(ctx, close::UNAUTHORIZED, &e.to_string());
                return false;
            }
        }
        match &self.grants {
            Some(grants) => {
                schedule_expiry(grants, ctx);
                true
            }
            None => {
                let text =
                    "this server requires a token (hello.token, ?token= or Authorization: Bearer)";
                self.error(ctx, ErrorCode::Forbidden, text, rid, None);
                self.close(ctx, close::UNAUTHORIZED, "token required");
                false
            }
        }
    }

    fn send(&self, _: &mut ws::WebsocketContext<Self>, msg: &ServerMessage) {
        self.outbox.push(&Frame::binary(&encode_server(msg)));
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

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        self.outbox.push_close(&Frame::close(Some(code), reason));
        ctx.stop();
    }

    fn link(&self, ctx: &mut ws::WebsocketContext<Self>) -> MemberLink {
        MemberLink {
            id: self.id.clone(),
            user: self.grants.as_ref().and_then(|g| g.user.clone()),
            protocol: Protocol::Native,
            recipient: ctx.address().recipient(),
            outbox: self.outbox.clone(),
        }
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let limits = &self.shared.config.limits;
        ctx.run_interval(limits.heartbeat(), |act, ctx| {
            if act.last_seen.elapsed() > act.shared.config.limits.client_timeout() {
                tracing::debug!(session = %act.id, "client timed out");
                act.close(ctx, close::TIMEOUT, "heartbeat timeout");
                return;
            }
            act.outbox.push(&Frame::ping(b""));
            if act.outbox.is_lagging() && act.outbox.is_drained() {
                act.resync(ctx);
            }
        });
    }

    fn resync(&self, _: &mut ws::WebsocketContext<Self>) {
        if self.outbox.take_lagging() {
            for room in self.rooms.values() {
                room.do_send(Resync {
                    member: self.id.clone(),
                });
            }
        }
    }

    /// Finds the room a message is for, or answers `not_joined`.
    fn joined(
        &self,
        ctx: &mut ws::WebsocketContext<Self>,
        room: &str,
        rid: Option<u64>,
    ) -> Option<Addr<Room>> {
        let addr = self.rooms.get(room).cloned();
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

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        self.shared.metrics.received(bytes.len());
        if let Err(limit) = self.rate.admit(bytes.len()) {
            let text = format!("over {limit}: slow down");
            self.error(ctx, ErrorCode::RateLimited, text, None, None);
            return self.close(ctx, close::RATE_LIMITED, limit);
        }
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
        let config = self.shared.config.clone();
        let limits = &config.limits;
        match msg {
            ClientMessage::Hello { v, rid, token, .. } => {
                if v != PROTOCOL_VERSION {
                    let text = format!("this server speaks protocol version {PROTOCOL_VERSION}");
                    self.error(ctx, ErrorCode::UnsupportedVersion, text, rid, None);
                    return self.close(
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
                    session: self.id.to_string(),
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
                if self.rooms.contains_key(room.as_str()) {
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
                if !self.allowed(ctx, &room, rid, needs, "join") {
                    return;
                }
                if self.rooms.len() >= limits.max_rooms_per_connection {
                    let text = format!(
                        "at most {} rooms per connection (max_rooms_per_connection)",
                        limits.max_rooms_per_connection
                    );
                    return self.error(ctx, ErrorCode::TooManyRooms, text, rid, Some(&room));
                }
                let id: RoomId = Arc::from(room);
                let join = Join {
                    member: self.link(ctx),
                    sv: sv.map(|b| b.0),
                    presence,
                    rid,
                };
                let addr = self.shared.registry.join(&id, join);
                self.rooms.insert(id, addr);
            }
            ClientMessage::Leave { room, rid } => match self.rooms.remove(room.as_str()) {
                Some(addr) => addr.do_send(Leave {
                    member: self.id.clone(),
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
                if !empty && !self.allowed(ctx, &room, rid, Rights::can_write, "update") {
                    return;
                }
                if let Some(addr) = self.joined(ctx, &room, rid) {
                    addr.do_send(ClientUpdate {
                        member: self.id.clone(),
                        data: Bytes::from(data.0),
                        rid,
                    });
                }
            }
            ClientMessage::Presence { room, state, rid } => {
                if !self.allowed(ctx, &room, rid, Rights::can_presence, "presence") {
                    return;
                }
                if let Some(addr) = self.joined(ctx, &room, rid) {
                    addr.do_send(SetPresence {
                        member: self.id.clone(),
                        state,
                        rid,
                    });
                }
            }
            ClientMessage::Cursor {
                room,
                anchor,
                head,
                rid,
            } => {
                if !self.allowed(ctx, &room, rid, Rights::can_presence, "cursor") {
                    return;
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
                addr.do_send(SetCursor {
                    member: self.id.clone(),
                    anchor: anchor.map(|b| b.0),
                    head: head.map(|b| b.0),
                    rid,
                });
            }
            ClientMessage::Typing { room, on, rid } => {
                if !self.allowed(ctx, &room, rid, Rights::can_presence, "typing") {
                    return;
                }
                if let Some(addr) = self.joined(ctx, &room, rid) {
                    addr.do_send(SetTyping {
                        member: self.id.clone(),
                        on,
                    });
                }
            }
            ClientMessage::Event {
                room,
                name,
                data,
                rid,
            } => {
                if !self.allowed(ctx, &room, rid, Rights::can_presence, "event") {
                    return;
                }
                if let Some(addr) = self.joined(ctx, &room, rid) {
                    addr.do_send(Broadcast {
                        member: self.id.clone(),
                        name,
                        data,
                        rid,
                    });
                }
            }
            ClientMessage::Ping { rid } => self.send(ctx, &ServerMessage::Pong { rid }),
        }
    }
}

impl Actor for NativeSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.outbox.set_waker(ctx.address().recipient());
        self.shared
            .sessions
            .register(self.id.clone(), ctx.address().recipient());
        self.heartbeat(ctx);
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        for (_, room) in self.rooms.drain() {
            room.do_send(Leave {
                member: self.id.clone(),
            });
        }
        self.shared.sessions.unregister(&self.id);
        Running::Stop
    }
}

impl Handler<Outbound> for NativeSession {
    type Result = ();

    fn handle(&mut self, msg: Outbound, ctx: &mut Self::Context) {
        match msg {
            Outbound::Close { code, reason } => self.close(ctx, code, &reason),
            Outbound::Refused { room } => {
                self.rooms.remove(&room);
            }
        }
    }
}

impl Handler<Drained> for NativeSession {
    type Result = ();

    fn handle(&mut self, _: Drained, ctx: &mut Self::Context) {
        self.resync(ctx);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for NativeSession {
    fn handle(&mut self, item: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_seen = Instant::now();
        if self.outbox.is_evicted() {
            return self.close(ctx, close::SLOW_CONSUMER, "slow consumer");
        }
        match self.intake.feed(item) {
            Inbound::Binary(bytes) => self.handle_frame(&bytes, ctx),
            Inbound::Text(len) => {
                if let Err(limit) = self.rate.admit(len) {
                    self.error(
                        ctx,
                        ErrorCode::RateLimited,
                        format!("over {limit}"),
                        None,
                        None,
                    );
                    return self.close(ctx, close::RATE_LIMITED, limit);
                }
                self.error(
                    ctx,
                    ErrorCode::BadMessage,
                    "the native protocol uses binary frames",
                    None,
                    None,
                )
            }
            Inbound::Ping(payload) => {
                self.outbox.push(&Frame::pong(&payload));
            }
            Inbound::Close(reason) => {
                self.outbox.push_close(&crate::outbox::echo_close(reason));
                ctx.stop();
            }
            Inbound::Nothing => {}
            Inbound::TooBig => {
                let max = self.shared.config.limits.max_frame_bytes;
                self.close(
                    ctx,
                    close::TOO_BIG,
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
