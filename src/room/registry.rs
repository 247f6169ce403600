//! Finds or starts the actor of a room. Rooms run on a pool of arbiters (one
//! per core by default), chosen by a hash of the room id, so a hot room
//! occupies one thread and both cores do work.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use tokio_util::task::TaskTracker;

use super::supervise::{FaultHook, Incarnation, Supervised};
use super::{Join, Room, RoomId, StoreNow};
use crate::cluster::Bridge;
use crate::config::Config;
use crate::config::FaultAt;
use crate::metrics::Metrics;
use crate::store::DocStore;
use crate::webhook::Webhooks;

/// A live room as the registry knows it.
struct Entry {
    addr: Addr<Room>,
    /// Joins sent to this room; it may be evicted only when it has
    /// processed all of them (see [`Registry::remove_if_idle`]).
    joins_sent: u64,
    /// Which start of the room this is (unique per registry).
    incarnation: u64,
    /// The room's appends, handed to its successor if it dies.
    writes: TaskTracker,
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

/// Mailbox capacity of a room (actix's default).
const MAILBOX: usize = 16;

struct Inner {
    services: RoomServices,
    arbiters: Vec<ArbiterHandle>,
    /// Owns the arbiter threads so they live as long as the registry.
    _threads: Vec<Arbiter>,
    rooms: Mutex<HashMap<RoomId, Entry>>,
    /// Appends of rooms that died (by room id) that a successor must wait
    /// for before it loads; dropped once finished.
    orphaned_writes: Mutex<HashMap<RoomId, TaskTracker>>,
    started: AtomicU64,
    evicted: AtomicU64,
    /// `--fault-panic` (test only).
    fault: Option<FaultHook>,
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
                services,
                arbiters,
                _threads: threads,
                rooms: Mutex::new(HashMap::new()),
                orphaned_writes: Mutex::new(HashMap::new()),
                started: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, Entry>> {
        // Every critical section leaves the map consistent, so a poisoned
        // lock (a panic elsewhere while holding it) is safe to reuse.
        self.inner.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `join` to the room, starting the room if it is not live. The
    /// returned address stays valid while the member has not left.
    pub fn join(&self, room: &RoomId, join: Join) -> Addr<Room> {
        let addr = self.enter(room);
        addr.do_send(join);
        addr
    }

    /// Sends `msg` to the room (starting it if needed), counted like a
    /// join, so the room cannot be evicted before it handled the message
    /// (every handler of such a message counts it in `joins_seen`; see
    /// [`Room::entered`](super::Room)). For the HTTP API's one-shot
    /// operations and subscriptions.
    pub fn request<M>(&self, room: &RoomId, msg: M) -> Request<Room, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Room: Handler<M>,
    {
        self.enter(room).send(msg)
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

    /// Finds or starts the room and counts one join for it; the caller
    /// must send it exactly one message whose handler counts it. A room
    /// whose actor is gone (it panicked) is replaced by a fresh one here.
    pub fn enter(&self, room: &RoomId) -> Addr<Room> {
        let mut rooms = self.rooms();
        let predecessor = match rooms.get(room) {
            Some(entry) if entry.addr.connected() => None,
            // Dead without having told us (`Room::died` does): replace it.
            Some(_) => rooms.remove(room).map(|old| {
                old.writes.close();
                old.writes
            }),
            None => self.orphaned().remove(room),
        };
        let entry = rooms
            .entry(room.clone())
            .or_insert_with(|| self.start(room, predecessor));
        entry.joins_sent += 1;
        entry.addr.clone()
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
        }
    }

    /// `--fault-panic` (test only): counts one non-empty update applied to
    /// `room` and says where to panic if this is the one.
    pub(super) fn fault_due(&self, room: &str) -> Option<FaultAt> {
        self.inner.fault.as_ref().and_then(|f| f.due(room))
    }

    /// Removes the room if it has processed every join sent to it; the room
    /// stops itself when this returns true.
    pub(crate) fn remove_if_idle(&self, room: &RoomId, joins_seen: u64) -> bool {
        let mut rooms = self.rooms();
        match rooms.get(room) {
            Some(entry) if entry.joins_sent == joins_seen => {
                rooms.remove(room);
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
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

    /// Asks every live room to write its document to the store, and waits.
    pub async fn flush_all(&self) {
        let addrs: Vec<Addr<Room>> = self.rooms().values().map(|e| e.addr.clone()).collect();
        let flushes = addrs.iter().map(|a| a.send(StoreNow));
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
        fn append(&self, room: &str, update: Bytes) -> StoreFuture<u64> {
            let (store, room) = (self.0.clone(), room.to_owned());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(200)).await;
                store.append(&room, update).await
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

    fn registry(store: Arc<dyn DocStore>, fault: Option<&str>) -> Registry {
        let mut config = Config::ephemeral();
        config.room_threads = 1;
        config.fault_panic = fault.map(|f| FaultPanic::parse(f).expect("fault spec"));
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
        match registry.request(room, read).await {
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
                incarnation: 0,
                writes: TaskTracker::new(),
            },
        );
        assert!(registry.live("r").is_none(), "a dead address is not live");
        assert!(registry.live_list().is_empty());
        let addr = registry.enter(&room);
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
        let first = registry.request(
            &room,
            ApiUpdate {
                data: insert("one"),
            },
        );
        // Applied, then the handler panics.
        let second = registry.request(
            &room,
            ApiUpdate {
                data: insert("two"),
            },
        );
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
}
