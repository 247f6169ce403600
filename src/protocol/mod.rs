//! Wire protocols, pure and free of I/O: the native MessagePack protocol
//! ([`native`]), the y-protocols format of stock Yjs clients ([`yjs`]), the
//! structural check of Yjs v1 updates run before yrs decodes them
//! ([`yupdate`]), and the names shared by every protocol (error codes, close
//! codes, room ids). `proto/PROTOCOL.md` is the specification; the vectors in
//! `proto/vectors/` are checked against this code by `tests/it/vectors.rs`.

pub mod hocuspocus;
pub mod lib0;
pub mod native;
pub mod yjs;
pub mod yupdate;

use serde::{Deserialize, Serialize};

/// The native protocol version this server speaks (sent in `hello` / `welcome`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Error codes carried by `error` messages. Stable strings on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not MessagePack, not a map, missing or ill-typed fields.
    BadMessage,
    /// A message type this server does not know (the connection stays open).
    UnknownType,
    /// The first message must be `hello`.
    HelloRequired,
    /// `hello` asked for a protocol version this server does not speak.
    UnsupportedVersion,
    /// The message names a room this connection has not joined.
    NotJoined,
    /// The connection already joined that room.
    AlreadyJoined,
    /// The room id is empty, too long or has control characters.
    BadRoom,
    /// The bytes are not a valid Yjs v1 update / state vector / position.
    BadUpdate,
    /// The update has structs that follow ones the room never saw (a gap in
    /// a client's clock): nothing of it was applied. Send what is missing
    /// first, or the whole state.
    MissingDependencies,
    /// Applying the update would take the document over `max_doc_bytes`.
    DocTooLarge,
    /// The presence state is not a JSON object or is over `max_presence_bytes`.
    PresenceTooLarge,
    /// The event is over `max_event_bytes`.
    EventTooLarge,
    /// Joining would exceed `max_rooms_per_connection`.
    TooManyRooms,
    /// The room could not be loaded from the store.
    RoomUnavailable,
    /// The update was applied but could not be stored; it is not acknowledged.
    StoreFailed,
    /// The session is not allowed to do this.
    Forbidden,
    /// The session exceeded a rate limit.
    RateLimited,
    /// The server is shutting down.
    GoingAway,
    /// The named thing (a version) does not exist.
    NotFound,
}

impl ErrorCode {
    /// The wire string of this code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::BadRoom => "bad_room",
            ErrorCode::BadUpdate => "bad_update",
            ErrorCode::MissingDependencies => "missing_dependencies",
            ErrorCode::DocTooLarge => "doc_too_large",
            ErrorCode::PresenceTooLarge => "presence_too_large",
            ErrorCode::EventTooLarge => "event_too_large",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RoomUnavailable => "room_unavailable",
            ErrorCode::StoreFailed => "store_failed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::GoingAway => "going_away",
            ErrorCode::NotFound => "not_found",
        }
    }
}

/// WebSocket close codes the server uses. Everything a client can see is
/// listed in `proto/PROTOCOL.md`.
pub mod close {
    /// Normal closure (client asked, or `leave` of the last room is not a reason).
    pub const NORMAL: u16 = 1000;
    /// The server is shutting down; reconnect elsewhere / later.
    pub const GOING_AWAY: u16 = 1001;
    /// Cluster mode: this node holds more than its share of the cluster's
    /// sessions and moves some elsewhere: reconnect (through the load
    /// balancer) and resync. Transient.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The WebSocket framing itself was invalid.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A message was larger than `max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The server failed unexpectedly.
    pub const INTERNAL: u16 = 1011;
    /// The connection did not answer pings within the client timeout.
    pub const TIMEOUT: u16 = 4000;
    /// `hello` asked for a protocol version the server does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 4002;
    /// The client read so slowly that even non-droppable messages piled up
    /// past `outbound_hard_limit_bytes`. Reconnect and resync.
    pub const SLOW_CONSUMER: u16 = 4008;

    // Authentication and limits, both protocols. They are in 4400..=4499
    // so that a stock y-websocket client does not retry with the same
    // (bad) token or keep flooding.

    /// No token, a bad signature, a malformed or expired token at connect
    /// time (native: after an `error forbidden`; `/yjs`: after an auth
    /// "permission denied" message). Get a new token before reconnecting.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Reserved: a session over `max_messages_per_sec` or
    /// `max_bytes_per_sec` is slowed, and one kept over past
    /// `rate_limit_grace_ms` is closed with [`TRY_AGAIN_LATER`] (transient).
    pub const RATE_LIMITED: u16 = 4429;
    /// The session's token reached its `exp`: closed at that moment.
    /// Reconnect with a fresh token.
    pub const TOKEN_EXPIRED: u16 = 4440;

    // `/yjs` sessions. The stock y-websocket client stops reconnecting on a
    // close code in 4400..=4499 (its `shouldReconnect`), so permanent
    // failures use that range; transient ones (timeout 4000, slow consumer
    // 4008, going away 1001, internal 1011, try again later 1013) do not,
    // and the client reconnects and resyncs.

    /// `/yjs`: a frame that is not valid y-protocols (truncated var-uint,
    /// length past the frame, unknown message type, text frame). Permanent.
    pub const YJS_BAD_MESSAGE: u16 = 4400;
    /// `/yjs`: permission denied (sent after an auth "permission denied"
    /// message carrying the reason): the room is outside the token's
    /// grants, a read-only session sent an update, or the `Origin` is not
    /// allowed. Permanent.
    pub const YJS_FORBIDDEN: u16 = 4403;
    /// `/yjs`: the room name is empty, too long or has control characters. Permanent.
    pub const YJS_BAD_ROOM: u16 = 4404;
    /// `/yjs`: a frame over `max_frame_bytes`, or an update that would take
    /// the document over `max_doc_bytes`. Permanent.
    pub const YJS_TOO_LARGE: u16 = 4413;
    /// `/yjs`: an update the document refuses (not a Yjs v1 update).
    /// Permanent: the same client would resend the same bytes.
    pub const YJS_BAD_UPDATE: u16 = 4422;
    /// The room is unavailable (its document could not be loaded), an
    /// update could not be stored, the session stayed over its rate past
    /// `rate_limit_grace_ms`, or the room restarted after a panic (both
    /// protocols; every member is closed): reconnect and resync. Transient.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// The room id in a URL path segment (`/yjs/{room}`, `/api/v1/rooms/{room}`),
/// as sent, before any decoding: every `%XX` is decoded, `%2F` included, so
/// `doc%3Aacme%2Fx` names the room a native join names `doc:acme/x`. Bytes
/// that are not UTF-8 once decoded are refused (never replaced), so two
/// different raw ids never share a room.
pub fn decode_room_segment(raw: &str) -> Result<String, &'static str> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "room id is not UTF-8 once percent-decoded")
}

/// Validates a room id: 1..=`max` bytes of UTF-8 with no control characters.
pub fn validate_room_id(room: &str, max: usize) -> Result<(), &'static str> {
    if room.is_empty() {
        return Err("room id is empty");
    }
    if room.len() > max {
        return Err("room id is too long");
    }
    if room.chars().any(char::is_control) {
        return Err("room id has control characters");
    }
    Ok(())
}
