//! The WebSocket transport, behind the `websocket` feature: tokio sockets, WebSocket framing of
//! our own on tungstenite's frame headers, and tokio-tungstenite for [`WsClient`].
//!
//! One task accepts TCP connections; each connection gets its own task, which does the WebSocket
//! handshake under a timeout and then moves frames between the socket and two bounded queues: the
//! connection's send queue, and the events queue that [`WsTransport::next_event`] reads. The
//! transport addresses connections by id in a map it alone owns, so the relay path takes no lock.
//!
//! The framing is ours so that the connection task controls its buffers and its waits: it holds no
//! read buffer while idle, writes every queued frame in one vectored system call without copying
//! it, and bounds every write, ping and closing handshake by a deadline.

mod admission;
mod client;
mod conn;
mod frame;
mod handshake;
mod link;
mod shares;
#[cfg(feature = "tls")]
mod tls;

pub use self::admission::{Admission, AdmissionHook, UpgradeRequest};
pub use self::client::{TokioTimer, WsClient, WsClientBuilder};
#[cfg(feature = "tls")]
pub use self::tls::{ServerTls, TlsError, TlsRoots};

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpSocket, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;

use self::conn::{Connection, End, Outbound, Shared};
use self::handshake::Refusal;
use self::link::Link;
use self::shares::{AcceptRate, IpSlot, PerIp, Ticket, Upgrades};
use super::{Transport, TransportEvent};
use crate::ids::ConnMap;
use crate::server::{at_most, duration, nonzero, source_prefix, MAX_QUEUE};
use crate::telemetry::{self, SendQueueMeter, Stamp};
use crate::{CloseReason, Codec, ConfigError, ConnId, SignalConfig, TransportError};

/// The WebSocket subprotocol a client asks for to speak bincode in binary frames. Without it a
/// connection speaks JSON in text frames, as fledger nodes do.
pub const BINCODE_SUBPROTOCOL: &str = "peer-signal-bincode";

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
    /// in [`WsStats::refused_per_ip`]. Default 256: without it, one host could take every slot
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
    /// [`WsStats::refused_rate`]. `None` accepts any rate. Default 32 per second, bursts of 128: a
    /// NAT full of nodes that reconnect after a restart (with the client's backoff) passes within
    /// seconds, while one source cannot churn handshakes fast enough to push everybody else's out
    /// of [`max_pending_upgrades`](Self::max_pending_upgrades). Connections from trusted proxies
    /// are not limited here.
    pub accept_rate_per_ip: Option<(u32, u32)>,
    /// Connections in their TLS or WebSocket handshake at once. A new connection beyond it ends
    /// the oldest one still in its handshake ([`WsStats::evicted_handshakes`]), so a slowloris
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
    /// status and is counted in [`WsStats::refused_admission`]. Default: everybody is let in.
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
    /// connection is reported busy (see [`TransportEvent::Busy`]), and the core refuses relays to
    /// it and leaves its list requests unanswered. Default 256 KiB: four frames of the largest
    /// size, or ten lists of 100 nodes; an honest node reads what it asked for long before.
    pub send_backlog_bytes: usize,
    /// Bytes queued for sending across all connections together. A frame that takes the total
    /// over it ends the connections that hold most (as slow readers, counted in
    /// [`WsStats::shed`]) until the rest fits, so that many slow readers together cannot make
    /// the process run out of memory and take every node down with it. Default 512 MiB: 2,048
    /// connections with full queues, far more than honest nodes hold at once.
    pub send_budget_bytes: usize,
    /// Longest a write may make no progress: a connection whose peer does not take its bytes for
    /// this long is closed as a slow reader ([`WsStats::slow_readers`]), and its task, socket and
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
    /// [`WsTransport::bind`] and [`WsTransport::from_listener`] run it.
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
        if self.send_backlog_bytes < self.max_message_size {
            return Err(ConfigError::Below {
                field: "send_backlog_bytes",
                value: u64::try_from(self.send_backlog_bytes).unwrap_or(u64::MAX),
                other: "max_message_size",
                other_value: u64::try_from(self.max_message_size).unwrap_or(u64::MAX),
            });
        }
        if self.send_budget_bytes < self.send_backlog_bytes {
            return Err(ConfigError::Below {
                field: "send_budget_bytes",
                value: u64::try_from(self.send_budget_bytes).unwrap_or(u64::MAX),
                other: "send_backlog_bytes",
                other_value: u64::try_from(self.send_backlog_bytes).unwrap_or(u64::MAX),
            });
        }
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

/// Counters of what the WebSocket layer did on its own, for metrics. Get them from
/// [`WsTransport::stats_handle`]; read them with [`WsStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Connection tasks alive now: in the WebSocket handshake, open, or closing. A gauge; it
    /// returns to zero once every connection has ended.
    pub connection_tasks: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections`] were open.
    pub refused: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections_per_ip`] were open
    /// from the same address.
    pub refused_per_ip: u64,
    /// Connections that failed or timed out before the server accepted their WebSocket upgrade:
    /// the TLS handshake or the upgrade request. The accepting response goes out with the
    /// connection's first frames, so a failure to write it ends the connection like any later
    /// write failure.
    pub failed_handshakes: u64,
    /// Upgrade requests that [`WsConfig::admission`] refused.
    pub refused_admission: u64,
    /// TCP connections dropped at once because their source opened more than
    /// [`WsConfig::accept_rate_per_ip`] allows.
    pub refused_rate: u64,
    /// Connections ended in their TLS or WebSocket handshake to make room for newer ones (see
    /// [`WsConfig::max_pending_upgrades`]).
    pub evicted_handshakes: u64,
    /// Connections closed as slow readers: their send queue was full, a write made no progress
    /// for [`WsConfig::write_timeout`], or a queue above [`WsConfig::drain_floor`] drained slower
    /// than [`WsConfig::min_drain_rate`].
    pub slow_readers: u64,
    /// Connections ended because together they held more than [`WsConfig::send_budget_bytes`]
    /// queued, the ones holding most first.
    pub shed: u64,
    /// Bytes queued for sending now, by every connection together. A gauge, bounded by
    /// [`WsConfig::send_budget_bytes`].
    pub queued_bytes: u64,
    /// Connections closed for a message over [`WsConfig::max_message_size`].
    pub oversize: u64,
    /// Connections closed for breaking the WebSocket protocol (unmasked or malformed frames, text
    /// that is not UTF-8, and the like).
    pub protocol_violations: u64,
    /// Connections closed because nothing arrived for two ping intervals.
    pub ping_timeouts: u64,
    /// Connections whose closing handshake completed: each side sent its close frame.
    pub clean_closes: u64,
    /// Bytes held in read buffers now, by every connection together. A gauge: a connection holds
    /// a buffer only while a message is arriving or waits to be handed on, so idle connections
    /// add nothing, whatever they sent before.
    pub read_buffer_bytes: u64,
}

/// A shared view of a [`WsTransport`]'s [`WsStats`], usable after the transport moved into a driver.
#[derive(Debug, Clone, Default)]
pub struct WsStatsHandle(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    tasks: AtomicUsize,
    /// Woken when `tasks` drops to zero.
    all_ended: Notify,
    accepted: AtomicU64,
    refused: AtomicU64,
    refused_per_ip: AtomicU64,
    failed_handshakes: AtomicU64,
    refused_admission: AtomicU64,
    refused_rate: AtomicU64,
    evicted_handshakes: AtomicU64,
    slow_readers: AtomicU64,
    shed: AtomicU64,
    /// Payload bytes queued for sending, by every connection together.
    queued: AtomicUsize,
    oversize: AtomicU64,
    protocol_violations: AtomicU64,
    ping_timeouts: AtomicU64,
    clean_closes: AtomicU64,
    read_buffers: AtomicUsize,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl WsStatsHandle {
    /// The counters now.
    pub fn get(&self) -> WsStats {
        let c = &self.0;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WsStats {
            connection_tasks: c.tasks.load(Ordering::Acquire) as u64,
            accepted: read(&c.accepted),
            refused: read(&c.refused),
            refused_per_ip: read(&c.refused_per_ip),
            failed_handshakes: read(&c.failed_handshakes),
            refused_admission: read(&c.refused_admission),
            refused_rate: read(&c.refused_rate),
            evicted_handshakes: read(&c.evicted_handshakes),
            slow_readers: read(&c.slow_readers),
            shed: read(&c.shed),
            queued_bytes: c.queued.load(Ordering::Relaxed) as u64,
            oversize: read(&c.oversize),
            protocol_violations: read(&c.protocol_violations),
            ping_timeouts: read(&c.ping_timeouts),
            clean_closes: read(&c.clean_closes),
            read_buffer_bytes: c.read_buffers.load(Ordering::Relaxed) as u64,
        }
    }

    /// Sets the transport's metrics (feature `metrics`) to its counters now: the gauges
    /// `peer_signal_ws_connection_tasks` and `peer_signal_ws_read_buffer_bytes`, and the
    /// `peer_signal_ws_*_total` counters, one for each counter of [`WsStats`] (refusals as
    /// `peer_signal_ws_refused_total{reason="max_connections"|"max_connections_per_ip"|"admission"}`).
    /// Call it before each scrape (or on a timer, for an exporter that pushes). The histogram
    /// `peer_signal_ws_send_queue_seconds` needs no call: connections record it as they write.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        crate::telemetry::publish_ws(&self.get());
    }

    /// Waits until no connection task is alive: every connection has finished its closing
    /// handshake, or given up on it. Each closing connection ends within
    /// [`WsConfig::write_timeout`] plus [`WsConfig::close_linger`], so after a
    /// [`DriverHandle::stop`](crate::DriverHandle::stop) this is how a server drains before its
    /// process exits; bound it with your own timeout all the same.
    pub async fn all_ended(&self) {
        loop {
            let notified = self.0.all_ended.notified();
            if self.0.tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection task from `accept` to its end, however it ends.
struct TaskGuard(Arc<Counters>);

impl TaskGuard {
    fn new(counters: &Arc<Counters>) -> Self {
        counters.tasks.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counters))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_ended.notify_waiters();
        }
    }
}

/// What a connection task tells the transport.
#[derive(Debug)]
enum Event {
    Opened { conn: ConnId, codec: Codec, addr: IpAddr, handle: ConnHandle },
    Frame { conn: ConnId, frame: Bytes },
    Busy { conn: ConnId, busy: bool },
    Closed { conn: ConnId },
}

/// The transport's side of one connection.
#[derive(Debug)]
struct ConnHandle {
    /// `futures`' channel rather than tokio's: it allocates nothing up front, where tokio's
    /// preallocates a block of 32 slots, a fair share of an idle connection's memory.
    queue: futures::channel::mpsc::Sender<Outbound>,
    shared: Arc<Shared>,
    /// The transport gave up on it; its task is ending and will report the close.
    killed: bool,
    /// What it had queued when it was killed: counted in [`Counters::queued`] until its task
    /// ends, but already on its way out, so not shed twice.
    dying: usize,
}

/// A [`Transport`] that accepts WebSocket connections on a TCP listener.
///
/// Must be created inside a tokio runtime; it spawns its tasks there. Dropping it stops accepting
/// and ends every connection.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use peer_signal::{SignalConfig, WsConfig, WsTransport};
///
/// let config = SignalConfig::default();
/// let transport = WsTransport::bind("0.0.0.0:8765", WsConfig::for_server(&config)).await?;
/// println!("listening on {}", transport.local_addr());
/// # Ok(()) }
/// ```
pub struct WsTransport {
    events: mpsc::Receiver<Event>,
    conns: ConnMap<ConnHandle>,
    /// Connections the transport found busy, reported before anything else.
    local: VecDeque<TransportEvent>,
    /// Connections the core closed whose tasks have not ended yet: what they still hold queued
    /// is released from [`Counters::queued`] when they do.
    closing: ConnMap<(Arc<Shared>, usize)>,
    /// [`WsConfig::send_backlog_bytes`].
    backlog_bytes: usize,
    /// [`WsConfig::send_budget_bytes`].
    budget: usize,
    /// Bytes queued by killed connections whose tasks have not ended yet.
    dying: usize,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    stats: WsStatsHandle,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl WsTransport {
    /// What a connection task reported, as the transport's event; `None` for the frames and
    /// closes of connections already closed here, which are stale.
    fn take(&mut self, event: Event) -> Option<TransportEvent> {
        match event {
            Event::Opened { conn, codec, addr, handle } => {
                self.conns.insert(conn, handle);
                Some(TransportEvent::Opened { conn, codec, addr: Some(addr) })
            }
            Event::Frame { conn, frame } if self.conns.contains_key(&conn) => {
                Some(TransportEvent::Frame { conn, frame })
            }
            Event::Busy { conn, busy } if self.conns.contains_key(&conn) => {
                Some(TransportEvent::Busy { conn, busy })
            }
            Event::Closed { conn } => {
                // The task has ended: nothing more is written, and what it did not write is freed.
                let (shared, dying, open) = match self.conns.remove(&conn) {
                    Some(handle) => (handle.shared, handle.dying, true),
                    None => {
                        let (shared, dying) = self.closing.remove(&conn)?;
                        (shared, dying, false)
                    }
                };
                self.dying = self.dying.saturating_sub(dying);
                let left = shared.queued.swap(0, Ordering::AcqRel);
                self.stats.0.queued.fetch_sub(left, Ordering::AcqRel);
                open.then_some(TransportEvent::Closed { conn })
            }
            Event::Frame { .. } | Event::Busy { .. } => None,
        }
    }

    /// Listens on `addr` and starts accepting connections.
    ///
    /// # Errors
    ///
    /// The error of binding the listener, or an [`InvalidInput`](std::io::ErrorKind::InvalidInput)
    /// error whose source is the [`ConfigError`] of [`WsConfig::validate`].
    pub async fn bind(addr: impl ToSocketAddrs, config: WsConfig) -> std::io::Result<Self> {
        config.validate().map_err(invalid_config)?;
        let mut last_error = None;
        for addr in tokio::net::lookup_host(addr).await? {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            // A restarted server can take its port back while old connections linger.
            socket.set_reuseaddr(true)?;
            match socket.bind(addr).and_then(|()| socket.listen(config.listen_backlog)) {
                Ok(listener) => return Self::from_listener(listener, config),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")))
    }

    /// Starts accepting connections on a listener that is already bound.
    ///
    /// # Errors
    ///
    /// The error of reading the listener's local address, or an invalid configuration as for
    /// [`bind`](Self::bind).
    pub fn from_listener(listener: TcpListener, config: WsConfig) -> std::io::Result<Self> {
        config.validate().map_err(invalid_config)?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(config.event_queue.max(1));
        let stats = WsStatsHandle::default();
        let (backlog_bytes, budget) = (config.send_backlog_bytes, config.send_budget_bytes);
        let meter = SendQueueMeter::new();
        let accept = tokio::spawn(accept_loop(listener, Arc::new(config), events_tx, stats.0.clone(), meter));
        Ok(Self {
            events,
            conns: ConnMap::default(),
            closing: ConnMap::default(),
            local: VecDeque::new(),
            backlog_bytes,
            budget,
            dying: 0,
            local_addr,
            accept,
            stats,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the transport's counters, which stays valid after the transport moved into
    /// a driver.
    pub fn stats_handle(&self) -> WsStatsHandle {
        self.stats.clone()
    }

    /// Open WebSocket connections (after the handshake) that the transport has reported.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Ends `conn` at once, without a closing handshake: its queue is full (`slow`, counted as a
    /// slow reader), or its task has already ended (and counted why). Its close is reported when
    /// its task says so, after the frames it read before: reporting it here, ahead of them,
    /// would make the core drop them as frames of a connection it has forgotten.
    fn kill(&mut self, conn: ConnId, slow: bool) {
        if let Some(handle) = self.conns.get_mut(&conn).filter(|handle| !handle.killed) {
            handle.killed = true;
            handle.dying = handle.shared.queued.load(Ordering::Acquire);
            self.dying = self.dying.saturating_add(handle.dying);
            handle.shared.kill.notify_one();
            if slow {
                Counters::bump(&self.stats.0.slow_readers);
                telemetry::ws::slow_reader(conn);
            }
        }
    }

    /// All queues together hold `total` bytes, over [`WsConfig::send_budget_bytes`] even without
    /// those of connections already killed: ends the connections that hold most until the rest
    /// fits. A scan of every connection, but only when the budget is exceeded, and each scan
    /// frees at least the excess.
    fn shed(&mut self, total: usize) {
        let mut excess = total.saturating_sub(self.dying).saturating_sub(self.budget);
        if excess == 0 {
            return;
        }
        let mut holders: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, handle)| !handle.killed)
            .map(|(conn, handle)| (handle.shared.queued.load(Ordering::Acquire), *conn))
            .filter(|&(held, _)| held > 0)
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (held, conn) in holders {
            if excess == 0 {
                break;
            }
            self.kill(conn, false);
            Counters::bump(&self.stats.0.shed);
            telemetry::ws::slow_reader(conn);
            excess = excess.saturating_sub(held);
        }
    }
}

fn invalid_config(error: ConfigError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
}

/// Stops accepting and ends the connections still open at once. Connections that were asked to
/// close finish their closing handshake on their own, within bounded time; wait for them with
/// [`WsStatsHandle::all_ended`].
impl Drop for WsTransport {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in self.conns.values() {
            handle.shared.kill.notify_one();
        }
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn next_event(&mut self) -> Option<TransportEvent> {
        if let Some(event) = self.local.pop_front() {
            return Some(event);
        }
        loop {
            let event = self.events.recv().await?;
            if let Some(event) = self.take(event) {
                return Some(event);
            }
        }
    }

    fn try_next_event(&mut self) -> Option<TransportEvent> {
        if let Some(event) = self.local.pop_front() {
            return Some(event);
        }
        loop {
            let event = self.events.try_recv().ok()?;
            if let Some(event) = self.take(event) {
                return Some(event);
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
        let handle =
            self.conns.get_mut(&conn).filter(|handle| !handle.killed).ok_or(TransportError::Closed(conn))?;
        let len = frame.len();
        let total = &self.stats.0.queued;
        // Counted before the frame is in the queue, so the task never writes uncounted bytes.
        let queued = handle.shared.queued.fetch_add(len, Ordering::AcqRel).saturating_add(len);
        let all = total.fetch_add(len, Ordering::AcqRel).saturating_add(len);
        // Over the byte bound, or a full queue: a slow reader. A closed queue: a task that just
        // ended, whose close is on its way.
        let refused = if queued > self.backlog_bytes {
            Some(true)
        } else {
            handle.queue.try_send(Outbound::Frame(frame, Stamp::now())).err().map(|e| e.is_full())
        };
        if let Some(slow) = refused {
            // Never queued: uncounted again.
            handle.shared.queued.fetch_sub(len, Ordering::AcqRel);
            total.fetch_sub(len, Ordering::AcqRel);
            self.kill(conn, slow);
            return Err(TransportError::Closed(conn));
        }
        if queued > self.backlog_bytes / 2 && !handle.shared.busy.swap(true, Ordering::AcqRel) {
            self.local.push_back(TransportEvent::Busy { conn, busy: true });
        }
        if all > self.budget {
            self.shed(all);
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(mut handle) = self.conns.remove(&conn) {
            if handle.queue.try_send(Outbound::Close(reason)).is_err() {
                handle.shared.kill.notify_one();
            }
            self.closing.insert(conn, (handle.shared, handle.dying));
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<WsConfig>,
    events: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    send_queue: SendQueueMeter,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_ip =
        config.max_connections_per_ip.map(|limit| Arc::new(PerIp::new(limit, config.ipv6_source_prefix)));
    let mut accept_rate = config.accept_rate_per_ip.map(|(per_sec, burst)| {
        AcceptRate::new(per_sec, burst, config.ipv6_source_prefix, ACCEPT_RATE_SOURCES)
    });
    let upgrades = Arc::new(Upgrades::default());
    let mut next_id = 0u64;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(_) => {
                // Out of file descriptors or similar: back off instead of spinning, longer while
                // it lasts.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        Counters::bump(&counters.accepted);
        // A connection from a trusted proxy is counted under its client, once the request names it.
        let proxied = is_trusted(&config, peer.ip());
        if let Some(rate) = accept_rate.as_mut().filter(|_| !proxied) {
            if !rate.allow(peer.ip(), tokio::time::Instant::now()) {
                Counters::bump(&counters.refused_rate);
                telemetry::ws::refused(peer, peer.ip(), "accept_rate_per_ip");
                continue;
            }
        }
        let ip_slot = match &per_ip {
            Some(per_ip) if !proxied => match PerIp::acquire(per_ip, peer.ip()) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    Counters::bump(&counters.refused_per_ip);
                    telemetry::ws::refused(peer, peer.ip(), "max_connections_per_ip");
                    continue;
                }
            },
            _ => None,
        };
        if upgrades.len() >= config.max_pending_upgrades && upgrades.evict_oldest().is_some() {
            Counters::bump(&counters.evicted_handshakes);
        }
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            // Full: the oldest connection still in its handshake gives its place up, or the
            // newcomer is dropped, which closes it.
            Err(_) => match upgrades.evict_oldest() {
                Some(slot) => {
                    Counters::bump(&counters.evicted_handshakes);
                    slot
                }
                None => {
                    Counters::bump(&counters.refused);
                    telemetry::ws::refused(peer, peer.ip(), "max_connections");
                    continue;
                }
            },
        };
        next_id += 1;
        let conn = ConnId::new(next_id);
        let ticket = Upgrades::register(&upgrades, next_id, slot);
        let (config, events, send_queue) = (config.clone(), events.clone(), send_queue.clone());
        let guard = TaskGuard::new(&counters);
        let slots = Slots { ip: ip_slot, per_ip: per_ip.clone().filter(|_| proxied) };
        let opened = Opened { stream, peer, conn, send_queue };
        tokio::spawn(async move { serve_connection(opened, &config, events, guard, ticket, slots).await });
    }
}

/// Sources whose accept rate is tracked at once; see [`AcceptRate`].
const ACCEPT_RATE_SOURCES: usize = 65_536;

/// A connection's place under `max_connections_per_ip`: taken at `accept`, or for a connection
/// from a trusted proxy, once its request names the client (`per_ip` is then where to take it).
/// Its place under `max_connections` is its [`Ticket`]'s until the handshake is done.
struct Slots {
    ip: Option<IpSlot>,
    per_ip: Option<Arc<PerIp>>,
}

fn is_trusted(config: &WsConfig, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    config.trusted_proxies.iter().any(|proxy| proxy.to_canonical() == ip)
}

/// The client of a connection from `peer`: walking `X-Forwarded-For` from the right (the hop
/// nearest to us), the first address that is not a trusted proxy. Stops at an entry that is not
/// an address, keeping the last good one; with no header, or from an untrusted peer, the peer.
fn client_address(config: &WsConfig, peer: IpAddr, forwarded_for: Option<&str>) -> IpAddr {
    let mut client = peer;
    let Some(forwarded) = forwarded_for.filter(|_| is_trusted(config, peer)) else { return peer };
    for hop in forwarded.rsplit(',') {
        let hop = hop.trim();
        let Some(ip) = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
        else {
            break;
        };
        client = ip;
        if !is_trusted(config, ip) {
            break;
        }
    }
    client
}

/// The first wait after an `accept` error, doubled while errors go on, up to the second.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A TCP connection just accepted, and what its task needs to know about it.
struct Opened {
    stream: TcpStream,
    peer: SocketAddr,
    conn: ConnId,
    send_queue: SendQueueMeter,
}

async fn serve_connection(
    opened: Opened,
    config: &WsConfig,
    events: mpsc::Sender<Event>,
    guard: TaskGuard,
    ticket: Ticket,
    mut slots: Slots,
) {
    let Opened { stream, peer, conn, send_queue } = opened;
    let counters = &guard.0;
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::new();
    let handshake = async {
        let mut link = open_link(stream, config).await.ok_or(Refusal::Io)?;
        let upgrade = handshake::read_request(&mut link, &mut buf).await?;
        let client = client_address(config, peer.ip(), upgrade.forwarded_for.as_deref());
        if let Some(per_ip) = &slots.per_ip {
            match PerIp::acquire(per_ip, client) {
                Some(ip_slot) => slots.ip = Some(ip_slot),
                None => {
                    Counters::bump(&counters.refused_per_ip);
                    telemetry::ws::refused(peer, client, "max_connections_per_ip");
                    return handshake::refuse(&mut link, "429 Too Many Requests").await;
                }
            }
        }
        if let Some(hook) = &config.admission {
            let request = UpgradeRequest { path: &upgrade.path, headers: &upgrade.headers, peer, client };
            if let Admission::Refuse { status, reason } = hook.decide(&request) {
                Counters::bump(&counters.refused_admission);
                telemetry::ws::refused(peer, client, "admission");
                let response = admission::refusal_response(status, &reason);
                if link.write_all(response.as_bytes()).await.is_ok() {
                    link.shutdown().await;
                }
                return Err(Refusal::Admission);
            }
        }
        Ok((link, handshake::accept(&upgrade), upgrade.codec, client))
    };
    let handshake = tokio::time::timeout(config.handshake_timeout, handshake);
    let finished = tokio::select! {
        biased;
        // Counted by whoever ended it to make room.
        () = ticket.evicted() => return,
        finished = handshake => finished,
    };
    let (link, response, codec, client) = match finished {
        Ok(Ok(opened)) => opened,
        // Counted as they were refused.
        Ok(Err(Refusal::Http("429 Too Many Requests") | Refusal::Admission)) => return,
        failed => {
            Counters::bump(&counters.failed_handshakes);
            telemetry::ws::handshake_failed(peer, failed.is_err());
            return; // Never became a WebSocket: the core never hears of it.
        }
    };
    // Made room for a newer connection just as its own handshake finished.
    let Some(place) = ticket.finish() else { return };

    // Capacity is `buffer` plus one per sender, and there is one sender.
    let (queue, outbound) = futures::channel::mpsc::channel(config.send_backlog.saturating_sub(1));
    let shared = Arc::new(Shared::default());
    let handle = ConnHandle { queue, shared: Arc::clone(&shared), killed: false, dying: 0 };
    if events.send(Event::Opened { conn, codec, addr: client, handle }).await.is_err() {
        return;
    }
    telemetry::ws::opened(conn, peer, client, codec);
    // The driver has just been woken by `Opened`; giving it its turn first lets the core's first
    // frames (the challenge) join the response in the connection's first write.
    tokio::task::yield_now().await;
    let connection =
        Connection { conn, peer, codec, config, shared: &shared, events: &events, counters, send_queue };
    let end = connection.run(link, response, buf, outbound).await;
    telemetry::ws::ended(conn, peer, end.name());
    let counter = match end {
        End::Closed => Some(&counters.clean_closes),
        End::Oversize => Some(&counters.oversize),
        End::PingTimeout => Some(&counters.ping_timeouts),
        End::WriteTimeout => Some(&counters.slow_readers),
        End::Violation => Some(&counters.protocol_violations),
        End::Gone | End::Killed | End::Error => None,
    };
    if let Some(counter) = counter {
        Counters::bump(counter);
    }
    // Given back before the close is reported, so that whoever sees the close can reconnect.
    drop((slots, place));
    let _ = events.send(Event::Closed { conn }).await;
}

/// The stream a connection's WebSocket runs on: TCP, or TLS over it once its handshake is done.
async fn open_link(stream: TcpStream, config: &WsConfig) -> Option<Link> {
    #[cfg(feature = "tls")]
    if let Some(tls) = &config.tls {
        let mut link = link::tls::TlsLink::new(stream, tls.config()).ok()?;
        link.handshake().await.ok()?;
        return Some(Link::Tls(Box::new(link)));
    }
    #[cfg(not(feature = "tls"))]
    let _ = config;
    Some(Link::Plain(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_nearest_forwarded_address_that_is_not_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let config =
            WsConfig { trusted_proxies: vec![ip("10.0.0.1"), ip("10.0.0.2")], ..WsConfig::default() };
        let client = |peer: &str, header: Option<&str>| client_address(&config, ip(peer), header);
        // Through one proxy, and through two (the second one trusted too).
        assert_eq!(client("10.0.0.1", Some("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.1", Some("203.0.113.7, 10.0.0.2")), ip("203.0.113.7"));
        // Whatever the client wrote in the header itself stands left of the address the proxy saw.
        assert_eq!(client("10.0.0.1", Some("1.1.1.1, 203.0.113.7")), ip("203.0.113.7"));
        // Ports and IPv6 addresses, with and without brackets; IPv4-mapped proxies.
        assert_eq!(client("10.0.0.1", Some("203.0.113.7:4711")), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.1", Some("2001:db8::7")), ip("2001:db8::7"));
        assert_eq!(client("10.0.0.1", Some("[2001:db8::7]:4711")), ip("2001:db8::7"));
        assert_eq!(client("::ffff:10.0.0.1", Some("203.0.113.7")), ip("203.0.113.7"));
        // Not an address: the last good hop counts (here the trusted proxy itself).
        assert_eq!(client("10.0.0.1", Some("203.0.113.7, junk, 10.0.0.2")), ip("10.0.0.2"));
        assert_eq!(client("10.0.0.1", Some("junk")), ip("10.0.0.1"));
        // From anyone else, or without the header, the peer.
        assert_eq!(client("192.0.2.9", Some("203.0.113.7")), ip("192.0.2.9"));
        assert_eq!(client("10.0.0.1", None), ip("10.0.0.1"));
    }
}
