//! [postgres] `chorus store copy`: 1 000 rooms (log only, snapshot only,
//! snapshot + log tail; a fifth with version history) go from redb to a real PostgreSQL and back, byte for
//! byte; a rerun writes nothing; a copy killed midway resumes; a server
//! started on each copy serves the same documents; a redb file a server
//! holds is refused. The copies run the built binary.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use chorus::config::Config;
use chorus::store::postgres::PostgresStore;
use chorus::store::redb::{RedbFile, RedbStore, WriterOptions};
use chorus::store::{DocStore, StoredDoc};
use yrs::{ReadTxn, StateVector, Transact};

use crate::common::{ChildServer, Client, TestDoc};

const ROOMS: usize = 1000;

/// Room `i`'s id: mostly plain, some with non-ASCII and spaces.
fn room(i: usize) -> String {
    if i % 10 == 7 {
        format!("dök ✓ {i}")
    } else {
        format!("room-{i:04}")
    }
}

/// Writes `ROOMS` rooms into `dir` through the redb store: a quarter with
/// a log only, a quarter compacted into a snapshot alone, half with a
/// snapshot and a log tail (one compacted twice). Returns each room's text.
async fn fill(dir: &Path) -> Vec<String> {
    let store = RedbStore::open_at(dir, WriterOptions::batch(1024)).expect("redb opens");
    let mut pending: Vec<chorus::store::StoreFuture<()>> = Vec::new();
    let mut texts = Vec::new();
    let mut histories = Vec::new();
    for i in 0..ROOMS {
        let id = room(i);
        let doc = TestDoc::new();
        let updates: Vec<Vec<u8>> = (0..1 + i % 9)
            .map(|k| doc.push(&format!("<{i}.{k}>")))
            .collect();
        texts.push(doc.text());
        // The whole state after the first `n` updates.
        let snapshot = |n: usize| {
            let d = TestDoc::new();
            for u in &updates[..n] {
                d.apply(u);
            }
            let state = d
                .doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default());
            Bytes::from(state)
        };
        // Everything is queued before anything is awaited (one group
        // commit for many rooms); a fresh room numbers from 1, in order.
        // Compactions after this many updates:
        let n = updates.len();
        let compact_after: &[usize] = match i % 4 {
            1 => &[n],
            2 => &[n / 2],
            3 => &[n / 2, n - 1],
            _ => &[],
        };
        if i % 5 == 3 {
            histories.push((id.clone(), updates.clone()));
        }
        for (k, u) in updates.iter().enumerate() {
            let append = store.append(&id, Bytes::from(u.clone()), None);
            pending.push(Box::pin(async move { append.await.map(|_| ()) }));
            let count = k + 1;
            if compact_after.contains(&count) {
                pending.push(store.compact(&id, snapshot(count), count as u64));
            }
        }
    }
    for f in pending {
        f.await.expect("stored");
    }
    for (k, (id, updates)) in histories.iter().enumerate() {
        add_history(&store, id, updates, k).await;
    }
    store.close().await.expect("closed");
    texts
}

/// [`add_history`]'s `k` whose authors' display name holds a NUL.
const NUL_AUTHOR: usize = 999_999;

/// Gives a room a version history: a named full state, an automatic delta
/// with authors, a restore of the first; every other room then has its
/// first version deleted (merged into the next; the counter stays at 3).
async fn add_history(store: &RedbStore, id: &str, updates: &[Vec<u8>], k: usize) {
    use chorus::store::history::{
        Added, NewVersion, VersionAuthor, VersionKind, VersionOp, VersionOut,
    };
    let add = |after: Option<u64>, kind, data: &[u8], full| {
        VersionOp::Add(NewVersion {
            after,
            time: 1_764_633_600_000 + k as u64,
            name: (kind == VersionKind::Named).then(|| format!("v ✓ {k}")),
            kind,
            restored_from: (kind == VersionKind::Restore).then_some(1),
            authors: vec![VersionAuthor {
                user: format!("u{k}"),
                // [`NUL_AUTHOR`]: a display name PostgreSQL cannot hold.
                name: Some(if k == NUL_AUTHOR { "A\0da" } else { "Ada" }.into()),
            }],
            sv: vec![1, k as u8, 7],
            data: Bytes::copy_from_slice(data),
            full,
            max_named: 1000,
        })
    };
    let (first, last) = (&updates[0], &updates[updates.len() - 1]);
    let mut after = None;
    for (kind, data, full) in [
        (VersionKind::Named, first, true),
        (VersionKind::Auto, last, false),
        (VersionKind::Restore, first, false),
    ] {
        match store.versions(id, add(after, kind, data, full)).await {
            Ok(VersionOut::Added(Added::Added(meta))) => after = Some(meta.id),
            other => panic!("version add in {id:?}: {other:?}"),
        }
    }
    if k.is_multiple_of(2) {
        store
            .versions(id, VersionOp::Delete(1))
            .await
            .expect("version deleted");
    }
}

/// Runs `chorus store copy --from … --to …` (plus `extra`); its success
/// and stderr.
fn copy(from: &str, to: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["store", "copy", "--from", from, "--to", to])
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("chorus runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `(written, unchanged, failed, rooms/s)` from the summary line.
fn summary(stderr: &str) -> (u64, u64, u64, f64) {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("copied "))
        .unwrap_or_else(|| panic!("no summary in {stderr}"));
    let number_before = |word: &str| -> f64 {
        let head = &line[..line
            .find(word)
            .unwrap_or_else(|| panic!("{word} in {line}"))];
        let n = head.trim_end().rsplit([' ', '(']).next().expect("a number");
        n.parse().unwrap_or_else(|_| panic!("{n:?} in {line}"))
    };
    (
        number_before(" written") as u64,
        number_before(" unchanged") as u64,
        number_before(" failed") as u64,
        number_before(" rooms/s"),
    )
}

/// Asserts that a copy succeeded and wrote / skipped as expected; returns
/// its rate in rooms/s.
fn copied(result: (bool, String), written: u64, unchanged: u64) -> f64 {
    let (ok, stderr) = result;
    assert!(ok, "copy failed:\n{stderr}");
    let (w, u, f, rate) = summary(&stderr);
    assert_eq!((w, u, f), (written, unchanged, 0), "{stderr}");
    rate
}

fn pg_store(url: &str) -> PostgresStore {
    PostgresStore::open(&Config {
        postgres_url: Some(url.to_owned()),
        ..Config::default()
    })
    .expect("postgres store opens")
}

/// Every room as `load` returns it (what a room starts from).
async fn load_all(store: &dyn DocStore) -> Vec<StoredDoc> {
    let mut docs = Vec::new();
    for i in 0..ROOMS {
        docs.push(store.load(&room(i)).await.expect("loads"));
    }
    docs
}

async fn load_redb(dir: &Path) -> Vec<StoredDoc> {
    let store = RedbStore::open_at(dir, WriterOptions::batch(1)).expect("redb opens");
    let docs = load_all(&store).await;
    store.close().await.expect("closed");
    docs
}

/// The same documents, byte for byte: snapshot, log, last sequence number.
fn assert_same(what: &str, expected: &[StoredDoc], actual: &[StoredDoc]) {
    assert_eq!(expected.len(), actual.len());
    for (i, (e, a)) in expected.iter().zip(actual).enumerate() {
        assert_eq!(
            (&e.snapshot, &e.updates, e.last_seq),
            (&a.snapshot, &a.updates, a.last_seq),
            "{what}: room {:?} differs",
            room(i)
        );
    }
}

/// Every room of `dir` with its entries' own sequence numbers.
fn dump_redb(dir: &Path) -> Vec<chorus::store::copy::RoomDump> {
    let file = RedbFile::open_source(dir).expect("redb opens");
    let rooms: Vec<String> = (0..ROOMS).map(room).collect();
    let dumps = file
        .dump(&rooms)
        .expect("read")
        .into_iter()
        .map(|d| d.expect("room reads"))
        .collect();
    file.close().expect("closed");
    dumps
}

/// Joins some rooms on a server and checks their text.
async fn serves(server: &ChildServer, texts: &[String]) {
    for i in (0..ROOMS).step_by(37).chain([ROOMS - 1]) {
        let mut c = Client::connect(server.addr).await;
        let doc = TestDoc::new();
        c.join(&room(i), &doc).await;
        assert_eq!(doc.text(), texts[i], "room {:?} as served", room(i));
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_1000_rooms_redb_to_postgres_and_back_byte_for_byte() {
    let src = tempfile::tempdir().expect("temp dir");
    let back = tempfile::tempdir().expect("temp dir");
    let texts = fill(src.path()).await;
    let original = load_redb(src.path()).await;
    assert!(original
        .iter()
        .any(|d| d.snapshot.is_some() && !d.updates.is_empty()));
    assert!(original
        .iter()
        .any(|d| d.snapshot.is_some() && d.updates.is_empty()));
    assert!(original.iter().any(|d| d.snapshot.is_none()));
    let dumped = dump_redb(src.path());
    let with_history = dumped.iter().filter(|d| !d.versions.is_empty()).count();
    assert_eq!(with_history, ROOMS / 5, "rooms with versions");
    assert!(dumped
        .iter()
        .any(|d| d.versions.len() == 2 && d.version_counter == 3));

    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let (src_dir, back_dir) = (src.path().to_str().unwrap(), back.path().to_str().unwrap());
    let to_pg = copied(copy(src_dir, &url, &[]), ROOMS as u64, 0);
    let to_redb = copied(copy(&url, back_dir, &[]), ROOMS as u64, 0);
    eprintln!("copied {ROOMS} rooms: redb → postgres {to_pg:.0} rooms/s, postgres → redb {to_redb:.0} rooms/s");

    let store = pg_store(&url);
    assert_same("postgres", &original, &load_all(&store).await);
    let copy_back = load_redb(back.path()).await;
    assert_same("redb → postgres → redb", &original, &copy_back);
    assert_eq!(
        dump_redb(src.path()),
        dump_redb(back.path()),
        "the same entries under the same sequence numbers, the same versions"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM chorus_versions"),
        (ROOMS / 5 * 5 / 2).to_string(),
        "every version in PostgreSQL"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM chorus_version_ids WHERE last_id = 3"),
        (ROOMS / 5).to_string(),
        "every room's version counter in PostgreSQL"
    );

    // Idempotent: a second run finds every room identical and writes none.
    copied(copy(src_dir, &url, &[]), 0, ROOMS as u64);
    copied(
        copy(&url, back_dir, &["--batch-rooms", "7"]),
        0,
        ROOMS as u64,
    );
    assert_eq!(
        pg.psql("SELECT sum(incarnation) FROM chorus_rooms"),
        "0",
        "no room was rewritten"
    );

    // The numbering goes on where the source left it.
    let last = original[5].last_seq;
    let seq = store
        .append(
            &room(5),
            Bytes::from(TestDoc::independent_insert("x")),
            None,
        )
        .await
        .expect("append");
    assert_eq!(seq, last + 1);
    store.close().await.expect("closed");
    // A room that changed in the source is copied again; only that one.
    copied(copy(&url, back_dir, &[]), 1, ROOMS as u64 - 1);

    // Servers on each copy serve the same documents.
    let on_redb = ChildServer::start(&["--data-dir", back_dir]);
    serves(&on_redb, &texts).await;
    on_redb.terminate();
    let scratch = tempfile::tempdir().expect("temp dir");
    let on_pg = ChildServer::start(&[
        "--postgres-url",
        &url,
        "--data-dir",
        scratch.path().to_str().unwrap(),
    ]);
    serves(&on_pg, &texts).await;
    on_pg.terminate();
}

/// Spawns a slow copy (small batches, paused) and kills it with SIGKILL
/// once it reported at least 100 rooms done; returns that count.
fn copy_killed_midway(from: &str, to: &str) -> u64 {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["store", "copy", "--from", from, "--to", to])
        .args(["--batch-rooms", "10", "--pause-ms", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chorus runs");
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let done = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no progress; stderr so far: {seen:#?}"));
        let done = line
            .strip_prefix("copy: ")
            .and_then(|l| l.split('/').next())
            .and_then(|n| n.parse::<u64>().ok());
        seen.push(line);
        if let Some(n) = done.filter(|n| *n >= 100) {
            break n;
        }
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    assert!(
        done < ROOMS as u64,
        "the copy finished before it was killed: {seen:#?}"
    );
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_killed_midway_resumes() {
    let src = tempfile::tempdir().expect("temp dir");
    fill(src.path()).await;
    let original = load_redb(src.path()).await;
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let src_dir = src.path().to_str().unwrap();

    // redb → PostgreSQL, killed, then run again.
    let done = copy_killed_midway(src_dir, &url);
    let present: u64 = pg
        .psql("SELECT count(*) FROM chorus_rooms")
        .parse()
        .expect("a count");
    assert!(present >= done && present < ROOMS as u64, "{present} rooms");
    copied(copy(src_dir, &url, &[]), ROOMS as u64 - present, present);
    let store = pg_store(&url);
    assert_same(
        "postgres after a resumed copy",
        &original,
        &load_all(&store).await,
    );
    store.close().await.expect("closed");

    // PostgreSQL → redb, killed (the file is left unclosed), then again.
    let back = tempfile::tempdir().expect("temp dir");
    let back_dir = back.path().to_str().unwrap();
    let done = copy_killed_midway(&url, back_dir);
    let (ok, stderr) = copy(&url, back_dir, &[]);
    assert!(ok, "{stderr}");
    let (written, unchanged, _, _) = summary(&stderr);
    assert!(unchanged >= done, "{stderr}");
    assert_eq!(written + unchanged, ROOMS as u64, "{stderr}");
    assert_same(
        "redb after a resumed copy",
        &original,
        &load_redb(back.path()).await,
    );
}

#[test]
fn copy_refuses_held_files_and_damaged_rooms_clearly() {
    let held = tempfile::tempdir().expect("temp dir");
    let other = tempfile::tempdir().expect("temp dir");
    let (held_dir, other_dir) = (
        held.path().to_str().unwrap(),
        other.path().to_str().unwrap(),
    );
    // A store to copy from, with one room.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = RedbStore::open_at(other.path(), WriterOptions::batch(1)).unwrap();
        store
            .append("r", Bytes::from(TestDoc::independent_insert("x")), None)
            .await
            .unwrap();
        // And one with a version history (damaged below).
        let update = TestDoc::independent_insert("v");
        store
            .append("badv", Bytes::from(update.clone()), None)
            .await
            .unwrap();
        add_history(&store, "badv", &[update], 1).await;
        store.close().await.unwrap();
    });
    let server = ChildServer::start(&["--data-dir", held_dir]);
    for (from, to) in [(other_dir, held_dir), (held_dir, other_dir)] {
        let (ok, stderr) = copy(from, to, &[]);
        assert!(!ok, "copy with a running server's file succeeded: {stderr}");
        assert!(
            stderr.contains("chorus.redb") && stderr.contains("in use by another process"),
            "{stderr}"
        );
    }
    server.terminate();
    copied(copy(other_dir, held_dir, &[]), 2, 0);
    // Nonsense is refused with a reason.
    let (ok, stderr) = copy(other_dir, other_dir, &[]);
    assert!(!ok && stderr.contains("the same store"), "{stderr}");
    let (ok, stderr) = copy("/nonexistent/chorus-data", other_dir, &[]);
    assert!(!ok && stderr.contains("no such file"), "{stderr}");

    // A room with a damaged record (a log entry; a version's update) is
    // not copied (a copy is exact or not made): named, with a non-zero
    // exit; the other rooms are copied.
    {
        let db = redb::Database::create(other.path().join("chorus.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let log: redb::TableDefinition<(&str, u64), &[u8]> = redb::TableDefinition::new("log");
            let mut t = txn.open_table(log).unwrap();
            t.insert(("bad", 1), b"not a frame".as_slice()).unwrap();
            let data: redb::TableDefinition<(&str, u64), &[u8]> =
                redb::TableDefinition::new("version_data");
            let mut t = txn.open_table(data).unwrap();
            t.insert(("badv", 2), b"not a frame".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let fresh = tempfile::tempdir().expect("temp dir");
    let (ok, stderr) = copy(other_dir, fresh.path().to_str().unwrap(), &[]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("2 room(s) not copied")
            && stderr.contains("\"bad\"")
            && stderr.contains("\"badv\": ")
            && stderr.contains("the update of version 2 is damaged"),
        "{stderr}"
    );
    assert_eq!(summary(&stderr).0, 1, "the sound room is copied: {stderr}");
}

/// PostgreSQL text holds no NUL: a version whose author's name has one
/// (from a redb source) is stored without it, and a rerun of the copy finds
/// the room unchanged instead of writing it again on every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_of_a_nul_in_version_authors_is_idempotent() {
    let src = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open_at(src.path(), WriterOptions::batch(1)).expect("redb opens");
    let update = TestDoc::independent_insert("n");
    store
        .append("nul", Bytes::from(update.clone()), None)
        .await
        .expect("append");
    add_history(&store, "nul", &[update], NUL_AUTHOR).await;
    store.close().await.expect("closed");
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let src_dir = src.path().to_str().unwrap();
    copied(copy(src_dir, &url, &[]), 1, 0);
    copied(copy(src_dir, &url, &[]), 0, 1);
    assert_eq!(
        pg.psql("SELECT count(*) FROM chorus_versions WHERE authors LIKE '%\"Ada\"%'"),
        "3"
    );
}
