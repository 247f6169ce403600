//! Redis [`DocStore`]: cluster mode keeps every document's durable log in
//! Redis, so any node can open any room and a node that opens it late loads
//! all of it.
//!
//! Keys per room (the `{room}` hash tag keeps them in one Redis Cluster
//! slot): `chorus:{room}:log` (a stream; entry ids are `0-{seq}`, field `u`
//! holds the update), `chorus:{room}:seq` (the last `seq`),
//! `chorus:{room}:epoch` (the log's generation, see below),
//! `chorus:{room}:snap` (a hash: `doc` the snapshot, `upto` the last `seq`
//! it covers) and `chorus:{room}:lock` (the compaction lock).
//!
//! - `append`: one Lua script assigns the next `seq`, `XADD`s the entry and
//!   `PUBLISH`es it on the room's channel as a [`LogFrame`], atomically: an
//!   entry is in the log exactly when it was published, and the channel
//!   carries the log's entries in log order. The update is acked once Redis
//!   answered (as durable as Redis is configured to be: run it with
//!   `appendonly yes`; `appendfsync` decides how much a Redis crash loses).
//!   While Redis is unreachable an append retries with backoff for
//!   `--redis-append-timeout-ms` before it fails.
//! - `epoch`: a random id given to a room's log when its first entry is
//!   written (and anew when the room is deleted). A log that comes back
//!   with another epoch (or none) was lost — a Redis restarted without
//!   persistence — and nodes that hold the document write it back.
//! - `load` and [`RedisStore::read_since`]: one Lua script reads the
//!   snapshot, the entries after a `seq`, the last `seq` and the epoch,
//!   atomically (a compaction cannot slip in between).
//! - `compact`: one node at a time (`SET …:lock NX PX`; a node that does
//!   not get the lock skips this compaction). The node's snapshot may lack
//!   other nodes' entries not yet delivered to it, so the store merges the
//!   previous snapshot, the log entries up to `upto` and the node's
//!   snapshot into the new one, then trims the stream to the entries after
//!   `upto`.
//! - `delete`: drops the room's keys, gives it a new epoch and publishes a
//!   deletion frame, so every node resets its copy of the room.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Mutex;

use super::room_channel;
use crate::store::{DocStore, StoreError, StoreFuture, StoredDoc};

/// KEYS: log, seq, epoch, channel. ARGV: update, node id, epoch candidate.
const APPEND: &str = r"
redis.call('SET', KEYS[3], ARGV[3], 'NX')
local epoch = redis.call('GET', KEYS[3])
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], '0-' .. seq, 'u', ARGV[1])
redis.call('PUBLISH', KEYS[4], 'L' .. epoch .. ' ' .. seq .. ' ' .. ARGV[2] .. ' ' .. ARGV[1])
return seq
";

/// KEYS: snap, log, seq, epoch. ARGV: after (a seq), the caller's epoch
/// (`-` for none). Entries after `after`, or the whole log (snapshot
/// included) when the epoch differs or a compaction covered `after`.
const READ: &str = r"
local snap = redis.call('HMGET', KEYS[1], 'upto', 'doc')
local upto = tonumber(snap[1]) or 0
local epoch = redis.call('GET', KEYS[4]) or ''
local after = tonumber(ARGV[1])
local doc = ''
if epoch ~= ARGV[2] or after < upto then
  if epoch ~= ARGV[2] then after = 0 end
  doc = snap[2] or ''
  if after < upto then after = upto end
end
local entries = redis.call('XRANGE', KEYS[2], '(0-' .. after, '+')
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
return {doc, entries, last, epoch}
";

/// KEYS: snap, log. ARGV: upto.
const READ_UPTO: &str = r"
local snap = redis.call('HMGET', KEYS[1], 'upto', 'doc')
local upto = tonumber(snap[1]) or 0
local entries = {}
if tonumber(ARGV[1]) > upto then
  entries = redis.call('XRANGE', KEYS[2], '(0-' .. upto, '0-' .. ARGV[1])
end
return {snap[2] or '', upto, entries}
";

/// KEYS: snap, log, lock. ARGV: upto, snapshot, lock token.
const WRITE_SNAPSHOT: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[3] then
  return 0
end
local upto = tonumber(redis.call('HGET', KEYS[1], 'upto') or '0')
if tonumber(ARGV[1]) > upto then
  redis.call('HSET', KEYS[1], 'upto', ARGV[1], 'doc', ARGV[2])
  redis.call('XTRIM', KEYS[2], 'MINID', '0-' .. (tonumber(ARGV[1]) + 1))
end
redis.call('DEL', KEYS[3])
return 1
";

/// KEYS: snap, log, seq, lock, epoch, channel. ARGV: new epoch, node id.
const DELETE: &str = r"
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('SET', KEYS[5], ARGV[1])
redis.call('PUBLISH', KEYS[6], 'D' .. ARGV[1] .. ' ' .. ARGV[2])
return 1
";

/// The scripts, hashed once (each call sends `EVALSHA`, and the script
/// itself only after a `NOSCRIPT`, e.g. once Redis restarted).
struct Scripts {
    read: redis::Script,
    append: redis::Script,
    read_upto: redis::Script,
    write_snapshot: redis::Script,
    delete: redis::Script,
}

static SCRIPTS: std::sync::LazyLock<Scripts> = std::sync::LazyLock::new(|| Scripts {
    read: redis::Script::new(READ),
    append: redis::Script::new(APPEND),
    read_upto: redis::Script::new(READ_UPTO),
    write_snapshot: redis::Script::new(WRITE_SNAPSHOT),
    delete: redis::Script::new(DELETE),
});

/// A call of `script` to fill with keys and arguments.
fn script(script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
    script.prepare_invoke()
}

/// How long a compaction lock lives if its holder dies.
const LOCK_MS: u64 = 10_000;
/// Longest wait between two attempts of an append while Redis is away.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// A stream entry as `XRANGE` returns it: id, then field/value pairs.
type Entry = (String, Vec<Vec<u8>>);

/// What a room channel carries besides the bridge's envelopes: the frames
/// the store's scripts publish.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFrame {
    /// Entry `seq` of the log of generation `epoch`, written by `node`.
    Entry {
        /// Log generation.
        epoch: String,
        /// Position in the log, from 1.
        seq: u64,
        /// Node that appended it.
        node: String,
        /// The Yjs v1 update.
        update: Bytes,
    },
    /// `node` deleted the room; its log starts again with `epoch`.
    Deleted {
        /// The new log generation.
        epoch: String,
        /// Node that deleted it.
        node: String,
    },
}

impl LogFrame {
    /// Parses a frame published by the append script (`L<epoch> <seq> <node>
    /// <update>`) or the delete script (`D<epoch> <node>`); `None` for anything else
    /// (the bridge's envelopes start with a MessagePack map byte instead).
    pub fn parse(payload: &[u8]) -> Option<LogFrame> {
        match payload.split_first()? {
            (b'L', rest) => {
                let mut parts = rest.splitn(4, |b| *b == b' ');
                let epoch = std::str::from_utf8(parts.next()?).ok()?;
                let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let node = std::str::from_utf8(parts.next()?).ok()?;
                let update = parts.next()?;
                Some(LogFrame::Entry {
                    epoch: epoch.to_owned(),
                    seq,
                    node: node.to_owned(),
                    update: Bytes::copy_from_slice(update),
                })
            }
            (b'D', rest) => {
                let (epoch, node) = std::str::from_utf8(rest).ok()?.split_once(' ')?;
                Some(LogFrame::Deleted {
                    epoch: epoch.to_owned(),
                    node: node.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The node that wrote the frame.
    pub fn node(&self) -> &str {
        match self {
            LogFrame::Entry { node, .. } | LogFrame::Deleted { node, .. } => node,
        }
    }
}

/// What [`RedisStore::read_since`] found.
#[derive(Debug, Default)]
pub struct LogRead {
    /// The log's epoch (`None`: nothing was ever written, or Redis lost it).
    pub epoch: Option<String>,
    /// The snapshot, when the caller's position is not in this log any more
    /// (another epoch, or compacted away).
    pub snapshot: Option<Bytes>,
    /// Entries after the position (or after the snapshot), oldest first.
    pub updates: Vec<Bytes>,
    /// The log's last `seq`.
    pub last_seq: u64,
}

/// Documents in Redis; see the module docs for the keys and scripts.
pub struct RedisStore {
    client: redis::Client,
    /// This node's id, written into every frame it publishes.
    node: Arc<str>,
    /// How long an append keeps retrying while Redis is unreachable.
    retry_for: Duration,
    /// One multiplexed connection, made on first use and again after a
    /// failure (`None` then).
    conn: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
}

impl RedisStore {
    /// A store on `url` for node `node`; connects on first use, so a Redis
    /// that is down at start only delays the first operations.
    pub fn open(url: &str, node: &str, retry_for: Duration) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Open {
            path: url.into(),
            detail: e.to_string(),
        })?;
        Ok(RedisStore {
            client,
            node: Arc::from(node),
            retry_for,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// Runs `op` on the shared connection; a failed connection is dropped so
    /// the next operation reconnects. With `retry_for`, connection failures
    /// are retried with backoff until that much time has passed.
    fn run<T, F, Fut>(&self, retry_for: Option<Duration>, op: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: Fn(redis::aio::MultiplexedConnection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let (client, slot) = (self.client.clone(), self.conn.clone());
        Box::pin(async move {
            let deadline = retry_for.map(|d| Instant::now() + d);
            let mut wait = Duration::from_millis(50);
            loop {
                let res = match connection(&client, &slot).await {
                    Ok(conn) => op(conn).await,
                    Err(e) => Err(e),
                };
                let e = match res {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                let lost = e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_connection_refusal()
                    || unavailable(&e);
                if lost {
                    *slot.lock().await = None;
                }
                match deadline {
                    Some(deadline) if lost && Instant::now() + wait < deadline => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_RETRY_WAIT);
                    }
                    _ => return Err(io(e)),
                }
            }
        })
    }

    /// Reads the room's log after `after` (a `seq` of the log of generation
    /// `epoch`); see [`LogRead`]. Used by rooms to recover entries they
    /// missed on the channel (a gap, a reconnection, another epoch).
    pub fn read_since(&self, room: &str, after: u64, epoch: Option<&str>) -> StoreFuture<LogRead> {
        let k = Keys::new(room);
        let epoch = epoch.unwrap_or("-").to_owned();
        self.run(None, move |mut conn| {
            let (k, epoch) = (k.clone(), epoch.clone());
            async move {
                let (doc, entries, last, current): (Vec<u8>, Vec<Entry>, u64, String) =
                    script(&SCRIPTS.read)
                        .key(&k.snap)
                        .key(&k.log)
                        .key(&k.seq)
                        .key(&k.epoch)
                        .arg(after)
                        .arg(&epoch)
                        .invoke_async(&mut conn)
                        .await?;
                let mut read = LogRead {
                    epoch: (!current.is_empty()).then_some(current),
                    snapshot: (!doc.is_empty()).then(|| Bytes::from(doc)),
                    last_seq: last,
                    ..LogRead::default()
                };
                for entry in entries {
                    match entry_update(entry) {
                        Ok(u) => read.updates.push(u),
                        Err(e) => tracing::error!(room = %k.room, "skipped damaged log entry: {e}"),
                    }
                }
                Ok(read)
            }
        })
    }
}

async fn connection(
    client: &redis::Client,
    slot: &Mutex<Option<redis::aio::MultiplexedConnection>>,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let mut slot = slot.lock().await;
    if let Some(c) = &*slot {
        return Ok(c.clone());
    }
    let c = client.get_multiplexed_async_connection().await?;
    *slot = Some(c.clone());
    Ok(c)
}

/// Redis answered but cannot take writes now: a replica after a failover
/// (`READONLY`, `MASTERDOWN`), loading its data, or a cluster resharding.
/// Treated like a lost connection: reconnect (the address may now lead to
/// the new primary) and retry.
fn unavailable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as S};
    matches!(
        e.kind(),
        ErrorKind::Server(
            S::ReadOnly | S::MasterDown | S::BusyLoading | S::TryAgain | S::ClusterDown
        )
    )
}

fn io(e: redis::RedisError) -> StoreError {
    StoreError::Io(format!("redis: {e}"))
}

/// The keys of one room.
#[derive(Clone)]
struct Keys {
    room: String,
    snap: String,
    log: String,
    seq: String,
    epoch: String,
    lock: String,
}

impl Keys {
    fn new(room: &str) -> Keys {
        let key = |what: &str| format!("chorus:{{{room}}}:{what}");
        Keys {
            room: room.to_owned(),
            snap: key("snap"),
            log: key("log"),
            seq: key("seq"),
            epoch: key("epoch"),
            lock: key("lock"),
        }
    }
}

/// A fresh random epoch.
fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The update of a stream entry (`u` field), or a description of the damage.
fn entry_update(entry: Entry) -> Result<Bytes, String> {
    let (id, mut fields) = entry;
    if fields.len() == 2 && fields[0] == b"u" {
        Ok(Bytes::from(fields.swap_remove(1)))
    } else {
        Err(format!("log entry {id} has no `u` field"))
    }
}

impl DocStore for RedisStore {
    fn load(&self, room: &str) -> StoreFuture<StoredDoc> {
        let read = self.read_since(room, 0, None);
        Box::pin(async move {
            let read = read.await?;
            Ok(StoredDoc {
                snapshot: read.snapshot,
                updates: read.updates,
                last_seq: read.last_seq,
                generation: read.epoch,
                skipped: Vec::new(),
            })
        })
    }

    fn append(&self, room: &str, update: Bytes, _author: Option<&str>) -> StoreFuture<u64> {
        let k = Keys::new(room);
        let channel = room_channel(room);
        let node = self.node.clone();
        let epoch = new_epoch();
        self.run(Some(self.retry_for), move |mut conn| {
            let (k, channel, node, epoch, update) = (
                k.clone(),
                channel.clone(),
                node.clone(),
                epoch.clone(),
                update.clone(),
            );
            async move {
                script(&SCRIPTS.append)
                    .key(&k.log)
                    .key(&k.seq)
                    .key(&k.epoch)
                    .key(&channel)
                    .arg(update.as_ref())
                    .arg(&*node)
                    .arg(&epoch)
                    .invoke_async(&mut conn)
                    .await
            }
        })
    }

    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()> {
        let k = Keys::new(room);
        self.run(None, move |mut conn| {
            let (k, snapshot) = (k.clone(), snapshot.clone());
            async move {
                let token = new_epoch();
                let locked: Option<String> = redis::cmd("SET")
                    .arg(&k.lock)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(LOCK_MS)
                    .query_async(&mut conn)
                    .await?;
                if locked.is_none() {
                    tracing::debug!(room = %k.room, "another node is compacting; skipped");
                    return Ok(());
                }
                let (old, _upto, entries): (Vec<u8>, u64, Vec<Entry>) =
                    script(&SCRIPTS.read_upto)
                        .key(&k.snap)
                        .key(&k.log)
                        .arg(upto_seq)
                        .invoke_async(&mut conn)
                        .await?;
                let mut parts: Vec<Bytes> = Vec::with_capacity(entries.len() + 2);
                if !old.is_empty() {
                    parts.push(Bytes::from(old));
                }
                parts.extend(entries.into_iter().filter_map(|e| entry_update(e).ok()));
                parts.push(snapshot.clone());
                let merged = if parts.len() == 1 {
                    snapshot.to_vec()
                } else {
                    match yrs::merge_updates_v1(parts.iter().map(|b| b.as_ref())) {
                        Ok(m) => m,
                        Err(e) => {
                            // Keep the log as it is: nothing is lost.
                            tracing::warn!(room = %k.room, "compaction merge failed, log kept: {e}");
                            let _: () = redis::cmd("DEL").arg(&k.lock).query_async(&mut conn).await?;
                            return Ok(());
                        }
                    }
                };
                let _: i64 = script(&SCRIPTS.write_snapshot)
                    .key(&k.snap)
                    .key(&k.log)
                    .key(&k.lock)
                    .arg(upto_seq)
                    .arg(merged)
                    .arg(&token)
                    .invoke_async(&mut conn)
                    .await?;
                Ok(())
            }
        })
    }

    fn delete(&self, room: &str) -> StoreFuture<()> {
        let k = Keys::new(room);
        let channel = room_channel(room);
        let epoch = new_epoch();
        let node = self.node.clone();
        self.run(None, move |mut conn| {
            let (k, channel, epoch, node) =
                (k.clone(), channel.clone(), epoch.clone(), node.clone());
            async move {
                script(&SCRIPTS.delete)
                    .key(&k.snap)
                    .key(&k.log)
                    .key(&k.seq)
                    .key(&k.lock)
                    .key(&k.epoch)
                    .key(&channel)
                    .arg(&epoch)
                    .arg(&*node)
                    .invoke_async::<i64>(&mut conn)
                    .await
                    .map(|_| ())
            }
        })
    }

    fn exists(&self, room: &str) -> StoreFuture<bool> {
        let k = Keys::new(room);
        self.run(None, move |mut conn| {
            let k = k.clone();
            async move {
                let n: u64 = redis::cmd("EXISTS")
                    .arg(&k.snap)
                    .arg(&k.log)
                    .query_async(&mut conn)
                    .await?;
                Ok(n > 0)
            }
        })
    }

    fn health(&self) -> StoreFuture<()> {
        self.run(None, |mut conn| async move {
            redis::cmd("PING").query_async::<()>(&mut conn).await
        })
    }

    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

#[cfg(test)]
mod tests {
    use super::LogFrame;

    #[test]
    fn log_frames() {
        let frame = LogFrame::parse(b"Labc 42 node1 \x01 \x00binary").unwrap();
        assert_eq!(
            frame,
            LogFrame::Entry {
                epoch: "abc".into(),
                seq: 42,
                node: "node1".into(),
                update: bytes::Bytes::from_static(b"\x01 \x00binary"),
            }
        );
        assert_eq!(frame.node(), "node1");
        assert_eq!(
            LogFrame::parse(b"Dnew node2").unwrap(),
            LogFrame::Deleted {
                epoch: "new".into(),
                node: "node2".into()
            }
        );
        for bad in [
            &b""[..],
            b"L",
            b"Labc x node u",
            b"Labc 1 node",
            b"\x85rest",
            b"Dnew",
            b"D\xff x",
        ] {
            assert_eq!(LogFrame::parse(bad), None, "{bad:?}");
        }
    }
}
