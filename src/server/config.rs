//! [`SignalConfig`]: every setting and limit of the core, and how they are checked.

use std::fmt;
use std::time::Duration;

use crate::binding::Binding;
use crate::error::ConfigError;
use crate::limits::{at_least, at_most, duration, nonzero, source_prefix, MAX_QUEUE};
use crate::protocol::RealmID;
use crate::turn::TurnConfig;

use super::policy::AnnouncePolicy;
use super::rate::RateLimit;
use super::sources::WhenFull;
#[cfg(doc)]
use super::{SignalIn, SignalServer};

/// Every setting and every limit of a [`SignalServer`].
///
/// The defaults suit a public server; each limit bounds a map, a queue or a string that would
/// otherwise grow with what peers send. Start from the defaults and change what you need with
/// the `with_*` setters (or assign the fields of a mutable value; the struct is
/// `#[non_exhaustive]`, so that new settings can come without breaking your code);
/// [`SignalServer::new`] checks it with [`validate`](Self::validate):
///
/// ```
/// use std::time::Duration;
/// use peer_signal::SignalConfig;
///
/// let config = SignalConfig::default().with_ttl(Duration::from_secs(60)).with_max_list_len(20);
/// assert_eq!(config.max_frame_size, 64 * 1024);
/// assert!(config.validate().is_ok());
///
/// let mut broken = config.clone();
/// broken.ttl = Duration::ZERO;
/// assert_eq!(broken.validate().unwrap_err().to_string(), "ttl must be more than zero");
/// ```
///
/// Durations must be more than zero and at most a century; counts and sizes must be more than
/// zero, except where a field documents what zero means.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
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
    /// A reply must fit in the transport's send backlog for one connection:
    /// [`check_send_backlog`](Self::check_send_backlog) checks the longest one against it
    /// (54,619 bytes with the defaults, under the default 64 KiB `max_frame_size` that clients
    /// may use as their own message limit).
    pub max_list_len: usize,
    /// Open connections, announced or not. While some have not announced yet, the oldest of
    /// those makes room for a newcomer, as for `max_pending_handshakes`; when they are all
    /// announced nodes, `when_full` decides. Default 100,000.
    pub max_connections: usize,
    /// What a new connection gets when `max_connections` announced nodes are connected: see
    /// [`WhenFull`]. Default [`WhenFull::EvictFromLargestSource`]: whoever fills the server
    /// from few addresses loses connections to newcomers from other addresses, so that a flood
    /// of nodes with fresh keys cannot lock out everyone else.
    pub when_full: WhenFull,
    /// How many leading bits of an IPv6 address name its source, for `when_full` (and for the
    /// per-source limits of a transport that derives them from this config). Default 56: an
    /// ISP gives a home a /56 (sometimes a /64, rarely a /48), and one host can use every
    /// address of its /64, so counting whole addresses would give one attacker 2^64 sources.
    /// IPv4 addresses are always counted whole. At most 128.
    pub ipv6_source_prefix: u8,
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
    /// filling it. Default 256; at most 1,048,576 (2^20).
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
    /// The application's word on each node whose announce verified, before it joins: see
    /// [`AnnouncePolicy`]. A denied node gets the policy's reason as an `Error` and is closed.
    /// Default `None`: every node that proves its key joins.
    pub announce_policy: Option<AnnouncePolicy>,
    /// TURN and STUN servers for the nodes ([`TurnConfig`]): each node gets its own credentials
    /// in an `IceServers` message right after its signature is verified, again with the first
    /// frame it sends after half their lifetime, and on `IceServersRequest`. fledger 0.10 nodes
    /// drop the message unread. Default `None`: no such message.
    pub turn: Option<TurnConfig>,
    /// Bound sign-ins and signed set-up messages ([`Binding`]): off (the default, v3 only),
    /// accept, or require. With binding on, every connection gets a `Capabilities` message
    /// before its `Challenge`, which fledger 0.10 nodes drop unread.
    pub binding: Binding,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(120),
            handshake_timeout: Duration::from_secs(10),
            system_realm: None,
            max_list_len: 100,
            max_connections: 100_000,
            when_full: WhenFull::EvictFromLargestSource,
            ipv6_source_prefix: 56,
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
            announce_policy: None,
            turn: None,
            binding: Binding::default(),
        }
    }
}

setters! {
    SignalConfig {
        with_ttl => ttl: Duration,
        with_handshake_timeout => handshake_timeout: Duration,
        with_max_list_len => max_list_len: usize,
        with_max_connections => max_connections: usize,
        with_when_full => when_full: WhenFull,
        with_ipv6_source_prefix => ipv6_source_prefix: u8,
        with_max_pending_handshakes => max_pending_handshakes: usize,
        with_max_frame_size => max_frame_size: usize,
        with_max_name_len => max_name_len: usize,
        with_max_client_len => max_client_len: usize,
        with_max_setup_len => max_setup_len: usize,
        with_max_node_stats => max_node_stats: usize,
        with_max_errors => max_errors: u32,
        with_max_announce_failures => max_announce_failures: u32,
        with_frame_rate => frame_rate: RateLimit,
        with_byte_rate => byte_rate: RateLimit,
        with_max_send_backlog => max_send_backlog: usize,
        with_list_push_interval => list_push_interval: Duration,
        with_list_push_fanout => list_push_fanout: usize,
        with_binding => binding: Binding,
    }
    optional {
        with_system_realm => system_realm: RealmID,
        with_rng_seed => rng_seed: [u8; 32],
        with_announce_policy => announce_policy: AnnouncePolicy,
        with_turn => turn: TurnConfig,
    }
}

impl SignalConfig {
    /// Checks that a server can work with these settings: every duration more than zero and at
    /// most a century, every size and count more than zero (except where a field says what zero
    /// means: `max_errors`, `max_announce_failures`, `list_push_fanout`, and the `per_sec` of the
    /// rates), `byte_rate.burst` at least `max_frame_size`, and `max_send_backlog` at most 2^20.
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
        source_prefix("ipv6_source_prefix", self.ipv6_source_prefix)?;
        nonzero("max_pending_handshakes", self.max_pending_handshakes)?;
        nonzero("max_frame_size", self.max_frame_size)?;
        nonzero("max_name_len", self.max_name_len)?;
        nonzero("max_client_len", self.max_client_len)?;
        nonzero("max_setup_len", self.max_setup_len)?;
        nonzero("max_node_stats", self.max_node_stats)?;
        nonzero("frame_rate.burst", self.frame_rate.burst)?;
        nonzero("byte_rate.burst", self.byte_rate.burst)?;
        let max_frame_size = u64::try_from(self.max_frame_size).unwrap_or(u64::MAX);
        at_least("byte_rate.burst", self.byte_rate.burst, "max_frame_size", max_frame_size)?;
        nonzero("max_send_backlog", self.max_send_backlog)?;
        at_most("max_send_backlog", self.max_send_backlog, MAX_QUEUE)?;
        if self.list_push_fanout > 0 {
            duration("list_push_interval", self.list_push_interval)?;
        }
        self.binding.validate()?;
        if let Some(turn) = &self.turn {
            turn.validate()?;
            // Renewed with the first frame after half the lifetime, and a node sends one per TTL:
            // a quarter of the lifetime is left at least.
            let ttls = self.ttl.saturating_mul(4).as_secs();
            at_least("turn.lifetime", turn.lifetime.as_secs(), "4 × ttl", ttls)?;
        }
        Ok(())
    }
}

impl SignalConfig {
    /// The longest `ListIDsReply` these settings let the server send, in bytes: `max_list_len`
    /// nodes whose names and clients are as long as `max_name_len` and `max_client_len` allow,
    /// whose modules are all set, in whichever codec makes them longer (JSON). Saturates at
    /// `usize::MAX`, as with `max_list_len` at `usize::MAX`.
    ///
    /// With the defaults it is 54,619 bytes (100 nodes of at most 546 bytes each); a list of
    /// real nodes is much shorter (about 250 bytes a node).
    pub fn max_list_reply_len(&self) -> usize {
        use crate::codec::Codec;
        use crate::protocol::{Modules, NodeInfo, WSSignalMessageToNode};
        let node = NodeInfo { modules: Modules(u32::MAX), ..NodeInfo::new("", "", [0xff; 32]) };
        let strings = self.max_name_len.saturating_add(self.max_client_len);
        [Codec::Json, Codec::Bincode]
            .into_iter()
            .map(|codec| {
                let len = |nodes: Vec<NodeInfo>| {
                    codec.encode(&WSSignalMessageToNode::ListIDsReply(nodes)).map_or(0, |frame| frame.len())
                };
                let (empty, one) = (len(Vec::new()), len(vec![node.clone()]));
                // One more byte per node for the comma between JSON entries.
                let per_node = one.saturating_sub(empty).saturating_add(strings).saturating_add(1);
                empty.saturating_add(per_node.saturating_mul(self.max_list_len))
            })
            .max()
            .unwrap_or(usize::MAX)
    }

    /// Checks that the longest list reply ([`max_list_reply_len`](Self::max_list_reply_len))
    /// fits in a transport's send backlog of `backlog_bytes` for one connection, such as
    /// `WsConfig::send_backlog_bytes`. A reply longer than the backlog could never be queued:
    /// every node that asked for the list would be closed as a slow reader. Lower `max_list_len`
    /// (or the string limits), or raise the backlog.
    ///
    /// ```
    /// use peer_signal::SignalConfig;
    ///
    /// assert!(SignalConfig::default().check_send_backlog(1 << 20).is_ok());
    /// let everybody = SignalConfig::default().with_max_list_len(usize::MAX);
    /// assert_eq!(
    ///     everybody.check_send_backlog(1 << 20).unwrap_err().to_string(),
    ///     format!("send_backlog_bytes (1048576) must be at least the longest list reply of max_list_len nodes ({})", usize::MAX),
    /// );
    /// ```
    ///
    /// # Errors
    ///
    /// [`ConfigError::Below`] for `send_backlog_bytes`, with the longest reply.
    pub fn check_send_backlog(&self, backlog_bytes: usize) -> Result<(), ConfigError> {
        let longest = self.max_list_reply_len();
        at_least("send_backlog_bytes", backlog_bytes, "the longest list reply of max_list_len nodes", longest)
    }
}

impl fmt::Debug for SignalConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalConfig")
            .field("ttl", &self.ttl)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("system_realm", &self.system_realm)
            .field("max_list_len", &self.max_list_len)
            .field("max_connections", &self.max_connections)
            .field("when_full", &self.when_full)
            .field("ipv6_source_prefix", &self.ipv6_source_prefix)
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
            .field("announce_policy", &self.announce_policy)
            .field("turn", &self.turn)
            .field("binding", &self.binding)
            // rng_seed: not printed, it would reveal every challenge.
            .finish_non_exhaustive()
    }
}
