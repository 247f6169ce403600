//! Fuzzing on the stable toolchain: deterministic, structure-aware random
//! harnesses for four targets, with a counting global allocator that fails
//! the run if any single allocation goes over the frame-size limit.
//!
//! - `yrs_update`: `protocol::yupdate::check_update_v1`, then (when it
//!   passes) `yrs::Update::decode_v1`, on mutated real updates;
//! - `native_decoder`: `protocol::native::decode_client` on mutated valid
//!   messages and random bytes;
//! - `yjs_decoder`: `protocol::yjs::decode_frame` (plus awareness JSON
//!   parsing) on mutated valid y-protocols frames and random bytes;
//! - `session`: a real server in this process, fed the same inputs over
//!   real WebSockets on `/ws` (after hello + join) and `/yjs/{room}`, with a
//!   liveness round trip after every batch; no panic anywhere, and the
//!   server still serves a normal client at the end.
//!
//! The allocation bound is always asserted: an input that makes any target
//! allocate more than the frame limit in one piece fails the run (the
//! `yrs_update` and `native_decoder` targets print it in hex).
//!
//! `cargo test --test fuzz` runs a bounded slice (`CHORUS_FUZZ_CASES`,
//! default 20 000 per target, seed `CHORUS_FUZZ_SEED`, default 1). The long
//! run: `CHORUS_FUZZ_CASES=1000000 cargo test --release --test fuzz -- --nocapture`.
//! (cargo-fuzz / libFuzzer needs a nightly toolchain, which this project's
//! CI does not have.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chorus::config::Config;
use chorus::http::BackgroundServer;
use chorus::protocol::native::{
    decode_client, decode_server, encode_client, Bin, ClientMessage, ServerMessage,
};
use chorus::protocol::yjs;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// The frame-size limit of the harness: no single allocation may exceed it
/// (inputs are at most `MAX_INPUT` bytes).
const FRAME_LIMIT: usize = 256 * 1024;
/// Largest generated input.
const MAX_INPUT: usize = 16 * 1024;

/// Wraps the system allocator and records the largest single allocation
/// made while armed.
struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One target at a time: the allocator's record is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

fn cases() -> u64 {
    std::env::var("CHORUS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("CHORUS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Runs `body` armed and checks the largest allocation.
fn armed<T>(name: &str, body: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let start = Instant::now();
    let out = body();
    ARMED.store(false, Ordering::Relaxed);
    let largest = LARGEST.load(Ordering::Relaxed);
    eprintln!(
        "fuzz {name}: {} cases in {:.1?}, largest single allocation {largest} bytes (limit {FRAME_LIMIT})",
        cases(),
        start.elapsed()
    );
    // yrs reserves capacity from counts in an update, and serde from the
    // array / map headers of a MessagePack message; `protocol::yupdate` and
    // `native::decode_client` check those counts against the bytes first,
    // so no single allocation may exceed the frame limit.
    assert!(
        largest <= FRAME_LIMIT,
        "{name}: an allocation of {largest} bytes exceeds the frame limit {FRAME_LIMIT}"
    );
    out
}

// ---- input generation ----

fn some_update(rng: &mut StdRng) -> Vec<u8> {
    use yrs::{Text, Transact};
    let doc = yrs::Doc::with_client_id(rng.random_range(1..1_000_000));
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    let n = rng.random_range(1..40);
    let s: String = (0..n).map(|_| rng.random_range('a'..='z')).collect();
    text.insert(&mut txn, 0, &s);
    if rng.random_bool(0.3) {
        text.remove_range(&mut txn, 0, 1);
    }
    txn.encode_update_v1()
}

fn some_json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    match rng.random_range(0..7) {
        0 => json!(null),
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>()),
        4 => json!("x".repeat(rng.random_range(0..20))),
        5 if depth < 3 => serde_json::Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| some_json(rng, depth + 1))
                .collect(),
        ),
        _ if depth < 3 => {
            let mut m = serde_json::Map::new();
            for i in 0..rng.random_range(0..4) {
                m.insert(format!("k{i}"), some_json(rng, depth + 1));
            }
            serde_json::Value::Object(m)
        }
        _ => json!(1),
    }
}

fn some_message(rng: &mut StdRng, room: &str) -> ClientMessage {
    let rid = rng.random_bool(0.5).then(|| rng.random::<u64>());
    let bytes =
        |rng: &mut StdRng| Bin((0..rng.random_range(0..32)).map(|_| rng.random()).collect());
    match rng.random_range(0..10) {
        0 => ClientMessage::Hello {
            v: rng.random_range(0..3),
            token: None,
            client: None,
            rid,
        },
        1 => ClientMessage::Join {
            room: room.into(),
            sv: rng.random_bool(0.5).then(|| bytes(rng)),
            presence: None,
            rid,
        },
        2 => ClientMessage::Leave {
            room: format!("{room}x"),
            rid,
        },
        3 | 4 => ClientMessage::Update {
            room: room.into(),
            data: Bin(some_update(rng)),
            rid,
        },
        5 => ClientMessage::Presence {
            room: room.into(),
            state: some_json(rng, 0),
            rid,
        },
        6 => ClientMessage::Cursor {
            room: room.into(),
            anchor: Some(bytes(rng)),
            head: None,
            rid,
        },
        7 => ClientMessage::Typing {
            room: room.into(),
            on: rng.random(),
            rid,
        },
        8 => ClientMessage::Event {
            room: room.into(),
            name: "e".into(),
            data: some_json(rng, 0),
            rid,
        },
        _ => ClientMessage::Ping { rid },
    }
}

fn some_yjs_frame(rng: &mut StdRng) -> Vec<u8> {
    let mut frame = Vec::new();
    for _ in 0..rng.random_range(1..4) {
        let part = match rng.random_range(0..6) {
            0 => yjs::sync_step1(&yrs::StateVector::default()),
            1 => yjs::sync_step2(some_update(rng)),
            2 => yjs::sync_update(some_update(rng)),
            3 => {
                let state = some_json(rng, 0).to_string();
                yjs::awareness([(
                    rng.random_range(0..1u64 << 40),
                    rng.random_range(0..10),
                    state.as_str(),
                )])
            }
            4 => yjs::query_awareness(),
            _ => yjs::auth_denied("x"),
        };
        frame.extend(part);
    }
    frame
}

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, 0xc4, 0xc5, 0xc6, 0xdc, 0xdd, 0xde, 0xdf, 0xd9, 0xda, 0xdb,
];

/// Mutates `v` in place: bit flips, interesting bytes, inserts, deletes,
/// truncation, splices of huge lengths.
fn mutate(rng: &mut StdRng, v: &mut Vec<u8>) {
    for _ in 0..rng.random_range(0..5) {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..7) {
            0 => v[i] ^= 1 << rng.random_range(0..8),
            1 => v[i] = INTERESTING[rng.random_range(0..INTERESTING.len())],
            2 => v.insert(i, rng.random()),
            3 => {
                v.remove(i);
            }
            4 => v.truncate(i),
            5 => {
                // A length prefix claiming far more than the frame holds.
                let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
                v.splice(i..i, huge.iter().copied().take(rng.random_range(1..=5)));
            }
            _ => {
                let j = rng.random_range(i..v.len());
                let chunk = v[i..=j].to_vec();
                if v.len() + chunk.len() <= MAX_INPUT {
                    v.splice(j..j, chunk);
                }
            }
        }
    }
}

fn native_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.05) {
        return (0..rng.random_range(0..MAX_INPUT))
            .map(|_| rng.random())
            .collect();
    }
    let mut v = encode_client(&some_message(rng, "f"));
    mutate(rng, &mut v);
    v.truncate(MAX_INPUT);
    v
}

fn yjs_input(rng: &mut StdRng) -> Vec<u8> {
    if rng.random_bool(0.05) {
        return (0..rng.random_range(0..MAX_INPUT))
            .map(|_| rng.random())
            .collect();
    }
    let mut v = some_yjs_frame(rng);
    if rng.random_bool(0.7) {
        mutate(rng, &mut v);
    }
    v.truncate(MAX_INPUT);
    v
}

// ---- targets ----

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn fuzz_yrs_update() {
    use yrs::updates::decoder::Decode;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = StdRng::seed_from_u64(seed());
    armed("yrs_update", || {
        for _ in 0..cases() {
            let mut input = some_update(&mut rng);
            mutate(&mut rng, &mut input);
            let before = LARGEST.load(Ordering::Relaxed);
            // The walk the room runs before yrs decodes an update.
            if chorus::protocol::yupdate::check_update_v1(&input).is_ok() {
                let _ = std::panic::catch_unwind(|| yrs::Update::decode_v1(&input));
            }
            if LARGEST.load(Ordering::Relaxed) > FRAME_LIMIT && before <= FRAME_LIMIT {
                eprintln!("yrs_update: oversize allocation on input {}", hex(&input));
            }
        }
    });
}

#[test]
fn fuzz_native_decoder() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = StdRng::seed_from_u64(seed());
    let inputs_ok = armed("native_decoder", || {
        let mut ok = 0u64;
        for _ in 0..cases() {
            let input = native_input(&mut rng);
            let before = LARGEST.load(Ordering::Relaxed);
            let decoded = decode_client(&input);
            if LARGEST.load(Ordering::Relaxed) > FRAME_LIMIT && before <= FRAME_LIMIT {
                eprintln!(
                    "native_decoder: oversize allocation on input {}",
                    hex(&input)
                );
            }
            if let Ok(msg) = decoded {
                ok += 1;
                // What decodes re-encodes and decodes to the same message.
                assert_eq!(decode_client(&encode_client(&msg)).ok(), Some(msg));
            }
        }
        ok
    });
    assert!(
        inputs_ok > 0,
        "the generator never produced a valid message"
    );
}

#[test]
fn fuzz_yjs_decoder() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = StdRng::seed_from_u64(seed());
    armed("yjs_decoder", || {
        for _ in 0..cases() {
            let input = yjs_input(&mut rng);
            if let Ok(msgs) = yjs::decode_frame(&input) {
                for m in msgs {
                    if let yjs::YjsMessage::Awareness(entries) = m {
                        for e in entries {
                            let _ = e.state();
                        }
                    }
                }
            }
        }
    });
}

fn fuzz_server() -> BackgroundServer {
    let mut config = Config::ephemeral();
    config.room_threads = 1;
    config.workers = 1;
    config.log_level = "error".into();
    config.limits.max_frame_bytes = FRAME_LIMIT;
    config.limits.max_doc_bytes = 64 * 1024;
    config.limits.outbound_buffer_bytes = 64 * 1024;
    config.limits.outbound_hard_limit_bytes = 1024 * 1024;
    config.limits.room_idle_ms = 50;
    config.limits.max_messages_per_sec = 0;
    config.limits.max_bytes_per_sec = 0;
    config.limits.max_connections_per_ip = 0;
    config.limits.connections_per_ip_per_sec = 0;
    BackgroundServer::spawn(config).expect("server starts")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(url: String) -> Ws {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(FRAME_LIMIT))
        .max_frame_size(Some(FRAME_LIMIT));
    tokio_tungstenite::connect_async_with_config(url, Some(config), false)
        .await
        .expect("connects")
        .0
}

/// Reads until `done` says so; `false` when the server closed the socket.
async fn read_until(ws: &mut Ws, done: impl Fn(&[u8]) -> bool) -> bool {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Err(_) => panic!("server stopped answering"),
            Ok(Some(Ok(Message::Binary(b)))) if done(&b) => return true,
            Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => return false,
            Ok(Some(Ok(_))) => {}
        }
    }
}

const BATCH: u64 = 64;

async fn native_session(addr: std::net::SocketAddr, rng: &mut StdRng, cases: u64) -> u64 {
    let mut sent = 0;
    let mut connections = 0u64;
    let is_pong = |b: &[u8], want: u64| matches!(decode_server(b), Ok(ServerMessage::Pong { rid: Some(r) }) if r == want);
    while sent < cases {
        connections += 1;
        let room = format!("f{}", connections % 50);
        let mut c = ws(format!("ws://{addr}/ws")).await;
        let hello = encode_client(&ClientMessage::Hello {
            v: 1,
            token: None,
            client: None,
            rid: None,
        });
        let join = encode_client(&ClientMessage::Join {
            room: room.clone(),
            sv: None,
            presence: None,
            rid: None,
        });
        if c.send(Message::Binary(hello.into())).await.is_err()
            || c.send(Message::Binary(join.into())).await.is_err()
        {
            continue;
        }
        'session: loop {
            for _ in 0..BATCH {
                let mut input = native_input(rng);
                // Keep the room name of valid messages pointing at this session's room.
                if rng.random_bool(0.5) {
                    let mut v = encode_client(&some_message(rng, &room));
                    mutate(rng, &mut v);
                    input = v;
                }
                sent += 1;
                if c.send(Message::Binary(input.into())).await.is_err() {
                    break 'session;
                }
            }
            let rid = sent;
            let ping = encode_client(&ClientMessage::Ping { rid: Some(rid) });
            if c.send(Message::Binary(ping.into())).await.is_err()
                || !read_until(&mut c, |b| is_pong(b, rid)).await
            {
                break;
            }
            if sent >= cases || rng.random_bool(0.02) {
                break;
            }
        }
        let _ = c.close(None).await;
    }
    connections
}

async fn yjs_session(addr: std::net::SocketAddr, rng: &mut StdRng, cases: u64) -> u64 {
    let mut sent = 0;
    let mut connections = 0u64;
    while sent < cases {
        connections += 1;
        let mut c = ws(format!("ws://{addr}/yjs/y{}", connections % 50)).await;
        'session: loop {
            for _ in 0..BATCH {
                sent += 1;
                if c.send(Message::Binary(yjs_input(rng).into()))
                    .await
                    .is_err()
                {
                    break 'session;
                }
            }
            // Liveness: a query is answered with an awareness message.
            if c.send(Message::Binary(yjs::query_awareness().into()))
                .await
                .is_err()
            {
                break;
            }
            let answered = read_until(&mut c, |b| {
                matches!(
                    yjs::decode_frame(b).as_deref(),
                    Ok([yjs::YjsMessage::Awareness(_)])
                )
            })
            .await;
            if !answered || sent >= cases {
                break;
            }
        }
        let _ = c.close(None).await;
    }
    connections
}

#[test]
fn fuzz_session() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    static PANICKED: AtomicBool = AtomicBool::new(false);
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        default_hook(info);
    }));
    let srv = fuzz_server();
    let addr = srv.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(seed());
    let n = cases();
    let (native_conns, yjs_conns) = armed("session", || {
        rt.block_on(async {
            let a = native_session(addr, &mut rng, n / 2).await;
            let b = yjs_session(addr, &mut rng, n - n / 2).await;
            (a, b)
        })
    });
    eprintln!("fuzz session: {native_conns} native and {yjs_conns} /yjs connections");
    // Panics caught inside the server (the room catches yrs decoder panics)
    // are reported, not failures; an uncaught one kills the server, which
    // fails the liveness round trips above and the final one below.
    eprintln!(
        "fuzz session: caught panics seen: {}",
        PANICKED.load(Ordering::SeqCst)
    );
    // The server still serves a normal client.
    rt.block_on(async {
        let mut c = ws(format!("ws://{addr}/ws")).await;
        let hello = encode_client(&ClientMessage::Hello {
            v: 1,
            token: None,
            client: None,
            rid: Some(1),
        });
        c.send(Message::Binary(hello.into())).await.expect("send");
        assert!(
            read_until(&mut c, |b| matches!(
                decode_server(b),
                Ok(ServerMessage::Welcome { .. })
            ))
            .await
        );
    });
    srv.shutdown();
}
