//! The room's side of cluster mode (see [`crate::cluster`]): what it
//! publishes (only what its local members did) and how it applies items
//! from other nodes (fanned out locally, never published again).

use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

use super::Room;
use crate::cluster::{node_of, Bridge, Envelope, Item, NodesDead, Remote, Resubscribed};
use crate::presence::MemberId;
use crate::protocol::native::{CursorView, MemberView, ServerMessage};
use crate::session::transport::Class;

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

    /// Publishes the local updates of this tick, merged into one.
    pub(super) fn publish_updates(&mut self) {
        if self.cluster_out.is_empty() {
            return;
        }
        let out = std::mem::take(&mut self.cluster_out);
        let merged = if out.len() == 1 {
            Ok(out[0].to_vec())
        } else {
            yrs::merge_updates_v1(out.iter().map(|b| b.as_ref()))
        };
        match merged {
            Ok(data) => self.cluster_publish(Item::Update(data)),
            Err(e) => {
                tracing::warn!(room = %self.id, "merging updates to publish failed: {e}");
                for part in out {
                    self.cluster_publish(Item::Update(part.to_vec()));
                }
            }
        }
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

    /// Asks the other nodes for what this node lacks (document and
    /// presence): on subscription, after a reconnection, after a gap.
    pub(super) fn say_hello(&mut self) {
        let Some(bridge) = self.cluster.clone() else {
            return;
        };
        let sv = self.doc.transact().state_vector().encode_v1();
        let (members, cursors) = self.local_presence(&bridge);
        self.cluster_publish(Item::Hello {
            sv,
            members,
            cursors,
        });
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

    fn apply_remote_update(&mut self, data: Vec<u8>, ctx: &mut Context<Self>) {
        if let Err((_, e)) = self.apply_any_update(&Bytes::from(data), None, ctx) {
            tracing::warn!(room = %self.id, "update from another node refused: {e}");
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
        let last = self.remote_seq.insert(e.node.clone(), (e.epoch, e.seq));
        let gap = is_gap(last, e.epoch, e.seq);
        match e.item {
            Item::Update(data) => self.apply_remote_update(data, ctx),
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
                sv,
                members: theirs,
                cursors: their_cursors,
            } => {
                self.node_members(&bridge, &e.node, theirs);
                self.remote_cursors(&bridge, their_cursors);
                self.schedule_flush(ctx);
                let sv = match StateVector::decode_v1(&sv) {
                    Ok(sv) => sv,
                    Err(err) => {
                        return tracing::warn!(room = %self.id, node = %e.node, "bad state vector in hello: {err}")
                    }
                };
                let diff = self.doc.transact().encode_diff_v1(&sv);
                let (members, cursors) = self.local_presence(&bridge);
                self.cluster_publish(Item::State {
                    to: e.node.clone(),
                    diff,
                    members,
                    cursors,
                });
            }
            Item::State {
                to,
                diff,
                members,
                cursors,
            } => {
                if to != bridge.node() {
                    return;
                }
                self.apply_remote_update(diff, ctx);
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

impl Handler<Resubscribed> for Room {
    type Result = ();

    fn handle(&mut self, _: Resubscribed, _: &mut Context<Self>) {
        if self.broken.is_none() {
            self.say_hello();
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
