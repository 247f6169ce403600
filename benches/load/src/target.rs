//! Targets: how to reach a room, in each protocol.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::cli::Proto;
use crate::protocol::{self, ysweet, Incoming};

/// A client's WebSocket.
pub type Ws = WebSocketStream<TcpStream>;

/// Where clients connect and how they speak.
pub struct Target {
    /// The protocol every client speaks.
    pub proto: Proto,
    /// `--url`.
    url: String,
    /// y-sweet: room → WebSocket URL handed out by its auth endpoint.
    ysweet_urls: HashMap<String, String>,
    /// Source addresses 127.0.0.1 ..= 127.0.0.`sources`, used round-robin.
    sources: u8,
    next_source: AtomicUsize,
    /// Read buffer per connection: small for thousands of mostly idle
    /// connections; large when each client receives a big document
    /// (join-storm), so that the generator does not spend its CPU on
    /// thousands of small reads per client.
    read_buffer: usize,
}

impl Target {
    /// Clients speaking `proto` to the server at `url`.
    pub fn new(proto: Proto, url: String, sources: u8, read_buffer: usize) -> Self {
        Target {
            proto,
            url,
            ysweet_urls: HashMap::new(),
            sources,
            next_source: AtomicUsize::new(0),
            read_buffer,
        }
    }

    /// The WebSocket URL of `room`.
    pub fn ws_url(&self, room: &str) -> Result<String> {
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
    pub async fn prepare(&mut self, rooms: &[String], concurrency: usize) -> Result<()> {
        if self.proto != Proto::Ysweet {
            return Ok(());
        }
        self.ysweet_urls
            .extend(ysweet::client_urls(&self.url, rooms, concurrency).await?);
        Ok(())
    }

    /// A TCP connection to the server of `url` from the next source address.
    pub async fn tcp(&self, url: &str) -> Result<TcpStream> {
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
    pub async fn connect(&self, room: &str) -> Result<Ws> {
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
    pub fn join_frames(&self, room: &str, presence: Option<Value>) -> Vec<Vec<u8>> {
        protocol::join_frames(self.proto, room, presence)
    }

    /// A frame carrying one Yjs v1 update for `room`.
    pub fn update_frame(&self, room: &str, data: Vec<u8>) -> Vec<u8> {
        protocol::update_frame(self.proto, room, data)
    }

    /// A cursor move: a native `cursor`, or an awareness state with `cursor`.
    pub fn cursor_frame(&self, room: &str, client: u64, clock: u32, pos: &[u8]) -> Vec<u8> {
        protocol::cursor_frame(self.proto, room, client, clock, pos)
    }

    /// What an incoming frame is, decoding as little as possible: the
    /// returned bytes are slices of `frame` (no copy).
    pub fn classify(&self, frame: &Bytes) -> Incoming {
        protocol::classify(self.proto, frame)
    }
}

/// The socket address of `url`'s host and port (port 80 if none;
/// `localhost` is 127.0.0.1).
pub fn socket_addr(url: &str) -> Result<SocketAddr> {
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
