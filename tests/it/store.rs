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

use crate::common::{ChildServer, Client, TestDoc};

/// One acknowledged update: its room, the unique token it inserted, and
/// the author's Yjs client id and clock after it.
#[derive(Clone)]
struct Acked {
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
async fn writer(addr: SocketAddr, room: String, tag: String, acked: Arc<Mutex<Vec<Acked>>>) {
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
async fn verify(addr: SocketAddr, acked: &[Acked]) {
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
