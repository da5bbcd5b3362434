//! [`WsConfig`]: every setting and limit of the WebSocket transport, its defaults and their
//! reasons, and its validation.

use std::net::IpAddr;
use std::time::Duration;

use super::AdmissionHook;
#[cfg(feature = "tls")]
use super::ServerTls;
use crate::server::{at_least, at_most, duration, nonzero, source_prefix, MAX_QUEUE};
use crate::{ConfigError, SignalConfig};

/// Settings and limits of the WebSocket transport.
///
/// [`WsConfig::for_server`] derives the limits shared with the core from a [`SignalConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsConfig {
    /// Open TCP connections, including those still in the TLS or WebSocket handshake or closing.
    /// When all are taken, the oldest connection still in its handshake is ended to make room
    /// (see [`max_pending_upgrades`](Self::max_pending_upgrades)); with none in its handshake,
    /// the newcomer is dropped right after `accept`. Default 100,000;
    /// [`for_server`](Self::for_server) gives the core's `max_connections` plus
    /// `max_pending_upgrades`, so that handshakes never take an announced node's place.
    pub max_connections: usize,
    /// Open TCP connections from one source (an IPv4 address, or an IPv6 prefix of
    /// [`ipv6_source_prefix`](Self::ipv6_source_prefix) bits), counted from `accept` until the
    /// connection's task ends. Connections over it are dropped right after `accept` and counted
    /// in [`WsStats::refused_per_ip`](super::WsStats::refused_per_ip). Default 256: without it, one host could take every slot
    /// with idle TCP connections and lock everybody else out; 256 leaves room for a NAT or a
    /// carrier-grade NAT that hides many honest nodes behind one address, while one host holds at
    /// most 0.26% of the default 100,000 slots (nginx's `limit_conn` has no default and leaves the
    /// number to the operator; we do not, because the server faces the network by default).
    ///
    /// Behind a reverse proxy, every connection comes from the proxy: list it in
    /// [`trusted_proxies`](Self::trusted_proxies) so that its clients are counted by
    /// `X-Forwarded-For`, or set `None` to count nobody.
    pub max_connections_per_ip: Option<usize>,
    /// How many leading bits of an IPv6 address name its source, for the per-source limits.
    /// Default 56 (a home gets a /56 or a /64; one host can use every address of its /64), as the
    /// core's [`SignalConfig::ipv6_source_prefix`], which [`for_server`](Self::for_server) copies.
    /// At most 128.
    pub ipv6_source_prefix: u8,
    /// New connections accepted per second from one source, and at once after a quiet spell
    /// (`(per_sec, burst)`); connections over it are dropped right after `accept` and counted in
    /// [`WsStats::refused_rate`](super::WsStats::refused_rate). `None` accepts any rate. Default 32 per second, bursts of 128: a
    /// NAT full of nodes that reconnect after a restart (with the client's backoff) passes within
    /// seconds, while one source cannot churn handshakes fast enough to push everybody else's out
    /// of [`max_pending_upgrades`](Self::max_pending_upgrades). Connections from trusted proxies
    /// are not limited here.
    pub accept_rate_per_ip: Option<(u32, u32)>,
    /// Connections in their TLS or WebSocket handshake at once. A new connection beyond it ends
    /// the oldest one still in its handshake ([`WsStats::evicted_handshakes`](super::WsStats::evicted_handshakes)), so a slowloris
    /// that opens connections and sends nothing cannot lock newcomers out: it only shortens every
    /// handshake to the time the flood takes to open this many. Default 4,096: an honest
    /// handshake takes a few round trips, so even a flood of 40,000 connections a second leaves
    /// each newcomer 100 ms.
    pub max_pending_upgrades: usize,
    /// Reverse proxies whose `X-Forwarded-For` header is believed: for a connection from one of
    /// these addresses, the client is the nearest address in that header that is not itself a
    /// trusted proxy, and [`max_connections_per_ip`](Self::max_connections_per_ip) counts that
    /// client (checked after the request is read; over the limit, it gets `429 Too Many
    /// Requests`). From any other address the header is ignored, so that nobody can pick the
    /// address they are counted under. Default: none.
    pub trusted_proxies: Vec<IpAddr>,
    /// Decides, for each upgrade request, whether it may become a connection: see
    /// [`AdmissionHook`]. Called after the per-IP limit; a refused request gets the hook's HTTP
    /// status and is counted in [`WsStats::refused_admission`](super::WsStats::refused_admission). Default: everybody is let in.
    pub admission: Option<AdmissionHook>,
    /// Time a client has to complete the WebSocket handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message accepted, however it is fragmented; a longer one closes the
    /// connection with code 1009 before its payload is read. Default 64 KiB, the core's
    /// [`SignalConfig::max_frame_size`], which [`for_server`](Self::for_server) copies.
    pub max_message_size: usize,
    /// Frames queued for one connection. A connection whose queue is full reads too slowly and
    /// is closed at once. Default 256; at most 2^20.
    pub send_backlog: usize,
    /// Bytes queued for one connection, counted by payload until written. A frame that would
    /// take the queue over it closes the connection as a slow reader; past half of it the
    /// connection is reported busy (see [`TransportEvent::Busy`](crate::TransportEvent::Busy)), and the core refuses relays to
    /// it and leaves its list requests unanswered. Default 256 KiB: four frames of the largest
    /// size, or ten lists of 100 nodes; an honest node reads what it asked for long before.
    pub send_backlog_bytes: usize,
    /// Bytes queued for sending across all connections together. A frame that takes the total
    /// over it ends the connections that hold most (as slow readers, counted in
    /// [`WsStats::shed`](super::WsStats::shed)) until the rest fits, so that many slow readers together cannot make
    /// the process run out of memory and take every node down with it. Default 512 MiB: 2,048
    /// connections with full queues, far more than honest nodes hold at once.
    pub send_budget_bytes: usize,
    /// Longest a write may make no progress: a connection whose peer does not take its bytes for
    /// this long is closed as a slow reader ([`WsStats::slow_readers`](super::WsStats::slow_readers)), and its task, socket and
    /// slots are released. Default 10 s.
    pub write_timeout: Duration,
    /// Bytes per second a connection must drain while more than
    /// [`drain_floor`](Self::drain_floor) bytes wait for it, measured over each
    /// [`write_timeout`](Self::write_timeout): a peer that reads a byte now and then to keep its
    /// write deadline alive is closed as a slow reader all the same. Default 4 KiB/s (a 256 KiB
    /// queue drains in a minute).
    pub min_drain_rate: usize,
    /// Queued bytes below which any progress satisfies the write deadline. Default 16 KiB.
    pub drain_floor: usize,
    /// How long a closing connection waits for the peer's close frame after sending its own,
    /// reading and dropping what still arrives, before it ends the TCP connection. Default 1 s.
    pub close_linger: Duration,
    /// How often the server pings a quiet connection. A connection from which nothing (not even a
    /// pong) arrived for two intervals is closed. Default 30 s.
    pub ping_interval: Duration,
    /// Bytes read from the socket at a time. The buffer is allocated when the socket has data and
    /// given back once its messages are handled, so an idle connection holds none; a longer
    /// message gets a buffer of its size for as long as it takes to arrive. Default 4 KiB; at
    /// most 16 MiB (every reading connection allocates it; one read rarely returns more than
    /// the kernel's socket buffer, a few MiB).
    pub read_buffer_size: usize,
    /// Connections the kernel queues for `accept` (the listen backlog; the kernel caps it at
    /// `net.core.somaxconn`). A full backlog drops connection attempts, which the client retries
    /// only a second later. Default 4096.
    pub listen_backlog: u32,
    /// Events (opens, frames, closes) waiting for the driver. When it is full, connections stop
    /// reading until the driver catches up. Default 4096; at most 2^20.
    pub event_queue: usize,
    /// Serve wss:// with this certificate (feature `tls`): every connection starts with a TLS
    /// handshake, within [`handshake_timeout`](Self::handshake_timeout) together with the
    /// WebSocket one. Default `None`: plain ws://.
    #[cfg(feature = "tls")]
    pub tls: Option<ServerTls>,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: Some(256),
            ipv6_source_prefix: 56,
            accept_rate_per_ip: Some((32, 128)),
            max_pending_upgrades: 4096,
            trusted_proxies: Vec::new(),
            admission: None,
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            send_backlog: 256,
            send_backlog_bytes: 256 * 1024,
            send_budget_bytes: 512 * 1024 * 1024,
            write_timeout: Duration::from_secs(10),
            min_drain_rate: 4 * 1024,
            drain_floor: 16 * 1024,
            close_linger: Duration::from_secs(1),
            ping_interval: Duration::from_secs(30),
            read_buffer_size: 4 * 1024,
            listen_backlog: 4096,
            event_queue: 4096,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

setters! {
    WsConfig {
        with_max_connections => max_connections: usize,
        with_ipv6_source_prefix => ipv6_source_prefix: u8,
        with_max_pending_upgrades => max_pending_upgrades: usize,
        with_send_budget_bytes => send_budget_bytes: usize,
        with_min_drain_rate => min_drain_rate: usize,
        with_drain_floor => drain_floor: usize,
        with_trusted_proxies => trusted_proxies: Vec<IpAddr>,
        with_handshake_timeout => handshake_timeout: Duration,
        with_max_message_size => max_message_size: usize,
        with_send_backlog => send_backlog: usize,
        with_send_backlog_bytes => send_backlog_bytes: usize,
        with_write_timeout => write_timeout: Duration,
        with_close_linger => close_linger: Duration,
        with_ping_interval => ping_interval: Duration,
        with_read_buffer_size => read_buffer_size: usize,
        with_listen_backlog => listen_backlog: u32,
        with_event_queue => event_queue: usize,
    }
    optional {
        with_max_connections_per_ip => max_connections_per_ip: usize,
        with_accept_rate_per_ip => accept_rate_per_ip: (u32, u32),
        with_admission => admission: AdmissionHook,
        #[cfg(feature = "tls")]
        with_tls => tls: ServerTls,
    }
}

/// The largest [`WsConfig::read_buffer_size`]: 16 MiB.
const MAX_READ_BUFFER: usize = 16 << 20;

impl WsConfig {
    /// Checks every setting: zero sizes, counts and intervals are refused (a zero
    /// [`close_linger`](Self::close_linger) is allowed: it means not to wait), as are durations
    /// over a century, a byte backlog too small for one message of the largest size, queues of
    /// more than 2^20 items (`send_backlog`, `event_queue`: the channels under them panic near
    /// `usize::MAX`) and a read buffer over 16 MiB.
    /// [`WsTransport::bind`](super::WsTransport::bind) and [`WsTransport::from_listener`](super::WsTransport::from_listener) run it.
    ///
    /// # Errors
    ///
    /// The first refused setting, in field order, as a [`ConfigError`] that names it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("max_connections", self.max_connections)?;
        if let Some(per_ip) = self.max_connections_per_ip {
            nonzero("max_connections_per_ip", per_ip)?;
        }
        source_prefix("ipv6_source_prefix", self.ipv6_source_prefix)?;
        if let Some((per_sec, burst)) = self.accept_rate_per_ip {
            nonzero("accept_rate_per_ip.per_sec", per_sec)?;
            nonzero("accept_rate_per_ip.burst", burst)?;
        }
        nonzero("max_pending_upgrades", self.max_pending_upgrades)?;
        duration("handshake_timeout", self.handshake_timeout)?;
        nonzero("max_message_size", self.max_message_size)?;
        nonzero("send_backlog", self.send_backlog)?;
        at_most("send_backlog", self.send_backlog, MAX_QUEUE)?;
        at_least("send_backlog_bytes", self.send_backlog_bytes, "max_message_size", self.max_message_size)?;
        at_least("send_budget_bytes", self.send_budget_bytes, "send_backlog_bytes", self.send_backlog_bytes)?;
        duration("write_timeout", self.write_timeout)?;
        if !self.close_linger.is_zero() {
            duration("close_linger", self.close_linger)?;
        }
        duration("ping_interval", self.ping_interval)?;
        nonzero("read_buffer_size", self.read_buffer_size)?;
        at_most("read_buffer_size", self.read_buffer_size, MAX_READ_BUFFER)?;
        nonzero("listen_backlog", self.listen_backlog)?;
        nonzero("event_queue", self.event_queue)?;
        at_most("event_queue", self.event_queue, MAX_QUEUE)?;
        Ok(())
    }

    /// Turns off the limits per source ([`max_connections_per_ip`](Self::max_connections_per_ip)
    /// and [`accept_rate_per_ip`](Self::accept_rate_per_ip)): for a server behind a reverse proxy
    /// that cannot be listed in [`trusted_proxies`](Self::trusted_proxies), or for load tools and
    /// tests whose clients all share one address. `max_connections` and
    /// `max_pending_upgrades` still bound the whole.
    #[must_use]
    pub fn without_source_limits(mut self) -> Self {
        self.max_connections_per_ip = None;
        self.accept_rate_per_ip = None;
        self
    }

    /// The defaults, with the limits the core also knows taken from `config`.
    pub fn for_server(config: &SignalConfig) -> Self {
        let defaults = Self::default();
        Self {
            max_connections: config.max_connections.saturating_add(defaults.max_pending_upgrades),
            ipv6_source_prefix: config.ipv6_source_prefix,
            max_message_size: config.max_frame_size,
            send_backlog: config.max_send_backlog,
            ..defaults
        }
    }
}
