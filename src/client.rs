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
use crate::error::{CodecError, TransportError};
use crate::protocol::{
    FledgerConfig, MessageAnnounce, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage,
    WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION,
};

/// How many frames or events a client holds for the application before it refuses or drops more.
/// Far above what one round trip produces; reached only when the application stops draining.
const MAX_QUEUED: usize = 1024;

/// What the server told the node, drained from [`SignalClient::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the announce and sent its `SystemConfig`.
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
    /// A request before the server accepted the announce; it was not sent.
    #[error("not connected yet")]
    NotConnected,
    /// The application has not drained [`SignalClient::poll_transmit`]; the request was not queued.
    #[error("too many frames waiting to be sent")]
    Backlog,
    /// The server answered the announce with this error.
    #[error("refused by the server: {0}")]
    Refused(String),
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

/// A node's side of the signalling protocol, as a state machine: no I/O, no clock.
///
/// Feed it every frame from the server with [`handle_frame`](Self::handle_frame); then send
/// whatever [`poll_transmit`](Self::poll_transmit) returns, and read
/// [`poll_event`](Self::poll_event) until both return `None`. The client answers the challenge by
/// itself; once [`ClientEvent::Connected`] comes, it may list nodes and exchange `PeerSetup`.
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
    transmit: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    dropped_events: u64,
    /// How often to ask for the list while connected, so that the server sees the node alive.
    keepalive: Option<Duration>,
    /// When the next keepalive is due; armed by the first `handle_timeout` once connected.
    next_keepalive: Option<Instant>,
}

impl fmt::Debug for SignalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalClient")
            .field("id", &self.info.id())
            .field("codec", &self.codec)
            .field("state", &self.state)
            .field("transmit", &self.transmit.len())
            .field("events", &self.events.len())
            // key: not printed.
            .finish_non_exhaustive()
    }
}

impl SignalClient {
    /// A client for the node that holds `key`, describing itself with `info`, speaking `codec`.
    ///
    /// `info.pubkey` is replaced by the public half of `key`: the server checks the signature
    /// against it, so the two cannot differ.
    pub fn new(key: SigningKey, mut info: NodeInfo, codec: Codec) -> Self {
        info.pubkey = key.verifying_key().to_bytes();
        Self {
            key,
            info,
            codec,
            state: State::AwaitingChallenge,
            config: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            dropped_events: 0,
            keepalive: None,
            next_keepalive: None,
        }
    }

    /// The same node on a new connection: the state of the old one forgotten, the keepalive kept.
    fn renewed(&self) -> Self {
        let mut client = Self::new(self.key.clone(), self.info.clone(), self.codec);
        client.keepalive = self.keepalive;
        client.dropped_events = self.dropped_events;
        client
    }

    /// Keeps the node alive on servers that close silent nodes (this crate's after
    /// [`SignalConfig::ttl`](crate::SignalConfig::ttl), 120 s by default): once connected, a
    /// `ListIDsRequest` goes out every `interval`, as fledger nodes send one every minute. Pick an
    /// interval well inside the server's TTL; `None` (the default) sends nothing unasked.
    ///
    /// The client reads no clock: feed it the time with [`handle_timeout`](Self::handle_timeout)
    /// when [`poll_timeout`](Self::poll_timeout) says.
    pub fn set_keepalive(&mut self, interval: Option<Duration>) {
        self.keepalive = interval.filter(|interval| !interval.is_zero());
        self.next_keepalive = None;
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called next: `None` while there
    /// is nothing to time (no keepalive, not connected) or before the first call has armed it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_keepalive
    }

    /// Tells the client the time: arms the keepalive once connected (the first call), and queues
    /// a `ListIDsRequest` when it is due. Drain [`poll_transmit`](Self::poll_transmit) afterwards.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(interval) = self.keepalive.filter(|_| self.state == State::Connected) else {
            self.next_keepalive = None;
            return;
        };
        match self.next_keepalive {
            None => self.next_keepalive = Some(now + interval),
            Some(due) if due <= now => {
                // A full backlog means the application is not sending: a missed keepalive is
                // then the least of its problems, and the next one comes an interval later.
                let _ = self.request(&WSSignalMessageFromNode::ListIDsRequest);
                self.next_keepalive = Some(now + interval);
            }
            Some(_) => {}
        }
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

    /// Whether the server has accepted the announce.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// The configuration the server sent with its acceptance.
    pub fn system_config(&self) -> Option<&FledgerConfig> {
        self.config.as_ref()
    }

    /// Events dropped because [`poll_event`](Self::poll_event) was not drained.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// Handles one frame from the server.
    ///
    /// The first `Challenge` of the connection is answered at once with an `Announce` signed by
    /// the node's key; anything else becomes a [`ClientEvent`]. Drain
    /// [`poll_transmit`](Self::poll_transmit) and [`poll_event`](Self::poll_event) afterwards.
    ///
    /// # Errors
    ///
    /// [`ClientError::Malformed`] for a frame that does not decode,
    /// [`ClientError::UnsupportedVersion`] for a challenge of another protocol version,
    /// [`ClientError::UnexpectedChallenge`] for any challenge after the one answered, and
    /// [`ClientError::Backlog`] when the announce cannot be queued. The frame is ignored and the
    /// client stays usable.
    pub fn handle_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let message = self.codec.decode(frame).map_err(ClientError::Malformed)?;
        let event = match message {
            WSSignalMessageToNode::Challenge(version, challenge) => {
                if self.state != State::AwaitingChallenge {
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
                self.state = State::Connected;
                self.config = Some(config.clone());
                ClientEvent::Connected(config)
            }
            WSSignalMessageToNode::ListIDsReply(nodes) => ClientEvent::NodeList(nodes),
            WSSignalMessageToNode::PeerSetup(setup) => ClientEvent::PeerSetup(setup),
            WSSignalMessageToNode::Error(text) => ClientEvent::Error(text),
        };
        if self.events.len() < MAX_QUEUED {
            self.events.push_back(event);
        } else {
            self.dropped_events += 1;
        }
        Ok(())
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
    /// Drain it after [`handle_frame`](Self::handle_frame): at most 1024 events wait, further
    /// ones are dropped and counted in [`dropped_events`](Self::dropped_events).
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn request(&mut self, message: &WSSignalMessageFromNode) -> Result<(), ClientError> {
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
    /// Events read while waiting for something else, returned first by `next_event`.
    held: VecDeque<ClientEvent>,
    dropped_events: u64,
    /// The clock of the keepalive and of the reconnection backoff, when there is one.
    timer: Option<Arc<dyn Timer>>,
    /// How to reconnect, for a client that does.
    reconnecting: Option<Reconnecting<C>>,
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
/// failure, doubled after each further one up to `max`, and each wait spread at random over
/// ±25%, so that many nodes cut off at once do not all come back at the same instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// From `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial) }
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

/// How long a reconnected client waits for the server to accept its announce before it tries
/// again.
const RECONNECT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A client's means to reconnect.
struct Reconnecting<C> {
    reconnect: Box<dyn Reconnect<C>>,
    backoff: Backoff,
    /// The connection is lost; the next read reconnects.
    lost: bool,
    /// Attempts that failed since the connection was lost.
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
            .finish_non_exhaustive()
    }
}

impl<C: ClientConnection> AsyncClient<C> {
    /// Completes the handshake on `conn`: answers the challenge with `key`, then waits for the
    /// server's `SystemConfig` and the `ListIDsReply` that follows it. See [`SignalClient::new`]
    /// for `info`.
    ///
    /// The servers of this crate and of fledger both send that list on acceptance; waiting for it
    /// here means a later [`list`](Self::list) gets a reply to its own request. The list itself
    /// is the first [`next_event`](Self::next_event).
    ///
    /// # Errors
    ///
    /// [`ClientError::Refused`] when the server answers the announce with an error,
    /// [`ClientError::Closed`] when the connection closes first, and the errors of
    /// [`SignalClient::handle_frame`].
    pub async fn connect(conn: C, key: SigningKey, info: NodeInfo) -> Result<Self, ClientError> {
        let client = SignalClient::new(key, info, conn.codec());
        let mut this =
            Self { conn, client, held: VecDeque::new(), dropped_events: 0, timer: None, reconnecting: None };
        this.handshake(false).await?;
        Ok(this)
    }

    /// As [`connect`](Self::connect), on a connection from `reconnect`; and when the connection
    /// is lost later, reconnects and announces again by itself, waiting as `backoff` says between
    /// attempts (on `timer`, the runtime's clock), for as long as it takes.
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
        let conn = reconnect.connect().await.map_err(|_| ClientError::Closed)?;
        let mut this = Self::connect(conn, key, info).await?;
        this.timer = Some(timer);
        this.reconnecting =
            Some(Reconnecting { reconnect: Box::new(reconnect), backoff, lost: false, failures: 0 });
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

    /// Reconnects, waiting between attempts, until the server has accepted the announce again.
    async fn reconnect(&mut self) {
        let (Some(mut reconnecting), Some(timer)) = (self.reconnecting.take(), self.timer.clone()) else {
            return;
        };
        loop {
            if reconnecting.failures > 0 {
                let delay = reconnecting.backoff.delay(reconnecting.failures, rand_core::OsRng.next_u32());
                timer.sleep_until(timer.now() + delay).await;
            }
            if let Ok(conn) = reconnecting.reconnect.connect().await {
                self.conn = conn;
                self.client = self.client.renewed();
                if self.client.keepalive.is_some() {
                    self.client.handle_timeout(timer.now());
                }
                // A server that takes the connection but never answers must not hold us.
                let answered = {
                    let handshake = self.handshake(true);
                    futures::pin_mut!(handshake);
                    let deadline = timer.sleep_until(timer.now() + RECONNECT_HANDSHAKE_TIMEOUT);
                    match futures::future::select(handshake, deadline).await {
                        futures::future::Either::Left((result, _)) => result.is_ok(),
                        futures::future::Either::Right(_) => false,
                    }
                };
                if answered {
                    break;
                }
            }
            reconnecting.failures = reconnecting.failures.saturating_add(1);
        }
        reconnecting.lost = false;
        reconnecting.failures = 0;
        self.reconnecting = Some(reconnecting);
    }

    /// The connection is gone: an error, or for a client that reconnects the news of it.
    fn lost(&mut self) -> Result<ClientEvent, ClientError> {
        match &mut self.reconnecting {
            Some(reconnecting) => {
                reconnecting.lost = true;
                Ok(ClientEvent::Disconnected)
            }
            None => Err(ClientError::Closed),
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
    /// [`list`](Self::list) set more than 1024 of them aside.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events + self.client.dropped_events()
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
    /// [`ClientError::Malformed`] for a frame that does not decode, after which the client can
    /// go on.
    pub async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        match self.held.pop_front() {
            Some(event) => Ok(event),
            None => self.read_event().await,
        }
    }

    /// Keeps the node alive on a server that closes silent nodes: while the application waits
    /// in [`next_event`](Self::next_event) or [`list`](Self::list), a `ListIDsRequest` goes out
    /// every `interval` (see [`SignalClient::set_keepalive`]); the replies come as
    /// [`ClientEvent::NodeList`]. `timer` is the runtime's clock.
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
        self.client.handle_timeout(timer.now());
        self.timer = Some(timer);
    }

    /// Reads frames, answering what needs an answer, until the server said something. Sends the
    /// keepalive when it is due meanwhile.
    async fn read_event(&mut self) -> Result<ClientEvent, ClientError> {
        loop {
            if let Some(event) = self.client.poll_event() {
                return Ok(event);
            }
            if self.reconnecting.as_ref().is_some_and(|reconnecting| reconnecting.lost) {
                // Boxed: reconnecting reads the server's answer through this very function.
                Box::pin(self.reconnect()).await;
                if let Some(event) = self.held.pop_front() {
                    return Ok(event);
                }
                continue;
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
                        self.client.handle_timeout(timer.now());
                        self.flush().await?;
                        continue;
                    };
                    frame
                }
                None => self.conn.recv().await,
            };
            let Some(frame) = frame else { return self.lost() };
            self.client.handle_frame(&frame)?;
            if self.flush().await.is_err() {
                return self.lost();
            }
        }
    }

    async fn flush(&mut self) -> Result<(), ClientError> {
        while let Some(frame) = self.client.poll_transmit() {
            if self.conn.send(frame).await.is_err() {
                // A client that reconnects does so at its next read.
                if let Some(reconnecting) = &mut self.reconnecting {
                    reconnecting.lost = true;
                }
                return Err(ClientError::Closed);
            }
        }
        Ok(())
    }

    fn hold(&mut self, event: ClientEvent) {
        if self.held.len() < MAX_QUEUED {
            self.held.push_back(event);
        } else {
            self.dropped_events += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
