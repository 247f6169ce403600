//! Version history under attack: hostile clients (floods of named
//! versions, foreign tokens, ids of other rooms), careless ones (rooms left
//! right after an edit) and a failing world (restarts between deletions),
//! with documents of every root type (Text, Map, Array, XmlFragment,
//! nested) checked byte for byte through view and restore.

use std::net::SocketAddr;
use std::time::Duration;

use chorus::auth::Rights;
use chorus::protocol::native::{ClientMessage, ServerMessage};
use chorus::protocol::ErrorCode;
use serde_json::Value;
use yrs::types::xml::XmlFragment;
use yrs::updates::decoder::Decode;
use yrs::{
    Array, ArrayPrelim, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update,
    WriteTxn, Xml, XmlElementPrelim, XmlTextPrelim,
};

use crate::common::{eventually, server, ChildServer, Client, TestDoc};
use crate::history::{
    ask, create, delete, error_code, joined, joined_as, mint_token, redb_args, rest_get, restore,
    rid_of, start, temp_data_dir, try_create,
};
use crate::http::request;

/// Every version of `room` over REST, newest first, following `next`.
async fn all_versions(addr: SocketAddr, room: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/api/v1/rooms/{room}/versions?limit=7&before={b}"),
            None => format!("/api/v1/rooms/{room}/versions?limit=7"),
        };
        let r = rest_get(addr, &path).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let j = r.json();
        out.extend(j["versions"].as_array().unwrap().iter().cloned());
        match j["next"].as_str() {
            Some(n) => before = Some(n.to_owned()),
            None => return out,
        }
    }
}

/// What a version rebuilds: its JSON view, and its document re-encoded
/// whole from the `/update` bytes (a canonical form to compare bytes).
async fn version_state(addr: SocketAddr, room: &str, id: &str) -> (Value, Vec<u8>) {
    let base = format!("/api/v1/rooms/{room}/versions/{id}");
    let r = rest_get(addr, &format!("{base}/doc")).await;
    assert_eq!(
        r.status,
        200,
        "view {id}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let view = r.json()["doc"].clone();
    let r = rest_get(addr, &format!("{base}/update")).await;
    assert_eq!(r.status, 200, "update {id}");
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&r.body).expect("update decodes"))
        .expect("update applies");
    let bytes = doc
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    (view, bytes)
}

async fn live_doc(addr: SocketAddr, room: &str) -> Value {
    let r = rest_get(addr, &format!("/api/v1/rooms/{room}/doc")).await;
    assert_eq!(r.status, 200);
    r.json()["doc"].clone()
}

/// Step `i` of an editing session touching every root type: text edits
/// and deletions, map keys set and removed (nested maps), an array with a
/// nested map, an XmlFragment of paragraphs with attributes and text.
fn edit_step(doc: &Doc, i: u32) -> Vec<u8> {
    let before = doc.transact().state_vector();
    {
        let mut txn = doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        let len = t.len(&txn);
        // ASCII in front (removals there never split a character),
        // other scripts at the end.
        if i % 3 == 2 {
            t.remove_range(&mut txn, 0, 2);
        }
        t.insert(&mut txn, len, "é✓");
        t.insert(&mut txn, 0, &format!("<{i}>"));
        let m = txn.get_or_insert_map("m");
        m.insert(&mut txn, format!("k{i}"), i64::from(i));
        if i % 2 == 1 {
            m.remove(&mut txn, &format!("k{}", i - 1));
        }
        m.insert(
            &mut txn,
            "nested",
            MapPrelim::from([("step".to_owned(), yrs::Any::from(i64::from(i)))]),
        );
        let a = txn.get_or_insert_array("a");
        a.push_back(&mut txn, i64::from(i));
        if i % 4 == 3 {
            a.remove(&mut txn, 0);
        }
        a.push_back(&mut txn, ArrayPrelim::from([format!("inner{i}")]));
        let x = txn.get_or_insert_xml_fragment("x");
        let p = x.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
        p.insert_attribute(&mut txn, "n", i.to_string());
        p.push_back(&mut txn, XmlTextPrelim::new(format!("para {i}")));
        if i % 3 == 1 {
            x.remove_range(&mut txn, 0, 1);
        }
    }
    doc.transact().encode_diff_v1(&before)
}

/// Makes `n` named versions of an editing session in `room`, each after
/// one [`edit_step`]; returns their ids (oldest first).
async fn session_with_versions(c: &mut Client, room: &str, n: u32) -> Vec<String> {
    let doc = Doc::with_client_id(u64::from(rand::random::<u32>()));
    c.join(room, &TestDoc::new()).await;
    let mut ids = Vec::new();
    for i in 0..n {
        c.update_acked(room, edit_step(&doc, i)).await;
        ids.push(create(c, room, &format!("v{i} ✓ «name»")).await.id);
    }
    ids
}

/// `n` letters, a to z over and over.
fn letters(n: u32) -> String {
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// A deterministic shuffle (xorshift), so a failure repeats.
fn shuffled(ids: &[String], mut seed: u64) -> Vec<String> {
    let mut v = ids.to_vec();
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        v.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    v
}

/// Deleting versions in random order (each deletion merges into the next
/// version, across full states every 3 versions) leaves every remaining
/// version rebuilding exactly what it did before — same JSON view, same
/// document bytes — for Text, Map, Array, XmlFragment and nested types;
/// then restoring each remaining version makes the live document equal to
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_deletions_keep_every_other_version_byte_for_byte() {
    let srv = server(|c| {
        c.history.version_idle_ms = 0;
        c.history.version_snapshot_every = 3;
    });
    let room = "attack-delete-order";
    let mut c = Client::connect(srv.addr).await;
    let ids = session_with_versions(&mut c, room, 14).await;
    let mut before = std::collections::HashMap::new();
    for id in &ids {
        before.insert(id.clone(), version_state(srv.addr, room, id).await);
    }
    // Every version is distinct (the check below cannot pass by accident).
    let distinct: std::collections::HashSet<_> = before.values().map(|v| v.1.clone()).collect();
    assert_eq!(distinct.len(), ids.len());
    let order = shuffled(&ids, 0x9e37_79b9_7f4a_7c15);
    let mut left: Vec<String> = ids.clone();
    for gone in order.iter().take(9) {
        delete(&mut c, room, gone).await;
        left.retain(|x| x != gone);
        let listed: Vec<String> = all_versions(srv.addr, room)
            .await
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .rev()
            .collect();
        assert_eq!(listed, left, "after deleting {gone}");
        for id in &left {
            let now = version_state(srv.addr, room, id).await;
            assert!(
                now == before[id],
                "version {id} changed after deleting {gone}: {} ≠ {}",
                now.0,
                before[id].0
            );
        }
    }
    for id in &left {
        match ask(&mut c, |rid| ClientMessage::VersionRestore {
            room: room.into(),
            id: id.clone(),
            rid,
        })
        .await
        {
            ServerMessage::Version { version, .. } => {
                assert_eq!(version.restored_from.as_deref(), Some(id.as_str()));
            }
            other => panic!("restore of {id} refused: {other:?}"),
        }
        assert_eq!(live_doc(srv.addr, room).await, before[id].0, "restore {id}");
    }
}

/// The same on redb with a restart between deletions: the merged versions
/// are stored, and every remaining one rebuilds as before after restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_across_restarts_on_redb_keep_versions_byte_for_byte() {
    let (_dir, data) = temp_data_dir();
    let args = redb_args(
        &data,
        &["--version-idle-ms", "0", "--version-snapshot-every", "4"],
    );
    let room = "attack-redb-order";
    let srv = start(&args);
    let mut c = Client::connect(srv.addr).await;
    let ids = session_with_versions(&mut c, room, 10).await;
    let mut before = std::collections::HashMap::new();
    for id in &ids {
        before.insert(id.clone(), version_state(srv.addr, room, id).await);
    }
    c.close().await;
    srv.terminate();
    let order = shuffled(&ids, 0x1234_5678_9abc_def1);
    let mut left = ids.clone();
    for chunk in order.chunks(3).take(2) {
        let srv = start(&args);
        let mut c = Client::connect(srv.addr).await;
        c.join(room, &TestDoc::new()).await;
        for gone in chunk {
            delete(&mut c, room, gone).await;
            left.retain(|x| x != gone);
        }
        c.close().await;
        srv.terminate();
        let srv = start(&args);
        let listed: Vec<String> = all_versions(srv.addr, room)
            .await
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .rev()
            .collect();
        assert_eq!(listed, left);
        for id in &left {
            let now = version_state(srv.addr, room, id).await;
            assert!(
                now == before[id],
                "version {id}: {} ≠ {}",
                now.0,
                before[id].0
            );
        }
        srv.terminate();
    }
}

const SECRET: &str = "attack-secret-0123456789abcdef";

fn token(user: &str, room: &str, rights: Rights) -> String {
    mint_token(SECRET, user, None, room, rights)
}

/// A token for room A gets nothing of room B's history (REST), and ids of
/// room A's versions mean nothing in room B (404, never A's content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_tokens_and_foreign_ids_reach_nothing() {
    let srv = server(|c| c.auth_secret = Some(SECRET.into()));
    let (a, b) = ("attack-room-a", "attack-room-b");
    let mut ca = Client::connect_raw(srv.addr).await;
    ca.hello(Some(token("ann", a, Rights::Write))).await;
    let doc = TestDoc::new();
    ca.join(a, &doc).await;
    ca.update_acked(a, doc.push("secret of A")).await;
    let va = create(&mut ca, a, "a1").await;
    let mut cb = Client::connect_raw(srv.addr).await;
    cb.hello(Some(token("bea", b, Rights::Write))).await;
    let docb = TestDoc::new();
    cb.join(b, &docb).await;
    cb.update_acked(b, docb.push("b")).await;
    // B's member asks for A's version id in B: not found, not A's content.
    for make in [
        (|rid, id: String| ClientMessage::VersionView {
            room: "attack-room-b".into(),
            id,
            rid,
        }) as fn(Option<u64>, String) -> ClientMessage,
        |rid, id| ClientMessage::VersionRestore {
            room: "attack-room-b".into(),
            id,
            rid,
        },
        |rid, id| ClientMessage::VersionDelete {
            room: "attack-room-b".into(),
            id,
            rid,
        },
    ] {
        let m = ask(&mut cb, |rid| make(rid, va.id.clone())).await;
        assert_eq!(error_code(&m), Some(ErrorCode::NotFound), "{m:?}");
    }
    // B's member asks about A over the native protocol: not joined / forbidden.
    let m = ask(&mut cb, |rid| ClientMessage::VersionRestore {
        room: a.into(),
        id: va.id.clone(),
        rid,
    })
    .await;
    assert!(
        matches!(
            error_code(&m),
            Some(ErrorCode::Forbidden | ErrorCode::NotJoined)
        ),
        "{m:?}"
    );
    // REST with B's token on A's versions: 403 for every route.
    let bearer = format!("Bearer {}", token("bea", b, Rights::Write));
    let auth = [("Authorization", bearer.as_str())];
    let base = format!("/api/v1/rooms/{a}/versions");
    for (method, path, body) in [
        ("GET", base.clone(), &b""[..]),
        ("POST", base.clone(), &br#"{"name":"x"}"#[..]),
        ("GET", format!("{base}/{}/doc", va.id), &b""[..]),
        ("GET", format!("{base}/{}/update", va.id), &b""[..]),
        ("POST", format!("{base}/{}/restore", va.id), &b""[..]),
        ("DELETE", format!("{base}/{}", va.id), &b""[..]),
    ] {
        let r = request(srv.addr, method, &path, &auth, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (403, "forbidden".into()),
            "{method} {path}"
        );
    }
    // No token at all: 401 everywhere.
    let r = rest_get(srv.addr, &base).await;
    assert_eq!(r.status, 401);
    // A's history is untouched.
    let bearer = format!("Bearer {}", token("ann", a, Rights::Read));
    let r = request(
        srv.addr,
        "GET",
        &base,
        &[("Authorization", bearer.as_str())],
        b"",
    )
    .await;
    assert_eq!(r.json()["versions"].as_array().unwrap().len(), 1);
}

/// A client looping `version_create` cannot grow a room's history without
/// bound: named versions (never pruned) stop at `--max-named-versions`
/// with a clear `bad_message`, the room goes on working, and deleting one
/// makes room for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_version_flood_stops_at_the_cap() {
    let srv = server(|c| {
        c.history.version_idle_ms = 0;
        c.history.max_named_versions = 20;
    });
    let room = "attack-flood";
    let (mut c, doc) = joined(srv.addr, room).await;
    c.update_acked(room, doc.push("x")).await;
    // 60 creates, one after the other (a connection may have only a few
    // history requests in flight).
    let (mut made, mut refused) = (0, 0);
    for i in 0..60 {
        match try_create(&mut c, room, &format!("flood {i}")).await {
            ServerMessage::Version { .. } => made += 1,
            ServerMessage::Error { code, message, .. } => {
                assert_eq!(code, ErrorCode::BadMessage, "{message}");
                assert!(message.contains("max_named_versions"), "{message}");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    println!("named version flood: {made} made, {refused} refused");
    assert_eq!((made, refused), (20, 40));
    let listed = all_versions(srv.addr, room).await;
    assert_eq!(listed.len(), 20);
    // REST is capped the same way.
    let base = format!("/api/v1/rooms/{room}/versions");
    let r = request(srv.addr, "POST", &base, &[], br#"{"name":"rest"}"#).await;
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    // The room still works, and a deletion frees a place.
    c.update_acked(room, doc.push("y")).await;
    let oldest = listed.last().unwrap()["id"].as_str().unwrap().to_owned();
    delete(&mut c, room, &oldest).await;
    let v = create(&mut c, room, "after a deletion").await;
    let (view, _) = version_state(srv.addr, room, &v.id).await;
    assert_eq!(view["t"], "xy");
}

/// A careless client edits and leaves at once; the room is evicted from
/// memory before the idle window of automatic versions ends. The edit must
/// still get an automatic version (with its author), made before the room
/// goes, not be left out of history until someone edits again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_right_before_eviction_get_an_automatic_version() {
    let srv = server(|c| {
        c.history.version_idle_ms = 1_500;
        c.limits.room_idle_ms = 50;
    });
    let room = "attack-evicted";
    let (mut c, doc) = joined_as(srv.addr, room, "Leaver").await;
    c.update_acked(room, doc.push("typed then left")).await;
    c.close().await;
    // Long past eviction and the idle window.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    eventually("an automatic version of the last edit", || {
        let addr = srv.addr;
        async move {
            let versions = all_versions(addr, room).await;
            versions.len() == 1 && versions[0]["kind"] == "auto"
        }
    })
    .await;
    let versions = all_versions(srv.addr, room).await;
    let id = versions[0]["id"].as_str().unwrap().to_owned();
    let (view, _) = version_state(srv.addr, room, &id).await;
    assert_eq!(view["t"], "typed then left");
}

/// Restores racing each other and continuous edits from two writers: every
/// request is answered, every client converges to the server's document,
/// and each restore is in the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_racing_edits_converge_everywhere() {
    let srv = server(|c| c.history.version_idle_ms = 0);
    let room = "attack-race";
    let (mut a, da) = joined(srv.addr, room).await;
    a.update_acked(room, da.push("base ")).await;
    let v1 = create(&mut a, room, "base").await;
    a.update_acked(room, da.push("more ")).await;
    let v2 = create(&mut a, room, "more").await;
    let (mut b, db) = joined(srv.addr, room).await;
    // Four restorers (one restore in flight each: the connection's limit),
    // two rounds of concurrent restores alternating versions, while a and
    // b type.
    let mut rs = Vec::new();
    for _ in 0..4 {
        let mut r = Client::connect(srv.addr).await;
        r.join(room, &TestDoc::new()).await;
        rs.push(r);
    }
    let mut restored = 0;
    for _round in 0..2 {
        let mut rids = Vec::new();
        for (i, r) in rs.iter_mut().enumerate() {
            let rid = r.rid();
            rids.push(rid);
            let id = if i.is_multiple_of(2) { &v1.id } else { &v2.id };
            r.send(&ClientMessage::VersionRestore {
                room: room.into(),
                id: id.clone(),
                rid: Some(rid),
            })
            .await;
            a.send_update(room, da.push("a")).await;
            b.send_update(room, db.push("b")).await;
        }
        for (r, rid) in rs.iter_mut().zip(rids) {
            match r.expect(|m| rid_of(m) == Some(rid)).await {
                ServerMessage::Version { version, .. } => {
                    assert_eq!(version.kind, "restore");
                    restored += 1;
                }
                other => panic!("restore refused: {other:?}"),
            }
        }
    }
    assert_eq!(restored, 8);
    // A last edit from each after the restores, then everyone converges.
    a.update_acked(room, da.push("A")).await;
    b.update_acked(room, db.push("B")).await;
    let server_text = || async { live_doc(srv.addr, room).await["t"].clone() };
    let want = server_text().await;
    let want = want.as_str().unwrap().to_owned();
    assert!(want.contains('A') && want.contains('B'), "{want}");
    for (c, d) in [(&mut a, &da), (&mut b, &db)] {
        tokio::time::timeout(Duration::from_secs(20), c.sync_until(room, d, &want))
            .await
            .expect("client converges");
    }
    let kinds: Vec<String> = all_versions(srv.addr, room)
        .await
        .iter()
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds.iter().filter(|k| *k == "restore").count(), 8);
}

/// Readers flood `version_view` of a 2 MB document's version (a delta:
/// each view rebuilds the document off the room's thread), from 15
/// connections at 4 requests in flight each: every request is answered, and the server's memory does not grow with the number of
/// views in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn view_flood_of_a_big_version_keeps_memory_bounded() {
    let args = ["--store", "memory", "--version-idle-ms", "0"];
    let srv = ChildServer::start(&args);
    let room = "attack-big-view";
    let (mut c, doc) = joined(srv.addr, room).await;
    let big = letters(2_000_000);
    c.update_acked(room, doc.push(&big)).await;
    create(&mut c, room, "big").await;
    c.update_acked(room, doc.push("!")).await;
    let v = create(&mut c, room, "big and a bit").await;
    let view = |rid: u64| ClientMessage::VersionView {
        room: room.into(),
        id: v.id.clone(),
        rid: Some(rid),
    };
    // One view first (warm), then the baseline.
    let rid = c.rid();
    c.send(&view(rid)).await;
    c.expect(|m| rid_of(m) == Some(rid)).await;
    let base = srv.rss_bytes();
    // 15 connections × 4 views (the most one connection may have in
    // flight): 60 rebuilds asked at once.
    let n = 60;
    let mut readers = Vec::new();
    for _ in 0..15 {
        let mut r = Client::connect(srv.addr).await;
        r.join(room, &TestDoc::new()).await;
        readers.push(r);
    }
    let mut asked = Vec::new();
    for r in readers.iter_mut() {
        for _ in 0..4 {
            let rid = r.rid();
            asked.push(rid);
            r.send(&view(rid)).await;
        }
    }
    let mut peak = srv.rss_bytes();
    for (i, rid) in asked.into_iter().enumerate() {
        match readers[i / 4].expect(|m| rid_of(m) == Some(rid)).await {
            ServerMessage::VersionDoc { update, .. } => assert!(update.0.len() > 2_000_000),
            other => panic!("view refused: {other:?}"),
        }
        peak = peak.max(srv.rss_bytes());
    }
    let grown = peak.saturating_sub(base);
    println!(
        "{n} views of a 2 MB version in flight: RSS {} MiB before, peak {} MiB (+{} MiB)",
        base >> 20,
        peak >> 20,
        grown >> 20
    );
    // Without a bound on a room's rebuilds in flight this was +191 MiB
    // (growing with n; +245 MiB from one connection before the
    // per-connection limit); with it, about +64 MiB (answers queued to
    // 15 connections).
    assert!(
        grown < 128 << 20,
        "memory grew {} MiB with {n} views in flight",
        grown >> 20
    );
    srv.terminate();
}

/// The answer to a restore acknowledges it: `kill -9` right after it, and
/// the restarted server holds the restored content (not only the restore
/// version in the list), for the embedded store and PostgreSQL.
async fn restore_then_kill(args: &[String], room: &str) {
    let srv = start(args);
    let (mut c, doc) = joined(srv.addr, room).await;
    c.update_acked(room, doc.push("kept")).await;
    let v1 = create(&mut c, room, "kept").await;
    c.update_acked(room, doc.push(" and later")).await;
    create(&mut c, room, "later").await;
    let restored = restore(&mut c, room, &v1.id).await;
    srv.kill();
    let srv = start(args);
    let listed = all_versions(srv.addr, room).await;
    assert_eq!(listed[0]["id"], restored.id.as_str(), "{listed:?}");
    assert_eq!(
        live_doc(srv.addr, room).await["t"],
        "kept",
        "the restore version is listed, so its content must be stored"
    );
    srv.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_restore_survives_kill_9_on_redb() {
    let (_dir, data) = temp_data_dir();
    let args = redb_args(&data, &["--version-idle-ms", "0"]);
    for i in 0..5 {
        restore_then_kill(&args, &format!("attack-kill-redb-{i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_restore_survives_kill_9_on_postgres() {
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let args = ["--postgres-url", url.as_str(), "--version-idle-ms", "0"].map(String::from);
    for i in 0..5 {
        restore_then_kill(&args, &format!("attack-kill-pg-{i}")).await;
    }
}

/// Runs `chorus store copy --from from --to to`; returns how many rooms it
/// wrote and how many it found unchanged.
fn store_copy(from: &str, to: &str) -> (u64, u64) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["store", "copy", "--from", from, "--to", to])
        .output()
        .expect("chorus runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let count = |what: &str| -> u64 {
        let line = err
            .lines()
            .rev()
            .find(|l| l.starts_with("copied"))
            .expect(&err);
        let at = line.find(&format!(" {what}")).expect(line);
        let digits: String = line[..at]
            .chars()
            .rev()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .chars()
            .rev()
            .collect::<String>()
            .parse()
            .expect(line)
    };
    (count("written"), count("unchanged"))
}

/// Everything a server says about a room's history: the listing (ids,
/// times, names, kinds, restored_from, authors, bytes) and what every
/// version rebuilds (JSON view and document bytes).
async fn history_of(addr: SocketAddr, room: &str) -> (Vec<Value>, Vec<(Value, Vec<u8>)>) {
    let listed = all_versions(addr, room).await;
    let mut states = Vec::new();
    for v in &listed {
        states.push(version_state(addr, room, v["id"].as_str().unwrap()).await);
    }
    (listed, states)
}

/// Restores `id` over REST on a server started on a copy: the live document
/// becomes the version's, and the restore version's id is past every id the
/// room had handed out before the copy (`past`).
async fn restore_on_copy(addr: SocketAddr, room: &str, id: &str, view: &Value, past: u64) {
    let path = format!("/api/v1/rooms/{room}/versions/{id}/restore");
    let r = request(addr, "POST", &path, &[], b"").await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let made = r.json()["version"].clone();
    assert_eq!(made["kind"], "restore");
    assert_eq!(made["restored_from"], id);
    let new_id: u64 = made["id"].as_str().unwrap().parse().unwrap();
    assert!(
        new_id > past,
        "restore on the copy got id {new_id}, not past {past}"
    );
    assert_eq!(&live_doc(addr, room).await, view);
}

/// `chorus store copy` carries version history both ways, byte for byte:
/// a room with named versions (full states and deltas, one deleted in the
/// middle, the last deleted so the id counter is past the last id, one
/// restore) moves from redb to PostgreSQL that already held other versions
/// of it (replaced), then back to a new redb file. On a server started on
/// each target the listing (ids, times, names, kinds, restored_from,
/// authors, bytes) and every version's view and bytes are the source's, a
/// restore works and gets an id never handed out before, and a rerun of
/// the copy writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_copy_carries_version_history() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("a").to_str().unwrap().to_owned();
    let back = dir.path().join("b").to_str().unwrap().to_owned();
    let room = "attack-copy";
    let quiet = ["--version-idle-ms", "0", "--version-snapshot-every", "3"];
    // The source: 7 named versions (full states every 3), the 4th deleted
    // (merged into the 5th), a restore of the 2nd, then one more named
    // version deleted again: its id is handed out and must never be again.
    let srv = start(&redb_args(&data, &quiet));
    let mut c = Client::connect(srv.addr).await;
    let ids = session_with_versions(&mut c, room, 7).await;
    delete(&mut c, room, &ids[3]).await;
    let restore = ask(&mut c, |rid| ClientMessage::VersionRestore {
        room: room.into(),
        id: ids[1].clone(),
        rid,
    })
    .await;
    assert!(
        matches!(restore, ServerMessage::Version { .. }),
        "{restore:?}"
    );
    let gone = create(&mut c, room, "gone").await;
    delete(&mut c, room, &gone.id).await;
    c.close().await;
    let source = history_of(srv.addr, room).await;
    let live = live_doc(srv.addr, room).await;
    srv.terminate();
    assert_eq!(source.0.len(), 7, "{:?}", source.0);
    assert_eq!(source.0[0]["kind"], "restore");
    let handed_out: u64 = gone.id.parse().unwrap();
    assert!(handed_out > source.0[0]["id"].as_str().unwrap().parse().unwrap());

    // The target already has this room, with versions of its own.
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let mut pg_args = vec!["--postgres-url".to_owned(), url.clone()];
    pg_args.extend(quiet.iter().map(|s| s.to_string()));
    let srv = start(&pg_args);
    let mut c = Client::connect(srv.addr).await;
    session_with_versions(&mut c, room, 3).await;
    c.close().await;
    srv.terminate();

    assert_eq!(store_copy(&data, &url), (1, 0));
    assert_eq!(store_copy(&data, &url), (0, 1), "a rerun writes nothing");
    let srv = start(&pg_args);
    assert_eq!(live_doc(srv.addr, room).await, live);
    let on_pg = history_of(srv.addr, room).await;
    assert_eq!(on_pg.0, source.0, "the listing after redb → PostgreSQL");
    assert!(
        on_pg.1 == source.1,
        "a version rebuilds otherwise on PostgreSQL"
    );
    let (view, _) = &source.1[2];
    let id = source.0[2]["id"].as_str().unwrap();
    restore_on_copy(srv.addr, room, id, view, handed_out).await;
    let pg_history = history_of(srv.addr, room).await;
    let pg_live = live_doc(srv.addr, room).await;
    srv.terminate();

    assert_eq!(store_copy(&url, &back), (1, 0));
    assert_eq!(store_copy(&url, &back), (0, 1), "a rerun writes nothing");
    let srv = start(&redb_args(&back, &quiet));
    assert_eq!(live_doc(srv.addr, room).await, pg_live);
    let on_redb = history_of(srv.addr, room).await;
    assert_eq!(
        on_redb.0, pg_history.0,
        "the listing after PostgreSQL → redb"
    );
    assert!(
        on_redb.1 == pg_history.1,
        "a version rebuilds otherwise on redb"
    );
    let past: u64 = pg_history.0[0]["id"].as_str().unwrap().parse().unwrap();
    let (view, _) = &source.1[4];
    let id = source.0[4]["id"].as_str().unwrap();
    restore_on_copy(srv.addr, room, id, view, past).await;
    srv.terminate();
}

/// A `version_restore` is a few bytes that make the room store and send
/// every member a change as large as the document. A writer alternating
/// restores of two versions of a 512 KiB document must not get around the
/// byte rate that would stop it sending those changes itself: a second
/// restore while one is in flight is refused (`rate_limited`), and each
/// restore is charged for what it changed, so the flood ends in
/// `rate_limited` and a close long before 40 restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_flood_is_charged_to_the_byte_rate() {
    let srv = server(|c| {
        c.history.version_idle_ms = 0;
        c.limits.max_bytes_per_sec = 1024 * 1024;
        c.limits.rate_limit_grace_ms = 1_000;
    });
    let room = "attack-restore-flood";
    let (mut c, doc) = joined(srv.addr, room).await;
    let half = letters(256 * 1024);
    c.update_acked(room, doc.push(&half)).await;
    let v1 = create(&mut c, room, "one").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    c.update_acked(room, doc.push(&half)).await;
    let v2 = create(&mut c, room, "two").await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let restore = |i: usize, rid| ClientMessage::VersionRestore {
        room: room.into(),
        id: if i.is_multiple_of(2) {
            v1.id.clone()
        } else {
            v2.id.clone()
        },
        rid: Some(rid),
    };
    // Pipelined: one restore in flight at a time (refused with its own
    // reason, not max_history_requests_in_flight's).
    let mut rids = Vec::new();
    for i in 0..5 {
        let rid = c.rid();
        rids.push(rid);
        c.send(&restore(i, rid)).await;
    }
    let mut answers = Vec::new();
    for rid in rids {
        answers.push(c.expect(|m| rid_of(m) == Some(rid)).await);
    }
    let done = answers
        .iter()
        .filter(|m| matches!(m, ServerMessage::Version { .. }))
        .count();
    let refused = answers
        .iter()
        .filter(|m| error_code(m) == Some(ErrorCode::RateLimited))
        .count();
    let one_at_a_time = answers.iter().any(|m| {
        matches!(m, ServerMessage::Error { code: ErrorCode::RateLimited, message, .. }
            if message.contains("one version_restore at a time"))
    });
    assert!(
        done >= 1 && refused >= 1 && done + refused == 5 && one_at_a_time,
        "{answers:?}"
    );
    // One after the other: charged, then closed for the rate.
    let mut restored = 0;
    let mut limited = false;
    for i in 0..40 {
        let rid = c.rid();
        if c.try_send(&restore(i + 1, rid)).await.is_err() {
            limited = true;
            break;
        }
        let m = tokio::time::timeout(
            Duration::from_secs(20),
            c.expect(|m| {
                rid_of(m) == Some(rid) || matches!(m, ServerMessage::Error { rid: None, .. })
            }),
        )
        .await;
        match m {
            Ok(ServerMessage::Version { .. }) => restored += 1,
            Ok(ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => {
                limited = true;
                break;
            }
            Ok(other) => panic!("{other:?}"),
            Err(_) => {
                limited = true;
                break;
            }
        }
    }
    println!("restores of a 512 KiB document before the rate limit: {restored}");
    assert!(
        limited && restored < 40,
        "{restored} restores, never limited"
    );
}

/// Restoring a version of an 8 MB document while other rooms are busy:
/// the restore answers, every update in the other rooms is acknowledged,
/// and the longest acknowledgement wait there during the restore is
/// printed (a measurement: rooms share `room_threads`, and the restore's
/// diff runs on its room's thread).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_of_a_big_document_and_other_rooms() {
    let srv = server(|c| {
        c.history.version_idle_ms = 0;
        c.limits.max_bytes_per_sec = 0;
    });
    let room = "attack-big-restore";
    let (mut c, doc) = joined(srv.addr, room).await;
    let chunk = letters(2_000_000);
    for _ in 0..4 {
        c.update_acked(room, doc.push(&chunk)).await;
    }
    let v1 = create(&mut c, room, "8 MB").await;
    c.update_acked(room, doc.insert(0, "changed ")).await;
    create(&mut c, room, "changed").await;
    let mut others = Vec::new();
    for i in 0..4 {
        let mut o = Client::connect(srv.addr).await;
        let d = TestDoc::new();
        let r = format!("attack-bystander-{i}");
        o.join(&r, &d).await;
        others.push((o, d, r));
    }
    let rid = c.rid();
    let started = std::time::Instant::now();
    c.send(&ClientMessage::VersionRestore {
        room: room.into(),
        id: v1.id.clone(),
        rid: Some(rid),
    })
    .await;
    let bystanders = tokio::spawn(async move {
        let mut worst = Duration::ZERO;
        let deadline = std::time::Instant::now() + Duration::from_secs(4);
        while std::time::Instant::now() < deadline {
            for (o, d, r) in others.iter_mut() {
                let t = std::time::Instant::now();
                o.update_acked(r, d.push("x")).await;
                worst = worst.max(t.elapsed());
            }
        }
        worst
    });
    match c.expect(|m| rid_of(m) == Some(rid)).await {
        ServerMessage::Version { version, .. } => assert_eq!(version.kind, "restore"),
        other => panic!("restore refused: {other:?}"),
    }
    let took = started.elapsed();
    let worst = bystanders.await.expect("bystanders");
    println!(
        "restore of an 8 MB document: answered in {} ms; longest ack wait in 4 other rooms meanwhile: {} ms",
        took.as_millis(),
        worst.as_millis()
    );
}
