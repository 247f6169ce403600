//! The golden vectors of the native protocol (`proto/vectors/*.json`)
//! checked against the Rust codec, and `proto/PROTOCOL.md` checked for
//! coverage of every message type, error code and close code.
//!
//! The vector files are rendered from `cases()`;
//! [`committed_vectors_are_the_generated_ones`] fails when they differ, and
//! rewrites them only with an env var, so nothing changes them by accident:
//!
//! ```text
//! CHORUS_WRITE_VECTORS=1 cargo test --test it vectors::committed
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use chorus::protocol::native::{
    decode_client, decode_server, encode_client, encode_server, Bin, ClientMessage, CursorView,
    MemberView, ServerMessage, VersionAuthorView, VersionView, WireLimits, CLIENT_TYPES,
    SERVER_TYPES,
};
use chorus::protocol::{close, ErrorCode};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::json;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Assoc, Doc, GetString, IndexedSequence, ReadTxn, StateVector, StickyIndex, Text, Transact,
    Update,
};

fn proto_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("bad hex {s:?}: {e}")))
        .collect()
}

/// A MessagePack value in the readable form of the vector files: maps keep
/// their order, `bin` is written `{"$bin": "<hex>"}` in JSON.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Nil,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Node>),
    Map(Vec<(String, Node)>),
}

impl Node {
    fn from_msgpack(bytes: &[u8]) -> Node {
        rmp_serde::from_slice(bytes).expect("valid MessagePack")
    }

    fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec(self).expect("every node encodes")
    }

    fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Nil => s.serialize_unit(),
            Node::Bool(b) => s.serialize_bool(*b),
            Node::Int(i) if *i >= 0 => s.serialize_u64(*i as u64),
            Node::Int(i) => s.serialize_i64(*i as i64),
            Node::Float(f) => s.serialize_f64(*f),
            Node::Str(v) => s.serialize_str(v),
            Node::Bin(b) if s.is_human_readable() => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("$bin", &to_hex(b))?;
                m.end()
            }
            Node::Bin(b) => s.serialize_bytes(b),
            Node::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Node::Map(entries) => {
                let mut m = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a MessagePack / JSON value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Nil)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Nil)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Int(v.into()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_owned()))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Node, E> {
                Ok(Node::Bin(v.to_vec()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Array(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries: Vec<(String, Node)> = Vec::new();
                while let Some((k, v)) = map.next_entry()? {
                    entries.push((k, v));
                }
                if let [(k, Node::Str(hex))] = entries.as_slice() {
                    if k == "$bin" {
                        return from_hex(hex).map(Node::Bin).map_err(de::Error::custom);
                    }
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// One vector file, as documented in `proto/vectors/README.md`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Vector {
    name: String,
    direction: String,
    description: String,
    hex: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<Node>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    roundtrip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rid: Option<u64>,
}

fn load_vectors() -> Vec<(PathBuf, Vector)> {
    let dir = proto_dir().join("vectors");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("vector file reads");
            let v: Vector = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: not a vector: {e}", p.display()));
            (p, v)
        })
        .collect()
}

/// A decoded message of either direction.
#[derive(Debug, PartialEq)]
enum Msg {
    Client(ClientMessage),
    Server(ServerMessage),
}

impl Msg {
    fn decode(direction: &str, bytes: &[u8]) -> Result<Msg, String> {
        match direction {
            "client" => decode_client(bytes)
                .map(Msg::Client)
                .map_err(|e| e.to_string()),
            "server" => decode_server(bytes)
                .map(Msg::Server)
                .map_err(|e| e.to_string()),
            other => Err(format!("direction must be client or server, not {other:?}")),
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Msg::Client(m) => encode_client(m),
            Msg::Server(m) => encode_server(m),
        }
    }

    /// Checks that every CRDT payload is what its field says it is.
    fn check_yjs(&self) -> Result<(), String> {
        fn update(b: &Bin) -> Result<(), String> {
            Update::decode_v1(&b.0)
                .map(drop)
                .map_err(|e| format!("not a Yjs update: {e}"))
        }
        fn sv(b: &Bin) -> Result<(), String> {
            StateVector::decode_v1(&b.0)
                .map(drop)
                .map_err(|e| format!("not a state vector: {e}"))
        }
        fn pos(b: &Option<Bin>) -> Result<(), String> {
            match b {
                None => Ok(()),
                Some(b) => StickyIndex::decode_v1(&b.0)
                    .map(drop)
                    .map_err(|e| format!("not a relative position: {e}")),
            }
        }
        match self {
            Msg::Client(ClientMessage::Join { sv: Some(s), .. }) => sv(s),
            Msg::Client(ClientMessage::Update { data, .. }) => update(data),
            Msg::Client(ClientMessage::Cursor { anchor, head, .. }) => pos(anchor).and(pos(head)),
            Msg::Server(ServerMessage::Synced { diff, sv: s, .. }) => update(diff).and(sv(s)),
            Msg::Server(ServerMessage::Update { data, .. }) => update(data),
            Msg::Server(ServerMessage::Cursor { cursors, .. }) => cursors
                .iter()
                .try_for_each(|c| pos(&c.anchor).and(pos(&c.head))),
            _ => Ok(()),
        }
    }
}

/// Checks one vector; returns what is wrong with it.
fn check(v: &Vector) -> Result<(), String> {
    let bytes = from_hex(&v.hex)?;
    match (&v.value, &v.error) {
        (Some(value), None) => {
            if v.rid.is_some() {
                return Err("`rid` is only for error vectors".into());
            }
            let roundtrip = v.roundtrip.ok_or("valid vectors need `roundtrip`")?;
            let msg = Msg::decode(&v.direction, &bytes).map_err(|e| format!("decode: {e}"))?;
            // The readable value describes the same message...
            let from_value = Msg::decode(&v.direction, &value.to_msgpack())
                .map_err(|e| format!("`value` does not decode: {e}"))?;
            if from_value != msg {
                return Err(format!("hex decodes to {msg:?}, value to {from_value:?}"));
            }
            // ...exactly as the encoder writes it (same fields, same order).
            let encoded = msg.encode();
            let canonical = Node::from_msgpack(&encoded);
            if &canonical != value {
                return Err(format!("value is not the encoder's form {canonical:?}"));
            }
            match (roundtrip, encoded == bytes) {
                (true, false) => {
                    return Err(format!("re-encoded to {}, not the hex", to_hex(&encoded)))
                }
                (false, true) => return Err("re-encodes exactly: mark it roundtrip".into()),
                _ => {}
            }
            msg.check_yjs()
        }
        (None, Some(code)) => {
            if v.direction != "client" || v.roundtrip.is_some() {
                return Err("error vectors are client frames without `roundtrip`".into());
            }
            match decode_client(&bytes) {
                Ok(m) => Err(format!("expected error {code}, decoded {m:?}")),
                Err(e) if e.code.as_str() != code => Err(format!("expected error {code}, got {e}")),
                Err(e) if e.rid != v.rid => Err(format!("expected rid {:?}, got {e:?}", v.rid)),
                Err(_) => Ok(()),
            }
        }
        _ => Err("a vector has exactly one of `value` and `error`".into()),
    }
}

#[test]
fn vectors_match_the_codec() {
    let vectors = load_vectors();
    assert!(vectors.len() >= 20, "only {} vectors found", vectors.len());
    let mut failures = Vec::new();
    for (path, v) in &vectors {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        if stem != v.name {
            failures.push(format!("{}: name is {:?}", path.display(), v.name));
        }
        if v.description.trim().is_empty() {
            failures.push(format!("{}: empty description", v.name));
        }
        if let Err(e) = check(v) {
            failures.push(format!("{}: {e}", v.name));
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad vector(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The server answers every invalid client vector with the stated error, and
/// keeps the connection open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_vectors_over_a_live_socket() {
    let srv = crate::common::server(|_| {});
    let mut c = crate::common::Client::connect(srv.addr).await;
    let invalid: Vec<Vector> = load_vectors()
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| v.error.is_some())
        .collect();
    assert!(!invalid.is_empty());
    for v in &invalid {
        c.send_raw(from_hex(&v.hex).expect("hex")).await;
        match c.recv().await {
            ServerMessage::Error { code, rid, .. } => {
                assert_eq!(Some(code.as_str()), v.error.as_deref(), "{}", v.name);
                assert_eq!(rid, v.rid, "{}", v.name);
            }
            other => panic!("{}: expected an error, got {other:?}", v.name),
        }
    }
    c.send(&ClientMessage::Ping { rid: Some(99) }).await;
    assert_eq!(c.recv().await, ServerMessage::Pong { rid: Some(99) });
}

/// Every `ErrorCode`. The match below stops compiling when a variant is
/// added, and indexes past the list if it is not added here too.
const ERROR_CODES: [ErrorCode; 19] = [
    ErrorCode::BadMessage,
    ErrorCode::UnknownType,
    ErrorCode::HelloRequired,
    ErrorCode::UnsupportedVersion,
    ErrorCode::NotJoined,
    ErrorCode::AlreadyJoined,
    ErrorCode::BadRoom,
    ErrorCode::BadUpdate,
    ErrorCode::DocTooLarge,
    ErrorCode::PresenceTooLarge,
    ErrorCode::EventTooLarge,
    ErrorCode::TooManyRooms,
    ErrorCode::RoomUnavailable,
    ErrorCode::StoreFailed,
    ErrorCode::Forbidden,
    ErrorCode::RateLimited,
    ErrorCode::GoingAway,
    ErrorCode::MissingDependencies,
    ErrorCode::NotFound,
];

fn error_code_index(code: ErrorCode) -> usize {
    match code {
        ErrorCode::BadMessage => 0,
        ErrorCode::UnknownType => 1,
        ErrorCode::HelloRequired => 2,
        ErrorCode::UnsupportedVersion => 3,
        ErrorCode::NotJoined => 4,
        ErrorCode::AlreadyJoined => 5,
        ErrorCode::BadRoom => 6,
        ErrorCode::BadUpdate => 7,
        ErrorCode::DocTooLarge => 8,
        ErrorCode::PresenceTooLarge => 9,
        ErrorCode::EventTooLarge => 10,
        ErrorCode::TooManyRooms => 11,
        ErrorCode::RoomUnavailable => 12,
        ErrorCode::StoreFailed => 13,
        ErrorCode::Forbidden => 14,
        ErrorCode::RateLimited => 15,
        ErrorCode::GoingAway => 16,
        ErrorCode::MissingDependencies => 17,
        ErrorCode::NotFound => 18,
    }
}

/// `(NAME, code)` of every constant in `protocol::close`, read from the
/// source so that a new constant cannot be missed.
fn close_constants() -> Vec<(String, u16)> {
    let src =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/mod.rs"))
            .expect("protocol source reads");
    let body = src
        .split("pub mod close {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("`pub mod close` block");
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|l| {
            let (name, rest) = l.split_once(": u16 = ").expect("`NAME: u16 = N;`");
            let n = rest.trim_end_matches(';').parse().expect("a number");
            (name.to_owned(), n)
        })
        .collect()
}

/// The sections of a markdown text: `(heading, body)` for `##` headings.
fn sections(md: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in md.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            out.push((h.trim().to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

fn section<'a>(secs: &'a [(String, String)], heading: &str) -> &'a str {
    secs.iter()
        .find(|(h, _)| h.eq_ignore_ascii_case(heading))
        .map(|(_, b)| b.as_str())
        .unwrap_or_else(|| panic!("PROTOCOL.md has no section `## {heading}`"))
}

/// Names in backticks that open a `### ` heading: "### `hello`".
fn type_headings(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("### `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// Cells of the table rows in `body` (header and separator rows skipped).
fn table_rows(body: &str) -> Vec<Vec<String>> {
    body.lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|cells| {
            !cells
                .iter()
                .all(|c| c.chars().all(|ch| ch == '-' || ch == ':'))
        })
        .collect()
}

#[test]
fn spec_covers_every_type_and_code() {
    let md = std::fs::read_to_string(proto_dir().join("PROTOCOL.md")).expect("PROTOCOL.md reads");
    let secs = sections(&md);
    let vectors = load_vectors();
    let vector_types = |dir: &str| -> BTreeSet<String> {
        vectors
            .iter()
            .filter(|(_, v)| v.direction == dir)
            .filter_map(|(_, v)| match v.value.as_ref()?.get("t")? {
                Node::Str(t) => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    for (heading, dir, types) in [
        ("Client messages", "client", CLIENT_TYPES),
        ("Server messages", "server", SERVER_TYPES),
    ] {
        let want: BTreeSet<String> = types.iter().map(|t| t.to_string()).collect();
        let documented = type_headings(section(&secs, heading));
        assert_eq!(
            documented, want,
            "`### `type`` headings under `## {heading}`"
        );
        let covered = vector_types(dir);
        let missing: Vec<_> = want.difference(&covered).collect();
        assert!(
            missing.is_empty(),
            "{dir} types without a vector: {missing:?}"
        );
    }

    let rows = table_rows(section(&secs, "Error codes"));
    let documented: BTreeSet<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    for (i, code) in ERROR_CODES.iter().enumerate() {
        assert_eq!(error_code_index(*code), i, "ERROR_CODES order");
        let wire = serde_json::to_value(code).expect("code serializes");
        assert_eq!(wire, json!(code.as_str()), "serde name of {code:?}");
        assert!(
            documented.contains(code.as_str()),
            "error code {} missing from `## Error codes`",
            code.as_str()
        );
    }
    let known: BTreeSet<&str> = ERROR_CODES.iter().map(|c| c.as_str()).collect();
    let extra: Vec<_> = documented
        .iter()
        .filter(|c| **c != "code" && !known.contains(*c))
        .collect();
    assert!(
        extra.is_empty(),
        "documented codes the server lacks: {extra:?}"
    );

    let constants = close_constants();
    let by_name = |name: &str| match name {
        "NORMAL" => close::NORMAL,
        "GOING_AWAY" => close::GOING_AWAY,
        "SERVICE_RESTART" => close::SERVICE_RESTART,
        "PROTOCOL_ERROR" => close::PROTOCOL_ERROR,
        "TOO_BIG" => close::TOO_BIG,
        "INTERNAL" => close::INTERNAL,
        "TIMEOUT" => close::TIMEOUT,
        "UNSUPPORTED_VERSION" => close::UNSUPPORTED_VERSION,
        "SLOW_CONSUMER" => close::SLOW_CONSUMER,
        "UNAUTHORIZED" => close::UNAUTHORIZED,
        "RATE_LIMITED" => close::RATE_LIMITED,
        "TOKEN_EXPIRED" => close::TOKEN_EXPIRED,
        "TRY_AGAIN_LATER" => close::TRY_AGAIN_LATER,
        "YJS_BAD_MESSAGE" => close::YJS_BAD_MESSAGE,
        "YJS_FORBIDDEN" => close::YJS_FORBIDDEN,
        "YJS_BAD_ROOM" => close::YJS_BAD_ROOM,
        "YJS_TOO_LARGE" => close::YJS_TOO_LARGE,
        "YJS_BAD_UPDATE" => close::YJS_BAD_UPDATE,
        other => panic!("new close constant {other}: add it here and to PROTOCOL.md"),
    };
    assert_eq!(constants.len(), 18, "close constants parsed: {constants:?}");
    let rows = table_rows(section(&secs, "Close codes"));
    for (name, code) in &constants {
        assert_eq!(by_name(name), *code, "parsed value of close::{name}");
        let row = rows
            .iter()
            .any(|r| r.len() > 1 && r[0] == code.to_string() && r[1] == *name);
        assert!(
            row,
            "close code {code} `{name}` missing from `## Close codes`"
        );
    }
}

// ---------------------------------------------------------------------------
// Generator

/// Realistic Yjs bytes: a server document and a client that edited offline.
struct Yjs {
    client_sv: Vec<u8>,
    synced_diff: Vec<u8>,
    server_sv: Vec<u8>,
    catch_up: Vec<u8>,
    keystroke: Vec<u8>,
    merged: Vec<u8>,
    empty_diff: Vec<u8>,
    empty_sv: Vec<u8>,
    anchor: Vec<u8>,
    head: Vec<u8>,
    other_head: Vec<u8>,
}

fn edit(doc: &Doc, index: u32, s: &str) -> Vec<u8> {
    let before = doc.transact().state_vector();
    let text = doc.get_or_insert_text("t");
    text.insert(&mut doc.transact_mut(), index, s);
    doc.transact().encode_diff_v1(&before)
}

fn apply(doc: &Doc, update: &[u8]) {
    let u = Update::decode_v1(update).expect("update decodes");
    doc.transact_mut().apply_update(u).expect("update applies");
}

fn position(doc: &Doc, index: u32) -> Vec<u8> {
    let text = doc.get_or_insert_text("t");
    let txn = doc.transact();
    let pos = text
        .sticky_index(&txn, index, Assoc::After)
        .expect("index inside the text");
    let back = pos.get_offset(&txn).expect("position resolves").index;
    assert_eq!(back, index, "relative position round trip");
    pos.encode_v1()
}

impl Yjs {
    fn new() -> Yjs {
        let server = Doc::with_client_id(1001);
        edit(&server, 0, "Hello world");
        let client = Doc::with_client_id(2002);
        edit(&client, 0, " (draft)");
        let client_sv = client.transact().state_vector().encode_v1();
        let (synced_diff, server_sv) = {
            let txn = server.transact();
            let sv = StateVector::decode_v1(&client_sv).expect("sv decodes");
            (txn.encode_diff_v1(&sv), txn.state_vector().encode_v1())
        };
        apply(&client, &synced_diff);
        let catch_up = {
            let sv = StateVector::decode_v1(&server_sv).expect("sv decodes");
            client.transact().encode_diff_v1(&sv)
        };
        apply(&server, &catch_up);
        let len = client.get_or_insert_text("t").len(&client.transact());
        let keystroke = edit(&client, len, "!");
        apply(&server, &keystroke);
        // A second author types in the same tick: the server merges both.
        let other = Doc::with_client_id(3003);
        apply(
            &other,
            &server
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        );
        let other_edit = edit(&other, 0, "> ");
        let merged =
            yrs::merge_updates_v1([keystroke.as_slice(), other_edit.as_slice()]).expect("merge");
        apply(&client, &other_edit);
        let text = client
            .get_or_insert_text("t")
            .get_string(&client.transact());
        assert_eq!(text, "> Hello world (draft)!", "fixture text");
        let empty = Doc::with_client_id(4004);
        let (empty_diff, empty_sv) = {
            let txn = empty.transact();
            (
                txn.encode_diff_v1(&StateVector::default()),
                txn.state_vector().encode_v1(),
            )
        };
        Yjs {
            client_sv,
            synced_diff,
            server_sv,
            catch_up,
            keystroke,
            merged,
            empty_diff,
            empty_sv,
            // Selection of "Hello" in "> Hello world (draft)!".
            anchor: position(&client, 9),
            head: position(&client, 14),
            other_head: position(&client, 2),
        }
    }
}

/// What a generated vector must be.
enum Expect {
    RoundTrip,
    DecodeOnly,
    Error(ErrorCode, Option<u64>),
}

struct Case {
    name: &'static str,
    description: &'static str,
    direction: &'static str,
    bytes: Vec<u8>,
    expect: Expect,
}

fn client(name: &'static str, description: &'static str, msg: ClientMessage) -> Case {
    Case {
        name,
        description,
        direction: "client",
        bytes: encode_client(&msg),
        expect: Expect::RoundTrip,
    }
}

fn server(name: &'static str, description: &'static str, msg: ServerMessage) -> Case {
    Case {
        name,
        description,
        direction: "server",
        bytes: encode_server(&msg),
        expect: Expect::RoundTrip,
    }
}

/// A client frame built from a readable value (JSON with `$bin`).
fn raw(
    name: &'static str,
    description: &'static str,
    value: serde_json::Value,
    expect: Expect,
) -> Case {
    let node: Node = serde_json::from_value(value).expect("readable value");
    Case {
        name,
        description,
        direction: "client",
        bytes: node.to_msgpack(),
        expect,
    }
}

fn cases() -> Vec<Case> {
    let y = Yjs::new();
    let bin = |b: &[u8]| Some(Bin(b.to_vec()));
    let me = "5e1f09a2-1".to_owned();
    let ada = "5e1f09a2-2".to_owned();
    let bob = "7c03d4e9-5".to_owned();
    // The listed members of the partial-list vectors (a room above
    // presence_list_max_members = 2).
    let listed = vec![
        MemberView {
            id: bob.clone(),
            user: Some("bob@example.com".into()),
            state: json!({"name": "Bob"}),
        },
        MemberView {
            id: ada.clone(),
            user: None,
            state: json!({"name": "Eve"}),
        },
    ];
    let room = || "notes/42".to_owned();
    let mut cases = vec![
        // Client messages.
        client(
            "client-hello",
            "First message of a connection: protocol version 1, client name, request id.",
            ClientMessage::Hello {
                v: 1,
                token: None,
                client: Some("chorus-js/0.1.0".into()),
                rid: Some(1),
            },
        ),
        client(
            "client-hello-token",
            "hello with a bearer token.",
            ClientMessage::Hello {
                v: 1,
                token: Some("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl".into()),
                client: None,
                rid: None,
            },
        ),
        client(
            "client-join",
            "Join with the client's Yjs state vector (it edited offline) and an initial presence state.",
            ClientMessage::Join {
                room: room(),
                sv: bin(&y.client_sv),
                presence: Some(json!({"name": "Ada", "color": "#e91e63", "online": true})),
                rid: Some(2),
            },
        ),
        client(
            "client-join-minimal",
            "Join with only a room id: empty state vector, presence {}.",
            ClientMessage::Join {
                room: room(),
                sv: None,
                presence: None,
                rid: None,
            },
        ),
        client(
            "client-leave",
            "Leave a room.",
            ClientMessage::Leave {
                room: room(),
                rid: Some(9),
            },
        ),
        client(
            "client-update-catch-up",
            "After `synced`: what the server lacks (the diff against the server's state vector).",
            ClientMessage::Update {
                room: room(),
                data: Bin(y.catch_up.clone()),
                rid: Some(3),
            },
        ),
        client(
            "client-update",
            "One keystroke as a Yjs v1 update; the rid is echoed by `ack`.",
            ClientMessage::Update {
                room: room(),
                data: Bin(y.keystroke.clone()),
                rid: Some(4),
            },
        ),
        client(
            "client-update-no-rid",
            "An update without rid: applied and broadcast, but no `ack` is sent.",
            ClientMessage::Update {
                room: room(),
                data: Bin(y.keystroke.clone()),
                rid: None,
            },
        ),
        client(
            "client-presence",
            "Replace this member's presence state (any JSON object, with nested values and a float).",
            ClientMessage::Presence {
                room: room(),
                state: json!({"name": "Ada", "color": "#e91e63", "view": {"zoom": 1.5, "page": 3}, "tags": ["editor", null]}),
                rid: Some(5),
            },
        ),
        client(
            "client-cursor",
            "A selection: anchor and head are encoded Yjs relative positions (StickyIndex v1).",
            ClientMessage::Cursor {
                room: room(),
                anchor: bin(&y.anchor),
                head: bin(&y.head),
                rid: None,
            },
        ),
        client(
            "client-cursor-clear",
            "No cursor: anchor and head are nil (written explicitly by the encoder).",
            ClientMessage::Cursor {
                room: room(),
                anchor: None,
                head: None,
                rid: None,
            },
        ),
        client(
            "client-typing",
            "Typing on; renew before typing_ttl_ms or it turns off by itself.",
            ClientMessage::Typing {
                room: room(),
                on: true,
                rid: None,
            },
        ),
        client(
            "client-event",
            "An ephemeral event for the other members.",
            ClientMessage::Event {
                room: room(),
                name: "reaction".into(),
                data: json!({"emoji": "👍", "at": 14}),
                rid: Some(6),
            },
        ),
        client(
            "client-ping",
            "Application-level ping; answered by `pong` with the same rid.",
            ClientMessage::Ping { rid: Some(7) },
        ),
        client(
            "client-versions",
            "List a joined room's versions, newest first: 20 older than version 31.",
            ClientMessage::Versions {
                room: room(),
                limit: Some(20),
                before: Some("31".into()),
                rid: Some(8),
            },
        ),
        client(
            "client-presence-list",
            "Read a page of a joined room's member list (join order): 100 members after the \
             position 512 (the previous page's next).",
            ClientMessage::PresenceList {
                room: room(),
                after: Some("512".into()),
                limit: Some(100),
                rid: Some(13),
            },
        ),
        client(
            "client-presence-list-minimal",
            "The first page of the member list, the server's largest page size.",
            ClientMessage::PresenceList {
                room: room(),
                after: None,
                limit: None,
                rid: None,
            },
        ),
        client(
            "client-versions-minimal",
            "List versions with the defaults (50, from the newest).",
            ClientMessage::Versions {
                room: room(),
                limit: None,
                before: None,
                rid: None,
            },
        ),
        client(
            "client-version-create",
            "Make a named version of the current state (needs rw).",
            ClientMessage::VersionCreate {
                room: room(),
                name: "Before the rewrite".into(),
                rid: Some(9),
            },
        ),
        client(
            "client-version-view",
            "Read a version's whole document (answered by version_doc).",
            ClientMessage::VersionView {
                room: room(),
                id: "12".into(),
                rid: Some(10),
            },
        ),
        client(
            "client-version-restore",
            "Restore a version as a new change (needs rw; answered by version).",
            ClientMessage::VersionRestore {
                room: room(),
                id: "12".into(),
                rid: Some(11),
            },
        ),
        client(
            "client-version-delete",
            "Delete a version (needs rw; answered by version_deleted).",
            ClientMessage::VersionDelete {
                room: room(),
                id: "12".into(),
                rid: Some(12),
            },
        ),
        // Server messages.
        server(
            "server-welcome",
            "Answer to hello: version, member id, server name and the limits in force (defaults).",
            ServerMessage::Welcome {
                v: 1,
                session: me.clone(),
                server: "chorus/0.1.0".into(),
                limits: WireLimits {
                    max_frame_bytes: 4 * 1024 * 1024,
                    max_rooms: 100,
                    max_doc_bytes: 32 * 1024 * 1024,
                    max_presence_bytes: 8 * 1024,
                    typing_ttl_ms: 5_000,
                    heartbeat_ms: 5_000,
                    client_timeout_ms: 15_000,
                    max_event_bytes: 64 * 1024,
                    max_room_id_bytes: 256,
                },
            },
        ),
        server(
            "server-synced",
            "Answer to client-join: what the client lacks (diff) and the server's state vector.",
            ServerMessage::Synced {
                room: room(),
                diff: Bin(y.synced_diff.clone()),
                sv: Bin(y.server_sv.clone()),
                rid: Some(2),
            },
        ),
        server(
            "server-synced-empty",
            "synced for a new, empty room: both diff and sv are the empty encodings.",
            ServerMessage::Synced {
                room: room(),
                diff: Bin(y.empty_diff.clone()),
                sv: Bin(y.empty_sv.clone()),
                rid: None,
            },
        ),
        server(
            "server-update",
            "A change by one member, with its author (the author itself does not receive it).",
            ServerMessage::Update {
                room: room(),
                data: Bin(y.keystroke.clone()),
                origin: Some(me.clone()),
            },
        ),
        server(
            "server-update-merged",
            "Changes of two authors in one tick, merged into one update: no origin.",
            ServerMessage::Update {
                room: room(),
                data: Bin(y.merged.clone()),
                origin: None,
            },
        ),
        server(
            "server-ack",
            "The update with rid 4 is durable.",
            ServerMessage::Ack {
                room: room(),
                rid: 4,
            },
        ),
        server(
            "server-presence-snapshot",
            "Sent right after synced: everyone in the room, the joiner included.",
            ServerMessage::Presence {
                room: room(),
                snapshot: true,
                joined: vec![
                    MemberView {
                        id: me.clone(),
                        user: None,
                        state: json!({"name": "Ada", "color": "#e91e63", "online": true}),
                    },
                    MemberView {
                        id: bob.clone(),
                        user: Some("bob@example.com".into()),
                        state: json!({"name": "Bob"}),
                    },
                ],
                updated: vec![],
                left: vec![],
                total: None,
                partial: false,
            },
        ),
        server(
            "server-presence-snapshot-partial",
            "A snapshot in a room above presence_list_max_members (here 2): the listed members \
             and the joiner, the room's total, partial set (page the rest with presence_list).",
            ServerMessage::Presence {
                room: room(),
                snapshot: true,
                joined: listed
                    .iter()
                    .cloned()
                    .chain([MemberView {
                        id: me.clone(),
                        user: None,
                        state: json!({"name": "Ada"}),
                    }])
                    .collect(),
                updated: vec![],
                left: vec![],
                total: Some(15000),
                partial: true,
            },
        ),
        server(
            "server-presence-diff-partial",
            "A diff in a room above presence_list_max_members: joins of members not listed are \
             not sent, only the new total; state changes of any member still are.",
            ServerMessage::Presence {
                room: room(),
                snapshot: false,
                joined: vec![],
                updated: vec![MemberView {
                    id: bob.clone(),
                    user: Some("bob@example.com".into()),
                    state: json!({"name": "Bob", "away": true}),
                }],
                left: vec![],
                total: Some(15042),
                partial: true,
            },
        ),
        server(
            "server-presence-diff",
            "Presence changes of one tick: a join, a state change, a departure.",
            ServerMessage::Presence {
                room: room(),
                snapshot: false,
                joined: vec![MemberView {
                    id: ada.clone(),
                    user: None,
                    state: json!({}),
                }],
                updated: vec![MemberView {
                    id: bob.clone(),
                    user: Some("bob@example.com".into()),
                    state: json!({"name": "Bob", "away": true}),
                }],
                left: vec!["5e1f09a2-7".into()],
                total: None,
                partial: false,
            },
        ),
        server(
            "server-cursor",
            "Cursor moves of one tick, latest per member; a nil anchor/head means no position.",
            ServerMessage::Cursor {
                room: room(),
                cursors: vec![
                    CursorView {
                        id: me.clone(),
                        anchor: bin(&y.anchor),
                        head: bin(&y.head),
                    },
                    CursorView {
                        id: bob.clone(),
                        anchor: None,
                        head: bin(&y.other_head),
                    },
                ],
            },
        ),
        server(
            "server-typing",
            "A member started typing.",
            ServerMessage::Typing {
                room: room(),
                id: bob.clone(),
                on: true,
            },
        ),
        server(
            "server-event",
            "An event from another member, as sent by client-event.",
            ServerMessage::Event {
                room: room(),
                from: me.clone(),
                name: "reaction".into(),
                data: json!({"emoji": "👍", "at": 14}),
            },
        ),
        server(
            "server-error",
            "A refused update: the error echoes the rid and names the room.",
            ServerMessage::Error {
                code: ErrorCode::BadUpdate,
                message: "not a Yjs v1 update: unexpected end of buffer".into(),
                rid: Some(4),
                room: Some(room()),
            },
        ),
        server(
            "server-error-minimal",
            "An error not tied to a request or room.",
            ServerMessage::Error {
                code: ErrorCode::HelloRequired,
                message: "send hello first".into(),
                rid: None,
                room: None,
            },
        ),
        server(
            "server-pong",
            "Answer to client-ping.",
            ServerMessage::Pong { rid: Some(7) },
        ),
        server(
            "server-versions",
            "Answer to client-versions: a page, newest first; next is the before of the next page.",
            ServerMessage::Versions {
                room: room(),
                versions: vec![
                    VersionView {
                        id: "30".into(),
                        time: 1_764_633_600_000,
                        name: None,
                        kind: "restore".into(),
                        restored_from: Some("12".into()),
                        authors: vec![VersionAuthorView {
                            user: "ada".into(),
                            name: Some("Ada".into()),
                        }],
                        bytes: 96,
                    },
                    VersionView {
                        id: "12".into(),
                        time: 1_764_630_000_000,
                        name: Some("Before the rewrite".into()),
                        kind: "named".into(),
                        restored_from: None,
                        authors: vec![
                            VersionAuthorView {
                                user: "ada".into(),
                                name: Some("Ada".into()),
                            },
                            VersionAuthorView {
                                user: "bob".into(),
                                name: None,
                            },
                        ],
                        bytes: 431,
                    },
                ],
                next: Some("12".into()),
                rid: Some(8),
            },
        ),
        server(
            "server-versions-last-page",
            "The last page: next is nil.",
            ServerMessage::Versions {
                room: room(),
                versions: vec![],
                next: None,
                rid: None,
            },
        ),
        server(
            "server-version",
            "Answer to client-version-create (and version_restore): the new version.",
            ServerMessage::Version {
                room: room(),
                version: VersionView {
                    id: "31".into(),
                    time: 1_764_634_000_000,
                    name: Some("Before the rewrite".into()),
                    kind: "named".into(),
                    restored_from: None,
                    authors: vec![],
                    bytes: 12,
                },
                rid: Some(9),
            },
        ),
        server(
            "server-version-doc",
            "Answer to client-version-view: a Yjs v1 update that rebuilds the version from empty.",
            ServerMessage::VersionDoc {
                room: room(),
                id: "12".into(),
                update: Bin(y.synced_diff.clone()),
                rid: Some(10),
            },
        ),
        server(
            "server-version-deleted",
            "Answer to client-version-delete.",
            ServerMessage::VersionDeleted {
                room: room(),
                id: "12".into(),
                rid: Some(12),
            },
        ),
        server(
            "server-versions-changed",
            "To every member, on every node, when a version is added or deleted: list again.",
            ServerMessage::VersionsChanged { room: room() },
        ),
        server(
            "server-presence-page",
            "Answer to client-presence-list: members in join order; next is the after of the \
             next page (nil on the last), total the room's member count now.",
            ServerMessage::PresencePage {
                room: room(),
                members: listed.clone(),
                next: Some("514".into()),
                total: 15042,
                rid: Some(13),
            },
        ),
        server(
            "server-presence-page-last",
            "The last page of the member list: next is nil.",
            ServerMessage::PresencePage {
                room: room(),
                members: vec![MemberView {
                    id: me.clone(),
                    user: None,
                    state: json!({"name": "Ada"}),
                }],
                next: None,
                total: 15042,
                rid: None,
            },
        ),
    ];
    // Edge cases: decode-only.
    cases.extend([
        raw(
            "client-ping-unknown-field",
            "Unknown fields are ignored, so the re-encoding differs: decode-only.",
            json!({"t": "ping", "rid": 1, "trace": {"id": "abc"}}),
            Expect::DecodeOnly,
        ),
        raw(
            "client-update-tag-last",
            "Fields may come in any order, `t` included: decode-only.",
            json!({"data": {"$bin": to_hex(&y.keystroke)}, "rid": 4, "room": room(), "t": "update"}),
            Expect::DecodeOnly,
        ),
        raw(
            "client-hello-nil-optionals",
            "nil is the same as an absent optional field: decode-only.",
            json!({"t": "hello", "v": 1, "token": null, "client": null, "rid": null}),
            Expect::DecodeOnly,
        ),
        raw(
            "client-event-no-data",
            "An event without data carries nil (the encoder writes data: nil): decode-only.",
            json!({"t": "event", "room": room(), "name": "poke"}),
            Expect::DecodeOnly,
        ),
        raw(
            "client-cursor-absent",
            "Absent anchor / head are nil: decode-only.",
            json!({"t": "cursor", "room": room()}),
            Expect::DecodeOnly,
        ),
    ]);
    // Edge cases: invalid frames.
    let mut truncated = encode_client(&ClientMessage::Update {
        room: room(),
        data: Bin(y.keystroke.clone()),
        rid: Some(4),
    });
    truncated.truncate(truncated.len() - 3);
    cases.extend([
        raw(
            "client-invalid-unknown-type",
            "An unknown type: error unknown_type with the frame's rid, the connection stays open.",
            json!({"t": "dance", "rid": 3, "style": "tango"}),
            Expect::Error(ErrorCode::UnknownType, Some(3)),
        ),
        raw(
            "client-invalid-bin-as-array",
            "A CRDT payload written as an array of integers instead of bin: bad_message.",
            json!({"t": "update", "room": room(), "data": [1, 2, 3], "rid": 8}),
            Expect::Error(ErrorCode::BadMessage, Some(8)),
        ),
        raw(
            "client-invalid-bin-as-str",
            "A CRDT payload written as a string instead of bin: bad_message.",
            json!({"t": "update", "room": room(), "data": "AQID"}),
            Expect::Error(ErrorCode::BadMessage, None),
        ),
        Case {
            name: "client-invalid-truncated",
            description: "A frame cut short (3 bytes missing from an update): bad_message.",
            direction: "client",
            bytes: truncated,
            expect: Expect::Error(ErrorCode::BadMessage, None),
        },
        raw(
            "client-invalid-missing-t",
            "A map without `t`: bad_message (rid still echoed).",
            json!({"room": room(), "rid": 11}),
            Expect::Error(ErrorCode::BadMessage, Some(11)),
        ),
        raw(
            "client-invalid-missing-field",
            "A known type without a required field (update without data): bad_message.",
            json!({"t": "update", "room": room(), "rid": 12}),
            Expect::Error(ErrorCode::BadMessage, Some(12)),
        ),
        raw(
            "client-invalid-not-a-map",
            "A bare MessagePack string: bad_message.",
            json!("ping"),
            Expect::Error(ErrorCode::BadMessage, None),
        ),
        raw(
            "client-invalid-presence-bin",
            "Presence state must be JSON-compatible: a bin inside it is bad_message.",
            json!({"t": "presence", "room": room(), "state": {"avatar": {"$bin": "89504e47"}}}),
            Expect::Error(ErrorCode::BadMessage, None),
        ),
        Case {
            name: "client-invalid-json-text",
            description: "JSON text is not MessagePack: bad_message.",
            direction: "client",
            bytes: br#"{"t":"ping"}"#.to_vec(),
            expect: Expect::Error(ErrorCode::BadMessage, None),
        },
    ]);
    cases
}

fn render(case: &Case) -> Vector {
    let (value, roundtrip, error, rid) = match case.expect {
        Expect::Error(code, rid) => {
            let err = decode_client(&case.bytes).expect_err(case.name);
            assert_eq!((err.code, err.rid), (code, rid), "{}", case.name);
            (None, None, Some(code.as_str().to_owned()), rid)
        }
        Expect::RoundTrip | Expect::DecodeOnly => {
            let msg = Msg::decode(case.direction, &case.bytes).expect(case.name);
            msg.check_yjs().expect(case.name);
            let encoded = msg.encode();
            let roundtrip = encoded == case.bytes;
            assert_eq!(
                roundtrip,
                matches!(case.expect, Expect::RoundTrip),
                "{}: round trip",
                case.name
            );
            (
                Some(Node::from_msgpack(&encoded)),
                Some(roundtrip),
                None,
                None,
            )
        }
    };
    Vector {
        name: case.name.to_owned(),
        direction: case.direction.to_owned(),
        description: case.description.to_owned(),
        hex: to_hex(&case.bytes),
        value,
        roundtrip,
        error,
        rid,
    }
}

/// The committed vectors are exactly what `cases()` renders: no vector
/// missing, extra or edited by hand. `CHORUS_WRITE_VECTORS=1 cargo test
/// --test it vectors::committed` rewrites them instead (then commit the
/// diff).
#[test]
fn committed_vectors_are_the_generated_ones() {
    let dir = proto_dir().join("vectors");
    let write = std::env::var("CHORUS_WRITE_VECTORS").as_deref() == Ok("1");
    let cases = cases();
    let mut names = BTreeSet::new();
    let mut stale = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate vector {}", case.name);
        let v = render(case);
        check(&v).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let mut text = serde_json::to_string_pretty(&v).expect("vector serializes");
        text.push('\n');
        let path = dir.join(format!("{}.json", case.name));
        if write {
            std::fs::create_dir_all(&dir).expect("vectors dir");
            std::fs::write(&path, text).expect("vector written");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(case.name.to_owned());
        }
    }
    let committed: BTreeSet<String> = load_vectors().into_iter().map(|(_, v)| v.name).collect();
    let extra: Vec<&String> = committed
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    if write {
        eprintln!("wrote {} vectors to {}", cases.len(), dir.display());
    }
    assert!(
        stale.is_empty() && extra.is_empty(),
        "proto/vectors differs from the generator: missing or changed {stale:?}, not generated {extra:?}; \
         rerun with CHORUS_WRITE_VECTORS=1 if the change is intended"
    );
}
