//! The y-protocols wire format spoken on `/yjs/{room}` by stock `y-websocket`
//! clients: pure functions, bytes in, messages out (and back).
//!
//! A frame holds one or more messages, back to back:
//!
//! ```text
//! message   = varUint(type) body
//! type 0    sync:      varUint(0 = step 1 | 1 = step 2 | 2 = update) varUint8Array(payload)
//! type 1    awareness: varUint8Array(varUint(n) n × (varUint(client) varUint(clock) varString(json)))
//! type 2    auth:      varUint(0 = permission denied) varString(reason)
//! type 3    query awareness (no body)
//! ```
//!
//! Decoding never trusts a claimed length: every length is checked against
//! the bytes left in the frame *before* anything is allocated, a var-uint is
//! at most 53 bits (what lib0 writes and JavaScript can represent), and a
//! truncated message is an error, not the end of the frame (yrs'
//! `MessageReader` treats a truncated tail as "no more messages", so it is
//! not used for inbound frames). Counts of awareness entries are checked
//! against the smallest encoding of one entry before anything is reserved
//! for them; state vectors (and, in the room, updates) are walked whole by
//! [`super::yupdate`] before yrs decodes them.
//!
//! Encoding uses `yrs::sync::Message` for sync, auth and query messages.
//! State vectors and awareness updates are written here, sorted, so that a
//! reply is a deterministic byte sequence (yrs iterates a `HashMap`): state
//! vectors by descending client id, as Yjs' `writeStateVector` does,
//! awareness entries by ascending client id.
//!
//! Client ids: yrs is built without its `small-client` feature, so client
//! ids are 53-bit (`ClientID` keeps up to 2^53 - 1). Yjs 13 picks 32-bit ids,
//! a subset, so its documents round-trip unchanged, and native clients built
//! on yrs (53-bit ids by default) do too. With `small-client`, yrs would
//! truncate ids to 32 bits and corrupt documents written by yrs-based
//! clients. Ids of 2^53 and above cannot come from either and are refused.

use serde_json::Value;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use super::lib0::{read_var_uint, write_var_bytes, write_var_uint, VarError};
use super::yupdate::{check_state_vector_v1, UpdateShapeError};
use super::{close, ErrorCode};

/// Message type of a sync message.
pub const MSG_SYNC: u64 = 0;
/// Message type of an awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Message type of an auth message.
pub const MSG_AUTH: u64 = 2;
/// Message type of an awareness query.
pub const MSG_QUERY_AWARENESS: u64 = 3;

/// Largest client id (and var-uint) accepted: 2^53 - 1.
pub const MAX_CLIENT_ID: u64 = (1 << 53) - 1;

/// An update that carries nothing (no structs, empty delete set): the
/// step 2 a client sends when it has nothing the server lacks.
pub const EMPTY_UPDATE: &[u8] = &[0, 0];

/// The close code for an error on a `/yjs` connection, `None` when the
/// error is dropped instead (y-protocols has no error message). Permanent
/// failures use 4400..=4499, so the stock client stops reconnecting.
pub fn close_for(code: ErrorCode) -> Option<u16> {
    Some(match code {
        ErrorCode::BadMessage | ErrorCode::UnknownType => close::YJS_BAD_MESSAGE,
        ErrorCode::BadRoom => close::YJS_BAD_ROOM,
        ErrorCode::BadUpdate | ErrorCode::MissingDependencies => close::YJS_BAD_UPDATE,
        ErrorCode::DocTooLarge => close::YJS_TOO_LARGE,
        ErrorCode::Forbidden => close::YJS_FORBIDDEN,
        ErrorCode::RoomUnavailable | ErrorCode::StoreFailed => close::TRY_AGAIN_LATER,
        ErrorCode::GoingAway => close::GOING_AWAY,
        // Awareness states over the limit and the like: ignored, logged.
        ErrorCode::PresenceTooLarge
        | ErrorCode::EventTooLarge
        | ErrorCode::RateLimited
        | ErrorCode::AlreadyJoined
        | ErrorCode::NotJoined
        | ErrorCode::NotFound
        | ErrorCode::TooManyRooms
        | ErrorCode::HelloRequired
        | ErrorCode::UnsupportedVersion => return None,
    })
}

/// One decoded inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum YjsMessage {
    /// Sync step 1: the sender's state vector; answered with step 2.
    SyncStep1(StateVector),
    /// Sync step 2: what the sender has that we lack (a Yjs v1 update).
    SyncStep2(Vec<u8>),
    /// A document update (Yjs v1).
    Update(Vec<u8>),
    /// Awareness states of one or more clients.
    Awareness(Vec<AwarenessEntry>),
    /// Asks for every awareness state.
    QueryAwareness,
    /// Auth message: `Some(reason)` for "permission denied".
    Auth(Option<String>),
}

/// One client's awareness state as carried by an awareness update.
#[derive(Debug, Clone, PartialEq)]
pub struct AwarenessEntry {
    /// Awareness client id (the Yjs doc's client id).
    pub client: u64,
    /// Lamport clock of this state; higher wins.
    pub clock: u32,
    /// The state as JSON text, exactly as received (`"null"` when removed).
    pub json: String,
}

impl AwarenessEntry {
    /// The state parsed, `None` when it is `null` (the client is gone).
    pub fn state(&self) -> Result<Option<Value>, DecodeError> {
        match serde_json::from_str::<Value>(&self.json) {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) => Err(DecodeError::BadJson(e.to_string())),
        }
    }
}

/// Why an inbound frame was refused. Every variant closes the connection
/// with `close::YJS_BAD_MESSAGE`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The frame has no message at all.
    #[error("empty frame")]
    Empty,
    /// A var-uint or a length-prefixed field runs past the end of the frame.
    #[error("truncated message: {0}")]
    Truncated(&'static str),
    /// A var-uint longer than 53 bits.
    #[error("integer out of range")]
    IntegerTooLarge,
    /// A message type this server does not know.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// A sync message sub-type other than step 1, step 2, update.
    #[error("unknown sync message type {0}")]
    UnknownSyncType(u64),
    /// An auth message other than "permission denied".
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    /// A count of entries that the bytes left cannot hold.
    #[error("{0} claims more entries than the message holds")]
    CountTooLarge(&'static str),
    /// Bytes after the last entry of a length-prefixed payload.
    #[error("trailing bytes in {0}")]
    Trailing(&'static str),
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    /// An awareness state that is not JSON.
    #[error("awareness state is not JSON: {0}")]
    BadJson(String),
    /// yrs refused a state vector.
    #[error("bad state vector: {0}")]
    BadStateVector(String),
    /// More messages in one frame than `max_messages_per_frame`.
    #[error("more than {0} messages in one frame (max_messages_per_frame)")]
    TooManyMessages(usize),
}

/// A bounds-checked reader over one frame.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn var_uint(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        read_var_uint(self.buf, &mut self.pos).map_err(|e| match e {
            VarError::Truncated => DecodeError::Truncated(what),
            VarError::TooLarge => DecodeError::IntegerTooLarge,
        })
    }

    /// A length-prefixed byte array, borrowed; the length is checked
    /// against the bytes left before anything is read.
    fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.var_uint(what)?;
        if len > self.remaining() as u64 {
            return Err(DecodeError::Truncated(what));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn string(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes(what)?).map_err(|_| DecodeError::BadUtf8(what))
    }
}

/// Decodes every message of one inbound frame. The whole frame is decoded
/// before any message is acted on: a frame is taken entirely or refused.
pub fn decode_frame(frame: &[u8]) -> Result<Vec<YjsMessage>, DecodeError> {
    decode_frame_at_most(frame, usize::MAX)
}

/// [`decode_frame`], refusing a frame of more than `max` messages
/// ([`DecodeError::TooManyMessages`]) as soon as the one past `max` starts,
/// so a frame packed with tiny messages costs no more than `max` of them.
pub fn decode_frame_at_most(frame: &[u8], max: usize) -> Result<Vec<YjsMessage>, DecodeError> {
    if frame.is_empty() {
        return Err(DecodeError::Empty);
    }
    let mut r = Reader::new(frame);
    let mut out = Vec::new();
    while r.remaining() > 0 {
        if out.len() >= max {
            return Err(DecodeError::TooManyMessages(max));
        }
        out.push(decode_message(&mut r)?);
    }
    Ok(out)
}

fn decode_message(r: &mut Reader<'_>) -> Result<YjsMessage, DecodeError> {
    match r.var_uint("message type")? {
        MSG_SYNC => match r.var_uint("sync message type")? {
            0 => decode_state_vector(r.bytes("state vector")?).map(YjsMessage::SyncStep1),
            1 => Ok(YjsMessage::SyncStep2(r.bytes("sync step 2")?.to_vec())),
            2 => Ok(YjsMessage::Update(r.bytes("update")?.to_vec())),
            other => Err(DecodeError::UnknownSyncType(other)),
        },
        MSG_AWARENESS => decode_awareness(r.bytes("awareness update")?).map(YjsMessage::Awareness),
        MSG_AUTH => match r.var_uint("auth message type")? {
            0 => Ok(YjsMessage::Auth(Some(r.string("auth reason")?.to_owned()))),
            other => Err(DecodeError::UnknownAuthType(other)),
        },
        MSG_QUERY_AWARENESS => Ok(YjsMessage::QueryAwareness),
        other => Err(DecodeError::UnknownType(other)),
    }
}

/// Checks a state vector's shape ([`check_state_vector_v1`]: count within
/// the bytes, 53-bit ids, nothing trailing) and then lets yrs decode it.
fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, DecodeError> {
    const WHAT: &str = "state vector";
    check_state_vector_v1(bytes).map_err(|e| match e {
        UpdateShapeError::Truncated { .. } => DecodeError::Truncated(WHAT),
        UpdateShapeError::IntegerTooLarge { .. } => DecodeError::IntegerTooLarge,
        UpdateShapeError::CountTooLarge { .. } => DecodeError::CountTooLarge(WHAT),
        UpdateShapeError::Trailing { .. } => DecodeError::Trailing(WHAT),
        other => DecodeError::BadStateVector(other.to_string()),
    })?;
    StateVector::decode_v1(bytes).map_err(|e| DecodeError::BadStateVector(e.to_string()))
}

/// Decodes an awareness update (count checked against the bytes left; one
/// entry is at least three bytes).
fn decode_awareness(bytes: &[u8]) -> Result<Vec<AwarenessEntry>, DecodeError> {
    let mut r = Reader::new(bytes);
    let count = r.var_uint("awareness length")?;
    if count > (r.remaining() / 3) as u64 {
        return Err(DecodeError::CountTooLarge("awareness update"));
    }
    let mut entries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let client = r.var_uint("awareness client")?;
        let clock = r.var_uint("awareness clock")?;
        let clock = u32::try_from(clock).map_err(|_| DecodeError::IntegerTooLarge)?;
        let json = r.string("awareness state")?.to_owned();
        entries.push(AwarenessEntry {
            client,
            clock,
            json,
        });
    }
    if r.remaining() > 0 {
        return Err(DecodeError::Trailing("awareness update"));
    }
    Ok(entries)
}

/// Encodes a state vector as Yjs does: entries by descending client id.
pub fn encode_state_vector(sv: &StateVector) -> Vec<u8> {
    let mut entries: Vec<(u64, u32)> = sv.iter().map(|(c, clock)| (c.get(), *clock)).collect();
    entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = Vec::with_capacity(1 + entries.len() * 8);
    write_var_uint(&mut out, entries.len() as u64);
    for (client, clock) in entries {
        write_var_uint(&mut out, client);
        write_var_uint(&mut out, u64::from(clock));
    }
    out
}

/// Sync step 1 carrying `sv`.
pub fn sync_step1(sv: &StateVector) -> Vec<u8> {
    let sv = encode_state_vector(sv);
    let mut out = Vec::with_capacity(sv.len() + 4);
    write_var_uint(&mut out, MSG_SYNC);
    write_var_uint(&mut out, 0);
    write_var_bytes(&mut out, &sv);
    out
}

/// Sync step 2 carrying a Yjs v1 update.
pub fn sync_step2(update: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::SyncStep2(update)).encode_v1()
}

/// The start of a sync step 2 carrying an update of `len` bytes: the
/// update follows, so a shared update is not copied (`head + update` is
/// [`sync_step2`]`(update)`).
pub fn sync_step2_head(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    write_var_uint(&mut out, MSG_SYNC);
    write_var_uint(&mut out, 1);
    write_var_uint(&mut out, len as u64);
    out
}

/// A sync update message carrying a Yjs v1 update.
pub fn sync_update(update: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(update)).encode_v1()
}

/// "Permission denied" with a reason (the stock client logs it).
pub fn auth_denied(reason: &str) -> Vec<u8> {
    Message::Auth(Some(reason.to_owned())).encode_v1()
}

/// An awareness query.
pub fn query_awareness() -> Vec<u8> {
    Message::AwarenessQuery.encode_v1()
}

/// An awareness update message, entries sorted by client id.
pub fn awareness<'a>(entries: impl IntoIterator<Item = (u64, u32, &'a str)>) -> Vec<u8> {
    let mut entries: Vec<(u64, u32, &str)> = entries.into_iter().collect();
    entries.sort_unstable_by_key(|e| e.0);
    let mut body = Vec::new();
    write_var_uint(&mut body, entries.len() as u64);
    for (client, clock, json) in entries {
        write_var_uint(&mut body, client);
        write_var_uint(&mut body, u64::from(clock));
        write_var_bytes(&mut body, json.as_bytes());
    }
    let mut out = Vec::with_capacity(body.len() + 6);
    write_var_uint(&mut out, MSG_AWARENESS);
    write_var_bytes(&mut out, &body);
    out
}

/// The awareness client id under which a native member appears to Yjs
/// clients: FNV-1a (32 bit) of the member id, with `salt` mixed in so the
/// room can pick another id on a collision. Yjs clients pick random 32-bit
/// ids, so a collision is as unlikely as between two Yjs clients.
pub fn derived_client_id(member: &str, salt: u32) -> u64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in salt.to_le_bytes().iter().chain(member.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    u64::from(h)
}

/// Converts a native cursor position (binary, `StickyIndex::encode_v1`,
/// the same bytes as `Y.encodeRelativePosition`) to the JSON a Yjs
/// `RelativePosition` serializes to: `{type, tname, item, assoc}`, where
/// `type` / `item` are `{client, clock}` or null.
pub fn position_to_json(bytes: &[u8]) -> Option<Value> {
    let pos = std::panic::catch_unwind(|| yrs::StickyIndex::decode_v1(bytes))
        .ok()?
        .ok()?;
    let id = |id: &yrs::ID| serde_json::json!({ "client": id.client.get(), "clock": id.clock });
    let (ty, tname, item) = match pos.scope() {
        yrs::IndexScope::Relative(i) => (Value::Null, Value::Null, id(i)),
        yrs::IndexScope::Nested(i) => (id(i), Value::Null, Value::Null),
        yrs::IndexScope::Root(name) => (Value::Null, Value::String(name.to_string()), Value::Null),
    };
    let assoc = match pos.assoc {
        yrs::Assoc::After => 0,
        yrs::Assoc::Before => -1,
    };
    Some(serde_json::json!({ "type": ty, "tname": tname, "item": item, "assoc": assoc }))
}

/// Converts a Yjs `RelativePosition` as JSON (see [`position_to_json`]) to
/// the binary encoding native clients use. `None` when it is not one.
pub fn position_from_json(json: &Value) -> Option<Vec<u8>> {
    let obj = json.as_object()?;
    let id = |v: Option<&Value>| -> Option<Option<(u64, u64)>> {
        match v {
            None | Some(Value::Null) => Some(None),
            Some(Value::Object(o)) => {
                let client = o.get("client")?.as_u64()?;
                let clock = o.get("clock")?.as_u64()?;
                (client <= MAX_CLIENT_ID && clock <= u64::from(u32::MAX))
                    .then_some(Some((client, clock)))
            }
            Some(_) => None,
        }
    };
    let item = id(obj.get("item"))?;
    let ty = id(obj.get("type"))?;
    let tname = match obj.get("tname") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return None,
    };
    let assoc = match obj.get("assoc") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64()?,
    };
    // Same layout as Yjs' writeRelativePosition / yrs' StickyIndex.
    let mut out = Vec::new();
    if let Some((client, clock)) = item {
        write_var_uint(&mut out, 0);
        write_var_uint(&mut out, client);
        write_var_uint(&mut out, clock);
    } else if let Some(name) = tname {
        write_var_uint(&mut out, 1);
        write_var_bytes(&mut out, name.as_bytes());
    } else if let Some((client, clock)) = ty {
        write_var_uint(&mut out, 2);
        write_var_uint(&mut out, client);
        write_var_uint(&mut out, clock);
    } else {
        return None;
    }
    // lib0 writeVarInt: sign in bit 6 of the first byte.
    out.push(if assoc < 0 { 0x40 | 1 } else { 0 });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step2_head_prefixes_the_update() {
        for n in [0, 1, 127, 128, 70_000] {
            let update = vec![3u8; n];
            let mut framed = sync_step2_head(n);
            framed.extend_from_slice(&update);
            assert_eq!(framed, sync_step2(update));
        }
    }

    #[test]
    fn truncated_and_oversized_lengths_are_errors() {
        // Update claiming 100 MB in a 7-byte frame.
        let claim = [0u8, 2, 0x80, 0x80, 0x80, 0x32, 1];
        assert_eq!(decode_frame(&claim), Err(DecodeError::Truncated("update")));
        assert!(matches!(
            decode_frame(&[0x80]),
            Err(DecodeError::Truncated(_))
        ));
        assert_eq!(decode_frame(&[0xff; 12]), Err(DecodeError::IntegerTooLarge));
        assert_eq!(decode_frame(&[9]), Err(DecodeError::UnknownType(9)));
        // Awareness claiming 100 M entries in a tiny payload.
        let aw = [1u8, 5, 0x80, 0xc2, 0xd7, 0x2f, 0];
        assert_eq!(
            decode_frame(&aw),
            Err(DecodeError::CountTooLarge("awareness update"))
        );
        // State vector claiming 100 M entries.
        let sv = [0u8, 0, 5, 0x80, 0xc2, 0xd7, 0x2f, 0];
        assert_eq!(
            decode_frame(&sv),
            Err(DecodeError::CountTooLarge("state vector"))
        );
    }

    #[test]
    fn several_messages_per_frame() {
        let mut frame = sync_step1(&StateVector::default());
        frame.extend(query_awareness());
        frame.extend(awareness([(7, 1, "null")]));
        let msgs = decode_frame(&frame).unwrap();
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0], YjsMessage::SyncStep1(StateVector::default()));
        assert_eq!(msgs[1], YjsMessage::QueryAwareness);
        let YjsMessage::Awareness(e) = &msgs[2] else {
            panic!("awareness expected")
        };
        assert_eq!(e[0].state(), Ok(None));
    }

    #[test]
    fn positions_round_trip() {
        for bytes in [
            vec![0u8, 0xff, 0xff, 0xff, 0xff, 0x0f, 5, 0],
            vec![1, 1, b't', 0x41],
            vec![2, 3, 4, 0],
        ] {
            let json = position_to_json(&bytes).unwrap();
            assert_eq!(position_from_json(&json), Some(bytes));
        }
    }

    /// The awareness decoder's bounds, exactly: a count is refused before
    /// anything is reserved when the bytes left cannot hold that many
    /// 3-byte entries, accepted when they can, and trailing bytes are
    /// refused (killed mutants of `decode_awareness`).
    #[test]
    fn awareness_counts_and_trailing_bytes_are_checked_exactly() {
        // 10 minimal entries (client 0, clock 0, empty state): 30 bytes.
        let mut body = vec![10u8];
        body.extend(std::iter::repeat_n([0u8, 0, 0], 10).flatten());
        assert_eq!(decode_awareness(&body).map(|e| e.len()).ok(), Some(10));
        // 20 claimed in the same 30 bytes: refused by the count check (not
        // by running out of bytes halfway).
        body[0] = 20;
        assert!(matches!(
            decode_awareness(&body),
            Err(DecodeError::CountTooLarge(_))
        ));
        // One entry and a stray byte.
        assert!(matches!(
            decode_awareness(&[1, 0, 0, 0, 9]),
            Err(DecodeError::Trailing(_))
        ));
    }
}
