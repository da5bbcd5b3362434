//! The sans-IO signalling server: [`SignalServer`] consumes [`SignalIn`] and produces [`SignalOut`].
//!
//! This file is the protocol itself, the state machine: what a frame means, who may announce,
//! where a `PeerSetup` goes, what the application's commands do. The parts it composes own
//! their data in their own files: `directory` (the nodes announced here and the lists drawn
//! from them), `sources` (open connections by source address), `rate` (token buckets), `timers`
//! (the connections' deadlines), and for a cluster
//! [`ClusterState`](crate::cluster::state::ClusterState) beside the backplanes. `config`
//! holds the settings, `io` the inputs, outputs and counters, `control` the application's
//! commands, `policy` the application's say on announces.

mod config;
mod control;
mod directory;
mod io;
mod policy;
mod rate;
mod sources;
mod timers;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use web_time::Instant;

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::Serialize;

use crate::binding::{bound_announce_bytes, BindingMode, BOUND_ANNOUNCE_VERSION, FLAG_SIGNED_SETUPS};
use crate::cluster::state::ClusterState;
use crate::cluster::{ClusterConfig, ClusterIn, ClusterOut, Control, Undelivered};
use crate::codec::Codec;
use crate::crypto;
pub use crate::error::CloseReason;
use crate::error::{ConfigError, ProtocolError};
pub use crate::ids::ConnId;
use crate::ids::ConnMap;
use crate::limits::later;
// The transports' settings share the core's checks.
#[cfg(feature = "websocket")]
pub(crate) use crate::limits::{at_least, at_most, duration, nonzero, source_prefix, MAX_QUEUE};
use crate::protocol::{
    encoded_len, BoundAnnounce, Capabilities, Inbound, MessageAnnounce, NodeID, NodeInfo, NodeStat,
    SetupRoute, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};
use crate::telemetry::{ClusterCount, Meters};
pub use config::SignalConfig;
pub use control::{Command, CommandReply, ConnectedNode};
use directory::Directory;
pub use io::{ServerStats, SignalEvent, SignalIn, SignalOut};
pub use policy::{AnnouncePolicy, Verdict};
use rate::Buckets;
pub use rate::RateLimit;
#[cfg(feature = "websocket")]
pub(crate) use sources::source_of;
use sources::Sources;
pub use sources::WhenFull;
use timers::Timers;

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
    /// The announced nodes, and the lists drawn from them.
    directory: Directory,
    /// The connections' deadlines: an entry per connection at its `armed` deadline, and stale ones.
    timers: Timers,
    /// Connections that have not announced, oldest first: the first makes room when the table is
    /// full.
    pending: BTreeMap<u64, ConnId>,
    /// Open connections by source, for [`WhenFull::EvictFromLargestSource`].
    sources: Sources,
    next_seq: u64,
    push: PendingPush,
    /// Commands for nodes on other instances, waiting for the bus's answer: the node, and when
    /// to stop waiting.
    remote_commands: BTreeMap<u64, (NodeID, Instant, bool)>,
    out: VecDeque<SignalOut>,
    last_now: Option<Instant>,
    stopped: bool,
    stats: ServerStats,
    /// What a server that shares its network with other instances adds; `None` costs nothing.
    cluster: Option<Box<ClusterState>>,
    /// Metrics and trace events; nothing without the `metrics` and `tracing` features.
    meters: Meters,
}

impl fmt::Debug for SignalServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalServer")
            .field("config", &self.config)
            .field("connections", &self.conns.len())
            .field("nodes", &self.directory.len())
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
            config,
            rng,
            conns: ConnMap::default(),
            directory: Directory::default(),
            timers: Timers::default(),
            pending: BTreeMap::new(),
            next_seq: 0,
            push: PendingPush::default(),
            remote_commands: BTreeMap::new(),
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
        server.cluster = Some(Box::new(ClusterState::new(cluster)));
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
            SignalIn::Command { token, command } => self.handle_command(now, token, *command),
        }
        self.meters.sizes(self.conns.len(), self.directory.len(), self.pending.len());
        if let Some(cluster) = &self.cluster {
            self.meters.cluster_sizes(cluster.pool().len(), cluster.remote_total());
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
        let remote = self.remote_commands.values().map(|(_, at, _)| *at).min();
        [self.timers.next(), self.push.due, remote].into_iter().flatten().min()
    }

    /// Whether [`SignalIn::Stop`] has been handled.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// The announced nodes, in no particular order. [`Command::ListNodes`] answers the same with
    /// connections and addresses, through the driver.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.directory.iter().map(|(_, node)| &node.info)
    }

    /// The connection an announced node is on.
    pub fn node_conn(&self, id: &NodeID) -> Option<ConnId> {
        self.directory.get(id).map(|node| node.conn)
    }

    /// Counters, for metrics.
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            connections: self.conns.len(),
            nodes: self.directory.len(),
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
                ice_issued: None,
                signed: false,
            },
        );
        self.arm(deadline, conn);
        if self.config.binding.mode != BindingMode::Off {
            // Before the challenge, so that a capable client knows how to answer it.
            let capabilities = Capabilities {
                bound_announce: BOUND_ANNOUNCE_VERSION,
                signed_setups: self.config.binding.signed_setups,
            };
            self.send(conn, codec, &WSSignalMessageToNode::Capabilities(capabilities));
        }
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
                    Inbound::Announce(_) if self.config.binding.mode == BindingMode::Require => {
                        self.refuse_announce(conn, ProtocolError::BindingRequired)
                    }
                    Inbound::Announce(announce) => match self.check_announce(&challenge, &announce) {
                        Ok(()) => self.admit(now, conn, codec, announce.node_info, false),
                        Err(error) => self.refuse_announce(conn, error),
                    },
                    Inbound::BoundAnnounce(bound) => match self.check_bound(&challenge, &bound) {
                        Ok(info) => {
                            let signed =
                                self.config.binding.signed_setups && bound.flags & FLAG_SIGNED_SETUPS != 0;
                            self.admit(now, conn, codec, info, signed)
                        }
                        Err(error) => self.refuse_announce(conn, error),
                    },
                    _ => self.refuse(conn, ProtocolError::NotAuthenticated),
                };
            }
        };
        let handled = match message {
            Inbound::Announce(_) | Inbound::BoundAnnounce(_) => Err(ProtocolError::AlreadyAuthenticated),
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
            Inbound::PeerSetup(route) => self.relay(conn, codec, id, frame, route, false),
            Inbound::SignedPeerSetup(signed) => self.relay(conn, codec, id, frame, signed.setup, true),
            Inbound::NodeStats(stats) => self.check_stats(&stats).map(|()| {
                self.out.push_back(SignalOut::Event(SignalEvent::NodeStats { from: id, stats }));
            }),
            Inbound::IceServersRequest if self.config.turn.is_some() => {
                self.send_ice_servers(now, conn, codec, id);
                Ok(())
            }
            Inbound::IceServersRequest => Err(ProtocolError::NoTurn),
        };
        match handled {
            Ok(()) => {
                self.refresh(conn, later(now, self.config.ttl));
                self.renew_ice_servers(now, conn, codec, id);
            }
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

    /// A bound announce, checked as an announce and against the server's names; the node info it
    /// carries as text, once its signature verifies.
    fn check_bound(&self, challenge: &U256, bound: &BoundAnnounce) -> Result<NodeInfo, ProtocolError> {
        if self.config.binding.mode == BindingMode::Off {
            return Err(ProtocolError::BindingOff);
        }
        if bound.version != BOUND_ANNOUNCE_VERSION {
            return Err(ProtocolError::UnsupportedBinding(bound.version));
        }
        if bound.challenge != *challenge {
            return Err(ProtocolError::UnknownChallenge);
        }
        if !self.config.binding.server_ids.contains(&bound.server_id) {
            return Err(ProtocolError::WrongServer);
        }
        let info: NodeInfo =
            Codec::Json.decode(bound.node_info.as_bytes()).map_err(ProtocolError::Malformed)?;
        check_len("name", &info.name, self.config.max_name_len)?;
        check_len("client", &info.client, self.config.max_client_len)?;
        // The server's names are at most 255 bytes (validated), so the bytes always exist.
        let bytes =
            bound_announce_bytes(&bound.server_id, challenge, &info.pubkey, &bound.node_info, bound.flags)
                .ok_or(ProtocolError::WrongServer)?;
        crypto::verify(&info.pubkey, &bytes, &bound.signature)?;
        Ok(info)
    }

    /// A node whose announce verified: the application's policy decides, then it joins.
    fn admit(&mut self, now: Instant, conn: ConnId, codec: Codec, info: NodeInfo, signed: bool) {
        let verdict = self.config.announce_policy.as_ref().map(|policy| policy.decide(&info, conn));
        if let Some(Verdict::Deny(reason)) = verdict {
            return self.close(conn, ProtocolError::Denied(reason));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.signed = signed;
        }
        self.authenticate(now, conn, codec, info);
    }

    fn check_stats(&self, stats: &[NodeStat]) -> Result<(), ProtocolError> {
        if stats.len() > self.config.max_node_stats {
            return Err(ProtocolError::TooManyStats { len: stats.len(), limit: self.config.max_node_stats });
        }
        stats.iter().try_for_each(|stat| check_len("version", &stat.version, self.config.max_client_len))
    }

    fn authenticate(&mut self, now: Instant, conn: ConnId, codec: Codec, info: NodeInfo) {
        let id = info.id();
        if let Some(old) = self.directory.get(&id).map(|node| node.conn) {
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
        self.directory.insert(id, conn, codec, info);
        self.stats.joins += 1;
        self.meters.joined(conn, addr, &id, waited);

        if let Some(frame) = self.directory.system_config(codec, self.config.system_realm) {
            self.reply(conn, frame);
        }
        self.send_list(conn, codec);
        if self.config.turn.is_some() {
            self.send_ice_servers(now, conn, codec, id);
        }
        if let Some(node) = self.connected_node(&id) {
            self.out.push_back(SignalOut::Event(SignalEvent::NewNode(Box::new(node))));
        }

        if self.config.list_push_fanout > 0 && self.push.joined.len() < self.config.max_list_len {
            self.push.joined.push(id);
            self.push.due.get_or_insert(later(now, self.config.list_push_interval));
        }
    }

    /// Sends `conn` fresh TURN credentials, if the server has TURN servers.
    fn send_ice_servers(&mut self, now: Instant, conn: ConnId, codec: Codec, id: NodeID) {
        let Some(turn) = &self.config.turn else { return };
        let message = WSSignalMessageToNode::IceServers(turn.issue(&id, now));
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ice_issued = Some(now);
        }
        self.stats.turn_credentials += 1;
        self.meters.turn_issued();
        self.send(conn, codec, &message);
    }

    /// Sends new credentials with the first frame a node sends after half their lifetime: a node
    /// sends at least one frame per TTL, which is far shorter, so it never holds expired ones.
    fn renew_ice_servers(&mut self, now: Instant, conn: ConnId, codec: Codec, id: NodeID) {
        let Some(turn) = &self.config.turn else { return };
        let half = turn.lifetime / 2;
        let due = self
            .conns
            .get(&conn)
            .and_then(|c| c.ice_issued)
            .is_none_or(|at| now.saturating_duration_since(at) >= half);
        if due {
            self.send_ice_servers(now, conn, codec, id);
        }
    }

    /// Sends `conn` a list of nodes, local and, in a cluster, remote.
    fn send_list(&mut self, conn: ConnId, codec: Codec) {
        let remote = self.cluster.as_deref().map(|cluster| (cluster.pool(), cluster.remote_total()));
        let frame = self.directory.list(&mut self.rng, codec, self.config.max_list_len, remote);
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Some(frame) = frame {
            self.reply(conn, frame);
        }
    }

    /// Tells up to `list_push_fanout` random nodes about the nodes that joined since the last
    /// push (see [`Directory::push_joins`]). Busy nodes are skipped: they have not read what
    /// they have.
    fn push_joins(&mut self) {
        let joined = std::mem::take(&mut self.push.joined);
        self.push.due = None;
        let conns = &self.conns;
        let pushes = self.directory.push_joins(
            &mut self.rng,
            joined,
            self.config.max_list_len,
            self.config.list_push_fanout,
            |conn| conns.get(&conn).is_some_and(|c| c.busy),
        );
        for (conn, frame) in pushes {
            self.push_frame(conn, frame);
        }
    }

    /// Forwards a `PeerSetup` to the other node of its pair. The frame goes out as it came in
    /// when both ends speak the same codec: `PeerSetup` encodes the same in both directions.
    ///
    /// Without a cluster, a set-up for a node that is not here is answered with `unknown
    /// destination`. With one, it goes to the backplane, which either delivers it to the
    /// instance that holds the node or answers [`ClusterIn::Undeliverable`].
    fn relay(
        &mut self,
        conn: ConnId,
        codec: Codec,
        sender: NodeID,
        frame: Bytes,
        route: SetupRoute,
        signed: bool,
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
        let Some((to, to_codec)) = self.directory.get(&destination).map(|node| (node.conn, node.codec))
        else {
            if self.cluster.as_ref().is_some_and(|cluster| cluster.is_up()) {
                self.count_cluster(ClusterCount::RelayOut, 1);
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
        self.forward(to, to_codec, codec, frame, signed);
        Ok(())
    }

    /// Sends a `PeerSetup` or `SignedPeerSetup` frame encoded with `codec` to `to`, which speaks
    /// `to_codec`. A node that did not ask for signed set-ups gets a signed one plain.
    fn forward(&mut self, to: ConnId, to_codec: Codec, codec: Codec, frame: Bytes, signed: bool) {
        let plain_only = signed && !self.conns.get(&to).is_some_and(|c| c.signed);
        if to_codec == codec && !plain_only {
            // The variants have the same name and index in both directions: the very same frame.
            self.push_frame(to, frame);
        } else {
            // Only a relay between codecs, or to a node that takes plain set-ups only, decodes the
            // message in full to re-encode it. `Inbound` accepted the frame, so this decode
            // succeeds too.
            match codec.decode(&frame) {
                Ok(WSSignalMessageFromNode::PeerSetup(info)) => {
                    self.send(to, to_codec, &WSSignalMessageToNode::PeerSetup(info));
                }
                Ok(WSSignalMessageFromNode::SignedPeerSetup(signed)) if plain_only => {
                    self.send(to, to_codec, &WSSignalMessageToNode::PeerSetup(signed.setup));
                }
                Ok(WSSignalMessageFromNode::SignedPeerSetup(signed)) => {
                    self.send(to, to_codec, &WSSignalMessageToNode::SignedPeerSetup(signed));
                }
                _ => {}
            }
        }
        self.stats.relays += 1;
        self.meters.relay();
    }

    /// A local node announced: claim it on the bus.
    fn cluster_joined(&mut self, id: NodeID, conn: ConnId, info: &NodeInfo) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.joined(id, conn);
        self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Joined { id, conn, info: info.clone() })));
    }

    /// A local node left: withdraw its claim.
    fn cluster_left(&mut self, id: NodeID, conn: ConnId) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.left(id, conn);
        self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Left { id, conn })));
    }

    /// The server stops: every local node leaves the bus.
    fn cluster_stop(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else { return };
        cluster.stop();
        let mut left: Vec<(NodeID, ConnId)> =
            self.directory.iter().map(|(id, node)| (*id, node.conn)).collect();
        left.sort_unstable();
        for (id, conn) in left {
            self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Left { id, conn })));
        }
    }

    fn handle_cluster(&mut self, _now: Instant, input: ClusterIn) {
        let Some(cluster) = self.cluster.as_mut() else {
            debug_assert!(false, "a cluster input for a server without a cluster");
            return;
        };
        match input {
            ClusterIn::Claimed { id, conn, gen } => {
                if cluster.claimed(id, conn, gen) {
                    self.taken_over(id);
                }
            }
            ClusterIn::TakenOver { id, gen } => {
                if cluster.taken_over(id, gen) {
                    self.taken_over(id);
                }
            }
            ClusterIn::Frame { to, codec, frame } => self.deliver(to, codec, frame),
            ClusterIn::Undeliverable { to, about, reason } => {
                if reason == Undelivered::Unknown {
                    cluster.forget_remote(about);
                }
                let Some(conn) = self.directory.get(&to).map(|node| node.conn) else { return };
                self.count_cluster(ClusterCount::Undeliverable, 1);
                self.send_error(conn, &reason.error(about));
            }
            ClusterIn::Sample { nodes, total } => {
                let (max_name_len, max_client_len) = (self.config.max_name_len, self.config.max_client_len);
                let within_limits = |info: &NodeInfo| {
                    check_len("name", &info.name, max_name_len)
                        .and_then(|()| check_len("client", &info.client, max_client_len))
                        .is_ok()
                };
                let directory = &self.directory;
                let rejected = cluster.take_sample(nodes, total, within_limits, |id| directory.contains(id));
                self.count_cluster(ClusterCount::Rejected, rejected);
            }
            ClusterIn::Control { to, control } => {
                let Some((conn, codec)) = self.directory.get(&to).map(|node| (node.conn, node.codec)) else {
                    return;
                };
                match *control {
                    Control::Disconnect(reason) => self.close(conn, ProtocolError::Disconnected(reason)),
                    // Messages of the sign-in make no sense to a signed-in node, and a fledger
                    // node panics on a challenge of another version: not from the bus.
                    Control::Send(
                        WSSignalMessageToNode::Challenge(..) | WSSignalMessageToNode::Capabilities(_),
                    ) => {
                        self.count_cluster(ClusterCount::Rejected, 1);
                    }
                    Control::Send(message) => self.send(conn, codec, &message),
                    Control::Locate => {}
                }
            }
            ClusterIn::Controlled { token, reached } => self.remote_reply(token, reached),
            ClusterIn::Up => cluster.set_up(true),
            ClusterIn::Down => cluster.set_up(false),
        }
    }

    /// Closes the local node `id`: a newer connection with its id arrived elsewhere.
    fn taken_over(&mut self, id: NodeID) {
        let Some(conn) = self.directory.get(&id).map(|node| node.conn) else { return };
        self.count_cluster(ClusterCount::TakenOver, 1);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.moved_away(id);
        }
        self.close(conn, ProtocolError::Replaced);
    }

    /// Delivers a frame from another instance to the local node `to`, after the checks a frame
    /// from a node gets: size, codec, a `PeerSetup` whose pair holds `to`, the text's length.
    fn deliver(&mut self, to: NodeID, codec: Codec, frame: Bytes) {
        let Some((route, signed)) = self.check_remote_frame(to, codec, &frame) else {
            return self.count_cluster(ClusterCount::Rejected, 1);
        };
        let from = if route.id_init == to { route.id_follow } else { route.id_init };
        let local = self.directory.get(&to).map(|node| (node.conn, node.codec));
        let moved = self.cluster.as_ref().is_some_and(|cluster| cluster.has_moved(&to));
        let reason = match local {
            // The node moved to a newer connection elsewhere, and that instance received this
            // frame too: a bounce would call a reachable node unknown. Dropped and counted.
            None if moved => None,
            // It left (or is leaving) and its channel still reached this instance.
            None => Some(Undelivered::Unknown),
            Some((conn, _)) if self.conns.get(&conn).is_some_and(|c| c.busy) => Some(Undelivered::Busy),
            Some((conn, to_codec)) => {
                self.count_cluster(ClusterCount::RelayIn, 1);
                return self.forward(conn, to_codec, codec, frame, signed);
            }
        };
        self.count_cluster(ClusterCount::Bounced, 1);
        if let Some(reason) = reason {
            self.out.push_back(SignalOut::Cluster(Box::new(ClusterOut::Undeliverable {
                to: from,
                about: to,
                reason,
            })));
        }
    }

    fn check_remote_frame(&self, to: NodeID, codec: Codec, frame: &[u8]) -> Option<(SetupRoute, bool)> {
        if frame.len() > self.config.max_frame_size {
            return None;
        }
        let (route, signed) = match codec.decode::<Inbound>(frame) {
            Ok(Inbound::PeerSetup(route)) => (route, false),
            Ok(Inbound::SignedPeerSetup(signed)) => (signed.setup, true),
            _ => return None,
        };
        let in_pair = route.id_init == to || route.id_follow == to;
        (in_pair && route.message.encoded_len() <= self.config.max_setup_len).then_some((route, signed))
    }

    /// Adds `n` to a cluster counter, in the stats and the metrics.
    fn count_cluster(&mut self, what: ClusterCount, n: u64) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.count(what, n);
        }
        self.meters.cluster(what, n);
    }

    /// The announced node `id` as the application sees it.
    fn connected_node(&self, id: &NodeID) -> Option<ConnectedNode> {
        let node = self.directory.get(id)?;
        let addr = self.conns.get(&node.conn).and_then(|c| c.addr);
        Some(ConnectedNode { id: *id, info: node.info.clone(), conn: node.conn, codec: node.codec, addr })
    }

    fn handle_command(&mut self, now: Instant, token: u64, command: Command) {
        let reply = match command {
            Command::ListNodes => CommandReply::Nodes(
                self.directory.iter().filter_map(|(id, _)| self.connected_node(id)).collect(),
            ),
            Command::Disconnect { node, reason } => match self.node_conn(&node) {
                Some(conn) => {
                    self.close(conn, ProtocolError::Disconnected(reason));
                    CommandReply::Done
                }
                None => match self.remote_command(now, token, node, Control::Disconnect(reason)) {
                    Some(reply) => reply,
                    None => return,
                },
            },
            Command::Send { node, message } => match self.directory.get(&node).map(|n| (n.conn, n.codec)) {
                Some((conn, codec)) => {
                    self.send(conn, codec, &message);
                    CommandReply::Done
                }
                None => match self.remote_command(now, token, node, Control::Send(message)) {
                    Some(reply) => reply,
                    None => return,
                },
            },
            Command::Locate { node } => match self.connected_node(&node) {
                Some(here) => CommandReply::Nodes(vec![here]),
                None => match self.remote_command(now, token, node, Control::Locate) {
                    Some(reply) => reply,
                    None => return,
                },
            },
            Command::SetTurn(turn) => {
                let config = SignalConfig { turn: turn.map(|turn| *turn), ..self.config.clone() };
                match config.validate() {
                    Ok(()) => {
                        self.config.turn = config.turn;
                        CommandReply::Done
                    }
                    Err(error) => CommandReply::Refused(error),
                }
            }
        };
        self.out.push_back(SignalOut::Reply { token, reply: Box::new(reply) });
    }

    /// Carries a command for a node that is not here to the instance that holds it; the reply
    /// waits for the bus's answer (at most [`REMOTE_COMMAND_TIMEOUT`]). A reply now when there is
    /// no bus to carry it, or too many wait already.
    fn remote_command(
        &mut self,
        now: Instant,
        token: u64,
        node: NodeID,
        control: Control,
    ) -> Option<CommandReply> {
        let up = self.cluster.as_ref().is_some_and(|cluster| cluster.is_up());
        if !up
            || self.remote_commands.len() >= MAX_REMOTE_COMMANDS
            || self.remote_commands.contains_key(&token)
        {
            return Some(CommandReply::UnknownNode(node));
        }
        let locate = matches!(control, Control::Locate);
        self.remote_commands.insert(token, (node, later(now, REMOTE_COMMAND_TIMEOUT), locate));
        let control = ClusterOut::Control { token, to: node, control: Box::new(control) };
        self.out.push_back(SignalOut::Cluster(Box::new(control)));
        None
    }

    /// The bus's answer to a command for a node elsewhere.
    fn remote_reply(&mut self, token: u64, reached: bool) {
        let Some((node, _, locate)) = self.remote_commands.remove(&token) else { return };
        let reply = match (reached, locate) {
            (false, _) => CommandReply::UnknownNode(node),
            (true, false) => CommandReply::Done,
            (true, true) => CommandReply::Elsewhere(node),
        };
        self.out.push_back(SignalOut::Reply { token, reply: Box::new(reply) });
    }

    fn handle_tick(&mut self, now: Instant) {
        let expired: Vec<u64> = self
            .remote_commands
            .iter()
            .filter(|(_, (_, at, _))| *at <= now)
            .map(|(&token, _)| token)
            .collect();
        for token in expired {
            self.remote_reply(token, false);
        }
        while let Some((at, conn)) = self.timers.pop_due(now) {
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
        self.directory.clear();
        self.timers.clear();
        self.pending.clear();
        self.push = PendingPush::default();
        self.remote_commands.clear();
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

    /// Adds `conn`'s timer entry at `at`, which must be its new `armed`.
    fn arm(&mut self, at: Instant, conn: ConnId) {
        let conns = &self.conns;
        self.timers.arm(at, conn, conns.len(), || conns.iter().map(|(&conn, c)| (c.armed, conn)));
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
        if self.directory.get(&id).is_none_or(|node| node.conn != conn) {
            return;
        }
        self.directory.remove(&id);
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
    /// When the node last got TURN credentials.
    ice_issued: Option<Instant>,
    /// The node asked for signed set-up messages in its bound announce.
    signed: bool,
}

/// Commands for nodes on other instances waiting for the bus at once; more are answered
/// `UnknownNode`.
const MAX_REMOTE_COMMANDS: usize = 1024;
/// How long a command for a node elsewhere waits for the bus's answer.
const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Joins not yet pushed to other nodes.
#[derive(Default)]
struct PendingPush {
    due: Option<Instant>,
    joined: Vec<NodeID>,
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
