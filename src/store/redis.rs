//! Redis [`DocStore`] (`--store redis`, cluster mode): every node reads and
//! writes the same log, so any node can open any room and a node that opens
//! it late loads all of it.
//!
//! Keys per room: `chorus:log:{room}` (a stream; entry ids are `0-{seq}`,
//! field `u` holds the update), `chorus:seq:{room}` (the last `seq`),
//! `chorus:snap:{room}` (a hash: `doc` the snapshot, `upto` the last `seq`
//! it covers) and `chorus:lock:{room}` (the compaction lock).
//!
//! - `append`: one Lua script `INCR`s the sequence and `XADD`s the entry, so
//!   sequence numbers follow the stream order; the update is acked once
//!   Redis answered (as durable as Redis is configured to be: AOF
//!   `appendfsync` decides).
//! - `load`: one Lua script reads the snapshot, the entries after `upto`,
//!   and the last `seq`, atomically (a compaction cannot slip in between).
//! - `compact`: one node at a time (`SET chorus:lock:{room} NX PX 10000`;
//!   a node that does not get the lock skips this compaction). The node's
//!   snapshot may lack other nodes' entries not yet delivered to it, so the
//!   store merges the previous snapshot, the log entries up to `upto` and
//!   the node's snapshot into the new one, then trims the stream to the
//!   entries after `upto`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Mutex;

use super::{DocStore, StoreError, StoreFuture, StoredDoc};

const APPEND: &str = r"
local seq = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], '0-' .. seq, 'u', ARGV[1])
return seq
";

const LOAD: &str = r"
local snap = redis.call('HMGET', KEYS[1], 'upto', 'doc')
local upto = tonumber(snap[1]) or 0
local entries = redis.call('XRANGE', KEYS[2], '(0-' .. upto, '+')
local last = tonumber(redis.call('GET', KEYS[3]) or '0')
return {snap[2] or '', upto, entries, last}
";

const READ_UPTO: &str = r"
local snap = redis.call('HMGET', KEYS[1], 'upto', 'doc')
local upto = tonumber(snap[1]) or 0
local entries = {}
if tonumber(ARGV[1]) > upto then
  entries = redis.call('XRANGE', KEYS[2], '(0-' .. upto, '0-' .. ARGV[1])
end
return {snap[2] or '', upto, entries}
";

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

/// How long a compaction lock lives if its holder dies.
const LOCK_MS: u64 = 10_000;

/// A stream entry as `XRANGE` returns it: id, then field/value pairs.
type Entry = (String, Vec<Vec<u8>>);

/// Documents in Redis; see the module docs for the keys and scripts.
pub struct RedisStore {
    client: redis::Client,
    /// One multiplexed connection, made on first use and again after a
    /// failure (`None` then).
    conn: Arc<Mutex<Option<redis::aio::MultiplexedConnection>>>,
}

impl RedisStore {
    /// A store on `url`; connects on first use, so a Redis that is down at
    /// start only fails the first operations.
    pub fn open(url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Open {
            path: url.into(),
            detail: e.to_string(),
        })?;
        Ok(RedisStore {
            client,
            conn: Arc::new(Mutex::new(None)),
        })
    }

    /// Runs `op` on the shared connection; a failed connection is dropped so
    /// the next operation reconnects.
    fn run<T, F, Fut>(&self, op: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(redis::aio::MultiplexedConnection) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
    {
        let (client, slot) = (self.client.clone(), self.conn.clone());
        Box::pin(async move {
            let conn = {
                let mut slot = slot.lock().await;
                match &*slot {
                    Some(c) => c.clone(),
                    None => {
                        let c = client
                            .get_multiplexed_async_connection()
                            .await
                            .map_err(io)?;
                        *slot = Some(c.clone());
                        c
                    }
                }
            };
            match op(conn).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                        *slot.lock().await = None;
                    }
                    Err(io(e))
                }
            }
        })
    }
}

fn io(e: redis::RedisError) -> StoreError {
    StoreError::Io(format!("redis: {e}"))
}

fn keys(room: &str) -> [String; 4] {
    [
        format!("chorus:snap:{room}"),
        format!("chorus:log:{room}"),
        format!("chorus:seq:{room}"),
        format!("chorus:lock:{room}"),
    ]
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
        let [snap, log, seq, _] = keys(room);
        self.run(move |mut conn| async move {
            let (doc, _upto, entries, last): (Vec<u8>, u64, Vec<Entry>, u64) =
                redis::Script::new(LOAD)
                    .key(snap)
                    .key(log)
                    .key(seq)
                    .invoke_async(&mut conn)
                    .await?;
            let mut stored = StoredDoc {
                snapshot: (!doc.is_empty()).then(|| Bytes::from(doc)),
                last_seq: last,
                ..StoredDoc::default()
            };
            for entry in entries {
                match entry_update(entry) {
                    Ok(u) => stored.updates.push(u),
                    Err(e) => stored.skipped.push(e),
                }
            }
            Ok(stored)
        })
    }

    fn append(&self, room: &str, update: Bytes) -> StoreFuture<u64> {
        let [_, log, seq, _] = keys(room);
        self.run(move |mut conn| async move {
            redis::Script::new(APPEND)
                .key(log)
                .key(seq)
                .arg(update.as_ref())
                .invoke_async(&mut conn)
                .await
        })
    }

    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()> {
        let [snap, log, _, lock] = keys(room);
        let room = room.to_owned();
        self.run(move |mut conn| async move {
            let token = format!("{:016x}", rand::random::<u64>());
            let locked: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_MS)
                .query_async(&mut conn)
                .await?;
            if locked.is_none() {
                tracing::debug!(room, "another node is compacting; skipped");
                return Ok(());
            }
            let (old, _upto, entries): (Vec<u8>, u64, Vec<Entry>) = redis::Script::new(READ_UPTO)
                .key(&snap)
                .key(&log)
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
                        tracing::warn!(room, "compaction merge failed, log kept: {e}");
                        let _: () = redis::cmd("DEL").arg(&lock).query_async(&mut conn).await?;
                        return Ok(());
                    }
                }
            };
            let _: i64 = redis::Script::new(WRITE_SNAPSHOT)
                .key(&snap)
                .key(&log)
                .key(&lock)
                .arg(upto_seq)
                .arg(merged)
                .arg(&token)
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn delete(&self, room: &str) -> StoreFuture<()> {
        let [snap, log, seq, lock] = keys(room);
        self.run(move |mut conn| async move {
            redis::cmd("DEL")
                .arg(snap)
                .arg(log)
                .arg(seq)
                .arg(lock)
                .query_async::<()>(&mut conn)
                .await
        })
    }

    fn health(&self) -> StoreFuture<()> {
        self.run(|mut conn| async move { redis::cmd("PING").query_async::<()>(&mut conn).await })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
