//! One actor per WebSocket connection. It decodes frames, checks them
//! against the connection's state and limits, forwards them to its rooms, and
//! writes what rooms send it. Outbound bytes are accounted in an
//! [`Outbox`](crate::outbox::Outbox) shared with the rooms (see
//! [`crate::outbox`]).
//!
//! - [`core`]: what every session does the same way ([`core::SessionCore`]:
//!   registration, heartbeat and resync, stream intake, rate, close, rooms
//!   joined, token expiry), embedded by each session actor;
//! - [`intake`]: fragments reassembled within `max_frame_bytes`, control
//!   frames and framing errors named;
//! - [`flow`]: whether a session reads its socket ([`flow::Gate`]): not
//!   while over its rate or while too much of its work waits in rooms;
//! - [`watchdog`]: a task outside the response body that shuts a stuck
//!   connection's socket, since its session cannot run;
//! - [`native`]: [`NativeSession`], the MessagePack protocol on `/ws`;
//! - [`yjs`]: [`yjs::YjsSession`], y-protocols on `/yjs/{room}`, a thin
//!   adapter over the sans-I/O sync logic in [`crate::sync`];
//! - [`hocuspocus`]: [`hocuspocus::HocuspocusSession`], the Hocuspocus
//!   protocol on `/hocuspocus`: many documents per socket, each a room,
//!   each with its own [`crate::sync::DocSync`].
//!
//! All talk to the same room actors. This file keeps what the HTTP layer
//! hands a session: [`Shared`], [`Sessions`] and [`Admission`].

pub mod core;
pub mod flow;
pub mod hocuspocus;
pub mod intake;
pub mod native;
pub mod watchdog;
pub mod yjs;

pub use native::NativeSession;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;

use crate::auth::{Grants, Rights, Verifier};
use crate::config::Config;
use crate::ids::MemberId;
use crate::limit::{IpLimiter, IpSlot};
use crate::outbox::Outbound;
use crate::room::Registry;

/// Every live session, so shutdown can tell each one to go away and
/// metrics can count them.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<MemberId, Recipient<Outbound>>>,
    next: AtomicU64,
    /// Node id prefix of member ids.
    node: String,
}

impl Sessions {
    /// A session table for the node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Sessions {
            node: node.into(),
            ..Default::default()
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<MemberId, Recipient<Outbound>>> {
        // Critical sections are single map operations; a poisoned lock is consistent.
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fresh member id, unique in the cluster.
    pub fn next_id(&self) -> MemberId {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        crate::ids::member_id(&self.node, n)
    }

    /// Number of open sessions.
    pub fn count(&self) -> usize {
        self.live().len()
    }

    fn register(&self, id: MemberId, to: Recipient<Outbound>) {
        self.live().insert(id, to);
    }

    fn unregister(&self, id: &MemberId) {
        self.live().remove(id);
    }

    /// Tells every session to close with `code`.
    pub fn close_all(&self, code: u16, reason: &str) {
        for to in self.live().values() {
            to.do_send(Outbound::Close {
                code,
                reason: reason.to_owned(),
            });
        }
    }

    /// The `n` oldest sessions (first opened), oldest first: the ones a
    /// node sheds, so that a client that was shed and came back (now among
    /// the youngest) is not shed again.
    pub fn oldest(&self, n: usize) -> Vec<Recipient<Outbound>> {
        let counter = |id: &MemberId| {
            id.rsplit_once('-')
                .and_then(|(_, n)| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        let mut all: Vec<(u64, Recipient<Outbound>)> = self
            .live()
            .iter()
            .map(|(id, to)| (counter(id), to.clone()))
            .collect();
        all.sort_unstable_by_key(|(n, _)| *n);
        all.into_iter().take(n).map(|(_, to)| to).collect()
    }
}

/// What every session shares: configuration, rooms, the session table.
#[derive(Clone)]
pub struct Shared {
    /// Server configuration.
    pub config: Arc<Config>,
    /// Live rooms.
    pub registry: Registry,
    /// Server counters.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Where documents are stored (for `/readyz`; rooms have their own handle).
    pub store: Arc<dyn crate::store::DocStore>,
    /// The bridge to the other nodes, in cluster mode only.
    pub bridge: Option<crate::cluster::Bridge>,
    /// Live sessions.
    pub sessions: Arc<Sessions>,
    /// Token verifier; `None`: authentication is off (open server).
    pub auth: Option<Arc<Verifier>>,
    /// Open connections and connection rate per client IP.
    pub ips: Arc<IpLimiter>,
    /// Request rates of the REST API, per client IP and per credential.
    pub api_rates: Arc<crate::limit::ApiRates>,
    /// Set when shutdown begins: `/readyz` answers 503 and new WebSocket
    /// upgrades are refused (503) while sessions are closed.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    /// Grants of a session that presents no token: everything on an open
    /// server, read-only with `--allow-anonymous-read`, else none.
    pub fn anonymous_grants(&self) -> Option<Grants> {
        match &self.auth {
            None => Some(Grants::open()),
            Some(_) if self.config.allow_anonymous_read => Some(Grants::anonymous(Rights::Read)),
            Some(_) => None,
        }
    }
}

/// What the HTTP layer decided about a connection before the upgrade.
#[derive(Debug, Default)]
pub struct Admission {
    /// Grants from a token in the URL or `Authorization` header, or the
    /// anonymous grants. `None` on `/ws`: the session authenticates with
    /// `hello.token`.
    pub grants: Option<Grants>,
    /// The per-IP slot, held for the life of the session.
    pub slot: Option<IpSlot>,
    /// `/yjs` only: refused after the upgrade with this close code and
    /// reason (y-websocket cannot read an HTTP status).
    pub refusal: Option<(u16, String)>,
    /// The connection's kill switch, for the watchdog that resets a stuck
    /// connection ([`watchdog`]).
    pub abort: Option<std::sync::Arc<watchdog::Abort>>,
}

impl Admission {
    /// The same admission, with the connection's kill switch.
    pub fn with_abort(mut self, abort: std::sync::Arc<watchdog::Abort>) -> Self {
        self.abort = Some(abort);
        self
    }
}
