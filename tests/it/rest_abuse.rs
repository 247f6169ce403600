//! The REST side of "no client can hurt the others": the cap on live rooms,
//! the API rate limits, the paginated room list, room ids decoded the same
//! way on every route, `--allowed-origins` on the API, and updates with
//! missing dependencies refused on every path.

use std::time::{Duration, Instant};

use chorus::protocol::native::{ClientMessage, ServerMessage};
use chorus::protocol::yjs;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use crate::common::{metric, server, ChildServer, Client, TestDoc};
use crate::http::request;
use crate::yjs::YClient;

/// `GET /api/v1/rooms/{room}/doc` (room already encoded).
async fn doc(addr: std::net::SocketAddr, room: &str) -> crate::http::Resp {
    request(addr, "GET", &format!("/api/v1/rooms/{room}/doc"), &[], b"").await
}

async fn live_ids(addr: std::net::SocketAddr) -> Vec<String> {
    let r = request(addr, "GET", "/api/v1/rooms?limit=1000", &[], b"").await;
    assert_eq!(r.status, 200);
    r.json()["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_rooms_are_capped_longest_idle_evicted_first_then_refused() {
    let srv = server(|c| {
        c.limits.max_live_rooms = 3;
        c.limits.room_idle_ms = 600_000;
    });
    let mut ws = Client::connect(srv.addr).await;
    ws.join("busy-a", &TestDoc::new()).await;
    // Two idle rooms, "old" idle longer than "new"; "old" holds text.
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/old/update",
        &[],
        &TestDoc::new().insert(0, "kept"),
    )
    .await;
    assert_eq!(r.status, 200);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(doc(srv.addr, "new").await.status, 200);
    // Full: a fourth room evicts the longest-idle one ("old"), not "new".
    assert_eq!(doc(srv.addr, "third").await.status, 200);
    let live = live_ids(srv.addr).await;
    assert_eq!(live, ["busy-a", "new", "third"], "{live:?}");
    // "old" was stored before it left: reopening it (evicting "new") reads it back.
    let r = doc(srv.addr, "old").await;
    assert_eq!(r.json()["doc"]["t"], "kept", "{:?}", r.json());
    assert_eq!(live_ids(srv.addr).await, ["busy-a", "old", "third"]);

    // Every live room busy: the next one is refused, on every route.
    let mut ws2 = Client::connect(srv.addr).await;
    ws2.join("old", &TestDoc::new()).await;
    ws2.join("third", &TestDoc::new()).await;
    let r = doc(srv.addr, "fourth").await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (503, "room_unavailable")
    );
    match ws.try_join("fourth", &TestDoc::new()).await {
        Err(ServerMessage::Error { code, room, .. }) => {
            assert_eq!(code.as_str(), "room_unavailable");
            assert_eq!(room.as_deref(), Some("fourth"));
        }
        other => panic!("join of a fourth room: {other:?}"),
    }
    let mut y = YClient::connect(srv.addr, "fourth").await;
    assert_eq!(y.closed().await, Some(1013));
    assert_eq!(metric(srv.addr, "chorus_rooms_active_max").await, 3.0);
    assert!(metric(srv.addr, "chorus_rooms_refused_total").await >= 3.0);
    // The native session is still usable, and a freed slot is used.
    ws2.close().await;
    crate::common::eventually("a room turns idle and makes room", || async {
        doc(srv.addr, "fourth").await.status == 200
    })
    .await;
    assert_eq!(metric(srv.addr, "chorus_rooms_active_max").await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rate_limits_per_ip_and_per_credential() {
    let srv = server(|c| {
        c.trust_forwarded_for = true;
        c.api.api_requests_per_sec = 5;
        c.api.api_key_requests_per_sec = 3;
        c.api.api_requests_burst = 0;
    });
    let get = |ip: &'static str, key: Option<&'static str>| {
        let addr = srv.addr;
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let mut h = vec![("X-Forwarded-For", ip)];
            if let Some(a) = &auth {
                h.push(("Authorization", a.as_str()));
            }
            request(addr, "GET", "/api/v1/rooms/r/presence", &h, b"").await
        }
    };
    for _ in 0..5 {
        assert_eq!(get("10.0.0.1", None).await.status, 200);
    }
    let r = get("10.0.0.1", None).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry), "{retry}");
    // Another client IP (as the proxy says) has its own budget.
    assert_eq!(get("10.0.0.2", None).await.status, 200);
    // One credential from many IPs: 3 per second.
    for i in 0..3 {
        let ip: &'static str = ["10.1.0.1", "10.1.0.2", "10.1.0.3"][i];
        assert_eq!(get(ip, Some("key-1")).await.status, 200);
    }
    let r = get("10.1.0.4", Some("key-1")).await;
    assert_eq!((r.status, r.error_code().as_str()), (429, "rate_limited"));
    assert_eq!(get("10.1.0.5", Some("key-2")).await.status, 200);
    // The bucket refills.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(get("10.0.0.1", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_list_is_paginated_in_id_order() {
    let srv = server(|c| c.api.api_max_page = 3);
    for i in [4, 0, 3, 1, 2] {
        assert_eq!(doc(srv.addr, &format!("p{i}")).await.status, 200);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let url = match &cursor {
            Some(c) => format!("/api/v1/rooms?limit=2&cursor={c}"),
            None => "/api/v1/rooms?limit=2".to_owned(),
        };
        let r = request(srv.addr, "GET", &url, &[], b"").await;
        assert_eq!(r.status, 200);
        let body = r.json();
        let rooms = body["rooms"].as_array().unwrap();
        assert!(rooms.len() <= 2);
        seen.extend(rooms.iter().map(|r| r["id"].as_str().unwrap().to_owned()));
        pages += 1;
        assert!(pages <= 5, "pages never end: {seen:?}");
        match body.get("next_cursor") {
            Some(Value::String(c)) => cursor = Some(c.clone()),
            None => break,
            other => panic!("next_cursor: {other:?}"),
        }
    }
    assert_eq!(seen, ["p0", "p1", "p2", "p3", "p4"]);
    assert_eq!(pages, 3);
    // Default page: at most api_max_page.
    let r = request(srv.addr, "GET", "/api/v1/rooms", &[], b"").await;
    assert_eq!(r.json()["rooms"].as_array().unwrap().len(), 3);
    assert!(r.json()["next_cursor"].is_string());
    for bad in ["limit=0", "limit=4", "limit=x", "cursor=%25%25"] {
        let r = request(srv.addr, "GET", &format!("/api/v1/rooms?{bad}"), &[], b"").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (400, "bad_request"),
            "{bad}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_ids_are_decoded_the_same_way_on_every_route() {
    let srv = server(|_| {});
    let mut ws = Client::connect(srv.addr).await;
    let d = TestDoc::new();
    ws.join("doc:acme/x", &d).await;
    ws.update_acked("doc:acme/x", d.insert(0, "native ")).await;
    // REST reads and writes the room a native join named.
    let r = doc(srv.addr, "doc%3Aacme%2Fx").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"room": "doc:acme/x", "doc": {"t": "native "}})
    );
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/doc%3Aacme%2Fx/update",
        &[],
        &d.push("rest "),
    )
    .await;
    assert_eq!(r.status, 200);
    ws.sync_until("doc:acme/x", &d, "native rest ").await;
    // So does /yjs.
    let mut y = YClient::connect(srv.addr, "doc%3Aacme%2Fx").await;
    let ydoc = Doc::new();
    y.send(yjs::sync_step1(&StateVector::default())).await;
    let synced = async {
        while ydoc.get_or_insert_text("t").get_string(&ydoc.transact()) != "native rest " {
            if let yjs::YjsMessage::SyncStep2(u) | yjs::YjsMessage::Update(u) =
                y.expect(|_| true).await
            {
                ydoc.transact_mut()
                    .apply_update(Update::decode_v1(&u).unwrap())
                    .unwrap();
            }
        }
    };
    tokio::time::timeout(crate::common::WAIT, synced)
        .await
        .expect("/yjs/doc%3Aacme%2Fx serves the room doc:acme/x");
    assert_eq!(live_ids(srv.addr).await, ["doc:acme/x"]);
    // Not UTF-8 once decoded: refused, never mapped to U+FFFD.
    let r = doc(srv.addr, "%FF%FE").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_room"));
    let r = request(srv.addr, "POST", "/api/v1/rooms/a%FF/update", &[], b"").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_room"));
    let mut y = YClient::connect(srv.addr, "%FF%FE").await;
    assert_eq!(
        y.closed().await,
        Some(chorus::protocol::close::YJS_BAD_ROOM)
    );
    assert_eq!(live_ids(srv.addr).await, ["doc:acme/x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_apply_to_rest_and_sse_with_cors() {
    let srv = server(|c| c.allowed_origins = vec!["https://ok.example".into()]);
    let evil = [("Origin", "https://evil.example")];
    let ok = [("Origin", "https://ok.example")];
    for path in [
        "/api/v1/rooms/o/doc",
        "/api/v1/rooms/o/events",
        "/api/v1/rooms",
    ] {
        let r = request(srv.addr, "GET", path, &evil, b"").await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "origin_not_allowed"),
            "{path}"
        );
    }
    let r = request(srv.addr, "POST", "/api/v1/rooms/o/update", &evil, b"x").await;
    assert_eq!(r.status, 403);
    // Listed origin: served, with CORS headers; no Origin: served as before.
    let r = request(srv.addr, "GET", "/api/v1/rooms/o/doc", &ok, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
    let r = request(srv.addr, "GET", "/api/v1/rooms/o/doc", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Preflight.
    let pre = [
        ("Origin", "https://ok.example"),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ),
    ];
    let r = request(srv.addr, "OPTIONS", "/api/v1/rooms/o/update", &pre, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let allow = r
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        allow.contains("authorization") && allow.contains("content-type"),
        "{allow}"
    );
    let mut pre_evil = pre;
    pre_evil[0].1 = "https://evil.example";
    let r = request(
        srv.addr,
        "OPTIONS",
        "/api/v1/rooms/o/update",
        &pre_evil,
        b"",
    )
    .await;
    assert_eq!(r.status, 403);
}

/// An update by client 7 of text `t` whose structs start at clock 1
/// (`gap`), and the clock-0 struct it follows (`dep`, a map entry: the gap
/// update has no origin pointing at it, only the clock).
fn gap_update() -> (Vec<u8>, Vec<u8>) {
    let c = Doc::with_client_id(7);
    let m = c.get_or_insert_map("m");
    let t = c.get_or_insert_text("t");
    let empty = c.transact().state_vector();
    yrs::Map::insert(&m, &mut c.transact_mut(), "k", 1);
    let dep = c.transact().encode_diff_v1(&empty);
    let after_dep = c.transact().state_vector();
    t.insert(&mut c.transact_mut(), 0, "ghost");
    let gap = c.transact().encode_diff_v1(&after_dep);
    (gap, dep)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_with_missing_dependencies_are_refused_on_every_path() {
    let srv = server(|_| {});
    let (gap, dep) = gap_update();
    // REST.
    let r = request(srv.addr, "POST", "/api/v1/rooms/g/update", &[], &gap).await;
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (422, "missing_dependencies")
    );
    assert_eq!(doc(srv.addr, "g").await.json()["doc"].get("t"), None);
    // Native.
    let mut ws = Client::connect(srv.addr).await;
    ws.join("g", &TestDoc::new()).await;
    let rid = ws.send_update("g", gap.clone()).await;
    match ws
        .expect(|m| matches!(m, ServerMessage::Error { .. } | ServerMessage::Ack { .. }))
        .await
    {
        ServerMessage::Error { code, rid: r, .. } => {
            assert_eq!(code.as_str(), "missing_dependencies");
            assert_eq!(r, Some(rid));
        }
        other => panic!("gap update over /ws: {other:?}"),
    }
    ws.send(&ClientMessage::Ping { rid: Some(5) }).await;
    ws.expect(|m| matches!(m, ServerMessage::Pong { .. })).await;
    // /yjs: not applied either, but the socket stays open (a close in
    // 4400..=4499 would stop y-websocket for good): the room sends its
    // sync step 1, which a Yjs client answers with everything it has.
    let mut y = YClient::connect(srv.addr, "g").await;
    y.expect(|m| matches!(m, yjs::YjsMessage::SyncStep1(_)))
        .await;
    y.send(yjs::sync_update(gap.clone())).await;
    let asked = y
        .expect(|m| matches!(m, yjs::YjsMessage::SyncStep1(_)))
        .await;
    assert_eq!(
        asked,
        yjs::YjsMessage::SyncStep1(yrs::StateVector::default()),
        "the room asks for its missing state"
    );
    assert_eq!(doc(srv.addr, "g").await.json()["doc"].get("t"), None);
    y.send(yjs::sync_step2(dep.clone())).await;
    y.send(yjs::sync_update(gap.clone())).await;
    crate::common::eventually("the /yjs client's answer is applied", || async {
        doc(srv.addr, "g").await.json()["doc"]["t"] == "ghost"
    })
    .await;
    // Over REST, once what it depends on is there, it is accepted.
    let r = request(srv.addr, "POST", "/api/v1/rooms/g2/update", &[], &gap).await;
    assert_eq!(r.status, 422);
    let r = request(srv.addr, "POST", "/api/v1/rooms/g2/update", &[], &dep).await;
    assert_eq!(r.status, 200);
    let r = request(srv.addr, "POST", "/api/v1/rooms/g2/update", &[], &gap).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(doc(srv.addr, "g2").await.json()["doc"]["t"], "ghost");
}

/// The issue's acceptance, fast: 2 000 distinct rooms requested over REST
/// from one IP, as fast as one client goes. Past the rate limit the answers
/// are 429; live rooms never exceed the cap; RSS stays bounded.
/// (`CHORUS_ABUSE_ROOMS=100000` runs the full number.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_distinct_rooms_over_rest_stay_bounded() {
    let n: usize = std::env::var("CHORUS_ABUSE_ROOMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let (cap, rate, burst) = (20usize, 50u32, 50u32);
    let srv = ChildServer::start(&[
        "--store",
        "memory",
        "--max-live-rooms",
        &cap.to_string(),
        "--api-requests-per-sec",
        &rate.to_string(),
        "--api-requests-burst",
        &burst.to_string(),
    ]);
    let rss0 = srv.rss_bytes();
    let start = Instant::now();
    let (mut ok, mut limited, mut peak_rss) = (0u64, 0u64, rss0);
    // Rooms with long ids, as in the issue's second try.
    let pad = "x".repeat(200);
    for i in 0..n {
        let r = doc(srv.addr, &format!("{pad}-{i}")).await;
        match r.status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(r.error_code(), "rate_limited");
                assert!(r.header("retry-after").is_some());
            }
            s => panic!("request {i}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
        if i % 500 == 0 {
            peak_rss = peak_rss.max(srv.rss_bytes());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    peak_rss = peak_rss.max(srv.rss_bytes());
    let allowed = f64::from(burst) + f64::from(rate) * secs + 5.0;
    let live_max = metric(srv.addr, "chorus_rooms_active_max").await;
    eprintln!(
        "{n} rooms in {secs:.1} s: {ok} ok, {limited} limited; live max {live_max}; \
         RSS {} → peak {} MiB",
        rss0 >> 20,
        peak_rss >> 20
    );
    assert!(limited > 0, "no 429 at {:.0} req/s", n as f64 / secs);
    assert!(
        (ok as f64) <= allowed,
        "{ok} answered, rate allows {allowed:.0}"
    );
    assert!(live_max <= cap as f64, "live rooms reached {live_max}");
    assert!(metric(srv.addr, "chorus_rooms_active").await <= cap as f64);
    assert!(
        peak_rss < rss0 + (64 << 20),
        "RSS grew from {} to {} MiB",
        rss0 >> 20,
        peak_rss >> 20
    );
}

/// A Yjs client whose pending structs depend on updates nobody sent
/// answers every sync step 1 with a step 2 holding them again: the room
/// must not ask it again while its own state is unchanged (that would loop
/// for ever, bounded only by the message rate). Once what they depend on
/// arrives, the client's update is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yjs_client_with_unsendable_pending_structs_is_not_asked_in_a_loop() {
    let srv = server(|_| {});
    let (gap, dep) = gap_update();
    let mut y = YClient::connect(srv.addr, "loop").await;
    y.expect(|m| matches!(m, yjs::YjsMessage::SyncStep1(_)))
        .await;
    y.send(yjs::sync_update(gap.clone())).await;
    let mut asked = 0;
    // As a Yjs client does: every step 1 is answered with a step 2 that
    // holds the pending structs.
    for _ in 0..40 {
        let step1 = async {
            while let Some(frame) = y.maybe(Duration::from_millis(300)).await {
                if yjs::decode_frame(&frame)
                    .expect("frame decodes")
                    .iter()
                    .any(|m| matches!(m, yjs::YjsMessage::SyncStep1(_)))
                {
                    return true;
                }
            }
            false
        };
        if !step1.await {
            break;
        }
        asked += 1;
        y.send(yjs::sync_step2(gap.clone())).await;
    }
    eprintln!("asked for the missing updates {asked} time(s)");
    assert!(
        asked <= 2,
        "asked {asked} times: the room and the client loop"
    );
    // Someone sends what the gap follows: the client's next try is applied.
    let r = request(srv.addr, "POST", "/api/v1/rooms/loop/update", &[], &dep).await;
    assert_eq!(r.status, 200);
    y.send(yjs::sync_update(gap.clone())).await;
    crate::common::eventually("the pending structs applied", || async {
        doc(srv.addr, "loop").await.json()["doc"]["t"] == "ghost"
    })
    .await;
}

/// A request body sent a byte at a time holds its connection at most
/// `--api-body-timeout-ms`: then 408 `body_timeout` and the connection is
/// closed (before, it stayed open for good: a handful of such clients per
/// worker held requests forever). A body that arrives in time is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_a_byte_at_a_time_is_cut_off() {
    let srv = server(|c| c.api.api_body_timeout_ms = 600);
    // Plain, and with WebSocket upgrade headers (such a request is served
    // by the upgrade path, which feeds the body to the same handler).
    for extra in ["", "Upgrade: websocket\r\nConnection: Upgrade\r\n"] {
        cut_off(srv.addr, extra).await;
    }
    // A body that arrives in time is served as before.
    let ok = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/slow/events",
        &[("content-type", "application/json")],
        br#"{"name": "n", "data": 1}"#,
    )
    .await;
    assert_eq!(ok.status, 202, "{}", String::from_utf8_lossy(&ok.body));
}

/// Sends a POST head (with `extra` headers) and its body a byte at a time
/// until the server answers 408 `body_timeout` and closes.
async fn cut_off(addr: std::net::SocketAddr, extra: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/rooms/slow/events HTTP/1.1\r\nHost: x\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still open after 10 s; read {:?}",
            String::from_utf8_lossy(&got)
        );
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            // Another byte of the body, as a slow client would.
            Err(_) => {
                let _ = s.write_all(b" ").await;
            }
        }
    };
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{extra:?}: {text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(closed >= Duration::from_millis(500), "cut after {closed:?}");
    assert!(closed < Duration::from_secs(3), "cut after {closed:?}");
}
