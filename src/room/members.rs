//! The room's members and delivery to them: one frame offered to many
//! outboxes, errors and refusals to one, and who is owed a resync because
//! frames were dropped for them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use yrs::StateVector;

use super::messages::{MemberLink, Protocol};
use crate::ids::{MemberId, RoomId};
use crate::metrics::Metrics;
use crate::outbox::{close_reason, Class, Flight, Frame, Offer, Outbound, Outbox};
use crate::protocol::native::{encode_server, ServerMessage};
use crate::protocol::{hocuspocus, yjs, ErrorCode};

/// A member as the room tracks it.
struct Member {
    link: MemberLink,
    /// Set when deltas were dropped: the room's state vector before the
    /// first dropped delta. The resync sends the diff against it.
    /// Boxed: rarely set, and every slot of the member map pays for the
    /// inline size.
    resync_from: Option<Box<StateVector>>,
    /// Set when presence frames were dropped: the resync sends a snapshot.
    presence_stale: bool,
    /// The room's state vector when this member was last asked for missing
    /// updates (`ask_for_missing`). Boxed: rarely set.
    asked_at: Option<Box<StateVector>>,
}

/// What a lagging member is owed once its backlog drains.
pub(super) struct Owed {
    /// The member.
    pub link: MemberLink,
    /// Deltas were dropped from this state vector on: send the diff.
    pub diff_from: Option<StateVector>,
    /// Presence frames were dropped: send a fresh snapshot.
    pub presence: bool,
}

/// Every member of one room.
pub(super) struct Members {
    room: RoomId,
    /// `varString(room)`: what every Hocuspocus frame of this room starts with.
    hocus_prefix: Vec<u8>,
    map: HashMap<MemberId, Member>,
    metrics: Arc<Metrics>,
}

impl Members {
    /// No members yet.
    pub(super) fn new(room: RoomId, metrics: Arc<Metrics>) -> Self {
        Members {
            hocus_prefix: hocuspocus::name_prefix(&room),
            room,
            map: HashMap::new(),
            metrics,
        }
    }

    /// Number of members.
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// True without members.
    pub(super) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when `id` is a member.
    pub(super) fn contains(&self, id: &MemberId) -> bool {
        self.map.contains_key(id)
    }

    /// The link of member `id`.
    pub(super) fn link(&self, id: &MemberId) -> Option<&MemberLink> {
        self.map.get(id).map(|m| &m.link)
    }

    /// True when some member speaks `protocol`.
    pub(super) fn any(&self, protocol: Protocol) -> bool {
        self.map.values().any(|m| m.link.protocol == protocol)
    }

    /// Adds a member (in step with the document: owes it nothing).
    pub(super) fn insert(&mut self, link: MemberLink) {
        let member = Member {
            link,
            resync_from: None,
            asked_at: None,
            presence_stale: false,
        };
        self.map.insert(member.link.id.clone(), member);
    }

    /// Removes a member; false when it was not one.
    pub(super) fn remove(&mut self, id: &MemberId) -> bool {
        self.map.remove(id).is_some()
    }

    /// Removes every member, telling each session to close with `code`.
    pub(super) fn close_all(&mut self, code: u16, reason: &str) -> Vec<MemberId> {
        for member in self.map.values() {
            member.link.recipient.do_send(Outbound::Close {
                code,
                reason: reason.to_owned(),
            });
        }
        self.map.drain().map(|(id, _)| id).collect()
    }

    /// What member `id` is owed (taken: owed once).
    pub(super) fn take_owed(&mut self, id: &MemberId) -> Option<Owed> {
        let member = self.map.get_mut(id)?;
        Some(Owed {
            link: member.link.clone(),
            diff_from: member.resync_from.take().map(|sv| *sv),
            presence: std::mem::take(&mut member.presence_stale),
        })
    }

    /// Member `id` is being sent the whole difference: it owes no delta resync.
    pub(super) fn forget_dropped_deltas(&mut self, id: &MemberId) {
        if let Some(member) = self.map.get_mut(id) {
            member.resync_from = None;
        }
    }

    /// Sends `msg` to one member, encoded for its protocol; `None` when
    /// that protocol has no such message (e.g. `ack` on `/yjs`).
    pub(super) fn send_to(
        &self,
        link: &MemberLink,
        msg: &ServerMessage,
        class: Class,
    ) -> Option<Offer> {
        let frame = encode(link.protocol, msg)?;
        Some(self.send_frame(link, &frame, class))
    }

    /// A y-protocols message (sync, awareness) framed for `protocol`:
    /// as is on `/yjs`, after the room name on `/hocuspocus`; `None` for
    /// the native protocol.
    pub(super) fn y_frame(&self, protocol: Protocol, msg: &[u8]) -> Option<Frame> {
        match protocol {
            Protocol::Native => None,
            Protocol::Yjs => Some(Frame::binary(msg)),
            Protocol::Hocuspocus => Some(Frame::binary_parts(
                &self.hocus_prefix,
                bytes::Bytes::copy_from_slice(msg),
                &[],
            )),
        }
    }

    /// A y-protocols sync step 2 of `diff` framed for `protocol`, the
    /// shared diff not copied (`None` for the native protocol).
    pub(super) fn y_step2(&self, protocol: Protocol, diff: bytes::Bytes) -> Option<Frame> {
        let step2 = yjs::sync_step2_head(diff.len());
        match protocol {
            Protocol::Native => None,
            Protocol::Yjs => Some(Frame::binary_parts(&step2, diff, &[])),
            Protocol::Hocuspocus => {
                let mut head = self.hocus_prefix.clone();
                head.extend_from_slice(&step2);
                Some(Frame::binary_parts(&head, diff, &[]))
            }
        }
    }

    /// Sends a y-protocols message to one `/yjs` or `/hocuspocus` member
    /// (nothing to a native one).
    pub(super) fn send_y(&self, link: &MemberLink, msg: &[u8], class: Class) {
        if let Some(frame) = self.y_frame(link.protocol, msg) {
            self.send_frame(link, &frame, class);
        }
    }

    /// Offers an encoded frame to one member.
    pub(super) fn send_frame(&self, link: &MemberLink, frame: &Frame, class: Class) -> Offer {
        link.outbox.offer(&link.recipient, frame, class)
    }

    /// Sends `msg` to every member but `except`, encoding it at most once
    /// per protocol; see [`Members::fan_out_with`].
    pub(super) fn fan_out(
        &mut self,
        msg: &ServerMessage,
        class: Class,
        except: Option<&MemberId>,
        base: impl FnOnce() -> StateVector,
    ) {
        self.fan_out_with(class, except, |protocol| encode(protocol, msg), base);
    }

    /// [`Members::fan_out`] of a document update whose progress `flight`
    /// follows: members whose outbox was empty get the frame tracked (see
    /// [`Flight::track`]), busy ones plain (they are not waited for).
    /// Returns how many were tracked.
    pub(super) fn fan_out_tracked(
        &mut self,
        msg: &ServerMessage,
        except: Option<&MemberId>,
        flight: Option<&Arc<Flight>>,
        base: impl FnOnce() -> StateVector,
    ) -> usize {
        let mut tracked = 0;
        self.fan_out_each(
            Class::Delta,
            except,
            |protocol| encode(protocol, msg),
            |outbox, frame| match flight {
                Some(flight) if outbox.backlog() == 0 => {
                    tracked += 1;
                    Cow::Owned(flight.track(frame))
                }
                _ => Cow::Borrowed(frame),
            },
            base,
        );
        tracked
    }

    /// Offers to every member but `except` the frame `encode` makes for its
    /// protocol (called at most once per protocol; `None`: nothing to send
    /// to that protocol's members). A member that is behind gets nothing
    /// droppable: it is marked owed a resync instead, for deltas from the
    /// state vector `base` gives (the room's state before this batch).
    pub(super) fn fan_out_with(
        &mut self,
        class: Class,
        except: Option<&MemberId>,
        encode: impl FnMut(Protocol) -> Option<Frame>,
        base: impl FnOnce() -> StateVector,
    ) {
        self.fan_out_each(class, except, encode, |_, f| Cow::Borrowed(f), base);
    }

    /// [`Members::fan_out_with`], the frame passed through `each` (given
    /// the recipient's outbox) before it is offered.
    fn fan_out_each(
        &mut self,
        class: Class,
        except: Option<&MemberId>,
        mut encode: impl FnMut(Protocol) -> Option<Frame>,
        mut each: impl for<'f> FnMut(&Outbox, &'f Frame) -> Cow<'f, Frame>,
        base: impl FnOnce() -> StateVector,
    ) {
        let mut frames: [Option<Option<Frame>>; Protocol::COUNT] = Default::default();
        let mut dropped: Vec<MemberId> = Vec::new();
        for (id, member) in &self.map {
            if except == Some(id) {
                continue;
            }
            let protocol = member.link.protocol;
            let slot = &mut frames[protocol.index()];
            let Some(frame) = slot.get_or_insert_with(|| encode(protocol)) else {
                continue;
            };
            let outbox = &member.link.outbox;
            match outbox.offer(&member.link.recipient, &each(outbox, frame), class) {
                Offer::Sent => self.metrics.sent(frame.payload_len()),
                Offer::Dropped => {
                    self.metrics.frames_dropped.inc();
                    dropped.push(id.clone());
                }
                Offer::Evicted => {}
            }
        }
        if dropped.is_empty() {
            return;
        }
        let mut base = Some(base);
        let mut from: Option<StateVector> = None;
        for id in dropped {
            let Some(member) = self.map.get_mut(&id) else {
                continue;
            };
            match class {
                Class::Delta if member.resync_from.is_none() => {
                    if let Some(make) = base.take() {
                        from = Some(make());
                    }
                    member.resync_from = from.clone().map(Box::new);
                }
                Class::Presence => member.presence_stale = true,
                Class::Delta | Class::Ephemeral | Class::Control => {}
            }
        }
    }

    /// Sends an error to one member: an `error` message on the native
    /// protocol; on `/yjs`, which has no error message, a close with the
    /// code `yjs::close_for` picks (or nothing, for errors it drops).
    pub(super) fn error_to(
        &self,
        link: &MemberLink,
        code: ErrorCode,
        message: impl Into<String>,
        rid: Option<u64>,
    ) {
        let message = message.into();
        self.metrics.error(code.as_str());
        if link.protocol.speaks_yjs() {
            let Some(close) = yjs::close_for(code) else {
                tracing::debug!(room = %self.room, member = %link.id, "dropped for /yjs: {message}");
                return;
            };
            if code == ErrorCode::Forbidden {
                let denied = match link.protocol {
                    Protocol::Hocuspocus => hocuspocus::permission_denied(&self.room, &message),
                    _ => yjs::auth_denied(&message),
                };
                self.send_frame(link, &Frame::binary(&denied), Class::Control);
            }
            link.recipient.do_send(Outbound::Close {
                code: close,
                reason: close_reason(&message).to_owned(),
            });
            return;
        }
        let msg = ServerMessage::Error {
            code,
            message,
            rid,
            room: Some(self.room.to_string()),
        };
        self.send_to(link, &msg, Class::Control);
    }

    /// `/yjs` and `/hocuspocus`: an update with missing dependencies is
    /// not applied, and the socket stays open: this room's sync step 1
    /// (`sv`), which the client answers with a step 2 holding everything
    /// the room lacks, the refused update's structs included (a Yjs client
    /// keeps what it could not send as pending and sends it with its
    /// state). On `/hocuspocus` the step 1 follows SyncStatus 0 (not
    /// applied) for that document only. Nothing is lost and nothing pending
    /// is kept here.
    ///
    /// A member is asked once per state of the room: a Yjs client whose
    /// pending structs depend on updates nobody sent would answer every
    /// step 1 with the same step 2, and both would loop for ever (at the
    /// message rate). Asked again with the room unchanged, it already sent
    /// all it has: the update is dropped without a word, and the client
    /// sends what it held back once the room sends what it lacked.
    pub(super) fn ask_for_missing(&mut self, link: &MemberLink, message: &str, sv: &StateVector) {
        self.metrics.error(ErrorCode::MissingDependencies.as_str());
        let asked = match self.map.get_mut(&link.id) {
            Some(member) if member.asked_at.as_deref() == Some(sv) => true,
            Some(member) => {
                member.asked_at = Some(Box::new(sv.clone()));
                false
            }
            None => false,
        };
        tracing::debug!(room = %self.room, member = %link.id, asked, "update with missing dependencies: {message}");
        let hocus = link.protocol == Protocol::Hocuspocus;
        if hocus {
            let refused = hocuspocus::sync_status(&self.room, false);
            self.send_frame(link, &Frame::binary(&refused), Class::Control);
        }
        if asked {
            return;
        }
        let step1 = yjs::sync_step1(sv);
        let step1 = if hocus {
            hocuspocus::prefixed(&self.room, &step1)
        } else {
            step1
        };
        self.send_frame(link, &Frame::binary(&step1), Class::Control);
    }

    /// Sends an error to member `id`, if it is one.
    pub(super) fn error_to_member(
        &self,
        id: &MemberId,
        code: ErrorCode,
        message: impl Into<String>,
        rid: Option<u64>,
    ) {
        if let Some(link) = self.link(id) {
            self.error_to(link, code, message, rid);
        }
    }

    /// Refuses a join: the error, then a note telling the session it is
    /// not a member (so it may retry, and the room does not count).
    pub(super) fn refuse(
        &self,
        link: &MemberLink,
        code: ErrorCode,
        message: impl Into<String>,
        rid: Option<u64>,
    ) {
        self.error_to(link, code, message, rid);
        link.recipient.do_send(Outbound::Refused {
            room: self.room.clone(),
        });
    }
}

/// Encodes `msg` for `protocol`; `None` when the protocol has no such
/// message. On `/yjs` only document updates have an equivalent (a sync
/// update); presence, cursors and typing travel as awareness instead, and
/// acks, events and the rest have none. `/hocuspocus` has updates, acks
/// (SyncStatus 1: the update is stored) and events (Stateless, see
/// [`hocuspocus::event_payload`]).
pub(super) fn encode(protocol: Protocol, msg: &ServerMessage) -> Option<Frame> {
    match protocol {
        Protocol::Native => Some(Frame::binary(&encode_server(msg))),
        Protocol::Yjs => match msg {
            ServerMessage::Update { data, .. } => {
                Some(Frame::binary(&yjs::sync_update(data.0.clone())))
            }
            _ => None,
        },
        Protocol::Hocuspocus => {
            let frame = match msg {
                ServerMessage::Update { room, data, .. } => {
                    hocuspocus::prefixed(room, &yjs::sync_update(data.0.clone()))
                }
                ServerMessage::Ack { room, .. } => hocuspocus::sync_status(room, true),
                ServerMessage::Event {
                    room,
                    from,
                    name,
                    data,
                } => hocuspocus::stateless(room, &hocuspocus::event_payload(from, name, data)),
                _ => return None,
            };
            Some(Frame::binary(&frame))
        }
    }
}
