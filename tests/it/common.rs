//! Test harness: a server on port 0 in this process (or as a child process),
//! and a native-protocol client over a real WebSocket.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use chorus::config::Config;
use chorus::http::BackgroundServer;
use chorus::protocol::native::{decode_server, encode_client, Bin, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// How long a test waits for one expected message.
pub const WAIT: Duration = Duration::from_secs(10);

/// Starts a server with test-friendly settings, adjusted by `tweak`.
pub fn server(tweak: impl FnOnce(&mut Config)) -> BackgroundServer {
    let mut config = Config::ephemeral();
    config.room_threads = 2;
    config.workers = 2;
    config.log_level = "warn".into();
    tweak(&mut config);
    BackgroundServer::spawn(config).expect("server starts")
}

/// The `chorus` binary running as a child process, with its log lines
/// (stdout and stderr) collected. Started on port 0; the address is read
/// from its "chorus listening" log line, so no port is ever guessed.
pub struct ChildServer {
    child: std::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `chorus` with `args` (plus `--port 0 --log-format json`) and
    /// waits until it listens. Panics with its output if it exits first.
    pub fn start(args: &[&str]) -> ChildServer {
        ChildServer::start_with_env(args, &[])
    }

    /// [`ChildServer::start`] with environment variables set for it.
    /// `--port` in `args` replaces port 0 (to restart a node where a load
    /// balancer expects it). The drain delay and window default to 0 (the
    /// environment), so SIGTERM stops at once unless a test asks for them.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ChildServer {
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let port: &[&str] = if args.contains(&"--port") {
            &[]
        } else {
            &["--port", "0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(port)
            .args(["--log-format", "json", "--log-level", "info"])
            .args(args)
            .env("CHORUS_DRAIN_DELAY_MS", "0")
            .env("CHORUS_DRAIN_WINDOW_MS", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chorus binary starts");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel::<Option<SocketAddr>>();
        let outputs: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped stdout")),
            Box::new(child.stderr.take().expect("piped stderr")),
        ];
        for output in outputs {
            let (lines, addr_tx) = (lines.clone(), addr_tx.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(output).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                        if v["fields"]["message"] == "chorus listening" {
                            let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
                            let _ = addr_tx.send(addr);
                        }
                    }
                    lines.lock().unwrap().push(line);
                }
                let _ = addr_tx.send(None);
            });
        }
        let addr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "chorus did not start listening; output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        ChildServer { child, addr, lines }
    }

    /// Resident memory of the server process, in bytes (from /proc).
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS line")
    }

    /// Open file descriptors of the server process (from /proc).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .expect("proc fd")
            .count()
    }

    /// Every log line so far.
    pub fn logs(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM and wait for the graceful shutdown; returns the log lines.
    pub fn terminate(self) -> Vec<String> {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Sends `SIG<name>` (e.g. `TERM`) without waiting.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits (30 s at most) for a graceful exit; returns the log lines.
    pub fn wait_exit(mut self) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                assert!(status.success(), "chorus exited with {status}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "chorus did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the output threads read the last lines.
        std::thread::sleep(Duration::from_millis(50));
        self.logs()
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // A panicking test must not leave the server running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A native-protocol client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Member id from `welcome`.
    pub session: String,
    /// Messages read while looking for another one.
    backlog: VecDeque<ServerMessage>,
    next_rid: u64,
    /// Bytes of the binary frames received so far.
    pub bytes_in: u64,
}

impl Client {
    /// Connects without saying hello.
    pub async fn connect_raw(addr: SocketAddr) -> Client {
        // Whole-document frames (synced, resync) may be as large as the
        // largest document a test makes.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/ws"),
            Some(config),
            false,
        )
        .await
        .expect("websocket connects");
        Client {
            ws,
            session: String::new(),
            backlog: VecDeque::new(),
            next_rid: 1,
            bytes_in: 0,
        }
    }

    /// Makes dropping this client reset its connection (linger 0) instead
    /// of closing it with a FIN.
    pub fn reset_on_drop(&self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            socket2::SockRef::from(tcp)
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER");
        }
    }

    /// Wraps an already connected WebSocket (e.g. over TLS).
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            session: String::new(),
            backlog: VecDeque::new(),
            next_rid: 1,
            bytes_in: 0,
        }
    }

    /// Connects to `path` (with query) and extra request headers, without
    /// hello; `Err` is the HTTP status of a refused upgrade.
    pub async fn connect_path(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
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
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client::from_ws(ws)),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// Sends `hello` with `token`; returns the first reply (`welcome` or `error`).
    pub async fn hello(&mut self, token: Option<String>) -> ServerMessage {
        self.send(&ClientMessage::Hello {
            v: 1,
            token,
            client: Some("chorus-tests".into()),
            rid: Some(1),
        })
        .await;
        let m = self.recv().await;
        if let ServerMessage::Welcome { session, .. } = &m {
            self.session = session.clone();
        }
        m
    }

    /// Connects and completes the hello / welcome handshake.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_raw(addr).await;
        c.send(&ClientMessage::Hello {
            v: 1,
            token: None,
            client: Some("chorus-tests".into()),
            rid: None,
        })
        .await;
        match c.recv().await {
            ServerMessage::Welcome { session, .. } => c.session = session,
            other => panic!("expected welcome, got {other:?}"),
        }
        c
    }

    /// A fresh request id.
    pub fn rid(&mut self) -> u64 {
        self.next_rid += 1;
        self.next_rid
    }

    /// Sends a message.
    pub async fn send(&mut self, msg: &ClientMessage) {
        self.send_raw(encode_client(msg)).await;
    }

    /// Sends raw bytes as one binary frame.
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("send");
    }

    /// Sends `text` as one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Next server message (panics after [`WAIT`] or if the socket closes).
    pub async fn recv(&mut self) -> ServerMessage {
        if let Some(m) = self.backlog.pop_front() {
            return m;
        }
        self.read().await.expect("connection open")
    }

    async fn read(&mut self) -> Result<ServerMessage, Option<u16>> {
        self.read_by(tokio::time::Instant::now() + WAIT).await
    }

    /// Next message, by `deadline` (pings and pongs do not extend it).
    async fn read_by(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<ServerMessage, Option<u16>> {
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("timed out waiting for a server message");
            match frame {
                Some(Ok(Message::Binary(b))) => {
                    self.bytes_in += b.len() as u64;
                    return Ok(decode_server(&b).expect("server frame decodes"));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Reads until a message matches `pred`; others are kept for later.
    /// Panics if none does within 3 × [`WAIT`] (other messages, pings
    /// included, do not extend the wait).
    pub async fn expect(&mut self, pred: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos).expect("position is valid");
        }
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        loop {
            let m = self.read_by(deadline).await.expect("connection open");
            if pred(&m) {
                return m;
            }
            self.backlog.push_back(m);
        }
    }

    /// Like `expect`, but answers `None` if nothing matches within `within`.
    pub async fn maybe(
        &mut self,
        within: Duration,
        pred: impl Fn(&ServerMessage) -> bool,
    ) -> Option<ServerMessage> {
        if let Some(pos) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(pos);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return None,
                Ok(f) => f,
            };
            match frame {
                Some(Ok(Message::Binary(b))) => {
                    self.bytes_in += b.len() as u64;
                    let m = decode_server(&b).expect("server frame decodes");
                    if pred(&m) {
                        return Some(m);
                    }
                    self.backlog.push_back(m);
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    }

    /// Waits for the server to close the connection; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.read().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }

    /// Joins `room` with `doc`'s state vector and applies the `synced` diff.
    pub async fn join(&mut self, room: &str, doc: &TestDoc) {
        self.join_with(room, doc, None).await;
    }

    /// Joins with an initial presence state.
    pub async fn join_with(
        &mut self,
        room: &str,
        doc: &TestDoc,
        presence: Option<serde_json::Value>,
    ) {
        let rid = self.rid();
        self.send(&ClientMessage::Join {
            room: room.into(),
            sv: Some(Bin(doc.state_vector())),
            presence,
            rid: Some(rid),
        })
        .await;
        let synced = self
            .expect(|m| matches!(m, ServerMessage::Synced { rid: r, .. } | ServerMessage::Error { rid: r, .. } if *r == Some(rid)))
            .await;
        match synced {
            ServerMessage::Synced { diff, sv, .. } => {
                doc.apply(&diff.0);
                // Send what the server lacks.
                let missing = doc.diff(&sv.0);
                self.send(&ClientMessage::Update {
                    room: room.into(),
                    data: Bin(missing),
                    rid: None,
                })
                .await;
            }
            other => panic!("join failed: {other:?}"),
        }
    }

    /// Sends a message; `Err` when the connection is gone (no panic).
    pub async fn try_send(&mut self, msg: &ClientMessage) -> Result<(), String> {
        self.ws
            .send(Message::Binary(encode_client(msg).into()))
            .await
            .map_err(|e| e.to_string())
    }

    /// Next server message, or `None` when the connection closed, failed or
    /// stayed silent for `within` (no panic).
    pub async fn try_recv(&mut self, within: Duration) -> Option<ServerMessage> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(m);
        }
        loop {
            match tokio::time::timeout(within, self.ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    self.bytes_in += b.len() as u64;
                    return decode_server(&b).ok();
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Joins `room` with `doc`'s state vector; on `synced` applies the diff
    /// and returns the server's state vector, else returns the error reply.
    pub async fn try_join(&mut self, room: &str, doc: &TestDoc) -> Result<Vec<u8>, ServerMessage> {
        let rid = self.rid();
        self.send(&ClientMessage::Join {
            room: room.into(),
            sv: Some(Bin(doc.state_vector())),
            presence: None,
            rid: Some(rid),
        })
        .await;
        let reply = self
            .expect(|m| matches!(m, ServerMessage::Synced { rid: r, .. } | ServerMessage::Error { rid: r, .. } if *r == Some(rid)))
            .await;
        match reply {
            ServerMessage::Synced { diff, sv, .. } => {
                doc.apply(&diff.0);
                Ok(sv.0)
            }
            other => Err(other),
        }
    }

    /// Sends an update with a fresh request id, which it returns (the
    /// ack or error comes later).
    pub async fn send_update(&mut self, room: &str, data: Vec<u8>) -> u64 {
        let rid = self.rid();
        self.send(&ClientMessage::Update {
            room: room.into(),
            data: Bin(data),
            rid: Some(rid),
        })
        .await;
        rid
    }

    /// Sends an update and waits for its ack.
    pub async fn update_acked(&mut self, room: &str, data: Vec<u8>) {
        let rid = self.send_update(room, data).await;
        let reply = self
            .expect(|m| {
                matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                    || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
            })
            .await;
        assert!(
            matches!(reply, ServerMessage::Ack { .. }),
            "update refused: {reply:?}"
        );
    }

    /// Applies every `update` for `room` until `doc` has `text`.
    pub async fn sync_until(&mut self, room: &str, doc: &TestDoc, text: &str) {
        while doc.text() != text {
            let m = self
                .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
                .await;
            if let ServerMessage::Update { data, .. } = m {
                doc.apply(&data.0);
            }
        }
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}

/// A client-side Yjs document with one text named `t`.
pub struct TestDoc {
    pub doc: Doc,
}

impl Default for TestDoc {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDoc {
    /// An empty document.
    pub fn new() -> Self {
        TestDoc { doc: Doc::new() }
    }

    /// Inserts `s` at `index` of text `t`; returns the update it made.
    pub fn insert(&self, index: u32, s: &str) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        text.insert(&mut txn, index, s);
        drop(txn);
        self.doc.transact().encode_diff_v1(&before)
    }

    /// An update inserting `s` at the start of text `t`, made by a fresh
    /// client: independent of every other update (no squashing into one
    /// growing block, so building many is linear).
    pub fn independent_insert(s: &str) -> Vec<u8> {
        TestDoc::new().insert(0, s)
    }

    /// Appends `s` to text `t`; returns the update.
    pub fn push(&self, s: &str) -> Vec<u8> {
        let len = self.len();
        self.insert(len, s)
    }

    /// Length of text `t`.
    pub fn len(&self) -> u32 {
        let text = self.doc.get_or_insert_text("t");
        text.len(&self.doc.transact())
    }

    /// Content of text `t`.
    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }

    /// Applies a Yjs v1 update.
    pub fn apply(&self, update: &[u8]) {
        let u = Update::decode_v1(update).expect("update decodes");
        self.doc
            .transact_mut()
            .apply_update(u)
            .expect("update applies");
    }

    /// This document's Yjs client id.
    pub fn client_id(&self) -> u64 {
        self.doc.client_id().get()
    }

    /// Clock of this document's own client: how many items it has made.
    pub fn own_clock(&self) -> u32 {
        self.doc
            .transact()
            .state_vector()
            .get(&self.doc.client_id())
    }

    /// Encoded state vector.
    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// What this doc has that a peer with state vector `sv` lacks.
    pub fn diff(&self, sv: &[u8]) -> Vec<u8> {
        let sv = StateVector::decode_v1(sv).expect("state vector decodes");
        self.doc.transact().encode_diff_v1(&sv)
    }
}

/// A plain HTTP/1.1 GET; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_bodiless(addr, "GET", path).await
}

/// A plain HTTP/1.1 request without a body (GET, DELETE); returns the
/// status code and body.
pub async fn http_bodiless(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("tcp connects");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request written");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("response read");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `GET /api/v1/rooms/{room}/presence` page by page from the first,
/// following `next` (with `limit` when given), as a dashboard reads a big
/// room: every page's JSON body, each a 200 that holds at most `limit`
/// members (when given).
pub async fn rest_presence_pages(
    addr: SocketAddr,
    room: &str,
    limit: Option<u64>,
) -> Vec<serde_json::Value> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(a) = &after {
            query.push(format!("after={a}"));
        }
        let path = format!("/api/v1/rooms/{room}/presence?{}", query.join("&"));
        let (status, body) = http_get(addr, &path).await;
        assert_eq!(status, 200, "{path}: {body}");
        let page: serde_json::Value = serde_json::from_str(&body).expect("presence is JSON");
        let n = page["members"].as_array().expect("members").len() as u64;
        assert!(limit.is_none_or(|l| n <= l), "{path}: {n} members");
        after = page["next"].as_str().map(str::to_owned);
        assert!(
            after.is_some() || page["next"].is_null(),
            "{path}: next is a string or null: {body}"
        );
        pages.push(page);
        assert!(pages.len() < 1_000, "paging does not end");
        if after.is_none() {
            return pages;
        }
    }
}

/// The member ids of presence pages (REST bodies), in order.
pub fn page_member_ids(pages: &[serde_json::Value]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| p["members"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Reads one metric's value from `/metrics`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
}

/// Polls `cond` every 20 ms until it holds or [`WAIT`] passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every sample name a single node served at `/metrics` before the move to
/// `prometheus-client` (scraped from a running server after one API error);
/// dashboards depend on them.
pub const METRIC_NAMES: &[&str] = &[
    "chorus_bytes_in_total",
    "chorus_bytes_out_total",
    "chorus_connections",
    "chorus_connections_admitted",
    "chorus_errors_total",
    "chorus_fanout_latency_seconds_bucket",
    "chorus_fanout_latency_seconds_count",
    "chorus_fanout_latency_seconds_sum",
    "chorus_messages_in_total",
    "chorus_messages_out_total",
    "chorus_rooms_active",
    "chorus_rooms_evicted_total",
    "chorus_rooms_restarted_total",
    "chorus_rooms_started_total",
    "chorus_store_latency_seconds_bucket",
    "chorus_store_latency_seconds_count",
    "chorus_store_latency_seconds_sum",
    "chorus_store_append_failures_total",
    "chorus_store_append_retries_total",
    "chorus_store_failing",
    "chorus_store_unstored_bytes",
    "chorus_store_unstored_updates",
    "chorus_subscribers",
    "chorus_subscribers_lagged_total",
    "chorus_webhooks_delivered_total",
    "chorus_webhooks_dropped_total",
    "chorus_webhooks_failed_total",
    "chorus_webhooks_retried_total",
];

/// The sample names a node adds in cluster mode.
pub const CLUSTER_METRIC_NAMES: &[&str] = &[
    "chorus_cluster_connected",
    "chorus_cluster_dropped_total",
    "chorus_cluster_gaps_total",
    "chorus_cluster_published_total",
    "chorus_cluster_received_total",
];

/// `names` that have no sample in the `/metrics` body `body`.
pub fn missing_metrics<'a>(body: &str, names: &[&'a str]) -> Vec<&'a str> {
    let samples: std::collections::HashSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    names
        .iter()
        .copied()
        .filter(|n| !samples.contains(n))
        .collect()
}
