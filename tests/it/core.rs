//! [core] acceptance: convergence, multiplexing, presence, bad input,
//! eviction, shutdown.

use std::time::Duration;

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
    let srv = server(|_| {});
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
    let pos = {
        use yrs::updates::encoder::Encode;
        use yrs::{Assoc, IndexedSequence, Transact};
        let doc = yrs::Doc::new();
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        yrs::Text::insert(&text, &mut txn, 0, "hello");
        text.sticky_index(&txn, 2, Assoc::After)
            .expect("index in range")
            .encode_v1()
    };
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
