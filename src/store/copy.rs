//! `chorus store copy --from A --to B`: copies every room from one store to
//! another (a redb data directory or a PostgreSQL URL, either way), to move
//! a single node's documents into a cluster's database or back.
//!
//! - **Exact.** A room is copied as stored: its snapshot with the sequence
//!   number it covers, and every log entry after it with its own number
//!   (authors and times too when both ends are PostgreSQL; from redb, the
//!   time of the copy). The target's `load` returns the same bytes and the
//!   same `last_seq` as the source's, and appends there continue the
//!   numbering. Its version history goes with it, in the same target
//!   transaction: every version (full states and deltas) with its id and
//!   metadata, byte for byte, replacing the target's versions of the room;
//!   the room's version id counter there becomes at least the source's,
//!   so an id the source handed out is never handed out again. A room
//!   that cannot be copied exactly (a damaged record, version records
//!   included, in a redb source; a PostgreSQL counter past its last entry
//!   going to redb) is reported and left out; the others are copied.
//! - **Consistent.** Rooms go in batches of `--batch-rooms`, in id order.
//!   A batch is read in one read transaction of the source (redb) or one
//!   repeatable-read transaction (PostgreSQL), so a room is never read
//!   half-compacted, and written in one transaction of the target, which
//!   replaces what the target had for those rooms.
//! - **Idempotent and resumable.** Before writing, the batch is read from
//!   the target too: a room whose snapshot (with its number), log entries
//!   (numbers and bytes; authors where both ends keep them), `last_seq`,
//!   versions (rows and updates, byte for byte) and version id counter
//!   (at least the source's) are already the same there is skipped. A rerun after a failure or a
//!   kill therefore skips what was committed and copies the rest; a second
//!   run over a finished copy writes nothing. Rooms that only the target
//!   has are left alone.
//! - A redb file that a server holds is refused (redb locks it); stop the
//!   server first. Progress goes to stderr, one line a second (rewritten
//!   in place on a terminal), then a summary.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use super::history::VersionRow;
use super::postgres::PostgresStore;
use super::redb::RedbFile;
use super::StoreError;
use crate::config::{Config, CopyArgs};

/// One room as stored, with its sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomDump {
    /// The room id.
    pub room: String,
    /// The snapshot and the last sequence number it covers.
    pub snapshot: Option<(u64, Bytes)>,
    /// The log after the snapshot, in sequence order.
    pub updates: Vec<LogEntry>,
    /// The room's last sequence number (what `load` reports).
    pub last_seq: u64,
    /// Its version history, in id order: every stored version (full
    /// states and deltas) with its metadata and update, as stored.
    pub versions: Vec<VersionDump>,
    /// The last version id the room handed out (never lowered by
    /// deletions; at least the last version's id).
    pub version_counter: u64,
}

/// One stored version: its row (metadata, state vector, whether its update
/// is a full state) and its update, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionDump {
    /// The row; `meta.bytes` is `data`'s length.
    pub row: VersionRow,
    /// The stored update (a full state or a delta from the previous
    /// version).
    pub data: Bytes,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its sequence number.
    pub seq: u64,
    /// The Yjs update.
    pub data: Bytes,
    /// Who wrote it, where the store keeps it.
    pub author: Option<String>,
    /// When it was written, where the store keeps it.
    pub created_at: Option<SystemTime>,
}

impl RoomDump {
    /// A room with nothing stored.
    pub fn empty(room: &str) -> RoomDump {
        RoomDump {
            room: room.to_owned(),
            snapshot: None,
            updates: Vec::new(),
            last_seq: 0,
            versions: Vec::new(),
            version_counter: 0,
        }
    }

    /// Bytes of document data (snapshot, updates and versions' updates).
    pub fn bytes(&self) -> u64 {
        let snap = self.snapshot.as_ref().map_or(0, |(_, d)| d.len());
        let versions = self.versions.iter().map(|v| v.data.len()).sum::<usize>();
        (snap + versions + self.updates.iter().map(|e| e.data.len()).sum::<usize>()) as u64
    }

    /// True when `target` holds the same thing, as far as it can keep it
    /// (`authors`: whether the target keeps log entries' authors). Log
    /// entries' times are not compared (redb keeps none). Versions are
    /// compared whole (rows and updates); the target's version counter
    /// must be at least the source's, so that no id is handed out again.
    fn same_as(&self, target: &RoomDump, authors: bool) -> bool {
        self.snapshot == target.snapshot
            && self.last_seq == target.last_seq
            && self.updates.len() == target.updates.len()
            && self.updates.iter().zip(&target.updates).all(|(a, b)| {
                a.seq == b.seq && a.data == b.data && (!authors || a.author == b.author)
            })
            && self.versions == target.versions
            && target.version_counter >= self.version_counter
    }

    /// The version counter a target should keep for this room, given the
    /// one it had (`held`): never lower than any id either end handed out.
    pub fn counter_on_target(&self, held: u64) -> u64 {
        let last = self.versions.last().map_or(0, |v| v.row.meta.id);
        self.version_counter.max(last).max(held)
    }
}

/// Errors of `chorus store copy`.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The command line does not make sense.
    #[error("{0}")]
    Usage(String),
    /// A store failed as a whole (cannot be opened, a transaction failed);
    /// what was committed before stays, and a rerun resumes.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Some rooms could not be copied exactly; every other room was.
    #[error("{} room(s) not copied: {}", failed.len(), failed.iter().map(|(r, e)| format!("{r:?}: {e}")).collect::<Vec<_>>().join("; "))]
    Rooms {
        /// Each room left out and why.
        failed: Vec<(String, String)>,
    },
}

/// Where rooms are copied from or to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A redb data directory (holding `chorus.redb`).
    Redb(PathBuf),
    /// A PostgreSQL URL.
    Postgres(String),
}

impl Location {
    /// A `postgres://` or `postgresql://` URL, else a path: a data
    /// directory, or its `chorus.redb` file.
    pub fn parse(s: &str) -> Location {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("postgres://") || lower.starts_with("postgresql://") {
            return Location::Postgres(s.to_owned());
        }
        let path = PathBuf::from(s);
        if path.file_name() == Some(super::redb::FILE_NAME.as_ref()) && path.is_file() {
            if let Some(dir) = path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                return Location::Redb(dir.to_owned());
            }
        }
        Location::Redb(path)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Redb(dir) => write!(f, "{}", dir.join(super::redb::FILE_NAME).display()),
            Location::Postgres(url) => f.write_str(&super::postgres::redacted(url)),
        }
    }
}

/// An open end of the copy.
enum End {
    Redb(RedbFile),
    Postgres(PostgresStore),
}

impl End {
    fn open(at: &Location, source: bool, args: &CopyArgs) -> Result<End, StoreError> {
        match at {
            Location::Redb(dir) if source => RedbFile::open_source(dir).map(End::Redb),
            Location::Redb(dir) => RedbFile::open_target(dir).map(End::Redb),
            Location::Postgres(url) => {
                let config = Config {
                    postgres_url: Some(url.clone()),
                    postgres_ca_file: args.postgres_ca_file.clone(),
                    postgres_pool_size: 2,
                    ..Config::default()
                };
                PostgresStore::open(&config).map(End::Postgres)
            }
        }
    }

    /// Whether log entries keep their author here.
    fn keeps_authors(&self) -> bool {
        matches!(self, End::Postgres(_))
    }

    async fn count(&self) -> Result<u64, StoreError> {
        match self {
            End::Redb(f) => f.count_rooms(),
            End::Postgres(p) => p.count_rooms().await,
        }
    }

    async fn rooms(&self, after: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        match self {
            End::Redb(f) => f.rooms(after, limit),
            End::Postgres(p) => p.rooms(after, limit).await,
        }
    }

    async fn dump(
        &self,
        rooms: &[String],
    ) -> Result<Vec<Result<RoomDump, StoreError>>, StoreError> {
        match self {
            End::Redb(f) => f.dump(rooms),
            End::Postgres(p) => Ok(p.dump(rooms).await?.into_iter().map(Ok).collect()),
        }
    }

    /// Whether this end can hold `dump` exactly.
    fn check(&self, dump: &RoomDump) -> Result<(), StoreError> {
        match self {
            End::Redb(_) => RedbFile::check(dump),
            End::Postgres(_) => Ok(()),
        }
    }

    /// `dump` as this end will store it: PostgreSQL text holds no NUL, so
    /// its import drops them from authors and version names; dropped here
    /// too, so that the sameness check compares what the target can hold
    /// (else such a room would be written again on every run).
    fn fit(&self, dump: &mut RoomDump) {
        if !matches!(self, End::Postgres(_)) {
            return;
        }
        let strip = |s: &mut String| {
            if s.contains('\0') {
                *s = s.replace('\0', "");
            }
        };
        for e in &mut dump.updates {
            e.author.iter_mut().for_each(strip);
        }
        for v in &mut dump.versions {
            v.row.meta.name.iter_mut().for_each(strip);
            for a in &mut v.row.meta.authors {
                strip(&mut a.user);
                a.name.iter_mut().for_each(strip);
            }
        }
    }

    async fn import(&self, dumps: Vec<RoomDump>) -> Result<(), StoreError> {
        match self {
            End::Redb(f) => f.import(&dumps),
            End::Postgres(p) => p.import(dumps).await,
        }
    }

    async fn close(self) -> Result<(), StoreError> {
        match self {
            End::Redb(f) => f.close(),
            End::Postgres(p) => {
                use super::DocStore as _;
                p.close().await
            }
        }
    }
}

/// What a copy did.
#[derive(Debug, Default, Clone)]
pub struct CopySummary {
    /// Rooms in the source when the copy started.
    pub total: u64,
    /// Rooms written to the target.
    pub written: u64,
    /// Rooms already identical in the target.
    pub unchanged: u64,
    /// Rooms that could not be copied.
    pub failed: u64,
    /// Bytes of document data read from the source.
    pub bytes: u64,
    /// How long it took.
    pub elapsed: Duration,
}

impl CopySummary {
    fn done(&self) -> u64 {
        self.written + self.unchanged + self.failed
    }

    fn rate(&self) -> f64 {
        self.done() as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    fn line(&self) -> String {
        format!(
            "{}/{} rooms ({} written, {} unchanged, {} failed), {}, {:.0} rooms/s",
            self.done(),
            self.total.max(self.done()),
            self.written,
            self.unchanged,
            self.failed,
            human_bytes(self.bytes),
            self.rate()
        )
    }
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The progress line on stderr: rewritten in place on a terminal, else
/// printed once a second.
struct Progress {
    tty: bool,
    every: Duration,
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        let tty = std::io::stderr().is_terminal();
        Progress {
            tty,
            every: if tty {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(1)
            },
            last: Instant::now(),
        }
    }

    fn show(&mut self, summary: &CopySummary, force: bool) {
        if !force && self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[Kcopy: {}", summary.line());
        } else {
            let _ = writeln!(err, "copy: {}", summary.line());
        }
        let _ = err.flush();
    }

    fn finish(&mut self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Runs `chorus store copy`; blocks until done. Prints progress and a
/// summary on stderr.
pub fn run(args: &CopyArgs) -> Result<CopySummary, CopyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CopyError::Store(StoreError::Io(e.to_string())))?;
    runtime.block_on(copy(args))
}

/// See [`run`].
pub async fn copy(args: &CopyArgs) -> Result<CopySummary, CopyError> {
    let (from, to) = (Location::parse(&args.from), Location::parse(&args.to));
    if args.batch_rooms == 0 {
        return Err(CopyError::Usage("--batch-rooms must be at least 1".into()));
    }
    let same = match (&from, &to) {
        (Location::Redb(a), Location::Redb(b)) => {
            a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
        }
        (a, b) => a == b,
    };
    if same {
        return Err(CopyError::Usage(format!(
            "--from and --to are the same store ({from})"
        )));
    }
    let source = End::open(&from, true, args)?;
    let target = match End::open(&to, false, args) {
        Ok(t) => t,
        Err(e) => {
            let _ = source.close().await;
            return Err(e.into());
        }
    };
    eprintln!("copying every room from {from} to {to}");
    let result = copy_rooms(&source, &target, args).await;
    let closed = target.close().await;
    let _ = source.close().await;
    let summary = result?;
    closed?;
    Ok(summary)
}

async fn copy_rooms(source: &End, target: &End, args: &CopyArgs) -> Result<CopySummary, CopyError> {
    let start = Instant::now();
    let mut summary = CopySummary {
        total: source.count().await?,
        ..CopySummary::default()
    };
    let authors = source.keeps_authors() && target.keeps_authors();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut progress = Progress::new();
    progress.show(&summary, true);
    let mut after = String::new();
    loop {
        let rooms = source.rooms(&after, args.batch_rooms).await?;
        let Some(last) = rooms.last() else { break };
        after = last.clone();
        let read = source.dump(&rooms).await?;
        let held = target.dump(&rooms).await?;
        let mut write = Vec::new();
        for (room, (read, held)) in rooms.iter().zip(read.into_iter().zip(held)) {
            let mut dump = match read.and_then(|d| target.check(&d).map(|()| d)) {
                Ok(d) => d,
                Err(e) => {
                    summary.failed += 1;
                    failed.push((room.clone(), e.to_string()));
                    continue;
                }
            };
            target.fit(&mut dump);
            summary.bytes += dump.bytes();
            // A damaged room in the target is replaced.
            if held.is_ok_and(|held| dump.same_as(&held, authors)) {
                summary.unchanged += 1;
            } else {
                write.push(dump);
            }
        }
        let n = write.len() as u64;
        if n > 0 {
            target.import(write).await?;
            summary.written += n;
        }
        summary.elapsed = start.elapsed();
        progress.show(&summary, false);
        if args.pause_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
        }
    }
    summary.elapsed = start.elapsed();
    progress.show(&summary, true);
    progress.finish();
    eprintln!(
        "copied {} rooms in {:.2} s: {}",
        summary.written + summary.unchanged,
        summary.elapsed.as_secs_f64(),
        summary.line()
    );
    if !failed.is_empty() {
        return Err(CopyError::Rooms { failed });
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            Location::parse("postgres://u@h/db"),
            Location::Postgres("postgres://u@h/db".into())
        );
        assert_eq!(
            Location::parse("PostgreSQL://h/db"),
            Location::Postgres("PostgreSQL://h/db".into())
        );
        assert_eq!(
            Location::parse("./data"),
            Location::Redb(PathBuf::from("./data"))
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(super::super::redb::FILE_NAME);
        std::fs::write(&file, b"").unwrap();
        assert_eq!(
            Location::parse(file.to_str().unwrap()),
            Location::Redb(dir.path().to_owned())
        );
    }

    #[test]
    fn sameness_ignores_what_the_target_cannot_keep() {
        let entry = |seq, author: Option<&str>| LogEntry {
            seq,
            data: Bytes::from_static(b"u"),
            author: author.map(str::to_owned),
            created_at: None,
        };
        let a = RoomDump {
            room: "r".into(),
            snapshot: Some((2, Bytes::from_static(b"s"))),
            updates: vec![entry(3, Some("ann"))],
            last_seq: 3,
            versions: Vec::new(),
            version_counter: 0,
        };
        let mut b = a.clone();
        b.updates[0].author = None;
        assert!(a.same_as(&b, false));
        assert!(!a.same_as(&b, true));
        let mut c = a.clone();
        c.updates[0].seq = 4;
        assert!(!a.same_as(&c, false), "numbers count");
        let mut d = a.clone();
        d.snapshot = Some((1, Bytes::from_static(b"s")));
        assert!(!a.same_as(&d, false), "the snapshot's number counts");
        let mut e = a.clone();
        e.last_seq = 4;
        assert!(!a.same_as(&e, false));
        // Versions: rows and updates whole; the target's counter at least
        // the source's.
        let version = |id, data: &'static [u8]| VersionDump {
            row: VersionRow {
                meta: super::super::history::VersionMeta {
                    id,
                    time: 1,
                    name: Some("n".into()),
                    kind: super::super::history::VersionKind::Named,
                    restored_from: None,
                    authors: Vec::new(),
                    bytes: data.len() as u64,
                },
                sv: vec![0],
                full: true,
            },
            data: Bytes::from_static(data),
        };
        let mut h = a.clone();
        h.versions = vec![version(1, b"v1"), version(3, b"v3")];
        h.version_counter = 4;
        assert!(h.same_as(&h.clone(), true));
        assert!(!h.same_as(&a, true), "a target without the history");
        let mut f = h.clone();
        f.versions[1].data = Bytes::from_static(b"v4");
        assert!(!h.same_as(&f, true), "a version's bytes count");
        let mut g = h.clone();
        g.versions[0].row.meta.name = None;
        assert!(!h.same_as(&g, true), "a version's metadata counts");
        let mut k = h.clone();
        k.version_counter = 3;
        assert!(
            !h.same_as(&k, true),
            "a lower counter would hand out 4 again"
        );
        k.version_counter = 9;
        assert!(h.same_as(&k, true), "a higher counter is kept");
        assert_eq!(h.counter_on_target(2), 4);
        assert_eq!(h.counter_on_target(7), 7);
    }
}
