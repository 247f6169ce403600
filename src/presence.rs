//! Who is in a room and what they show others: presence state, cursor,
//! typing. Changes are collected as a diff that the room broadcasts once per
//! tick, so a burst of moves costs one frame, not one per move.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::protocol::native::{Bin, CursorView, MemberView};

use crate::ids::MemberId;

/// A cursor: encoded Yjs relative positions of anchor and head.
type Cursor = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One member's visible state.
#[derive(Debug, Clone)]
struct Entry {
    /// Authenticated user id, if the connection has one.
    user: Option<Arc<str>>,
    /// Presence map as sent by the client (a JSON object).
    state: Value,
    /// Last cursor: encoded Yjs relative positions (anchor, head). Boxed:
    /// most members of a room never send one, and every slot of the
    /// members map pays for the inline size.
    cursor: Option<Box<Cursor>>,
    /// When `typing: on` lapses unless renewed; `None` when not typing.
    typing_until: Option<Instant>,
}

/// Presence of one room, plus the changes not yet broadcast.
#[derive(Debug, Default)]
pub struct Presence {
    members: HashMap<MemberId, Entry>,
    /// Members joined since the last diff was taken.
    joined: BTreeSet<MemberId>,
    /// Members whose state changed since the last diff (and did not join).
    updated: BTreeSet<MemberId>,
    /// Members that left since the last diff.
    left: BTreeSet<MemberId>,
    /// Members whose cursor moved since the last tick.
    moved: BTreeSet<MemberId>,
    /// Diffs taken so far: a view cached at one generation is covered,
    /// from then on, by the next diff.
    generation: u64,
    /// Bumped whenever a member's cursor is set or a member with a cursor
    /// leaves: a joiner's copy of the cursors cached at one version is
    /// current until the next.
    cursor_version: u64,
}

/// What one member shows others (see [`Presence::shown`]).
#[derive(Debug, Clone, Copy)]
pub struct Shown<'a> {
    /// Presence map.
    pub state: &'a Value,
    /// Encoded relative position of the cursor's anchor, if any.
    pub anchor: Option<&'a [u8]>,
    /// Encoded relative position of the cursor's head, if any.
    pub head: Option<&'a [u8]>,
    /// True when the member has a cursor at all.
    pub has_cursor: bool,
    /// Typing indicator on.
    pub typing: bool,
}

/// Presence changes to broadcast: `(joined, updated, left)`.
pub type PresenceDiff = (Vec<MemberView>, Vec<MemberView>, Vec<String>);

impl Presence {
    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when nobody is present.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Ids of every member.
    pub fn ids(&self) -> impl Iterator<Item = &MemberId> {
        self.members.keys()
    }

    /// True when `id` is present.
    pub fn contains(&self, id: &MemberId) -> bool {
        self.members.contains_key(id)
    }

    /// What `id` shows others: state, cursor, typing (for the awareness
    /// view of native members on `/yjs`).
    pub fn shown(&self, id: &MemberId) -> Option<Shown<'_>> {
        let e = self.members.get(id)?;
        let (anchor, head) = match e.cursor.as_deref() {
            Some((a, h)) => (a.as_deref(), h.as_deref()),
            None => (None, None),
        };
        Some(Shown {
            state: &e.state,
            anchor,
            head,
            has_cursor: e.cursor.is_some(),
            typing: e.typing_until.is_some(),
        })
    }

    /// Adds a member with its initial state.
    pub fn join(&mut self, id: MemberId, user: Option<Arc<str>>, state: Value) {
        self.left.remove(&id);
        self.updated.remove(&id);
        self.joined.insert(id.clone());
        self.members.insert(
            id,
            Entry {
                user,
                state,
                cursor: None,
                typing_until: None,
            },
        );
    }

    /// Replaces a member's state; false when the member is unknown.
    pub fn set_state(&mut self, id: &MemberId, state: Value) -> bool {
        let Some(entry) = self.members.get_mut(id) else {
            return false;
        };
        entry.state = state;
        if !self.joined.contains(id) {
            self.updated.insert(id.clone());
        }
        true
    }

    /// Removes a member; true when it was present.
    pub fn leave(&mut self, id: &MemberId) -> bool {
        let Some(entry) = self.members.remove(id) else {
            return false;
        };
        if entry.cursor.is_some() {
            self.cursor_version += 1;
        }
        self.moved.remove(id);
        self.updated.remove(id);
        // Reported as left even when its join was not broadcast yet:
        // snapshots (a joining client's, another node's `hello`) may have
        // shown it already, and only a `left` takes it away again.
        self.joined.remove(id);
        self.left.insert(id.clone());
        true
    }

    /// Records a cursor move, broadcast at the next tick.
    pub fn set_cursor(&mut self, id: &MemberId, anchor: Option<Vec<u8>>, head: Option<Vec<u8>>) {
        if let Some(entry) = self.members.get_mut(id) {
            entry.cursor = Some(Box::new((anchor, head)));
            self.moved.insert(id.clone());
            self.cursor_version += 1;
        }
    }

    /// Sets typing on (until `until`) or off. Returns `Some(on)` when the
    /// visible state changed, `None` for a renewal or an unknown member.
    pub fn set_typing(&mut self, id: &MemberId, until: Option<Instant>) -> Option<bool> {
        let entry = self.members.get_mut(id)?;
        let was = entry.typing_until.is_some();
        entry.typing_until = until;
        let now = until.is_some();
        (was != now).then_some(now)
    }

    /// Turns off typing that lapsed at `now`; returns who stopped.
    pub fn expire_typing(&mut self, now: Instant) -> Vec<MemberId> {
        let mut stopped = Vec::new();
        for (id, entry) in &mut self.members {
            if entry.typing_until.is_some_and(|t| t <= now) {
                entry.typing_until = None;
                stopped.push(id.clone());
            }
        }
        stopped
    }

    /// The earliest pending typing expiry.
    pub fn next_typing_deadline(&self) -> Option<Instant> {
        self.members.values().filter_map(|e| e.typing_until).min()
    }

    /// True when a diff is waiting to be broadcast.
    pub fn has_diff(&self) -> bool {
        !(self.joined.is_empty() && self.updated.is_empty() && self.left.is_empty())
    }

    /// Takes the pending presence diff.
    pub fn take_diff(&mut self) -> PresenceDiff {
        self.generation += 1;
        let joined = std::mem::take(&mut self.joined);
        let updated = std::mem::take(&mut self.updated);
        let left = std::mem::take(&mut self.left);
        (
            joined.iter().filter_map(|id| self.view(id)).collect(),
            updated.iter().filter_map(|id| self.view(id)).collect(),
            left.iter().map(|id| id.to_string()).collect(),
        )
    }

    /// Takes the cursors that moved since the last call.
    pub fn take_cursors(&mut self) -> Vec<CursorView> {
        let moved = std::mem::take(&mut self.moved);
        moved
            .iter()
            .filter_map(|id| {
                let (anchor, head) = *self.members.get(id)?.cursor.clone()?;
                Some(CursorView {
                    id: id.to_string(),
                    anchor: anchor.map(Bin),
                    head: head.map(Bin),
                })
            })
            .collect()
    }

    /// Every member, for the snapshot sent to a joining client.
    pub fn snapshot(&self) -> Vec<MemberView> {
        let mut ids: Vec<&MemberId> = self.members.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.view(id)).collect()
    }

    /// Every member's current cursor, for a joining client.
    pub fn cursors(&self) -> Vec<CursorView> {
        let mut out: Vec<CursorView> = self
            .members
            .iter()
            .filter_map(|(id, e)| {
                let (anchor, head) = *e.cursor.clone()?;
                Some(CursorView {
                    id: id.to_string(),
                    anchor: anchor.map(Bin),
                    head: head.map(Bin),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Changes of the set of cursors so far (see [`Presence::cursors`]).
    pub fn cursor_version(&self) -> u64 {
        self.cursor_version
    }

    /// Diffs taken so far (see [`Presence::take_diff`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// What others see of member `id`.
    pub fn view(&self, id: &MemberId) -> Option<MemberView> {
        let e = self.members.get(id)?;
        Some(MemberView {
            id: id.to_string(),
            user: e.user.as_deref().map(str::to_owned),
            state: e.state.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn id(s: &str) -> MemberId {
        Arc::from(s)
    }

    #[test]
    fn join_then_leave_in_one_tick_is_reported_as_left() {
        let mut p = Presence::default();
        p.join(id("a"), None, json!({}));
        // A snapshot taken now shows "a" (a client joining in this tick).
        assert_eq!(p.snapshot().len(), 1);
        p.leave(&id("a"));
        let (joined, updated, left) = p.take_diff();
        assert!(joined.is_empty() && updated.is_empty());
        assert_eq!(left, vec!["a".to_owned()]);
    }

    #[test]
    fn update_of_a_fresh_join_is_reported_as_join() {
        let mut p = Presence::default();
        p.join(id("a"), None, json!({"n": 1}));
        p.set_state(&id("a"), json!({"n": 2}));
        let (joined, updated, left) = p.take_diff();
        assert_eq!(joined.len(), 1);
        assert_eq!(joined[0].state, json!({"n": 2}));
        assert!(updated.is_empty() && left.is_empty());
    }

    /// Every slot of a room's member map pays for an entry's inline size,
    /// members or not: the rarely set cursor stays behind a pointer.
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 72,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn typing_expires() {
        let mut p = Presence::default();
        p.join(id("a"), None, json!({}));
        let now = Instant::now();
        assert_eq!(p.set_typing(&id("a"), Some(now)), Some(true));
        assert_eq!(p.set_typing(&id("a"), Some(now)), None);
        assert_eq!(
            p.expire_typing(now + Duration::from_millis(1)),
            vec![id("a")]
        );
        assert_eq!(p.next_typing_deadline(), None);
    }
}
