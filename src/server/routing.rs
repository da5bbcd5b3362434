//! Routing: where a node's `PeerSetup` goes, here or on another instance, and what the other
//! instances say about the nodes they hold.
//!
//! Without a cluster, a set-up for a node that is not here is answered with `unknown
//! destination`. With one, it goes to the backplane, which either delivers it to the instance
//! that holds the node or answers [`ClusterIn::Undeliverable`]. The newest connection of an id
//! wins everywhere: each claim gets a rank from the bus ([`ClusterIn::Claimed`]), and a node
//! closes when it learns of a higher rank ([`ClusterIn::TakenOver`]), even one that arrived
//! before its own rank did.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::cluster::{ClusterConfig, ClusterIn, ClusterOut, ClusterStats, Undelivered};
use crate::codec::Codec;
use crate::error::ProtocolError;
use crate::ids::ConnId;
use crate::protocol::{
    Inbound, NodeID, NodeInfo, SetupRoute, WSSignalMessageFromNode, WSSignalMessageToNode,
};
use crate::telemetry::ClusterCount;

use super::{check_len, SignalOut, SignalServer};

/// What a clustered server keeps about the other instances.
pub(super) struct Cluster {
    pub(super) config: ClusterConfig,
    /// Whether relays may go to the backplane.
    up: bool,
    /// The rank of each local node's claim: `None` until [`ClusterIn::Claimed`].
    claims: HashMap<NodeID, Claim>,
    /// Nodes of other instances that lists draw from, at most `max_remote_pool`.
    pub(super) pool: Vec<Remote>,
    /// How many remote nodes there are in all, as the last sample said; at least `pool.len()`.
    pub(super) remote_total: u64,
    /// The ids of the last local nodes closed for a newer connection elsewhere: frames for them
    /// that still arrive here are the newer holder's too, and are dropped without a bounce.
    moved: VecDeque<NodeID>,
    stats: ClusterStats,
}

/// How many ids [`Cluster::moved`] remembers.
const MOVED: usize = 1024;

struct Claim {
    conn: ConnId,
    gen: Option<u64>,
    /// The highest rank of another instance's claim heard of while `gen` was unknown.
    beaten_by: Option<u64>,
}

/// A node of another instance, ready to be spliced into a list like a local one.
pub(super) struct Remote {
    pub(super) info: NodeInfo,
    pub(super) json: Box<RawValue>,
}

impl Cluster {
    pub(super) fn new(config: ClusterConfig) -> Self {
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

    pub(super) fn stats(&self) -> ClusterStats {
        ClusterStats {
            up: self.up,
            pool: self.pool.len(),
            remote_nodes: self.remote_total,
            ..self.stats.clone()
        }
    }
}

impl SignalServer {
    /// Forwards a `PeerSetup` to the other node of its pair. The frame goes out as it came in
    /// when both ends speak the same codec: `PeerSetup` encodes the same in both directions.
    pub(super) fn relay(
        &mut self,
        conn: ConnId,
        codec: Codec,
        sender: NodeID,
        frame: Bytes,
        route: SetupRoute,
    ) -> Result<(), ProtocolError> {
        let destination = if sender == route.id_init {
            route.id_follow
        } else if sender == route.id_follow {
            route.id_init
        } else {
            return Err(ProtocolError::NotInPair);
        };
        let len = route.message.encoded_len();
        if len > self.config.max_setup_len {
            return Err(ProtocolError::TooLong {
                field: "peer message",
                len,
                limit: self.config.max_setup_len,
            });
        }
        let Some((to, to_codec)) = self.nodes.get(&destination).map(|node| (node.conn, node.codec)) else {
            if let Some(cluster) = self.cluster.as_mut().filter(|cluster| cluster.up) {
                cluster.stats.relays_out += 1;
                self.meters.cluster(ClusterCount::RelayOut, 1);
                let relay = ClusterOut::Relay { from: sender, to: destination, codec, frame };
                self.out.push_back(SignalOut::Cluster(Box::new(relay)));
                return Ok(());
            }
            // Not the sender's fault: the other node may just have left. No strike.
            self.send_error(conn, &ProtocolError::UnknownDestination(destination));
            return Ok(());
        };
        if self.conns.get(&to).is_some_and(|c| c.busy) {
            // Forwarding would fill a queue that the reader is not emptying fast enough, until its
            // transport closes it as a slow reader: its peers could get it closed. Not the
            // sender's fault either: no strike.
            self.send_error(conn, &ProtocolError::DestinationBusy(destination));
            return Ok(());
        }
        self.forward(to, to_codec, codec, frame);
        Ok(())
    }

    /// Sends a `PeerSetup` frame encoded with `codec` to `to`, which speaks `to_codec`.
    fn forward(&mut self, to: ConnId, to_codec: Codec, codec: Codec, frame: Bytes) {
        if to_codec == codec {
            self.push_frame(to, frame);
        } else if let Ok(WSSignalMessageFromNode::PeerSetup(info)) = codec.decode(&frame) {
            // Only a relay between codecs decodes the message in full, to re-encode it. `Inbound`
            // accepted the frame, so this decode succeeds too.
            self.send(to, to_codec, &WSSignalMessageToNode::PeerSetup(info));
        }
        self.stats.relays += 1;
        self.meters.relay();
    }

    /// A local node announced: claim it on the bus.
    pub(super) fn cluster_joined(&mut self, id: NodeID, conn: ConnId, info: &NodeInfo) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.claims.insert(id, Claim { conn, gen: None, beaten_by: None });
        self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Joined { id, conn, info: info.clone() })));
    }

    /// A local node left: withdraw its claim.
    pub(super) fn cluster_left(&mut self, id: NodeID, conn: ConnId) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        if cluster.claims.get(&id).is_some_and(|claim| claim.conn == conn) {
            cluster.claims.remove(&id);
        }
        self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Left { id, conn })));
    }

    /// The server stops: every local node leaves the bus.
    pub(super) fn cluster_stop(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.claims.clear();
        cluster.pool.clear();
        let mut left: Vec<(NodeID, ConnId)> = self.nodes.iter().map(|(id, node)| (*id, node.conn)).collect();
        left.sort_unstable();
        for (id, conn) in left {
            self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Left { id, conn })));
        }
    }

    pub(super) fn handle_cluster(&mut self, _now: Instant, input: ClusterIn) {
        let Some(cluster) = self.cluster.as_mut() else {
            debug_assert!(false, "a cluster input for a server without a cluster");
            return;
        };
        match input {
            ClusterIn::Claimed { id, conn, gen } => {
                let Some(claim) = cluster.claims.get_mut(&id).filter(|claim| claim.conn == conn) else {
                    return; // A claim of a connection that has left since.
                };
                claim.gen = Some(gen);
                if claim.beaten_by.is_some_and(|other| other > gen) {
                    self.taken_over(id);
                }
            }
            ClusterIn::TakenOver { id, gen } => {
                let Some(claim) = cluster.claims.get_mut(&id) else { return };
                match claim.gen {
                    Some(mine) if mine < gen => self.taken_over(id),
                    Some(_) => {}
                    // Beats any rank this claim can still get.
                    None if gen == u64::MAX => self.taken_over(id),
                    None => claim.beaten_by = claim.beaten_by.max(Some(gen)),
                }
            }
            ClusterIn::Frame { to, codec, frame } => self.deliver(to, codec, frame),
            ClusterIn::Undeliverable { to, about, reason } => {
                if reason == Undelivered::Unknown {
                    // The pool must not keep offering a node that is nowhere.
                    cluster.pool.retain(|remote| remote.info.id() != about);
                }
                let Some(conn) = self.nodes.get(&to).map(|node| node.conn) else { return };
                cluster.stats.undeliverable += 1;
                self.meters.cluster(ClusterCount::Undeliverable, 1);
                self.send_error(conn, &reason.error(about));
            }
            ClusterIn::Sample { nodes, total } => self.take_sample(nodes, total),
            ClusterIn::Up => cluster.up = true,
            ClusterIn::Down => {
                cluster.up = false;
                cluster.pool.clear();
                cluster.remote_total = 0;
            }
        }
    }

    /// Closes the local node `id`: a newer connection with its id arrived elsewhere.
    fn taken_over(&mut self, id: NodeID) {
        let Some(conn) = self.nodes.get(&id).map(|node| node.conn) else { return };
        self.meters.cluster(ClusterCount::TakenOver, 1);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.stats.taken_over += 1;
            if cluster.moved.len() >= MOVED {
                cluster.moved.pop_front();
            }
            cluster.moved.push_back(id);
        }
        self.close(conn, ProtocolError::Replaced);
    }

    /// Delivers a frame from another instance to the local node `to`, after the checks a frame
    /// from a node gets: size, codec, a `PeerSetup` whose pair holds `to`, the text's length.
    fn deliver(&mut self, to: NodeID, codec: Codec, frame: Bytes) {
        let Some(route) = self.check_remote_frame(to, codec, &frame) else {
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.stats.rejected += 1;
            }
            self.meters.cluster(ClusterCount::Rejected, 1);
            return;
        };
        let from = if route.id_init == to { route.id_follow } else { route.id_init };
        let local = self.nodes.get(&to).map(|node| (node.conn, node.codec));
        let moved = self.cluster.as_ref().is_some_and(|cluster| cluster.moved.contains(&to));
        let reason = match local {
            // The node moved to a newer connection elsewhere, and that instance received this
            // frame too: a bounce would call a reachable node unknown. Dropped and counted.
            None if moved => None,
            // It left (or is leaving) and its channel still reached this instance.
            None => Some(Undelivered::Unknown),
            Some((conn, _)) if self.conns.get(&conn).is_some_and(|c| c.busy) => Some(Undelivered::Busy),
            Some((conn, to_codec)) => {
                if let Some(cluster) = self.cluster.as_mut() {
                    cluster.stats.relays_in += 1;
                }
                self.meters.cluster(ClusterCount::RelayIn, 1);
                return self.forward(conn, to_codec, codec, frame);
            }
        };
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.stats.bounced += 1;
        }
        self.meters.cluster(ClusterCount::Bounced, 1);
        if let Some(reason) = reason {
            self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Undeliverable {
                to: from,
                about: to,
                reason,
            })));
        }
    }

    fn check_remote_frame(&self, to: NodeID, codec: Codec, frame: &[u8]) -> Option<SetupRoute> {
        if frame.len() > self.config.max_frame_size {
            return None;
        }
        let Ok(Inbound::PeerSetup(route)) = codec.decode::<Inbound>(frame) else { return None };
        let in_pair = route.id_init == to || route.id_follow == to;
        (in_pair && route.message.encoded_len() <= self.config.max_setup_len).then_some(route)
    }

    /// Replaces the pool with the checked, deduplicated remote nodes of a sample.
    fn take_sample(&mut self, nodes: Vec<NodeInfo>, total: u64) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        let limit = cluster.config.max_remote_pool;
        let mut seen = std::collections::HashSet::with_capacity(nodes.len().min(limit));
        let mut pool = Vec::with_capacity(nodes.len().min(limit));
        let mut rejected = 0;
        for info in nodes {
            if pool.len() >= limit {
                break;
            }
            let within = check_len("name", &info.name, self.config.max_name_len)
                .and_then(|()| check_len("client", &info.client, self.config.max_client_len));
            if within.is_err() {
                rejected += 1;
                continue;
            }
            let id = info.id();
            if self.nodes.contains_key(&id) || !seen.insert(id) {
                continue;
            }
            let Ok(json) = serde_json::value::to_raw_value(&info) else { continue };
            pool.push(Remote { info, json });
        }
        cluster.stats.rejected += rejected;
        self.meters.cluster(ClusterCount::Rejected, rejected);
        cluster.remote_total = total.max(pool.len() as u64);
        cluster.pool = pool;
    }
}
