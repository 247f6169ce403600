//! Fan-out and the tick: how a room's changes reach its members.
//!
//! Updates applied within one window are merged and sent as one frame per
//! protocol present; presence diffs and cursors go out once per presence
//! interval. Each frame is encoded once and its bytes shared by every
//! recipient's outbox ([`Members::fan_out_with`](super::members::Members)).
//! A member whose outbox is behind is marked owed a resync, and gets one
//! ([`Resync`]) once it drains.

use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;
use yrs::StateVector;

use super::messages::{Broadcast, Protocol, Resync};
use super::Room;
use crate::config::Limits;
use crate::ids::MemberId;
use crate::outbox::Class;
use crate::protocol::native::{Bin, ServerMessage};
use crate::protocol::ErrorCode;

/// Longest update window, in ticks ([`Fanout::update_window`]): updates of
/// even the biggest room reach its members within four ticks.
const MAX_UPDATE_TICKS: usize = 4;

/// Who wrote the updates of a batch.
#[derive(Debug, Clone, PartialEq)]
enum Origin {
    /// Nobody yet (empty batch), or the HTTP API / another node only.
    None,
    /// One member wrote every update: it is not sent its own batch.
    One(MemberId),
    /// Several authors.
    Many,
}

/// Updates waiting for the end of their window, and the clocks of the
/// room's broadcasts.
pub(super) struct Fanout {
    /// Updates applied since the last broadcast, in order.
    pending: Vec<Bytes>,
    /// Author of every pending update when they share one.
    origin: Origin,
    /// State vector before the first pending update: what every member that
    /// is not lagging has seen.
    base: Option<StateVector>,
    /// When the oldest pending update was applied (fan-out latency).
    pending_since: Option<Instant>,
    /// Last broadcast of updates.
    last_flush: Instant,
    /// A broadcast is scheduled for the end of the current window.
    scheduled: bool,
    /// Last broadcast of presence (diff, cursors, awareness).
    last_presence: Instant,
    /// Presence changes wait for the room's presence interval, longer than
    /// a tick in large rooms.
    presence_deferred: bool,
}

impl Fanout {
    /// Nothing pending; the first change goes out at once.
    pub(super) fn new() -> Self {
        let long_ago = Instant::now() - Duration::from_secs(1);
        Fanout {
            pending: Vec::new(),
            origin: Origin::None,
            base: None,
            pending_since: None,
            last_flush: long_ago,
            scheduled: false,
            last_presence: long_ago,
            presence_deferred: false,
        }
    }

    /// True when the next applied update starts a batch: the caller must
    /// pass the state vector before it to [`Fanout::push`].
    pub(super) fn needs_base(&self) -> bool {
        self.base.is_none()
    }

    /// Queues an applied update by `author` (`None`: the HTTP API or
    /// another node); `base`: the state vector before it, when it starts a
    /// batch.
    pub(super) fn push(
        &mut self,
        data: Bytes,
        author: Option<&MemberId>,
        base: Option<StateVector>,
    ) {
        if self.base.is_none() {
            self.base = base;
        }
        self.pending.push(data);
        self.pending_since.get_or_insert_with(Instant::now);
        self.origin = match (&self.origin, author) {
            (Origin::None, Some(a)) => Origin::One(a.clone()),
            (Origin::One(id), Some(a)) if id == a => Origin::One(id.clone()),
            _ => Origin::Many,
        };
    }

    /// The state vector from which a member that misses this batch must be
    /// resynced (empty: the whole document).
    pub(super) fn base(&self) -> StateVector {
        self.base.clone().unwrap_or_default()
    }

    /// Drops what is pending (the room was deleted).
    pub(super) fn clear(&mut self) {
        self.pending.clear();
        self.pending_since = None;
        self.base = None;
        self.origin = Origin::None;
    }

    /// How often presence (diffs, cursors, awareness) is broadcast: every
    /// tick × max(1, members / `presence_members_per_tick`), so a room's
    /// presence traffic while N members join grows as N, not N² (every diff
    /// goes to every member).
    fn presence_interval(limits: &Limits, members: usize) -> Duration {
        let ticks = (members / limits.presence_members_per_tick).max(1);
        limits.tick() * ticks as u32
    }

    /// The window over which document updates are merged: tick × members /
    /// `update_members_per_tick`, at least one tick and at most
    /// [`MAX_UPDATE_TICKS`]. Each broadcast costs one send per member, so a
    /// big room under steady editing sends fewer, fuller frames; a quiet
    /// room's first update still goes out at once.
    fn update_window(limits: &Limits, members: usize) -> Duration {
        let ticks = (members / limits.update_members_per_tick).clamp(1, MAX_UPDATE_TICKS);
        limits.tick() * ticks as u32
    }
}

impl Room {
    /// Schedules a broadcast of what is pending: at once after a quiet
    /// window, else at the end of the current one; deferred presence goes
    /// out once its interval has passed.
    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.fanout.scheduled {
            return;
        }
        let limits = &self.config.limits;
        let window = Fanout::update_window(limits, self.members.len());
        let since = self.fanout.last_flush.elapsed();
        let wait = if since >= window {
            self.flush();
            if !self.fanout.presence_deferred {
                return;
            }
            Fanout::presence_interval(&self.config.limits, self.members.len())
                .saturating_sub(self.fanout.last_presence.elapsed())
                .max(Duration::from_millis(1))
        } else {
            window - since
        };
        self.fanout.scheduled = true;
        ctx.run_later(wait, |room, ctx| {
            room.fanout.scheduled = false;
            room.flush();
            if room.fanout.presence_deferred {
                room.schedule_flush(ctx);
            }
        });
    }

    /// Broadcasts pending updates (merged), then presence if it is due.
    pub(super) fn flush(&mut self) {
        self.fanout.last_flush = Instant::now();
        if !self.fanout.pending.is_empty() {
            let pending = std::mem::take(&mut self.fanout.pending);
            let origin = std::mem::replace(&mut self.fanout.origin, Origin::None);
            if pending.len() == 1 {
                self.send_update(pending[0].to_vec(), &origin);
            } else {
                match yrs::merge_updates_v1(pending.iter().map(|b| b.as_ref())) {
                    Ok(merged) => self.send_update(merged, &origin),
                    Err(e) => {
                        // Every part was applied, so this is not expected;
                        // fall back to one frame per update.
                        tracing::warn!(room = %self.id, "merging updates failed: {e}");
                        for part in &pending {
                            self.send_update(part.to_vec(), &Origin::Many);
                        }
                    }
                }
            }
            self.fanout.base = None;
            if let Some(since) = self.fanout.pending_since.take() {
                self.metrics.fanout_latency.observe(since.elapsed());
            }
        }
        self.flush_presence_when_due();
    }

    /// Broadcasts presence if its interval has passed, else defers it (the
    /// next scheduled flush sends it).
    fn flush_presence_when_due(&mut self) {
        let limits = &self.config.limits;
        let interval = Fanout::presence_interval(limits, self.members.len());
        if interval > limits.tick() && self.fanout.last_presence.elapsed() < interval {
            self.fanout.presence_deferred = true;
            return;
        }
        self.fanout.presence_deferred = false;
        self.fanout.last_presence = Instant::now();
        self.flush_presence();
    }

    /// Sends one (merged) update to every member but its author, and
    /// records it for HTTP followers.
    fn send_update(&mut self, data: Vec<u8>, origin: &Origin) {
        let (origin, except) = match origin {
            Origin::One(id) => (Some(id.to_string()), Some(id.clone())),
            _ => (None, None),
        };
        self.events.record_update(&data, origin.as_deref());
        let msg = ServerMessage::Update {
            room: self.id.to_string(),
            data: Bin(data),
            origin,
        };
        let base = &self.fanout;
        self.members
            .fan_out(&msg, Class::Delta, except.as_ref(), || base.base());
    }

    /// Sends every member the presence diff and cursors collected since the
    /// last broadcast, and `/yjs` members the awareness changes.
    fn flush_presence(&mut self) {
        if self.presence.has_diff() {
            let (joined, updated, left) = self.presence.take_diff();
            self.events.record(
                "presence",
                || serde_json::json!({ "joined": joined, "updated": updated, "left": left }),
            );
            let msg = ServerMessage::Presence {
                room: self.id.to_string(),
                snapshot: false,
                joined,
                updated,
                left,
            };
            self.share_presence(&msg);
            self.fan_out(&msg, Class::Presence, None);
        }
        let cursors = self.presence.take_cursors();
        if !cursors.is_empty() {
            self.share_cursors(&cursors);
            let msg = ServerMessage::Cursor {
                room: self.id.to_string(),
                cursors,
            };
            self.fan_out(&msg, Class::Presence, None);
        }
        self.flush_awareness();
    }

    /// Sends `msg` to every member but `except` (see [`Members::fan_out`](super::members::Members)).
    pub(super) fn fan_out(&mut self, msg: &ServerMessage, class: Class, except: Option<&MemberId>) {
        let base = &self.fanout;
        self.members.fan_out(msg, class, except, || base.base());
    }

    /// Records an event for HTTP followers and sends it to every member
    /// but `except`.
    pub(super) fn deliver_event(
        &mut self,
        from: String,
        name: String,
        data: Value,
        except: Option<&MemberId>,
    ) {
        self.events.record(
            "event",
            || serde_json::json!({ "from": from, "name": name, "data": data }),
        );
        let out = ServerMessage::Event {
            room: self.id.to_string(),
            from,
            name,
            data,
        };
        self.fan_out(&out, Class::Ephemeral, except);
    }

    /// Tells every other member that `id` started or stopped typing.
    pub(super) fn send_typing(&mut self, id: &MemberId, on: bool) {
        self.share_typing(id, on);
        let msg = ServerMessage::Typing {
            room: self.id.to_string(),
            id: id.to_string(),
            on,
        };
        self.fan_out(&msg, Class::Ephemeral, Some(id));
    }
}

impl Handler<Broadcast> for Room {
    type Result = ();

    /// An ephemeral event from a member, for every other member (on every
    /// node) and the room's HTTP followers.
    fn handle(&mut self, msg: Broadcast, _: &mut Context<Self>) {
        let size = msg.name.len() + serde_json::to_vec(&msg.data).map_or(usize::MAX, |v| v.len());
        let max = self.config.limits.max_event_bytes;
        if size > max {
            return self.members.error_to_member(
                &msg.member,
                ErrorCode::EventTooLarge,
                format!("event is {size} bytes, over max_event_bytes ({max})"),
                msg.rid,
            );
        }
        if !self.members.contains(&msg.member) {
            return;
        }
        let from = msg.member.to_string();
        self.share_event(&from, &msg.name, &msg.data);
        self.deliver_event(from, msg.name, msg.data, Some(&msg.member));
    }
}

impl Handler<Resync> for Room {
    type Result = ();

    /// A lagging member drained its backlog: it gets the difference from the
    /// state vector it was dropped at, and a fresh presence snapshot when
    /// presence frames were dropped too.
    fn handle(&mut self, msg: Resync, _: &mut Context<Self>) {
        let Some(owed) = self.members.take_owed(&msg.member) else {
            return;
        };
        let link = &owed.link;
        if owed.diff_from.is_some() || owed.presence {
            self.metrics.resyncs.inc();
        }
        if let Some(sv) = owed.diff_from {
            let diff = self.document.diff_from(&sv);
            tracing::debug!(room = %self.id, member = %msg.member, "resyncing lagging member");
            match link.protocol {
                Protocol::Native => {
                    let update = ServerMessage::Update {
                        room: self.id.to_string(),
                        data: Bin(diff.to_vec()),
                        origin: None,
                    };
                    self.members.send_to(link, &update, Class::Control);
                }
                Protocol::Yjs | Protocol::Hocuspocus => {
                    if let Some(frame) = self.members.y_step2(link.protocol, diff) {
                        self.members.send_frame(link, &frame, Class::Control);
                    }
                }
            }
        }
        if owed.presence {
            match link.protocol {
                Protocol::Native => {
                    self.members
                        .send_to(link, &self.presence_snapshot(), Class::Control);
                    let cursors = self.presence.cursors();
                    if !cursors.is_empty() {
                        let msg = ServerMessage::Cursor {
                            room: self.id.to_string(),
                            cursors,
                        };
                        self.members.send_to(link, &msg, Class::Control);
                    }
                }
                Protocol::Yjs | Protocol::Hocuspocus => {
                    if let Some(frame) = self.awareness.snapshot_frame() {
                        self.members.send_y(link, &frame, Class::Control);
                    }
                }
            }
        }
    }
}
