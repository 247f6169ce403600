//! What a session makes of the items its WebSocket stream yields: fragments
//! reassembled up to `max_frame_bytes`, framing errors and oversize
//! messages named, control frames separated. Both session kinds (native and
//! `/yjs`) read their input through one [`Intake`]; only what they do with
//! each [`Inbound`] differs.

use actix_http::ws::Item;
use actix_web_actors::ws;
use bytes::{Bytes, BytesMut};

/// One thing a session has to act on.
#[derive(Debug)]
pub enum Inbound {
    /// A whole binary message.
    Binary(Bytes),
    /// A whole text message, by its length (no protocol here uses text).
    Text(usize),
    /// A ping to answer with a pong carrying this payload.
    Ping(Bytes),
    /// The client closed the connection.
    Close(Option<ws::CloseReason>),
    /// Nothing to do: a pong, a no-op, or a fragment of a larger message.
    Nothing,
    /// A message (all its fragments together) over `max_frame_bytes`.
    TooBig,
    /// Invalid WebSocket framing.
    Invalid(String),
}

/// Reassembles fragmented messages for one connection.
pub struct Intake {
    max: usize,
    /// A fragmented message being reassembled, and whether it is text.
    partial: Option<(BytesMut, bool)>,
}

impl Intake {
    /// An intake that refuses messages over `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        Intake {
            max: max_frame_bytes,
            partial: None,
        }
    }

    /// Takes one item of the WebSocket stream.
    pub fn feed(&mut self, item: Result<ws::Message, ws::ProtocolError>) -> Inbound {
        let msg = match item {
            Ok(msg) => msg,
            Err(ws::ProtocolError::Overflow) => return Inbound::TooBig,
            Err(e) => return Inbound::Invalid(e.to_string()),
        };
        match msg {
            ws::Message::Binary(bytes) => Inbound::Binary(bytes),
            ws::Message::Text(text) => Inbound::Text(text.len()),
            ws::Message::Continuation(item) => self.fragment(item),
            ws::Message::Ping(payload) => Inbound::Ping(payload),
            ws::Message::Pong(_) | ws::Message::Nop => Inbound::Nothing,
            ws::Message::Close(reason) => Inbound::Close(reason),
        }
    }

    fn fragment(&mut self, item: Item) -> Inbound {
        let (chunk, last) = match item {
            Item::FirstBinary(b) => {
                self.partial = Some((BytesMut::new(), false));
                (b, false)
            }
            Item::FirstText(b) => {
                self.partial = Some((BytesMut::new(), true));
                (b, false)
            }
            Item::Continue(b) => (b, false),
            Item::Last(b) => (b, true),
        };
        let Some((buf, _)) = self.partial.as_mut() else {
            return Inbound::Invalid("continuation without a first frame".into());
        };
        if buf.len() + chunk.len() > self.max {
            self.partial = None;
            return Inbound::TooBig;
        }
        buf.extend_from_slice(&chunk);
        if !last {
            return Inbound::Nothing;
        }
        match self.partial.take() {
            Some((whole, true)) => Inbound::Text(whole.len()),
            Some((whole, false)) => Inbound::Binary(whole.freeze()),
            None => Inbound::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cont(item: Item) -> Result<ws::Message, ws::ProtocolError> {
        Ok(ws::Message::Continuation(item))
    }

    #[test]
    fn fragments_are_reassembled() {
        let mut intake = Intake::new(10);
        assert!(matches!(
            intake.feed(cont(Item::FirstBinary(Bytes::from_static(b"ab")))),
            Inbound::Nothing
        ));
        assert!(matches!(
            intake.feed(cont(Item::Continue(Bytes::from_static(b"cd")))),
            Inbound::Nothing
        ));
        match intake.feed(cont(Item::Last(Bytes::from_static(b"e")))) {
            Inbound::Binary(b) => assert_eq!(&b[..], b"abcde"),
            other => panic!("expected a binary message, got {other:?}"),
        }
    }

    #[test]
    fn fragmented_text_stays_text() {
        let mut intake = Intake::new(10);
        intake.feed(cont(Item::FirstText(Bytes::from_static(b"hi"))));
        assert!(matches!(
            intake.feed(cont(Item::Last(Bytes::from_static(b"!")))),
            Inbound::Text(3)
        ));
    }

    #[test]
    fn oversize_fragments_and_orphans_are_refused() {
        let mut intake = Intake::new(4);
        intake.feed(cont(Item::FirstBinary(Bytes::from_static(b"abc"))));
        assert!(matches!(
            intake.feed(cont(Item::Continue(Bytes::from_static(b"de")))),
            Inbound::TooBig
        ));
        assert!(matches!(
            intake.feed(cont(Item::Last(Bytes::from_static(b"x")))),
            Inbound::Invalid(_)
        ));
        assert!(matches!(
            intake.feed(Err(ws::ProtocolError::Overflow)),
            Inbound::TooBig
        ));
    }
}
