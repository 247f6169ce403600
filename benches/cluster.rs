//! Cross-node delivery in cluster mode: a real PostgreSQL (the document
//! store every node shares: the tests' fixture server, `initdb` on a free
//! port in a temp directory, run once with `fsync=off` and once with
//! `fsync=on`), a real `redis-server` (pub/sub only; free port,
//! `appendonly yes`, `appendfsync everysec`) and real Chorus nodes (child
//! processes of the release binary, `--redis-url` + `--postgres-url`), one
//! room, writers on node 0 and subscribers spread over every node. Latency is measured from the
//! writer's send to each subscriber's receipt, split into subscribers on
//! the writers' node ("same node") and on the others ("cross node"); CPU is
//! each process's utime + stime over the measured window (from `/proc`),
//! divided by the updates written (PostgreSQL: its postmaster and every
//! backend).
//!
//! A single node without Redis (memory store) runs the same load first, as
//! the baseline.
//!
//! `cargo bench --bench cluster` prints a table. Env: `CHORUS_BENCH_SECS`
//! (measured seconds, default 10), `CHORUS_BENCH_SUBS` (subscribers per
//! node, default 100), `CHORUS_BENCH_WRITERS` (default 4),
//! `CHORUS_BENCH_RATE` (updates per second per writer, default 25).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus::protocol::native::{decode_server, encode_client, Bin, ClientMessage, ServerMessage};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use yrs::updates::decoder::Decode;
use yrs::{Doc, Options, ReadTxn, Text, Transact, Update};

mod common;
use common::{connect, Ws};
#[allow(dead_code)]
#[path = "../tests/it/pg.rs"]
mod pg;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) of a process so far.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12th and 13th after ")".
    (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / 100.0
}

fn start_redis(dir: &std::path::Path) -> (Proc, u16) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server starts (apt-get install redis-server)");
    wait_listening(port);
    (Proc(child), port)
}

/// A node: cluster mode on Redis `redis` and PostgreSQL `postgres_url`,
/// or a single node on the memory store.
fn start_node(cluster: Option<(u16, &str)>) -> (Proc, SocketAddr) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chorus"));
    cmd.args(["--port", &port.to_string(), "--log-level", "warn"])
        .args([
            "--max-connections-per-ip",
            "0",
            "--connections-per-ip-per-sec",
            "0",
        ])
        .args(["--max-messages-per-sec", "0", "--max-bytes-per-sec", "0"]);
    match cluster {
        Some((redis, postgres_url)) => cmd
            .args(["--redis-url", &format!("redis://127.0.0.1:{redis}")])
            .args(["--postgres-url", postgres_url]),
        None => cmd.args(["--store", "memory"]),
    };
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chorus starts");
    wait_listening(port);
    (Proc(child), ([127, 0, 0, 1], port).into())
}

/// Send instants per writer, indexed by Yjs clock (one character each).
type Sent = Arc<Vec<Mutex<Vec<Instant>>>>;

/// Writer `w`: client id `w + 1`, one character per update at `rate`/s
/// until `end`; reads (and drops) whatever the server sends.
async fn writer(mut ws: Ws, room: String, w: usize, rate: u64, sent: Sent, end: Instant) {
    let doc = Doc::with_options(Options {
        client_id: yrs::block::ClientID::new(w as u64 + 1),
        ..Options::default()
    });
    let text = doc.get_or_insert_text("t");
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut rid = 1u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if Instant::now() >= end {
                    return;
                }
                let before = doc.transact().state_vector();
                {
                    let mut txn = doc.transact_mut();
                    text.insert(&mut txn, 0, "x");
                }
                let update = doc.transact().encode_diff_v1(&before);
                rid += 1;
                sent[w].lock().expect("sent table").push(Instant::now());
                let msg = ClientMessage::Update { room: room.clone(), data: Bin(update), rid: Some(rid) };
                if ws.send(Message::Binary(encode_client(&msg).into())).await.is_err() {
                    return;
                }
            }
            m = ws.next() => if m.is_none() { return },
        }
    }
}

/// A subscriber: for each incoming update, the clocks it carries of each
/// writer (from the update's state vector) are timed against `sent`.
async fn subscriber(mut ws: Ws, writers: usize, sent: Sent, end: Instant) -> Vec<u32> {
    let mut seen = vec![0u32; writers];
    let mut lat = Vec::new();
    loop {
        let frame = match tokio::time::timeout_at(end.into(), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => b,
            Ok(Some(Ok(_))) => continue,
            _ => return lat,
        };
        let now = Instant::now();
        let Ok(ServerMessage::Update { data, .. }) = decode_server(&frame) else {
            continue;
        };
        let Ok(update) = Update::decode_v1(&data.0) else {
            continue;
        };
        for (client, clock) in update.state_vector().iter() {
            let w = (client.get() as usize).wrapping_sub(1);
            if w >= writers || *clock <= seen[w] {
                continue;
            }
            let times = sent[w].lock().expect("sent table");
            for c in seen[w]..*clock {
                if let Some(t) = times.get(c as usize) {
                    lat.push(now.duration_since(*t).as_micros() as u32);
                }
            }
            seen[w] = *clock;
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// A percentile in ms for the table ("–" when nothing was measured).
fn cell(sorted: &[u32], p: f64) -> String {
    if sorted.is_empty() {
        "–".into()
    } else {
        format!("{:.1}", pct(sorted, p))
    }
}

struct Row {
    setup: String,
    same: Vec<u32>,
    cross: Vec<u32>,
    updates: usize,
    /// µs of CPU per update written, per node, then Redis.
    cpu: Vec<(String, f64)>,
}

/// `nodes` nodes; `pg_fsync` is `None` for a single node without Redis
/// (memory store), else cluster mode on Redis and a PostgreSQL with that
/// `fsync` setting.
async fn run(nodes: usize, pg_fsync: Option<bool>) -> Row {
    let secs = env_or("CHORUS_BENCH_SECS", 10);
    let subs = env_or("CHORUS_BENCH_SUBS", 100) as usize;
    let writers = env_or("CHORUS_BENCH_WRITERS", 4) as usize;
    let rate = env_or("CHORUS_BENCH_RATE", 25);
    let dir = tempfile::tempdir().expect("temp dir");
    let pg = pg_fsync.map(pg::Postgres::start_with_fsync);
    let redis = pg.is_some().then(|| start_redis(dir.path()));
    let pg_url = pg.as_ref().map(pg::Postgres::url);
    let procs: Vec<(Proc, SocketAddr)> = (0..nodes)
        .map(|_| start_node(redis.as_ref().map(|r| r.1).zip(pg_url.as_deref())))
        .collect();
    let room = format!("bench-{}", std::process::id());
    let sent: Sent = Arc::new((0..writers).map(|_| Mutex::new(Vec::new())).collect());
    let mut receivers = Vec::new();
    for (n, (_, addr)) in procs.iter().enumerate() {
        for _ in 0..subs {
            receivers.push((n, connect(*addr, &room).await));
        }
    }
    let mut wss = Vec::new();
    for _ in 0..writers {
        wss.push(connect(procs[0].1, &room).await);
    }
    // Let joins and presence settle before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut pids: Vec<(String, u32)> = procs
        .iter()
        .enumerate()
        .map(|(i, (p, _))| (format!("node {i}"), p.0.id()))
        .collect();
    if let Some((r, _)) = &redis {
        pids.push(("redis".into(), r.0.id()));
    }
    // The PostgreSQL server is a process tree; its CPU is counted apart.
    let pg_pid = pg.as_ref().map(common::postmaster_pid);
    let pg_before = pg_pid.map(common::tree_cpu_secs);
    let before: Vec<f64> = pids.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let end = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = receivers
        .into_iter()
        .map(|(n, ws)| {
            let sent = sent.clone();
            // Receivers listen a little longer than writers write.
            tokio::spawn(async move {
                (
                    n,
                    subscriber(ws, writers, sent, end + Duration::from_secs(2)).await,
                )
            })
        })
        .collect();
    let wtasks: Vec<_> = wss
        .into_iter()
        .enumerate()
        .map(|(w, ws)| tokio::spawn(writer(ws, room.clone(), w, rate, sent.clone(), end)))
        .collect();
    for t in wtasks {
        t.await.expect("writer");
    }
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for t in tasks {
        let (n, lat) = t.await.expect("subscriber");
        if n == 0 {
            same.extend(lat);
        } else {
            cross.extend(lat);
        }
    }
    let after: Vec<f64> = pids.iter().map(|(_, p)| cpu_secs(*p)).collect();
    let pg_after = pg_pid.map(common::tree_cpu_secs);
    let updates: usize = sent.iter().map(|s| s.lock().expect("sent").len()).sum();
    same.sort_unstable();
    cross.sort_unstable();
    let per_update = |secs: f64| secs * 1e6 / updates.max(1) as f64;
    let mut cpu: Vec<(String, f64)> = pids
        .iter()
        .zip(before.iter().zip(&after))
        .map(|((name, _), (b, a))| (name.clone(), per_update(a - b)))
        .collect();
    if let (Some(b), Some(a)) = (pg_before, pg_after) {
        cpu.push(("postgres".into(), per_update(a - b)));
    }
    // Nodes first, then the servers they use.
    drop(procs);
    drop(redis);
    drop(pg);
    Row {
        setup: match pg_fsync {
            Some(fsync) => format!(
                "{nodes} nodes + Redis + Postgres fsync={}",
                if fsync { "on" } else { "off" }
            ),
            None => "1 node, no Redis (memory store)".into(),
        },
        same,
        cross,
        updates,
        cpu,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let load = || {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    };
    println!("load average before: {}", load());
    let rows = [
        rt.block_on(run(1, None)),
        rt.block_on(run(3, Some(false))),
        rt.block_on(run(3, Some(true))),
    ];
    println!(
        "\n| setup | updates | same-node p50 ms | p99 ms | cross-node p50 ms | p99 ms | µs CPU / update |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        let cpu: Vec<String> = r.cpu.iter().map(|(n, c)| format!("{n} {c:.0}")).collect();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            r.setup,
            r.updates,
            cell(&r.same, 0.5),
            cell(&r.same, 0.99),
            cell(&r.cross, 0.5),
            cell(&r.cross, 0.99),
            cpu.join(", ")
        );
    }
    let base = &rows[0];
    println!();
    for cl in &rows[1..] {
        println!(
            "{}: cross-node − same-node p50 +{:.1} ms, p99 +{:.1} ms (target ≤ 10 ms); \
             node 0 CPU per update vs single node: {:.2}×",
            cl.setup,
            pct(&cl.cross, 0.5) - pct(&cl.same, 0.5),
            pct(&cl.cross, 0.99) - pct(&cl.same, 0.99),
            cl.cpu[0].1 / base.cpu[0].1
        );
    }
    println!("load average after: {}", load());
}
