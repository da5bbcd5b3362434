//! [`ClientConfig`] and [`Backoff`]: a node's limits, deadlines and how it reconnects.

use super::*;

/// The longest duration a client setting takes; longer ones are clamped to it. No useful wait or
/// interval is longer, and every deadline computed from it fits in an `Instant` everywhere.
pub(super) const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest keepalive interval: a list request every second is already more than any server
/// needs to see a node alive, and faster ones would flood it.
pub(super) const SHORTEST_KEEPALIVE: Duration = Duration::from_secs(1);

/// The shortest sign-in deadline: less cannot cover one round trip and a signature.
pub(super) const SHORTEST_SIGN_IN: Duration = Duration::from_millis(10);

/// Limits and deadlines of a node's client: what it accepts from the server, how long it waits
/// for it, and how a client that reconnects backs off.
///
/// Every limit bounds what a server (or whoever stands in for it) can make the node hold or do.
/// Durations are clamped to at most a day, so that no setting can overflow a deadline.
///
/// ```
/// use std::time::Duration;
/// use peer_signal::ClientConfig;
///
/// let config = ClientConfig::default()
///     .with_sign_in_timeout(Duration::from_secs(5))
///     .with_keepalive(Duration::from_secs(30));
/// assert_eq!(config.keepalive, Some(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// How long the server has, from the moment the connection is open, to send its challenge
    /// and accept the announce (its `SystemConfig`). Default 10 s, the server's own default
    /// handshake timeout: an honest server answers within two round trips and a signature
    /// check, and one that takes longer holds the node for nothing. At least 10 ms.
    pub sign_in_timeout: Duration,
    /// How often to ask for the list while connected (see [`SignalClient::set_keepalive`]), which
    /// also checks that the server is alive: a connection on which a request went unanswered for
    /// two intervals is dead. Default `None`: nothing is sent unasked, and nothing is checked. Pick
    /// an interval well inside the server's TTL (this crate's is 120 s, fledger nodes send one
    /// every 60 s). Clamped to 1 s … 1 day.
    pub keepalive: Option<Duration>,
    /// Events held for the application, by number. Default 1,024: far above what one round trip
    /// produces; reached only when the application stops reading. Further events are dropped and
    /// counted.
    pub max_events: usize,
    /// Events held for the application, in bytes: their text and lists as decoded, plus a fixed
    /// cost per event and per listed node. Default 1 MiB: sixteen frames of the server's default
    /// largest (64 KiB), or about 2,000 listed nodes, while a server that floods large set-up
    /// messages makes the node hold at most this much. Further events are dropped and counted.
    pub max_event_bytes: usize,
    /// How long a client that reconnects waits between attempts.
    pub backoff: Backoff,
    /// How long a session must last to count as a success. A client that reconnects waits
    /// [`backoff`](Self::backoff) before every attempt, also after a session that ended; after
    /// one shorter than this (or one the server ended because the same node connected again)
    /// the wait grows as after a failed attempt. Default 60 s, twice the longest default wait,
    /// so that two processes with the same key, which take the node from each other, settle
    /// at one reconnect per longest wait each instead of one per round trip.
    pub stable_session: Duration,
    /// Whether the node binds its sign-in to the server it dialled ([`ClientBinding`]). Default
    /// [`ClientBinding::Prefer`]: bound where the server offers it and the client knows the
    /// server's id, plain v3 elsewhere.
    pub binding: ClientBinding,
    /// The id of the server this client signs in at, canonical
    /// ([`server_id_of_url`](crate::server_id_of_url), [`server_id_of_node`](crate::server_id_of_node)).
    /// Default `None`: the connection's ([`ClientConnection::server_id`]; `WsClient` knows its URL).
    pub server_id: Option<String>,
    /// Whether the node signs its set-up messages, and asks for signed ones, where the sign-in is
    /// bound and the server relays them. Default true.
    pub sign_setups: bool,
    /// Whether set-up messages that come unsigned are refused
    /// ([`ClientEvent::RejectedSetup`]) rather than passed on. Default false: fledger nodes and
    /// nodes on v3 servers send them plain.
    pub require_signed_setups: bool,
    /// The first sequence number the node signs a set-up message with. Default `None`: the
    /// microseconds since the Unix epoch when the client is made, so that a restarted node
    /// starts above what it sent before and its peers do not take its messages for replays.
    pub setup_seq_start: Option<u64>,
}

/// Whether a client binds its sign-in to the server: [`ClientConfig::binding`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientBinding {
    /// Plain v3 announces only.
    Off,
    /// A bound announce where the server offers it (`Capabilities`) and the server's id is
    /// known; plain v3 otherwise.
    #[default]
    Prefer,
    /// Bound announces only: where the server does not offer it (or whoever stands in for the
    /// server stripped the offer), the client does not sign at all
    /// ([`ClientError::BindingUnavailable`]). A relayed challenge can then never produce a
    /// signature usable elsewhere.
    Require,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            sign_in_timeout: Duration::from_secs(10),
            keepalive: None,
            max_events: 1024,
            max_event_bytes: 1024 * 1024,
            backoff: Backoff::default(),
            stable_session: Duration::from_secs(60),
            binding: ClientBinding::Prefer,
            server_id: None,
            sign_setups: true,
            require_signed_setups: false,
            setup_seq_start: None,
        }
    }
}

setters! {
    ClientConfig {
        with_sign_in_timeout => sign_in_timeout: Duration,
        with_max_events => max_events: usize,
        with_max_event_bytes => max_event_bytes: usize,
        with_backoff => backoff: Backoff,
        with_stable_session => stable_session: Duration,
        with_binding => binding: ClientBinding,
        with_sign_setups => sign_setups: bool,
        with_require_signed_setups => require_signed_setups: bool,
    }
    optional {
        with_keepalive => keepalive: Duration,
        with_server_id => server_id: String,
        with_setup_seq_start => setup_seq_start: u64,
    }
}

impl ClientConfig {
    /// The settings as used: durations within their bounds.
    pub(super) fn clamped(&self) -> Self {
        Self {
            sign_in_timeout: self.sign_in_timeout.clamp(SHORTEST_SIGN_IN, LONGEST),
            keepalive: clamp_keepalive(self.keepalive),
            stable_session: self.stable_session.min(LONGEST),
            ..self.clone()
        }
    }
}

/// A keepalive interval within its bounds; zero is none.
pub(super) fn clamp_keepalive(interval: Option<Duration>) -> Option<Duration> {
    interval
        .filter(|interval| !interval.is_zero())
        .map(|interval| interval.clamp(SHORTEST_KEEPALIVE, LONGEST))
}

/// How long a client that reconnects waits between attempts: `initial` after the first
/// failure (or after a session that ended), doubled after each further one up to `max`, and each
/// wait spread at random over ±25%, so that many nodes cut off at once do not all come back at
/// the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// From `initial` up to `max`. Both are clamped to 1 ms … 1 day (a client that reconnects
    /// always waits, and no wait can overflow a deadline), and `max` to at least `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.clamp(Duration::from_millis(1), LONGEST);
        Self { initial, max: max.clamp(initial, LONGEST) }
    }

    /// The wait before attempt `failures + 1`, given `random` (any `u32`) for the jitter.
    pub(super) fn delay(self, failures: u32, random: u32) -> Duration {
        let doubled = self.initial.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
        let base = doubled.min(self.max);
        // A factor between 0.75 and 1.25.
        let spread = 0.75 + f64::from(random) / f64::from(u32::MAX) / 2.0;
        base.mul_f64(spread)
    }
}

/// Half a second after the first failure, then doubling, up to half a minute.
impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}
