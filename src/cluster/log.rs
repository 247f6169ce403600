//! The shared log's frames on a room's Redis channel.
//!
//! In cluster mode documents live in the store that every node shares
//! (PostgreSQL): an update is appended there first, and its position (the
//! per-room `seq` decided by the committing transaction) is published only
//! once it is durable, so a published entry is always in the log. The
//! `generation` names the log's incarnation (it changes when the room is
//! deleted). Frames are text-prefixed so that they never look like the
//! bridge's MessagePack envelopes: `L<generation> <seq> <node> <update>`
//! for an entry, `D<generation> <node>` for a deletion.

use bytes::Bytes;

/// What a room channel carries besides the bridge's envelopes: the frames
/// the store's scripts publish.
#[derive(Debug, Clone, PartialEq)]
pub enum LogFrame {
    /// Entry `seq` of the log of generation `epoch`, written by `node`.
    Entry {
        /// Log generation.
        epoch: String,
        /// Position in the log, from 1.
        seq: u64,
        /// Node that appended it.
        node: String,
        /// The Yjs v1 update.
        update: Bytes,
    },
    /// `node` deleted the room; its log starts again with `epoch`.
    Deleted {
        /// The new log generation.
        epoch: String,
        /// Node that deleted it.
        node: String,
    },
}

impl LogFrame {
    /// The frame's bytes, as [`LogFrame::parse`] reads them.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            LogFrame::Entry {
                epoch,
                seq,
                node,
                update,
            } => {
                let mut out = format!("L{epoch} {seq} {node} ").into_bytes();
                out.extend_from_slice(update);
                out
            }
            LogFrame::Deleted { epoch, node } => format!("D{epoch} {node}").into_bytes(),
        }
    }

    /// Parses a frame (`L<epoch> <seq> <node> <update>` or `D<epoch>
    /// <node>`); `None` for anything else (the bridge's envelopes start
    /// with a MessagePack map byte instead).
    pub fn parse(payload: &[u8]) -> Option<LogFrame> {
        match payload.split_first()? {
            (b'L', rest) => {
                let mut parts = rest.splitn(4, |b| *b == b' ');
                let epoch = std::str::from_utf8(parts.next()?).ok()?;
                let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
                let node = std::str::from_utf8(parts.next()?).ok()?;
                let update = parts.next()?;
                Some(LogFrame::Entry {
                    epoch: epoch.to_owned(),
                    seq,
                    node: node.to_owned(),
                    update: Bytes::copy_from_slice(update),
                })
            }
            (b'D', rest) => {
                let (epoch, node) = std::str::from_utf8(rest).ok()?.split_once(' ')?;
                Some(LogFrame::Deleted {
                    epoch: epoch.to_owned(),
                    node: node.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// The node that wrote the frame.
    pub fn node(&self) -> &str {
        match self {
            LogFrame::Entry { node, .. } | LogFrame::Deleted { node, .. } => node,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogFrame;

    #[test]
    fn log_frames() {
        let frame = LogFrame::parse(b"Labc 42 node1 \x01 \x00binary").unwrap();
        assert_eq!(
            frame,
            LogFrame::Entry {
                epoch: "abc".into(),
                seq: 42,
                node: "node1".into(),
                update: bytes::Bytes::from_static(b"\x01 \x00binary"),
            }
        );
        assert_eq!(frame.node(), "node1");
        assert_eq!(LogFrame::parse(&frame.encode()), Some(frame.clone()));
        let deleted = LogFrame::Deleted {
            epoch: "new".into(),
            node: "node2".into(),
        };
        assert_eq!(LogFrame::parse(b"Dnew node2"), Some(deleted.clone()));
        assert_eq!(deleted.encode(), b"Dnew node2");
        for bad in [
            &b""[..],
            b"L",
            b"Labc x node u",
            b"Labc 1 node",
            b"\x85rest",
            b"Dnew",
            b"D\xff x",
        ] {
            assert_eq!(LogFrame::parse(bad), None, "{bad:?}");
        }
    }
}
