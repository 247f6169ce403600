//! Fan-out and the tick: how a room's changes reach its members.
//!
//! Updates go out at once when the room's last update broadcast has been
//! written; those applied while it is still being written are merged and
//! sent as one frame per protocol present ([`Fanout`]). Presence diffs and
//! cursors go out once per presence interval. Each frame is encoded once and its bytes shared by every
//! recipient's outbox ([`Members::fan_out_with`](super::members::Members)).
//! A member whose outbox is behind is marked owed a resync, and gets one
//! ([`Resync`]) once it drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::WeakRecipient;
use bytes::Bytes;
use serde_json::Value;
use yrs::StateVector;

use super::messages::{Broadcast, Protocol, Resync};
use super::Room;
use crate::config::Limits;
use crate::ids::MemberId;
use crate::outbox::{Class, Flight};
use crate::protocol::native::{Bin, ServerMessage};
use crate::protocol::ErrorCode;

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

/// A room's last update broadcast counts as written once at most one in
/// this many of the recipients it was tracked for still hold it: a few
/// stragglers do not hold back everyone's next update.
const FLIGHT_STRAGGLERS: usize = 32;

/// The room's last update broadcast is out of every idle recipient's outbox.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct FlightDone {
    /// Which broadcast ([`Fanout::flight_seq`]).
    seq: u64,
}

/// Updates waiting to be sent, the last update broadcast on its way to the
/// sockets, and the clock of presence broadcasts.
///
/// Document updates are sent at once when the room's last update broadcast
/// has been handed to the sockets of the members that were idle when it was
/// sent (the [`Flight`]); what is applied while it is still being written is
/// merged and goes out when it is, or after one tick at the latest. A quiet
/// room's update is one hop; a busy room's broadcasts grow fuller with the
/// load, instead of following a fixed window.
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
    /// The last update broadcast, while it may still be in outboxes.
    flight: Option<Arc<Flight>>,
    /// Number of the last update broadcast.
    flight_seq: u64,
    /// Where a flight reports that it is done (set when the room starts;
    /// weak: the room holds no address of its own, and a stopped room is
    /// not kept reachable by frames still in outboxes).
    notify: Option<WeakRecipient<FlightDone>>,
    /// A flush of pending updates is queued for the end of this turn of
    /// the room's mailbox (so updates handled together go out together).
    queued: bool,
    /// A timer bounds the wait for a flight that is not done.
    fallback: bool,
    /// The next update broadcast waits until then
    /// (`room_max_sends_per_sec`).
    not_before: Option<Instant>,
    /// A timer is set for `not_before`.
    held: bool,
    /// Last broadcast of presence (diff, cursors, awareness).
    last_presence: Instant,
    /// A presence broadcast is scheduled.
    presence_scheduled: bool,
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
            flight: None,
            flight_seq: 0,
            notify: None,
            queued: false,
            fallback: false,
            not_before: None,
            held: false,
            last_presence: long_ago,
            presence_scheduled: false,
        }
    }

    /// Where flights report (the room's own address).
    pub(super) fn set_notify(&mut self, to: WeakRecipient<FlightDone>) {
        self.notify = Some(to);
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

    /// True when no update broadcast is still being written.
    fn flight_idle(&self) -> bool {
        self.flight.as_ref().is_none_or(|f| f.is_done())
    }

    /// How long the room's send budget still holds the next update
    /// broadcast.
    fn hold(&self, now: Instant) -> Duration {
        self.not_before
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// A flight for the next update broadcast, reporting to the room.
    fn new_flight(&mut self) -> Option<Arc<Flight>> {
        self.flight_seq += 1;
        let seq = self.flight_seq;
        let notify = self.notify.clone()?;
        Some(Flight::new(move || {
            if let Some(room) = notify.upgrade() {
                room.do_send(FlightDone { seq });
            }
        }))
    }

    /// How often presence (diffs, cursors, awareness) is broadcast: every
    /// tick × max(1, members / `presence_members_per_tick`), so a room's
    /// presence traffic while N members join grows as N, not N² (every diff
    /// goes to every member).
    fn presence_interval(limits: &Limits, members: usize) -> Duration {
        let ticks = (members / limits.presence_members_per_tick).max(1);
        limits.tick() * ticks as u32
    }
}

impl Room {
    /// Schedules what changed: pending updates at the end of this mailbox
    /// turn (sent then if the last update broadcast is written, else when
    /// it is), presence at once after a quiet interval, else at its end.
    pub(super) fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.fanout.pending.is_empty() && !self.fanout.queued {
            self.fanout.queued = true;
            ctx.spawn(fut::ready(()).map(|(), room: &mut Room, ctx| {
                room.fanout.queued = false;
                room.flush_updates_when_idle(ctx);
            }));
        }
        if !self.fanout.presence_scheduled {
            self.fanout.presence_scheduled = true;
            let interval = Fanout::presence_interval(&self.config.limits, self.members.len());
            let wait = interval.saturating_sub(self.fanout.last_presence.elapsed());
            ctx.run_later(wait, |room, ctx| {
                room.fanout.presence_scheduled = false;
                room.fanout.last_presence = Instant::now();
                room.flush_presence();
                if room.presence.total_pending() {
                    // A big room's count held back: told at a later interval.
                    room.schedule_flush(ctx);
                }
            });
        }
    }

    /// Sends pending updates if the last update broadcast is written and
    /// the room's send budget allows; else they wait for it ([`FlightDone`],
    /// one tick at most) and for the budget.
    fn flush_updates_when_idle(&mut self, ctx: &mut Context<Self>) {
        if self.fanout.pending.is_empty() {
            return;
        }
        if self.fanout.flight_idle() {
            let hold = self.fanout.hold(Instant::now());
            if hold.is_zero() {
                return self.flush_updates();
            }
            if !self.fanout.held {
                self.fanout.held = true;
                ctx.run_later(hold, |room, ctx| {
                    room.fanout.held = false;
                    room.flush_updates_when_idle(ctx);
                });
            }
            return;
        }
        if self.fanout.fallback {
            return;
        }
        self.fanout.fallback = true;
        let seq = self.fanout.flight_seq;
        ctx.run_later(self.config.limits.tick(), move |room, ctx| {
            room.fanout.fallback = false;
            if room.fanout.flight_seq == seq {
                // Still the same flight: stragglers do not hold the room.
                room.fanout.flight = None;
            }
            room.flush_updates_when_idle(ctx);
        });
    }

    /// Broadcasts pending updates now (merged), then presence unless the
    /// room is big enough for a presence interval longer than a tick and
    /// that has not passed, or above `presence_list_max_members` (a
    /// joiner's snapshot then shows everyone who joined before it, in small
    /// rooms; in a room above the bound it lists only part of the room
    /// anyway, and a diff per join would be a frame per join to everyone).
    pub(super) fn flush(&mut self) {
        self.flush_updates();
        let limits = &self.config.limits;
        let interval = Fanout::presence_interval(limits, self.members.len());
        let every_tick = interval <= limits.tick();
        let due = every_tick || self.fanout.last_presence.elapsed() >= interval;
        // Above the bound only the timer flushes presence: it re-arms
        // itself while a count is held back (`presence_total_interval_ms`).
        if due && !self.presence.is_partial() {
            self.fanout.last_presence = Instant::now();
            self.flush_presence();
        }
    }

    /// Broadcasts pending updates now, merged into one message.
    fn flush_updates(&mut self) {
        if self.fanout.pending.is_empty() {
            return;
        }
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
        let flight = self.fanout.new_flight();
        let base = &self.fanout;
        let tracked = self
            .members
            .fan_out_tracked(&msg, except.as_ref(), flight.as_ref(), || base.base());
        self.fanout.flight = flight.filter(|f| !f.arm(tracked / FLIGHT_STRAGGLERS));
        let hold = self.config.limits.update_hold(self.members.len());
        self.fanout.not_before = (!hold.is_zero()).then(|| Instant::now() + hold);
    }

    /// Sends every member the presence diff and cursors collected since the
    /// last broadcast, and `/yjs` members the awareness changes.
    fn flush_presence(&mut self) {
        if self.presence.has_diff() {
            let gap = self.config.limits.presence_total_interval();
            let diff = self.presence.take_diff_at(Instant::now(), gap);
            let (joined, updated, left) = (&diff.joined, &diff.updated, &diff.left);
            self.events.record(
                "presence",
                || serde_json::json!({ "joined": joined, "updated": updated, "left": left }),
            );
            self.share_presence(&diff);
            if diff.has_shown() {
                // In a room above the bound: the listed members' changes,
                // everyone's state changes and the total, not every join.
                let msg = ServerMessage::Presence {
                    room: self.id.to_string(),
                    snapshot: false,
                    joined: diff.shown_joined,
                    updated: diff.updated,
                    left: diff.shown_left,
                    total: diff.total,
                    partial: diff.partial,
                };
                self.fan_out(&msg, Class::Presence, None);
            }
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

impl Handler<FlightDone> for Room {
    type Result = ();

    /// The last update broadcast is written: what accumulated meanwhile
    /// goes out now.
    fn handle(&mut self, msg: FlightDone, ctx: &mut Context<Self>) {
        if msg.seq == self.fanout.flight_seq {
            if self.fanout.flight_idle() {
                // Not kept while the room is quiet.
                self.fanout.flight = None;
            }
            self.flush_updates_when_idle(ctx);
        }
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
                    if let Some(frame) = self.awareness.resync_frame() {
                        self.members.send_y(link, &frame, Class::Control);
                    }
                }
            }
        }
    }
}
