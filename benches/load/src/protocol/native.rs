//! Chorus' native protocol (MessagePack on `/ws`): frames a client sends,
//! and a reader that classifies server frames without decoding them.

use bytes::Bytes;
use chorus::protocol::native::{encode_client, Bin, ClientMessage};
use serde_json::Value;

use super::{Incoming, Synced};

/// `hello`, then `join` for `room`.
pub fn join_frames(room: &str, presence: Option<Value>) -> Vec<Vec<u8>> {
    vec![
        encode_client(&ClientMessage::Hello {
            v: 1,
            token: None,
            client: Some("chorus-load".into()),
            rid: None,
        }),
        encode_client(&ClientMessage::Join {
            room: room.into(),
            sv: None,
            presence,
            rid: Some(1),
        }),
    ]
}

/// An `update` carrying one Yjs v1 update.
pub fn update_frame(room: &str, data: Vec<u8>) -> Vec<u8> {
    encode_client(&ClientMessage::Update {
        room: room.into(),
        data: Bin(data),
        rid: None,
    })
}

/// A `cursor` with anchor and head at the encoded relative position `pos`.
pub fn cursor_frame(room: &str, pos: &[u8]) -> Vec<u8> {
    encode_client(&ClientMessage::Cursor {
        room: room.into(),
        anchor: Some(Bin(pos.to_vec())),
        head: Some(Bin(pos.to_vec())),
        rid: None,
    })
}

/// A native server message, read field by field without decoding the
/// rest: `synced` (its `sv`), `update` (its `data`) and `error` matter.
pub fn classify(frame: &Bytes) -> Incoming {
    let mut r = Pack { b: frame, i: 0 };
    let Some(n) = r.map_len() else {
        return Incoming::Other;
    };
    let (mut t, mut bin, mut message) = (None, None, None);
    for _ in 0..n {
        let Some(key) = r.str() else {
            return Incoming::Other;
        };
        let ok = match key {
            b"t" => r.str().map(|v| t = Some(v)),
            b"sv" | b"data" => r.bin().map(|v| bin = Some(v)),
            b"message" => r.str().map(|v| message = Some(v)),
            _ => r.skip(),
        };
        if ok.is_none() {
            return Incoming::Other;
        }
    }
    match (t, bin) {
        (Some(b"synced"), Some(sv)) => Incoming::Synced(Synced::Sv(frame.slice_ref(sv))),
        (Some(b"update"), Some(data)) => Incoming::Update(frame.slice_ref(data)),
        (Some(b"error"), _) => {
            Incoming::Error(String::from_utf8_lossy(message.unwrap_or_default()).into_owned())
        }
        _ => Incoming::Other,
    }
}

/// True when a message starting with `head` is `synced` (only its type is
/// read: the rest may be cut off).
pub fn starts_synced(head: &[u8]) -> bool {
    let mut p = Pack { b: head, i: 0 };
    p.map_len().is_some() && p.str() == Some(b"t") && p.str() == Some(b"synced")
}

/// A MessagePack reader that borrows strings and binaries.
struct Pack<'a> {
    /// The message.
    b: &'a [u8],
    /// The read position.
    i: usize,
}

impl<'a> Pack<'a> {
    /// One byte.
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    /// A big-endian unsigned integer of `n` bytes.
    fn be(&mut self, n: usize) -> Option<usize> {
        let bytes = self.take(n)?;
        Some(bytes.iter().fold(0usize, |acc, b| (acc << 8) | *b as usize))
    }
    /// The next `n` bytes.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let out = self.b.get(self.i..self.i.checked_add(n)?)?;
        self.i += n;
        Some(out)
    }
    /// The length of a map.
    fn map_len(&mut self) -> Option<usize> {
        match self.u8()? {
            m @ 0x80..=0x8f => Some((m & 0x0f) as usize),
            0xde => self.be(2),
            0xdf => self.be(4),
            _ => None,
        }
    }
    /// A string, as bytes.
    fn str(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            m @ 0xa0..=0xbf => (m & 0x1f) as usize,
            0xd9 => self.be(1)?,
            0xda => self.be(2)?,
            0xdb => self.be(4)?,
            _ => return None,
        };
        self.take(n)
    }
    /// A binary.
    fn bin(&mut self) -> Option<&'a [u8]> {
        let n = match self.u8()? {
            0xc4 => self.be(1)?,
            0xc5 => self.be(2)?,
            0xc6 => self.be(4)?,
            _ => return None,
        };
        self.take(n)
    }
    /// Skips one value of any type.
    fn skip(&mut self) -> Option<()> {
        let (fixed, items) = match self.u8()? {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            m @ 0x80..=0x8f => (0, 2 * (m & 0x0f) as usize),
            m @ 0x90..=0x9f => (0, (m & 0x0f) as usize),
            m @ 0xa0..=0xbf => ((m & 0x1f) as usize, 0),
            0xc4 | 0xd9 => (self.be(1)?, 0),
            0xc5 | 0xda => (self.be(2)?, 0),
            0xc6 | 0xdb => (self.be(4)?, 0),
            0xc7 => (self.be(1)? + 1, 0),
            0xc8 => (self.be(2)? + 1, 0),
            0xc9 => (self.be(4)? + 1, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, self.be(2)?),
            0xdd => (0, self.be(4)?),
            0xde => (0, 2 * self.be(2)?),
            0xdf => (0, 2 * self.be(4)?),
            0xc1 => return None,
        };
        self.take(fixed)?;
        for _ in 0..items {
            self.skip()?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chorus::protocol::native::{encode_server, ServerMessage};

    #[test]
    fn native_frames_are_classified_without_decoding() {
        let frame = |m: &ServerMessage| Bytes::from(encode_server(m));
        let update = frame(&ServerMessage::Update {
            room: "r".into(),
            data: Bin(vec![1, 2, 3]),
            origin: Some("n-1".into()),
        });
        assert!(matches!(classify(&update), Incoming::Update(d) if d[..] == [1, 2, 3]));
        let synced = frame(&ServerMessage::Synced {
            room: "r".into(),
            diff: Bin(vec![0; 300]),
            sv: Bin(vec![7]),
            rid: Some(1),
        });
        assert!(matches!(classify(&synced), Incoming::Synced(Synced::Sv(sv)) if sv[..] == [7]));
        let error = frame(&ServerMessage::Error {
            code: chorus::protocol::ErrorCode::Forbidden,
            message: "no".into(),
            rid: None,
            room: None,
        });
        assert!(matches!(classify(&error), Incoming::Error(m) if m == "no"));
        let ack = frame(&ServerMessage::Ack {
            room: "r".into(),
            rid: 3,
        });
        assert!(matches!(classify(&ack), Incoming::Other));
    }
}
