//! Upgraded connections as `src/http/upgrade.rs` serves them: bytes sent
//! together with the handshake, upgrade requests that do not switch, and
//! what an idle connection costs the server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{server, ChildServer, Client, TestDoc, WAIT};

/// A native `hello` (proto/vectors/client-hello.json).
const HELLO: &str =
    "84a174a568656c6c6fa17601a6636c69656e74af63686f7275732d6a732f302e312e30a372696401";

fn upgrade_request(addr: SocketAddr, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A client frame: FIN, binary, masked (RFC 6455 §5.3), `payload` < 126 bytes.
fn masked_binary(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads from `s` until `done(read so far)` or the wait ends.
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut raw = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&raw) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out; read so far: {:?}",
                    String::from_utf8_lossy(&raw)
                )
            })
            .expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    raw
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A client may send its first frame in the same packet as the handshake
/// (the server reads both at once): the session must still get it.
#[actix_web::test]
async fn a_frame_sent_with_the_handshake_reaches_the_session() {
    let srv = server(|_| {});
    let mut s = TcpStream::connect(srv.addr).await.expect("tcp connects");
    let mut bytes = upgrade_request(srv.addr, "/ws").into_bytes();
    let hello: Vec<u8> = (0..HELLO.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&HELLO[i..i + 2], 16).unwrap())
        .collect();
    bytes.extend(masked_binary(&hello));
    s.write_all(&bytes).await.unwrap();
    let raw = read_until(&mut s, |raw| contains(raw, b"welcome")).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    assert!(contains(&raw, b"welcome"), "the hello was answered");
}

/// An upgrade request to a route that does not upgrade, or to no route, is
/// answered like any request, then the connection closes.
#[actix_web::test]
async fn upgrade_requests_that_do_not_switch_get_an_ordinary_answer() {
    let srv = server(|_| {});
    for (path, status, body) in [("/healthz", "200", "ok\n"), ("/no/such/route", "404", "")] {
        let mut s = TcpStream::connect(srv.addr).await.expect("tcp connects");
        s.write_all(upgrade_request(srv.addr, path).as_bytes())
            .await
            .unwrap();
        let raw = read_until(&mut s, |_| false).await; // until the server closes
        let text = String::from_utf8_lossy(&raw);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}")),
            "{path}: {text}"
        );
        assert!(text.ends_with(&format!("\r\n\r\n{body}")), "{path}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("connection: close"),
            "{text}"
        );
    }
    // The server still serves WebSocket clients.
    let mut c = Client::connect(srv.addr).await;
    c.join("after", &TestDoc::new()).await;
}

/// RSS growth of a server process per open connection, after `open` has
/// opened `n` of them (clients kept until the measure is taken).
async fn rss_per_connection<F, Fut>(srv: &ChildServer, n: usize, open: F) -> (f64, Vec<Client>)
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Client>,
{
    let before = srv.rss_bytes();
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n / 50 {
        let batch = futures::future::join_all((0..50).map(|_| open(srv.addr))).await;
        clients.extend(batch);
    }
    // Let the server settle (presence ticks, buffers released).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = srv.rss_bytes();
    ((after.saturating_sub(before)) as f64 / n as f64, clients)
}

/// What an idle connection costs (issue [lean]: at most 8 KB, hello only
/// or joined to a room). Before the upgrade path dropped actix-http's two
/// 8 KiB buffers this measured ~11.6 KB (hello) and ~22 KB (joined) per
/// connection.
#[actix_web::test]
async fn an_idle_connection_costs_the_server_under_8_kb() {
    let srv = ChildServer::start(&[
        "--store",
        "memory",
        "--max-connections-per-ip",
        "0",
        "--connections-per-ip-per-sec",
        "0",
    ]);
    let (hello, mut clients) = rss_per_connection(&srv, 1500, Client::connect).await;
    let (joined, more) = rss_per_connection(&srv, 1000, |addr| async move {
        let mut c = Client::connect(addr).await;
        c.join_with(
            "idle",
            &TestDoc::new(),
            Some(serde_json::json!({"name": "x"})),
        )
        .await;
        c
    })
    .await;
    clients.extend(more);
    eprintln!("RSS per idle connection: hello only {hello:.0} B, joined one room {joined:.0} B");
    assert!(
        hello < 8.0 * 1024.0,
        "hello only: {hello:.0} B per connection"
    );
    assert!(
        joined < 8.0 * 1024.0,
        "joined: {joined:.0} B per connection"
    );
    drop(clients);
}
