//! The y-protocols decoder (`protocol::yjs::decode_frame`) and the sans-I/O
//! sync logic behind it (`sync::DocSync`), on arbitrary frames:
//! - no panic, no allocation out of proportion;
//! - a frame that decodes re-encodes, message by message, to a frame that
//!   decodes to the same messages (var-uints may be written longer than
//!   needed on the wire, so bytes are not compared);
//! - `DocSync` refuses exactly the frames the decoder refuses (4400); a
//!   read-only client never yields an update, and is denied (4403) when it
//!   sends a non-empty one; no empty update and no awareness state over
//!   the limit reaches the room;
//! - each update that reaches the room goes through the room's walk,
//!   decode and apply (`chorus_fuzz::room_apply`), each state vector through
//!   its diff.
#![no_main]

use chorus::auth::Rights;
use chorus::protocol::close;
use chorus::protocol::yjs::{self, decode_frame, YjsMessage};
use chorus::sync::{Action, DocSync, Refusal, SyncLimits};
use chorus_fuzz::{bounded, fresh_doc, room_apply, Counting};
use libfuzzer_sys::fuzz_target;
use yrs::ReadTxn;
use yrs::Transact;

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMITS: SyncLimits = SyncLimits {
    max_presence_bytes: 64,
};

fn write_var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_bytes(out: &mut Vec<u8>, b: &[u8]) {
    write_var(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// One message as y-protocols writes it (awareness entries kept in order).
fn encode(msg: &YjsMessage) -> Vec<u8> {
    match msg {
        YjsMessage::SyncStep1(sv) => yjs::sync_step1(sv),
        YjsMessage::SyncStep2(u) => yjs::sync_step2(u.clone()),
        YjsMessage::Update(u) => yjs::sync_update(u.clone()),
        YjsMessage::QueryAwareness => yjs::query_awareness(),
        YjsMessage::Auth(Some(reason)) => yjs::auth_denied(reason),
        YjsMessage::Auth(None) => panic!("decoded an auth message without a reason"),
        YjsMessage::Awareness(entries) => {
            let mut body = Vec::new();
            write_var(&mut body, entries.len() as u64);
            for e in entries {
                write_var(&mut body, e.client);
                write_var(&mut body, u64::from(e.clock));
                write_bytes(&mut body, e.json.as_bytes());
            }
            let mut out = Vec::new();
            write_var(&mut out, yjs::MSG_AWARENESS);
            write_bytes(&mut out, &body);
            out
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let decoded = bounded("decode_frame", data.len(), || decode_frame(data));
    let writer = DocSync::new(Rights::Write, LIMITS);
    let reader = DocSync::new(Rights::Read, LIMITS);
    let out = bounded("DocSync::receive_frame", data.len(), || {
        writer.receive_frame(data)
    });
    let messages = match decoded {
        Ok(m) => m,
        Err(_) => {
            assert!(out.actions.is_empty(), "actions from a malformed frame");
            assert!(
                matches!(out.refusal, Some(Refusal::Malformed(_))),
                "a malformed frame not refused as such: {:?}",
                out.refusal
            );
            assert_eq!(out.refusal.map(|r| r.code()), Some(close::YJS_BAD_MESSAGE));
            return;
        }
    };
    assert!(!messages.is_empty(), "a non-empty frame decoded to nothing");

    let frame: Vec<u8> = messages.iter().flat_map(encode).collect();
    match decode_frame(&frame) {
        Ok(again) => assert_eq!(again, messages, "decode(encode(frame)) differs"),
        Err(e) => panic!("the encoding of a decoded frame does not decode: {e}"),
    }

    assert!(out.actions.len() <= messages.len());
    // A writer is refused only for a state that is not JSON.
    match &out.refusal {
        None | Some(Refusal::Malformed(_)) => {}
        Some(other) => panic!("a writer refused with {other:?}"),
    }
    let writes = messages.iter().any(
        |m| matches!(m, YjsMessage::SyncStep2(u) | YjsMessage::Update(u) if u != yjs::EMPTY_UPDATE),
    );
    let read = reader.receive(messages);
    assert!(
        !read
            .actions
            .iter()
            .any(|a| matches!(a, Action::Update(_) | Action::Awareness(_))),
        "a read-only client got an update or awareness through"
    );
    if writes && read.refusal.is_none() {
        panic!("a read-only client's update was not refused");
    }

    let doc = fresh_doc();
    for action in &out.actions {
        match action {
            Action::Update(u) => {
                assert_ne!(
                    &u[..],
                    yjs::EMPTY_UPDATE,
                    "an empty update reached the room"
                );
                room_apply(&doc, u);
            }
            Action::SyncStep1(sv) => {
                let _ = doc.transact().encode_diff_v1(sv);
            }
            Action::Awareness(entries) => {
                assert!(!entries.is_empty(), "an empty awareness action");
                for (e, _) in entries {
                    assert!(e.json.len() <= LIMITS.max_presence_bytes);
                }
            }
            Action::QueryAwareness => {}
        }
    }
});
