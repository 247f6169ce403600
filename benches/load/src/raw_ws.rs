//! Raw receivers: join-storm clients read frames straight off the socket.

use anyhow::{bail, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::target::Target;

/// A WebSocket client for receivers of large documents (join-storm). It
/// keeps only the first [`RawWs::KEEP`] bytes of a message and reads the
/// rest into one reusable buffer: 200 clients × 10 MB would otherwise make
/// the generator allocate, zero and copy 2 GB (tungstenite assembles every
/// message), and the run would time the generator instead of the server.
pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Unread bytes are `buf[at..end]`.
    at: usize,
    end: usize,
}

/// A message as a [`RawWs`] sees it: its opcode, its full length and its
/// first bytes.
pub struct RawMessage {
    /// The opcode of its first frame (2: binary).
    pub opcode: u8,
    /// Its length, over all its frames.
    pub len: u64,
    /// Its first [`RawWs::KEEP`] bytes (all of it when shorter).
    pub head: Vec<u8>,
}

impl RawWs {
    /// Bytes of a message kept for classifying it.
    pub const KEEP: usize = 4096;

    /// Connects and upgrades to `url` (ws://host:port/path?query).
    pub async fn connect(target: &Target, url: &str) -> Result<RawWs> {
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
    pub async fn send(&mut self, payload: &[u8]) -> Result<()> {
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
    pub async fn next(&mut self) -> Result<RawMessage> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Proto;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

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
        let target = Target::new(Proto::Native, format!("ws://{addr}"), 1, 8 * 1024);
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
