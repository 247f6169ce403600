//! Finds or starts the actor of a room. Rooms run on a pool of arbiters (one
//! per core by default), chosen by a hash of the room id, so a hot room
//! occupies one thread and both cores do work.
//!
//! Live rooms are capped at `--max-live-rooms`: when the registry is full,
//! a room is started only after the longest-idle room (no members, no
//! followers, no message on its way) has been asked to evict itself now
//! ([`EvictNow`]) and has left; when no room is idle the request is refused
//! ([`RoomsFull`]: `room_unavailable`). Rooms being evicted still count, so
//! the number of live rooms never exceeds the cap.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_util::task::TaskTracker;

use super::supervise::{FaultHook, Incarnation, Supervised};
use super::{Join, Room, RoomId, StoreNow};
use crate::cluster::Bridge;
use crate::config::{Config, FaultAt};
use crate::metrics::Metrics;
use crate::store::DocStore;
use crate::webhook::Webhooks;

/// A live room as the registry knows it.
struct Entry {
    addr: Addr<Room>,
    /// Joins sent to this room; it may be evicted only when it has
    /// processed all of them (see [`Registry::remove_if_idle`]).
    joins_sent: u64,
    /// Set by the room when it became idle (no members, no followers):
    /// since when, and how many joins it had seen then. It may be evicted
    /// for room only while that count equals `joins_sent` (nothing sent to
    /// it since). Cleared whenever a join is counted.
    idle: Option<(Instant, u64)>,
    /// Asked to evict itself now to make room ([`EvictNow`]); not asked twice.
    evicting: bool,
    /// Which start of the room this is (unique per registry).
    incarnation: u64,
    /// The room's appends, handed to its successor if it dies.
    writes: TaskTracker,
}

/// Mailbox capacity of a room (actix's default).
const MAILBOX: usize = 16;

/// Ask an idle room to evict itself now (compacting into the store first),
/// because the registry is full. A room that is not idle ignores it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EvictNow;

/// The registry holds `max_live_rooms` rooms and none of them is idle: a new
/// room cannot be started now (`room_unavailable`; transient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many live rooms (max_live_rooms {0}) and none idle; try again later")]
pub struct RoomsFull(pub usize);

/// How long a request for a new room waits for idle rooms to make room
/// before it is refused.
const EVICT_WAIT: Duration = Duration::from_secs(2);

/// What [`Registry::try_enter`] found.
enum Entered {
    /// The room is live (or was started) and one join is counted for it.
    Room(Addr<Room>),
    /// Full; this idle room was asked to leave: wait for a slot.
    Evicting(Addr<Room>),
    /// Full, and no room can be evicted.
    Full,
}

/// What every room of a server uses, built once by the server and handed
/// to the registry (which hands it to each room it starts).
#[derive(Clone)]
pub struct RoomServices {
    /// Server configuration.
    pub config: Arc<Config>,
    /// Where documents are stored.
    pub store: Arc<dyn DocStore>,
    /// Server counters.
    pub metrics: Arc<Metrics>,
    /// The webhook queue.
    pub hooks: Webhooks,
    /// The bridge to the other nodes, in cluster mode only.
    pub bridge: Option<Bridge>,
}

struct Inner {
    services: RoomServices,
    arbiters: Vec<ArbiterHandle>,
    /// Owns the arbiter threads so they live as long as the registry.
    _threads: Vec<Arbiter>,
    rooms: Mutex<HashMap<RoomId, Entry>>,
    /// Appends of rooms that died (by room id) that a successor must wait
    /// for before it loads; dropped once finished.
    orphaned_writes: Mutex<HashMap<RoomId, TaskTracker>>,
    /// `--fault-panic` (test only).
    fault: Option<FaultHook>,
    started: AtomicU64,
    evicted: AtomicU64,
    /// Rooms evicted early because the registry was full.
    evicted_for_room: AtomicU64,
    /// Requests refused because the registry was full.
    refused_full: AtomicU64,
    /// Most rooms live at once since start (checks the cap holds).
    live_max: AtomicU64,
    /// Woken whenever a room leaves the registry.
    left: tokio::sync::Notify,
}

/// Shared handle to the set of live rooms.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Registry {
    /// A registry that starts `config.room_thread_count()` arbiter threads
    /// for rooms that use `services`. Must be called inside an actix `System`.
    pub fn new(services: RoomServices) -> Self {
        let threads: Vec<Arbiter> = (0..services.config.room_thread_count())
            .map(|_| Arbiter::new())
            .collect();
        let arbiters = threads.iter().map(Arbiter::handle).collect();
        Registry {
            inner: Arc::new(Inner {
                fault: FaultHook::new(services.config.fault_panic.as_ref()),
                orphaned_writes: Mutex::new(HashMap::new()),
                services,
                arbiters,
                _threads: threads,
                rooms: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                evicted_for_room: AtomicU64::new(0),
                refused_full: AtomicU64::new(0),
                live_max: AtomicU64::new(0),
                left: tokio::sync::Notify::new(),
            }),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Entry>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock (a panic elsewhere while holding it) is safe to reuse.
        self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `join` to the room if it is live or a slot is free now (the
    /// returned address stays valid while the member has not left); the
    /// join back when the registry is full: then call
    /// [`Registry::enter_waiting`] and send it.
    #[allow(clippy::result_large_err)] // the join goes back to its sender, unmoved
    pub fn try_join(&self, room: &RoomId, join: Join) -> Result<Addr<Room>, Join> {
        match self.try_enter(room) {
            Entered::Room(addr) => {
                addr.do_send(join);
                Ok(addr)
            }
            Entered::Evicting(_) | Entered::Full => Err(join),
        }
    }

    /// Sends `msg` to the room (starting it if needed, waiting for an idle
    /// room to make room when full), counted like a join, so the room
    /// cannot be evicted before it handled the message (every handler of
    /// such a message counts it in `joins_seen`; see
    /// [`Room::entered`](super::Room)). For the HTTP API's one-shot
    /// operations and subscriptions.
    pub async fn request<M>(&self, room: &RoomId, msg: M) -> Result<Request<Room, M>, RoomsFull>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Room: Handler<M>,
    {
        Ok(self.enter_waiting(room).await?.send(msg))
    }

    /// The room's address if it is live (not counted: the caller must
    /// accept that the room may stop before the message arrives).
    pub fn live(&self, room: &str) -> Option<Addr<Room>> {
        self.rooms()
            .get(room)
            .filter(|e| e.addr.connected())
            .map(|e| e.addr.clone())
    }

    /// Every live room with its address.
    pub fn live_list(&self) -> Vec<(RoomId, Addr<Room>)> {
        self.rooms()
            .iter()
            .filter(|(_, e)| e.addr.connected())
            .map(|(id, e)| (id.clone(), e.addr.clone()))
            .collect()
    }

    /// Up to `limit` live rooms whose ids sort after `after`, in id order.
    pub fn live_page(&self, after: Option<&str>, limit: usize) -> Vec<(RoomId, Addr<Room>)> {
        let rooms = self.rooms();
        let mut page: Vec<(RoomId, Addr<Room>)> = rooms
            .iter()
            .filter(|(id, _)| after.is_none_or(|a| &***id > a))
            .map(|(id, e)| (id.clone(), e.addr.clone()))
            .collect();
        drop(rooms);
        // Partial selection, then sort only the page.
        if page.len() > limit {
            page.select_nth_unstable_by(limit, |a, b| a.0.cmp(&b.0));
            page.truncate(limit);
        }
        page.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        page
    }

    /// Finds or starts the room and counts one join for it (the caller
    /// must send it exactly one message whose handler counts it). When the
    /// registry is full, asks idle rooms to leave, longest-idle first, and
    /// waits (up to a few seconds) for a slot; `Err` when none frees.
    pub async fn enter_waiting(&self, room: &RoomId) -> Result<Addr<Room>, RoomsFull> {
        let deadline = tokio::time::Instant::now() + EVICT_WAIT;
        loop {
            let left = self.inner.left.notified();
            match self.try_enter(room) {
                Entered::Room(addr) => return Ok(addr),
                Entered::Evicting(victim) => victim.do_send(EvictNow),
                Entered::Full => {}
            }
            // Wait for a room to leave (ours or another's victim); an idle
            // room that turned busy never leaves, so look again now and then.
            let wait = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
            if tokio::time::timeout_at(wait, left).await.is_err()
                && tokio::time::Instant::now() >= deadline
            {
                return self.refuse(room);
            }
        }
    }

    fn refuse(&self, room: &RoomId) -> Result<Addr<Room>, RoomsFull> {
        // Last look: a slot may have freed right at the deadline.
        if let Entered::Room(addr) = self.try_enter(room) {
            return Ok(addr);
        }
        self.inner.refused_full.fetch_add(1, Ordering::Relaxed);
        Err(RoomsFull(self.inner.services.config.limits.max_live_rooms))
    }

    /// Finds or starts the room (counting one join), or, when full, picks
    /// the longest-idle room that can leave and marks it as asked.
    fn try_enter(&self, room: &RoomId) -> Entered {
        let max = self.inner.services.config.limits.max_live_rooms;
        let mut rooms = self.rooms();
        // A room whose actor is gone (it panicked without `Room::died`
        // telling us) is replaced; its appends go to its successor.
        let mut predecessor = match rooms.get(room) {
            Some(entry) if !entry.addr.connected() => rooms.remove(room).map(|old| {
                old.writes.close();
                old.writes
            }),
            _ => None,
        };
        if let Some(entry) = rooms.get_mut(room) {
            entry.joins_sent += 1;
            // Something is on its way: not idle, and once it is idle again
            // it may be asked again.
            entry.idle = None;
            entry.evicting = false;
            return Entered::Room(entry.addr.clone());
        }
        if max > 0 && rooms.len() >= max {
            let victim = rooms
                .values_mut()
                .filter(|e| {
                    !e.evicting && matches!(e.idle, Some((_, seen)) if seen == e.joins_sent)
                })
                .min_by_key(|e| e.idle.map(|(since, _)| since));
            return match victim {
                Some(v) => {
                    v.evicting = true;
                    self.inner.evicted_for_room.fetch_add(1, Ordering::Relaxed);
                    Entered::Evicting(v.addr.clone())
                }
                None => Entered::Full,
            };
        }
        if predecessor.is_none() {
            predecessor = self.orphaned().remove(room);
        }
        let mut entry = self.start(room, predecessor);
        entry.joins_sent = 1;
        let addr = entry.addr.clone();
        rooms.insert(room.clone(), entry);
        self.inner
            .live_max
            .fetch_max(rooms.len() as u64, Ordering::Relaxed);
        Entered::Room(addr)
    }

    /// Starts the room's actor, supervised, on its arbiter.
    fn start(&self, room: &RoomId, predecessor: Option<TaskTracker>) -> Entry {
        let incarnation = self.inner.started.fetch_add(1, Ordering::Relaxed) + 1;
        let writes = TaskTracker::new();
        let life = Incarnation {
            number: incarnation,
            writes: writes.clone(),
            predecessor,
        };
        let arbiter = &self.inner.arbiters[self.shard(room)];
        let (id, services, registry) = (room.clone(), self.inner.services.clone(), self.clone());
        let (tx, rx) = actix::dev::channel::channel(MAILBOX);
        arbiter.spawn_fn(move || {
            let ctx = Context::with_receiver(rx);
            let fut = ctx.into_future(Room::new(id.clone(), services, registry, life));
            actix::spawn(Supervised::new(id, fut));
        });
        Entry {
            addr: Addr::new(tx),
            joins_sent: 0,
            idle: None,
            evicting: false,
            incarnation,
            writes,
        }
    }

    fn orphaned(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, TaskTracker>> {
        // As `rooms`: every critical section leaves the map consistent.
        self.inner
            .orphaned_writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Room `room` (incarnation `incarnation`) died: forgets it, so that
    /// the next request starts a new one, which waits for `writes` (the
    /// dead room's appends) before it loads. Called from the dying room.
    pub(super) fn died(&self, room: &RoomId, incarnation: u64, writes: &TaskTracker) {
        let mut rooms = self.rooms();
        if rooms.get(room).map(|e| e.incarnation) == Some(incarnation) {
            rooms.remove(room);
            let mut orphaned = self.orphaned();
            orphaned.retain(|_, w| !w.is_empty());
            if !writes.is_empty() {
                orphaned.insert(room.clone(), writes.clone());
            }
            drop(orphaned);
            drop(rooms);
            self.inner.left.notify_waiters();
        }
    }

    /// `--fault-panic` (test only): counts one non-empty update applied to
    /// `room` and says where to panic if this is the one.
    pub(super) fn fault_due(&self, room: &str) -> Option<FaultAt> {
        self.inner.fault.as_ref().and_then(|f| f.due(room))
    }

    /// The room became idle having seen `joins_seen` joins: it may be
    /// evicted to make room, longest-idle first.
    pub(crate) fn mark_idle(&self, room: &RoomId, joins_seen: u64) {
        if let Some(entry) = self.rooms().get_mut(room) {
            if entry.joins_sent == joins_seen {
                entry.idle = Some((Instant::now(), joins_seen));
            }
        }
    }

    /// Removes the room if it has processed every join sent to it; the room
    /// stops itself when this returns true.
    pub(crate) fn remove_if_idle(&self, room: &RoomId, joins_seen: u64) -> bool {
        let mut rooms = self.rooms();
        match rooms.get(room) {
            Some(entry) if entry.joins_sent == joins_seen => {
                rooms.remove(room);
                drop(rooms);
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
                self.inner.left.notify_waiters();
                true
            }
            _ => false,
        }
    }

    fn shard(&self, room: &str) -> usize {
        let mut h = DefaultHasher::new();
        room.hash(&mut h);
        (h.finish() % self.inner.arbiters.len() as u64) as usize
    }

    /// Number of live rooms.
    pub fn live_rooms(&self) -> usize {
        self.rooms().len()
    }

    /// Rooms started since the process began.
    pub fn rooms_started(&self) -> u64 {
        self.inner.started.load(Ordering::Relaxed)
    }

    /// Rooms evicted since the process began.
    pub fn rooms_evicted(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// Rooms evicted before their idle time because the registry was full.
    pub fn rooms_evicted_for_room(&self) -> u64 {
        self.inner.evicted_for_room.load(Ordering::Relaxed)
    }

    /// Most rooms live at once since start.
    pub fn live_rooms_max(&self) -> u64 {
        self.inner.live_max.load(Ordering::Relaxed)
    }

    /// Requests refused because the registry was full of busy rooms.
    pub fn rooms_refused_full(&self) -> u64 {
        self.inner.refused_full.load(Ordering::Relaxed)
    }

    /// Asks every live room to write its document to the store, and waits;
    /// rooms whose writes fail try again until `until`, then log what they
    /// could not store.
    pub async fn flush_all(&self, until: Instant) {
        let addrs: Vec<Addr<Room>> = self.rooms().values().map(|e| e.addr.clone()).collect();
        let flushes = addrs.iter().map(|a| a.send(StoreNow { until }));
        for res in futures_util::future::join_all(flushes).await {
            if let Err(e) = res {
                tracing::warn!("room did not flush: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use yrs::{ReadTxn, Text, Transact};

    use super::*;
    use crate::config::FaultPanic;
    use crate::room::api::{ApiUpdate, DocBody, DocFormat, ReadDoc};
    use crate::store::memory::MemoryStore;
    use crate::store::{StoreFuture, StoredDoc};
    use crate::webhook::Webhooks;

    /// A store whose appends are lazy and slow (like the Redis store's: the
    /// work starts when the future is polled), over a memory store.
    struct SlowAppends(Arc<MemoryStore>);

    impl DocStore for SlowAppends {
        fn load(&self, room: &str) -> StoreFuture<StoredDoc> {
            self.0.load(room)
        }
        fn append(&self, room: &str, update: Bytes, _: Option<&str>) -> StoreFuture<u64> {
            let (store, room) = (self.0.clone(), room.to_owned());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                store.append(&room, update, None).await
            })
        }
        fn compact(&self, room: &str, snapshot: Bytes, upto: u64) -> StoreFuture<()> {
            self.0.compact(room, snapshot, upto)
        }
        fn delete(&self, room: &str) -> StoreFuture<()> {
            self.0.delete(room)
        }
        fn name(&self) -> &'static str {
            "slow"
        }
    }

    /// A memory store whose writes (appends and compactions) fail while
    /// `failures` is above 0, each failure counting one down.
    struct FailingWrites {
        inner: Arc<MemoryStore>,
        failures: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl FailingWrites {
        fn fails(&self) -> bool {
            self.failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    impl DocStore for FailingWrites {
        fn load(&self, room: &str) -> StoreFuture<StoredDoc> {
            self.inner.load(room)
        }
        fn append(&self, room: &str, update: Bytes, _: Option<&str>) -> StoreFuture<u64> {
            if self.fails() {
                return Box::pin(async { Err(crate::store::StoreError::Io("disk full".into())) });
            }
            self.inner.append(room, update, None)
        }
        fn compact(&self, room: &str, snapshot: Bytes, upto: u64) -> StoreFuture<()> {
            if self.fails() {
                return Box::pin(async { Err(crate::store::StoreError::Io("disk full".into())) });
            }
            self.inner.compact(room, snapshot, upto)
        }
        fn delete(&self, room: &str) -> StoreFuture<()> {
            self.inner.delete(room)
        }
        fn name(&self) -> &'static str {
            "failing"
        }
    }

    fn registry(store: Arc<dyn DocStore>, fault: Option<&str>) -> Registry {
        registry_with(store, fault, |_| {})
    }

    fn registry_with(
        store: Arc<dyn DocStore>,
        fault: Option<&str>,
        tweak: impl FnOnce(&mut Config),
    ) -> Registry {
        let mut config = Config::ephemeral();
        config.room_threads = 1;
        config.fault_panic = fault.map(|f| FaultPanic::parse(f).expect("fault spec"));
        tweak(&mut config);
        let metrics = Arc::new(Metrics::default());
        Registry::new(RoomServices {
            hooks: Webhooks::start(&config.api, metrics.clone()),
            config: Arc::new(config),
            store,
            metrics,
            bridge: None,
        })
    }

    fn insert(s: &str) -> Bytes {
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, s);
        let update = doc
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        Bytes::from(update)
    }

    async fn text(registry: &Registry, room: &RoomId) -> String {
        let read = ReadDoc {
            format: DocFormat::Json,
        };
        let request = registry
            .request(room, read)
            .await
            .expect("registry not full");
        match request.await {
            Ok(Ok(DocBody::Json(v))) => v["t"].as_str().unwrap_or("").to_owned(),
            Ok(Ok(DocBody::Binary(_))) => unreachable!("asked for JSON"),
            Ok(Err(e)) => panic!("read refused: {e}"),
            Err(e) => panic!("room did not answer: {e}"),
        }
    }

    #[actix::test]
    async fn an_address_whose_actor_is_gone_is_replaced() {
        let registry = registry(Arc::new(MemoryStore::new()), None);
        let room: RoomId = Arc::from("r");
        let (tx, rx) = actix::dev::channel::channel::<Room>(1);
        drop(rx);
        registry.rooms().insert(
            room.clone(),
            Entry {
                addr: Addr::new(tx),
                joins_sent: 0,
                idle: None,
                evicting: false,
                incarnation: 0,
                writes: TaskTracker::new(),
            },
        );
        assert!(registry.live("r").is_none(), "a dead address is not live");
        assert!(registry.live_list().is_empty());
        let addr = registry.enter_waiting(&room).await.expect("not full");
        assert!(addr.connected(), "enter started a new room");
        assert_eq!(registry.rooms_started(), 1);
        // `enter` counted one join: send the message that counts it.
        let read = addr.send(ReadDoc {
            format: DocFormat::Json,
        });
        assert!(matches!(read.await, Ok(Ok(_))), "the new room answers");
    }

    #[actix::test]
    async fn a_room_that_panics_is_forgotten_and_its_successor_has_its_appends() {
        let memory = Arc::new(MemoryStore::new());
        let registry = registry(Arc::new(SlowAppends(memory)), Some("handler:2:r"));
        let room: RoomId = Arc::from("r");
        // Applied, its append in flight (200 ms) when the room dies.
        let first = registry
            .request(
                &room,
                ApiUpdate {
                    data: insert("one"),
                },
            )
            .await
            .expect("not full");
        // Applied, then the handler panics.
        let second = registry
            .request(
                &room,
                ApiUpdate {
                    data: insert("two"),
                },
            )
            .await
            .expect("not full");
        assert!(second.await.is_err(), "the room died");
        // (The reply channel closes while the panic unwinds, a moment
        // before the supervisor drops the room.)
        for _ in 0..100 {
            if registry.live("r").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(registry.live("r").is_none(), "the dead room is forgotten");
        assert_eq!(registry.live_rooms(), 0, "and not left in the table");
        assert!(first.await.is_err(), "died before it could ack");
        // The successor loads once the dead room's append has landed.
        let text = text(&registry, &room).await;
        assert!(
            text.contains("one"),
            "an update whose append was in flight is lost: {text:?}"
        );
        assert!(
            !text.contains("two"),
            "the update applied by the dead room only: {text:?}"
        );
        assert_eq!(registry.rooms_started(), 2);
        assert_eq!(registry.inner.services.metrics.rooms_restarted.get(), 1);
    }

    /// The text of everything the memory store holds for `room`.
    async fn stored_text(store: &MemoryStore, room: &str) -> String {
        use yrs::updates::decoder::Decode;
        let stored = store.load(room).await.expect("memory load");
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        for part in stored.snapshot.iter().chain(stored.updates.iter()) {
            let update = yrs::Update::decode_v1(part).expect("stored update decodes");
            doc.transact_mut().apply_update(update).expect("applies");
        }
        let txn = doc.transact();
        yrs::GetString::get_string(&text, &txn)
    }

    #[actix::test]
    async fn an_update_whose_append_failed_is_kept_through_eviction_until_stored() {
        const FAILURES: usize = 6;
        let memory = Arc::new(MemoryStore::new());
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(FAILURES));
        let store = FailingWrites {
            inner: memory.clone(),
            failures: failures.clone(),
        };
        let registry = registry_with(Arc::new(store), None, |c| {
            c.limits.room_idle_ms = 10;
            c.store_retry_min_ms = 20;
            c.store_retry_max_ms = 80;
        });
        let metrics = registry.inner.services.metrics.clone();
        let room: RoomId = Arc::from("r");
        let update = registry
            .request(
                &room,
                ApiUpdate {
                    data: insert("kept"),
                },
            )
            .await
            .expect("not full");
        let refused = update.await.expect("room answers");
        assert!(
            matches!(&refused, Err(e) if e.code == crate::protocol::ErrorCode::StoreFailed),
            "the sender is told: {refused:?}"
        );
        assert_eq!(metrics.store_unstored_updates.get(), 1, "kept");
        // Idle long past `room_idle_ms` while writes fail: still live.
        let began = std::time::Instant::now();
        while failures.load(Ordering::SeqCst) > 0 {
            assert!(
                registry.live("r").is_some(),
                "evicted holding an update it could not store ({} failures left)",
                failures.load(Ordering::SeqCst)
            );
            assert!(began.elapsed() < Duration::from_secs(10), "no retries");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Stored by a retry or by the eviction's snapshot; then evicted.
        for _ in 0..400 {
            if registry.live("r").is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(registry.live("r").is_none(), "evicted once stored");
        assert_eq!(registry.rooms_started(), 1, "the first room held it");
        assert_eq!(metrics.store_unstored_updates.get(), 0);
        assert_eq!(metrics.store_unstored_bytes.get(), 0);
        assert!(metrics.store_append_failures.get() >= 1);
        assert_eq!(stored_text(&memory, "r").await, "kept");
        assert_eq!(text(&registry, &room).await, "kept", "loaded back");
    }
}
