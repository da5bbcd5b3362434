//! What a clustered server keeps about the other instances: the rank of each local node's
//! claim, the pool of remote nodes that lists draw from, the ids that moved away, and the
//! cluster's counters. The server decides what to do with a frame; this answers its questions.
//!
//! The newest connection of an id wins everywhere: each claim gets a rank from the bus
//! ([`ClusterIn::Claimed`]), and a node closes when it learns of a higher rank
//! ([`ClusterIn::TakenOver`]), even one that arrived before its own rank did.

use std::collections::{HashMap, HashSet, VecDeque};

use serde_json::value::RawValue;

#[cfg(doc)]
use super::ClusterIn;
use super::{ClusterConfig, ClusterStats};
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo};
use crate::telemetry::ClusterCount;

/// The cluster's side of a [`SignalServer`](crate::SignalServer) made with
/// [`with_cluster`](crate::SignalServer::with_cluster).
pub(crate) struct ClusterState {
    config: ClusterConfig,
    /// Whether relays may go to the backplane.
    up: bool,
    /// The rank of each local node's claim: `None` until [`ClusterIn::Claimed`].
    claims: HashMap<NodeID, Claim>,
    /// Nodes of other instances that lists draw from, at most `max_remote_pool`.
    pool: Vec<Remote>,
    /// How many remote nodes there are in all, as the last sample said; at least `pool.len()`.
    remote_total: u64,
    /// The ids of the last local nodes closed for a newer connection elsewhere: frames for them
    /// that still arrive here are the newer holder's too, and are dropped without a bounce.
    moved: VecDeque<NodeID>,
    stats: ClusterStats,
}

/// How many ids [`ClusterState::moved`] remembers.
const MOVED: usize = 1024;

struct Claim {
    conn: ConnId,
    gen: Option<u64>,
    /// The highest rank of another instance's claim heard of while `gen` was unknown.
    beaten_by: Option<u64>,
}

/// A node of another instance, ready to be spliced into a list like a local one.
pub(crate) struct Remote {
    pub(crate) info: NodeInfo,
    /// `info` as JSON, encoded once when the sample arrived.
    pub(crate) json: Box<RawValue>,
}

impl ClusterState {
    pub(crate) fn new(config: ClusterConfig) -> Self {
        Self {
            config,
            up: false,
            claims: HashMap::new(),
            pool: Vec::new(),
            remote_total: 0,
            moved: VecDeque::new(),
            stats: ClusterStats::default(),
        }
    }

    /// The counters, with the gauges as they are now.
    pub(crate) fn stats(&self) -> ClusterStats {
        ClusterStats {
            up: self.up,
            pool: self.pool.len(),
            remote_nodes: self.remote_total,
            ..self.stats.clone()
        }
    }

    /// Adds `n` to the counter `what`.
    pub(crate) fn count(&mut self, what: ClusterCount, n: u64) {
        let counter = match what {
            ClusterCount::RelayOut => &mut self.stats.relays_out,
            ClusterCount::RelayIn => &mut self.stats.relays_in,
            ClusterCount::Undeliverable => &mut self.stats.undeliverable,
            ClusterCount::Bounced => &mut self.stats.bounced,
            ClusterCount::Rejected => &mut self.stats.rejected,
            ClusterCount::TakenOver => &mut self.stats.taken_over,
        };
        *counter += n;
    }

    /// Whether relays may go to the backplane.
    pub(crate) fn is_up(&self) -> bool {
        self.up
    }

    /// The backplane came up ([`ClusterIn::Up`]) or went down ([`ClusterIn::Down`]); down, the
    /// pool goes, as nothing in it can be reached.
    pub(crate) fn set_up(&mut self, up: bool) {
        self.up = up;
        if !up {
            self.pool.clear();
            self.remote_total = 0;
        }
    }

    /// The remote nodes lists draw from.
    pub(crate) fn pool(&self) -> &[Remote] {
        &self.pool
    }

    /// How many remote nodes there are in all, as the last sample said; at least the pool's size.
    pub(crate) fn remote_total(&self) -> u64 {
        self.remote_total
    }

    /// A local node announced on `conn`: its claim waits for a rank.
    pub(crate) fn joined(&mut self, id: NodeID, conn: ConnId) {
        self.claims.insert(id, Claim { conn, gen: None, beaten_by: None });
    }

    /// A local node left `conn`: its claim goes, unless a newer connection here holds it.
    pub(crate) fn left(&mut self, id: NodeID, conn: ConnId) {
        if self.claims.get(&id).is_some_and(|claim| claim.conn == conn) {
            self.claims.remove(&id);
        }
    }

    /// The server stops: no claims, no pool.
    pub(crate) fn stop(&mut self) {
        self.claims.clear();
        self.pool.clear();
    }

    /// [`ClusterIn::Claimed`]: `id`'s claim on `conn` has rank `gen`. True when a higher rank
    /// heard of earlier already beats it: the node must go.
    pub(crate) fn claimed(&mut self, id: NodeID, conn: ConnId, gen: u64) -> bool {
        // A claim of a connection that has left since is ignored.
        let Some(claim) = self.claims.get_mut(&id).filter(|claim| claim.conn == conn) else { return false };
        claim.gen = Some(gen);
        claim.beaten_by.is_some_and(|other| other > gen)
    }

    /// [`ClusterIn::TakenOver`]: another instance claimed `id` with rank `gen`. True when that
    /// beats the local claim: the node must go. A rank that comes before the local claim's own
    /// is remembered until it does.
    pub(crate) fn taken_over(&mut self, id: NodeID, gen: u64) -> bool {
        let Some(claim) = self.claims.get_mut(&id) else { return false };
        match claim.gen {
            Some(mine) => mine < gen,
            // Beats any rank this claim can still get.
            None if gen == u64::MAX => true,
            None => {
                claim.beaten_by = claim.beaten_by.max(Some(gen));
                false
            }
        }
    }

    /// The local node `id` was closed for a newer connection elsewhere: remember it, so that
    /// frames still on their way to it here are dropped, not bounced.
    pub(crate) fn moved_away(&mut self, id: NodeID) {
        if self.moved.len() >= MOVED {
            self.moved.pop_front();
        }
        self.moved.push_back(id);
    }

    /// Whether `id` was recently closed here for a newer connection elsewhere.
    pub(crate) fn has_moved(&self, id: &NodeID) -> bool {
        self.moved.contains(id)
    }

    /// `about` is nowhere: the pool must not keep offering it.
    pub(crate) fn forget_remote(&mut self, about: NodeID) {
        self.pool.retain(|remote| remote.info.id() != about);
    }

    /// Replaces the pool with the remote nodes of a sample ([`ClusterIn::Sample`]) that
    /// `within_limits` accepts, without duplicates and without nodes `is_local`, at most
    /// `max_remote_pool` of them. Returns how many `within_limits` refused.
    pub(crate) fn take_sample(
        &mut self,
        nodes: Vec<NodeInfo>,
        total: u64,
        within_limits: impl Fn(&NodeInfo) -> bool,
        is_local: impl Fn(&NodeID) -> bool,
    ) -> u64 {
        let limit = self.config.max_remote_pool;
        let mut seen = HashSet::with_capacity(nodes.len().min(limit));
        let mut pool = Vec::with_capacity(nodes.len().min(limit));
        let mut rejected = 0;
        for info in nodes {
            if pool.len() >= limit {
                break;
            }
            if !within_limits(&info) {
                rejected += 1;
                continue;
            }
            let id = info.id();
            if is_local(&id) || !seen.insert(id) {
                continue;
            }
            let Ok(json) = serde_json::value::to_raw_value(&info) else { continue };
            pool.push(Remote { info, json });
        }
        self.remote_total = total.max(pool.len() as u64);
        self.pool = pool;
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u8) -> NodeInfo {
        NodeInfo::new(format!("n{n}"), "c", [n; 32])
    }

    #[test]
    fn a_higher_rank_heard_before_the_own_one_still_wins() {
        let mut state = ClusterState::new(ClusterConfig::default());
        let (id, conn) = (node(1).id(), ConnId::new(1));
        state.joined(id, conn);
        assert!(!state.taken_over(id, 7), "no rank yet: remembered, not decided");
        assert!(state.claimed(id, conn, 5), "5 < 7: the node must go");
        // A rank below the own one changes nothing.
        let (other, conn2) = (node(2).id(), ConnId::new(2));
        state.joined(other, conn2);
        assert!(!state.claimed(other, conn2, 9));
        assert!(!state.taken_over(other, 8));
        assert!(state.taken_over(other, 10));
        // A rank for a connection that left is ignored.
        state.left(other, conn2);
        assert!(!state.claimed(other, conn2, 1));
        assert!(!state.taken_over(other, u64::MAX));
    }

    #[test]
    fn the_pool_is_bounded_deduplicated_and_free_of_local_nodes() {
        let mut state = ClusterState::new(ClusterConfig::default().with_max_remote_pool(3));
        let local = node(1).id();
        let sample = vec![
            node(1),
            node(2),
            node(2),
            NodeInfo::new("x".repeat(99), "c", [3; 32]),
            node(4),
            node(5),
            node(6),
        ];
        let rejected = state.take_sample(sample, 2, |info| info.name.len() < 10, |id| *id == local);
        assert_eq!(rejected, 1);
        let ids: Vec<NodeID> = state.pool().iter().map(|remote| remote.info.id()).collect();
        assert_eq!(ids, vec![node(2).id(), node(4).id(), node(5).id()]);
        assert_eq!(state.remote_total(), 3, "at least the pool");
        state.forget_remote(node(4).id());
        assert_eq!(state.pool().len(), 2);
        state.set_up(true);
        state.set_up(false);
        assert!(state.pool().is_empty() && state.remote_total() == 0);
    }
}
