//! The Hocuspocus protocol (as `@hocuspocus/provider` v2, v3 and v4 speak
//! it): many documents multiplexed on one WebSocket. Pure, no I/O.
//!
//! A frame is `varString(documentName) · varUint(type) · body` (lib0
//! encodings), one message per frame:
//!
//! | type | name | body |
//! |---|---|---|
//! | 0 | Sync | a y-protocols sync message (step 1 / step 2 / update) |
//! | 1 | Awareness | `varBytes` awareness update (as y-protocols) |
//! | 2 | Auth | client: `varUint 0 · varString token` (v4 appends `varString version`); server: `2 · varString scope`, `1 · varString reason`, or `0` (send your token again) |
//! | 3 | QueryAwareness | empty |
//! | 4 | SyncReply | a sync message (Hocuspocus-internal; accepted as Sync, never sent) |
//! | 5 | Stateless | `varString` payload |
//! | 6 | BroadcastStateless | `varString` payload |
//! | 7 | Close | client: empty (the provider detached); server: `varString` reason |
//! | 8 | SyncStatus | server → client: `varUint` 1 (applied) or 0 (refused) |
//! | 9 / 10 | Ping / Pong | v4: a raw one-byte frame `[9]` / `[10]`, no document name |
//!
//! Types 0, 1 and 3 after the name are exactly y-protocols messages, so
//! they are decoded by [`super::yjs`] and a room's y-protocols frames become
//! Hocuspocus frames by prefixing the name ([`name_prefix`]).

use super::lib0::{read_var_uint, write_var_bytes, write_var_uint, VarError};
use super::yjs::{self, DecodeError, YjsMessage};

/// Sync message (y-protocols sync after the name).
pub const MSG_SYNC: u64 = 0;
/// Awareness update.
pub const MSG_AWARENESS: u64 = 1;
/// Authentication.
pub const MSG_AUTH: u64 = 2;
/// Awareness query.
pub const MSG_QUERY_AWARENESS: u64 = 3;
/// Hocuspocus' internal reply to a sync step 1 (taken as Sync).
pub const MSG_SYNC_REPLY: u64 = 4;
/// A string payload for the document's server side.
pub const MSG_STATELESS: u64 = 5;
/// A string payload for every connection on the document.
pub const MSG_BROADCAST_STATELESS: u64 = 6;
/// Client: the provider detached from the document; server: this document
/// is closed, with a reason.
pub const MSG_CLOSE: u64 = 7;
/// Whether the client's last document change was applied.
pub const MSG_SYNC_STATUS: u64 = 8;
/// v4 connection-level ping (raw one-byte frame).
pub const MSG_PING: u8 = 9;
/// v4 connection-level pong (raw one-byte frame).
pub const MSG_PONG: u8 = 10;

/// Auth sub-type: a token (client), or "send your token" (server).
pub const AUTH_TOKEN: u64 = 0;
/// Auth sub-type: permission denied, with a reason.
pub const AUTH_DENIED: u64 = 1;
/// Auth sub-type: authenticated, with the scope.
pub const AUTH_OK: u64 = 2;

/// The pong frame answering a v4 ping.
pub const PONG_FRAME: [u8; 1] = [MSG_PONG];

/// One decoded inbound frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound<'a> {
    /// v4 connection-level ping: answer [`PONG_FRAME`].
    Ping,
    /// v4 connection-level pong.
    Pong,
    /// A message for one document.
    Doc {
        /// The document name (borrowed from the frame; not validated here).
        name: &'a str,
        /// The message.
        msg: DocMessage,
    },
}

/// A message for one document.
#[derive(Debug, Clone, PartialEq)]
pub enum DocMessage {
    /// A y-protocols sync, awareness or query-awareness message.
    Yjs(YjsMessage),
    /// The client's token for this document (`""`: none).
    Auth {
        /// The token.
        token: String,
    },
    /// A stateless payload.
    Stateless(String),
    /// A stateless payload for every connection on the document.
    BroadcastStateless(String),
    /// The provider detached from the document.
    Close,
}

impl DocMessage {
    /// True for an Auth message.
    pub fn is_auth(&self) -> bool {
        matches!(self, DocMessage::Auth { .. })
    }
}

/// Why an inbound frame was refused (the connection closes with 4400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HocusError {
    /// An empty frame.
    #[error("empty frame")]
    Empty,
    /// A var-uint or length-prefixed field runs past the end of the frame.
    #[error("truncated frame: {0}")]
    Truncated(&'static str),
    /// A var-uint longer than 53 bits.
    #[error("integer out of range")]
    IntegerTooLarge,
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in {0}")]
    BadUtf8(&'static str),
    /// A message type a client does not send.
    #[error("unknown message type {0}")]
    UnknownType(u64),
    /// An auth message other than a token.
    #[error("unknown auth message type {0}")]
    UnknownAuthType(u64),
    /// Bytes after the message.
    #[error("trailing bytes after the {0} message")]
    Trailing(&'static str),
    /// The y-protocols part is malformed.
    #[error("{0}")]
    Yjs(#[from] DecodeError),
}

/// A bounds-checked reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn var_uint(&mut self, what: &'static str) -> Result<u64, HocusError> {
        read_var_uint(self.buf, &mut self.pos).map_err(|e| match e {
            VarError::Truncated => HocusError::Truncated(what),
            VarError::TooLarge => HocusError::IntegerTooLarge,
        })
    }

    /// A length-prefixed string; the length is checked against the bytes
    /// left before anything is read or allocated.
    fn string(&mut self, what: &'static str) -> Result<&'a str, HocusError> {
        let len = self.var_uint(what)?;
        if len > (self.buf.len() - self.pos) as u64 {
            return Err(HocusError::Truncated(what));
        }
        let start = self.pos;
        self.pos += len as usize;
        std::str::from_utf8(&self.buf[start..self.pos]).map_err(|_| HocusError::BadUtf8(what))
    }

    fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    fn done(&self, what: &'static str) -> Result<(), HocusError> {
        if self.pos < self.buf.len() {
            return Err(HocusError::Trailing(what));
        }
        Ok(())
    }
}

/// Decodes one inbound frame. Nothing is allocated for a refused frame
/// beyond what its valid prefix holds; lengths are checked against the
/// frame before they are used.
pub fn decode(frame: &[u8]) -> Result<Inbound<'_>, HocusError> {
    match frame {
        [] => return Err(HocusError::Empty),
        [MSG_PING] => return Ok(Inbound::Ping),
        [MSG_PONG] => return Ok(Inbound::Pong),
        _ => {}
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let name = r.string("document name")?;
    let start = r.pos;
    let msg = match r.var_uint("message type")? {
        // Exactly a y-protocols message from the type on.
        MSG_SYNC | MSG_AWARENESS | MSG_QUERY_AWARENESS => {
            DocMessage::Yjs(one_yjs(&frame[start..])?)
        }
        MSG_SYNC_REPLY => {
            // A sync message under another type: framed as y-protocols'.
            let mut own = Vec::with_capacity(frame.len() - start);
            own.push(0);
            own.extend_from_slice(r.rest());
            DocMessage::Yjs(one_yjs(&own)?)
        }
        MSG_AUTH => match r.var_uint("auth message type")? {
            AUTH_TOKEN => {
                let token = r.string("token")?.to_owned();
                // v4 appends its version; anything after it is ignored.
                if r.pos < frame.len() {
                    r.string("provider version")?;
                }
                DocMessage::Auth { token }
            }
            other => return Err(HocusError::UnknownAuthType(other)),
        },
        MSG_STATELESS => {
            let payload = r.string("stateless payload")?.to_owned();
            r.done("stateless")?;
            DocMessage::Stateless(payload)
        }
        MSG_BROADCAST_STATELESS => {
            let payload = r.string("stateless payload")?.to_owned();
            r.done("broadcast stateless")?;
            DocMessage::BroadcastStateless(payload)
        }
        MSG_CLOSE => DocMessage::Close,
        other => return Err(HocusError::UnknownType(other)),
    };
    Ok(Inbound::Doc { name, msg })
}

/// Exactly one y-protocols message.
fn one_yjs(bytes: &[u8]) -> Result<YjsMessage, HocusError> {
    match yjs::decode_frame_at_most(bytes, 1) {
        Ok(mut msgs) if msgs.len() == 1 => Ok(msgs.remove(0)),
        Ok(_) => Err(HocusError::Empty),
        Err(DecodeError::TooManyMessages(_)) => Err(HocusError::Trailing("y-protocols")),
        Err(e) => Err(e.into()),
    }
}

/// `varString(name)`: what every frame for document `name` starts with; a
/// room's y-protocols message after it is the Hocuspocus frame.
pub fn name_prefix(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 3);
    write_var_bytes(&mut out, name.as_bytes());
    out
}

/// A y-protocols message (sync, awareness, query awareness) for `name`.
pub fn prefixed(name: &str, yjs_msg: &[u8]) -> Vec<u8> {
    let mut out = name_prefix(name);
    out.extend_from_slice(yjs_msg);
    out
}

fn head(name: &str, kind: u64) -> Vec<u8> {
    let mut out = name_prefix(name);
    write_var_uint(&mut out, kind);
    out
}

/// Auth "authenticated", with the scope `readonly` or `read-write`.
pub fn authenticated(name: &str, read_only: bool) -> Vec<u8> {
    let mut out = head(name, MSG_AUTH);
    write_var_uint(&mut out, AUTH_OK);
    let scope = if read_only { "readonly" } else { "read-write" };
    write_var_bytes(&mut out, scope.as_bytes());
    out
}

/// Auth "permission denied", with a reason (the document only: the
/// socket stays open for the others).
pub fn permission_denied(name: &str, reason: &str) -> Vec<u8> {
    let mut out = head(name, MSG_AUTH);
    write_var_uint(&mut out, AUTH_DENIED);
    write_var_bytes(&mut out, reason.as_bytes());
    out
}

/// SyncStatus: the client's last change was applied (`true`) or refused.
pub fn sync_status(name: &str, applied: bool) -> Vec<u8> {
    let mut out = head(name, MSG_SYNC_STATUS);
    write_var_uint(&mut out, u64::from(applied));
    out
}

/// A stateless payload for the client.
pub fn stateless(name: &str, payload: &str) -> Vec<u8> {
    let mut out = head(name, MSG_STATELESS);
    write_var_bytes(&mut out, payload.as_bytes());
    out
}

/// The client's token for `name` (what the provider sends; for tests and
/// load generators).
pub fn auth_token(name: &str, token: &str) -> Vec<u8> {
    let mut out = head(name, MSG_AUTH);
    write_var_uint(&mut out, AUTH_TOKEN);
    write_var_bytes(&mut out, token.as_bytes());
    out
}

/// The native event name a Hocuspocus Stateless payload travels under
/// (its data: the payload string), both ways.
pub const STATELESS_EVENT: &str = "stateless";

/// The Stateless payload a Hocuspocus client is shown for a native event:
/// a `stateless` event whose data is a string is that string (what a
/// Hocuspocus client sent arrives unchanged); any other event is the JSON
/// text `{"event": name, "from": member, "data": data}`.
pub fn event_payload(from: &str, name: &str, data: &serde_json::Value) -> String {
    if let (STATELESS_EVENT, serde_json::Value::String(s)) = (name, data) {
        return s.clone();
    }
    serde_json::json!({ "event": name, "from": from, "data": data }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::StateVector;

    fn frame(name: &str, kind: u64, body: &[u8]) -> Vec<u8> {
        let mut out = head(name, kind);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn provider_frames_decode() {
        let step1 = prefixed("doc-a", &yjs::sync_step1(&StateVector::default()));
        assert_eq!(
            decode(&step1),
            Ok(Inbound::Doc {
                name: "doc-a",
                msg: DocMessage::Yjs(YjsMessage::SyncStep1(StateVector::default()))
            })
        );
        let update = prefixed("d", &yjs::sync_update(vec![0, 0]));
        assert_eq!(
            decode(&update),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Yjs(YjsMessage::Update(vec![0, 0]))
            })
        );
        // SyncReply (4) carries a sync message too.
        let reply = frame("d", MSG_SYNC_REPLY, &[1, 2, 0, 0]);
        assert_eq!(
            decode(&reply),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Yjs(YjsMessage::SyncStep2(vec![0, 0]))
            })
        );
        let aw = prefixed("d", &yjs::awareness([(5, 1, r#"{"user":{"name":"a"}}"#)]));
        assert!(matches!(
            decode(&aw),
            Ok(Inbound::Doc {
                msg: DocMessage::Yjs(YjsMessage::Awareness(_)),
                ..
            })
        ));
        let query = prefixed("d", &yjs::query_awareness());
        assert_eq!(
            decode(&query),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Yjs(YjsMessage::QueryAwareness)
            })
        );
    }

    #[test]
    fn auth_with_and_without_version_and_other_messages() {
        let v3 = auth_token("d", "");
        assert_eq!(
            decode(&v3),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Auth { token: "".into() }
            })
        );
        let mut v4 = auth_token("d", "jwt");
        write_var_bytes(&mut v4, b"4.8.0");
        assert_eq!(
            decode(&v4),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Auth {
                    token: "jwt".into()
                }
            })
        );
        assert_eq!(
            decode(&stateless("d", "hi")),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Stateless("hi".into())
            })
        );
        let mut b = head("d", MSG_BROADCAST_STATELESS);
        write_var_bytes(&mut b, b"all");
        assert_eq!(
            decode(&b),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::BroadcastStateless("all".into())
            })
        );
        assert_eq!(
            decode(&head("d", MSG_CLOSE)),
            Ok(Inbound::Doc {
                name: "d",
                msg: DocMessage::Close
            })
        );
        assert_eq!(decode(&[MSG_PING]), Ok(Inbound::Ping));
        assert_eq!(decode(&[MSG_PONG]), Ok(Inbound::Pong));
    }

    #[test]
    fn server_frames_encode_as_the_provider_reads_them() {
        assert_eq!(authenticated("d", false), b"\x01d\x02\x02\x0aread-write");
        assert_eq!(authenticated("d", true), b"\x01d\x02\x02\x08readonly");
        assert_eq!(permission_denied("d", "no"), b"\x01d\x02\x01\x02no");
        assert_eq!(sync_status("d", true), b"\x01d\x08\x01");
        assert_eq!(sync_status("d", false), b"\x01d\x08\x00");
        assert_eq!(stateless("d", "x"), b"\x01d\x05\x01x");
        assert_eq!(prefixed("é", &[3]), b"\x02\xc3\xa9\x03");
    }

    #[test]
    fn events_map_to_stateless_payloads() {
        let s = serde_json::Value::String("raw text".into());
        assert_eq!(event_payload("m1", STATELESS_EVENT, &s), "raw text");
        let other = event_payload("m1", "cursor-ping", &serde_json::json!({"x": 1}));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&other).unwrap(),
            serde_json::json!({"event": "cursor-ping", "from": "m1", "data": {"x": 1}})
        );
    }

    #[test]
    fn hostile_frames_are_refused_without_reading_past_the_frame() {
        // A document name claiming 2^53 - 1 bytes.
        let mut huge = Vec::new();
        write_var_uint(&mut huge, super::super::lib0::MAX_SAFE);
        huge.extend_from_slice(b"abc");
        assert_eq!(decode(&huge), Err(HocusError::Truncated("document name")));
        // A var-uint past 53 bits.
        assert_eq!(decode(&[0xff; 12]), Err(HocusError::IntegerTooLarge));
        // A token claiming more bytes than the frame holds.
        let mut t = head("d", MSG_AUTH);
        write_var_uint(&mut t, AUTH_TOKEN);
        write_var_uint(&mut t, 1 << 40);
        assert_eq!(decode(&t), Err(HocusError::Truncated("token")));
        // An awareness update claiming a billion entries.
        let mut aw = head("d", MSG_AWARENESS);
        write_var_bytes(&mut aw, &[0x80, 0x94, 0xeb, 0xdc, 0x03, 1, 1]);
        assert!(matches!(decode(&aw), Err(HocusError::Yjs(_))));
        // Unknown types, including the server-to-client ones.
        for kind in [MSG_SYNC_STATUS, 9, 10, 11, 1 << 40] {
            assert_eq!(
                decode(&head("d", kind)),
                Err(HocusError::UnknownType(kind)),
                "{kind}"
            );
        }
        assert_eq!(
            decode(&frame("d", MSG_AUTH, &[AUTH_OK as u8, 0])),
            Err(HocusError::UnknownAuthType(AUTH_OK))
        );
        // Two sync messages in one frame: one message per frame.
        let mut two = prefixed("d", &yjs::sync_update(vec![0, 0]));
        two.extend_from_slice(&yjs::sync_update(vec![0, 0]));
        assert_eq!(decode(&two), Err(HocusError::Trailing("y-protocols")));
        let mut st = stateless("d", "x");
        st.push(0);
        assert_eq!(decode(&st), Err(HocusError::Trailing("stateless")));
        assert_eq!(decode(&[]), Err(HocusError::Empty));
        assert_eq!(decode(&[0]), Err(HocusError::Truncated("message type")));
        assert_eq!(
            decode(&[2, 0xff, 0xfe, 0]),
            Err(HocusError::BadUtf8("document name"))
        );
        assert!(matches!(
            decode(&frame("d", MSG_SYNC, &[7, 0])),
            Err(HocusError::Yjs(DecodeError::UnknownSyncType(7)))
        ));
    }
}
