//! The HTTP API against a running server: REST, SSE, long poll, NDJSON,
//! triggers, webhooks, errors, metrics, and the OpenAPI document.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use chorus::protocol::native::{ClientMessage, ServerMessage};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{eventually, http_get, server, Client, TestDoc, WAIT};

/// A response: status, lowercase headers, body.
pub(crate) struct Resp {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Resp {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One HTTP/1.1 request with `Connection: close`; de-chunks the body.
pub(crate) async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("tcp connects");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("response read");
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body).0;
    }
    Resp {
        status,
        headers,
        body,
    }
}

/// Decodes complete chunks; returns the data and how many bytes were used.
fn dechunk(mut raw: &[u8]) -> (Vec<u8>, usize) {
    let total = raw.len();
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("chunk size");
        if size == 0 || raw.len() < eol + 2 + size + 2 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    (out, total - raw.len())
}

/// A streaming response (SSE / NDJSON) read as it arrives.
struct Streamed {
    s: TcpStream,
    raw: Vec<u8>,
    text: String,
    pub(crate) status: u16,
}

impl Streamed {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Streamed {
        let mut s = TcpStream::connect(addr).await.expect("tcp connects");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let split = loop {
            if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("headers in time")
                .unwrap();
            assert!(n > 0, "closed before headers");
            raw.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        assert!(head.to_ascii_lowercase().contains("chunked"), "{head}");
        let raw = raw[split + 4..].to_vec();
        Streamed {
            s,
            raw,
            text: String::new(),
            status,
        }
    }

    /// Reads until `text` holds `sep`; returns the part before it.
    async fn until(&mut self, sep: &str) -> String {
        let mut buf = [0u8; 4096];
        loop {
            let (data, used) = dechunk(&self.raw);
            self.raw.drain(..used);
            self.text.push_str(&String::from_utf8(data).unwrap());
            if let Some(p) = self.text.find(sep) {
                let part = self.text[..p].to_owned();
                self.text.drain(..p + sep.len());
                return part;
            }
            let n = tokio::time::timeout(WAIT, self.s.read(&mut buf))
                .await
                .expect("stream data in time")
                .unwrap();
            assert!(n > 0, "stream closed; have {:?}", self.text);
            self.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// Next SSE event (comments skipped): (id, event, data JSON).
    async fn sse_event(&mut self) -> (Option<u64>, String, Value) {
        loop {
            let block = self.until("\n\n").await;
            let (mut id, mut event, mut data) = (None, String::new(), None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v).expect("data is JSON"));
                }
            }
            if let Some(data) = data {
                return (id, event, data);
            }
        }
    }

    /// Next non-empty NDJSON line.
    async fn ndjson(&mut self) -> Value {
        loop {
            let line = self.until("\n").await;
            if !line.trim().is_empty() {
                return serde_json::from_str(&line).expect("line is JSON");
            }
        }
    }
}

fn api_server(tweak: impl FnOnce(&mut chorus::config::Config)) -> chorus::http::BackgroundServer {
    server(|c| {
        c.api.poll_timeout_ms = 300;
        c.api.sse_heartbeat_ms = 200;
        tweak(c);
    })
}

fn decode_update(event: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(event["update"].as_str().expect("update field"))
        .expect("base64")
}

#[tokio::test]
async fn http_update_reaches_ws_client_and_document_reads_back() {
    let srv = api_server(|_| {});
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("r1", &doc).await;
    let author = TestDoc::new();
    let update = author.insert(0, "hello");
    let r = request(srv.addr, "POST", "/api/v1/rooms/r1/update", &[], &update).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    ws.sync_until("r1", &doc, "hello").await;

    let r = request(srv.addr, "GET", "/api/v1/rooms/r1/doc", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["doc"]["t"], "hello");
    let r = request(srv.addr, "GET", "/api/v1/rooms/r1/update", &[], b"").await;
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let fresh = TestDoc::new();
    fresh.apply(&r.body);
    assert_eq!(fresh.text(), "hello");

    let r = request(srv.addr, "GET", "/api/v1/rooms", &[], b"").await;
    let rooms = r.json()["rooms"].as_array().cloned().unwrap();
    let r1 = rooms.iter().find(|x| x["id"] == "r1").expect("r1 listed");
    assert_eq!(r1["members"], 1);
    assert!(r1["doc_bytes"].as_u64().unwrap() > 0);

    ws.send(&ClientMessage::Presence {
        room: "r1".into(),
        state: json!({ "name": "Ada" }),
        rid: None,
    })
    .await;
    eventually("presence visible over HTTP", || async {
        let r = request(srv.addr, "GET", "/api/v1/rooms/r1/presence", &[], b"").await;
        r.json()["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["state"]["name"] == "Ada"))
    })
    .await;
}

#[tokio::test]
async fn ws_edit_reaches_sse_ndjson_and_long_poll() {
    let srv = api_server(|c| c.api.poll_timeout_ms = 1_500);
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("r2", &doc).await;
    let mut sse = Streamed::open(srv.addr, "/api/v1/rooms/r2/events", &[]).await;
    assert_eq!(sse.status, 200);
    let mut nd = Streamed::open(srv.addr, "/api/v1/rooms/r2/stream", &[]).await;
    let addr = srv.addr;
    let poller =
        tokio::spawn(async move { request(addr, "GET", "/api/v1/rooms/r2/poll", &[], b"").await });
    // Let the poll subscribe before the edit (it would otherwise wait for the next one).
    eventually("poller subscribed", || async {
        crate::common::metric(addr, "chorus_subscribers ").await >= 3.0
    })
    .await;
    ws.update_acked("r2", doc.insert(0, "hi")).await;

    let (id, kind, data) = sse.sse_event().await;
    assert_eq!(kind, "update");
    assert_eq!(id, data["seq"].as_u64());
    let mirror = TestDoc::new();
    mirror.apply(&decode_update(&data));
    assert_eq!(mirror.text(), "hi");

    let line = nd.ndjson().await;
    assert_eq!(line["type"], "update");
    assert_eq!(line["seq"], data["seq"]);

    let r = poller.await.unwrap();
    assert_eq!(r.status, 200);
    let body = r.json();
    assert_eq!(body["events"][0]["type"], "update");
    assert_eq!(body["seq"], data["seq"]);

    // Nothing new after that seq: the poll is held, then 204.
    let path = format!("/api/v1/rooms/r2/poll?since={}", body["seq"]);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(8),
        request(srv.addr, "GET", &path, &[], b""),
    )
    .await;
    let r = r.expect("poll answers within its timeout");
    assert_eq!(r.status, 204);
    assert!(started.elapsed() >= Duration::from_millis(1_000));
}

#[tokio::test]
async fn sse_resume_with_last_event_id_gets_exactly_what_was_missed() {
    let srv = api_server(|c| c.api.event_window = 8);
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("r3", &doc).await;
    let mut sse = Streamed::open(srv.addr, "/api/v1/rooms/r3/events", &[]).await;
    ws_event(srv.addr, &mut ws, "r3", 0).await;
    let (id, _, data) = sse.sse_event().await;
    assert_eq!(data["data"]["i"], 0);
    drop(sse);
    for i in 1..=3 {
        ws_event(srv.addr, &mut ws, "r3", i).await;
    }
    let last = id.unwrap().to_string();
    let mut sse = Streamed::open(
        srv.addr,
        "/api/v1/rooms/r3/events",
        &[("Last-Event-ID", &last)],
    )
    .await;
    for i in 1..=3u64 {
        let (eid, kind, data) = sse.sse_event().await;
        assert_eq!(kind, "event");
        assert_eq!(data["data"]["i"], i);
        assert_eq!(eid, Some(id.unwrap() + i), "contiguous ids");
    }
    // Nothing more than what was missed: the next one is new.
    ws_event(srv.addr, &mut ws, "r3", 4).await;
    let (_, _, data) = sse.sse_event().await;
    assert_eq!(data["data"]["i"], 4);

    // Outside the window (8 events): a documented reset.
    for i in 5..20 {
        ws_event(srv.addr, &mut ws, "r3", i).await;
    }
    let mut sse = Streamed::open(
        srv.addr,
        "/api/v1/rooms/r3/events",
        &[("Last-Event-ID", &last)],
    )
    .await;
    let (_, kind, data) = sse.sse_event().await;
    assert_eq!(kind, "reset");
    assert_eq!(data["reason"], "outside_window");
}

/// A native client broadcasts event `tick` with `{i}`, then makes sure the
/// room has recorded it before the test goes on.
async fn ws_event(addr: SocketAddr, ws: &mut Client, room: &str, i: u64) {
    let before = room_seq(addr, room).await;
    ws.send(&ClientMessage::Event {
        room: room.into(),
        name: "tick".into(),
        data: json!({ "i": i }),
        rid: None,
    })
    .await;
    eventually("event recorded", || async {
        room_seq(addr, room).await > before
    })
    .await;
}

/// The room's latest event sequence number, from the room list.
async fn room_seq(addr: SocketAddr, room: &str) -> u64 {
    let r = request(addr, "GET", "/api/v1/rooms", &[], b"").await;
    r.json()["rooms"]
        .as_array()
        .and_then(|rooms| rooms.iter().find(|x| x["id"] == room))
        .and_then(|x| x["seq"].as_u64())
        .unwrap_or(0)
}

#[tokio::test]
async fn backend_trigger_reaches_ws_sse_and_poll() {
    let srv = api_server(|c| c.api.poll_timeout_ms = 5_000);
    let mut ws = Client::connect(srv.addr).await;
    ws.join("t1", &TestDoc::new()).await;
    let mut ws2 = Client::connect(srv.addr).await;
    ws2.join("t2", &TestDoc::new()).await;
    let mut sse = Streamed::open(srv.addr, "/api/v1/rooms/t1/events", &[]).await;
    let addr = srv.addr;
    let poller =
        tokio::spawn(async move { request(addr, "GET", "/api/v1/rooms/t2/poll", &[], b"").await });
    eventually("subscribers in place", || async {
        crate::common::metric(addr, "chorus_subscribers ").await >= 2.0
    })
    .await;
    let body = json!({ "rooms": ["t1", "t2", "nobody-here"], "name": "order.created", "data": { "id": 42 } });
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/events",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["delivered"], json!(["t1", "t2"]));
    for c in [&mut ws, &mut ws2] {
        let m = c.expect(|m| matches!(m, ServerMessage::Event { .. })).await;
        match m {
            ServerMessage::Event {
                name, data, from, ..
            } => {
                assert_eq!((name.as_str(), from.as_str()), ("order.created", "server"));
                assert_eq!(data["id"], 42);
            }
            _ => unreachable!(),
        }
    }
    let (_, kind, data) = sse.sse_event().await;
    assert_eq!(
        (kind.as_str(), data["name"].as_str()),
        ("event", Some("order.created"))
    );
    let r = poller.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["events"][0]["name"], "order.created");

    // One room through its own path.
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/t1/events",
        &[],
        br#"{"name":"x"}"#,
    )
    .await;
    assert_eq!(r.status, 202);
    let (_, _, data) = sse.sse_event().await;
    assert_eq!(data["name"], "x");
}

/// A tiny webhook receiver on port 0: answers 500 to the first request and
/// 200 after; hands over every (headers, body).
async fn receiver() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    receiver_over(None).await
}

/// [`receiver`], over TLS with `tls` when given (https).
async fn receiver_over(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let mut s: Box<dyn Stream> = match &tls {
                None => Box::new(tcp),
                Some(tls) => match tls.accept(tcp).await {
                    Ok(s) => Box::new(s),
                    // A client that does not trust the certificate.
                    Err(_) => continue,
                },
            };
            n += 1;
            let mut raw = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body) = loop {
                let k = s.read(&mut buf).await.unwrap_or(0);
                if k == 0 {
                    break (String::new(), Vec::new());
                }
                raw.extend_from_slice(&buf[..k]);
                if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..p]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if raw.len() >= p + 4 + len {
                        break (head, raw[p + 4..p + 4 + len].to_vec());
                    }
                }
            };
            let status = if n == 1 {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let _ = tx.send((head, body));
        }
    });
    (addr, rx)
}

/// What the webhook receiver reads and writes on.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

#[tokio::test]
async fn webhooks_are_signed_and_retried_after_a_500() {
    let (hook_addr, got) = receiver().await;
    webhooks_signed_and_retried(format!("http://{hook_addr}/hook"), None, got).await;
}

/// A self-signed certificate for 127.0.0.1 and localhost: a TLS acceptor,
/// and the certificate's PEM file (a root to trust) in `dir`.
fn self_signed(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("cert");
    let ca = dir.join("receiver.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    (
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)),
        ca,
    )
}

#[tokio::test]
async fn webhooks_reach_an_https_receiver_trusted_through_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, ca) = self_signed(dir.path());
    let (hook_addr, got) = receiver_over(Some(tls)).await;
    webhooks_signed_and_retried(format!("https://{hook_addr}/hook"), Some(ca), got).await;
}

#[tokio::test]
async fn webhooks_refuse_an_https_receiver_they_do_not_trust() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _ca) = self_signed(dir.path());
    let (hook_addr, mut got) = receiver_over(Some(tls)).await;
    let srv = api_server(|c| {
        c.api.webhook_url = vec![format!("https://{hook_addr}/hook")];
        c.api.webhook_attempts = 1;
        c.api.webhook_debounce_ms = 50;
    });
    let mut ws = Client::connect(srv.addr).await;
    ws.join("w2", &TestDoc::new()).await;
    eventually("a delivery given up", || async {
        crate::common::metric(srv.addr, "chorus_webhooks_failed_total").await >= 1.0
    })
    .await;
    assert!(
        got.try_recv().is_err(),
        "the untrusted receiver got a request"
    );
    assert_eq!(
        crate::common::metric(srv.addr, "chorus_webhooks_delivered_total").await,
        0.0
    );
}

/// Joins, writes and leaves a room of a server sending webhooks to `url`
/// (trusting `ca`), and checks what `got` receives: every kind, signed, the
/// first one retried after the receiver's 500.
async fn webhooks_signed_and_retried(
    url: String,
    ca: Option<std::path::PathBuf>,
    mut got: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    let srv = api_server(|c| {
        c.api.webhook_url = vec![url];
        c.api.webhook_ca_file = ca;
        c.api.webhook_secret = Some("s3cret".into());
        c.api.webhook_backoff_ms = 50;
        c.api.webhook_debounce_ms = 50;
    });
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("w1", &doc).await;
    ws.update_acked("w1", doc.insert(0, "x")).await;
    ws.close().await;

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ![
        "room.occupied",
        "member.joined",
        "document.stored",
        "member.left",
        "room.vacated",
    ]
    .iter()
    .all(|t| seen.contains(&t.to_string()))
    {
        let (head, body) = tokio::time::timeout_at(deadline, got.recv())
            .await
            .unwrap_or_else(|_| panic!("webhooks so far: {seen:?}"))
            .unwrap();
        let sig = head
            .lines()
            .find_map(|l| l.strip_prefix("X-Chorus-Signature: sha256="))
            .expect("signature header");
        assert_eq!(sig, chorus::webhook::sign(b"s3cret", &body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["room"], "w1");
        seen.push(v["type"].as_str().unwrap().to_owned());
    }
    // The first delivery was refused with 500 and retried: the first type is seen twice.
    assert_eq!(seen[0], seen[1], "retry of the first delivery: {seen:?}");
    assert!(crate::common::metric(srv.addr, "chorus_webhooks_retried_total").await >= 1.0);
    assert!(crate::common::metric(srv.addr, "chorus_webhooks_delivered_total").await >= 5.0);
}

#[tokio::test]
async fn bad_input_gets_documented_status_and_json_error() {
    let srv = api_server(|c| {
        c.api.api_key = Some("k3y".into());
        c.api.api_max_body_bytes = 1024;
    });
    let auth = [("Authorization", "Bearer k3y")];
    let r = request(srv.addr, "GET", "/api/v1/rooms", &[], b"").await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = request(
        srv.addr,
        "GET",
        "/api/v1/rooms",
        &[("Authorization", "Bearer nope")],
        b"",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (401, "unauthorized"));
    let r = request(srv.addr, "GET", "/api/v1/rooms", &auth, b"").await;
    assert_eq!(r.status, 200);
    let r = request(srv.addr, "POST", "/api/v1/events", &auth, b"{not json").await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "bad_request"));
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/a/events",
        &auth,
        br#"{"data":1}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    let big = vec![b'x'; 2048];
    let r = request(srv.addr, "POST", "/api/v1/rooms/a/update", &auth, &big).await;
    assert_eq!((r.status, r.error_code().as_str()), (413, "too_large"));
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/a/update",
        &auth,
        b"\xff\xff\xff",
    )
    .await;
    assert_eq!((r.status, r.error_code().as_str()), (422, "bad_update"));
    let r = request(srv.addr, "DELETE", "/api/v1/rooms/never-was", &auth, b"").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "not_found"));
    let r = request(srv.addr, "GET", "/api/v1/nothing", &auth, b"").await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "no_route"));
    let r = request(
        srv.addr,
        "GET",
        "/api/v1/rooms/r/poll?since=abc",
        &auth,
        b"",
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        crate::common::metric(srv.addr, "chorus_errors_total{code=\"unauthorized\"}").await >= 2.0
    );
}

#[tokio::test]
async fn delete_closes_members_and_empties_the_room() {
    let srv = api_server(|_| {});
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("d1", &doc).await;
    ws.update_acked("d1", doc.insert(0, "gone soon")).await;
    let r = request(srv.addr, "DELETE", "/api/v1/rooms/d1", &[], b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(ws.closed().await, Some(1001));
    let r = request(srv.addr, "GET", "/api/v1/rooms/d1/doc", &[], b"").await;
    assert_eq!(r.json()["doc"], json!({}));
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_readyz_answers() {
    let srv = api_server(|_| {});
    let mut ws = Client::connect(srv.addr).await;
    let doc = TestDoc::new();
    ws.join("m1", &doc).await;
    ws.update_acked("m1", doc.insert(0, "x")).await;
    let (status, body) = http_get(srv.addr, "/metrics").await;
    assert_eq!(status, 200);
    // OpenMetrics text ends with `# EOF`, and has it nowhere else.
    let body = body
        .strip_suffix("# EOF\n")
        .unwrap_or_else(|| panic!("no final # EOF:\n{body}"));
    let mut names = std::collections::HashSet::new();
    for line in body.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            assert!(kind == "HELP" || kind == "TYPE", "{line}");
            let _name = parts.next().expect("metric name");
            if kind == "TYPE" {
                let t = parts.next().unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&t), "{line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("series value");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        names.insert(name.to_owned());
    }
    for n in [
        "chorus_connections",
        "chorus_rooms_active",
        "chorus_messages_in_total",
        "chorus_bytes_out_total",
        "chorus_fanout_latency_seconds_bucket",
        "chorus_store_latency_seconds_count",
    ] {
        assert!(names.contains(n), "{n} missing");
    }
    assert!(crate::common::metric(srv.addr, "chorus_store_latency_seconds_count").await >= 1.0);
    let (status, body) = http_get(srv.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn metrics_keep_every_name_dashboards_know() {
    let srv = api_server(|_| {});
    // One error, so that the per-code error counter has a sample.
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/n1/update",
        &[],
        b"\xff\xff\xff",
    )
    .await;
    assert_eq!(r.status, 422);
    let (_, body) = http_get(srv.addr, "/metrics").await;
    let missing = crate::common::missing_metrics(&body, crate::common::METRIC_NAMES);
    assert!(missing.is_empty(), "missing {missing:?} in:\n{body}");
}

#[tokio::test]
async fn openapi_document_matches_the_routes() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/proto/openapi.json"))
        .expect("proto/openapi.json");
    let doc: Value = serde_json::from_str(&text).expect("openapi.json parses");
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            documented.insert((method.to_ascii_uppercase(), path.clone()));
            // Example bodies are JSON objects.
            if let Some(ex) = op.pointer("/requestBody/content/application~1json/example") {
                assert!(ex.is_object(), "{path}: example body");
            }
        }
    }
    let served: std::collections::BTreeSet<(String, String)> = chorus::http::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "openapi.json vs http::api::ROUTES");

    // Every documented route is served (not the scope's no_route), and the
    // example request bodies are accepted.
    let srv = api_server(|c| c.api.poll_timeout_ms = 50);
    let mut ws = Client::connect(srv.addr).await;
    ws.join("doc-1", &TestDoc::new()).await;
    // A version for the version routes.
    let r = request(
        srv.addr,
        "POST",
        "/api/v1/rooms/doc-1/versions",
        &[],
        br#"{"name":"first"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let version: Value = serde_json::from_slice(&r.body).unwrap();
    let version = version["version"]["id"].as_str().unwrap().to_owned();
    for (method, path) in &served {
        let url = format!(
            "/api/v1{}",
            path.replace("{room}", "doc-1").replace("{id}", &version)
        );
        let item = &doc["paths"][path.as_str()][method.to_ascii_lowercase()];
        let body = match item.pointer("/requestBody/content/application~1json/example") {
            Some(v) => v.to_string().into_bytes(),
            // The binary body: a real update.
            None if method == "POST" => TestDoc::new().insert(0, "x"),
            None => Vec::new(),
        };
        if url.ends_with("/events") && method == "GET" || url.ends_with("/stream") {
            let s = Streamed::open(srv.addr, &url, &[]).await;
            assert_eq!(s.status, 200, "{method} {url}");
            continue;
        }
        if method == "DELETE" {
            continue;
        }
        let r = request(srv.addr, method, &url, &[], &body).await;
        assert!(
            r.status < 300 && r.status != 0,
            "{method} {url}: {}",
            r.status
        );
    }
    let r = request(srv.addr, "DELETE", "/api/v1/rooms/doc-1", &[], b"").await;
    assert_eq!(r.status, 200);
}
