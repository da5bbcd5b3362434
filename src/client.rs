//! The node's side of the protocol: [`SignalClient`] (sans-IO) and [`AsyncClient`] (over any
//! [`ClientConnection`]).

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::RngCore;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::SigningKey;

use crate::codec::Codec;
use crate::crypto::sign_challenge;
use crate::error::{CodecError, ProtocolError, TransportError};
use crate::protocol::{
    FledgerConfig, MessageAnnounce, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage,
    WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION,
};

/// How many frames a client holds for sending before it refuses more. Far above what one round
/// trip produces; reached only when the application stops draining.
const MAX_QUEUED: usize = 1024;

/// The longest duration a client setting takes; longer ones are clamped to it. No useful wait or
/// interval is longer, and every deadline computed from it fits in an `Instant` everywhere.
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// The shortest keepalive interval: a list request every second is already more than any server
/// needs to see a node alive, and faster ones would flood it.
const SHORTEST_KEEPALIVE: Duration = Duration::from_secs(1);

/// The shortest sign-in deadline: less cannot cover one round trip and a signature.
const SHORTEST_SIGN_IN: Duration = Duration::from_millis(10);

/// What a heap-allocated event costs beside its text: the event itself, and per listed node.
const EVENT_OVERHEAD: usize = std::mem::size_of::<ClientEvent>();

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
    }
    optional {
        with_keepalive => keepalive: Duration,
    }
}

impl ClientConfig {
    /// The settings as used: durations within their bounds.
    fn clamped(&self) -> Self {
        Self {
            sign_in_timeout: self.sign_in_timeout.clamp(SHORTEST_SIGN_IN, LONGEST),
            keepalive: clamp_keepalive(self.keepalive),
            stable_session: self.stable_session.min(LONGEST),
            ..self.clone()
        }
    }
}

/// A keepalive interval within its bounds; zero is none.
fn clamp_keepalive(interval: Option<Duration>) -> Option<Duration> {
    interval
        .filter(|interval| !interval.is_zero())
        .map(|interval| interval.clamp(SHORTEST_KEEPALIVE, LONGEST))
}

/// What the server told the node, drained from [`SignalClient::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the announce and sent its `SystemConfig`; or, later, sent a new one.
    Connected(FledgerConfig),
    /// A `ListIDsReply`: the answer to a list request, or a push of nodes that joined.
    NodeList(Vec<NodeInfo>),
    /// A set-up message from the other node of a pair.
    PeerSetup(PeerInfo),
    /// The server refused something the node sent; the text is the server's.
    Error(String),
    /// The connection was lost. A client that reconnects (see
    /// [`AsyncClient::connect_reconnecting`]) is now trying again; it reports
    /// [`Connected`](Self::Connected) once the server has accepted its announce anew.
    Disconnected,
}

/// What went wrong on the node's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent a frame that does not decode; it was ignored.
    #[error("malformed frame from the server")]
    Malformed(#[source] CodecError),
    /// The server's challenge names another protocol version; it was not answered.
    #[error("unsupported protocol version {0}, expected 3")]
    UnsupportedVersion(u64),
    /// The server sent a second challenge on the connection; it was not answered. The client signs
    /// one challenge per connection: otherwise a server could collect the node's signatures over
    /// bytes of its choosing.
    #[error("unexpected challenge: this connection's challenge was answered already")]
    UnexpectedChallenge,
    /// The server sent a message that makes no sense at this point of the connection (see
    /// [`SignalClient::handle_frame`] for the rules); it was ignored and counted in
    /// [`SignalClient::refused_messages`]. The text says which.
    #[error("unexpected message from the server: {0}")]
    Unexpected(&'static str),
    /// A request before the server accepted the announce; it was not sent.
    #[error("not connected yet")]
    NotConnected,
    /// The application has not drained [`SignalClient::poll_transmit`]; the request was not queued.
    #[error("too many frames waiting to be sent")]
    Backlog,
    /// The server answered the announce with this error.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The server did not accept the announce within
    /// [`ClientConfig::sign_in_timeout`]; the connection is dead.
    #[error("no sign-in within {0:?}")]
    SignInTimeout(Duration),
    /// Nothing came from the server for two keepalive intervals; the connection is dead.
    #[error("the server sent nothing for {0:?}")]
    Unresponsive(Duration),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    AwaitingChallenge,
    Announced,
    Connected,
}

/// How a connection ended, as far as the server said before it went: what a client that
/// reconnects needs to know to wait long enough, and to keep alive often enough.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ending {
    /// The server closed the node for silence (this crate's `idle timeout`).
    Idle,
    /// The same node connected again elsewhere and took over (fledger's text).
    Replaced,
}

/// A node's side of the signalling protocol, as a state machine: no I/O, no clock.
///
/// Feed it every frame from the server with [`handle_frame`](Self::handle_frame), and the time
/// with [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) says;
/// then send whatever [`poll_transmit`](Self::poll_transmit) returns, and read
/// [`poll_event`](Self::poll_event) until both return `None`. The client answers the challenge by
/// itself; once [`ClientEvent::Connected`] comes, it may list nodes and exchange `PeerSetup`.
///
/// What it holds is bounded: frames to send by number, events by number and in bytes
/// ([`ClientConfig`]); and so is how long it waits, once it is told the time: the sign-in has a
/// deadline, and with a keepalive a silent server is noticed.
///
/// # Example
///
/// A client and a [`SignalServer`](crate::SignalServer) wired by hand, no executor:
///
/// ```
/// use std::time::Instant;
/// use ed25519_dalek::SigningKey;
/// use peer_signal::{
///     ClientEvent, Codec, ConnId, NodeInfo, SignalClient, SignalConfig, SignalIn, SignalOut, SignalServer,
/// };
///
/// let mut server = SignalServer::new(SignalConfig::default().with_rng_seed([7; 32]))
///     .expect("a valid config");
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let mut client = SignalClient::new(key, info, Codec::Json);
/// let conn = ConnId::new(1);
///
/// let now = Instant::now();
/// server.handle(now, SignalIn::Opened { conn, codec: Codec::Json, addr: None });
/// for _ in 0..3 {
///     while let Some(out) = server.poll_output() {
///         if let SignalOut::Send { frame, .. } = out {
///             client.handle_frame(&frame)?;
///         }
///     }
///     while let Some(frame) = client.poll_transmit() {
///         server.handle(now, SignalIn::Frame { conn, frame });
///     }
/// }
/// assert!(client.is_connected());
/// assert!(matches!(client.poll_event(), Some(ClientEvent::Connected(_))));
/// assert!(matches!(client.poll_event(), Some(ClientEvent::NodeList(nodes)) if nodes.len() == 1));
/// # Ok::<(), peer_signal::ClientError>(())
/// ```
pub struct SignalClient {
    key: SigningKey,
    info: NodeInfo,
    codec: Codec,
    state: State,
    config: Option<FledgerConfig>,
    limits: ClientConfig,
    transmit: VecDeque<Bytes>,
    /// Events with what each is charged against `limits.max_event_bytes`.
    events: VecDeque<(ClientEvent, usize)>,
    event_bytes: usize,
    dropped_events: u64,
    refused_messages: u64,
    /// How often to ask for the list while connected, so that the server sees the node alive.
    keepalive: Option<Duration>,
    /// When the next keepalive is due; armed by the first `handle_timeout` once connected.
    next_keepalive: Option<Instant>,
    /// When the sign-in must be done; armed by the first `handle_timeout`.
    sign_in_deadline: Option<Instant>,
    /// A frame arrived since the last keepalive fell due.
    heard: bool,
    /// Keepalive intervals in a row in which nothing arrived.
    silent_intervals: u8,
    /// Why the connection is dead, once a deadline has passed.
    dead: Option<ClientError>,
    /// What the server said about the end of the connection.
    ending: Option<Ending>,
}

impl fmt::Debug for SignalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalClient")
            .field("id", &self.info.id())
            .field("codec", &self.codec)
            .field("state", &self.state)
            .field("transmit", &self.transmit.len())
            .field("events", &self.events.len())
            .field("event_bytes", &self.event_bytes)
            // key: not printed.
            .finish_non_exhaustive()
    }
}

impl SignalClient {
    /// A client for the node that holds `key`, describing itself with `info`, speaking `codec`,
    /// with the default [`ClientConfig`].
    ///
    /// `info.pubkey` is replaced by the public half of `key`: the server checks the signature
    /// against it, so the two cannot differ.
    pub fn new(key: SigningKey, info: NodeInfo, codec: Codec) -> Self {
        Self::with_config(key, info, codec, &ClientConfig::default())
    }

    /// As [`new`](Self::new), with the limits and deadlines of `config` (its backoff and
    /// `stable_session` are [`AsyncClient`]'s business and unused here).
    pub fn with_config(key: SigningKey, mut info: NodeInfo, codec: Codec, config: &ClientConfig) -> Self {
        info.pubkey = key.verifying_key().to_bytes();
        let limits = config.clamped();
        Self {
            key,
            info,
            codec,
            state: State::AwaitingChallenge,
            config: None,
            keepalive: limits.keepalive,
            limits,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            event_bytes: 0,
            dropped_events: 0,
            refused_messages: 0,
            next_keepalive: None,
            sign_in_deadline: None,
            heard: false,
            silent_intervals: 0,
            dead: None,
            ending: None,
        }
    }

    /// The same node on a new connection: the state of the old one forgotten, the settings and
    /// counters kept.
    fn renewed(&self) -> Self {
        let mut client = Self::with_config(self.key.clone(), self.info.clone(), self.codec, &self.limits);
        client.keepalive = self.keepalive;
        client.dropped_events = self.dropped_events;
        client.refused_messages = self.refused_messages;
        client
    }

    /// Keeps the node alive on servers that close silent nodes (this crate's after
    /// [`SignalConfig::ttl`](crate::SignalConfig::ttl), 120 s by default): once connected, a
    /// `ListIDsRequest` goes out every `interval`, as fledger nodes send one every minute. Pick an
    /// interval well inside the server's TTL; `None` (the default) sends nothing unasked.
    ///
    /// It also checks the server: when a request has gone unanswered for two intervals (nothing
    /// at all came from the server since it went out), the connection is dead and
    /// [`handle_timeout`](Self::handle_timeout) says so. A server that vanishes is thus noticed
    /// two to three intervals after its last frame. An interval is clamped to 1 s … 1 day;
    /// zero is `None`.
    ///
    /// The client reads no clock: feed it the time with [`handle_timeout`](Self::handle_timeout)
    /// when [`poll_timeout`](Self::poll_timeout) says.
    pub fn set_keepalive(&mut self, interval: Option<Duration>) {
        self.keepalive = clamp_keepalive(interval);
        self.next_keepalive = None;
        self.silent_intervals = 0;
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called next: the sign-in
    /// deadline until the server has accepted the announce, then the next keepalive if there is
    /// one. `None` before the first call has armed them, and once the connection is dead.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.dead.is_some() {
            return None;
        }
        match self.state {
            State::Connected => self.next_keepalive,
            State::AwaitingChallenge | State::Announced => self.sign_in_deadline,
        }
    }

    /// Tells the client the time. The first call arms the sign-in deadline (call it when the
    /// connection opens), and once connected the keepalive; later calls queue a `ListIDsRequest`
    /// when it is due. Drain [`poll_transmit`](Self::poll_transmit) afterwards.
    ///
    /// # Errors
    ///
    /// [`ClientError::SignInTimeout`] when the server has not accepted the announce within
    /// [`ClientConfig::sign_in_timeout`], and [`ClientError::Unresponsive`] when nothing came from
    /// it for two keepalive intervals. Either way the connection is dead: close it (a client that
    /// reconnects opens another). Every later call returns the same error.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        if let Some(dead) = &self.dead {
            return Err(dead.clone());
        }
        if self.state != State::Connected {
            match self.sign_in_deadline {
                None => self.sign_in_deadline = now.checked_add(self.limits.sign_in_timeout),
                Some(deadline) if deadline <= now => {
                    return Err(self.die(ClientError::SignInTimeout(self.limits.sign_in_timeout)))
                }
                Some(_) => {}
            }
            return Ok(());
        }
        let Some(interval) = self.keepalive else {
            self.next_keepalive = None;
            return Ok(());
        };
        match self.next_keepalive {
            None => {
                self.next_keepalive = now.checked_add(interval);
                self.heard = false;
                self.silent_intervals = 0;
            }
            Some(due) if due <= now => {
                if std::mem::take(&mut self.heard) {
                    self.silent_intervals = 0;
                } else {
                    self.silent_intervals = self.silent_intervals.saturating_add(1);
                }
                if self.silent_intervals >= 2 {
                    return Err(self.die(ClientError::Unresponsive(interval.saturating_mul(2))));
                }
                // A full backlog means the application is not sending: a missed keepalive is
                // then the least of its problems, and the next one comes an interval later.
                let _ = self.request(&WSSignalMessageFromNode::ListIDsRequest);
                self.next_keepalive = now.checked_add(interval);
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn die(&mut self, error: ClientError) -> ClientError {
        self.dead = Some(error.clone());
        self.transmit.clear();
        error
    }

    /// The node's id.
    pub fn id(&self) -> NodeID {
        self.info.id()
    }

    /// What the node announces.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The codec of the connection.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The limits and deadlines in use (durations clamped to their bounds).
    pub fn config(&self) -> &ClientConfig {
        &self.limits
    }

    /// The keepalive interval in use, if any.
    pub fn keepalive(&self) -> Option<Duration> {
        self.keepalive
    }

    /// Whether the server has accepted the announce (and no deadline has passed since).
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected && self.dead.is_none()
    }

    /// The configuration the server sent with its acceptance.
    pub fn system_config(&self) -> Option<&FledgerConfig> {
        self.config.as_ref()
    }

    /// Events dropped because [`poll_event`](Self::poll_event) was not drained.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Messages from the server refused because they made no sense at that point of the
    /// connection ([`ClientError::Unexpected`], [`ClientError::UnexpectedChallenge`]).
    pub fn refused_messages(&self) -> u64 {
        self.refused_messages
    }

    /// What the events waiting in [`poll_event`](Self::poll_event) are charged, in bytes, against
    /// [`ClientConfig::max_event_bytes`].
    pub fn queued_event_bytes(&self) -> usize {
        self.event_bytes
    }

    /// Handles one frame from the server.
    ///
    /// The first `Challenge` of the connection is answered at once with an `Announce` signed by
    /// the node's key; anything else becomes a [`ClientEvent`]. Drain
    /// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event) afterwards.
    ///
    /// What the server may send when, as the protocol runs (anything else is refused with
    /// [`ClientError::Unexpected`]):
    ///
    /// | message | accepted |
    /// |---|---|
    /// | `Challenge` | once, first (otherwise [`ClientError::UnexpectedChallenge`]) |
    /// | `SystemConfig` | after the announce went out (the first is the acceptance; a later one, the system's configuration anew) |
    /// | `ListIDsReply` | once connected |
    /// | `PeerSetup` | once connected, and only for a pair this node is in |
    /// | `Error` | always |
    ///
    /// Every frame counts as a sign of life for the keepalive, even one that is refused.
    ///
    /// # Errors
    ///
    /// [`ClientError::Malformed`] for a frame that does not decode,
    /// [`ClientError::UnsupportedVersion`] for a challenge of another protocol version,
    /// [`ClientError::UnexpectedChallenge`] for any challenge after the one answered,
    /// [`ClientError::Unexpected`] for another message out of place, and
    /// [`ClientError::Backlog`] when the announce cannot be queued. The frame is ignored and the
    /// client stays usable. [`ClientError::Closed`] once a deadline has passed.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        if self.dead.is_some() {
            return Err(ClientError::Closed);
        }
        self.heard = true;
        let message = self.codec.decode(frame).map_err(ClientError::Malformed)?;
        let event = match message {
            WSSignalMessageToNode::Challenge(version, challenge) => {
                if self.state != State::AwaitingChallenge {
                    self.refused_messages += 1;
                    return Err(ClientError::UnexpectedChallenge);
                }
                if version != SIGNAL_VERSION {
                    return Err(ClientError::UnsupportedVersion(version));
                }
                let announce = MessageAnnounce {
                    version: SIGNAL_VERSION,
                    challenge,
                    node_info: self.info.clone(),
                    signature: sign_challenge(&self.key, &challenge),
                };
                self.queue(&WSSignalMessageFromNode::Announce(announce))?;
                self.state = State::Announced;
                return Ok(());
            }
            WSSignalMessageToNode::SystemConfig(config) => {
                // A later one is the server's new word on the system (`DriverHandle::send`).
                if self.state == State::AwaitingChallenge {
                    return Err(self.refuse("a system config before the announce"));
                }
                self.state = State::Connected;
                self.sign_in_deadline = None;
                self.config = Some(config.clone());
                ClientEvent::Connected(config)
            }
            WSSignalMessageToNode::ListIDsReply(nodes) => {
                if self.state != State::Connected {
                    return Err(self.refuse("a node list before the sign-in"));
                }
                ClientEvent::NodeList(nodes)
            }
            WSSignalMessageToNode::PeerSetup(setup) => {
                if self.state != State::Connected {
                    return Err(self.refuse("a set-up message before the sign-in"));
                }
                let me = self.id();
                if setup.id_init != me && setup.id_follow != me {
                    return Err(self.refuse("a set-up message for a pair without this node"));
                }
                ClientEvent::PeerSetup(setup)
            }
            WSSignalMessageToNode::Error(text) => {
                if self.state == State::Connected {
                    if text == ProtocolError::IdleTimeout.to_string() {
                        self.ending = Some(Ending::Idle);
                    } else if text == ProtocolError::Replaced.to_string() {
                        self.ending = Some(Ending::Replaced);
                    }
                }
                ClientEvent::Error(text)
            }
        };
        let charge = event_size(&event).max(frame.len());
        if self.events.len() < self.limits.max_events
            && self.event_bytes.saturating_add(charge) <= self.limits.max_event_bytes
        {
            self.event_bytes += charge;
            self.events.push_back((event, charge));
        } else {
            self.dropped_events += 1;
        }
        Ok(())
    }

    fn refuse(&mut self, what: &'static str) -> ClientError {
        self.refused_messages += 1;
        ClientError::Unexpected(what)
    }

    /// Asks the server for the list of nodes; the reply comes as [`ClientEvent::NodeList`].
    ///
    /// # Errors
    ///
    /// [`ClientError::NotConnected`] before the server accepted the announce,
    /// [`ClientError::Backlog`] when [`poll_transmit`](Self::poll_transmit) is not drained.
    pub fn request_list(&mut self) -> Result<(), ClientError> {
        self.request(&WSSignalMessageFromNode::ListIDsRequest)
    }

    /// Sends a set-up message to the other node of `setup`'s pair. This node must be one of
    /// `id_init` and `id_follow`, or the server answers with an error.
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn send_setup(&mut self, setup: PeerInfo) -> Result<(), ClientError> {
        self.request(&WSSignalMessageFromNode::PeerSetup(setup))
    }

    /// Starts a connection set-up with `to`: sends `Init`, with this node as `id_init`.
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn send_init(&mut self, to: NodeID) -> Result<(), ClientError> {
        self.send_setup(PeerInfo { id_init: self.id(), id_follow: to, message: PeerMessage::Init })
    }

    /// Answers a set-up message with the next step (`Offer`, `Answer`, `IceCandidate`) for the
    /// same pair, to the other node.
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn send_reply(&mut self, to: &PeerInfo, message: PeerMessage) -> Result<(), ClientError> {
        self.send_setup(PeerInfo { id_init: to.id_init, id_follow: to.id_follow, message })
    }

    /// Reports statistics about the node's peers.
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn send_stats(&mut self, stats: Vec<NodeStat>) -> Result<(), ClientError> {
        self.request(&WSSignalMessageFromNode::NodeStats(stats))
    }

    /// The next frame to send to the server, oldest first.
    ///
    /// Drain it after [`handle_frame`](Self::handle_frame) and after every request.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmit.pop_front()
    }

    /// The next thing the server told the node, oldest first.
    ///
    /// Drain it after [`handle_frame`](Self::handle_frame): at most
    /// [`ClientConfig::max_events`] events and [`ClientConfig::max_event_bytes`] wait, further
    /// ones are dropped and counted in [`dropped_events`](Self::dropped_events).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        let (event, charge) = self.events.pop_front()?;
        self.event_bytes -= charge;
        Some(event)
    }

    fn request(&mut self, message: &WSSignalMessageFromNode) -> Result<(), ClientError> {
        if self.dead.is_some() {
            return Err(ClientError::Closed);
        }
        if self.state != State::Connected {
            return Err(ClientError::NotConnected);
        }
        self.queue(message)
    }

    fn queue(&mut self, message: &WSSignalMessageFromNode) -> Result<(), ClientError> {
        if self.transmit.len() >= MAX_QUEUED {
            return Err(ClientError::Backlog);
        }
        // The protocol's own messages always encode; a failure would be a bug in this crate.
        if let Ok(frame) = self.codec.encode(message) {
            self.transmit.push_back(frame);
        }
        Ok(())
    }
}

/// What an event costs the client that holds it, in bytes: the event and what it owns on the
/// heap (strings by their length, lists by their nodes).
fn event_size(event: &ClientEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            ClientEvent::Connected(_) | ClientEvent::Disconnected => 0,
            ClientEvent::NodeList(nodes) => nodes
                .iter()
                .map(|node| std::mem::size_of::<NodeInfo>() + node.name.len() + node.client.len())
                .sum(),
            ClientEvent::PeerSetup(setup) => setup.message.text().map_or(0, str::len),
            ClientEvent::Error(text) => text.len(),
        }
}

/// One node's connection to a signalling server, as [`AsyncClient`] uses it: frames in, frames
/// out. [`MemoryClient`](crate::MemoryClient) implements it.
#[async_trait]
pub trait ClientConnection: Send {
    /// The codec of the connection's frames.
    fn codec(&self) -> Codec;

    /// Sends one frame, waiting while the connection's queue is full.
    ///
    /// # Errors
    ///
    /// A [`TransportError`] once the connection is closed.
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError>;

    /// The next frame from the server; `None` once the connection is closed and drained.
    ///
    /// Must be cancel-safe: [`AsyncClient`] drops this future when a keepalive falls due first,
    /// and no frame may be lost then.
    async fn recv(&mut self) -> Option<Bytes>;

    /// The clock of the runtime the connection runs on, if it has one: with it,
    /// [`AsyncClient::connect`] bounds the sign-in by [`ClientConfig::sign_in_timeout`].
    /// `WsClient` gives tokio's; the default is none.
    fn timer(&self) -> Option<Arc<dyn Timer>> {
        None
    }
}

/// A [`SignalClient`] driven over a [`ClientConnection`]: `connect`, then `list`, send set-up
/// messages and wait for events. Runtime-agnostic.
///
/// # Example
///
/// ```
/// use peer_signal::{
///     AsyncClient, ClientEvent, Codec, Driver, MemoryTransport, NodeInfo, PeerMessage, SignalConfig,
///     SignalServer,
/// };
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = SignalConfig::default();
/// let (transport, connector) = MemoryTransport::new(&config);
/// let (driver, handle, _events) = Driver::new(SignalServer::new(config)?, transport, 64);
/// let server = tokio::spawn(driver.run(futures::stream::pending()));
///
/// let mut nodes = Vec::new();
/// for (seed, name) in [(1, "alice"), (2, "bob")] {
///     let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
///     let info = NodeInfo::new(name, "example", key.verifying_key().to_bytes());
///     let conn = connector.connect(Codec::Json).await?;
///     nodes.push(AsyncClient::connect(conn, key, info).await?);
/// }
/// let (mut alice, mut bob) = (nodes.remove(0), nodes.remove(0));
///
/// // The first event of each is the list the server sent with its acceptance.
/// for node in [&mut alice, &mut bob] {
///     assert!(matches!(node.next_event().await?, ClientEvent::NodeList(_)));
/// }
/// alice.send_init(bob.id()).await?;
/// let ClientEvent::PeerSetup(init) = bob.next_event().await? else { panic!("expected Init") };
/// assert_eq!((init.id_init, init.message.clone()), (alice.id(), PeerMessage::Init));
/// bob.send_reply(&init, PeerMessage::Offer("v=0".into())).await?;
/// let ClientEvent::PeerSetup(offer) = alice.next_event().await? else { panic!("expected Offer") };
/// assert_eq!(offer.message, PeerMessage::Offer("v=0".into()));
///
/// handle.stop();
/// assert!(server.await.unwrap().is_stopped());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct AsyncClient<C> {
    conn: C,
    client: SignalClient,
    /// Events read while waiting for something else, returned first by `next_event`, with what
    /// each is charged against the client's `max_event_bytes`.
    held: VecDeque<(ClientEvent, usize)>,
    held_bytes: usize,
    dropped_events: u64,
    /// The clock of the deadlines, the keepalive and the reconnection backoff, when there is one.
    timer: Option<Arc<dyn Timer>>,
    /// How to reconnect, for a client that does.
    reconnecting: Option<Reconnecting<C>>,
    /// When the server accepted the current session.
    session_start: Option<Instant>,
    /// When the last frame went to the server.
    last_sent: Option<Instant>,
    /// How long the node had sent nothing when the server closed it for idleness.
    idle_after: Option<Duration>,
}

/// Opens a new connection to the server each time it is called: what an [`AsyncClient`] that
/// reconnects needs. `WsClientBuilder` is one; so is any closure that returns a future of a
/// connection.
#[async_trait]
pub trait Reconnect<C>: Send + Sync {
    /// A new connection.
    ///
    /// # Errors
    ///
    /// The transport's, when the server cannot be reached.
    async fn connect(&self) -> Result<C, TransportError>;
}

#[async_trait]
impl<C, F, Fut> Reconnect<C> for F
where
    F: Fn() -> Fut + Send + Sync,
    Fut: Future<Output = Result<C, TransportError>> + Send,
    C: Send + 'static,
{
    async fn connect(&self) -> Result<C, TransportError> {
        (self)().await
    }
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
    fn delay(self, failures: u32, random: u32) -> Duration {
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

/// A client's means to reconnect.
struct Reconnecting<C> {
    reconnect: Box<dyn Reconnect<C>>,
    /// The connection is lost; the next read reconnects.
    lost: bool,
    /// Attempts that failed, and short sessions, since the last session that lasted.
    failures: u32,
}

/// The clock and the sleeps that [`AsyncClient::keep_alive`] needs, from whatever runtime the
/// application runs on: `TokioTimer` with the `websocket` feature, or a few lines of your own.
pub trait Timer: Send + Sync {
    /// The time now.
    fn now(&self) -> Instant;
    /// A future that resolves at `deadline`.
    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<C> fmt::Debug for AsyncClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncClient")
            .field("client", &self.client)
            .field("held", &self.held.len())
            .field("held_bytes", &self.held_bytes)
            .finish_non_exhaustive()
    }
}

impl<C: ClientConnection> AsyncClient<C> {
    /// Completes the handshake on `conn`: answers the challenge with `key`, then waits for the
    /// server's `SystemConfig` and the `ListIDsReply` that follows it. See [`SignalClient::new`]
    /// for `info`. The default [`ClientConfig`] applies; when the connection has a clock (see
    /// [`ClientConnection::timer`], as `WsClient` has) the sign-in has its deadline, otherwise
    /// use [`connect_with`](Self::connect_with).
    ///
    /// The servers of this crate and of fledger both send that list on acceptance; waiting for it
    /// here means a later [`list`](Self::list) gets a reply to its own request. The list itself
    /// is the first [`next_event`](Self::next_event).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] when the server answers the announce with an error,
    /// [`ClientError::Closed`] when the connection closes first,
    /// [`ClientError::SignInTimeout`] when the server takes too long, and the errors of
    /// [`SignalClient::handle_frame`].
    pub async fn connect(conn: C, key: SigningKey, info: NodeInfo) -> Result<Self, ClientError> {
        let timer = conn.timer();
        let client = SignalClient::new(key, info, conn.codec());
        Self::start(conn, client, timer).await
    }

    /// As [`connect`](Self::connect), with the limits and deadlines of `config`, timed on
    /// `timer` (the runtime's clock); its keepalive, if any, starts once connected.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(
        conn: C,
        key: SigningKey,
        info: NodeInfo,
        config: ClientConfig,
        timer: Arc<dyn Timer>,
    ) -> Result<Self, ClientError> {
        let client = SignalClient::with_config(key, info, conn.codec(), &config);
        Self::start(conn, client, Some(timer)).await
    }

    async fn start(
        conn: C,
        client: SignalClient,
        timer: Option<Arc<dyn Timer>>,
    ) -> Result<Self, ClientError> {
        let mut this = Self {
            conn,
            client,
            held: VecDeque::new(),
            held_bytes: 0,
            dropped_events: 0,
            timer,
            reconnecting: None,
            session_start: None,
            last_sent: None,
            idle_after: None,
        };
        this.arm();
        this.handshake(false).await?;
        this.session_start = this.now();
        Ok(this)
    }

    /// As [`connect`](Self::connect), on a connection from `reconnect`; and when the connection
    /// is lost later, reconnects and announces again by itself, waiting as `backoff` says before
    /// every attempt (on `timer`, the runtime's clock), for as long as it takes. The other
    /// settings are [`ClientConfig`]'s defaults; see
    /// [`connect_reconnecting_with`](Self::connect_reconnecting_with).
    ///
    /// [`next_event`](Self::next_event) reports [`ClientEvent::Disconnected`] when the connection
    /// is lost, then (as the next events, once it is back) [`ClientEvent::Connected`] and the list
    /// that follows the announce. Requests made while it is lost fail with
    /// [`ClientError::Closed`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), and [`ClientError::Closed`] when the first connection
    /// cannot be made: a server that is not there at the start is more likely a mistake than a
    /// network error.
    pub async fn connect_reconnecting(
        reconnect: impl Reconnect<C> + 'static,
        key: SigningKey,
        info: NodeInfo,
        backoff: Backoff,
        timer: Arc<dyn Timer>,
    ) -> Result<Self, ClientError> {
        let config = ClientConfig::default().with_backoff(backoff);
        Self::connect_reconnecting_with(reconnect, key, info, config, timer).await
    }

    /// As [`connect_reconnecting`](Self::connect_reconnecting), with the limits, deadlines,
    /// keepalive and backoff of `config`.
    ///
    /// Every attempt, the first included, has [`ClientConfig::sign_in_timeout`] to connect and
    /// to sign in. A connection is lost when it closes, when a write fails, or (with a
    /// keepalive) when the server stays silent for two intervals. Before each new attempt the
    /// client waits as [`ClientConfig::backoff`] says, longer after failures and after sessions
    /// shorter than [`ClientConfig::stable_session`]. A server that closed the node for idleness
    /// (`idle timeout`) sees it keep alive from then on at half the silence it tolerated, at
    /// most at the configured interval and at least every second.
    ///
    /// # Errors
    ///
    /// As [`connect_reconnecting`](Self::connect_reconnecting).
    pub async fn connect_reconnecting_with(
        reconnect: impl Reconnect<C> + 'static,
        key: SigningKey,
        info: NodeInfo,
        config: ClientConfig,
        timer: Arc<dyn Timer>,
    ) -> Result<Self, ClientError> {
        let limit = config.clamped().sign_in_timeout;
        let conn =
            within(&timer, limit, reconnect.connect()).await.ok_or(ClientError::SignInTimeout(limit))?;
        let conn = conn.map_err(|_| ClientError::Closed)?;
        let mut this = Self::connect_with(conn, key, info, config, Arc::clone(&timer)).await?;
        this.reconnecting = Some(Reconnecting { reconnect: Box::new(reconnect), lost: false, failures: 0 });
        Ok(this)
    }

    /// Waits for the server to accept the announce and for the list that follows; other events
    /// are held for `next_event`, and with `report` the acceptance too.
    async fn handshake(&mut self, report: bool) -> Result<(), ClientError> {
        loop {
            let event = self.read_event().await?;
            let connected = self.client.is_connected();
            match event {
                ClientEvent::Error(reason) if !connected => return Err(ClientError::Refused(reason)),
                ClientEvent::NodeList(_) if connected => {
                    self.hold(event);
                    return Ok(());
                }
                ClientEvent::Connected(_) if !report => {}
                ClientEvent::Disconnected => return Err(ClientError::Closed),
                other => self.hold(other),
            }
        }
    }

    /// Reconnects, waiting before every attempt, until the server has accepted the announce
    /// again.
    async fn reconnect(&mut self) {
        let (Some(mut reconnecting), Some(timer)) = (self.reconnecting.take(), self.timer.clone()) else {
            return;
        };
        let backoff = self.client.limits.backoff;
        let limit = self.client.limits.sign_in_timeout;
        loop {
            // Always a wait, also after a session that lasted: a server that accepts and then
            // drops the node (or another process with the same key) cannot make it spin.
            let delay = backoff.delay(reconnecting.failures.max(1), rand_core::OsRng.next_u32());
            timer.sleep_until(timer.now() + delay).await;
            // A server that takes the connection but never answers must not hold us.
            if let Some(Ok(conn)) = within(&timer, limit, reconnecting.reconnect.connect()).await {
                self.conn = conn;
                self.client = self.client.renewed();
                self.idle_after = None;
                self.arm();
                if self.handshake(true).await.is_ok() {
                    break;
                }
            }
            reconnecting.failures = reconnecting.failures.saturating_add(1);
        }
        reconnecting.lost = false;
        self.session_start = self.now();
        self.reconnecting = Some(reconnecting);
    }

    /// The connection is gone: an error, or for a client that reconnects the news of it.
    fn lost(&mut self, error: ClientError) -> Result<ClientEvent, ClientError> {
        if self.mark_lost() {
            Ok(ClientEvent::Disconnected)
        } else {
            Err(error)
        }
    }

    /// For a client that reconnects, notes that the connection is gone, once: whether the
    /// session counts as a failure, and how often to keep alive on the next. Returns whether the
    /// client reconnects.
    fn mark_lost(&mut self) -> bool {
        let now = self.now();
        let Some(reconnecting) = &mut self.reconnecting else { return false };
        if reconnecting.lost {
            return true;
        }
        reconnecting.lost = true;
        let limits = &self.client.limits;
        let lasted = now.zip(self.session_start).map(|(now, start)| now.saturating_duration_since(start));
        let short = lasted.is_none_or(|lasted| lasted < limits.stable_session);
        if short || self.client.ending == Some(Ending::Replaced) {
            reconnecting.failures = reconnecting.failures.saturating_add(1);
        } else {
            reconnecting.failures = 0;
        }
        if let Some(quiet) = self.idle_after.take() {
            let tolerated = clamp_keepalive(Some(quiet / 2)).unwrap_or(SHORTEST_KEEPALIVE);
            let interval = self.client.keepalive.map_or(tolerated, |interval| interval.min(tolerated));
            self.client.set_keepalive(Some(interval));
        }
        true
    }

    /// The time, if the client has a clock.
    fn now(&self) -> Option<Instant> {
        self.timer.as_ref().map(|timer| timer.now())
    }

    /// Lets the state machine arm its next deadline, when it has none: the sign-in's on a new
    /// connection, the keepalive's once connected.
    fn arm(&mut self) {
        if let Some(now) = self.now() {
            if self.client.poll_timeout().is_none() {
                // Arming alone cannot fail; a dead connection is reported where it died.
                let _ = self.client.handle_timeout(now);
            }
        }
    }

    /// The node's id.
    pub fn id(&self) -> NodeID {
        self.client.id()
    }

    /// The state machine underneath, for its getters.
    pub fn client(&self) -> &SignalClient {
        &self.client
    }

    /// Events dropped because [`next_event`](Self::next_event) was not called while
    /// [`list`](Self::list) set more than [`ClientConfig::max_events`] or
    /// [`ClientConfig::max_event_bytes`] of them aside.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events + self.client.dropped_events()
    }

    /// What the events held for [`next_event`](Self::next_event) are charged, in bytes (see
    /// [`ClientConfig::max_event_bytes`]).
    pub fn queued_event_bytes(&self) -> usize {
        self.held_bytes + self.client.queued_event_bytes()
    }

    /// Gives the connection back.
    pub fn into_inner(self) -> C {
        self.conn
    }

    /// Asks for the list of nodes and waits for the next `ListIDsReply`. Events that arrive in
    /// the meantime wait for [`next_event`](Self::next_event).
    ///
    /// A server that pushes joins (see
    /// [`SignalConfig::list_push_fanout`](crate::SignalConfig::list_push_fanout)) may send a push
    /// between the request and its reply; then the push is returned, and the reply waits for
    /// `next_event`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] when the connection closes first, and the errors of
    /// [`SignalClient::request_list`] and [`SignalClient::handle_frame`].
    pub async fn list(&mut self) -> Result<Vec<NodeInfo>, ClientError> {
        self.request_list().await?;
        loop {
            match self.read_event().await? {
                ClientEvent::NodeList(nodes) => return Ok(nodes),
                other => self.hold(other),
            }
        }
    }

    /// Asks for the list of nodes without waiting for it; it comes as [`ClientEvent::NodeList`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::request_list`], and [`ClientError::Closed`].
    pub async fn request_list(&mut self) -> Result<(), ClientError> {
        self.client.request_list()?;
        self.flush().await
    }

    /// Sends a set-up message; see [`SignalClient::send_setup`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::send_setup`], and [`ClientError::Closed`].
    pub async fn send_setup(&mut self, setup: PeerInfo) -> Result<(), ClientError> {
        self.client.send_setup(setup)?;
        self.flush().await
    }

    /// Sends `Init` to `to`; see [`SignalClient::send_init`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::send_init`], and [`ClientError::Closed`].
    pub async fn send_init(&mut self, to: NodeID) -> Result<(), ClientError> {
        self.client.send_init(to)?;
        self.flush().await
    }

    /// Answers a set-up message; see [`SignalClient::send_reply`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::send_reply`], and [`ClientError::Closed`].
    pub async fn send_reply(&mut self, to: &PeerInfo, message: PeerMessage) -> Result<(), ClientError> {
        self.client.send_reply(to, message)?;
        self.flush().await
    }

    /// Reports statistics; see [`SignalClient::send_stats`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::send_stats`], and [`ClientError::Closed`].
    pub async fn send_stats(&mut self, stats: Vec<NodeStat>) -> Result<(), ClientError> {
        self.client.send_stats(stats)?;
        self.flush().await
    }

    /// The next thing the server told the node. Dropping the future while it waits for the
    /// server loses nothing.
    ///
    /// # Errors
    ///
    /// [`ClientError::Closed`] once the connection is closed and every frame read;
    /// [`ClientError::Unresponsive`] when the keepalive found the server silent, from then on
    /// (drop the client to close the connection; a client that reconnects reports
    /// [`ClientEvent::Disconnected`] instead and comes back);
    /// [`ClientError::Malformed`] and [`ClientError::Unexpected`] for a frame that does not
    /// decode or makes no sense at this point, after which the client can go on.
    pub async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        match self.held.pop_front() {
            Some((event, charge)) => {
                self.held_bytes -= charge;
                Ok(event)
            }
            None => self.read_event().await,
        }
    }

    /// Keeps the node alive on a server that closes silent nodes: while the application waits
    /// in [`next_event`](Self::next_event) or [`list`](Self::list), a `ListIDsRequest` goes out
    /// every `interval` (see [`SignalClient::set_keepalive`]); the replies come as
    /// [`ClientEvent::NodeList`]. `timer` is the runtime's clock. A server that sends nothing
    /// for two intervals is taken for gone: see [`next_event`](Self::next_event).
    ///
    /// ```no_run
    /// # async fn run(mut node: peer_signal::AsyncClient<peer_signal::WsClient>) {
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use peer_signal::TokioTimer;
    ///
    /// // Well inside the server's default TTL of 120 s, as fledger nodes do.
    /// node.keep_alive(Duration::from_secs(60), Arc::new(TokioTimer));
    /// while let Ok(event) = node.next_event().await {
    ///     println!("{event:?}");
    /// }
    /// # }
    /// ```
    pub fn keep_alive(&mut self, interval: Duration, timer: Arc<dyn Timer>) {
        self.client.set_keepalive(Some(interval));
        self.timer = Some(timer);
        self.arm();
    }

    /// Reads frames, answering what needs an answer, until the server said something. Sends the
    /// keepalive when it is due meanwhile, and notices deadlines that pass.
    async fn read_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(event) = self.client.poll_event() {
                return Ok(event);
            }
            if self.reconnecting.as_ref().is_some_and(|reconnecting| reconnecting.lost) {
                // Boxed: reconnecting reads the server's answer through this very function.
                Box::pin(self.reconnect()).await;
                if let Some((event, charge)) = self.held.pop_front() {
                    self.held_bytes -= charge;
                    return Ok(event);
                }
                continue;
            }
            if let Some(dead) = &self.client.dead {
                // A deadline passed: the connection must not be read again, or a silent server
                // would hold this call for good.
                let dead = dead.clone();
                return self.lost(dead);
            }
            let due = self.timer.clone().zip(self.client.poll_timeout());
            let frame = match due {
                Some((timer, at)) => {
                    let first = {
                        let recv = self.conn.recv();
                        futures::pin_mut!(recv);
                        // `recv` is cancel-safe: dropping it when the keepalive wins loses nothing.
                        match futures::future::select(recv, timer.sleep_until(at)).await {
                            futures::future::Either::Left((frame, _)) => Some(frame),
                            futures::future::Either::Right(_) => None,
                        }
                    };
                    let Some(frame) = first else {
                        if let Err(error) = self.client.handle_timeout(timer.now()) {
                            return self.lost(error);
                        }
                        if self.flush().await.is_err() {
                            return self.lost(ClientError::Closed);
                        }
                        continue;
                    };
                    frame
                }
                None => self.conn.recv().await,
            };
            let Some(frame) = frame else { return self.lost(ClientError::Closed) };
            let idle = self.client.ending == Some(Ending::Idle);
            let handled = self.client.handle_frame(&frame);
            if !idle && self.client.ending == Some(Ending::Idle) {
                let now = self.now();
                self.idle_after =
                    now.zip(self.last_sent).map(|(now, sent)| now.saturating_duration_since(sent));
            }
            self.arm();
            handled?;
            if self.flush().await.is_err() {
                return self.lost(ClientError::Closed);
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(frame) = self.client.poll_transmit() {
            if self.conn.send(frame).await.is_err() {
                // A client that reconnects does so at its next read.
                self.mark_lost();
                return Err(ClientError::Closed);
            }
            self.last_sent = self.now();
        }
        Ok(())
    }

    fn hold(&mut self, event: ClientEvent) {
        let charge = event_size(&event);
        let limits = &self.client.limits;
        if self.held.len() < limits.max_events
            && self.held_bytes.saturating_add(charge) <= limits.max_event_bytes
        {
            self.held_bytes += charge;
            self.held.push_back((event, charge));
        } else {
            self.dropped_events += 1;
        }
    }
}

/// `future`, or `None` once `limit` has passed on `timer`.
async fn within<F: Future>(timer: &Arc<dyn Timer>, limit: Duration, future: F) -> Option<F::Output> {
    futures::pin_mut!(future);
    match futures::future::select(future, timer.sleep_until(timer.now() + limit)).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_would_overflow_a_deadline_are_clamped_to_a_day() {
        let day = Duration::from_secs(24 * 60 * 60);
        let backoff = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(backoff, Backoff::new(day, day));
        for failures in [1, 2, 40, u32::MAX] {
            assert!(backoff.delay(failures, u32::MAX) <= day.mul_f64(1.25));
        }
        assert_eq!(Backoff::new(Duration::ZERO, Duration::ZERO).delay(1, 0), Duration::from_micros(750));

        let key = SigningKey::from_bytes(&[1; 32]);
        let info = NodeInfo::new("n", "test", key.verifying_key().to_bytes());
        let config = ClientConfig::default()
            .with_sign_in_timeout(Duration::MAX)
            .with_keepalive(Duration::MAX)
            .with_stable_session(Duration::MAX);
        let mut client = SignalClient::with_config(key, info, Codec::Json, &config);
        assert_eq!(client.config().sign_in_timeout, day);
        assert_eq!(client.config().stable_session, day);
        assert_eq!(client.keepalive(), Some(day));
        let now = Instant::now();
        client.handle_timeout(now).unwrap();
        assert_eq!(client.poll_timeout(), Some(now + day));
        client.set_keepalive(Some(Duration::MAX));
        assert_eq!(client.keepalive(), Some(day));
        client.set_keepalive(Some(Duration::from_nanos(1)));
        assert_eq!(client.keepalive(), Some(SHORTEST_KEEPALIVE), "not a flood of requests");
        client.set_keepalive(Some(Duration::ZERO));
        assert_eq!(client.keepalive(), None);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_within_a_quarter_either_way() {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let bounds = |base: f64| (Duration::from_secs_f64(base * 0.75), Duration::from_secs_f64(base * 1.25));
        for (failures, base) in [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (40, 30.0)] {
            let (low, high) = bounds(base);
            for random in [0, u32::MAX / 3, u32::MAX] {
                let delay = backoff.delay(failures, random);
                assert!(delay >= low && delay <= high, "{failures} failures: {delay:?}");
            }
            assert!(backoff.delay(failures, 0) < backoff.delay(failures, u32::MAX), "jitter spreads");
        }
    }
}
