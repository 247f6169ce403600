//! The `/yjs` side of a room: sync step 2 for a y-protocols client, and
//! the bridge between awareness and native presence.
//!
//! Mapping, native → awareness: see [`Room::flush_awareness`]; awareness →
//! native: [`Room::sync_yjs_presence`].

use super::*;

impl Room {
    /// Rewrites the awareness view of native members that changed and sends
    /// every awareness change of this tick to the `/yjs` members, as one
    /// message encoded once. The sender of a state gets it back too: the
    /// stock client ignores its own state at an equal clock, and the echo
    /// is what keeps its "no message for 30 s" watchdog quiet in an idle room.
    ///
    /// Mapping, native → awareness: a native member is the awareness client
    /// `yjs::derived_client_id(member id)`; its state is its presence map,
    /// plus `cursor: {anchor, head}` (each a Yjs `RelativePosition` as JSON,
    /// converted from the binary native cursor) when it has a cursor, plus
    /// `typing: true` while typing. Awareness → native: see
    /// [`Room::sync_yjs_presence`].
    pub(super) fn flush_awareness(&mut self) {
        let now = Instant::now();
        let dirty = std::mem::take(&mut self.native_dirty);
        if self.awareness_native {
            for id in dirty {
                match self.presence.shown(&id) {
                    Some(shown) => {
                        let json = native_awareness_json(shown);
                        self.awareness.set_native(&id, json, now);
                    }
                    None => self.awareness.remove_owner(&id),
                }
            }
        }
        if let Some(frame) = self.awareness.take_frame() {
            let frame = Frame::binary(&frame);
            self.fan_out_with(Class::Presence, None, |p| {
                (p == Protocol::Yjs).then(|| frame.clone())
            });
        }
    }

    /// Mirrors a `/yjs` connection's awareness into native presence. The
    /// connection is a presence member while it has a live awareness state
    /// (its most recently renewed one if it uses several client ids); the
    /// member's presence map is that state without `cursor` (a non-object
    /// state appears as `{"state": …}`), and a `cursor: {anchor, head}` of
    /// Yjs `RelativePosition` JSON becomes its native cursor (binary). A
    /// `null` or expired state, or a closed connection, removes the member.
    pub(super) fn sync_yjs_presence(&mut self, owner: &MemberId) {
        let Some(state) = self.awareness.owner_state(owner).cloned() else {
            self.presence.leave(owner);
            return;
        };
        let (map, cursor) = split_yjs_state(state);
        match self.presence.shown(owner) {
            Some(shown) => {
                if *shown.state != map {
                    self.presence.set_state(owner, map);
                }
            }
            None => {
                let user = self.members.get(owner).and_then(|m| m.link.user.clone());
                self.presence.join(owner.clone(), user, map);
            }
        }
        let Some(shown) = self.presence.shown(owner) else {
            return;
        };
        let current = (
            shown.anchor.map(<[u8]>::to_vec),
            shown.head.map(<[u8]>::to_vec),
        );
        match cursor {
            Some(c) if !shown.has_cursor || c != current => {
                self.presence.set_cursor(owner, c.0, c.1)
            }
            None if shown.has_cursor => self.presence.set_cursor(owner, None, None),
            _ => {}
        }
    }

    /// Expires silent awareness states and renews native members' ones.
    pub(super) fn sweep_awareness(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let ttl = self.config.limits.presence_ttl();
        let owners = self.awareness.expire(now, ttl);
        let mut changed = !owners.is_empty();
        for owner in &owners {
            self.sync_yjs_presence(owner);
        }
        let has_yjs = self
            .members
            .values()
            .any(|m| m.link.protocol == Protocol::Yjs);
        if has_yjs
            && self.awareness.has_native()
            && now.duration_since(self.native_renewed) >= ttl / 2
        {
            self.awareness.renew_native(now);
            self.native_renewed = now;
            changed = true;
        }
        if changed {
            self.schedule_flush(ctx);
        }
    }

    /// A `/yjs` join: like `synced` + presence snapshot of a native join,
    /// in y-protocols terms. The room sends sync step 1 (its state vector)
    /// and the current awareness states (when there are any), as the stock
    /// y-websocket server does; the client's own step 1, sent as soon as it
    /// connects, is answered with step 2 ([`SyncStep1`]). The connection
    /// joins native presence once it announces an awareness state.
    pub(super) fn join_yjs(&mut self, link: MemberLink, ctx: &mut Context<Self>) {
        // Deliver pending updates first, and the awareness of this tick.
        self.flush();
        if !self.awareness_native {
            // The first Yjs client: native members get their entries now,
            // so that its awareness snapshot below shows them, and from now
            // on silent states expire and native ones are renewed.
            self.awareness_native = true;
            self.native_dirty.extend(self.presence.ids().cloned());
            self.flush_awareness();
            let every = (self.config.limits.presence_ttl() / 10).max(Duration::from_millis(10));
            ctx.run_interval(every, |room, ctx| room.sweep_awareness(ctx));
        }
        let step1 = Frame::binary(&yjs::sync_step1(&self.doc.transact().state_vector()));
        send_frame(&link, &step1, Class::Control);
        if let Some(frame) = self.awareness.snapshot_frame() {
            send_frame(&link, &Frame::binary(&frame), Class::Control);
        }
        self.members.insert(
            link.id.clone(),
            Member {
                link: link.clone(),
                resync_from: None,
                presence_stale: false,
            },
        );
        self.member_added(&link);
        if let Some(h) = self.idle_timer.take() {
            ctx.cancel_future(h);
        }
    }
}

/// A native cursor: (anchor, head), binary relative positions.
type NativeCursor = (Option<Vec<u8>>, Option<Vec<u8>>);

/// The awareness state JSON of a native member (see [`Room::flush_awareness`]).
pub(super) fn native_awareness_json(shown: Shown<'_>) -> String {
    let mut obj = match shown.state {
        Value::Object(m) => m.clone(),
        other => {
            let mut m = Map::new();
            m.insert("state".into(), other.clone());
            m
        }
    };
    if shown.anchor.is_some() || shown.head.is_some() {
        let pos = |p: Option<&[u8]>| p.and_then(yjs::position_to_json).unwrap_or(Value::Null);
        obj.insert(
            "cursor".into(),
            serde_json::json!({ "anchor": pos(shown.anchor), "head": pos(shown.head) }),
        );
    }
    if shown.typing {
        obj.insert("typing".into(), Value::Bool(true));
    }
    // unwrap_or: a map of JSON values always serializes.
    serde_json::to_string(&Value::Object(obj)).unwrap_or_else(|_| "{}".into())
}

/// Splits a Yjs awareness state into the native presence map and cursor
/// (see [`Room::sync_yjs_presence`]).
pub(super) fn split_yjs_state(state: Value) -> (Value, Option<NativeCursor>) {
    let mut map = match state {
        Value::Object(m) => m,
        other => {
            let mut m = Map::new();
            m.insert("state".into(), other);
            return (Value::Object(m), None);
        }
    };
    let cursor = match map.remove("cursor") {
        Some(Value::Object(c)) => {
            let anchor = c.get("anchor").and_then(yjs::position_from_json);
            let head = c.get("head").and_then(yjs::position_from_json);
            (anchor.is_some() || head.is_some()).then_some((anchor, head))
        }
        _ => None,
    };
    (Value::Object(map), cursor)
}

impl Handler<SyncStep1> for Room {
    type Result = ();

    fn handle(&mut self, msg: SyncStep1, _: &mut Context<Self>) {
        if !self.members.contains_key(&msg.member) {
            return;
        }
        // Pending updates go out first, so the diff does not repeat them.
        self.flush();
        let Some(member) = self.members.get_mut(&msg.member) else {
            return;
        };
        // The diff brings a lagging member up to date as well.
        member.resync_from = None;
        let diff = self.diff_from(&msg.sv);
        let frame = Frame::binary_parts(&yjs::sync_step2_head(diff.len()), diff, &[]);
        if let Some(member) = self.members.get(&msg.member) {
            send_frame(&member.link, &frame, Class::Control);
        }
    }
}

impl Handler<AwarenessUpdate> for Room {
    type Result = ();

    fn handle(&mut self, msg: AwarenessUpdate, ctx: &mut Context<Self>) {
        if !self.members.contains_key(&msg.member) {
            return;
        }
        let max = self.config.limits.max_awareness_clients;
        if self
            .awareness
            .apply_remote(&msg.member, msg.entries, max, Instant::now())
        {
            self.sync_yjs_presence(&msg.member);
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<QueryAwareness> for Room {
    type Result = ();

    fn handle(&mut self, msg: QueryAwareness, _: &mut Context<Self>) {
        self.flush();
        let Some(member) = self.members.get(&msg.member) else {
            return;
        };
        // An empty room answers with an empty update, so the query has a reply.
        let frame = self
            .awareness
            .snapshot_frame()
            .unwrap_or_else(|| yjs::awareness([]));
        send_frame(&member.link, &Frame::binary(&frame), Class::Control);
    }
}
