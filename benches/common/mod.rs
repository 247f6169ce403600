//! Helpers shared by the benches that drive real servers.

use std::net::SocketAddr;

use chorus::protocol::native::{decode_server, encode_client, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A client WebSocket.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects to `/ws` on `addr`, says hello and joins `room` with an empty
/// state vector; returns once `synced` arrived.
pub async fn connect(addr: SocketAddr, room: &str) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .expect("connect");
    let send = |msg: ClientMessage| Message::Binary(encode_client(&msg).into());
    ws.send(send(ClientMessage::Hello {
        v: 1,
        token: None,
        client: Some("bench".into()),
        rid: None,
    }))
    .await
    .expect("hello");
    ws.send(send(ClientMessage::Join {
        room: room.into(),
        sv: None,
        presence: None,
        rid: Some(1),
    }))
    .await
    .expect("join");
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(ServerMessage::Synced { .. }) = decode_server(&b) {
                    return ws;
                }
            }
            Some(Ok(_)) => {}
            _ => panic!("connection lost before synced"),
        }
    }
}

/// CPU seconds (user + system) used so far by process `root` and every
/// live descendant of it, from `/proc` (a PostgreSQL server is a
/// postmaster and one process per connection).
pub fn tree_cpu_secs(root: u32) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
                       // (pid, ppid, cpu seconds) of every process.
    let mut procs: Vec<(u32, u32, f64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        // After the ")" that closes the name: state, ppid, …, utime (12th), stime (13th).
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 12 {
            let cpu =
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / ticks;
            procs.push((pid, f[1].parse().unwrap_or(0), cpu));
        }
    }
    let mut tree = vec![root];
    let mut total = 0.0;
    while let Some(p) = tree.pop() {
        for &(pid, ppid, cpu) in &procs {
            if pid == p {
                total += cpu;
            }
            if ppid == p {
                tree.push(pid);
            }
        }
    }
    total
}

/// The postmaster's pid of a fixture PostgreSQL server (first line of
/// `postmaster.pid` in its data directory).
pub fn postmaster_pid(pg: &crate::pg::Postgres) -> u32 {
    std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("postmaster.pid names the server's pid")
}
