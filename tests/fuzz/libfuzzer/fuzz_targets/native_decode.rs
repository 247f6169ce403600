//! The native protocol decoder (`protocol::native::decode_client`) on
//! arbitrary frames: no panic, no allocation out of proportion, errors are
//! `bad_message` / `unknown_type`, and a message that decodes re-encodes
//! (the server's own encoding, canonical) to bytes that decode to the same
//! message and re-encode to the same bytes. CRDT payloads it carries go
//! through the room's checks (`sv`, `data`).
#![no_main]

use chorus::protocol::native::{decode_client, encode_client, ClientMessage};
use chorus::protocol::ErrorCode;
use chorus_fuzz::{bounded, fresh_doc, room_apply, room_diff, Counting};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    let decoded = bounded("decode_client", data.len(), || decode_client(data));
    let msg = match decoded {
        Ok(msg) => msg,
        Err(e) => {
            assert!(
                matches!(e.code, ErrorCode::BadMessage | ErrorCode::UnknownType),
                "decode error with code {:?}",
                e.code
            );
            return;
        }
    };
    let encoded = encode_client(&msg);
    let again = match decode_client(&encoded) {
        Ok(m) => m,
        Err(e) => panic!("the encoding of a decoded message does not decode: {e}"),
    };
    assert_eq!(again, msg, "decode(encode(m)) != m");
    assert_eq!(
        encode_client(&again),
        encoded,
        "the encoding is not canonical"
    );
    match &msg {
        ClientMessage::Join { sv: Some(sv), .. } => room_diff(&fresh_doc(), &sv.0),
        ClientMessage::Update { data, .. } => {
            room_apply(&fresh_doc(), &data.0);
        }
        _ => {}
    }
});
