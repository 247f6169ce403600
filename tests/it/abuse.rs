//! Abuse (issue 15): what one client sends cannot hurt the others, and an
//! honest client is slowed, never cut off for good. Fast variants of the
//! acceptance runs; the 30 s floods are measured by hand (see the issue).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus::protocol::close;
use chorus::protocol::native::{encode_client, ClientMessage, ServerMessage};
use chorus::protocol::yjs;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::common::{metric, server, ChildServer, Client, TestDoc};

/// How long each flood lasts: 3 s in the suite; `CHORUS_FLOOD_SECS=30`
/// for the acceptance measurement (run by hand, release build).
fn flood_time() -> Duration {
    let secs = std::env::var("CHORUS_FLOOD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    Duration::from_secs(secs)
}

/// Round trips of an edit between two native clients in room `calm`, one
/// every 20 ms, until `until`.
async fn probe(addr: SocketAddr, until: Instant) -> Vec<Duration> {
    let (mut w, mut r) = (Client::connect(addr).await, Client::connect(addr).await);
    let (dw, dr) = (TestDoc::new(), TestDoc::new());
    w.join("calm", &dw).await;
    r.join("calm", &dr).await;
    let mut rtts = Vec::new();
    while Instant::now() < until {
        let t = Instant::now();
        w.send_update("calm", dw.push("x")).await;
        r.expect(|m| matches!(m, ServerMessage::Update { .. }))
            .await;
        rtts.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rtts
}

/// The p99 an unrelated room must keep under attack: 50 ms, or three times
/// what it was without the attack when the machine is that busy anyway
/// (debug build, the rest of the suite running on two shared cores).
fn latency_bound(quiet: Duration) -> Duration {
    Duration::from_millis(50).max(quiet * 3)
}

fn p99(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "the probe measured something");
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Sends `frames` round and round on `path` until `until` (or until the
/// server closes), reading whatever the server sends. Returns the close
/// code, if the server closed, and the frames the server sent.
async fn flood(
    addr: SocketAddr,
    path: &str,
    first: Vec<Vec<u8>>,
    frames: Vec<Vec<u8>>,
    until: Instant,
) -> (Option<u16>, usize) {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
        .await
        .expect("attacker connects");
    let (mut tx, mut rx) = ws.split();
    let replies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = replies.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(m)) = rx.next().await {
            match m {
                Message::Close(c) => return c.map(|c| u16::from(c.code)),
                _ => count.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            };
        }
        None
    });
    for f in first {
        let _ = tx.send(Message::Binary(f.into())).await;
    }
    'flood: loop {
        for f in &frames {
            let left = until.saturating_duration_since(Instant::now());
            let sent = tokio::time::timeout(left, tx.send(Message::Binary(f.clone().into())));
            if !matches!(sent.await, Ok(Ok(()))) || reader.is_finished() {
                break 'flood;
            }
        }
    }
    // A send may fail on the closed socket before the reader has seen the
    // close frame: give it a moment.
    let mut reader = reader;
    let code = match tokio::time::timeout(Duration::from_secs(1), &mut reader).await {
        Ok(Ok(code)) => code,
        _ => {
            reader.abort();
            None
        }
    };
    (code, replies.load(std::sync::atomic::Ordering::Relaxed))
}

/// Highest RSS seen, sampled every 50 ms until `until`.
async fn peak_rss(srv: &ChildServer, until: Instant) -> u64 {
    let mut peak = 0;
    while Instant::now() < until {
        peak = peak.max(srv.rss_bytes());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    peak
}

/// One `/yjs` frame of `n` copies of `message`.
fn packed(message: &[u8], n: usize) -> Vec<u8> {
    message.repeat(n)
}

/// Frames of 1000 one-struct updates each (a fresh client per frame, so
/// every update applies).
fn update_frames(frames: usize) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|_| {
            let doc = TestDoc::new();
            (0..1000)
                .flat_map(|_| yjs::sync_update(doc.push("x")))
                .collect()
        })
        .collect()
}

/// Frames of 1000 awareness updates each, clocks rising.
fn awareness_frames(frames: usize) -> Vec<Vec<u8>> {
    (0..frames)
        .map(|f| {
            (0..1000u32)
                .flat_map(|i| yjs::awareness([(7, f as u32 * 1000 + i + 1, r#"{"a":1}"#)]))
                .collect()
        })
        .collect()
}

/// A `/yjs` client packing frames with tiny messages (query awareness,
/// one-struct updates, awareness updates) up to `max_messages_per_frame`
/// is throttled: the server reads no faster than its message rate, its
/// memory stays flat, and an unrelated room's edits keep their latency. A
/// frame of `max_frame_bytes` packed with query-awareness bytes is refused
/// (4413) before its messages cost anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_packed_yjs_frames_are_throttled_and_cost_others_nothing() {
    let srv = ChildServer::start(&["--store", "memory", "--max-frame-bytes", "1048576"]);
    let addr = srv.addr;
    // Warm up (first room, first sessions) before taking the baseline.
    let quiet = p99(probe(addr, Instant::now() + Duration::from_millis(1000)).await);
    let base = srv.rss_bytes();
    let frames_before = metric(addr, "chorus_messages_in_total").await;

    let kinds: [(&str, Vec<Vec<u8>>); 3] = [
        ("query", vec![packed(&[3], 1000)]),
        ("updates", update_frames(4)),
        ("awareness", awareness_frames(4)),
    ];
    let mut rtts = Vec::new();
    let mut peak = 0;
    let mut read_frames = 0.0;
    for (kind, frames) in kinds {
        let until = Instant::now() + flood_time();
        let room = format!("/yjs/flood-{kind}");
        let before = metric(addr, "chorus_messages_in_total").await;
        let (attack, probed, rss) = tokio::join!(
            flood(addr, &room, vec![], frames, until),
            probe(addr, until),
            peak_rss(&srv, until),
        );
        let read = metric(addr, "chorus_messages_in_total").await - before;
        let (code, replies) = attack;
        // Throttled: 500 messages/s (burst 500) is one frame of 1000
        // every two seconds, after what the first read of the socket
        // holds (decoded before the gate closes: ~130 frames here, all
        // charged, so the session then reads nothing for minutes); the
        // probe's own frames are taken off.
        let probe_frames = probed.len() as f64;
        eprintln!(
            "{kind}: {} frames read, {replies} frames back, close {code:?}, probe p99 {:?}, peak RSS +{} KiB",
            read - probe_frames,
            p99(probed.clone()),
            rss.saturating_sub(base) / 1024
        );
        assert!(
            read - probe_frames <= 400.0,
            "{kind}: the attacker was not throttled ({read} frames read)"
        );
        // Throttled, or closed with the transient 1013 once its debt
        // outlasts the grace; never anything else.
        assert!(
            matches!(code, None | Some(close::TRY_AGAIN_LATER)),
            "{kind}: closed with {code:?}"
        );
        if kind == "query" {
            // At most one answer per tick (10 ms) however many are asked.
            let ticks = flood_time().as_millis() as usize / 10;
            assert!(replies <= ticks + 10, "query answered {replies} times");
        }
        read_frames += read;
        rtts.extend(probed);
        peak = peak.max(rss);
    }
    let _ = (frames_before, read_frames);

    // A frame of max_frame_bytes packed with query-awareness bytes.
    let until = Instant::now() + Duration::from_secs(2);
    let (code, _) = flood(
        addr,
        "/yjs/flood-big",
        vec![],
        vec![packed(&[3], 1 << 20)],
        until,
    )
    .await;
    assert_eq!(code, Some(close::YJS_TOO_LARGE));

    let growth = peak.saturating_sub(base);
    let p = p99(rtts);
    eprintln!(
        "yjs floods: peak RSS growth {} KiB, probe p99 {p:?}",
        growth / 1024
    );
    assert!(growth < 64 << 20, "RSS grew by {growth} bytes");
    assert!(
        p < latency_bound(quiet),
        "unrelated room p99 {p:?} (without the attack: {quiet:?})"
    );
}

/// The same on `/ws`: one message per frame, so many small frames (pings,
/// tiny updates, cursor moves): read no faster than the message rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_many_small_native_frames_are_throttled() {
    let srv = ChildServer::start(&["--store", "memory"]);
    let addr = srv.addr;
    let quiet = p99(probe(addr, Instant::now() + Duration::from_millis(1000)).await);
    let base = srv.rss_bytes();
    let hello = encode_client(&ClientMessage::Hello {
        v: chorus::protocol::PROTOCOL_VERSION,
        token: None,
        client: None,
        rid: None,
    });
    let join = encode_client(&ClientMessage::Join {
        room: "flood".into(),
        sv: None,
        presence: Some(json!({"n": 1})),
        rid: None,
    });
    let doc = TestDoc::new();
    let mut frames = Vec::new();
    for i in 0..3000u64 {
        let msg = match i % 3 {
            0 => ClientMessage::Ping { rid: Some(i) },
            1 => ClientMessage::Update {
                room: "flood".into(),
                data: chorus::protocol::native::Bin(doc.push("x")),
                rid: None,
            },
            _ => ClientMessage::Cursor {
                room: "flood".into(),
                anchor: Some(chorus::protocol::native::Bin(vec![1, 2, 3])),
                head: None,
                rid: None,
            },
        };
        frames.push(encode_client(&msg));
    }
    let until = Instant::now() + flood_time();
    let before = metric(addr, "chorus_messages_in_total").await;
    let started = Instant::now();
    let (attack, probed, rss) = tokio::join!(
        flood(addr, "/ws", vec![hello, join], frames, until),
        probe(addr, until),
        peak_rss(&srv, until),
    );
    let read = metric(addr, "chorus_messages_in_total").await - before - probed.len() as f64;
    let secs = started.elapsed().as_secs_f64();
    let p = p99(probed);
    let growth = rss.saturating_sub(base);
    eprintln!(
        "native flood: {read} frames read in {secs:.1} s, close {:?}, probe p99 {p:?}, peak RSS +{} KiB",
        attack.0,
        growth / 1024
    );
    // 500/s with a burst of 500, plus what one read of the socket holds
    // (decoded before the gate closes again).
    assert!(
        read <= 500.0 * (secs + 1.0) + 6000.0,
        "not throttled: {read} frames in {secs} s"
    );
    assert!(
        matches!(attack.0, None | Some(close::TRY_AGAIN_LATER)),
        "closed with {:?}",
        attack.0
    );
    assert!(growth < 64 << 20, "RSS grew by {growth} bytes");
    assert!(
        p < latency_bound(quiet),
        "unrelated room p99 {p:?} (without the attack: {quiet:?})"
    );
}

/// Past `rate_limit_grace_ms` of sustained flooding, the session is closed
/// with 1013 (transient: stock clients reconnect), after `error
/// rate_limited` on `/ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_sustained_flood_is_closed_with_a_transient_code() {
    let srv = server(|c| {
        c.limits.max_messages_per_sec = 50;
        c.limits.rate_limit_grace_ms = 500;
    });
    let ping = encode_client(&ClientMessage::Ping { rid: None });
    let hello = encode_client(&ClientMessage::Hello {
        v: chorus::protocol::PROTOCOL_VERSION,
        token: None,
        client: None,
        rid: None,
    });
    let until = Instant::now() + Duration::from_secs(8);
    let started = Instant::now();
    let (code, _) = flood(srv.addr, "/ws", vec![hello], vec![ping; 100], until).await;
    assert_eq!(code, Some(close::TRY_AGAIN_LATER));
    assert!(started.elapsed() < Duration::from_secs(5));
    let (code, _) = flood(srv.addr, "/yjs/r", vec![], vec![packed(&[3], 100)], until).await;
    assert_eq!(code, Some(close::TRY_AGAIN_LATER));
}

/// A native client on a socket with a tiny receive buffer, so that it fills
/// up quickly once the client stops reading.
async fn small_window_client(addr: SocketAddr) -> Client {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(addr).await.expect("connects");
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{addr}/ws"),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await
    .expect("websocket handshake");
    let mut c = Client::from_ws(ws);
    c.hello(None).await;
    c
}

/// 20 clients that stop reading while a room is busy (their sockets fill
/// up, so their sessions cannot run): each is removed within the client
/// timeout + 5 s: its member leaves the room (others see it in presence),
/// its per-IP slot is free and its connection is counted closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_stuck_clients_are_removed_within_the_client_timeout() {
    let srv = server(|c| {
        c.limits.client_timeout_ms = 1000;
        c.limits.heartbeat_ms = 400;
        c.limits.outbound_buffer_bytes = 64 * 1024;
    });
    let addr = srv.addr;
    let (mut writer, mut watcher) = (Client::connect(addr).await, Client::connect(addr).await);
    let (dw, dv) = (TestDoc::new(), TestDoc::new());
    writer.join("busy", &dw).await;
    watcher
        .join_with("busy", &dv, Some(json!({"name": "watcher"})))
        .await;
    let mut stuck = Vec::new();
    for i in 0..20 {
        let mut c = small_window_client(addr).await;
        c.join_with("busy", &TestDoc::new(), Some(json!({ "stuck": i })))
            .await;
        stuck.push(c);
    }
    let ids: Vec<String> = stuck.iter().map(|c| c.session.clone()).collect();
    assert_eq!(metric(addr, "chorus_connections_admitted").await, 22.0);
    // The watcher keeps reading (it is not stuck) and notes when each
    // stuck member leaves.
    let wanted = ids.clone();
    let watching = tokio::spawn(async move {
        let mut left = std::collections::HashMap::new();
        // Stuck members the watcher saw join and not yet leave.
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(40);
        while left.len() < wanted.len() && Instant::now() < deadline {
            let Some(m) = watcher
                .maybe(Duration::from_millis(200), |m| {
                    matches!(m, ServerMessage::Presence { .. })
                })
                .await
            else {
                continue;
            };
            // The watcher may fall behind too (it gets the 4 MB as well,
            // with a 64 KiB buffer): its presence diffs are then dropped and
            // it gets a snapshot instead, where those gone are missing.
            if let ServerMessage::Presence {
                snapshot,
                joined,
                left: gone,
                ..
            } = m
            {
                let here: Vec<String> = joined.into_iter().map(|m| m.id).collect();
                let gone: Vec<String> = if snapshot {
                    let gone: Vec<String> = seen
                        .iter()
                        .filter(|id| !here.contains(id))
                        .cloned()
                        .collect();
                    if !gone.is_empty() {
                        eprintln!(
                            "the watcher lagged: {} departures read from a presence snapshot",
                            gone.len()
                        );
                    }
                    gone
                } else {
                    gone
                };
                seen.extend(here.into_iter().filter(|id| wanted.contains(id)));
                for id in gone.into_iter().filter(|id| wanted.contains(id)) {
                    seen.remove(&id);
                    left.entry(id).or_insert_with(Instant::now);
                }
            }
        }
        left
    });
    // They stop reading; the room keeps writing 64 KiB edits to them.
    let chunk = "y".repeat(64 * 1024);
    for _ in 0..64 {
        writer.update_acked("busy", dw.push(&chunk)).await;
    }
    let written = Instant::now();
    let left = watching.await.expect("watcher");
    assert_eq!(
        left.len(),
        ids.len(),
        "stuck members that left: {}",
        left.len()
    );
    let last = left.values().max().expect("some left");
    let took = last.saturating_duration_since(written);
    assert!(
        took <= Duration::from_millis(1000 + 5000),
        "the last stuck member left {took:?} after the last write"
    );
    eprintln!("20 stuck clients removed {took:?} after the last write");
    // (The writer and the watcher may be gone too by now: they stopped
    // reading after their part.)
    crate::common::eventually(
        "stuck connections closed, their per-IP slots free",
        || async {
            metric(addr, "chorus_connections").await <= 2.0
                && metric(addr, "chorus_connections_admitted").await <= 2.0
        },
    )
    .await;
    drop(stuck);
}

/// Runs `script` with node in `dir` against a server at 2 000 messages/s
/// with a 1 s grace (so that a 10 000-edit burst outlasts the grace) and
/// checks the burst's JSON line: a second client got all 10 000 edits, and
/// the writer was never closed for good (no 4400–4499, nothing the client
/// treats as fatal); a 1013 after the grace is allowed (it reconnects and
/// delivers the rest by sync).
async fn honest_burst(dir: std::path::PathBuf, node_args: &[&str], url_path: &str) {
    let srv = server(|c| {
        c.limits.max_messages_per_sec = 2000;
        c.limits.rate_limit_grace_ms = 1000;
    });
    let run = tokio::process::Command::new("node")
        .args(node_args)
        .arg(format!("ws://{}{url_path}", srv.addr))
        .arg("burst")
        .arg("10000")
        .current_dir(&dir)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(150), run)
        .await
        .expect("the burst finishes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "burst output:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("{node_args:?} burst: {seen}");
    assert_eq!(seen["len"], 10000, "{seen}");
    assert!(seen["permanent"].is_null(), "closed for good: {seen}");
    for code in seen["closes"].as_array().expect("closes") {
        let code = code.as_u64().unwrap_or(0);
        assert!(!(4400..=4499).contains(&code), "permanent close {code}");
    }
}

/// A stock y-websocket 3.x client inserting 10 000 one-character edits as
/// fast as it can is slowed, never closed for good: a second client gets
/// all 10 000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_an_honest_y_websocket_burst_is_slowed_not_cut_off() {
    let dir = crate::interop::ensure_node_modules();
    honest_burst(dir, &["burst.mjs"], "/yjs").await;
}

/// The same burst from the demo's own client library (demo/src/client),
/// on the native protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_an_honest_demo_client_burst_is_slowed_not_cut_off() {
    let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo");
    let dir = crate::interop::npm_ci(demo, "yjs");
    // Node 22+ has a global WebSocket; Node 20 needs the flag.
    let has_ws = std::process::Command::new("node")
        .args(["-e", "process.stdout.write(typeof WebSocket)"])
        .output()
        .is_ok_and(|o| o.stdout == b"function");
    let args: &[&str] = if has_ws {
        &["test/burst.mjs"]
    } else {
        &["--experimental-websocket", "test/burst.mjs"]
    };
    honest_burst(dir, args, "/ws").await;
}

/// Operations see every close and refusal: one info log line per closed
/// connection (protocol, rooms, code, reason, duration, bytes) and per
/// refusal, and `/metrics` counts closes by code and refusals by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_and_refusals_are_logged_and_counted() {
    let node = ChildServer::start(&["--allowed-origins", "https://ok.example"]);
    let addr = node.addr;

    // A native client in a room, closing normally.
    let mut c = Client::connect(addr).await;
    c.join("seen", &TestDoc::new()).await;
    c.close().await;
    // A /yjs client closed by the server: a bad message is 4400.
    let mut y = crate::yjs::YClient::connect(addr, "seen-too").await;
    y.send(vec![0x63]).await;
    assert_eq!(y.closed().await, Some(close::YJS_BAD_MESSAGE));
    // A refusal before any session: a browser from another origin.
    let refused = Client::connect_path(addr, "/ws", &[("Origin", "https://evil.example")]).await;
    assert_eq!(refused.err(), Some(403));

    let closes = |code: u16| format!("chorus_closes_total{{code=\"{code}\"}}");
    let counted = |name: String| async move {
        let (_, body) = crate::common::http_get(addr, "/metrics").await;
        body.lines()
            .find_map(|l| {
                l.strip_prefix(name.as_str())
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    let all_closes = || async {
        let (_, body) = crate::common::http_get(addr, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with("chorus_closes_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    crate::common::eventually("closes counted by code", || async {
        counted(closes(close::YJS_BAD_MESSAGE)).await >= 1.0 && all_closes().await >= 2.0
    })
    .await;
    assert_eq!(
        metric(addr, "chorus_refusals_total{reason=\"origin\"}").await,
        1.0
    );

    let logs = node.logs();
    let closed: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "connection closed")
        .collect();
    let native = closed
        .iter()
        .find(|v| v["fields"]["protocol"] == "native")
        .unwrap_or_else(|| panic!("no native close line in {logs:#?}"));
    assert_eq!(native["level"], "INFO");
    // The test client sends 1000 and drops its socket at once, which the
    // server may see first as a broken stream: any code, as long as it is
    // the one counted.
    let code = native["fields"]["code"].as_u64().expect("a close code") as u16;
    assert!(counted(closes(code)).await >= 1.0);
    assert!(native["fields"]["rooms"]
        .as_str()
        .unwrap_or("")
        .contains("seen"));
    assert!(native["fields"]["bytes_in"].as_u64().unwrap_or(0) > 0);
    assert!(native["fields"]["bytes_out"].as_u64().unwrap_or(0) > 0);
    assert!(native["fields"]["duration_ms"].is_u64());
    let yjs = closed
        .iter()
        .find(|v| v["fields"]["protocol"] == "yjs")
        .unwrap_or_else(|| panic!("no /yjs close line in {logs:#?}"));
    assert_eq!(yjs["fields"]["code"], close::YJS_BAD_MESSAGE);
    assert!(yjs["fields"]["rooms"]
        .as_str()
        .unwrap_or("")
        .contains("seen-too"));
    assert!(
        logs.iter()
            .any(|l| l.contains("connection refused") && l.contains("origin")),
        "no refusal line in {logs:#?}"
    );
}

/// The watchdog's sweeper (one per worker thread): stuck and live sessions
/// on both workers of two servers in one process; every stuck one is
/// closed within the client timeout + heartbeat (+ one sweep), no live one
/// is; when a server's last session is gone its sweepers end, and the next
/// stuck sessions are closed as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_the_watchdog_sweeper_misses_no_stuck_session() {
    let tweak = |c: &mut chorus::config::Config| {
        c.workers = 2;
        c.limits.client_timeout_ms = 600;
        c.limits.heartbeat_ms = 200;
        c.limits.outbound_buffer_bytes = 64 * 1024;
    };
    let (a, b) = (server(tweak), server(tweak));
    let chunk = "z".repeat(64 * 1024);
    // Opens `stuck` clients that never read and `live` ones that do, floods
    // their room, and returns how long until only the live ones (and the
    // writer) were left.
    let round = |addr: SocketAddr, room: &'static str, stuck: usize, live: usize| {
        let chunk = chunk.clone();
        async move {
            let mut writer = Client::connect(addr).await;
            let dw = TestDoc::new();
            writer.join(room, &dw).await;
            let mut stuck_clients = Vec::new();
            for _ in 0..stuck {
                let mut c = small_window_client(addr).await;
                c.join(room, &TestDoc::new()).await;
                stuck_clients.push(c);
            }
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut readers = Vec::new();
            for _ in 0..live {
                let mut c = Client::connect(addr).await;
                c.join(room, &TestDoc::new()).await;
                let stop = stop.clone();
                readers.push(tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        c.try_recv(Duration::from_millis(50)).await;
                    }
                    c
                }));
            }
            for _ in 0..16 {
                writer.update_acked(room, dw.push(&chunk)).await;
            }
            let flooded = Instant::now();
            // The writer keeps reading too (it answers the pings).
            let stop_writer = stop.clone();
            readers.push(tokio::spawn(async move {
                while !stop_writer.load(std::sync::atomic::Ordering::Relaxed) {
                    writer.try_recv(Duration::from_millis(50)).await;
                }
                writer
            }));
            let want = (1 + live) as f64;
            while metric(addr, "chorus_connections").await > want {
                assert!(
                    flooded.elapsed() < Duration::from_secs(8),
                    "stuck sessions left open: {} connections, want {want}",
                    metric(addr, "chorus_connections").await
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = flooded.elapsed();
            // The live ones stay (a second more: five heartbeats).
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert_eq!(
                metric(addr, "chorus_connections").await,
                want,
                "a live one was closed"
            );
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for r in readers {
                r.await.expect("reader").close().await;
            }
            drop(stuck_clients);
            took
        }
    };
    let (ta, tb) = tokio::join!(round(a.addr, "sweep", 8, 4), round(b.addr, "sweep", 8, 4));
    // Every session of `a` gone: its sweepers end; the next ones start anew.
    crate::common::eventually("a has no connection", || async {
        metric(a.addr, "chorus_connections").await == 0.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = round(a.addr, "again", 4, 2).await;
    eprintln!("stuck sessions closed {ta:?} / {tb:?} after the flood (two servers), {again:?} after a restart of the sweepers");
    for took in [ta, tb, again] {
        assert!(
            took < Duration::from_millis(600 + 200 + 200 + 1500),
            "{took:?}"
        );
    }
}
