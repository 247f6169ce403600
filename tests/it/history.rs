//! Version history: named, automatic and restore versions over the native
//! protocol and REST, restores reaching every kind of client, rights,
//! retention, bad input, restarts.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use chorus::auth::{mint, now_secs, Claims, GrantClaim, Rights};
use chorus::protocol::native::{ClientMessage, ServerMessage, VersionView};
use chorus::protocol::ErrorCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use yrs::types::xml::XmlFragment;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Doc, GetString, ReadTxn, Text, Transact, Update, WriteTxn, Xml, XmlElementPrelim, XmlTextPrelim,
};

use crate::common::{eventually, server, ChildServer, Client, TestDoc};
use crate::http::{request, Resp};
use crate::interop::ensure_node_modules;

/// A client document with text `t` and a TipTap-shaped fragment `default`.
struct RichDoc {
    doc: Doc,
}

impl RichDoc {
    fn new() -> Self {
        RichDoc {
            doc: Doc::with_client_id(u64::from(rand::random::<u32>())),
        }
    }

    /// Makes the text `text` and one paragraph (`align`, holding `text`),
    /// plus paragraphs `extra`; returns the update.
    fn set(&self, text: &str, align: &str, extra: &[&str]) -> Vec<u8> {
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            let t = txn.get_or_insert_text("t");
            let len = t.len(&txn);
            t.remove_range(&mut txn, 0, len);
            t.insert(&mut txn, 0, text);
            let frag = txn.get_or_insert_xml_fragment("default");
            let len = frag.len(&txn);
            frag.remove_range(&mut txn, 0, len);
            let p = frag.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
            p.insert_attribute(&mut txn, "textAlign", align);
            p.push_back(&mut txn, XmlTextPrelim::new(text));
            for e in extra {
                let p = frag.push_back(&mut txn, XmlElementPrelim::empty("paragraph"));
                p.push_back(&mut txn, XmlTextPrelim::new(*e));
            }
        }
        self.doc.transact().encode_diff_v1(&before)
    }

    fn apply(&self, update: &[u8]) {
        self.doc
            .transact_mut()
            .apply_update(Update::decode_v1(update).expect("update decodes"))
            .expect("update applies");
    }

    fn text(&self) -> String {
        let mut txn = self.doc.transact_mut();
        let t = txn.get_or_insert_text("t");
        t.get_string(&txn)
    }

    fn xml(&self) -> String {
        let mut txn = self.doc.transact_mut();
        let f = txn.get_or_insert_xml_fragment("default");
        f.get_string(&txn)
    }

    fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }
}

/// Joins `room` with a [`RichDoc`] (applies the synced diff).
async fn join_rich(c: &mut Client, room: &str, doc: &RichDoc) {
    let rid = c.rid();
    c.send(&ClientMessage::Join {
        room: room.into(),
        sv: Some(chorus::protocol::native::Bin(doc.state_vector())),
        presence: Some(json!({"name": "Nat"})),
        rid: Some(rid),
    })
    .await;
    match c
        .expect(|m| matches!(m, ServerMessage::Synced { rid: r, .. } | ServerMessage::Error { rid: r, .. } if *r == Some(rid)))
        .await
    {
        ServerMessage::Synced { diff, .. } => doc.apply(&diff.0),
        other => panic!("join refused: {other:?}"),
    }
}

/// Sends an update and waits for its ack.
async fn update(c: &mut Client, room: &str, data: Vec<u8>) {
    let rid = c.rid();
    c.send(&ClientMessage::Update {
        room: room.into(),
        data: chorus::protocol::native::Bin(data),
        rid: Some(rid),
    })
    .await;
    match c
        .expect(|m| {
            matches!(m, ServerMessage::Ack { rid: r, .. } if *r == rid)
                || matches!(m, ServerMessage::Error { rid: r, .. } if *r == Some(rid))
        })
        .await
    {
        ServerMessage::Ack { .. } => {}
        other => panic!("update refused: {other:?}"),
    }
}

/// Sends a history request (`make` gets the rid) and returns the answer
/// carrying that rid (an answer or an `error`).
pub(crate) async fn ask(
    c: &mut Client,
    make: impl FnOnce(Option<u64>) -> ClientMessage,
) -> ServerMessage {
    let rid = c.rid();
    c.send(&make(Some(rid))).await;
    c.expect(|m| rid_of(m) == Some(rid)).await
}

pub(crate) fn rid_of(m: &ServerMessage) -> Option<u64> {
    match m {
        ServerMessage::Versions { rid, .. }
        | ServerMessage::Version { rid, .. }
        | ServerMessage::VersionDoc { rid, .. }
        | ServerMessage::VersionDeleted { rid, .. }
        | ServerMessage::Error { rid, .. } => *rid,
        _ => None,
    }
}

async fn list(c: &mut Client, room: &str) -> Vec<VersionView> {
    match ask(c, |rid| ClientMessage::Versions {
        room: room.into(),
        limit: None,
        before: None,
        rid,
    })
    .await
    {
        ServerMessage::Versions { versions, .. } => versions,
        other => panic!("versions refused: {other:?}"),
    }
}

/// Asks to name a version of `room`; returns the answer (a `version` or
/// an `error`).
pub(crate) async fn try_create(c: &mut Client, room: &str, name: &str) -> ServerMessage {
    ask(c, |rid| ClientMessage::VersionCreate {
        room: room.into(),
        name: name.into(),
        rid,
    })
    .await
}

/// Names a version of `room`; panics if refused.
pub(crate) async fn create(c: &mut Client, room: &str, name: &str) -> VersionView {
    match try_create(c, room, name).await {
        ServerMessage::Version { version, .. } => version,
        other => panic!("version_create refused: {other:?}"),
    }
}

/// Restores version `id` of `room` over the native protocol; returns the
/// restore version, panics if refused.
pub(crate) async fn restore(c: &mut Client, room: &str, id: &str) -> VersionView {
    match ask(c, |rid| ClientMessage::VersionRestore {
        room: room.into(),
        id: id.into(),
        rid,
    })
    .await
    {
        ServerMessage::Version { version, .. } => version,
        other => panic!("restore of {id} refused: {other:?}"),
    }
}

/// Deletes version `id` of `room`; panics unless the answer names it.
pub(crate) async fn delete(c: &mut Client, room: &str, id: &str) {
    match ask(c, |rid| ClientMessage::VersionDelete {
        room: room.into(),
        id: id.into(),
        rid,
    })
    .await
    {
        ServerMessage::VersionDeleted { id: got, .. } => assert_eq!(got, id),
        other => panic!("delete of {id} refused: {other:?}"),
    }
}

/// Connects a native client and joins `room` with a new [`TestDoc`].
pub(crate) async fn joined(addr: SocketAddr, room: &str) -> (Client, TestDoc) {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    (c, doc)
}

/// Connects a native client and joins `room` with a new [`TestDoc`],
/// presenting itself as `name`.
pub(crate) async fn joined_as(addr: SocketAddr, room: &str, name: &str) -> (Client, TestDoc) {
    let mut c = Client::connect(addr).await;
    let doc = TestDoc::new();
    c.join_with(room, &doc, Some(json!({"name": name}))).await;
    (c, doc)
}

/// Edits "first", names version "one", edits " second", names "two".
async fn two_named_versions(
    c: &mut Client,
    room: &str,
    doc: &TestDoc,
) -> (VersionView, VersionView) {
    c.update_acked(room, doc.push("first")).await;
    let v1 = create(c, room, "one").await;
    c.update_acked(room, doc.push(" second")).await;
    let v2 = create(c, room, "two").await;
    (v1, v2)
}

/// A token signed with `secret` for `user` (display name `name`) with
/// `rights` on `room`, valid for an hour.
pub(crate) fn mint_token(
    secret: &str,
    user: &str,
    name: Option<String>,
    room: &str,
    rights: Rights,
) -> String {
    let claims = Claims {
        sub: user.into(),
        name,
        exp: now_secs() + 3600,
        grants: vec![GrantClaim {
            room: room.into(),
            rights,
        }],
    };
    mint(secret.as_bytes(), &claims).expect("mint")
}

/// A temporary directory for a store (removed when dropped) and its path.
pub(crate) fn temp_data_dir() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().to_str().unwrap().to_owned();
    (dir, path)
}

/// Server arguments for the embedded store in `data_dir`, then `extra`.
pub(crate) fn redb_args(data_dir: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--store".to_owned(),
        "redb".into(),
        "--data-dir".into(),
        data_dir.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts a server process with `args`.
pub(crate) fn start(args: &[String]) -> ChildServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ChildServer::start(&args)
}

/// An unauthenticated REST `GET` of `path`.
pub(crate) async fn rest_get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").await
}

/// REST: the first page of `room`'s versions.
async fn rest_versions(addr: SocketAddr, room: &str) -> Resp {
    rest_get(addr, &format!("/api/v1/rooms/{room}/versions")).await
}

/// REST: the JSON view of version `id` of `room`.
async fn rest_version_doc(addr: SocketAddr, room: &str, id: &str) -> Resp {
    rest_get(addr, &format!("/api/v1/rooms/{room}/versions/{id}/doc")).await
}

pub(crate) fn error_code(m: &ServerMessage) -> Option<ErrorCode> {
    match m {
        ServerMessage::Error { code, .. } => Some(*code),
        _ => None,
    }
}

/// Applies every `update` the client received for `room` until `done`.
async fn sync_rich(c: &mut Client, room: &str, doc: &RichDoc, done: impl Fn(&RichDoc) -> bool) {
    while !done(doc) {
        let m = c
            .expect(|m| matches!(m, ServerMessage::Update { room: r, .. } if r == room))
            .await;
        if let ServerMessage::Update { data, .. } = m {
            doc.apply(&data.0);
        }
    }
}

/// Edit "A", name a version, edit "B", restore over the native protocol:
/// the native client, a stock y-websocket client and Hocuspocus v2 and v4
/// providers all show "A" again (text and a TipTap-shaped XmlFragment with
/// attributes) without reconnecting, and the list shows the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reaches_native_y_websocket_and_hocuspocus_clients() {
    let dir = ensure_node_modules();
    let srv = server(|_| {});
    let room = "hist-restore";
    let mut native = Client::connect(srv.addr).await;
    let doc = RichDoc::new();
    join_rich(&mut native, room, &doc).await;
    update(&mut native, room, doc.set("A", "left", &[])).await;
    let xml_a = doc.xml();
    assert_eq!(xml_a, r#"<paragraph textAlign="left">A</paragraph>"#);

    let mut peer = Command::new("node")
        .arg("history-peer.mjs")
        .arg(srv.addr.to_string())
        .arg(room)
        .current_dir(&dir)
        .env("CHORUS_BIN", env!("CARGO_BIN_EXE_chorus"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut lines = BufReader::new(peer.stdout.take().expect("stdout")).lines();
    let mut stdin = peer.stdin.take().expect("stdin");
    let mut phase = async |want: &str| -> Value {
        let line = tokio::time::timeout(Duration::from_secs(40), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("peer reports phase {want} in time"))
            .expect("peer output")
            .unwrap_or_else(|| panic!("peer exited before phase {want}"));
        let v: Value = serde_json::from_str(&line).expect("json line");
        assert_eq!(v["phase"], want, "{v}");
        v
    };
    phase("a").await;

    let named = create(&mut native, room, "state A").await;
    assert_eq!(named.kind, "named");
    assert_eq!(named.name.as_deref(), Some("state A"));
    assert!(
        named
            .authors
            .iter()
            .any(|a| a.name.as_deref() == Some("Nat"))
            || named.authors.is_empty(),
        "{named:?}"
    );
    stdin.write_all(b"next\n").await.unwrap();
    update(&mut native, room, doc.set("B", "right", &["more"])).await;
    phase("b").await;

    // Restore over the native protocol.
    let restored = restore(&mut native, room, &named.id).await;
    assert_eq!(restored.kind, "restore");
    assert_eq!(restored.restored_from.as_deref(), Some(named.id.as_str()));
    assert!(restored.id.parse::<u64>().unwrap() > named.id.parse::<u64>().unwrap());
    stdin.write_all(b"next\n").await.unwrap();
    let seen = phase("restored").await;
    assert_eq!(
        seen["connects"],
        json!([1, 1, 1]),
        "no client reconnected: {seen}"
    );
    // The native client converges too, through ordinary updates.
    sync_rich(&mut native, room, &doc, |d| {
        d.text() == "A" && d.xml() == xml_a
    })
    .await;
    native
        .expect(|m| matches!(m, ServerMessage::VersionsChanged { room: r } if r == room))
        .await;
    let versions = list(&mut native, room).await;
    assert_eq!(versions[0].id, restored.id, "{versions:?}");
    assert_eq!(versions[0].kind, "restore");
    assert!(versions.iter().any(|v| v.id == named.id));
    // The server's own document is "A" again (REST view of the room).
    let r = rest_get(srv.addr, &format!("/api/v1/rooms/{room}/doc")).await;
    assert_eq!(
        r.json()["doc"]["t"],
        "A",
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    stdin.write_all(b"next\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), peer.wait())
        .await
        .expect("peer exits")
        .expect("peer status");
    assert!(out.success(), "peer failed");
}

const SECRET: &str = "history-secret-0123456789abcdef";

fn token(user: &str, room: &str, rights: Rights) -> String {
    mint_token(SECRET, user, Some(user.to_uppercase()), room, rights)
}

/// `r` may list and view; only `rw` may name, restore and delete, over the
/// native protocol and REST alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_tokens_list_and_view_but_cannot_change_history() {
    let srv = server(|c| c.auth_secret = Some(SECRET.into()));
    let room = "hist-rights";
    let mut writer = Client::connect_raw(srv.addr).await;
    writer.hello(Some(token("ada", room, Rights::Write))).await;
    let doc = TestDoc::new();
    writer.join(room, &doc).await;
    writer.update_acked(room, doc.push("hello")).await;
    let v = create(&mut writer, room, "first").await;
    assert_eq!(
        v.authors
            .iter()
            .map(|a| a.user.as_str())
            .collect::<Vec<_>>(),
        vec!["ada"]
    );

    let mut reader = Client::connect_raw(srv.addr).await;
    reader.hello(Some(token("bob", room, Rights::Read))).await;
    reader.join(room, &TestDoc::new()).await;
    assert_eq!(list(&mut reader, room).await.len(), 1);
    let id = v.id.clone();
    match ask(&mut reader, |rid| ClientMessage::VersionView {
        room: room.into(),
        id: id.clone(),
        rid,
    })
    .await
    {
        ServerMessage::VersionDoc {
            update, id: got, ..
        } => {
            assert_eq!(got, v.id);
            let seen = TestDoc::new();
            seen.apply(&update.0);
            assert_eq!(seen.text(), "hello");
        }
        other => panic!("view refused: {other:?}"),
    }
    let refused = [
        ask(&mut reader, |rid| ClientMessage::VersionCreate {
            room: room.into(),
            name: "mine".into(),
            rid,
        })
        .await,
        ask(&mut reader, |rid| ClientMessage::VersionRestore {
            room: room.into(),
            id: id.clone(),
            rid,
        })
        .await,
        ask(&mut reader, |rid| ClientMessage::VersionDelete {
            room: room.into(),
            id: id.clone(),
            rid,
        })
        .await,
    ];
    for m in &refused {
        assert_eq!(error_code(m), Some(ErrorCode::Forbidden), "{m:?}");
    }
    // REST: the same rules.
    let bearer = format!("Bearer {}", token("bob", room, Rights::Read));
    let auth = [("Authorization", bearer.as_str())];
    let base = format!("/api/v1/rooms/{room}/versions");
    let r = request(srv.addr, "GET", &base, &auth, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["versions"][0]["id"], v.id.as_str());
    assert_eq!(r.json()["next"], Value::Null);
    let r = request(srv.addr, "GET", &format!("{base}/{id}/doc"), &auth, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["doc"]["t"], "hello");
    for (method, path, body) in [
        ("POST", base.clone(), &br#"{"name":"x"}"#[..]),
        ("POST", format!("{base}/{id}/restore"), &b""[..]),
        ("DELETE", format!("{base}/{id}"), &b""[..]),
    ] {
        let r = request(srv.addr, method, &path, &auth, body).await;
        assert_eq!(
            (r.status, r.error_code()),
            (403, "forbidden".into()),
            "{method} {path}"
        );
    }
    // Nothing changed.
    assert_eq!(list(&mut writer, room).await.len(), 1);
}

/// Bad input gets clear errors and costs nothing else: unjoined rooms,
/// malformed and unknown ids, huge and empty names, bad pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_history_requests_get_clear_errors() {
    let srv = server(|c| c.history.max_version_name_bytes = 16);
    let room = "hist-bad";
    let mut c = Client::connect(srv.addr).await;
    let m = ask(&mut c, |rid| ClientMessage::Versions {
        room: room.into(),
        limit: None,
        before: None,
        rid,
    })
    .await;
    assert_eq!(error_code(&m), Some(ErrorCode::NotJoined), "{m:?}");
    let doc = TestDoc::new();
    c.join(room, &doc).await;
    c.update_acked(room, doc.push("x")).await;
    for id in ["", "abc", "-1", "0", "99999999999999999999999", "1e3"] {
        let m = ask(&mut c, |rid| ClientMessage::VersionView {
            room: room.into(),
            id: id.into(),
            rid,
        })
        .await;
        assert_eq!(
            error_code(&m),
            Some(ErrorCode::BadMessage),
            "id {id:?}: {m:?}"
        );
    }
    for make in [
        (|rid| ClientMessage::VersionView {
            room: "hist-bad".into(),
            id: "77".into(),
            rid,
        }) as fn(Option<u64>) -> ClientMessage,
        |rid| ClientMessage::VersionRestore {
            room: "hist-bad".into(),
            id: "77".into(),
            rid,
        },
        |rid| ClientMessage::VersionDelete {
            room: "hist-bad".into(),
            id: "77".into(),
            rid,
        },
    ] {
        let m = ask(&mut c, make).await;
        assert_eq!(error_code(&m), Some(ErrorCode::NotFound), "{m:?}");
    }
    for name in ["", "   ", "seventeen bytes!!", "tab\there"] {
        let m = ask(&mut c, |rid| ClientMessage::VersionCreate {
            room: room.into(),
            name: name.into(),
            rid,
        })
        .await;
        assert_eq!(
            error_code(&m),
            Some(ErrorCode::BadMessage),
            "name {name:?}: {m:?}"
        );
    }
    for limit in [0, 201] {
        let m = ask(&mut c, |rid| ClientMessage::Versions {
            room: room.into(),
            limit: Some(limit),
            before: None,
            rid,
        })
        .await;
        assert_eq!(error_code(&m), Some(ErrorCode::BadMessage), "limit {limit}");
    }
    assert!(list(&mut c, room).await.is_empty());
    // REST.
    let base = format!("/api/v1/rooms/{room}/versions");
    for (method, path, body, status) in [
        ("GET", format!("{base}?limit=0"), &b""[..], 400),
        ("GET", format!("{base}?limit=500"), &b""[..], 400),
        ("GET", format!("{base}?before=x"), &b""[..], 400),
        ("GET", format!("{base}/x/doc"), &b""[..], 400),
        ("GET", format!("{base}/77/doc"), &b""[..], 404),
        ("GET", format!("{base}/77/update"), &b""[..], 404),
        ("POST", format!("{base}/77/restore"), &b""[..], 404),
        ("DELETE", format!("{base}/77"), &b""[..], 404),
        (
            "POST",
            base.clone(),
            &br#"{"name":"this name is far too long"}"#[..],
            400,
        ),
        ("POST", base.clone(), &br#"{"nom":"x"}"#[..], 400),
        ("POST", base.clone(), &b"not json"[..], 400),
    ] {
        let r = request(srv.addr, method, &path, &[], body).await;
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    // The room still works.
    c.update_acked(room, doc.push("y")).await;
    let v = create(&mut c, room, "ok").await;
    let r = rest_get(srv.addr, &format!("{base}/{}/update", v.id)).await;
    assert_eq!(r.status, 200);
    let seen = TestDoc::new();
    seen.apply(&r.body);
    assert_eq!(seen.text(), "xy");
}

/// Automatic versions appear after the idle window; retention by count
/// keeps the newest automatic ones and every named one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_versions_after_idle_and_retention_by_count() {
    let srv = server(|c| {
        c.history.version_idle_ms = 150;
        c.history.version_keep = 2;
    });
    let room = "hist-auto";
    let (mut c, doc) = joined_as(srv.addr, room, "Nat").await;
    c.update_acked(room, doc.push("one ")).await;
    let named = create(&mut c, room, "kept").await;
    for (i, word) in ["two ", "three ", "four ", "five "].iter().enumerate() {
        c.update_acked(room, doc.push(word)).await;
        let want = i + 1;
        eventually("an automatic version after the idle window", || {
            let addr = srv.addr;
            async move {
                let r = rest_versions(addr, room).await;
                let autos = r.json()["versions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|v| v["kind"] == "auto")
                    .count();
                autos >= want.min(2)
                    && r.json()["versions"][0]["kind"] == "auto"
                    && r.json()["versions"][0]["time"].as_u64().is_some()
            }
        })
        .await;
        // Wait until the version of this edit exists (newest covers it).
        let versions = list(&mut c, "hist-auto").await;
        let newest = &versions[0];
        let r = rest_version_doc(srv.addr, room, &newest.id).await;
        if r.json()["doc"]["t"] != doc.text() {
            // The idle window may still be running for this edit.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let versions = list(&mut c, room).await;
    let autos: Vec<_> = versions.iter().filter(|v| v.kind == "auto").collect();
    assert_eq!(
        autos.len(),
        2,
        "retention keeps 2 automatic versions: {versions:?}"
    );
    assert!(
        versions.iter().any(|v| v.id == named.id),
        "named kept: {versions:?}"
    );
    assert!(
        autos[0]
            .authors
            .iter()
            .any(|a| a.name.as_deref() == Some("Nat"))
            || autos[0].authors.is_empty()
    );
    // The newest automatic version is the whole text; the oldest kept one
    // still rebuilds (deleted versions were merged forward).
    for v in &versions {
        let r = rest_version_doc(srv.addr, room, &v.id).await;
        assert_eq!(r.status, 200);
        assert!(r.json()["doc"]["t"].as_str().unwrap().starts_with("one "));
    }
    let r = rest_version_doc(srv.addr, room, &autos[0].id).await;
    assert_eq!(r.json()["doc"]["t"], "one two three four five ");
    // Nothing new: no version is added however long the room stays quiet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(list(&mut c, room).await.len(), versions.len());
}

/// Retention by age deletes old automatic versions, never named ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_never_prunes_named_versions() {
    let srv = server(|c| {
        c.history.version_idle_ms = 100;
        c.history.version_max_age_ms = 1_500;
    });
    let room = "hist-age";
    let (mut c, doc) = joined(srv.addr, room).await;
    c.update_acked(room, doc.push("a")).await;
    let named = create(&mut c, room, "old but named").await;
    c.update_acked(room, doc.push("b")).await;
    eventually("an automatic version", || {
        let addr = srv.addr;
        async move {
            let r = rest_versions(addr, room).await;
            r.json()["versions"][0]["kind"] == "auto"
        }
    })
    .await;
    let old_auto = list(&mut c, room).await[0].id.clone();
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    c.update_acked(room, doc.push("c")).await;
    eventually("the old automatic version pruned", || {
        let addr = srv.addr;
        let old_auto = old_auto.clone();
        async move {
            let r = rest_versions(addr, room).await;
            let ids: Vec<String> = r.json()["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_owned())
                .collect();
            ids.len() == 2 && !ids.contains(&old_auto)
        }
    })
    .await;
    let versions = list(&mut c, room).await;
    assert_eq!(versions[1].id, named.id, "{versions:?}");
    assert_eq!(versions[0].kind, "auto");
}

/// History survives a restart of a server on the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_on_redb() {
    let (_dir, data) = temp_data_dir();
    let room = "hist-redb";
    let args = redb_args(&data, &[]);
    let srv = start(&args);
    let (mut c, doc) = joined(srv.addr, room).await;
    let (v1, v2) = two_named_versions(&mut c, room, &doc).await;
    c.close().await;
    srv.terminate();

    let srv = start(&args);
    let (mut c, doc) = joined(srv.addr, room).await;
    let versions = list(&mut c, room).await;
    let ids: Vec<&str> = versions.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, vec![v2.id.as_str(), v1.id.as_str()]);
    let r = rest_version_doc(srv.addr, room, &v1.id).await;
    assert_eq!(r.json()["doc"]["t"], "first");
    // Restoring the old version after the restart works, and ids go on.
    let restored = restore(&mut c, room, &v1.id).await;
    assert!(restored.id.parse::<u64>().unwrap() > v2.id.parse::<u64>().unwrap());
    c.sync_until(room, &doc, "first").await;
    // The restore's version is a delta from version two, whose delete set
    // the room rebuilt from the store (it did not make it): it holds the
    // restore's deletions.
    let r = rest_version_doc(srv.addr, room, &restored.id).await;
    assert_eq!(r.json()["doc"]["t"], "first");
    srv.terminate();
}

/// History survives a restart of a server on PostgreSQL (migration V2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_on_postgres() {
    let pg = crate::pg::Postgres::start();
    let url = pg.url();
    let room = "hist-pg";
    let args = ["--postgres-url", url.as_str()];
    let srv = ChildServer::start(&args);
    let (mut c, doc) = joined(srv.addr, room).await;
    let (v1, v2) = two_named_versions(&mut c, room, &doc).await;
    // Deleting the first merges it into the second, which stays readable.
    delete(&mut c, room, &v1.id).await;
    c.close().await;
    srv.terminate();

    let srv = ChildServer::start(&args);
    let (mut c, _doc) = joined(srv.addr, room).await;
    let versions = list(&mut c, room).await;
    let ids: Vec<&str> = versions.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, vec![v2.id.as_str()]);
    assert_eq!(versions[0].name.as_deref(), Some("two"));
    let r = rest_version_doc(srv.addr, room, &v2.id).await;
    assert_eq!(r.json()["doc"]["t"], "first second");
    let v3 = create(&mut c, room, "three").await;
    assert!(v3.id.parse::<u64>().unwrap() > v2.id.parse::<u64>().unwrap());
    srv.terminate();
}

/// A room evicted before its idle window ended makes the automatic version
/// of its last edits first: they are not left out of the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_makes_the_version_of_the_last_edits() {
    let srv = server(|c| {
        c.limits.room_idle_ms = 100;
        c.history.version_idle_ms = 600_000;
    });
    let room = "hist-evict";
    let (mut c, doc) = joined(srv.addr, room).await;
    c.update_acked(room, doc.push("last words")).await;
    c.close().await;
    eventually("the room evicted", || {
        let addr = srv.addr;
        async move {
            let r = rest_get(addr, "/api/v1/rooms").await;
            r.json()["rooms"].as_array().is_some_and(|a| a.is_empty())
        }
    })
    .await;
    let r = rest_versions(srv.addr, room).await;
    let versions = r.json()["versions"].clone();
    assert_eq!(versions.as_array().map(Vec::len), Some(1), "{versions}");
    assert_eq!(versions[0]["kind"], "auto");
    let id = versions[0]["id"].as_str().unwrap();
    let r = rest_version_doc(srv.addr, room, id).await;
    assert_eq!(r.json()["doc"]["t"], "last words");
}

/// A client asking for many versions at once gets `rate_limited` past
/// `--max-history-requests-in-flight`, answers for the others, and keeps
/// its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_requests_in_flight_are_bounded() {
    let srv = server(|c| c.history.max_history_requests_in_flight = 2);
    let room = "hist-flood";
    let (mut c, doc) = joined(srv.addr, room).await;
    // About 1 MB, so that a view takes a while to rebuild.
    for _ in 0..4 {
        c.update_acked(room, doc.push(&"x".repeat(250_000))).await;
    }
    let v = create(&mut c, room, "big").await;
    let mut rids = Vec::new();
    for _ in 0..12 {
        let rid = c.rid();
        rids.push(rid);
        c.send(&ClientMessage::VersionView {
            room: room.into(),
            id: v.id.clone(),
            rid: Some(rid),
        })
        .await;
    }
    let (mut docs, mut limited) = (0, 0);
    for rid in rids {
        match c.expect(|m| rid_of(m) == Some(rid)).await {
            ServerMessage::VersionDoc { .. } => docs += 1,
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            } => limited += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    assert!(docs >= 1 && limited >= 1, "{docs} views, {limited} refused");
    // Still connected and served.
    assert_eq!(list(&mut c, room).await.len(), 1);
}
