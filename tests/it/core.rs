//! [core] acceptance: convergence, multiplexing, presence, bad input,
//! eviction, shutdown.

use std::time::{Duration, Instant};

use chorus::protocol::native::{Bin, ClientMessage, ServerMessage};
use chorus::protocol::ErrorCode;
use serde_json::json;

use crate::common::{server, Client, TestDoc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_converge_and_a_late_joiner_gets_everything() {
    let srv = server(|_| {});
    let (mut a, mut b) = (
        Client::connect(srv.addr).await,
        Client::connect(srv.addr).await,
    );
    let (da, db) = (TestDoc::new(), TestDoc::new());
    a.join("notes", &da).await;
    b.join("notes", &db).await;
    // Interleaved edits from both sides, without waiting for each other.
    for i in 0..50 {
        let ua = da.push(&format!("a{i} "));
        a.send(&ClientMessage::Update {
            room: "notes".into(),
            data: Bin(ua),
            rid: None,
        })
        .await;
        let ub = db.insert(0, &format!("b{i} "));
        b.send(&ClientMessage::Update {
            room: "notes".into(),
            data: Bin(ub),
            rid: None,
        })
        .await;
    }
    let probe_a = da.push("!");
    a.update_acked("notes", probe_a).await;
    let probe_b = db.push("?");
    b.update_acked("notes", probe_b).await;
    // Apply what each side receives until both hold the same text.
    let mut rounds = 0;
    while da.text() != db.text() || !da.text().contains('!') || !da.text().contains('?') {
        rounds += 1;
        assert!(
            rounds < 1000,
            "no convergence: {:?} vs {:?}",
            da.text(),
            db.text()
        );
        for (c, d) in [(&mut a, &da), (&mut b, &db)] {
            if let Some(ServerMessage::Update { data, .. }) = c
                .maybe(Duration::from_millis(50), |m| {
                    matches!(m, ServerMessage::Update { .. })
                })
                .await
            {
                d.apply(&data.0);
            }
        }
    }
    assert_eq!(da.text().matches('a').count(), 50);
    assert_eq!(da.text().matches('b').count(), 50);

    let mut c = Client::connect(srv.addr).await;
    let dc = TestDoc::new();
    c.join("notes", &dc).await;
    assert_eq!(dc.text(), da.text(), "synced carries the full state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_many_rooms_without_leaks() {
    let srv = server(|c| c.limits.room_idle_ms = 100);
    let mut writer = Client::connect(srv.addr).await;
    let mut readers = Vec::new();
    let rooms = ["r1", "r2", "r3"];
    let docs: Vec<TestDoc> = rooms.iter().map(|_| TestDoc::new()).collect();
    for (room, doc) in rooms.iter().zip(&docs) {
        writer.join(room, doc).await;
        let mut r = Client::connect(srv.addr).await;
        r.join(room, &TestDoc::new()).await;
        readers.push(r);
    }
    for (room, doc) in rooms.iter().zip(&docs) {
        let u = doc.push(&format!("only in {room}"));
        writer.update_acked(room, u).await;
    }
    for (i, reader) in readers.iter_mut().enumerate() {
        let mine = TestDoc::new();
        reader
            .sync_until(rooms[i], &mine, &format!("only in {}", rooms[i]))
            .await;
        let other = reader
            .maybe(Duration::from_millis(300), |m| match m {
                ServerMessage::Update { room, .. } => room != rooms[i],
                _ => false,
            })
            .await;
        assert!(
            other.is_none(),
            "update from another room leaked: {other:?}"
        );
    }
    // Nothing is left behind once everyone is gone: no connection, no
    // member keeping a room alive (every room is evicted).
    writer.close().await;
    for r in readers {
        r.close().await;
    }
    let addr = srv.addr;
    crate::common::eventually("connections closed and rooms evicted", || async move {
        crate::common::metric(addr, "chorus_connections ").await == 0.0
            && crate::common::metric(addr, "chorus_rooms_active").await == 0.0
    })
    .await;
    assert_eq!(
        crate::common::metric(addr, "chorus_rooms_evicted_total").await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_cursors_typing_and_events() {
    let srv = server(|c| c.limits.typing_ttl_ms = 300);
    let mut a = Client::connect(srv.addr).await;
    let d = TestDoc::new();
    a.join_with("team", &d, Some(json!({"name": "Alice", "color": "#f00"})))
        .await;
    let mut b = Client::connect(srv.addr).await;
    b.join_with("team", &d, Some(json!({"name": "Bob"}))).await;

    // B's snapshot shows Alice; A hears Bob join.
    let b_id = b.session.clone();
    let a_id = a.session.clone();
    b.expect(|m| matches!(m, ServerMessage::Presence { snapshot: true, joined, .. } if joined.iter().any(|v| v.id == a_id && v.state["name"] == "Alice")))
        .await;
    a.expect(|m| matches!(m, ServerMessage::Presence { joined, .. } if joined.iter().any(|v| v.id == b_id && v.state["name"] == "Bob")))
        .await;

    // Update reaches the other side.
    a.send(&ClientMessage::Presence {
        room: "team".into(),
        state: json!({"name": "Alice", "color": "#0f0"}),
        rid: None,
    })
    .await;
    b.expect(|m| matches!(m, ServerMessage::Presence { updated, .. } if updated.iter().any(|v| v.id == a_id && v.state["color"] == "#0f0")))
        .await;

    // Cursor: a relative position made by yrs.
    let pos = relative_position();
    a.send(&ClientMessage::Cursor {
        room: "team".into(),
        anchor: Some(Bin(pos.clone())),
        head: Some(Bin(pos.clone())),
        rid: None,
    })
    .await;
    b.expect(|m| matches!(m, ServerMessage::Cursor { cursors, .. } if cursors.iter().any(|c| c.id == a_id && c.head.as_ref().map(|h| &h.0) == Some(&pos))))
        .await;
    // Garbage cursor bytes are refused.
    a.send(&ClientMessage::Cursor {
        room: "team".into(),
        anchor: Some(Bin(vec![0xff; 8])),
        head: None,
        rid: Some(77),
    })
    .await;
    a.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::BadUpdate,
                rid: Some(77),
                ..
            }
        )
    })
    .await;

    // Typing turns on, then expires by itself.
    a.send(&ClientMessage::Typing {
        room: "team".into(),
        on: true,
        rid: None,
    })
    .await;
    b.expect(|m| matches!(m, ServerMessage::Typing { id, on: true, .. } if *id == a_id))
        .await;
    b.expect(|m| matches!(m, ServerMessage::Typing { id, on: false, .. } if *id == a_id))
        .await;

    // Events reach all but the sender.
    let mut c = Client::connect(srv.addr).await;
    c.join("team", &d).await;
    a.send(&ClientMessage::Event {
        room: "team".into(),
        name: "seen".into(),
        data: json!({"msg": 3}),
        rid: None,
    })
    .await;
    for other in [&mut b, &mut c] {
        other.expect(|m| matches!(m, ServerMessage::Event { name, from, data, .. } if name == "seen" && *from == a_id && data["msg"] == 3)).await;
    }
    assert!(a
        .maybe(Duration::from_millis(200), |m| matches!(
            m,
            ServerMessage::Event { .. }
        ))
        .await
        .is_none());

    // A disconnect removes the member.
    a.close().await;
    b.expect(|m| matches!(m, ServerMessage::Presence { left, .. } if left.contains(&a_id)))
        .await;
}

/// Sends raw bytes and expects an `error` with `code`.
async fn expect_error(c: &mut Client, bytes: Vec<u8>, code: ErrorCode) {
    c.send_raw(bytes).await;
    let got = c.expect(|m| matches!(m, ServerMessage::Error { .. })).await;
    assert!(
        matches!(got, ServerMessage::Error { code: c, .. } if c == code),
        "expected {code:?}, got {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_and_costs_nothing_else() {
    let srv = server(|c| {
        c.limits.max_frame_bytes = 64 * 1024;
        c.limits.max_rooms_per_connection = 100;
        // 2 100 joins in a burst: not a rate-limit test.
        c.limits.max_messages_per_sec = 0;
    });
    let mut bystander = Client::connect(srv.addr).await;
    let bystander_doc = TestDoc::new();
    bystander.join("doc", &bystander_doc).await;
    let mut writer = Client::connect(srv.addr).await;
    let writer_doc = TestDoc::new();
    writer.join("doc", &writer_doc).await;
    let u = writer_doc.push("intact");
    writer.update_acked("doc", u).await;
    bystander.sync_until("doc", &bystander_doc, "intact").await;

    let mut bad = Client::connect(srv.addr).await;
    bad.join("doc", &TestDoc::new()).await;
    let msgpack = |v: serde_json::Value| rmp_serde::to_vec_named(&v).expect("encodes");
    // Truncated MessagePack.
    let mut truncated = msgpack(json!({"t": "ping", "rid": 1}));
    truncated.truncate(truncated.len() - 2);
    expect_error(&mut bad, truncated, ErrorCode::BadMessage).await;
    // Not a map at all.
    expect_error(&mut bad, vec![0xc1], ErrorCode::BadMessage).await;
    // Wrong field types.
    expect_error(
        &mut bad,
        msgpack(json!({"t": "join", "room": 5})),
        ErrorCode::BadMessage,
    )
    .await;
    expect_error(
        &mut bad,
        msgpack(json!({"t": "update", "room": "doc", "data": "text"})),
        ErrorCode::BadMessage,
    )
    .await;
    // Unknown type: an error, and the connection stays usable.
    expect_error(
        &mut bad,
        msgpack(json!({"t": "teleport", "rid": 9})),
        ErrorCode::UnknownType,
    )
    .await;
    bad.send(&ClientMessage::Ping { rid: Some(5) }).await;
    bad.expect(|m| matches!(m, ServerMessage::Pong { rid: Some(5) }))
        .await;
    // Garbage CRDT bytes.
    for garbage in [
        vec![0xff; 32],
        vec![1, 2, 3],
        vec![0x01, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f],
    ] {
        bad.send(&ClientMessage::Update {
            room: "doc".into(),
            data: Bin(garbage),
            rid: Some(11),
        })
        .await;
        bad.expect(|m| {
            matches!(
                m,
                ServerMessage::Error {
                    code: ErrorCode::BadUpdate,
                    rid: Some(11),
                    ..
                }
            )
        })
        .await;
    }
    // Update for a room not joined.
    bad.send(&ClientMessage::Update {
        room: "elsewhere".into(),
        data: Bin(TestDoc::new().push("x")),
        rid: Some(12),
    })
    .await;
    bad.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::NotJoined,
                rid: Some(12),
                ..
            }
        )
    })
    .await;
    // Bad room ids.
    bad.send(&ClientMessage::Join {
        room: String::new(),
        sv: None,
        presence: None,
        rid: Some(13),
    })
    .await;
    bad.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::BadRoom,
                rid: Some(13),
                ..
            }
        )
    })
    .await;
    // Oversize presence.
    bad.send(&ClientMessage::Presence {
        room: "doc".into(),
        state: json!({"blob": "x".repeat(20_000)}),
        rid: Some(14),
    })
    .await;
    bad.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::PresenceTooLarge,
                rid: Some(14),
                ..
            }
        )
    })
    .await;

    // 2 000 joins over the limit: the first 99 more succeed, the rest are refused.
    let mut greedy = Client::connect(srv.addr).await;
    for i in 0..2_100u64 {
        greedy
            .send(&ClientMessage::Join {
                room: format!("g{i}"),
                sv: None,
                presence: None,
                rid: Some(i),
            })
            .await;
    }
    let mut refused = 0;
    let mut synced = 0;
    while refused + synced < 2_100 {
        match greedy.recv().await {
            ServerMessage::Error {
                code: ErrorCode::TooManyRooms,
                ..
            } => refused += 1,
            ServerMessage::Synced { .. } => synced += 1,
            _ => {}
        }
    }
    assert_eq!((synced, refused), (100, 2_000));

    // Text frame on the native protocol (even one holding JSON): an error,
    // and the connection stays usable.
    bad.send_text(r#"{"t":"ping","rid":15}"#).await;
    let got = bad
        .expect(|m| matches!(m, ServerMessage::Error { .. }))
        .await;
    assert!(
        matches!(
            got,
            ServerMessage::Error {
                code: ErrorCode::BadMessage,
                ..
            }
        ),
        "text frame: {got:?}"
    );
    bad.send(&ClientMessage::Ping { rid: Some(16) }).await;
    bad.expect(|m| matches!(m, ServerMessage::Pong { rid: Some(16) }))
        .await;
    // 10x oversize frame: closed with 1009.
    let mut huge = Client::connect(srv.addr).await;
    huge.send_raw(vec![0x80; 640 * 1024]).await;
    assert_eq!(huge.closed().await, Some(chorus::protocol::close::TOO_BIG));

    // Everyone else is still served, and the room content is unchanged.
    let u = writer_doc.push(" still");
    writer.update_acked("doc", u).await;
    bystander
        .sync_until("doc", &bystander_doc, "intact still")
        .await;
    let mut late = Client::connect(srv.addr).await;
    let late_doc = TestDoc::new();
    late.join("doc", &late_doc).await;
    assert_eq!(late_doc.text(), "intact still");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_comes_first_and_versions_are_checked() {
    let srv = server(|_| {});
    let mut c = Client::connect_raw(srv.addr).await;
    c.send(&ClientMessage::Join {
        room: "x".into(),
        sv: None,
        presence: None,
        rid: Some(1),
    })
    .await;
    c.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::HelloRequired,
                ..
            }
        )
    })
    .await;
    c.send(&ClientMessage::Hello {
        v: 99,
        token: None,
        client: None,
        rid: Some(2),
    })
    .await;
    c.expect(|m| {
        matches!(
            m,
            ServerMessage::Error {
                code: ErrorCode::UnsupportedVersion,
                rid: Some(2),
                ..
            }
        )
    })
    .await;
    assert_eq!(
        c.closed().await,
        Some(chorus::protocol::close::UNSUPPORTED_VERSION)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_rooms_are_evicted_and_come_back_intact() {
    let srv = server(|c| c.limits.room_idle_ms = 100);
    let mut a = Client::connect(srv.addr).await;
    let d = TestDoc::new();
    a.join("ephemeral", &d).await;
    let u = d.push("kept across eviction");
    a.update_acked("ephemeral", u).await;
    a.send(&ClientMessage::Leave {
        room: "ephemeral".into(),
        rid: None,
    })
    .await;
    let addr = srv.addr;
    crate::common::eventually("room evicted", || async move {
        crate::common::metric(addr, "chorus_rooms_evicted_total").await >= 1.0
    })
    .await;
    assert_eq!(
        crate::common::metric(addr, "chorus_rooms_active").await,
        0.0
    );
    let fresh = TestDoc::new();
    a.join("ephemeral", &fresh).await;
    assert_eq!(fresh.text(), "kept across eviction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_sends_going_away() {
    let srv = server(|_| {});
    let mut clients = Vec::new();
    for room in ["a", "b"] {
        let mut c = Client::connect(srv.addr).await;
        c.join(room, &TestDoc::new()).await;
        clients.push(c);
    }
    let stopper = tokio::task::spawn_blocking(move || srv.shutdown());
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(chorus::protocol::close::GOING_AWAY));
    }
    stopper.await.expect("shutdown completes");
}

/// Backpressure. Eight rooms, one slow member each (it joins, then stops
/// reading) and one writer each. Every writer sends 30 MiB of events, then
/// document updates, to its own room, so each slow member's backlog is made
/// of its own bytes (frames are shared within a room, never across rooms):
/// without the soft-limit drop the server would hold 8 × 30 MiB (less what
/// the kernel's socket buffers take). With it, each outbox holds at most
/// `--outbound-buffer-bytes` plus one frame; the deltas past it are dropped
/// (counted in `chorus_frames_dropped_total`), and once the slow member
/// reads again it is resynced from its state vector (`chorus_resyncs_total`,
/// an `update` without origin) and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumers_cost_bounded_memory_and_resync() {
    const ROOMS: usize = 8;
    const EVENT: usize = 256 * 1024;
    const EVENTS: usize = 120;
    const UPDATES: usize = 20;
    const CHUNK: usize = 50 * 1024;
    const SOFT: u64 = 1024 * 1024;
    let srv = crate::common::ChildServer::start(&[
        "--store",
        "memory",
        "--outbound-buffer-bytes",
        &SOFT.to_string(),
        // Far above what the test sends: only the soft limit bounds memory.
        "--outbound-hard-limit-bytes",
        "2000000000",
        "--max-event-bytes",
        "1000000",
        "--client-timeout-ms",
        "120000",
        "--heartbeat-ms",
        "30000",
        // A firehose: not a rate-limit test.
        "--max-bytes-per-sec",
        "0",
        "--max-messages-per-sec",
        "0",
    ]);
    let addr = srv.addr;
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let room = format!("firehose-{r}");
        let mut slow = Client::connect(addr).await;
        let slow_doc = TestDoc::new();
        slow.join(&room, &slow_doc).await;
        let mut writer = Client::connect(addr).await;
        let writer_doc = TestDoc::new();
        writer.join(&room, &writer_doc).await;
        rooms.push((room, slow, slow_doc, writer, writer_doc));
    }
    // Let the joins' presence reach the slow members, then measure.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base_rss = srv.rss_bytes();
    let mut peak_rss = base_rss;
    let payload = "x".repeat(EVENT);
    let chunk = "y".repeat(CHUNK);
    for (room, _, _, writer, writer_doc) in &mut rooms {
        for i in 0..EVENTS {
            writer
                .send(&ClientMessage::Event {
                    room: room.clone(),
                    name: format!("blob{i}"),
                    data: json!(payload),
                    rid: None,
                })
                .await;
        }
        // A cursor move while the slow member is behind: dropped too, and
        // sent again with the presence snapshot of its resync.
        writer
            .send(&ClientMessage::Cursor {
                room: room.clone(),
                anchor: Some(Bin(relative_position())),
                head: None,
                rid: None,
            })
            .await;
        for _ in 0..UPDATES {
            let u = TestDoc::independent_insert(&chunk);
            writer_doc.apply(&u);
            writer
                .send(&ClientMessage::Update {
                    room: room.clone(),
                    data: Bin(u),
                    rid: None,
                })
                .await;
        }
        // Acked once the room handled everything above (one connection,
        // one order).
        let last = writer_doc.push("end");
        writer.update_acked(room, last).await;
        peak_rss = peak_rss.max(srv.rss_bytes());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    peak_rss = peak_rss.max(srv.rss_bytes());
    let growth = peak_rss.saturating_sub(base_rss);
    // Per room with the drop: the outbox (soft limit + one frame), the
    // document and the memory store's copies of it (1 MB of updates each),
    // and allocator slack; without it each room would add ~20 MiB or more.
    let doc_bytes = (UPDATES * CHUNK) as u64;
    let bound = ROOMS as u64 * (SOFT + EVENT as u64 + 4 * doc_bytes) + 80 * 1024 * 1024;
    let sent = (ROOMS * EVENTS * EVENT) as u64;
    eprintln!(
        "slow consumer test: {} MiB sent, RSS {} -> {} MiB (growth {} MiB, bound {} MiB)",
        sent >> 20,
        base_rss >> 20,
        peak_rss >> 20,
        growth >> 20,
        bound >> 20
    );
    assert!(
        growth < bound,
        "server RSS grew by {growth} bytes, over {bound}: slow members' backlogs are not bounded"
    );
    let dropped = crate::common::metric(addr, "chorus_frames_dropped_total").await;
    assert!(
        dropped >= ROOMS as f64,
        "frames dropped for slow members: {dropped}"
    );

    // The slow members read again: they drain, are resynced, and converge.
    for (room, slow, slow_doc, writer, writer_doc) in &mut rooms {
        let want = writer_doc.text();
        let mut resync_seen = false;
        let mut cursor_seen = false;
        let mut updates = 0;
        while slow_doc.text() != want || !cursor_seen {
            match slow.recv().await {
                ServerMessage::Update {
                    room: r,
                    data,
                    origin,
                } => {
                    assert_eq!(&r, room);
                    updates += 1;
                    resync_seen |= origin.is_none();
                    slow_doc.apply(&data.0);
                }
                ServerMessage::Cursor { cursors, .. } => {
                    cursor_seen |= cursors.iter().any(|c| c.id == writer.session);
                }
                _ => {}
            }
        }
        assert!(
            resync_seen,
            "{room}: converged without a resync ({updates} updates)"
        );
    }
    let resyncs = crate::common::metric(addr, "chorus_resyncs_total").await;
    assert!(resyncs >= ROOMS as f64, "resyncs: {resyncs}");
}

/// Frames that cannot be dropped (here `synced`, one per join) still stop
/// at the hard limit: a member that asks for 32 MB of documents and does
/// not read is closed with 4008 (slow consumer) instead of being buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_past_the_hard_limit_is_closed_with_4008() {
    const ROOMS: usize = 32;
    let srv = server(|c| {
        c.limits.outbound_buffer_bytes = 64 * 1024;
        // The smallest the configuration allows: buffer + one whole document.
        c.limits.max_doc_bytes = 1536 * 1024;
        c.limits.outbound_hard_limit_bytes = 64 * 1024 + 1536 * 1024;
        c.limits.max_bytes_per_sec = 0;
        c.limits.max_messages_per_sec = 0;
        c.limits.max_rooms_per_connection = 100;
    });
    let mut writer = Client::connect(srv.addr).await;
    let big = "z".repeat(1024 * 1024);
    for r in 0..ROOMS {
        let room = format!("big-{r}");
        writer.join(&room, &TestDoc::new()).await;
        writer
            .update_acked(&room, TestDoc::independent_insert(&big))
            .await;
    }
    let mut slow = Client::connect(srv.addr).await;
    for r in 0..ROOMS {
        slow.send(&ClientMessage::Join {
            room: format!("big-{r}"),
            sv: None,
            presence: None,
            rid: Some(r as u64),
        })
        .await;
    }
    // Let the server queue what it will before reading anything.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What was queued is read, then the close (none would come without
    // the limit: `closed` times out).
    assert_eq!(
        slow.closed().await,
        Some(chorus::protocol::close::SLOW_CONSUMER)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_merged_while_the_last_broadcast_is_being_written() {
    // A 12 MB update is more than the loopback socket of a member that does
    // not read can take, so that member's outbox keeps it: the broadcast is
    // still being written. Updates applied meanwhile wait (a one-minute
    // tick: no fallback during the test) and go out merged, in one
    // message, once the member has read it; sent at once they would be
    // five messages.
    const BIG: usize = 12 * 1024 * 1024;
    let srv = server(|c| {
        c.limits.tick_ms = 60_000;
        c.limits.max_frame_bytes = 2 * BIG;
        c.limits.max_bytes_per_sec = 0;
        c.limits.max_messages_per_sec = 0;
    });
    let (mut writer, mut stalled) = (
        Client::connect(srv.addr).await,
        Client::connect(srv.addr).await,
    );
    let (dw, ds) = (TestDoc::new(), TestDoc::new());
    writer.join("busy", &dw).await;
    stalled.join("busy", &ds).await;
    let send = |text: &str| ClientMessage::Update {
        room: "busy".into(),
        data: Bin(dw.push(text)),
        rid: None,
    };
    let mut big = send(&"x".repeat(BIG));
    if let ClientMessage::Update { rid, .. } = &mut big {
        *rid = Some(1);
    }
    writer.send(&big).await;
    // Applied (and so broadcast) once acknowledged; the stalled member
    // reads nothing for a while.
    writer
        .expect(|m| matches!(m, ServerMessage::Ack { rid: 1, .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for text in ["a", "b", "c", "d", "e"] {
        writer.send(&send(text)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut messages = 0;
    while ds.text() != dw.text() {
        if let ServerMessage::Update { data, origin, .. } = stalled
            .expect(|m| matches!(m, ServerMessage::Update { .. }))
            .await
        {
            assert_eq!(
                origin.as_deref(),
                Some(writer.session.as_str()),
                "one author: origin is set"
            );
            ds.apply(&data.0);
            messages += 1;
        }
    }
    assert_eq!(messages, 2, "the big update, then the five merged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_goes_out_at_once_when_the_last_one_was_written() {
    // With a one-minute tick, only the adaptive rule lets the second and
    // third updates out before the tick: each is sent as soon as the
    // previous broadcast left the outboxes (a fixed window would hold
    // them for a minute and `expect` would time out).
    let srv = server(|c| c.limits.tick_ms = 60_000);
    let (mut writer, mut reader) = (
        Client::connect(srv.addr).await,
        Client::connect(srv.addr).await,
    );
    let (dw, dr) = (TestDoc::new(), TestDoc::new());
    writer.join("quick", &dw).await;
    reader.join("quick", &dr).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(srv.addr).await;
        c.join("quick", &TestDoc::new()).await;
        others.push(c);
    }
    for text in ["a", "b", "c"] {
        writer
            .send(&ClientMessage::Update {
                room: "quick".into(),
                data: Bin(dw.push(text)),
                rid: None,
            })
            .await;
        // The others read too (their sockets are idle again).
        for c in &mut others {
            c.expect(|m| matches!(m, ServerMessage::Update { .. }))
                .await;
        }
        if let ServerMessage::Update { data, .. } = reader
            .expect(|m| matches!(m, ServerMessage::Update { .. }))
            .await
        {
            dr.apply(&data.0);
        }
        assert_eq!(dr.text(), dw.text(), "each update in a message of its own");
    }
    assert_eq!(dr.text(), "abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_send_budget_merges_updates_into_fewer_frames() {
    // Two members, 4 sends/s: after each broadcast the room holds the next
    // one for 2 / 4 = 0.5 s. The first update goes out at once; the five
    // sent right after it arrive as one message, about 0.5 s later (with no
    // budget each would be a message of its own, as the test above shows).
    let srv = server(|c| c.limits.room_max_sends_per_sec = 4);
    let (mut writer, mut reader) = (
        Client::connect(srv.addr).await,
        Client::connect(srv.addr).await,
    );
    let (dw, dr) = (TestDoc::new(), TestDoc::new());
    writer.join("budget", &dw).await;
    reader.join("budget", &dr).await;
    let send = |text: &str| ClientMessage::Update {
        room: "budget".into(),
        data: Bin(dw.push(text)),
        rid: None,
    };
    let mut receive = async || {
        let ServerMessage::Update { data, .. } = reader
            .expect(|m| matches!(m, ServerMessage::Update { .. }))
            .await
        else {
            unreachable!()
        };
        dr.apply(&data.0);
    };
    let t0 = Instant::now();
    writer.send(&send("a")).await;
    receive().await;
    assert_eq!(dr.text(), "a", "the first update alone");
    assert!(t0.elapsed() < Duration::from_millis(400), "and at once");
    for text in ["b", "c", "d", "e", "f"] {
        writer.send(&send(text)).await;
    }
    receive().await;
    assert_eq!(dr.text(), "abcdef", "the five merged into one message");
    let held = t0.elapsed();
    assert!(
        held >= Duration::from_millis(450),
        "held {held:?}, not 0.5 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_presence_is_coalesced_over_a_longer_window() {
    // One extra tick per member: with 5 members presence goes out every
    // 5 × 100 ms. Two cursor moves 150 ms apart (more than a tick) reach
    // the watcher in one batch; with the plain tick they would be two.
    let srv = server(|c| {
        c.limits.tick_ms = 100;
        c.limits.presence_members_per_tick = 1;
    });
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(srv.addr).await;
        c.join("big", &TestDoc::new()).await;
        clients.push(c);
    }
    let pos = relative_position();
    let cursor = || ClientMessage::Cursor {
        room: "big".into(),
        anchor: Some(Bin(pos.clone())),
        head: Some(Bin(pos.clone())),
        rid: None,
    };
    // Let the joins' presence settle, then open a window with a first move.
    let mut watcher = clients.remove(0);
    while watcher.try_recv(Duration::from_millis(800)).await.is_some() {}
    clients[0].send(&cursor()).await;
    watcher
        .expect(|m| matches!(m, ServerMessage::Cursor { .. }))
        .await;
    let (b, d) = (clients[1].session.clone(), clients[2].session.clone());
    clients[1].send(&cursor()).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    clients[2].send(&cursor()).await;
    let batch = watcher
        .expect(|m| matches!(m, ServerMessage::Cursor { .. }))
        .await;
    let ServerMessage::Cursor { cursors, .. } = batch else {
        unreachable!()
    };
    let ids: Vec<&str> = cursors.iter().map(|c| c.id.as_str()).collect();
    assert!(
        ids.contains(&b.as_str()) && ids.contains(&d.as_str()),
        "moves 150 ms apart in one batch: {ids:?}"
    );
}

/// An encoded Yjs relative position made by yrs (index 2 of "hello").
fn relative_position() -> Vec<u8> {
    use yrs::updates::encoder::Encode;
    use yrs::{Assoc, IndexedSequence, Transact};
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    yrs::Text::insert(&text, &mut txn, 0, "hello");
    text.sticky_index(&txn, 2, Assoc::After)
        .expect("index in range")
        .encode_v1()
}
