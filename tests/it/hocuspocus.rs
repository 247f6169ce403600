//! `/hocuspocus` over a raw WebSocket: hostile frames, many documents on
//! one socket, frames before authentication. (The real provider is tested
//! in `interop`.)

use std::time::Duration;

use chorus::protocol::hocuspocus as hp;
use chorus::protocol::{close, yjs};
use yrs::StateVector;

use crate::common::{server, TestDoc};
use crate::yjs::YClient;

async fn connect(addr: std::net::SocketAddr) -> YClient {
    YClient::connect_path(addr, "/hocuspocus", &[]).await
}

/// Reads frames until one is `want` (panics after the client's timeout).
async fn expect_frame(c: &mut YClient, want: &[u8]) {
    loop {
        if c.recv().await == want {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_close_4400_and_the_room_is_intact() {
    let srv = server(|_| {});
    let mut named = hp::name_prefix("d");
    named.push(11);
    let mut huge_name = Vec::new();
    chorus::protocol::lib0::write_var_uint(&mut huge_name, 1 << 50);
    huge_name.extend_from_slice(b"abc");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty frame", vec![]),
        ("a document name claiming 2^50 bytes", huge_name),
        ("unknown message type", named),
        ("server-only SyncStatus", hp::sync_status("d", true)),
        ("truncated sync", hp::prefixed("d", &[0, 1, 9])),
        ("var-uint over 53 bits", vec![0xff; 12]),
    ];
    for (what, bytes) in cases {
        let mut c = connect(srv.addr).await;
        c.send(hp::auth_token("d", "")).await;
        expect_frame(&mut c, &hp::authenticated("d", false)).await;
        c.send(bytes).await;
        assert_eq!(c.closed().await, Some(close::YJS_BAD_MESSAGE), "{what}");
    }
    // A v4 ping is answered with a pong; the document still syncs.
    let mut c = connect(srv.addr).await;
    c.send(vec![hp::MSG_PING]).await;
    assert_eq!(c.recv().await, hp::PONG_FRAME);
    c.send(hp::auth_token("d", "")).await;
    expect_frame(&mut c, &hp::authenticated("d", false)).await;
    let doc = TestDoc::new();
    c.send(hp::prefixed("d", &yjs::sync_update(doc.push("ok"))))
        .await;
    expect_frame(&mut c, &hp::sync_status("d", true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_past_max_rooms_per_connection_are_denied_and_the_others_work() {
    let srv = server(|c| {
        c.limits.max_rooms_per_connection = 3;
        c.limits.max_messages_per_sec = 100_000;
    });
    let mut c = connect(srv.addr).await;
    for i in 0..3 {
        let name = format!("many-{i}");
        c.send(hp::auth_token(&name, "")).await;
        expect_frame(&mut c, &hp::authenticated(&name, false)).await;
    }
    // Two thousand more documents: each denied, nothing kept for them.
    for i in 3..2003 {
        c.send(hp::auth_token(&format!("many-{i}"), "")).await;
    }
    let mut denied = 0;
    while denied < 2000 {
        let frame = c.recv().await;
        if frame.windows(9).any(|w| w == b"too many ") {
            denied += 1;
        }
    }
    // The first three still sync.
    let doc = TestDoc::new();
    c.send(hp::prefixed("many-1", &yjs::sync_update(doc.push("x"))))
        .await;
    expect_frame(&mut c, &hp::sync_status("many-1", true)).await;
    c.send(hp::prefixed(
        "many-2",
        &yjs::sync_step1(&StateVector::default()),
    ))
    .await;
    let step2 = hp::prefixed("many-2", &[0, 1]);
    while !c.recv().await.starts_with(&step2) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_before_auth_are_bounded_and_replayed_after_it() {
    let srv = server(|c| {
        c.auth_secret = Some("hocuspocus-test-secret-32-bytes!".into());
        c.limits.max_queued_messages = 8;
    });
    let doc = TestDoc::new();
    // Queued frames are replayed once the Auth frame decides the document:
    // with no token and none on the connection, it is denied and they are
    // dropped; the socket stays open.
    let mut c = connect(srv.addr).await;
    for _ in 0..4 {
        c.send(hp::prefixed("pre", &yjs::sync_update(doc.push("y"))))
            .await;
    }
    c.send(hp::auth_token("pre", "")).await;
    expect_frame(&mut c, &hp::permission_denied("pre", "a token is required")).await;
    // A flood past max_queued_messages closes the socket (4413).
    for i in 0..9 {
        c.send(hp::prefixed(
            &format!("flood-{i}"),
            &yjs::sync_update(doc.push("z")),
        ))
        .await;
    }
    // Bounded: pings every heartbeat would keep `closed` reading forever.
    let code = tokio::time::timeout(Duration::from_secs(10), c.closed()).await;
    assert_eq!(code, Ok(Some(close::YJS_TOO_LARGE)), "closed 4413 in time");
    assert!(c.maybe(Duration::from_millis(50)).await.is_none());
}

/// An update that follows updates the room never got (a provider flushing
/// its offline edits to a server that lost the document, as after a restart
/// with the memory store) is refused for its document only: SyncStatus 0,
/// then the room's sync step 1, which the provider answers with a step 2
/// holding everything. The socket and its other documents stay open (it
/// used to close 4422 with every document on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_with_missing_dependencies_asks_for_them_and_keeps_the_socket() {
    let srv = server(|_| {});
    let mut c = connect(srv.addr).await;
    for name in ["gap", "beside"] {
        c.send(hp::auth_token(name, "")).await;
        expect_frame(&mut c, &hp::authenticated(name, false)).await;
    }
    let doc = TestDoc::new();
    let _never_sent = doc.push("before ");
    let offline = doc.push("offline");
    c.send(hp::prefixed("gap", &yjs::sync_update(offline)))
        .await;
    expect_frame(&mut c, &hp::sync_status("gap", false)).await;
    let step1 = hp::prefixed("gap", &yjs::sync_step1(&StateVector::default()));
    assert_eq!(c.recv().await, step1, "the room asks for its missing state");
    // The provider's answer: a step 2 with everything the room lacks.
    let state = {
        use yrs::{ReadTxn, Transact};
        doc.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    c.send(hp::prefixed("gap", &yjs::sync_step2(state))).await;
    expect_frame(&mut c, &hp::sync_status("gap", true)).await;
    // The other document on the socket was never disturbed.
    let other = TestDoc::new();
    c.send(hp::prefixed("beside", &yjs::sync_update(other.push("ok"))))
        .await;
    expect_frame(&mut c, &hp::sync_status("beside", true)).await;
    // The room holds the whole text, as a y-websocket client sees it.
    let mut y = YClient::connect(srv.addr, "gap").await;
    y.send(yjs::sync_step1(&StateVector::default())).await;
    let yjs::YjsMessage::SyncStep2(update) = y
        .expect(|m| matches!(m, yjs::YjsMessage::SyncStep2(_)))
        .await
    else {
        unreachable!("expect returns what matched");
    };
    let seen = TestDoc::new();
    seen.apply(&update);
    assert_eq!(seen.text(), "before offline");
}
