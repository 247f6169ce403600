//! Cluster mode (`--redis-url`): rooms open on several nodes stay one room.
//!
//! Every node has a random node id (the prefix of its member ids, logged at
//! start). A room open on a node subscribes to the Redis channel
//! `chorus:room:{id}`, which carries two kinds of messages:
//!
//! - **Document updates** live in the store every node shares
//!   (PostgreSQL). A room appends an update there; once the transaction
//!   committed (which numbered it: the log's `(generation, seq)`), the room
//!   publishes it as a [`LogFrame`] and acknowledges it. A published entry
//!   is thus always in the log, and Redis holds nothing that would be lost
//!   with it. Entries of different nodes may arrive out of order: a node
//!   that sees a hole in the numbering waits `--cluster-gap-wait-ms` for it
//!   to fill, then reads the missing entries from the store
//!   ([`crate::store::DocStore::read_since`]) instead of diverging; after a
//!   reconnection to Redis it reads what was published meanwhile the same
//!   way. A new generation means the room was deleted.
//! - **Ephemeral items** (presence diffs, cursors, typing, events) are
//!   published by the bridge as MessagePack [`Envelope`]s, numbered per
//!   room instance (`epoch`, `seq` = 1, 2, …). A receiver tracks them per
//!   origin node; a gap, a new instance or a reconnection makes it publish
//!   [`Item::Hello`] with its local members, and every other node answers
//!   with [`Item::State`]: its own local members. Nothing is republished by
//!   a receiver, so there are no echo loops.
//!
//! The room's hot path stays cheap: publishing an ephemeral item is a
//! `try_send` into a bounded channel drained by the bridge task. On
//! overflow (or while Redis is down) the item is counted in
//! `chorus_cluster_dropped_total` and logged; the peers' gap detection then
//! resyncs presence through `Hello`/`State`.
//!
//! Liveness: each node refreshes `chorus:node:{id}` (`SET … PX`
//! [`NODE_TTL`]) every [`balance::LOAD_INTERVAL`], with its session count
//! as the value (see [`balance`]: the other nodes' counts come back in the
//! same script); every [`HEARTBEAT`] it also checks the
//! nodes its rooms have remote members from, and rooms drop the members of
//! nodes whose key expired. A member of a dead node thus disappears from
//! the others at most `NODE_TTL + HEARTBEAT` (8 s) after the node died.
//! Presence reads never wait on Redis: they read the room's local map.

pub mod balance;
pub mod log;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::protocol::native::{CursorView, MemberView};
use balance::{LoadView, NodeLoad};
use log::LogFrame;

/// How long a node's liveness key lives without a refresh (three missed
/// heartbeats).
pub const NODE_TTL: Duration = Duration::from_secs(6);
/// How often a node refreshes its liveness key and checks the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// Items waiting for the bridge task; beyond this, publishes are dropped
/// (and recovered by the peers' gap detection).
const PUBLISH_QUEUE: usize = 8192;
/// Longest wait between two attempts to reach Redis.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Errors of the cluster layer.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL could not be parsed.
    #[error("bad --redis-url: {0}")]
    Url(String),
    /// An envelope could not be decoded.
    #[error("bad cluster envelope: {0}")]
    Decode(String),
}

/// Redis channel of a room.
pub fn room_channel(room: &str) -> String {
    format!("chorus:room:{room}")
}

/// Redis key of a node's liveness heartbeat.
pub fn node_key(node: &str) -> String {
    format!("chorus:node:{node}")
}

pub use crate::ids::node_of;

/// The `seq` of an [`Envelope`] outside any room instance's sequence.
pub const UNSEQUENCED: u64 = 0;

/// One item on a room's channel: who sent it and where it sits in that
/// node's sequence for the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Origin node id.
    pub node: String,
    /// Room id.
    pub room: String,
    /// Random id of the origin's room instance; `seq` restarts with it.
    pub epoch: u64,
    /// Position in the origin room instance's sequence, from 1;
    /// [`UNSEQUENCED`] for an item published by a node that does not have
    /// the room open (a backend's event), which no gap check counts.
    pub seq: u64,
    /// What happened.
    #[serde(flatten)]
    pub item: Item,
}

/// What a room publishes, tagged by `kind` with its `payload`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "payload", rename_all = "snake_case")]
pub enum Item {
    /// Presence changes of the origin's local members.
    Presence {
        /// Members that joined.
        joined: Vec<MemberView>,
        /// Members whose state changed.
        updated: Vec<MemberView>,
        /// Members that left.
        left: Vec<String>,
    },
    /// Cursor moves of the origin's local members.
    Cursors(Vec<CursorView>),
    /// A local member started or stopped typing.
    Typing {
        /// Member id.
        id: String,
        /// On or off.
        on: bool,
    },
    /// An ephemeral event from a local member.
    Event {
        /// Sender's member id.
        from: String,
        /// Event name.
        name: String,
        /// Payload.
        data: Value,
    },
    /// The origin opened the room, reconnected, or saw a gap: every other
    /// node answers with [`Item::State`].
    Hello {
        /// The origin's local members (the others may have lost them).
        members: Vec<MemberView>,
        /// Their cursors.
        cursors: Vec<CursorView>,
    },
    /// The room's version list changed on the origin (a version added or
    /// deleted there): members re-list.
    VersionsChanged,
    /// Answer to a `Hello` from node `to`.
    State {
        /// The node that asked.
        to: String,
        /// The answering node's local members.
        members: Vec<MemberView>,
        /// Their cursors.
        cursors: Vec<CursorView>,
    },
}

impl Envelope {
    /// MessagePack with field names (compact, self-describing).
    pub fn encode(&self) -> Vec<u8> {
        // unwrap_or_default: plain structs of strings, bytes and JSON values
        // always serialize to MessagePack.
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Decodes an envelope from the wire.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, ClusterError> {
        rmp_serde::from_slice(bytes).map_err(|e| ClusterError::Decode(e.to_string()))
    }
}

/// An item from another node, delivered to the room actor, which applies it
/// and fans it out locally but never publishes it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Remote {
    /// The envelope as received.
    pub envelope: Envelope,
}

/// A frame of the room's log (an entry, or the room's deletion) published
/// by another node; entries of different nodes may arrive out of order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Log(pub LogFrame);

/// Sent by the bridge to every subscribed room after (re)connecting to
/// Redis: whatever was published meanwhile is lost, so the room reads the
/// log entries it missed and says `Hello` to resync presence.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resubscribed;

/// Sent by the bridge every [`HEARTBEAT`]: the nodes whose liveness key
/// expired; rooms drop their members.
#[derive(Message)]
#[rtype(result = "()")]
pub struct NodesDead {
    /// Dead node ids.
    pub nodes: Arc<HashSet<String>>,
}

/// A subscribed room: where its items go.
#[derive(Clone)]
struct Sub {
    epoch: u64,
    remote: Recipient<Remote>,
    log: Recipient<Log>,
    resubscribed: Recipient<Resubscribed>,
    dead: Recipient<NodesDead>,
}

enum Control {
    Subscribe {
        room: String,
        sub: Sub,
    },
    Unsubscribe {
        room: String,
        epoch: u64,
    },
    Dead(Arc<HashSet<String>>),
    /// The publisher reconnected: items may have been dropped meanwhile.
    Resync,
}

/// Counters and state of the bridge, for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Items published.
    pub published: AtomicU64,
    /// Items dropped: queue full or Redis unreachable.
    pub dropped: AtomicU64,
    /// Items received from other nodes.
    pub received: AtomicU64,
    /// Gaps seen (resyncs asked for).
    pub gaps: AtomicU64,
    /// Reads of a room's log that brought entries the room had missed
    /// (after a gap, a reconnection or a lost log).
    pub recoveries: AtomicU64,
    /// True while the pub/sub connection is up.
    pub connected: AtomicBool,
    /// True while the publishing connection is up.
    pub publishing: AtomicBool,
}

/// One bridge counter for `/metrics`: name, help text, how to read it.
type StatCounter = (&'static str, &'static str, fn(&Stats) -> u64);

/// Handle to the node's bridge to Redis; cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    node: Arc<str>,
    publish: mpsc::Sender<Out>,
    control: mpsc::UnboundedSender<Control>,
    /// Nodes with remote members in some room here (checked for liveness).
    watched: Arc<RwLock<HashSet<String>>>,
    stats: Arc<Stats>,
    /// Something was dropped because the publish queue was full: once it
    /// drains, rooms resync (say `Hello`, which makes the others read the
    /// log and re-send their members).
    overflowed: Arc<AtomicBool>,
    /// This node's load (written into its liveness key) and the others'.
    load: Arc<Load>,
}

/// This node's load as shared through its liveness key, and the other
/// nodes' as last read.
#[derive(Debug, Default)]
struct Load {
    /// Open WebSocket sessions on this node.
    sessions: AtomicU64,
    /// Set once the node started draining: its key says `draining`.
    draining: AtomicBool,
    /// The other nodes' loads, as last read.
    view: std::sync::Mutex<Option<LoadView>>,
}

impl Bridge {
    /// Starts the bridge tasks for node `node` (publisher + heartbeat, and
    /// subscriber). Must be called inside a tokio runtime (the actix
    /// `System`). Connection failures are not errors: the tasks retry with
    /// backoff and report `connected = false` meanwhile.
    pub fn start(url: &str, node: &str) -> Result<Bridge, ClusterError> {
        let client = redis::Client::open(url).map_err(|e| ClusterError::Url(e.to_string()))?;
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (control, control_rx) = mpsc::unbounded_channel();
        let bridge = Bridge {
            node: Arc::from(node),
            publish,
            control,
            watched: Arc::default(),
            stats: Arc::default(),
            overflowed: Arc::default(),
            load: Arc::default(),
        };
        tokio::spawn(publisher(client.clone(), bridge.clone(), publish_rx));
        tokio::spawn(subscriber(client, bridge.clone(), control_rx));
        tracing::info!(node, "cluster mode: bridge to Redis started");
        Ok(bridge)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// True while both connections to Redis are up (else: degraded).
    pub fn connected(&self) -> bool {
        bridge_up(&self.stats)
    }

    /// Counters and connection state.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// True when `member` is connected to this node.
    pub fn is_local(&self, member: &str) -> bool {
        node_of(member) == Some(&*self.node)
    }

    /// Publishes an ephemeral item into a room this node does not have
    /// open, outside any instance's sequence (no gap check counts it, and
    /// nothing recovers it if it is lost).
    pub fn publish_unsequenced(&self, room: &str, item: Item) {
        self.publish(&Envelope {
            node: self.node.to_string(),
            room: room.to_owned(),
            epoch: 0,
            seq: UNSEQUENCED,
            item,
        });
    }

    /// Hands an item to the bridge task without waiting. Dropped (counted
    /// and logged) when the queue is full; peers recover through their gap
    /// detection.
    pub fn publish(&self, envelope: &Envelope) {
        let item = (room_channel(&envelope.room), envelope.encode());
        if self.publish.try_send(Out::Item(item.0, item.1)).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            tracing::warn!(room = %envelope.room, "cluster publish queue full: item dropped");
        }
    }

    /// Resolves once everything handed to [`Bridge::publish`] before the
    /// call was published (or dropped because Redis is away), then removes
    /// this node's liveness key: for a graceful shutdown, after rooms said
    /// goodbye for their members.
    pub async fn drain(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.publish.send(Out::Drain(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Records this node's open sessions, written into its liveness key at
    /// the next refresh.
    pub fn report_sessions(&self, sessions: u64) {
        self.load.sessions.store(sessions, Ordering::Relaxed);
    }

    /// Marks this node as draining in its liveness key now (without
    /// waiting for the next refresh), so other nodes stop counting it.
    pub fn set_draining(&self) {
        self.load.draining.store(true, Ordering::Relaxed);
        let _ = self.publish.try_send(Out::ShareLoad);
    }

    /// The other nodes' loads as last read (`None` before the first read,
    /// or while Redis is unreachable).
    pub fn load_view(&self) -> Option<LoadView> {
        let view = self.load.view.lock().unwrap_or_else(|e| e.into_inner());
        view.clone()
            .filter(|v| v.at.elapsed() < 2 * balance::LOAD_INTERVAL + balance::STALE_AFTER)
    }

    /// Subscribes the room instance `epoch` to its channel.
    pub fn subscribe<A>(&self, room: &str, epoch: u64, addr: &Addr<A>)
    where
        A: Actor<Context = Context<A>>
            + Handler<Remote>
            + Handler<Log>
            + Handler<Resubscribed>
            + Handler<NodesDead>,
    {
        let sub = Sub {
            epoch,
            remote: addr.clone().recipient(),
            log: addr.clone().recipient(),
            resubscribed: addr.clone().recipient(),
            dead: addr.clone().recipient(),
        };
        let _ = self.control.send(Control::Subscribe {
            room: room.to_owned(),
            sub,
        });
    }

    /// Unsubscribes the room instance `epoch` (a newer instance keeps its
    /// subscription).
    pub fn unsubscribe(&self, room: &str, epoch: u64) {
        let _ = self.control.send(Control::Unsubscribe {
            room: room.to_owned(),
            epoch,
        });
    }

    /// Watches the liveness of `node` (a room has members from it).
    pub fn watch(&self, node: &str) {
        let known = self
            .watched
            .read()
            .map(|w| w.contains(node))
            .unwrap_or(true);
        if !known {
            if let Ok(mut w) = self.watched.write() {
                w.insert(node.to_owned());
            }
        }
    }

    /// Publishes a frame of `room`'s log (an entry once it is durable in
    /// the store, or the room's deletion), without waiting. Dropped (counted)
    /// when the queue is full or Redis is away: receivers see the hole at
    /// the next entry, and the publisher's reconnection makes every room
    /// here say `Hello`, which makes the others read the log.
    pub fn publish_log(&self, room: &str, frame: &LogFrame) {
        let out = Out::Item(room_channel(room), frame.encode());
        if self.publish.try_send(out).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.overflowed.store(true, Ordering::Relaxed);
            tracing::warn!(room, "cluster publish queue full: log entry dropped");
        }
    }

    /// Counts a gap seen by a room.
    pub fn gap(&self) {
        self.stats.gaps.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a read of the log that brought missed entries.
    pub fn recovered(&self) {
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
    }

    /// Registers the bridge's gauge and counters (read from [`Stats`] at
    /// each scrape) in the metrics registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let read = |f: fn(&Stats) -> u64| {
            let s = self.stats.clone();
            move || f(&s)
        };
        let counters: [StatCounter; 5] = [
            (
                "chorus_cluster_published",
                "Items published to other nodes.",
                |s| s.published.load(Ordering::Relaxed),
            ),
            (
                "chorus_cluster_dropped",
                "Items not published (queue full or Redis down); peers resync.",
                |s| s.dropped.load(Ordering::Relaxed),
            ),
            (
                "chorus_cluster_received",
                "Items received from other nodes.",
                |s| s.received.load(Ordering::Relaxed),
            ),
            (
                "chorus_cluster_gaps",
                "Sequence gaps seen (each asks the other nodes for a resync).",
                |s| s.gaps.load(Ordering::Relaxed),
            ),
            (
                "chorus_cluster_recoveries",
                "Reads of a room's log that brought entries the node had missed.",
                |s| s.recoveries.load(Ordering::Relaxed),
            ),
        ];
        let mut sampled = crate::metrics::Sampled::default().gauge(
            "chorus_cluster_connected",
            "1 while the node is connected to Redis (0: degraded).",
            read(|s| u64::from(bridge_up(s))),
        );
        for (name, help, f) in counters {
            sampled = sampled.counter(name, help, read(f));
        }
        registry.register_collector(Box::new(sampled));
    }
}

/// What the publisher task is handed.
enum Out {
    /// Publish `payload` on `channel`.
    Item(String, Vec<u8>),
    /// Answer once everything queued before is handled; see
    /// [`Bridge::drain`].
    Drain(tokio::sync::oneshot::Sender<()>),
    /// Refresh the liveness key now (its value changed).
    ShareLoad,
}

/// Both connections to Redis are up.
fn bridge_up(s: &Stats) -> bool {
    s.connected.load(Ordering::Relaxed) && s.publishing.load(Ordering::Relaxed)
}

/// Waits before the next connection attempt, doubling up to [`MAX_BACKOFF`].
async fn backoff(delay: &mut Duration) {
    tokio::time::sleep(*delay).await;
    *delay = (*delay * 2).min(MAX_BACKOFF);
}

/// Publishes queued items in order and refreshes the node's liveness key;
/// reconnects with backoff. While Redis is down, queued items are dropped
/// (counted) so that the queue never holds stale state.
async fn publisher(client: redis::Client, bridge: Bridge, mut rx: mpsc::Receiver<Out>) {
    let mut delay = Duration::from_millis(50);
    let key = node_key(&bridge.node);
    let ttl_ms = NODE_TTL.as_millis() as u64;
    let mut failed = false;
    loop {
        let mut conn = match client.get_multiplexed_async_connection().await {
            Ok(c) => {
                delay = Duration::from_millis(50);
                bridge.stats.publishing.store(true, Ordering::Relaxed);
                if std::mem::take(&mut failed) {
                    // Items were dropped while down: rooms say Hello again.
                    let _ = bridge.control.send(Control::Resync);
                }
                c
            }
            Err(e) => {
                failed = true;
                tracing::warn!("cluster: cannot reach Redis to publish: {e}");
                while let Ok(out) = rx.try_recv() {
                    match out {
                        Out::Item(..) => {
                            bridge.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        Out::Drain(done) => {
                            let _ = done.send(());
                        }
                        Out::ShareLoad => {}
                    }
                }
                backoff(&mut delay).await;
                continue;
            }
        };
        let mut beat = tokio::time::interval(balance::LOAD_INTERVAL);
        // Redis may have restarted empty: give every live node time to
        // write its key again before calling anyone dead.
        let up_since = tokio::time::Instant::now();
        let mut judged = up_since;
        loop {
            let res: redis::RedisResult<()> = tokio::select! {
                out = rx.recv() => {
                    let (channel, payload) = match out {
                        None => return,
                        Some(Out::Item(channel, payload)) => (channel, payload),
                        Some(Out::ShareLoad) => {
                            if let Err(e) = share_load(&mut conn, &bridge, &key, ttl_ms).await {
                                tracing::warn!("cluster: Redis publish connection failed: {e}");
                                break;
                            }
                            continue;
                        }
                        Some(Out::Drain(done)) => {
                            let res = redis::pipe()
                                .cmd("DEL").arg(&key).ignore()
                                .cmd("SREM").arg(balance::NODES_KEY).arg(&*bridge.node).ignore()
                                .query_async::<()>(&mut conn).await;
                            let _ = done.send(());
                            if let Err(e) = res {
                                tracing::warn!("cluster: Redis publish connection failed: {e}");
                                break;
                            }
                            continue;
                        }
                    };
                    let res = redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<i64>(&mut conn)
                        .await;
                    match res {
                        Ok(_) => {
                            bridge.stats.published.fetch_add(1, Ordering::Relaxed);
                            if rx.is_empty() && bridge.overflowed.swap(false, Ordering::Relaxed) {
                                let _ = bridge.control.send(Control::Resync);
                            }
                            Ok(())
                        }
                        Err(e) => {
                            bridge.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            Err(e)
                        }
                    }
                }
                _ = beat.tick() => {
                    let judge = up_since.elapsed() >= NODE_TTL && judged.elapsed() >= HEARTBEAT;
                    if judge {
                        judged = tokio::time::Instant::now();
                    }
                    heartbeat(&mut conn, &bridge, &key, ttl_ms, judge).await
                }
            };
            if let Err(e) = res {
                tracing::warn!("cluster: Redis publish connection failed: {e}");
                break;
            }
        }
        failed = true;
        bridge.stats.publishing.store(false, Ordering::Relaxed);
        backoff(&mut delay).await;
    }
}

/// Writes this node's liveness key with its load and reads the other
/// nodes' ([`balance::SHARE_LOAD`]) into the bridge's load view.
async fn share_load(
    conn: &mut redis::aio::MultiplexedConnection,
    bridge: &Bridge,
    key: &str,
    ttl_ms: u64,
) -> redis::RedisResult<()> {
    let load = &bridge.load;
    let value = NodeLoad::encode(
        load.sessions.load(Ordering::Relaxed),
        load.draining.load(Ordering::Relaxed),
    );
    let prefix = key.strip_suffix(&*bridge.node).unwrap_or(key);
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(balance::SHARE_LOAD));
    let flat: Vec<redis::Value> = SCRIPT
        .key(balance::NODES_KEY)
        .arg(&*bridge.node)
        .arg(value)
        .arg(ttl_ms)
        .arg(prefix)
        .invoke_async(conn)
        .await?;
    let mut peers = Vec::new();
    for entry in flat.chunks_exact(3) {
        let (Ok(id), Ok(value), Ok(pttl)) = (
            redis::from_redis_value_ref::<String>(&entry[0]),
            redis::from_redis_value_ref::<String>(&entry[1]),
            redis::from_redis_value_ref::<i64>(&entry[2]),
        ) else {
            continue;
        };
        if id != *bridge.node {
            peers.push((id, NodeLoad::decode(&value, pttl, NODE_TTL)));
        }
    }
    let view = LoadView {
        at: std::time::Instant::now(),
        peers,
    };
    *load.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(view);
    Ok(())
}

/// Refreshes this node's liveness key (and the load view), then (when
/// `judge`) tells rooms which watched nodes are gone.
async fn heartbeat(
    conn: &mut redis::aio::MultiplexedConnection,
    bridge: &Bridge,
    key: &str,
    ttl_ms: u64,
    judge: bool,
) -> redis::RedisResult<()> {
    share_load(conn, bridge, key, ttl_ms).await?;
    if !judge {
        return Ok(());
    }
    let watched: Vec<String> = bridge
        .watched
        .read()
        .map(|w| w.iter().cloned().collect())
        .unwrap_or_default();
    let mut dead = HashSet::new();
    for node in watched {
        let alive: bool = redis::cmd("EXISTS")
            .arg(node_key(&node))
            .query_async(conn)
            .await?;
        if !alive {
            dead.insert(node);
        }
    }
    if !dead.is_empty() {
        tracing::info!(nodes = ?dead, "cluster: nodes stopped heartbeating; dropping their members");
        if let Ok(mut w) = bridge.watched.write() {
            for node in &dead {
                w.remove(node);
            }
        }
        let _ = bridge.control.send(Control::Dead(Arc::new(dead)));
    }
    Ok(())
}

/// Keeps one pub/sub connection: SUBSCRIBE per open room, UNSUBSCRIBE on
/// eviction, decodes messages and hands other nodes' items to rooms.
/// After a reconnection it resubscribes every room and tells each one
/// ([`Resubscribed`]) so it resyncs.
async fn subscriber(
    client: redis::Client,
    bridge: Bridge,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut subs: HashMap<String, Sub> = HashMap::new();
    let mut delay = Duration::from_millis(50);
    loop {
        let pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                bridge.stats.connected.store(false, Ordering::Relaxed);
                tracing::warn!("cluster: cannot reach Redis to subscribe: {e}");
                // Keep the subscription table current meanwhile.
                while let Ok(c) = control.try_recv() {
                    apply_control(&mut subs, c, None).await;
                }
                backoff(&mut delay).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let mut ok = true;
        for room in subs.keys() {
            if sink.subscribe(room_channel(room)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            backoff(&mut delay).await;
            continue;
        }
        delay = Duration::from_millis(50);
        bridge.stats.connected.store(true, Ordering::Relaxed);
        if !subs.is_empty() {
            tracing::info!("cluster: connected to Redis; rooms resync");
        }
        for sub in subs.values() {
            sub.resubscribed.do_send(Resubscribed);
        }
        loop {
            tokio::select! {
                c = control.recv() => {
                    let Some(c) = c else { return };
                    if !apply_control(&mut subs, c, Some(&mut sink)).await {
                        break;
                    }
                }
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    deliver(&bridge, &subs, msg.get_channel_name(), msg.get_payload_bytes());
                }
            }
        }
        bridge.stats.connected.store(false, Ordering::Relaxed);
        tracing::warn!("cluster: Redis pub/sub connection lost; reconnecting");
        backoff(&mut delay).await;
    }
}

/// Applies a control message; false when the Redis connection failed.
async fn apply_control(
    subs: &mut HashMap<String, Sub>,
    control: Control,
    sink: Option<&mut redis::aio::PubSubSink>,
) -> bool {
    match control {
        Control::Subscribe { room, sub } => {
            let resubscribed = sub.resubscribed.clone();
            let fresh = subs.insert(room.clone(), sub).is_none();
            if let Some(sink) = sink {
                if fresh && sink.subscribe(room_channel(&room)).await.is_err() {
                    return false;
                }
                // Subscribed: what the room publishes from now on is heard,
                // so it may ask the others for what it lacks.
                resubscribed.do_send(Resubscribed);
            }
        }
        Control::Unsubscribe { room, epoch } => {
            if subs.get(&room).is_some_and(|s| s.epoch == epoch) {
                subs.remove(&room);
                if let Some(sink) = sink {
                    return sink.unsubscribe(room_channel(&room)).await.is_ok();
                }
            }
        }
        Control::Resync => {
            // Only when subscribed; otherwise the reconnection does it.
            if sink.is_some() {
                for sub in subs.values() {
                    sub.resubscribed.do_send(Resubscribed);
                }
            }
        }
        Control::Dead(nodes) => {
            for sub in subs.values() {
                sub.dead.do_send(NodesDead {
                    nodes: nodes.clone(),
                });
            }
        }
    }
    true
}

/// Decodes one pub/sub message and hands it to its room unless this node
/// sent it.
fn deliver(bridge: &Bridge, subs: &HashMap<String, Sub>, channel: &str, payload: &[u8]) {
    let Some(room) = channel.strip_prefix("chorus:room:") else {
        return;
    };
    let Some(sub) = subs.get(room) else {
        return;
    };
    if let Some(frame) = LogFrame::parse(payload) {
        // A room notes its own entries' positions as it publishes them.
        if frame.node() != &*bridge.node {
            bridge.stats.received.fetch_add(1, Ordering::Relaxed);
            sub.log.do_send(Log(frame));
        }
        return;
    }
    let envelope = match Envelope::decode(payload) {
        Ok(e) => e,
        Err(e) => return tracing::warn!(room, "cluster: {e}"),
    };
    if *envelope.node == *bridge.node || envelope.room != room {
        return;
    }
    bridge.stats.received.fetch_add(1, Ordering::Relaxed);
    sub.remote.do_send(Remote { envelope });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips() {
        let e = Envelope {
            node: "abcd0123".into(),
            room: "r".into(),
            epoch: 7,
            seq: 3,
            item: Item::Event {
                from: "abcd0123-1".into(),
                name: "ping".into(),
                data: serde_json::json!({"n": 1}),
            },
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        let h = Envelope {
            item: Item::Hello {
                members: Vec::new(),
                cursors: Vec::new(),
            },
            ..e
        };
        assert_eq!(Envelope::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn node_of_member() {
        assert_eq!(node_of("abcd0123-17"), Some("abcd0123"));
        assert_eq!(node_of("nodash"), None);
    }
}
