//! [store] acceptance: nothing acknowledged is lost across `kill -9`,
//! snapshot + log tail reloads identically, a damaged record costs only its
//! room. The server runs as a child process on a temp data dir.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::protocol::native::{Bin, ClientMessage, ServerMessage};
use chorus::protocol::ErrorCode;
use chorus::store::redb::{RedbStore, WriterOptions};
use chorus::store::DocStore;
use yrs::updates::decoder::Decode;
use yrs::StateVector;

use crate::common::{http_get, metric, ChildServer, Client, TestDoc};

/// One acknowledged update: its room, the unique token it inserted, and
/// the author's Yjs client id and clock after it.
#[derive(Clone)]
pub(crate) struct Acked {
    room: String,
    token: String,
    client: u64,
    clock: u32,
}

fn args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        "--data-dir".to_string(),
        dir.display().to_string(),
        "--workers".into(),
        "2".into(),
        "--room-threads".into(),
        "2".into(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn start(dir: &Path, extra: &[&str]) -> ChildServer {
    let a = args(dir, extra);
    ChildServer::start(&a.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Writes unique tokens to `room` with up to `window` updates in flight,
/// recording each one when its ack arrives, until the connection dies.
pub(crate) async fn writer(
    addr: SocketAddr,
    room: String,
    tag: String,
    acked: Arc<Mutex<Vec<Acked>>>,
) {
    const WINDOW: usize = 8;
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(&room, &doc).await;
    let mut inflight: HashMap<u64, (String, u32)> = HashMap::new();
    for n in 0.. {
        if inflight.len() < WINDOW {
            let token = format!("<{tag}.{n}>");
            let data = doc.push(&token);
            let rid = c.rid();
            let msg = ClientMessage::Update {
                room: room.clone(),
                data: Bin(data),
                rid: Some(rid),
            };
            if c.try_send(&msg).await.is_err() {
                return;
            }
            inflight.insert(rid, (token, doc.own_clock()));
            continue;
        }
        match c.try_recv(Duration::from_secs(10)).await {
            None => return,
            Some(ServerMessage::Ack { rid, .. }) => {
                if let Some((token, clock)) = inflight.remove(&rid) {
                    acked.lock().unwrap().push(Acked {
                        room: room.clone(),
                        token,
                        client: doc.client_id(),
                        clock,
                    });
                }
            }
            Some(ServerMessage::Error { code, message, .. }) => {
                panic!("writer {tag}: update refused: {code:?} {message}")
            }
            Some(_) => {}
        }
    }
}

/// Joins every room of `acked` with an empty doc and checks that every
/// acked token is in its text and every author's clock in its state vector.
pub(crate) async fn verify(addr: SocketAddr, acked: &[Acked]) {
    let mut by_room: HashMap<&str, Vec<&Acked>> = HashMap::new();
    for a in acked {
        by_room.entry(a.room.as_str()).or_default().push(a);
    }
    let mut c = Client::connect(addr).await;
    for (room, entries) in by_room {
        let doc = TestDoc::new();
        let sv = c.try_join(room, &doc).await.expect("room loads");
        let sv = StateVector::decode_v1(&sv).expect("state vector decodes");
        let text = doc.text();
        let mut missing = Vec::new();
        for a in &entries {
            if !text.contains(&a.token) {
                missing.push(a.token.clone());
            }
            let have = sv.get(&yrs::ClientID::new(a.client));
            assert!(
                have >= a.clock,
                "room {room}: client {} acked up to clock {} but the state vector has {have}",
                a.client,
                a.clock
            );
        }
        assert!(
            missing.is_empty(),
            "room {room}: {} of {} acked updates lost after kill -9, e.g. {:?}",
            missing.len(),
            entries.len(),
            &missing[..missing.len().min(5)]
        );
    }
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_acked_updates_survive_kill_9() {
    const ROOMS: usize = 10;
    const WRITERS_PER_ROOM: usize = 2;
    // New acked updates before each kill: different points of the stream.
    const KILL_AFTER: [usize; 3] = [1_300, 2_100, 1_700];
    let dir = tempfile::tempdir().unwrap();
    let began = Instant::now();
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut server = start(dir.path(), &["--compact-every", "300"]);
    for (round, kill_after) in KILL_AFTER.iter().enumerate() {
        let before = acked.lock().unwrap().len();
        let mut writers = Vec::new();
        for r in 0..ROOMS {
            for w in 0..WRITERS_PER_ROOM {
                writers.push(tokio::spawn(writer(
                    server.addr,
                    format!("room-{r}"),
                    format!("{round}.{r}.{w}"),
                    acked.clone(),
                )));
            }
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while acked.lock().unwrap().len() < before + kill_after {
            assert!(Instant::now() < deadline, "writers too slow");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Mid-stream: every writer has updates in flight.
        server.kill();
        for w in writers {
            w.await.expect("writer ends cleanly when the server dies");
        }
        let snapshot = acked.lock().unwrap().clone();
        server = start(dir.path(), &["--compact-every", "300"]);
        verify(server.addr, &snapshot).await;
        eprintln!(
            "round {round}: {} acked in total, all present after kill -9 ({:?})",
            snapshot.len(),
            began.elapsed()
        );
    }
    assert!(acked.lock().unwrap().len() >= 5_000);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_snapshot_plus_log_tail_reloads_identically() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--compact-every", "10"]);
    let mut c = Client::connect(server.addr).await;
    let doc = TestDoc::new();
    c.join("doc", &doc).await;
    for i in 0..25 {
        let u = doc.insert(0, &format!("[{i}]"));
        c.update_acked("doc", u).await;
    }
    // The compaction after the 20th ack was queued before the 21st append.
    server.kill();

    // The file holds a snapshot plus a log tail.
    let store = RedbStore::open_at(dir.path(), WriterOptions::batch(1)).unwrap();
    let stored = store.load("doc").await.unwrap();
    assert!(stored.snapshot.is_some(), "compacted snapshot present");
    assert!(!stored.updates.is_empty(), "log tail after the snapshot");
    assert!(stored.skipped.is_empty());
    store.close().await.unwrap();

    let server = start(dir.path(), &["--compact-every", "10"]);
    let mut c = Client::connect(server.addr).await;
    let reloaded = TestDoc::new();
    let sv = c.try_join("doc", &reloaded).await.expect("room loads");
    assert_eq!(reloaded.text(), doc.text());
    assert_eq!(
        StateVector::decode_v1(&sv).unwrap(),
        StateVector::decode_v1(&doc.state_vector()).unwrap()
    );
    // Writing goes on from there.
    let u = reloaded.push("!");
    c.update_acked("doc", u).await;
    c.close().await;
    server.terminate();
}

/// Writes `tokens` to `room` one acked update each; returns them.
async fn write_tokens(addr: SocketAddr, room: &str, tokens: &[String]) {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    for t in tokens {
        let u = doc.push(t);
        c.update_acked(room, u).await;
    }
    c.close().await;
}

/// Flips one byte in every occurrence of `marker` in the file; returns how
/// many it found.
fn flip(file: &Path, marker: &str) -> usize {
    let mut bytes = std::fs::read(file).unwrap();
    let m = marker.as_bytes();
    let mut found = 0;
    let mut i = 0;
    while i + m.len() <= bytes.len() {
        if &bytes[i..i + m.len()] == m {
            bytes[i + m.len() / 2] ^= 0x01;
            found += 1;
            i += m.len();
        } else {
            i += 1;
        }
    }
    std::fs::write(file, bytes).unwrap();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_corrupt_record_costs_only_its_room() {
    const SNAP_MARK: &str = "SNAPSHOT-MARKER-7f3a9c";
    const LOG_MARK: &str = "LOGENTRY-MARKER-2b8e41";
    let tokens = |tag: &str| (0..10).map(|i| format!("<{tag}{i}>")).collect::<Vec<_>>();
    let dir = tempfile::tempdir().unwrap();

    // 1. `snap-victim` and `good-a` end up as snapshots (graceful shutdown
    //    compacts every room).
    let server = start(dir.path(), &[]);
    let mut snap_tokens = tokens("s");
    snap_tokens.insert(5, SNAP_MARK.to_string());
    write_tokens(server.addr, "snap-victim", &snap_tokens).await;
    write_tokens(server.addr, "good-a", &tokens("a")).await;
    server.terminate();

    // 2. `log-victim` and `good-b` stay as log entries (kill -9, no flush);
    //    the marker is the last update so nothing else depends on it.
    let server = start(dir.path(), &[]);
    let mut log_tokens = tokens("l");
    log_tokens.push(LOG_MARK.to_string());
    write_tokens(server.addr, "log-victim", &log_tokens).await;
    write_tokens(server.addr, "good-b", &tokens("b")).await;
    server.kill();
    // 3. A start (crash recovery) and a clean stop, touching no room.
    start(dir.path(), &[]).terminate();

    // 4. Flip a byte inside both rooms' records.
    let file = dir.path().join(chorus::store::redb::FILE_NAME);
    assert!(
        flip(&file, SNAP_MARK) >= 1,
        "snapshot marker found in the file"
    );
    assert!(flip(&file, LOG_MARK) >= 1, "log marker found in the file");

    // 5. The server starts and serves the others.
    let server = start(dir.path(), &[]);
    let mut c = Client::connect(server.addr).await;
    for (room, expected) in [("good-a", tokens("a")), ("good-b", tokens("b"))] {
        let doc = TestDoc::new();
        c.try_join(room, &doc).await.expect("intact room loads");
        assert_eq!(doc.text(), expected.concat(), "room {room} intact");
    }
    // A damaged log entry is skipped: the rest of the room is served.
    let doc = TestDoc::new();
    c.try_join("log-victim", &doc)
        .await
        .expect("room with a damaged log entry still loads");
    assert_eq!(doc.text(), tokens("l").concat());
    // A damaged snapshot refuses the room rather than serve it gutted.
    match c.try_join("snap-victim", &TestDoc::new()).await {
        Err(ServerMessage::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::RoomUnavailable);
            assert!(message.contains("corrupt"), "{message}");
        }
        other => panic!("expected room_unavailable, got {other:?}"),
    }
    // Still serving.
    let doc = TestDoc::new();
    c.try_join("good-c", &doc).await.expect("new room");
    c.update_acked("good-c", doc.push("fine")).await;
    c.close().await;

    let logs = server.terminate();
    let reported = |room: &str, what: &str| {
        logs.iter()
            .any(|l| l.contains("ERROR") && l.contains(room) && l.contains(what))
    };
    assert!(
        reported("log-victim", "damaged"),
        "damaged log entry reported with its room:\n{}",
        logs.join("\n")
    );
    assert!(
        reported("snap-victim", "corrupt"),
        "damaged snapshot reported with its room:\n{}",
        logs.join("\n")
    );
}

#[test]
fn store_unreadable_file_stops_the_start_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(chorus::store::redb::FILE_NAME);
    std::fs::write(&file, vec![0xA5u8; 64 * 1024]).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["--port", "0", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("chorus runs");
    assert!(
        !out.status.success(),
        "must not start on a file it cannot read"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&file.display().to_string()),
        "error names the file: {stderr}"
    );
    // Nothing was moved aside or replaced.
    assert_eq!(std::fs::read(&file).unwrap(), vec![0xA5u8; 64 * 1024]);
}

/// The document size limit still holds after a compaction: the room's size
/// bound restarts from the snapshot's size, not from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doc_size_limit_holds_across_compactions() {
    let srv = crate::common::server(|c| {
        c.limits.compact_every = 1;
        c.limits.max_doc_bytes = 8 * 1024;
    });
    let mut c = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    c.join("bounded", &doc).await;
    c.update_acked("bounded", doc.push(&"a".repeat(6 * 1024)))
        .await;
    // The append above compacts (every append does here); let it finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.update_acked("bounded", doc.push("b")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    refused_as_too_large(
        &mut c,
        &doc,
        "6 KiB + 4 KiB over an 8 KiB limit after a compaction",
    )
    .await;
}

/// The document size bound survives a restart: a room loaded from the store
/// counts what it loaded, so `max_doc_bytes` holds for its next update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doc_size_limit_holds_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let limit = ["--max-doc-bytes", "8192", "--compact-every", "1000"];
    let doc = TestDoc::new();
    {
        let srv = start(dir.path(), &limit);
        let mut c = Client::connect(srv.addr).await;
        c.join("bounded", &doc).await;
        c.update_acked("bounded", doc.push(&"a".repeat(6 * 1024)))
            .await;
        srv.terminate();
    }
    let srv = start(dir.path(), &limit);
    let mut c = Client::connect(srv.addr).await;
    c.join("bounded", &doc).await;
    refused_as_too_large(
        &mut c,
        &doc,
        "6 KiB stored + 4 KiB over an 8 KiB limit after a restart",
    )
    .await;
}

/// Sends 4 KiB more to room `bounded` and asserts it is refused with
/// `doc_too_large` (`why`: what makes it over the limit).
async fn refused_as_too_large(c: &mut Client, doc: &TestDoc, why: &str) {
    let rid = c
        .send_update("bounded", doc.push(&"c".repeat(4 * 1024)))
        .await;
    let reply = c
        .expect(|m| {
            matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
        })
        .await;
    assert!(
        matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::DocTooLarge,
                ..
            }
        ),
        "{why}: {reply:?}"
    );
}

/// The PostgreSQL store's own contract, against a real server: sequence
/// numbers, the author column, read-since positions, compaction merging
/// what the compacting node lacks, delete starting a new incarnation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_contract() {
    use bytes::Bytes;
    use chorus::store::postgres::PostgresStore;
    let pg = crate::pg::Postgres::start();
    let mut config = chorus::config::Config::ephemeral();
    config.postgres_url = Some(pg.url());
    let store = PostgresStore::open(&config).expect("opens and migrates");
    // A second store on the same database (another node) migrates nothing.
    let other = PostgresStore::open(&config).expect("opens again");
    let a = TestDoc::new();
    let b = TestDoc::new();
    let u1 = Bytes::from(a.push("one "));
    let u2 = Bytes::from(b.push("two "));
    let u3 = Bytes::from(a.push("three "));
    assert_eq!(
        store.append("r", u1.clone(), Some("alice")).await.unwrap(),
        1
    );
    assert_eq!(other.append("r", u2.clone(), None).await.unwrap(), 2);
    // Concurrent appends from both: numbers stay dense and unique.
    let (x, y) = tokio::join!(
        store.append("r", u3.clone(), Some("al\0ice")),
        other.append("q", u1.clone(), None)
    );
    assert_eq!((x.unwrap(), y.unwrap()), (3, 1));
    assert_eq!(
        pg.psql("SELECT string_agg(coalesce(author, '-'), ',' ORDER BY seq) FROM chorus_updates WHERE room = 'r'"),
        "alice,-,alice"
    );
    let doc = store.load("r").await.unwrap();
    assert_eq!(
        (doc.last_seq, doc.updates.len(), doc.snapshot.is_none()),
        (3, 3, true)
    );
    let generation = doc.generation.clone();
    assert!(generation.is_some());
    let since = store
        .read_since("r", 1, generation.as_deref())
        .await
        .unwrap();
    assert_eq!(since.updates, vec![u2.clone(), u3.clone()]);
    assert!(since.snapshot.is_none());
    // Node a compacts up to 3 with a snapshot that lacks b's update: the
    // stored snapshot still holds it (merged from the log).
    store
        .compact("r", Bytes::from(a.diff(&[0])), 3)
        .await
        .unwrap();
    assert_eq!(
        pg.psql("SELECT count(*) FROM chorus_updates WHERE room = 'r'"),
        "0"
    );
    let doc = store.load("r").await.unwrap();
    let reloaded = TestDoc::new();
    reloaded.apply(doc.snapshot.as_ref().expect("a snapshot"));
    assert!(reloaded.text().contains("two ") && reloaded.text().contains("three "));
    // A position the snapshot covers gets the snapshot back.
    let since = store
        .read_since("r", 1, generation.as_deref())
        .await
        .unwrap();
    assert!(since.snapshot.is_some() && since.updates.is_empty());
    // Delete: empty, a new incarnation; a reader of the old one gets all.
    store.delete("r").await.unwrap();
    assert!(!store.exists("r").await.unwrap());
    assert_eq!(store.append("r", u2.clone(), None).await.unwrap(), 1);
    let since = other
        .read_since("r", 5, generation.as_deref())
        .await
        .unwrap();
    assert_ne!(since.epoch, generation);
    assert_eq!((since.updates, since.last_seq), (vec![u2], 1));
    assert!(store.shared());
    store.close().await.unwrap();
    other.close().await.unwrap();
}

/// `sslmode=require` over rustls: the server's certificate is verified
/// against `--postgres-ca-file`; without it, the start fails and says why.
#[test]
fn postgres_over_tls_checks_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_pem = cert.cert.pem();
    let pg = crate::pg::Postgres::start_tls(&cert_pem, &cert.signing_key.serialize_pem());
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &cert_pem).unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        pg.port()
    );
    let node = ChildServer::start(&[
        "--postgres-url",
        &url,
        "--postgres-ca-file",
        ca.to_str().unwrap(),
    ]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = Client::connect(node.addr).await;
        let doc = TestDoc::new();
        c.join("tls-pg", &doc).await;
        c.update_acked("tls-pg", doc.push("over TLS")).await;
    });
    assert!(
        pg.psql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = ''")
            .parse::<u32>()
            .unwrap_or(0)
            > 0,
        "no TLS connection from the node"
    );
    assert_eq!(
        pg.psql("SELECT count(*) FROM chorus_updates WHERE room = 'tls-pg'"),
        "1"
    );
    drop(node);
    // Without the CA the certificate is refused: the node does not start.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args([
            "--port",
            "0",
            "--postgres-url",
            &url,
            "--postgres-append-timeout-ms",
            "500",
        ])
        .output()
        .expect("chorus runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "started without trusting the certificate: {text}"
    );
    assert!(
        text.to_lowercase().contains("certificate"),
        "the refusal does not say why: {text}"
    );
}

/// A small tmpfs mounted on a temp dir, to fill up on purpose (the tests
/// run as root); unmounted on drop. Mounting must work: a test that cannot
/// mount fails, it is not skipped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    const FILLER: &'static str = "filler";

    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => SmallDisk { dir },
            Ok(o) => panic!(
                "cannot mount a {size} tmpfs on {}: {} — the disk-full tests need root \
                 (CAP_SYS_ADMIN) to mount a small file system they can fill",
                dir.path().display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run `mount` for the disk-full tests: {e}"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the file system is full; returns its size.
    fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join(Self::FILLER)).expect("filler");
        let mut written = 0u64;
        for chunk in [64 * 1024, 4096, 512, 1] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {
                written += chunk as u64;
            }
        }
        let _ = f.sync_all();
        written
    }

    /// Deletes the filler file.
    fn free(&self) {
        std::fs::remove_file(self.path().join(Self::FILLER)).expect("filler removed");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// redb refuses every commit after one I/O error: the store reopens its file
/// and writes again once space is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_redb_writes_again_after_the_disk_was_full() {
    let disk = SmallDisk::mount("4m");
    let options = WriterOptions {
        max_batch: 64,
        retry: (Duration::from_millis(20), Duration::from_millis(200)),
    };
    let store = RedbStore::open_at(disk.path(), options).expect("opens on the tmpfs");
    let update = |i: usize| bytes::Bytes::from(format!("{i:08}").repeat(512));
    let mut stored = Vec::new();
    for i in 0..10 {
        store
            .append("r", update(i), None)
            .await
            .expect("room to write");
        stored.push(update(i));
    }
    let filler = disk.fill();
    let mut failed_at = None;
    for i in 10..5_000 {
        match store.append("r", update(i), None).await {
            Ok(_) => stored.push(update(i)),
            Err(e) => {
                failed_at = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = failed_at.expect("appends fail once the disk is full");
    eprintln!("disk full ({filler} filler bytes): append #{i} failed: {e}");
    assert!(store.failing().is_some(), "the store says it is failing");
    assert!(store.health().await.is_err(), "and its health check fails");
    assert!(
        store.append("r", update(i), None).await.is_err(),
        "still full"
    );

    disk.free();
    let freed = Instant::now();
    let seq = loop {
        match store.append("r", update(i), None).await {
            Ok(seq) => break seq,
            Err(e) => {
                assert!(
                    freed.elapsed() < Duration::from_secs(10),
                    "appends still fail 10 s after space was freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    stored.push(update(i));
    eprintln!(
        "writing again {:?} after space was freed (seq {seq})",
        freed.elapsed()
    );
    assert!(store.failing().is_none());
    store.health().await.expect("healthy again");
    let doc = store.load("r").await.expect("loads");
    assert_eq!(doc.updates, stored, "every acknowledged append, in order");
    store.close().await.expect("closes cleanly");
}

/// What the writers of `store_disk_full_loses_nothing_clients_saw` did.
#[derive(Default)]
struct Tally {
    /// Every token written (acknowledged, or given up after `store_failed`).
    written: Vec<String>,
    acked: usize,
    store_failed: usize,
}

/// Writes tokens (padded, so the file must grow) to `room` every few ms
/// with up to 4 in flight; with `resend_failed`, an update refused with
/// `store_failed` is sent again 100 ms later, without, it is given up (as
/// by a client that went away: only the server's retry stores it). Once
/// `stop` is set, sends nothing new and returns when nothing is in flight.
async fn stubborn_writer(
    addr: SocketAddr,
    room: &'static str,
    tag: String,
    resend_failed: bool,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) {
    use std::sync::atomic::Ordering;
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    let mut inflight: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut resend: std::collections::VecDeque<(Instant, Vec<u8>)> = Default::default();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "writer {tag} stuck");
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && inflight.is_empty() && resend.is_empty() {
            break;
        }
        let due = resend.front().is_some_and(|(t, _)| *t <= Instant::now());
        if inflight.len() < 4 && (due || !stopping) {
            let data = if due {
                resend.pop_front().map(|(_, d)| d).unwrap_or_default()
            } else {
                let token = format!("<{tag}.{n}>");
                n += 1;
                tally.lock().unwrap().written.push(token.clone());
                doc.push(&format!("{token}{}", ".".repeat(1500)))
            };
            let rid = c.send_update(room, data.clone()).await;
            inflight.insert(rid, data);
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        match c.try_recv(Duration::from_millis(50)).await {
            Some(ServerMessage::Ack { rid, .. }) => {
                let known = inflight.remove(&rid).is_some();
                tally.lock().unwrap().acked += usize::from(known);
            }
            Some(ServerMessage::Error {
                code: ErrorCode::StoreFailed,
                rid: Some(rid),
                ..
            }) => {
                let Some(data) = inflight.remove(&rid) else {
                    continue;
                };
                tally.lock().unwrap().store_failed += 1;
                if resend_failed {
                    resend.push_back((Instant::now() + Duration::from_millis(100), data));
                }
            }
            Some(ServerMessage::Error { code, message, .. }) => {
                panic!("writer {tag}: unexpected error {code:?} {message}")
            }
            _ => {}
        }
    }
    c.close().await;
}

/// Applies every update of `room` it is shown until `stop`; returns the text.
async fn observer(
    addr: SocketAddr,
    room: &'static str,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> String {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if let Some(ServerMessage::Update { data, .. }) =
            c.try_recv(Duration::from_millis(50)).await
        {
            doc.apply(&data.0);
        }
    }
    c.close().await;
    doc.text()
}

/// The `<…>` tokens of a text.
fn tokens_of(text: &str) -> Vec<String> {
    text.split('<')
        .skip(1)
        .filter_map(|t| t.split_once('>').map(|(t, _)| format!("<{t}>")))
        .collect()
}

/// Waits up to `within` for `cond`.
async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out ({within:?}) waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The disk fills while edits flow: writers get `store_failed` (and resend),
/// `/readyz` is 503 and `chorus_store_failing` 1 while it is full; what the
/// other clients were shown is kept and stored once space is back, without
/// a restart; after a `kill -9` and a restart every update anyone saw is in
/// the document.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_disk_full_loses_nothing_clients_saw() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const ROOM: &str = "full";
    let disk = SmallDisk::mount("4m");
    let data = disk.path().join("data");
    let flags = ["--store-retry-min-ms", "50", "--store-retry-max-ms", "400"];
    let server = start(&data, &flags);
    let addr = server.addr;
    let stop_writers = Arc::new(AtomicBool::new(false));
    let stop_observer = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let seen = tokio::spawn(observer(addr, ROOM, stop_observer.clone()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            tokio::spawn(stubborn_writer(
                addr,
                ROOM,
                format!("w{w}"),
                w == 0,
                stop_writers.clone(),
                tally.clone(),
            ))
        })
        .collect();
    wait_for("40 acked updates", Duration::from_secs(20), || async {
        tally.lock().unwrap().acked >= 40
    })
    .await;
    assert_eq!(http_get(addr, "/readyz").await.0, 200);

    let filler = disk.fill();
    let filled = Instant::now();
    wait_for(
        "writers told store_failed",
        Duration::from_secs(30),
        || async { tally.lock().unwrap().store_failed >= 5 },
    )
    .await;
    let first_failed = filled.elapsed();
    wait_for("/readyz 503 while full", Duration::from_secs(5), || async {
        http_get(addr, "/readyz").await.0 == 503
    })
    .await;
    let unready = filled.elapsed();
    let (_, body) = http_get(addr, "/readyz").await;
    assert!(body.contains("\"state\":\"failing\""), "{body}");
    assert_eq!(metric(addr, "chorus_store_failing").await, 1.0);
    assert!(metric(addr, "chorus_store_unstored_updates").await >= 1.0);
    // Edits keep flowing while it is full.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = {
        let t = tally.lock().unwrap();
        (t.acked, t.store_failed)
    };

    disk.free();
    let freed = Instant::now();
    wait_for(
        "/readyz 200 after space was freed",
        Duration::from_secs(20),
        || async { http_get(addr, "/readyz").await.0 == 200 },
    )
    .await;
    let ready_after = freed.elapsed();
    assert_eq!(metric(addr, "chorus_store_failing").await, 0.0);
    assert_eq!(metric(addr, "chorus_store_unstored_updates").await, 0.0);
    let failures = metric(addr, "chorus_store_append_failures_total").await;
    let retries = metric(addr, "chorus_store_append_retries_total").await;
    assert!(failures >= 1.0 && retries >= 1.0, "{failures} {retries}");

    // Writers finish (w0's tokens resent until acknowledged).
    stop_writers.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_observer.store(true, Ordering::SeqCst);
    let seen = tokens_of(&seen.await.expect("observer"));
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    let logs = server.logs();
    let reopened = logs
        .iter()
        .filter(|l| l.contains("store file reopened"))
        .count();
    eprintln!(
        "filler {filler} B; 5 store_failed {first_failed:?} after the fill, readyz 503 after \
         {unready:?}; by the end of 1 s more: {} acked / {} store_failed; ready \
         {ready_after:?} after freeing; append failures {failures}, retries {retries}, \
         file reopened {reopened}×; {} written, {} acked, observer saw {}",
        during.0,
        during.1,
        tally.written.len(),
        tally.acked,
        seen.len()
    );
    assert!(reopened >= 1, "redb was reopened after the I/O error");
    server.kill();

    // Everything anyone was shown is stored.
    let server = start(&data, &flags);
    let mut c = Client::connect(server.addr).await;
    let doc = TestDoc::new();
    c.try_join(ROOM, &doc).await.expect("room loads");
    let stored: std::collections::HashSet<String> = tokens_of(&doc.text()).into_iter().collect();
    let lost_seen: Vec<&String> = seen.iter().filter(|t| !stored.contains(*t)).collect();
    assert!(
        lost_seen.is_empty(),
        "{} updates the observer was shown are lost, e.g. {:?}",
        lost_seen.len(),
        &lost_seen[..lost_seen.len().min(5)]
    );
    let lost: Vec<&String> = tally
        .written
        .iter()
        .filter(|t| !stored.contains(*t))
        .collect();
    assert!(
        lost.is_empty(),
        "{} updates the server applied are lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    c.close().await;
    server.terminate();
}

/// At shutdown a room tries to store what it kept until the shutdown
/// timeout, then says (error, room id, bytes) what it could not store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_shutdown_on_a_full_disk_logs_what_it_could_not_store() {
    const ROOM: &str = "shutdown-full";
    let disk = SmallDisk::mount("4m");
    let server = start(
        &disk.path().join("data"),
        &[
            "--store-retry-min-ms",
            "50",
            "--store-retry-max-ms",
            "200",
            "--shutdown-timeout-ms",
            "1500",
        ],
    );
    let mut c = Client::connect(server.addr).await;
    let doc = TestDoc::new();
    c.join(ROOM, &doc).await;
    c.update_acked(ROOM, doc.push("stored")).await;
    disk.fill();
    let mut refused = false;
    for i in 0..200 {
        let rid = c
            .send_update(ROOM, doc.push(&format!("<{i}>{}", ".".repeat(1500))))
            .await;
        let reply = c
            .expect(|m| {
                matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                    || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
            })
            .await;
        if matches!(
            reply,
            ServerMessage::Error {
                code: ErrorCode::StoreFailed,
                ..
            }
        ) {
            refused = true;
            break;
        }
    }
    assert!(refused, "an update was refused with store_failed");
    let began = Instant::now();
    let logs = server.terminate();
    let took = began.elapsed();
    let lost: Vec<&String> = logs
        .iter()
        .filter(|l| l.contains("could not be stored") && l.contains("ERROR"))
        .collect();
    eprintln!("shutdown took {took:?}; {lost:?}");
    assert_eq!(
        lost.len(),
        1,
        "one error line for the room:\n{}",
        logs.join("\n")
    );
    assert!(
        lost[0].contains(ROOM) && lost[0].contains("\"bytes\""),
        "{}",
        lost[0]
    );
    assert!(
        took < Duration::from_secs(5),
        "shutdown timeout held: {took:?}"
    );
}
