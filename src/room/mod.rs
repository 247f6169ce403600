//! The room actor: one Yjs document, its presence, its members.
//!
//! Path of an update: decode and apply in one transaction (a bad update is
//! refused and the document stays as it was) → append to the store, `ack`
//! to the sender once durable → merged with the other updates of the same
//! window (a tick; longer in big rooms), encoded once per protocol, and
//! offered to every other member through their [`Outbox`] (`fanout.rs`). A
//! member too far behind gets no deltas; once it drains it is resynced from
//! the state vector the room had when it started dropping.
//!
//! Members speak either protocol ([`Protocol`]): a `/yjs` member gets the
//! same updates as y-protocols sync messages, and sees native members (and
//! is seen by them) through the awareness table ([`awareness`]);
//! `yjs_bridge.rs` holds the `/yjs` side (`Room::flush_awareness` for the
//! mapping between awareness states and native presence).
//!
//! Rooms are started by the [`Registry`] on one of a pool of arbiters and
//! evicted after `room_idle_ms` without members (their document is compacted
//! into the store first, so a later join loads it back).

pub mod api;
pub mod awareness;
pub mod events;
mod fanout;
pub mod registry;
mod remote;
mod yjs_bridge;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::{Map, Value};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, StickyIndex, Transact, Update};

pub use registry::Registry;

use crate::cluster::{Bridge, Item};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::presence::{MemberId, Presence, Shown};
use crate::protocol::native::{
    encode_members, encode_server, encode_snapshot_parts, encode_synced_parts, Bin, ServerMessage,
};
use crate::protocol::yjs::{self, AwarenessEntry};
use crate::protocol::ErrorCode;
use crate::session::transport::{Class, Frame, Offer, Outbound, Outbox};
use crate::store::DocStore;
use crate::webhook::{HookKind, Webhooks};
use awareness::AwarenessTable;
use events::{EventRing, Subscriber};
use fanout::{encode, send_frame};

/// `v` as `Bytes` without its spare capacity: yrs' encoder starts at 1 KiB,
/// and a cached small document would otherwise keep all of it.
fn exact_bytes(mut v: Vec<u8>) -> Bytes {
    v.shrink_to_fit();
    Bytes::from(v)
}

/// A room id (validated by the session before use).
pub type RoomId = Arc<str>;

/// Wire protocol of a member: the room encodes each broadcast once per
/// protocol present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Native MessagePack protocol v1.
    Native,
    /// y-protocols, as stock `y-websocket` clients speak it on `/yjs/{room}`.
    Yjs,
}

impl Protocol {
    /// Number of protocols (size of per-protocol caches).
    const COUNT: usize = 2;

    fn index(self) -> usize {
        match self {
            Protocol::Native => 0,
            Protocol::Yjs => 1,
        }
    }
}

/// What a room needs to send to one member.
#[derive(Clone)]
pub struct MemberLink {
    /// Member id (unique in the cluster).
    pub id: MemberId,
    /// Authenticated user id, if any.
    pub user: Option<Arc<str>>,
    /// How frames for this member are encoded.
    pub protocol: Protocol,
    /// The session actor.
    pub recipient: Recipient<Outbound>,
    /// The session's outbound byte accounting, checked before every send.
    pub outbox: Arc<Outbox>,
}

/// A member as the room tracks it.
struct Member {
    link: MemberLink,
    /// Set when deltas were dropped: the room's state vector before the
    /// first dropped delta. The resync sends the diff against it.
    resync_from: Option<StateVector>,
    /// Set when presence frames were dropped: the resync sends a snapshot.
    presence_stale: bool,
}

/// Join a room. The room answers with `synced` and a presence snapshot, or
/// an `error`, through the member's link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The joining member.
    pub member: MemberLink,
    /// The client's state vector (Yjs v1), if it has state already.
    pub sv: Option<Vec<u8>>,
    /// Initial presence state.
    pub presence: Option<Value>,
    /// Request id of the client's `join`.
    pub rid: Option<u64>,
}

/// Leave a room (also sent when a session stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The leaving member.
    pub member: MemberId,
}

/// A document update from a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientUpdate {
    /// The author.
    pub member: MemberId,
    /// Yjs v1 update bytes.
    pub data: Bytes,
    /// Request id to acknowledge once durable.
    pub rid: Option<u64>,
}

/// Replace a member's presence state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPresence {
    /// The member.
    pub member: MemberId,
    /// New state (a JSON object).
    pub state: Value,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// Move a member's cursor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCursor {
    /// The member.
    pub member: MemberId,
    /// Encoded relative position of the anchor.
    pub anchor: Option<Vec<u8>>,
    /// Encoded relative position of the head.
    pub head: Option<Vec<u8>>,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// Typing on or off.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTyping {
    /// The member.
    pub member: MemberId,
    /// On or off.
    pub on: bool,
}

/// An ephemeral event for every other member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// Sender's member id.
    pub member: MemberId,
    /// Event name.
    pub name: String,
    /// Payload.
    pub data: Value,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// Sync step 1 from a `/yjs` member: the room answers with sync step 2
/// (what the member lacks).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncStep1 {
    /// The member.
    pub member: MemberId,
    /// Its state vector.
    pub sv: StateVector,
}

/// Awareness states from a `/yjs` member, each with its parsed state
/// (`None` for `null`). The session has checked their size.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwarenessUpdate {
    /// The member whose connection sent them.
    pub member: MemberId,
    /// The entries.
    pub entries: Vec<(AwarenessEntry, Option<Value>)>,
}

/// A `/yjs` member asks for every awareness state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueryAwareness {
    /// The member.
    pub member: MemberId,
}

/// A lagging member drained its backlog: resync it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    /// The member.
    pub member: MemberId,
}

/// Compact the document into the store now (shutdown). Resolves when stored.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

/// The room actor.
pub struct Room {
    id: RoomId,
    config: Arc<Config>,
    store: Arc<dyn DocStore>,
    registry: Registry,
    doc: Doc,
    /// `Some(reason)` when loading failed: joins are refused and the room
    /// is evicted so a later join retries the load.
    broken: Option<String>,
    members: HashMap<MemberId, Member>,
    presence: Presence,
    /// Updates applied since the last broadcast, in order.
    pending: Vec<Bytes>,
    /// Author of every pending update when they share one.
    pending_origin: PendingOrigin,
    /// State vector before the first pending update: what every member that
    /// is not lagging has seen.
    batch_base: Option<StateVector>,
    last_flush: Instant,
    flush_scheduled: bool,
    /// Last broadcast of presence (diff, cursors, awareness).
    last_presence_flush: Instant,
    /// Presence changes wait for the room's presence interval
    /// ([`Room::presence_interval`]), longer than a tick in large rooms.
    presence_deferred: bool,
    /// Upper bound of the encoded document size.
    doc_bytes: usize,
    /// The whole document encoded as one update, for joiners with an empty
    /// state vector, with the snapshot (state vector + delete set) it was
    /// encoded at: a storm of joins encodes a large document once, not once
    /// per client. Stale as soon as the snapshot differs.
    full_state: Option<Box<(yrs::Snapshot, Bytes)>>,
    /// The presence members encoded for native joiners' snapshots, with
    /// their count, at a presence generation: shared by every joiner until
    /// the next diff is taken (the diff then tells them what changed since).
    presence_base: Option<(u64, usize, Bytes)>,
    /// Highest store sequence number known durable.
    durable_seq: u64,
    /// Appends since the last compaction.
    since_compact: u64,
    /// Bytes appended since the last compaction (`compact_bytes` threshold).
    bytes_since_compact: u64,
    /// Appends not yet completed (eviction waits for zero).
    inflight_appends: usize,
    compacting: bool,
    /// Joins processed; compared with the registry's count of joins sent so
    /// that a room is never evicted with a join on its way.
    joins_seen: u64,
    idle_timer: Option<SpawnHandle>,
    typing_timer: Option<SpawnHandle>,
    /// Awareness client ids (Yjs clients' and native members' derived ones).
    awareness: AwarenessTable,
    /// Native members whose awareness view must be rewritten at the next tick.
    native_dirty: std::collections::BTreeSet<MemberId>,
    /// Set by the first `/yjs` member: from then on native members have
    /// awareness entries and the awareness sweep runs. A room only native
    /// clients use keeps no entries and no timer.
    awareness_native: bool,
    /// Last time native members' awareness states were renewed.
    native_renewed: Instant,
    /// Recent events for HTTP subscribers (SSE, poll, NDJSON) and resume.
    events: EventRing,
    /// HTTP subscribers by id; they keep the room live like members do.
    subscribers: HashMap<u64, Subscriber>,
    /// Set by the first HTTP subscriber (SSE, long poll, NDJSON): from then
    /// on the room keeps its event window, so followers can resume. Rooms
    /// never followed skip the per-event JSON/SSE/NDJSON rendering.
    followed: bool,
    /// Next subscriber id.
    next_subscriber: u64,
    /// When the oldest pending update was applied (fan-out latency).
    pending_since: Option<Instant>,
    /// A `document.stored` webhook is waiting for its debounce interval.
    stored_hook_due: bool,
    /// Server counters.
    metrics: Arc<Metrics>,
    /// Webhook queue.
    hooks: Webhooks,
    /// Cluster mode: the bridge to the other nodes.
    cluster: Option<Bridge>,
    /// Random id of this room instance; other nodes track `cluster_seq`
    /// per epoch.
    epoch: u64,
    /// Items published by this room instance so far.
    cluster_seq: u64,
    /// Cluster mode: generation of the room's log in Redis, as last seen.
    log_epoch: Option<String>,
    /// Cluster mode: highest log position applied here (entries up to it
    /// were seen, or are being read back after a gap).
    log_seq: u64,
    /// Cluster mode: a read of missed log entries is in flight.
    catching_up: bool,
    /// Cluster mode: another read is wanted once the one in flight is done.
    catch_up_again: bool,
    /// Cluster mode: log positions seen on the channel while a read was in
    /// flight (the read may end before them).
    seen_while_reading: Vec<(String, u64)>,
    /// Cluster mode: local updates whose append failed (Redis unreachable
    /// for longer than `--redis-append-timeout-ms`); written to the log once
    /// Redis answers again, so other nodes get them.
    unlogged: Vec<Bytes>,
    /// Last `(epoch, seq)` received from each other node, for gap detection.
    remote_seq: HashMap<String, (u64, u64)>,
}

#[derive(Debug, Clone, PartialEq)]
enum PendingOrigin {
    None,
    One(MemberId),
    Many,
}

impl Room {
    /// What a client with state vector `sv` lacks. For an empty state vector
    /// (a fresh joiner) the encoding is made once per document version and
    /// the same bytes are shared by every joiner until the document changes.
    fn diff_from(&mut self, sv: &StateVector) -> Bytes {
        let txn = self.doc.transact();
        if !sv.is_empty() {
            return Bytes::from(txn.encode_diff_v1(sv));
        }
        let snapshot = txn.snapshot();
        if let Some((at, bytes)) = self.full_state.as_deref() {
            if *at == snapshot {
                return bytes.clone();
            }
        }
        let bytes = exact_bytes(txn.encode_diff_v1(sv));
        drop(txn);
        self.full_state = Some(Box::new((snapshot, bytes.clone())));
        bytes
    }

    /// The members for a joiner's presence snapshot, encoded once per
    /// presence generation: a storm of joins does not encode every member
    /// again for every joiner. Changes since it was encoded reach the
    /// joiner in the next diff.
    fn presence_base(&mut self) -> (usize, Bytes) {
        let generation = self.presence.generation();
        if let Some((at, count, bytes)) = &self.presence_base {
            if *at == generation {
                return (*count, bytes.clone());
            }
        }
        let members = self.presence.snapshot();
        let bytes = exact_bytes(encode_members(&members));
        self.presence_base = Some((generation, members.len(), bytes.clone()));
        (members.len(), bytes)
    }

    /// A room that loads `id` from `store` when started.
    pub fn new(
        id: RoomId,
        config: Arc<Config>,
        store: Arc<dyn DocStore>,
        registry: Registry,
    ) -> Self {
        let events = EventRing::new(config.api.event_window, config.api.event_window_bytes);
        let metrics = registry.metrics().clone();
        let hooks = registry.webhooks().clone();
        let cluster = registry.bridge().cloned();
        Room {
            cluster,
            epoch: rand::random(),
            cluster_seq: 0,
            log_epoch: None,
            log_seq: 0,
            catching_up: false,
            catch_up_again: false,
            seen_while_reading: Vec::new(),
            unlogged: Vec::new(),
            remote_seq: HashMap::new(),
            events,
            subscribers: HashMap::new(),
            followed: false,
            next_subscriber: 0,
            pending_since: None,
            stored_hook_due: false,
            metrics,
            hooks,
            id,
            config,
            store,
            registry,
            doc: Doc::new(),
            broken: None,
            members: HashMap::new(),
            presence: Presence::default(),
            pending: Vec::new(),
            pending_origin: PendingOrigin::None,
            batch_base: None,
            last_flush: Instant::now() - Duration::from_secs(1),
            flush_scheduled: false,
            last_presence_flush: Instant::now() - Duration::from_secs(1),
            presence_deferred: false,
            doc_bytes: 0,
            full_state: None,
            presence_base: None,
            durable_seq: 0,
            since_compact: 0,
            bytes_since_compact: 0,
            inflight_appends: 0,
            compacting: false,
            joins_seen: 0,
            idle_timer: None,
            typing_timer: None,
            awareness: AwarenessTable::default(),
            native_dirty: Default::default(),
            awareness_native: false,
            native_renewed: Instant::now(),
        }
    }

    /// Applies stored state; damaged entries are logged with the room id and skipped.
    fn restore(&mut self, stored: crate::store::StoredDoc) {
        for skipped in &stored.skipped {
            tracing::error!(room = %self.id, "skipped damaged stored entry: {skipped}");
        }
        let mut txn = self.doc.transact_mut();
        for (i, bytes) in stored
            .snapshot
            .iter()
            .chain(stored.updates.iter())
            .enumerate()
        {
            let applied = decode_update(bytes).and_then(|u| {
                txn.apply_update(u)
                    .map_err(|e| format!("apply failed: {e}"))
            });
            match applied {
                Ok(()) => self.doc_bytes += bytes.len(),
                Err(e) => {
                    tracing::error!(room = %self.id, entry = i, "skipped unreadable stored update: {e}")
                }
            }
        }
        self.durable_seq = stored.last_seq;
        self.log_seq = stored.last_seq;
        self.log_epoch = stored.epoch;
        self.since_compact = stored.updates.len() as u64;
        self.bytes_since_compact = stored.updates.iter().map(|u| u.len() as u64).sum();
    }

    fn presence_snapshot(&self) -> ServerMessage {
        ServerMessage::Presence {
            room: self.id.to_string(),
            snapshot: true,
            joined: self.presence.snapshot(),
            updated: Vec::new(),
            left: Vec::new(),
        }
    }

    /// Writes a snapshot covering everything durable so far, if worthwhile.
    fn maybe_compact(&mut self, ctx: &mut Context<Self>, force: bool) {
        if self.compacting || self.broken.is_some() || (self.since_compact == 0 && !force) {
            return;
        }
        let limits = &self.config.limits;
        if !force
            && self.since_compact < limits.compact_every
            && self.bytes_since_compact < limits.compact_bytes
        {
            return;
        }
        self.compacting = true;
        let snapshot = exact_bytes(
            self.doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        );
        let size = snapshot.len();
        let upto = self.durable_seq;
        let covered = self.since_compact;
        let covered_bytes = self.bytes_since_compact;
        let bytes_before = self.doc_bytes;
        let fut = self.store.compact(&self.id, snapshot, upto);
        ctx.spawn(fut.into_actor(self).map(move |res, room, _| {
            room.compacting = false;
            match res {
                Ok(()) => {
                    room.since_compact = room.since_compact.saturating_sub(covered);
                    room.bytes_since_compact =
                        room.bytes_since_compact.saturating_sub(covered_bytes);
                    // The bound restarts from the snapshot, plus what was
                    // applied while it was being written.
                    room.doc_bytes = size + room.doc_bytes.saturating_sub(bytes_before);
                }
                Err(e) => tracing::error!(room = %room.id, "compaction failed: {e}"),
            }
        }));
    }

    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        let idle = if self.broken.is_some() {
            Duration::ZERO
        } else {
            self.config.limits.room_idle()
        };
        self.idle_timer = Some(ctx.run_later(idle, |room, ctx| {
            room.idle_timer = None;
            room.try_evict(ctx);
        }));
    }

    /// Evicts the room if it is still empty: compacts it into the store,
    /// then removes it from the registry (unless a join is on its way).
    fn try_evict(&mut self, ctx: &mut Context<Self>) {
        if !self.is_idle() {
            return;
        }
        if self.inflight_appends > 0 || self.compacting {
            // Wait for storage to settle, then look again.
            self.idle_timer = Some(ctx.run_later(Duration::from_millis(20), |room, ctx| {
                room.idle_timer = None;
                room.try_evict(ctx);
            }));
            return;
        }
        if self.since_compact > 0 && self.broken.is_none() {
            self.maybe_compact(ctx, true);
            return self.try_evict(ctx);
        }
        if self.registry.remove_if_idle(&self.id, self.joins_seen) {
            tracing::debug!(room = %self.id, "room evicted");
            ctx.stop();
        }
    }

    fn schedule_typing_sweep(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.typing_timer.take() {
            ctx.cancel_future(h);
        }
        let Some(deadline) = self.presence.next_typing_deadline() else {
            return;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        self.typing_timer = Some(ctx.run_later(wait, |room, ctx| {
            room.typing_timer = None;
            for id in room.presence.expire_typing(Instant::now()) {
                room.broadcast_typing(&id, false);
                room.native_dirty.insert(id);
            }
            if !room.native_dirty.is_empty() {
                room.schedule_flush(ctx);
            }
            room.schedule_typing_sweep(ctx);
        }));
    }

    fn check_presence(&self, state: &Value) -> Result<(), (ErrorCode, String)> {
        if !state.is_object() {
            return Err((ErrorCode::BadMessage, "presence state must be a map".into()));
        }
        let size = serde_json::to_vec(state).map_or(usize::MAX, |v| v.len());
        if size > self.config.limits.max_presence_bytes {
            let max = self.config.limits.max_presence_bytes;
            return Err((
                ErrorCode::PresenceTooLarge,
                format!("presence state is {size} bytes, over max_presence_bytes ({max})"),
            ));
        }
        Ok(())
    }
}

/// Decodes a Yjs v1 update once [`crate::protocol::yupdate::check_update_v1`]
/// has walked it (so yrs reserves nothing the bytes do not hold), turning a
/// decoder panic into an error.
fn decode_update(bytes: &[u8]) -> Result<Update, String> {
    // yrs reserves memory from counts in the input: walk it first.
    crate::protocol::yupdate::check_update_v1(bytes)
        .map_err(|e| format!("not a Yjs v1 update: {e}"))?;
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(e)) => Err(format!("not a Yjs v1 update: {e}")),
        Err(_) => Err("not a Yjs v1 update (decoder panicked)".into()),
    }
}

/// Checks that bytes are an encoded Yjs relative position.
fn valid_position(bytes: &Option<Vec<u8>>) -> bool {
    match bytes {
        None => true,
        Some(b) => matches!(catch_unwind(|| StickyIndex::decode_v1(b)), Ok(Ok(_))),
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Nothing else is handled until the stored document is loaded.
        let load = self.store.load(&self.id);
        ctx.wait(load.into_actor(self).map(|res, room, ctx| {
            match res {
                Ok(stored) => room.restore(stored),
                Err(e) => {
                    tracing::error!(room = %room.id, "loading room failed: {e}");
                    room.broken = Some(e.to_string());
                }
            }
            room.arm_idle_timer(ctx);
            if room.broken.is_none() {
                if let Some(bridge) = &room.cluster {
                    // The bridge answers with `Resubscribed` once subscribed:
                    // the room then says `Hello` to catch up.
                    bridge.subscribe(&room.id, room.epoch, &ctx.address());
                }
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(bridge) = &self.cluster {
            bridge.unsubscribe(&self.id, self.epoch);
        }
    }
}

impl Handler<Join> for Room {
    type Result = ();

    fn handle(&mut self, msg: Join, ctx: &mut Context<Self>) {
        self.joins_seen += 1;
        let link = msg.member;
        if let Some(reason) = &self.broken {
            let reason = format!("room could not be loaded: {reason}");
            return self.refuse(&link, ErrorCode::RoomUnavailable, reason, msg.rid);
        }
        if self.members.contains_key(&link.id) {
            return self.error_to(&link, ErrorCode::AlreadyJoined, "already joined", msg.rid);
        }
        if link.protocol == Protocol::Yjs {
            return self.join_yjs(link, ctx);
        }
        let decode_sv = |b: &[u8]| match crate::protocol::yupdate::check_state_vector_v1(b) {
            Ok(()) => StateVector::decode_v1(b).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let sv = match msg.sv.as_deref().map(decode_sv) {
            None => StateVector::default(),
            Some(Ok(sv)) => sv,
            Some(Err(e)) => {
                return self.error_to(
                    &link,
                    ErrorCode::BadUpdate,
                    format!("bad state vector: {e}"),
                    msg.rid,
                )
            }
        };
        let state = msg
            .presence
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Err((code, e)) = self.check_presence(&state) {
            return self.refuse(&link, code, e, msg.rid);
        }
        // Deliver pending updates first: the diff below includes them, and
        // the new member must not receive them twice.
        self.flush();
        let diff = self.diff_from(&sv);
        let server_sv = self.doc.transact().state_vector().encode_v1();
        let member = Member {
            link: link.clone(),
            resync_from: None,
            presence_stale: false,
        };
        // The diff is not copied into the frame: joiners share it.
        let (head, tail) = encode_synced_parts(&self.id, diff.len(), &server_sv, msg.rid);
        let synced = Frame::binary_parts(&head, diff, &tail);
        send_frame(&member.link, &synced, Class::Control);
        // The snapshot: the members as of this presence generation (shared
        // bytes), then the joiner.
        let (count, base) = self.presence_base();
        self.presence
            .join(link.id.clone(), link.user.clone(), state);
        self.native_dirty.insert(link.id.clone());
        if let Some(own) = self.presence.view(&link.id) {
            let (head, tail) = encode_snapshot_parts(&self.id, count, &own);
            let snapshot = Frame::binary_parts(&head, base, &tail);
            send_frame(&member.link, &snapshot, Class::Control);
        }
        let cursors = self.presence.cursors();
        if !cursors.is_empty() {
            let msg = ServerMessage::Cursor {
                room: self.id.to_string(),
                cursors,
            };
            self.send_to(&member, &msg, Class::Presence);
        }
        self.members.insert(link.id.clone(), member);
        self.member_added(&link);
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        if self.members.remove(&msg.member).is_none() {
            return;
        }
        self.presence.leave(&msg.member);
        self.native_dirty.remove(&msg.member);
        self.awareness.remove_owner(&msg.member);
        self.schedule_flush(ctx);
        self.hooks.emit(
            HookKind::MemberLeft,
            &self.id,
            serde_json::json!({ "member": msg.member.to_string() }),
        );
        if self.members.is_empty() {
            self.hooks
                .emit(HookKind::RoomVacated, &self.id, serde_json::json!({}));
        }
        if self.is_idle() {
            self.arm_idle_timer(ctx);
        }
    }
}

impl Handler<ClientUpdate> for Room {
    type Result = ();

    fn handle(&mut self, msg: ClientUpdate, ctx: &mut Context<Self>) {
        let Some(member) = self.members.get(&msg.member) else {
            return;
        };
        let link = member.link.clone();
        let applied = match self.apply_update(&msg.data, Some(&link.id), ctx) {
            Ok(applied) => applied,
            Err((code, e)) => return self.error_to(&link, code, e, msg.rid),
        };
        let rid = msg.rid;
        let ack = move |room: &Room| {
            if let Some(rid) = rid {
                let ack = ServerMessage::Ack {
                    room: room.id.to_string(),
                    rid,
                };
                if let Some(frame) = encode(link.protocol, &ack) {
                    send_frame(&link, &frame, Class::Control);
                }
            }
        };
        if !applied {
            // Clients send one after every sync when they had nothing new:
            // acknowledge it without storing or broadcasting anything.
            return ack(self);
        }
        let link = self.members.get(&msg.member).map(|m| m.link.clone());
        ctx.spawn(
            self.append_update(msg.data)
                .map(move |res, room, _| match res {
                    Ok(()) => ack(room),
                    Err(_) => {
                        if let Some(link) = &link {
                            room.error_to(
                                link,
                                ErrorCode::StoreFailed,
                                "update not stored; resend it",
                                rid,
                            );
                        }
                    }
                }),
        );
    }
}

impl Room {
    /// Checks and applies an update from `author` (`None`: the HTTP API or
    /// another node) in one transaction and queues it for the next
    /// broadcast. `Ok(false)` for an empty update (nothing to store or
    /// send). A refused update leaves the document as it was.
    fn apply_update(
        &mut self,
        data: &Bytes,
        author: Option<&MemberId>,
        ctx: &mut Context<Self>,
    ) -> Result<bool, (ErrorCode, String)> {
        let max = self.config.limits.max_doc_bytes;
        if self.doc_bytes + data.len() > max {
            return Err((
                ErrorCode::DocTooLarge,
                format!("document would exceed max_doc_bytes ({max})"),
            ));
        }
        self.apply_accepted(data, author, ctx)
    }

    /// [`Room::apply_update`] without the document size limit, for updates
    /// already accepted elsewhere (entries of the shared log, written by
    /// another node): refusing one would make this copy diverge.
    fn apply_accepted(
        &mut self,
        data: &Bytes,
        author: Option<&MemberId>,
        ctx: &mut Context<Self>,
    ) -> Result<bool, (ErrorCode, String)> {
        let update = decode_update(data).map_err(|e| (ErrorCode::BadUpdate, e))?;
        if update.is_empty() {
            return Ok(false);
        }
        let base = self
            .batch_base
            .is_none()
            .then(|| self.doc.transact().state_vector());
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = self.doc.transact_mut();
            txn.apply_update(update)
        }));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err((ErrorCode::BadUpdate, format!("update refused: {e}"))),
            Err(_) => {
                tracing::error!(room = %self.id, "applying an update panicked");
                return Err((ErrorCode::BadUpdate, "update could not be applied".into()));
            }
        }
        if let Some(base) = base {
            self.batch_base = Some(base);
        }
        // Stale now: freed at once rather than held until the next joiner.
        self.full_state = None;
        self.doc_bytes += data.len();
        self.pending.push(data.clone());
        self.pending_since.get_or_insert_with(Instant::now);
        self.pending_origin = match (&self.pending_origin, author) {
            (PendingOrigin::None, Some(a)) => PendingOrigin::One(a.clone()),
            (PendingOrigin::One(id), Some(a)) if id == a => PendingOrigin::One(id.clone()),
            _ => PendingOrigin::Many,
        };
        self.schedule_flush(ctx);
        Ok(true)
    }

    /// Appends an applied update to the store; resolves once it is durable
    /// (`Err` with a reason when the store failed).
    fn append_update(
        &mut self,
        data: Bytes,
    ) -> impl ActorFuture<Self, Output = Result<(), String>> + 'static {
        self.inflight_appends += 1;
        let len = data.len() as u64;
        let started = Instant::now();
        let unlogged = self.cluster.is_some().then(|| data.clone());
        let append = self.store.append(&self.id, data);
        append.into_actor(self).map(move |res, room, ctx| {
            room.inflight_appends -= 1;
            room.metrics.store_latency.observe(started.elapsed());
            match res {
                Ok(seq) => {
                    room.durable_seq = room.durable_seq.max(seq);
                    room.since_compact += 1;
                    room.bytes_since_compact += len;
                    room.maybe_compact(ctx, false);
                    room.schedule_stored_hook(ctx);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(room = %room.id, "append failed: {e}");
                    room.metrics.error(ErrorCode::StoreFailed.as_str());
                    // Applied here but not in the shared log: written
                    // there once Redis answers again.
                    room.unlogged.extend(unlogged);
                    Err(e.to_string())
                }
            }
        })
    }

    /// Sends one `document.stored` webhook per debounce interval.
    fn schedule_stored_hook(&mut self, ctx: &mut Context<Self>) {
        if self.stored_hook_due {
            return;
        }
        self.stored_hook_due = true;
        let wait = Duration::from_millis(self.config.api.webhook_debounce_ms);
        ctx.run_later(wait, |room, _| {
            room.stored_hook_due = false;
            room.hooks.emit(
                HookKind::DocumentStored,
                &room.id,
                serde_json::json!({ "seq": room.durable_seq, "doc_bytes": room.doc_bytes }),
            );
        });
    }

    /// Webhooks for a member that was just added.
    fn member_added(&self, link: &MemberLink) {
        if self.members.len() == 1 {
            self.hooks
                .emit(HookKind::RoomOccupied, &self.id, serde_json::json!({}));
        }
        self.hooks.emit(
            HookKind::MemberJoined,
            &self.id,
            serde_json::json!({ "member": link.id.to_string(), "user": link.user.as_deref() }),
        );
    }

    /// No members and no subscribers: the room may be evicted.
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.subscribers.is_empty()
    }

    /// Records an event in the window and offers it to every subscriber;
    /// subscribers that are gone or behind are dropped. A room nobody has
    /// followed over HTTP records nothing: `body` is not even built.
    fn publish(&mut self, kind: &'static str, body: impl FnOnce() -> Value) {
        if !self.followed {
            return;
        }
        let event = self.events.push(kind, body());
        if self.subscribers.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        for (id, sub) in &self.subscribers {
            if sub.offer(&event) {
                self.metrics.sent(event.json.len());
            } else {
                gone.push(*id);
            }
        }
        for id in gone {
            if let Some(sub) = self.subscribers.remove(&id) {
                self.metrics
                    .subscribers
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                if sub.lagged.load(std::sync::atomic::Ordering::Acquire) {
                    self.metrics
                        .subscribers_lagged
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }
}

impl Handler<SetPresence> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetPresence, ctx: &mut Context<Self>) {
        if let Err((code, e)) = self.check_presence(&msg.state) {
            return self.error_to_member(&msg.member, code, e, msg.rid);
        }
        if self.presence.set_state(&msg.member, msg.state) {
            self.native_dirty.insert(msg.member);
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<SetCursor> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetCursor, ctx: &mut Context<Self>) {
        if !valid_position(&msg.anchor) || !valid_position(&msg.head) {
            return self.error_to_member(
                &msg.member,
                ErrorCode::BadUpdate,
                "cursor anchor/head must be encoded Yjs relative positions",
                msg.rid,
            );
        }
        self.presence.set_cursor(&msg.member, msg.anchor, msg.head);
        if self.presence.contains(&msg.member) {
            self.native_dirty.insert(msg.member);
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<SetTyping> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetTyping, ctx: &mut Context<Self>) {
        let until = msg
            .on
            .then(|| Instant::now() + self.config.limits.typing_ttl());
        if let Some(on) = self.presence.set_typing(&msg.member, until) {
            self.broadcast_typing(&msg.member, on);
            self.native_dirty.insert(msg.member.clone());
            self.schedule_flush(ctx);
        }
        self.schedule_typing_sweep(ctx);
    }
}

impl Handler<Broadcast> for Room {
    type Result = ();

    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        let size = msg.name.len() + serde_json::to_vec(&msg.data).map_or(usize::MAX, |v| v.len());
        if size > self.config.limits.max_event_bytes {
            let max = self.config.limits.max_event_bytes;
            return self.error_to_member(
                &msg.member,
                ErrorCode::EventTooLarge,
                format!("event is {size} bytes, over max_event_bytes ({max})"),
                msg.rid,
            );
        }
        if !self.members.contains_key(&msg.member) {
            return;
        }
        if self.cluster.is_some() {
            self.cluster_publish(Item::Event {
                from: msg.member.to_string(),
                name: msg.name.clone(),
                data: msg.data.clone(),
            });
        }
        self.publish("event", || {
            serde_json::json!({ "from": msg.member.to_string(), "name": msg.name, "data": msg.data })
        });
        let out = ServerMessage::Event {
            room: self.id.to_string(),
            from: msg.member.to_string(),
            name: msg.name,
            data: msg.data,
        };
        self.fan_out(&out, Class::Ephemeral, Some(&msg.member));
    }
}

impl Handler<Resync> for Room {
    type Result = ();

    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        let Some(member) = self.members.get_mut(&msg.member) else {
            return;
        };
        let from = member.resync_from.take();
        let presence = std::mem::take(&mut member.presence_stale);
        let Some(member) = self.members.get(&msg.member) else {
            return;
        };
        let link = &member.link;
        if from.is_some() || presence {
            self.metrics
                .resyncs
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(sv) = from {
            let diff = self.doc.transact().encode_diff_v1(&sv);
            tracing::debug!(room = %self.id, member = %msg.member, "resyncing lagging member");
            match link.protocol {
                Protocol::Native => {
                    let update = ServerMessage::Update {
                        room: self.id.to_string(),
                        data: Bin(diff),
                        origin: None,
                    };
                    self.send_to(member, &update, Class::Control);
                }
                Protocol::Yjs => {
                    let frame = Frame::binary(&yjs::sync_step2(diff));
                    send_frame(link, &frame, Class::Control);
                }
            }
        }
        if presence {
            match link.protocol {
                Protocol::Native => {
                    self.send_to(member, &self.presence_snapshot(), Class::Control);
                    let cursors = self.presence.cursors();
                    if !cursors.is_empty() {
                        let msg = ServerMessage::Cursor {
                            room: self.id.to_string(),
                            cursors,
                        };
                        self.send_to(member, &msg, Class::Control);
                    }
                }
                Protocol::Yjs => {
                    if let Some(frame) = self.awareness.snapshot_frame() {
                        send_frame(link, &Frame::binary(&frame), Class::Control);
                    }
                }
            }
        }
    }
}

impl Handler<Flush> for Room {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Flush, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        let snapshot = (self.since_compact > 0 && self.broken.is_none()).then(|| {
            exact_bytes(
                self.doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )
        });
        let store = self.store.clone();
        let id = self.id.clone();
        let upto = self.durable_seq;
        Box::pin(
            async move {
                if let Some(snapshot) = snapshot {
                    if let Err(e) = store.compact(&id, snapshot, upto).await {
                        tracing::error!(room = %id, "final compaction failed: {e}");
                    }
                }
            }
            .into_actor(self),
        )
    }
}

impl Room {}
