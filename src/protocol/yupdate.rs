//! A structural check of Yjs **v1** updates and state vectors, run before
//! `yrs` decodes untrusted bytes.
//!
//! yrs reserves memory from counts read off the wire (clients, structs,
//! `Any` arrays and maps, JSON strings) before it reads the elements, so a
//! few bytes can ask the allocator for gigabytes. [`check_update_v1`] walks
//! the whole encoding first, allocating nothing, and refuses:
//!
//! - a count larger than the bytes left can hold (every element takes at
//!   least one byte, most take two or three), so yrs never reserves more
//!   than a small multiple of the input size;
//! - a var-uint over 53 bits or longer than 10 bytes (lib0 never writes one;
//!   yrs' signed reader overflows a shift past 10 bytes);
//! - a length running past the end, a string that is not UTF-8 (yrs refuses
//!   those too), an unknown struct, content, type or `Any` tag;
//! - JSON content (ref 2, Yjs' legacy `ContentJSON`, which Yjs 13 no longer
//!   writes): yrs does not read it back from its own encoding (it reads
//!   `len + 1` strings and writes `len`), so a document holding one could
//!   not be restored from its snapshot, and while the item is pending,
//!   encoding the document panics (found by the `yrs_update` fuzz target);
//! - `Any` values nested deeper than [`MAX_ANY_DEPTH`] (yrs decodes them
//!   recursively);
//! - a client's clock running past 2^32 - 1 over its structs, or a deleted
//!   range ending past it (yrs keeps clocks in `u32` and panics or wraps on
//!   overflow; no Yjs document gets near);
//! - bytes after the delete set (yrs and Yjs ignore them, neither writes
//!   them).
//!
//! The walk follows yrs 0.28's reader byte for byte, so every count yrs
//! reserves from is one this module has checked. Where yrs and Yjs 13 read
//! the same bytes differently, the walk follows yrs and notes it:
//!
//! - JSON content (ref 2): yrs reads `len + 1` strings, Yjs `len` (and
//!   the walk refuses it, above).
//! - Type content with the XmlHook ref (5): yrs reads no name, Yjs reads one.
//! - The info byte: yrs takes the content ref from the low 4 bits, Yjs from
//!   the low 5. Bit 4 set is refused here: neither writes it, and a Yjs
//!   client receiving it would fail to decode the update.
//!
//! ```text
//! update       = varUint(n) n × client  delete_set
//! client       = varUint(structs) varUint(client id) varUint(clock) structs × struct
//! struct       = 0 varUint(len)                    GC
//!              | 10 varUint(len)                   Skip
//!              | info [id(origin)] [id(right origin)] [parent] content
//! parent       = (when info has neither origin) varUint(1) varString(root name) | varUint(≠1) id,
//!                then varString(parent sub) when info & 0x20
//! delete_set   = varUint(n) n × (varUint(client) varUint(m) m × (varUint(clock) varUint(len)))
//! state vector = varUint(n) n × (varUint(client) varUint(clock))
//! ```

use super::lib0::{add_bits, read_var_uint, VarError, MAX_VAR_BYTES};

/// Deepest nesting of `Any` arrays and maps accepted (serde_json, which
/// yrs uses for embed and format values, stops at the same depth).
pub const MAX_ANY_DEPTH: usize = 128;

const INFO_GC: u8 = 0;
const INFO_SKIP: u8 = 10;
const HAS_ORIGIN: u8 = 0x80;
const HAS_RIGHT_ORIGIN: u8 = 0x40;
const HAS_PARENT_SUB: u8 = 0x20;
const CONTENT_MASK: u8 = 0x1f;

/// Why bytes are not a Yjs v1 update (or state vector). `at` is the byte
/// offset where the problem was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpdateShapeError {
    /// The input ends inside a field.
    #[error("truncated {what} at byte {at}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// A var-uint (or var-int) over 53 bits or 10 bytes.
    #[error("{what} at byte {at} is out of range")]
    IntegerTooLarge {
        /// The field being read.
        what: &'static str,
        /// Offset of the field.
        at: usize,
    },
    /// A count of elements the bytes left cannot hold.
    #[error("{what} at byte {at} claims {count} entries, {remaining} bytes follow")]
    CountTooLarge {
        /// The count being read.
        what: &'static str,
        /// Offset of the count.
        at: usize,
        /// The claimed count.
        count: u64,
        /// Bytes after the count.
        remaining: usize,
    },
    /// A string that is not UTF-8.
    #[error("invalid UTF-8 in {what} at byte {at}")]
    BadUtf8 {
        /// The field being read.
        what: &'static str,
        /// Offset of the string's length.
        at: usize,
    },
    /// A struct info byte, type ref or `Any` tag yrs does not know.
    #[error("unknown {what} {value} at byte {at}")]
    UnknownTag {
        /// Which kind of tag.
        what: &'static str,
        /// The tag.
        value: u8,
        /// Offset of the tag.
        at: usize,
    },
    /// A GC or Skip struct of length 0 (yrs refuses those).
    #[error("empty {what} at byte {at}")]
    EmptyBlock {
        /// "GC" or "skip".
        what: &'static str,
        /// Offset of the length.
        at: usize,
    },
    /// `Any` values nested deeper than [`MAX_ANY_DEPTH`].
    #[error("values nested deeper than {MAX_ANY_DEPTH} at byte {at}")]
    TooDeep {
        /// Offset of the value over the limit.
        at: usize,
    },
    /// A client's clock, or a deleted range, past 2^32 - 1 (yrs keeps
    /// clocks in a `u32` and its arithmetic on them would overflow).
    #[error("clock past 2^32 - 1 for the client or range at byte {at}")]
    ClockOverflow {
        /// Offset of the starting clock.
        at: usize,
    },
    /// A well-formed part yrs cannot be trusted with (JSON content).
    #[error("unsupported {what} at byte {at}")]
    Unsupported {
        /// What it is.
        what: &'static str,
        /// Offset of the struct.
        at: usize,
    },
    /// A client listed twice in one update ([`check_distinct_clients_v1`]).
    #[error("client {client} listed twice, the second time at byte {at}")]
    DuplicateClient {
        /// The client id.
        client: u64,
        /// Offset of the second listing's client id.
        at: usize,
    },
    /// Bytes after the end of the structure.
    #[error("{count} trailing bytes after the {what}")]
    Trailing {
        /// "update" or "state vector".
        what: &'static str,
        /// How many.
        count: usize,
    },
}

type Result<T> = std::result::Result<T, UpdateShapeError>;

/// Checks that `bytes` are exactly one well-formed Yjs v1 update whose
/// counts fit its length. Allocates nothing and never panics.
pub fn check_update_v1(bytes: &[u8]) -> Result<()> {
    let mut w = Walker { buf: bytes, pos: 0 };
    // One client: struct count, client id, clock.
    let clients = w.count("client count", 3)?;
    for _ in 0..clients {
        // One struct: an info byte and at least one more.
        let structs = w.count("struct count", 2)?;
        w.var_uint("client id")?;
        let at = w.pos;
        let mut clock = w.var_uint("clock")?;
        for _ in 0..structs {
            // yrs adds each struct's length to a u32 clock.
            let len = w.block()?;
            clock = clock
                .checked_add(len)
                .filter(|c| *c <= u64::from(u32::MAX))
                .ok_or(UpdateShapeError::ClockOverflow { at })?;
        }
        if clock > u64::from(u32::MAX) {
            return Err(UpdateShapeError::ClockOverflow { at });
        }
    }
    w.delete_set()?;
    w.end("update")
}

/// Checks that no client is listed twice in an update that
/// [`check_update_v1`] accepted. Yjs and yrs write each client once; yrs
/// decodes a repeated one into one run of structs with a gap in its clocks
/// and then panics (`unreachable!` in `Update::exclude`) while applying it
/// to a document that knows part of that client (found by the `yrs_update`
/// fuzz target). Allocates 8 bytes per client listed (the client count is
/// at most a third of the input, [`check_update_v1`]).
pub fn check_distinct_clients_v1(bytes: &[u8]) -> Result<()> {
    let mut w = Walker { buf: bytes, pos: 0 };
    let clients = w.count("client count", 3)?;
    let mut seen: Vec<(u64, usize)> = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let structs = w.count("struct count", 2)?;
        let at = w.pos;
        seen.push((w.var_uint("client id")?, at));
        w.var_uint("clock")?;
        for _ in 0..structs {
            w.block()?;
        }
    }
    seen.sort_unstable();
    match seen.windows(2).find(|pair| pair[0].0 == pair[1].0) {
        Some(pair) => Err(UpdateShapeError::DuplicateClient {
            client: pair[1].0,
            at: pair[1].1,
        }),
        None => Ok(()),
    }
}

/// Where the delete set of a Yjs v1 update starts (after its structs), for
/// an update [`check_update_v1`] accepts. Allocates nothing and never
/// panics.
pub fn delete_set_offset_v1(bytes: &[u8]) -> Result<usize> {
    let mut w = Walker { buf: bytes, pos: 0 };
    let clients = w.count("client count", 3)?;
    for _ in 0..clients {
        let structs = w.count("struct count", 2)?;
        w.var_uint("client id")?;
        w.var_uint("clock")?;
        for _ in 0..structs {
            w.block()?;
        }
    }
    Ok(w.pos)
}

/// Checks that `bytes` are exactly one Yjs v1 state vector whose entry
/// count fits its length. Allocates nothing and never panics.
pub fn check_state_vector_v1(bytes: &[u8]) -> Result<()> {
    let mut w = Walker { buf: bytes, pos: 0 };
    let entries = w.count("state vector length", 2)?;
    for _ in 0..entries {
        w.var_uint("client id")?;
        w.var_uint("clock")?;
    }
    w.end("state vector")
}

/// A cursor over the input; every read is bounds-checked.
struct Walker<'a> {
    buf: &'a [u8],
    /// Invariant: `pos <= buf.len()`.
    pos: usize,
}

impl<'a> Walker<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8> {
        let at = self.pos;
        let b = *self
            .buf
            .get(at)
            .ok_or(UpdateShapeError::Truncated { what, at })?;
        self.pos = at + 1;
        Ok(b)
    }

    /// `n` bytes, borrowed.
    fn take(&mut self, n: usize, what: &'static str, at: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(UpdateShapeError::Truncated { what, at })?;
        let slice = self
            .buf
            .get(self.pos..end)
            .ok_or(UpdateShapeError::Truncated { what, at })?;
        self.pos = end;
        Ok(slice)
    }

    /// A lib0 var-uint (see [`super::lib0`]).
    fn var_uint(&mut self, what: &'static str) -> Result<u64> {
        let at = self.pos;
        read_var_uint(self.buf, &mut self.pos).map_err(|e| match e {
            VarError::Truncated => UpdateShapeError::Truncated {
                what,
                at: self.buf.len(),
            },
            VarError::TooLarge => UpdateShapeError::IntegerTooLarge { what, at },
        })
    }

    /// A lib0 var-int: sign in bit 6 of the first byte, 6 value bits, then
    /// 7 bits a byte; at most 10 bytes and 53 bits of magnitude.
    fn var_int(&mut self, what: &'static str) -> Result<()> {
        let at = self.pos;
        let first = self.byte(what)?;
        let mut value = u64::from(first & 0x3f);
        let mut more = first & 0x80 != 0;
        let mut shift = 6u32;
        for _ in 1..MAX_VAR_BYTES {
            if !more {
                return Ok(());
            }
            let b = self.byte(what)?;
            value = add_bits(value, u64::from(b & 0x7f), shift)
                .ok_or(UpdateShapeError::IntegerTooLarge { what, at })?;
            more = b & 0x80 != 0;
            shift += 7;
        }
        if more {
            return Err(UpdateShapeError::IntegerTooLarge { what, at });
        }
        Ok(())
    }

    /// A count of elements of at least `min_bytes` bytes each, checked
    /// against the bytes that follow it.
    fn count(&mut self, what: &'static str, min_bytes: u64) -> Result<u64> {
        let at = self.pos;
        let count = self.var_uint(what)?;
        let remaining = self.remaining();
        match count.checked_mul(min_bytes) {
            Some(need) if need <= remaining as u64 => Ok(count),
            _ => Err(UpdateShapeError::CountTooLarge {
                what,
                at,
                count,
                remaining,
            }),
        }
    }

    /// A var-uint length and that many bytes.
    fn buf(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let at = self.pos;
        let len = self.var_uint(what)?;
        let len = usize::try_from(len).map_err(|_| UpdateShapeError::Truncated { what, at })?;
        self.take(len, what, at)
    }

    /// A var-uint length and that many bytes of UTF-8.
    fn string(&mut self, what: &'static str) -> Result<&'a str> {
        let at = self.pos;
        let bytes = self.buf(what)?;
        std::str::from_utf8(bytes).map_err(|_| UpdateShapeError::BadUtf8 { what, at })
    }

    fn id(&mut self, what: &'static str) -> Result<()> {
        self.var_uint(what)?;
        self.var_uint(what)?;
        Ok(())
    }

    /// One struct: GC, Skip or Item; returns its length in clock ticks.
    fn block(&mut self) -> Result<u64> {
        let at = self.pos;
        let info = self.byte("struct info")?;
        match info {
            INFO_GC | INFO_SKIP => {
                let what = if info == INFO_GC { "GC" } else { "skip" };
                let len_at = self.pos;
                match self.var_uint(what)? {
                    0 => Err(UpdateShapeError::EmptyBlock { what, at: len_at }),
                    len => Ok(len),
                }
            }
            _ => self.item(info, at),
        }
    }

    /// An item; returns its length as yrs counts it (0 for an empty one,
    /// which yrs drops).
    fn item(&mut self, info: u8, at: usize) -> Result<u64> {
        let content = info & CONTENT_MASK;
        if !(1..=9).contains(&content) {
            return Err(UpdateShapeError::UnknownTag {
                what: "struct info",
                value: info,
                at,
            });
        }
        if info & HAS_ORIGIN != 0 {
            self.id("origin")?;
        }
        if info & HAS_RIGHT_ORIGIN != 0 {
            self.id("right origin")?;
        }
        if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
            if self.var_uint("parent info")? == 1 {
                self.string("parent name")?;
            } else {
                self.id("parent id")?;
            }
            if info & HAS_PARENT_SUB != 0 {
                self.string("parent sub")?;
            }
        }
        let len = self.content(content)?;
        if content == 2 {
            // Walked like the rest (so a bad count is reported as such), then refused.
            return Err(UpdateShapeError::Unsupported {
                what:
                    "JSON content (legacy ContentJSON: yrs cannot read back its own encoding of it)",
                at,
            });
        }
        Ok(len)
    }

    /// Item content; returns its length: UTF-16 units of a string, the
    /// element count of Deleted, JSON and Any, 1 for the rest.
    fn content(&mut self, content: u8) -> Result<u64> {
        let len = match content {
            // Deleted
            1 => self.var_uint("deleted length")?,
            // JSON: yrs reads `len + 1` strings (Yjs reads `len`).
            2 => {
                let at = self.pos;
                let len = self.var_uint("JSON count")?;
                let strings = len.saturating_add(1);
                let remaining = self.remaining();
                if strings > remaining as u64 {
                    return Err(UpdateShapeError::CountTooLarge {
                        what: "JSON count",
                        at,
                        count: len,
                        remaining,
                    });
                }
                for _ in 0..strings {
                    self.string("JSON value")?;
                }
                strings
            }
            // Binary
            3 => {
                self.buf("binary content")?;
                1
            }
            // String
            4 => self.string("string content")?.encode_utf16().count() as u64,
            // Embed (JSON text)
            5 => {
                self.string("embed")?;
                1
            }
            // Format: key, JSON text
            6 => {
                self.string("format key")?;
                self.string("format value")?;
                1
            }
            // Type
            7 => {
                self.type_ref()?;
                1
            }
            // Any
            8 => {
                let n = self.count("Any count", 1)?;
                for _ in 0..n {
                    self.any(1)?;
                }
                n
            }
            // Doc: guid, options
            9 => {
                self.string("subdocument guid")?;
                self.any(1)?;
                1
            }
            // unreachable: `item` checked 1..=9; refuse rather than panic.
            other => {
                return Err(UpdateShapeError::UnknownTag {
                    what: "content ref",
                    value: other,
                    at: self.pos,
                })
            }
        };
        Ok(len)
    }

    /// A type ref as yrs reads it: one byte; XmlElement carries a name.
    fn type_ref(&mut self) -> Result<()> {
        let at = self.pos;
        match self.byte("type ref")? {
            // XmlElement
            3 => self.string("XML element name").map(drop),
            // Array, Map, Text, XmlFragment, XmlHook (no name in yrs),
            // XmlText, SubDoc, Undefined. 7 (WeakLink) needs yrs' `weak`
            // feature, which is off.
            0 | 1 | 2 | 4 | 5 | 6 | 9 | 15 => Ok(()),
            value => Err(UpdateShapeError::UnknownTag {
                what: "type ref",
                value,
                at,
            }),
        }
    }

    /// One `Any` value at nesting depth `depth` (1 for a top-level value).
    fn any(&mut self, depth: usize) -> Result<()> {
        let at = self.pos;
        if depth > MAX_ANY_DEPTH {
            return Err(UpdateShapeError::TooDeep { at });
        }
        match self.byte("Any tag")? {
            // undefined, null, false, true
            127 | 126 | 121 | 120 => {}
            125 => self.var_int("Any integer")?,
            124 => {
                self.take(4, "Any float32", at)?;
            }
            123 => {
                self.take(8, "Any float64", at)?;
            }
            122 => {
                self.take(8, "Any bigint", at)?;
            }
            119 => {
                self.string("Any string")?;
            }
            118 => {
                // One entry: a key (at least its length) and a tag.
                let n = self.count("Any map size", 2)?;
                for _ in 0..n {
                    self.string("Any map key")?;
                    self.any(depth + 1)?;
                }
            }
            117 => {
                let n = self.count("Any array length", 1)?;
                for _ in 0..n {
                    self.any(depth + 1)?;
                }
            }
            116 => {
                self.buf("Any buffer")?;
            }
            value => {
                return Err(UpdateShapeError::UnknownTag {
                    what: "Any tag",
                    value,
                    at,
                })
            }
        }
        Ok(())
    }

    fn delete_set(&mut self) -> Result<()> {
        // One client: id and range count.
        let clients = self.count("delete set client count", 2)?;
        for _ in 0..clients {
            self.var_uint("delete set client")?;
            // One range: clock and length.
            let ranges = self.count("delete set range count", 2)?;
            for _ in 0..ranges {
                // yrs computes `clock + len` in u32.
                let at = self.pos;
                let clock = self.var_uint("delete set clock")?;
                let len = self.var_uint("delete set length")?;
                if clock.saturating_add(len) > u64::from(u32::MAX) {
                    return Err(UpdateShapeError::ClockOverflow { at });
                }
            }
        }
        Ok(())
    }

    fn end(&self, what: &'static str) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(UpdateShapeError::Trailing { what, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Arc;
    use yrs::types::Attrs;
    use yrs::updates::decoder::Decode;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, Doc, GetString, Map, Number, ReadTxn, StateVector, Text, Transact, Update, Xml,
        XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Accepted by the walker and by yrs; no strict prefix is accepted.
    fn accepted(update: &[u8]) {
        assert_eq!(check_update_v1(update), Ok(()), "{update:02x?}");
        Update::decode_v1(update).expect("yrs decodes it");
        for end in 0..update.len() {
            assert!(
                check_update_v1(&update[..end]).is_err(),
                "prefix of {end} bytes accepted: {update:02x?}"
            );
        }
    }

    fn every_any() -> Any {
        let mut map = HashMap::new();
        map.insert("null".to_owned(), Any::Null);
        map.insert("undefined".to_owned(), Any::Undefined);
        map.insert("t".to_owned(), Any::Bool(true));
        map.insert("f".to_owned(), Any::Bool(false));
        map.insert("int".to_owned(), Any::Number(Number::Int(-123_456)));
        map.insert("i32max".to_owned(), Any::Number(Number::Int(0x7fff_ffff)));
        map.insert("f32".to_owned(), Any::Number(Number::Float(0.5)));
        map.insert("f64".to_owned(), Any::Number(Number::Float(0.1)));
        map.insert("safe".to_owned(), Any::Number(Number::Int((1 << 53) - 1)));
        map.insert("big".to_owned(), Any::Number(Number::Int(i64::MIN + 1)));
        map.insert("s".to_owned(), Any::String("héllo ✓".into()));
        map.insert("empty".to_owned(), Any::String("".into()));
        map.insert("buf".to_owned(), Any::Buffer(Arc::from(&[0u8, 1, 255][..])));
        let nested = Any::Array(Arc::from(vec![
            Any::Array(Arc::from(Vec::new())),
            Any::Map(Arc::new(HashMap::new())),
            Any::Number(Number::Int(1)),
        ]));
        map.insert("nested".to_owned(), nested);
        Any::Map(Arc::new(map))
    }

    fn rich_doc() -> Doc {
        let doc = Doc::with_client_id(0x1f_ffff_ffff_ffff);
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello wörld 😀");
            let bold: Attrs = HashMap::from([(Arc::from("bold"), Any::Bool(true))]);
            text.insert_with_attributes(&mut txn, 5, " big", bold.clone());
            text.format(&mut txn, 0, 3, bold);
            text.insert_embed(&mut txn, 2, every_any());
            text.remove_range(&mut txn, 1, 2);
            map.insert(&mut txn, "any", every_any());
            map.insert(&mut txn, "n", 1.5);
            map.insert(&mut txn, "sub", Doc::new());
            array.insert(&mut txn, 0, every_any());
            array.push_back(&mut txn, "x");
            array.push_back(&mut txn, yrs::MapPrelim::from([("k", 1)]));
            array.remove_range(&mut txn, 1, 1);
            let el = xml.insert(&mut txn, 0, XmlElementPrelim::empty("p"));
            el.insert_attribute(&mut txn, "class", "c");
            el.insert(&mut txn, 0, XmlTextPrelim::new("xml text"));
        }
        doc
    }

    #[test]
    fn updates_yrs_writes_are_accepted() {
        let doc = rich_doc();
        let full = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        accepted(&full);
        // An update carrying only deletions.
        let sv = doc.transact().state_vector();
        {
            let text = doc.get_or_insert_text("text");
            let mut txn = doc.transact_mut();
            text.remove_range(&mut txn, 0, 3);
        }
        let delete = doc.transact().encode_state_as_update_v1(&sv);
        accepted(&delete);
        // Another client's edit, merged with both.
        let other = Doc::with_client_id(7);
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&full).unwrap())
            .unwrap();
        let before = other.transact().state_vector();
        {
            let text = other.get_or_insert_text("text");
            let mut txn = other.transact_mut();
            text.insert(&mut txn, 1, "other");
            assert!(!text.get_string(&txn).is_empty());
        }
        let edit = other.transact().encode_state_as_update_v1(&before);
        accepted(&edit);
        let merged = yrs::merge_updates_v1([&full[..], &delete[..], &edit[..]]).unwrap();
        accepted(&merged);
        // The empty update (nothing to send).
        accepted(crate::protocol::yjs::EMPTY_UPDATE);
    }

    #[test]
    fn subdocument_updates_are_accepted() {
        let doc = Doc::with_client_id(3);
        let map = doc.get_or_insert_map("m");
        let mut opts =
            yrs::Options::with_guid_and_client_id("guid-1".into(), yrs::ClientID::new(4));
        opts.collection_id = Some("c".into());
        opts.auto_load = true;
        map.insert(&mut doc.transact_mut(), "sub", Doc::with_options(opts));
        accepted(
            &doc.transact()
                .encode_state_as_update_v1(&StateVector::default()),
        );
    }

    #[test]
    fn recorded_yjs_updates_are_accepted() {
        // tests/it/yjs.rs: Y.Text insert "hi", then a partial step 2.
        accepted(&hex("010101000401017402686900"));
        accepted(&hex("01010101840100016900"));
        // GC, Skip and an XmlHook type (as yrs reads it: no name).
        accepted(&hex("0102050000010a0200"));
        accepted(&hex("01010900070101780500"));
        // JSON content: count 1, and the two strings yrs reads for it.
        // yrs decodes it, but the walk refuses it (json_content_is_refused).
        let json = [1u8, 1, 1, 0, 2, 1, 1, b't', 1, 1, b'1', 1, b'2', 0];
        assert!(Update::decode_v1(&json).is_ok());
        assert!(matches!(
            check_update_v1(&json),
            Err(UpdateShapeError::Unsupported { at: 4, .. })
        ));
        let one_string = [1u8, 1, 1, 0, 2, 1, 1, b't', 1, 1, b'1', 0];
        assert!(check_update_v1(&one_string).is_err());
        assert!(Update::decode_v1(&one_string).is_err());
    }

    /// Found by the `yrs_update` fuzz target (tests/fuzz/libfuzzer): yrs
    /// reads `len + 1` strings of JSON content but writes `len` strings,
    /// so a document holding JSON content encodes to bytes yrs refuses
    /// (the snapshot of such a room could not be restored), and when the
    /// item is pending (its client's earlier clocks are missing) encoding
    /// the document panics inside yrs (an `unwrap` on re-reading the
    /// pending update). The walk refuses JSON content.
    #[test]
    fn repeated_clients_are_refused() {
        // Client 3003 twice: "> " at clock 0, then "> " again at clock 9
        // (right origin 1001:0 both times). Reduced from the fuzz input in
        // tests/fuzz/libfuzzer/regressions/yrs_update.
        let twice = [
            2u8, 1, 187, 23, 0, 68, 233, 7, 0, 2, 62, 32, 1, 187, 23, 9, 68, 233, 7, 0, 2, 62, 32,
            0,
        ];
        assert_eq!(check_update_v1(&twice), Ok(()));
        assert_eq!(
            check_distinct_clients_v1(&twice),
            Err(UpdateShapeError::DuplicateClient {
                client: 3003,
                at: 13
            })
        );
        // Once each is fine, whatever the order.
        let doc = rich_doc();
        let full = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check_distinct_clients_v1(&full), Ok(()));
        // What the refusal prevents: yrs panics applying it to a document
        // that has client 3003 up to clock 2.
        let known = Doc::with_client_id(1001);
        let t = known.get_or_insert_text("t");
        t.insert(&mut known.transact_mut(), 0, "x");
        let other = Doc::with_client_id(3003);
        let ot = other.get_or_insert_text("t");
        let base = known
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        other
            .transact_mut()
            .apply_update(Update::decode_v1(&base).unwrap())
            .unwrap();
        ot.insert(&mut other.transact_mut(), 0, "ab");
        let edit = other
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        known
            .transact_mut()
            .apply_update(Update::decode_v1(&edit).unwrap())
            .unwrap();
        let u = Update::decode_v1(&twice).unwrap();
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            known.transact_mut().apply_update(u)
        }));
        assert!(applied.is_err(), "yrs applied a repeated client");
    }

    #[test]
    fn json_content_is_refused() {
        // Integrated: client 1 clock 0, root "t", count 1 (two strings).
        let integrated = [1u8, 1, 1, 0, 2, 1, 1, b't', 1, 1, b'1', 1, b'2', 0];
        // Pending: client 1 from clock 1, left origin (2^53 - 7, 1),
        // count 0 (one string).
        let pending = [
            1u8, 1, 1, 1, 0x82, 249, 255, 255, 255, 255, 127, 1, 0, 1, b'i', 0,
        ];
        for bytes in [&integrated[..], &pending[..]] {
            assert!(matches!(
                check_update_v1(bytes),
                Err(UpdateShapeError::Unsupported { .. })
            ));
        }
        // What the refusal prevents.
        let doc = Doc::new();
        let u = Update::decode_v1(&integrated).unwrap();
        doc.transact_mut().apply_update(u).unwrap();
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert!(Update::decode_v1(&state).is_err());
        let doc = Doc::new();
        let u = Update::decode_v1(&pending).unwrap();
        doc.transact_mut().apply_update(u).unwrap();
        let encode = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
        }));
        assert!(encode.is_err(), "yrs encoded a pending JSON item");
    }

    #[test]
    fn state_vectors() {
        let doc = rich_doc();
        let sv = doc.transact().state_vector().encode_v1();
        assert_eq!(check_state_vector_v1(&sv), Ok(()));
        assert_eq!(check_state_vector_v1(&[0]), Ok(()));
        for end in 0..sv.len() {
            assert!(check_state_vector_v1(&sv[..end]).is_err());
        }
        assert!(matches!(
            check_state_vector_v1(&[0xff, 0xff, 0xff, 0x7f, 0, 0]),
            Err(UpdateShapeError::CountTooLarge { .. })
        ));
        assert!(matches!(
            check_state_vector_v1(&[0, 0]),
            Err(UpdateShapeError::Trailing { .. })
        ));
    }

    #[test]
    fn huge_counts_are_refused() {
        let huge = [0xff, 0xff, 0xff, 0xff, 0x0f];
        let count = |bytes: &[u8]| {
            matches!(
                check_update_v1(bytes),
                Err(UpdateShapeError::CountTooLarge { .. })
            )
        };
        // Clients.
        assert!(count(&[huge.as_slice(), &[0, 0, 0]].concat()));
        // Structs of a second client.
        assert!(count(&[&[2u8, 0, 1, 0][..], &huge, &[1, 0, 0, 0]].concat()));
        // Any array inside an Any content: 8 = Any, parent root "t".
        assert!(count(
            &[&[1u8, 1, 1, 0, 8, 1, 1, b't'][..], &[117], &huge, &[0, 0]].concat()
        ));
        assert!(count(
            &[&[1u8, 1, 1, 0, 8, 1, 1, b't'][..], &huge, &[0, 0]].concat()
        ));
        // Any map.
        assert!(count(
            &[&[1u8, 1, 1, 0, 8, 1, 1, b't', 1, 118][..], &huge, &[0, 0]].concat()
        ));
        // JSON content.
        assert!(count(
            &[&[1u8, 1, 1, 0, 2, 1, 1, b't'][..], &huge, &[0, 0]].concat()
        ));
        // Delete set clients and ranges.
        assert!(count(&[&[0u8][..], &huge, &[0]].concat()));
        assert!(count(&[&[0u8, 1, 5][..], &huge, &[0]].concat()));
        // A string length past the end.
        assert!(matches!(
            check_update_v1(&[&[1u8, 1, 1, 0, 4, 1][..], &huge, b"t"].concat()),
            Err(UpdateShapeError::Truncated { .. })
        ));
    }

    #[test]
    fn long_or_wide_integers_are_refused() {
        // An 11-byte var-uint (value 0) as the client count.
        let mut eleven = vec![0x80; 10];
        eleven.extend([0, 0]);
        assert!(matches!(
            check_update_v1(&eleven),
            Err(UpdateShapeError::IntegerTooLarge { .. })
        ));
        // A 10-byte zero-padded var-uint is still a number lib0 reads.
        let mut ten = vec![0x80; 9];
        ten.extend([0, 0]);
        assert_eq!(check_update_v1(&ten), Ok(()));
        // 2^53 as a client id.
        let mut wide = vec![1u8, 1];
        wide.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10]);
        wide.extend([0, 0, 1, 0, 0]);
        assert!(matches!(
            check_update_v1(&wide),
            Err(UpdateShapeError::IntegerTooLarge { .. })
        ));
        // A var-int of 11 bytes inside an Any.
        let mut int = vec![1u8, 1, 1, 0, 8, 1, 1, b't', 1, 125];
        int.extend([0xff; 10]);
        int.extend([0, 0]);
        assert!(matches!(
            check_update_v1(&int),
            Err(UpdateShapeError::IntegerTooLarge { .. })
        ));
    }

    #[test]
    fn clocks_past_u32_are_refused() {
        // Found by the fuzz harness: a string of 8 UTF-16 units at clock
        // 2^32 - 1 (yrs' `clock += len` overflows).
        let overflow = hex("0101aef5c600ffffffff0f04010174087064626369646e6200");
        assert!(matches!(
            check_update_v1(&overflow),
            Err(UpdateShapeError::ClockOverflow { .. })
        ));
        // One unit at 2^32 - 2 ends exactly at 2^32 - 1.
        accepted(&hex("010101feffffff0f04010174017800"));
        assert!(check_update_v1(&hex("010101feffffff0f0401017402787800")).is_err());
        // A deleted range ending past 2^32 - 1.
        accepted(&hex("00010101808080800fffffff7f"));
        assert!(matches!(
            check_update_v1(&hex("00010101808080800f8080808001")),
            Err(UpdateShapeError::ClockOverflow { .. })
        ));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let nest = |depth: usize| {
            let mut v = vec![1u8, 1, 1, 0, 8, 1, 1, b't', 1];
            for _ in 1..depth {
                v.extend([117, 1]);
            }
            v.push(126);
            v.push(0);
            v
        };
        assert_eq!(check_update_v1(&nest(MAX_ANY_DEPTH)), Ok(()));
        Update::decode_v1(&nest(MAX_ANY_DEPTH)).unwrap();
        assert!(matches!(
            check_update_v1(&nest(MAX_ANY_DEPTH + 1)),
            Err(UpdateShapeError::TooDeep { .. })
        ));
        assert!(check_update_v1(&nest(100_000)).is_err());
    }

    #[test]
    fn malformed_structs_are_refused() {
        let base = |info: u8, rest: &[u8]| [&[1u8, 1, 1, 0, info][..], rest, &[0]].concat();
        // Unknown content refs, bit 4 (yrs would ignore it, Yjs would fail).
        for info in [0x0b, 0x0f, 0x10, 0x14, 0x20, 0x2a, 0x80] {
            assert!(
                check_update_v1(&base(info, &[1, 1, b't', 1])).is_err(),
                "{info:#x}"
            );
        }
        // Empty GC / skip.
        assert!(matches!(
            check_update_v1(&base(0, &[0])),
            Err(UpdateShapeError::EmptyBlock { .. })
        ));
        // Unknown type ref (7 = weak link, disabled in yrs) and Any tag.
        assert!(check_update_v1(&base(7, &[1, 1, b't', 7])).is_err());
        assert!(check_update_v1(&base(8, &[1, 1, b't', 1, 100])).is_err());
        // Bad UTF-8 in a string.
        assert!(matches!(
            check_update_v1(&base(4, &[1, 1, b't', 1, 0xff])),
            Err(UpdateShapeError::BadUtf8 { .. })
        ));
        // Trailing bytes.
        assert!(matches!(
            check_update_v1(&[0, 0, 0]),
            Err(UpdateShapeError::Trailing { .. })
        ));
        assert!(check_update_v1(&[]).is_err());
    }

    #[test]
    fn mutated_updates_never_panic() {
        let doc = rich_doc();
        let full = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let mut v = full.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % v.len() as u64) as usize;
                v[i] = next() as u8;
            }
            if check_update_v1(&v).is_ok() {
                // What the walker accepts, yrs reads without panicking.
                let _ = Update::decode_v1(&v);
            }
        }
    }
}
