//! Finds or starts the actor of a room. Rooms run on a pool of arbiters (one
//! per core by default), chosen by a hash of the room id, so a hot room
//! occupies one thread and both cores do work.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use super::{Join, Room, RoomId, StoreNow};
use crate::cluster::Bridge;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::DocStore;
use crate::webhook::Webhooks;

/// A live room as the registry knows it.
struct Entry {
    addr: Addr<Room>,
    /// Joins sent to this room; it may be evicted only when it has
    /// processed all of them (see [`Registry::remove_if_idle`]).
    joins_sent: u64,
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
    started: AtomicU64,
    evicted: AtomicU64,
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
                services,
                arbiters,
                _threads: threads,
                rooms: Mutex::new(HashMap::new()),
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
        self.rooms().get(room).map(|e| e.addr.clone())
    }

    /// Every live room with its address.
    pub fn live_list(&self) -> Vec<(RoomId, Addr<Room>)> {
        self.rooms()
            .iter()
            .map(|(id, e)| (id.clone(), e.addr.clone()))
            .collect()
    }

    /// Finds or starts the room and counts one join for it; the caller
    /// must send it exactly one message whose handler counts it.
    pub fn enter(&self, room: &RoomId) -> Addr<Room> {
        let mut rooms = self.rooms();
        let entry = rooms.entry(room.clone()).or_insert_with(|| {
            self.inner.started.fetch_add(1, Ordering::Relaxed);
            let arbiter = &self.inner.arbiters[self.shard(room)];
            let (id, services, registry) =
                (room.clone(), self.inner.services.clone(), self.clone());
            let addr = Room::start_in_arbiter(arbiter, move |_| Room::new(id, services, registry));
            Entry {
                addr,
                joins_sent: 0,
            }
        });
        entry.joins_sent += 1;
        entry.addr.clone()
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
