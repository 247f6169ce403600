//! In-memory [`DocStore`]: for tests and `--store memory`. Lost on exit.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::history::{self, MemRows, VersionOp, VersionOut};
use super::{DocStore, StoreFuture, StoredDoc};

/// One room's data.
#[derive(Default)]
struct Entry {
    snapshot: Option<Bytes>,
    /// `(seq, update)`, ascending.
    log: Vec<(u64, Bytes)>,
    last_seq: u64,
}

/// Keeps every room's snapshot and log in a map behind a mutex; each call
/// holds the lock only for a map operation.
#[derive(Default)]
pub struct MemoryStore {
    rooms: Mutex<HashMap<String, Entry>>,
    /// Each room's version history.
    versions: Mutex<HashMap<String, MemRows>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Entry>) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-operation;
        // every operation leaves the map consistent, so keep going.
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut rooms)
    }
}

impl DocStore for MemoryStore {
    fn load(&self, room: &str) -> StoreFuture<StoredDoc> {
        let doc = self.with(|rooms| {
            rooms
                .get(room)
                .map(|e| StoredDoc {
                    snapshot: e.snapshot.clone(),
                    updates: e.log.iter().map(|(_, u)| u.clone()).collect(),
                    last_seq: e.last_seq,
                    skipped: Vec::new(),
                    generation: None,
                })
                .unwrap_or_default()
        });
        Box::pin(async move { Ok(doc) })
    }

    fn append(&self, room: &str, update: Bytes, _author: Option<&str>) -> StoreFuture<u64> {
        let seq = self.with(|rooms| {
            let e = rooms.entry(room.to_owned()).or_default();
            e.last_seq += 1;
            e.log.push((e.last_seq, update));
            e.last_seq
        });
        Box::pin(async move { Ok(seq) })
    }

    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()> {
        self.with(|rooms| {
            let e = rooms.entry(room.to_owned()).or_default();
            e.snapshot = Some(snapshot);
            e.log.retain(|(seq, _)| *seq > upto_seq);
        });
        Box::pin(async { Ok(()) })
    }

    fn delete(&self, room: &str) -> StoreFuture<()> {
        self.with(|rooms| rooms.remove(room));
        self.versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(room);
        Box::pin(async { Ok(()) })
    }

    fn versions(&self, room: &str, op: VersionOp) -> StoreFuture<VersionOut> {
        let out = {
            let mut all = self.versions.lock().unwrap_or_else(|e| e.into_inner());
            let rows = all.entry(room.to_owned()).or_default();
            let out = history::now(history::run(rows, room, op));
            if rows.rows.is_empty() && rows.last_id == 0 {
                all.remove(room);
            }
            out
        };
        Box::pin(async move { out })
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compact_drops_covered_entries() {
        let store = MemoryStore::new();
        let a = store
            .append("r", Bytes::from_static(b"a"), None)
            .await
            .unwrap();
        let b = store
            .append("r", Bytes::from_static(b"b"), None)
            .await
            .unwrap();
        assert!(b > a);
        store
            .compact("r", Bytes::from_static(b"s"), a)
            .await
            .unwrap();
        let doc = store.load("r").await.unwrap();
        assert_eq!(doc.snapshot.as_deref(), Some(&b"s"[..]));
        assert_eq!(doc.updates, vec![Bytes::from_static(b"b")]);
        assert_eq!(doc.last_seq, b);
        store.delete("r").await.unwrap();
        assert!(store.load("r").await.unwrap().snapshot.is_none());
    }
}
