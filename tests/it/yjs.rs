//! [yjs] acceptance, Rust side: recorded y-protocols byte sequences and the
//! server's replies byte for byte, garbage and close codes, heartbeat,
//! awareness expiry, and a `/yjs` client sharing a room with a native one.
//! The stock-client suite (yjs 13, y-websocket 3) is `tests/interop/`, run by
//! `interop.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use chorus::protocol::native::{Bin, ClientMessage, ServerMessage};
use chorus::protocol::{close, yjs};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::common::{server, Client, TestDoc, WAIT};

// Recorded with yjs 13.6 / y-protocols 1.0 by `tests/interop/record.mjs`.
/// A sync update: client 1 inserts "hi" into text `t`.
const UPDATE_FRAME: &str = "00020c010101000401017402686900";
/// Sync step 1 of an empty document.
const STEP1_EMPTY: &str = "00000100";
/// Step 2 answering `STEP1_EMPTY` once the server holds `UPDATE_FRAME`.
const STEP2_FULL: &str = "00010c010101000401017402686900";
/// Sync step 1 of a peer that has client 1 up to clock 1 ("h").
const STEP1_PARTIAL: &str = "000003010101";
/// Step 2 answering `STEP1_PARTIAL`: only "i".
const STEP2_PARTIAL: &str = "00010a01010101840100016900";
/// The server's step 1 once it holds `UPDATE_FRAME`.
const SERVER_STEP1_AFTER_UPDATE: &str = "000003010102";
/// The server's step 1 for an empty room.
const SERVER_STEP1_EMPTY: &str = "00000100";
/// Awareness: client 7, clock 1, `{"user":{"name":"ann","color":"#f00"}}`.
const AWARENESS_SET: &str =
    "012a010701267b2275736572223a7b226e616d65223a22616e6e222c22636f6c6f72223a2223663030227d7d";
/// Awareness: client 7, clock 2, state null.
const AWARENESS_NULL: &str = "0108010702046e756c6c";
/// Query awareness.
const QUERY_AWARENESS: &str = "03";
/// Step 2 of an empty document (the update `[0, 0]`).
const STEP2_EMPTY: &str = "0001020000";
/// Awareness update with no entries (reply to a query in an empty room).
const AWARENESS_EMPTY: &str = "010100";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A raw y-protocols client over a real WebSocket.
pub struct YClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl YClient {
    /// Connects to `/yjs/{room}`.
    pub async fn connect(addr: SocketAddr, room: &str) -> YClient {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/yjs/{room}"))
            .await
            .expect("websocket connects");
        YClient { ws }
    }

    /// Connects to `path` (with query) and extra request headers.
    pub async fn connect_path(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> YClient {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://{addr}{path}")
            .into_client_request()
            .expect("request");
        for (k, v) in headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                    .expect("header name"),
                v.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        YClient { ws }
    }

    /// Sends one binary frame.
    pub async fn send(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// Next binary frame (panics after `WAIT` or on close).
    pub async fn recv(&mut self) -> Vec<u8> {
        self.maybe(WAIT).await.expect("a frame before the timeout")
    }

    /// Next binary frame within `within`, `None` on timeout or close.
    pub async fn maybe(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Binary(b)))) => return Some(b.to_vec()),
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Reads frames until one decodes to a message matching `pred`.
    pub async fn expect(&mut self, pred: impl Fn(&yjs::YjsMessage) -> bool) -> yjs::YjsMessage {
        loop {
            let frame = self.recv().await;
            let mut msgs = yjs::decode_frame(&frame).expect("server frame decodes");
            assert_eq!(msgs.len(), 1, "one message per frame");
            let m = msgs.remove(0);
            if pred(&m) {
                return m;
            }
        }
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("server closes before the timeout")
            {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sequences_get_byte_exact_replies() {
    let srv = server(|_| {});
    let mut a = YClient::connect(srv.addr, "rec").await;
    // On connect: step 1, no awareness (nobody has a state yet).
    assert_eq!(a.recv().await, hex(SERVER_STEP1_EMPTY));
    a.send(hex(STEP1_EMPTY)).await;
    assert_eq!(a.recv().await, hex(STEP2_EMPTY));
    a.send(hex(UPDATE_FRAME)).await;
    // A round trip, so the update is applied before the next join.
    a.send(hex(STEP1_EMPTY)).await;
    assert_eq!(a.recv().await, hex(STEP2_FULL));

    let mut b = YClient::connect(srv.addr, "rec").await;
    assert_eq!(b.recv().await, hex(SERVER_STEP1_AFTER_UPDATE));
    b.send(hex(STEP1_EMPTY)).await;
    assert_eq!(b.recv().await, hex(STEP2_FULL));
    b.send(hex(STEP1_PARTIAL)).await;
    assert_eq!(b.recv().await, hex(STEP2_PARTIAL));

    // Several messages in one frame: one reply per frame, in order.
    let mut c = YClient::connect(srv.addr, "rec").await;
    assert_eq!(c.recv().await, hex(SERVER_STEP1_AFTER_UPDATE));
    let mut frame = hex(STEP1_EMPTY);
    frame.extend(hex(STEP1_PARTIAL));
    frame.extend(hex(QUERY_AWARENESS));
    c.send(frame).await;
    assert_eq!(c.recv().await, hex(STEP2_FULL));
    assert_eq!(c.recv().await, hex(STEP2_PARTIAL));
    assert_eq!(c.recv().await, hex(AWARENESS_EMPTY));

    // Awareness is relayed byte for byte (the sender gets the echo too),
    // including a null state.
    a.send(hex(AWARENESS_SET)).await;
    assert_eq!(b.recv().await, hex(AWARENESS_SET));
    assert_eq!(a.recv().await, hex(AWARENESS_SET));
    a.send(hex(AWARENESS_NULL)).await;
    assert_eq!(b.recv().await, hex(AWARENESS_NULL));
    // A late joiner gets live states only: none now.
    let mut d = YClient::connect(srv.addr, "rec").await;
    assert_eq!(d.recv().await, hex(SERVER_STEP1_AFTER_UPDATE));
    assert_eq!(d.maybe(Duration::from_millis(200)).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_a_close_code_and_costs_nothing() {
    let srv = server(|_| {});
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated var-uint", vec![0x80]),
        ("truncated var-uint in sync type", vec![0, 0xff]),
        ("length past the frame", vec![0, 2, 5, 1, 2]),
        ("unknown message type", vec![9]),
        ("unknown sync type", vec![0, 7, 0]),
        (
            "100 MB claimed update",
            vec![0, 2, 0x80, 0x80, 0x80, 0x32, 1, 2],
        ),
        (
            "100 M claimed awareness entries",
            vec![1, 5, 0x80, 0xc2, 0xd7, 0x2f, 0],
        ),
        (
            "100 M claimed state vector entries",
            vec![0, 0, 5, 0x80, 0xc2, 0xd7, 0x2f, 0],
        ),
        ("var-uint over 53 bits", vec![0xff; 10]),
        (
            "good message then garbage",
            [hex(STEP1_EMPTY), vec![0, 1]].concat(),
        ),
        ("empty frame", vec![]),
        ("awareness state not JSON", vec![1, 5, 1, 1, 1, 1, b'{']),
    ];
    for (what, bytes) in cases {
        let mut c = YClient::connect(srv.addr, "garbage").await;
        c.send(bytes).await;
        assert_eq!(
            c.closed().await,
            Some(close::YJS_BAD_MESSAGE),
            "{what} closes with 4400"
        );
    }
    // A text frame is not y-protocols either.
    let mut c = YClient::connect(srv.addr, "garbage").await;
    c.ws.send(Message::Text("hello".into()))
        .await
        .expect("send");
    assert_eq!(c.closed().await, Some(close::YJS_BAD_MESSAGE));
    // The room is intact.
    let mut ok = YClient::connect(srv.addr, "garbage").await;
    assert_eq!(ok.recv().await, hex(SERVER_STEP1_EMPTY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_close_in_the_4400_range() {
    let srv = server(|c| {
        c.limits.max_frame_bytes = 1024;
        c.limits.max_doc_bytes = 64;
    });
    let long = "r".repeat(300);
    let mut c = YClient::connect(srv.addr, &long).await;
    assert_eq!(c.closed().await, Some(close::YJS_BAD_ROOM), "room too long");
    let mut c = YClient::connect(srv.addr, "").await;
    assert_eq!(c.closed().await, Some(close::YJS_BAD_ROOM), "empty room");

    let mut c = YClient::connect(srv.addr, "big").await;
    c.send(vec![0; 2000]).await;
    assert_eq!(
        c.closed().await,
        Some(close::YJS_TOO_LARGE),
        "frame too big"
    );

    let doc = Doc::with_client_id(5);
    let update = {
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, &"x".repeat(100));
        doc.transact()
            .encode_state_as_update_v1(&StateVector::default())
    };
    let mut c = YClient::connect(srv.addr, "big").await;
    c.send(yjs::sync_update(update)).await;
    assert_eq!(
        c.closed().await,
        Some(close::YJS_TOO_LARGE),
        "doc too large"
    );

    let mut c = YClient::connect(srv.addr, "big").await;
    c.send(yjs::sync_update(vec![3, 1, 2, 3])).await;
    assert_eq!(c.closed().await, Some(close::YJS_BAD_UPDATE), "bad update");

    // Query parameters are fine.
    let mut c = YClient::connect(srv.addr, "big?token=abc").await;
    assert_eq!(c.recv().await, hex(SERVER_STEP1_EMPTY));
}

#[test]
fn auth_denied_and_ids_match_y_protocols() {
    // y-protocols/auth writePermissionDenied(encoder, "no") after
    // writeVarUint(encoder, messageAuth).
    assert_eq!(yjs::auth_denied("no"), vec![2, 0, 2, b'n', b'o']);
    assert_eq!(
        yjs::decode_frame(&[2, 0, 2, b'n', b'o']).expect("decodes"),
        vec![yjs::YjsMessage::Auth(Some("no".into()))]
    );
}

/// Documents of Yjs 13 clients (32-bit client ids) and of yrs clients
/// (53-bit) go through the server unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ids_round_trip() {
    let srv = server(|_| {});
    let mut a = YClient::connect(srv.addr, "ids").await;
    a.recv().await;
    let mut expected = Vec::new();
    for id in [u64::from(u32::MAX), (1 << 53) - 1] {
        let doc = Doc::with_client_id(id);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "x");
        let u = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        a.send(yjs::sync_update(u)).await;
        expected.push((id, 1u32));
    }
    a.send(hex(STEP1_EMPTY)).await;
    a.expect(|m| matches!(m, yjs::YjsMessage::SyncStep2(_)))
        .await;
    let mut b = YClient::connect(srv.addr, "ids").await;
    b.send(yjs::sync_step1(&StateVector::default())).await;
    let m = b
        .expect(|m| matches!(m, yjs::YjsMessage::SyncStep2(_)))
        .await;
    let yjs::YjsMessage::SyncStep2(update) = m else {
        unreachable!()
    };
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&update).expect("decodes"))
        .expect("applies");
    let sv = doc.transact().state_vector();
    let mut got: Vec<(u64, u32)> = sv.iter().map(|(c, k)| (c.get(), *k)).collect();
    got.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_and_their_awareness_removed() {
    let srv = server(|c| {
        c.limits.heartbeat_ms = 50;
        c.limits.client_timeout_ms = 200;
    });
    let mut watcher = YClient::connect(srv.addr, "hb").await;
    watcher.recv().await;
    let mut silent = YClient::connect(srv.addr, "hb").await;
    silent.recv().await;
    silent.send(hex(AWARENESS_SET)).await;
    assert_eq!(watcher.recv().await, hex(AWARENESS_SET));
    // `silent` stops reading, so it answers no ping; `watcher` keeps
    // reading (tungstenite answers pings while reading) and sees the state
    // removed when the server drops `silent`.
    let gone = watcher
        .expect(|m| matches!(m, yjs::YjsMessage::Awareness(e) if e[0].json == "null"))
        .await;
    let yjs::YjsMessage::Awareness(e) = gone else {
        unreachable!()
    };
    assert_eq!((e[0].client, e[0].clock), (7, 2));
    assert_eq!(silent.closed().await, Some(close::TIMEOUT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_not_renewed_expires() {
    let srv = server(|c| c.limits.presence_ttl_ms = 400);
    let mut native = Client::connect(srv.addr).await;
    native.join("ttl", &TestDoc::new()).await;
    let mut a = YClient::connect(srv.addr, "ttl").await;
    a.send(hex(AWARENESS_SET)).await;
    let me = native.session.clone();
    let joined = native
        .expect(|m| matches!(m, ServerMessage::Presence { joined, .. } if joined.iter().any(|j| j.id != me)))
        .await;
    let ServerMessage::Presence { mut joined, .. } = joined else {
        unreachable!()
    };
    joined.retain(|j| j.id != me);
    assert_eq!(
        joined[0].state,
        // One presence model: `user.name` / `user.color` also at the top.
        json!({"user": {"name": "ann", "color": "#f00"}, "name": "ann", "color": "#f00"})
    );
    let who = joined[0].id.clone();
    // `a` stays connected but sends nothing more: its state expires.
    let started = std::time::Instant::now();
    native
        .expect(|m| matches!(m, ServerMessage::Presence { left, .. } if left.contains(&who)))
        .await;
    assert!(started.elapsed() < Duration::from_secs(3));
    let gone = a
        .expect(|m| matches!(m, yjs::YjsMessage::Awareness(e) if e.iter().any(|e| e.client == 7 && e.json == "null")))
        .await;
    drop(gone);
}

/// Native and `/yjs` members in one room: edits both ways, presence and
/// cursors both ways, and leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_and_yjs_clients_share_a_room() {
    let srv = server(|_| {});
    let mut n = Client::connect(srv.addr).await;
    let nd = TestDoc::new();
    n.join_with("mix", &nd, Some(json!({"name": "nat"}))).await;
    n.update_acked("mix", nd.push("native ")).await;

    let mut y = YClient::connect(srv.addr, "mix").await;
    let ydoc = Doc::with_client_id(42);
    y.send(yjs::sync_step1(&ydoc.transact().state_vector()))
        .await;
    let mut native_client = None;
    while ydoc.get_or_insert_text("t").get_string(&ydoc.transact()) != "native "
        || native_client.is_none()
    {
        match y.expect(|_| true).await {
            yjs::YjsMessage::SyncStep2(u) | yjs::YjsMessage::Update(u) => {
                ydoc.transact_mut()
                    .apply_update(Update::decode_v1(&u).expect("decodes"))
                    .expect("applies");
            }
            yjs::YjsMessage::Awareness(entries) => {
                for e in entries {
                    let state = e.state().expect("json");
                    if state.as_ref().and_then(|s| s.get("name")) == Some(&json!("nat")) {
                        native_client = Some(e.client);
                    }
                }
            }
            _ => {}
        }
    }
    // Yjs edit → native.
    let update = {
        let t = ydoc.get_or_insert_text("t");
        let before = ydoc.transact().state_vector();
        t.push(&mut ydoc.transact_mut(), "yjs");
        ydoc.transact().encode_diff_v1(&before)
    };
    y.send(yjs::sync_update(update)).await;
    n.sync_until("mix", &nd, "native yjs").await;

    // Yjs awareness with a cursor → native presence + native cursor.
    let anchor =
        json!({"type": null, "tname": null, "item": {"client": 42, "clock": 1}, "assoc": 0});
    let state = json!({"user": {"name": "ed"}, "cursor": {"anchor": anchor, "head": anchor}});
    y.send(yjs::awareness([(42, 1, state.to_string().as_str())]))
        .await;
    let me = n.session.clone();
    let p = n
        .expect(|m| matches!(m, ServerMessage::Presence { joined, .. } if joined.iter().any(|j| j.id != me)))
        .await;
    let ServerMessage::Presence { mut joined, .. } = p else {
        unreachable!()
    };
    joined.retain(|j| j.id != me);
    assert_eq!(
        joined[0].state,
        json!({"user": {"name": "ed"}, "name": "ed"})
    );
    let yid = joined[0].id.clone();
    let c = n
        .expect(|m| matches!(m, ServerMessage::Cursor { .. }))
        .await;
    let ServerMessage::Cursor { cursors, .. } = c else {
        unreachable!()
    };
    let expected_pos = yjs::position_from_json(&anchor).expect("position");
    assert_eq!(cursors[0].anchor, Some(Bin(expected_pos.clone())));
    assert_eq!(
        yjs::position_to_json(&expected_pos),
        Some(anchor.clone()),
        "binary ↔ JSON positions round-trip"
    );

    // Native cursor and typing → awareness of the native member.
    n.send(&ClientMessage::Cursor {
        room: "mix".into(),
        anchor: Some(Bin(expected_pos.clone())),
        head: None,
        rid: None,
    })
    .await;
    n.send(&ClientMessage::Typing {
        room: "mix".into(),
        on: true,
        rid: None,
    })
    .await;
    let native_client = native_client.expect("native member seen");
    let seen = y
        .expect(|m| {
            matches!(m, yjs::YjsMessage::Awareness(e) if e.iter().any(|e| {
                e.client == native_client && e.json.contains("typing") && e.json.contains("cursor")
            }))
        })
        .await;
    let yjs::YjsMessage::Awareness(entries) = seen else {
        unreachable!()
    };
    let e = entries
        .iter()
        .find(|e| e.client == native_client)
        .expect("entry");
    let state: Value = serde_json::from_str(&e.json).expect("json");
    assert_eq!(state["name"], json!("nat"));
    assert_eq!(state["typing"], json!(true));
    assert_eq!(state["cursor"]["anchor"], anchor);
    assert_eq!(state["cursor"]["head"], Value::Null);

    // The /yjs client leaves: the native side sees it go.
    drop(y);
    n.expect(|m| matches!(m, ServerMessage::Presence { left, .. } if left.contains(&yid)))
        .await;
    // The native member leaves: a /yjs client sees its state removed.
    let mut y2 = YClient::connect(srv.addr, "mix").await;
    y2.expect(|m| matches!(m, yjs::YjsMessage::Awareness(e) if e.iter().any(|e| e.client == native_client)))
        .await;
    n.close().await;
    y2.expect(|m| {
        matches!(m, yjs::YjsMessage::Awareness(e) if e.iter().any(|e| e.client == native_client && e.json == "null"))
    })
    .await;
}

/// A room only native members used so far keeps no awareness entries for
/// them; the first `/yjs` client still finds every native member, with its
/// typing state, in the awareness snapshot it gets on joining.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_yjs_client_sees_natives_already_present() {
    let srv = server(|_| {});
    let mut a = Client::connect(srv.addr).await;
    a.join_with("late", &TestDoc::new(), Some(json!({"name": "ann"})))
        .await;
    let mut b = Client::connect(srv.addr).await;
    b.join_with("late", &TestDoc::new(), Some(json!({"name": "bob"})))
        .await;
    a.send(&ClientMessage::Typing {
        room: "late".into(),
        on: true,
        rid: None,
    })
    .await;
    let a_id = a.session.clone();
    b.expect(|m| matches!(m, ServerMessage::Typing { id, on: true, .. } if *id == a_id))
        .await;

    let mut y = YClient::connect(srv.addr, "late").await;
    let seen = y
        .expect(|m| matches!(m, yjs::YjsMessage::Awareness(_)))
        .await;
    let yjs::YjsMessage::Awareness(entries) = seen else {
        unreachable!()
    };
    let states: Vec<Value> = entries
        .iter()
        .map(|e| serde_json::from_str(&e.json).expect("json"))
        .collect();
    let ann = states.iter().find(|s| s["name"] == json!("ann"));
    let bob = states.iter().find(|s| s["name"] == json!("bob"));
    assert_eq!(ann.map(|s| &s["typing"]), Some(&json!(true)), "{states:?}");
    assert!(bob.is_some(), "{states:?}");
}

/// Sanity check of the harness' own encoder use: the encoded update from
/// `yrs` applies in another doc.
#[test]
fn update_encoding_is_v1() {
    let doc = Doc::with_client_id(1);
    doc.get_or_insert_text("t")
        .insert(&mut doc.transact_mut(), 0, "hi");
    let u = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    assert_eq!(yjs::sync_update(u), hex(UPDATE_FRAME));
    let _ = StateVector::default().encode_v1();
}

/// Awareness entries of one y-protocols frame: (client, live).
fn awareness_entries(frame: &[u8]) -> Vec<(u64, bool)> {
    match yjs::decode_frame(frame)
        .expect("server frame decodes")
        .as_slice()
    {
        [yjs::YjsMessage::Awareness(entries)] => entries
            .iter()
            .map(|e| (e.client, e.json != "null"))
            .collect(),
        _ => Vec::new(),
    }
}

/// Big rooms over y-protocols (which has no member count and no paging):
/// a `/yjs` client is shown at most `presence_list_max_members` awareness
/// states, the ones present longest; a change to one not shown is sent to
/// nobody; when a shown one goes, the oldest waiting one is sent with its
/// removal. Native presence still counts everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_rooms_awareness_shows_the_states_present_longest() {
    const SHOWN: usize = 4;
    let srv = server(|c| {
        c.limits.presence_list_max_members = SHOWN;
        c.limits.presence_total_interval_ms = 10;
    });
    let state = |i: usize| format!("{{\"user\":{{\"name\":\"u{i}\"}}}}");
    let mut clients = Vec::new();
    for i in 0..10 {
        let mut c = YClient::connect(srv.addr, "big").await;
        c.send(yjs::awareness([(100 + i as u64, 1, state(i).as_str())]))
            .await;
        // The room applies the state before it answers this step 1 (one
        // connection's messages reach it in order): joins are ordered.
        c.send(hex(STEP1_EMPTY)).await;
        c.expect(|m| matches!(m, yjs::YjsMessage::SyncStep2(_)))
            .await;
        clients.push(c);
    }
    // A late joiner's snapshot: the first SHOWN states only.
    let mut late = YClient::connect(srv.addr, "big").await;
    let snapshot = loop {
        let entries = awareness_entries(&late.recv().await);
        if !entries.is_empty() {
            break entries;
        }
    };
    let first: Vec<(u64, bool)> = (100..100 + SHOWN as u64).map(|c| (c, true)).collect();
    assert_eq!(
        snapshot, first,
        "the snapshot shows the states present longest"
    );
    // The first member saw the shown states and nothing of the others.
    let mut seen = std::collections::BTreeSet::new();
    while let Some(frame) = clients[0].maybe(Duration::from_millis(300)).await {
        seen.extend(awareness_entries(&frame).into_iter().map(|(c, _)| c));
    }
    assert!(
        seen.iter().all(|c| *c < 100 + SHOWN as u64),
        "states beyond the first {SHOWN} were sent: {seen:?}"
    );
    // A waiting state's change is sent to nobody.
    clients[5]
        .send(yjs::awareness([(105, 2, "{\"user\":{\"name\":\"x\"}}")]))
        .await;
    assert!(
        late.maybe(Duration::from_millis(300)).await.is_none(),
        "a change of a state not shown was sent"
    );
    // A shown member leaves: its removal and the oldest waiting state
    // arrive together.
    drop(clients.remove(1));
    let promoted = loop {
        let entries = awareness_entries(&late.recv().await);
        if !entries.is_empty() {
            break entries;
        }
    };
    assert_eq!(promoted, vec![(101, false), (100 + SHOWN as u64, true)]);
    // Native presence counts every member (9 `/yjs` ones and itself).
    let mut native = Client::connect(srv.addr).await;
    native.join("big", &TestDoc::new()).await;
    let total = native
        .expect(|m| matches!(m, ServerMessage::Presence { total: Some(_), .. }))
        .await;
    let ServerMessage::Presence { total, .. } = total else {
        unreachable!()
    };
    assert_eq!(total, Some(10));
}

/// A stock y-websocket client reconnects with its awareness clock
/// unchanged, after the server announced its removal at clock + 1: every
/// client that saw the removal would ignore that state (y-protocols keeps a
/// removed state's clock), so the server refuses it and sends its sender
/// the removal; the stock client answers above that clock, which everyone
/// takes. Taken as it came, it would hold a place shown to joiners only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_back_at_its_removal_clock_is_refused_and_its_sender_told() {
    let srv = server(|_| {});
    let is = |live: bool, clock: u32| {
        move |m: &yjs::YjsMessage| {
            matches!(m, yjs::YjsMessage::Awareness(e)
                if e.iter().any(|e| e.client == 7 && e.clock == clock && (e.json != "null") == live))
        }
    };
    let mut watcher = YClient::connect(srv.addr, "again").await;
    let mut a = YClient::connect(srv.addr, "again").await;
    a.send(yjs::awareness([(7, 5, "{\"n\":1}")])).await;
    watcher.expect(is(true, 5)).await;
    drop(a);
    watcher.expect(is(false, 6)).await;
    let mut back = YClient::connect(srv.addr, "again").await;
    back.send(yjs::awareness([(7, 5, "{\"n\":1}")])).await;
    back.expect(is(false, 6)).await;
    let mut joiner = YClient::connect(srv.addr, "again").await;
    joiner.send(hex(STEP1_EMPTY)).await;
    joiner
        .expect(|m| matches!(m, yjs::YjsMessage::SyncStep2(_)))
        .await;
    // What a stock client does on its own removal: its state, clock + 1.
    back.send(yjs::awareness([(7, 7, "{\"n\":1}")])).await;
    watcher.expect(is(true, 7)).await;
    joiner.expect(is(true, 7)).await;
}
