//! The room's presence handlers: a member's state, cursor and typing
//! indicator, and the snapshot a joiner gets. The map itself is
//! [`crate::presence::Presence`]; what `/yjs` clients see of it is
//! [`super::yjs_bridge`].

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;

use super::document::{exact_bytes, valid_position};
use super::messages::{ListPresence, PresencePage, SetCursor, SetPresence, SetTyping};
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

/// Checks the `after` (the decimal `next` of a page) and `limit` (1 to
/// `max`, default `max`) of a `presence_list` request or of
/// `GET /rooms/{room}/presence`; the error text says what is wrong.
pub fn check_page(
    after: Option<&str>,
    limit: Option<u64>,
    max: usize,
) -> Result<(Option<u64>, usize), String> {
    let after = match after {
        None => None,
        Some(a) => match a.parse::<u64>() {
            Ok(n) if a.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => {
                return Err("after must be the `next` of a previous page (a decimal number)".into())
            }
        },
    };
    let limit = limit.unwrap_or(max as u64);
    if limit == 0 || limit > max as u64 {
        return Err(format!(
            "limit must be 1 to {max} (presence_list_max_members), not {limit}"
        ));
    }
    Ok((after, limit as usize))
}

impl Room {
    /// The members for a joiner's presence snapshot (the listed ones, see
    /// [`crate::presence`]), encoded once per presence generation: a storm
    /// of joins does not encode every member again for every joiner.
    pub(super) fn presence_base(&mut self) -> (usize, Bytes) {
        let generation = self.presence.generation();
        if let Some((at, count, bytes)) = &self.presence_base.cached {
            if *at == generation {
                return (*count, bytes.clone());
            }
        }
        let members = self.presence.listed();
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

    /// The room's member count when a member's list cannot hold every
    /// member (the room is above `presence_list_max_members`).
    pub(super) fn presence_total(&self) -> Option<u64> {
        self.presence
            .is_partial()
            .then_some(self.presence.len() as u64)
    }

    /// Up to `limit` members in join order after join order `after`, with
    /// the room's total and the next page's `after`: the one answer to a
    /// member's `presence_list` and to `GET /rooms/{room}/presence`. In
    /// cluster mode the room's presence holds every node's members, so the
    /// pages span the nodes. `limit` is capped at
    /// `presence_list_max_members` (callers check it with [`check_page`]):
    /// a page costs the room O(`limit`), never O(members).
    pub(super) fn presence_page(&self, after: Option<u64>, limit: usize) -> PresencePage {
        let limit = limit.min(self.config.limits.presence_list_max_members);
        let page = self.presence.page(after, limit);
        PresencePage {
            members: page.members,
            next: page.next,
            total: page.total as u64,
        }
    }

    /// The listed members (every member in a room within the bound), as a
    /// native presence snapshot (a lagging member's resync).
    pub(super) fn presence_snapshot(&self) -> ServerMessage {
        let total = self.presence_total();
        ServerMessage::Presence {
            room: self.id.to_string(),
            snapshot: true,
            joined: self.presence.listed(),
            updated: Vec::new(),
            left: Vec::new(),
            total,
            partial: total.is_some(),
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

impl Handler<ListPresence> for Room {
    type Result = MessageResult<ListPresence>;

    /// A page of the member list, for a member of the room.
    fn handle(&mut self, msg: ListPresence, _: &mut Context<Self>) -> Self::Result {
        if !self.members.contains(&msg.member) {
            return MessageResult(Err((ErrorCode::NotJoined, "join the room first".into())));
        }
        MessageResult(Ok(self.presence_page(msg.after, msg.limit)))
    }
}

#[cfg(test)]
mod tests {
    use super::check_page;

    #[test]
    fn page_requests_are_checked() {
        assert_eq!(check_page(None, None, 500), Ok((None, 500)));
        assert_eq!(check_page(Some("42"), Some(7), 500), Ok((Some(42), 7)));
        for bad in ["", "-1", "+3", "x", "1e3", "18446744073709551616"] {
            let e = check_page(Some(bad), None, 500).unwrap_err();
            assert!(e.contains("after must be"), "{bad:?}: {e}");
        }
        for bad in [0, 501, u64::MAX] {
            let e = check_page(None, Some(bad), 500).unwrap_err();
            assert!(e.contains("limit must be 1 to 500"), "{bad}: {e}");
        }
    }
}
