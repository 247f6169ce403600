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
    /// Set by the room when it became idle (no members, no followers):
    /// since when, and how many joins it had seen then. It may be evicted
    /// for room only while that count equals `joins_sent` (nothing sent to
    /// it since). Cleared whenever a join is counted.
    idle: Option<(Instant, u64)>,
    /// Asked to evict itself now to make room ([`EvictNow`]); not asked twice.
    evicting: bool,
}

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
        self.rooms().get(room).map(|e| e.addr.clone())
    }

    /// Every live room with its address.
    pub fn live_list(&self) -> Vec<(RoomId, Addr<Room>)> {
        self.rooms()
            .iter()
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
        self.inner.started.fetch_add(1, Ordering::Relaxed);
        let arbiter = &self.inner.arbiters[self.shard(room)];
        let (id, services, registry) = (room.clone(), self.inner.services.clone(), self.clone());
        let addr = Room::start_in_arbiter(arbiter, move |_| Room::new(id, services, registry));
        rooms.insert(
            room.clone(),
            Entry {
                addr: addr.clone(),
                joins_sent: 1,
                idle: None,
                evicting: false,
            },
        );
        self.inner
            .live_max
            .fetch_max(rooms.len() as u64, Ordering::Relaxed);
        Entered::Room(addr)
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
