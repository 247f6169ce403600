//! Document storage. A room's durable state is a snapshot (an encoded Yjs
//! state) plus a log of updates appended after it. The room appends every
//! update and acknowledges it only once `append` resolves; it compacts the
//! log into a new snapshot from time to time and on eviction.
//!
//! Every durable store also keeps each room's version history
//! ([`history`]: deltas between versions, full states now and then).
//!
//! Implementations: [`redb::RedbStore`] (the default: durable, embedded,
//! group-committed), [`postgres::PostgresStore`] (durable, shared by the
//! nodes of a cluster) and [`memory::MemoryStore`] (tests and `--store
//! memory`). [`copy`] is `chorus store copy`: every room, exactly, from
//! one durable store to another.

pub mod copy;
pub mod history;
pub mod memory;
pub mod postgres;
pub mod redb;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use bytes::Bytes;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The underlying storage failed (disk, database, network).
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// Stored data could not be read back as written.
    #[error("stored data for room {room:?} is corrupt: {detail}")]
    Corrupt {
        /// Room whose data is damaged.
        room: String,
        /// What was found.
        detail: String,
    },
    /// The store itself could not be opened (so the server cannot start).
    #[error("cannot open the store {path}: {detail}")]
    Open {
        /// The file or directory concerned.
        path: PathBuf,
        /// Why.
        detail: String,
    },
}

/// What a room loads when it starts.
#[derive(Debug, Default, Clone)]
pub struct StoredDoc {
    /// Latest snapshot (Yjs v1 update encoding the whole state), if any.
    pub snapshot: Option<Bytes>,
    /// Updates appended after the snapshot, oldest first.
    pub updates: Vec<Bytes>,
    /// Sequence number of the last update in the log (0 when empty); the
    /// next `append` returns a larger one.
    pub last_seq: u64,
    /// Damaged entries that were skipped while loading, described for logs.
    pub skipped: Vec<String>,
    /// An opaque name of the log's incarnation, for stores that can lose
    /// their log and start a new one (a shared store restored or wiped):
    /// a room that sees it change knows positions it holds are void.
    /// `None` for stores whose log is never replaced, or before anything
    /// was written.
    pub generation: Option<String>,
}

/// What [`DocStore::read_since`] found.
#[derive(Debug, Default)]
pub struct LogRead {
    /// The log's generation (see [`StoredDoc::generation`]).
    pub epoch: Option<String>,
    /// The snapshot, when the caller's position is not in this log any more
    /// (another generation, or compacted away).
    pub snapshot: Option<Bytes>,
    /// Entries after the position (or after the snapshot), oldest first.
    pub updates: Vec<Bytes>,
    /// The log's last sequence number.
    pub last_seq: u64,
}

/// A boxed future, as returned by [`DocStore`] methods.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send>>;

/// Where rooms keep their documents. Methods return futures so that storage
/// never runs on a room actor's thread; a method's future completes only
/// once the operation is durable for that store.
pub trait DocStore: Send + Sync + 'static {
    /// Loads a room's snapshot and log tail; an unknown room is empty.
    fn load(&self, room: &str) -> StoreFuture<StoredDoc>;
    /// Appends one update to the room's log; resolves to its sequence number
    /// once the update is durable. `author` is the user id of whoever made
    /// the change, when known (stores that keep it record it with the entry).
    fn append(&self, room: &str, update: Bytes, author: Option<&str>) -> StoreFuture<u64>;
    /// Atomically replaces the snapshot with `snapshot` and drops the log
    /// entries with sequence numbers `<= upto_seq` (which it covers).
    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()>;
    /// Removes everything stored for the room.
    fn delete(&self, room: &str) -> StoreFuture<()>;
    /// Finishes the operations already queued and releases the storage
    /// (files closed cleanly); later operations fail. Called at shutdown,
    /// after rooms have flushed.
    fn close(&self) -> StoreFuture<()> {
        Box::pin(async { Ok(()) })
    }
    /// True when anything is stored for the room.
    fn exists(&self, room: &str) -> StoreFuture<bool> {
        let load = self.load(room);
        Box::pin(async move {
            let doc = load.await?;
            Ok(doc.snapshot.is_some() || !doc.updates.is_empty() || doc.last_seq > 0)
        })
    }
    /// Reads the room's log after `after` (a sequence number of the log of
    /// generation `generation`); the whole document when that generation is
    /// not the current one or a snapshot covers `after`. Cluster mode reads
    /// entries it missed on the channel this way. The default loads all.
    fn read_since(&self, room: &str, after: u64, generation: Option<&str>) -> StoreFuture<LogRead> {
        let _ = (after, generation);
        let load = self.load(room);
        Box::pin(async move {
            let doc = load.await?;
            Ok(LogRead {
                epoch: doc.generation,
                snapshot: doc.snapshot,
                updates: doc.updates,
                last_seq: doc.last_seq,
            })
        })
    }
    /// A cheap check that the store answers (for `/readyz`).
    fn health(&self) -> StoreFuture<()> {
        let load = self.load("\u{0}chorus-health");
        Box::pin(async move { load.await.map(|_| ()) })
    }
    /// Why the store cannot write now, when it knows so without trying
    /// (the embedded store after an I/O error, until it reopened its file
    /// and a commit went through); `None` when it writes, as far as it knows.
    /// Read by `/readyz` and `/metrics` (`chorus_store_failing`).
    fn failing(&self) -> Option<String> {
        None
    }
    /// True for a store that every node of a cluster shares (a database
    /// server): its outage is every node's, so `/readyz` reports it as
    /// `degraded` with 200 instead of taking this node out of the pool.
    /// False for a store of this node alone (the embedded file): when it
    /// cannot write, this node cannot serve (503).
    fn shared(&self) -> bool {
        false
    }
    /// Runs one version-history operation on the room's versions, in one
    /// store transaction (see [`history`]). Stores without history answer
    /// with an error.
    fn versions(&self, room: &str, op: history::VersionOp) -> StoreFuture<history::VersionOut> {
        let _ = (room, op);
        Box::pin(async { Err(StoreError::Io("this store keeps no version history".into())) })
    }
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}
