//! Supervised rooms: a room made to panic (the test-only `--fault-panic`
//! hook) is replaced by a fresh one loaded from the store; its members are
//! closed with 1013 and resync when they come back; no acknowledged update
//! is lost; the other rooms of the same arbiter keep working.

use std::time::{Duration, Instant};

use chorus::config::FaultPanic;
use chorus::protocol::native::ServerMessage;
use chorus::protocol::{close, yjs};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, Text, Transact, Update};

use crate::common::{http_get, metric, server, Client, TestDoc, WAIT};
use crate::http::request;
use crate::yjs::YClient;

/// The text `t` of a room as the REST API serves it.
async fn rest_text(addr: std::net::SocketAddr, room: &str) -> String {
    let (status, body) = http_get(addr, &format!("/api/v1/rooms/{room}/doc")).await;
    assert_eq!(status, 200, "GET doc: {body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON document");
    json["doc"]["t"].as_str().unwrap_or("").to_owned()
}

fn ytext(doc: &Doc) -> String {
    doc.get_or_insert_text("t").get_string(&doc.transact())
}

fn ypush(doc: &Doc, s: &str) -> Vec<u8> {
    let t = doc.get_or_insert_text("t");
    let before = doc.transact().state_vector();
    t.push(&mut doc.transact_mut(), s);
    doc.transact().encode_diff_v1(&before)
}

fn yapply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).expect("update decodes"))
        .expect("update applies");
}

/// The y-protocols handshake of a (re)connecting client: its step 1, the
/// server's step 2 applied, the server's step 1 answered with what the
/// server lacks.
async fn yjs_sync(y: &mut YClient, doc: &Doc) {
    y.send(yjs::sync_step1(&doc.transact().state_vector()))
        .await;
    let (mut got_step2, mut got_step1) = (false, false);
    while !(got_step1 && got_step2) {
        match y.expect(|_| true).await {
            yjs::YjsMessage::SyncStep2(u) => {
                yapply(doc, &u);
                got_step2 = true;
            }
            yjs::YjsMessage::Update(u) => yapply(doc, &u),
            yjs::YjsMessage::SyncStep1(sv) => {
                y.send(yjs::sync_step2(doc.transact().encode_diff_v1(&sv)))
                    .await;
                got_step1 = true;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_panics_mid_edit_restarts_from_the_store() {
    const ROOM: &str = "sup-edit";
    // One room thread: the other room shares the arbiter of the one that
    // panics. The 6th update applied to ROOM panics inside yrs'
    // transaction, after yrs applied it.
    let srv = server(|c| {
        c.room_threads = 1;
        c.fault_panic = Some(FaultPanic::parse(&format!("apply:6:{ROOM}")).expect("spec"));
    });
    let mut other = Client::connect(srv.addr).await;
    let od = TestDoc::new();
    other.join("sup-other", &od).await;
    other.update_acked("sup-other", od.push("before ")).await;

    let mut n = Client::connect(srv.addr).await;
    let nd = TestDoc::new();
    n.join(ROOM, &nd).await;
    let mut y = YClient::connect(srv.addr, ROOM).await;
    let yd = Doc::with_client_id(42);
    yjs_sync(&mut y, &yd).await;

    // Five updates applied: three acked (native), two from /yjs (seen by
    // the native member, so applied).
    let mut acked = Vec::new();
    for s in ["n1 ", "n2 "] {
        n.update_acked(ROOM, nd.push(s)).await;
        acked.push(s);
    }
    for s in ["y1 ", "y2 "] {
        y.send(yjs::sync_update(ypush(&yd, s))).await;
    }
    while !(nd.text().contains("y1") && nd.text().contains("y2")) {
        let m = n
            .expect(|m| matches!(m, ServerMessage::Update { .. }))
            .await;
        if let ServerMessage::Update { data, .. } = m {
            nd.apply(&data.0);
        }
    }
    n.update_acked(ROOM, nd.push("n3 ")).await;
    acked.extend(["y1 ", "y2 ", "n3 "]);

    // The 6th panics inside the transaction: the room dies.
    let t0 = Instant::now();
    n.send_update(ROOM, nd.push("poison ")).await;
    let closed = |code| assert_eq!(code, Ok(Some(close::TRY_AGAIN_LATER)), "closed with 1013");
    closed(tokio::time::timeout(WAIT, n.closed()).await);
    closed(tokio::time::timeout(WAIT, y.closed()).await);
    let closed_after = t0.elapsed();

    // The room answers again: a join and an acked update on the same id.
    let mut c = Client::connect(srv.addr).await;
    let cd = TestDoc::new();
    c.try_join(ROOM, &cd).await.expect("the room answers again");
    c.update_acked(ROOM, cd.push("c1 ")).await;
    let restarted_after = t0.elapsed();
    eprintln!(
        "panic → members closed: {closed_after:?}; panic → join + acked update: {restarted_after:?}"
    );
    assert!(
        restarted_after < Duration::from_secs(1),
        "restart took {restarted_after:?}"
    );
    // The new room holds what was stored, not the half-applied document.
    let fresh = cd.text();
    for s in &acked {
        assert!(fresh.contains(s), "acked {s:?} lost: {fresh:?}");
    }
    assert!(
        !fresh.contains("poison"),
        "the update whose transaction panicked is served: {fresh:?}"
    );
    assert!(!rest_text(srv.addr, ROOM).await.contains("poison"));

    // The other room on the same arbiter kept working, its member untouched.
    other.update_acked("sup-other", od.push("after")).await;
    assert_eq!(rest_text(srv.addr, "sup-other").await, "before after");

    // The clients come back (as theirs would: 1013 is transient) and resync
    // from their state vectors; the native author resends its update.
    let mut n = Client::connect(srv.addr).await;
    n.join(ROOM, &nd).await;
    let mut y = YClient::connect(srv.addr, ROOM).await;
    yjs_sync(&mut y, &yd).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rest = rest_text(srv.addr, ROOM).await;
        if rest == nd.text() && rest == ytext(&yd) && rest.contains("poison") {
            for s in acked.iter().chain(&["c1 "]) {
                assert!(rest.contains(s), "acked {s:?} lost: {rest:?}");
            }
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no convergence: rest {rest:?}, native {:?}, yjs {:?}",
            nd.text(),
            ytext(&yd)
        );
        if let Some(ServerMessage::Update { data, .. }) = n
            .maybe(Duration::from_millis(20), |m| {
                matches!(m, ServerMessage::Update { .. })
            })
            .await
        {
            nd.apply(&data.0);
        }
        if let Some(frame) = y.maybe(Duration::from_millis(20)).await {
            for m in yjs::decode_frame(&frame).expect("decodes") {
                if let yjs::YjsMessage::Update(u) | yjs::YjsMessage::SyncStep2(u) = m {
                    yapply(&yd, &u);
                }
            }
        }
    }
    assert_eq!(metric(srv.addr, "chorus_rooms_restarted_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_room_handler_restarts_the_room() {
    const ROOM: &str = "sup-handler";
    let srv = server(|c| {
        c.room_threads = 1;
        c.fault_panic = Some(FaultPanic::parse(&format!("handler:3:{ROOM}")).expect("spec"));
    });
    let mut member = Client::connect(srv.addr).await;
    member.join(ROOM, &TestDoc::new()).await;
    let path = format!("/api/v1/rooms/{ROOM}/update");
    for s in ["one ", "two "] {
        let r = request(
            srv.addr,
            "POST",
            &path,
            &[],
            &TestDoc::independent_insert(s),
        )
        .await;
        assert_eq!(r.status, 200);
    }
    // The third panics in the handler, after it was applied.
    let r = request(
        srv.addr,
        "POST",
        &path,
        &[],
        &TestDoc::independent_insert("three"),
    )
    .await;
    assert_eq!(r.status, 503, "the room died before answering");
    let code = tokio::time::timeout(WAIT, member.closed()).await;
    assert_eq!(code, Ok(Some(close::TRY_AGAIN_LATER)), "closed with 1013");
    // Restarted from the store: both stored updates, not the third.
    let text = rest_text(srv.addr, ROOM).await;
    assert!(text.contains("one ") && text.contains("two "), "{text:?}");
    assert!(!text.contains("three"), "{text:?}");
    assert_eq!(metric(srv.addr, "chorus_rooms_restarted_total").await, 1.0);
}
