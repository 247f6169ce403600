//! What the HTTP API asks of a room: read the document, apply an update,
//! read presence, trigger an event, subscribe to the event stream, delete.
//!
//! Messages sent through [`Registry::request`](super::Registry::request)
//! are counted like joins: their handlers call `Room::entered`, so a room
//! is never evicted with one of them on its way, and a room started only
//! for one of them is evicted again after `room_idle_ms`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use yrs::types::ToJson;
use yrs::{ArrayRef, GetString, MapRef, Out, ReadTxn, StateVector, TextRef, Transact};

use super::events::{Replay, RoomEvent, Subscriber};
use super::{Class, Room};
use crate::cluster::Item;
use crate::protocol::native::ServerMessage;
use crate::protocol::{close, ErrorCode};
use crate::session::transport::Outbound;

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

/// Read the presence snapshot.
#[derive(Message)]
#[rtype(result = "Result<Value, RoomError>")]
pub struct ReadPresence;

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

/// A new subscription: what to replay, then live events from `rx`.
pub struct Subscription {
    /// Subscriber id, for [`Unsubscribe`].
    pub id: u64,
    /// Events to send first (a `reset` when `since` was outside the window).
    pub replay: Vec<Arc<RoomEvent>>,
    /// The latest sequence number at subscription time.
    pub head: u64,
    /// Live events.
    pub rx: mpsc::Receiver<Arc<RoomEvent>>,
    /// Set when the room dropped the subscriber (behind, or room deleted).
    pub lagged: Arc<AtomicBool>,
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
pub struct Stats;

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
    /// Counts a message sent through `Registry::request` (see the module doc).
    fn entered(&mut self, ctx: &mut Context<Self>) {
        self.joins_seen += 1;
        if self.is_idle() {
            self.arm_idle_timer(ctx);
        }
    }

    fn check_loaded(&self) -> Result<(), RoomError> {
        match &self.broken {
            Some(reason) => Err(RoomError::new(
                ErrorCode::RoomUnavailable,
                format!("room could not be loaded: {reason}"),
            )),
            None => Ok(()),
        }
    }

    /// Each root type by name. Roots created by remote updates have no
    /// declared type on the server, so it is inferred: keyed entries → map,
    /// text content → string, sequence → array; empty → null.
    fn doc_json(&self) -> Value {
        let txn = self.doc.transact();
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
}

impl Handler<ReadDoc> for Room {
    type Result = Result<DocBody, RoomError>;

    fn handle(&mut self, msg: ReadDoc, ctx: &mut Context<Self>) -> Self::Result {
        self.entered(ctx);
        self.check_loaded()?;
        Ok(match msg.format {
            DocFormat::Json => DocBody::Json(self.doc_json()),
            DocFormat::Binary => DocBody::Binary(Bytes::from(
                self.doc
                    .transact()
                    .encode_state_as_update_v1(&StateVector::default()),
            )),
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
            Ok(true) => Box::pin(self.append_update(msg.data).map(|res, _, _| {
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
    type Result = Result<Value, RoomError>;

    fn handle(&mut self, _: ReadPresence, ctx: &mut Context<Self>) -> Self::Result {
        self.entered(ctx);
        self.check_loaded()?;
        Ok(json!({ "members": self.presence.snapshot() }))
    }
}

impl Handler<Trigger> for Room {
    type Result = ();

    fn handle(&mut self, msg: Trigger, _: &mut Context<Self>) {
        self.cluster_publish(Item::Event {
            from: SERVER.into(),
            name: msg.name.clone(),
            data: msg.data.clone(),
        });
        self.publish(
            "event",
            || json!({ "from": SERVER, "name": msg.name, "data": msg.data }),
        );
        let out = ServerMessage::Event {
            room: self.id.to_string(),
            from: SERVER.into(),
            name: msg.name,
            data: msg.data,
        };
        self.fan_out(&out, Class::Ephemeral, None);
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
        self.followed = true;
        let head = self.events.head();
        let replay = match msg.since {
            None => Vec::new(),
            Some(since) => match self.events.since(since) {
                Replay::Events(events) => events,
                Replay::Reset { head } => {
                    vec![Arc::new(RoomEvent::reset(head, "outside_window"))]
                }
            },
        };
        let (tx, rx) = mpsc::channel(self.config.api.subscriber_buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        self.next_subscriber += 1;
        let id = self.next_subscriber;
        self.subscribers.insert(
            id,
            Subscriber {
                tx,
                lagged: lagged.clone(),
            },
        );
        self.metrics.subscribers.inc();
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
        Ok(Subscription {
            id,
            replay,
            head,
            rx,
            lagged,
        })
    }
}

impl Handler<Unsubscribe> for Room {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        if self.subscribers.remove(&msg.id).is_some() {
            self.metrics.subscribers.dec();
        }
        if self.is_idle() && self.idle_timer.is_none() {
            self.arm_idle_timer(ctx);
        }
    }
}

impl Handler<DeleteRoom> for Room {
    type Result = ResponseActFuture<Self, Result<(), RoomError>>;

    fn handle(&mut self, _: DeleteRoom, ctx: &mut Context<Self>) -> Self::Result {
        self.reset(ctx);
        let delete = self.store.delete(&self.id);
        Box::pin(delete.into_actor(self).map(|res, room, _| {
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

impl Room {
    /// Empties the room (document, members, followers), as a deletion does:
    /// members are closed with `1001 room deleted`.
    pub(super) fn reset(&mut self, ctx: &mut Context<Self>) {
        self.entered(ctx);
        for member in self.members.values() {
            member.link.recipient.do_send(Outbound::Close {
                code: close::GOING_AWAY,
                reason: "room deleted".into(),
            });
        }
        for (_, sub) in self.subscribers.drain() {
            sub.lagged.store(true, Ordering::Release);
            self.metrics.subscribers.dec();
        }
        // Sessions send `Leave` as they close; the room forgets them now so
        // nothing more is sent to them.
        let ids: Vec<_> = self.members.keys().cloned().collect();
        for id in ids {
            self.members.remove(&id);
            self.presence.leave(&id);
            self.awareness.remove_owner(&id);
        }
        self.native_dirty.clear();
        let _ = self.presence.take_diff();
        let _ = self.presence.take_cursors();
        self.pending.clear();
        self.pending_since = None;
        self.batch_base = None;
        self.doc = yrs::Doc::new();
        self.doc_bytes = 0;
        self.durable_seq = 0;
        self.log_seq = 0;
        self.unlogged.clear();
        self.since_compact = 0;
        self.bytes_since_compact = 0;
        self.events.clear();
        self.broken = None;
        self.arm_idle_timer(ctx);
    }
}

impl Handler<Stats> for Room {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RoomStats {
            members: self.members.len(),
            subscribers: self.subscribers.len(),
            doc_bytes: self.doc_bytes,
            seq: self.events.head(),
        })
    }
}
