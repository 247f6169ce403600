//! The room's presence handlers: a member's state, cursor and typing
//! indicator, and the snapshot a joiner gets. The map itself is
//! [`crate::presence::Presence`]; what `/yjs` clients see of it is
//! [`super::yjs_bridge`].

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;

use super::document::{exact_bytes, valid_position};
use super::messages::{SetCursor, SetPresence, SetTyping};
use super::Room;
use crate::outbox::Frame;
use crate::protocol::native::{encode_members, encode_server, ServerMessage};
use crate::protocol::ErrorCode;

/// The members of a presence generation, encoded once for every native
/// joiner's snapshot until the next diff is taken (the diff then tells the
/// joiners what changed since).
#[derive(Default)]
pub(super) struct PresenceBase {
    /// `(generation, member count, encoded members)`.
    cached: Option<(u64, usize, Bytes)>,
    /// `(cursor version, the joiners' cursor frame)`: `None` inside when
    /// no member has a cursor. Collecting every cursor is O(members), so
    /// it is done once per change of the cursors, not once per joiner.
    cursors: Option<(u64, Option<Frame>)>,
}

impl Room {
    /// The members for a joiner's presence snapshot, encoded once per
    /// presence generation: a storm of joins does not encode every member
    /// again for every joiner.
    pub(super) fn presence_base(&mut self) -> (usize, Bytes) {
        let generation = self.presence.generation();
        if let Some((at, count, bytes)) = &self.presence_base.cached {
            if *at == generation {
                return (*count, bytes.clone());
            }
        }
        let members = self.presence.snapshot();
        let bytes = exact_bytes(encode_members(&members));
        self.presence_base.cached = Some((generation, members.len(), bytes.clone()));
        (members.len(), bytes)
    }

    /// Every member's cursor as one native frame for joiners (`None`: no
    /// cursors), made once per cursor version and shared.
    pub(super) fn joiner_cursors(&mut self) -> Option<Frame> {
        let version = self.presence.cursor_version();
        if let Some((at, frame)) = &self.presence_base.cursors {
            if *at == version {
                return frame.clone();
            }
        }
        let cursors = self.presence.cursors();
        let frame = (!cursors.is_empty()).then(|| {
            Frame::binary(&encode_server(&ServerMessage::Cursor {
                room: self.id.to_string(),
                cursors,
            }))
        });
        self.presence_base.cursors = Some((version, frame.clone()));
        frame
    }

    /// Every member, as a native presence snapshot.
    pub(super) fn presence_snapshot(&self) -> ServerMessage {
        ServerMessage::Presence {
            room: self.id.to_string(),
            snapshot: true,
            joined: self.presence.snapshot(),
            updated: Vec::new(),
            left: Vec::new(),
        }
    }

    /// Checks a presence state: a JSON object within `max_presence_bytes`.
    pub(super) fn check_presence(&self, state: &Value) -> Result<(), (ErrorCode, String)> {
        if !state.is_object() {
            return Err((ErrorCode::BadMessage, "presence state must be a map".into()));
        }
        let size = serde_json::to_vec(state).map_or(usize::MAX, |v| v.len());
        let max = self.config.limits.max_presence_bytes;
        if size > max {
            return Err((
                ErrorCode::PresenceTooLarge,
                format!("presence state is {size} bytes, over max_presence_bytes ({max})"),
            ));
        }
        Ok(())
    }

    /// Arms the timer that turns lapsed `typing: on` indicators off.
    pub(super) fn schedule_typing_sweep(&mut self, ctx: &mut Context<Self>) {
        if let Some(h) = self.typing_timer.take() {
            ctx.cancel_future(h);
        }
        let Some(deadline) = self.presence.next_typing_deadline() else {
            return;
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        self.typing_timer = Some(ctx.run_later(wait, |room, ctx| {
            room.typing_timer = None;
            for id in room.presence.expire_typing(Instant::now()) {
                room.send_typing(&id, false);
                room.awareness.touch(id);
            }
            if room.awareness.has_dirty() {
                room.schedule_flush(ctx);
            }
            room.schedule_typing_sweep(ctx);
        }));
    }
}

impl Handler<SetPresence> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetPresence, ctx: &mut Context<Self>) {
        if let Err((code, e)) = self.check_presence(&msg.state) {
            return self.members.error_to_member(&msg.member, code, e, msg.rid);
        }
        if self.presence.set_state(&msg.member, msg.state) {
            self.awareness.touch(msg.member);
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<SetCursor> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetCursor, ctx: &mut Context<Self>) {
        if !valid_position(&msg.anchor) || !valid_position(&msg.head) {
            return self.members.error_to_member(
                &msg.member,
                ErrorCode::BadUpdate,
                "cursor anchor/head must be encoded Yjs relative positions",
                msg.rid,
            );
        }
        self.presence.set_cursor(&msg.member, msg.anchor, msg.head);
        if self.presence.contains(&msg.member) {
            self.awareness.touch(msg.member);
        }
        self.schedule_flush(ctx);
    }
}

impl Handler<SetTyping> for Room {
    type Result = ();

    fn handle(&mut self, msg: SetTyping, ctx: &mut Context<Self>) {
        let until = msg
            .on
            .then(|| Instant::now() + self.config.limits.typing_ttl());
        if let Some(on) = self.presence.set_typing(&msg.member, until) {
            self.send_typing(&msg.member, on);
            self.awareness.touch(msg.member.clone());
            self.schedule_flush(ctx);
        }
        self.schedule_typing_sweep(ctx);
    }
}
