//! The y-protocols sync logic of one client on one document, sans I/O:
//! y-protocols frames (or messages already decoded) in, [`Action`]s for the
//! room out, or a [`Refusal`] that says how the client is turned away. No
//! actor, socket, room or session is involved, so every branch is unit
//! tested here; `session::yjs` feeds it the frames of a `/yjs/{room}`
//! connection and turns its actions into room messages.
//!
//! A [`DocSync`] holds only what one client may do on one document (its
//! [`Rights`] there and the [`SyncLimits`]): nothing is per socket, so a
//! protocol that multiplexes documents on one socket keeps one `DocSync`
//! per document and feeds each its own messages ([`DocSync::receive`]).
//!
//! What each message becomes:
//! - sync step 1 → [`Action::SyncStep1`]: the room answers with step 2;
//! - sync step 2 / update → [`Action::Update`]; an empty update (`[0, 0]`,
//!   the step 2 of a client with nothing new) is skipped; a non-empty one
//!   without the write right is [`Refusal::ReadOnly`] (auth "permission
//!   denied", then close 4403);
//! - awareness → [`Action::Awareness`] with each state parsed; ignored
//!   without the presence right (a stock client always sends its own state);
//!   states over `max_presence_bytes` are dropped; a state that is not JSON
//!   is [`Refusal::Malformed`] (close 4400);
//! - query awareness → [`Action::QueryAwareness`];
//! - auth → ignored (clients do not send it).
//!
//! A frame that is not y-protocols is [`Refusal::Malformed`] as a whole,
//! before any of its messages is acted on. Messages of a well-formed frame
//! are taken in order: the actions of those before a refusal stand (the
//! room has been told), the rest of the frame is not read.

use bytes::Bytes;
use serde_json::Value;
use yrs::StateVector;

use crate::auth::Rights;
use crate::config::Limits;
use crate::protocol::close;
use crate::protocol::yjs::{self, AwarenessEntry, DecodeError, YjsMessage};

/// The limits the sync logic enforces per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncLimits {
    /// Largest awareness state (its JSON text) passed on; larger ones are
    /// dropped.
    pub max_presence_bytes: usize,
}

impl SyncLimits {
    /// The sync limits of the server's configured `limits`.
    pub fn new(limits: &Limits) -> Self {
        SyncLimits {
            max_presence_bytes: limits.max_presence_bytes,
        }
    }
}

/// What the room is asked to do for one inbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answer with sync step 2: what the client lacks, given its state vector.
    SyncStep1(StateVector),
    /// Apply, store and fan out this non-empty Yjs v1 update.
    Update(Bytes),
    /// Merge these awareness states, each with its parsed state (`None`
    /// when the client is gone); each is within `max_presence_bytes`, and
    /// the list is never empty.
    Awareness(Vec<(AwarenessEntry, Option<Value>)>),
    /// Send every awareness state.
    QueryAwareness,
}

/// Why a client is turned away. A refusal ends the connection (for a
/// protocol that multiplexes documents, at least this document's part).
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Not valid y-protocols: close with 4400, the text says why.
    Malformed(String),
    /// A non-empty update without the write right: auth "permission
    /// denied", then close with 4403.
    ReadOnly,
    /// Permission denied for a reason decided outside the sync logic (no
    /// token, a room outside the grants): auth "permission denied" with
    /// `reason`, then close with `code`.
    Denied {
        /// The close code.
        code: u16,
        /// The reason, for the auth message and the close frame.
        reason: String,
    },
}

impl Refusal {
    /// The WebSocket close code.
    pub fn code(&self) -> u16 {
        match self {
            Refusal::Malformed(_) => close::YJS_BAD_MESSAGE,
            Refusal::ReadOnly => close::YJS_FORBIDDEN,
            Refusal::Denied { code, .. } => *code,
        }
    }

    /// The reason, for the close frame.
    pub fn reason(&self) -> &str {
        match self {
            Refusal::Malformed(why) => why,
            Refusal::ReadOnly => "read-only: this token may not write the document",
            Refusal::Denied { reason, .. } => reason,
        }
    }

    /// The y-protocols message to send before closing: auth "permission
    /// denied" for a denial, nothing for a malformed frame.
    pub fn denial(&self) -> Option<Vec<u8>> {
        match self {
            Refusal::Malformed(_) => None,
            Refusal::ReadOnly | Refusal::Denied { .. } => Some(yjs::auth_denied(self.reason())),
        }
    }
}

impl From<DecodeError> for Refusal {
    fn from(e: DecodeError) -> Self {
        match e {
            // No stock client packs that many messages in a frame: refused
            // for good, like a frame over `max_frame_bytes`.
            DecodeError::TooManyMessages(_) => Refusal::Denied {
                code: close::YJS_TOO_LARGE,
                reason: e.to_string(),
            },
            e => Refusal::Malformed(e.to_string()),
        }
    }
}

/// What a batch of messages yields: the room's actions in order, and the
/// refusal, if any, that stopped the batch after them.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Actions for the room, in the order of the messages.
    pub actions: Vec<Action>,
    /// Set when a message was refused; no later message was read.
    pub refusal: Option<Refusal>,
}

/// Decodes one inbound frame whole ([`yjs::decode_frame`]); a frame that
/// is not y-protocols is [`Refusal::Malformed`].
pub fn decode(frame: &[u8]) -> Result<Vec<YjsMessage>, Refusal> {
    Ok(yjs::decode_frame(frame)?)
}

/// [`decode`], refusing a frame of more than `max` messages (close 4413)
/// before the rest of it is read.
pub fn decode_at_most(frame: &[u8], max: usize) -> Result<Vec<YjsMessage>, Refusal> {
    Ok(yjs::decode_frame_at_most(frame, max)?)
}

/// One client's sync with one document: what it may do there, and the
/// limits its messages are held to.
#[derive(Debug, Clone)]
pub struct DocSync {
    /// The client's rights on this document, fixed when it joined; checked
    /// on every message.
    rights: Rights,
    /// Per-message limits.
    limits: SyncLimits,
}

impl DocSync {
    /// The sync of a client with `rights` on the document, under `limits`.
    pub fn new(rights: Rights, limits: SyncLimits) -> Self {
        DocSync { rights, limits }
    }

    /// The client's rights on this document.
    pub fn rights(&self) -> Rights {
        self.rights
    }

    /// Decodes one frame and takes its messages ([`DocSync::receive`]).
    pub fn receive_frame(&self, frame: &[u8]) -> Outcome {
        match decode(frame) {
            Ok(messages) => self.receive(messages),
            Err(refusal) => Outcome {
                actions: Vec::new(),
                refusal: Some(refusal),
            },
        }
    }

    /// Takes decoded messages in order, up to the first refusal.
    pub fn receive(&self, messages: impl IntoIterator<Item = YjsMessage>) -> Outcome {
        let mut outcome = Outcome::default();
        for msg in messages {
            match self.take(msg) {
                Ok(Some(action)) => outcome.actions.push(action),
                Ok(None) => {}
                Err(refusal) => {
                    outcome.refusal = Some(refusal);
                    break;
                }
            }
        }
        outcome
    }

    /// One message: an action, nothing (skipped or ignored), or a refusal.
    /// A protocol that answers each message by itself (Hocuspocus acks
    /// every update, even a skipped empty one) takes them one by one.
    pub fn take(&self, msg: YjsMessage) -> Result<Option<Action>, Refusal> {
        Ok(match msg {
            YjsMessage::SyncStep1(sv) => Some(Action::SyncStep1(sv)),
            YjsMessage::SyncStep2(update) | YjsMessage::Update(update) => {
                if update == yjs::EMPTY_UPDATE {
                    None
                } else if !self.rights.can_write() {
                    return Err(Refusal::ReadOnly);
                } else {
                    Some(Action::Update(Bytes::from(update)))
                }
            }
            YjsMessage::Awareness(_) if !self.rights.can_presence() => {
                tracing::debug!("awareness without the presence right ignored");
                None
            }
            YjsMessage::Awareness(entries) => self.awareness(entries)?,
            YjsMessage::QueryAwareness => Some(Action::QueryAwareness),
            YjsMessage::Auth(_) => {
                tracing::debug!("ignoring auth message from a client");
                None
            }
        })
    }

    /// Awareness entries within the size limit, with their states parsed;
    /// `None` when none is left.
    fn awareness(&self, entries: Vec<AwarenessEntry>) -> Result<Option<Action>, Refusal> {
        let max = self.limits.max_presence_bytes;
        let mut parsed = Vec::with_capacity(entries.len());
        for entry in entries {
            if entry.json.len() > max {
                tracing::debug!(
                    client = entry.client,
                    "awareness state over max_presence_bytes dropped"
                );
                continue;
            }
            let state = entry.state()?;
            parsed.push((entry, state));
        }
        Ok((!parsed.is_empty()).then_some(Action::Awareness(parsed)))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use yrs::{Doc, GetString, ReadTxn, Text, Transact};

    use super::*;

    const LIMITS: SyncLimits = SyncLimits {
        max_presence_bytes: 64,
    };

    fn sync(rights: Rights) -> DocSync {
        DocSync::new(rights, LIMITS)
    }

    /// A non-empty Yjs v1 update inserting `text`.
    fn update(text: &str) -> Vec<u8> {
        let doc = Doc::with_client_id(7);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, 0, text);
        assert_eq!(t.get_string(&txn), text);
        txn.encode_update_v1()
    }

    fn frame(messages: &[Vec<u8>]) -> Vec<u8> {
        messages.concat()
    }

    #[test]
    fn step1_asks_the_room_for_step2() {
        let doc = Doc::with_client_id(3);
        let t = doc.get_or_insert_text("t");
        t.insert(&mut doc.transact_mut(), 0, "hello");
        let sv = doc.transact().state_vector();
        assert!(!sv.is_empty());
        let out = sync(Rights::Read).receive_frame(&yjs::sync_step1(&sv));
        assert_eq!(out.actions, vec![Action::SyncStep1(sv)]);
        assert_eq!(out.refusal, None);
    }

    #[test]
    fn step2_and_update_are_applied_and_empty_ones_skipped() {
        let (a, b) = (update("a"), update("b"));
        let out = sync(Rights::Write).receive_frame(&frame(&[
            yjs::sync_step2(a.clone()),
            yjs::sync_step2(yjs::EMPTY_UPDATE.to_vec()),
            yjs::sync_update(yjs::EMPTY_UPDATE.to_vec()),
            yjs::sync_update(b.clone()),
        ]));
        assert_eq!(
            out.actions,
            vec![
                Action::Update(Bytes::from(a)),
                Action::Update(Bytes::from(b))
            ]
        );
        assert_eq!(out.refusal, None);
    }

    #[test]
    fn read_only_write_is_denied_with_4403_after_earlier_actions() {
        for rights in [Rights::Read, Rights::Presence] {
            let out = sync(rights).receive_frame(&frame(&[
                yjs::query_awareness(),
                // An empty step 2 writes nothing: allowed read-only.
                yjs::sync_step2(yjs::EMPTY_UPDATE.to_vec()),
                yjs::sync_update(update("x")),
                yjs::query_awareness(),
            ]));
            assert_eq!(out.actions, vec![Action::QueryAwareness], "{rights:?}");
            let refusal = out.refusal.expect("a refusal");
            assert_eq!(refusal, Refusal::ReadOnly);
            assert_eq!(refusal.code(), close::YJS_FORBIDDEN);
            let denial = refusal.denial().expect("an auth message");
            assert_eq!(
                yjs::decode_frame(&denial),
                Ok(vec![YjsMessage::Auth(Some(refusal.reason().to_owned()))])
            );
            assert!(refusal.reason().contains("read-only"));
        }
    }

    #[test]
    fn awareness_is_parsed_or_ignored_without_the_presence_right() {
        let msg = yjs::awareness([(1, 2, r#"{"name":"ann"}"#), (5, 1, "null")]);
        let out = sync(Rights::Presence).receive_frame(&msg);
        let Some(Action::Awareness(entries)) = out.actions.first() else {
            panic!("expected awareness, got {out:?}");
        };
        let got: Vec<_> = entries
            .iter()
            .map(|(e, state)| (e.client, e.clock, state.clone()))
            .collect();
        assert_eq!(
            got,
            vec![(1, 2, Some(json!({"name": "ann"}))), (5, 1, None)]
        );
        assert_eq!(out.refusal, None);

        let out = sync(Rights::Read).receive_frame(&frame(&[msg, yjs::query_awareness()]));
        assert_eq!(out.actions, vec![Action::QueryAwareness]);
        assert_eq!(out.refusal, None);
    }

    #[test]
    fn oversize_awareness_states_are_dropped() {
        let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(64));
        let out = sync(Rights::Write).receive_frame(&yjs::awareness([(1, 1, big.as_str())]));
        assert_eq!(out, Outcome::default());

        let out = sync(Rights::Write)
            .receive_frame(&yjs::awareness([(1, 1, big.as_str()), (2, 1, "{}")]));
        let Some(Action::Awareness(entries)) = out.actions.first() else {
            panic!("expected awareness, got {out:?}");
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.client, 2);
    }

    #[test]
    fn awareness_that_is_not_json_closes_4400() {
        let out = sync(Rights::Write).receive_frame(&frame(&[
            yjs::query_awareness(),
            yjs::awareness([(1, 1, "{}"), (2, 1, "{not json")]),
            yjs::query_awareness(),
        ]));
        // The good entry before the bad one is not passed on either.
        assert_eq!(out.actions, vec![Action::QueryAwareness]);
        let refusal = out.refusal.expect("a refusal");
        assert!(matches!(refusal, Refusal::Malformed(_)));
        assert_eq!(refusal.code(), close::YJS_BAD_MESSAGE);
        assert_eq!(refusal.denial(), None);
    }

    #[test]
    fn query_awareness_asks_for_every_state() {
        let out = sync(Rights::Read).receive_frame(&yjs::query_awareness());
        assert_eq!(out.actions, vec![Action::QueryAwareness]);
    }

    #[test]
    fn auth_from_a_client_is_ignored() {
        let out = sync(Rights::Write).receive_frame(&yjs::auth_denied("let me in"));
        assert_eq!(out, Outcome::default());
    }

    #[test]
    fn garbage_closes_4400_before_any_action() {
        for bad in [
            vec![],
            vec![0x80],
            vec![9],
            frame(&[yjs::query_awareness(), vec![0, 7, 0]]),
        ] {
            let out = sync(Rights::Write).receive_frame(&bad);
            assert!(out.actions.is_empty(), "{bad:?}");
            let refusal = out.refusal.expect("a refusal");
            assert_eq!(refusal.code(), close::YJS_BAD_MESSAGE, "{bad:?}");
            assert_eq!(refusal.denial(), None);
            assert_eq!(decode(&bad), Err(refusal));
        }
    }

    #[test]
    fn denied_carries_its_code_and_reason() {
        let refusal = Refusal::Denied {
            code: close::UNAUTHORIZED,
            reason: "a token is required".into(),
        };
        assert_eq!(refusal.code(), close::UNAUTHORIZED);
        assert_eq!(
            refusal.denial(),
            Some(yjs::auth_denied("a token is required"))
        );
    }

    #[test]
    fn limits_come_from_the_config() {
        let mut config = crate::config::Config::default();
        config.limits.max_presence_bytes = 99;
        assert_eq!(SyncLimits::new(&config.limits).max_presence_bytes, 99);
    }
}
