//! Version history: what it costs to keep, list and restore.
//!
//! `cargo bench --bench history` runs three parts and prints their numbers:
//!
//! 1. **A 30-minute editing session, accelerated**: a scripted typist (one
//!    Yjs client, one transaction per keystroke) types bursts of 20–160
//!    characters at 80–400 ms per key, backspaces now and then, deletes a
//!    word or a sentence elsewhere now and then, and pauses 1–90 s between
//!    bursts. The clock is simulated (no sleeping), so 30 minutes run in
//!    seconds. Versions are made by the server's rules with the default
//!    windows (`--version-idle-ms` 30 000: after 30 s of quiet;
//!    `--version-every-ms` 600 000: at least every 10 min of continuous
//!    editing), each stored exactly as a room stores it
//!    (`store::history::encode_version`: a delta from the previous version,
//!    or the whole document every `--version-snapshot-every` (50) versions
//!    or when the deltas outweigh it) in a real redb store (fsync on every
//!    version). Printed: versions, bytes of history stored vs the document's
//!    size, bytes per version, and what one whole document per version
//!    would have cost.
//! 2. **Listing**: time of `versions` (a page of 50) on that store, median
//!    and p99 over 500 calls, and of rebuilding the oldest and the newest
//!    version (reading its updates and applying them).
//! 3. **Restoring a version of a 10 MB document**: a real server (memory
//!    store) is given a 10 MB document over REST (10 updates of 1 MB of
//!    text, paragraphs with bold runs), a named version is made, 1 000
//!    paragraphs are deleted and text is added, then
//!    `POST /versions/{id}/restore` is timed end to end (read the version,
//!    rebuild it, make every root equal, store and send the update, record
//!    the restore's version), 5 times, alternating two versions.
//!
//! Env: `CHORUS_BENCH_SESSION_MIN` (simulated minutes, default 30),
//! `CHORUS_BENCH_DOC_MB` (restore part, default 10).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chorus::config::Config;
use chorus::http::BackgroundServer;
use chorus::store::history::{
    encode_version, Added, NewVersion, VersionHead, VersionKind, VersionOp, VersionOut, VersionPage,
};
use chorus::store::redb::{RedbStore, WriterOptions};
use chorus::store::DocStore;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use yrs::types::Attrs;
use yrs::updates::encoder::Encode;
use yrs::{Any, Doc, GetString, ReadTxn, StateVector, Text, Transact};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const IDLE_MS: u64 = 30_000;
const EVERY_MS: u64 = 600_000;
const SNAPSHOT_EVERY: u64 = 50;
const ROOM: &str = "bench-history";

/// The simulated room: its document, the store, the version rules.
struct Session {
    doc: Doc,
    store: Arc<RedbStore>,
    rt: tokio::runtime::Runtime,
    last_edit: Option<u64>,
    first_edit: Option<u64>,
    versions: u64,
    /// What one whole document per version would have stored.
    naive_bytes: u64,
    /// The delete set of the latest version, by id.
    head_ds: Option<(u64, yrs::IdSet)>,
}

impl Session {
    fn head(&self) -> Option<VersionHead> {
        match self
            .rt
            .block_on(self.store.versions(ROOM, VersionOp::Head))
            .expect("head")
        {
            VersionOut::Head(h) => h,
            _ => unreachable!(),
        }
    }

    /// Makes an automatic version at simulated time `now`, as a room does.
    fn version(&mut self, now: u64) {
        let head = self.head();
        let txn = self.doc.transact();
        let whole = txn.encode_state_as_update_v1(&StateVector::default()).len() as u64;
        self.naive_bytes += whole;
        if head
            .as_ref()
            .is_some_and(|h| h.sv == txn.state_vector().encode_v1())
        {
            return;
        }
        // The room's bound is the snapshot plus the updates since; the
        // whole encoded document is a tighter stand-in.
        // The room keeps the delete set of the version it made last.
        let head_ds = self
            .head_ds
            .as_ref()
            .filter(|(id, _)| head.as_ref().map(|h| h.id) == Some(*id))
            .map(|(_, ds)| ds);
        let encoded = encode_version(&txn, head.as_ref(), head_ds, SNAPSHOT_EVERY, whole);
        let (data, full, delete_set) = (encoded.data, encoded.full, encoded.delete_set);
        let new = NewVersion {
            after: head.map(|h| h.id),
            time: now,
            name: None,
            kind: VersionKind::Auto,
            restored_from: None,
            authors: vec![],
            sv: txn.state_vector().encode_v1(),
            data,
            full,
            max_named: usize::MAX,
        };
        drop(txn);
        match self
            .rt
            .block_on(self.store.versions(ROOM, VersionOp::Add(new)))
            .expect("add")
        {
            VersionOut::Added(Added::Added(m)) => {
                self.versions += 1;
                self.head_ds = delete_set.map(|ds| (m.id, ds));
            }
            other => panic!("not added: {other:?}"),
        }
        self.first_edit = None;
        self.last_edit = None;
    }

    /// Time passes until `now`: versions due by the rules are made.
    fn advance(&mut self, now: u64) {
        loop {
            let (Some(last), Some(first)) = (self.last_edit, self.first_edit) else {
                return;
            };
            let due = (last + IDLE_MS).min(first + EVERY_MS);
            if due > now {
                return;
            }
            self.version(due);
        }
    }

    fn edited(&mut self, now: u64) {
        self.last_edit = Some(now);
        self.first_edit.get_or_insert(now);
    }
}

const WORDS: &[&str] = &[
    "the",
    "room",
    "document",
    "version",
    "history",
    "restore",
    "editor",
    "typing",
    "quickly",
    "server",
    "update",
    "paragraph",
    "and",
    "of",
    "a",
    "to",
    "with",
    "every",
    "change",
    "note",
];

fn session_part() -> Session {
    let minutes = env_u64("CHORUS_BENCH_SESSION_MIN", 30);
    let dir = tempfile::tempdir().expect("temp dir");
    let store = RedbStore::open_at(dir.path(), WriterOptions::batch(64)).expect("redb opens");
    let mut s = Session {
        doc: Doc::with_client_id(77),
        store: Arc::new(store),
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        last_edit: None,
        first_edit: None,
        versions: 0,
        naive_bytes: 0,
        head_ds: None,
    };
    let text = s.doc.get_or_insert_text("t");
    let mut rng = StdRng::seed_from_u64(18);
    let end = minutes * 60_000;
    let mut now = 0u64;
    let (mut keys, mut deletes) = (0u64, 0u64);
    let started = Instant::now();
    while now < end {
        // A burst of typing at the end, with backspaces.
        let burst = rng.random_range(20..160);
        for _ in 0..burst {
            now += rng.random_range(80..400);
            s.advance(now);
            let mut txn = s.doc.transact_mut();
            let len = text.len(&txn);
            if len > 0 && rng.random_bool(0.08) {
                text.remove_range(&mut txn, len - 1, 1);
                deletes += 1;
            } else {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                let c = if rng.random_bool(0.15) {
                    " ".to_owned()
                } else {
                    w[..1].to_owned()
                };
                text.insert(&mut txn, len, &c);
                keys += 1;
            }
            drop(txn);
            s.edited(now);
        }
        // Now and then a word or a sentence deleted elsewhere.
        if rng.random_bool(0.3) {
            now += rng.random_range(500..3_000);
            s.advance(now);
            let mut txn = s.doc.transact_mut();
            let len = text.len(&txn);
            if len > 200 {
                let n = if rng.random_bool(0.7) { 6 } else { 60 };
                let at = rng.random_range(0..len - n);
                text.remove_range(&mut txn, at, n);
                deletes += u64::from(n);
            }
            drop(txn);
            s.edited(now);
        }
        // A pause: short, or long enough for the idle window.
        now += if rng.random_bool(0.35) {
            rng.random_range(30_000..90_000)
        } else {
            rng.random_range(1_000..20_000)
        };
        s.advance(now);
    }
    s.advance(u64::MAX / 2);
    let page = all_versions(&s);
    let stored: u64 = page.versions.iter().map(|v| v.bytes).sum();
    let txn = s.doc.transact();
    let doc_bytes = txn.encode_state_as_update_v1(&StateVector::default()).len();
    let chars = text.get_string(&txn).len();
    drop(txn);
    println!(
        "## 1. A {minutes}-minute editing session (simulated in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    println!();
    println!("| keystrokes | chars deleted | final text | document (Yjs v1) | versions | history stored | bytes / version | one whole document per version |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {keys} | {deletes} | {chars} chars | {doc_bytes} B | {} | {stored} B ({:.2}× the document) | {} B | {} B ({:.1}× the history stored) |",
        s.versions,
        stored as f64 / doc_bytes as f64,
        stored / s.versions.max(1),
        s.naive_bytes,
        s.naive_bytes as f64 / stored.max(1) as f64
    );
    println!();
    let _keep = dir.keep();
    s
}

/// The session's versions, newest first (up to 200).
fn all_versions(s: &Session) -> VersionPage {
    match s
        .rt
        .block_on(s.store.versions(
            ROOM,
            VersionOp::List {
                before: None,
                limit: 200,
            },
        ))
        .expect("list")
    {
        VersionOut::Page(p) => p,
        _ => unreachable!(),
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn list_part(s: &Session) {
    let mut times = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let out =
            s.rt.block_on(s.store.versions(
                ROOM,
                VersionOp::List {
                    before: None,
                    limit: 50,
                },
            ))
            .expect("list");
        times.push(t.elapsed());
        assert!(matches!(out, VersionOut::Page(_)));
    }
    let (p50, p99) = (percentile(&mut times, 0.5), percentile(&mut times, 0.99));
    let page = all_versions(s);
    let mut rebuild = Vec::new();
    for id in [
        page.versions.last().map(|v| v.id),
        page.versions.first().map(|v| v.id),
    ]
    .into_iter()
    .flatten()
    {
        let t = Instant::now();
        let VersionOut::Chain(Some((_, parts))) =
            s.rt.block_on(s.store.versions(ROOM, VersionOp::Chain(id)))
                .expect("chain")
        else {
            panic!("no chain")
        };
        let n = parts.len();
        let doc = chorus::room::restore::rebuild(&parts).expect("rebuilds");
        drop(doc);
        rebuild.push((id, n, t.elapsed()));
    }
    println!("## 2. Listing and viewing (redb)");
    println!();
    println!("| list 50 versions p50 | p99 | rebuild oldest (id, updates read) | rebuild newest (id, updates read) |");
    println!("|---|---|---|---|");
    let fmt = |r: &(u64, usize, Duration)| {
        format!("{:.2} ms (#{}, {})", r.2.as_secs_f64() * 1e3, r.0, r.1)
    };
    println!(
        "| {:.3} ms | {:.3} ms | {} | {} |",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        rebuild.first().map(fmt).unwrap_or_default(),
        rebuild.last().map(fmt).unwrap_or_default()
    );
    println!();
}

/// A `mb` MB document as 1 MB updates: paragraphs of text with bold runs.
fn big_doc(mb: u64) -> (Doc, Vec<Vec<u8>>) {
    let doc = Doc::with_client_id(4242);
    let text = doc.get_or_insert_text("t");
    let mut updates = Vec::new();
    let para: String = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".repeat(17);
    for _ in 0..mb {
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            let mut written = 0;
            while written < 1 << 20 {
                let len = text.len(&txn);
                text.insert(&mut txn, len, &para);
                text.insert(&mut txn, len + para.len() as u32, "\n");
                text.format(
                    &mut txn,
                    len,
                    11,
                    Attrs::from([("bold".into(), Any::Bool(true))]),
                );
                written += para.len() + 1;
            }
        }
        updates.push(doc.transact().encode_diff_v1(&before));
    }
    (doc, updates)
}

fn restore_part() {
    let mb = env_u64("CHORUS_BENCH_DOC_MB", 10);
    let mut config = Config::ephemeral();
    config.log_level = "warn".into();
    config.limits.max_doc_bytes = 64 << 20;
    config.limits.max_frame_bytes = 16 << 20;
    config.limits.outbound_hard_limit_bytes = 256 << 20;
    config.api.api_max_body_bytes = 4 << 20;
    config.api.api_requests_per_sec = 0;
    config.history.version_idle_ms = 0;
    let srv = BackgroundServer::spawn(config).expect("server starts");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let base = format!("http://{}/api/v1/rooms/big", srv.addr);
    let http = reqwest::Client::new();
    let (doc, updates) = big_doc(mb);
    let doc_bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default())
        .len();
    rt.block_on(async {
        for u in updates {
            let r = http
                .post(format!("{base}/update"))
                .body(u)
                .send()
                .await
                .expect("update sent");
            assert!(r.status().is_success(), "{}", r.status());
        }
        let named = |name: &'static str| {
            let http = http.clone();
            let base = base.clone();
            async move {
                let r = http
                    .post(format!("{base}/versions"))
                    .body(format!(r#"{{"name":"{name}"}}"#))
                    .send()
                    .await
                    .expect("version");
                assert_eq!(r.status().as_u16(), 201);
                let v: serde_json::Value = r.json().await.expect("json");
                v["version"]["id"].as_str().expect("id").to_owned()
            }
        };
        let before = named("10 MB").await;
        // 1 000 paragraphs deleted, text added.
        let edit = {
            let sv = doc.transact().state_vector();
            let text = doc.get_or_insert_text("t");
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 0, 1_000 * 970);
            text.insert(&mut txn, 0, "A new beginning.\n");
            drop(txn);
            doc.transact().encode_diff_v1(&sv)
        };
        let r = http
            .post(format!("{base}/update"))
            .body(Bytes::from(edit))
            .send()
            .await
            .expect("edit");
        assert!(r.status().is_success());
        let after = named("edited").await;
        let mut times = Vec::new();
        for i in 0..5 {
            let id = if i % 2 == 0 { &before } else { &after };
            let t = Instant::now();
            let r = http
                .post(format!("{base}/versions/{id}/restore"))
                .send()
                .await
                .expect("restore");
            assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
            times.push(t.elapsed());
        }
        let r = http
            .get(format!("{base}/versions?limit=200"))
            .send()
            .await
            .expect("list");
        let list: serde_json::Value = r.json().await.expect("json");
        let restores: Vec<u64> = list["versions"]
            .as_array()
            .expect("versions")
            .iter()
            .filter(|v| v["kind"] == "restore")
            .map(|v| v["bytes"].as_u64().unwrap_or(0))
            .collect();
        let mut sorted = times.clone();
        println!("## 3. Restoring a version of a {mb} MB document (REST, end to end, memory store)");
        println!();
        println!("| document (Yjs v1) | restores | median | min | max | bytes stored per restore version |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| {:.1} MB | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:?} |",
            doc_bytes as f64 / 1e6,
            times.len(),
            percentile(&mut sorted, 0.5).as_secs_f64() * 1e3,
            times.iter().min().expect("runs").as_secs_f64() * 1e3,
            times.iter().max().expect("runs").as_secs_f64() * 1e3,
            restores
        );
        println!();
    });
    srv.shutdown();
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs nothing.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    // reqwest (the restore part's HTTP client) needs a TLS provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s = session_part();
    list_part(&s);
    drop(s);
    restore_part();
}
