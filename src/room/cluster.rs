//! The room's side of cluster mode (see [`crate::cluster`]): the shared
//! log's entries (its own published once durable; the others' applied as
//! they come, holes waited for briefly, then read back from the store),
//! and the ephemeral items it shares (only what its local members did) or
//! applies from other nodes (fanned out locally, never shared again).
//! [`ClusterState`] owns the positions; the handlers below apply what they
//! decide.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use serde_json::Value;

use super::Room;
use crate::cluster::log::LogFrame;
use crate::cluster::{Bridge, Envelope, Item, Log, NodesDead, Remote, Resubscribed, UNSEQUENCED};
use crate::ids::{node_of, MemberId};
use crate::presence::PresenceDiff;
use crate::protocol::native::{CursorView, MemberView};
use crate::store::LogRead;

/// Most log positions remembered past a hole, or while a read of missed
/// entries is in flight (beyond it a later gap just triggers one more read).
const SEEN_WHILE_READING: usize = 4096;

/// What a room instance knows of the cluster: its own item sequence, its
/// position in the shared log, and the other nodes' sequences.
pub(super) struct ClusterState {
    bridge: Bridge,
    /// Random id of this room instance; other nodes track `seq` per epoch.
    epoch: u64,
    /// Items shared by this room instance so far.
    seq: u64,
    /// Generation of the room's log, as last seen.
    log_generation: Option<String>,
    /// Highest log position applied here (entries up to it were seen, or
    /// are being read back after a gap).
    log_seq: u64,
    /// A read of missed log entries is in flight.
    catching_up: bool,
    /// Another read is wanted once the one in flight is done.
    catch_up_again: bool,
    /// Log positions seen on the channel while a read was in flight (the
    /// read may end before them).
    seen_while_reading: Vec<(String, u64)>,
    /// Positions applied past a hole in the log (entries of other nodes
    /// arrive out of order); the hole is waited for, then read back.
    ahead: BTreeSet<u64>,
    /// A check of the hole is scheduled.
    gap_check_due: bool,
    /// Times the room's log was reset (deleted) here: a read of the log
    /// that started before a reset describes the old log and is dropped.
    resets: u64,
    /// This node is deleting the room: no log read until the store's
    /// delete is done (it would read the old log back into the reset room).
    deleting: bool,
    /// Last `(epoch, seq)` received from each other node, for gap detection.
    remote_seq: HashMap<String, (u64, u64)>,
}

/// What a log position seen on the channel means for the room.
#[derive(Debug, PartialEq, Eq)]
enum LogStep {
    /// The next entry: nothing missed.
    Next(u64),
    /// Entries were missed: read them back.
    Gap,
    /// The log changed generation: read it back.
    CatchUp,
    /// Already applied, or noted while a read is in flight.
    Nothing,
}

impl ClusterState {
    /// A new room instance on `bridge`.
    pub(super) fn new(bridge: Bridge) -> Self {
        ClusterState {
            bridge,
            epoch: rand::random(),
            seq: 0,
            log_generation: None,
            log_seq: 0,
            catching_up: false,
            catch_up_again: false,
            seen_while_reading: Vec::new(),
            ahead: BTreeSet::new(),
            gap_check_due: false,
            resets: 0,
            deleting: false,
            remote_seq: HashMap::new(),
        }
    }

    /// The log as loaded: its generation and last position.
    pub(super) fn loaded(&mut self, generation: Option<String>, last_seq: u64) {
        self.log_generation = generation;
        self.log_seq = last_seq;
    }

    /// Forgets the log position (room deleted).
    pub(super) fn clear(&mut self) {
        self.log_seq = 0;
        self.ahead.clear();
        self.resets += 1;
    }

    /// The log generation to publish entries under.
    fn generation(&self) -> String {
        self.log_generation
            .clone()
            .unwrap_or_else(|| "0".to_owned())
    }

    /// Moves the position through the entries already applied past it.
    fn advance(&mut self) {
        while self.ahead.remove(&(self.log_seq + 1)) {
            self.log_seq += 1;
        }
        self.ahead = self.ahead.split_off(&(self.log_seq + 1));
    }

    /// The envelope of this instance's next item.
    fn envelope(&mut self, room: &str, item: Item) -> Envelope {
        self.seq += 1;
        Envelope {
            node: self.bridge.node().to_owned(),
            room: room.to_owned(),
            epoch: self.epoch,
            seq: self.seq,
            item,
        }
    }

    /// Records `(epoch, seq)` from `node`; true when items from it were
    /// lost (pub/sub keeps one publisher's order, so a hole means loss).
    fn note_remote(&mut self, node: &str, epoch: u64, seq: u64) -> bool {
        if seq == UNSEQUENCED {
            return false;
        }
        let last = self.remote_seq.insert(node.to_owned(), (epoch, seq));
        is_gap(last, epoch, seq)
    }

    /// Where entry `seq` of log `generation` leaves the room.
    fn log_position(&mut self, generation: String, seq: u64) -> LogStep {
        if self.catching_up {
            if self.seen_while_reading.len() < SEEN_WHILE_READING {
                self.seen_while_reading.push((generation, seq));
            }
            return LogStep::Nothing;
        }
        match &self.log_generation {
            Some(g) if *g == generation => {
                if seq == self.log_seq + 1 {
                    self.log_seq = seq;
                    self.advance();
                    LogStep::Next(self.log_seq)
                } else if seq > self.log_seq + 1 {
                    if self.ahead.len() < SEEN_WHILE_READING {
                        self.ahead.insert(seq);
                    }
                    LogStep::Gap
                } else {
                    LogStep::Nothing
                }
            }
            None if seq == self.log_seq + 1 => {
                // The log's first entries since this room loaded it empty.
                self.log_generation = Some(generation);
                self.log_seq = seq;
                LogStep::Nothing
            }
            _ => LogStep::CatchUp,
        }
    }

    /// Starts a read of missed entries: `(after, generation)`, or `None`
    /// when one is in flight already (another follows it).
    fn begin_catch_up(&mut self) -> Option<(u64, Option<String>)> {
        if self.catching_up || self.deleting {
            self.catch_up_again = true;
            return None;
        }
        self.catching_up = true;
        Some((self.log_seq, self.log_generation.clone()))
    }

    /// The read ended; true when another one was asked for meanwhile.
    fn end_catch_up(&mut self) -> bool {
        self.catching_up = false;
        std::mem::take(&mut self.catch_up_again)
    }

    /// True when a read of the log found another generation than the one
    /// this room holds positions of: the room was deleted meanwhile.
    fn is_replaced(&self, read: &LogRead) -> bool {
        self.log_generation.is_some() && self.log_generation != read.epoch
    }

    /// Moves to the read's position, and past the entries seen on the
    /// channel while it was in flight that follow it; returns the position.
    fn caught_up(&mut self, read: &LogRead) -> u64 {
        if self.log_generation != read.epoch {
            self.log_generation = read.epoch.clone();
            self.log_seq = 0;
            self.ahead.clear();
        }
        self.log_seq = self.log_seq.max(read.last_seq);
        self.advance();
        let mut seen = std::mem::take(&mut self.seen_while_reading);
        seen.retain(|(g, s)| self.log_generation.as_ref() == Some(g) && *s > self.log_seq);
        seen.sort_unstable_by_key(|(_, s)| *s);
        for (_, s) in seen {
            if s == self.log_seq + 1 {
                self.log_seq = s;
            }
        }
        self.advance();
        self.log_seq
    }

    /// The room's log was deleted and starts again as `generation`.
    fn log_deleted(&mut self, generation: String) {
        self.log_generation = Some(generation);
        self.log_seq = 0;
        self.seen_while_reading.clear();
        self.ahead.clear();
        self.resets += 1;
    }
}

/// True when `(epoch, seq)` does not follow what was last seen from that
/// node.
fn is_gap(last: Option<(u64, u64)>, epoch: u64, seq: u64) -> bool {
    match last {
        Some((e, s)) if e == epoch => seq != s + 1,
        _ => seq != 1,
    }
}

impl Room {
    /// The bridge, in cluster mode.
    fn bridge(&self) -> Option<Bridge> {
        self.cluster.as_ref().map(|c| c.bridge.clone())
    }

    /// Subscribes to the room's channel once loaded. The bridge answers
    /// with `Resubscribed` once subscribed: the room then says `Hello`.
    pub(super) fn cluster_start(&self, ctx: &mut Context<Self>) {
        if let Some(c) = &self.cluster {
            c.bridge.subscribe(&self.id, c.epoch, &ctx.address());
        }
    }

    /// Leaves the room's channel.
    pub(super) fn cluster_stop(&self) {
        if let Some(c) = &self.cluster {
            c.bridge.unsubscribe(&self.id, c.epoch);
        }
    }

    /// Shares one item of this room instance with the other nodes.
    fn share(&mut self, item: Item) {
        if let Some(c) = &mut self.cluster {
            let envelope = c.envelope(&self.id, item);
            c.bridge.publish(&envelope);
        }
    }

    /// Shares an event with the other nodes' members.
    pub(super) fn share_event(&mut self, from: &str, name: &str, data: &Value) {
        if self.cluster.is_some() {
            self.share(Item::Event {
                from: from.to_owned(),
                name: name.to_owned(),
                data: data.clone(),
            });
        }
    }

    /// Tells the other nodes that the room's version list changed.
    pub(super) fn share_versions_changed(&mut self) {
        if self.cluster.is_some() {
            self.share(Item::VersionsChanged);
        }
    }

    /// Shares the local members' part of a presence diff (every change,
    /// not only what members are shown: each node keeps the whole room).
    pub(super) fn share_presence(&mut self, diff: &PresenceDiff) {
        let Some(bridge) = self.bridge() else {
            return;
        };
        let PresenceDiff {
            joined,
            updated,
            left,
            ..
        } = diff;
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
            self.share(Item::Presence {
                joined,
                updated,
                left,
            });
        }
    }

    /// Shares the local members' cursors of a cursor batch.
    pub(super) fn share_cursors(&mut self, cursors: &[CursorView]) {
        let Some(bridge) = self.bridge() else {
            return;
        };
        let local: Vec<_> = cursors
            .iter()
            .filter(|c| bridge.is_local(&c.id))
            .cloned()
            .collect();
        if !local.is_empty() {
            self.share(Item::Cursors(local));
        }
    }

    /// Shares a local member's typing indicator.
    pub(super) fn share_typing(&mut self, id: &MemberId, on: bool) {
        if self.bridge().is_some_and(|b| b.is_local(id)) {
            self.share(Item::Typing {
                id: id.to_string(),
                on,
            });
        }
    }

    /// Asks the other nodes for their members (and tells them ours): on
    /// subscription, after a reconnection, after a gap.
    fn say_hello(&mut self) {
        let Some(bridge) = self.bridge() else {
            return;
        };
        let (members, cursors) = self.local_presence(&bridge);
        self.share(Item::Hello { members, cursors });
    }

    /// Reads the log entries after the room's position (all of the log when
    /// its generation changed), unless a read is already in flight.
    fn catch_up(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        let Some((after, generation)) = c.begin_catch_up() else {
            return;
        };
        let resets = c.resets;
        let read = self
            .persist
            .read_since(&self.id, after, generation.as_deref());
        ctx.spawn(read.into_actor(self).map(move |res, room, ctx| {
            let (again, stale) = match room.cluster.as_mut() {
                Some(c) => (c.end_catch_up(), c.resets != resets),
                None => return,
            };
            match res {
                // Read before the room was deleted here: the old log.
                Ok(_) if stale => return room.catch_up(ctx),
                Ok(read) => room.caught_up(read, ctx),
                // Redis is away: the reconnection (`Resubscribed`) reads again.
                Err(e) => tracing::warn!(room = %room.id, "reading missed log entries failed: {e}"),
            }
            if again {
                room.catch_up(ctx);
            }
        }));
    }

    /// Applies what a log read found (after a reset when the room was
    /// deleted on another node and this one missed it).
    fn caught_up(&mut self, read: LogRead, ctx: &mut Context<Self>) {
        if self.broken.is_some() {
            return;
        }
        if self.cluster.as_ref().is_some_and(|c| c.is_replaced(&read)) {
            tracing::warn!(room = %self.id, "the room was deleted on another node: resetting");
            self.reset(ctx);
        }
        let parts: Vec<&Bytes> = read.snapshot.iter().chain(read.updates.iter()).collect();
        let before = self.document.state_vector();
        for part in &parts {
            if let Err(e) = self.apply_accepted(part, None, ctx) {
                tracing::error!(room = %self.id, "log entry refused: {e}");
            }
        }
        if self.document.state_vector() != before {
            if let Some(c) = &self.cluster {
                c.bridge.recovered();
            }
        }
        if let Some(c) = &mut self.cluster {
            let seq = c.caught_up(&read);
            self.persist.durable_upto(seq);
        }
    }

    /// An update of this room is durable in the store as entry `seq`: in
    /// cluster mode it is published now (so a published entry is always in
    /// the log) and its position noted.
    pub(super) fn appended(&mut self, seq: u64, update: &Bytes, ctx: &mut Context<Self>) {
        let Some(c) = &self.cluster else {
            return;
        };
        let generation = c.generation();
        c.bridge.publish_log(
            &self.id,
            &LogFrame::Entry {
                epoch: generation.clone(),
                seq,
                node: c.bridge.node().to_owned(),
                update: update.clone(),
            },
        );
        self.log_position(generation, seq, ctx);
    }

    /// The room was deleted here: learns the log's new generation, applies
    /// what other nodes may have written into it already, and tells them.
    pub(super) fn cluster_deleted(&mut self, ctx: &mut Context<Self>) {
        if self.cluster.is_none() {
            return;
        }
        let read = self.persist.read_since(&self.id, 0, None);
        ctx.spawn(read.into_actor(self).map(|res, room, ctx| {
            let read = match res {
                Ok(read) => read,
                Err(e) => {
                    tracing::warn!(room = %room.id, "reading the log after a delete failed: {e}");
                    return room.cluster_delete_failed(ctx);
                }
            };
            let Some(c) = &mut room.cluster else {
                return;
            };
            let generation = read.epoch.clone().unwrap_or_else(|| "0".to_owned());
            c.log_deleted(generation.clone());
            c.deleting = false;
            let again = std::mem::take(&mut c.catch_up_again);
            c.bridge.publish_log(
                &room.id,
                &LogFrame::Deleted {
                    epoch: generation,
                    node: c.bridge.node().to_owned(),
                },
            );
            room.caught_up(read, ctx);
            if again {
                room.catch_up(ctx);
            }
        }));
    }

    /// This node starts deleting the room (before its reset): log reads
    /// wait for [`Room::cluster_deleted`].
    pub(super) fn cluster_deleting(&mut self) {
        if let Some(c) = &mut self.cluster {
            c.deleting = true;
        }
    }

    /// The delete failed: log reads may run again.
    pub(super) fn cluster_delete_failed(&mut self, ctx: &mut Context<Self>) {
        if let Some(c) = &mut self.cluster {
            c.deleting = false;
            if std::mem::take(&mut c.catch_up_again) {
                self.catch_up(ctx);
            }
        }
    }

    /// The hole in the log is still there after `--cluster-gap-wait-ms`:
    /// reads it back.
    fn check_gap(&mut self, ctx: &mut Context<Self>) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        c.gap_check_due = false;
        if c.ahead.is_empty() {
            return;
        }
        tracing::debug!(room = %self.id, have = c.log_seq, "hole in the log: reading it back");
        c.bridge.gap();
        self.catch_up(ctx);
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
        self.awareness.touch(id);
    }

    /// Removes presence members matching `gone` (members of other nodes).
    fn drop_members(&mut self, gone: impl Fn(&str) -> bool) {
        let ids: Vec<MemberId> = self
            .presence
            .snapshot()
            .into_iter()
            .filter(|m| gone(&m.id))
            .map(|m| MemberId::from(m.id))
            .collect();
        for id in ids {
            if self.presence.leave(&id) {
                self.awareness.touch(id);
            }
        }
    }

    /// Replaces what is known of `node`'s members with `members`, its
    /// complete list (members that left while items were lost go away).
    fn node_members(&mut self, bridge: &Bridge, node: &str, members: Vec<MemberView>) {
        let keep: std::collections::HashSet<String> =
            members.iter().map(|m| m.id.clone()).collect();
        self.drop_members(|id| node_of(id) == Some(node) && !keep.contains(id));
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
                self.awareness.touch(id);
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

    /// Notes that entry `seq` of log `generation` was seen: advances the
    /// position, or reads the log back after a gap or a change of generation.
    fn log_position(&mut self, generation: String, seq: u64, ctx: &mut Context<Self>) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        match c.log_position(generation, seq) {
            LogStep::Next(seq) => self.persist.durable_upto(seq),
            LogStep::Gap => {
                // Entries of other nodes may simply arrive out of order:
                // wait for the hole to fill before reading it back.
                if !c.gap_check_due {
                    c.gap_check_due = true;
                    let wait = Duration::from_millis(self.config.cluster_gap_wait_ms);
                    ctx.run_later(wait, |room, ctx| room.check_gap(ctx));
                }
            }
            LogStep::CatchUp => self.catch_up(ctx),
            LogStep::Nothing => {}
        }
    }
}

impl Handler<Remote> for Room {
    type Result = ();

    fn handle(&mut self, msg: Remote, ctx: &mut Context<Self>) {
        let Some(bridge) = self.bridge() else {
            return;
        };
        if self.broken.is_some() {
            return;
        }
        let e = msg.envelope;
        let gap = self
            .cluster
            .as_mut()
            .is_some_and(|c| c.note_remote(&e.node, e.epoch, e.seq));
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
                        self.awareness.touch(id);
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
                    self.send_typing(&id, on);
                    self.awareness.touch(id);
                    self.schedule_flush(ctx);
                }
                self.schedule_typing_sweep(ctx);
            }
            Item::Event { from, name, data } => {
                self.deliver_event(from, name, data, None);
            }
            Item::VersionsChanged => self.versions_changed(false),
            Item::Hello {
                members: theirs,
                cursors: their_cursors,
            } => {
                // The sender (re)started or reconnected: entries it
                // published meanwhile may have been lost on the way.
                self.catch_up(ctx);
                self.node_members(&bridge, &e.node, theirs);
                self.remote_cursors(&bridge, their_cursors);
                self.schedule_flush(ctx);
                let (members, cursors) = self.local_presence(&bridge);
                self.share(Item::State {
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
        let Some(bridge) = self.bridge() else {
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
                if let Some(c) = &mut self.cluster {
                    c.log_deleted(epoch);
                }
            }
            LogFrame::Entry {
                epoch, seq, update, ..
            } => {
                let other_log = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.log_generation.as_ref())
                    .is_some_and(|g| *g != epoch);
                if other_log {
                    // Not this room's log (deleted since, or recreated):
                    // read the current one instead of applying it.
                    return self.log_position(epoch, seq, ctx);
                }
                match self.apply_accepted(&update, None, ctx) {
                    Ok(_) => self.log_position(epoch, seq, ctx),
                    // Not noted as seen: the hole it leaves is read back.
                    Err(e) => {
                        tracing::debug!(room = %self.id, seq, "log entry from another node not applied yet: {e}");
                    }
                }
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
        // Local updates whose append gave up while Redis was away (kept by
        // the room's persistence): no need to wait for their backoff.
        if self.persist.holds_unstored() {
            self.retry_unstored_now(ctx);
        }
    }
}

impl Handler<NodesDead> for Room {
    type Result = ();

    fn handle(&mut self, msg: NodesDead, ctx: &mut Context<Self>) {
        self.drop_members(|id| node_of(id).is_some_and(|n| msg.nodes.contains(n)));
        if let Some(c) = &mut self.cluster {
            c.remote_seq.retain(|node, _| !msg.nodes.contains(node));
        }
        self.schedule_flush(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
