//! Connection counts shared between nodes, and the rebalancing rule.
//!
//! Every node writes its open WebSocket sessions into its liveness key
//! (`chorus:node:{id}` = the count, or `draining` while it stops) every
//! [`LOAD_INTERVAL`], keeps its id in the set [`NODES_KEY`], and reads
//! every other node's value back with the key's remaining TTL (one script,
//! [`SHARE_LOAD`]). A node that holds clearly more than its share of the
//! cluster's sessions closes the excess with a code clients retry, so a
//! restarted (empty) node fills up again through the load balancer.
//!
//! The rule ([`to_shed`]) is pure and unit-tested; the loop that applies it
//! lives with the session table (`http::shed`).

use std::time::{Duration, Instant};

/// How often a node writes its load into its liveness key and reads the
/// others'. Short, so that a decision never rests on counts older than
/// about a second.
pub const LOAD_INTERVAL: Duration = Duration::from_millis(500);

/// A value read with less than `NODE_TTL - STALE_AFTER` of TTL left was
/// not refreshed for that long: its node is dying or stuck, and nobody
/// rebalances until its key is refreshed or expires.
pub const STALE_AFTER: Duration = Duration::from_millis(1_500);

/// Redis set of the node ids that wrote a liveness key (members whose key
/// expired are removed by the next reader).
pub const NODES_KEY: &str = "chorus:nodes";

/// Value of a draining node's liveness key.
pub const DRAINING: &str = "draining";

/// Writes this node's liveness key (`ARGV[2]` for `ARGV[3]` ms), adds it
/// to the set of nodes, and returns `id, value, pttl` of every node whose
/// key exists (dropping from the set those whose key expired).
/// `KEYS[1]` = [`NODES_KEY`], `ARGV[1]` = node id, `ARGV[4]` = key prefix.
pub const SHARE_LOAD: &str = r"
local prefix = ARGV[4]
redis.call('SET', prefix .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('SADD', KEYS[1], ARGV[1])
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local v = redis.call('GET', prefix .. id)
  if v then
    table.insert(out, id)
    table.insert(out, v)
    table.insert(out, redis.call('PTTL', prefix .. id))
  else
    redis.call('SREM', KEYS[1], id)
  end
end
return out
";

/// What one node's liveness key says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeLoad {
    /// Serving, with this many open WebSocket sessions.
    Serving(u64),
    /// Stopping: its sessions are leaving; not a target for anyone.
    Draining,
    /// Not refreshed for [`STALE_AFTER`] (or unreadable): a node dying or
    /// stuck.
    Stale,
}

impl NodeLoad {
    /// The liveness key's value for a node with `sessions` open sessions.
    pub fn encode(sessions: u64, draining: bool) -> String {
        if draining {
            DRAINING.to_owned()
        } else {
            sessions.to_string()
        }
    }

    /// Reads a liveness key's value and remaining TTL (`ttl` = the TTL it
    /// is written with).
    pub fn decode(value: &str, pttl_ms: i64, ttl: Duration) -> NodeLoad {
        let fresh = pttl_ms >= 0 && Duration::from_millis(pttl_ms as u64) + STALE_AFTER >= ttl;
        match (value, fresh) {
            (_, false) => NodeLoad::Stale,
            (DRAINING, true) => NodeLoad::Draining,
            (n, true) => n.parse().map_or(NodeLoad::Stale, NodeLoad::Serving),
        }
    }
}

/// The other nodes' loads, as read at `at`.
#[derive(Debug, Clone)]
pub struct LoadView {
    /// When it was read.
    pub at: Instant,
    /// Every other node with a liveness key, and its load.
    pub peers: Vec<(String, NodeLoad)>,
}

/// How many of its `own` sessions a node should shed, given the other
/// nodes' loads and the tolerance in percent above the fair share.
///
/// Draining and stale peers are left out (their sessions are leaving or
/// gone: a killed node's key lingers until it expires, with its old
/// count), and a node alone sheds nothing. The fair share is
/// `total / serving nodes`; a node above
/// `fair × (1 + tolerance)` sheds down to `ceil(fair)`. The shed clients
/// reconnect through the load balancer; those that land back here are the
/// youngest sessions and are not shed again, since sessions are shed
/// oldest first.
pub fn to_shed(own: u64, peers: &[NodeLoad], tolerance_pct: u32) -> u64 {
    let mut total = own;
    let mut nodes = 1u64;
    for peer in peers {
        match peer {
            NodeLoad::Serving(n) => {
                total += n;
                nodes += 1;
            }
            NodeLoad::Draining | NodeLoad::Stale => {}
        }
    }
    if nodes < 2 {
        return 0;
    }
    // Integer arithmetic: own > fair × (100 + tol) / 100
    // ⇔ own × nodes × 100 > total × (100 + tol).
    let over = u128::from(own) * u128::from(nodes) * 100
        > u128::from(total) * (100 + u128::from(tolerance_pct));
    if !over {
        return 0;
    }
    let fair_ceil = total.div_ceil(nodes);
    own.saturating_sub(fair_ceil)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NodeLoad::*;

    #[test]
    fn a_node_over_its_share_sheds_down_to_it() {
        // 60 clients, a restarted node holding none: each full node
        // sheds 10, down to the fair 20.
        assert_eq!(to_shed(30, &[Serving(30), Serving(0)], 10), 10);
        // Within the tolerance (22 ≤ 20 × 1.1): nothing.
        assert_eq!(to_shed(22, &[Serving(20), Serving(18)], 10), 0);
        assert_eq!(to_shed(23, &[Serving(20), Serving(17)], 10), 3);
        // The light node never sheds.
        assert_eq!(to_shed(0, &[Serving(30), Serving(30)], 10), 0);
        // Tiny clusters: one session more than the others is no excess.
        assert_eq!(to_shed(1, &[Serving(0), Serving(0)], 10), 0);
        assert_eq!(to_shed(2, &[Serving(0)], 10), 1);
        // A bigger tolerance holds more.
        assert_eq!(to_shed(30, &[Serving(30), Serving(0)], 60), 0);
    }

    #[test]
    fn draining_and_stale_nodes_do_not_count() {
        assert_eq!(to_shed(100, &[], 10), 0);
        assert_eq!(to_shed(100, &[Draining, Stale], 10), 0);
        // A killed node's lingering count does not make the nodes that took
        // its clients look overloaded; a restarted (empty) node does.
        assert_eq!(to_shed(30, &[Serving(30), Stale], 10), 0);
        assert_eq!(to_shed(30, &[Serving(30), Stale, Serving(0)], 10), 10);
        assert_eq!(to_shed(40, &[Serving(0), Draining], 10), 20);
    }

    #[test]
    fn key_values_round_trip_and_age() {
        let ttl = Duration::from_secs(6);
        assert_eq!(
            NodeLoad::decode(&NodeLoad::encode(17, false), 5_900, ttl),
            Serving(17)
        );
        assert_eq!(
            NodeLoad::decode(&NodeLoad::encode(17, true), 5_900, ttl),
            Draining
        );
        // Not refreshed for 2 s: stale (a killed node's key lingers).
        assert_eq!(NodeLoad::decode("17", 4_000, ttl), Stale);
        assert_eq!(NodeLoad::decode("17", -2, ttl), Stale);
        assert_eq!(NodeLoad::decode("1", 6_000, ttl), Serving(1));
        assert_eq!(NodeLoad::decode("garbage", 6_000, ttl), Stale);
    }
}
