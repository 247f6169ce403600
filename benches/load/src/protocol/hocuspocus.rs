//! Hocuspocus: every message is a y-protocols message prefixed by the
//! document name; a client authenticates (with a token) before it syncs.

use bytes::Bytes;

use super::yjs::{classify_sync, write_string, write_var, Reader};
use super::Incoming;

/// Hocuspocus' message type of a token auth message.
const AUTH: u64 = 2;
/// Hocuspocus' auth message kind carrying a token.
const TOKEN: u64 = 0;
/// Hocuspocus' SyncReply: a sync message answering the client's.
const SYNC_REPLY: u64 = 4;

/// `msg` for document `room`.
pub fn prefix(room: &str, msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(room.len() + msg.len() + 2);
    write_string(&mut out, room);
    out.extend_from_slice(msg);
    out
}

/// The auth message for `room`, with an empty token.
pub fn auth_frame(room: &str) -> Vec<u8> {
    let mut auth = Vec::new();
    write_string(&mut auth, room);
    write_var(&mut auth, AUTH);
    write_var(&mut auth, TOKEN);
    write_string(&mut auth, "");
    auth
}

/// A server frame: the sync message after the document name (SyncReply
/// carries sync messages too).
pub fn classify(frame: &Bytes) -> Incoming {
    let mut r = Reader { b: frame, i: 0 };
    match r.bytes() {
        Some(_) => classify_sync(&frame.slice(r.i..), SYNC_REPLY),
        None => Incoming::Other,
    }
}

/// True when a message starting with `head` is sync step 2 (plain or
/// SyncReply) after the document name; only the types are read.
pub fn starts_sync_step2(head: &[u8]) -> bool {
    let mut r = Reader { b: head, i: 0 };
    r.bytes().is_some() && matches!(r.var(), Some(0) | Some(SYNC_REPLY)) && r.var() == Some(1)
}
