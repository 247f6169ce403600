//! Who is in a room and what they show others: presence state, cursor,
//! typing. Changes are collected as a diff that the room broadcasts once per
//! tick, so a burst of moves costs one frame, not one per move.
//!
//! The member list members are sent is bounded: the *listed* members are the
//! first `list_max` in join order (all of them in a room of at most
//! `list_max`). Snapshots and diffs carry the listed members (their joins,
//! state changes and leaves), the state changes of any member, and, in a
//! room above the bound, the total count; the rest of the list is read page
//! by page ([`Presence::page`]). So N members joining a big room cost each
//! member O(1) per presence interval, not O(N).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Join order (a key of [`Presence::order`]): which members are listed,
    /// and where a page of the member list starts.
    seq: u64,
}

/// Presence of one room, plus the changes not yet broadcast.
#[derive(Debug)]
pub struct Presence {
    members: HashMap<MemberId, Entry>,
    /// Every member by join order (`Entry::seq`, unique, increasing).
    order: BTreeMap<u64, MemberId>,
    /// The `seq` of the next member to join.
    next_seq: u64,
    /// At most this many members are listed (see the module doc).
    list_max: usize,
    /// Members with a `seq` up to this were listed in the last diff: every
    /// member has been told of them (and is told when they leave).
    listed_upto: u64,
    /// The room was above `list_max` at the last diff (members were told
    /// a `total`, and are told when it changes).
    was_partial: bool,
    /// The total last told (`None`: not partial then).
    told_total: Option<usize>,
    /// When a total was last told.
    told_at: Option<Instant>,
    /// Members not listed whose activity (state, cursor, typing) members
    /// may have been sent: their leave is sent too. Empty when the room is
    /// within `list_max`.
    mentioned: HashSet<MemberId>,
    /// Members joined since the last diff was taken.
    joined: BTreeSet<MemberId>,
    /// Members whose state changed since the last diff (and did not join).
    updated: BTreeSet<MemberId>,
    /// Members that left since the last diff.
    left: BTreeSet<MemberId>,
    /// Those of `left` that members know of (listed or mentioned).
    left_shown: BTreeSet<MemberId>,
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

/// Presence changes since the last diff.
#[derive(Debug, Default)]
pub struct PresenceDiff {
    /// Every member that joined (for the other nodes and HTTP followers).
    pub joined: Vec<MemberView>,
    /// Every member whose state changed.
    pub updated: Vec<MemberView>,
    /// Every member that left.
    pub left: Vec<String>,
    /// What members are sent: the newly listed members (joins in a room
    /// within the bound, members moving up the list as listed ones leave).
    pub shown_joined: Vec<MemberView>,
    /// What members are sent: listed or mentioned members that left.
    pub shown_left: Vec<String>,
    /// The room's member count, when members must be told it: the room is
    /// above the bound, or was at the last diff.
    pub total: Option<u64>,
    /// True when the room is above the bound (the list is partial).
    pub partial: bool,
    /// Members have something to be sent (see [`PresenceDiff::has_shown`]).
    shown: bool,
}

impl PresenceDiff {
    /// True when members have something to be sent.
    /// A change of the listed members, a state change, a new total
    /// (count-only diffs at most once per gap), or the list whole again.
    pub fn has_shown(&self) -> bool {
        self.shown
    }
}

/// A page of the member list ([`Presence::page`]).
#[derive(Debug)]
pub struct Page {
    /// Members, in join order.
    pub members: Vec<MemberView>,
    /// Where the next page starts (the last member's join order); `None`
    /// on the last page.
    pub next: Option<u64>,
    /// Members in the room.
    pub total: usize,
}

impl Default for Presence {
    fn default() -> Self {
        Presence::new(usize::MAX)
    }
}

impl Presence {
    /// No members; at most `list_max` members are listed.
    pub fn new(list_max: usize) -> Self {
        Presence {
            members: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 1,
            list_max: list_max.max(1),
            listed_upto: 0,
            was_partial: false,
            told_total: None,
            told_at: None,
            mentioned: HashSet::new(),
            joined: BTreeSet::new(),
            updated: BTreeSet::new(),
            left: BTreeSet::new(),
            left_shown: BTreeSet::new(),
            moved: BTreeSet::new(),
            generation: 0,
            cursor_version: 0,
        }
    }

    /// True when the room has more members than are listed.
    pub fn is_partial(&self) -> bool {
        self.members.len() > self.list_max
    }

    /// Notes that activity of `id` (state, cursor, typing) is sent to
    /// members: when it was not listed at the last diff, its leave will be
    /// sent too.
    fn mention(&mut self, id: &MemberId) {
        if let Some(e) = self.members.get(id) {
            if e.seq > self.listed_upto {
                self.mentioned.insert(id.clone());
            }
        }
    }
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
        self.left_shown.remove(&id);
        self.updated.remove(&id);
        self.joined.insert(id.clone());
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.insert(seq, id.clone());
        let old = self.members.insert(
            id,
            Entry {
                user,
                state,
                cursor: None,
                typing_until: None,
                seq,
            },
        );
        if let Some(old) = old {
            self.order.remove(&old.seq);
        }
    }

    /// Replaces a member's state; false when the member is unknown.
    pub fn set_state(&mut self, id: &MemberId, state: Value) -> bool {
        let Some(entry) = self.members.get_mut(id) else {
            return false;
        };
        entry.state = state;
        if !self.joined.contains(id) {
            self.updated.insert(id.clone());
            self.mention(id);
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
        self.order.remove(&entry.seq);
        self.moved.remove(id);
        self.updated.remove(id);
        // Reported as left even when its join was not broadcast yet:
        // snapshots (a joining client's, another node's `hello`) may have
        // shown it already, and only a `left` takes it away again. In a
        // room above the bound, only members that were listed or mentioned
        // are: the others were never shown (but to themselves).
        self.joined.remove(id);
        let mentioned = self.mentioned.remove(id);
        if !self.was_partial || entry.seq <= self.listed_upto || mentioned {
            self.left_shown.insert(id.clone());
        }
        self.left.insert(id.clone());
        true
    }

    /// Records a cursor move, broadcast at the next tick.
    pub fn set_cursor(&mut self, id: &MemberId, anchor: Option<Vec<u8>>, head: Option<Vec<u8>>) {
        if let Some(entry) = self.members.get_mut(id) {
            entry.cursor = Some(Box::new((anchor, head)));
            self.moved.insert(id.clone());
            self.cursor_version += 1;
            self.mention(id);
        }
    }

    /// Sets typing on (until `until`) or off. Returns `Some(on)` when the
    /// visible state changed, `None` for a renewal or an unknown member.
    pub fn set_typing(&mut self, id: &MemberId, until: Option<Instant>) -> Option<bool> {
        let entry = self.members.get_mut(id)?;
        let was = entry.typing_until.is_some();
        entry.typing_until = until;
        let now = until.is_some();
        if was != now {
            self.mention(id);
        }
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

    /// True when a diff is waiting to be broadcast (changes, or a total
    /// not told yet).
    pub fn has_diff(&self) -> bool {
        !(self.joined.is_empty() && self.updated.is_empty() && self.left.is_empty())
            || self.total_pending()
    }

    /// True when the room is above the bound and its member count changed
    /// since it was last told.
    pub fn total_pending(&self) -> bool {
        self.is_partial() && self.told_total != Some(self.members.len())
    }

    /// The largest `seq` listed now: the `list_max`-th member's in a room
    /// above the bound, else the last given. O(`list_max`).
    fn listed_bound(&self) -> u64 {
        if self.is_partial() {
            // unwrap_or: the room has more than list_max members.
            self.order
                .keys()
                .nth(self.list_max - 1)
                .copied()
                .unwrap_or(0)
        } else {
            self.next_seq - 1
        }
    }

    /// Takes the pending presence diff: every change (for the other nodes
    /// and HTTP followers) and what members are sent of it. A diff that
    /// would tell members nothing but a new total is held back (its total
    /// stays pending, see [`Presence::total_pending`]) until `total_gap`
    /// has passed since the last total was told, at `now`.
    pub fn take_diff_at(&mut self, now: Instant, total_gap: Duration) -> PresenceDiff {
        self.generation += 1;
        let joined = std::mem::take(&mut self.joined);
        let updated = std::mem::take(&mut self.updated);
        let left = std::mem::take(&mut self.left);
        let left_shown = std::mem::take(&mut self.left_shown);
        // Never below the last bound: a room that grew past `list_max`
        // since has no member between the two (those listed then are at
        // most `list_max`, so all within the new bound), and the range
        // below must not be reversed.
        let bound = self.listed_bound().max(self.listed_upto);
        // Newly listed: joined since, or moved up as listed members left.
        let mut shown_joined: Vec<MemberView> = self
            .order
            .range((Bound::Excluded(self.listed_upto), Bound::Included(bound)))
            .filter_map(|(_, id)| self.view(id))
            .collect();
        shown_joined.sort_by(|a, b| a.id.cmp(&b.id));
        let partial = self.is_partial();
        let total = self.members.len();
        let lists = !(shown_joined.is_empty() && updated.is_empty() && left_shown.is_empty());
        let changed = partial && self.told_total != Some(total);
        let too_soon = self
            .told_at
            .is_some_and(|at| now.saturating_duration_since(at) < total_gap);
        // Every message of a partial list carries the total; one that
        // would carry nothing else waits for the gap.
        let transition = !partial && self.was_partial;
        let shown = lists || (changed && !too_soon) || transition;
        if partial && shown {
            if changed {
                self.told_at = Some(now);
            }
            self.told_total = Some(total);
        } else if !partial {
            self.told_total = None;
        }
        self.listed_upto = bound;
        self.was_partial = partial;
        if partial {
            // Newly listed members need no mention any more.
            for m in &shown_joined {
                self.mentioned.remove(m.id.as_str());
            }
        } else {
            self.mentioned.clear();
        }
        PresenceDiff {
            joined: joined.iter().filter_map(|id| self.view(id)).collect(),
            updated: updated.iter().filter_map(|id| self.view(id)).collect(),
            left: left.iter().map(|id| id.to_string()).collect(),
            shown_joined,
            shown_left: left_shown.iter().map(|id| id.to_string()).collect(),
            total: (partial || transition).then_some(total as u64),
            partial,
            shown,
        }
    }

    /// [`Presence::take_diff_at`] now, a total told whenever it changed.
    pub fn take_diff(&mut self) -> PresenceDiff {
        self.take_diff_at(Instant::now(), Duration::ZERO)
    }

    /// Takes the cursors that moved since the last call.
    pub fn take_cursors(&mut self) -> Vec<CursorView> {
        let moved = std::mem::take(&mut self.moved);
        for id in &moved {
            self.mention(id);
        }
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

    /// Every member, sorted by id (the whole room: for the other nodes).
    pub fn snapshot(&self) -> Vec<MemberView> {
        let mut ids: Vec<&MemberId> = self.members.keys().collect();
        ids.sort();
        ids.into_iter().filter_map(|id| self.view(id)).collect()
    }

    /// The members a joining client's snapshot lists, sorted by id: every
    /// member in a room within the bound, else those listed at the last
    /// diff (at most `list_max`; later diffs tell what changed since).
    pub fn listed(&self) -> Vec<MemberView> {
        if !self.is_partial() {
            return self.snapshot();
        }
        let upto = self.listed_upto;
        let mut out: Vec<MemberView> = self
            .order
            .range(..=upto)
            .take(self.list_max)
            .filter_map(|(_, id)| self.view(id))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Up to `limit` members in join order, from the one after join order
    /// `after` (`None`: from the first). A member present while a client
    /// pages from the first page to the last is on exactly one page; one
    /// that joins meanwhile is on the last pages.
    pub fn page(&self, after: Option<u64>, limit: usize) -> Page {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut range = self.order.range((from, Bound::Unbounded));
        let mut members = Vec::with_capacity(limit.min(self.members.len()));
        let mut last = None;
        for (seq, id) in range.by_ref().take(limit) {
            if let Some(view) = self.view(id) {
                members.push(view);
            }
            last = Some(*seq);
        }
        let more = range.next().is_some();
        Page {
            members,
            next: if more { last } else { None },
            total: self.members.len(),
        }
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
        let d = p.take_diff();
        assert!(d.joined.is_empty() && d.updated.is_empty());
        assert_eq!(d.left, vec!["a".to_owned()]);
        assert_eq!(d.shown_left, vec!["a".to_owned()]);
    }

    #[test]
    fn update_of_a_fresh_join_is_reported_as_join() {
        let mut p = Presence::default();
        p.join(id("a"), None, json!({"n": 1}));
        p.set_state(&id("a"), json!({"n": 2}));
        let d = p.take_diff();
        assert_eq!(d.joined.len(), 1);
        assert_eq!(d.joined[0].state, json!({"n": 2}));
        assert_eq!(d.shown_joined, d.joined);
        assert!(d.updated.is_empty() && d.left.is_empty());
    }

    /// Every slot of a room's member map pays for an entry's inline size,
    /// members or not: the rarely set cursor stays behind a pointer (72
    /// bytes, plus 8 for the join order that bounds the member list).
    #[test]
    fn an_entry_stays_small() {
        assert!(
            std::mem::size_of::<Entry>() <= 80,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    fn ids_of(views: &[MemberView]) -> Vec<String> {
        views.iter().map(|v| v.id.clone()).collect()
    }

    fn strings(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A room of `n` members `m00`, `m01`, … (in that join order), with
    /// the diff of their joins taken.
    fn room(list_max: usize, n: usize) -> Presence {
        let mut p = Presence::new(list_max);
        for i in 0..n {
            p.join(id(&format!("m{i:02}")), None, json!({ "i": i }));
        }
        let _ = p.take_diff();
        p
    }

    #[test]
    fn a_room_within_the_bound_lists_everyone() {
        let mut p = Presence::new(3);
        for m in ["c", "a", "b"] {
            p.join(id(m), None, json!({}));
        }
        assert!(!p.is_partial());
        let d = p.take_diff();
        assert_eq!(ids_of(&d.shown_joined), strings(&["a", "b", "c"]));
        assert_eq!(d.shown_joined, d.joined);
        assert_eq!((d.total, d.partial), (None, false));
        assert_eq!(ids_of(&p.listed()), strings(&["a", "b", "c"]));
        p.leave(&id("b"));
        let d = p.take_diff();
        assert_eq!(d.shown_left, strings(&["b"]));
        assert_eq!(d.total, None);
    }

    #[test]
    fn above_the_bound_joins_are_counted_not_listed() {
        let mut p = room(3, 3);
        for i in 3..8 {
            p.join(id(&format!("m{i:02}")), None, json!({}));
        }
        assert!(p.is_partial());
        let d = p.take_diff();
        assert_eq!(d.joined.len(), 5, "every join, for the other nodes");
        assert!(d.shown_joined.is_empty() && d.shown_left.is_empty());
        assert_eq!((d.total, d.partial), (Some(8), true));
        assert!(d.has_shown());
        assert_eq!(ids_of(&p.listed()), strings(&["m00", "m01", "m02"]));
        // Nothing changed: nothing to tell.
        p.join(id("x"), None, json!({}));
        p.leave(&id("x"));
        let d = p.take_diff();
        assert!(!d.has_shown(), "{d:?}");
    }

    #[test]
    fn a_listed_member_leaving_lists_the_next() {
        let mut p = room(3, 6);
        p.leave(&id("m01"));
        p.leave(&id("m04"));
        let d = p.take_diff();
        assert_eq!(d.left, strings(&["m01", "m04"]));
        assert_eq!(d.shown_left, strings(&["m01"]), "m04 was never listed");
        assert_eq!(ids_of(&d.shown_joined), strings(&["m03"]));
        assert_eq!((d.total, d.partial), (Some(4), true));
        assert_eq!(ids_of(&p.listed()), strings(&["m00", "m02", "m03"]));
    }

    #[test]
    fn an_active_member_not_listed_is_told_and_so_is_its_leave() {
        let mut p = room(2, 5);
        p.set_state(&id("m03"), json!({"away": true}));
        p.set_cursor(&id("m04"), Some(vec![1]), None);
        let d = p.take_diff();
        assert_eq!(ids_of(&d.updated), strings(&["m03"]));
        assert_eq!(p.take_cursors().len(), 1);
        p.leave(&id("m02"));
        p.leave(&id("m03"));
        p.leave(&id("m04"));
        let d = p.take_diff();
        assert_eq!(
            d.shown_left,
            strings(&["m03", "m04"]),
            "m02 was never shown"
        );
    }

    #[test]
    fn below_the_bound_again_everyone_is_listed() {
        let mut p = room(3, 5);
        p.leave(&id("m00"));
        p.leave(&id("m04"));
        let d = p.take_diff();
        assert_eq!(ids_of(&d.shown_joined), strings(&["m03"]));
        assert_eq!(d.shown_left, strings(&["m00"]));
        assert_eq!((d.total, d.partial), (Some(3), false), "told once more");
        p.join(id("m05"), None, json!({}));
        p.join(id("m06"), None, json!({}));
        let d = p.take_diff();
        assert_eq!((d.total, d.partial), (Some(5), true));
        p.leave(&id("m05"));
        p.leave(&id("m06"));
        let d = p.take_diff();
        assert!(d.shown_joined.is_empty() && d.shown_left.is_empty());
        assert_eq!((d.total, d.partial), (Some(3), false));
        p.leave(&id("m01"));
        let d = p.take_diff();
        assert_eq!(d.shown_left, strings(&["m01"]));
        assert_eq!((d.total, d.partial), (None, false), "within: as before");
        p.join(id("m07"), None, json!({}));
        let d = p.take_diff();
        assert_eq!(ids_of(&d.shown_joined), strings(&["m07"]));
        assert_eq!((d.total, d.partial), (None, false));
    }

    #[test]
    fn a_count_alone_is_told_at_most_once_per_gap() {
        let mut p = room(2, 3);
        let (t0, gap) = (Instant::now(), Duration::from_secs(1));
        p.join(id("x"), None, json!({}));
        let d = p.take_diff_at(t0, gap);
        assert!(!d.has_shown(), "a count told less than a gap ago");
        assert!(p.total_pending() && p.has_diff());
        let d = p.take_diff_at(t0 + gap, gap);
        assert_eq!((d.total, d.partial), (Some(4), true));
        assert!(!p.total_pending() && !p.has_diff());
        // A change of the listed members carries the count at once.
        p.join(id("y"), None, json!({}));
        p.join(id("z"), None, json!({}));
        p.leave(&id("m00"));
        let d = p.take_diff_at(t0 + gap + Duration::from_millis(1), gap);
        assert_eq!(d.shown_left, strings(&["m00"]));
        assert_eq!(d.total, Some(5));
        // A state change with the count unchanged carries it too: a diff
        // without `total` would mean the list is whole.
        p.set_state(&id("m01"), json!({"away": true}));
        let d = p.take_diff_at(t0 + gap + Duration::from_millis(2), gap);
        assert!(d.has_shown());
        assert_eq!((d.total, d.partial), (Some(5), true));
    }

    #[test]
    fn pages_hold_every_member_once() {
        let mut p = room(4, 10);
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = p.page(after, 3);
            assert!(page.members.len() <= 3);
            assert_eq!(page.total, p.len());
            seen.extend(ids_of(&page.members));
            pages += 1;
            if pages == 2 {
                // Changes while paging: a member already read leaves, one
                // joins (it is on a later page).
                p.leave(&id("m00"));
                p.join(id("late"), None, json!({}));
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let mut want: Vec<String> = (0..10).map(|i| format!("m{i:02}")).collect();
        want.push("late".into());
        assert_eq!(seen, want);
        assert_eq!(pages, 4);
        // A page that ends exactly at the last member says so.
        let page = p.page(None, p.len());
        assert_eq!((page.members.len(), page.next), (p.len(), None));
        assert!(p.page(Some(u64::MAX), 5).members.is_empty());
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
