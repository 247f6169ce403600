//! The room's persistence: every applied update is appended to the store
//! (the sender is acknowledged once the append is durable), and the log is
//! compacted into a snapshot every `compact_every` updates or
//! `compact_bytes` bytes, on eviction and at shutdown — one compaction at a
//! time, always through the same bookkeeping ([`Persistence`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::messages::StoreNow;
use super::Room;
use crate::config::Limits;
use crate::protocol::ErrorCode;
use crate::store::{DocStore, LogRead, StoreError, StoreFuture, StoredDoc};
use crate::webhook::HookKind;

/// What the room knows of its stored state.
pub(super) struct Persistence {
    store: Arc<dyn DocStore>,
    /// Where appends run, as tasks of their own: one in flight when the
    /// room dies still lands, and the room's successor waits for it.
    writes: TaskTracker,
    /// Highest store sequence number known durable.
    durable_seq: u64,
    /// Appends since the last compaction.
    since_compact: u64,
    /// Bytes appended since the last compaction (`compact_bytes` threshold).
    bytes_since_compact: u64,
    /// Appends not yet completed (eviction waits for zero).
    inflight: usize,
    /// A compaction is being written (one at a time).
    compacting: bool,
    /// A `document.stored` webhook is waiting for its debounce interval.
    stored_hook_due: bool,
}

/// A compaction under way: what it covers, to be subtracted once stored.
pub(super) struct Compaction {
    /// Appends the snapshot covers.
    updates: u64,
    /// Bytes of those appends.
    bytes: u64,
}

impl Persistence {
    /// Nothing known yet (the room loads first).
    pub(super) fn new(store: Arc<dyn DocStore>, writes: TaskTracker) -> Self {
        Persistence {
            store,
            writes,
            durable_seq: 0,
            since_compact: 0,
            bytes_since_compact: 0,
            inflight: 0,
            compacting: false,
            stored_hook_due: false,
        }
    }

    /// Loads the room's stored state, once the appends of `predecessor`
    /// (a dead instance of this room) have finished.
    pub(super) fn load(
        &self,
        room: &str,
        predecessor: Option<TaskTracker>,
    ) -> StoreFuture<StoredDoc> {
        let Some(predecessor) = predecessor else {
            return self.store.load(room);
        };
        let (store, room) = (self.store.clone(), room.to_owned());
        Box::pin(async move {
            predecessor.wait().await;
            store.load(&room).await
        })
    }

    /// Reads the room's log after `after` (cluster mode: missed entries).
    pub(super) fn read_since(
        &self,
        room: &str,
        after: u64,
        generation: Option<&str>,
    ) -> StoreFuture<LogRead> {
        self.store.read_since(room, after, generation)
    }

    /// Deletes everything stored for the room.
    pub(super) fn delete(&self, room: &str) -> StoreFuture<()> {
        self.store.delete(room)
    }

    /// Takes note of what was loaded.
    pub(super) fn loaded(&mut self, stored: &StoredDoc) {
        self.durable_seq = stored.last_seq;
        self.since_compact = stored.updates.len() as u64;
        self.bytes_since_compact = stored.updates.iter().map(|u| u.len() as u64).sum();
    }

    /// Highest sequence number known durable.
    pub(super) fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    /// Entry `seq` is known durable (appended here, or by another node).
    pub(super) fn durable_upto(&mut self, seq: u64) {
        self.durable_seq = self.durable_seq.max(seq);
    }

    /// No append or compaction in flight: storage has settled.
    pub(super) fn settled(&self) -> bool {
        self.inflight == 0 && !self.compacting
    }

    /// Updates are stored that no snapshot covers yet.
    pub(super) fn has_log(&self) -> bool {
        self.since_compact > 0
    }

    /// Starts appending one update, in a task that outlives the room.
    fn begin_append(&mut self, room: &str, data: Bytes, author: Option<&str>) -> StoreFuture<u64> {
        self.inflight += 1;
        let task = self.writes.spawn(self.store.append(room, data, author));
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(StoreError::Io(format!("the append task failed: {e}"))))
        })
    }

    /// An append finished; `Some(seq)` when it is durable.
    fn end_append(&mut self, seq: Option<u64>, len: u64) {
        self.inflight -= 1;
        if let Some(seq) = seq {
            self.durable_upto(seq);
            self.since_compact += 1;
            self.bytes_since_compact += len;
        }
    }

    /// True when a compaction should start now: enough was appended
    /// (`compact_every` updates or `compact_bytes` bytes), or `force` and
    /// anything at all; never while one is being written.
    fn compaction_due(&self, limits: &Limits, force: bool) -> bool {
        if self.compacting || self.since_compact == 0 {
            return false;
        }
        force
            || self.since_compact >= limits.compact_every
            || self.bytes_since_compact >= limits.compact_bytes
    }

    /// Starts writing `snapshot` over the log up to the durable sequence.
    fn begin_compaction(&mut self, room: &str, snapshot: Bytes) -> (StoreFuture<()>, Compaction) {
        self.compacting = true;
        let job = Compaction {
            updates: self.since_compact,
            bytes: self.bytes_since_compact,
        };
        (self.store.compact(room, snapshot, self.durable_seq), job)
    }

    /// A compaction finished; what it covered is no longer in the log when
    /// it succeeded.
    fn end_compaction(&mut self, job: Compaction, stored: bool) {
        self.compacting = false;
        if stored {
            self.since_compact = self.since_compact.saturating_sub(job.updates);
            self.bytes_since_compact = self.bytes_since_compact.saturating_sub(job.bytes);
        }
    }

    /// Forgets the stored state (the room was deleted).
    pub(super) fn clear(&mut self) {
        self.durable_seq = 0;
        self.since_compact = 0;
        self.bytes_since_compact = 0;
    }
}

impl Room {
    /// Applies stored state; damaged entries are logged with the room id
    /// and skipped.
    pub(super) fn restore(&mut self, stored: StoredDoc) {
        for skipped in &stored.skipped {
            tracing::error!(room = %self.id, "skipped damaged stored entry: {skipped}");
        }
        let id = self.id.clone();
        let parts = stored.snapshot.iter().chain(stored.updates.iter());
        self.document.restore(
            parts,
            |entry, e| tracing::error!(room = %id, entry, "skipped unreadable stored update: {e}"),
        );
        self.persist.loaded(&stored);
        if let Some(c) = &mut self.cluster {
            c.loaded(stored.generation.clone(), stored.last_seq);
        }
    }

    /// Appends an applied update to the store; resolves once it is durable
    /// (`Err` with a reason when the store failed). In cluster mode an
    /// update whose append failed is kept and written to the shared log
    /// once Redis answers again.
    pub(super) fn append_update(
        &mut self,
        data: Bytes,
        author: Option<&str>,
    ) -> impl ActorFuture<Self, Output = Result<(), String>> + 'static {
        let len = data.len() as u64;
        let started = Instant::now();
        let kept = data.clone();
        let append = self.persist.begin_append(&self.id, data, author);
        append.into_actor(self).map(move |res, room, ctx| {
            room.persist.end_append(res.as_ref().ok().copied(), len);
            room.metrics.store_latency.observe(started.elapsed());
            match res {
                Ok(seq) => {
                    room.appended(seq, &kept, ctx);
                    room.maybe_compact(ctx, false);
                    room.schedule_stored_hook(ctx);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(room = %room.id, "append failed: {e}");
                    room.metrics.error(ErrorCode::StoreFailed.as_str());
                    Err(e.to_string())
                }
            }
        })
    }

    /// Writes a snapshot covering everything durable so far, when enough
    /// was appended (or, with `force`, when anything was).
    pub(super) fn maybe_compact(&mut self, ctx: &mut Context<Self>, force: bool) {
        if self.broken.is_some() || !self.persist.compaction_due(&self.config.limits, force) {
            return;
        }
        let fut = self.compaction();
        ctx.spawn(fut);
    }

    /// Starts a compaction now; the future resolves once it is stored (or
    /// failed, which is logged).
    fn compaction(&mut self) -> impl ActorFuture<Self, Output = ()> + 'static {
        let snapshot = self.document.encode_state();
        let size = snapshot.len();
        let bytes_before = self.document.size();
        let (fut, job) = self.persist.begin_compaction(&self.id, snapshot);
        fut.into_actor(self).map(move |res, room, _| {
            if let Err(e) = &res {
                tracing::error!(room = %room.id, "compaction failed: {e}");
            }
            room.persist.end_compaction(job, res.is_ok());
            if res.is_ok() {
                // The bound restarts from the snapshot, plus what was
                // applied while it was being written.
                room.document.compacted(size, bytes_before);
            }
        })
    }

    /// Stores the document now (shutdown): waits for a compaction under
    /// way, then writes one covering everything durable.
    pub(super) fn store_now(&mut self) -> impl ActorFuture<Self, Output = ()> + 'static {
        let settle = |room: &mut Room| -> Option<ResponseActFuture<Room, ()>> {
            if room.broken.is_some() || !room.persist.compaction_due(&room.config.limits, true) {
                return None;
            }
            Some(Box::pin(room.compaction()))
        };
        let waited: ResponseActFuture<Room, ()> = if self.persist.compacting {
            Box::pin(wait_until(|room: &Room| !room.persist.compacting))
        } else {
            Box::pin(fut::ready(()))
        };
        waited.then(move |(), room, _| -> ResponseActFuture<Room, ()> {
            match settle(room) {
                Some(f) => f,
                None => Box::pin(fut::ready(())),
            }
        })
    }

    /// Sends one `document.stored` webhook per debounce interval.
    fn schedule_stored_hook(&mut self, ctx: &mut Context<Self>) {
        if self.persist.stored_hook_due {
            return;
        }
        self.persist.stored_hook_due = true;
        let wait = Duration::from_millis(self.config.api.webhook_debounce_ms);
        ctx.run_later(wait, |room, _| {
            room.persist.stored_hook_due = false;
            room.hooks.emit(
                HookKind::DocumentStored,
                &room.id,
                serde_json::json!({
                    "seq": room.persist.durable_seq(),
                    "doc_bytes": room.document.size(),
                }),
            );
        });
    }
}

/// Resolves once `done` holds for the room, checking every 5 ms.
fn wait_until(done: fn(&Room) -> bool) -> impl ActorFuture<Room, Output = ()> {
    fut::wrap_future::<_, Room>(tokio::time::sleep(Duration::from_millis(5))).then(
        move |(), room, _| -> ResponseActFuture<Room, ()> {
            if done(room) {
                Box::pin(fut::ready(()))
            } else {
                Box::pin(wait_until(done))
            }
        },
    )
}

impl Handler<StoreNow> for Room {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StoreNow, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        Box::pin(self.store_now())
    }
}
