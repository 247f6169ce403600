//! The room's version history: automatic versions after edits, named
//! versions, views, restores and deletions (stored through
//! [`crate::store::history`]), for the REST API and the native protocol
//! alike ([`VersionRequest`]).
//!
//! - **Automatic versions**: every change to the document (from any
//!   member, the API or another node) notes its author; once the document
//!   has been quiet `--version-idle-ms` after edits, or `--version-every-ms`
//!   after the first edit since the last version, a version is made — unless
//!   the latest stored version already covers this document's state vector
//!   (another node made it: no duplicates in a cluster).
//! - **Making a version**: read the latest version (its state vector, and
//!   its delete set: kept from when this room made it, else rebuilt once),
//!   encode what changed since (structs past its state vector, deletions
//!   past its delete set) (or the whole document, every
//!   `--version-snapshot-every` versions or when the deltas outweigh the
//!   document), add it if the latest is still the one read (else read
//!   again: another node added one), prune by retention, then tell every
//!   member (`versions_changed`, on every node).
//! - **Restore**: rebuild the version off the room's thread, make the live
//!   document's roots equal its roots in one transaction
//!   ([`super::restore`]), and send that update through the room as any
//!   client's (stored, fanned out to every protocol, published to other
//!   nodes); then a version of kind `restore` is made.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{IdSet, ReadTxn, StateVector, Transact};

use super::api::RoomError;
use super::document::doc_json;
use super::Room;
use crate::ids::MemberId;
use crate::outbox::Class;
use crate::protocol::native::{ServerMessage, VersionAuthorView, VersionView};
use crate::protocol::ErrorCode;
use crate::store::history::{
    Added, NewVersion, VersionAuthor, VersionHead, VersionKind, VersionMeta, VersionOp, VersionOut,
    VersionPage,
};

/// Most versions one list returns.
pub const MAX_VERSIONS_PAGE: usize = 200;
/// Versions one list returns when the client does not say.
pub const DEFAULT_VERSIONS_PAGE: usize = 50;
/// Tries to add a version when other nodes keep adding theirs first.
const ADD_TRIES: u32 = 4;

/// The room's history state.
#[derive(Default)]
pub(super) struct History {
    /// Users who changed the document since the last version, with their
    /// display names when known.
    authors: BTreeMap<String, Option<String>>,
    /// Changes applied since the last version was made (or found covered).
    edits: u64,
    /// When the last change was applied.
    last_edit: Option<Instant>,
    /// When the first change after the last version was applied.
    first_edit: Option<Instant>,
    /// The automatic-version timer is armed.
    timer: Option<SpawnHandle>,
    /// An automatic version is being made.
    auto_busy: bool,
    /// Permits to rebuild a version (`--max-version-rebuilds`), made on
    /// first use.
    rebuilds: Option<std::sync::Arc<tokio::sync::Semaphore>>,
    /// Eviction asked for the automatic version of the last edits (once
    /// per edit: a failing store does not keep the room in memory).
    flush_tried: bool,
    /// The delete set of the latest version, by id (made here, or rebuilt
    /// from the store once): the next delta holds only deletions past it.
    head_ds: Option<(u64, IdSet)>,
}

/// What a client asks of a room's history.
#[derive(Debug, Clone)]
pub enum VersionAsk {
    /// A page of versions, newest first.
    List {
        /// Only versions older than this id.
        before: Option<u64>,
        /// Page size (1..=[`MAX_VERSIONS_PAGE`]).
        limit: usize,
    },
    /// A named version of the current state.
    Create {
        /// Its name (checked against `--max-version-name-bytes`).
        name: String,
    },
    /// A version's document: the update that rebuilds it, or its JSON view.
    View {
        /// Version id.
        id: u64,
        /// JSON (as `GET /doc`) instead of the update.
        json: bool,
    },
    /// Restore a version.
    Restore {
        /// Version id.
        id: u64,
    },
    /// Delete a version.
    Delete {
        /// Version id.
        id: u64,
    },
}

/// A history request; rights are checked by the sender (session or API).
#[derive(Message)]
#[rtype(result = "Result<VersionReply, RoomError>")]
pub struct VersionRequest {
    /// What is asked.
    pub ask: VersionAsk,
    /// User id of who asks (an author of restores), if known.
    pub user: Option<String>,
    /// The member who asks (its display name is taken from presence).
    pub member: Option<MemberId>,
    /// Sent through `Registry::request` (counted like a join).
    pub counted: bool,
}

/// The answer to a [`VersionRequest`].
#[derive(Debug, Clone)]
pub enum VersionReply {
    /// A page.
    Page(VersionPage),
    /// A new version (create, restore).
    Version(VersionMeta),
    /// A version's document as one update.
    Update(Bytes),
    /// A version's document as JSON.
    Json(Value),
    /// Deleted.
    Deleted,
}

/// Now, in ms since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The wire form of a version.
pub fn version_view(m: &VersionMeta) -> VersionView {
    VersionView {
        id: m.id.to_string(),
        time: m.time,
        name: m.name.clone(),
        kind: m.kind.as_str().to_owned(),
        restored_from: m.restored_from.map(|v| v.to_string()),
        authors: m
            .authors
            .iter()
            .map(|a| VersionAuthorView {
                user: a.user.clone(),
                name: a.name.clone(),
            })
            .collect(),
        bytes: m.bytes,
    }
}

/// Parses a version id as clients send it (a decimal string).
pub fn parse_version_id(id: &str) -> Result<u64, String> {
    if id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a version id is a decimal number".into());
    }
    id.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| "a version id is a decimal number from 1".into())
}

/// Checks a version name against `max` bytes.
pub fn check_version_name(name: &str, max: usize) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a version name must not be empty".into());
    }
    if name.len() > max {
        return Err(format!(
            "version name is {} bytes, over max_version_name_bytes ({max})",
            name.len()
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a version name must not hold control characters".into());
    }
    Ok(())
}

fn store_failed(e: impl std::fmt::Display) -> RoomError {
    RoomError {
        code: ErrorCode::StoreFailed,
        message: format!("version history: {e}"),
    }
}

fn not_found(id: u64) -> RoomError {
    RoomError {
        code: ErrorCode::NotFound,
        message: format!("no version {id} in this room"),
    }
}

/// The stored parts that rebuild version `id` of `room` (a whole document,
/// then deltas, in order); `not_found` when the room has no such version.
async fn chain_of(
    store: &dyn crate::store::DocStore,
    room: &str,
    id: u64,
) -> Result<Vec<Bytes>, RoomError> {
    match store
        .versions(room, VersionOp::Chain(id))
        .await
        .map_err(store_failed)?
    {
        VersionOut::Chain(Some((_, parts))) => Ok(parts),
        VersionOut::Chain(None) => Err(not_found(id)),
        _ => Err(store_failed("unexpected answer")),
    }
}

impl Room {
    /// The document changed (`author`: the member whose update it was).
    pub(super) fn version_edited(&mut self, author: Option<&MemberId>, ctx: &mut Context<Self>) {
        let h = &mut self.history;
        h.edits += 1;
        h.flush_tried = false;
        let now = Instant::now();
        h.last_edit = Some(now);
        h.first_edit.get_or_insert(now);
        if let Some(link) = author.and_then(|a| self.members.link(a)) {
            if let Some(user) = &link.user {
                let known = self
                    .history
                    .authors
                    .get(&**user)
                    .is_some_and(Option::is_some);
                if !known {
                    let name = self.presence.view(&link.id).and_then(|v| {
                        v.state
                            .get("name")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    });
                    self.history.authors.insert(user.to_string(), name);
                }
            }
        }
        if self.config.history.version_idle_ms > 0 && self.history.timer.is_none() {
            self.arm_version_timer(ctx);
        }
    }

    /// Arms the automatic-version timer for when the idle window or the
    /// longest interval ends, whichever comes first.
    fn arm_version_timer(&mut self, ctx: &mut Context<Self>) {
        let cfg = &self.config.history;
        let (idle, every) = (
            Duration::from_millis(cfg.version_idle_ms),
            Duration::from_millis(cfg.version_every_ms),
        );
        let now = Instant::now();
        let h = &self.history;
        let idle_at = h.last_edit.map_or(now, |t| t + idle);
        let every_at = h.first_edit.map_or(now, |t| t + every);
        let wait = idle_at.min(every_at).saturating_duration_since(now);
        self.history.timer = Some(ctx.run_later(wait, |room, ctx| {
            room.history.timer = None;
            room.version_timer(ctx);
        }));
    }

    /// Before the room is evicted: `true` while the automatic version of
    /// its last edits is still to be made (started here, once) or being
    /// made; the caller looks again shortly.
    pub(super) fn version_before_eviction(&mut self, ctx: &mut Context<Self>) -> bool {
        if self.history.auto_busy {
            return true;
        }
        if self.history.edits == 0
            || self.config.history.version_idle_ms == 0
            || self.history.flush_tried
            || self.broken.is_some()
        {
            return false;
        }
        self.history.flush_tried = true;
        if let Some(h) = self.history.timer.take() {
            ctx.cancel_future(h);
        }
        self.start_auto_version(ctx);
        true
    }

    fn version_timer(&mut self, ctx: &mut Context<Self>) {
        if self.history.edits == 0 || self.broken.is_some() {
            return;
        }
        let cfg = &self.config.history;
        let now = Instant::now();
        let h = &self.history;
        let idle_due = h
            .last_edit
            .is_some_and(|t| now >= t + Duration::from_millis(cfg.version_idle_ms));
        let every_due = h
            .first_edit
            .is_some_and(|t| now >= t + Duration::from_millis(cfg.version_every_ms));
        if !(idle_due || every_due) || self.history.auto_busy {
            return self.arm_version_timer(ctx);
        }
        self.start_auto_version(ctx);
    }

    fn start_auto_version(&mut self, ctx: &mut Context<Self>) {
        self.history.auto_busy = true;
        let fut = self
            .make_version(VersionKind::Auto, None, None, None, 0)
            .map(|res, room, ctx| {
                room.history.auto_busy = false;
                if let Err(e) = res {
                    tracing::warn!(room = %room.id, "automatic version failed: {e}");
                    // Try again after another idle window.
                    room.history.last_edit = Some(Instant::now());
                }
                if room.history.edits > 0 && room.history.timer.is_none() {
                    room.arm_version_timer(ctx);
                }
            });
        ctx.spawn(fut);
    }

    /// The room's permits to rebuild versions: views and restores of
    /// large documents in flight hold memory, so at most
    /// `--max-version-rebuilds` run at once; the others wait.
    fn rebuild_permits(&mut self) -> std::sync::Arc<tokio::sync::Semaphore> {
        let n = self.config.history.max_version_rebuilds;
        self.history
            .rebuilds
            .get_or_insert_with(|| std::sync::Arc::new(tokio::sync::Semaphore::new(n)))
            .clone()
    }

    /// Makes a version of the document as it is now. `Ok(None)`: an
    /// automatic version found nothing new since the latest version.
    fn make_version(
        &mut self,
        kind: VersionKind,
        name: Option<String>,
        restored_from: Option<u64>,
        author: Option<VersionAuthor>,
        tries: u32,
    ) -> ResponseActFuture<Self, Result<Option<VersionMeta>, RoomError>> {
        let head = self.persist.store().versions(&self.id, VersionOp::Head);
        Box::pin(head.into_actor(self).then(move |res, room, _ctx| {
            let head = match res {
                Ok(VersionOut::Head(h)) => h,
                Ok(_) => return room.ready(Err(store_failed("unexpected answer"))),
                Err(e) => return room.ready(Err(store_failed(e))),
            };
            let sv = room.document.state_vector();
            if kind == VersionKind::Auto && head.as_ref().is_some_and(|h| covers(&h.sv, &sv)) {
                // Nothing new since the latest version (made here or by
                // another node).
                room.versioned(room.history.edits, &[]);
                return room.ready(Ok(None));
            }
            let head_ds = room.head_delete_set(head.as_ref());
            Box::pin(head_ds.then(move |head_ds, room, _ctx| {
                // The document as it is now (edits may have come meanwhile).
                let edits = room.history.edits;
                let mut authors: Vec<VersionAuthor> = room
                    .history
                    .authors
                    .iter()
                    .map(|(user, name)| VersionAuthor {
                        user: user.clone(),
                        name: name.clone(),
                    })
                    .collect();
                if let Some(a) = author {
                    if !authors.iter().any(|x| x.user == a.user) {
                        authors.push(a);
                    }
                }
                let (new, delete_set) = room.new_version(
                    head.as_ref(),
                    head_ds.as_ref(),
                    kind,
                    name.clone(),
                    restored_from,
                    authors,
                );
                let add = room
                    .persist
                    .store()
                    .versions(&room.id, VersionOp::Add(new.clone()));
                Box::pin(add.into_actor(room).then(move |res, room, _ctx| match res {
                    Ok(VersionOut::Added(Added::Added(meta))) => {
                        room.history.head_ds = delete_set.map(|ds| (meta.id, ds));
                        let users: Vec<String> =
                            new.authors.iter().map(|a| a.user.clone()).collect();
                        room.versioned(edits, &users);
                        room.version_added(_ctx);
                        room.ready(Ok(Some(meta)))
                    }
                    Ok(VersionOut::Added(Added::Stale)) if tries + 1 < ADD_TRIES => {
                        let author = new
                            .authors
                            .last()
                            .cloned()
                            .filter(|_| kind == VersionKind::Restore);
                        room.make_version(kind, name, restored_from, author, tries + 1)
                    }
                    Ok(VersionOut::Added(Added::Stale)) => room.ready(Err(store_failed(
                        "other nodes kept adding versions; try again",
                    ))),
                    Ok(VersionOut::Added(Added::TooManyNamed)) => room.ready(Err(RoomError {
                        code: ErrorCode::BadMessage,
                        message: format!(
                        "this room holds max_named_versions ({}) named versions; delete one first",
                        room.config.history.max_named_versions
                    ),
                    })),
                    Ok(_) => room.ready(Err(store_failed("unexpected answer"))),
                    Err(e) => room.ready(Err(store_failed(e))),
                }))
            }))
        }))
    }

    /// The delete set of `head` when the next version may be a delta of
    /// it: kept from when this room made it, else rebuilt once from the
    /// store (bounded by the full-state rule; one of the room's rebuild
    /// permits). `None` when not needed or not readable: the delta then
    /// keeps the whole delete set (larger, still exact).
    fn head_delete_set(
        &mut self,
        head: Option<&VersionHead>,
    ) -> ResponseActFuture<Self, Option<IdSet>> {
        let every = self.config.history.version_snapshot_every;
        let Some(id) = head.filter(|h| h.chain_len < every).map(|h| h.id) else {
            return self.ready(None);
        };
        if let Some((known, ds)) = &self.history.head_ds {
            if *known == id {
                return self.ready(Some(ds.clone()));
            }
        }
        let (store, room, permits) = (
            self.persist.store(),
            self.id.to_string(),
            self.rebuild_permits(),
        );
        let rebuilt = async move {
            let _permit = permits.acquire_owned().await.map_err(store_failed)?;
            let parts = chain_of(&*store, &room, id).await?;
            tokio::task::spawn_blocking(move || {
                super::restore::rebuild(&parts)
                    .map(|doc| crate::store::history::delete_set_of(&doc))
                    .map_err(store_failed)
            })
            .await
            .map_err(store_failed)?
        };
        Box::pin(rebuilt.into_actor(self).map(move |res, room, _| match res {
            Ok(ds) => {
                room.history.head_ds = Some((id, ds.clone()));
                Some(ds)
            }
            Err(e) => {
                tracing::warn!(room = %room.id, "rebuilding version {id}'s delete set: {}", e.message);
                None
            }
        }))
    }

    fn ready<T: 'static>(&self, v: T) -> ResponseActFuture<Self, T> {
        Box::pin(fut::ready(v))
    }

    /// The version to store for the document as it is now: a delta from
    /// `head`, or the whole document.
    fn new_version(
        &self,
        head: Option<&VersionHead>,
        head_ds: Option<&IdSet>,
        kind: VersionKind,
        name: Option<String>,
        restored_from: Option<u64>,
        authors: Vec<VersionAuthor>,
    ) -> (NewVersion, Option<IdSet>) {
        let every = self.config.history.version_snapshot_every;
        let encoded = crate::store::history::encode_version(
            &self.document.doc().transact(),
            head,
            head_ds,
            every,
            self.document.size() as u64,
        );
        // The version holds what the latest had too (another node's state
        // not delivered here yet): its state vector is the union.
        let mut sv = self.document.state_vector();
        if let Some(theirs) = head.and_then(|h| StateVector::decode_v1(&h.sv).ok()) {
            sv.merge(theirs);
        }
        let new = NewVersion {
            after: head.map(|h| h.id),
            time: now_ms(),
            name,
            kind,
            restored_from,
            authors,
            sv: sv.encode_v1(),
            data: encoded.data,
            full: encoded.full,
            max_named: self.config.history.max_named_versions,
        };
        (new, encoded.delete_set)
    }

    /// A version covers the changes counted up to `edits` and the authors
    /// `users`: forget them (later ones stay).
    fn versioned(&mut self, edits: u64, users: &[String]) {
        let h = &mut self.history;
        for u in users {
            h.authors.remove(u);
        }
        if h.edits <= edits {
            h.edits = 0;
            h.first_edit = None;
            h.authors.clear();
        } else {
            h.edits -= edits;
            h.first_edit = h.last_edit;
        }
    }

    /// A version was added here: prune by retention, then tell everyone.
    fn version_added(&mut self, ctx: &mut Context<Self>) {
        let cfg = &self.config.history;
        let op = VersionOp::Prune {
            keep: cfg.version_keep,
            max_age_ms: cfg.version_max_age_ms,
            now: now_ms(),
        };
        let prune = self.persist.store().versions(&self.id, op);
        ctx.spawn(prune.into_actor(self).map(|res, room, _| {
            if let Err(e) = res {
                tracing::warn!(room = %room.id, "pruning versions failed: {e}");
            }
            room.versions_changed(true);
        }));
    }

    /// Tells this node's members (and, with `share`, the other nodes) that
    /// the version list changed.
    pub(super) fn versions_changed(&mut self, share: bool) {
        if share {
            self.share_versions_changed();
        }
        let msg = ServerMessage::VersionsChanged {
            room: self.id.to_string(),
        };
        self.fan_out(&msg, Class::Control, None);
    }

    /// Restores version `id`: see the module doc.
    fn restore_version(
        &mut self,
        id: u64,
        author: Option<VersionAuthor>,
    ) -> ResponseActFuture<Self, Result<VersionReply, RoomError>> {
        let (store, room) = (self.persist.store(), self.id.to_string());
        let max = self.config.limits.max_doc_bytes;
        let permits = self.rebuild_permits();
        let rebuilt = async move {
            // Read only with a permit: waiting requests hold nothing.
            let _permit = permits.acquire_owned().await.map_err(store_failed)?;
            let parts = chain_of(&*store, &room, id).await?;
            let stored: usize = parts.iter().map(Bytes::len).sum();
            let doc = tokio::task::spawn_blocking(move || super::restore::rebuild(&parts))
                .await
                .map_err(store_failed)?
                .map_err(store_failed)?;
            Ok((doc, stored))
        };
        Box::pin(rebuilt.into_actor(self).then(move |res, room, ctx| {
            let (version, stored) = match res {
                Ok(v) => v,
                Err(e) => return room.ready(Err(e)),
            };
            if room.document.size() + stored > max {
                return room.ready(Err(RoomError {
                    code: ErrorCode::DocTooLarge,
                    message: format!("the restored document would exceed max_doc_bytes ({max})"),
                }));
            }
            // Pending updates go out first: the restore follows them.
            room.flush();
            let base = room
                .fanout
                .needs_base()
                .then(|| room.document.state_vector());
            let update = super::restore::make_equal(room.document.doc(), &version);
            drop(version);
            // The answer acknowledges the restore: the restored document is
            // stored before the restore version is (a version listed after
            // a crash must not be one the document never became).
            let stored: ResponseActFuture<Self, Result<(), String>> =
                if update.as_ref() != crate::protocol::yjs::EMPTY_UPDATE {
                    room.document.changed_in_place(update.len());
                    let member = None;
                    room.fanout.push(update.clone(), member, base);
                    room.schedule_flush(ctx);
                    room.version_edited(None, ctx);
                    let user = author.as_ref().map(|a| a.user.clone());
                    Box::pin(room.append_update(update, user.as_deref()))
                } else {
                    room.ready(Ok(()))
                };
            Box::pin(stored.then(move |res, room, _| {
                if let Err(e) = res {
                    // Kept and retried like any update; not acknowledged.
                    tracing::warn!(room = %room.id, "restore not stored yet (kept, retried): {e}");
                    return room.ready(Err(store_failed(format!(
                        "the restored document is not stored yet (kept and retried): {e}"
                    ))));
                }
                Box::pin(
                    room.make_version(VersionKind::Restore, None, Some(id), author, 0)
                        .map(move |res, _, _| match res {
                            Ok(Some(meta)) => Ok(VersionReply::Version(meta)),
                            Ok(None) => Err(store_failed("no version was made")),
                            Err(e) => Err(e),
                        }),
                )
            }))
        }))
    }

    /// The author of a request: user id, display name from presence.
    fn requester(&self, user: Option<String>, member: Option<&MemberId>) -> Option<VersionAuthor> {
        let user = user?;
        let name = member.and_then(|m| self.presence.view(m)).and_then(|v| {
            v.state
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        Some(VersionAuthor { user, name })
    }
}

/// True when state vector `have` (Yjs v1) covers `sv`.
fn covers(have: &[u8], sv: &StateVector) -> bool {
    let Ok(have) = StateVector::decode_v1(have) else {
        return false;
    };
    sv.iter().all(|(client, clock)| have.get(client) >= *clock)
}

impl Handler<VersionRequest> for Room {
    type Result = ResponseActFuture<Self, Result<VersionReply, RoomError>>;

    fn handle(&mut self, msg: VersionRequest, ctx: &mut Context<Self>) -> Self::Result {
        if msg.counted {
            self.entered(ctx);
        }
        if let Err(e) = self.check_loaded() {
            return self.ready(Err(e));
        }
        let store = self.persist.store();
        match msg.ask {
            VersionAsk::List { before, limit } => {
                let list = store.versions(&self.id, VersionOp::List { before, limit });
                Box::pin(fut::wrap_future(async move {
                    match list.await.map_err(store_failed)? {
                        VersionOut::Page(p) => Ok(VersionReply::Page(p)),
                        _ => Err(store_failed("unexpected answer")),
                    }
                }))
            }
            VersionAsk::Create { name } => {
                let max = self.config.history.max_version_name_bytes;
                if let Err(e) = check_version_name(&name, max) {
                    return self.ready(Err(RoomError {
                        code: ErrorCode::BadMessage,
                        message: e,
                    }));
                }
                // Pending updates first: the version holds what members saw.
                self.flush();
                let author = self.requester(msg.user, msg.member.as_ref());
                Box::pin(
                    self.make_version(VersionKind::Named, Some(name), None, author, 0)
                        .map(|res, _, _| match res {
                            Ok(Some(meta)) => Ok(VersionReply::Version(meta)),
                            Ok(None) => Err(store_failed("no version was made")),
                            Err(e) => Err(e),
                        }),
                )
            }
            VersionAsk::View { id, json } => {
                let (room, permits) = (self.id.to_string(), self.rebuild_permits());
                Box::pin(fut::wrap_future(async move {
                    // Read only with a permit: waiting requests hold nothing.
                    let _permit = permits.acquire_owned().await.map_err(store_failed)?;
                    let parts = chain_of(&*store, &room, id).await?;
                    tokio::task::spawn_blocking(move || {
                        let doc = super::restore::rebuild(&parts).map_err(store_failed)?;
                        Ok(if json {
                            VersionReply::Json(doc_json(&doc))
                        } else if parts.len() == 1 {
                            VersionReply::Update(parts[0].clone())
                        } else {
                            VersionReply::Update(Bytes::from(
                                doc.transact()
                                    .encode_state_as_update_v1(&StateVector::default()),
                            ))
                        })
                    })
                    .await
                    .map_err(store_failed)?
                }))
            }
            VersionAsk::Restore { id } => {
                let author = self.requester(msg.user, msg.member.as_ref());
                self.restore_version(id, author)
            }
            VersionAsk::Delete { id } => {
                let delete = store.versions(&self.id, VersionOp::Delete(id));
                Box::pin(delete.into_actor(self).map(move |res, room, _| {
                    match res.map_err(store_failed)? {
                        VersionOut::Deleted(true) => {
                            room.versions_changed(true);
                            Ok(VersionReply::Deleted)
                        }
                        VersionOut::Deleted(false) => Err(not_found(id)),
                        _ => Err(store_failed("unexpected answer")),
                    }
                }))
            }
        }
    }
}
