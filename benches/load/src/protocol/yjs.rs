//! y-protocols (y-websocket, and the body of Hocuspocus messages): the
//! frames a client sends, and lib0 readers that classify server frames in
//! place.

use bytes::Bytes;
use chorus::protocol::yjs;
use serde_json::{json, Value};
use yrs::StateVector;

use super::{Incoming, Synced};

/// Sync step 1 of an empty client: the server answers with the whole
/// document (sync step 2).
pub fn join_frame() -> Vec<u8> {
    yjs::sync_step1(&StateVector::default())
}

/// An awareness message: client `client`'s state, at `clock`, with its
/// cursor (anchor and head) at the encoded relative position `pos`.
pub fn cursor_frame(client: u64, clock: u32, pos: &[u8]) -> Vec<u8> {
    let p = yjs::position_to_json(pos).unwrap_or(Value::Null);
    let state =
        json!({ "user": { "name": format!("c{client}") }, "cursor": { "anchor": p, "head": p } });
    yjs::awareness([(client, clock, state.to_string().as_str())])
}

/// A y-protocols sync message (`alt`: another leading message type that
/// carries sync messages, Hocuspocus' SyncReply).
pub fn classify_sync(frame: &Bytes, alt: u64) -> Incoming {
    let mut r = Reader { b: frame, i: 0 };
    let kind = r.var();
    if kind != Some(0) && kind != Some(alt) {
        return Incoming::Other;
    }
    match r.var() {
        Some(1) => r.bytes().map_or(Incoming::Other, |b| {
            Incoming::Synced(Synced::Update(frame.slice_ref(b)))
        }),
        Some(2) => r
            .bytes()
            .map_or(Incoming::Other, |b| Incoming::Update(frame.slice_ref(b))),
        _ => Incoming::Other,
    }
}

/// True when a message starting with `head` is sync step 2 (only its type
/// is read: the rest may be cut off).
pub fn starts_sync_step2(head: &[u8]) -> bool {
    let mut r = Reader { b: head, i: 0 };
    r.var() == Some(0) && r.var() == Some(1)
}

/// Appends a lib0 var-uint (the server's codec).
pub use chorus::protocol::lib0::write_var_uint as write_var;

/// Appends a lib0 string (length, then UTF-8).
pub fn write_string(out: &mut Vec<u8>, s: &str) {
    write_var(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// lib0 var-uint reader over a frame.
pub struct Reader<'a> {
    /// The frame.
    pub b: &'a [u8],
    /// The read position.
    pub i: usize,
}

impl<'a> Reader<'a> {
    /// A var-uint.
    pub fn var(&mut self) -> Option<u64> {
        chorus::protocol::lib0::read_var_uint(self.b, &mut self.i).ok()
    }
    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.var()? as usize;
        let out = self.b.get(self.i..self.i.checked_add(len)?)?;
        self.i += len;
        Some(out)
    }
}
