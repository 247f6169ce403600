//! The native protocol v1: one MessagePack map per WebSocket binary frame,
//! its type in the field `t`. Field names are spelled out (maps, not arrays),
//! so unknown fields are ignored and new optional fields can be added without
//! a version bump. CRDT payloads are MessagePack `bin`.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::ErrorCode;

/// Binary payload: encoded as MessagePack `bin`, and only `bin` is accepted
/// when decoding (an array of integers is rejected).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bin(pub Vec<u8>);

impl std::fmt::Debug for Bin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bin({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bin {
    fn from(v: Vec<u8>) -> Self {
        Bin(v)
    }
}

impl Serialize for Bin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bin {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BinVisitor;
        impl<'de> Visitor<'de> for BinVisitor {
            type Value = Bin;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("MessagePack bin")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Bin, E> {
                Ok(Bin(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Bin, E> {
                Ok(Bin(v))
            }
        }
        d.deserialize_byte_buf(BinVisitor)
    }
}

/// A message from a client. Every type may carry `rid` (request id); errors
/// caused by a message echo its `rid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message of a connection: protocol version, optional credentials.
    Hello {
        /// Protocol version the client speaks (1).
        v: u32,
        /// Bearer token, when the server requires one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Free-form client name and version, for logs.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Join a room; the server answers `synced` then a presence snapshot.
    Join {
        /// Room id.
        room: String,
        /// The client's Yjs state vector (v1); absent means empty.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sv: Option<Bin>,
        /// Initial presence state (a JSON-compatible map).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<Value>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Leave a room.
    Leave {
        /// Room id.
        room: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// A Yjs v1 update for a joined room; answered by `ack` once durable.
    Update {
        /// Room id.
        room: String,
        /// Yjs v1 update bytes.
        data: Bin,
        /// Request id, echoed by `ack`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Replace this member's presence state.
    Presence {
        /// Room id.
        room: String,
        /// New state: a JSON-compatible map (name, color, …).
        state: Value,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Move this member's cursor / selection.
    Cursor {
        /// Room id.
        room: String,
        /// Selection anchor: an encoded Yjs relative position, or nil.
        #[serde(default)]
        anchor: Option<Bin>,
        /// Selection head: an encoded Yjs relative position, or nil.
        #[serde(default)]
        head: Option<Bin>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Typing indicator on or off (on expires by itself).
    Typing {
        /// Room id.
        room: String,
        /// Typing or not.
        on: bool,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Ephemeral named event for the other members (not stored).
    Event {
        /// Room id.
        room: String,
        /// Event name.
        name: String,
        /// Payload: any JSON-compatible value.
        #[serde(default)]
        data: Value,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Liveness probe; answered by `pong`.
    Ping {
        /// Request id, echoed by `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// List a joined room's versions, newest first; answered by `versions`.
    Versions {
        /// Room id.
        room: String,
        /// Page size (default 50, at most 200).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Only versions older than this id (the previous page's `next`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Make a named version of the current state (`rw`); answered by
    /// `version`.
    VersionCreate {
        /// Room id.
        room: String,
        /// Its name.
        name: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Read a version's whole document; answered by `version_doc`.
    VersionView {
        /// Room id.
        room: String,
        /// Version id.
        id: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Make the document's content that of a version, as a new change
    /// (`rw`); answered by `version` (the restore's own version).
    VersionRestore {
        /// Room id.
        room: String,
        /// Version id.
        id: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Delete a version (`rw`); answered by `version_deleted`.
    VersionDelete {
        /// Room id.
        room: String,
        /// Version id.
        id: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Read a page of a joined room's member list, in join order; answered
    /// by `presence_page`.
    PresenceList {
        /// Room id.
        room: String,
        /// Start after this position: the `next` of the previous page
        /// (absent: from the first member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Page size (default and most: the server's
        /// `presence_list_max_members`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u64>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
}

/// The `t` values of [`ClientMessage`].
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "join",
    "leave",
    "update",
    "presence",
    "cursor",
    "typing",
    "event",
    "ping",
    "versions",
    "version_create",
    "version_view",
    "version_restore",
    "version_delete",
    "presence_list",
];

/// Someone who changed the document between two versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionAuthorView {
    /// User id (from the token).
    pub user: String,
    /// Display name, when known from presence.
    pub name: Option<String>,
}

/// A version, as clients see it (REST: the same fields in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionView {
    /// Decimal id, unique in the room; newer versions have larger numbers.
    pub id: String,
    /// When it was made, ms since the Unix epoch.
    pub time: u64,
    /// Name, for named versions.
    pub name: Option<String>,
    /// `auto`, `named` or `restore`.
    pub kind: String,
    /// Restores: the id of the version restored.
    pub restored_from: Option<String>,
    /// Who changed the document since the previous version.
    pub authors: Vec<VersionAuthorView>,
    /// Bytes stored for this version.
    pub bytes: u64,
}

/// Limits announced in `welcome`, so clients can stay inside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireLimits {
    /// Largest frame the server accepts.
    pub max_frame_bytes: u64,
    /// Rooms one connection may join.
    pub max_rooms: u64,
    /// Largest document.
    pub max_doc_bytes: u64,
    /// Largest presence state.
    pub max_presence_bytes: u64,
    /// Typing expiry.
    pub typing_ttl_ms: u64,
    /// Server ping interval.
    pub heartbeat_ms: u64,
    /// A connection silent this long is closed (4000).
    pub client_timeout_ms: u64,
    /// Largest event (name + JSON payload).
    pub max_event_bytes: u64,
    /// Longest room id.
    pub max_room_id_bytes: u64,
}

/// One member of a room as others see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// Member (connection) id, unique in the cluster.
    pub id: String,
    /// Authenticated user id, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Presence state.
    pub state: Value,
}

/// One member's cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CursorView {
    /// Member id.
    pub id: String,
    /// Encoded Yjs relative position of the anchor, or nil.
    pub anchor: Option<Bin>,
    /// Encoded Yjs relative position of the head, or nil.
    pub head: Option<Bin>,
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version in use.
        v: u32,
        /// This connection's member id.
        session: String,
        /// Server name and version.
        server: String,
        /// Limits in force.
        limits: WireLimits,
    },
    /// Answer to `join`: what the client lacks, and the server's state vector
    /// (the client then sends an `update` with what the server lacks).
    Synced {
        /// Room id.
        room: String,
        /// Yjs v1 update: the server's state minus the client's state vector.
        diff: Bin,
        /// The server's state vector (Yjs v1).
        sv: Bin,
        /// Request id of the `join`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Document changes made by others (possibly several merged).
    Update {
        /// Room id.
        room: String,
        /// Yjs v1 update.
        data: Bin,
        /// Member id of the author when all merged changes share one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    /// The update with this request id is durable.
    Ack {
        /// Room id.
        room: String,
        /// Request id of the acknowledged `update`.
        rid: u64,
    },
    /// Presence changes; with `snapshot` true, `joined` is the whole list
    /// (in a room above `presence_list_max_members`, the listed part of it).
    Presence {
        /// Room id.
        room: String,
        /// True for the list sent after `join`.
        #[serde(default)]
        snapshot: bool,
        /// Members that arrived (or all members, in a snapshot).
        #[serde(default)]
        joined: Vec<MemberView>,
        /// Members whose state changed.
        #[serde(default)]
        updated: Vec<MemberView>,
        /// Ids of members that left.
        #[serde(default)]
        left: Vec<String>,
        /// Members in the room: sent while the room is above
        /// `presence_list_max_members` (and in the first diff after it is
        /// not any more); absent: the list is the whole room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        /// True when the list holds only part of the room's `total`
        /// members (read the rest with `presence_list`).
        #[serde(default, skip_serializing_if = "is_false")]
        partial: bool,
    },
    /// Cursor moves since the last tick, latest per member.
    Cursor {
        /// Room id.
        room: String,
        /// Cursors that moved.
        cursors: Vec<CursorView>,
    },
    /// A member started or stopped typing.
    Typing {
        /// Room id.
        room: String,
        /// Member id.
        id: String,
        /// Typing or not.
        on: bool,
    },
    /// An ephemeral event from another member (or a backend).
    Event {
        /// Room id.
        room: String,
        /// Member id of the sender.
        from: String,
        /// Event name.
        name: String,
        /// Payload.
        data: Value,
    },
    /// Something the client sent was refused.
    Error {
        /// Stable error code.
        code: ErrorCode,
        /// Human readable explanation.
        message: String,
        /// Request id of the message that caused it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
        /// Room concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// Answer to `ping`.
    Pong {
        /// Request id of the `ping`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Answer to `versions`: a page of versions, newest first.
    Versions {
        /// Room id.
        room: String,
        /// The versions.
        versions: Vec<VersionView>,
        /// The `before` of the next page; nil on the last page.
        next: Option<String>,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Answer to `version_create` and `version_restore`: the new version.
    Version {
        /// Room id.
        room: String,
        /// The version.
        version: VersionView,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Answer to `version_view`: the version's whole document.
    VersionDoc {
        /// Room id.
        room: String,
        /// Version id.
        id: String,
        /// Yjs v1 update that rebuilds the version from an empty document.
        update: Bin,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// Answer to `version_delete`.
    VersionDeleted {
        /// Room id.
        room: String,
        /// Version id.
        id: String,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
    /// A version of the room was added or deleted (on any node): list again.
    VersionsChanged {
        /// Room id.
        room: String,
    },
    /// Answer to `presence_list`: a page of the member list, in join order.
    PresencePage {
        /// Room id.
        room: String,
        /// The members.
        members: Vec<MemberView>,
        /// The `after` of the next page; nil on the last page.
        next: Option<String>,
        /// Members in the room now.
        total: u64,
        /// Request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rid: Option<u64>,
    },
}

/// For `skip_serializing_if`: a false flag is left out.
fn is_false(b: &bool) -> bool {
    !*b
}

/// The `t` values of [`ServerMessage`].
pub const SERVER_TYPES: &[&str] = &[
    "welcome",
    "synced",
    "update",
    "ack",
    "presence",
    "cursor",
    "typing",
    "event",
    "error",
    "pong",
    "versions",
    "version",
    "version_doc",
    "version_deleted",
    "versions_changed",
    "presence_page",
];

/// Why a frame could not be decoded, ready to become an `error` message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// `bad_message` or `unknown_type`.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
    /// The frame's `rid`, when it could be read.
    pub rid: Option<u64>,
}

/// Decodes one client frame: exactly one MessagePack map. Unknown fields are
/// ignored; an unknown `t` is reported as [`ErrorCode::UnknownType`],
/// anything else (not a map, trailing bytes, ill-typed fields) as
/// `bad_message`.
pub fn decode_client(bytes: &[u8]) -> Result<ClientMessage, DecodeError> {
    if !starts_with_map(bytes) {
        return Err(DecodeError {
            code: ErrorCode::BadMessage,
            message: "a message must be one MessagePack map".into(),
            rid: None,
        });
    }
    // serde buffers an internally tagged message (`Content`) and reserves
    // up to 1 MiB from each array / map header before reading it: check
    // that every claimed length fits the frame first.
    if let Err(reason) = check_msgpack_shape(bytes) {
        return Err(classify(
            bytes,
            rmp_serde::decode::Error::Syntax(reason.into()),
        ));
    }
    // A `&[u8]` reader advances as it reads: what remains is trailing.
    let mut de = rmp_serde::Deserializer::new(bytes);
    let msg = match ClientMessage::deserialize(&mut de) {
        Ok(msg) => msg,
        Err(err) => return Err(classify(bytes, err)),
    };
    if !de.get_ref().is_empty() {
        return Err(DecodeError {
            code: ErrorCode::BadMessage,
            message: "trailing bytes after the message: send one message per frame".into(),
            rid: msg.rid(),
        });
    }
    Ok(msg)
}

/// True when the first byte is a MessagePack map marker (fixmap, map16, map32).
fn starts_with_map(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

/// Deepest nesting of MessagePack arrays and maps in a client message, the
/// message map included. Presence and event values are relayed as JSON,
/// which serde_json reads back only to the same depth.
const MAX_MSGPACK_DEPTH: usize = 128;

/// Walks the first MessagePack value of `bytes` without allocating: every
/// str / bin / ext length must fit the bytes left, and every array and map
/// header's element count, added to the elements still owed by the
/// containers around it, must too (each element takes at least one byte).
/// So when serde reserves capacity from a header, the elements are there.
/// What follows the first value is left to the caller (trailing bytes).
fn check_msgpack_shape(bytes: &[u8]) -> Result<(), &'static str> {
    /// A big-endian length of `n` bytes at `pos`.
    fn be(bytes: &[u8], pos: &mut usize, n: usize) -> Result<u64, &'static str> {
        let end = pos.checked_add(n).ok_or("truncated length")?;
        let field = bytes.get(*pos..end).ok_or("truncated length")?;
        *pos = end;
        Ok(field.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }
    // owed[d]: values still to read at nesting level d.
    let mut owed = [0u64; MAX_MSGPACK_DEPTH + 1];
    owed[0] = 1;
    let mut depth = 0usize;
    // Sum of `owed`: each takes at least one byte of what is left.
    let mut pending: u64 = 1;
    let mut pos = 0usize;
    loop {
        while owed[depth] == 0 {
            if depth == 0 {
                return Ok(());
            }
            depth -= 1;
        }
        owed[depth] -= 1;
        pending -= 1;
        let marker = *bytes.get(pos).ok_or("truncated value")?;
        pos += 1;
        // (payload bytes to skip, child values)
        let (skip, children) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc1 => return Err("reserved marker 0xc1"),
            0xc4 | 0xd9 => (be(bytes, &mut pos, 1)?, 0),
            0xc5 | 0xda => (be(bytes, &mut pos, 2)?, 0),
            0xc6 | 0xdb => (be(bytes, &mut pos, 4)?, 0),
            // ext: length, then a type byte and the data
            0xc7 => (be(bytes, &mut pos, 1)? + 1, 0),
            0xc8 => (be(bytes, &mut pos, 2)? + 1, 0),
            0xc9 => (be(bytes, &mut pos, 4)? + 1, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            // fixext 1, 2, 4, 8, 16: a type byte and the data
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, be(bytes, &mut pos, 2)?),
            0xdd => (0, be(bytes, &mut pos, 4)?),
            0xde => (0, 2 * be(bytes, &mut pos, 2)?),
            0xdf => (0, 2 * be(bytes, &mut pos, 4)?),
        };
        let left = bytes.len().saturating_sub(pos) as u64;
        if skip > left {
            return Err("length larger than the message");
        }
        // skip <= left, so this fits a usize and stays within `bytes`.
        pos += skip as usize;
        if children > 0 {
            if depth + 1 > MAX_MSGPACK_DEPTH {
                return Err("arrays or maps nested too deeply");
            }
            pending += children;
            if pending > bytes.len().saturating_sub(pos) as u64 {
                return Err("array or map larger than the message");
            }
            depth += 1;
            owed[depth] = children;
        }
    }
}

fn classify(bytes: &[u8], err: rmp_serde::decode::Error) -> DecodeError {
    /// The request id alone, so that errors can echo it.
    #[derive(Deserialize)]
    struct RidProbe {
        rid: Option<u64>,
    }
    /// The type alone, to tell an unknown type from a malformed message.
    #[derive(Deserialize)]
    struct TypeProbe {
        t: Option<String>,
    }
    let rid = rmp_serde::from_slice::<RidProbe>(bytes)
        .ok()
        .and_then(|p| p.rid);
    match rmp_serde::from_slice::<TypeProbe>(bytes) {
        Ok(TypeProbe { t: Some(t) }) if !CLIENT_TYPES.contains(&t.as_str()) => DecodeError {
            code: ErrorCode::UnknownType,
            message: format!("unknown message type {t:?}"),
            rid,
        },
        Ok(TypeProbe { t: None }) => DecodeError {
            code: ErrorCode::BadMessage,
            message: "message has no type field `t`".into(),
            rid,
        },
        _ => DecodeError {
            code: ErrorCode::BadMessage,
            message: format!("invalid message: {err}"),
            rid,
        },
    }
}

impl ClientMessage {
    /// The request id the message carries, if any.
    pub fn rid(&self) -> Option<u64> {
        match self {
            ClientMessage::Hello { rid, .. }
            | ClientMessage::Join { rid, .. }
            | ClientMessage::Leave { rid, .. }
            | ClientMessage::Update { rid, .. }
            | ClientMessage::Presence { rid, .. }
            | ClientMessage::Cursor { rid, .. }
            | ClientMessage::Typing { rid, .. }
            | ClientMessage::Event { rid, .. }
            | ClientMessage::Versions { rid, .. }
            | ClientMessage::VersionCreate { rid, .. }
            | ClientMessage::VersionView { rid, .. }
            | ClientMessage::VersionRestore { rid, .. }
            | ClientMessage::VersionDelete { rid, .. }
            | ClientMessage::PresenceList { rid, .. }
            | ClientMessage::Ping { rid } => *rid,
        }
    }
}

/// Decodes one server frame (used by clients and tests).
pub fn decode_server(bytes: &[u8]) -> Result<ServerMessage, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// Encodes a server message. Infallible for these types: every field is a
/// map key string, and JSON values have string keys.
pub fn encode_server(msg: &ServerMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut buf, msg).unwrap(); // unwrap: a Vec sink cannot fail; these types always serialize
    buf
}

/// `synced` encoded around its diff, which is left out so that a large
/// diff shared by many joiners is never copied: `head + diff + tail` is
/// exactly `encode_server(&Synced { room, diff, sv, rid })`, for a diff of
/// `diff_len` bytes.
pub fn encode_synced_parts(
    room: &str,
    diff_len: usize,
    sv: &[u8],
    rid: Option<u64>,
) -> (Vec<u8>, Vec<u8>) {
    let empty = encode_server(&ServerMessage::Synced {
        room: room.to_owned(),
        diff: Bin::default(),
        sv: Bin(sv.to_vec()),
        rid,
    });
    // The key "diff" (fixstr) then an empty bin8. 0xc4 0x00 is not valid
    // UTF-8, so it cannot occur inside the room id, the only string before.
    const MARK: [u8; 7] = [0xa4, b'd', b'i', b'f', b'f', 0xc4, 0x00];
    let at = find_mark(&empty, &MARK);
    let mut head = empty[..at + 5].to_vec();
    rmp::encode::write_bin_len(&mut head, diff_len as u32).unwrap(); // unwrap: a Vec sink cannot fail.
    let tail = empty[at + MARK.len()..].to_vec();
    (head, tail)
}

/// Where `mark` (a field's key and its empty value) starts in `encoded`.
/// The field is always there (checked by the tests of the two callers); 0
/// only if the serializer changed shape.
fn find_mark(encoded: &[u8], mark: &[u8]) -> usize {
    encoded
        .windows(mark.len())
        .position(|w| w == mark)
        .unwrap_or(0)
}

/// Members encoded back to back, as the items of a MessagePack array (the
/// shared middle of [`encode_snapshot_parts`]).
pub fn encode_members(members: &[MemberView]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64 * members.len());
    for m in members {
        rmp_serde::encode::write_named(&mut buf, m).unwrap(); // unwrap: a Vec sink cannot fail; these types always serialize
    }
    buf
}

/// A presence snapshot whose `joined` list is `shared` members (encoded by
/// [`encode_members`], not copied) followed by `own`: `head + shared +
/// tail` is exactly `encode_server` of that snapshot, with `shared_count`
/// members in `shared`; `total`: the room's member count when the list is
/// partial (`partial` set), `None` when it is the whole room.
pub fn encode_snapshot_parts(
    room: &str,
    shared_count: usize,
    own: &MemberView,
    total: Option<u64>,
) -> (Vec<u8>, Vec<u8>) {
    let empty = encode_server(&ServerMessage::Presence {
        room: room.to_owned(),
        snapshot: true,
        joined: Vec::new(),
        updated: Vec::new(),
        left: Vec::new(),
        total,
        partial: total.is_some(),
    });
    // The key "joined" (fixstr) then an empty fixarray. 0x90 cannot follow
    // 'd' in UTF-8, so this cannot occur inside the room id.
    const MARK: [u8; 8] = [0xa6, b'j', b'o', b'i', b'n', b'e', b'd', 0x90];
    let at = find_mark(&empty, &MARK);
    let mut head = empty[..at + 7].to_vec();
    rmp::encode::write_array_len(&mut head, (shared_count + 1) as u32).unwrap(); // unwrap: a Vec sink cannot fail.
    let mut tail = encode_members(std::slice::from_ref(own));
    tail.extend_from_slice(&empty[at + MARK.len()..]);
    (head, tail)
}

/// Encodes a client message (used by clients and tests).
pub fn encode_client(msg: &ClientMessage) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    rmp_serde::encode::write_named(&mut buf, msg).unwrap(); // unwrap: a Vec sink cannot fail; these types always serialize
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synced_parts_surround_the_diff() {
        for n in [0, 1, 255, 256, 65_535, 65_536, 100_000] {
            for rid in [None, Some(7)] {
                let diff = vec![0x5a; n];
                let sv = vec![1, 2, 3];
                let whole = encode_server(&ServerMessage::Synced {
                    room: "room-é".into(),
                    diff: Bin(diff.clone()),
                    sv: Bin(sv.clone()),
                    rid,
                });
                let (head, tail) = encode_synced_parts("room-é", n, &sv, rid);
                assert_eq!([head, diff, tail].concat(), whole, "diff of {n} bytes");
            }
        }
    }

    #[test]
    fn snapshot_parts_surround_the_shared_members() {
        let member = |i: usize| MemberView {
            id: format!("n-{i}"),
            user: i.is_multiple_of(2).then(|| format!("u{i}")),
            state: serde_json::json!({ "name": format!("m{i}") }),
        };
        for n in [0, 1, 14, 15, 16, 70_000] {
            for total in [None, Some(n as u64 + 5)] {
                let shared: Vec<MemberView> = (0..n).map(member).collect();
                let own = member(n);
                let mut all = shared.clone();
                all.push(own.clone());
                let whole = encode_server(&ServerMessage::Presence {
                    room: "room-é".into(),
                    snapshot: true,
                    joined: all,
                    updated: Vec::new(),
                    left: Vec::new(),
                    total,
                    partial: total.is_some(),
                });
                let (head, tail) = encode_snapshot_parts("room-é", n, &own, total);
                assert_eq!(
                    [head, encode_members(&shared), tail].concat(),
                    whole,
                    "{n} members, total {total:?}"
                );
            }
        }
    }

    #[test]
    fn round_trip_update() {
        let msg = ClientMessage::Update {
            room: "r".into(),
            data: Bin(vec![1, 2, 3]),
            rid: Some(7),
        };
        let bytes = encode_client(&msg);
        assert_eq!(decode_client(&bytes).unwrap(), msg);
    }

    #[test]
    fn unknown_type_is_classified() {
        let bytes = rmp_serde::to_vec_named(&serde_json::json!({"t": "dance", "rid": 3})).unwrap();
        let err = decode_client(&bytes).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        assert_eq!(err.rid, Some(3));
    }

    #[test]
    fn array_of_ints_is_not_bin() {
        let bytes = rmp_serde::to_vec_named(
            &serde_json::json!({"t": "update", "room": "r", "data": [1, 2, 3]}),
        )
        .unwrap();
        assert_eq!(
            decode_client(&bytes).unwrap_err().code,
            ErrorCode::BadMessage
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let bytes =
            rmp_serde::to_vec_named(&serde_json::json!({"t": "ping", "rid": 1, "future": true}))
                .unwrap();
        assert_eq!(
            decode_client(&bytes).unwrap(),
            ClientMessage::Ping { rid: Some(1) }
        );
    }

    /// The variant names serde knows, read from its "unknown variant" error.
    fn serde_variants(err: String) -> Vec<String> {
        let list = err.split("expected one of ").nth(1).unwrap_or_default();
        list.split(", ")
            .map(|s| s.trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn type_lists_match_the_enums() {
        let probe = rmp_serde::to_vec_named(&serde_json::json!({"t": "?"})).unwrap();
        let server = serde_variants(decode_server(&probe).unwrap_err().to_string());
        assert_eq!(server, SERVER_TYPES);
        let client = rmp_serde::from_slice::<ClientMessage>(&probe).unwrap_err();
        assert_eq!(serde_variants(client.to_string()), CLIENT_TYPES);
        // One of each server variant encodes with the `t` listed for it.
        let samples = [
            ServerMessage::Welcome {
                v: 1,
                session: "n-1".into(),
                server: "chorus".into(),
                limits: WireLimits {
                    max_frame_bytes: 1,
                    max_rooms: 1,
                    max_doc_bytes: 1,
                    max_presence_bytes: 1,
                    typing_ttl_ms: 1,
                    heartbeat_ms: 1,
                    client_timeout_ms: 1,
                    max_event_bytes: 1,
                    max_room_id_bytes: 1,
                },
            },
            ServerMessage::Synced {
                room: "r".into(),
                diff: Bin::default(),
                sv: Bin::default(),
                rid: None,
            },
            ServerMessage::Update {
                room: "r".into(),
                data: Bin::default(),
                origin: None,
            },
            ServerMessage::Ack {
                room: "r".into(),
                rid: 1,
            },
            ServerMessage::Presence {
                room: "r".into(),
                snapshot: false,
                joined: vec![],
                updated: vec![],
                left: vec![],
                total: None,
                partial: false,
            },
            ServerMessage::Cursor {
                room: "r".into(),
                cursors: vec![],
            },
            ServerMessage::Typing {
                room: "r".into(),
                id: "n-1".into(),
                on: true,
            },
            ServerMessage::Event {
                room: "r".into(),
                from: "n-1".into(),
                name: "e".into(),
                data: Value::Null,
            },
            ServerMessage::Error {
                code: ErrorCode::Forbidden,
                message: "m".into(),
                rid: None,
                room: None,
            },
            ServerMessage::Pong { rid: None },
            ServerMessage::Versions {
                room: "r".into(),
                versions: vec![],
                next: None,
                rid: None,
            },
            ServerMessage::Version {
                room: "r".into(),
                version: VersionView {
                    id: "1".into(),
                    time: 0,
                    name: None,
                    kind: "auto".into(),
                    restored_from: None,
                    authors: vec![],
                    bytes: 0,
                },
                rid: None,
            },
            ServerMessage::VersionDoc {
                room: "r".into(),
                id: "1".into(),
                update: Bin(vec![0, 0]),
                rid: None,
            },
            ServerMessage::VersionDeleted {
                room: "r".into(),
                id: "1".into(),
                rid: None,
            },
            ServerMessage::VersionsChanged { room: "r".into() },
            ServerMessage::PresencePage {
                room: "r".into(),
                members: vec![],
                next: None,
                total: 0,
                rid: None,
            },
        ];
        #[derive(Deserialize)]
        struct Tag {
            t: String,
        }
        let tags: Vec<String> = samples
            .iter()
            .map(|m| rmp_serde::from_slice::<Tag>(&encode_server(m)).unwrap().t)
            .collect();
        assert_eq!(tags, SERVER_TYPES);
    }

    #[test]
    fn truncated_is_bad_message() {
        let bytes = encode_client(&ClientMessage::Ping { rid: Some(1) });
        let err = decode_client(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadMessage);
    }

    /// An event whose `data` is the raw MessagePack `value`.
    fn event_with(value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x84, 0xa1, b't', 0xa5];
        v.extend(b"event");
        v.extend([0xa4]);
        v.extend(b"room");
        v.extend([0xa1, b'r', 0xa4]);
        v.extend(b"name");
        v.extend([0xa1, b'n', 0xa4]);
        v.extend(b"data");
        v.extend(value);
        v
    }

    #[test]
    fn container_headers_must_fit_the_frame() {
        // Real containers decode.
        let ok = event_with(&[0x92, 0x81, 0xa1, b'k', 0xc0, 0xdc, 0x00, 0x02, 1, 2]);
        let msg = decode_client(&ok).unwrap();
        assert!(
            matches!(msg, ClientMessage::Event { ref data, .. } if data[1] == serde_json::json!([1, 2]))
        );
        assert_eq!(decode_client(&encode_client(&msg)), Ok(msg));
        // Headers claiming more elements / bytes than the frame holds.
        for claim in [
            &[0xdd, 0x00, 0x10, 0x00, 0x00, 1][..],
            &[0xdf, 0x00, 0x10, 0x00, 0x00, 1, 1],
            &[0xdc, 0xff, 0xff],
            &[0x92, 0xc0, 0xdc, 0x00, 0x02, 1],
            &[0xc6, 0x00, 0x10, 0x00, 0x00, 1],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xc9, 0x00, 0x00, 0x00, 0x01, 1],
        ] {
            let err = decode_client(&event_with(claim)).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadMessage, "{claim:02x?}");
        }
        // Nesting deeper than the limit.
        let mut deep = vec![0x91; MAX_MSGPACK_DEPTH + 1];
        deep.push(0xc0);
        assert_eq!(
            check_msgpack_shape(&deep),
            Err("arrays or maps nested too deeply")
        );
        assert_eq!(check_msgpack_shape(&deep[1..]), Ok(()));
        // Truncated anywhere: refused by the walk or by serde, never a panic.
        for end in 0..ok.len() {
            assert!(decode_client(&ok[..end]).is_err());
        }
    }
}
