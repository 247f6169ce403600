//! Durable [`DocStore`] on [redb](https://www.redb.org), an embedded,
//! crash-safe (copy-on-write B-trees, checksummed commits), pure-Rust
//! key-value store: one file, `chorus.redb`, in the data directory.
//!
//! # Threads
//!
//! Room actors never touch the disk. A dedicated **writer thread** owns all
//! writes: `append`, `compact` and `delete` queue an operation (with a
//! oneshot for the answer) on a channel and return a future. The writer takes
//! everything queued, up to `store_max_batch` operations, writes it in ONE
//! write transaction and commits it with [`Durability::Immediate`] (fsync
//! before `commit` returns); only then does it answer each operation. This
//! is group commit: appends from every room that arrive while one commit is
//! being written share the next one, so one fsync covers a batch and no
//! delay is added to fill it. With group commit off, every operation gets a
//! transaction (and an fsync) of its own. A **reader thread** serves `load`
//! from read transactions (redb readers never wait for the writer).
//!
//! # I/O errors
//!
//! After one failed write (a full disk, say) redb refuses every later
//! transaction ("Previous I/O error occurred. Please close and re-open the
//! database"). So when a commit fails, the writer probes the database with
//! an empty commit; if that fails too, it drops the database (waiting for a
//! load in flight to let go of it) and opens the file again, after a delay
//! doubling from `store_retry_min_ms` to `store_retry_max_ms`, until an
//! open and a probe commit succeed. Meanwhile writes fail at once (rooms
//! keep what they could not store and retry it), loads fail while the file
//! is closed, and [`DocStore::failing`] says why (`/readyz` answers 503).
//! The process never needs a restart to write again.
//!
//! # Layout
//!
//! Three tables, all keyed by `(room id, sequence number)`:
//! - `log`: appended updates. Sequence numbers are per room and monotonic:
//!   the next one is one past the largest of the room's last log key and its
//!   snapshot's key, so compaction and restarts never reuse a number.
//! - `snapshot`: at most one entry per room, keyed by the last sequence
//!   number it covers (so that number survives damage to the value).
//! - `damaged`: log records that failed their checksum, moved aside by
//!   compaction instead of being dropped, for an operator to inspect.
//!
//! A compaction replaces the snapshot and drops the log entries it covers in
//! one transaction: a crash leaves either the old or the new state.
//!
//! # Corruption policy
//!
//! redb checksums its pages but verifies them only when it repairs a file
//! after an unclean shutdown; it does not promise to detect a flipped byte
//! in a value on a normal read. So every stored value is framed as
//! `[version u8][payload length u32 LE][crc32 u32 LE][payload]`, the CRC
//! covering the room id, the sequence number and the payload. On load:
//! - a damaged **log entry** is skipped and reported in
//!   [`StoredDoc::skipped`] (the room logs it, with its id, at error level);
//!   the rest is served. Its next compaction moves the record to `damaged`.
//! - a damaged **snapshot** refuses the room ([`StoreError::Corrupt`], so
//!   joins get `room_unavailable`): serving the log tail without its base
//!   would be a silently gutted document, and a later compaction would make
//!   the loss permanent. The data is left untouched.
//! - if every entry of a room is damaged, the room is refused the same way,
//!   never served empty.
//! - a panic inside redb while reading a room (possible on a malformed file)
//!   is caught and reported as that room being corrupt.
//!
//! If redb refuses the file itself when opening it (bad header, unrepairable
//! after a crash, locked by another process), the server does not start and
//! the error names the file. Nothing is moved aside automatically: an empty
//! database in place of a damaged one would look like every document lost.

use std::collections::HashMap;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::redb::{
    Database, Durability, ReadableDatabase, ReadableTable, StorageError, Table, TableDefinition,
};
use bytes::Bytes;
use tokio::sync::oneshot;

use super::copy::{LogEntry, RoomDump, VersionDump};
use super::history::{self, Rows, VersionOp, VersionOut, VersionRow};
use super::{DocStore, StoreError, StoreFuture, StoredDoc};
use crate::config::Config;

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "chorus.redb";

/// Appended updates: `(room, seq)` → framed update.
const LOG: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log");
/// Snapshots: `(room, last seq covered)` → framed encoded state.
const SNAPSHOT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshot");
/// Log records that failed their checksum, moved aside by compaction.
const DAMAGED: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("damaged");

/// Version history rows: `(room, version id)` → encoded
/// [`VersionRow`](super::history::VersionRow).
const VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
/// Version history updates: `(room, version id)` → framed update.
const VERSION_DATA: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("version_data");
/// The last version id handed out per room (never lowered by deletions).
const VERSION_IDS: TableDefinition<&str, u64> = TableDefinition::new("version_ids");

/// Version byte of the value frame.
const FRAME_VERSION: u8 = 1;
/// Bytes before the payload: version, length, crc.
const FRAME_HEADER: usize = 1 + 4 + 4;

/// Frames `payload` stored under `(room, seq)` with its length and checksum.
fn frame(room: &str, seq: u64, payload: &[u8]) -> Result<Vec<u8>, StoreError> {
    let len = u32::try_from(payload.len())
        .map_err(|_| StoreError::Io(format!("value of {} bytes is too large", payload.len())))?;
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.push(FRAME_VERSION);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(room, seq, payload).to_le_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// The payload of a frame stored under `(room, seq)`, or what is wrong.
fn unframe<'a>(room: &str, seq: u64, value: &'a [u8]) -> Result<&'a [u8], String> {
    if value.len() < FRAME_HEADER {
        return Err(format!(
            "truncated: {} bytes, shorter than a header",
            value.len()
        ));
    }
    if value[0] != FRAME_VERSION {
        return Err(format!("unknown frame version {}", value[0]));
    }
    let word =
        |at: usize| u32::from_le_bytes([value[at], value[at + 1], value[at + 2], value[at + 3]]);
    let (len, crc) = (word(1) as usize, word(5));
    let payload = &value[FRAME_HEADER..];
    if payload.len() != len {
        return Err(format!(
            "truncated: {} payload bytes, header says {len}",
            payload.len()
        ));
    }
    let actual = checksum(room, seq, payload);
    if actual != crc {
        return Err(format!(
            "checksum mismatch (stored {crc:08x}, computed {actual:08x})"
        ));
    }
    Ok(payload)
}

fn checksum(room: &str, seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(room.len() as u64).to_le_bytes());
    h.update(room.as_bytes());
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn io(e: impl Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The text of an error without the `Io` variant's prefix (it is wrapped
/// in one again when answered).
fn detail(e: &StoreError) -> String {
    match e {
        StoreError::Io(detail) => detail.clone(),
        other => other.to_string(),
    }
}

fn closed() -> StoreError {
    StoreError::Io("the store is closed".into())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// An operation for the writer thread.
enum WriteOp {
    Append {
        room: String,
        data: Bytes,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Compact {
        room: String,
        snapshot: Bytes,
        upto: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Delete {
        room: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// A version-history operation that writes, in a transaction of its
    /// own (its failure fails nothing else).
    Versions {
        room: String,
        op: VersionOp,
        reply: oneshot::Sender<Result<VersionOut, StoreError>>,
    },
    /// Stop after the operations queued before this one; close the file.
    Close {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// A read for the reader thread.
enum ReadOp {
    /// Load a room.
    Load {
        room: String,
        reply: oneshot::Sender<Result<StoredDoc, StoreError>>,
    },
    /// A version-history operation that only reads.
    Versions {
        room: String,
        op: VersionOp,
        reply: oneshot::Sender<Result<VersionOut, StoreError>>,
    },
}

/// What an operation of a batch produced, before the commit decides.
enum Outcome {
    Seq(u64),
    Done,
}

/// The open database, shared by the writer and reader threads; empty
/// while the writer reopens the file (after an I/O error) and once closed.
#[derive(Default)]
struct Slot(Mutex<Option<Arc<Database>>>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Database>>> {
        // Only swaps happen under the lock: a poisoned one is consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The database, if open.
    fn get(&self) -> Option<Arc<Database>> {
        self.lock().clone()
    }
}

/// Why the store cannot write, shared by the writer (which sets it) and
/// the store handle (`failing`, `health`).
#[derive(Default)]
struct Failing(Mutex<Option<String>>);

impl Failing {
    fn set(&self, why: Option<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The durable store. Cheap to share: it only holds channel ends.
pub struct RedbStore {
    path: PathBuf,
    /// Set by the writer while writes fail (see the module's "I/O errors").
    failing: Arc<Failing>,
    /// To the writer thread. Sending never blocks (unbounded): the writer
    /// drains the queue a batch per commit, so it is bounded in practice by
    /// the updates clients have in flight.
    writes: mpsc::Sender<WriteOp>,
    /// To the reader thread.
    reads: Mutex<Option<mpsc::Sender<ReadOp>>>,
}

/// How the writer thread batches, and retries after an I/O error.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// Most operations in one commit; 1 disables group commit.
    pub max_batch: usize,
    /// First and longest delay between tries to reopen the file (and probe
    /// it) after a failed commit.
    pub retry: (Duration, Duration),
}

impl WriterOptions {
    /// The options `config` asks for.
    pub fn from_config(config: &Config) -> Self {
        WriterOptions {
            max_batch: if config.store_group_commit {
                config.store_max_batch.max(1)
            } else {
                1
            },
            retry: config.store_retry(),
        }
    }

    /// Batches of at most `max_batch`, the default retry delays.
    pub fn batch(max_batch: usize) -> Self {
        WriterOptions {
            max_batch,
            retry: Config::default().store_retry(),
        }
    }
}

impl RedbStore {
    /// Opens (creating if needed) `data_dir/chorus.redb` with the writer
    /// options of `config`, and starts the writer and reader threads.
    pub fn open(config: &Config) -> Result<RedbStore, StoreError> {
        Self::open_at(&config.data_dir, WriterOptions::from_config(config))
    }

    /// Opens (creating if needed) `dir/chorus.redb`. Fails with
    /// [`StoreError::Open`] naming the file when the directory cannot be
    /// created or redb refuses the file (damaged beyond repair, locked by
    /// another process, unknown format).
    pub fn open_at(dir: &Path, options: WriterOptions) -> Result<RedbStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let open_err = |detail: String| StoreError::Open {
            path: path.clone(),
            detail,
        };
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create data dir {}: {e}", dir.display())))?;
        let db = open_file(&path).map_err(open_err)?;
        let slot = Arc::new(Slot::default());
        *slot.lock() = Some(Arc::new(db));
        let failing = Arc::new(Failing::default());

        let (read_tx, read_rx) = mpsc::channel::<ReadOp>();
        let reader_slot = slot.clone();
        let reader = std::thread::Builder::new()
            .name("chorus-store-read".into())
            .spawn(move || reader_loop(&reader_slot, &read_rx))
            .map_err(|e| open_err(format!("cannot start the reader thread: {e}")))?;
        let (write_tx, write_rx) = mpsc::channel::<WriteOp>();
        let writer = Writer {
            path: path.clone(),
            slot,
            failing: failing.clone(),
            seqs: SeqCache::default(),
            reopen: false,
            backoff: options.retry.0,
            next_try: Instant::now(),
            options,
        };
        std::thread::Builder::new()
            .name("chorus-store-write".into())
            .spawn(move || writer.run(&write_rx, reader))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        tracing::info!(
            path = %path.display(),
            max_batch = options.max_batch,
            "durable store open"
        );
        Ok(RedbStore {
            path,
            failing,
            writes: write_tx,
            reads: Mutex::new(Some(read_tx)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write<T: Send + 'static>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> StoreFuture<T> {
        let (tx, rx) = oneshot::channel();
        let sent = self.writes.send(op(tx)).map_err(|_| closed());
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| closed())?
        })
    }
}

impl DocStore for RedbStore {
    fn load(&self, room: &str) -> StoreFuture<StoredDoc> {
        let (tx, rx) = oneshot::channel();
        let op = ReadOp::Load {
            room: room.to_owned(),
            reply: tx,
        };
        self.read(op, rx)
    }

    fn versions(&self, room: &str, op: VersionOp) -> StoreFuture<VersionOut> {
        let room = room.to_owned();
        let reads_only = matches!(
            op,
            VersionOp::Head | VersionOp::List { .. } | VersionOp::Chain(_)
        );
        if !reads_only {
            return self.write(|reply| WriteOp::Versions { room, op, reply });
        }
        let (tx, rx) = oneshot::channel();
        self.read(
            ReadOp::Versions {
                room,
                op,
                reply: tx,
            },
            rx,
        )
    }

    fn append(&self, room: &str, update: Bytes, _author: Option<&str>) -> StoreFuture<u64> {
        let room = room.to_owned();
        self.write(|reply| WriteOp::Append {
            room,
            data: update,
            reply,
        })
    }

    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()> {
        let room = room.to_owned();
        self.write(|reply| WriteOp::Compact {
            room,
            snapshot,
            upto: upto_seq,
            reply,
        })
    }

    fn delete(&self, room: &str) -> StoreFuture<()> {
        let room = room.to_owned();
        self.write(|reply| WriteOp::Delete { room, reply })
    }

    fn close(&self) -> StoreFuture<()> {
        // Stop taking loads; the writer joins the reader before closing.
        self.reads.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.write(|reply| WriteOp::Close { reply })
    }

    fn health(&self) -> StoreFuture<()> {
        if let Some(why) = self.failing.get() {
            return Box::pin(async move { Err(StoreError::Io(why)) });
        }
        let load = self.load("\u{0}chorus-health");
        Box::pin(async move { load.await.map(|_| ()) })
    }

    fn failing(&self) -> Option<String> {
        self.failing.get()
    }

    fn name(&self) -> &'static str {
        "redb"
    }
}

impl RedbStore {
    /// Sends `op` to the reader thread; resolves to what `rx` receives.
    fn read<T: Send + 'static>(
        &self,
        op: ReadOp,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> StoreFuture<T> {
        let sent = self
            .reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or_else(closed)
            .and_then(|reads| reads.send(op).map_err(|_| closed()));
        Box::pin(async move {
            sent?;
            rx.await.map_err(|_| closed())?
        })
    }
}

/// Opens (creating if needed) the database file and its tables; the error
/// says why not.
fn open_file(path: &Path) -> Result<Database, String> {
    let opened = catch_unwind(|| Database::builder().create(path))
        .map_err(|p| format!("redb panicked opening it: {}", panic_message(&*p)))?;
    let db = opened.map_err(|e| match e {
        ::redb::DatabaseError::DatabaseAlreadyOpen => {
            "it is already open (another chorus process on this data dir?)".to_owned()
        }
        other => format!("{other}"),
    })?;
    // Create the tables so that readers always find them.
    let init = || -> Result<(), ::redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(SNAPSHOT)?;
        txn.open_table(DAMAGED)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(VERSION_DATA)?;
        txn.open_table(VERSION_IDS)?;
        txn.commit()?;
        Ok(())
    };
    init().map_err(|e| format!("cannot initialise tables: {e}"))?;
    Ok(db)
}

/// Serves loads until the channel closes.
fn reader_loop(slot: &Slot, rx: &mpsc::Receiver<ReadOp>) {
    while let Ok(op) = rx.recv() {
        let (room, reply) = match op {
            ReadOp::Load { room, reply } => (room, reply),
            ReadOp::Versions { room, op, reply } => {
                let result = match slot.get() {
                    Some(db) => catch_unwind(AssertUnwindSafe(|| read_versions(&db, &room, op)))
                        .unwrap_or_else(|p| {
                            Err(StoreError::Corrupt {
                                room: room.clone(),
                                detail: format!(
                                    "reading its versions panicked: {}",
                                    panic_message(&*p)
                                ),
                            })
                        }),
                    None => Err(io("the store is reopening its file after an I/O error")),
                };
                let _ = reply.send(result);
                continue;
            }
        };
        let result = match slot.get() {
            Some(db) => catch_unwind(AssertUnwindSafe(|| load(&db, &room))).unwrap_or_else(|p| {
                Err(StoreError::Corrupt {
                    room: room.clone(),
                    detail: format!("reading it panicked: {}", panic_message(&*p)),
                })
            }),
            None => Err(io("the store is reopening its file after an I/O error")),
        };
        let _ = reply.send(result);
    }
}

/// Reads a room's snapshot and log tail, applying the corruption policy.
fn load(db: &Database, room: &str) -> Result<StoredDoc, StoreError> {
    let storage = |e: StorageError| match e {
        StorageError::Corrupted(detail) => StoreError::Corrupt {
            room: room.to_owned(),
            detail,
        },
        other => io(other),
    };
    let txn = db.begin_read().map_err(io)?;
    let snapshots = txn.open_table(SNAPSHOT).map_err(io)?;
    let log = txn.open_table(LOG).map_err(io)?;
    let all = (room, 0u64)..=(room, u64::MAX);
    let mut doc = StoredDoc::default();
    let mut covered = 0;
    if let Some(entry) = snapshots.range(all.clone()).map_err(storage)?.next_back() {
        let (key, value) = entry.map_err(storage)?;
        covered = key.value().1;
        match unframe(room, covered, value.value()) {
            Ok(payload) => doc.snapshot = Some(Bytes::copy_from_slice(payload)),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    room: room.to_owned(),
                    detail: format!(
                        "its snapshot (covering updates up to #{covered}) is damaged: {e}; \
                         the room is refused and its stored data left as it is"
                    ),
                })
            }
        }
    }
    doc.last_seq = covered;
    for entry in log.range(all).map_err(storage)? {
        let (key, value) = entry.map_err(storage)?;
        let seq = key.value().1;
        doc.last_seq = doc.last_seq.max(seq);
        if seq <= covered {
            continue;
        }
        match unframe(room, seq, value.value()) {
            Ok(payload) => doc.updates.push(Bytes::copy_from_slice(payload)),
            Err(e) => doc.skipped.push(format!("log entry #{seq}: {e}")),
        }
    }
    if !doc.skipped.is_empty() && doc.snapshot.is_none() && doc.updates.is_empty() {
        return Err(StoreError::Corrupt {
            room: room.to_owned(),
            detail: format!(
                "every stored entry is damaged ({}); the room is refused rather than served empty",
                doc.skipped.join("; ")
            ),
        });
    }
    Ok(doc)
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    slot: Arc<Slot>,
    failing: Arc<Failing>,
    options: WriterOptions,
    seqs: SeqCache,
    /// The database refused a probe after a failed commit: it must be
    /// closed and opened again before anything is written.
    reopen: bool,
    /// Delay before the next try to recover (doubles up to `retry.1`).
    backoff: Duration,
    /// When to try to recover next, while failing.
    next_try: Instant,
}

impl Writer {
    /// Writes batches until the channel closes or a `Close` arrives;
    /// recovers from failed commits on the way.
    fn run(mut self, rx: &mpsc::Receiver<WriteOp>, reader: JoinHandle<()>) {
        let mut close_reply = None;
        loop {
            let first = if self.failing.get().is_some() {
                let wait = self.next_try.saturating_duration_since(Instant::now());
                match rx.recv_timeout(wait) {
                    Ok(op) => op,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.recover();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(op) => op,
                    Err(_) => break,
                }
            };
            let mut batch = Vec::with_capacity(self.options.max_batch.min(64));
            let mut versions = Vec::new();
            let mut push = |op: WriteOp, batch: &mut Vec<WriteOp>| match op {
                WriteOp::Close { reply } => {
                    close_reply = Some(reply);
                    false
                }
                op @ WriteOp::Versions { .. } => {
                    versions.push(op);
                    true
                }
                op => {
                    batch.push(op);
                    true
                }
            };
            let mut more = push(first, &mut batch);
            while more && batch.len() < self.options.max_batch {
                match rx.try_recv() {
                    Ok(op) => more = push(op, &mut batch),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                let result = self.write(&batch);
                answer(batch, result);
            }
            for op in versions {
                if let WriteOp::Versions { room, op, reply } = op {
                    let _ = reply.send(self.write_versions(&room, op));
                }
            }
            if close_reply.is_some() {
                break;
            }
        }
        // Close: the reader's channel is gone (see `close`), so it ends; once
        // it has dropped its handle this thread holds the last one, and
        // dropping it closes the file cleanly (no repair at the next start).
        let _ = reader.join();
        let result = match self.slot.lock().take().map(Arc::try_unwrap) {
            Some(Ok(db)) => db.close().map_err(io),
            Some(Err(_)) => Err(io("the database is still in use; not closed cleanly")),
            None => Err(io(
                "the database was not open (reopening after an I/O error)",
            )),
        };
        if let Err(e) = &result {
            tracing::warn!("closing the store: {e}");
        }
        if let Some(reply) = close_reply {
            let _ = reply.send(result);
        }
    }

    /// The database to write to: reopens or probes it first when a retry
    /// is due; fails at once while the file waits to be reopened.
    fn writable(&mut self) -> Result<Arc<Database>, StoreError> {
        if self.reopen && Instant::now() >= self.next_try {
            self.recover();
        }
        match (self.reopen, self.slot.get()) {
            (false, Some(db)) => Ok(db),
            _ => Err(StoreError::Io(
                self.failing
                    .get()
                    .unwrap_or_else(|| "the store is not open".into()),
            )),
        }
    }

    /// A commit failed: the store counts as failing, and since redb
    /// refuses everything after an I/O error, a probe finds out now
    /// whether the file must be reopened.
    fn commit_failed(&mut self, db: &Database, e: &StoreError) {
        // The cached numbers may hold those of a batch that was not committed.
        self.seqs.rooms.clear();
        self.failed(detail(e));
        if let Err(e) = probe(db) {
            tracing::error!(
                "the store refuses writes after the failed commit ({e}); reopening its file"
            );
            self.reopen = true;
        }
    }

    /// Writes one batch in one transaction; fails at once while the file
    /// waits to be reopened.
    fn write(&mut self, batch: &[WriteOp]) -> Result<Vec<Outcome>, StoreError> {
        let db = self.writable()?;
        let t = Instant::now();
        let n = batch.len();
        let result = catch_unwind(AssertUnwindSafe(|| write_batch(&db, batch, &mut self.seqs)))
            .unwrap_or_else(|p| {
                Err(io(format!(
                    "the store writer panicked: {}",
                    panic_message(&*p)
                )))
            });
        match &result {
            Ok(_) => {
                self.succeeded();
                tracing::trace!(
                    ops = n,
                    micros = t.elapsed().as_micros() as u64,
                    "store batch committed"
                );
            }
            Err(e) => {
                tracing::error!("store commit failed: {e}");
                self.commit_failed(&db, e);
            }
        }
        result
    }

    /// Runs a version-history operation that writes in a transaction of
    /// its own; a failed commit counts as any failed write.
    fn write_versions(&mut self, room: &str, op: VersionOp) -> Result<VersionOut, StoreError> {
        let db = self.writable()?;
        let run = || -> Result<VersionOut, StoreError> {
            let mut txn = db.begin_write().map_err(io)?;
            txn.set_durability(Durability::Immediate).map_err(io)?;
            let out = {
                let mut rows = RedbRows {
                    room,
                    meta: txn.open_table(VERSIONS).map_err(io)?,
                    data: txn.open_table(VERSION_DATA).map_err(io)?,
                    ids: Some(txn.open_table(VERSION_IDS).map_err(io)?),
                };
                history::now(history::run(&mut rows, room, op))?
            };
            txn.commit().map_err(io)?;
            Ok(out)
        };
        let result = catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|p| {
            Err(io(format!(
                "the store writer panicked: {}",
                panic_message(&*p)
            )))
        });
        if let Err(e @ StoreError::Io(_)) = &result {
            tracing::error!(room, "version history commit failed: {e}");
            self.commit_failed(&db, e);
        }
        result
    }

    /// While failing: reopens the file if needed, then probes it with an
    /// empty commit; writes count as working again once that succeeds.
    fn recover(&mut self) {
        if self.reopen {
            if let Err(e) = self.reopen() {
                tracing::warn!(
                    retry_in_ms = self.backoff.as_millis() as u64,
                    "reopening the store failed: {e}"
                );
                self.failed(format!(
                    "reopening the store after an I/O error failed: {e}"
                ));
                return;
            }
            self.reopen = false;
            tracing::info!(path = %self.path.display(), "store file reopened");
        }
        let Some(db) = self.slot.get() else {
            return;
        };
        match probe(&db) {
            Ok(()) => {
                if self.failing.get().is_some() {
                    tracing::info!("the store writes again");
                }
                self.succeeded();
            }
            Err(e) => {
                self.reopen = true;
                self.failed(format!("the store refuses writes: {}", detail(&e)));
            }
        }
    }

    /// Drops the database (once a load in flight lets go of it) and opens
    /// the file again.
    fn reopen(&mut self) -> Result<(), String> {
        if let Some(mut old) = self.slot.lock().take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        // It fails after an I/O error; the file is closed anyway.
                        if let Err(e) = db.close() {
                            tracing::debug!("closing the failed store: {e}");
                        }
                        break;
                    }
                    Err(still) if Instant::now() >= deadline => {
                        *self.slot.lock() = Some(still);
                        return Err("a load still holds the database".into());
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        self.seqs.rooms.clear();
        let db = open_file(&self.path)?;
        *self.slot.lock() = Some(Arc::new(db));
        Ok(())
    }

    fn succeeded(&mut self) {
        self.failing.set(None);
        self.backoff = self.options.retry.0;
    }

    /// Notes why writes fail, and when to try to recover next.
    fn failed(&mut self, why: String) {
        self.failing.set(Some(why));
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.options.retry.1);
    }
}

/// An empty durable commit: does the database take writes?
fn probe(db: &Database) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(io)?;
    txn.set_durability(Durability::Immediate).map_err(io)?;
    txn.commit().map_err(io)
}

/// Answers every operation of a batch once its commit is decided.
fn answer(batch: Vec<WriteOp>, result: Result<Vec<Outcome>, StoreError>) {
    match result {
        Ok(outcomes) => {
            for (op, outcome) in batch.into_iter().zip(outcomes) {
                match (op, outcome) {
                    (WriteOp::Append { reply, .. }, Outcome::Seq(seq)) => {
                        let _ = reply.send(Ok(seq));
                    }
                    (WriteOp::Compact { reply, .. } | WriteOp::Delete { reply, .. }, _) => {
                        let _ = reply.send(Ok(()));
                    }
                    (WriteOp::Append { reply, .. }, Outcome::Done) => {
                        let _ = reply.send(Err(io("append produced no sequence number")));
                    }
                    (WriteOp::Close { .. } | WriteOp::Versions { .. }, _) => {}
                }
            }
        }
        Err(e) => {
            let msg = detail(&e);
            for op in batch {
                match op {
                    WriteOp::Append { reply, .. } => {
                        let _ = reply.send(Err(StoreError::Io(msg.clone())));
                    }
                    WriteOp::Compact { reply, .. } | WriteOp::Delete { reply, .. } => {
                        let _ = reply.send(Err(StoreError::Io(msg.clone())));
                    }
                    WriteOp::Close { .. } | WriteOp::Versions { .. } => {}
                }
            }
        }
    }
}

type RoomTable<'t> = Table<'t, (&'static str, u64), &'static [u8]>;

/// Runs a version-history operation that only reads, in a read
/// transaction.
fn read_versions(db: &Database, room: &str, op: VersionOp) -> Result<VersionOut, StoreError> {
    let txn = db.begin_read().map_err(io)?;
    let mut rows = RedbRows {
        room,
        meta: txn.open_table(VERSIONS).map_err(io)?,
        data: txn.open_table(VERSION_DATA).map_err(io)?,
        ids: None::<Table<'_, &str, u64>>,
    };
    history::now(history::run(&mut rows, room, op))
}

/// A table of version rows or updates: readable always, writable in the
/// writer's transaction.
trait VersionTable: ReadableTable<(&'static str, u64), &'static [u8]> {
    fn put(&mut self, key: (&str, u64), value: &[u8]) -> Result<(), StoreError>;
    fn del(&mut self, key: (&str, u64)) -> Result<(), StoreError>;
}

impl VersionTable for Table<'_, (&'static str, u64), &'static [u8]> {
    fn put(&mut self, key: (&str, u64), value: &[u8]) -> Result<(), StoreError> {
        self.insert(key, value).map(|_| ()).map_err(io)
    }
    fn del(&mut self, key: (&str, u64)) -> Result<(), StoreError> {
        self.remove(key).map(|_| ()).map_err(io)
    }
}

impl VersionTable for ::redb::ReadOnlyTable<(&'static str, u64), &'static [u8]> {
    fn put(&mut self, _: (&str, u64), _: &[u8]) -> Result<(), StoreError> {
        Err(io("version history written in a read transaction"))
    }
    fn del(&mut self, _: (&str, u64)) -> Result<(), StoreError> {
        Err(io("version history written in a read transaction"))
    }
}

/// One room's versions in redb tables ([`history::Rows`]).
struct RedbRows<'r, M, D, I> {
    room: &'r str,
    meta: M,
    data: D,
    /// The id counters; `None` in a read transaction.
    ids: Option<I>,
}

impl<M: VersionTable, D: VersionTable> RedbRows<'_, M, D, Table<'_, &'static str, u64>> {
    fn decode(&self, value: &[u8]) -> Result<VersionRow, StoreError> {
        history::decode_row(self.room, value)
    }
}

impl<M: VersionTable, D: VersionTable> Rows for RedbRows<'_, M, D, Table<'_, &'static str, u64>> {
    async fn last(&mut self) -> Result<Option<VersionRow>, StoreError> {
        let all = (self.room, 0u64)..=(self.room, u64::MAX);
        match self.meta.range(all).map_err(io)?.next_back() {
            Some(entry) => {
                let (_, v) = entry.map_err(io)?;
                self.decode(v.value()).map(Some)
            }
            None => Ok(None),
        }
    }
    async fn get(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        match self.meta.get((self.room, id)).map_err(io)? {
            Some(v) => self.decode(v.value()).map(Some),
            None => Ok(None),
        }
    }
    async fn before(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let end = before.unwrap_or(u64::MAX);
        let mut out = Vec::new();
        for entry in self
            .meta
            .range((self.room, 0u64)..(self.room, end))
            .map_err(io)?
            .rev()
            .take(limit)
        {
            let (_, v) = entry.map_err(io)?;
            out.push(self.decode(v.value())?);
        }
        Ok(out)
    }
    async fn next_after(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        if id == u64::MAX {
            return Ok(None);
        }
        let range = (self.room, id + 1)..=(self.room, u64::MAX);
        match self.meta.range(range).map_err(io)?.next() {
            Some(entry) => {
                let (_, v) = entry.map_err(io)?;
                self.decode(v.value()).map(Some)
            }
            None => Ok(None),
        }
    }
    async fn data(&mut self, id: u64) -> Result<Option<Bytes>, StoreError> {
        match self.data.get((self.room, id)).map_err(io)? {
            Some(v) => unframe(self.room, id, v.value())
                .map(|p| Some(Bytes::copy_from_slice(p)))
                .map_err(|e| StoreError::Corrupt {
                    room: self.room.to_owned(),
                    detail: format!("the update of version {id} is damaged: {e}"),
                }),
            None => Ok(None),
        }
    }
    async fn put(&mut self, row: &VersionRow, data: Option<&[u8]>) -> Result<(), StoreError> {
        let id = row.meta.id;
        self.meta.put((self.room, id), &history::encode_row(row)?)?;
        if let Some(data) = data {
            self.data
                .put((self.room, id), &frame(self.room, id, data)?)?;
        }
        Ok(())
    }
    async fn remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.meta.del((self.room, id))?;
        self.data.del((self.room, id))
    }
    async fn next_id(&mut self) -> Result<u64, StoreError> {
        let Some(ids) = self.ids.as_mut() else {
            return Err(io("version ids taken in a read transaction"));
        };
        let last = ids.get(self.room).map_err(io)?.map_or(0, |v| v.value());
        ids.insert(self.room, last + 1).map_err(io)?;
        Ok(last + 1)
    }
}

/// The writer's memory of each room's last sequence number, so an append
/// does not look it up in the tables. Only the writer thread writes, so it
/// stays exact; it is cleared when a commit fails and when it grows past
/// [`SeqCache::MAX_ROOMS`] (then rebuilt from the tables on demand).
#[derive(Default)]
struct SeqCache {
    rooms: HashMap<String, u64>,
}

impl SeqCache {
    /// Rooms remembered at most (about 100 bytes each).
    const MAX_ROOMS: usize = 100_000;

    fn next(
        &mut self,
        log: &RoomTable<'_>,
        snapshots: &RoomTable<'_>,
        room: &str,
    ) -> Result<u64, StoreError> {
        let last = match self.rooms.get(room) {
            Some(seq) => *seq,
            None => {
                if self.rooms.len() >= Self::MAX_ROOMS {
                    self.rooms.clear();
                }
                last_seq(log, snapshots, room)?
            }
        };
        let next = last + 1;
        match self.rooms.get_mut(room) {
            Some(seq) => *seq = next,
            None => {
                self.rooms.insert(room.to_owned(), next);
            }
        }
        Ok(next)
    }
}

/// Writes a batch in one transaction and commits it durably.
fn write_batch(
    db: &Database,
    batch: &[WriteOp],
    seqs: &mut SeqCache,
) -> Result<Vec<Outcome>, StoreError> {
    let mut txn = db.begin_write().map_err(io)?;
    txn.set_durability(Durability::Immediate).map_err(io)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut log = txn.open_table(LOG).map_err(io)?;
        let mut snapshots = txn.open_table(SNAPSHOT).map_err(io)?;
        let mut damaged = txn.open_table(DAMAGED).map_err(io)?;
        for op in batch {
            match op {
                WriteOp::Append { room, data, .. } => {
                    let seq = seqs.next(&log, &snapshots, room)?;
                    log.insert((room.as_str(), seq), frame(room, seq, data)?.as_slice())
                        .map_err(io)?;
                    outcomes.push(Outcome::Seq(seq));
                }
                WriteOp::Compact {
                    room,
                    snapshot,
                    upto,
                    ..
                } => {
                    compact(
                        &mut log,
                        &mut snapshots,
                        &mut damaged,
                        room,
                        snapshot,
                        *upto,
                    )?;
                    outcomes.push(Outcome::Done);
                }
                WriteOp::Delete { room, .. } => {
                    for table in [&mut log, &mut snapshots, &mut damaged] {
                        clear(table, room, u64::MAX)?;
                    }
                    let mut versions = txn.open_table(VERSIONS).map_err(io)?;
                    let mut version_data = txn.open_table(VERSION_DATA).map_err(io)?;
                    for table in [&mut versions, &mut version_data] {
                        clear(table, room, u64::MAX)?;
                    }
                    seqs.rooms.remove(room.as_str());
                    outcomes.push(Outcome::Done);
                }
                WriteOp::Close { .. } | WriteOp::Versions { .. } => outcomes.push(Outcome::Done),
            }
        }
    }
    txn.commit().map_err(io)?;
    Ok(outcomes)
}

/// The room's last sequence number: its last log key or, when the log is
/// empty, the one its snapshot covers.
fn last_seq(log: &RoomTable<'_>, snapshots: &RoomTable<'_>, room: &str) -> Result<u64, StoreError> {
    let all = (room, 0u64)..=(room, u64::MAX);
    let mut seq = 0;
    for table in [log, snapshots] {
        if let Some(entry) = table.range(all.clone()).map_err(io)?.next_back() {
            let (key, _) = entry.map_err(io)?;
            seq = seq.max(key.value().1);
        }
    }
    Ok(seq)
}

/// Removes the room's entries with sequence numbers `<= upto`.
fn clear(table: &mut RoomTable<'_>, room: &str, upto: u64) -> Result<(), StoreError> {
    table
        .retain_in((room, 0u64)..=(room, upto), |_, _| false)
        .map_err(io)
}

/// Replaces the room's snapshot and drops the log entries it covers;
/// damaged ones are moved to `damaged` instead. A compaction older than the
/// stored snapshot (smaller `upto`) is ignored: snapshots only move forward.
fn compact(
    log: &mut RoomTable<'_>,
    snapshots: &mut RoomTable<'_>,
    damaged: &mut RoomTable<'_>,
    room: &str,
    snapshot: &[u8],
    upto: u64,
) -> Result<(), StoreError> {
    let all = (room, 0u64)..=(room, u64::MAX);
    if let Some(entry) = snapshots.range(all.clone()).map_err(io)?.next_back() {
        let (key, _) = entry.map_err(io)?;
        if key.value().1 > upto {
            return Ok(());
        }
    }
    let mut bad: Vec<(u64, Vec<u8>)> = Vec::new();
    log.retain_in((room, 0u64)..=(room, upto), |key, value| {
        if unframe(room, key.1, value).is_err() {
            bad.push((key.1, value.to_vec()));
        }
        false
    })
    .map_err(io)?;
    for (seq, value) in bad {
        tracing::error!(
            room,
            seq,
            "compaction moved a damaged log entry to the `damaged` table"
        );
        damaged.insert((room, seq), value.as_slice()).map_err(io)?;
    }
    clear(snapshots, room, u64::MAX)?;
    snapshots
        .insert((room, upto), frame(room, upto, snapshot)?.as_slice())
        .map_err(io)?;
    Ok(())
}

/// The database file opened directly, without the writer and reader
/// threads, for `chorus store copy` (see [`super::copy`]): lists rooms,
/// reads a room's stored entries as they are (sequence numbers included)
/// and replaces rooms wholesale. Never used while serving.
pub struct RedbFile {
    path: PathBuf,
    db: FileHandle,
}

/// How the file is open.
enum FileHandle {
    /// A source that needed no repair: never written to.
    Read(::redb::ReadOnlyDatabase),
    /// A target, or a source that redb had to repair first.
    Write(Database),
}

impl RedbFile {
    /// Opens the existing `dir/chorus.redb` to read it. A file left by a
    /// crash is repaired first (as the server would at start); a file held
    /// by a running server is refused, naming it.
    pub fn open_source(dir: &Path) -> Result<RedbFile, StoreError> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(StoreError::Open {
                path,
                detail: "no such file (is this the data directory of a chorus server?)".into(),
            });
        }
        let opened = catch_unwind(|| ::redb::ReadOnlyDatabase::open(&path)).map_err(|p| {
            StoreError::Open {
                path: path.clone(),
                detail: format!("redb panicked opening it: {}", panic_message(&*p)),
            }
        })?;
        let db = match opened {
            Ok(db) => FileHandle::Read(db),
            Err(::redb::DatabaseError::RepairAborted) => {
                eprintln!(
                    "{} was not closed cleanly; repairing it first (as the server would)",
                    path.display()
                );
                FileHandle::Write(Self::open_writable(&path, false)?)
            }
            Err(e) => return Err(file_error(&path, e)),
        };
        Ok(RedbFile { path, db })
    }

    /// Opens (creating if needed) `dir/chorus.redb` to write rooms into it;
    /// refused, naming the file, while a server holds it.
    pub fn open_target(dir: &Path) -> Result<RedbFile, StoreError> {
        let path = dir.join(FILE_NAME);
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: path.clone(),
            detail: format!("cannot create data dir {}: {e}", dir.display()),
        })?;
        let db = Self::open_writable(&path, true)?;
        Ok(RedbFile {
            path,
            db: FileHandle::Write(db),
        })
    }

    fn open_writable(path: &Path, create: bool) -> Result<Database, StoreError> {
        let open_err = |detail: String| StoreError::Open {
            path: path.to_owned(),
            detail,
        };
        let opened = catch_unwind(|| {
            if create {
                Database::builder().create(path)
            } else {
                Database::builder().open(path)
            }
        })
        .map_err(|p| open_err(format!("redb panicked opening it: {}", panic_message(&*p))))?;
        let db = opened.map_err(|e| file_error(path, e))?;
        let init = || -> Result<(), ::redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(SNAPSHOT)?;
            txn.open_table(DAMAGED)?;
            txn.commit()?;
            Ok(())
        };
        init().map_err(|e| open_err(format!("cannot initialise tables: {e}")))?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn begin_read(&self) -> Result<::redb::ReadTransaction, StoreError> {
        match &self.db {
            FileHandle::Read(db) => db.begin_read(),
            FileHandle::Write(db) => db.begin_read(),
        }
        .map_err(io)
    }

    /// Up to `limit` rooms with a snapshot or a log entry, in id order
    /// (bytewise), after `after` (`""`: from the first).
    pub fn rooms(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let txn = self.begin_read()?;
        let mut out = Vec::new();
        let (Some(log), Some(snapshots)) =
            (open_or_none(&txn, LOG)?, open_or_none(&txn, SNAPSHOT)?)
        else {
            return Ok(out);
        };
        let (mut a, mut b) = (next_room(&log, after)?, next_room(&snapshots, after)?);
        while out.len() < limit {
            let room = match (&a, &b) {
                (None, None) => break,
                (Some(x), None) => x.clone(),
                (None, Some(y)) => y.clone(),
                (Some(x), Some(y)) => x.min(y).clone(),
            };
            if a.as_deref() == Some(room.as_str()) {
                a = next_room(&log, &room)?;
            }
            if b.as_deref() == Some(room.as_str()) {
                b = next_room(&snapshots, &room)?;
            }
            out.push(room);
        }
        Ok(out)
    }

    /// How many rooms [`RedbFile::rooms`] lists in all.
    pub fn count_rooms(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        let mut after = String::new();
        loop {
            let page = self.rooms(&after, 10_000)?;
            n += page.len() as u64;
            match page.last() {
                Some(last) if page.len() == 10_000 => after = last.clone(),
                _ => return Ok(n),
            }
        }
    }

    /// Reads `rooms` as stored, in one read transaction. A room with a
    /// damaged snapshot or log entry is an error of its own
    /// ([`StoreError::Corrupt`]): a copy is exact or it is not made.
    pub fn dump(&self, rooms: &[String]) -> Result<Vec<Result<RoomDump, StoreError>>, StoreError> {
        let txn = self.begin_read()?;
        let (Some(log), Some(snapshots)) =
            (open_or_none(&txn, LOG)?, open_or_none(&txn, SNAPSHOT)?)
        else {
            return Ok(rooms.iter().map(|r| Ok(RoomDump::empty(r))).collect());
        };
        let versions = match (
            open_or_none(&txn, VERSIONS)?,
            open_or_none(&txn, VERSION_DATA)?,
        ) {
            (Some(meta), Some(data)) => {
                let ids = match txn.open_table(VERSION_IDS) {
                    Ok(t) => Some(t),
                    Err(::redb::TableError::TableDoesNotExist(_)) => None,
                    Err(e) => return Err(io(e)),
                };
                Some((meta, data, ids))
            }
            _ => None,
        };
        Ok(rooms
            .iter()
            .map(|room| {
                catch_unwind(AssertUnwindSafe(|| {
                    let mut dump = dump_room(&log, &snapshots, room)?;
                    if let Some((meta, data, ids)) = &versions {
                        dump_versions(meta, data, ids.as_ref(), &mut dump)?;
                    }
                    Ok(dump)
                }))
                .unwrap_or_else(|p| {
                    Err(StoreError::Corrupt {
                        room: room.clone(),
                        detail: format!("reading it panicked: {}", panic_message(&*p)),
                    })
                })
            })
            .collect())
    }

    /// Whether `dump` can be stored exactly: redb keeps no counter apart
    /// from its keys, so a room's `last_seq` must be its last entry's.
    pub fn check(dump: &RoomDump) -> Result<(), StoreError> {
        let last = dump
            .updates
            .last()
            .map(|e| e.seq)
            .or(dump.snapshot.as_ref().map(|s| s.0))
            .unwrap_or(0);
        if last == dump.last_seq {
            return Ok(());
        }
        Err(StoreError::Corrupt {
            room: dump.room.clone(),
            detail: format!(
                "its last sequence number is {} but its last stored entry is #{last}; \
                 redb numbers from its entries, so it cannot keep that counter",
                dump.last_seq
            ),
        })
    }

    /// Replaces each room of `dumps` (snapshot, log, damaged records and
    /// version history) with the dump, sequence numbers and version ids as
    /// given, in one durable transaction; the room's version counter
    /// becomes the highest of the dump's, its last version's and the one
    /// the file had. Only an exact copy is written: see
    /// [`RedbFile::check`].
    pub fn import(&self, dumps: &[RoomDump]) -> Result<(), StoreError> {
        let FileHandle::Write(db) = &self.db else {
            return Err(io("the file is open read-only"));
        };
        for d in dumps {
            Self::check(d)?;
        }
        let mut txn = db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate).map_err(io)?;
        {
            let mut log = txn.open_table(LOG).map_err(io)?;
            let mut snapshots = txn.open_table(SNAPSHOT).map_err(io)?;
            let mut damaged = txn.open_table(DAMAGED).map_err(io)?;
            let mut versions = txn.open_table(VERSIONS).map_err(io)?;
            let mut version_data = txn.open_table(VERSION_DATA).map_err(io)?;
            let mut version_ids = txn.open_table(VERSION_IDS).map_err(io)?;
            for d in dumps {
                let room = d.room.as_str();
                for table in [
                    &mut log,
                    &mut snapshots,
                    &mut damaged,
                    &mut versions,
                    &mut version_data,
                ] {
                    clear(table, room, u64::MAX)?;
                }
                for v in &d.versions {
                    let id = v.row.meta.id;
                    versions
                        .insert((room, id), history::encode_row(&v.row)?.as_slice())
                        .map_err(io)?;
                    version_data
                        .insert((room, id), frame(room, id, &v.data)?.as_slice())
                        .map_err(io)?;
                }
                let held = version_ids.get(room).map_err(io)?.map_or(0, |v| v.value());
                let counter = d.counter_on_target(held);
                if counter > 0 {
                    version_ids.insert(room, counter).map_err(io)?;
                }
                if let Some((upto, doc)) = &d.snapshot {
                    snapshots
                        .insert((room, *upto), frame(room, *upto, doc)?.as_slice())
                        .map_err(io)?;
                }
                for e in &d.updates {
                    log.insert((room, e.seq), frame(room, e.seq, &e.data)?.as_slice())
                        .map_err(io)?;
                }
            }
        }
        txn.commit().map_err(io)
    }

    /// Closes the file cleanly.
    pub fn close(self) -> Result<(), StoreError> {
        match self.db {
            FileHandle::Read(db) => db.close().map_err(io),
            FileHandle::Write(db) => db.close().map_err(io),
        }
    }
}

/// An error of redb opening `path`, said plainly.
fn file_error(path: &Path, e: ::redb::DatabaseError) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        detail: match e {
            ::redb::DatabaseError::DatabaseAlreadyOpen => "it is in use by another process \
                 (a running chorus server?): stop it first, or copy a backup of the file"
                .into(),
            other => other.to_string(),
        },
    }
}

type ReadTable = ::redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>;

/// The table, or `None` when the file has never had it.
fn open_or_none(
    txn: &::redb::ReadTransaction,
    table: TableDefinition<(&str, u64), &[u8]>,
) -> Result<Option<ReadTable>, StoreError> {
    match txn.open_table(table) {
        Ok(t) => Ok(Some(t)),
        Err(::redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// The first room of `table` after `after` (skipping the rest of a room's
/// keys in one seek).
fn next_room(table: &ReadTable, after: &str) -> Result<Option<String>, StoreError> {
    use std::ops::Bound;
    let from: (&str, u64) = (after, u64::MAX);
    let first = if after.is_empty() {
        table.first().map_err(io)?
    } else {
        table
            .range::<(&str, u64)>((Bound::Excluded(from), Bound::Unbounded))
            .map_err(io)?
            .next()
            .transpose()
            .map_err(io)?
    };
    Ok(first.map(|(k, _)| k.value().0.to_owned()))
}

/// Adds the room's version history to `dump`: every row and update in id
/// order (a damaged one refuses the room) and its id counter.
fn dump_versions(
    meta: &ReadTable,
    data: &ReadTable,
    ids: Option<&::redb::ReadOnlyTable<&'static str, u64>>,
    dump: &mut RoomDump,
) -> Result<(), StoreError> {
    let room = dump.room.clone();
    let corrupt = |detail: String| StoreError::Corrupt {
        room: room.clone(),
        detail,
    };
    let all = (room.as_str(), 0u64)..=(room.as_str(), u64::MAX);
    for entry in meta.range(all).map_err(io)? {
        let (key, value) = entry.map_err(io)?;
        let id = key.value().1;
        let mut row = history::decode_row(&room, value.value())?;
        if row.meta.id != id {
            return Err(corrupt(format!(
                "version row #{id} says it is version {}",
                row.meta.id
            )));
        }
        let stored = data
            .get((room.as_str(), id))
            .map_err(io)?
            .ok_or_else(|| corrupt(format!("version {id} has no stored update")))?;
        let update = unframe(&room, id, stored.value())
            .map_err(|e| corrupt(format!("the update of version {id} is damaged: {e}")))?;
        row.meta.bytes = update.len() as u64;
        dump.versions.push(VersionDump {
            row,
            data: Bytes::copy_from_slice(update),
        });
    }
    let counter = match ids {
        Some(ids) => ids.get(room.as_str()).map_err(io)?.map_or(0, |v| v.value()),
        None => 0,
    };
    dump.version_counter = counter.max(dump.versions.last().map_or(0, |v| v.row.meta.id));
    Ok(())
}

/// One room as stored; see [`RedbFile::dump`].
fn dump_room(log: &ReadTable, snapshots: &ReadTable, room: &str) -> Result<RoomDump, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        room: room.to_owned(),
        detail,
    };
    let all = (room, 0u64)..=(room, u64::MAX);
    let mut dump = RoomDump::empty(room);
    if let Some(entry) = snapshots.range(all.clone()).map_err(io)?.next_back() {
        let (key, value) = entry.map_err(io)?;
        let upto = key.value().1;
        let doc = unframe(room, upto, value.value())
            .map_err(|e| corrupt(format!("its snapshot (up to #{upto}) is damaged: {e}")))?;
        dump.snapshot = Some((upto, Bytes::copy_from_slice(doc)));
        dump.last_seq = upto;
    }
    let covered = dump.last_seq;
    for entry in log.range(all).map_err(io)? {
        let (key, value) = entry.map_err(io)?;
        let seq = key.value().1;
        if seq <= covered {
            continue;
        }
        let data = unframe(room, seq, value.value())
            .map_err(|e| corrupt(format!("its log entry #{seq} is damaged: {e}")))?;
        dump.updates.push(LogEntry {
            seq,
            data: Bytes::copy_from_slice(data),
            author: None,
            created_at: None,
        });
        dump.last_seq = seq;
    }
    Ok(dump)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> RedbStore {
        RedbStore::open_at(dir, WriterOptions::batch(64)).unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[tokio::test]
    async fn appends_compaction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut seqs = Vec::new();
        for i in 0..10 {
            seqs.push(store.append("r", b(&format!("u{i}")), None).await.unwrap());
        }
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "monotonic: {seqs:?}");
        store.compact("r", b("snap"), seqs[5]).await.unwrap();
        let doc = store.load("r").await.unwrap();
        assert_eq!(doc.snapshot, Some(b("snap")));
        assert_eq!(
            doc.updates,
            (6..10).map(|i| b(&format!("u{i}"))).collect::<Vec<_>>()
        );
        assert_eq!(doc.last_seq, seqs[9]);
        // A stale compaction (older upto) does not move the snapshot back.
        store.compact("r", b("old"), seqs[2]).await.unwrap();
        assert_eq!(store.load("r").await.unwrap().snapshot, Some(b("snap")));
        // Compacting everything keeps the sequence going.
        store.compact("r", b("all"), seqs[9]).await.unwrap();
        store.close().await.unwrap();

        let store = open(dir.path());
        let doc = store.load("r").await.unwrap();
        assert_eq!(doc.snapshot, Some(b("all")));
        assert!(doc.updates.is_empty());
        assert_eq!(doc.last_seq, seqs[9]);
        let next = store.append("r", b("after"), None).await.unwrap();
        assert!(next > seqs[9], "sequence numbers never go back");
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn compaction_in_the_middle_of_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // Everything is queued before anything is awaited, so appends and
        // the compaction share batches; a fresh room numbers from 1.
        let mut appends = Vec::new();
        for i in 1..=100u64 {
            appends.push(store.append("r", b(&format!("u{i}")), None));
        }
        let compaction = store.compact("r", b("snap"), 60);
        for i in 101..=130u64 {
            appends.push(store.append("r", b(&format!("u{i}")), None));
        }
        let mut seqs = Vec::new();
        for f in appends {
            seqs.push(f.await.unwrap());
        }
        compaction.await.unwrap();
        assert_eq!(seqs, (1..=130).collect::<Vec<u64>>());
        store.close().await.unwrap();

        let store = open(dir.path());
        let doc = store.load("r").await.unwrap();
        assert_eq!(doc.snapshot, Some(b("snap")));
        let tail: Vec<Bytes> = (61..=130).map(|i| b(&format!("u{i}"))).collect();
        assert_eq!(doc.updates, tail, "exactly the entries after the snapshot");
        assert_eq!(doc.last_seq, 130);
        assert!(doc.skipped.is_empty());
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn delete_removes_only_that_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("a", b("a1"), None).await.unwrap();
        store.append("b", b("b1"), None).await.unwrap();
        store.compact("a", b("sa"), 1).await.unwrap();
        store.append("a", b("a2"), None).await.unwrap();
        store.delete("a").await.unwrap();
        let a = store.load("a").await.unwrap();
        assert!(a.snapshot.is_none() && a.updates.is_empty() && a.last_seq == 0);
        assert_eq!(store.load("b").await.unwrap().updates, vec![b("b1")]);
        store.close().await.unwrap();
    }

    #[test]
    fn frames_detect_damage() {
        let f = frame("room", 7, b"payload").unwrap();
        assert_eq!(unframe("room", 7, &f).unwrap(), b"payload");
        assert!(unframe("room", 8, &f).is_err(), "seq is covered");
        assert!(unframe("other", 7, &f).is_err(), "room is covered");
        let mut flipped = f.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert!(unframe("room", 7, &flipped)
            .unwrap_err()
            .contains("checksum"));
        assert!(unframe("room", 7, &f[..f.len() - 2])
            .unwrap_err()
            .contains("truncated"));
        assert!(unframe("room", 7, &f[..3])
            .unwrap_err()
            .contains("truncated"));
    }

    /// Overwrites the stored value of `(room, seq)` in `table`, as a flipped
    /// byte on disk would look to a reader.
    fn damage(dir: &Path, table: TableDefinition<(&str, u64), &[u8]>, room: &str, seq: u64) {
        let db = Database::create(dir.join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(table).unwrap();
            let mut value = t.get((room, seq)).unwrap().unwrap().value().to_vec();
            let last = value.len() - 1;
            value[last] ^= 0xff;
            t.insert((room, seq), value.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    #[tokio::test]
    async fn damaged_entries_are_skipped_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 1..=3 {
            store.append("r", b(&format!("u{i}")), None).await.unwrap();
        }
        store.close().await.unwrap();
        damage(dir.path(), LOG, "r", 2);

        let store = open(dir.path());
        let doc = store.load("r").await.unwrap();
        assert_eq!(doc.updates, vec![b("u1"), b("u3")]);
        assert_eq!(doc.skipped.len(), 1);
        assert!(doc.skipped[0].contains("#2"), "{:?}", doc.skipped);
        assert_eq!(doc.last_seq, 3);
        store.compact("r", b("snap"), 3).await.unwrap();
        store.close().await.unwrap();
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(DAMAGED).unwrap();
        assert!(t.get(("r", 2)).unwrap().is_some(), "kept for inspection");
    }

    #[tokio::test]
    async fn damaged_snapshot_refuses_the_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("r", b("u1"), None).await.unwrap();
        store.append("ok", b("u1"), None).await.unwrap();
        store.compact("r", b("snap"), 1).await.unwrap();
        store.append("r", b("u2"), None).await.unwrap();
        store.close().await.unwrap();
        damage(dir.path(), SNAPSHOT, "r", 1);

        let store = open(dir.path());
        match store.load("r").await {
            Err(StoreError::Corrupt { room, detail }) => {
                assert_eq!(room, "r");
                assert!(detail.contains("snapshot"), "{detail}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(store.load("ok").await.unwrap().updates, vec![b("u1")]);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_room_with_only_damaged_entries_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.append("r", b("u1"), None).await.unwrap();
        store.close().await.unwrap();
        damage(dir.path(), LOG, "r", 1);
        let store = open(dir.path());
        assert!(matches!(
            store.load("r").await,
            Err(StoreError::Corrupt { .. })
        ));
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_second_open_of_the_same_file_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        match RedbStore::open_at(dir.path(), WriterOptions::batch(1)) {
            Err(e @ StoreError::Open { .. }) => {
                assert!(e.to_string().contains(FILE_NAME), "{e}")
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("opened twice"),
        }
        store.close().await.unwrap();
        assert!(store.append("r", b("x"), None).await.is_err(), "closed");
    }

    #[tokio::test]
    async fn the_raw_file_lists_dumps_and_replaces_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (room, n) in [("a", 2), ("b", 1), ("c", 3)] {
            for i in 1..=n {
                store
                    .append(room, b(&format!("{room}{i}")), None)
                    .await
                    .unwrap();
            }
        }
        store.compact("b", b("sb"), 1).await.unwrap(); // a snapshot alone
        store.close().await.unwrap();
        damage(dir.path(), LOG, "c", 2);

        let file = RedbFile::open_source(dir.path()).unwrap();
        assert_eq!(file.rooms("", 10).unwrap(), ["a", "b", "c"]);
        assert_eq!(file.rooms("a", 1).unwrap(), ["b"]);
        assert!(file.rooms("c", 10).unwrap().is_empty());
        assert_eq!(file.count_rooms().unwrap(), 3);
        let rooms: Vec<String> = ["a", "b", "c", "zz"].map(String::from).to_vec();
        let mut dumps = file.dump(&rooms).unwrap().into_iter();
        let a = dumps.next().unwrap().unwrap();
        assert_eq!(a.updates.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((a.snapshot.clone(), a.last_seq), (None, 2));
        let bd = dumps.next().unwrap().unwrap();
        assert_eq!((bd.snapshot.clone(), bd.last_seq), (Some((1, b("sb"))), 1));
        assert!(bd.updates.is_empty());
        match dumps.next().unwrap() {
            Err(StoreError::Corrupt { room, detail }) => {
                assert_eq!(room, "c");
                assert!(detail.contains("#2"), "{detail}");
            }
            other => panic!("a damaged room must not be copied: {other:?}"),
        }
        assert_eq!(dumps.next().unwrap().unwrap(), RoomDump::empty("zz"));
        file.close().unwrap();

        let other = tempfile::tempdir().unwrap();
        let target = RedbFile::open_target(other.path()).unwrap();
        target.import(&[a.clone(), bd.clone()]).unwrap();
        // Importing replaces what the room had.
        let mut a2 = a.clone();
        a2.updates.truncate(1);
        a2.updates[0].seq = 7;
        a2.last_seq = 7;
        target.import(&[a2.clone()]).unwrap();
        let back = target.dump(&rooms[..2]).unwrap();
        assert_eq!(back[0].as_ref().unwrap(), &a2);
        assert_eq!(back[1].as_ref().unwrap(), &bd);
        // A counter past the last entry cannot be kept: refused.
        let mut past = a.clone();
        past.last_seq = 9;
        assert!(RedbFile::check(&past).is_err());
        assert!(target.import(&[past]).is_err());
        target.close().unwrap();
        let store = open(other.path());
        assert_eq!(store.load("a").await.unwrap().last_seq, 7);
        assert_eq!(store.append("a", b("next"), None).await.unwrap(), 8);
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn without_group_commit_every_append_still_lands() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_at(dir.path(), WriterOptions::batch(1)).unwrap();
        let futs: Vec<_> = (0..20)
            .map(|i| store.append(if i % 2 == 0 { "a" } else { "b" }, b(&format!("{i}")), None))
            .collect();
        for f in futs {
            f.await.unwrap();
        }
        assert_eq!(store.load("a").await.unwrap().updates.len(), 10);
        assert_eq!(store.load("b").await.unwrap().last_seq, 10);
        store.close().await.unwrap();
    }
}
