//! PostgreSQL [`DocStore`] (`--postgres-url`): the store every node of a
//! cluster shares, usable on a single node too.
//!
//! Tables (created and migrated at start-up from the versioned files in
//! `migrations/`, under a session advisory lock so that nodes starting
//! together migrate once): `chorus_rooms` (per room: the log's incarnation
//! and the last sequence number), `chorus_updates` (the log: room, seq,
//! update, author, time) and `chorus_snapshots` (room, the seq it covers,
//! the whole document).
//!
//! - **Appends** go to one writer task that commits whatever queued while
//!   the previous commit was written, up to `--store-max-batch`, as one
//!   transaction of two statements: advance each room's counter (rooms
//!   locked in id order, so two nodes' batches never deadlock) and insert
//!   every update with its number. An update's seq is thus decided by the
//!   transaction that makes it durable, and it is acknowledged (and, in
//!   cluster mode, published) only after the commit. While PostgreSQL is
//!   unreachable a batch is retried with backoff; an append that waited
//!   `--postgres-append-timeout-ms` fails (`store_failed`; the room keeps
//!   the update and retries it). A commit whose answer was lost may be
//!   retried and so stored twice: applying a Yjs update twice is harmless.
//! - **Reads** (`load`, `read_since`) run in one repeatable-read
//!   transaction, so a compaction never slips between the snapshot and
//!   the log.
//! - **Compaction** takes the room's transaction-scoped advisory lock
//!   (`pg_advisory_xact_lock`: one node at a time, a second waits), merges
//!   the previous snapshot, the log up to `upto` and the node's snapshot
//!   (which may lack entries of other nodes not yet delivered to it, and
//!   may hold updates whose appends failed), writes the merge and deletes
//!   the rows it covers, in one transaction. It resolves `Ok` only once
//!   the node's document is in the stored snapshot.
//! - **Delete** removes the room's log, snapshot and versions and bumps
//!   its incarnation, in one transaction under the same lock.
//! - **Versions** (`chorus_versions`, `chorus_version_ids`; see
//!   [`super::history`]): operations that write run in one transaction
//!   holding the room's version lock (another advisory key), so two nodes
//!   adding a version at once are ordered and the second sees the first
//!   (`Added::Stale`); reads run in a repeatable-read transaction.
//!
//! All of it runs on a runtime of its own (one thread), so database I/O
//! never runs on a room's arbiter, and connections outlive any arbiter.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::IsolationLevel;

use super::copy::{LogEntry, RoomDump, VersionDump};
use super::history::{self, Rows, VersionMeta, VersionOp, VersionOut, VersionRow};
use super::{DocStore, LogRead, StoreError, StoreFuture, StoredDoc};
use crate::config::Config;

mod embedded {
    refinery::embed_migrations!("src/store/postgres/migrations");
}

/// Longest wait between two attempts while PostgreSQL is away.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);
/// Key of the session advisory lock held while migrating.
const MIGRATION_LOCK: i64 = 0x6368_6f72_7573_0001;

/// What the writer is handed.
enum Op {
    Append(Append),
    /// Answer once everything queued before is written; then stop.
    Close(oneshot::Sender<()>),
}

/// One append waiting for the writer.
struct Append {
    room: String,
    data: Bytes,
    author: Option<String>,
    deadline: Instant,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// Documents in PostgreSQL; see the module docs.
pub struct PostgresStore {
    pool: Pool,
    appends: mpsc::UnboundedSender<Op>,
    /// How long an append waits for the database.
    append_timeout: Duration,
    /// The store's own runtime (taken at drop, which must not block).
    runtime: Option<tokio::runtime::Runtime>,
    /// Where the store's futures run.
    handle: tokio::runtime::Handle,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(format!("postgres: {e}"))
}

/// [`io`] with the error's causes.
fn io_chain(e: impl std::error::Error + 'static) -> StoreError {
    io(chain(&e))
}

/// An error with its causes (`a: b: c`): the pool's and the driver's
/// messages alone hide why a connection failed (a TLS certificate, a
/// refused password).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The URL without its password, for messages.
pub(crate) fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

impl PostgresStore {
    /// Connects to `--postgres-url`, creates or migrates the schema and
    /// starts the writer. Retries the first connection for
    /// `--postgres-append-timeout-ms` (a database starting with the node);
    /// fails with [`StoreError::Open`] past it. May be called from inside
    /// another runtime (it blocks a plain thread while it connects).
    pub fn open(config: &Config) -> Result<PostgresStore, StoreError> {
        let url = config.postgres_url.clone().unwrap_or_default();
        let open_err = |detail: String| StoreError::Open {
            path: redacted(&url).into(),
            detail,
        };
        let pg = tokio_postgres::Config::from_str(&url).map_err(|e| open_err(e.to_string()))?;
        let extra = match &config.postgres_ca_file {
            Some(path) => crate::tls::pem_certs(path, "--postgres-ca-file").map_err(open_err)?,
            None => Vec::new(),
        };
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::tls::client_config(extra, "PostgreSQL TLS").map_err(open_err)?,
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("chorus-postgres")
            .enable_all()
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.postgres_pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| open_err(e.to_string()))?;
        let append_timeout = Duration::from_millis(config.postgres_append_timeout_ms);
        let handle = runtime.handle().clone();
        let migrate = {
            let pool = pool.clone();
            async move {
                let deadline = Instant::now() + append_timeout;
                let mut wait = Duration::from_millis(100);
                loop {
                    match migrate(&pool).await {
                        Ok(applied) => return Ok(applied),
                        Err(e) if Instant::now() + wait < deadline => {
                            tracing::warn!("PostgreSQL not ready ({e}); retrying");
                            tokio::time::sleep(wait).await;
                            wait = (wait * 2).min(MAX_RETRY_WAIT);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        let applied = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(migrate))
                .join()
                .unwrap_or_else(|_| Err("the migration thread panicked".into()))
        });
        let applied = match applied {
            Ok(applied) => applied,
            Err(e) => {
                // Dropping a runtime may block: not allowed on the caller's.
                runtime.shutdown_background();
                return Err(open_err(e));
            }
        };
        tracing::info!(
            url = %redacted(&url),
            migrations_applied = applied,
            "PostgreSQL store ready"
        );
        let (appends, rx) = mpsc::unbounded_channel();
        runtime.spawn(writer(pool.clone(), rx, config.store_max_batch.max(1)));
        Ok(PostgresStore {
            pool,
            appends,
            append_timeout,
            runtime: Some(runtime),
            handle,
        })
    }

    /// Runs `work` on the store's runtime.
    fn run<T, F>(&self, work: F) -> StoreFuture<T>
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let task = self.handle.spawn(work);
        Box::pin(async move { task.await.map_err(|e| io(format!("task failed: {e}")))? })
    }

    /// Every room with something stored, in id order, after `after`, at
    /// most `limit` (for `chorus store copy`).
    pub fn rooms(&self, after: &str, limit: usize) -> StoreFuture<Vec<String>> {
        let (pool, after) = (self.pool.clone(), after.to_owned());
        self.run(async move {
            let client = pool.get().await.map_err(io_chain)?;
            let rows = client
                .query(
                    "SELECT room FROM chorus_rooms WHERE room > $1 AND last_seq > 0 \
                     UNION SELECT room FROM chorus_snapshots WHERE room > $1 \
                     ORDER BY 1 LIMIT $2",
                    &[&after, &(limit as i64)],
                )
                .await
                .map_err(io_chain)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }
}

/// Raw access for `chorus store copy` (see [`super::copy`]).
impl PostgresStore {
    /// How many rooms [`PostgresStore::rooms`] lists in all.
    pub fn count_rooms(&self) -> StoreFuture<u64> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(io)?;
            let row = client
                .query_one(
                    "SELECT count(*) FROM (SELECT room FROM chorus_rooms WHERE last_seq > 0 \
                     UNION SELECT room FROM chorus_snapshots) AS t",
                    &[],
                )
                .await
                .map_err(io)?;
            Ok(row.get::<_, i64>(0).max(0) as u64)
        })
    }

    /// Reads `rooms` as stored (snapshot, the log after it with sequence
    /// numbers, authors and times, the room's counter), all in one
    /// repeatable-read transaction. A room with nothing stored comes back
    /// empty.
    pub fn dump(&self, rooms: &[String]) -> StoreFuture<Vec<RoomDump>> {
        let (pool, rooms) = (self.pool.clone(), rooms.to_vec());
        self.run(async move {
            let mut client = pool.get().await.map_err(io_chain)?;
            let tx = consistent_read(&mut client).await?;
            let heads = tx
                .query(
                    "SELECT room, last_seq FROM chorus_rooms WHERE room = ANY($1)",
                    &[&rooms],
                )
                .await
                .map_err(io)?;
            let snapshots = tx
                .query(
                    "SELECT room, upto, doc FROM chorus_snapshots WHERE room = ANY($1)",
                    &[&rooms],
                )
                .await
                .map_err(io)?;
            let log = tx
                .query(
                    "SELECT u.room, u.seq, u.data, u.author, u.created_at \
                     FROM chorus_updates u LEFT JOIN chorus_snapshots s ON s.room = u.room \
                     WHERE u.room = ANY($1) AND u.seq > coalesce(s.upto, 0) \
                     ORDER BY u.room, u.seq",
                    &[&rooms],
                )
                .await
                .map_err(io)?;
            let versions = tx
                .query(
                    "SELECT room, id, created_ms, name, kind, restored_from, authors, sv, \
                     full_state, data FROM chorus_versions WHERE room = ANY($1) ORDER BY room, id",
                    &[&rooms],
                )
                .await
                .map_err(io)?;
            let counters = tx
                .query(
                    "SELECT room, last_id FROM chorus_version_ids WHERE room = ANY($1)",
                    &[&rooms],
                )
                .await
                .map_err(io)?;
            tx.commit().await.map_err(io)?;
            let mut dumps: BTreeMap<String, RoomDump> = rooms
                .iter()
                .map(|r| (r.clone(), RoomDump::empty(r)))
                .collect();
            for row in heads {
                if let Some(d) = dumps.get_mut(row.get::<_, &str>(0)) {
                    d.last_seq = row.get::<_, i64>(1).max(0) as u64;
                }
            }
            for row in snapshots {
                if let Some(d) = dumps.get_mut(row.get::<_, &str>(0)) {
                    let upto = row.get::<_, i64>(1).max(0) as u64;
                    d.snapshot = Some((upto, Bytes::from(row.get::<_, Vec<u8>>(2))));
                }
            }
            for row in log {
                if let Some(d) = dumps.get_mut(row.get::<_, &str>(0)) {
                    d.updates.push(LogEntry {
                        seq: row.get::<_, i64>(1).max(0) as u64,
                        data: Bytes::from(row.get::<_, Vec<u8>>(2)),
                        author: row.get(3),
                        created_at: Some(row.get(4)),
                    });
                }
            }
            for row in versions {
                let room: &str = row.get(0);
                let Some(d) = dumps.get_mut(room) else {
                    continue;
                };
                let authors: String = row.get(6);
                let authors = serde_json::from_str(&authors).map_err(|e| StoreError::Corrupt {
                    room: room.to_owned(),
                    detail: format!("authors of a version: {e}"),
                })?;
                let data = Bytes::from(row.get::<_, Vec<u8>>(9));
                d.versions.push(VersionDump {
                    row: VersionRow {
                        meta: VersionMeta {
                            id: row.get::<_, i64>(1).max(0) as u64,
                            time: row.get::<_, i64>(2).max(0) as u64,
                            name: row.get(3),
                            kind: history::kind_of(row.get(4)),
                            restored_from: row.get::<_, Option<i64>>(5).map(|v| v.max(0) as u64),
                            authors,
                            bytes: data.len() as u64,
                        },
                        sv: row.get(7),
                        full: row.get(8),
                    },
                    data,
                });
            }
            for row in counters {
                if let Some(d) = dumps.get_mut(row.get::<_, &str>(0)) {
                    d.version_counter = row.get::<_, i64>(1).max(0) as u64;
                }
            }
            for d in dumps.values_mut() {
                let last = d.versions.last().map_or(0, |v| v.row.meta.id);
                d.version_counter = d.version_counter.max(last);
            }
            Ok(rooms
                .iter()
                .filter_map(|r| dumps.remove(r.as_str()))
                .collect())
        })
    }

    /// Replaces each room of `dumps` with the dump (sequence numbers,
    /// authors and times as given; the time of writing where the dump has
    /// none; its version history with ids as given, the version counter
    /// raised to cover them and the dump's), in one transaction under the
    /// rooms' advisory locks (document and version locks). A room that
    /// existed gets a new incarnation, as on delete, so that nodes holding
    /// positions in its old log read it again.
    pub fn import(&self, dumps: Vec<RoomDump>) -> StoreFuture<()> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut dumps = dumps;
            dumps.sort_by(|a, b| a.room.cmp(&b.room));
            let rooms: Vec<&str> = dumps.iter().map(|d| d.room.as_str()).collect();
            let mut keys: Vec<i64> = rooms.iter().map(|r| lock_key(r)).collect();
            keys.extend(
                rooms
                    .iter()
                    .map(|r| lock_key(&format!("\u{0}versions\u{0}{r}"))),
            );
            // The same order on every node, so two importers never deadlock.
            keys.sort_unstable();
            keys.dedup();
            let mut v_cols = VersionColumns::default();
            let mut id_rooms = Vec::new();
            let mut id_counters = Vec::new();
            for d in &dumps {
                for v in &d.versions {
                    v_cols.push(&d.room, v)?;
                }
                let counter = d.counter_on_target(0);
                if counter > 0 {
                    id_rooms.push(d.room.as_str());
                    id_counters.push(counter.min(i64::MAX as u64) as i64);
                }
            }
            let counters: Vec<i64> = dumps.iter().map(|d| d.last_seq as i64).collect();
            let (mut s_rooms, mut s_upto, mut s_docs) = (Vec::new(), Vec::new(), Vec::new());
            let (mut u_rooms, mut u_seqs, mut u_data, mut u_authors, mut u_times) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for d in &dumps {
                if let Some((upto, doc)) = &d.snapshot {
                    s_rooms.push(d.room.as_str());
                    s_upto.push(*upto as i64);
                    s_docs.push(doc.as_ref());
                }
                for e in &d.updates {
                    u_rooms.push(d.room.as_str());
                    u_seqs.push(e.seq as i64);
                    u_data.push(e.data.as_ref());
                    // PostgreSQL text cannot hold NUL.
                    u_authors.push(e.author.as_ref().map(|a| a.replace('\0', "")));
                    u_times.push(e.created_at);
                }
            }
            let mut client = pool.get().await.map_err(io)?;
            let tx = client.transaction().await.map_err(io)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS t(k)",
                &[&keys],
            )
            .await
            .map_err(io)?;
            tx.execute(
                "INSERT INTO chorus_rooms AS r (room, last_seq) \
                 SELECT * FROM unnest($1::text[], $2::int8[]) \
                 ON CONFLICT (room) DO UPDATE \
                 SET incarnation = r.incarnation + 1, last_seq = EXCLUDED.last_seq, updated_at = now()",
                &[&rooms, &counters],
            )
            .await
            .map_err(io)?;
            tx.execute("DELETE FROM chorus_updates WHERE room = ANY($1)", &[&rooms])
                .await
                .map_err(io)?;
            tx.execute("DELETE FROM chorus_snapshots WHERE room = ANY($1)", &[&rooms])
                .await
                .map_err(io)?;
            tx.execute(
                "INSERT INTO chorus_snapshots (room, upto, doc) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[])",
                &[&s_rooms, &s_upto, &s_docs],
            )
            .await
            .map_err(io)?;
            tx.execute(
                "INSERT INTO chorus_updates (room, seq, data, author, created_at) \
                 SELECT room, seq, data, author, coalesce(at, now()) \
                 FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::text[], $5::timestamptz[]) \
                 AS t(room, seq, data, author, at)",
                &[&u_rooms, &u_seqs, &u_data, &u_authors, &u_times],
            )
            .await
            .map_err(io)?;
            tx.execute("DELETE FROM chorus_versions WHERE room = ANY($1)", &[&rooms])
                .await
                .map_err(io)?;
            let c = &v_cols;
            tx.execute(
                "INSERT INTO chorus_versions \
                 (room, id, created_ms, name, kind, restored_from, authors, sv, full_state, data) \
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], \
                 $5::int2[], $6::int8[], $7::text[], $8::bytea[], $9::bool[], $10::bytea[])",
                &[
                    &c.rooms, &c.ids, &c.times, &c.names, &c.kinds, &c.from, &c.authors, &c.svs,
                    &c.full, &c.data,
                ],
            )
            .await
            .map_err(io)?;
            tx.execute(
                "INSERT INTO chorus_version_ids AS v (room, last_id) \
                 SELECT * FROM unnest($1::text[], $2::int8[]) \
                 ON CONFLICT (room) DO UPDATE SET last_id = greatest(v.last_id, EXCLUDED.last_id)",
                &[&id_rooms, &id_counters],
            )
            .await
            .map_err(io)?;
            tx.commit().await.map_err(io)
        })
    }
}

/// Versions to insert, column by column (for one `unnest` insert).
#[derive(Default)]
struct VersionColumns<'a> {
    rooms: Vec<&'a str>,
    ids: Vec<i64>,
    times: Vec<i64>,
    names: Vec<Option<String>>,
    kinds: Vec<i16>,
    from: Vec<Option<i64>>,
    authors: Vec<String>,
    svs: Vec<&'a [u8]>,
    full: Vec<bool>,
    data: Vec<&'a [u8]>,
}

impl<'a> VersionColumns<'a> {
    fn push(&mut self, room: &'a str, v: &'a VersionDump) -> Result<(), StoreError> {
        let m = &v.row.meta;
        let authors =
            serde_json::to_string(&m.authors).map_err(|e| io(format!("encoding authors: {e}")))?;
        self.rooms.push(room);
        self.ids.push(m.id.min(i64::MAX as u64) as i64);
        self.times.push(m.time.min(i64::MAX as u64) as i64);
        // PostgreSQL text cannot hold NUL (as `PgRows::put`).
        self.names
            .push(m.name.as_ref().map(|n| n.replace('\0', "")));
        self.kinds.push(history::kind_code(m.kind));
        self.from
            .push(m.restored_from.map(|v| v.min(i64::MAX as u64) as i64));
        self.authors.push(authors.replace("\\u0000", ""));
        self.svs.push(&v.row.sv);
        self.full.push(v.row.full);
        self.data.push(&v.data);
        Ok(())
    }
}

/// Creates or migrates the schema; returns how many migrations ran.
async fn migrate(pool: &Pool) -> Result<usize, String> {
    let mut client = pool.get().await.map_err(|e| chain(&e))?;
    let client: &mut tokio_postgres::Client = &mut client;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| chain(&e))?;
    let report = embedded::migrations::runner()
        .set_migration_table_name("chorus_schema_history")
        .run_async(client)
        .await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let report = report.map_err(|e| format!("migrating the schema: {e}"))?;
    Ok(report.applied_migrations().len())
}

/// True for failures that end when the database is reachable again.
fn transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        // Connection exceptions, shutdown, too many connections, a
        // serialization failure or deadlock (retried as a whole).
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("57P")
                || c == "53300"
                || c == "40001"
                || c == "40P01"
        }
        // No SQLSTATE: an I/O error, a lost connection.
        None => true,
    }
}

/// A pool or query failure, with whether it may pass.
enum WriteError {
    Transient(String),
    Fatal(String),
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) if !transient(&e) => {
                WriteError::Fatal(chain(&e))
            }
            e => WriteError::Transient(chain(&e)),
        }
    }
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        if transient(&e) {
            WriteError::Transient(chain(&e))
        } else {
            WriteError::Fatal(chain(&e))
        }
    }
}

/// The writer: group-commits queued appends; see the module docs.
async fn writer(pool: Pool, mut rx: mpsc::UnboundedReceiver<Op>, max_batch: usize) {
    let mut batch: Vec<Append> = Vec::new();
    let mut closing: Option<oneshot::Sender<()>> = None;
    // Moves queued appends into the batch, up to `max_batch`, stopping at
    // a `Close`.
    let top_up = |rx: &mut mpsc::UnboundedReceiver<Op>,
                  batch: &mut Vec<Append>,
                  closing: &mut Option<oneshot::Sender<()>>| {
        while closing.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(Op::Append(a)) => batch.push(a),
                Ok(Op::Close(done)) => *closing = Some(done),
                Err(_) => break,
            }
        }
    };
    loop {
        if batch.is_empty() {
            if let Some(done) = closing.take() {
                let _ = done.send(());
                return;
            }
            match rx.recv().await {
                Some(Op::Append(a)) => batch.push(a),
                Some(Op::Close(done)) => {
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
        top_up(&mut rx, &mut batch, &mut closing);
        let mut wait = Duration::from_millis(50);
        loop {
            let now = Instant::now();
            let (late, keep): (Vec<_>, Vec<_>) = batch.drain(..).partition(|a| a.deadline <= now);
            batch = keep;
            for a in late {
                let _ = a.reply.send(Err(io("timed out waiting for the database")));
            }
            if batch.is_empty() {
                break;
            }
            match write_batch(&pool, &batch).await {
                Ok(seqs) => {
                    for (a, seq) in batch.drain(..).zip(seqs) {
                        let _ = a.reply.send(Ok(seq));
                    }
                    break;
                }
                Err(WriteError::Fatal(e)) => {
                    tracing::error!(appends = batch.len(), "PostgreSQL refused a batch: {e}");
                    for a in batch.drain(..) {
                        let _ = a.reply.send(Err(io(&e)));
                    }
                    break;
                }
                Err(WriteError::Transient(e)) => {
                    tracing::warn!(
                        appends = batch.len(),
                        "PostgreSQL unavailable, retrying: {e}"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY_WAIT);
                    top_up(&mut rx, &mut batch, &mut closing);
                }
            }
        }
    }
}

/// Writes `batch` in one transaction; the seq of each append, in order.
async fn write_batch(pool: &Pool, batch: &[Append]) -> Result<Vec<u64>, WriteError> {
    // How many appends each room has, rooms in id order (the lock order).
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for a in batch {
        *counts.entry(&a.room).or_default() += 1;
    }
    let rooms: Vec<&str> = counts.keys().copied().collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // Statements prepared once per connection (deadpool caches them): one
    // round trip per statement instead of two (parse, then execute).
    let advance = tx
        .prepare_cached(
            "INSERT INTO chorus_rooms AS r (room, last_seq) \
             SELECT room, n FROM unnest($1::text[], $2::int8[]) AS t(room, n) ORDER BY room \
             ON CONFLICT (room) DO UPDATE \
             SET last_seq = r.last_seq + EXCLUDED.last_seq, updated_at = now() \
             RETURNING room, last_seq",
        )
        .await?;
    let rows = tx.query(&advance, &[&rooms, &ns]).await?;
    // The first seq of each room's appends in this batch.
    let mut next: BTreeMap<String, i64> = BTreeMap::new();
    for row in rows {
        let (room, last): (String, i64) = (row.get(0), row.get(1));
        let n = counts.get(room.as_str()).copied().unwrap_or(0);
        next.insert(room, last - n + 1);
    }
    let mut seqs = Vec::with_capacity(batch.len());
    let (mut rs, mut ss, mut ds, mut aus) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for a in batch {
        let seq = next
            .get_mut(&a.room)
            .ok_or_else(|| WriteError::Fatal(format!("no counter returned for {:?}", a.room)))?;
        rs.push(a.room.as_str());
        ss.push(*seq);
        ds.push(a.data.as_ref());
        aus.push(a.author.as_deref());
        seqs.push(*seq as u64);
        *seq += 1;
    }
    let insert = tx
        .prepare_cached(
            "INSERT INTO chorus_updates (room, seq, data, author) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::text[])",
        )
        .await?;
    tx.execute(&insert, &[&rs, &ss, &ds, &aus]).await?;
    tx.commit().await?;
    Ok(seqs)
}

/// The advisory-lock key of a room (64 bits of its SHA-256).
fn lock_key(room: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(room.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// A read-only repeatable-read transaction: one consistent view of the
/// tables for all its queries.
async fn consistent_read(
    client: &mut deadpool_postgres::Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(io_chain)
}

/// Reads the room's log after `after` of incarnation `generation` (the
/// whole document when `None`, another incarnation, or compacted).
async fn read(
    pool: &Pool,
    room: &str,
    after: u64,
    generation: Option<&str>,
) -> Result<LogRead, StoreError> {
    let mut client = pool.get().await.map_err(io_chain)?;
    let tx = consistent_read(&mut client).await?;
    let head = tx
        .query_opt(
            "SELECT incarnation, last_seq FROM chorus_rooms WHERE room = $1",
            &[&room],
        )
        .await
        .map_err(io_chain)?;
    let (incarnation, last_seq) = head
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .unwrap_or((0, 0));
    let epoch = incarnation.to_string();
    let snap = tx
        .query_opt(
            "SELECT upto, doc FROM chorus_snapshots WHERE room = $1",
            &[&room],
        )
        .await
        .map_err(io_chain)?;
    let (upto, doc) = snap
        .map(|r| {
            (
                r.get::<_, i64>(0) as u64,
                Some(Bytes::from(r.get::<_, Vec<u8>>(1))),
            )
        })
        .unwrap_or((0, None));
    let same = generation == Some(epoch.as_str());
    let (from, snapshot) = if !same || after < upto {
        (upto, doc)
    } else {
        (after, None)
    };
    let rows = tx
        .query(
            "SELECT data FROM chorus_updates WHERE room = $1 AND seq > $2 ORDER BY seq",
            &[&room, &(from as i64)],
        )
        .await
        .map_err(io_chain)?;
    tx.commit().await.map_err(io_chain)?;
    Ok(LogRead {
        epoch: Some(epoch),
        snapshot,
        updates: rows
            .into_iter()
            .map(|r| Bytes::from(r.get::<_, Vec<u8>>(0)))
            .collect(),
        last_seq: last_seq.max(0) as u64,
    })
}

/// Compacts the room's log up to `upto`; see the module docs.
async fn compact(pool: &Pool, room: &str, snapshot: Bytes, upto: u64) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(io_chain)?;
    let tx = client.transaction().await.map_err(io_chain)?;
    // One node at a time: a second waits for the first, then merges on top
    // of its snapshot (an `Ok` must mean this node's document is stored:
    // it may hold updates whose own appends failed).
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(room)])
        .await
        .map_err(io_chain)?;
    let old = tx
        .query_opt(
            "SELECT upto, doc FROM chorus_snapshots WHERE room = $1",
            &[&room],
        )
        .await
        .map_err(io_chain)?;
    let (old_upto, old_doc) = old
        .map(|r| (r.get::<_, i64>(0), Some(r.get::<_, Vec<u8>>(1))))
        .unwrap_or((0, None));
    // Entries up to `old_upto` are in the old snapshot already.
    let upto = (upto as i64).max(old_upto);
    let rows = tx
        .query(
            "SELECT data FROM chorus_updates WHERE room = $1 AND seq > $2 AND seq <= $3 ORDER BY seq",
            &[&room, &old_upto, &upto],
        )
        .await
        .map_err(io_chain)?;
    let mut parts: Vec<Vec<u8>> = Vec::with_capacity(rows.len() + 2);
    parts.extend(old_doc);
    parts.extend(rows.into_iter().map(|r| r.get::<_, Vec<u8>>(0)));
    let merged = if parts.is_empty() {
        snapshot.to_vec()
    } else {
        parts.push(snapshot.to_vec());
        // On failure the log stays as it is: nothing is lost.
        yrs::merge_updates_v1(parts.iter().map(Vec::as_slice))
            .map_err(|e| io(format!("compaction merge failed, log kept: {e}")))?
    };
    tx.execute(
        "INSERT INTO chorus_snapshots (room, upto, doc) VALUES ($1, $2, $3) \
         ON CONFLICT (room) DO UPDATE SET upto = EXCLUDED.upto, doc = EXCLUDED.doc, updated_at = now()",
        &[&room, &upto, &merged],
    )
    .await
    .map_err(io_chain)?;
    tx.execute(
        "DELETE FROM chorus_updates WHERE room = $1 AND seq <= $2",
        &[&room, &upto],
    )
    .await
    .map_err(io_chain)?;
    tx.commit().await.map_err(io_chain)
}

/// Deletes the room's log and snapshot and starts a new incarnation.
async fn delete(pool: &Pool, room: &str) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(io_chain)?;
    let tx = client.transaction().await.map_err(io_chain)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock_key(room)])
        .await
        .map_err(io_chain)?;
    tx.execute(
        "INSERT INTO chorus_rooms AS r (room, incarnation) VALUES ($1, 1) \
         ON CONFLICT (room) DO UPDATE SET incarnation = r.incarnation + 1, last_seq = 0, updated_at = now()",
        &[&room],
    )
    .await
    .map_err(io_chain)?;
    tx.execute("DELETE FROM chorus_updates WHERE room = $1", &[&room])
        .await
        .map_err(io_chain)?;
    tx.execute("DELETE FROM chorus_snapshots WHERE room = $1", &[&room])
        .await
        .map_err(io_chain)?;
    tx.execute("DELETE FROM chorus_versions WHERE room = $1", &[&room])
        .await
        .map_err(io_chain)?;
    tx.commit().await.map_err(io_chain)
}

/// Runs a version-history operation: under the room's version lock when it
/// writes, in a consistent read otherwise.
async fn versions(pool: &Pool, room: &str, op: VersionOp) -> Result<VersionOut, StoreError> {
    let mut client = pool.get().await.map_err(io_chain)?;
    let reads_only = matches!(
        op,
        VersionOp::Head | VersionOp::List { .. } | VersionOp::Chain(_)
    );
    let tx = if reads_only {
        consistent_read(&mut client).await?
    } else {
        let tx = client.transaction().await.map_err(io_chain)?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(&format!("\u{0}versions\u{0}{room}"))],
        )
        .await
        .map_err(io_chain)?;
        tx
    };
    let out = {
        let mut rows = PgRows { tx: &tx, room };
        history::run(&mut rows, room, op).await?
    };
    tx.commit().await.map_err(io_chain)?;
    Ok(out)
}

/// One room's versions inside a transaction ([`history::Rows`]).
struct PgRows<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    room: &'a str,
}

/// The columns of a version row, its update's length in place of the update.
const VERSION_COLUMNS: &str =
    "id, created_ms, name, kind, restored_from, authors, sv, full_state, \
     octet_length(data)::bigint";

impl PgRows<'_> {
    fn row(&self, r: &tokio_postgres::Row) -> Result<VersionRow, StoreError> {
        let authors: String = r.get(5);
        let authors = serde_json::from_str(&authors).map_err(|e| StoreError::Corrupt {
            room: self.room.to_owned(),
            detail: format!("authors of a version: {e}"),
        })?;
        Ok(VersionRow {
            meta: VersionMeta {
                id: r.get::<_, i64>(0) as u64,
                time: r.get::<_, i64>(1) as u64,
                name: r.get(2),
                kind: history::kind_of(r.get(3)),
                restored_from: r.get::<_, Option<i64>>(4).map(|v| v as u64),
                authors,
                bytes: r.get::<_, i64>(8) as u64,
            },
            sv: r.get(6),
            full: r.get(7),
        })
    }

    async fn one(&self, sql: &str, id: i64) -> Result<Option<VersionRow>, StoreError> {
        let row = self
            .tx
            .query_opt(sql, &[&self.room, &id])
            .await
            .map_err(io_chain)?;
        row.map(|r| self.row(&r)).transpose()
    }
}

impl Rows for PgRows<'_> {
    async fn last(&mut self) -> Result<Option<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM chorus_versions WHERE room = $1 AND id < $2 \
             ORDER BY id DESC LIMIT 1"
        );
        self.one(&sql, i64::MAX).await
    }
    async fn get(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        let sql =
            format!("SELECT {VERSION_COLUMNS} FROM chorus_versions WHERE room = $1 AND id = $2");
        self.one(&sql, id.min(i64::MAX as u64) as i64).await
    }
    async fn before(
        &mut self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM chorus_versions WHERE room = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3"
        );
        let before = before.map_or(i64::MAX, |b| b.min(i64::MAX as u64) as i64);
        let rows = self
            .tx
            .query(&sql, &[&self.room, &before, &(limit as i64)])
            .await
            .map_err(io_chain)?;
        rows.iter().map(|r| self.row(r)).collect()
    }
    async fn next_after(&mut self, id: u64) -> Result<Option<VersionRow>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM chorus_versions WHERE room = $1 AND id > $2 \
             ORDER BY id LIMIT 1"
        );
        self.one(&sql, id.min(i64::MAX as u64) as i64).await
    }
    async fn data(&mut self, id: u64) -> Result<Option<Bytes>, StoreError> {
        let row = self
            .tx
            .query_opt(
                "SELECT data FROM chorus_versions WHERE room = $1 AND id = $2",
                &[&self.room, &(id.min(i64::MAX as u64) as i64)],
            )
            .await
            .map_err(io_chain)?;
        Ok(row.map(|r| Bytes::from(r.get::<_, Vec<u8>>(0))))
    }
    async fn put(&mut self, row: &VersionRow, data: Option<&[u8]>) -> Result<(), StoreError> {
        let m = &row.meta;
        let authors =
            serde_json::to_string(&m.authors).map_err(|e| io(format!("encoding authors: {e}")))?;
        // PostgreSQL text cannot hold NUL.
        let name = m.name.as_ref().map(|n| n.replace('\0', ""));
        let authors = authors.replace("\\u0000", "");
        let (id, time) = (m.id as i64, m.time as i64);
        let kind = history::kind_code(m.kind);
        let from = m.restored_from.map(|v| v as i64);
        match data {
            Some(data) => self
                .tx
                .execute(
                    "INSERT INTO chorus_versions \
                     (room, id, created_ms, name, kind, restored_from, authors, sv, full_state, data) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (room, id) DO UPDATE SET created_ms = EXCLUDED.created_ms, \
                     name = EXCLUDED.name, kind = EXCLUDED.kind, restored_from = EXCLUDED.restored_from, \
                     authors = EXCLUDED.authors, sv = EXCLUDED.sv, full_state = EXCLUDED.full_state, \
                     data = EXCLUDED.data",
                    &[
                        &self.room, &id, &time, &name, &kind, &from, &authors, &row.sv,
                        &row.full, &data,
                    ],
                )
                .await
                .map_err(io_chain)?,
            None => self
                .tx
                .execute(
                    "UPDATE chorus_versions SET created_ms = $3, name = $4, kind = $5, \
                     restored_from = $6, authors = $7, sv = $8, full_state = $9 \
                     WHERE room = $1 AND id = $2",
                    &[
                        &self.room, &id, &time, &name, &kind, &from, &authors, &row.sv,
                        &row.full,
                    ],
                )
                .await
                .map_err(io_chain)?,
        };
        Ok(())
    }
    async fn remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.tx
            .execute(
                "DELETE FROM chorus_versions WHERE room = $1 AND id = $2",
                &[&self.room, &(id as i64)],
            )
            .await
            .map_err(io_chain)?;
        Ok(())
    }
    async fn next_id(&mut self) -> Result<u64, StoreError> {
        let row = self
            .tx
            .query_one(
                "INSERT INTO chorus_version_ids AS v (room, last_id) VALUES ($1, 1) \
                 ON CONFLICT (room) DO UPDATE SET last_id = v.last_id + 1 RETURNING last_id",
                &[&self.room],
            )
            .await
            .map_err(io_chain)?;
        Ok(row.get::<_, i64>(0) as u64)
    }
}

impl DocStore for PostgresStore {
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

    fn read_since(&self, room: &str, after: u64, generation: Option<&str>) -> StoreFuture<LogRead> {
        let (pool, room, generation) = (
            self.pool.clone(),
            room.to_owned(),
            generation.map(str::to_owned),
        );
        self.run(async move { read(&pool, &room, after, generation.as_deref()).await })
    }

    fn append(&self, room: &str, update: Bytes, author: Option<&str>) -> StoreFuture<u64> {
        let (reply, wait) = oneshot::channel();
        let sent = self.appends.send(Op::Append(Append {
            room: room.to_owned(),
            data: update,
            // PostgreSQL text cannot hold NUL.
            author: author.map(|a| a.replace('\0', "")),
            deadline: Instant::now() + self.append_timeout,
            reply,
        }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(io("the store is closed"));
            }
            wait.await.map_err(|_| io("the writer stopped"))?
        })
    }

    fn compact(&self, room: &str, snapshot: Bytes, upto_seq: u64) -> StoreFuture<()> {
        let (pool, room) = (self.pool.clone(), room.to_owned());
        self.run(async move { compact(&pool, &room, snapshot, upto_seq).await })
    }

    fn delete(&self, room: &str) -> StoreFuture<()> {
        let (pool, room) = (self.pool.clone(), room.to_owned());
        self.run(async move { delete(&pool, &room).await })
    }

    fn exists(&self, room: &str) -> StoreFuture<bool> {
        let (pool, room) = (self.pool.clone(), room.to_owned());
        self.run(async move {
            let client = pool.get().await.map_err(io_chain)?;
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM chorus_snapshots WHERE room = $1) \
                     OR EXISTS (SELECT 1 FROM chorus_updates WHERE room = $1)",
                    &[&room],
                )
                .await
                .map_err(io_chain)?;
            Ok(row.get(0))
        })
    }

    fn health(&self) -> StoreFuture<()> {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool.get().await.map_err(io_chain)?;
            client.simple_query("SELECT 1").await.map_err(io_chain)?;
            Ok(())
        })
    }

    fn close(&self) -> StoreFuture<()> {
        let pool = self.pool.clone();
        let (done, wait) = oneshot::channel();
        let sent = self.appends.send(Op::Close(done)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = wait.await;
            }
            pool.close();
            Ok(())
        })
    }

    fn versions(&self, room: &str, op: VersionOp) -> StoreFuture<VersionOut> {
        let (pool, room) = (self.pool.clone(), room.to_owned());
        self.run(async move { versions(&pool, &room, op).await })
    }

    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}
