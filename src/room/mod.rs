//! The room actor: one Yjs document, its presence, its members.
//!
//! Path of an update: decode and apply in one transaction (a bad update is
//! refused and the document stays as it was) → append to the store, `ack`
//! to the sender once durable → sent at once if the room's last update
//! broadcast has been written, else merged with what arrives until it is,
//! encoded once per protocol, and offered to every other member's outbox.
//! A member too far behind gets no deltas; once it drains it is resynced
//! from the state vector the room had when it started dropping.
//!
//! [`Room`] is the actor and its message handlers; it owns parts that keep
//! their own state behind small APIs:
//!
//! - `document.rs`: the `yrs::Doc`, its size bound, the cached full state;
//! - `persist.rs`: appends, acknowledgements, compaction, the stored hook;
//! - `members.rs`: the member table and delivery to members (one frame
//!   offered to many outboxes, errors, who is owed a resync);
//! - `fanout.rs`: when updates go out (adaptive merging), the presence
//!   interval (the tick), and the resync of a member that drained;
//! - `presence.rs`: presence, cursor and typing handlers; the map itself is
//!   [`crate::presence`];
//! - `yjs_bridge.rs` + [`awareness`]: the `/yjs` side (sync step 2, the
//!   awareness table and its mapping to native presence);
//! - [`events`]: the event window that HTTP followers stream from;
//! - `cluster.rs`: cluster mode (log positions, shared items, gaps);
//! - [`api`]: what the HTTP API asks of a room;
//! - [`history`]: versions (automatic, named, restores) for the API and
//!   the native protocol; [`restore`]: the pure part of a restore;
//! - [`messages`]: what sessions send a room; [`registry`]: finds or
//!   starts rooms on a pool of arbiters;
//! - `supervise.rs`: a room that panics is dropped, its members are told
//!   to reconnect, and the next request starts it afresh from the store.
//!
//! Rooms are evicted after `room_idle_ms` without members or followers
//! (their document is compacted into the store first, so a later join loads
//! it back), or earlier, longest-idle first, when the registry is full
//! (`max_live_rooms`, [`EvictNow`]).

pub mod api;
pub mod awareness;
mod cluster;
mod document;
pub mod events;
mod fanout;
pub mod history;
mod members;
pub mod messages;
mod persist;
pub mod presence;
pub mod registry;
pub mod restore;
mod supervise;
mod yjs_bridge;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use yrs::StateVector;

pub use crate::ids::RoomId;
pub use messages::{
    AwarenessUpdate, Broadcast, ClientUpdate, Join, Leave, ListPresence, MemberLink, PresencePage,
    Protocol, QueryAwareness, Resync, SetCursor, SetPresence, SetTyping, StoreNow, SyncStep1,
};
pub use registry::{EvictNow, Registry, RoomServices, RoomsFull};
pub use supervise::Incarnation;

use crate::config::{Config, FaultAt};
use crate::ids::MemberId;
use crate::metrics::Metrics;
use crate::outbox::{Class, Frame};
use crate::presence::Presence;
use crate::protocol::native::{encode_snapshot_parts, encode_synced_parts, ServerMessage};
use crate::protocol::ErrorCode;
use crate::webhook::{HookKind, Webhooks};
use cluster::ClusterState;
use document::{decode_state_vector, Applied, ApplyError, Document};
use events::EventWindow;
use fanout::Fanout;
use members::{encode, Members};
use persist::Persistence;
use presence::PresenceBase;
use yjs_bridge::YjsPresence;

/// The room actor.
pub struct Room {
    id: RoomId,
    config: Arc<Config>,
    /// Where the room removes itself when evicted.
    registry: Registry,
    /// `Some(reason)` when loading failed: joins are refused and the room
    /// is evicted so a later join retries the load.
    broken: Option<String>,
    document: Document,
    persist: Persistence,
    members: Members,
    presence: Presence,
    /// The joiners' shared encoding of the presence members.
    presence_base: PresenceBase,
    awareness: YjsPresence,
    fanout: Fanout,
    /// HTTP followers (SSE, long poll, NDJSON) and their event window.
    events: EventWindow,
    /// Cluster mode only.
    cluster: Option<Box<ClusterState>>,
    /// Version history: authors and timers of automatic versions.
    history: history::History,
    metrics: Arc<Metrics>,
    hooks: Webhooks,
    /// Joins (and counted API requests) handled; compared with the
    /// registry's count of those sent, so that a room is never evicted with
    /// one on its way.
    joins_seen: u64,
    idle_timer: Option<SpawnHandle>,
    typing_timer: Option<SpawnHandle>,
    /// Which start of this room this is (see [`Registry::enter`]).
    incarnation: u64,
    /// Where appends run: they outlive the actor if it dies, and a
    /// successor waits for them before it loads.
    writes: tokio_util::task::TaskTracker,
    /// The appends of the dead room this one replaces: loading waits for them.
    predecessor: Option<tokio_util::task::TaskTracker>,
    /// Set by `stopped`: dropped without it, the room died (a panic).
    stopped: bool,
}

impl Room {
    /// A room that loads `id` from the store when started.
    pub fn new(id: RoomId, services: RoomServices, registry: Registry, life: Incarnation) -> Self {
        let RoomServices {
            config,
            store,
            metrics,
            hooks,
            bridge,
        } = services;
        let api = &config.api;
        let events = EventWindow::new(
            api.event_window,
            api.event_window_bytes,
            api.subscriber_buffer,
            metrics.clone(),
        );
        Room {
            cluster: bridge.map(|b| Box::new(ClusterState::new(b))),
            history: history::History::default(),
            hooks,
            members: Members::new(id.clone(), metrics.clone()),
            persist: Persistence::new(
                id.clone(),
                store,
                life.writes.clone(),
                metrics.clone(),
                config.store_retry(),
            ),
            document: Document::new(),
            presence: Presence::new(config.limits.presence_list_max_members),
            presence_base: PresenceBase::default(),
            awareness: YjsPresence::new(config.limits.presence_list_max_members),
            fanout: Fanout::new(),
            events,
            metrics,
            id,
            config,
            registry,
            broken: None,
            joins_seen: 0,
            idle_timer: None,
            typing_timer: None,
            incarnation: life.number,
            writes: life.writes,
            predecessor: life.predecessor,
            stopped: false,
        }
    }

    /// Checks and applies an update from `author` (`None`: the HTTP API) in
    /// one transaction and queues it for the next broadcast. `Ok(false)` for
    /// an empty update (nothing to store or send). A refused update leaves
    /// the document as it was.
    fn apply_update(
        &mut self,
        data: &Bytes,
        author: Option<&MemberId>,
        ctx: &mut Context<Self>,
    ) -> Result<bool, (ErrorCode, String)> {
        let max = self.config.limits.max_doc_bytes;
        self.apply(data, author, Some(max), ctx)
    }

    /// [`Room::apply_update`] without the document size limit, for updates
    /// already accepted elsewhere (entries of the shared log, written by
    /// another node): refusing one would make this copy diverge.
    fn apply_accepted(
        &mut self,
        data: &Bytes,
        author: Option<&MemberId>,
        ctx: &mut Context<Self>,
    ) -> Result<bool, String> {
        self.apply(data, author, None, ctx).map_err(|(_, e)| e)
    }

    fn apply(
        &mut self,
        data: &Bytes,
        author: Option<&MemberId>,
        max: Option<usize>,
        ctx: &mut Context<Self>,
    ) -> Result<bool, (ErrorCode, String)> {
        let base = self
            .fanout
            .needs_base()
            .then(|| self.document.state_vector());
        let (registry, id) = (&self.registry, &self.id);
        let mut fault = None;
        let applied = self.document.apply(data, max, || {
            fault = registry.fault_due(id);
            if fault == Some(FaultAt::Apply) {
                supervise::fault_panic(id, FaultAt::Apply);
            }
        });
        if fault == Some(FaultAt::Handler) {
            supervise::fault_panic(id, FaultAt::Handler);
        }
        match applied {
            Ok(Applied::Nothing) => Ok(false),
            Ok(Applied::Changed) => {
                self.fanout.push(data.clone(), author, base);
                self.schedule_flush(ctx);
                self.version_edited(author, ctx);
                Ok(true)
            }
            Err(ApplyError::TooLarge(max)) => Err((
                ErrorCode::DocTooLarge,
                format!("document would exceed max_doc_bytes ({max})"),
            )),
            Err(ApplyError::Refused(e)) => Err((ErrorCode::BadUpdate, e)),
            Err(ApplyError::MissingDependencies(e)) => Err((ErrorCode::MissingDependencies, e)),
        }
    }

    /// A member was added: the idle timer stops, webhooks are told.
    fn member_added(&mut self, link: MemberLink, ctx: &mut Context<Self>) {
        let (id, user) = (link.id.to_string(), link.user.clone());
        self.members.insert(link);
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        if self.members.len() == 1 {
            self.hooks
                .emit(HookKind::RoomOccupied, &self.id, serde_json::json!({}));
        }
        self.hooks.emit(
            HookKind::MemberJoined,
            &self.id,
            serde_json::json!({ "member": id, "user": user.as_deref() }),
        );
    }

    /// No members and no followers: the room may be evicted.
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.events.is_empty()
    }

    /// Counts a message sent through `Registry::request` (see [`api`]).
    fn entered(&mut self, ctx: &mut Context<Self>) {
        self.joins_seen += 1;
        if self.is_idle() {
            self.arm_idle_timer(ctx);
        }
    }

    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        self.registry.mark_idle(&self.id, self.joins_seen);
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

    /// Evicts the room if it is still idle: compacts it into the store,
    /// then removes it from the registry (unless a join is on its way).
    fn try_evict(&mut self, ctx: &mut Context<Self>) {
        if !self.is_idle() {
            return;
        }
        if !self.persist.settled() || self.version_before_eviction(ctx) {
            // Wait for storage (and the version of the last edits) to
            // settle, then look again.
            self.idle_timer = Some(ctx.run_later(Duration::from_millis(20), |room, ctx| {
                room.idle_timer = None;
                room.try_evict(ctx);
            }));
            return;
        }
        if self.persist.needs_storing() && self.broken.is_none() {
            // Never evicted holding what is not stored (kept updates): a
            // snapshot stores it, tried again after the backoff while the
            // store fails.
            if let Some(wait) = self.persist.wait_after_failure() {
                self.idle_timer = Some(ctx.run_later(wait, |room, ctx| {
                    room.idle_timer = None;
                    room.try_evict(ctx);
                }));
                return;
            }
            self.maybe_compact(ctx, true);
            return self.try_evict(ctx);
        }
        if self.registry.remove_if_idle(&self.id, self.joins_seen) {
            tracing::debug!(room = %self.id, "room evicted");
            ctx.stop();
        }
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Nothing else is handled until the stored document is loaded, and
        // a room replacing one that died loads once the dead one's appends
        // have landed (see `supervise`).
        self.fanout
            .set_notify(ctx.address().downgrade().recipient());
        let load = self.persist.load(&self.id, self.predecessor.take());
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
                room.cluster_start(ctx);
            }
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stopped = true;
        self.cluster_stop();
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if !self.stopped {
            self.died();
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
            return self
                .members
                .refuse(&link, ErrorCode::RoomUnavailable, reason, msg.rid);
        }
        if self.members.contains(&link.id) {
            return self.members.error_to(
                &link,
                ErrorCode::AlreadyJoined,
                "already joined",
                msg.rid,
            );
        }
        if link.protocol.speaks_yjs() {
            return self.join_yjs(link, ctx);
        }
        let sv = match msg.sv.as_deref().map(decode_state_vector) {
            None => StateVector::default(),
            Some(Ok(sv)) => sv,
            Some(Err(e)) => {
                let e = format!("bad state vector: {e}");
                return self
                    .members
                    .error_to(&link, ErrorCode::BadUpdate, e, msg.rid);
            }
        };
        let state = msg
            .presence
            .unwrap_or_else(|| Value::Object(Default::default()));
        if let Err((code, e)) = self.check_presence(&state) {
            return self.members.refuse(&link, code, e, msg.rid);
        }
        // Deliver pending updates first: the diff below includes them, and
        // the new member must not receive them twice.
        self.flush();
        let diff = self.document.diff_from(&sv);
        let server_sv = self.document.state_vector_v1();
        // The diff is not copied into the frame: joiners share it.
        let (head, tail) = encode_synced_parts(&self.id, diff.len(), &server_sv, msg.rid);
        let synced = Frame::binary_parts(&head, diff, &tail);
        self.members.send_frame(&link, &synced, Class::Control);
        // The snapshot: the members listed as of this presence generation
        // (shared bytes), then the joiner; the total when that is not all.
        let (count, base) = self.presence_base();
        self.presence
            .join(link.id.clone(), link.user.clone(), state);
        self.awareness.touch(link.id.clone());
        if let Some(own) = self.presence.view(&link.id) {
            let total = self.presence_total();
            let (head, tail) = encode_snapshot_parts(&self.id, count, &own, total);
            let snapshot = Frame::binary_parts(&head, base, &tail);
            self.members.send_frame(&link, &snapshot, Class::Control);
        }
        if let Some(cursors) = self.joiner_cursors() {
            self.members.send_frame(&link, &cursors, Class::Presence);
        }
        self.member_added(link, ctx);
        self.schedule_flush(ctx);
    }
}

impl Handler<Leave> for Room {
    type Result = ();

    fn handle(&mut self, msg: Leave, ctx: &mut Context<Self>) {
        if !self.members.remove(&msg.member) {
            return;
        }
        self.presence.leave(&msg.member);
        self.awareness.forget(&msg.member);
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
        let Some(link) = self.members.link(&msg.member).cloned() else {
            return;
        };
        let applied = match self.apply_update(&msg.data, Some(&link.id), ctx) {
            Ok(applied) => applied,
            // A provider flushing edits that follow updates this room never
            // got (it reconnected to a server that lost the document): ask
            // for them, for this document only (see `ask_for_missing`).
            Err((ErrorCode::MissingDependencies, e)) if link.protocol.speaks_yjs() => {
                let sv = self.document.state_vector();
                return self.members.ask_for_missing(&link, &e, &sv);
            }
            Err((code, e)) => return self.members.error_to(&link, code, e, msg.rid),
        };
        let rid = msg.rid;
        let ack = move |room: &Room, link: &MemberLink| {
            if let Some(rid) = rid {
                let ack = ServerMessage::Ack {
                    room: room.id.to_string(),
                    rid,
                };
                if let Some(frame) = encode(link.protocol, &ack) {
                    room.members.send_frame(link, &frame, Class::Control);
                }
            }
        };
        if !applied {
            // Clients send one after every sync when they had nothing new:
            // acknowledge it without storing or broadcasting anything.
            return ack(self, &link);
        }
        ctx.spawn(
            self.append_update(msg.data, link.user.as_deref())
                .map(move |res, room, _| match res {
                    Ok(()) => ack(room, &link),
                    Err(_) => room.members.error_to(
                        &link,
                        ErrorCode::StoreFailed,
                        "update not stored; resend it",
                        rid,
                    ),
                }),
        );
    }
}

impl Handler<EvictNow> for Room {
    type Result = ();

    fn handle(&mut self, _: EvictNow, ctx: &mut Context<Self>) {
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        // Not evicted when a member, follower or request is on its way:
        // its handler re-arms the idle timer.
        self.try_evict(ctx);
    }
}

#[cfg(test)]
mod tests {
    /// A room runs as one task on its arbiter: the actor's future plus
    /// tokio's task header (~100 B) in one allocation. Past 2 KiB it lands
    /// in jemalloc's next size class (2.5 KiB): +0.45 KB per room measured
    /// (`rooms --rooms 5000`, 11.1 → 11.6 KB) when the awareness table
    /// grew inline. Rarely used state belongs behind a `Box` or `Option`.
    #[test]
    fn a_rooms_task_stays_within_2_kib() {
        let future =
            std::mem::size_of::<actix::dev::ContextFut<super::Room, actix::Context<super::Room>>>();
        assert!(future <= 1850, "the room's actor future is {future} B");
    }
}
