//! What sessions and the cluster bridge send a room, and how a room reaches
//! a member: the member's [`MemberLink`] (its protocol, its session actor
//! and its [`Outbox`]).

use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use yrs::StateVector;

use crate::ids::MemberId;
use crate::outbox::{Outbound, Outbox};
use crate::protocol::yjs::AwarenessEntry;

/// Wire protocol of a member: the room encodes each broadcast once per
/// protocol present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Native MessagePack protocol v1.
    Native,
    /// y-protocols, as stock `y-websocket` clients speak it on `/yjs/{room}`.
    Yjs,
    /// Hocuspocus (`/hocuspocus`): y-protocols messages prefixed with the
    /// document (room) name, plus SyncStatus acks and Stateless events.
    Hocuspocus,
}

impl Protocol {
    /// Number of protocols (size of per-protocol caches).
    pub(super) const COUNT: usize = 3;

    /// Index of the protocol in per-protocol caches.
    pub(super) fn index(self) -> usize {
        match self {
            Protocol::Native => 0,
            Protocol::Yjs => 1,
            Protocol::Hocuspocus => 2,
        }
    }

    /// True for the protocols that carry y-protocols sync and awareness
    /// (`/yjs` and `/hocuspocus`): the room syncs them with sync steps and
    /// shows them presence as awareness.
    pub fn speaks_yjs(self) -> bool {
        matches!(self, Protocol::Yjs | Protocol::Hocuspocus)
    }
}

/// What a room needs to send to one member.
#[derive(Clone)]
pub struct MemberLink {
    /// Member id (unique in the cluster).
    pub id: MemberId,
    /// Authenticated user id, if any.
    pub user: Option<Arc<str>>,
    /// How frames for this member are encoded.
    pub protocol: Protocol,
    /// The session actor.
    pub recipient: Recipient<Outbound>,
    /// The session's outbound byte accounting, checked before every send.
    pub outbox: Arc<Outbox>,
}

/// Join a room. The room answers with `synced` and a presence snapshot, or
/// an `error`, through the member's link.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The joining member.
    pub member: MemberLink,
    /// The client's state vector (Yjs v1), if it has state already.
    pub sv: Option<Vec<u8>>,
    /// Initial presence state.
    pub presence: Option<Value>,
    /// Request id of the client's `join`.
    pub rid: Option<u64>,
}

/// Leave a room (also sent when a session stops).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The leaving member.
    pub member: MemberId,
}

/// A document update from a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClientUpdate {
    /// The author.
    pub member: MemberId,
    /// Yjs v1 update bytes.
    pub data: Bytes,
    /// Request id to acknowledge once durable.
    pub rid: Option<u64>,
}

/// Replace a member's presence state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPresence {
    /// The member.
    pub member: MemberId,
    /// New state (a JSON object).
    pub state: Value,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// Move a member's cursor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetCursor {
    /// The member.
    pub member: MemberId,
    /// Encoded relative position of the anchor.
    pub anchor: Option<Vec<u8>>,
    /// Encoded relative position of the head.
    pub head: Option<Vec<u8>>,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// Typing on or off.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetTyping {
    /// The member.
    pub member: MemberId,
    /// On or off.
    pub on: bool,
}

/// An ephemeral event for every other member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Broadcast {
    /// Sender's member id.
    pub member: MemberId,
    /// Event name.
    pub name: String,
    /// Payload.
    pub data: Value,
    /// Request id, for errors.
    pub rid: Option<u64>,
}

/// A page of the member list, for `presence_list` (answered to the
/// session, which sends it and charges its bytes to the member's rate).
#[derive(Message)]
#[rtype(result = "Result<PresencePage, (crate::protocol::ErrorCode, String)>")]
pub struct ListPresence {
    /// The asking member (must be one of the room).
    pub member: MemberId,
    /// Start after this join order (`None`: from the first member).
    pub after: Option<u64>,
    /// At most this many members (checked by the session).
    pub limit: usize,
}

/// The answer to [`ListPresence`].
pub struct PresencePage {
    /// Members, in join order.
    pub members: Vec<crate::protocol::native::MemberView>,
    /// The `after` of the next page; `None` on the last page.
    pub next: Option<u64>,
    /// Members in the room.
    pub total: u64,
}

/// Sync step 1 from a `/yjs` member: the room answers with sync step 2
/// (what the member lacks).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SyncStep1 {
    /// The member.
    pub member: MemberId,
    /// Its state vector.
    pub sv: StateVector,
}

/// Awareness states from a `/yjs` member, each with its parsed state
/// (`None` for `null`). The session has checked their size.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwarenessUpdate {
    /// The member whose connection sent them.
    pub member: MemberId,
    /// The entries.
    pub entries: Vec<(AwarenessEntry, Option<Value>)>,
}

/// A `/yjs` member asks for every awareness state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct QueryAwareness {
    /// The member.
    pub member: MemberId,
}

/// A lagging member drained its backlog: resync it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    /// The member.
    pub member: MemberId,
}

/// Write the document to the store now, as one snapshot (shutdown).
/// Resolves once stored (or once storing failed, which is logged).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StoreNow {
    /// Failed writes are tried again until then; what is still not stored
    /// then is logged as lost.
    pub until: std::time::Instant,
}
