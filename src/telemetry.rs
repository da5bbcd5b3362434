//! Metrics and trace events, each behind its cargo feature: counters, gauges and histograms
//! through the `metrics` facade (feature `metrics`); joins, leaves, refusals and errors as
//! `tracing` events (feature `tracing`).
//!
//! Without its feature every item here is empty and every function does nothing, so the callers
//! carry no `cfg` and pay nothing. The core stays sans-IO: nothing here reads the clock or does
//! I/O, and a duration is the difference of two instants the core was handed. The relay path adds
//! to counters whose handles were registered once, when the server was made: no lookup, no
//! allocation and no label built per frame. The names are listed in the crate docs.
//!
//! The facade's recorder and the tracing dispatcher are globals, the one thing the crate otherwise
//! stays away from (callbacks and global meters in the core). They are opt-in, by feature, and
//! only observe: [`ServerStats`](crate::ServerStats) and [`SignalEvent`](crate::SignalEvent)
//! remain how an application learns what happened.

use std::net::IpAddr;
use std::time::Duration;
#[cfg(all(feature = "metrics", feature = "websocket"))]
use web_time::Instant;

use crate::error::ProtocolError;
use crate::ids::ConnId;
use crate::protocol::NodeID;

// The names, one place for each. `_total` ends a counter, `_bytes` and `_seconds` give the unit.
#[cfg(feature = "metrics")]
pub(crate) mod names {
    pub(super) const CONNECTIONS: &str = "peer_signal_connections";
    pub(super) const NODES: &str = "peer_signal_nodes";
    pub(super) const PENDING: &str = "peer_signal_pending_handshakes";
    pub(super) const FRAMES_IN: &str = "peer_signal_received_frames_total";
    pub(super) const BYTES_IN: &str = "peer_signal_received_bytes_total";
    pub(super) const FRAMES_OUT: &str = "peer_signal_sent_frames_total";
    pub(super) const BYTES_OUT: &str = "peer_signal_sent_bytes_total";
    pub(super) const RELAYS: &str = "peer_signal_relays_total";
    pub(super) const JOINS: &str = "peer_signal_joins_total";
    pub(super) const LEAVES: &str = "peer_signal_leaves_total";
    pub(super) const EVICTIONS: &str = "peer_signal_evictions_total";
    pub(super) const TURN_CREDENTIALS: &str = "peer_signal_turn_credentials_total";
    pub(super) const ERRORS: &str = "peer_signal_errors_total";
    pub(super) const ANNOUNCE: &str = "peer_signal_announce_duration_seconds";
    pub(super) const DROPPED_EVENTS: &str = "peer_signal_dropped_events_total";
    pub(super) const CLUSTER_RELAYS_OUT: &str = "peer_signal_cluster_relays_out_total";
    pub(super) const CLUSTER_RELAYS_IN: &str = "peer_signal_cluster_relays_in_total";
    pub(super) const CLUSTER_UNDELIVERABLE: &str = "peer_signal_cluster_undeliverable_total";
    pub(super) const CLUSTER_BOUNCED: &str = "peer_signal_cluster_bounced_total";
    pub(crate) const CLUSTER_REJECTED: &str = "peer_signal_cluster_rejected_total";
    pub(super) const CLUSTER_TAKEN_OVER: &str = "peer_signal_cluster_taken_over_total";
    pub(super) const CLUSTER_POOL: &str = "peer_signal_cluster_pool";
    pub(super) const CLUSTER_REMOTE_NODES: &str = "peer_signal_cluster_remote_nodes";
    #[cfg(feature = "websocket")]
    pub(super) const WS_SEND_QUEUE: &str = "peer_signal_ws_send_queue_seconds";
}
#[cfg(feature = "metrics")]
use names::*;

/// Where the core's events come from, for filters (`RUST_LOG=peer_signal::server=debug`).
#[cfg(feature = "tracing")]
const SERVER: &str = "peer_signal::server";

/// The core's metric handles, and the sizes it last reported to the gauges.
///
/// Gauges move by the difference to what this server reported before, rather than being set, so
/// that several servers in one process add up instead of overwriting each other.
#[derive(Default)]
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    on: Option<Box<Handles>>,
}

#[cfg(feature = "metrics")]
struct Handles {
    frames_in: metrics::Counter,
    bytes_in: metrics::Counter,
    frames_out: metrics::Counter,
    bytes_out: metrics::Counter,
    relays: metrics::Counter,
    joins: metrics::Counter,
    leaves: metrics::Counter,
    evictions: metrics::Counter,
    turn_credentials: metrics::Counter,
    /// By [`ProtocolError::kind`], registered at the first error of each kind.
    errors: Vec<(&'static str, metrics::Counter)>,
    announce: metrics::Histogram,
    sizes: [(metrics::Gauge, u64); 3],
    cluster: Option<ClusterHandles>,
}

#[cfg(feature = "metrics")]
struct ClusterHandles {
    relays_out: metrics::Counter,
    relays_in: metrics::Counter,
    undeliverable: metrics::Counter,
    bounced: metrics::Counter,
    rejected: metrics::Counter,
    taken_over: metrics::Counter,
    sizes: [(metrics::Gauge, u64); 2],
}

impl Meters {
    /// Registers the core's metrics with the recorder installed now (feature `metrics`): a
    /// recorder installed later does not see this server.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            use metrics::{
                counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit,
            };
            describe_gauge!(CONNECTIONS, "Open connections, announced or not.");
            describe_gauge!(NODES, "Announced nodes.");
            describe_gauge!(PENDING, "Connections that have not announced yet.");
            describe_counter!(FRAMES_IN, "Frames received from nodes.");
            describe_counter!(BYTES_IN, Unit::Bytes, "Bytes received from nodes, in frames.");
            describe_counter!(FRAMES_OUT, "Frames sent to nodes.");
            describe_counter!(BYTES_OUT, Unit::Bytes, "Bytes sent to nodes, in frames.");
            describe_counter!(RELAYS, "PeerSetup messages forwarded to a local node.");
            describe_counter!(JOINS, "Successful announces.");
            describe_counter!(LEAVES, "Announced nodes that disconnected, were closed or were replaced.");
            describe_counter!(EVICTIONS, "Nodes closed for being idle longer than the TTL.");
            describe_counter!(TURN_CREDENTIALS, "TURN credentials issued to signed-in nodes.");
            describe_counter!(ERRORS, "Error replies, by reason.");
            describe_counter!(DROPPED_EVENTS, "Application events dropped because nobody read them.");
            // Registered now, so that it is exported as zero until the first drop.
            let _ = counter!(DROPPED_EVENTS);
            describe_histogram!(
                ANNOUNCE,
                Unit::Seconds,
                "From a connection's challenge to its accepted announce, in the server's time."
            );
            Self {
                on: Some(Box::new(Handles {
                    frames_in: counter!(FRAMES_IN),
                    bytes_in: counter!(BYTES_IN),
                    frames_out: counter!(FRAMES_OUT),
                    bytes_out: counter!(BYTES_OUT),
                    relays: counter!(RELAYS),
                    joins: counter!(JOINS),
                    leaves: counter!(LEAVES),
                    evictions: counter!(EVICTIONS),
                    turn_credentials: counter!(TURN_CREDENTIALS),
                    errors: Vec::new(),
                    announce: histogram!(ANNOUNCE),
                    sizes: [(gauge!(CONNECTIONS), 0), (gauge!(NODES), 0), (gauge!(PENDING), 0)],
                    cluster: None,
                })),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self::default()
    }

    /// Adds the metrics of a server that shares its network with other instances.
    pub(crate) fn with_cluster(&mut self) {
        #[cfg(feature = "metrics")]
        if let Some(on) = self.on.as_mut() {
            use metrics::{counter, describe_counter, describe_gauge, gauge};
            describe_counter!(CLUSTER_RELAYS_OUT, "Set-ups handed to other instances.");
            describe_counter!(CLUSTER_RELAYS_IN, "Set-ups from other instances delivered here.");
            describe_counter!(CLUSTER_UNDELIVERABLE, "Set-ups from local nodes that reached no instance.");
            describe_counter!(CLUSTER_BOUNCED, "Set-ups from other instances for nodes gone or busy here.");
            describe_counter!(CLUSTER_REJECTED, "Bus inputs refused by the checks, by where.");
            describe_counter!(CLUSTER_TAKEN_OVER, "Local nodes replaced by a newer connection elsewhere.");
            describe_gauge!(CLUSTER_POOL, "Remote nodes in the pool for lists.");
            describe_gauge!(CLUSTER_REMOTE_NODES, "Nodes on other instances, as last sampled.");
            on.cluster = Some(ClusterHandles {
                relays_out: counter!(CLUSTER_RELAYS_OUT),
                relays_in: counter!(CLUSTER_RELAYS_IN),
                undeliverable: counter!(CLUSTER_UNDELIVERABLE),
                bounced: counter!(CLUSTER_BOUNCED),
                rejected: counter!(CLUSTER_REJECTED, "stage" => "server"),
                taken_over: counter!(CLUSTER_TAKEN_OVER),
                sizes: [(gauge!(CLUSTER_POOL), 0), (gauge!(CLUSTER_REMOTE_NODES), 0)],
            });
        }
    }

    /// A frame of `len` bytes arrived.
    #[inline]
    pub(crate) fn frame_in(&self, len: usize) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.frames_in.increment(1);
            on.bytes_in.increment(len as u64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = len;
    }

    /// A frame of `len` bytes goes out.
    #[inline]
    pub(crate) fn frame_out(&self, len: usize) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.frames_out.increment(1);
            on.bytes_out.increment(len as u64);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = len;
    }

    /// A `PeerSetup` was forwarded to a local node.
    #[inline]
    pub(crate) fn relay(&self) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.relays.increment(1);
        }
    }

    /// A node got TURN credentials.
    pub(crate) fn turn_issued(&self) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.turn_credentials.increment(1);
        }
    }

    /// `id` announced on `conn` (from `addr`), `waited` after its challenge.
    pub(crate) fn joined(&self, conn: ConnId, addr: Option<IpAddr>, id: &NodeID, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.joins.increment(1);
            on.announce.record(waited.as_secs_f64());
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(target: SERVER, conn = conn.get(), addr = addr.map(tracing::field::display), node = %id, waited = ?waited, "node joined");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, addr, id, waited);
    }

    /// `id` on `conn` (from `addr`) is gone.
    pub(crate) fn left(&self, conn: ConnId, addr: Option<IpAddr>, id: &NodeID) {
        #[cfg(feature = "metrics")]
        if let Some(on) = &self.on {
            on.leaves.increment(1);
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(target: SERVER, conn = conn.get(), addr = addr.map(tracing::field::display), node = %id, "node left");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, addr, id);
    }

    /// `conn` (from `addr`) was sent `error`.
    pub(crate) fn error(&mut self, conn: ConnId, addr: Option<IpAddr>, error: &ProtocolError) {
        let kind = error.kind();
        #[cfg(feature = "metrics")]
        if let Some(on) = self.on.as_mut() {
            if let Some((_, counter)) = on.errors.iter().find(|(k, _)| *k == kind) {
                counter.increment(1);
            } else {
                let counter = metrics::counter!(ERRORS, "reason" => kind);
                counter.increment(1);
                on.errors.push((kind, counter));
            }
            if matches!(error, ProtocolError::IdleTimeout) {
                on.evictions.increment(1);
            }
        }
        #[cfg(feature = "tracing")]
        tracing::debug!(target: SERVER, conn = conn.get(), addr = addr.map(tracing::field::display), reason = kind, error = %Printable(&error.to_string()), "error reply");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, addr, kind);
    }

    /// The server closes `conn` (from `addr`) for `error`, just sent to it.
    pub(crate) fn closed(&self, conn: ConnId, addr: Option<IpAddr>, error: &ProtocolError) {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: SERVER, conn = conn.get(), addr = addr.map(tracing::field::display), reason = error.kind(), "closing the connection");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, addr, error);
    }

    /// The sizes now: open connections, announced nodes, pending handshakes. Cheap when nothing
    /// changed: three comparisons.
    #[inline]
    pub(crate) fn sizes(&mut self, connections: usize, nodes: usize, pending: usize) {
        #[cfg(feature = "metrics")]
        if let Some(on) = self.on.as_mut() {
            for ((gauge, reported), now) in on.sizes.iter_mut().zip([connections, nodes, pending]) {
                move_gauge(gauge, reported, now as u64);
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (connections, nodes, pending);
    }

    /// The cluster's sizes now: remote nodes in the pool, remote nodes in all.
    #[inline]
    pub(crate) fn cluster_sizes(&mut self, pool: usize, remote: u64) {
        #[cfg(feature = "metrics")]
        if let Some(cluster) = self.on.as_mut().and_then(|on| on.cluster.as_mut()) {
            let [(pool_gauge, reported_pool), (remote_gauge, reported_remote)] = &mut cluster.sizes;
            move_gauge(pool_gauge, reported_pool, pool as u64);
            move_gauge(remote_gauge, reported_remote, remote);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (pool, remote);
    }

    /// A cluster counter moved by `n`.
    #[inline]
    pub(crate) fn cluster(&self, what: ClusterCount, n: u64) {
        #[cfg(feature = "metrics")]
        if let Some(cluster) = self.on.as_ref().and_then(|on| on.cluster.as_ref()) {
            let counter = match what {
                ClusterCount::RelayOut => &cluster.relays_out,
                ClusterCount::RelayIn => &cluster.relays_in,
                ClusterCount::Undeliverable => &cluster.undeliverable,
                ClusterCount::Bounced => &cluster.bounced,
                ClusterCount::Rejected => &cluster.rejected,
                ClusterCount::TakenOver => &cluster.taken_over,
            };
            counter.increment(n);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (what, n);
    }
}

/// Which cluster counter; see [`ClusterStats`](crate::ClusterStats) for each one's meaning.
#[derive(Clone, Copy)]
pub(crate) enum ClusterCount {
    RelayOut,
    RelayIn,
    Undeliverable,
    Bounced,
    Rejected,
    TakenOver,
}

/// Moves `gauge` from `reported` to `now`, and remembers `now`.
#[cfg(feature = "metrics")]
#[inline]
fn move_gauge(gauge: &metrics::Gauge, reported: &mut u64, now: u64) {
    if now > *reported {
        gauge.increment((now - *reported) as f64);
    } else if now < *reported {
        gauge.decrement((*reported - now) as f64);
    }
    *reported = now;
}

/// An event for the application was dropped: nobody read them fast enough.
pub(crate) fn event_dropped() {
    #[cfg(feature = "metrics")]
    metrics::counter!(DROPPED_EVENTS).increment(1);
    #[cfg(feature = "tracing")]
    tracing::debug!(target: "peer_signal::driver", "application event dropped: the event stream is full");
}

/// The application's announce policy panicked while deciding on `conn`; the node was denied.
///
/// A policy that panics on every announce would write a line per announce: the first
/// [`EVERY_LINE_UP_TO`] are logged, then the 100th, the 1,000th and so on, each with the count.
pub(crate) fn policy_panicked(conn: ConnId) {
    #[cfg(feature = "tracing")]
    {
        static PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed).saturating_add(1);
        if sparse(count) {
            tracing::error!(target: SERVER, conn = conn.get(), count, "announce policy panicked: the node was denied");
        }
    }
    #[cfg(not(feature = "tracing"))]
    let _ = conn;
}

/// Lines of one kind logged one by one; past them, only the powers of ten.
#[cfg(feature = "tracing")]
const EVERY_LINE_UP_TO: u64 = 10;

/// Whether the `count`th line of a kind is logged: the first [`EVERY_LINE_UP_TO`], then each
/// power of ten. A count that only grows, without a clock.
#[cfg(feature = "tracing")]
fn sparse(count: u64) -> bool {
    if count <= EVERY_LINE_UP_TO {
        return true;
    }
    let mut power = EVERY_LINE_UP_TO;
    while power < count {
        let Some(next) = power.checked_mul(10) else { return false };
        power = next;
    }
    power == count
}

/// A budget for log lines that peers can cause as often as they like (refused connections,
/// joins and leaves of nodes that come and go): at most `lines` of each kind in every `window`.
/// What is over the budget is meant for a lower level (`debug`), and the next line of that kind
/// that passes carries how many were held back, so that the lines at the higher level still
/// account for every event (feature `tracing`).
///
/// The WebSocket transport logs its refusals at `info` through one with
/// [`LogThrottle::LINES`] and [`LogThrottle::WINDOW`]; `ws_server` its joins and leaves.
///
/// ```
/// use std::time::{Duration, Instant};
/// use peer_signal::{LogAdmit, LogThrottle};
///
/// static JOINS: LogThrottle = LogThrottle::new(LogThrottle::LINES, LogThrottle::WINDOW);
/// match JOINS.admit("joined", Instant::now()) {
///     LogAdmit::Pass { suppressed: 0 } => { /* info!("node joined") */ }
///     LogAdmit::Pass { suppressed } => { /* info!(suppressed, "node joined") */ }
///     _ => { /* held back: debug!("node joined") */ }
/// }
/// ```
#[cfg(feature = "tracing")]
#[derive(Debug)]
pub struct LogThrottle {
    lines: u32,
    window: Duration,
    kinds: std::sync::Mutex<Vec<(&'static str, Window)>>,
}

#[cfg(feature = "tracing")]
#[derive(Debug)]
struct Window {
    start: web_time::Instant,
    passed: u32,
    suppressed: u64,
}

/// Whether a line may go out at its level, from [`LogThrottle::admit`].
#[cfg(feature = "tracing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogAdmit {
    /// Log it at its level, saying how many lines of its kind were held back since the last one
    /// that passed (when that is not zero).
    Pass {
        /// Lines of this kind held back since the last one that passed.
        suppressed: u64,
    },
    /// Over the budget of this window: log it at a lower level, or not at all.
    Hold,
}

#[cfg(feature = "tracing")]
impl LogThrottle {
    /// The default budget: 20 lines of a kind per window. Enough to see a host that keeps
    /// trying (fail2ban bans after a handful of lines), few enough that a flood from many hosts
    /// writes two lines a second of each kind, not one per connection.
    pub const LINES: u32 = 20;
    /// The default window: 10 s.
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// At most `lines` lines of each kind per `window`; `lines` 0 holds every line back.
    pub const fn new(lines: u32, window: Duration) -> Self {
        Self { lines, window, kinds: std::sync::Mutex::new(Vec::new()) }
    }

    /// Whether a line of `kind` may go out at `now`. Kinds are meant to be a few names fixed in
    /// the code (a reason, an event), not text from peers: each has its own budget, kept for
    /// the throttle's life.
    pub fn admit(&self, kind: &'static str, now: web_time::Instant) -> LogAdmit {
        let mut kinds = self.kinds.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let index = match kinds.iter().position(|(k, _)| *k == kind) {
            Some(index) => index,
            None => {
                kinds.push((kind, Window { start: now, passed: 0, suppressed: 0 }));
                kinds.len() - 1
            }
        };
        let Some((_, window)) = kinds.get_mut(index) else { return LogAdmit::Hold };
        if now.saturating_duration_since(window.start) >= self.window {
            window.start = now;
            window.passed = 0;
        }
        if window.passed < self.lines {
            window.passed += 1;
            LogAdmit::Pass { suppressed: std::mem::take(&mut window.suppressed) }
        } else {
            window.suppressed = window.suppressed.saturating_add(1);
            LogAdmit::Hold
        }
    }
}

/// Text from a peer, with control characters escaped, so that it cannot forge log lines.
#[cfg(feature = "tracing")]
struct Printable<'a>(&'a str);

#[cfg(feature = "tracing")]
impl std::fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            if unsafe_in_logs(c) {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

/// Characters that could forge or hide a log line when printed as they are: control characters
/// (newlines, ANSI escapes, C1 controls), the Unicode line and paragraph separators, and the
/// bidirectional overrides and isolates that reorder what a terminal shows.
#[cfg(feature = "tracing")]
fn unsafe_in_logs(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// When a frame entered a connection's send queue: an instant with feature `metrics`, nothing
/// without.
#[cfg(feature = "websocket")]
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stamp {
    #[cfg(feature = "metrics")]
    at: Option<Instant>,
}

#[cfg(feature = "websocket")]
impl Stamp {
    /// Now, if the time is measured at all.
    #[inline]
    pub(crate) fn now() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            at: Some(Instant::now()),
        }
    }
}

/// The histogram of how long frames waited in a WebSocket connection's send queue.
#[cfg(feature = "websocket")]
#[derive(Clone, Debug)]
pub(crate) struct SendQueueMeter {
    #[cfg(feature = "metrics")]
    histogram: metrics::Histogram,
}

#[cfg(feature = "websocket")]
impl SendQueueMeter {
    /// Registers the histogram with the recorder installed now.
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        metrics::describe_histogram!(
            WS_SEND_QUEUE,
            metrics::Unit::Seconds,
            "How long a frame for a WebSocket connection waited, from the transport's send until the socket took its last byte."
        );
        Self {
            #[cfg(feature = "metrics")]
            histogram: metrics::histogram!(WS_SEND_QUEUE),
        }
    }

    /// A frame queued at `queued` was written by `written`.
    #[inline]
    pub(crate) fn written(&self, queued: Stamp, written: Stamp) {
        #[cfg(feature = "metrics")]
        if let (Some(queued), Some(written)) = (queued.at, written.at) {
            self.histogram.record(written.saturating_duration_since(queued).as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (queued, written);
    }
}

/// The WebSocket transport's events, each with the peer's address (the socket's; `client` is the
/// address that limits count, which differs from the peer's behind a trusted proxy) and, once the
/// connection has one, its id, which the core's events name too.
#[cfg(feature = "websocket")]
pub(crate) mod ws {
    use std::net::{IpAddr, SocketAddr};

    use crate::error::CloseReason;
    use crate::ids::ConnId;
    use crate::Codec;

    /// Where the transport's events come from, for filters (`RUST_LOG=peer_signal::websocket=debug`).
    #[cfg(feature = "tracing")]
    const WS: &str = "peer_signal::websocket";

    /// Refusals logged at `info`, per reason.
    #[cfg(feature = "tracing")]
    static REFUSALS: super::LogThrottle =
        super::LogThrottle::new(super::LogThrottle::LINES, super::LogThrottle::WINDOW);

    /// A connection refused before it became a WebSocket, for `why` (the limit's name). Logged at
    /// `info`: these are what an operator watches for (and what fail2ban reads). A peer can cause
    /// them as fast as it can connect, so at most [`LogThrottle::LINES`](super::LogThrottle::LINES)
    /// of each reason per [`LogThrottle::WINDOW`](super::LogThrottle::WINDOW) are; the others go
    /// to `debug`, and the next line at `info` carries their count as `suppressed`.
    pub(crate) fn refused(peer: SocketAddr, client: IpAddr, why: &'static str) {
        #[cfg(feature = "tracing")]
        match REFUSALS.admit(why, web_time::Instant::now()) {
            super::LogAdmit::Pass { suppressed: 0 } => {
                tracing::info!(target: WS, peer = %peer, client = %client, reason = why, "connection refused: {why}")
            }
            super::LogAdmit::Pass { suppressed } => {
                tracing::info!(target: WS, peer = %peer, client = %client, reason = why, suppressed, "connection refused: {why} ({suppressed} more since the last line)")
            }
            super::LogAdmit::Hold => {
                tracing::debug!(target: WS, peer = %peer, client = %client, reason = why, "connection refused: {why}")
            }
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (peer, client, why);
    }

    /// The TLS or WebSocket handshake failed, or did not finish in time.
    pub(crate) fn handshake_failed(peer: SocketAddr, timed_out: bool) {
        #[cfg(feature = "tracing")]
        if timed_out {
            tracing::debug!(target: WS, peer = %peer, reason = "handshake_timeout", "WebSocket handshake timed out");
        } else {
            tracing::debug!(target: WS, peer = %peer, reason = "handshake_failed", "WebSocket handshake failed");
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (peer, timed_out);
    }

    /// The handshake is done: from now on the core knows the connection as `conn`.
    pub(crate) fn opened(conn: ConnId, peer: SocketAddr, client: IpAddr, codec: Codec) {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: WS, conn = conn.get(), peer = %peer, client = %client, codec = ?codec, "connection opened");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, peer, client, codec);
    }

    /// The server closes `conn` for `reason`.
    pub(crate) fn closing(conn: ConnId, peer: SocketAddr, reason: &CloseReason) {
        #[cfg(feature = "tracing")]
        match reason {
            CloseReason::Error(error) => {
                tracing::debug!(target: WS, conn = conn.get(), peer = %peer, reason = error.kind(), "closing: {}", error.kind())
            }
            _ => tracing::trace!(target: WS, conn = conn.get(), peer = %peer, "closing: server stopping"),
        }
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, peer, reason);
    }

    /// `conn`'s send queue overflowed: it reads too slowly, and is ended.
    pub(crate) fn slow_reader(conn: ConnId) {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: WS, conn = conn.get(), reason = "slow_reader", "send queue full: ending the connection");
        #[cfg(not(feature = "tracing"))]
        let _ = conn;
    }

    /// `conn`'s task ended, `how` (a problem's name, or how a normal end went).
    pub(crate) fn ended(conn: ConnId, peer: SocketAddr, how: &'static str) {
        #[cfg(feature = "tracing")]
        tracing::debug!(target: WS, conn = conn.get(), peer = %peer, how, "connection ended");
        #[cfg(not(feature = "tracing"))]
        let _ = (conn, peer, how);
    }
}

#[cfg(all(test, feature = "tracing"))]
mod tests {
    use super::{sparse, Printable};

    #[test]
    fn text_from_a_peer_cannot_reorder_or_split_a_line_either() {
        let sneaky = "name\u{202e}txt.exe\u{2028}INFO forged\u{85}\u{2066}x\u{2069}";
        let printed = Printable(sneaky).to_string();
        assert_eq!(printed, "name\\u{202e}txt.exe\\u{2028}INFO forged\\u{85}\\u{2066}x\\u{2069}");
        // Other text passes as it is.
        assert_eq!(Printable("é 日本 \u{1f600}").to_string(), "é 日本 \u{1f600}");
    }

    #[test]
    fn a_line_that_repeats_forever_is_logged_sparsely() {
        let logged: Vec<u64> = (1..=100_000).filter(|&n| sparse(n)).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 100, 1_000, 10_000, 100_000]);
        assert!(!sparse(u64::MAX));
    }

    #[test]
    fn a_throttle_lets_a_budget_of_lines_through_per_window_and_counts_the_rest() {
        use super::{LogAdmit as Admit, LogThrottle as Throttle};
        use std::time::{Duration, Instant};
        let throttle = Throttle::new(Throttle::LINES, Throttle::WINDOW);
        let start = Instant::now();
        let lines = |at: Instant, n: u32| (0..n).map(|_| throttle.admit("flood", at)).collect::<Vec<_>>();
        let first = lines(start, 1_000);
        assert!(first[..20].iter().all(|a| *a == Admit::Pass { suppressed: 0 }));
        assert!(first[20..].iter().all(|a| *a == Admit::Hold));
        // Another kind has its own budget.
        assert_eq!(throttle.admit("other", start), Admit::Pass { suppressed: 0 });
        // Still the same window: held.
        assert_eq!(throttle.admit("flood", start + Duration::from_millis(9_999)), Admit::Hold);
        // The next window: the first line says how many were held back.
        let later = start + Throttle::WINDOW;
        assert_eq!(throttle.admit("flood", later), Admit::Pass { suppressed: 981 });
        assert_eq!(throttle.admit("flood", later), Admit::Pass { suppressed: 0 });
    }

    #[test]
    fn text_from_a_peer_cannot_start_a_log_line_of_its_own() {
        let quoted = "unknown variant `x\n2026-01-01T00:00:00Z  INFO forged\u{1b}[0m`";
        let printed = Printable(quoted).to_string();
        assert!(!printed.chars().any(char::is_control), "{printed}");
        assert_eq!(printed, "unknown variant `x\\n2026-01-01T00:00:00Z  INFO forged\\u{1b}[0m`");
    }
}
