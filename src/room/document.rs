//! The room's document: one `yrs::Doc`, its size bound, and the cached
//! encoding of its whole state for fresh joiners.
//!
//! Every update is walked by [`crate::protocol::yupdate`] before yrs decodes
//! it (yrs reserves memory from counts in its input), and applied in one
//! transaction: a refused update leaves the document as it was. A panic in
//! that transaction is not caught here: it may leave the document half
//! changed, so the whole room is dropped and restarted from the store
//! (`supervise.rs`).

use std::panic::catch_unwind;

use bytes::Bytes;
use serde_json::Value;
use yrs::types::ToJson;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    ArrayRef, Doc, GetString, MapRef, Out, ReadTxn, StateVector, StickyIndex, TextRef, Transact,
    Update,
};

use crate::protocol::yupdate::{check_distinct_clients_v1, check_state_vector_v1, check_update_v1};

/// `v` as `Bytes` without its spare capacity: yrs' encoder starts at 1 KiB,
/// and a cached small document would otherwise keep all of it.
pub(super) fn exact_bytes(mut v: Vec<u8>) -> Bytes {
    v.shrink_to_fit();
    Bytes::from(v)
}

/// What applying an update did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Applied {
    /// The update was empty: nothing to store or send.
    Nothing,
    /// The document changed.
    Changed,
}

/// One room's Yjs document.
pub(super) struct Document {
    doc: Doc,
    /// Upper bound of the encoded document size: the stored snapshot plus
    /// every update applied since (`max_doc_bytes` is checked against it).
    bytes: usize,
    /// The whole document encoded as one update, with the snapshot (state
    /// vector + delete set) it was encoded at: a storm of joins encodes a
    /// large document once, not once per client. Dropped as soon as the
    /// document changes.
    full_state: Option<Box<(yrs::Snapshot, Bytes)>>,
}

impl Document {
    /// An empty document.
    pub(super) fn new() -> Self {
        Document {
            // A 32-bit client id, as Yjs clients use: the server writes with
            // it when it restores a version.
            doc: Doc::with_client_id(u64::from(rand::random::<u32>())),
            bytes: 0,
            full_state: None,
        }
    }

    /// Upper bound of the encoded size, in bytes.
    pub(super) fn size(&self) -> usize {
        self.bytes
    }

    /// Restarts the size bound after a compaction: the snapshot's size,
    /// plus what was applied since the bound stood at `before`.
    pub(super) fn compacted(&mut self, snapshot_len: usize, before: usize) {
        self.bytes = snapshot_len + self.bytes.saturating_sub(before);
    }

    /// Applies stored parts (snapshot, then log) in order; a part that
    /// cannot be read is skipped and reported through `skipped` (index,
    /// reason), so one damaged entry does not lose the rest.
    pub(super) fn restore<'a>(
        &mut self,
        parts: impl Iterator<Item = &'a Bytes>,
        mut skipped: impl FnMut(usize, String),
    ) {
        let mut txn = self.doc.transact_mut();
        for (i, bytes) in parts.enumerate() {
            let applied = decode_update(bytes).and_then(|u| {
                txn.apply_update(u)
                    .map_err(|e| format!("apply failed: {e}"))
            });
            match applied {
                Ok(()) => self.bytes += bytes.len(),
                Err(e) => skipped(i, e),
            }
        }
    }

    /// Applies an update in one transaction. `max_bytes`: refuse it when
    /// the document would outgrow this bound, or when it has structs of a
    /// client that start past this document's clock for that client
    /// ([`ApplyError::MissingDependencies`]: yrs would keep them pending —
    /// invisible to every Yjs client — and integrating a pending struct
    /// later is where yrs 0.28 was found to read freed memory; see
    /// tests/fuzz/libfuzzer). `None` for updates accepted elsewhere
    /// already, which this copy must not diverge from: neither check then.
    /// `in_txn` runs inside the transaction once yrs has applied a
    /// non-empty update (the test-only fault hook panics there).
    pub(super) fn apply(
        &mut self,
        data: &[u8],
        max_bytes: Option<usize>,
        in_txn: impl FnOnce(),
    ) -> Result<Applied, ApplyError> {
        if let Some(max) = max_bytes {
            if self.bytes + data.len() > max {
                return Err(ApplyError::TooLarge(max));
            }
        }
        let update = decode_update(data).map_err(ApplyError::Refused)?;
        if update.is_empty() {
            return Ok(Applied::Nothing);
        }
        if max_bytes.is_some() {
            let have = self.state_vector();
            let first = update.state_vector_lower();
            if let Some((client, clock)) = first.iter().find(|(c, &k)| k > have.get(c)) {
                return Err(ApplyError::MissingDependencies(format!(
                    "client {client}'s structs start at clock {clock}, this room has up to {}: \
                     send the missing updates first (or the whole state)",
                    have.get(client)
                )));
            }
        }
        {
            let mut txn = self.doc.transact_mut();
            txn.apply_update(update)
                .map_err(|e| ApplyError::Refused(format!("update refused: {e}")))?;
            in_txn();
        }
        self.full_state = None;
        self.bytes += data.len();
        Ok(Applied::Changed)
    }

    /// The current state vector.
    pub(super) fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The current state vector, Yjs v1 encoded.
    pub(super) fn state_vector_v1(&self) -> Vec<u8> {
        self.state_vector().encode_v1()
    }

    /// What a client with state vector `sv` lacks. For an empty state vector
    /// (a fresh joiner) the encoding is made once per document version and
    /// the same bytes are shared by every joiner until the document changes.
    pub(super) fn diff_from(&mut self, sv: &StateVector) -> Bytes {
        let txn = self.doc.transact();
        if !sv.is_empty() {
            return Bytes::from(txn.encode_diff_v1(sv));
        }
        let snapshot = txn.snapshot();
        if let Some((at, bytes)) = self.full_state.as_deref() {
            if *at == snapshot {
                return bytes.clone();
            }
        }
        let bytes = exact_bytes(txn.encode_diff_v1(sv));
        drop(txn);
        self.full_state = Some(Box::new((snapshot, bytes.clone())));
        bytes
    }

    /// The whole state as one update, exactly sized (for snapshots).
    pub(super) fn encode_state(&self) -> Bytes {
        exact_bytes(
            self.doc
                .transact()
                .encode_state_as_update_v1(&StateVector::default()),
        )
    }

    /// Forgets everything (the room was deleted).
    pub(super) fn clear(&mut self) {
        *self = Document::new();
    }

    /// The `yrs` document (restores write to it through [`super::restore`]).
    pub(super) fn doc(&self) -> &Doc {
        &self.doc
    }

    /// The document was changed in place by `len` bytes of update (a
    /// restore): the cached full state is stale, the size bound grows.
    pub(super) fn changed_in_place(&mut self, len: usize) {
        self.full_state = None;
        self.bytes += len;
    }

    /// Each root type by name, as JSON (see [`doc_json`]).
    pub(super) fn to_json(&self) -> Value {
        doc_json(&self.doc)
    }
}

/// Each root type of `doc` by name, as JSON. Roots created by remote
/// updates have no declared type on the server, so it is inferred: keyed
/// entries → map, text content → string, sequence → array; empty → null.
pub(super) fn doc_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut out = serde_json::Map::new();
    for (name, value) in txn.root_refs() {
        let any = match value {
            Out::UndefinedRef(ptr) => {
                let map = MapRef::from(ptr);
                let text = TextRef::from(ptr);
                let array = ArrayRef::from(ptr);
                if yrs::Map::len(&map, &txn) > 0 {
                    map.to_json(&txn)
                } else if !text.get_string(&txn).is_empty() {
                    yrs::Any::from(text.get_string(&txn))
                } else if yrs::Array::len(&array, &txn) > 0 {
                    array.to_json(&txn)
                } else {
                    yrs::Any::Null
                }
            }
            other => other.to_json(&txn),
        };
        out.insert(
            name.to_owned(),
            serde_json::to_value(&any).unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

/// Why an update was not applied.
#[derive(Debug)]
pub(super) enum ApplyError {
    /// The document would exceed `max_doc_bytes` (the bound).
    TooLarge(usize),
    /// Not a Yjs v1 update, or yrs refused it.
    Refused(String),
    /// The update depends on structs this document never saw.
    MissingDependencies(String),
}

/// Decodes a Yjs v1 update once [`check_update_v1`] has walked it (so yrs
/// reserves nothing the bytes do not hold) and [`check_distinct_clients_v1`]
/// has found no client listed twice (yrs panics applying those), turning a
/// decoder panic into an error.
pub(super) fn decode_update(bytes: &[u8]) -> Result<Update, String> {
    check_update_v1(bytes)
        .and_then(|()| check_distinct_clients_v1(bytes))
        .map_err(|e| format!("not a Yjs v1 update: {e}"))?;
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(update)) => Ok(update),
        Ok(Err(e)) => Err(format!("not a Yjs v1 update: {e}")),
        Err(_) => Err("not a Yjs v1 update (decoder panicked)".into()),
    }
}

/// Decodes a client's Yjs v1 state vector, walked first like an update.
pub(super) fn decode_state_vector(bytes: &[u8]) -> Result<StateVector, String> {
    check_state_vector_v1(bytes).map_err(|e| e.to_string())?;
    StateVector::decode_v1(bytes).map_err(|e| e.to_string())
}

/// Checks that bytes are an encoded Yjs relative position.
pub(super) fn valid_position(bytes: &Option<Vec<u8>>) -> bool {
    match bytes {
        None => true,
        Some(b) => matches!(catch_unwind(|| StickyIndex::decode_v1(b)), Ok(Ok(_))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_listing_a_client_twice_is_refused() {
        // Client 3003 at clock 0 and again at clock 9 (see
        // yupdate::tests::repeated_clients_are_refused).
        let twice = [
            2u8, 1, 187, 23, 0, 68, 233, 7, 0, 2, 62, 32, 1, 187, 23, 9, 68, 233, 7, 0, 2, 62, 32,
            0,
        ];
        let mut doc = Document::new();
        match doc.apply(&twice, None, || {}) {
            Err(ApplyError::Refused(e)) => assert!(e.contains("listed twice"), "{e}"),
            other => panic!("applied: {other:?}"),
        }
    }

    /// The fuzzer's reproducer of a heap-use-after-free in yrs 0.28.1
    /// (tests/fuzz/libfuzzer/known-yrs): a struct of client 1 starting at
    /// clock 1 (kept pending by yrs), then clocks 0–1 that cover it. The
    /// room refuses the first, so nothing is ever pending and the second
    /// integrates as an ordinary update.
    #[test]
    fn the_yrs_pending_use_after_free_cannot_be_reached() {
        let pending = [1u8, 1, 1, 1, 4, 1, 0, 1, 0, 1, 0, 0];
        let covering = [1u8, 1, 1, 0, 4, 1, 1, b't', 2, b'h', b'i', 0];
        let mut doc = Document::new();
        match doc.apply(&pending, Some(1 << 20), || {}) {
            Err(ApplyError::MissingDependencies(_)) => {}
            other => panic!("a struct past the room's clock was not refused: {other:?}"),
        }
        assert!(matches!(
            doc.apply(&covering, Some(1 << 20), || {}),
            Ok(Applied::Changed)
        ));
    }
}
