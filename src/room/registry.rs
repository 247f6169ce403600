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
            let fut = ctx.into_future(Room::new(id, services, registry, life));
            actix::spawn(Supervised::new(fut));
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
