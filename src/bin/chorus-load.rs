//! `chorus-load`: a load generator for Chorus and for the servers users would
//! pick instead (the reference y-websocket server, Hocuspocus, y-sweet).
//!
//! One process runs every client: writers, receivers and idle connections,
//! on a 2-thread tokio runtime. Receivers are light: they never hold a Yjs
//! document. Each writer owns a yrs client id and appends one character per
//! update, so its n-th update carries exactly the clock `n`; it records the
//! send instant in a table shared in-process, indexed by (writer, clock). A
//! receiver decodes an incoming update only far enough to read its state
//! vector, and times every clock it had not seen yet against that table.
//!
//! Protocols (`--proto`):
//! - `native`: Chorus `/ws` (MessagePack: hello, join, update, cursor);
//! - `yws`: y-websocket, one connection per room at `{url}/{room}` (Chorus
//!   `/yjs`, `@y/websocket-server`);
//! - `hocuspocus`: y-protocols prefixed by the document name, after a token
//!   auth message, on one URL;
//! - `ysweet`: y-websocket at the URL y-sweet hands out (`POST /doc/new`,
//!   then `POST /doc/{id}/auth`); `--url` is y-sweet's HTTP base.
//!
//! Server cost comes from `/proc/<pid>`: CPU seconds (utime + stime) over
//! the measured window, RSS before and after, and the peak (VmHWM). The pid
//! comes from `--server-pid`, or `--spawn CMD` starts the server (`sh -c
//! "exec CMD"`), waits for its port and stops it at the end, so each run
//! gets a fresh process and VmHWM is that run's peak.
//!
//! Everything is bounded: each phase has a deadline and the tool exits.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Options, ReadTxn, StateVector, Text, Transact, Update};

use chorus::protocol::native::{encode_client, Bin, ClientMessage};
use chorus::protocol::yjs;

type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;
type Source = SplitStream<Ws>;

/// First yrs client id of the writers; writer `w` is `WRITER_BASE + w`.
/// Under 2^31 so every Yjs implementation keeps it as is.
const WRITER_BASE: u64 = 0x4000_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One room, many subscribers, a few writers at a fixed rate.
    Fanout,
    /// Many rooms with a few clients each and light traffic.
    Rooms,
    /// Many idle connections in one room: server memory per connection.
    Idle,
    /// Many clients join a room holding a large document at once.
    JoinStorm,
    /// Many clients each moving a cursor at a fixed rate.
    Presence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    /// Chorus native MessagePack protocol on `{url}/ws`.
    Native,
    /// y-websocket, one connection per room at `{url}/{room}`.
    Yws,
    /// Hocuspocus: y-protocols prefixed with the document name, after auth.
    Hocuspocus,
    /// y-sweet: y-websocket at the URL from its document API (`--url` is HTTP).
    Ysweet,
}

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "chorus-load",
    about = "Load generator for Chorus and peer Yjs servers"
)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Protocol spoken by the clients.
    #[arg(long, value_enum, default_value = "native")]
    proto: Proto,
    /// Server base URL: `ws://127.0.0.1:8080` (native: `/ws` is appended),
    /// `ws://127.0.0.1:8080/yjs` (yws: `/{room}` is appended), the
    /// Hocuspocus URL, or y-sweet's `http://` base.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Name of the server in the output.
    #[arg(long, default_value = "chorus")]
    label: String,
    /// Pid of the server process (for CPU and memory from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Start the server with `sh -c "exec CMD"`, wait for the URL's port,
    /// stop it (SIGTERM, then SIGKILL) at the end.
    #[arg(long)]
    spawn: Option<String>,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Measured seconds (fanout, rooms, presence).
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Subscribers (fanout).
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    /// Writers (fanout).
    #[arg(long, default_value_t = 10)]
    writers: usize,
    /// Updates per second per writer (fanout).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Rooms (rooms).
    #[arg(long, default_value_t = 5000)]
    rooms: usize,
    /// Clients per room (rooms).
    #[arg(long, default_value_t = 2)]
    per_room: usize,
    /// Seconds between two updates of one room (rooms).
    #[arg(long, default_value_t = 5.0)]
    room_interval: f64,
    /// Idle connections (idle).
    #[arg(long, default_value_t = 15000)]
    conns: usize,
    /// Idle native connections join the room `idle` (and so are presence
    /// members); `false`: they only say hello. y-websocket connections
    /// always join the room of their URL.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    idle_join: bool,
    /// Document size in MB (join-storm).
    #[arg(long, default_value_t = 10.0)]
    doc_mb: f64,
    /// Clients (join-storm, presence).
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Cursor moves per second per client (presence).
    #[arg(long, default_value_t = 10.0)]
    hz: f64,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N used round-robin, so that
    /// many connections do not run out of ephemeral ports.
    #[arg(long, default_value_t = 4)]
    sources: u8,
}

// ---------------------------------------------------------------------------
// Server process accounting (/proc)

/// A snapshot of the server process.
#[derive(Debug, Clone, Copy, Default)]
struct ProcStat {
    cpu_secs: f64,
    rss_kb: u64,
    hwm_kb: u64,
}

fn proc_stat(pid: u32) -> ProcStat {
    let mut out = ProcStat::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        if let Some((_, rest)) = stat.rsplit_once(')') {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is f[0], utime f[11], stime f[12] (USER_HZ = 100).
            if f.len() > 12 {
                let t = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
                out.cpu_secs = t / 100.0;
            }
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kb = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                out.rss_kb = kb(line);
            } else if line.starts_with("VmHWM:") {
                out.hwm_kb = kb(line);
            }
        }
    }
    out
}

fn self_cpu() -> f64 {
    proc_stat(std::process::id()).cpu_secs
}

// ---------------------------------------------------------------------------
// Targets: how to reach a room, in each protocol

/// Where clients connect and how they speak.
struct Target {
    proto: Proto,
    url: String,
    /// y-sweet: room → WebSocket URL handed out by its auth endpoint.
    ysweet_urls: HashMap<String, String>,
    sources: u8,
    next_source: AtomicUsize,
    /// Read buffer per connection: small for thousands of mostly idle
    /// connections; large when each client receives a big document
    /// (join-storm), so that the generator does not spend its CPU on
    /// thousands of small reads per client.
    read_buffer: usize,
}

impl Target {
    fn ws_url(&self, room: &str) -> Result<String> {
        Ok(match self.proto {
            Proto::Native => format!("{}/ws", self.url.trim_end_matches('/')),
            Proto::Yws => format!("{}/{room}", self.url.trim_end_matches('/')),
            Proto::Hocuspocus => self.url.clone(),
            Proto::Ysweet => self
                .ysweet_urls
                .get(room)
                .cloned()
                .ok_or_else(|| anyhow!("no y-sweet URL for room {room}"))?,
        })
    }

    /// y-sweet: creates each room's document and gets its client URL.
    async fn prepare(&mut self, rooms: &[String], concurrency: usize) -> Result<()> {
        if self.proto != Proto::Ysweet {
            return Ok(());
        }
        let base = self.url.trim_end_matches('/').to_string();
        let sem = Arc::new(Semaphore::new(concurrency.clamp(1, 64)));
        let mut tasks = Vec::new();
        for room in rooms {
            let (base, room, sem) = (base.clone(), room.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await?;
                http_post(&base, "/doc/new", &json!({ "docId": room }).to_string()).await?;
                let auth = http_post(&base, &format!("/doc/{room}/auth"), "{}").await?;
                let auth: Value = serde_json::from_str(&auth).context("y-sweet auth reply")?;
                let url = auth["url"]
                    .as_str()
                    .ok_or_else(|| anyhow!("y-sweet auth reply has no url: {auth}"))?;
                let mut url = format!("{}/{}", url.trim_end_matches('/'), room);
                if let Some(token) = auth["token"].as_str() {
                    url.push_str(&format!("?token={token}"));
                }
                anyhow::Ok((room, url))
            }));
        }
        for t in tasks {
            let (room, url) = t.await??;
            self.ysweet_urls.insert(room, url);
        }
        Ok(())
    }

    /// A TCP connection to the server of `url` from the next source address.
    async fn tcp(&self, url: &str) -> Result<TcpStream> {
        let addr = socket_addr(url)?;
        let n = self.next_source.fetch_add(1, Ordering::Relaxed);
        let src = Ipv4Addr::new(127, 0, 0, 1 + (n % self.sources.max(1) as usize) as u8);
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
        let stream = socket.connect(addr).await.context("tcp connect")?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    /// Opens a WebSocket for `room` from the next source address.
    async fn connect(&self, room: &str) -> Result<Ws> {
        let url = self.ws_url(room)?;
        let stream = self.tcp(&url).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(self.read_buffer)
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(256 << 20));
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
            .await
            .context("websocket handshake")?;
        Ok(ws)
    }

    /// Frames a client sends to join `room` (after connecting).
    fn join_frames(&self, room: &str, presence: Option<Value>) -> Vec<Vec<u8>> {
        let empty = StateVector::default();
        match self.proto {
            Proto::Native => vec![
                encode_client(&ClientMessage::Hello {
                    v: 1,
                    token: None,
                    client: Some("chorus-load".into()),
                    rid: None,
                }),
                encode_client(&ClientMessage::Join {
                    room: room.into(),
                    sv: None,
                    presence,
                    rid: Some(1),
                }),
            ],
            Proto::Yws | Proto::Ysweet => vec![yjs::sync_step1(&empty)],
            Proto::Hocuspocus => {
                let mut auth = Vec::new();
                write_string(&mut auth, room);
                write_var(&mut auth, 2); // Auth
                write_var(&mut auth, 0); // Token
                write_string(&mut auth, "");
                vec![auth, hocus_prefix(room, &yjs::sync_step1(&empty))]
            }
        }
    }

    /// A frame carrying one Yjs v1 update for `room`.
    fn update_frame(&self, room: &str, data: Vec<u8>) -> Vec<u8> {
        match self.proto {
            Proto::Native => encode_client(&ClientMessage::Update {
                room: room.into(),
                data: Bin(data),
                rid: None,
            }),
            Proto::Yws | Proto::Ysweet => yjs::sync_update(data),
            Proto::Hocuspocus => hocus_prefix(room, &yjs::sync_update(data)),
        }
    }

    /// A cursor move: a native `cursor`, or an awareness state with `cursor`.
    fn cursor_frame(&self, room: &str, client: u64, clock: u32, pos: &[u8]) -> Vec<u8> {
        match self.proto {
            Proto::Native => encode_client(&ClientMessage::Cursor {
                room: room.into(),
                anchor: Some(Bin(pos.to_vec())),
                head: Some(Bin(pos.to_vec())),
                rid: None,
            }),
            _ => {
                let p = yjs::position_to_json(pos).unwrap_or(Value::Null);
                let state = json!({ "user": { "name": format!("c{client}") }, "cursor": { "anchor": p, "head": p } });
                let msg = yjs::awareness([(client, clock, state.to_string().as_str())]);
                if self.proto == Proto::Hocuspocus {
                    hocus_prefix(room, &msg)
                } else {
                    msg
                }
            }
        }
    }

    /// What an incoming frame is, decoding as little as possible: the
    /// returned bytes are slices of `frame` (no copy).
    fn classify(&self, frame: &Bytes) -> Incoming {
        classify(self.proto, frame)
    }
}

/// [`Target::classify`] for protocol `proto`.
fn classify(proto: Proto, frame: &Bytes) -> Incoming {
    match proto {
        Proto::Native => classify_native(frame),
        Proto::Yws | Proto::Ysweet => classify_sync(frame, 0),
        Proto::Hocuspocus => {
            let mut r = Reader { b: frame, i: 0 };
            match r.bytes() {
                // SyncReply (4) carries sync messages too.
                Some(_) => classify_sync(&frame.slice(r.i..), 4),
                None => Incoming::Other,
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw receivers: join-storm clients read frames straight off the socket

/// A WebSocket client for receivers of large documents (join-storm). It
/// keeps only the first [`RawWs::KEEP`] bytes of a message and reads the
/// rest into one reusable buffer: 200 clients × 10 MB would otherwise make
/// the generator allocate, zero and copy 2 GB (tungstenite assembles every
/// message), and the run would time the generator instead of the server.
struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[at..end]`.
    at: usize,
    end: usize,
}

/// A message as a [`RawWs`] sees it: its opcode, its full length and its
/// first bytes.
struct RawMessage {
    opcode: u8,
    len: u64,
    head: Vec<u8>,
}

impl RawWs {
    /// Bytes of a message kept for classifying it.
    const KEEP: usize = 4096;

    /// Connects and upgrades to `url` (ws://host:port/path?query).
    async fn connect(target: &Target, url: &str) -> Result<RawWs> {
        let stream = target.tcp(url).await?;
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let mut ws = RawWs {
            stream,
            buf: vec![0; 256 * 1024],
            at: 0,
            end: 0,
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: Y2hvcnVzLWxvYWQtcmF3IQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        ws.stream.write_all(request.as_bytes()).await?;
        loop {
            if let Some(i) = ws.buf[..ws.end].windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..i]).into_owned();
                let status = head.lines().next().unwrap_or_default();
                if !status.contains(" 101 ") {
                    bail!("websocket handshake: {status}");
                }
                ws.at = i + 4;
                return Ok(ws);
            }
            if ws.end == ws.buf.len() {
                bail!("websocket handshake: response head too large");
            }
            let n = ws.stream.read(&mut ws.buf[ws.end..]).await?;
            if n == 0 {
                bail!("websocket handshake: connection closed");
            }
            ws.end += n;
        }
    }

    /// Sends `payload` as one masked binary frame.
    async fn send(&mut self, payload: &[u8]) -> Result<()> {
        const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = Vec::with_capacity(payload.len() + 14);
        frame.push(0x82);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&MASK);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// At least `n` unread bytes in the buffer (`n` ≤ its size).
    async fn fill(&mut self, n: usize) -> Result<()> {
        if self.end - self.at >= n {
            return Ok(());
        }
        self.buf.copy_within(self.at..self.end, 0);
        self.end -= self.at;
        self.at = 0;
        while self.end < n {
            let read = self.stream.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                bail!("connection closed");
            }
            self.end += read;
        }
        Ok(())
    }

    /// The next data message (pings and pongs are skipped; a close is an
    /// error), reassembled from its fragments.
    async fn next(&mut self) -> Result<RawMessage> {
        let mut message: Option<RawMessage> = None;
        loop {
            self.fill(2).await?;
            let (b0, b1) = (self.buf[self.at], self.buf[self.at + 1]);
            let (fin, opcode, masked) = (b0 & 0x80 != 0, b0 & 0x0f, b1 & 0x80 != 0);
            let ext = match b1 & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            let header = 2 + ext + if masked { 4 } else { 0 };
            self.fill(header).await?;
            let len = match ext {
                2 => u64::from(u16::from_be_bytes([
                    self.buf[self.at + 2],
                    self.buf[self.at + 3],
                ])),
                8 => u64::from_be_bytes(self.buf[self.at + 2..self.at + 10].try_into()?),
                _ => u64::from(b1 & 0x7f),
            };
            let mask: Option<[u8; 4]> = masked
                .then(|| self.buf[self.at + 2 + ext..self.at + header].try_into())
                .transpose()?;
            self.at += header;
            if opcode == 8 {
                bail!("closed by the server");
            }
            let control = opcode & 0x08 != 0;
            let mut msg = match (&mut message, control) {
                (_, true) => None,
                (Some(m), false) => Some(m),
                (None, false) => Some(message.insert(RawMessage {
                    opcode,
                    len: 0,
                    head: Vec::new(),
                })),
            };
            let mut left = len;
            let mut offset = 0usize;
            while left > 0 {
                if self.at == self.end {
                    self.fill(1).await?;
                }
                let take = left.min((self.end - self.at) as u64) as usize;
                if let Some(m) = msg.as_deref_mut() {
                    let room = Self::KEEP.saturating_sub(m.head.len()).min(take);
                    let kept = &self.buf[self.at..self.at + room];
                    m.head
                        .extend(kept.iter().enumerate().map(|(i, b)| match mask {
                            Some(k) => b ^ k[(offset + i) % 4],
                            None => *b,
                        }));
                    m.len += take as u64;
                }
                self.at += take;
                offset += take;
                left -= take as u64;
            }
            if fin && !control {
                if let Some(m) = message.take() {
                    return Ok(m);
                }
            }
        }
    }
}

/// True when a message (of `len` bytes, starting with `head`) is the one
/// that syncs a fresh client: native `synced`, or sync step 2 (after the
/// document name for Hocuspocus, whose SyncReply type 4 counts too).
fn is_sync_message(proto: Proto, head: &[u8], len: u64) -> Result<bool> {
    if len as usize <= head.len() {
        let frame = Bytes::copy_from_slice(head);
        return match classify(proto, &frame) {
            Incoming::Synced(_) => Ok(true),
            Incoming::Error(e) => bail!("server error: {e}"),
            _ => Ok(false),
        };
    }
    // Longer than the kept head: only the message type is read.
    let mut r = Reader { b: head, i: 0 };
    Ok(match proto {
        Proto::Native => {
            let mut p = Pack { b: head, i: 0 };
            p.map_len().is_some() && p.str() == Some(b"t") && p.str() == Some(b"synced")
        }
        Proto::Yws | Proto::Ysweet => r.var() == Some(0) && r.var() == Some(1),
        Proto::Hocuspocus => {
            r.bytes().is_some() && matches!(r.var(), Some(0 | 4)) && r.var() == Some(1)
        }
    })
}

/// Connects a join-storm client to `room` and waits for its sync message:
/// the connection, the sync message's size and the messages received.
async fn raw_join(target: &Target, room: &str) -> Result<(RawWs, u64, u64)> {
    let mut ws = RawWs::connect(target, &target.ws_url(room)?).await?;
    for f in target.join_frames(room, None) {
        ws.send(&f).await?;
    }
    let mut messages = 0;
    loop {
        let m = ws.next().await?;
        messages += 1;
        if m.opcode == 2 && is_sync_message(target.proto, &m.head, m.len)? {
            return Ok((ws, m.len, messages));
        }
    }
}

/// How a client learns the document it joined.
enum Synced {
    /// Native: the server's state vector.
    Sv(Bytes),
    /// y-protocols: sync step 2 (the whole document for an empty client).
    Update(Bytes),
}

enum Incoming {
    Synced(Synced),
    Update(Bytes),
    Error(String),
    Other,
}

/// A y-protocols sync message (`alt`: another leading message type that
/// carries sync messages, Hocuspocus' SyncReply).
fn classify_sync(frame: &Bytes, alt: u64) -> Incoming {
    let mut r = Reader { b: frame, i: 0 };
    let kind = r.var();
    if kind != Some(0) && kind != Some(alt) {
        return Incoming::Other;
    }
    match r.var() {
        Some(1) => r.bytes().map_or(Incoming::Other, |b| {
            Incoming::Synced(Synced::Update(frame.slice_ref(b)))
        }),
        Some(2) => r
            .bytes()
            .map_or(Incoming::Other, |b| Incoming::Update(frame.slice_ref(b))),
        _ => Incoming::Other,
    }
}

/// A native server message, read field by field without decoding the
/// rest: `synced` (its `sv`), `update` (its `data`) and `error` matter.
fn classify_native(frame: &Bytes) -> Incoming {
    let mut r = Pack { b: frame, i: 0 };
    let Some(n) = r.map_len() else {
        return Incoming::Other;
    };
    let (mut t, mut bin, mut message) = (None, None, None);
    for _ in 0..n {
        let Some(key) = r.str() else {
            return Incoming::Other;
        };
        let ok = match key {
            b"t" => r.str().map(|v| t = Some(v)),
            b"sv" | b"data" => r.bin().map(|v| bin = Some(v)),
            b"message" => r.str().map(|v| message = Some(v)),
            _ => r.skip(),
        };
        if ok.is_none() {
            return Incoming::Other;
        }
    }
    match (t, bin) {
        (Some(b"synced"), Some(sv)) => Incoming::Synced(Synced::Sv(frame.slice_ref(sv))),
        (Some(b"update"), Some(data)) => Incoming::Update(frame.slice_ref(data)),
        (Some(b"error"), _) => {
            Incoming::Error(String::from_utf8_lossy(message.unwrap_or_default()).into_owned())
        }
        _ => Incoming::Other,
    }
}

/// A MessagePack reader that borrows strings and binaries.
struct Pack<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Pack<'a> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    fn be(&mut self, n: usize) -> Option<usize> {
        let bytes = self.take(n)?;
        Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(out)
    }
    fn map_len(&mut self) -> Option<usize> {
        match self.u8()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.take(n)
    }
    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return None,
        };
        self.take(n)
    }
    /// Skips one value of any type.
    fn skip(&mut self) -> Option<()> {
        let (fixed, items) = match self.u8()? {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            m @ 0x80..=0x8f => (0, 2 * (m & 0x0f) as usize),
            m @ 0x90..=0x9f => (0, (m & 0x0f) as usize),
            m @ 0xa0..=0xbf => ((m & 0x1f) as usize, 0),
            0xc4 | 0xd9 => (self.be(1)?, 0),
            0xc5 | 0xda => (self.be(2)?, 0),
            0xc6 | 0xdb => (self.be(4)?, 0),
            0xc7 => (self.be(1)? + 1, 0),
            0xc8 => (self.be(2)? + 1, 0),
            0xc9 => (self.be(4)? + 1, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.be(2)?),
            0xdd => (0, self.be(4)?),
            0xde => (0, 2 * self.be(2)?),
            0xdf => (0, 2 * self.be(4)?),
            0xc1 => return None,
        };
        self.take(fixed)?;
        for _ in 0..items {
            self.skip()?;
        }
        Some(())
    }
}

/// Calls `each(client, start, end)` for every clock range of items a Yjs v1
/// update inserts, reading the struct headers only. `None` for content it
/// does not walk (`Any`, sub-documents) or a malformed update: the caller
/// then decodes it with yrs.
fn inserted_ranges(update: &[u8], mut each: impl FnMut(u64, u32, u32)) -> Option<()> {
    let mut r = Reader { b: update, i: 0 };
    for _ in 0..r.var()? {
        let structs = r.var()?;
        let client = r.var()?;
        let start = r.var()? as u32;
        let mut clock = start;
        for _ in 0..structs {
            let info = *r.b.get(r.i)?;
            r.i += 1;
            let len = match info & 0x1f {
                // GC or skip: never in updates this tool times.
                0 | 10 => return None,
                content => {
                    if info & 0x80 != 0 {
                        r.var()?;
                        r.var()?;
                    }
                    if info & 0x40 != 0 {
                        r.var()?;
                        r.var()?;
                    }
                    if info & 0xc0 == 0 {
                        if r.var()? == 1 {
                            r.bytes()?;
                        } else {
                            r.var()?;
                            r.var()?;
                        }
                        if info & 0x20 != 0 {
                            r.bytes()?;
                        }
                    }
                    match content {
                        1 => r.var()? as u32,
                        2 => {
                            let n = r.var()?;
                            for _ in 0..n {
                                r.bytes()?;
                            }
                            n as u32
                        }
                        3 | 5 => {
                            r.bytes()?;
                            1
                        }
                        4 => {
                            let s = std::str::from_utf8(r.bytes()?).ok()?;
                            s.encode_utf16().count() as u32
                        }
                        6 => {
                            r.bytes()?;
                            r.bytes()?;
                            1
                        }
                        7 => {
                            let type_ref = r.var()?;
                            if type_ref == 3 || type_ref == 5 {
                                r.bytes()?;
                            }
                            1
                        }
                        _ => return None,
                    }
                }
            };
            clock += len;
        }
        if clock > start {
            each(client, start, clock);
        }
    }
    Some(())
}

fn hocus_prefix(room: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(room.len() + msg.len() + 2);
    write_string(&mut out, room);
    out.extend_from_slice(msg);
    out
}

fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    write_var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// lib0 var-uint reader over a frame.
struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn var(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.b.get(self.i)?;
            self.i += 1;
            n |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(n);
            }
        }
        None
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.var()? as usize;
        let out = self.b.get(self.i..self.i.checked_add(len)?)?;
        self.i += len;
        Some(out)
    }
}

fn socket_addr(url: &str) -> Result<SocketAddr> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("bad url {url}"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:80")
    };
    let host = host.replace("localhost", "127.0.0.1");
    host.parse().with_context(|| format!("address of {url}"))
}

/// A minimal HTTP/1.1 POST (y-sweet's document API), body as JSON.
async fn http_post(base: &str, path: &str, body: &str) -> Result<String> {
    let addr = socket_addr(base)?;
    let mut s = TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 2") {
        bail!("POST {path}: {}", head.lines().next().unwrap_or(""));
    }
    // Chunked replies: keep the JSON object only.
    let body = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => body[a..=b].to_string(),
        _ => body.to_string(),
    };
    Ok(body)
}

// ---------------------------------------------------------------------------
// Clients

/// Connects and joins `room`; returns the split socket and how it synced.
async fn join(
    target: &Target,
    room: &str,
    presence: Option<Value>,
    wait_sync: bool,
) -> Result<(Sink, Source, Option<Synced>)> {
    let ws = target.connect(room).await?;
    let (mut sink, mut source) = ws.split();
    for f in target.join_frames(room, presence) {
        sink.send(Message::Binary(f.into())).await?;
    }
    if !wait_sync {
        return Ok((sink, source, None));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let frame = match tokio::time::timeout_at(deadline, source.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(Message::Close(c)))) => bail!("closed before sync: {c:?}"),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => bail!("before sync: {e}"),
            Ok(None) => bail!("connection ended before sync"),
            Err(_) => bail!("no sync within 120 s"),
        };
        match target.classify(&frame) {
            Incoming::Synced(s) => return Ok((sink, source, Some(s))),
            Incoming::Error(e) => bail!("server error: {e}"),
            _ => {}
        }
    }
}

/// Send instants of every writer's clocks, µs since the run's origin
/// (0 = not sent).
struct SendTable {
    origin: Instant,
    sent: Vec<Vec<AtomicU64>>,
}

impl SendTable {
    fn new(writers: usize, per_writer: usize) -> Self {
        SendTable {
            origin: Instant::now(),
            sent: (0..writers)
                .map(|_| (0..per_writer).map(|_| AtomicU64::new(0)).collect())
                .collect(),
        }
    }
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Clocks seen per writer, from a state vector.
fn writer_clocks(sv: &StateVector, writers: usize) -> Vec<u32> {
    (0..writers)
        .map(|w| sv.get(&yrs::block::ClientID::new(WRITER_BASE + w as u64)))
        .collect()
}

/// What one receiver measured.
#[derive(Default)]
struct Received {
    latencies_us: Vec<u32>,
    updates: u64,
    frames: u64,
    bytes: u64,
}

/// A fanout / rooms receiver: times every writer clock it sees for the first
/// time; stops at `until`.
async fn receive(
    target: Arc<Target>,
    mut source: Source,
    mut seen: Vec<u32>,
    table: Arc<SendTable>,
    measure_from_us: u64,
    until: tokio::time::Instant,
) -> Received {
    let mut out = Received::default();
    loop {
        let frame = match tokio::time::timeout_at(until, source.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            _ => break,
        };
        let now = table.now_us();
        out.frames += 1;
        out.bytes += frame.len() as u64;
        let data = match target.classify(&frame) {
            Incoming::Update(d) => d,
            _ => continue,
        };
        let mut time = |client: u64, start: u32, end: u32| {
            let Some(w) = client
                .checked_sub(WRITER_BASE)
                .map(|w| w as usize)
                .filter(|w| *w < seen.len())
            else {
                return;
            };
            for clock in start.max(seen[w])..end {
                let sent = table.sent[w]
                    .get(clock as usize)
                    .map_or(0, |a| a.load(Ordering::Relaxed));
                out.updates += 1;
                if sent >= measure_from_us && sent > 0 {
                    out.latencies_us
                        .push(now.saturating_sub(sent).min(u32::MAX as u64) as u32);
                }
            }
            seen[w] = seen[w].max(end);
        };
        if inserted_ranges(&data, &mut time).is_some() {
            continue;
        }
        let Ok(update) = Update::decode_v1(&data) else {
            continue;
        };
        // The clock ranges it inserts (`state_vector()` would only count
        // updates that start at clock 0).
        for (client, ranges) in update.insertions(true).iter() {
            for range in ranges.iter() {
                time(client.get(), range.start, range.end);
            }
        }
    }
    out
}

/// Reads and drops everything until `until` (writers, idle connections);
/// keeps the connection answering pings. Returns (frames, bytes).
async fn drain(mut source: Source, until: tokio::time::Instant) -> (u64, u64) {
    let (mut frames, mut bytes) = (0, 0);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(until, source.next()).await {
        frames += 1;
        bytes += m.len() as u64;
    }
    (frames, bytes)
}

/// A writer: a yrs doc with its own client id, one character per update.
struct Writer {
    doc: Doc,
    text: yrs::TextRef,
}

impl Writer {
    fn new(client: u64) -> Self {
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(client),
            ..Options::default()
        });
        let text = doc.get_or_insert_text("t");
        Writer { doc, text }
    }
    /// Appends `s` and returns the update (one clock per character).
    fn write(&self, s: &str) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let len = self.text.len(&txn);
            self.text.insert(&mut txn, len, s);
        }
        self.doc.transact().encode_diff_v1(&before)
    }
}

/// Connects `n` clients with bounded concurrency; `f(i)` opens client `i`.
async fn open_many<T, F, Fut>(n: usize, concurrency: usize, f: F) -> Vec<Result<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let fut = f(i);
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await?;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.map_err(anyhow::Error::from).and_then(|r| r));
    }
    out
}

// ---------------------------------------------------------------------------
// Results

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    scenario: String,
    server: String,
    proto: String,
    params: Value,
    clients: usize,
    failed_connects: usize,
    secs: f64,
    latency_ms: Option<Latency>,
    delivered: u64,
    expected: u64,
    delivered_per_sec: f64,
    frames_in: u64,
    bytes_in: u64,
    server_cpu_secs: f64,
    server_cpu_cores: f64,
    server_cpu_us_per_delivered: Option<f64>,
    server_rss_before_kb: u64,
    server_rss_after_kb: u64,
    server_peak_rss_kb: u64,
    rss_per_unit_kb: Option<f64>,
    unit: Option<String>,
    sync_ms: Option<Latency>,
    load_cpu_secs: f64,
    notes: Vec<String>,
}

impl Report {
    /// Keeps the connections that opened; counts the others (noting the
    /// first failure, with `what` it was).
    fn keep_opened<T>(&mut self, opened: Vec<Result<T>>, what: &str) -> Vec<T> {
        let mut kept = Vec::new();
        for o in opened {
            match o {
                Ok(c) => kept.push(c),
                Err(e) => {
                    if self.failed_connects == 0 {
                        self.notes.push(format!("first failed {what}: {e:#}"));
                    }
                    self.failed_connects += 1;
                }
            }
        }
        kept
    }
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Latency {
    n: usize,
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn latency(mut us: Vec<u32>) -> Option<Latency> {
    if us.is_empty() {
        return None;
    }
    us.sort_unstable();
    let p = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Some(Latency {
        n: us.len(),
        p50: p(0.50),
        p95: p(0.95),
        p99: p(0.99),
        max: us[us.len() - 1] as f64 / 1000.0,
    })
}

fn print_report(r: &Report) {
    println!(
        "== {} / {} ({})  params {}",
        r.scenario, r.server, r.proto, r.params
    );
    println!(
        "  clients {} (failed {}), {:.1} s measured",
        r.clients, r.failed_connects, r.secs
    );
    if let Some(l) = &r.latency_ms {
        println!(
            "  delivery latency ms: p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n = {})",
            l.p50, l.p95, l.p99, l.max, l.n
        );
    }
    if let Some(l) = &r.sync_ms {
        println!(
            "  time to synced ms:   p50 {:.0}  p95 {:.0}  p99 {:.0}  max {:.0}  (n = {})",
            l.p50, l.p95, l.p99, l.max, l.n
        );
    }
    if r.expected > 0 {
        println!(
            "  delivered {} of {} expected ({:.0}/s)",
            r.delivered, r.expected, r.delivered_per_sec
        );
    }
    println!(
        "  frames in {}, bytes in {:.1} MB",
        r.frames_in,
        r.bytes_in as f64 / 1e6
    );
    println!(
        "  server cpu {:.2} s ({:.2} cores){}",
        r.server_cpu_secs,
        r.server_cpu_cores,
        r.server_cpu_us_per_delivered
            .map_or(String::new(), |u| format!(
                ", {u:.2} µs per delivered update"
            ))
    );
    println!(
        "  server rss {:.1} → {:.1} MB, peak {:.1} MB{}",
        r.server_rss_before_kb as f64 / 1024.0,
        r.server_rss_after_kb as f64 / 1024.0,
        r.server_peak_rss_kb as f64 / 1024.0,
        r.rss_per_unit_kb.map_or(String::new(), |k| format!(
            ", {k:.2} KB per {}",
            r.unit.as_deref().unwrap_or("unit")
        ))
    );
    println!("  load generator cpu {:.2} s", r.load_cpu_secs);
    for n in &r.notes {
        println!("  note: {n}");
    }
}

// ---------------------------------------------------------------------------
// Scenarios

struct Ctx {
    cli: Cli,
    target: Arc<Target>,
    pid: Option<u32>,
}

impl Ctx {
    fn stat(&self) -> ProcStat {
        self.pid.map(proc_stat).unwrap_or_default()
    }
    fn report(&self, scenario: &str, params: Value) -> Report {
        Report {
            scenario: scenario.into(),
            server: self.cli.label.clone(),
            proto: format!("{:?}", self.cli.proto).to_lowercase(),
            params,
            ..Report::default()
        }
    }
}

fn finish(r: &mut Report, before: ProcStat, after: ProcStat, wall: f64) {
    r.server_cpu_secs = after.cpu_secs - before.cpu_secs;
    r.server_cpu_cores = if wall > 0.0 {
        r.server_cpu_secs / wall
    } else {
        0.0
    };
    r.server_rss_before_kb = before.rss_kb;
    r.server_rss_after_kb = after.rss_kb;
    r.server_peak_rss_kb = after.hwm_kb;
    r.load_cpu_secs = self_cpu();
}

/// Writes one character to `room` as `writer` at every tick of `tick` before
/// `end`, counting sends in `sent_total`. `before_send` runs just before
/// each send (fanout records the send instant there); false stops writing.
/// Returns when writing stops; the caller decides how long to stay connected.
#[allow(clippy::too_many_arguments)]
async fn write_on_schedule(
    target: &Target,
    room: &str,
    writer: &Writer,
    sink: &mut Sink,
    mut tick: tokio::time::Interval,
    end: tokio::time::Instant,
    sent_total: &AtomicU64,
    mut before_send: impl FnMut() -> bool,
) {
    loop {
        let at = tick.tick().await;
        if at >= end || !before_send() {
            return;
        }
        let data = writer.write("x");
        if sink
            .send(Message::Binary(target.update_frame(room, data).into()))
            .await
            .is_err()
        {
            return;
        }
        sent_total.fetch_add(1, Ordering::Relaxed);
    }
}

/// The fanout writers, on their own runtime: each joins `room`, reports
/// through `joined`, then writes one character per period from `t0`
/// (spread over one period) until `end`, and stays connected until `until`.
#[allow(clippy::too_many_arguments)]
async fn run_writers(
    target: Arc<Target>,
    table: Arc<SendTable>,
    room: String,
    sent_total: Arc<AtomicU64>,
    writers: usize,
    rate: f64,
    joined: tokio::sync::oneshot::Sender<Result<()>>,
    start: tokio::sync::oneshot::Receiver<(
        tokio::time::Instant,
        tokio::time::Instant,
        tokio::time::Instant,
    )>,
) {
    let mut conns = Vec::new();
    for w in 0..writers {
        match join(&target, &room, None, true).await {
            Ok((sink, source, _)) => conns.push((w, sink, source)),
            Err(e) => {
                let _ = joined.send(Err(e));
                return;
            }
        }
    }
    let _ = joined.send(Ok(()));
    let Ok((t0, end, until)) = start.await else {
        return;
    };
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut drains = Vec::new();
    let mut tasks = Vec::new();
    for (w, mut sink, source) in conns {
        let (target, table, room, sent_total) = (
            target.clone(),
            table.clone(),
            room.clone(),
            sent_total.clone(),
        );
        // Spread the writers over one period.
        let offset = period.mul_f64(w as f64 / writers.max(1) as f64);
        drains.push(tokio::spawn(drain(source, until)));
        tasks.push(tokio::spawn(async move {
            let writer = Writer::new(WRITER_BASE + w as u64);
            let mut tick = tokio::time::interval_at(t0 + offset, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut clock = 0usize;
            let record = || {
                // The n-th update is clock n: its send instant, for latency.
                if clock + 1 >= table.sent[w].len() {
                    return false;
                }
                table.sent[w][clock].store(table.now_us(), Ordering::Relaxed);
                clock += 1;
                true
            };
            write_on_schedule(
                &target,
                &room,
                &writer,
                &mut sink,
                tick,
                end,
                &sent_total,
                record,
            )
            .await;
            // Keep the writer connected until the receivers are done.
            tokio::time::sleep_until(until).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    for t in drains {
        let _ = t.await;
    }
}

async fn fanout(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = "fanout".to_string();
    let per_writer = (cli.rate * (cli.secs + 2.0)).ceil() as usize + 16;
    let table = Arc::new(SendTable::new(cli.writers, per_writer));
    let mut r = ctx.report(
        "fanout",
        json!({"subscribers": cli.subscribers, "writers": cli.writers, "rate": cli.rate}),
    );
    // Subscribers first: they join an empty room.
    let opened = open_many(cli.subscribers, cli.connect_concurrency, |_| {
        let (t, room, writers) = (ctx.target.clone(), room.clone(), cli.writers);
        async move {
            let (sink, source, synced) = join(&t, &room, None, true).await?;
            let seen = match synced {
                Some(Synced::Sv(sv)) => writer_clocks(&StateVector::decode_v1(&sv)?, writers),
                Some(Synced::Update(u)) => {
                    writer_clocks(&Update::decode_v1(&u)?.state_vector(), writers)
                }
                None => vec![0; writers],
            };
            Ok((sink, source, seen))
        }
    })
    .await;
    let subs = r.keep_opened(opened, "connect");
    r.clients = subs.len();
    // Writers run on a thread and runtime of their own. On the receivers'
    // runtime their sends bunched up behind a thousand receivers' work (a
    // native observer counted 20 broadcasts/s instead of the ~47 the
    // schedule gives), so the server merged more and looked cheaper.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel::<Result<()>>();
    let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(
        tokio::time::Instant,
        tokio::time::Instant,
        tokio::time::Instant,
    )>();
    let sent_total = Arc::new(AtomicU64::new(0));
    let writer_thread = {
        let (target, table, room, sent_total) = (
            ctx.target.clone(),
            table.clone(),
            room.clone(),
            sent_total.clone(),
        );
        let (writers, rate) = (cli.writers, cli.rate);
        std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = joined_tx.send(Err(e.into()));
                    return;
                }
            };
            rt.block_on(run_writers(
                target, table, room, sent_total, writers, rate, joined_tx, start_rx,
            ));
        })
    };
    joined_rx
        .await
        .map_err(|_| anyhow!("writer thread ended"))??;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warmup = Duration::from_secs(1);
    let measured = Duration::from_secs_f64(cli.secs);
    let t0 = tokio::time::Instant::now();
    let writers_end = t0 + warmup + measured;
    let until = writers_end + Duration::from_secs(3);
    let measure_from_us = table.now_us() + warmup.as_micros() as u64;
    let mut rx = Vec::new();
    let mut sinks = Vec::new();
    for (sink, source, seen) in subs {
        sinks.push(sink);
        rx.push(tokio::spawn(receive(
            ctx.target.clone(),
            source,
            seen,
            table.clone(),
            measure_from_us,
            until,
        )));
    }
    let _ = start_tx.send((t0, writers_end, until));
    // Server CPU over the measured window only (after the warm-up).
    tokio::time::sleep_until(t0 + warmup).await;
    let before = ctx.stat();
    tokio::time::sleep_until(writers_end + Duration::from_millis(500)).await;
    let after = ctx.stat();
    let mut lat = Vec::new();
    for t in rx {
        let got = t.await?;
        r.delivered += got.updates;
        r.frames_in += got.frames;
        r.bytes_in += got.bytes;
        lat.extend(got.latencies_us);
    }
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    drop(sinks);
    let sent = sent_total.load(Ordering::Relaxed);
    r.expected = sent * r.clients as u64;
    r.secs = cli.secs;
    let measured_deliveries = lat.len() as f64;
    r.delivered_per_sec = measured_deliveries / cli.secs;
    r.latency_ms = latency(lat);
    finish(&mut r, before, after, cli.secs + 0.5);
    if measured_deliveries > 0.0 {
        r.server_cpu_us_per_delivered = Some(r.server_cpu_secs * 1e6 / measured_deliveries);
    }
    Ok(r)
}

/// Many connections (idle) or many rooms with light traffic (rooms).
async fn many(ctx: &Ctx, rooms_mode: bool) -> Result<Report> {
    let cli = &ctx.cli;
    let (n_rooms, per_room) = if rooms_mode {
        (cli.rooms, cli.per_room.max(1))
    } else {
        (1, cli.conns)
    };
    let room_name = |i: usize| {
        if rooms_mode {
            format!("room-{i}")
        } else {
            "idle".to_string()
        }
    };
    let mut r = if rooms_mode {
        ctx.report(
            "rooms",
            json!({"rooms": n_rooms, "per_room": per_room, "interval_s": cli.room_interval}),
        )
    } else {
        ctx.report("idle", json!({"conns": cli.conns, "join": cli.idle_join}))
    };
    let before = ctx.stat();
    let t_setup = Instant::now();
    let total = n_rooms * per_room;
    let idle_join = cli.idle_join;
    let opened = open_many(total, cli.connect_concurrency, |i| {
        let t = ctx.target.clone();
        let room = room_name(i / per_room);
        let hello_only = !rooms_mode && !idle_join && t.proto == Proto::Native;
        async move {
            if hello_only {
                let ws = t.connect(&room).await?;
                let (mut sink, source) = ws.split();
                let hello = t.join_frames(&room, None).swap_remove(0);
                sink.send(Message::Binary(hello.into())).await?;
                return Ok((i, sink, source));
            }
            join(&t, &room, None, true)
                .await
                .map(|(s, src, _)| (i, s, src))
        }
    })
    .await;
    let conns = r.keep_opened(opened, "connect");
    r.clients = conns.len();
    r.notes
        .push(format!("setup {:.1} s", t_setup.elapsed().as_secs_f64()));
    let secs = if rooms_mode {
        cli.secs
    } else {
        cli.secs.min(5.0)
    };
    let t0 = tokio::time::Instant::now();
    let until = t0 + Duration::from_secs_f64(secs) + Duration::from_secs(1);
    let mut tasks = Vec::new();
    let sent_total = Arc::new(AtomicU64::new(0));
    for (i, mut sink, source) in conns {
        tasks.push(tokio::spawn(drain(source, until)));
        if rooms_mode && i % per_room == 0 {
            // The first client of each room writes a small document, then
            // one short update every `room_interval`, at a random phase.
            let (t, room, sent_total) = (
                ctx.target.clone(),
                room_name(i / per_room),
                sent_total.clone(),
            );
            let period = Duration::from_secs_f64(cli.room_interval);
            let phase = period.mul_f64(rand::random::<f64>());
            let first_secs = secs;
            tasks.push(tokio::spawn(async move {
                let writer = Writer::new(WRITER_BASE + i as u64);
                let data = writer.write(&"small document ".repeat(8));
                let _ = sink
                    .send(Message::Binary(t.update_frame(&room, data).into()))
                    .await;
                let tick = tokio::time::interval_at(t0 + phase, period);
                let end = t0 + Duration::from_secs_f64(first_secs);
                write_on_schedule(
                    &t,
                    &room,
                    &writer,
                    &mut sink,
                    tick,
                    end,
                    &sent_total,
                    || true,
                )
                .await;
                tokio::time::sleep_until(until).await;
                drop(sink);
                (0, 0)
            }));
        } else {
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(until).await;
                drop(sink);
                (0, 0)
            }));
        }
    }
    let cpu_from = ctx.stat();
    tokio::time::sleep_until(until - Duration::from_millis(500)).await;
    let after = ctx.stat();
    for t in tasks {
        if let Ok((f, b)) = t.await {
            r.frames_in += f;
            r.bytes_in += b;
        }
    }
    r.secs = secs;
    finish(&mut r, before, after, secs + 0.5);
    r.server_cpu_secs = after.cpu_secs - cpu_from.cpu_secs;
    r.server_cpu_cores = r.server_cpu_secs / (secs + 0.5);
    let grown = after.rss_kb.saturating_sub(before.rss_kb) as f64;
    if rooms_mode {
        r.rss_per_unit_kb = Some(grown / n_rooms as f64);
        r.unit = Some(format!("room (with its {per_room} connections)"));
        r.delivered = sent_total.load(Ordering::Relaxed);
    } else {
        r.rss_per_unit_kb = Some(grown / r.clients.max(1) as f64);
        r.unit = Some("connection".into());
    }
    Ok(r)
}

async fn join_storm(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = format!("storm-{}", std::process::id());
    let mut r = ctx.report(
        "join-storm",
        json!({"clients": cli.clients, "doc_mb": cli.doc_mb}),
    );
    // Seed the document: 1 MB text updates from one writer.
    let bytes = (cli.doc_mb * 1_000_000.0) as usize;
    let seed_t = Instant::now();
    let seeder;
    {
        let (mut sink, source, _) = join(&ctx.target, &room, None, true).await?;
        let drainer = tokio::spawn(drain(
            source,
            tokio::time::Instant::now() + Duration::from_secs(120),
        ));
        let writer = Writer::new(WRITER_BASE);
        let chunk = "abcdefghij".repeat(100_000);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            let data = writer.write(&chunk[..n]);
            sink.send(Message::Binary(ctx.target.update_frame(&room, data).into()))
                .await?;
            left -= n;
        }
        // Check the seed arrived: a fresh client syncs and sees the size.
        let expect = writer.text.get_string(&writer.doc.transact()).len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, _, synced) = join(&ctx.target, &room, None, true).await?;
            let size = match synced {
                Some(Synced::Sv(sv)) => writer_clocks(&StateVector::decode_v1(&sv)?, 1)[0] as usize,
                Some(Synced::Update(u)) => u.len(),
                None => 0,
            };
            if size >= expect || Instant::now() > deadline {
                r.notes
                    .push(format!("seeded {expect} chars; a probe synced {size}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The seeder stays connected through the storm: a server without
        // persistence (Hocuspocus here) unloads a document nobody is in.
        seeder = Some((sink, drainer));
    }
    r.notes
        .push(format!("seed {:.1} s", seed_t.elapsed().as_secs_f64()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = ctx.stat();
    let start = Instant::now();
    let opened = open_many(cli.clients, cli.clients, |_| {
        let (t, room) = (ctx.target.clone(), room.clone());
        async move {
            let (ws, size, messages) = raw_join(&t, &room).await?;
            Ok((start.elapsed(), size, messages, ws))
        }
    })
    .await;
    let wall = start.elapsed().as_secs_f64();
    let after = ctx.stat();
    let mut times = Vec::new();
    let mut keep = Vec::new();
    for o in opened {
        match o {
            Ok((at, size, messages, ws)) => {
                times.push(at.as_micros() as u32);
                r.bytes_in += size;
                r.frames_in += messages;
                keep.push(ws);
            }
            Err(e) => {
                if r.failed_connects == 0 {
                    r.notes.push(format!("first failed join: {e:#}"));
                }
                r.failed_connects += 1;
            }
        }
    }
    r.clients = times.len();
    r.secs = wall;
    r.notes
        .push(format!("all {} synced within {:.2} s", r.clients, wall));
    r.sync_ms = latency(times);
    finish(&mut r, before, after, wall);
    drop(keep);
    if let Some((_, drainer)) = seeder {
        drainer.abort();
    }
    Ok(r)
}

async fn presence(ctx: &Ctx) -> Result<Report> {
    let cli = &ctx.cli;
    let room = "presence".to_string();
    let mut r = ctx.report("presence", json!({"clients": cli.clients, "hz": cli.hz}));
    // A valid encoded relative position (item 1:0 of client 1, assoc after).
    let pos = {
        use yrs::updates::encoder::Encode;
        yrs::StickyIndex::new(
            yrs::IndexScope::Relative(yrs::ID::new(yrs::block::ClientID::new(1), 0)),
            yrs::Assoc::After,
        )
        .encode_v1()
    };
    let opened = open_many(cli.clients, cli.connect_concurrency, |i| {
        let (t, room) = (ctx.target.clone(), room.clone());
        async move {
            let presence = Some(json!({ "name": format!("load-{i}") }));
            join(&t, &room, presence, true)
                .await
                .map(|(s, src, _)| (i, s, src))
        }
    })
    .await;
    let conns = r.keep_opened(opened, "connect");
    r.clients = conns.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = tokio::time::Instant::now();
    let warmup = Duration::from_secs(1);
    let end = t0 + warmup + Duration::from_secs_f64(cli.secs);
    let until = end + Duration::from_secs(1);
    let sent_total = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (i, mut sink, source) in conns {
        tasks.push(tokio::spawn(drain(source, until)));
        let (t, room, pos, sent_total) = (
            ctx.target.clone(),
            room.clone(),
            pos.clone(),
            sent_total.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / cli.hz);
        let phase = period.mul_f64(rand::random::<f64>());
        tasks.push(tokio::spawn(async move {
            let client = 0x2000_0000 + i as u64;
            let mut tick = tokio::time::interval_at(t0 + phase, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut clock = 1u32;
            loop {
                let at = tick.tick().await;
                if at >= end {
                    break;
                }
                let f = t.cursor_frame(&room, client, clock, &pos);
                clock += 1;
                if sink.send(Message::Binary(f.into())).await.is_err() {
                    break;
                }
                sent_total.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep_until(until).await;
            drop(sink);
            (0, 0)
        }));
    }
    tokio::time::sleep_until(t0 + warmup).await;
    let before = ctx.stat();
    let load_before = self_cpu();
    tokio::time::sleep_until(end).await;
    let after = ctx.stat();
    for t in tasks {
        if let Ok((f, b)) = t.await {
            r.frames_in += f;
            r.bytes_in += b;
        }
    }
    r.secs = cli.secs;
    r.delivered = sent_total.load(Ordering::Relaxed);
    r.delivered_per_sec = r.frames_in as f64 / (cli.secs + 2.0);
    finish(&mut r, before, after, cli.secs);
    r.notes.push(format!(
        "{} cursor moves sent; frames_in counts every frame received over the whole run; load generator used {:.2} s CPU while measured",
        r.delivered,
        self_cpu() - load_before
    ));
    r.delivered = 0;
    Ok(r)
}

// ---------------------------------------------------------------------------
// Server process

struct Spawned(Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let pid = self.0.id();
        // SIGTERM first (graceful), then SIGKILL after 3 s.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(cmd: &str, url: &str) -> Result<Spawned> {
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("exec {cmd}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("starting {cmd}"))?;
    let spawned = Spawned(child);
    let addr = socket_addr(url)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{cmd} did not listen on {addr} within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(spawned)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let spawned = match &cli.spawn {
        Some(cmd) => Some(spawn_server(cmd, &cli.url)?),
        None => None,
    };
    let pid = cli.server_pid.or(spawned.as_ref().map(|s| s.0.id()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let mut target = Target {
            proto: cli.proto,
            url: cli.url.clone(),
            ysweet_urls: HashMap::new(),
            sources: cli.sources,
            next_source: AtomicUsize::new(0),
            read_buffer: match cli.scenario {
                Scenario::JoinStorm => 256 * 1024,
                _ => 8 * 1024,
            },
        };
        let rooms: Vec<String> = match cli.scenario {
            Scenario::Fanout => vec!["fanout".into()],
            Scenario::Rooms => (0..cli.rooms).map(|i| format!("room-{i}")).collect(),
            Scenario::Idle => vec!["idle".into()],
            Scenario::JoinStorm => vec![format!("storm-{}", std::process::id())],
            Scenario::Presence => vec!["presence".into()],
        };
        target.prepare(&rooms, cli.connect_concurrency).await?;
        let scenario = cli.scenario;
        let ctx = Ctx {
            cli,
            target: Arc::new(target),
            pid,
        };
        let report = match scenario {
            Scenario::Fanout => fanout(&ctx).await,
            Scenario::Rooms => many(&ctx, true).await,
            Scenario::Idle => many(&ctx, false).await,
            Scenario::JoinStorm => join_storm(&ctx).await,
            Scenario::Presence => presence(&ctx).await,
        };
        report.map(|r| (r, ctx.cli.json.clone()))
    });
    // Stop every client task before the server.
    rt.shutdown_timeout(Duration::from_secs(2));
    drop(spawned);
    let (report, json_path) = report?;
    print_report(&report);
    if let Some(path) = json_path {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(f, "{}", serde_json::to_string(&report)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus::protocol::native::{encode_server, ServerMessage};

    fn ranges_by_yrs(update: &[u8]) -> Vec<(u64, u32, u32)> {
        let mut out = Vec::new();
        let update = Update::decode_v1(update).expect("an update");
        for (client, ranges) in update.insertions(true).iter() {
            for r in ranges.iter() {
                out.push((client.get(), r.start, r.end));
            }
        }
        out.sort_unstable();
        out
    }

    /// The header walk finds the same clock ranges as yrs, for single and
    /// merged updates of several writers, with multi-byte characters.
    #[test]
    fn inserted_ranges_match_yrs() {
        let writers: Vec<Writer> = (0..3).map(|w| Writer::new(WRITER_BASE + w)).collect();
        let mut all = Vec::new();
        for round in 0..4 {
            for (w, writer) in writers.iter().enumerate() {
                let text = if (round + w) % 2 == 0 {
                    "x"
                } else {
                    "é😀ab"
                };
                all.push(writer.write(text));
            }
        }
        let merged = yrs::merge_updates_v1(all.iter().map(|u| u.as_slice())).expect("merge");
        for update in all.iter().chain([&merged]) {
            let mut got = Vec::new();
            inserted_ranges(update, |c, s, e| got.push((c, s, e))).expect("walked");
            got.sort_unstable();
            assert_eq!(got, ranges_by_yrs(update));
        }
    }

    #[test]
    fn native_frames_are_classified_without_decoding() {
        let frame = |m: &ServerMessage| Bytes::from(encode_server(m));
        let update = frame(&ServerMessage::Update {
            room: "r".into(),
            data: Bin(vec![1, 2, 3]),
            origin: Some("n-1".into()),
        });
        assert!(matches!(classify_native(&update), Incoming::Update(d) if d[..] == [1, 2, 3]));
        let synced = frame(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(vec![0; 300]),
            sv: Bin(vec![7]),
            rid: Some(1),
        });
        assert!(
            matches!(classify_native(&synced), Incoming::Synced(Synced::Sv(sv)) if sv[..] == [7])
        );
        let error = frame(&ServerMessage::Error {
            code: chorus::protocol::ErrorCode::Forbidden,
            message: "no".into(),
            rid: None,
            room: None,
        });
        assert!(matches!(classify_native(&error), Incoming::Error(m) if m == "no"));
        let ack = frame(&ServerMessage::Ack {
            room: "r".into(),
            rid: 3,
        });
        assert!(matches!(classify_native(&ack), Incoming::Other));
    }

    /// A large sync message is recognised from the first bytes a raw
    /// receiver keeps, in every protocol; other messages are not.
    #[test]
    fn sync_messages_are_recognised_from_their_first_bytes() {
        let keep = |m: &[u8]| m[..m.len().min(RawWs::KEEP)].to_vec();
        let big = vec![5u8; 3 * RawWs::KEEP];
        let synced = encode_server(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(big.clone()),
            sv: Bin(vec![7]),
            rid: Some(1),
        });
        let update = encode_server(&ServerMessage::Update {
            room: "r".into(),
            data: Bin(big.clone()),
            origin: None,
        });
        let sync = |m: &[u8], proto| is_sync_message(proto, &keep(m), m.len() as u64).unwrap();
        assert!(sync(&synced, Proto::Native));
        assert!(!sync(&update, Proto::Native));
        let step2 = yjs::sync_step2(big.clone());
        let y_update = yjs::sync_update(big);
        assert!(sync(&step2, Proto::Yws));
        assert!(sync(&step2, Proto::Ysweet));
        assert!(!sync(&y_update, Proto::Yws));
        assert!(!sync(&yjs::sync_step1(&StateVector::default()), Proto::Yws));
        assert!(sync(&hocus_prefix("doc", &step2), Proto::Hocuspocus));
        assert!(!sync(&hocus_prefix("doc", &y_update), Proto::Hocuspocus));
        // Small enough to be kept whole: classified by the full decoders.
        let small = encode_server(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(vec![1]),
            sv: Bin(vec![7]),
            rid: None,
        });
        assert!(sync(&small, Proto::Native));
    }

    /// The raw receiver against tungstenite's server: a ping is skipped, a
    /// large message is counted whole with its first bytes kept, a
    /// fragmented message is reassembled, and its masked frames arrive intact.
    #[tokio::test]
    async fn raw_receiver_reads_what_a_websocket_server_sends() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let sent = big.clone();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let got = loop {
                match ws.next().await.unwrap().unwrap() {
                    Message::Binary(b) => break b,
                    _ => continue,
                }
            };
            ws.send(Message::Ping(vec![1].into())).await.unwrap();
            ws.send(Message::Binary(sent.into())).await.unwrap();
            let first = Frame::message(vec![1u8, 2], OpCode::Data(Data::Binary), false);
            let rest = Frame::message(vec![3u8; 200_000], OpCode::Data(Data::Continue), true);
            ws.send(Message::Frame(first)).await.unwrap();
            ws.send(Message::Frame(rest)).await.unwrap();
            got
        });
        let target = Target {
            proto: Proto::Native,
            url: format!("ws://{addr}"),
            ysweet_urls: HashMap::new(),
            sources: 1,
            next_source: AtomicUsize::new(0),
            read_buffer: 8 * 1024,
        };
        let mut raw = RawWs::connect(&target, &format!("ws://{addr}/ws?x=1"))
            .await
            .unwrap();
        let payload: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        raw.send(&payload).await.unwrap();
        let m = raw.next().await.unwrap();
        assert_eq!((m.opcode, m.len), (2, big.len() as u64));
        assert_eq!(m.head, big[..RawWs::KEEP]);
        let m = raw.next().await.unwrap();
        assert_eq!((m.opcode, m.len), (2, 200_002));
        assert_eq!(m.head[..3], [1, 2, 3]);
        assert_eq!(m.head.len(), RawWs::KEEP);
        assert_eq!(server.await.unwrap()[..], payload[..]);
    }
}
