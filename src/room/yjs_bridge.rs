//! The `/yjs` side of a room: sync for y-protocols clients, and the bridge
//! between awareness and native presence ([`YjsPresence`]).
//!
//! Mapping, native → awareness: see [`Room::flush_awareness`]; awareness →
//! native: [`Room::sync_yjs_presence`].

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde_json::{Map, Value};

use super::awareness::AwarenessTable;
use super::messages::{AwarenessUpdate, MemberLink, Protocol, QueryAwareness, SyncStep1};
use super::Room;
use crate::ids::MemberId;
use crate::outbox::{Class, Frame};
use crate::presence::Shown;
use crate::protocol::yjs;

/// The room's awareness: the table `/yjs` clients see, and which native
/// members' entries must be rewritten.
pub(super) struct YjsPresence {
    /// Awareness client ids (Yjs clients' and native members' derived
    /// ones); made when the first y-protocols member arrives, so a room
    /// only native clients use does not carry it.
    table: Option<Box<AwarenessTable>>,
    /// Most states shown to a y-protocols client.
    max_shown: usize,
    /// Native members whose awareness view must be rewritten at the next tick.
    dirty: BTreeSet<MemberId>,
    /// Set by the first `/yjs` member: from then on native members have
    /// awareness entries and the awareness sweep runs. A room only native
    /// clients use keeps no entries and no timer.
    native: bool,
    /// Last time native members' awareness states were renewed.
    renewed: Instant,
}

impl YjsPresence {
    /// No awareness yet; at most `max_shown` states are shown to
    /// y-protocols clients (see [`AwarenessTable`], *Big rooms*).
    pub(super) fn new(max_shown: usize) -> Self {
        YjsPresence {
            table: None,
            max_shown,
            dirty: BTreeSet::new(),
            native: false,
            renewed: Instant::now(),
        }
    }

    /// Member `id`'s presence changed: its awareness view is rewritten at
    /// the next broadcast.
    pub(super) fn touch(&mut self, id: MemberId) {
        self.dirty.insert(id);
    }

    /// True when some native view must be rewritten.
    pub(super) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Member `id` left: its awareness entries are removed.
    pub(super) fn forget(&mut self, id: &MemberId) {
        self.dirty.remove(id);
        if let Some(table) = &mut self.table {
            table.remove_owner(id);
        }
    }

    /// Forgets every pending rewrite (the room was reset).
    pub(super) fn clear_dirty(&mut self) {
        self.dirty.clear();
    }

    /// Every awareness state, as one y-protocols message.
    pub(super) fn snapshot_frame(&self) -> Option<std::sync::Arc<[u8]>> {
        self.table.as_ref()?.snapshot_frame()
    }

    /// What a member that missed awareness messages is sent once it
    /// drains (see [`AwarenessTable::resync_frame`]).
    pub(super) fn resync_frame(&self) -> Option<Vec<u8>> {
        self.table.as_ref()?.resync_frame()
    }

    /// The table, made on first use.
    fn table(&mut self) -> &mut AwarenessTable {
        let max_shown = self.max_shown;
        self.table
            .get_or_insert_with(|| Box::new(AwarenessTable::new(max_shown)))
    }
}

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
    /// `typing: true` while typing, plus `user: {name, color}` from its
    /// `name` / `color` when it has no `user` of its own. Awareness → native: see
    /// [`Room::sync_yjs_presence`].
    pub(super) fn flush_awareness(&mut self) {
        let now = Instant::now();
        let dirty = std::mem::take(&mut self.awareness.dirty);
        if self.awareness.native {
            for id in dirty {
                match self.presence.shown(&id) {
                    Some(shown) => {
                        let json = native_awareness_json(shown);
                        self.awareness.table().set_native(&id, json, now);
                    }
                    None => self.awareness.forget(&id),
                }
            }
        }
        if let Some(frame) = self.awareness.table.as_mut().and_then(|t| t.take_frame()) {
            let base = &self.fanout;
            let members = &mut self.members;
            let framed: [Option<Frame>; 2] = [
                members.y_frame(Protocol::Yjs, &frame),
                members.y_frame(Protocol::Hocuspocus, &frame),
            ];
            members.fan_out_with(
                Class::Presence,
                None,
                |p| match p {
                    Protocol::Native => None,
                    Protocol::Yjs => framed[0].clone(),
                    Protocol::Hocuspocus => framed[1].clone(),
                },
                || base.base(),
            );
        }
    }

    /// Mirrors a `/yjs` connection's awareness into native presence. The
    /// connection is a presence member while it has a live awareness state
    /// (its most recently renewed one if it uses several client ids); the
    /// member's presence map is that state without `cursor` (a non-object
    /// state appears as `{"state": …}`), with `name` / `color` copied from
    /// `user.name` / `user.color` when it has none at the top level, and a `cursor: {anchor, head}` of
    /// Yjs `RelativePosition` JSON becomes its native cursor (binary). A
    /// `null` or expired state, or a closed connection, removes the member.
    pub(super) fn sync_yjs_presence(&mut self, owner: &MemberId) {
        let Some(state) = self
            .awareness
            .table
            .as_ref()
            .and_then(|t| t.owner_state(owner))
            .cloned()
        else {
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
                let user = self.members.link(owner).and_then(|l| l.user.clone());
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
        let owners = self.awareness.table().expire(now, ttl);
        let mut changed = !owners.is_empty();
        for owner in &owners {
            self.sync_yjs_presence(owner);
        }
        let has_yjs = self.members.any(Protocol::Yjs) || self.members.any(Protocol::Hocuspocus);
        if has_yjs
            && self.awareness.table().has_native()
            && now.duration_since(self.awareness.renewed) >= renew_every(ttl)
        {
            self.awareness.table().renew_native(now);
            self.awareness.renewed = now;
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
        if !self.awareness.native {
            // The first Yjs client: native members get their entries now,
            // so that its awareness snapshot below shows them, and from now
            // on silent states expire and native ones are renewed.
            self.awareness.native = true;
            self.awareness.dirty.extend(self.presence.ids().cloned());
            self.flush_awareness();
            let every = sweep_every(self.config.limits.presence_ttl());
            ctx.run_interval(every, |room, ctx| room.sweep_awareness(ctx));
        }
        let step1 = yjs::sync_step1(&self.document.state_vector());
        self.members.send_y(&link, &step1, Class::Control);
        if let Some(frame) = self.awareness.snapshot_frame() {
            self.members.send_y(&link, &frame, Class::Control);
        }
        self.member_added(link, ctx);
    }
}

/// How often native members' awareness states are renewed: half the TTL,
/// and never less often than every 15 s, since stock y-protocols clients
/// drop a remote state not renewed for 30 s whatever the server's TTL.
pub(super) fn renew_every(ttl: Duration) -> Duration {
    (ttl / 2).min(STOCK_RENEW)
}

/// How often the awareness sweep runs: a tenth of the TTL (at least 10 ms),
/// and at least every fifth of [`STOCK_RENEW`], so renewals are not late.
pub(super) fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 10)
        .max(Duration::from_millis(10))
        .min(STOCK_RENEW / 5)
}

/// Half of y-protocols' `outdatedTimeout` (30 s).
const STOCK_RENEW: Duration = Duration::from_secs(15);

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
    // One presence model: editor bindings read `user: {name, color}`.
    if !obj.contains_key("user") {
        let user: Map<String, Value> = ["name", "color"]
            .into_iter()
            .filter_map(|k| Some((k.to_owned(), obj.get(k)?.clone())))
            .collect();
        if !user.is_empty() {
            obj.insert("user".into(), Value::Object(user));
        }
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
    // One presence model: `user.name` / `user.color` (editor bindings)
    // are the native member's `name` / `color`, unless it set its own.
    if let Some(Value::Object(user)) = map.get("user") {
        let copied: Vec<(String, Value)> = ["name", "color"]
            .into_iter()
            .filter(|k| !map.contains_key(*k))
            .filter_map(|k| Some((k.to_owned(), user.get(k)?.clone())))
            .collect();
        map.extend(copied);
    }
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
        if !self.members.contains(&msg.member) {
            return;
        }
        // Pending updates go out first, so the diff does not repeat them.
        self.flush();
        // The diff brings a lagging member up to date as well.
        self.members.forget_dropped_deltas(&msg.member);
        let diff = self.document.diff_from(&msg.sv);
        if let Some(link) = self.members.link(&msg.member) {
            if let Some(frame) = self.members.y_step2(link.protocol, diff) {
                self.members.send_frame(link, &frame, Class::Control);
            }
        }
    }
}

impl Handler<AwarenessUpdate> for Room {
    type Result = ();

    fn handle(&mut self, msg: AwarenessUpdate, ctx: &mut Context<Self>) {
        if !self.members.contains(&msg.member) {
            return;
        }
        let max = self.config.limits.max_awareness_clients;
        let applied =
            self.awareness
                .table()
                .apply_remote(&msg.member, msg.entries, max, Instant::now());
        if let (Some(reply), Some(link)) = (&applied.reply, self.members.link(&msg.member)) {
            self.members.send_y(link, reply, Class::Control);
        }
        if applied.taken {
            self.sync_yjs_presence(&msg.member);
            self.schedule_flush(ctx);
        }
    }
}

impl Handler<QueryAwareness> for Room {
    type Result = ();

    fn handle(&mut self, msg: QueryAwareness, _: &mut Context<Self>) {
        self.flush();
        let Some(link) = self.members.link(&msg.member) else {
            return;
        };
        // An empty room answers with an empty update, so the query has a reply.
        let frame = self
            .awareness
            .snapshot_frame()
            .unwrap_or_else(|| yjs::awareness([]).into());
        self.members.send_y(link, &frame, Class::Control);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shown(state: &Value) -> Shown<'_> {
        Shown {
            state,
            anchor: None,
            head: None,
            has_cursor: false,
            typing: false,
        }
    }

    #[test]
    fn native_states_are_renewed_before_stock_clients_drop_them() {
        for ttl in [1, 30, 60, 120, 3600] {
            let ttl = Duration::from_secs(ttl);
            let renew = renew_every(ttl);
            // Renewed at most one sweep late, always within 30 s.
            assert!(
                renew + sweep_every(ttl) < Duration::from_secs(30),
                "{ttl:?}"
            );
            assert!(renew <= ttl / 2, "{ttl:?}");
        }
        assert_eq!(
            renew_every(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
    }

    #[test]
    fn native_name_and_color_appear_as_awareness_user() {
        let state = json!({"name": "Ada", "color": "#ff0000", "role": "x"});
        let json: Value = serde_json::from_str(&native_awareness_json(shown(&state))).unwrap();
        assert_eq!(json["user"], json!({"name": "Ada", "color": "#ff0000"}));
        assert_eq!(json["name"], "Ada");
        // A member that set its own `user` keeps it.
        let own = json!({"name": "Ada", "user": {"name": "A."}});
        let json: Value = serde_json::from_str(&native_awareness_json(shown(&own))).unwrap();
        assert_eq!(json["user"], json!({"name": "A."}));
        // Nothing to map: no `user`.
        let none = json!({"role": "x"});
        let json: Value = serde_json::from_str(&native_awareness_json(shown(&none))).unwrap();
        assert!(json.get("user").is_none());
    }

    #[test]
    fn awareness_user_becomes_native_name_and_color() {
        let (map, cursor) =
            split_yjs_state(json!({"user": {"name": "Bo", "color": "#00ff00"}, "x": 1}));
        assert_eq!(map["name"], "Bo");
        assert_eq!(map["color"], "#00ff00");
        assert_eq!(map["user"]["name"], "Bo");
        assert!(cursor.is_none());
        // Top-level ones win.
        let (map, _) = split_yjs_state(json!({"name": "top", "user": {"name": "Bo"}}));
        assert_eq!(map["name"], "top");
        assert!(map.get("color").is_none());
    }
}
