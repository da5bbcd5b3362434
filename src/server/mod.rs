//! The sans-IO signalling server: [`SignalServer`] consumes [`SignalIn`] and produces [`SignalOut`].
//!
//! This file is the protocol itself, the state machine; the rest of the folder holds what it
//! uses: `config` (settings and their checks), `rate` (token buckets), `directory` (the nodes
//! announced here and the lists drawn from them) and `routing` (where a `PeerSetup` goes).

mod config;
mod control;
mod directory;
mod policy;
mod rate;
mod routing;
mod sources;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::Serialize;

use crate::cluster::{ClusterConfig, ClusterIn, ClusterOut, ClusterStats};
use crate::codec::Codec;
use crate::crypto;
pub use crate::error::CloseReason;
use crate::error::{ConfigError, ProtocolError};
use crate::protocol::{
    encoded_len, FledgerConfig, Inbound, MessageAnnounce, NodeID, NodeInfo, NodeStat, WSSignalMessageToNode,
    SIGNAL_VERSION, U256,
};
use crate::telemetry::Meters;

pub use crate::ids::ConnId;
use crate::ids::ConnMap;
use crate::limits::later;
pub use config::SignalConfig;
// The transports' settings share the core's checks.
#[cfg(feature = "websocket")]
pub(crate) use crate::limits::{at_most, duration, nonzero, source_prefix, MAX_QUEUE};
pub use control::{Command, CommandReply, ConnectedNode};
use directory::{Listed, Node, PerCodec};
pub use policy::{AnnouncePolicy, Verdict};
use rate::Buckets;
pub use rate::RateLimit;
use routing::Cluster;
#[cfg(feature = "websocket")]
pub(crate) use sources::source_of;
use sources::Sources;
pub use sources::WhenFull;

/// Something the host observed, fed to [`SignalServer::handle`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SignalIn {
    /// The transport accepted a connection that speaks `codec`.
    Opened {
        /// The new connection.
        conn: ConnId,
        /// How its frames are encoded.
        codec: Codec,
        /// The peer's IP address, if the transport knows one. The server only reports it, in
        /// [`SignalEvent::NewNode`] and in the [`ConnectedNode`]s it lists.
        addr: Option<IpAddr>,
    },
    /// A frame arrived; the server decodes it with the connection's codec.
    Frame {
        /// Where it came from.
        conn: ConnId,
        /// The frame's payload.
        frame: Bytes,
    },
    /// The connection went away (the peer closed it, or the transport did).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// The transport's send queue for `conn` passed half of its capacity (`busy: true`), or
    /// drained below it again (`busy: false`); see [`TransportEvent::Busy`](crate::TransportEvent::Busy).
    ///
    /// While a connection is busy, `PeerSetup` messages for its node are not forwarded: each
    /// sender gets `destination busy` (no strike), so that several senders cannot get a node
    /// that reads slower than they write closed as a slow reader. Pushes of joins skip it too,
    /// and its own `ListIDsRequest`s go unanswered (counted in
    /// [`ServerStats::unanswered_busy`]): a node that does not read its replies must not make
    /// the server queue more of them. Error replies still go out, charged to it. Ignored for
    /// unknown connections.
    Busy {
        /// The connection.
        conn: ConnId,
        /// Whether its send queue is over half full.
        busy: bool,
    },
    /// A deadline from [`SignalServer::poll_timeout`] has passed.
    Tick,
    /// Close every connection and stop.
    Stop,
    /// What the other instances said, from a [`Backplane`](crate::Backplane). Ignored by a
    /// server made without [`SignalServer::with_cluster`]. Boxed, so that the inputs of a server
    /// without a cluster stay as small as they were.
    Cluster(Box<ClusterIn>),
    /// The application's request about its nodes. Answered by exactly one [`SignalOut::Reply`]
    /// with the same `token` (the host's choice, only handed back), unless the server has
    /// stopped: then it is ignored, as every input.
    Command {
        /// Handed back in the reply.
        token: u64,
        /// What to do. Boxed, so that the inputs on the relay path stay small.
        command: Box<Command>,
    },
}

/// Something the host must do or may want to know, drained from [`SignalServer::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalOut {
    /// Send `frame` on `conn`, as a text frame for [`Codec::Json`], binary for [`Codec::Bincode`].
    Send {
        /// The destination.
        conn: ConnId,
        /// The encoded message. Cloning it is cheap: broadcast frames share one buffer.
        frame: Bytes,
    },
    /// Close `conn`, after sending the frames queued for it before this output. The server has
    /// already forgotten it; a later [`SignalIn::Closed`] for it is ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// For the application.
    Event(SignalEvent),
    /// For the other instances, through a [`Backplane`](crate::Backplane). Only a server made
    /// with [`SignalServer::with_cluster`] emits it. Boxed, so that the outputs of a server
    /// without a cluster stay as small as they were.
    Cluster(Box<ClusterOut>),
    /// The answer to the [`SignalIn::Command`] with this `token`. It comes after the frames and
    /// closes the command caused.
    Reply {
        /// The command's token.
        token: u64,
        /// The answer. Boxed, as the command.
        reply: Box<CommandReply>,
    },
}

/// What happened, for the application's logs, metrics and logic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A node announced successfully: who it is, its connection and, where the transport knows
    /// it, its address. A node that takes over its id from an older connection produces
    /// `NodeLeft` for the old connection first, then `NewNode`. Boxed, so that outputs stay
    /// small.
    NewNode(Box<ConnectedNode>),
    /// An announced node disconnected, was evicted or was replaced.
    NodeLeft(NodeID),
    /// An announced node reported statistics about its peers.
    NodeStats {
        /// The reporting node.
        from: NodeID,
        /// Its report.
        stats: Vec<NodeStat>,
    },
    /// The server has stopped: every connection was closed and every node is gone (no
    /// `NodeLeft` is emitted for them). It ignores everything from now on.
    Stopped,
}

/// Counters, for metrics. Get them from [`SignalServer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Open connections, announced or not.
    pub connections: usize,
    /// Announced nodes.
    pub nodes: usize,
    /// Connections that have not announced yet.
    pub pending_handshakes: usize,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// `PeerSetup` messages forwarded.
    pub relays: u64,
    /// Successful announces.
    pub joins: u64,
    /// `ListIDsRequest`s left unanswered because the requester's own send queue was busy (see
    /// [`SignalIn::Busy`]): it has not read the replies it already has.
    pub unanswered_busy: u64,
    /// Error replies, by [`ProtocolError::kind`]. Evictions are `idle_timeout`; pending
    /// connections closed to make room for newer ones are `handshake_timeout`.
    pub errors: BTreeMap<&'static str, u64>,
    /// The cluster's counters, for a server made with [`SignalServer::with_cluster`].
    pub cluster: Option<ClusterStats>,
}

/// Where a connection is in the protocol.
#[derive(Clone, Copy)]
enum Phase {
    /// Sent this challenge; waiting for the announce. `seq` is its key in
    /// `SignalServer::pending`.
    Challenged { challenge: U256, seq: u64 },
    /// Announced as this node.
    Node(NodeID),
}

struct Conn {
    codec: Codec,
    phase: Phase,
    /// When the connection expires: the handshake deadline, then the TTL.
    deadline: Instant,
    /// The deadline of this connection's entry in the timer heap. The entry is re-armed lazily
    /// when it fires early, so refreshing a TTL costs no heap operation.
    armed: Instant,
    errors: u32,
    announce_failures: u32,
    rate: Buckets,
    /// The transport reported its send queue over half full.
    busy: bool,
    /// The peer's address, as the transport reported it.
    addr: Option<IpAddr>,
}

/// Joins not yet pushed to other nodes.
#[derive(Default)]
struct PendingPush {
    due: Option<Instant>,
    joined: Vec<NodeID>,
}

/// The signalling server as a state machine: no sockets, no clock, no threads.
///
/// Feed it what the transport observed with [`handle`](Self::handle), then drain
/// [`poll_output`](Self::poll_output) until it returns `None`; call `handle(now, SignalIn::Tick)`
/// when [`poll_timeout`](Self::poll_timeout) has passed. See the [crate docs](crate) for the run
/// loop and the protocol.
pub struct SignalServer {
    config: SignalConfig,
    rng: ChaCha20Rng,
    conns: ConnMap<Conn>,
    nodes: HashMap<NodeID, Node>,
    /// Every announced node once, in no particular order: what list samples are drawn from.
    order: Vec<Listed>,
    /// One entry per connection at its `armed` deadline, plus stale entries of closed or re-armed
    /// connections, which `arm` sweeps out before they outnumber the live ones.
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Connections that have not announced, oldest first: the first makes room when the table is
    /// full.
    pending: BTreeMap<u64, ConnId>,
    /// Open connections by source, for [`WhenFull::EvictFromLargestSource`].
    sources: Sources,
    next_seq: u64,
    push: PendingPush,
    /// The reply that lists every node, while they all fit in one; cleared when one joins or leaves.
    full_list: PerCodec,
    /// The `SystemConfig` frame, the same for every node: encoded once per codec.
    system_config: PerCodec,
    out: VecDeque<SignalOut>,
    last_now: Option<Instant>,
    stopped: bool,
    stats: ServerStats,
    /// What a server that shares its network with other instances adds; `None` costs nothing.
    cluster: Option<Box<Cluster>>,
    /// Metrics and trace events; nothing without the `metrics` and `tracing` features.
    meters: Meters,
}

impl fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalServer")
            .field("config", &self.config)
            .field("connections", &self.conns.len())
            .field("nodes", &self.nodes.len())
            .field("pending_handshakes", &self.pending.len())
            .field("queued_outputs", &self.out.len())
            .field("stopped", &self.stopped)
            // rng and challenges: not printed.
            .finish_non_exhaustive()
    }
}

impl SignalServer {
    /// A server with no connections. Seeds its CSPRNG from `config.rng_seed`, or from the OS.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting of `config` that
    /// [`SignalConfig::validate`] refuses.
    pub fn new(config: SignalConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let rng = match config.rng_seed {
            Some(seed) => ChaCha20Rng::from_seed(seed),
            None => ChaCha20Rng::from_entropy(),
        };
        Ok(Self {
            sources: Sources::new(config.ipv6_source_prefix),
            system_config: PerCodec::default(),
            config,
            rng,
            conns: ConnMap::default(),
            nodes: HashMap::new(),
            order: Vec::new(),
            timers: BinaryHeap::new(),
            pending: BTreeMap::new(),
            next_seq: 0,
            push: PendingPush::default(),
            full_list: PerCodec::default(),
            out: VecDeque::new(),
            last_now: None,
            stopped: false,
            stats: ServerStats::default(),
            cluster: None,
            meters: Meters::new(),
        })
    }

    /// A server that shares its network with other instances: it emits [`SignalOut::Cluster`]
    /// for a [`Backplane`](crate::Backplane) and takes [`SignalIn::Cluster`] from it. Until the
    /// backplane reports [`ClusterIn::Up`], relays to nodes that are not here are answered with
    /// `unknown destination`, as without a cluster.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting of `config` or `cluster` that
    /// [`SignalConfig::validate`] or [`ClusterConfig::validate`] refuses.
    pub fn with_cluster(config: SignalConfig, cluster: ClusterConfig) -> Result<Self, ConfigError> {
        cluster.validate()?;
        let mut server = Self::new(config)?;
        server.cluster = Some(Box::new(Cluster::new(cluster)));
        server.meters.with_cluster();
        Ok(server)
    }

    /// The configuration the server was made with.
    pub fn config(&self) -> &SignalConfig {
        &self.config
    }

    /// Feeds one input observed at `now`.
    ///
    /// Never fails: whatever a peer sends becomes an `Error` reply or a [`SignalOut::Close`] for
    /// that peer, never an error for the host. Call [`poll_output`](Self::poll_output) until it
    /// returns `None` afterwards, and check [`poll_timeout`](Self::poll_timeout) again. If `now` is
    /// earlier than a previous input's, the previous time is used: time does not go backwards.
    pub fn handle(&mut self, now: Instant, input: SignalIn) {
        let now = match self.last_now {
            Some(last) if last > now => last,
            _ => now,
        };
        self.last_now = Some(now);
        if self.stopped {
            // Refuse newcomers politely; ignore everything else.
            if let SignalIn::Opened { conn, .. } = input {
                self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Stopped });
            }
            return;
        }
        match input {
            SignalIn::Opened { conn, codec, addr } => self.handle_opened(now, conn, codec, addr),
            SignalIn::Frame { conn, frame } => self.handle_frame(now, conn, frame),
            SignalIn::Closed { conn } => self.forget(conn),
            SignalIn::Busy { conn, busy } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.busy = busy;
                }
            }
            SignalIn::Tick => self.handle_tick(now),
            SignalIn::Stop => self.handle_stop(),
            SignalIn::Cluster(input) => self.handle_cluster(now, *input),
            SignalIn::Command { token, command } => self.handle_command(token, *command),
        }
        self.meters.sizes(self.conns.len(), self.nodes.len(), self.pending.len());
        if let Some(cluster) = &self.cluster {
            self.meters.cluster_sizes(cluster.pool.len(), cluster.remote_total);
        }
    }

    /// The next thing for the host to do, oldest first; `None` when there is nothing left.
    ///
    /// Drain it after every [`handle`](Self::handle). Frames for one connection come in the order
    /// they must be sent; a [`SignalOut::Close`] comes after the frames that precede it.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<SignalOut> {
        self.out.pop_front()
    }

    /// When to feed [`SignalIn::Tick`] next, if anything is pending: a handshake deadline, a TTL,
    /// or a push of new joins. Polling it changes nothing; it may be early, never late.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        match (timer, self.push.due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether [`SignalIn::Stop`] has been handled.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The announced nodes, in no particular order. [`Command::ListNodes`] answers the same with
    /// connections and addresses, through the driver.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.order.iter().filter_map(|listed| self.nodes.get(&listed.id)).map(|node| &node.info)
    }

    /// The connection an announced node is on.
    pub fn node_conn(&self, id: &NodeID) -> Option<ConnId> {
        self.nodes.get(id).map(|node| node.conn)
    }

    /// Counters, for metrics.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            connections: self.conns.len(),
            nodes: self.nodes.len(),
            pending_handshakes: self.pending.len(),
            cluster: self.cluster.as_ref().map(|cluster| cluster.stats()),
            ..self.stats.clone()
        }
    }

    fn handle_opened(&mut self, now: Instant, conn: ConnId, codec: Codec, addr: Option<IpAddr>) {
        if self.conns.contains_key(&conn) {
            // The transport reused an open id: its bug, and nothing we can repair.
            return;
        }
        let full = self.conns.len() >= self.config.max_connections;
        if full && self.pending.is_empty() && !self.make_room(addr) {
            let error = ProtocolError::ServerFull;
            self.send(conn, codec, &WSSignalMessageToNode::Error(error.to_string()));
            self.count_error(conn, addr, &error);
            self.meters.closed(conn, addr, &error);
            self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Error(error) });
            return;
        }
        if full || self.pending.len() >= self.config.max_pending_handshakes {
            // Refusing the newcomer would let a flood of silent connections lock everybody out.
            // The oldest pending connection is the one most likely to never announce.
            if let Some((_, oldest)) = self.pending.pop_first() {
                self.close(oldest, ProtocolError::HandshakeTimeout);
            }
        }
        let challenge = crypto::new_challenge(&mut self.rng);
        let deadline = later(now, self.config.handshake_timeout);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.pending.insert(seq, conn);
        self.sources.add(conn, addr);
        self.conns.insert(
            conn,
            Conn {
                codec,
                phase: Phase::Challenged { challenge, seq },
                deadline,
                armed: deadline,
                errors: 0,
                announce_failures: 0,
                rate: Buckets::full(now, self.config.frame_rate, self.config.byte_rate),
                busy: false,
                addr,
            },
        );
        self.arm(deadline, conn);
        self.send(conn, codec, &WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge));
    }

    /// Closes a node to let a newcomer from `addr` in, as [`SignalConfig::when_full`] says; false
    /// when the newcomer must be refused instead.
    fn make_room(&mut self, addr: Option<IpAddr>) -> bool {
        if self.config.when_full != WhenFull::EvictFromLargestSource {
            return false;
        }
        // Two more than the newcomer's source, so that making room never just swaps two sources'
        // shares back and forth.
        let Some(largest) = self.sources.largest_beyond(addr, 2) else { return false };
        // The node that has been silent longest: every valid frame pushes a deadline later.
        let idlest = largest.iter().filter_map(|conn| Some((self.conns.get(conn)?.deadline, *conn))).min();
        let Some((_, conn)) = idlest else { return false };
        self.close(conn, ProtocolError::ServerFull);
        true
    }

    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Bytes) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // Raced with a close we asked for.
            return;
        };
        let (codec, phase) = (c.codec, c.phase);
        let within_rate = c.rate.take(now, frame.len(), self.config.frame_rate, self.config.byte_rate);
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
        self.meters.frame_in(frame.len());
        if !within_rate {
            return self.close(conn, ProtocolError::RateLimited);
        }
        if frame.len() > self.config.max_frame_size {
            let error = ProtocolError::FrameTooLarge { size: frame.len(), limit: self.config.max_frame_size };
            return self.refuse(conn, error);
        }
        let message = match codec.decode::<Inbound>(&frame) {
            Ok(message) => message,
            Err(e) => return self.refuse(conn, ProtocolError::Malformed(e)),
        };
        let id = match phase {
            Phase::Node(id) => id,
            Phase::Challenged { challenge, .. } => {
                return match message {
                    Inbound::Announce(announce) => match self.check_announce(&challenge, &announce) {
                        Ok(()) => match self
                            .config
                            .announce_policy
                            .as_ref()
                            .map(|p| p.decide(&announce.node_info, conn))
                        {
                            Some(Verdict::Deny(reason)) => self.close(conn, ProtocolError::Denied(reason)),
                            _ => self.authenticate(now, conn, codec, announce.node_info),
                        },
                        Err(error) => self.refuse_announce(conn, error),
                    },
                    _ => self.refuse(conn, ProtocolError::NotAuthenticated),
                };
            }
        };
        let handled = match message {
            Inbound::Announce(_) => Err(ProtocolError::AlreadyAuthenticated),
            Inbound::ListIDsRequest => {
                // A requester that does not read its replies gets no more of them: a list is
                // ~25 KB, and queueing it behind a full queue only holds memory for a slow reader.
                if self.conns.get(&conn).is_some_and(|c| c.busy) {
                    self.stats.unanswered_busy += 1;
                } else {
                    self.send_list(conn, codec);
                }
                Ok(())
            }
            Inbound::PeerSetup(route) => self.relay(conn, codec, id, frame, route),
            Inbound::NodeStats(stats) => self.check_stats(&stats).map(|()| {
                self.out.push_back(SignalOut::Event(SignalEvent::NodeStats { from: id, stats }));
            }),
        };
        match handled {
            Ok(()) => self.refresh(conn, later(now, self.config.ttl)),
            Err(error) => self.refuse(conn, error),
        }
    }

    /// Everything about an announce that can be checked without touching state. The signature
    /// goes last: it is by far the most expensive check.
    fn check_announce(&self, challenge: &U256, announce: &MessageAnnounce) -> Result<(), ProtocolError> {
        if announce.version != SIGNAL_VERSION {
            return Err(ProtocolError::UnsupportedVersion(announce.version));
        }
        if announce.challenge != *challenge {
            return Err(ProtocolError::UnknownChallenge);
        }
        let info = &announce.node_info;
        check_len("name", &info.name, self.config.max_name_len)?;
        check_len("client", &info.client, self.config.max_client_len)?;
        crypto::verify_challenge(&info.pubkey, challenge, &announce.signature)
    }

    fn check_stats(&self, stats: &[NodeStat]) -> Result<(), ProtocolError> {
        if stats.len() > self.config.max_node_stats {
            return Err(ProtocolError::TooManyStats { len: stats.len(), limit: self.config.max_node_stats });
        }
        stats.iter().try_for_each(|stat| check_len("version", &stat.version, self.config.max_client_len))
    }

    fn authenticate(&mut self, now: Instant, conn: ConnId, codec: Codec, info: NodeInfo) {
        let id = info.id();
        if let Some(old) = self.nodes.get(&id).map(|node| node.conn) {
            self.close(old, ProtocolError::Replaced);
        }
        let (mut waited, mut addr) = (Duration::ZERO, None);
        if let Some(c) = self.conns.get_mut(&conn) {
            addr = c.addr;
            if let Phase::Challenged { seq, .. } = c.phase {
                self.pending.remove(&seq);
                // Until now the deadline was the one set at the challenge: nothing refreshes a
                // pending connection's.
                let challenged = c.deadline.checked_sub(self.config.handshake_timeout);
                waited = challenged.map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
            }
            c.phase = Phase::Node(id);
        }
        self.refresh(conn, later(now, self.config.ttl));
        self.cluster_joined(id, conn, &info);
        self.insert_node(id, conn, codec, info);
        self.stats.joins += 1;
        self.meters.joined(conn, addr, &id, waited);

        if self.system_config.slot(codec).is_none() {
            let message =
                WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm: self.config.system_realm });
            *self.system_config.slot(codec) = codec.encode(&message).ok();
        }
        if let Some(frame) = self.system_config.slot(codec).clone() {
            self.reply(conn, frame);
        }
        self.send_list(conn, codec);
        if let Some(node) = self.connected_node(&id) {
            self.out.push_back(SignalOut::Event(SignalEvent::NewNode(Box::new(node))));
        }

        if self.config.list_push_fanout > 0 && self.push.joined.len() < self.config.max_list_len {
            self.push.joined.push(id);
            self.push.due.get_or_insert(later(now, self.config.list_push_interval));
        }
    }

    fn handle_tick(&mut self, now: Instant) {
        while let Some(&Reverse((at, conn))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&conn) else { continue };
            if c.armed != at {
                continue; // A stale entry: the connection was re-armed, or the id reused.
            }
            if c.deadline > now {
                c.armed = c.deadline;
                let deadline = c.deadline;
                self.arm(deadline, conn);
                continue;
            }
            let error = match c.phase {
                Phase::Challenged { .. } => ProtocolError::HandshakeTimeout,
                Phase::Node(_) => ProtocolError::IdleTimeout,
            };
            self.close(conn, error);
        }
        if self.push.due.is_some_and(|due| due <= now) {
            self.push_joins();
        }
    }

    fn handle_stop(&mut self) {
        self.cluster_stop();
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Stopped });
        }
        self.conns.clear();
        self.sources.clear();
        self.nodes.clear();
        self.order.clear();
        self.timers.clear();
        self.pending.clear();
        self.push = PendingPush::default();
        self.full_list = PerCodec::default();
        self.stopped = true;
        self.out.push_back(SignalOut::Event(SignalEvent::Stopped));
    }

    fn refresh(&mut self, conn: ConnId, deadline: Instant) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.deadline = deadline;
        if deadline < c.armed {
            c.armed = deadline;
            self.arm(deadline, conn);
        }
    }

    /// Adds `conn`'s timer entry at `at`, which must be its new `armed`. Closed and re-armed
    /// connections leave stale entries behind, and a host may feed many inputs between ticks (or
    /// none at all): once stale entries outnumber live ones, the heap is rebuilt from the live
    /// ones. The rebuild costs O(live + stale), paid for by the stale entries' own pushes.
    fn arm(&mut self, at: Instant, conn: ConnId) {
        self.timers.push(Reverse((at, conn)));
        if self.timers.len() > self.conns.len().saturating_mul(2).saturating_add(1024) {
            self.timers = self.conns.iter().map(|(&conn, c)| Reverse((c.armed, conn))).collect();
        }
    }

    /// Answers a peer's mistake with an `Error`, and closes the connection at `max_errors`.
    fn refuse(&mut self, conn: ConnId, error: ProtocolError) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.errors = c.errors.saturating_add(1);
        let over = c.errors >= self.config.max_errors;
        self.answer(conn, error, over.then_some(ProtocolError::TooManyErrors));
    }

    /// Answers a failed announce with its `Error`, and closes the connection at
    /// `max_announce_failures`. Not a strike: announces have their own budget.
    fn refuse_announce(&mut self, conn: ConnId, error: ProtocolError) {
        let Some(c) = self.conns.get_mut(&conn) else { return };
        c.announce_failures = c.announce_failures.saturating_add(1);
        let over = c.announce_failures >= self.config.max_announce_failures;
        self.answer(conn, error, over.then_some(ProtocolError::TooManyAnnounceFailures));
    }

    /// Sends `error`, then closes with `close` if there is one.
    fn answer(&mut self, conn: ConnId, error: ProtocolError, close: Option<ProtocolError>) {
        self.send_error(conn, &error);
        if let Some(close) = close {
            self.close(conn, close);
        }
    }

    /// Sends `error`, then closes the connection and forgets it.
    fn close(&mut self, conn: ConnId, error: ProtocolError) {
        let Some(addr) = self.conns.get(&conn).map(|c| c.addr) else { return };
        self.send_error(conn, &error);
        self.meters.closed(conn, addr, &error);
        self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Error(error) });
        self.forget(conn);
    }

    /// Sends `error` to an open connection as an `Error` reply, and counts it.
    fn send_error(&mut self, conn: ConnId, error: &ProtocolError) {
        let Some((codec, addr)) = self.conns.get(&conn).map(|c| (c.codec, c.addr)) else { return };
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = codec.encode(&WSSignalMessageToNode::Error(error.to_string())) {
            self.reply(conn, frame);
        }
        self.count_error(conn, addr, error);
    }

    /// Drops a connection and, if it was a node's, the node.
    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
        self.sources.remove(conn, c.addr);
        let id = match c.phase {
            Phase::Node(id) => id,
            Phase::Challenged { seq, .. } => {
                self.pending.remove(&seq);
                return;
            }
        };
        if self.nodes.get(&id).is_none_or(|node| node.conn != conn) {
            return;
        }
        self.remove_node(&id);
        self.cluster_left(id, conn);
        self.meters.left(conn, c.addr, &id);
        self.out.push_back(SignalOut::Event(SignalEvent::NodeLeft(id)));
    }

    fn count_error(&mut self, conn: ConnId, addr: Option<IpAddr>, error: &ProtocolError) {
        *self.stats.errors.entry(error.kind()).or_default() += 1;
        self.meters.error(conn, addr, error);
    }

    fn send(&mut self, conn: ConnId, codec: Codec, message: &impl Serialize) {
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = codec.encode(message) {
            self.push_frame(conn, frame);
        }
    }

    /// Queues `frame` for `conn` in answer to `conn`'s own frame, and charges it to `conn`'s byte
    /// budget (see [`SignalConfig::byte_rate`]).
    fn reply(&mut self, conn: ConnId, frame: Bytes) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rate.charge(frame.len());
        }
        self.push_frame(conn, frame);
    }

    fn push_frame(&mut self, conn: ConnId, frame: Bytes) {
        self.stats.frames_out += 1;
        self.stats.bytes_out += frame.len() as u64;
        self.meters.frame_out(frame.len());
        self.out.push_back(SignalOut::Send { conn, frame });
    }
}

/// Checks a string against its limit as encoded in JSON, the longer of the codecs' encodings.
fn check_len(field: &'static str, text: &str, limit: usize) -> Result<(), ProtocolError> {
    let len = encoded_len(text);
    if len > limit {
        return Err(ProtocolError::TooLong { field, len, limit });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timer_heap_stays_bounded_without_ticks() {
        let config = SignalConfig { rng_seed: Some([7; 32]), ..SignalConfig::default() };
        let mut server = SignalServer::new(config).expect("a valid config");
        let now = Instant::now();
        // A few live connections, whose entries must survive every sweep.
        let live: Vec<ConnId> = (0..10).map(|n| ConnId::new(1_000_000 + n)).collect();
        for &conn in &live {
            server.handle(now, SignalIn::Opened { conn, codec: Codec::Json, addr: None });
        }
        let mut most = 0;
        for n in 0..100_000 {
            let conn = ConnId::new(n);
            server.handle(now, SignalIn::Opened { conn, codec: Codec::Json, addr: None });
            server.handle(now, SignalIn::Closed { conn });
            while server.poll_output().is_some() {}
            most = most.max(server.timers.len());
        }
        // Live: the ten, and the one just opened.
        assert!(most <= 2 * (live.len() + 1) + 1024, "the heap grew to {most} entries");
        // Every live connection still has its entry: their handshake timeouts still fire.
        server.handle(later(now, server.config.handshake_timeout), SignalIn::Tick);
        let closed: Vec<ConnId> = std::iter::from_fn(|| server.poll_output())
            .filter_map(|out| match out {
                SignalOut::Close { conn, .. } => Some(conn),
                _ => None,
            })
            .collect();
        assert_eq!(closed.len(), live.len());
        assert!(live.iter().all(|conn| closed.contains(conn)));
    }
}
