//! What the fuzz targets share: an allocator that fails the run when one
//! allocation is out of proportion to the input, and the room's update path
//! (walk, decode, apply) with the invariants it must keep.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chorus::protocol::yupdate::{
    check_distinct_clients_v1, check_state_vector_v1, check_update_v1,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, Map, ReadTxn, StateVector, Text, Transact, Update};

/// The system allocator, recording the largest single allocation while
/// armed ([`bounded`]). libFuzzer's own malloc limit needs a sanitizer; this
/// works with `--sanitizer none` too.
pub struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

fn note(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Largest single allocation allowed while handling `len` input bytes: a
/// fixed allowance (yrs' encoders start at 1 KiB, serde buffers a few
/// values) plus a small multiple of the input, the bound the walkers exist
/// to keep (a yrs block is ~100 bytes and takes at least two input bytes).
pub fn allocation_bound(len: usize) -> usize {
    256 * 1024 + 64 * len
}

/// Runs `body` and panics (a libFuzzer crash) if any single allocation it
/// made exceeded [`allocation_bound`]`(len)`.
pub fn bounded<T>(what: &str, len: usize, body: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let out = body();
    ARMED.store(false, Ordering::Relaxed);
    let largest = LARGEST.load(Ordering::Relaxed);
    assert!(
        largest <= allocation_bound(len),
        "{what}: one allocation of {largest} bytes for {len} input bytes"
    );
    out
}

/// A document with content from three clients (text, map, array, a
/// deletion), so that fuzzed updates have items to attach to and delete.
/// The same content as the golden vectors' document is not needed: the
/// corpus brings its own updates.
pub fn seeded_doc() -> Doc {
    let doc = Doc::with_client_id(1001);
    let text = doc.get_or_insert_text("t");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    {
        let mut txn = doc.transact_mut();
        text.insert(&mut txn, 0, "Hello world");
        map.insert(&mut txn, "k", "v");
        array.insert(&mut txn, 0, 1.5);
    }
    for (client, at, s) in [(2002u64, 5u32, " there"), (3003, 0, "> ")] {
        let other = Doc::with_client_id(client);
        let u = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let t = other.get_or_insert_text("t");
        let mut txn = other.transact_mut();
        // unwrap: an update yrs just encoded applies.
        txn.apply_update(Update::decode_v1(&u).unwrap()).unwrap();
        t.insert(&mut txn, at, s);
        let back = txn.encode_update_v1();
        drop(txn);
        // unwrap: as above.
        doc.transact_mut()
            .apply_update(Update::decode_v1(&back).unwrap())
            .unwrap();
    }
    text.remove_range(&mut doc.transact_mut(), 2, 3);
    doc
}

/// The room's path for an update (`room::document`): walk it (shape, then
/// no client listed twice), let yrs
/// decode it, apply it in one transaction. Checked on the way:
/// - nothing the walker accepts makes yrs panic or allocate out of
///   proportion (yrs may still refuse it);
/// - whatever the document then holds, encoded by yrs, passes the walker
///   and restores into a fresh document.
///
/// Returns whether the update was applied.
pub fn room_apply(doc: &Doc, bytes: &[u8]) -> bool {
    if check_update_v1(bytes).is_err() {
        return false;
    }
    if bounded("check_distinct_clients_v1", bytes.len(), || {
        check_distinct_clients_v1(bytes)
    })
    .is_err()
    {
        return false;
    }
    let update = match bounded("Update::decode_v1", bytes.len(), || {
        Update::decode_v1(bytes)
    }) {
        Ok(u) => u,
        Err(_) => return false,
    };
    if update.is_empty() {
        return false;
    }
    let applied = bounded("apply_update", bytes.len(), || {
        doc.transact_mut().apply_update(update)
    });
    if applied.is_err() {
        return false;
    }
    let txn = doc.transact();
    let state = txn.encode_state_as_update_v1(&StateVector::default());
    if let Err(e) = check_update_v1(&state) {
        panic!("the walker refuses yrs' own encoding of the document: {e}");
    }
    let sv = txn.state_vector();
    let encoded_sv = sv.encode_v1();
    if let Err(e) = check_state_vector_v1(&encoded_sv) {
        panic!("the walker refuses yrs' own state vector: {e}");
    }
    // The diff a client with this update's state asks for (sync step 1).
    let _ = txn.encode_diff_v1(&sv);
    drop(txn);
    // Restoring that encoding must not panic. (Its state vector is not
    // always the document's: yrs counts the clocks of a block whose parent
    // it never finds in the state vector but does not encode the block;
    // see README.md, "Findings".)
    let copy = Doc::new();
    let restored = Update::decode_v1(&state).expect("yrs decodes its own encoding");
    let _ = copy.transact_mut().apply_update(restored);
    true
}

/// The room's path for a client's state vector (sync step 1, `join`'s
/// `sv`): walk it, decode it (which must then succeed), and encode the
/// diff for it.
pub fn room_diff(doc: &Doc, bytes: &[u8]) {
    if check_state_vector_v1(bytes).is_err() {
        return;
    }
    let sv = bounded("StateVector::decode_v1", bytes.len(), || {
        StateVector::decode_v1(bytes)
    })
    .expect("yrs decodes a state vector the walker accepts");
    let diff = doc.transact().encode_diff_v1(&sv);
    if let Err(e) = check_update_v1(&diff) {
        panic!("the walker refuses yrs' own diff: {e}");
    }
}

/// A fresh copy of [`seeded_doc`] (built once, then restored from its
/// encoding for each input).
pub fn fresh_doc() -> Doc {
    static STATE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let state = STATE.get_or_init(|| {
        seeded_doc()
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    });
    let doc = Doc::with_client_id(1);
    // unwrap: yrs decodes and applies what it encoded.
    doc.transact_mut()
        .apply_update(Update::decode_v1(state).unwrap())
        .unwrap();
    doc
}
