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

use std::collections::{BTreeSet, HashMap};
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
}

/// Awareness of one room.
#[derive(Default)]
pub struct AwarenessTable {
    clients: HashMap<u64, Client>,
    /// Derived client id of each native member that has one.
    native_ids: HashMap<MemberId, u64>,
    /// Client ids changed since the last frame.
    dirty: BTreeSet<u64>,
    /// Removed clients not yet announced: (client, clock).
    removed: Vec<(u64, u32)>,
}

impl AwarenessTable {
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
            match self.clients.get_mut(&entry.client) {
                Some(c) if c.owner != *owner || c.native => continue,
                Some(c) => {
                    // Same rule as y-protocols' applyAwarenessUpdate.
                    let newer = c.clock < entry.clock
                        || (c.clock == entry.clock && json.is_none() && c.json.is_some());
                    if !newer {
                        continue;
                    }
                    c.clock = entry.clock;
                    c.json = json;
                    c.value = value;
                    c.renewed = now;
                }
                None => {
                    let owned = self.clients.values().filter(|c| c.owner == *owner).count();
                    if owned >= max_clients {
                        tracing::debug!(member = %owner, "awareness client limit reached");
                        continue;
                    }
                    self.clients.insert(
                        entry.client,
                        Client {
                            owner: owner.clone(),
                            native: false,
                            clock: entry.clock,
                            json,
                            value,
                            renewed: now,
                        },
                    );
                }
            }
            self.dirty.insert(entry.client);
            taken = true;
        }
        taken
    }

    /// The state a Yjs connection shows native clients: its most recently
    /// renewed live state, `None` when it has none.
    pub fn owner_state(&self, owner: &MemberId) -> Option<&Value> {
        self.clients
            .values()
            .filter(|c| c.owner == *owner && !c.native && c.json.is_some())
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
        });
        client.clock = client.clock.wrapping_add(1);
        client.json = Some(Arc::from(json));
        client.renewed = now;
        self.dirty.insert(id);
    }

    /// Removes every client `owner` used (a connection closed or a native
    /// member left): each is announced once with state `null`, clock + 1.
    pub fn remove_owner(&mut self, owner: &MemberId) {
        self.native_ids.remove(owner);
        let ids: Vec<u64> = self
            .clients
            .iter()
            .filter(|(_, c)| c.owner == *owner)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.clients.remove(&id) {
                let was_dirty = self.dirty.remove(&id);
                if c.json.is_some() {
                    self.removed.push((id, c.clock.wrapping_add(1)));
                } else if was_dirty {
                    // Its removal was not announced yet.
                    self.removed.push((id, c.clock));
                }
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
                self.dirty.insert(*id);
                owners.push(c.owner.clone());
            }
        }
        owners.sort();
        owners.dedup();
        owners
    }

    /// Bumps the clock of every native member's state, so Yjs clients
    /// (which expire remote states after 30 s) keep them.
    pub fn renew_native(&mut self, now: Instant) {
        for (id, c) in &mut self.clients {
            if c.native && c.json.is_some() {
                c.clock = c.clock.wrapping_add(1);
                c.renewed = now;
                self.dirty.insert(*id);
            }
        }
    }

    /// True when native members have states that need renewing.
    pub fn has_native(&self) -> bool {
        !self.native_ids.is_empty()
    }

    /// The awareness message for what changed since the last call, if any.
    pub fn take_frame(&mut self) -> Option<Vec<u8>> {
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

    /// Every live state, for a joining Yjs client or an awareness query;
    /// `None` when there is none.
    pub fn snapshot_frame(&self) -> Option<Vec<u8>> {
        let live: Vec<(u64, u32, &str)> = self
            .clients
            .iter()
            .filter_map(|(id, c)| Some((*id, c.clock, c.json.as_deref()?)))
            .collect();
        (!live.is_empty()).then(|| yjs::awareness(live))
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
        let mut t = AwarenessTable::default();
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
        let mut t = AwarenessTable::default();
        t.apply_remote(&a, vec![entry(1, 3, "{\"n\":1}")], 8, now);
        t.take_frame();
        let ttl = Duration::from_secs(30);
        assert!(t.expire(now + Duration::from_secs(29), ttl).is_empty());
        assert_eq!(t.expire(now + ttl, ttl), vec![a.clone()]);
        assert_eq!(t.take_frame(), Some(yjs::awareness([(1, 4, "null")])));
        assert!(t.owner_state(&a).is_none());
    }
}
