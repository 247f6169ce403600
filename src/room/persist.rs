//! The room's persistence: every applied update is appended to the store
//! (the sender is acknowledged once the append is durable), and the log is
//! compacted into a snapshot every `compact_every` updates or
//! `compact_bytes` bytes, on eviction and at shutdown — one compaction at a
//! time, always through the same bookkeeping ([`Persistence`]).
//!
//! What members were shown is stored: an update applied to the document
//! (and so fanned out) whose append failed is *kept* by the room and
//! appended again, merged with the others kept, after a delay that doubles
//! from `store_retry_min_ms` to `store_retry_max_ms` (at once when another
//! append of the room succeeds), until it is stored. Its sender got
//! `store_failed` and may resend it (a resend is appended again, and
//! acknowledged once that append is durable). A compaction's snapshot is the whole document, so one that succeeds also
//! stores every update kept when it started. A room holding kept updates is
//! not evicted until they are stored; at shutdown it tries until the
//! shutdown timeout, then logs (error, room id, bytes) what it could not
//! store. While any room keeps updates, `chorus_store_unstored_updates` is
//! above 0 and the store counts as failing (`/readyz`, `chorus_store_failing`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tokio_util::task::TaskTracker;

use super::messages::StoreNow;
use super::{Room, RoomId};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;
use crate::store::{DocStore, LogRead, StoreError, StoreFuture, StoredDoc};
use crate::webhook::HookKind;

/// What the room knows of its stored state.
pub(super) struct Persistence {
    /// The room (for the log line of updates lost when it stops).
    room: RoomId,
    store: Arc<dyn DocStore>,
    /// The store gauges and counters (kept updates are counted server-wide).
    metrics: Arc<Metrics>,
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
    /// Updates applied (and shown to members) whose append failed, oldest
    /// first: kept until an append or a compaction stores them.
    unstored: VecDeque<Unstored>,
    /// Bytes of `unstored`.
    unstored_bytes: u64,
    /// Id of the next kept update (ids grow, so stores cover a prefix).
    next_unstored: u64,
    /// The retry of the kept updates is scheduled.
    retry_timer: Option<SpawnHandle>,
    /// The retry of the kept updates is being appended.
    retry_inflight: bool,
    /// Delay before the next retry (doubles after each failed retry or
    /// compaction, up to `retry_max`; back to `retry_min` on success).
    backoff: Duration,
    retry_min: Duration,
    retry_max: Duration,
    /// When the last store write of this room failed, if nothing
    /// succeeded since.
    failed_at: Option<Instant>,
    /// The loss of the kept updates was logged already (shutdown).
    loss_reported: bool,
}

/// An applied update whose append failed.
struct Unstored {
    /// Order of arrival (see `Persistence::next_unstored`).
    id: u64,
    data: Bytes,
    author: Option<String>,
}

/// The kept updates of one retry, merged into one append.
struct Retry {
    /// Covers the kept updates with ids below this.
    upto: u64,
    data: Bytes,
    author: Option<String>,
}

/// A compaction under way: what it covers, to be subtracted once stored.
pub(super) struct Compaction {
    /// Appends the snapshot covers.
    updates: u64,
    /// Bytes of those appends.
    bytes: u64,
    /// The snapshot covers the kept updates with ids below this.
    unstored_upto: u64,
}

impl Persistence {
    /// Nothing known yet (the room loads first). `retry`: the first and
    /// the longest delay between tries of a failed write.
    pub(super) fn new(
        room: RoomId,
        store: Arc<dyn DocStore>,
        writes: TaskTracker,
        metrics: Arc<Metrics>,
        retry: (Duration, Duration),
    ) -> Self {
        Persistence {
            room,
            store,
            metrics,
            writes,
            durable_seq: 0,
            since_compact: 0,
            bytes_since_compact: 0,
            inflight: 0,
            compacting: false,
            stored_hook_due: false,
            unstored: VecDeque::new(),
            unstored_bytes: 0,
            next_unstored: 0,
            retry_timer: None,
            retry_inflight: false,
            backoff: retry.0,
            retry_min: retry.0,
            retry_max: retry.1,
            failed_at: None,
            loss_reported: false,
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

    /// The store (version history goes to it directly).
    pub(super) fn store(&self) -> Arc<dyn DocStore> {
        self.store.clone()
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

    /// Something must be written before the room may go: updates stored
    /// that no snapshot covers yet, or updates kept after a failed append.
    pub(super) fn needs_storing(&self) -> bool {
        self.since_compact > 0 || !self.unstored.is_empty()
    }

    /// Updates applied here are not stored yet (kept after a failed append).
    pub(super) fn holds_unstored(&self) -> bool {
        !self.unstored.is_empty()
    }

    /// How long to wait before writing again, when the last write failed
    /// less than the current backoff ago.
    pub(super) fn wait_after_failure(&self) -> Option<Duration> {
        let since = self.failed_at?.elapsed();
        (since < self.backoff).then(|| self.backoff - since)
    }

    /// A write succeeded: the store works, the backoff starts over.
    fn succeeded(&mut self) {
        self.failed_at = None;
        self.backoff = self.retry_min;
    }

    /// A write failed; `escalate` (a retry or a compaction failed, not a
    /// first try) doubles the backoff.
    fn failed(&mut self, escalate: bool) {
        if escalate && self.failed_at.is_some() {
            self.backoff = (self.backoff * 2).min(self.retry_max);
        }
        self.failed_at = Some(Instant::now());
    }

    /// Keeps an applied update whose append failed.
    fn keep(&mut self, data: Bytes, author: Option<String>) {
        self.unstored_bytes += data.len() as u64;
        self.metrics.store_unstored_updates.inc();
        self.metrics.store_unstored_bytes.inc_by(data.len() as i64);
        self.unstored.push_back(Unstored {
            id: self.next_unstored,
            data,
            author,
        });
        self.next_unstored += 1;
    }

    /// Forgets the kept updates with ids below `upto`: they are stored.
    fn stored_below(&mut self, upto: u64) {
        while self.unstored.front().is_some_and(|u| u.id < upto) {
            if let Some(u) = self.unstored.pop_front() {
                self.forget(&u);
            }
        }
    }

    fn forget(&mut self, u: &Unstored) {
        self.unstored_bytes -= u.data.len() as u64;
        self.metrics.store_unstored_updates.dec();
        self.metrics
            .store_unstored_bytes
            .dec_by(u.data.len() as i64);
    }

    /// Every kept update, merged into one append (the oldest alone if they
    /// do not merge); `None` when nothing is kept or a retry is under way.
    fn retry_batch(&mut self) -> Option<Retry> {
        if self.retry_inflight {
            return None;
        }
        let first = self.unstored.front()?;
        let author = first.author.clone();
        let same_author = self.unstored.iter().all(|u| u.author == author);
        let author = if same_author { author } else { None };
        if self.unstored.len() == 1 {
            return Some(Retry {
                upto: first.id + 1,
                data: first.data.clone(),
                author,
            });
        }
        match yrs::merge_updates_v1(self.unstored.iter().map(|u| u.data.as_ref())) {
            Ok(merged) => Some(Retry {
                upto: self.next_unstored,
                data: Bytes::from(merged),
                author,
            }),
            Err(e) => {
                tracing::warn!(room = %self.room, "merging kept updates failed (retried one by one): {e}");
                Some(Retry {
                    upto: first.id + 1,
                    data: first.data.clone(),
                    author: first.author.clone(),
                })
            }
        }
    }

    /// A retry failed: the kept updates it covered (those still kept) are
    /// replaced by its merged update, so memory stays about one document
    /// however long the store fails.
    fn fold(&mut self, retry: Retry) {
        if self.unstored.front().is_none_or(|u| u.id >= retry.upto) || self.unstored.len() == 1 {
            return;
        }
        self.stored_below(retry.upto);
        let u = Unstored {
            id: retry.upto - 1,
            data: retry.data,
            author: retry.author,
        };
        self.unstored_bytes += u.data.len() as u64;
        self.metrics.store_unstored_updates.inc();
        self.metrics
            .store_unstored_bytes
            .inc_by(u.data.len() as i64);
        self.unstored.push_front(u);
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
        if self.compacting || !self.needs_storing() {
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
            unstored_upto: self.next_unstored,
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
            // The snapshot is the whole document: it holds them.
            self.stored_below(job.unstored_upto);
            self.succeeded();
        } else {
            self.failed(true);
        }
    }

    /// Forgets the stored state and what was kept (the room was deleted).
    pub(super) fn clear(&mut self) {
        self.durable_seq = 0;
        self.since_compact = 0;
        self.bytes_since_compact = 0;
        self.stored_below(u64::MAX);
    }

    /// Logs, once, the kept updates that will never be stored.
    fn report_lost(&mut self, when: &str) {
        if self.unstored.is_empty() || self.loss_reported {
            return;
        }
        self.loss_reported = true;
        tracing::error!(
            room = %self.room,
            updates = self.unstored.len(),
            bytes = self.unstored_bytes,
            "{when}: updates that members were shown could not be stored; they are lost"
        );
    }
}

impl Drop for Persistence {
    fn drop(&mut self) {
        // Only a room that died (a panic) or a shutdown that timed out
        // stops holding kept updates.
        self.report_lost("room stopped");
        self.stored_below(u64::MAX);
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
    /// (`Err` with a reason when the store failed: the update is then kept
    /// and retried until stored, see the module doc).
    pub(super) fn append_update(
        &mut self,
        data: Bytes,
        author: Option<&str>,
    ) -> impl ActorFuture<Self, Output = Result<(), String>> + 'static {
        let len = data.len() as u64;
        let started = Instant::now();
        let kept = (data.clone(), author.map(str::to_owned));
        let append = self.persist.begin_append(&self.id, data, author);
        append.into_actor(self).map(move |res, room, ctx| {
            room.persist.end_append(res.as_ref().ok().copied(), len);
            room.metrics.store_latency.observe(started.elapsed());
            let (data, author) = kept;
            match res {
                Ok(seq) => {
                    room.persist.succeeded();
                    room.appended(seq, &data, ctx);
                    if room.persist.holds_unstored() {
                        // The store writes again: no need to wait.
                        room.retry_unstored_now(ctx);
                    }
                    room.maybe_compact(ctx, false);
                    room.schedule_stored_hook(ctx);
                    Ok(())
                }
                Err(e) => {
                    tracing::error!(room = %room.id, "append failed (the update is kept and retried): {e}");
                    room.metrics.error(ErrorCode::StoreFailed.as_str());
                    room.metrics.store_append_failures.inc();
                    room.persist.failed(false);
                    room.persist.keep(data, author);
                    room.schedule_retry(ctx);
                    Err(e.to_string())
                }
            }
        })
    }

    /// Schedules the retry of the kept updates after the backoff, unless
    /// one is scheduled or under way.
    fn schedule_retry(&mut self, ctx: &mut Context<Self>) {
        let p = &self.persist;
        if self.broken.is_some()
            || p.unstored.is_empty()
            || p.retry_timer.is_some()
            || p.retry_inflight
        {
            return;
        }
        let wait = self.persist.backoff;
        self.persist.retry_timer = Some(ctx.run_later(wait, |room, ctx| {
            room.persist.retry_timer = None;
            room.retry_unstored(ctx);
        }));
    }

    /// Retries the kept updates now (the store answered again).
    pub(super) fn retry_unstored_now(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.persist.retry_timer.take() {
            ctx.cancel_future(h);
        }
        self.retry_unstored(ctx);
    }

    /// Appends every kept update, merged into one; on failure they stay
    /// kept and the next retry is scheduled.
    fn retry_unstored(&mut self, ctx: &mut Context<Self>) {
        if self.broken.is_some() {
            return;
        }
        let Some(retry) = self.persist.retry_batch() else {
            return;
        };
        self.metrics.store_append_retries.inc();
        self.persist.retry_inflight = true;
        let len = retry.data.len() as u64;
        let append =
            self.persist
                .begin_append(&self.id, retry.data.clone(), retry.author.as_deref());
        ctx.spawn(append.into_actor(self).map(move |res, room, ctx| {
            room.persist.retry_inflight = false;
            room.persist.end_append(res.as_ref().ok().copied(), len);
            match res {
                Ok(seq) => {
                    room.persist.stored_below(retry.upto);
                    room.persist.succeeded();
                    tracing::info!(room = %room.id, bytes = len, "kept updates stored");
                    room.appended(seq, &retry.data, ctx);
                    room.maybe_compact(ctx, false);
                    room.schedule_stored_hook(ctx);
                }
                Err(e) => {
                    room.metrics.store_append_failures.inc();
                    room.persist.failed(true);
                    tracing::warn!(
                        room = %room.id,
                        updates = room.persist.unstored.len(),
                        bytes = room.persist.unstored_bytes,
                        retry_in_ms = room.persist.backoff.as_millis() as u64,
                        "storing kept updates failed again: {e}"
                    );
                    room.persist.fold(retry);
                }
            }
            room.schedule_retry(ctx);
        }));
    }

    /// Writes a snapshot covering everything durable so far, when enough
    /// was appended (or, with `force`, when anything was, or is kept).
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

    /// Stores the document now (shutdown): once appends and a compaction
    /// under way have settled, writes a snapshot covering everything
    /// (kept updates included), trying again after the backoff until
    /// `until`; logs (error) what could not be stored by then.
    pub(super) fn store_now(&mut self, until: Instant) -> ResponseActFuture<Self, ()> {
        if self.broken.is_some() {
            return Box::pin(fut::ready(()));
        }
        let now = Instant::now();
        let again = move |wait: Duration| -> ResponseActFuture<Room, ()> {
            Box::pin(
                fut::wrap_future::<_, Room>(tokio::time::sleep(wait))
                    .then(move |(), room, _| room.store_now(until)),
            )
        };
        if !self.persist.settled() {
            if now >= until {
                self.persist.report_lost("shutdown timeout");
                return Box::pin(fut::ready(()));
            }
            return again(Duration::from_millis(5).min(until - now));
        }
        if !self.persist.compaction_due(&self.config.limits, true) {
            return Box::pin(fut::ready(()));
        }
        if let Some(wait) = self.persist.wait_after_failure() {
            if now + wait >= until {
                self.persist.report_lost("shutdown timeout");
                return Box::pin(fut::ready(()));
            }
            return again(wait);
        }
        Box::pin(
            self.compaction()
                .then(move |(), room, _| -> ResponseActFuture<Room, ()> {
                    if !room.persist.needs_storing() {
                        return Box::pin(fut::ready(()));
                    }
                    room.store_now(until)
                }),
        )
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

impl Handler<StoreNow> for Room {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: StoreNow, _: &mut Context<Self>) -> Self::Result {
        self.flush();
        self.store_now(msg.until)
    }
}
