//! Durable acked updates per second and ack latency: real servers (memory
//! store; redb with and without group commit; PostgreSQL with group commit,
//! with `fsync` off and on, and without group commit), real WebSocket
//! clients speaking the native protocol, one room and 100 rooms.
//!
//! `cargo bench --bench store` prints a table. Env: `CHORUS_BENCH_SECS`
//! (measured seconds per scenario, default 3), `CHORUS_BENCH_ROOMS` (run only
//! the scenarios with this many rooms: 1 or 100), `CHORUS_BENCH_STORES`
//! (run only the scenarios whose name contains this, e.g. `postgres`).
//!
//! Columns: `durability` says when an ack is durable (redb fsyncs every
//! commit; PostgreSQL runs on a fresh fixture server per scenario, started
//! by the bench on a free port, with `fsync` as shown and
//! `synchronous_commit` at its default, `on`). `writer` is the CPU use of
//! the store's thread in the server (redb's writer; the PostgreSQL store's
//! runtime) over the run: well under 100% means commits wait on fsync or on
//! the database, not on CPU. `pg CPU` is the PostgreSQL server's processes,
//! and `upd/commit` the acked updates per committed transaction (from
//! `pg_stat_database`; reads count as transactions too, so it is a lower
//! bound of the group-commit batch).

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
#[allow(dead_code)]
#[path = "../tests/it/pg.rs"]
mod pg;

/// Where the documents go.
#[derive(Clone, Copy, PartialEq)]
enum Backend {
    Memory,
    Redb { group_commit: bool },
    Postgres { group_commit: bool, fsync: bool },
}

impl Backend {
    /// When an ack is durable.
    fn durability(self) -> &'static str {
        match self {
            Backend::Memory => "none",
            Backend::Redb { .. } => "fsync",
            Backend::Postgres { fsync: true, .. } => "pg fsync=on",
            Backend::Postgres { fsync: false, .. } => "pg fsync=off",
        }
    }
}

/// One row of the table.
struct Scenario {
    name: &'static str,
    backend: Backend,
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
    /// CPU the PostgreSQL server used, as a share of the run's wall time.
    pg_busy: Option<f64>,
    /// Acked updates (warm-up and drain included) per committed
    /// PostgreSQL transaction.
    per_commit: Option<f64>,
    /// Send → ack, microseconds, sorted.
    latencies: Vec<u64>,
}

async fn client(
    addr: SocketAddr,
    room: String,
    window: usize,
    start: Instant,
    end: Instant,
) -> (usize, usize, Vec<u64>) {
    let mut ws = common::connect(addr, &room).await;
    let send = |msg: ClientMessage| Message::Binary(encode_client(&msg).into());
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let mut inflight: HashMap<u64, Instant> = HashMap::new();
    let (mut acked, mut latencies, mut rid) = (0usize, Vec::new(), 1u64);
    let mut all_acked = 0usize;
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
                    all_acked += 1;
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
    (acked, all_acked, latencies)
}

/// Transactions committed so far in the fixture server's database.
fn pg_commits(pg: &pg::Postgres) -> f64 {
    pg.psql("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        .parse()
        .unwrap_or(f64::NAN)
}

fn run(s: &Scenario, secs: f64) -> Outcome {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::ephemeral();
    config.data_dir = dir.path().to_path_buf();
    let mut pg = None;
    match s.backend {
        Backend::Memory => config.store = Some(StoreKind::Memory),
        Backend::Redb { group_commit } => {
            config.store = Some(StoreKind::Redb);
            config.store_group_commit = group_commit;
        }
        Backend::Postgres {
            group_commit,
            fsync,
        } => {
            let server = pg::Postgres::start_with_fsync(fsync);
            config.store = Some(StoreKind::Postgres);
            config.postgres_url = Some(server.url());
            // The PostgreSQL store batches up to --store-max-batch.
            if !group_commit {
                config.store_max_batch = 1;
            }
            pg = Some(server);
        }
    }
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
    let pg_pid = pg.as_ref().map(common::postmaster_pid);
    let pg_cpu_before = pg_pid.map(common::tree_cpu_secs);
    let thread = match s.backend {
        Backend::Postgres { .. } => "chorus-postgres",
        _ => "chorus-store-wr",
    };
    let writer_before = cpu_secs(thread);
    let commits_before = pg.as_ref().map(pg_commits);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let warmup = Duration::from_millis(500);
    let measured = Duration::from_secs_f64(secs);
    let began = Instant::now();
    let (acked, all_acked, mut latencies) = rt.block_on(async {
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
        let (mut acked, mut all_acked, mut latencies) = (0, 0, Vec::new());
        for t in tasks {
            let (a, all, l) = t.await.expect("client task");
            acked += a;
            all_acked += all;
            latencies.extend(l);
        }
        (acked, all_acked, latencies)
    });
    let wall = began.elapsed().as_secs_f64();
    let writer_busy = (cpu_secs(thread) - writer_before) / wall;
    let pg_busy = pg_pid
        .zip(pg_cpu_before)
        .map(|(pid, before)| (common::tree_cpu_secs(pid) - before) / wall);
    server.shutdown();
    // Backends report their counters when their connection closes.
    std::thread::sleep(Duration::from_millis(300));
    let per_commit = pg
        .as_ref()
        .zip(commits_before)
        .map(|(pg, before)| all_acked as f64 / (pg_commits(pg) - before));
    drop(pg);
    latencies.sort_unstable();
    Outcome {
        acked,
        secs,
        writer_busy,
        pg_busy,
        per_commit,
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

/// A share as a percentage ("–" when not measured).
fn share(x: Option<f64>) -> String {
    x.map_or("–".into(), |x| format!("{:.0}%", x * 100.0))
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
    let only_stores = std::env::var("CHORUS_BENCH_STORES").unwrap_or_default();
    let mut scenarios = Vec::new();
    for (rooms, clients_per_room, window) in [(1, 8, 8), (100, 1, 4)] {
        if only_rooms.is_some_and(|n| n != rooms) {
            continue;
        }
        for (name, backend) in [
            ("memory", Backend::Memory),
            ("redb, group commit", Backend::Redb { group_commit: true }),
            (
                "redb, no group commit",
                Backend::Redb {
                    group_commit: false,
                },
            ),
            (
                "postgres, group commit",
                Backend::Postgres {
                    group_commit: true,
                    fsync: false,
                },
            ),
            (
                "postgres, group commit",
                Backend::Postgres {
                    group_commit: true,
                    fsync: true,
                },
            ),
            (
                "postgres, no group commit",
                Backend::Postgres {
                    group_commit: false,
                    fsync: true,
                },
            ),
        ] {
            if !name.contains(only_stores.as_str()) {
                continue;
            }
            scenarios.push(Scenario {
                name,
                backend,
                rooms,
                clients_per_room,
                window,
            });
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average before: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<26} {:<12} {:>5} {:>7} {:>6} {:>9} {:>8} {:>8} {:>7} {:>7} {:>10}",
        "store",
        "durability",
        "rooms",
        "clients",
        "window",
        "acked/s",
        "p50 ms",
        "p99 ms",
        "writer",
        "pg CPU",
        "upd/commit"
    );
    let mut memory_rate = 0.0;
    // (rooms, backend, acked/s), for the ratios below the table.
    let mut rates: Vec<(usize, Backend, f64)> = Vec::new();
    for s in &scenarios {
        let o = run(s, secs);
        let rate = o.acked as f64 / o.secs;
        if s.backend == Backend::Memory {
            memory_rate = rate;
        }
        rates.push((s.rooms, s.backend, rate));
        println!(
            "{:<26} {:<12} {:>5} {:>7} {:>6} {:>9.0} {:>8.2} {:>8.2} {:>7} {:>7} {:>10}   {}",
            s.name,
            s.backend.durability(),
            s.rooms,
            s.rooms * s.clients_per_room,
            s.window,
            rate,
            percentile(&o.latencies, 0.50),
            percentile(&o.latencies, 0.99),
            share((s.backend != Backend::Memory).then_some(o.writer_busy)),
            share(o.pg_busy),
            o.per_commit.map_or("–".into(), |x| format!("{x:.1}")),
            if memory_rate > 0.0 {
                format!("({:.2}x memory)", memory_rate / rate)
            } else {
                String::new()
            },
        );
    }
    let rate_of = |rooms: usize, backend: Backend| {
        rates
            .iter()
            .find(|(r, b, _)| *r == rooms && *b == backend)
            .map(|(_, _, rate)| *rate)
    };
    for rooms in [1, 100] {
        let Some(redb) = rate_of(rooms, Backend::Redb { group_commit: true }) else {
            continue;
        };
        for fsync in [false, true] {
            let backend = Backend::Postgres {
                group_commit: true,
                fsync,
            };
            if let Some(pg) = rate_of(rooms, backend) {
                println!(
                    "{rooms} room(s): postgres group commit ({}) / redb group commit = {:.2} (target ≥ 0.5)",
                    backend.durability(),
                    pg / redb
                );
            }
        }
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average after: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
