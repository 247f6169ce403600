//! The room's side of cluster mode (see [`crate::cluster`]): the shared
//! log's entries (applied in log order, gaps read back from the stream, a
//! lost log written back), and the ephemeral items it publishes (only what
//! its local members did) or applies from other nodes (fanned out locally,
//! never published again).

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use yrs::{ReadTxn, Transact};

use super::{decode_update, Room};
use crate::cluster::{node_of, Bridge, Envelope, Item, Log, NodesDead, Remote, Resubscribed};
use crate::presence::MemberId;
use crate::protocol::native::{CursorView, MemberView, ServerMessage};
use crate::session::transport::Class;
use crate::store::redis::{LogFrame, LogRead};

/// Most log positions remembered while a read of missed entries is in
/// flight (beyond it a later gap just triggers one more read).
const SEEN_WHILE_READING: usize = 4096;

impl Room {
    /// Publishes one item of this room instance (cluster mode only).
    pub(super) fn cluster_publish(&mut self, item: Item) {
        let Some(bridge) = &self.cluster else {
            return;
        };
        self.cluster_seq += 1;
        bridge.publish(&Envelope {
            node: bridge.node().to_owned(),
            room: self.id.to_string(),
            epoch: self.epoch,
            seq: self.cluster_seq,
            item,
        });
    }

    /// Publishes the local members' part of a presence diff.
    pub(super) fn publish_presence(&mut self, msg: &ServerMessage) {
        let Some(bridge) = &self.cluster else {
            return;
        };
        let ServerMessage::Presence {
            joined,
            updated,
            left,
            ..
        } = msg
        else {
            return;
        };
        let local = |v: &Vec<MemberView>| -> Vec<MemberView> {
            v.iter()
                .filter(|m| bridge.is_local(&m.id))
                .cloned()
                .collect()
        };
        let (joined, updated) = (local(joined), local(updated));
        let left: Vec<String> = left
            .iter()
            .filter(|id| bridge.is_local(id))
            .cloned()
            .collect();
        if !(joined.is_empty() && updated.is_empty() && left.is_empty()) {
            self.cluster_publish(Item::Presence {
                joined,
                updated,
                left,
            });
        }
    }

    /// Asks the other nodes for their members (and tells them ours): on
    /// subscription, after a reconnection, after a gap.
    pub(super) fn say_hello(&mut self) {
        let Some(bridge) = self.cluster.clone() else {
            return;
        };
        let (members, cursors) = self.local_presence(&bridge);
        self.cluster_publish(Item::Hello { members, cursors });
    }

    /// Reads the log entries after `log_seq` (all of the log when its epoch
    /// changed), unless a read is already in flight.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let Some(bridge) = &self.cluster else {
            return;
        };
        if self.catching_up {
            self.catch_up_again = true;
            return;
        }
        self.catching_up = true;
        let read = bridge.read_since(&self.id, self.log_seq, self.log_epoch.as_deref());
        ctx.spawn(read.into_actor(self).map(|res, room, ctx| {
            room.catching_up = false;
            match res {
                Ok(read) => room.caught_up(read, ctx),
                // Redis is away: the reconnection (`Resubscribed`) reads again.
                Err(e) => tracing::warn!(room = %room.id, "reading missed log entries failed: {e}"),
            }
            if std::mem::take(&mut room.catch_up_again) {
                room.catch_up(ctx);
            }
        }));
    }

    /// Applies what a log read found; writes back what a lost log lacks.
    fn caught_up(&mut self, read: LogRead, ctx: &mut Context<Self>) {
        if self.broken.is_some() {
            return;
        }
        let lost = self.log_epoch.is_some() && self.log_epoch != read.epoch;
        let parts: Vec<&Bytes> = read.snapshot.iter().chain(read.updates.iter()).collect();
        let before = self.doc.transact().state_vector();
        for part in &parts {
            if let Err((_, e)) = self.apply_accepted(part, None, ctx) {
                tracing::error!(room = %self.id, "log entry refused: {e}");
            }
        }
        if self.doc.transact().state_vector() != before {
            if let Some(bridge) = &self.cluster {
                bridge.recovered();
            }
        }
        if lost {
            tracing::warn!(
                room = %self.id,
                "the room's log in Redis was lost or replaced: writing back what it lacks"
            );
            self.write_back(&parts, ctx);
        }
        if self.log_epoch != read.epoch {
            self.log_epoch = read.epoch;
            self.log_seq = 0;
        }
        self.log_seq = self.log_seq.max(read.last_seq);
        // Entries that arrived on the channel while the read was in flight.
        let mut seen = std::mem::take(&mut self.seen_while_reading);
        seen.retain(|(e, s)| self.log_epoch.as_ref() == Some(e) && *s > self.log_seq);
        seen.sort_unstable_by_key(|(_, s)| *s);
        for (_, s) in seen {
            if s == self.log_seq + 1 {
                self.log_seq = s;
            }
        }
        self.durable_seq = self.durable_seq.max(self.log_seq);
    }

    /// Appends to the (new) log what this copy has beyond `log` (the new
    /// log's content), so that nothing this node holds is lost with Redis's
    /// data.
    fn write_back(&mut self, log: &[&Bytes], ctx: &mut Context<Self>) {
        let theirs = yrs::Doc::new();
        {
            let mut txn = theirs.transact_mut();
            for part in log {
                if let Ok(u) = decode_update(part) {
                    let _ = txn.apply_update(u);
                }
            }
        }
        let sv = theirs.transact().state_vector();
        if !log.is_empty() && self.doc.transact().state_vector() == sv {
            // Nothing beyond the log but deletions, which it has too.
            return;
        }
        let diff = self.doc.transact().encode_diff_v1(&sv);
        self.write_to_log(Bytes::from(diff), ctx);
    }

    /// Appends an update this copy already holds to the shared log (no
    /// client waits for it).
    fn write_to_log(&mut self, update: Bytes, ctx: &mut Context<Self>) {
        let room = self.id.clone();
        ctx.spawn(self.append_update(update).map(move |res, _, _| {
            if let Err(e) = res {
                tracing::error!(room = %room, "writing back to the log failed (retried on reconnection): {e}");
            }
        }));
    }

    /// Adds or updates a member of another node.
    fn remote_member(&mut self, bridge: &Bridge, m: MemberView) {
        if bridge.is_local(&m.id) {
            return;
        }
        if let Some(node) = node_of(&m.id) {
            bridge.watch(node);
        }
        let id: MemberId = m.id.into();
        match self.presence.shown(&id) {
            Some(shown) if *shown.state == m.state => return,
            Some(_) => {
                self.presence.set_state(&id, m.state);
            }
            None => self
                .presence
                .join(id.clone(), m.user.map(Into::into), m.state),
        }
        self.native_dirty.insert(id);
    }

    /// Replaces what is known of `node`'s members with `members`, its
    /// complete list (members that left while items were lost go away).
    fn node_members(&mut self, bridge: &Bridge, node: &str, members: Vec<MemberView>) {
        let keep: std::collections::HashSet<&str> = members.iter().map(|m| m.id.as_str()).collect();
        let gone: Vec<MemberId> = self
            .presence
            .snapshot()
            .into_iter()
            .filter(|m| node_of(&m.id) == Some(node) && !keep.contains(m.id.as_str()))
            .map(|m| MemberId::from(m.id))
            .collect();
        for id in gone {
            if self.presence.leave(&id) {
                self.native_dirty.insert(id);
            }
        }
        for m in members {
            self.remote_member(bridge, m);
        }
    }

    fn remote_cursors(&mut self, bridge: &Bridge, cursors: Vec<CursorView>) {
        for c in cursors {
            if bridge.is_local(&c.id) {
                continue;
            }
            let id: MemberId = c.id.into();
            self.presence
                .set_cursor(&id, c.anchor.map(|b| b.0), c.head.map(|b| b.0));
            if self.presence.contains(&id) {
                self.native_dirty.insert(id);
            }
        }
    }

    /// This node's members and their cursors (the answer to a `Hello`).
    fn local_presence(&self, bridge: &Bridge) -> (Vec<MemberView>, Vec<CursorView>) {
        let members = self
            .presence
            .snapshot()
            .into_iter()
            .filter(|m| bridge.is_local(&m.id))
            .collect();
        let cursors = self
            .presence
            .cursors()
            .into_iter()
            .filter(|c| bridge.is_local(&c.id))
            .collect();
        (members, cursors)
    }

    /// Notes that entry `seq` of log `epoch` was seen: advances `log_seq`,
    /// or reads the log back after a gap or a change of epoch.
    fn log_position(&mut self, epoch: String, seq: u64, ctx: &mut Context<Self>) {
        if self.catching_up {
            if self.seen_while_reading.len() < SEEN_WHILE_READING {
                self.seen_while_reading.push((epoch, seq));
            }
            return;
        }
        match &self.log_epoch {
            Some(e) if *e == epoch => {
                if seq == self.log_seq + 1 {
                    self.log_seq = seq;
                    self.durable_seq = self.durable_seq.max(seq);
                } else if seq > self.log_seq + 1 {
                    tracing::debug!(room = %self.id, seq, have = self.log_seq, "gap in the log: reading it back");
                    if let Some(bridge) = &self.cluster {
                        bridge.gap();
                    }
                    self.catch_up(ctx);
                }
            }
            None if seq == self.log_seq + 1 => {
                // The log's first entries since this room loaded it empty.
                self.log_epoch = Some(epoch);
                self.log_seq = seq;
            }
            _ => self.catch_up(ctx),
        }
    }
}

/// True when `(epoch, seq)` does not follow what was last seen from that
/// node; pub/sub keeps one publisher's order, so a hole means lost items.
fn is_gap(last: Option<(u64, u64)>, epoch: u64, seq: u64) -> bool {
    match last {
        Some((e, s)) if e == epoch => seq != s + 1,
        _ => seq != 1,
    }
}

impl Handler<Remote> for Room {
    type Result = ();

    fn handle(&mut self, msg: Remote, ctx: &mut Context<Self>) {
        let Some(bridge) = self.cluster.clone() else {
            return;
        };
        if self.broken.is_some() {
            return;
        }
        let e = msg.envelope;
        let gap = e.seq != crate::cluster::UNSEQUENCED && {
            let last = self.remote_seq.insert(e.node.clone(), (e.epoch, e.seq));
            is_gap(last, e.epoch, e.seq)
        };
        match e.item {
            Item::Presence {
                joined,
                updated,
                left,
            } => {
                for m in joined.into_iter().chain(updated) {
                    self.remote_member(&bridge, m);
                }
                for id in left {
                    let id: MemberId = id.into();
                    if !bridge.is_local(&id) && self.presence.leave(&id) {
                        self.native_dirty.insert(id);
                    }
                }
                self.schedule_flush(ctx);
            }
            Item::Cursors(cursors) => {
                self.remote_cursors(&bridge, cursors);
                self.schedule_flush(ctx);
            }
            Item::Typing { id, on } => {
                let id: MemberId = id.into();
                if bridge.is_local(&id) {
                    return;
                }
                // The origin sends `off` when typing lapses there; the
                // local deadline (twice as long) only guards against a
                // lost `off`.
                let until = on.then(|| Instant::now() + self.config.limits.typing_ttl() * 2);
                if let Some(on) = self.presence.set_typing(&id, until) {
                    self.broadcast_typing(&id, on);
                    self.native_dirty.insert(id);
                    self.schedule_flush(ctx);
                }
                self.schedule_typing_sweep(ctx);
            }
            Item::Event { from, name, data } => {
                self.publish(
                    "event",
                    || serde_json::json!({ "from": from, "name": name, "data": data }),
                );
                let out = ServerMessage::Event {
                    room: self.id.to_string(),
                    from,
                    name,
                    data,
                };
                self.fan_out(&out, Class::Ephemeral, None);
            }
            Item::Hello {
                members: theirs,
                cursors: their_cursors,
            } => {
                self.node_members(&bridge, &e.node, theirs);
                self.remote_cursors(&bridge, their_cursors);
                self.schedule_flush(ctx);
                let (members, cursors) = self.local_presence(&bridge);
                self.cluster_publish(Item::State {
                    to: e.node.clone(),
                    members,
                    cursors,
                });
            }
            Item::State {
                to,
                members,
                cursors,
            } => {
                if to != bridge.node() {
                    return;
                }
                self.node_members(&bridge, &e.node, members);
                self.remote_cursors(&bridge, cursors);
                self.schedule_flush(ctx);
            }
        }
        if gap {
            tracing::debug!(room = %self.id, node = %e.node, "gap in the cluster sequence: resyncing");
            bridge.gap();
            self.say_hello();
        }
    }
}

impl Handler<Log> for Room {
    type Result = ();

    fn handle(&mut self, Log(frame): Log, ctx: &mut Context<Self>) {
        let Some(bridge) = self.cluster.clone() else {
            return;
        };
        if self.broken.is_some() {
            return;
        }
        match frame {
            LogFrame::Deleted { epoch, node } => {
                // The deleting node reset its copy already.
                if node != bridge.node() {
                    self.reset(ctx);
                }
                self.log_epoch = Some(epoch);
                self.log_seq = 0;
                self.seen_while_reading.clear();
            }
            LogFrame::Entry {
                epoch, seq, update, ..
            } => {
                // This node's own entries come without their update.
                if !update.is_empty() {
                    if let Err((_, e)) = self.apply_accepted(&update, None, ctx) {
                        tracing::error!(room = %self.id, seq, "log entry from another node refused: {e}");
                    }
                }
                self.log_position(epoch, seq, ctx);
            }
        }
    }
}

impl Handler<Resubscribed> for Room {
    type Result = ();

    fn handle(&mut self, _: Resubscribed, ctx: &mut Context<Self>) {
        if self.broken.is_some() {
            return;
        }
        self.say_hello();
        // Entries published while this room was not listening.
        self.catch_up(ctx);
        // Local updates whose append gave up while Redis was away.
        if !self.unlogged.is_empty() {
            let parts = std::mem::take(&mut self.unlogged);
            match yrs::merge_updates_v1(parts.iter().map(|b| b.as_ref())) {
                Ok(merged) => self.write_to_log(Bytes::from(merged), ctx),
                Err(e) => {
                    tracing::warn!(room = %self.id, "merging unlogged updates failed: {e}");
                    for part in parts {
                        self.write_to_log(part, ctx);
                    }
                }
            }
        }
    }
}

impl Handler<NodesDead> for Room {
    type Result = ();

    fn handle(&mut self, msg: NodesDead, ctx: &mut Context<Self>) {
        let gone: Vec<MemberId> = self
            .presence
            .snapshot()
            .into_iter()
            .filter(|m| node_of(&m.id).is_some_and(|n| msg.nodes.contains(n)))
            .map(|m| MemberId::from(m.id))
            .collect();
        for id in gone {
            if self.presence.leave(&id) {
                self.native_dirty.insert(id);
            }
        }
        self.remote_seq.retain(|node, _| !msg.nodes.contains(node));
        self.schedule_flush(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::is_gap;

    #[test]
    fn gaps() {
        assert!(!is_gap(None, 1, 1));
        assert!(is_gap(None, 1, 5));
        assert!(!is_gap(Some((1, 4)), 1, 5));
        assert!(is_gap(Some((1, 4)), 1, 6));
        assert!(!is_gap(Some((1, 9)), 2, 1));
        assert!(is_gap(Some((1, 9)), 2, 3));
    }
}
