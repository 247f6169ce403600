//! Runs the stock-client interop suite (`tests/interop/`, yjs 13 +
//! y-websocket 3 under `node --test`) against the `chorus` binary, and a
//! stock y-websocket peer against the native Rust test client. Needs Node
//! 20+ and npm; `npm ci` runs once when `node_modules` is missing. Without
//! Node the tests fail with a message saying so (they are never skipped).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use chorus::protocol::native::ServerMessage;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use crate::common::{server, Client, TestDoc};
use crate::tap::{assert_tap_green, test_files};

/// One `npm ci` at a time.
static NPM: Mutex<()> = Mutex::new(());

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Checks for node and npm and installs the locked packages if needed.
pub(crate) fn ensure_node_modules() -> PathBuf {
    npm_ci(interop_dir(), "y-websocket")
}

/// `dir` (a folder with a package-lock.json) with its npm packages
/// installed: `npm ci` when `node_modules/{marker}` is missing or the lock
/// file changed since the last install (a copy of it is kept in
/// `node_modules/.chorus-installed-lock`).
pub(crate) fn npm_ci(dir: PathBuf, marker: &str) -> PathBuf {
    let _guard = NPM.lock().unwrap_or_else(|e| e.into_inner());
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(
        matches!(&node, Ok(o) if o.status.success()),
        "these tests need Node.js 20+ on PATH (`node --version` failed: {node:?})"
    );
    let lock = std::fs::read(dir.join("package-lock.json")).expect("package-lock.json");
    let stamp = dir.join("node_modules").join(".chorus-installed-lock");
    let current = std::fs::read(&stamp).is_ok_and(|s| s == lock);
    if !current || !dir.join("node_modules").join(marker).exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("these tests need npm on PATH to install the package-lock.json");
        assert!(status.success(), "npm ci failed in {}", dir.display());
        std::fs::write(&stamp, &lock).expect("install stamp written");
    }
    dir
}

/// Runs `node --test` (TAP reporter, one file at a time, 60 s per file) on
/// `files` of `tests/interop` against this build's `chorus` binary, and
/// judges the run by its TAP counts (`what` names it in failures).
async fn node_suite(what: &str, files: impl IntoIterator<Item = String>) {
    let dir = ensure_node_modules();
    let run = Command::new("node")
        .args([
            "--test",
            "--test-reporter=tap",
            "--test-concurrency=1",
            "--test-timeout=60000",
        ])
        .args(files)
        .current_dir(&dir)
        .env("CHORUS_BIN", env!("CARGO_BIN_EXE_chorus"))
        // The servers it starts stop at once on SIGTERM (no load balancer
        // to drain for).
        .env("CHORUS_DRAIN_DELAY_MS", "0")
        .env("CHORUS_DRAIN_WINDOW_MS", "0")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .unwrap_or_else(|_| panic!("the {what} finishes within 180 s"))
        .expect("node runs");
    assert_tap_green(
        what,
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_yjs_clients_interop_suite() {
    let files = test_files(&ensure_node_modules())
        .into_iter()
        .filter(|f| !f.starts_with("hocuspocus"));
    node_suite("interop suite", files).await;
}

/// A stock y-websocket client (`tests/interop/peer.mjs`) and the native
/// Rust test client in one room: edits and presence both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y_websocket_and_native_clients_converge_and_see_each_other() {
    let dir = ensure_node_modules();
    let srv = server(|_| {});
    let mut native = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    native
        .join_with("mixed", &doc, Some(json!({"name": "nat"})))
        .await;
    native.update_acked("mixed", doc.push("native ")).await;

    let mut peer = Command::new("node")
        .arg("peer.mjs")
        .arg(format!("ws://{}/yjs", srv.addr))
        .arg("mixed")
        .current_dir(&dir)
        .env("CHORUS_BIN", env!("CARGO_BIN_EXE_chorus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    // The peer's edit and presence reach the native client.
    native.sync_until("mixed", &doc, "native js").await;
    let me = native.session.clone();
    let joined = native
        .expect(|m| {
            matches!(m, ServerMessage::Presence { joined, updated, .. }
                if joined.iter().chain(updated).any(|j| j.id != me && j.state["user"]["name"] == "js"))
        })
        .await;
    let ServerMessage::Presence {
        joined, updated, ..
    } = joined
    else {
        unreachable!()
    };
    let js = joined
        .iter()
        .chain(&updated)
        .find(|j| j.id != me)
        .expect("peer member")
        .id
        .clone();
    // The native edit and presence reach the peer: it prints what it saw.
    let stdout = peer.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("peer reports in time")
        .expect("peer output")
        .expect("a line");
    let seen: serde_json::Value = serde_json::from_str(&line).expect("json line");
    assert_eq!(seen["text"], "native js");
    assert!(seen["states"]
        .as_array()
        .expect("states")
        .iter()
        .any(|s| s["name"] == "nat"));
    // The peer leaves: the native client sees it go.
    let mut stdin = peer.stdin.take().expect("stdin");
    stdin.write_all(b"bye\n").await.expect("write");
    native
        .expect(|m| matches!(m, ServerMessage::Presence { left, .. } if left.contains(&js)))
        .await;
    let status = tokio::time::timeout(Duration::from_secs(10), peer.wait())
        .await
        .expect("peer exits")
        .expect("status");
    assert!(status.success());
}

/// The Hocuspocus suite (`tests/interop/hocuspocus.test.mjs`): the real
/// `@hocuspocus/provider` v2, v3 and v4 on `/hocuspocus`, several documents
/// per socket, with y-websocket clients on the same rooms; tokens per
/// document (read-only → SyncStatus 0, bad token → permission denied, the
/// other documents unaffected), `hasUnsyncedChanges`, restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_providers_interop_suite() {
    node_suite("hocuspocus suite", ["hocuspocus.test.mjs".to_owned()]).await;
}

/// Two Hocuspocus providers (v2 and v4, one socket each carrying three
/// documents), a y-websocket client per room (`tests/interop/hocus-peer.mjs`)
/// and the native Rust test client converge on the same three rooms, and
/// presence crosses every protocol: the native member's `name` / `color`
/// appear as awareness `user`, and the providers' `user.name` as native
/// presence `name`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hocuspocus_y_websocket_and_native_clients_converge_and_see_each_other() {
    let dir = ensure_node_modules();
    let srv = server(|_| {});
    let rooms = ["hx-0", "hx-1", "hx-2"];
    let mut native = Client::connect(srv.addr).await;
    let docs: Vec<TestDoc> = rooms.iter().map(|_| TestDoc::new()).collect();
    for (room, doc) in rooms.iter().zip(&docs) {
        native
            .join_with(room, doc, Some(json!({"name": "nat", "color": "#123456"})))
            .await;
        native.update_acked(room, doc.push("native ")).await;
    }
    let mut peer = Command::new("node")
        .arg("hocus-peer.mjs")
        .arg(srv.addr.to_string())
        .args(rooms)
        .current_dir(&dir)
        .env("CHORUS_BIN", env!("CARGO_BIN_EXE_chorus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    // Every peer's edit reaches the native client, in every room.
    for (room, doc) in rooms.iter().zip(&docs) {
        while !["[v2]", "[v4]", "[yws]"]
            .iter()
            .all(|t| doc.text().contains(t))
        {
            let m = native
                .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
                .await;
            if let ServerMessage::Update { data, .. } = m {
                doc.apply(&data.0);
            }
        }
    }
    // The providers' awareness `user.name` is their native presence `name`.
    let me = native.session.clone();
    for who in ["v2", "v4", "yws"] {
        native
            .expect(|m| {
                matches!(m, ServerMessage::Presence { joined, updated, .. }
                    if joined.iter().chain(updated).any(|j| j.id != me && j.state["name"] == who
                        && j.state["user"]["name"] == who))
            })
            .await;
    }
    // The peers saw everything, and the native member as `user`.
    let stdout = peer.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
        .await
        .expect("peer reports in time")
        .expect("peer output")
        .expect("a line");
    let seen: serde_json::Value = serde_json::from_str(&line).expect("json line");
    for text in seen["texts"].as_array().expect("texts") {
        let text = text.as_str().expect("text");
        for tag in ["native", "[v2]", "[v4]", "[yws]"] {
            assert!(text.contains(tag), "{tag} missing from {text}");
        }
    }
    assert_eq!(
        seen["nat"]["user"],
        json!({"name": "nat", "color": "#123456"})
    );
    let mut stdin = peer.stdin.take().expect("stdin");
    stdin.write_all(b"bye\n").await.expect("write");
    let status = tokio::time::timeout(Duration::from_secs(10), peer.wait())
        .await
        .expect("peer exits")
        .expect("status");
    assert!(status.success());
}
