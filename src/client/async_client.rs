//! [`AsyncClient`]: a [`SignalClient`] driven over a [`ClientConnection`], with keepalive and
//! reconnection on the application's runtime.

use super::*;

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

    /// The canonical id of the server at the other end, if the connection knows it (`WsClient`
    /// knows its URL; a `LinkClient` the hosting node given with `with_host`), for a bound
    /// sign-in: see [`ClientConfig::binding`]. The default is none.
    fn server_id(&self) -> Option<String> {
        None
    }
}

#[async_trait]
impl<C: ClientConnection + ?Sized> ClientConnection for Box<C> {
    fn codec(&self) -> Codec {
        (**self).codec()
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        (**self).send(frame).await
    }

    async fn recv(&mut self) -> Option<Bytes> {
        (**self).recv().await
    }

    fn timer(&self) -> Option<Arc<dyn Timer>> {
        (**self).timer()
    }

    fn server_id(&self) -> Option<String> {
        (**self).server_id()
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

/// A client's means to reconnect.
pub(super) struct Reconnecting<C> {
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
        mut client: SignalClient,
        timer: Option<Arc<dyn Timer>>,
    ) -> Result<Self, ClientError> {
        client.use_server_id(conn.server_id());
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
                self.client.use_server_id(self.conn.server_id());
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

    /// Whether the client reconnects by itself when its connection is lost (see
    /// [`connect_reconnecting`](Self::connect_reconnecting)).
    pub fn reconnects(&self) -> bool {
        self.reconnecting.is_some()
    }

    /// The clock the client runs on, if it has one.
    pub(super) fn clock(&self) -> Option<Arc<dyn Timer>> {
        self.timer.clone()
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

    /// Asks for fresh ICE servers without waiting for them; they come as
    /// [`ClientEvent::IceServers`]. See [`SignalClient::request_ice_servers`].
    ///
    /// # Errors
    ///
    /// As [`SignalClient::request_ice_servers`], and [`ClientError::Closed`].
    pub async fn request_ice_servers(&mut self) -> Result<(), ClientError> {
        self.client.request_ice_servers()?;
        self.flush().await
    }

    /// The ICE servers the server sent last; see [`SignalClient::ice_servers`].
    pub fn ice_servers(&self) -> Option<&IceServers> {
        self.client.ice_servers()
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
pub(super) async fn within<F: Future>(
    timer: &Arc<dyn Timer>,
    limit: Duration,
    future: F,
) -> Option<F::Output> {
    futures::pin_mut!(future);
    match futures::future::select(future, timer.sleep_until(timer.now() + limit)).await {
        futures::future::Either::Left((output, _)) => Some(output),
        futures::future::Either::Right(_) => None,
    }
}
