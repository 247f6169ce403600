//! The update walker and yrs behind it: the input as a Yjs v1 update
//! applied to a document with content (`chorus_fuzz::room_apply`), then as
//! a state vector the document diffs against (`chorus_fuzz::room_diff`).
//! The walker must never panic nor allocate; what it accepts, yrs must
//! decode and apply without panicking or allocating out of proportion.
#![no_main]

use chorus::protocol::yupdate::{check_state_vector_v1, check_update_v1};
use chorus_fuzz::{bounded, fresh_doc, room_apply, room_diff, Counting};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| {
    // The walkers allocate nothing at all.
    let (update_ok, sv_ok) = bounded("walker", 0, || {
        (
            check_update_v1(data).is_ok(),
            check_state_vector_v1(data).is_ok(),
        )
    });
    let doc = fresh_doc();
    if update_ok {
        room_apply(&doc, data);
    }
    if sv_ok {
        room_diff(&doc, data);
    }
});
