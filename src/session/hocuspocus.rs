//! The `/hocuspocus` session: one `@hocuspocus/provider` WebSocket (v2, v3
//! or v4), many documents on it, each a room (the document name is the
//! room id), reached as `/ws` and `/yjs/{room}` reach it.
//!
//! Frames are decoded by [`crate::protocol::hocuspocus`]; what a sync or
//! awareness message means is decided per document by the sans-I/O
//! [`DocSync`], as on `/yjs`. Work is counted per frame (one message each)
//! against the session's rate, and per document: a socket holds at most
//! `max_rooms_per_connection` documents (pending or open); one past that is
//! denied, the others unaffected.
//!
//! A document's life:
//! - **pending**: frames that come before its Auth frame wait, at most
//!   `max_queued_messages` frames and `max_frame_bytes` bytes for the whole
//!   socket (past either: close 4413). The provider sends Auth, sync step 1
//!   and its awareness without waiting for an answer.
//! - **Auth** decides it: a non-empty token is a Chorus JWT verified here
//!   (grants `r` / `rp` → `readonly`, `rw` → `read-write`); an empty token
//!   (v3 sends `""` when it has none) means the connection's grants (a
//!   `?token=` / `Authorization` token, anonymous read, or an open server).
//!   A refusal is auth "permission denied" for that document only; the
//!   socket stays open. A sync step 1 before any Auth is a v2 provider
//!   configured without a token (it sends none): the connection's grants
//!   decide then.
//! - **open**: "authenticated" is sent, the room is joined (it sends its
//!   step 1 and the awareness states), the queued frames are replayed.
//!   Step 1 → step 2 (the room); step 2 / update → applied, and SyncStatus 1
//!   once stored (the room's ack; an empty one too, in turn); without the
//!   write right SyncStatus 0 and nothing applied; an update with missing
//!   dependencies gets SyncStatus 0 and the room's step 1 (the provider's
//!   step 2 then brings everything), the socket stays open. Stateless and
//!   BroadcastStateless → a native event `stateless` (data: the payload
//!   string); BroadcastStateless is also echoed to the sender. Close (the
//!   provider detached) → the room is left.
//!
//! Liveness: the provider closes a socket that received nothing for 30 s.
//! Awareness is echoed to its sender (the provider renews its state every
//! 15 s); a socket that was sent nothing for [`KEEPALIVE`] gets an empty
//! awareness update for one of its documents. A v4 ping `[9]` is answered
//! `[10]`. A malformed frame closes 4400, a frame over `max_frame_bytes`
//! 1009, a token that expires 4440 (the provider reconnects with a fresh
//! one); errors the room reports close the socket as on `/yjs`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use serde_json::Value;

use super::core::{session_handlers, Session, SessionCore};
use super::flow::Gate;
use super::{Admission, Shared};
use crate::auth::{now_secs, Grants};
use crate::outbox::{Frame, Outbox};
use crate::protocol::hocuspocus::{self, DocMessage, Inbound};
use crate::protocol::yjs::{self, YjsMessage};
use crate::protocol::{close, validate_room_id};
use crate::room::{Broadcast, Leave, Protocol, RoomId};
use crate::sync::{Action, DocSync, Refusal, SyncLimits};

/// A socket that was sent nothing for this long gets a keep-alive frame
/// (the provider gives up after 30 s of silence).
pub const KEEPALIVE: Duration = Duration::from_secs(12);

/// One document on the socket.
enum Doc {
    /// Waiting for its Auth frame: the frames that came before it.
    Pending {
        /// Frames in arrival order (counted in the session's pending totals).
        frames: Vec<Bytes>,
    },
    /// Joined.
    Open {
        /// The sync logic with this document's rights.
        sync: DocSync,
        /// The room (the document name).
        room: RoomId,
        /// When the last awareness query went to the room (one per tick).
        last_query: Option<Instant>,
    },
}

/// What the session sends a room for a document, in order.
enum Work {
    /// A sync or awareness action.
    Sync(Action),
    /// A stateless payload, as a native event.
    Event(String),
}

/// The Hocuspocus session actor.
pub struct HocuspocusSession {
    /// Heartbeat, intake, rate, close, rooms joined, connection grants.
    core: SessionCore,
    /// Set by the HTTP layer: refused with this on start.
    refusal: Option<(u16, String)>,
    /// Documents by name (pending or open); at most
    /// `max_rooms_per_connection`.
    docs: HashMap<String, Doc>,
    /// Frames waiting for an Auth, over every pending document.
    pending_frames: usize,
    /// Their bytes.
    pending_bytes: usize,
    /// Work not sent to rooms yet: at most `max_queued_messages` wait in
    /// rooms at once; the socket is not read while some is held.
    held: VecDeque<(RoomId, Work)>,
    /// Request ids of updates (the room acks each: SyncStatus 1).
    next_rid: u64,
    /// Bytes written to the client at the last keep-alive check, and when
    /// that count last moved.
    quiet: (u64, Instant),
}

impl HocuspocusSession {
    /// A session that writes through `outbox`, admitted as `admission`
    /// says.
    pub fn new(
        shared: Arc<Shared>,
        outbox: Arc<Outbox>,
        mut admission: Admission,
        gate: Arc<Gate>,
    ) -> Self {
        let refusal = admission.refusal.take();
        HocuspocusSession {
            core: SessionCore::new(shared, outbox, admission, close::TOO_BIG, gate)
                .named("hocuspocus"),
            refusal,
            docs: HashMap::new(),
            pending_frames: 0,
            pending_bytes: 0,
            held: VecDeque::new(),
            next_rid: 0,
            quiet: (0, Instant::now()),
        }
    }

    fn send(&self, frame: &[u8]) {
        self.core.outbox.push(&Frame::binary(frame));
    }

    fn handle_frame(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        if !self.core.charge_or_close(ctx, 1, bytes.len()) {
            return;
        }
        let (name, msg) = match hocuspocus::decode(bytes) {
            Ok(Inbound::Ping) => return self.send(&hocuspocus::PONG_FRAME),
            Ok(Inbound::Pong) => return,
            Ok(Inbound::Doc { name, msg }) => (name, msg),
            Err(e) => return self.core.close(ctx, close::YJS_BAD_MESSAGE, &e.to_string()),
        };
        match self.docs.get_mut(name) {
            Some(Doc::Open { .. }) => {
                let name = name.to_owned();
                self.doc_message(&name, msg, ctx);
            }
            Some(Doc::Pending { frames }) => match msg {
                DocMessage::Auth { token } => {
                    let name = name.to_owned();
                    self.authenticate(&name, Some(&token), ctx);
                }
                DocMessage::Yjs(YjsMessage::SyncStep1(_)) => {
                    // A v2 provider without a token sends no Auth.
                    frames.push(Bytes::copy_from_slice(bytes));
                    self.pending_frames += 1;
                    self.pending_bytes += bytes.len();
                    let name = name.to_owned();
                    self.authenticate(&name, None, ctx);
                }
                _ => {
                    frames.push(Bytes::copy_from_slice(bytes));
                    self.pending_frames += 1;
                    self.pending_bytes += bytes.len();
                    self.check_pending(ctx);
                }
            },
            None => {
                let limits = &self.core.shared.config.limits;
                if self.docs.len() >= limits.max_rooms_per_connection {
                    let reason = format!(
                        "too many documents on this connection (max_rooms_per_connection: {})",
                        limits.max_rooms_per_connection
                    );
                    return self.send(&hocuspocus::permission_denied(name, &reason));
                }
                if let Err(e) = validate_room_id(name, limits.max_room_id_bytes) {
                    return self.send(&hocuspocus::permission_denied(name, e));
                }
                let name = name.to_owned();
                match msg {
                    DocMessage::Auth { token } => self.authenticate(&name, Some(&token), ctx),
                    DocMessage::Yjs(YjsMessage::SyncStep1(_)) => {
                        self.authenticate(&name, None, ctx);
                        self.doc_message(&name, msg, ctx);
                    }
                    DocMessage::Close => {}
                    _ => {
                        let frames = vec![Bytes::copy_from_slice(bytes)];
                        self.pending_frames += 1;
                        self.pending_bytes += bytes.len();
                        self.docs.insert(name, Doc::Pending { frames });
                        self.check_pending(ctx);
                    }
                }
            }
        }
    }

    /// Closes the socket when frames waiting for an Auth are over the
    /// bounds (`max_queued_messages` frames, `max_frame_bytes` bytes).
    fn check_pending(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let limits = &self.core.shared.config.limits;
        if self.pending_frames > limits.max_queued_messages
            || self.pending_bytes > limits.max_frame_bytes
        {
            let reason = format!(
                "too many frames before authentication (max_queued_messages: {}, max_frame_bytes: {})",
                limits.max_queued_messages, limits.max_frame_bytes
            );
            self.core.close(ctx, close::YJS_TOO_LARGE, &reason);
        }
    }

    /// Decides document `name`: with `token` (`Some("")`: none given) or,
    /// for a provider that sends no Auth (`None`), the connection's grants.
    /// Opens it, or denies it (the other documents are unaffected).
    fn authenticate(
        &mut self,
        name: &str,
        token: Option<&str>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let queued = match self.docs.remove(name) {
            Some(Doc::Pending { frames }) => frames,
            Some(open @ Doc::Open { .. }) => {
                // unreachable in practice: Auth on an open document is
                // answered in `doc_message`.
                self.docs.insert(name.to_owned(), open);
                return;
            }
            None => Vec::new(),
        };
        self.pending_frames -= queued.len();
        self.pending_bytes -= queued.iter().map(Bytes::len).sum::<usize>();
        let grants = match self.grants_for(token) {
            Ok(grants) => grants,
            Err(reason) => return self.send(&hocuspocus::permission_denied(name, &reason)),
        };
        let Some(rights) = grants.rights(name) else {
            let reason = "the token grants no access to this document";
            return self.send(&hocuspocus::permission_denied(name, reason));
        };
        let limits = SyncLimits::new(&self.core.shared.config.limits);
        self.send(&hocuspocus::authenticated(name, !rights.can_write()));
        let room: RoomId = Arc::from(name);
        self.docs.insert(
            name.to_owned(),
            Doc::Open {
                sync: DocSync::new(rights, limits),
                room: room.clone(),
                last_query: None,
            },
        );
        // A document's token that expires closes the socket (4440): the
        // provider reconnects with a fresh one.
        if let Some(exp) = grants.exp {
            SessionCore::expire_at(ctx, exp);
        }
        self.core.join_as(
            ctx,
            room,
            Protocol::Hocuspocus,
            grants.user,
            None,
            None,
            None,
        );
        for frame in queued {
            if let Ok(Inbound::Doc { msg, .. }) = hocuspocus::decode(&frame) {
                self.doc_message(name, msg, ctx);
            }
        }
    }

    /// The grants a document is decided with: the token's, or the
    /// connection's when there is none; `Err` is the denial's reason.
    fn grants_for(&self, token: Option<&str>) -> Result<Grants, String> {
        let shared = &self.core.shared;
        match (token.filter(|t| !t.is_empty()), &shared.auth) {
            (Some(token), Some(verifier)) => verifier
                .verify(token, now_secs())
                .map_err(|e| e.to_string()),
            // An open server ignores tokens, as `/yjs` does.
            _ => self
                .core
                .grants
                .clone()
                .ok_or_else(|| "a token is required".to_owned()),
        }
    }

    /// A message for open document `name`.
    fn doc_message(&mut self, name: &str, msg: DocMessage, ctx: &mut ws::WebsocketContext<Self>) {
        let tick = self.core.shared.config.limits.tick();
        let Some(Doc::Open {
            sync,
            room,
            last_query,
        }) = self.docs.get_mut(name)
        else {
            return;
        };
        let room = room.clone();
        let rights = sync.rights();
        let work = match msg {
            DocMessage::Yjs(YjsMessage::QueryAwareness) => {
                let now = Instant::now();
                if last_query.is_some_and(|t| now.saturating_duration_since(t) < tick) {
                    return;
                }
                *last_query = Some(now);
                Work::Sync(Action::QueryAwareness)
            }
            DocMessage::Yjs(y) => {
                let is_write = matches!(y, YjsMessage::SyncStep2(_) | YjsMessage::Update(_));
                match sync.take(y) {
                    Ok(Some(action)) => Work::Sync(action),
                    // An empty step 2 or update: the room acks it in turn,
                    // after the step 2 it owes the client (the provider
                    // counts itself synced at the SyncStatus).
                    Ok(None) if is_write => {
                        Work::Sync(Action::Update(Bytes::from_static(yjs::EMPTY_UPDATE)))
                    }
                    Ok(None) => return,
                    Err(Refusal::ReadOnly) => {
                        return self.send(&hocuspocus::sync_status(name, false));
                    }
                    Err(refusal) => {
                        return self.core.close(ctx, refusal.code(), refusal.reason());
                    }
                }
            }
            DocMessage::Auth { .. } => {
                // Sent again (a provider re-attached): same answer.
                return self.send(&hocuspocus::authenticated(name, !rights.can_write()));
            }
            DocMessage::Stateless(payload) => {
                if !rights.can_presence() {
                    return;
                }
                Work::Event(payload)
            }
            DocMessage::BroadcastStateless(payload) => {
                if !rights.can_presence() {
                    return;
                }
                self.send(&hocuspocus::stateless(name, &payload));
                Work::Event(payload)
            }
            DocMessage::Close => {
                self.docs.remove(name);
                if let Some(addr) = self.core.rooms.remove(&room) {
                    addr.do_send(Leave {
                        member: self.core.id.clone(),
                    });
                }
                return;
            }
        };
        self.held.push_back((room, work));
        self.pump(ctx);
    }

    /// Sends held work to rooms while they have room for it; holds the
    /// socket closed while some is left.
    fn pump(&mut self, _: &mut ws::WebsocketContext<Self>) {
        self.core.gate.hold(true);
        while self.core.gate.has_room() {
            let Some((room_id, work)) = self.held.pop_front() else {
                break;
            };
            // The document was closed meanwhile.
            let Some(room) = self.core.rooms.get(&room_id) else {
                continue;
            };
            match work {
                Work::Sync(action) => {
                    let rid = matches!(action, Action::Update(_)).then(|| {
                        self.next_rid += 1;
                        self.next_rid
                    });
                    self.core.send_action(room, action, rid);
                }
                Work::Event(payload) => {
                    let len = payload.len();
                    let event = Broadcast {
                        member: self.core.id.clone(),
                        name: hocuspocus::STATELESS_EVENT.to_owned(),
                        data: Value::String(payload),
                        rid: None,
                    };
                    room.do_send(self.core.track(event, len));
                }
            }
        }
        if self.held.is_empty() {
            self.core.gate.hold(false);
        }
    }

    /// Sends an empty awareness update for one open document when nothing
    /// was written to the client for [`KEEPALIVE`].
    fn keepalive(&mut self) {
        let written = self.core.outbox.written();
        if written != self.quiet.0 {
            self.quiet = (written, Instant::now());
            return;
        }
        if self.quiet.1.elapsed() < KEEPALIVE {
            return;
        }
        let open = self.docs.iter().find_map(|(name, doc)| match doc {
            Doc::Open { .. } => Some(name.clone()),
            Doc::Pending { .. } => None,
        });
        if let Some(name) = open {
            self.send(&hocuspocus::prefixed(&name, &yjs::awareness([])));
        }
    }
}

impl Session for HocuspocusSession {
    fn core(&mut self) -> &mut SessionCore {
        &mut self.core
    }

    fn binary(&mut self, bytes: &[u8], ctx: &mut Self::Context) {
        self.handle_frame(bytes, ctx);
    }

    fn text(&mut self, _: usize, ctx: &mut Self::Context) {
        self.core.close(
            ctx,
            close::YJS_BAD_MESSAGE,
            "the Hocuspocus protocol uses binary frames",
        );
    }
}

impl Actor for HocuspocusSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.core.start(ctx);
        self.core.gate.set_pump(ctx.address().recipient());
        if let Some((code, reason)) = self.refusal.take() {
            return self.core.close(ctx, code, &reason);
        }
        let every = self
            .core
            .shared
            .config
            .limits
            .heartbeat()
            .min(KEEPALIVE / 2);
        ctx.run_interval(every, |act, _| act.keepalive());
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        self.core.stop();
        Running::Stop
    }
}

session_handlers!(HocuspocusSession, pumped);
