//! What the HTTP API asks of a room: read the document, apply an update,
//! read presence, trigger an event, subscribe to the event stream, delete.
//!
//! Messages sent through [`Registry::request`](super::Registry::request)
//! are counted like joins: their handlers call `Room::entered`, so a room
//! is never evicted with one of them on its way, and a room started only
//! for one of them is evicted again after `room_idle_ms`.

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;

pub use super::events::Subscription;
use super::{PresencePage, Room};
use crate::protocol::ErrorCode;

/// Why a room refused an API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RoomError {
    /// The protocol error code (mapped to an HTTP status in `http::api`).
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl RoomError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RoomError {
            code,
            message: message.into(),
        }
    }
}

/// The document as the API returns it.
pub enum DocFormat {
    /// Each root type by name, as JSON.
    Json,
    /// The whole state as one Yjs v1 update.
    Binary,
}

/// Read the document.
#[derive(Message)]
#[rtype(result = "Result<DocBody, RoomError>")]
pub struct ReadDoc {
    /// Which form.
    pub format: DocFormat,
}

/// A document in the requested form.
pub enum DocBody {
    /// Root types by name.
    Json(Value),
    /// Yjs v1 update bytes.
    Binary(Bytes),
}

/// Apply an update from the API. Resolves once it is durable.
#[derive(Message)]
#[rtype(result = "Result<(), RoomError>")]
pub struct ApiUpdate {
    /// Yjs v1 update bytes.
    pub data: Bytes,
}

/// Read a page of the member list, in join order: the page a member's
/// `presence_list` reads (`Room::presence_page`), for
/// `GET /rooms/{room}/presence`.
#[derive(Message)]
#[rtype(result = "Result<PresencePage, RoomError>")]
pub struct ReadPresence {
    /// Start after this join order (`None`: from the first member).
    pub after: Option<u64>,
    /// At most this many members (checked by the caller with
    /// [`check_page`](super::presence::check_page)).
    pub limit: usize,
}

/// The `from` of events a backend triggers over HTTP.
pub const SERVER: &str = "server";

/// Publish an ephemeral event from a backend (not recorded in the document:
/// sent to the room's members and followers, and to its other nodes in
/// cluster mode).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Trigger {
    /// Event name.
    pub name: String,
    /// Payload.
    pub data: Value,
}

/// Subscribe to the room's event stream after `since` (the current head
/// when `None`).
#[derive(Message)]
#[rtype(result = "Result<Subscription, RoomError>")]
pub struct Subscribe {
    /// Resume point.
    pub since: Option<u64>,
}

/// End a subscription (sent when its HTTP response is dropped).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    /// Subscriber id.
    pub id: u64,
}

/// Delete the room: members are closed (1001, "room deleted"), subscribers
/// get `reset`, the stored document is deleted and the room starts empty.
#[derive(Message)]
#[rtype(result = "Result<(), RoomError>")]
pub struct DeleteRoom;

/// Counts for the room list (not counted as an entry).
#[derive(Message)]
#[rtype(result = "RoomStats")]
pub struct ReadStats;

/// One room in the room list.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomStats {
    /// WebSocket members.
    pub members: usize,
    /// HTTP subscribers.
    pub subscribers: usize,
    /// Upper bound of the document size, in bytes.
    pub doc_bytes: usize,
    /// Latest event sequence number.
    pub seq: u64,
}

impl Room {
    /// Empties the room (document, members, followers), as a deletion does:
    /// members are closed with `1001 room deleted`.
    pub(super) fn reset(&mut self, ctx: &mut Context<Self>) {
        self.entered(ctx);
        self.events.reset();
        // Sessions send `Leave` as they close; the room forgets them now so
        // nothing more is sent to them.
        for id in self
            .members
            .close_all(crate::protocol::close::GOING_AWAY, "room deleted")
        {
            self.presence.leave(&id);
            self.awareness.forget(&id);
        }
        self.awareness.clear_dirty();
        let _ = self.presence.take_diff();
        let _ = self.presence.take_cursors();
        self.fanout.clear();
        self.document.clear();
        self.persist.clear();
        if let Some(c) = &mut self.cluster {
            c.clear();
        }
        self.broken = None;
        self.arm_idle_timer(ctx);
    }

    pub(super) fn check_loaded(&self) -> Result<(), RoomError> {
        match &self.broken {
            Some(reason) => Err(RoomError::new(
                ErrorCode::RoomUnavailable,
                format!("room could not be loaded: {reason}"),
            )),
            None => Ok(()),
        }
    }
}

impl Handler<ReadDoc> for Room {
    type Result = Result<DocBody, RoomError>;

    fn handle(&mut self, msg: ReadDoc, ctx: &mut Context<Self>) -> Self::Result {
        self.entered(ctx);
        self.check_loaded()?;
        Ok(match msg.format {
            DocFormat::Json => DocBody::Json(self.document.to_json()),
            DocFormat::Binary => DocBody::Binary(self.document.encode_state()),
        })
    }
}

impl Handler<ApiUpdate> for Room {
    type Result = ResponseActFuture<Self, Result<(), RoomError>>;

    fn handle(&mut self, msg: ApiUpdate, ctx: &mut Context<Self>) -> Self::Result {
        self.entered(ctx);
        self.metrics.received(msg.data.len());
        let applied = self.check_loaded().and_then(|()| {
            self.apply_update(&msg.data, None, ctx)
                .map_err(|(code, e)| RoomError::new(code, e))
        });
        match applied {
            Ok(true) => Box::pin(self.append_update(msg.data, None).map(|res, _, _| {
                res.map_err(|_| {
                    RoomError::new(ErrorCode::StoreFailed, "update not stored; resend it")
                })
            })),
            Ok(false) => Box::pin(fut::ready(Ok(()))),
            Err(e) => Box::pin(fut::ready(Err(e))),
        }
    }
}

impl Handler<ReadPresence> for Room {
    type Result = Result<PresencePage, RoomError>;

    fn handle(&mut self, msg: ReadPresence, ctx: &mut Context<Self>) -> Self::Result {
        self.entered(ctx);
        self.check_loaded()?;
        Ok(self.presence_page(msg.after, msg.limit))
    }
}

impl Handler<Trigger> for Room {
    type Result = ();

    fn handle(&mut self, msg: Trigger, _: &mut Context<Self>) {
        self.share_event(SERVER, &msg.name, &msg.data);
        self.deliver_event(SERVER.into(), msg.name, msg.data, None);
    }
}

impl Handler<Subscribe> for Room {
    type Result = Result<Subscription, RoomError>;

    fn handle(&mut self, msg: Subscribe, ctx: &mut Context<Self>) -> Self::Result {
        self.joins_seen += 1;
        if let Err(e) = self.check_loaded() {
            if self.is_idle() {
                self.arm_idle_timer(ctx);
            }
            return Err(e);
        }
        // Pending updates go out first, so the replay and the live events
        // follow each other without a gap or a repeat.
        self.flush();
        let sub = self.events.subscribe(msg.since);
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        Ok(sub)
    }
}

impl Handler<Unsubscribe> for Room {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        self.events.unsubscribe(msg.id);
        if self.is_idle() && self.idle_timer.is_none() {
            self.arm_idle_timer(ctx);
        }
    }
}

impl Handler<DeleteRoom> for Room {
    type Result = ResponseActFuture<Self, Result<(), RoomError>>;

    fn handle(&mut self, _: DeleteRoom, ctx: &mut Context<Self>) -> Self::Result {
        self.cluster_deleting();
        self.reset(ctx);
        let delete = self.persist.delete(&self.id);
        Box::pin(delete.into_actor(self).map(|res, room, ctx| {
            if res.is_ok() {
                room.cluster_deleted(ctx);
            } else {
                room.cluster_delete_failed(ctx);
            }
            res.map_err(|e| {
                tracing::error!(room = %room.id, "delete failed: {e}");
                RoomError::new(
                    ErrorCode::StoreFailed,
                    "the stored document could not be deleted",
                )
            })
        }))
    }
}

impl Handler<ReadStats> for Room {
    type Result = MessageResult<ReadStats>;

    fn handle(&mut self, _: ReadStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RoomStats {
            members: self.members.len(),
            subscribers: self.events.len(),
            doc_bytes: self.document.size(),
            seq: self.events.head(),
        })
    }
}
