//! [`SignalClient`]: the node's side of the protocol as a state machine, without I/O or clock.

use super::*;

/// How many frames a client holds for sending before it refuses more. Far above what one round
/// trip produces; reached only when the application stops draining.
pub(super) const MAX_QUEUED: usize = 1024;

/// What a heap-allocated event costs beside its text: the event itself, and per listed node.
pub(super) const EVENT_OVERHEAD: usize = std::mem::size_of::<ClientEvent>();

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum State {
    AwaitingChallenge,
    Announced,
    Connected,
}

/// How a connection ended, as far as the server said before it went: what a client that
/// reconnects needs to know to wait long enough, and to keep alive often enough.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Ending {
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
    pub(super) key: SigningKey,
    pub(super) info: NodeInfo,
    pub(super) codec: Codec,
    pub(super) state: State,
    pub(super) config: Option<FledgerConfig>,
    pub(super) limits: ClientConfig,
    pub(super) transmit: VecDeque<Bytes>,
    /// Events with what each is charged against `limits.max_event_bytes`.
    pub(super) events: VecDeque<(ClientEvent, usize)>,
    pub(super) event_bytes: usize,
    pub(super) dropped_events: u64,
    pub(super) refused_messages: u64,
    /// How often to ask for the list while connected, so that the server sees the node alive.
    pub(super) keepalive: Option<Duration>,
    /// When the next keepalive is due; armed by the first `handle_timeout` once connected.
    pub(super) next_keepalive: Option<Instant>,
    /// When the sign-in must be done; armed by the first `handle_timeout`.
    pub(super) sign_in_deadline: Option<Instant>,
    /// A frame arrived since the last keepalive fell due.
    pub(super) heard: bool,
    /// Keepalive intervals in a row in which nothing arrived.
    pub(super) silent_intervals: u8,
    /// Why the connection is dead, once a deadline has passed.
    pub(super) dead: Option<ClientError>,
    /// What the server said about the end of the connection.
    pub(super) ending: Option<Ending>,
    /// The last ICE servers the server sent.
    pub(super) ice_servers: Option<IceServers>,
    /// What the server offered before its challenge.
    pub(super) capabilities: Option<Capabilities>,
    /// The id of the server, for a bound sign-in: the config's, else the connection's.
    pub(super) server_id: Option<String>,
    /// The node signs its set-up messages on this connection.
    pub(super) signing: bool,
    /// The next sequence number to sign a set-up message with.
    pub(super) next_seq: u64,
    /// The last sequence number seen from each peer, for replays.
    pub(super) seen_seq: HashMap<NodeID, u64>,
}

/// Peers whose last sequence number a client remembers; past it, the oldest entry goes (and
/// replays of that peer's old messages would pass until it sends again).
const MAX_SEEN_PEERS: usize = 4096;

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
        let server_id = limits.server_id.clone();
        let next_seq = limits.setup_seq_start.unwrap_or_else(unix_micros);
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
            ice_servers: None,
            capabilities: None,
            server_id,
            signing: false,
            next_seq,
            seen_seq: HashMap::new(),
        }
    }

    /// Uses `server_id` for a bound sign-in unless [`ClientConfig::server_id`] names one.
    pub fn use_server_id(&mut self, server_id: Option<String>) {
        if self.limits.server_id.is_none() {
            self.server_id = server_id;
        }
    }

    /// Whether the sign-in was bound and set-up messages are signed on this connection.
    pub fn signs_setups(&self) -> bool {
        self.signing
    }

    /// The same node on a new connection: the state of the old one forgotten, the settings and
    /// counters kept.
    pub(super) fn renewed(&self) -> Self {
        let mut client = Self::with_config(self.key.clone(), self.info.clone(), self.codec, &self.limits);
        client.keepalive = self.keepalive;
        client.dropped_events = self.dropped_events;
        client.refused_messages = self.refused_messages;
        client.server_id = self.server_id.clone();
        client.next_seq = self.next_seq;
        client.seen_seq = self.seen_seq.clone();
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

    /// The ICE servers, with TURN credentials for this node, that the server sent last (see
    /// [`ClientEvent::IceServers`]); `None` from a server without TURN. Check
    /// [`IceServers::expires`] before use: a client that was offline may hold old ones.
    pub fn ice_servers(&self) -> Option<&IceServers> {
        self.ice_servers.as_ref()
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
            WSSignalMessageToNode::Capabilities(capabilities) => {
                if self.state != State::AwaitingChallenge {
                    return Err(self.refuse("capabilities after the challenge"));
                }
                self.capabilities = Some(capabilities);
                return Ok(());
            }
            WSSignalMessageToNode::Challenge(version, challenge) => {
                if self.state != State::AwaitingChallenge {
                    self.refused_messages += 1;
                    return Err(ClientError::UnexpectedChallenge);
                }
                if version != SIGNAL_VERSION {
                    return Err(ClientError::UnsupportedVersion(version));
                }
                let message = self.answer(challenge)?;
                self.queue(&message)?;
                self.state = State::Announced;
                return Ok(());
            }
            WSSignalMessageToNode::SignedPeerSetup(signed) => {
                if self.state != State::Connected {
                    return Err(self.refuse("a set-up message before the sign-in"));
                }
                let me = self.id();
                if signed.setup.id_init != me && signed.setup.id_follow != me {
                    return Err(self.refuse("a set-up message for a pair without this node"));
                }
                self.check_signed(*signed)
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
                if self.limits.require_signed_setups {
                    ClientEvent::RejectedSetup { setup, reason: SetupRejection::Unsigned }
                } else {
                    ClientEvent::PeerSetup(setup)
                }
            }
            WSSignalMessageToNode::IceServers(servers) => {
                if self.state != State::Connected {
                    return Err(self.refuse("ICE servers before the sign-in"));
                }
                self.ice_servers = Some(servers.clone());
                ClientEvent::IceServers(servers)
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

    /// The answer to `challenge`: bound where the binding setting and the server allow, plain v3
    /// otherwise.
    fn answer(&mut self, challenge: U256) -> Result<WSSignalMessageFromNode, ClientError> {
        let offered = self.capabilities.as_ref().filter(|caps| caps.bound_announce == BOUND_ANNOUNCE_VERSION);
        let bound = match (self.limits.binding, offered, &self.server_id) {
            (ClientBinding::Off, _, _) => None,
            (_, Some(caps), Some(server_id)) => Some((caps.signed_setups, server_id.clone())),
            (ClientBinding::Require, None, _) => {
                return Err(self.die(ClientError::BindingUnavailable("the server offered no bound sign-in")))
            }
            (ClientBinding::Require, _, None) => {
                return Err(self.die(ClientError::BindingUnavailable("the server's id is unknown")))
            }
            _ => None,
        };
        let Some((signed_setups, server_id)) = bound else {
            return Ok(WSSignalMessageFromNode::Announce(MessageAnnounce {
                version: SIGNAL_VERSION,
                challenge,
                node_info: self.info.clone(),
                signature: sign_challenge(&self.key, &challenge),
            }));
        };
        let flags = if signed_setups && self.limits.sign_setups { FLAG_SIGNED_SETUPS } else { 0 };
        // Our own NodeInfo always encodes.
        let node_info = serde_json::to_string(&self.info).unwrap_or_default();
        let Some(bytes) = bound_announce_bytes(&server_id, &challenge, &self.info.pubkey, &node_info, flags)
        else {
            return Err(self.die(ClientError::BindingUnavailable("the server's id is longer than 255 bytes")));
        };
        self.signing = flags != 0;
        Ok(WSSignalMessageFromNode::BoundAnnounce(Box::new(BoundAnnounce {
            version: BOUND_ANNOUNCE_VERSION,
            challenge,
            server_id,
            node_info,
            flags,
            signature: crate::binding::sign(&self.key, &bytes),
        })))
    }

    /// A signed set-up message, checked: its signature under the sender's id, and its sequence
    /// number above the last one seen from the sender.
    fn check_signed(&mut self, signed: SignedSetup) -> ClientEvent {
        let me = self.id();
        let from_init = signed.setup.id_follow == me && signed.setup.id_init != me;
        let sender = if from_init { signed.setup.id_init } else { signed.setup.id_follow };
        let bytes = setup_bytes(&signed.setup, from_init, signed.seq);
        if !crate::binding::verifies(sender.as_bytes(), &bytes, &signed.signature) {
            return ClientEvent::RejectedSetup { setup: signed.setup, reason: SetupRejection::BadSignature };
        }
        if self.seen_seq.get(&sender).is_some_and(|&last| signed.seq <= last) {
            return ClientEvent::RejectedSetup { setup: signed.setup, reason: SetupRejection::Replayed };
        }
        if self.seen_seq.len() >= MAX_SEEN_PEERS && !self.seen_seq.contains_key(&sender) {
            let oldest = self.seen_seq.iter().min_by_key(|(_, &seq)| seq).map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                self.seen_seq.remove(&oldest);
            }
        }
        self.seen_seq.insert(sender, signed.seq);
        ClientEvent::PeerSetup(signed.setup)
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

    /// Asks the server for fresh ICE servers; they come as [`ClientEvent::IceServers`] (a server
    /// without TURN answers with an error, fledger's with `malformed message`).
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn request_ice_servers(&mut self) -> Result<(), ClientError> {
        self.request(&WSSignalMessageFromNode::IceServersRequest)
    }

    /// Sends a set-up message to the other node of `setup`'s pair. This node must be one of
    /// `id_init` and `id_follow`, or the server answers with an error.
    ///
    /// # Errors
    ///
    /// As [`request_list`](Self::request_list).
    pub fn send_setup(&mut self, setup: PeerInfo) -> Result<(), ClientError> {
        if !self.signing {
            return self.request(&WSSignalMessageFromNode::PeerSetup(setup));
        }
        let from_init = setup.id_init == self.id();
        let seq = self.next_seq;
        let signature = crate::binding::sign(&self.key, &setup_bytes(&setup, from_init, seq));
        self.request(&WSSignalMessageFromNode::SignedPeerSetup(Box::new(SignedSetup {
            setup,
            seq,
            signature,
        })))?;
        self.next_seq = seq.saturating_add(1);
        Ok(())
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
pub(super) fn event_size(event: &ClientEvent) -> usize {
    EVENT_OVERHEAD
        + match event {
            ClientEvent::Connected(_) | ClientEvent::Disconnected => 0,
            ClientEvent::NodeList(nodes) => nodes
                .iter()
                .map(|node| std::mem::size_of::<NodeInfo>() + node.name.len() + node.client.len())
                .sum(),
            ClientEvent::PeerSetup(setup) | ClientEvent::RejectedSetup { setup, .. } => {
                setup.message.text().map_or(0, str::len)
            }
            ClientEvent::Error(text) => text.len(),
            ClientEvent::IceServers(ice) => ice
                .servers
                .iter()
                .map(|server| {
                    let urls: usize =
                        server.urls.iter().map(|url| std::mem::size_of::<String>() + url.len()).sum();
                    std::mem::size_of::<IceServer>() + urls + server.username.len() + server.credential.len()
                })
                .sum(),
        }
}

/// Microseconds since the Unix epoch, from the system clock: where a node's set-up sequence
/// numbers start, unless its config says.
fn unix_micros() -> u64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
}
