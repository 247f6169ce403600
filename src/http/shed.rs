//! Moving sessions off this node, with close codes clients retry:
//!
//! - **Draining** (on SIGTERM, before the rest of shutdown): `/readyz`
//!   answers 503 and new upgrades are refused with 503 for
//!   `drain_delay_ms`, so that load balancers stop sending clients here;
//!   then the sessions are closed with 1001, spread evenly over
//!   `drain_window_ms`, so that the other nodes take the reconnections as a
//!   stream instead of a storm.
//! - **Rebalancing** (cluster mode): every [`LOAD_INTERVAL`] this node
//!   reports its session count to the bridge (written into its liveness
//!   key) and, when the other nodes' counts say it holds more than its
//!   share ([`crate::cluster::balance::to_shed`]), closes the excess with
//!   1012, oldest sessions first, at most `rebalance_per_sec` a second. An
//!   excess must be seen in two views in a row (a burst of arriving
//!   clients is not one), and after shedding the node waits until the
//!   counts it reads were written after the shed clients had time to
//!   reconnect ([`SETTLE`]), so it never acts twice on the same imbalance.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cluster::balance::{to_shed, LOAD_INTERVAL};
use crate::outbox::Outbound;
use crate::protocol::close;
use crate::session::Shared;

/// Time a shed client is given to reconnect elsewhere before the counts
/// are trusted again.
const SETTLE: Duration = Duration::from_secs(1);

/// Step of the drain window: closes are sent in batches this far apart.
const DRAIN_STEP: Duration = Duration::from_millis(20);

/// Marks the node as draining, waits out the drain delay, then closes every
/// session with 1001 spread over the drain window.
pub(super) async fn drain(shared: &Shared) {
    let limits = &shared.config.limits;
    shared.draining.store(true, Ordering::Relaxed);
    if let Some(bridge) = &shared.bridge {
        bridge.set_draining();
    }
    tracing::info!(
        sessions = shared.sessions.count(),
        drain_delay_ms = limits.drain_delay_ms,
        drain_window_ms = limits.drain_window_ms,
        "draining: /readyz answers 503; sessions close after the drain delay, spread over the drain window"
    );
    tokio::time::sleep(limits.drain_delay()).await;
    let sessions = shared.sessions.oldest(usize::MAX);
    let window = limits.drain_window();
    let started = tokio::time::Instant::now();
    let total = sessions.len();
    let mut sent = 0;
    while sent < total {
        // Closes due by now: an even share of the window's elapsed part.
        let elapsed = started.elapsed();
        let due = if elapsed >= window {
            total
        } else {
            ((total as u128 * elapsed.as_nanos()) / window.as_nanos()) as usize + 1
        };
        for to in &sessions[sent..due.min(total)] {
            to.do_send(Outbound::Close {
                code: close::GOING_AWAY,
                reason: "server shutting down".into(),
            });
        }
        sent = due.min(total);
        if sent < total {
            tokio::time::sleep(DRAIN_STEP).await;
        }
    }
}

/// Cluster mode: reports this node's session count to the bridge and
/// sheds sessions over the node's share, until the node drains. Returns at
/// once on a single node.
pub(super) async fn rebalance(shared: Shared) {
    let Some(bridge) = shared.bridge.clone() else {
        return;
    };
    let limits = &shared.config.limits;
    // Counts read before this instant may predate the last shed's effect.
    let mut settled_after = Instant::now();
    // The excess seen in the previous view: only an excess seen twice in a
    // row is shed (not a burst of clients arriving at once).
    let mut seen: Option<(Instant, u64)> = None;
    let mut tick = tokio::time::interval(LOAD_INTERVAL / 2);
    loop {
        tick.tick().await;
        let own = shared.sessions.count() as u64;
        bridge.report_sessions(own);
        if shared.draining.load(Ordering::Relaxed) {
            return;
        }
        if limits.rebalance_per_sec == 0 {
            continue;
        }
        let Some(view) = bridge.load_view() else {
            continue;
        };
        if view.at < settled_after {
            continue;
        }
        if seen.is_some_and(|(at, _)| at == view.at) {
            continue;
        }
        let peers: Vec<_> = view.peers.iter().map(|(_, load)| *load).collect();
        let now = to_shed(own, &peers, limits.rebalance_tolerance);
        let before = seen.replace((view.at, now)).map_or(0, |(_, n)| n);
        let excess = now.min(before);
        if excess == 0 {
            continue;
        }
        tracing::info!(
            sessions = own,
            shed = excess,
            peers = ?view.peers,
            "rebalancing: this node holds more than its share of the cluster's sessions; closing the oldest with 1012"
        );
        let pace = Duration::from_secs(1) / limits.rebalance_per_sec;
        for to in shared.sessions.oldest(excess as usize) {
            if shared.draining.load(Ordering::Relaxed) {
                return;
            }
            to.do_send(Outbound::Close {
                code: close::SERVICE_RESTART,
                reason: "rebalancing: reconnect".into(),
            });
            shared.metrics.sessions_shed.inc();
            tokio::time::sleep(pace).await;
        }
        settled_after = Instant::now() + SETTLE + LOAD_INTERVAL;
        seen = None;
    }
}
