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
//!   real WebSockets on `/ws` (after hello + join) and `/yjs/{room}`. After
//!   every batch, the fuzzed room still works: a native member's update is
//!   acked and reaches another member (a native one; on `/yjs` rooms a
//!   stock-protocol one, whose own update comes back the other way).
//!
//! No target may panic, not even where the panic would be caught (the
//! room catches yrs panics): a panic hook counts every panic and each
//! target asserts the count stayed zero. A decoder that refused everything
//! would fail too: each target checks that its unmutated inputs are all
//! accepted and that some mutated ones are.
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

/// Panics seen by the hook, caught or not, in any thread.
static PANICS: AtomicUsize = AtomicUsize::new(0);

/// Installs (once) a panic hook that counts every panic, then the default
/// report; returns the count so far.
fn panics() -> usize {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default_hook(info);
        }));
    });
    PANICS.load(Ordering::SeqCst)
}

/// Fails the target if anything panicked since `before` (= [`panics`]).
fn assert_no_panic(name: &str, before: usize) {
    let n = PANICS.load(Ordering::SeqCst) - before;
    assert_eq!(n, 0, "{name}: {n} panics (caught or not) during the run");
}

/// Fails the target unless every unmutated input was accepted and at
/// least `min_share` of the mutated ones were: a decoder that refuses
/// everything must not pass.
fn assert_accepts(name: &str, valid: (u64, u64), mutated: (u64, u64), min_share: f64) {
    eprintln!(
        "fuzz {name}: accepted {}/{} unmutated, {}/{} mutated inputs",
        valid.0, valid.1, mutated.0, mutated.1
    );
    assert!(valid.1 > 0, "{name}: no unmutated inputs were generated");
    assert_eq!(
        valid.0, valid.1,
        "{name}: an unmutated (valid) input was refused"
    );
    assert!(
        mutated.0 as f64 >= min_share * mutated.1 as f64,
        "{name}: only {} of {} mutated inputs accepted (expected at least {min_share})",
        mutated.0,
        mutated.1
    );
}

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

/// Runs `body` armed; checks that nothing panicked meanwhile, then the
/// largest allocation.
fn armed<T>(name: &str, body: impl FnOnce() -> T) -> T {
    let panicked = panics();
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
    // First: a panic's report allocates more than the bound allows.
    assert_no_panic(name, panicked);
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
/// truncation, splices of huge lengths. Returns false when it left `v` as
/// it was (zero rounds).
fn mutate(rng: &mut StdRng, v: &mut Vec<u8>) -> bool {
    let rounds = rng.random_range(0..5);
    let before = v.clone();
    for _ in 0..rounds {
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
    *v != before
}

/// What a generated input is: bytes, and whether they are a valid input
/// left as generated (`false`: mutated or random).
struct Input {
    bytes: Vec<u8>,
    valid: bool,
}

fn random_bytes(rng: &mut StdRng) -> Input {
    Input {
        bytes: (0..rng.random_range(0..MAX_INPUT))
            .map(|_| rng.random())
            .collect(),
        valid: false,
    }
}

fn native_input(rng: &mut StdRng) -> Input {
    if rng.random_bool(0.05) {
        return random_bytes(rng);
    }
    let mut v = encode_client(&some_message(rng, "f"));
    let mutated = mutate(rng, &mut v);
    v.truncate(MAX_INPUT);
    Input {
        bytes: v,
        valid: !mutated,
    }
}

fn yjs_input(rng: &mut StdRng) -> Input {
    if rng.random_bool(0.05) {
        return random_bytes(rng);
    }
    let mut v = some_yjs_frame(rng);
    let mutated = rng.random_bool(0.7) && mutate(rng, &mut v);
    v.truncate(MAX_INPUT);
    Input {
        bytes: v,
        valid: !mutated,
    }
}

/// Adds one decode outcome to (accepted, seen) of its kind.
fn tally(valid: bool, ok: bool, counts: &mut [(u64, u64); 2]) {
    let c = &mut counts[usize::from(!valid)];
    c.1 += 1;
    c.0 += u64::from(ok);
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
    let counts = armed("yrs_update", || {
        let mut counts = [(0, 0); 2];
        for _ in 0..cases() {
            let mut input = some_update(&mut rng);
            let valid = !mutate(&mut rng, &mut input);
            let before = LARGEST.load(Ordering::Relaxed);
            // The walk the room runs before yrs decodes an update, then
            // the decoder itself: neither may panic.
            let ok = chorus::protocol::yupdate::check_update_v1(&input).is_ok()
                && yrs::Update::decode_v1(&input).is_ok();
            tally(valid, ok, &mut counts);
            if LARGEST.load(Ordering::Relaxed) > FRAME_LIMIT && before <= FRAME_LIMIT {
                eprintln!("yrs_update: oversize allocation on input {}", hex(&input));
            }
        }
        counts
    });
    assert_accepts("yrs_update", counts[0], counts[1], 0.01);
}

#[test]
fn fuzz_native_decoder() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = StdRng::seed_from_u64(seed());
    let counts = armed("native_decoder", || {
        let mut counts = [(0, 0); 2];
        for _ in 0..cases() {
            let input = native_input(&mut rng);
            let before = LARGEST.load(Ordering::Relaxed);
            let decoded = decode_client(&input.bytes);
            if LARGEST.load(Ordering::Relaxed) > FRAME_LIMIT && before <= FRAME_LIMIT {
                eprintln!(
                    "native_decoder: oversize allocation on input {}",
                    hex(&input.bytes)
                );
            }
            tally(input.valid, decoded.is_ok(), &mut counts);
            if let Ok(msg) = decoded {
                // What decodes re-encodes and decodes to the same message.
                assert_eq!(decode_client(&encode_client(&msg)).ok(), Some(msg));
            }
        }
        counts
    });
    assert_accepts("native_decoder", counts[0], counts[1], 0.01);
}

#[test]
fn fuzz_yjs_decoder() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut rng = StdRng::seed_from_u64(seed());
    let counts = armed("yjs_decoder", || {
        let mut counts = [(0, 0); 2];
        for _ in 0..cases() {
            let input = yjs_input(&mut rng);
            let decoded = yjs::decode_frame(&input.bytes);
            let mut ok = decoded.is_ok();
            if let Ok(msgs) = decoded {
                for m in msgs {
                    if let yjs::YjsMessage::Awareness(entries) = m {
                        for e in entries {
                            ok &= e.state().is_ok() || !input.valid;
                        }
                    }
                }
            }
            tally(input.valid, ok, &mut counts);
        }
        counts
    });
    assert_accepts("yjs_decoder", counts[0], counts[1], 0.01);
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
async fn read_until(ws: &mut Ws, mut done: impl FnMut(&[u8]) -> bool) -> bool {
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

/// Sends one native message; panics if the socket is gone.
async fn send_native(ws: &mut Ws, msg: &ClientMessage) {
    ws.send(Message::Binary(encode_client(msg).into()))
        .await
        .expect("probe sends");
}

/// Applies a Yjs v1 update to `doc` (it came from the server: it decodes).
fn apply(doc: &yrs::Doc, update: &[u8]) {
    use yrs::updates::decoder::Decode;
    use yrs::Transact;
    let u = yrs::Update::decode_v1(update).expect("server update decodes");
    doc.transact_mut()
        .apply_update(u)
        .expect("server update applies");
}

/// Text `probe` of `doc` (the fuzz inputs write to `t`, never here).
fn probe_text(doc: &yrs::Doc) -> String {
    use yrs::{GetString, Transact};
    let text = doc.get_or_insert_text("probe");
    let txn = doc.transact();
    text.get_string(&txn)
}

/// An update appending `s` to text `probe`, from a fresh client.
fn probe_update(s: &str) -> Vec<u8> {
    use yrs::{Text, Transact};
    let doc = yrs::Doc::new();
    let text = doc.get_or_insert_text("probe");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, s);
    txn.encode_update_v1()
}

/// A well-behaved native member of the fuzzed room, with its copy of the
/// document.
struct Member {
    ws: Ws,
    doc: yrs::Doc,
}

impl Member {
    /// Connects, says hello and joins `room`; applies the `synced` diff.
    async fn join(addr: std::net::SocketAddr, room: &str) -> Member {
        let mut ws = ws(format!("ws://{addr}/ws")).await;
        send_native(
            &mut ws,
            &ClientMessage::Hello {
                v: 1,
                token: None,
                client: Some("probe".into()),
                rid: None,
            },
        )
        .await;
        send_native(
            &mut ws,
            &ClientMessage::Join {
                room: room.into(),
                sv: None,
                presence: None,
                rid: Some(1),
            },
        )
        .await;
        let doc = yrs::Doc::new();
        let joined = read_until(&mut ws, |b| match decode_server(b) {
            Ok(ServerMessage::Synced { diff, .. }) => {
                apply(&doc, &diff.0);
                true
            }
            Ok(ServerMessage::Error { code, message, .. }) => {
                panic!("probe join refused: {code:?} {message}")
            }
            _ => false,
        })
        .await;
        assert!(joined, "probe's connection closed before synced");
        Member { ws, doc }
    }

    /// Reads until its document's `probe` text contains `marker`.
    async fn receives(&mut self, marker: &str) {
        let doc = &self.doc;
        let got = read_until(&mut self.ws, |b| {
            if let Ok(ServerMessage::Update { data, .. }) = decode_server(b) {
                apply(doc, &data.0);
            }
            probe_text(doc).contains(marker)
        })
        .await;
        assert!(got, "probe's connection closed before it got {marker}");
    }
}

/// The round trip after every batch, on the fuzzed room: `a` sends an
/// update with a request id, it is acked, and `b` receives it.
async fn native_round_trip(a: &mut Member, b: &mut Member, room: &str, n: u64) {
    native_round_trip_to(a, room, n).await;
    b.receives(&format!("<n{n}>")).await;
}

/// A stock-protocol member on `/yjs/{room}`, synced from the start.
struct YjsMember {
    ws: Ws,
    doc: yrs::Doc,
}

impl YjsMember {
    async fn join(addr: std::net::SocketAddr, room: &str) -> YjsMember {
        let mut ws = ws(format!("ws://{addr}/yjs/{room}")).await;
        ws.send(Message::Binary(
            yjs::sync_step1(&yrs::StateVector::default()).into(),
        ))
        .await
        .expect("probe sends");
        let doc = yrs::Doc::new();
        let synced = read_until(&mut ws, |b| {
            let mut got_step2 = false;
            for m in yjs::decode_frame(b).expect("server frame decodes") {
                if let yjs::YjsMessage::SyncStep2(u) = m {
                    apply(&doc, &u);
                    got_step2 = true;
                }
            }
            got_step2
        })
        .await;
        assert!(synced, "/yjs probe closed before sync step 2");
        YjsMember { ws, doc }
    }

    async fn receives(&mut self, marker: &str) {
        let doc = &self.doc;
        let got = read_until(&mut self.ws, |b| {
            for m in yjs::decode_frame(b).expect("server frame decodes") {
                if let yjs::YjsMessage::Update(u) | yjs::YjsMessage::SyncStep2(u) = m {
                    apply(doc, &u);
                }
            }
            probe_text(doc).contains(marker)
        })
        .await;
        assert!(got, "/yjs probe closed before it got {marker}");
    }
}

/// The round trip of a `/yjs` room: a native member's update is acked and
/// reaches the `/yjs` member, whose own update reaches the native one.
async fn yjs_round_trip(a: &mut Member, y: &mut YjsMember, room: &str, n: u64) {
    native_round_trip_to(a, room, n).await;
    y.receives(&format!("<n{n}>")).await;
    let back = format!("<y{n}>");
    y.ws.send(Message::Binary(
        yjs::sync_update(probe_update(&back)).into(),
    ))
    .await
    .expect("probe sends");
    a.receives(&back).await;
}

/// `a` sends an update with request id `n` and waits for its ack.
async fn native_round_trip_to(a: &mut Member, room: &str, n: u64) {
    let marker = format!("<n{n}>");
    send_native(
        &mut a.ws,
        &ClientMessage::Update {
            room: room.into(),
            data: Bin(probe_update(&marker)),
            rid: Some(n),
        },
    )
    .await;
    let acked = read_until(&mut a.ws, |b| match decode_server(b) {
        Ok(ServerMessage::Ack { rid, .. }) => rid == n,
        Ok(ServerMessage::Error {
            rid: Some(r),
            code,
            message,
            ..
        }) if r == n => {
            panic!("probe update refused: {code:?} {message}")
        }
        _ => false,
    })
    .await;
    assert!(acked, "probe's connection closed before its ack");
}

/// What a session target did.
#[derive(Default, Debug)]
struct SessionStats {
    /// Connections opened for fuzz input.
    connections: u64,
    /// Batches after which the room round trip succeeded.
    round_trips: u64,
    /// Fuzz connections the server closed (for cause: bad hello, too big…).
    closed_by_server: u64,
}

async fn native_session(addr: std::net::SocketAddr, rng: &mut StdRng, cases: u64) -> SessionStats {
    let mut sent = 0;
    let mut st = SessionStats::default();
    while sent < cases {
        st.connections += 1;
        let room = format!("f{}", st.connections % 50);
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
        c.send(Message::Binary(hello.into()))
            .await
            .expect("hello sent");
        c.send(Message::Binary(join.into()))
            .await
            .expect("join sent");
        let mut a = Member::join(addr, &room).await;
        let mut b = Member::join(addr, &room).await;
        'session: loop {
            for _ in 0..BATCH {
                let mut input = native_input(rng).bytes;
                // Keep the room name of valid messages pointing at this session's room.
                if rng.random_bool(0.5) {
                    let mut v = encode_client(&some_message(rng, &room));
                    mutate(rng, &mut v);
                    input = v;
                }
                sent += 1;
                if c.send(Message::Binary(input.into())).await.is_err() {
                    st.closed_by_server += 1;
                    break 'session;
                }
            }
            native_round_trip(&mut a, &mut b, &room, sent).await;
            st.round_trips += 1;
            if sent >= cases || rng.random_bool(0.02) {
                break;
            }
        }
        let _ = c.close(None).await;
    }
    st
}

async fn yjs_session(addr: std::net::SocketAddr, rng: &mut StdRng, cases: u64) -> SessionStats {
    let mut sent = 0;
    let mut st = SessionStats::default();
    while sent < cases {
        st.connections += 1;
        let room = format!("y{}", st.connections % 50);
        let mut c = ws(format!("ws://{addr}/yjs/{room}")).await;
        let mut a = Member::join(addr, &room).await;
        let mut y = YjsMember::join(addr, &room).await;
        'session: loop {
            for _ in 0..BATCH {
                sent += 1;
                if c.send(Message::Binary(yjs_input(rng).bytes.into()))
                    .await
                    .is_err()
                {
                    st.closed_by_server += 1;
                    break 'session;
                }
            }
            yjs_round_trip(&mut a, &mut y, &room, sent).await;
            st.round_trips += 1;
            if sent >= cases || rng.random_bool(0.02) {
                break;
            }
        }
        let _ = c.close(None).await;
    }
    st
}

#[test]
fn fuzz_session() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let srv = fuzz_server();
    let addr = srv.addr;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut rng = StdRng::seed_from_u64(seed());
    let n = cases();
    let (native, yjs) = armed("session", || {
        rt.block_on(async {
            let a = native_session(addr, &mut rng, n / 2).await;
            let b = yjs_session(addr, &mut rng, n - n / 2).await;
            (a, b)
        })
    });
    eprintln!("fuzz session: native {native:?}, /yjs {yjs:?}");
    // No panic anywhere, caught (the room catches yrs panics) or not
    // (checked by `armed`), and a round trip after every batch (each one
    // asserted above).
    for (name, st, cases) in [("native", &native, n / 2), ("/yjs", &yjs, n - n / 2)] {
        assert!(
            st.round_trips >= cases / BATCH / 2,
            "{name}: only {} room round trips for {cases} inputs",
            st.round_trips
        );
    }
    srv.shutdown();
}
