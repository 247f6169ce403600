//! The room's awareness table: every awareness client id Yjs clients see,
//! and which member owns it.
//!
//! Two kinds of entries share one id space:
//! - **Yjs clients' own states**, as received on `/yjs` (the client id is the
//!   Yjs doc's client id). A connection may use several ids; all of them are
//!   removed (state `null`, clock + 1) when it leaves, and a state not renewed
//!   within `presence_ttl_ms` is removed the same way by the room's sweep
//!   (yrs' `Awareness` has no sweep; the stock y-websocket server does this).
//! - **Native members**, under an id derived from the member id
//!   ([`derived_client_id`]). The room writes their state from their presence,
//!   cursor and typing, and renews it every `presence_ttl_ms / 2` so that Yjs
//!   clients (which drop remote states silent for 30 s) keep them.
//!
//! A client id belongs to the first member that used it: a connection cannot
//! overwrite or remove another member's state. Changes are collected and sent
//! as one awareness message per tick.
//!
//! **Big rooms.** y-protocols has no member count and no paging: every state
//! a client is sent, it keeps and renders. So at most `max_shown` live states
//! (`presence_list_max_members`) are *shown* — sent to y-protocols clients,
//! in snapshots and in changes — the ones live longest; the others are kept
//! (they still appear in native presence) and wait, oldest first, for a shown
//! state to go. A change to a waiting state costs nothing to send; when a
//! shown state goes, the oldest waiting one is sent in the same message as
//! its removal. Every operation on one client id is O(1) amortised (O(log n)
//! for the waiting order); the snapshot a joiner gets is encoded once per
//! change of the shown states and shared.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ids::MemberId;
use crate::protocol::yjs::{self, derived_client_id, AwarenessEntry};

/// One awareness client.
struct Client {
    /// The member whose connection announced it (or the native member).
    owner: MemberId,
    /// True for an entry the room writes for a native member.
    native: bool,
    /// Lamport clock; an update with a lower clock is stale.
    clock: u32,
    /// State as JSON text; `None` once removed (kept to order later clocks).
    json: Option<Arc<str>>,
    /// The parsed state (Yjs clients only), for the native presence view.
    value: Option<Value>,
    /// Last time the state was set or renewed.
    renewed: Instant,
    /// When the state last became live: its place in the waiting order.
    since: u64,
    /// Holds one of the `max_shown` places: its state is sent to
    /// y-protocols clients. A state that went `null` keeps its place until
    /// the next frame has announced the `null`.
    shown: bool,
}

/// Awareness of one room.
pub struct AwarenessTable {
    clients: HashMap<u64, Client>,
    /// Client ids each member uses.
    owned: HashMap<MemberId, Vec<u64>>,
    /// Derived client id of each native member that has one.
    native_ids: HashMap<MemberId, u64>,
    /// Shown client ids changed since the last frame.
    dirty: BTreeSet<u64>,
    /// Removed shown clients not yet announced: (client, clock).
    removed: Vec<(u64, u32)>,
    /// Most states shown at once (`presence_list_max_members`).
    max_shown: usize,
    /// Clients holding a shown place.
    shown: BTreeSet<u64>,
    /// Live states without a place, oldest first: `since` → client id.
    waiting: BTreeMap<u64, u64>,
    /// Last `since` given.
    next_since: u64,
    /// Every shown live state as one message, encoded once per change.
    snapshot: OnceCell<Option<Arc<[u8]>>>,
}

impl AwarenessTable {
    /// An empty table showing at most `max_shown` states.
    pub fn new(max_shown: usize) -> Self {
        AwarenessTable {
            clients: HashMap::new(),
            owned: HashMap::new(),
            native_ids: HashMap::new(),
            dirty: BTreeSet::new(),
            removed: Vec::new(),
            max_shown: max_shown.max(1),
            shown: BTreeSet::new(),
            waiting: BTreeMap::new(),
            next_since: 0,
            snapshot: OnceCell::new(),
        }
    }

    /// Applies states received from the Yjs connection `owner`. Entries
    /// for ids owned by someone else, stale clocks, and new ids past
    /// `max_clients` for this owner are ignored. Returns true when any entry
    /// was taken (a renewal counts: it must be relayed).
    pub fn apply_remote(
        &mut self,
        owner: &MemberId,
        entries: Vec<(AwarenessEntry, Option<Value>)>,
        max_clients: usize,
        now: Instant,
    ) -> bool {
        let mut taken = false;
        for (entry, value) in entries {
            let json: Option<Arc<str>> = value.as_ref().map(|_| Arc::from(entry.json.as_str()));
            let id = entry.client;
            match self.clients.get_mut(&id) {
                Some(c) if c.owner != *owner || c.native => continue,
                Some(c) => {
                    // Same rule as y-protocols' applyAwarenessUpdate.
                    let newer = c.clock < entry.clock
                        || (c.clock == entry.clock && json.is_none() && c.json.is_some());
                    if !newer {
                        continue;
                    }
                    let was_live = c.json.is_some();
                    c.clock = entry.clock;
                    c.json = json;
                    c.value = value;
                    c.renewed = now;
                    self.changed(id, was_live);
                }
                None => {
                    let owned = self.owned.get(owner).map_or(0, Vec::len);
                    if owned >= max_clients {
                        tracing::debug!(member = %owner, "awareness client limit reached");
                        continue;
                    }
                    self.clients.insert(
                        id,
                        Client {
                            owner: owner.clone(),
                            native: false,
                            clock: entry.clock,
                            json,
                            value,
                            renewed: now,
                            since: 0,
                            shown: false,
                        },
                    );
                    self.owned.entry(owner.clone()).or_default().push(id);
                    // A `null` for an id nobody was shown needs no announcing.
                    self.changed(id, false);
                }
            }
            taken = true;
        }
        taken
    }

    /// Client `id`'s state or clock changed (it was live before when
    /// `was_live`): what is shown follows.
    fn changed(&mut self, id: u64, was_live: bool) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let live = c.json.is_some();
        if c.shown {
            // Live or not, the place is kept until the frame announces it.
            self.dirty.insert(id);
            self.snapshot = OnceCell::new();
        } else if live && !was_live {
            self.next_since += 1;
            c.since = self.next_since;
            if self.shown.len() < self.max_shown {
                c.shown = true;
                self.shown.insert(id);
                self.dirty.insert(id);
                self.snapshot = OnceCell::new();
            } else {
                self.waiting.insert(c.since, id);
            }
        } else if !live && was_live {
            self.waiting.remove(&c.since);
        }
    }

    /// The state a Yjs connection shows native clients: its most recently
    /// renewed live state, `None` when it has none.
    pub fn owner_state(&self, owner: &MemberId) -> Option<&Value> {
        self.owned
            .get(owner)?
            .iter()
            .filter_map(|id| self.clients.get(id))
            .filter(|c| !c.native && c.json.is_some())
            .max_by_key(|c| c.renewed)
            .and_then(|c| c.value.as_ref())
    }

    /// Sets the awareness state shown for native member `owner`.
    pub fn set_native(&mut self, owner: &MemberId, json: String, now: Instant) {
        let id = match self.native_ids.get(owner) {
            Some(id) => *id,
            None => {
                let mut salt = 0;
                let mut id = derived_client_id(owner, salt);
                while self.clients.contains_key(&id) {
                    salt += 1;
                    id = derived_client_id(owner, salt);
                }
                self.native_ids.insert(owner.clone(), id);
                self.owned.entry(owner.clone()).or_default().push(id);
                id
            }
        };
        let client = self.clients.entry(id).or_insert_with(|| Client {
            owner: owner.clone(),
            native: true,
            clock: 0,
            json: None,
            value: None,
            renewed: now,
            since: 0,
            shown: false,
        });
        let was_live = client.json.is_some();
        client.clock = client.clock.wrapping_add(1);
        client.json = Some(Arc::from(json));
        client.renewed = now;
        self.changed(id, was_live);
    }

    /// Removes every client `owner` used (a connection closed or a native
    /// member left): each one shown is announced once with state `null`,
    /// clock + 1, and its place goes to the oldest waiting state.
    pub fn remove_owner(&mut self, owner: &MemberId) {
        self.native_ids.remove(owner);
        for id in self.owned.remove(owner).unwrap_or_default() {
            let Some(c) = self.clients.remove(&id) else {
                continue;
            };
            let was_dirty = self.dirty.remove(&id);
            if c.shown {
                self.shown.remove(&id);
                self.snapshot = OnceCell::new();
                if c.json.is_some() {
                    self.removed.push((id, c.clock.wrapping_add(1)));
                } else if was_dirty {
                    // Its removal was not announced yet.
                    self.removed.push((id, c.clock));
                }
            } else if c.json.is_some() {
                self.waiting.remove(&c.since);
            }
        }
    }

    /// Removes Yjs clients' states not renewed within `ttl`; returns the
    /// owners whose presence view may have changed.
    pub fn expire(&mut self, now: Instant, ttl: Duration) -> Vec<MemberId> {
        let mut owners = Vec::new();
        for (id, c) in &mut self.clients {
            if !c.native && c.json.is_some() && now.duration_since(c.renewed) >= ttl {
                c.json = None;
                c.value = None;
                c.clock = c.clock.wrapping_add(1);
                if c.shown {
                    self.dirty.insert(*id);
                    self.snapshot = OnceCell::new();
                } else {
                    self.waiting.remove(&c.since);
                }
                owners.push(c.owner.clone());
            }
        }
        owners.sort();
        owners.dedup();
        owners
    }

    /// Bumps the clock of every native member's state, so Yjs clients
    /// (which expire remote states after 30 s) keep them; shown ones are
    /// announced.
    pub fn renew_native(&mut self, now: Instant) {
        for id in self.native_ids.values() {
            let Some(c) = self.clients.get_mut(id) else {
                continue;
            };
            if c.json.is_some() {
                c.clock = c.clock.wrapping_add(1);
                c.renewed = now;
                if c.shown {
                    self.dirty.insert(*id);
                    self.snapshot = OnceCell::new();
                }
            }
        }
    }

    /// True when native members have states that need renewing.
    pub fn has_native(&self) -> bool {
        !self.native_ids.is_empty()
    }

    /// The awareness message for what changed since the last call, if any:
    /// shown states set, shown ones gone (whose places go to the oldest
    /// waiting states, sent in the same message), removed clients.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
        // States gone since the last frame give up their places now.
        let gone: Vec<u64> = self
            .dirty
            .iter()
            .copied()
            .filter(|id| self.clients.get(id).is_some_and(|c| c.json.is_none()))
            .collect();
        for id in &gone {
            if let Some(c) = self.clients.get_mut(id) {
                c.shown = false;
                self.shown.remove(id);
            }
        }
        self.promote();
        if self.dirty.is_empty() && self.removed.is_empty() {
            return None;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let removed = std::mem::take(&mut self.removed);
        let entries = dirty
            .iter()
            .filter_map(|id| {
                let c = self.clients.get(id)?;
                Some((*id, c.clock, c.json.as_deref().unwrap_or("null")))
            })
            .chain(removed.iter().map(|(id, clock)| (*id, *clock, "null")));
        Some(yjs::awareness(entries))
    }

    /// Gives free places to the oldest waiting states.
    fn promote(&mut self) {
        while self.shown.len() < self.max_shown {
            let Some((_, id)) = self.waiting.pop_first() else {
                break;
            };
            if let Some(c) = self.clients.get_mut(&id) {
                c.shown = true;
                self.shown.insert(id);
                self.dirty.insert(id);
                self.snapshot = OnceCell::new();
            }
        }
    }

    /// Every shown live state, for a joining Yjs client or an awareness
    /// query (encoded once per change, shared); `None` when there is none.
    pub fn snapshot_frame(&self) -> Option<Arc<[u8]>> {
        self.snapshot
            .get_or_init(|| {
                let live: Vec<(u64, u32, &str)> = self
                    .shown
                    .iter()
                    .filter_map(|id| {
                        let c = self.clients.get(id)?;
                        Some((*id, c.clock, c.json.as_deref()?))
                    })
                    .collect();
                (!live.is_empty()).then(|| Arc::from(yjs::awareness(live)))
            })
            .clone()
    }

    /// Live states: (shown, waiting).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let live = |c: &&Client| c.json.is_some();
        let shown = self
            .clients
            .values()
            .filter(live)
            .filter(|c| c.shown)
            .count();
        (shown, self.waiting.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(client: u64, clock: u32, json: &str) -> (AwarenessEntry, Option<Value>) {
        let e = AwarenessEntry {
            client,
            clock,
            json: json.into(),
        };
        let v = e.state().unwrap();
        (e, v)
    }

    #[test]
    fn owner_cannot_touch_anothers_client_and_leave_removes_all() {
        let (a, b): (MemberId, MemberId) = (Arc::from("a"), Arc::from("b"));
        let now = Instant::now();
        let mut t = AwarenessTable::new(8);
        assert!(t.apply_remote(&a, vec![entry(1, 1, "{}"), entry(2, 1, "{}")], 8, now));
        assert!(!t.apply_remote(&b, vec![entry(1, 5, "null")], 8, now));
        assert!(!t.apply_remote(&a, vec![entry(1, 0, "{\"x\":1}")], 8, now));
        t.take_frame();
        t.remove_owner(&a);
        let frame = t.take_frame().unwrap();
        assert_eq!(frame, yjs::awareness([(1, 2, "null"), (2, 2, "null")]));
        assert!(t.snapshot_frame().is_none());
    }

    #[test]
    fn silent_states_expire() {
        let a: MemberId = Arc::from("a");
        let now = Instant::now();
        let mut t = AwarenessTable::new(8);
        t.apply_remote(&a, vec![entry(1, 3, "{\"n\":1}")], 8, now);
        t.take_frame();
        let ttl = Duration::from_secs(30);
        assert!(t.expire(now + Duration::from_secs(29), ttl).is_empty());
        assert_eq!(t.expire(now + ttl, ttl), vec![a.clone()]);
        assert_eq!(t.take_frame(), Some(yjs::awareness([(1, 4, "null")])));
        assert!(t.owner_state(&a).is_none());
    }

    fn ids_in(frame: &[u8]) -> Vec<(u64, bool)> {
        let Ok(msgs) = yjs::decode_frame(frame) else {
            panic!("not a y-protocols frame");
        };
        let [yjs::YjsMessage::Awareness(entries)] = &msgs[..] else {
            panic!("not one awareness message: {msgs:?}");
        };
        entries
            .iter()
            .map(|e| (e.client, e.json != "null"))
            .collect()
    }

    #[test]
    fn a_full_table_shows_its_oldest_states_and_gives_a_freed_place_to_the_next() {
        let now = Instant::now();
        let mut t = AwarenessTable::new(3);
        let owners: Vec<MemberId> = (0..5).map(|i| Arc::from(format!("m{i}"))).collect();
        for (i, o) in owners.iter().enumerate() {
            t.apply_remote(o, vec![entry(i as u64 + 1, 1, "{}")], 8, now);
        }
        assert_eq!(t.counts(), (3, 2));
        let first = ids_in(&t.take_frame().unwrap());
        assert_eq!(first, vec![(1, true), (2, true), (3, true)]);
        assert_eq!(ids_in(&t.snapshot_frame().unwrap()), first);
        // A waiting state's changes are kept, not sent.
        t.apply_remote(&owners[4], vec![entry(5, 2, "{\"x\":1}")], 8, now);
        assert!(t.take_frame().is_none());
        // A shown member leaves: its removal and the oldest waiting state
        // go out together.
        t.remove_owner(&owners[1]);
        assert_eq!(
            ids_in(&t.take_frame().unwrap()),
            vec![(2, false), (4, true)]
        );
        // A shown state set to null gives its place up with the announcement.
        t.apply_remote(&owners[0], vec![entry(1, 2, "null")], 8, now);
        assert_eq!(
            ids_in(&t.take_frame().unwrap()),
            vec![(1, false), (5, true)]
        );
        assert_eq!(t.counts(), (3, 0));
        // Back with a newer clock: it waits for a place.
        t.apply_remote(&owners[0], vec![entry(1, 3, "{}")], 8, now);
        assert_eq!(t.counts(), (3, 1));
        assert!(t.take_frame().is_none());
        let snap = ids_in(&t.snapshot_frame().unwrap());
        assert_eq!(snap, vec![(3, true), (4, true), (5, true)]);
    }

    #[test]
    fn a_state_gone_and_back_within_one_tick_keeps_its_place() {
        let now = Instant::now();
        let mut t = AwarenessTable::new(1);
        let (a, b): (MemberId, MemberId) = (Arc::from("a"), Arc::from("b"));
        t.apply_remote(&a, vec![entry(1, 1, "{}")], 8, now);
        t.apply_remote(&b, vec![entry(2, 1, "{}")], 8, now);
        t.take_frame();
        t.apply_remote(&a, vec![entry(1, 2, "null")], 8, now);
        t.apply_remote(&a, vec![entry(1, 3, "{}")], 8, now);
        assert_eq!(ids_in(&t.take_frame().unwrap()), vec![(1, true)]);
        assert_eq!(t.counts(), (1, 1));
    }

    #[test]
    fn the_snapshot_is_encoded_once_per_change_of_what_is_shown() {
        let now = Instant::now();
        let mut t = AwarenessTable::new(1);
        let (a, b): (MemberId, MemberId) = (Arc::from("a"), Arc::from("b"));
        t.apply_remote(&a, vec![entry(1, 1, "{}")], 8, now);
        let one = t.snapshot_frame().unwrap();
        t.apply_remote(&b, vec![entry(2, 1, "{}")], 8, now);
        t.apply_remote(&b, vec![entry(2, 2, "{\"y\":2}")], 8, now);
        assert!(Arc::ptr_eq(&one, &t.snapshot_frame().unwrap()));
        t.apply_remote(&a, vec![entry(1, 2, "{\"x\":1}")], 8, now);
        assert!(!Arc::ptr_eq(&one, &t.snapshot_frame().unwrap()));
    }
}
