//! Frames in and out, for each protocol. Outgoing frames are built with the
//! server's own codecs; incoming frames are classified in place, decoding
//! as little as possible, so receivers stay light.

pub mod hocuspocus;
pub mod native;
pub mod yjs;
pub mod ysweet;
pub mod yupdate;

use anyhow::{bail, Result};
use bytes::Bytes;
use serde_json::Value;

use crate::cli::Proto;

/// How a client learns the document it joined.
pub enum Synced {
    /// Native: the server's state vector.
    Sv(Bytes),
    /// y-protocols: sync step 2 (the whole document for an empty client).
    Update(Bytes),
}

/// What an incoming frame is; the bytes are slices of the frame (no copy).
pub enum Incoming {
    /// The client is in sync with the room.
    Synced(Synced),
    /// A Yjs v1 update.
    Update(Bytes),
    /// The server reported an error.
    Error(String),
    /// Anything else.
    Other,
}

/// Frames a client sends to join `room` (after connecting).
pub fn join_frames(proto: Proto, room: &str, presence: Option<Value>) -> Vec<Vec<u8>> {
    match proto {
        Proto::Native => native::join_frames(room, presence),
        Proto::Yws | Proto::Ysweet => vec![yjs::join_frame()],
        Proto::Hocuspocus => vec![
            hocuspocus::auth_frame(room),
            hocuspocus::prefix(room, &yjs::join_frame()),
        ],
    }
}

/// A frame carrying one Yjs v1 update for `room`.
pub fn update_frame(proto: Proto, room: &str, data: Vec<u8>) -> Vec<u8> {
    match proto {
        Proto::Native => native::update_frame(room, data),
        Proto::Yws | Proto::Ysweet => chorus::protocol::yjs::sync_update(data),
        Proto::Hocuspocus => hocuspocus::prefix(room, &chorus::protocol::yjs::sync_update(data)),
    }
}

/// A cursor move: a native `cursor`, or an awareness state with `cursor`.
pub fn cursor_frame(proto: Proto, room: &str, client: u64, clock: u32, pos: &[u8]) -> Vec<u8> {
    match proto {
        Proto::Native => native::cursor_frame(room, pos),
        Proto::Yws | Proto::Ysweet => yjs::cursor_frame(client, clock, pos),
        Proto::Hocuspocus => hocuspocus::prefix(room, &yjs::cursor_frame(client, clock, pos)),
    }
}

/// What an incoming frame of protocol `proto` is, decoding as little as
/// possible.
pub fn classify(proto: Proto, frame: &Bytes) -> Incoming {
    match proto {
        Proto::Native => native::classify(frame),
        Proto::Yws | Proto::Ysweet => yjs::classify_sync(frame, 0),
        Proto::Hocuspocus => hocuspocus::classify(frame),
    }
}

/// True when a message (of `len` bytes, starting with `head`) is the one
/// that syncs a fresh client: native `synced`, or sync step 2 (after the
/// document name for Hocuspocus, whose SyncReply type 4 counts too).
pub fn is_sync_message(proto: Proto, head: &[u8], len: u64) -> Result<bool> {
    if len as usize <= head.len() {
        let frame = Bytes::copy_from_slice(head);
        return match classify(proto, &frame) {
            Incoming::Synced(_) => Ok(true),
            Incoming::Error(e) => bail!("server error: {e}"),
            _ => Ok(false),
        };
    }
    // Longer than the kept head: only the message type is read.
    Ok(match proto {
        Proto::Native => native::starts_synced(head),
        Proto::Yws | Proto::Ysweet => yjs::starts_sync_step2(head),
        Proto::Hocuspocus => hocuspocus::starts_sync_step2(head),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_ws::RawWs;
    use chorus::protocol::native::{encode_server, Bin, ServerMessage};
    use chorus::protocol::yjs;
    use yrs::StateVector;

    /// A large sync message is recognised from the first bytes a raw
    /// receiver keeps, in every protocol; other messages are not.
    #[test]
    fn sync_messages_are_recognised_from_their_first_bytes() {
        let keep = |m: &[u8]| m[..m.len().min(RawWs::KEEP)].to_vec();
        let big = vec![5u8; 3 * RawWs::KEEP];
        let synced = encode_server(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(big.clone()),
            sv: Bin(vec![7]),
            rid: Some(1),
        });
        let update = encode_server(&ServerMessage::Update {
            room: "r".into(),
            data: Bin(big.clone()),
            origin: None,
        });
        let sync = |m: &[u8], proto| is_sync_message(proto, &keep(m), m.len() as u64).unwrap();
        assert!(sync(&synced, Proto::Native));
        assert!(!sync(&update, Proto::Native));
        let step2 = yjs::sync_step2(big.clone());
        let y_update = yjs::sync_update(big);
        assert!(sync(&step2, Proto::Yws));
        assert!(sync(&step2, Proto::Ysweet));
        assert!(!sync(&y_update, Proto::Yws));
        assert!(!sync(&yjs::sync_step1(&StateVector::default()), Proto::Yws));
        assert!(sync(&hocuspocus::prefix("doc", &step2), Proto::Hocuspocus));
        assert!(!sync(
            &hocuspocus::prefix("doc", &y_update),
            Proto::Hocuspocus
        ));
        // Small enough to be kept whole: classified by the full decoders.
        let small = encode_server(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(vec![1]),
            sv: Bin(vec![7]),
            rid: None,
        });
        assert!(sync(&small, Proto::Native));
    }
}
