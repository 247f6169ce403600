//! Durable acked updates per second and ack latency: real servers (memory
//! store; redb with and without group commit), real WebSocket clients
//! speaking the native protocol, one room and 100 rooms.
//!
//! `cargo bench --bench store` prints a table. Env: `CHORUS_BENCH_SECS`
//! (measured seconds per scenario, default 3), `CHORUS_BENCH_ROOMS` (run only
//! the scenarios with this many rooms: 1 or 100). The `writer` column is the
//! store writer thread's CPU use over the run: well under 100% means commits
//! wait on fsync, not on CPU.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chorus::config::{Config, StoreKind};
use chorus::http::BackgroundServer;
use chorus::protocol::native::{decode_server, encode_client, Bin, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::{Doc, ReadTxn, Text, Transact};

mod common;

/// One row of the table.
struct Scenario {
    name: &'static str,
    store: StoreKind,
    group_commit: bool,
    rooms: usize,
    clients_per_room: usize,
    /// Updates each client keeps in flight.
    window: usize,
}

/// CPU seconds (user + system) used so far by this process's threads whose
/// name starts with `prefix` ("" for all), from `/proc/self/task`.
fn cpu_secs(prefix: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return f64::NAN;
    };
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0.0;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" that closes the thread name: utime is the 12th, stime the 13th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() > 12 {
                total += (f[11].parse::<f64>().unwrap_or(0.0)
                    + f[12].parse::<f64>().unwrap_or(0.0))
                    / ticks;
            }
        }
    }
    total
}

/// What the clients measured.
struct Outcome {
    acked: usize,
    secs: f64,
    /// CPU the store writer thread used during the run, as a share of the
    /// run's wall time.
    writer_busy: f64,
    /// Send → ack, microseconds, sorted.
    latencies: Vec<u64>,
}

async fn client(
    addr: SocketAddr,
    room: String,
    window: usize,
    start: Instant,
    end: Instant,
) -> (usize, Vec<u64>) {
    let mut ws = common::connect(addr, &room).await;
    let send = |msg: ClientMessage| Message::Binary(encode_client(&msg).into());
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut inflight: HashMap<u64, Instant> = HashMap::new();
    let (mut acked, mut latencies, mut rid) = (0usize, Vec::new(), 1u64);
    loop {
        let now = Instant::now();
        if now < end {
            while inflight.len() < window {
                rid += 1;
                let before = doc.transact().state_vector();
                {
                    let mut txn = doc.transact_mut();
                    let len = text.len(&txn);
                    text.insert(&mut txn, len, "x");
                }
                let data = doc.transact().encode_diff_v1(&before);
                ws.send(send(ClientMessage::Update {
                    room: room.clone(),
                    data: Bin(data),
                    rid: Some(rid),
                }))
                .await
                .expect("send");
                inflight.insert(rid, Instant::now());
            }
        } else if inflight.is_empty() {
            break;
        }
        let frame = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            _ => panic!("connection lost or stalled"),
        };
        match decode_server(&frame) {
            Ok(ServerMessage::Ack { rid, .. }) => {
                if let Some(sent) = inflight.remove(&rid) {
                    let at = Instant::now();
                    if sent >= start && at <= end {
                        acked += 1;
                        latencies.push(at.duration_since(sent).as_micros() as u64);
                    }
                }
            }
            Ok(ServerMessage::Error { message, .. }) => panic!("refused: {message}"),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    (acked, latencies)
}

fn run(s: &Scenario, secs: f64) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::ephemeral();
    config.store = Some(s.store);
    config.data_dir = dir.path().to_path_buf();
    config.store_group_commit = s.group_commit;
    config.log_level = "warn".into();
    config.limits.room_idle_ms = 600_000;
    // Hundreds of clients from one address, each pushing thousands of
    // updates a second: no abuse limits.
    config.limits.max_messages_per_sec = 0;
    config.limits.max_bytes_per_sec = 0;
    config.limits.max_connections_per_ip = 0;
    config.limits.connections_per_ip_per_sec = 0;
    let server = BackgroundServer::spawn(config).expect("server starts");
    let addr = server.addr;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let warmup = Duration::from_millis(500);
    let measured = Duration::from_secs_f64(secs);
    let began = Instant::now();
    let (acked, mut latencies) = rt.block_on(async {
        let t0 = Instant::now() + Duration::from_millis(300);
        let (start, end) = (t0 + warmup, t0 + warmup + measured);
        let mut tasks = Vec::new();
        for r in 0..s.rooms {
            for _ in 0..s.clients_per_room {
                tasks.push(tokio::spawn(client(
                    addr,
                    format!("bench-{r}"),
                    s.window,
                    start,
                    end,
                )));
            }
        }
        let (mut acked, mut latencies) = (0, Vec::new());
        for t in tasks {
            let (a, l) = t.await.expect("client task");
            acked += a;
            latencies.extend(l);
        }
        (acked, latencies)
    });
    let writer_busy = cpu_secs("chorus-store-wr") / began.elapsed().as_secs_f64();
    server.shutdown();
    latencies.sort_unstable();
    Outcome {
        acked,
        secs,
        writer_busy,
        latencies,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is parsed.
    let secs: f64 = std::env::var("CHORUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let only_rooms: Option<usize> = std::env::var("CHORUS_BENCH_ROOMS")
        .ok()
        .and_then(|s| s.parse().ok());
    let mut scenarios = Vec::new();
    for (rooms, clients_per_room, window) in [(1, 8, 8), (100, 1, 4)] {
        if only_rooms.is_some_and(|n| n != rooms) {
            continue;
        }
        for (name, store, group_commit) in [
            ("memory", StoreKind::Memory, true),
            ("redb, group commit", StoreKind::Redb, true),
            ("redb, no group commit", StoreKind::Redb, false),
        ] {
            scenarios.push(Scenario {
                name,
                store,
                group_commit,
                rooms,
                clients_per_room,
                window,
            });
        }
    }
    println!(
        "{:<24} {:>5} {:>7} {:>6} {:>12} {:>9} {:>9} {:>8}",
        "store", "rooms", "clients", "window", "acked/s", "p50 ms", "p99 ms", "writer"
    );
    let mut memory_rate = 0.0;
    for s in &scenarios {
        let o = run(s, secs);
        let rate = o.acked as f64 / o.secs;
        if s.store == StoreKind::Memory {
            memory_rate = rate;
        }
        println!(
            "{:<24} {:>5} {:>7} {:>6} {:>12.0} {:>9.2} {:>9.2} {:>7.0}%   ({:.2}x memory)",
            s.name,
            s.rooms,
            s.rooms * s.clients_per_room,
            s.window,
            rate,
            percentile(&o.latencies, 0.50),
            percentile(&o.latencies, 0.99),
            o.writer_busy * 100.0,
            memory_rate / rate,
        );
    }
}
