//! Yjs v1 updates read without decoding them: which clock ranges an update
//! inserts, from its struct headers.

use super::yjs::Reader;

/// Calls `each(client, start, end)` for every clock range of items a Yjs v1
/// update inserts, reading the struct headers only. `None` for content it
/// does not walk (`Any`, sub-documents) or a malformed update: the caller
/// then decodes it with yrs.
pub fn inserted_ranges(update: &[u8], mut each: impl FnMut(u64, u32, u32)) -> Option<()> {
    let mut r = Reader { b: update, i: 0 };
    for _ in 0..r.var()? {
        let structs = r.var()?;
        let client = r.var()?;
        let start = r.var()? as u32;
        let mut clock = start;
        for _ in 0..structs {
            let info = *r.b.get(r.i)?;
            r.i += 1;
            let len = match info & 0x1f {
                // GC or skip: never in updates this tool times.
                0 | 10 => return None,
                content => {
                    if info & 0x80 != 0 {
                        r.var()?;
                        r.var()?;
                    }
                    if info & 0x40 != 0 {
                        r.var()?;
                        r.var()?;
                    }
                    if info & 0xc0 == 0 {
                        if r.var()? == 1 {
                            r.bytes()?;
                        } else {
                            r.var()?;
                            r.var()?;
                        }
                        if info & 0x20 != 0 {
                            r.bytes()?;
                        }
                    }
                    match content {
                        1 => r.var()? as u32,
                        2 => {
                            let n = r.var()?;
                            for _ in 0..n {
                                r.bytes()?;
                            }
                            n as u32
                        }
                        3 | 5 => {
                            r.bytes()?;
                            1
                        }
                        4 => {
                            let s = std::str::from_utf8(r.bytes()?).ok()?;
                            s.encode_utf16().count() as u32
                        }
                        6 => {
                            r.bytes()?;
                            r.bytes()?;
                            1
                        }
                        7 => {
                            let type_ref = r.var()?;
                            if type_ref == 3 || type_ref == 5 {
                                r.bytes()?;
                            }
                            1
                        }
                        _ => return None,
                    }
                }
            };
            clock += len;
        }
        if clock > start {
            each(client, start, clock);
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Writer, WRITER_BASE};
    use yrs::updates::decoder::Decode;
    use yrs::Update;

    fn ranges_by_yrs(update: &[u8]) -> Vec<(u64, u32, u32)> {
        let mut out = Vec::new();
        let update = Update::decode_v1(update).expect("an update");
        for (client, ranges) in update.insertions(true).iter() {
            for r in ranges.iter() {
                out.push((client.get(), r.start, r.end));
            }
        }
        out.sort_unstable();
        out
    }

    /// The header walk finds the same clock ranges as yrs, for single and
    /// merged updates of several writers, with multi-byte characters.
    #[test]
    fn inserted_ranges_match_yrs() {
        let writers: Vec<Writer> = (0..3).map(|w| Writer::new(WRITER_BASE + w)).collect();
        let mut all = Vec::new();
        for round in 0..4 {
            for (w, writer) in writers.iter().enumerate() {
                let text = if (round + w) % 2 == 0 {
                    "x"
                } else {
                    "é😀ab"
                };
                all.push(writer.write(text));
            }
        }
        let merged = yrs::merge_updates_v1(all.iter().map(|u| u.as_slice())).expect("merge");
        for update in all.iter().chain([&merged]) {
            let mut got = Vec::new();
            inserted_ranges(update, |c, s, e| got.push((c, s, e))).expect("walked");
            got.sort_unstable();
            assert_eq!(got, ranges_by_yrs(update));
        }
    }
}
