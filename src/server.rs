//! The sans-IO signalling server: [`SignalServer`] consumes [`SignalIn`] and produces [`SignalOut`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::codec::{encoded_len, Codec};
use crate::crypto;
use crate::error::{ConfigError, ProtocolError};
use crate::protocol::{
    FledgerConfig, Inbound, ListIDsReplyRef, MessageAnnounce, NodeID, NodeInfo, NodeStat, RealmID,
    SetupRoute, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

/// A transport's handle for one connection. The transport picks the numbers; they must be unique
/// among open connections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Wraps a transport's connection number.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The transport's connection number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.0)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Every setting and every limit of a [`SignalServer`].
///
/// The defaults suit a public server; each limit bounds a map, a queue or a string that would
/// otherwise grow with what peers send. Build one with struct-update syntax;
/// [`SignalServer::new`] checks it with [`validate`](Self::validate):
///
/// ```
/// use std::time::Duration;
/// use peer_signal::SignalConfig;
///
/// let config = SignalConfig { ttl: Duration::from_secs(60), max_list_len: 20, ..SignalConfig::default() };
/// assert_eq!(config.max_frame_size, 64 * 1024);
/// assert!(config.validate().is_ok());
///
/// let broken = SignalConfig { ttl: Duration::ZERO, ..config };
/// assert_eq!(broken.validate().unwrap_err().to_string(), "ttl must be more than zero");
/// ```
///
/// Durations must be more than zero and at most a century; counts and sizes must be more than
/// zero, except where a field documents what zero means.
#[derive(Clone, PartialEq, Eq)]
pub struct SignalConfig {
    /// How long an announced node may stay silent before it is closed. Every valid frame restarts
    /// it. Default 120 s (fledger's `ttl_minutes: 2`).
    pub ttl: Duration,
    /// How long a new connection has at most to announce. Default 10 s. It may get less: see
    /// `max_pending_handshakes`.
    pub handshake_timeout: Duration,
    /// The realm sent in `SystemConfig`. Default none.
    pub system_realm: Option<RealmID>,
    /// At most this many nodes in one `ListIDsReply`, sampled uniformly at random when more are
    /// connected. Default 100; `usize::MAX` lists everybody, as fledger does without a limit.
    pub max_list_len: usize,
    /// Open connections, announced or not. When they are all announced nodes, further
    /// connections get `server full` and are closed; while some have not announced yet, the oldest
    /// of those makes room, as for `max_pending_handshakes`. Default 100,000.
    pub max_connections: usize,
    /// Connections that have not announced yet. When a new connection would exceed it, the oldest
    /// pending connection is closed with `handshake timeout` (as if its handshake had timed out
    /// early) and the newcomer gets its challenge: a flood of connections that never announce
    /// cannot lock newcomers out, it only shortens everyone's time to announce to the time the
    /// flood takes to open this many connections. An honest node answers its challenge within a
    /// round trip. Default 16,384.
    pub max_pending_handshakes: usize,
    /// Longest frame accepted, in bytes, checked before decoding. Default 64 KiB.
    pub max_frame_size: usize,
    /// Longest `NodeInfo.name`, in bytes as encoded in JSON, escapes included: a control
    /// character counts six bytes (`\u0001`), a quote two. So a name within the limit is within it
    /// in every codec, and lists cost what the limit says. Default 256.
    pub max_name_len: usize,
    /// Longest `NodeInfo.client` and `NodeStat.version`, in bytes as encoded in JSON, as for
    /// `max_name_len`. Default 64.
    pub max_client_len: usize,
    /// Longest SDP or ICE candidate in a `PeerSetup`, in bytes as encoded in JSON, escapes
    /// included (for a JSON frame, as it is in the frame). Default 32 KiB.
    pub max_setup_len: usize,
    /// Most entries in one `NodeStats`. Default 256.
    pub max_node_stats: usize,
    /// Errors a connection may make (malformed frames, refused requests) before it is closed with
    /// `too many errors`. Failed announces have their own budget, `max_announce_failures`.
    /// Default 5; 0 acts as 1.
    pub max_errors: u32,
    /// Failed announces (wrong challenge, version, key or signature, or strings too long) a
    /// connection may make before it is closed with `too many failed announces`. Each may cost a
    /// signature check, the most expensive thing a stranger can make the server do, so the budget
    /// is small; an honest node fails only when its clock, key or software is broken, and retrying
    /// on the same connection will not fix that. Default 3; 0 acts as 1.
    pub max_announce_failures: u32,
    /// Frames a connection may send: a token bucket of [`RateLimit::burst`] frames, refilled at
    /// [`RateLimit::per_sec`]. A frame over it gets `rate limit exceeded` and a close. Checked
    /// against the `now` of [`SignalServer::handle`], before anything else about the frame.
    /// Default 50 per second, bursts of 100: a fledger node asks for the list once a minute and
    /// sends a few dozen set-up messages when it connects to its peers, far below that.
    pub frame_rate: RateLimit,
    /// Bytes a connection may send, and make the server send back to it, as for `frame_rate`.
    ///
    /// Every received frame counts, oversize ones too. So does every frame the server sends the
    /// connection in answer to its own frame: the `SystemConfig` and `ListIDsReply` after an
    /// announce, the `ListIDsReply` to a `ListIDsRequest`, every `Error`. A reply always goes out
    /// whole; what the bucket does not hold becomes debt, which the refill pays before anything
    /// else, and the connection's next frame that does not fit is refused with
    /// `rate limit exceeded` and a close, as any flood. So a 16-byte request cannot buy more
    /// output than the rate allows, however often it is sent (a list of 100 nodes is about
    /// 25 KB). Frames the connection did not ask for, `PeerSetup` relayed from other nodes and
    /// pushes of joins, are not charged to it: they are charged to their senders, or bounded by
    /// `list_push_fanout`.
    ///
    /// The burst must be at least `max_frame_size`, or the largest frames could never pass.
    /// Default 256 KiB per second, bursts of 512 KiB (eight frames of the maximum size).
    pub byte_rate: RateLimit,
    /// Frames a transport may queue for one connection before it closes it as a slow reader.
    /// The core never holds frames itself; transports read this. A transport that reports
    /// [`SignalIn::Busy`] when the queue passes half of it keeps other nodes' set-up messages from
    /// filling it. Default 256.
    pub max_send_backlog: usize,
    /// How often joins are pushed to other nodes, at most. Default 1 s. Any value when
    /// `list_push_fanout` is 0.
    pub list_push_interval: Duration,
    /// How many nodes, chosen at random, receive each push of new joins. 0 turns pushing off.
    /// Busy nodes (see [`SignalIn::Busy`]) are skipped. Default 16.
    pub list_push_fanout: usize,
    /// Seed for the server's CSPRNG (challenges, list samples). `None` seeds it from the OS once.
    /// Set it only in tests: a fixed seed makes challenges predictable.
    pub rng_seed: Option<[u8; 32]>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            system_realm: None,
            max_list_len: 100,
            max_connections: 100_000,
            max_pending_handshakes: 16_384,
            max_frame_size: 64 * 1024,
            max_name_len: 256,
            max_client_len: 64,
            max_setup_len: 32 * 1024,
            max_node_stats: 256,
            max_errors: 5,
            max_announce_failures: 3,
            frame_rate: RateLimit::new(50, 100),
            byte_rate: RateLimit::new(256 * 1024, 512 * 1024),
            max_send_backlog: 256,
            list_push_interval: Duration::from_secs(1),
            list_push_fanout: 16,
            rng_seed: None,
        }
    }
}

/// The longest duration a deadline may be away: `Instant` plus a century fits on every platform.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl SignalConfig {
    /// Checks that a server can work with these settings: every duration more than zero and at
    /// most a century, every size and count more than zero (except where a field says what zero
    /// means: `max_errors`, `max_announce_failures`, `list_push_fanout`, and the `per_sec` of the
    /// rates), and `byte_rate.burst` at least `max_frame_size`.
    ///
    /// [`SignalServer::new`] calls it.
    ///
    /// # Errors
    ///
    /// The first setting, in the order of the fields, that the server cannot work with, as a
    /// [`ConfigError`] that names it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        duration("ttl", self.ttl)?;
        duration("handshake_timeout", self.handshake_timeout)?;
        nonzero("max_list_len", self.max_list_len)?;
        nonzero("max_connections", self.max_connections)?;
        nonzero("max_pending_handshakes", self.max_pending_handshakes)?;
        nonzero("max_frame_size", self.max_frame_size)?;
        nonzero("max_name_len", self.max_name_len)?;
        nonzero("max_client_len", self.max_client_len)?;
        nonzero("max_setup_len", self.max_setup_len)?;
        nonzero("max_node_stats", self.max_node_stats)?;
        nonzero("frame_rate.burst", self.frame_rate.burst)?;
        nonzero("byte_rate.burst", self.byte_rate.burst)?;
        let max_frame_size = u64::try_from(self.max_frame_size).unwrap_or(u64::MAX);
        if self.byte_rate.burst < max_frame_size {
            return Err(ConfigError::Below {
                field: "byte_rate.burst",
                value: self.byte_rate.burst,
                other: "max_frame_size",
                other_value: max_frame_size,
            });
        }
        nonzero("max_send_backlog", self.max_send_backlog)?;
        if self.list_push_fanout > 0 {
            duration("list_push_interval", self.list_push_interval)?;
        }
        Ok(())
    }
}

pub(crate) fn nonzero<T: Default + PartialEq>(field: &'static str, value: T) -> Result<(), ConfigError> {
    if value == T::default() {
        return Err(ConfigError::Zero { field });
    }
    Ok(())
}

pub(crate) fn duration(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::Zero { field });
    }
    if value > CENTURY {
        return Err(ConfigError::TooLong { field, value });
    }
    Ok(())
}

impl fmt::Debug for SignalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalConfig")
            .field("ttl", &self.ttl)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("system_realm", &self.system_realm)
            .field("max_list_len", &self.max_list_len)
            .field("max_connections", &self.max_connections)
            .field("max_pending_handshakes", &self.max_pending_handshakes)
            .field("max_frame_size", &self.max_frame_size)
            .field("max_name_len", &self.max_name_len)
            .field("max_client_len", &self.max_client_len)
            .field("max_setup_len", &self.max_setup_len)
            .field("max_node_stats", &self.max_node_stats)
            .field("max_errors", &self.max_errors)
            .field("max_announce_failures", &self.max_announce_failures)
            .field("frame_rate", &self.frame_rate)
            .field("byte_rate", &self.byte_rate)
            .field("max_send_backlog", &self.max_send_backlog)
            .field("list_push_interval", &self.list_push_interval)
            .field("list_push_fanout", &self.list_push_fanout)
            // rng_seed: not printed, it would reveal every challenge.
            .finish_non_exhaustive()
    }
}

/// A token bucket: up to `burst` at once, refilled at `per_sec`, for [`SignalConfig::frame_rate`]
/// and [`SignalConfig::byte_rate`].
///
/// Checking a frame costs a few integer operations and no clock read: the bucket refills from the
/// `now` passed to [`SignalServer::handle`]. A `per_sec` of 0 allows `burst` over the connection's
/// whole life; a `burst` of 0 refuses every frame.
///
/// ```
/// use peer_signal::{RateLimit, SignalConfig};
///
/// // A server behind a proxy that already limits rates.
/// let config = SignalConfig {
///     frame_rate: RateLimit::UNLIMITED,
///     byte_rate: RateLimit::UNLIMITED,
///     ..SignalConfig::default()
/// };
/// assert_eq!(SignalConfig::default().frame_rate, RateLimit::new(50, 100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained rate: tokens added per second.
    pub per_sec: u64,
    /// Bucket size: what may arrive at once after a quiet spell. A new connection starts full.
    pub burst: u64,
}

impl RateLimit {
    /// No limit at all.
    pub const UNLIMITED: Self = Self { per_sec: u64::MAX, burst: u64::MAX };

    /// `per_sec` sustained, `burst` at once.
    pub const fn new(per_sec: u64, burst: u64) -> Self {
        Self { per_sec, burst }
    }

    /// The bucket's size in token-nanoseconds (saturating: huge limits mean no limit).
    fn capacity(self) -> u64 {
        self.burst.saturating_mul(NANOS_PER_SEC)
    }

    /// `level` after `nanos` of refill. An unlimited rate refills at once, even when no time
    /// passed between two frames: otherwise enough frames stamped with one instant would drain
    /// even the largest bucket.
    fn refill(self, level: u64, nanos: u64) -> u64 {
        if self.per_sec == u64::MAX {
            return self.capacity();
        }
        level.saturating_add(nanos.saturating_mul(self.per_sec)).min(self.capacity())
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A connection's two token buckets, in token-nanoseconds so that refilling needs no division:
/// a frame costs 10^9 frame units and `len * 10^9` byte units; a nanosecond adds `per_sec` units.
struct Buckets {
    refilled: Instant,
    frames: u64,
    bytes: u64,
    /// Replies charged beyond what the byte bucket held: the refill pays this first, and no frame
    /// passes until it is paid. So a node's own replies count in full against its rate, however
    /// small the requests that earn them.
    debt: u64,
}

impl Buckets {
    fn full(now: Instant, config: &SignalConfig) -> Self {
        Self {
            refilled: now,
            frames: config.frame_rate.capacity(),
            bytes: config.byte_rate.capacity(),
            debt: 0,
        }
    }

    /// Takes `len` bytes that the server sends out of the byte bucket; what the bucket does not
    /// hold becomes debt. A reply is never held back: the connection's next frames pay for it.
    /// Called right after [`take`](Self::take) at the same `now`, so no refill is due.
    fn charge(&mut self, len: usize) {
        let cost = u64::try_from(len).unwrap_or(u64::MAX).saturating_mul(NANOS_PER_SEC);
        match self.bytes.checked_sub(cost) {
            Some(left) => self.bytes = left,
            None => {
                self.debt = self.debt.saturating_add(cost - self.bytes);
                self.bytes = 0;
            }
        }
    }

    /// Takes one frame of `len` bytes out of the buckets; `false` when either is short.
    fn take(&mut self, now: Instant, len: usize, config: &SignalConfig) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.refilled = now;
        let frames = config.frame_rate.refill(self.frames, nanos);
        // The refill pays the debt first; an unlimited rate forgives it at once.
        let unlimited = config.byte_rate.per_sec == u64::MAX;
        let added = nanos.saturating_mul(config.byte_rate.per_sec);
        let paid = added.min(self.debt);
        self.debt = if unlimited { 0 } else { self.debt - paid };
        let bytes = config.byte_rate.refill(self.bytes.saturating_add(added - paid), 0);
        let cost = u64::try_from(len).unwrap_or(u64::MAX).saturating_mul(NANOS_PER_SEC);
        self.bytes = bytes;
        match (frames.checked_sub(NANOS_PER_SEC), bytes.checked_sub(cost)) {
            (Some(frames), Some(bytes)) if self.debt == 0 => {
                (self.frames, self.bytes) = (frames, bytes);
                true
            }
            _ => false,
        }
    }
}

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
    /// that reads slower than they write closed as a slow reader. Pushes of joins skip it too.
    /// Replies to its own requests still go out, charged to it. Ignored for unknown connections.
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
}

/// Why the server closes a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server is stopping.
    Stopped,
    /// The peer broke a rule or hit a limit; it was sent this error just before.
    Error(ProtocolError),
}

/// What happened, for the application's logs, metrics and logic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A node announced successfully. A node that takes over its id from an older connection
    /// produces `NodeLeft` for the old connection first, then `NewNode`.
    NewNode(NodeID),
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
    /// Error replies, by [`ProtocolError::kind`]. Evictions are `idle_timeout`; pending
    /// connections closed to make room for newer ones are `handshake_timeout`.
    pub errors: BTreeMap<&'static str, u64>,
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
}

struct Node {
    conn: ConnId,
    /// The codec of `conn`, kept here so that a relay needs one lookup.
    codec: Codec,
    info: NodeInfo,
    /// `info` as JSON, encoded once at the join: lists splice it instead of encoding it again.
    json: Box<RawValue>,
    /// Index in `SignalServer::order`.
    slot: usize,
}

/// One encoded frame per codec.
#[derive(Default)]
struct PerCodec {
    json: Option<Bytes>,
    bincode: Option<Bytes>,
}

impl PerCodec {
    fn slot(&mut self, codec: Codec) -> &mut Option<Bytes> {
        if codec.is_binary() {
            &mut self.bincode
        } else {
            &mut self.json
        }
    }
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
    conns: HashMap<ConnId, Conn>,
    nodes: HashMap<NodeID, Node>,
    /// Every announced node once, in no particular order: what list samples are drawn from.
    order: Vec<NodeID>,
    /// One entry per connection at its `armed` deadline, plus stale entries of closed or re-armed
    /// connections, which `arm` sweeps out before they outnumber the live ones.
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// Connections that have not announced, oldest first: the first makes room when the table is
    /// full.
    pending: BTreeMap<u64, ConnId>,
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
            system_config: PerCodec::default(),
            config,
            rng,
            conns: HashMap::new(),
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
        })
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
            SignalIn::Opened { conn, codec } => self.handle_opened(now, conn, codec),
            SignalIn::Frame { conn, frame } => self.handle_frame(now, conn, frame),
            SignalIn::Closed { conn } => self.forget(conn),
            SignalIn::Busy { conn, busy } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.busy = busy;
                }
            }
            SignalIn::Tick => self.handle_tick(now),
            SignalIn::Stop => self.handle_stop(),
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

    /// The announced nodes, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> + '_ {
        self.order.iter().filter_map(|id| self.nodes.get(id)).map(|node| &node.info)
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
            ..self.stats.clone()
        }
    }

    fn handle_opened(&mut self, now: Instant, conn: ConnId, codec: Codec) {
        if self.conns.contains_key(&conn) {
            // The transport reused an open id: its bug, and nothing we can repair.
            return;
        }
        let full = self.conns.len() >= self.config.max_connections;
        if full && self.pending.is_empty() {
            let error = ProtocolError::ServerFull;
            self.send(conn, codec, &WSSignalMessageToNode::Error(error.to_string()));
            self.count_error(&error);
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
        self.conns.insert(
            conn,
            Conn {
                codec,
                phase: Phase::Challenged { challenge, seq },
                deadline,
                armed: deadline,
                errors: 0,
                announce_failures: 0,
                rate: Buckets::full(now, &self.config),
                busy: false,
            },
        );
        self.arm(deadline, conn);
        self.send(conn, codec, &WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge));
    }

    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: Bytes) {
        let Some(c) = self.conns.get_mut(&conn) else {
            // Raced with a close we asked for.
            return;
        };
        let (codec, phase) = (c.codec, c.phase);
        let within_rate = c.rate.take(now, frame.len(), &self.config);
        self.stats.frames_in += 1;
        self.stats.bytes_in += frame.len() as u64;
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
                        Ok(()) => self.authenticate(now, conn, codec, announce.node_info),
                        Err(error) => self.refuse_announce(conn, error),
                    },
                    _ => self.refuse(conn, ProtocolError::NotAuthenticated),
                };
            }
        };
        let handled = match message {
            Inbound::Announce(_) => Err(ProtocolError::AlreadyAuthenticated),
            Inbound::ListIDsRequest => {
                self.send_list(conn, codec);
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
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Phase::Challenged { seq, .. } = c.phase {
                self.pending.remove(&seq);
            }
            c.phase = Phase::Node(id);
        }
        self.refresh(conn, later(now, self.config.ttl));
        // Our own NodeInfo always encodes; the fallback keeps this free of panics regardless.
        let json = serde_json::value::to_raw_value(&info).unwrap_or_else(|_| RawValue::NULL.to_owned());
        self.nodes.insert(id, Node { conn, codec, info, json, slot: self.order.len() });
        self.order.push(id);
        self.full_list = PerCodec::default();
        self.stats.joins += 1;

        if self.system_config.slot(codec).is_none() {
            let message =
                WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm: self.config.system_realm });
            *self.system_config.slot(codec) = codec.encode(&message).ok();
        }
        if let Some(frame) = self.system_config.slot(codec).clone() {
            self.reply(conn, frame);
        }
        self.send_list(conn, codec);
        self.out.push_back(SignalOut::Event(SignalEvent::NewNode(id)));

        if self.config.list_push_fanout > 0 && self.push.joined.len() < self.config.max_list_len {
            self.push.joined.push(id);
            self.push.due.get_or_insert(later(now, self.config.list_push_interval));
        }
    }

    /// Forwards a `PeerSetup` to the other node of its pair. The frame goes out as it came in
    /// when both ends speak the same codec: `PeerSetup` encodes the same in both directions.
    fn relay(
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
        if to_codec == codec {
            self.push_frame(to, frame);
        } else if let Ok(WSSignalMessageFromNode::PeerSetup(info)) = codec.decode(&frame) {
            // Only a relay between codecs decodes the message in full, to re-encode it. `Inbound`
            // accepted the frame, so this decode succeeds too.
            self.send(to, to_codec, &WSSignalMessageToNode::PeerSetup(info));
        }
        self.stats.relays += 1;
        Ok(())
    }

    fn send_list(&mut self, conn: ConnId, codec: Codec) {
        if self.config.max_list_len >= self.order.len() {
            // Everybody fits: the same reply for every request until a node joins or leaves.
            if self.full_list.slot(codec).is_none() {
                let frame = self.encode_list(codec, &self.order).ok();
                *self.full_list.slot(codec) = frame;
            }
            if let Some(frame) = self.full_list.slot(codec).clone() {
                self.reply(conn, frame);
            }
            return;
        }
        let slots = sample(&mut self.rng, self.order.len(), self.config.max_list_len);
        let ids: Vec<NodeID> = slots.into_iter().filter_map(|slot| self.order.get(slot).copied()).collect();
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = self.encode_list(codec, &ids) {
            self.reply(conn, frame);
        }
    }

    /// A `ListIDsReply` of the nodes `ids`. JSON splices each node's pre-encoded text.
    fn encode_list(&self, codec: Codec, ids: &[NodeID]) -> Result<Bytes, crate::CodecError> {
        let nodes = ids.iter().filter_map(|id| self.nodes.get(id));
        match codec {
            Codec::Json => {
                let raw: Vec<&RawValue> = nodes.map(|node| &*node.json).collect();
                codec.encode(&ListIDsReplyRef(&raw))
            }
            Codec::Bincode => {
                let infos: Vec<&NodeInfo> = nodes.map(|node| &node.info).collect();
                codec.encode(&ListIDsReplyRef(&infos))
            }
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

    /// Tells up to `list_push_fanout` random nodes about the nodes that joined since the last
    /// push: one `ListIDsReply` with the newcomers first, filled up with a random sample. It is
    /// encoded once per codec and shared by every recipient, so a join costs at most
    /// `list_push_fanout` frames, however many nodes are connected.
    fn push_joins(&mut self) {
        let mut joined = std::mem::take(&mut self.push.joined);
        self.push.due = None;
        joined.sort_unstable();
        joined.dedup();
        joined.retain(|id| self.nodes.contains_key(id));
        if joined.is_empty() {
            return;
        }
        let limit = self.config.max_list_len;
        let mut listed = joined.clone();
        listed.truncate(limit);
        let fill = sample(&mut self.rng, self.order.len(), limit);
        listed.extend(
            fill.into_iter()
                .filter_map(|slot| self.order.get(slot).copied())
                .filter(|id| joined.binary_search(id).is_err())
                .take(limit.saturating_sub(listed.len())),
        );
        let recipients: Vec<(ConnId, Codec)> =
            sample(&mut self.rng, self.order.len(), self.config.list_push_fanout)
                .into_iter()
                .filter_map(|slot| self.order.get(slot))
                .filter(|id| joined.binary_search(id).is_err())
                .filter_map(|id| self.nodes.get(id))
                .filter(|node| !self.conns.get(&node.conn).is_some_and(|c| c.busy))
                .map(|node| (node.conn, node.codec))
                .collect();
        // One reply for all recipients, encoded at most once per codec.
        let mut encoded = PerCodec::default();
        for (conn, codec) in recipients {
            if encoded.slot(codec).is_none() {
                *encoded.slot(codec) = self.encode_list(codec, &listed).ok();
            }
            if let Some(frame) = encoded.slot(codec).clone() {
                self.push_frame(conn, frame);
            }
        }
    }

    fn handle_stop(&mut self) {
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Stopped });
        }
        self.conns.clear();
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
        if !self.conns.contains_key(&conn) {
            return;
        }
        self.send_error(conn, &error);
        self.out.push_back(SignalOut::Close { conn, reason: CloseReason::Error(error) });
        self.forget(conn);
    }

    /// Sends `error` to an open connection as an `Error` reply, and counts it.
    fn send_error(&mut self, conn: ConnId, error: &ProtocolError) {
        let Some(codec) = self.conns.get(&conn).map(|c| c.codec) else { return };
        // Our own messages always encode; a failure would be a bug in this crate, not the peer's.
        if let Ok(frame) = codec.encode(&WSSignalMessageToNode::Error(error.to_string())) {
            self.reply(conn, frame);
        }
        self.count_error(error);
    }

    /// Drops a connection and, if it was a node's, the node.
    fn forget(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else { return };
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
        self.full_list = PerCodec::default();
        if let Some(node) = self.nodes.remove(&id).filter(|node| node.slot < self.order.len()) {
            self.order.swap_remove(node.slot);
            if let Some(moved) = self.order.get(node.slot).and_then(|moved| self.nodes.get_mut(moved)) {
                moved.slot = node.slot;
            }
        }
        self.out.push_back(SignalOut::Event(SignalEvent::NodeLeft(id)));
    }

    fn count_error(&mut self, error: &ProtocolError) {
        *self.stats.errors.entry(error.kind()).or_default() += 1;
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
        self.out.push_back(SignalOut::Send { conn, frame });
    }
}

/// `now + wait`, where a wait too long for the clock means "not in this process's lifetime": a
/// century. (No platform's `Instant` fails to add a century; if one did, the deadline would be
/// `now`, and the connection would expire rather than the server panic.)
fn later(now: Instant, wait: Duration) -> Instant {
    now.checked_add(wait).or_else(|| now.checked_add(CENTURY)).unwrap_or(now)
}

/// Checks a string against its limit as encoded in JSON, the longer of the codecs' encodings.
fn check_len(field: &'static str, text: &str, limit: usize) -> Result<(), ProtocolError> {
    let len = encoded_len(text);
    if len > limit {
        return Err(ProtocolError::TooLong { field, len, limit });
    }
    Ok(())
}

/// `min(k, n)` distinct indices below `n`, each subset equally likely (Floyd's algorithm, O(k)).
/// With `k >= n`, all of them in order.
fn sample(rng: &mut impl RngCore, n: usize, k: usize) -> Vec<usize> {
    if k >= n {
        return (0..n).collect();
    }
    let mut chosen = std::collections::HashSet::with_capacity(k);
    let mut picked = Vec::with_capacity(k);
    for j in n - k..n {
        let t = below(rng, j + 1);
        let pick = if chosen.insert(t) { t } else { j };
        chosen.insert(pick);
        picked.push(pick);
    }
    picked
}

/// A uniform integer in `0..n`, for `n > 0`, without modulo bias.
fn below(rng: &mut impl RngCore, n: usize) -> usize {
    let n = n as u64;
    let zone = u64::MAX - u64::MAX % n;
    loop {
        let x = rng.next_u64();
        if x < zone {
            return (x % n) as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_rates_never_run_dry_even_without_time_passing() {
        let config = SignalConfig {
            frame_rate: RateLimit::UNLIMITED,
            byte_rate: RateLimit::UNLIMITED,
            ..SignalConfig::default()
        };
        let now = Instant::now();
        let mut buckets = Buckets::full(now, &config);
        // Each frame's cost saturates the byte bucket; at one instant, a finite bucket would
        // refuse the second.
        assert!((0..1000).all(|_| buckets.take(now, usize::MAX / 2, &config)));
        // A limited bucket does run dry at one instant.
        let limited = SignalConfig { frame_rate: RateLimit::new(10, 3), ..SignalConfig::default() };
        let mut buckets = Buckets::full(now, &limited);
        assert_eq!((0..5).filter(|_| buckets.take(now, 1, &limited)).count(), 3);
    }

    #[test]
    fn the_timer_heap_stays_bounded_without_ticks() {
        let config = SignalConfig { rng_seed: Some([7; 32]), ..SignalConfig::default() };
        let mut server = SignalServer::new(config).expect("a valid config");
        let now = Instant::now();
        // A few live connections, whose entries must survive every sweep.
        let live: Vec<ConnId> = (0..10).map(|n| ConnId::new(1_000_000 + n)).collect();
        for &conn in &live {
            server.handle(now, SignalIn::Opened { conn, codec: Codec::Json });
        }
        let mut most = 0;
        for n in 0..100_000 {
            let conn = ConnId::new(n);
            server.handle(now, SignalIn::Opened { conn, codec: Codec::Json });
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

    #[test]
    fn replies_beyond_the_bucket_are_debt_that_the_refill_pays_first() {
        let config = SignalConfig { byte_rate: RateLimit::new(1000, 1000), ..SignalConfig::default() };
        let start = Instant::now();
        let mut buckets = Buckets::full(start, &config);
        assert!(buckets.take(start, 10, &config));
        // A reply of 5,000 bytes: 990 from the bucket, 4,010 owed.
        buckets.charge(5_000);
        // 4 s refill 4,000 bytes: not yet paid, so even a 1-byte frame is refused.
        assert!(!buckets.take(start + Duration::from_secs(4), 1, &config));
        // After 4.1 s in all the debt is paid and 90 bytes are back.
        let later = start + Duration::from_millis(4_100);
        assert!(buckets.take(later, 80, &config));
        assert!(!buckets.take(later, 20, &config));
    }

    #[test]
    fn sample_is_distinct_in_range_and_covers_everything() {
        let mut rng = ChaCha20Rng::from_seed([1; 32]);
        let mut seen = [0u32; 10];
        for _ in 0..2000 {
            let picked = sample(&mut rng, 10, 3);
            assert_eq!(picked.len(), 3);
            let mut sorted = picked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "indices repeat: {picked:?}");
            for i in picked {
                seen[i] += 1;
            }
        }
        // Each index is expected 600 times; uniformity within a generous margin.
        assert!(seen.iter().all(|&c| (450..750).contains(&c)), "{seen:?}");
        assert_eq!(sample(&mut rng, 4, 10), vec![0, 1, 2, 3]);
        assert!(sample(&mut rng, 0, 3).is_empty());
    }

    #[test]
    fn below_stays_below() {
        let mut rng = ChaCha20Rng::from_seed([2; 32]);
        for n in [1, 2, 3, 7, 1000] {
            assert!((0..100).all(|_| below(&mut rng, n) < n));
        }
    }
}
