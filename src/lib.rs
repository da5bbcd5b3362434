//! A sans-IO signalling server for peer-to-peer nodes, wire-compatible with fledger's signalling
//! protocol (version 3).
//!
//! Nodes prove they hold their ed25519 key by signing a random challenge, learn which other nodes
//! are connected, and relay the WebRTC set-up messages (Init, Offer, Answer, IceCandidate) to each
//! other through the server. The JSON wire format is byte-for-byte fledger 0.10's, so existing
//! fledger nodes can use this server unchanged.
//!
//! A WebSocket signalling server inside a tokio application (feature `websocket`):
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use peer_signal::{Driver, SignalConfig, SignalServer, WsConfig, WsTransport};
//!
//! let config = SignalConfig::default();
//! let transport = WsTransport::bind("0.0.0.0:8765", WsConfig::for_server(&config)).await?;
//! let (driver, handle, _events) = Driver::new(SignalServer::new(config)?, transport, 1024);
//! let ticks = futures::stream::unfold(tokio::time::interval(std::time::Duration::from_secs(1)), |mut i| async {
//!     i.tick().await;
//!     Some(((), i))
//! });
//! tokio::spawn(driver.run(Box::pin(ticks)));
//! // … later: handle.stop(), and the server closes every connection.
//! # drop(handle); Ok(()) }
//! ```
//!
//! | Cargo feature | What it adds |
//! |---|---|
//! | (none) | the sans-IO [`SignalServer`], [`SignalClient`], the [`Driver`], the in-process [`MemoryTransport`], and hosted signalling over peer links ([`LinkTransport`], [`LinkClient`], [`SignalPaths`]): no tokio, no sockets |
//! | `websocket` | `WsTransport` and `WsClient` (tokio, our framing on tungstenite's headers), admission hooks, `TokioTimer` |
//! | `tls` | wss:// on both sides: `ServerTls`, `TlsRoots` (rustls with ring; no OpenSSL) |
//! | `redis` | `RedisBackplane`: several instances form one network through Redis (needs Rust 1.88) |
//! | `metrics` | counters, gauges and histograms through the `metrics` facade, for any exporter: see [Metrics and logs](#metrics-and-logs) |
//! | `tracing` | joins, leaves, refusals and errors as `tracing` events: see [Metrics and logs](#metrics-and-logs) |
//! | `browser` | in a web page (`wasm32-unknown-unknown` only): `BrowserWs`, `attach_channel`, `link_client`, `host_signalling`, `BrowserTimer`: see [In the browser](#in-the-browser) |
//!
//! # What this crate does not do
//!
//! [`SignalServer`] opens no sockets, reads no clock, spawns no tasks and needs no runtime: it is a
//! state machine. Frames, connections, time and ticks come in with [`SignalServer::handle`];
//! frames to send, connections to close and events for the application come out of
//! [`SignalServer::poll_output`]. A transport and a driver move the bytes. So every rule of the
//! protocol can be tested without a network, deterministically, and fuzzed from raw bytes.
//!
//! It does not relay media, and it does not trust nodes with anything but their own id: a node can
//! only announce the key it holds and only relay within pairs it belongs to.
//!
//! # The protocol
//!
//! ```text
//!  node A                         server                          node B
//!    │ ── connect ──────────────────▶ │                                │
//!    │ ◀─ Challenge(3, c_A) ───────── │                                │
//!    │ ── Announce{3, c_A, info_A, sign_A(c_A)} ─▶ │ verify_strict     │
//!    │ ◀─ SystemConfig ────────────── │                                │
//!    │ ◀─ ListIDsReply([..]) ──────── │   (B does the same)            │
//!    │ ── ListIDsRequest ───────────▶ │                                │
//!    │ ◀─ ListIDsReply([A, B, ..]) ── │                                │
//!    │ ── PeerSetup{A, B, Init} ────▶ │ ── PeerSetup{A, B, Init} ────▶ │
//!    │ ◀─ PeerSetup{A, B, Offer} ──── │ ◀─ PeerSetup{A, B, Offer} ──── │
//!    │ ── PeerSetup{A, B, Answer} ──▶ │ ── PeerSetup{A, B, Answer} ──▶ │
//!    │ ◀─ PeerSetup{A, B, IceCandidate} ─ … both ways … ─▶             │
//! ```
//!
//! 1. **Connect.** The server sends `Challenge(SIGNAL_VERSION, c)`: 256 fresh bits from a CSPRNG.
//! 2. **Announce.** The node answers with [`MessageAnnounce`]: its [`NodeInfo`] (whose public key
//!    is its [`NodeID`]) and its ed25519 signature over the 32 raw challenge bytes. The server
//!    checks the version, that the challenge is the one it sent on this connection, the lengths of
//!    the strings, and the signature with `verify_strict` (which also refuses weak keys). On
//!    success the node gets `SystemConfig` and a `ListIDsReply`, and the application gets
//!    [`SignalEvent::NewNode`]. On failure it gets an `Error` and may try again; after
//!    [`SignalConfig::max_announce_failures`] failures the connection is closed.
//! 3. **List.** `ListIDsRequest` gets a `ListIDsReply` with at most
//!    [`SignalConfig::max_list_len`] nodes, a fresh uniform sample each time.
//! 4. **Relay.** `PeerSetup(PeerInfo{id_init, id_follow, message})` from one of the two ids goes to
//!    the other, as the very same frame when both speak the same codec. While the other node's
//!    transport reports its send queue over half full ([`SignalIn::Busy`]), the sender gets
//!    `destination busy` instead, so that its peers cannot get a slow reader closed.
//! 5. **Stats.** `NodeStats` is handed to the application as [`SignalEvent::NodeStats`].
//! 6. **Same id twice.** A new connection announcing a connected id takes it over; the old one
//!    gets `Error("New Connection with same ID")` and is closed.
//! 7. **Timeouts.** Every valid frame restarts a node's [`SignalConfig::ttl`]; idle nodes are
//!    closed. Connections that do not announce within [`SignalConfig::handshake_timeout`] are
//!    closed.
//! 8. **Joins reach others without a broadcast storm.** fledger nodes ask for the list right after
//!    announcing and then every minute. On top of that, the nodes that joined during one
//!    [`SignalConfig::list_push_interval`] are pushed, in one shared `ListIDsReply`, to at most
//!    [`SignalConfig::list_push_fanout`] random nodes. A join therefore costs a bounded number of
//!    frames however many nodes are connected, where fledger's own server sends the whole list to
//!    every node on every join.
//!
//! Where this server deliberately differs from fledger's: it answers mistakes with an `Error`
//! instead of silence, requires an announce before anything else, closes idle and replaced
//! connections instead of only forgetting them, and bounds every string, list and queue.
//!
//! # Errors a node can receive
//!
//! Each is a [`ProtocolError`]; its `Display` text is the `Error(String)` on the wire, and these
//! texts are stable (a test pins every one). A closed connection gets its `Error` frame first,
//! then the close (over WebSocket: code 1013 "try again later" for `server full`, 1001 when the
//! server stops, 1008 "policy" for the rest). Where an error quotes the frame (the decoder's
//! description of a malformed one), it quotes at most 128 bytes of it, the cut marked with `…`.
//! Every `Error` is charged to its receiver's [`SignalConfig::byte_rate`], like every reply.
//!
//! | Error text | Cause | Connection |
//! |---|---|---|
//! | `frame too large: N bytes, limit is L` | frame over [`SignalConfig::max_frame_size`] | open¹ |
//! | `malformed message: …` | not a message of this protocol (the decoder says why, in at most 128 bytes) | open¹ |
//! | `not authenticated: announce first` | anything but `Announce` before announcing | open¹ |
//! | `already authenticated` | a second `Announce` | open¹ |
//! | `unsupported protocol version V, expected 3` | `Announce.version` is not 3 | open² |
//! | `unknown challenge` | `Announce.challenge` is not this connection's | open² |
//! | `invalid public key` | not an ed25519 point, or a weak one | open² |
//! | `signature does not verify` | bad signature over the challenge | open² |
//! | `FIELD too long: N bytes, limit is L` | `name` or `client` of an announce (²); `version` of a stat or `peer message` of a set-up (¹); N is the length as encoded in JSON | open¹ ² |
//! | `too many node stats: N, limit is L` | `NodeStats` over [`SignalConfig::max_node_stats`] | open¹ |
//! | `sender is neither id_init nor id_follow` | a `PeerSetup` for someone else's pair | open¹ |
//! | `unknown destination ID` | the other node is not connected | open, no strike |
//! | `destination busy: ID` | the other node's send queue is over half full ([`SignalIn::Busy`]); the set-up was dropped | open, no strike |
//! | `New Connection with same ID` | another connection announced this id | closed |
//! | `server full` | [`SignalConfig::max_connections`] reached, every connection an announced node | closed |
//! | `handshake timeout` | no announce within the handshake timeout; or the oldest pending connection, when a newcomer finds [`SignalConfig::max_pending_handshakes`] (or `max_connections`) reached | closed |
//! | `idle timeout` | no valid frame within the TTL | closed |
//! | `too many errors` | [`SignalConfig::max_errors`] strikes (¹) | closed |
//! | `too many failed announces` | [`SignalConfig::max_announce_failures`] failed announces (²) | closed |
//! | `rate limit exceeded` | more frames or bytes than [`SignalConfig::frame_rate`] or [`SignalConfig::byte_rate`] allow | closed |
//! | the policy's reason, e.g. `node not allowed` | [`SignalConfig::announce_policy`] refused the node | closed |
//!
//! ¹ The error counts as a strike. The strike that reaches [`SignalConfig::max_errors`] is followed
//! by `too many errors` and a close. An unknown or busy destination is not the sender's fault (the
//! other node may just have left, or be reading slowly), so it is no strike.
//!
//! ² A failed announce: no strike, but it counts towards [`SignalConfig::max_announce_failures`];
//! the failure that reaches it is followed by `too many failed announces` and a close.
//!
//! The WebSocket transport adds limits of its own, which close without an `Error` frame: messages
//! over `WsConfig::max_message_size` (close code 1009), frames that break RFC 6455 (1002, and
//! 1007 for text that is not UTF-8), send queues over [`SignalConfig::max_send_backlog`] frames
//! or `WsConfig::send_backlog_bytes` bytes and writes that make no progress for
//! `WsConfig::write_timeout` (slow readers, closed at once), WebSocket handshakes over
//! `WsConfig::handshake_timeout`, silence past two pings (1001), and TCP connections over
//! `WsConfig::max_connections` or `WsConfig::max_connections_per_ip` (dropped right after
//! `accept`). `WsStats` counts each.
//!
//! Every WebSocket close has its closing handshake: a close from the node is answered with the
//! same code before the server ends the TCP connection, and a close the server starts waits up
//! to `WsConfig::close_linger` for the node's answer. A node that disconnects therefore sees a
//! clean close, not a network error that would make it reconnect.
//!
//! # Limits
//!
//! Everything a stranger can make the server hold is bounded; every limit is a field of
//! [`SignalConfig`] (or `WsConfig` for the WebSocket layer), and `examples/ws_server.rs` has a
//! flag for each. [`SignalServer::new`] refuses settings it cannot work with
//! ([`SignalConfig::validate`]).
//!
//! What a node makes the server send is charged to that node: every reply to its own frames (the
//! list, errors) comes out of its [`SignalConfig::byte_rate`] budget, beyond it as debt that the
//! refill pays first, and its next frame over budget closes it as any flood. Set-ups relayed to it are charged to their
//! senders, and are held back while its send queue is busy; pushes of joins are bounded by
//! [`SignalConfig::list_push_fanout`].
//!
//! | Limit | Default | Bounds |
//! |---|---|---|
//! | [`SignalConfig::max_connections`] | 100,000 | open connections; when all are announced nodes, [`SignalConfig::when_full`] makes room by closing the idlest node of the source (IPv4 address, IPv6 /56) that holds most |
//! | [`SignalConfig::max_pending_handshakes`] | 16,384 | connections that have not announced (the oldest makes room for a newcomer) |
//! | [`SignalConfig::handshake_timeout`] | 10 s | time to announce |
//! | [`SignalConfig::ttl`] | 120 s | silence of an announced node |
//! | [`SignalConfig::max_frame_size`] | 64 KiB | one frame, before decoding |
//! | [`SignalConfig::frame_rate`] | 50/s, bursts of 100 | frames per connection |
//! | [`SignalConfig::byte_rate`] | 256 KiB/s, bursts of 512 KiB | bytes per connection, received and sent in reply |
//! | [`SignalConfig::max_announce_failures`] | 3 | failed announces (signature checks) per connection |
//! | [`SignalConfig::max_errors`] | 5 | other errors per connection |
//! | [`SignalConfig::max_name_len`], [`max_client_len`](SignalConfig::max_client_len) | 256 B, 64 B | `NodeInfo` strings, stat versions, as encoded in JSON |
//! | [`SignalConfig::max_setup_len`] | 32 KiB | SDP or ICE candidate in a `PeerSetup`, as encoded in JSON |
//! | [`SignalConfig::max_node_stats`] | 256 | entries in one `NodeStats` |
//! | [`SignalConfig::max_list_len`] | 100 | nodes in one `ListIDsReply` |
//! | [`SignalConfig::max_send_backlog`] | 256 frames | a connection's send queue in a transport (relays to it pause at half, see [`SignalIn::Busy`]) |
//! | [`SignalConfig::list_push_fanout`] | 16 | frames one push of joins costs |
//! | `WsConfig::max_connections` | `max_connections` + `max_pending_upgrades` | TCP connections, in the WebSocket handshake or not |
//! | `WsConfig::max_connections_per_ip` | 256 | TCP connections from one source: an IPv4 address or an IPv6 /56 (`ipv6_source_prefix`) |
//! | `WsConfig::accept_rate_per_ip` | 32/s, bursts of 128 | new connections from one source |
//! | `WsConfig::max_pending_upgrades` | 4,096 | connections in their TLS or WebSocket handshake (the oldest makes room) |
//! | `WsConfig::handshake_timeout` | 10 s | time to complete the WebSocket handshake |
//! | `WsConfig::max_message_size` | `max_frame_size` | one WebSocket message, however fragmented (close 1009 above it) |
//! | `WsConfig::send_backlog_bytes` | 256 KiB | bytes queued for one connection (busy past half: no relays to it, no list replies to it; closed above) |
//! | `WsConfig::send_budget_bytes` | 512 MiB | bytes queued for all connections together (the largest holders are shed) |
//! | `WsConfig::write_timeout` | 10 s | a write that makes no progress (then closed as a slow reader) |
//! | `WsConfig::min_drain_rate`, `drain_floor` | 4 KiB/s above 16 KiB | a queue that drains too slowly over a write timeout |
//! | `WsConfig::close_linger` | 1 s | wait for the peer's close frame after the server's |
//! | `WsConfig::ping_interval` | 30 s | silence, even of a pong, lasting two intervals |
//! | `WsConfig::read_buffer_size` | 4 KiB | bytes read at a time; an idle connection holds no read buffer |
//! | `WsConfig::listen_backlog` | 4096 | connections waiting for `accept` (capped by the kernel) |
//! | `WsConfig::event_queue` | 4096 | transport events waiting for the driver (then connections stop reading) |
//!
//! The node's side trusts its server no more: what a server can make a node hold, and how long
//! it can make it wait, is bounded by [`ClientConfig`] (and the `WsClient` builder). Messages
//! that make no sense at that point (a list or a set-up message before the sign-in, a second
//! challenge, a set-up message for a pair without the node) are refused and counted
//! ([`SignalClient::handle_frame`] has the rules).
//!
//! | Limit | Default | Bounds |
//! |---|---|---|
//! | [`ClientConfig::sign_in_timeout`] | 10 s | connecting, the challenge and the acceptance, every sign-in including the first |
//! | [`ClientConfig::keepalive`] | none | with one, a request unanswered for two intervals ends the connection |
//! | [`ClientConfig::max_events`], [`max_event_bytes`](ClientConfig::max_event_bytes) | 1,024, 1 MiB | events held for the application (then dropped and counted) |
//! | [`ClientConfig::backoff`] | 0.5 s doubling to 30 s, ±25% | wait before every reconnect, also after a session that ended |
//! | [`ClientConfig::stable_session`] | 60 s | a shorter session counts as a failure, so the next wait grows |
//! | `WsClientBuilder::max_message_size` | `max_frame_size` (64 KiB) | one WebSocket message or frame from the server (was tungstenite's 64 MiB) |
//! | `WsClientBuilder::timeout` | 10 s | TCP, TLS and the upgrade |
//!
//! # The run loop
//!
//! A driver owns the server and a transport and repeats:
//!
//! 1. Wait for whichever comes first: a transport event, or the instant of
//!    [`SignalServer::poll_timeout`].
//! 2. Feed it with [`SignalServer::handle`]`(now, input)`, where `now` is the driver's clock:
//!    [`SignalIn::Opened`], [`SignalIn::Frame`], [`SignalIn::Closed`], [`SignalIn::Busy`] or
//!    [`SignalIn::Tick`].
//! 3. Drain [`SignalServer::poll_output`] until `None`: send each [`SignalOut::Send`] frame (text
//!    for JSON, binary for bincode), close each [`SignalOut::Close`] connection after its queued
//!    frames, and hand each [`SignalOut::Event`] to the application.
//! 4. To shut down, feed [`SignalIn::Stop`] and drain once more.
//!
//! [`Driver`] is that loop, for any [`Transport`] and on any executor; it ticks from a stream you
//! give it (a one-second interval is plenty) rather than sleeping until `poll_timeout`, so that it
//! needs no timer of its own. [`MemoryTransport`] connects nodes in the same process, and
//! `WsTransport` (feature `websocket`) accepts them over WebSocket. Nodes can use
//! [`SignalClient`], the node side of the protocol, itself sans-IO, or [`AsyncClient`] over any
//! [`ClientConnection`].
//!
//! The application acts on its nodes through the same loop: it feeds a [`SignalIn::Command`]
//! (list the nodes, disconnect one with a reason, send one a message) and gets one
//! [`SignalOut::Reply`] back. [`DriverHandle`] wraps that in `nodes()`, `disconnect()` and
//! `send()`.
//!
//! # Hosted signalling: the same server over peer links
//!
//! A node that has links to neighbours (WebRTC data channels, QUIC streams, test channels) can
//! host signalling for them: [`LinkTransport`] is a [`Transport`] whose
//! connections are those links, driven with an unchanged [`SignalServer`].
//! A neighbour signs in over its link with a [`LinkClient`], exactly as at a WebSocket server.
//! If A and B are linked, and B and C, then A and C set up a connection of their own through B,
//! with no server left.
//!
//! ```text
//!   node A                          node B (hosts)                      node C
//!   AsyncClient ─data channel─► LinkTransport + SignalServer ◄─data channel─ AsyncClient
//!   (LinkClient)  "signal"                                      "signal"   (LinkClient)
//! ```
//!
//! A node uses its WebSocket server and each neighbour that hosts at once with [`SignalPaths`]:
//! lists say which path knows which node, a connection goes through a path that lists the node,
//! events name their path, and losing one path (the server, a neighbour) leaves the others
//! working. `examples/hosted.rs` shows a node hosting for two neighbours; the interop crate runs
//! it over real WebRTC data channels with the WebSocket server gone.
//!
//! ## The framing on a link
//!
//! Written down so that another implementation can speak it:
//!
//! - **The channel.** A WebRTC data channel labelled [`LINK_LABEL`] (`"signal"`), ordered and
//!   reliable (the defaults: no `maxRetransmits`, no `maxPacketLifeTime`), negotiated in band
//!   (not `negotiated: true`). Any other ordered, reliable message channel works the same way.
//! - **Who opens it.** The node that wants to use a neighbour's signalling opens the channel; the
//!   neighbour that receives it hosts, and attaches it to its server. Two neighbours that each
//!   use the other's signalling open one channel each: the two never mix.
//! - **The codec.** The channel's `protocol` names it: empty for JSON, [`LINK_BINCODE`]
//!   (`"peer-signal-bincode"`) for bincode ([`link_codec`] reads it).
//! - **Messages.** One protocol v3 message per channel message, exactly the frames of a WebSocket
//!   connection: JSON as text messages, bincode as binary messages. A receiver takes JSON in a
//!   binary message too. The host speaks first (`Challenge`), as a WebSocket server does.
//! - **Closing.** Either side closes the channel. A closed channel is a close like any other:
//!   the host forgets the node, the node's client reports the connection closed.
//!
//! ## Bounds and deadlines
//!
//! [`LinkConfig`] bounds the links a host attaches, and each link's queues both ways in frames
//! and bytes, and all links' bytes together. A neighbour that floods its link, or sends a frame
//! over [`LinkConfig::max_frame_size`], has the link ended by [`LinkInbound::deliver`]; an adapter
//! that does not take the server's frames has its link closed as a slow reader. The server's
//! deadlines (sign-in, idle TTL) apply to links as to sockets; an adapter bounds its own channel's
//! send buffer (a data channel's `bufferedAmount`) and closes the channel when it stays full.
//!
//! ## What a relaying neighbour can do
//!
//! A hosting node reads and could change every set-up message it relays, exactly as a signalling
//! server can, including the DTLS fingerprints in the SDP. Relay only through neighbours you
//! would trust as your signalling server.
//!
//! ## Writing an adapter
//!
//! One link is two ends, from [`LinkHost::attach`] on the hosting side or [`LinkClient::new`] on
//! the using side, and the adapter joins them to its channel:
//!
//! - read the channel from the moment it opens: the host speaks first, and its `Challenge` may
//!   arrive before the opener's code runs again (webrtc-rs 0.12 drops messages that arrive before
//!   `on_message` is set: set it before the channel opens, or detach the channel and read it);
//! - every message the channel receives goes to [`LinkInbound::deliver`], which never waits; an
//!   error ends the link (close the channel);
//! - a task sends what [`LinkOutbound::recv`] returns on the channel, as text for JSON and binary
//!   for bincode; `None` means the link is over: close the channel;
//! - when the channel closes, drop both ends;
//! - on the using side, give the [`LinkClient`] the runtime's clock
//!   ([`LinkClient::with_timer`]) and keep the client alive ([`AsyncClient::keep_alive`]): the
//!   sign-in then has its deadline, and a neighbour that stops answering with the channel still
//!   open is noticed.
//!
//! # Beyond v3: bound sign-ins, signed set-up messages, TURN credentials
//!
//! Opt-in messages that fledger 0.10 nodes drop unread (they skip what they cannot parse), so a
//! server can offer them while fledger nodes sign in unchanged. In JSON, as every message, an
//! object with the variant's name; in bincode, the variant's index after v3's.
//!
//! | Message | Direction | When |
//! |---|---|---|
//! | `{"Capabilities":{"bound_announce":1,"signed_setups":true}}` | server → node | before the `Challenge`, with [`SignalConfig::binding`] not off |
//! | `{"BoundAnnounce":{"version":1,"challenge":"<hex>","server_id":"wss://…","node_info":"<NodeInfo as JSON text>","flags":1,"signature":"<hex>"}}` | node → server | instead of `Announce`, where the server offered it |
//! | `{"SignedPeerSetup":{"setup":<PeerInfo>,"seq":17,"signature":"<hex>"}}` | both | a set-up message signed by its sender, where both ends asked for it (flag bit 0); others get it as `PeerSetup` |
//! | `{"IceServers":{"expires":<unix secs>,"servers":[{"urls":["turn:…"],"username":"<expiry>:<id>","credential":"…"}]}}` | server → node | with [`SignalConfig::turn`]: after the sign-in, before expiry, on request |
//! | `"IceServersRequest"` | node → server | asks for fresh [`IceServers`] |
//!
//! **A bound announce** signs, instead of the 32 challenge bytes alone, a fixed layout
//! ([`bound_announce_bytes`]): a domain string, the id of the server the node dialled
//! ([`server_id_of_url`]: `wss://host[:port]`; [`server_id_of_node`]: `node:<id>` for hosted
//! signalling), the challenge, the node's key, the SHA-256 of the node info as sent (a JSON text
//! inside the message, hashed as it is: no canonical JSON needed) and the flags. A server takes
//! it only for one of its own names ([`Binding::server_ids`]): a signature that another server
//! relayed is refused (`signed for another server`), and the node info cannot be changed in
//! transit. Servers run off, accept (bound beside v3) or require (bound only); clients off,
//! prefer (bound where offered) or require (never a v3 signature: [`ClientBinding`]).
//!
//! **A signed set-up message** ([`setup_bytes`]) covers both ids, the direction, the sender's
//! sequence number and the message. The receiving client checks it against the sender's id (its
//! key) and the last sequence number seen from it; a change of one byte on the way, a forgery or
//! a replay becomes [`ClientEvent::RejectedSetup`], never a silently broken connection. The
//! server does not check it: it only relays. `tests/data/binding_vectors.json` holds vectors
//! computed outside the crate (`scripts/binding-vectors.py`) for other implementations.
//! SECURITY.md says what each mode protects against.
//!
//! # In the browser
//!
//! The crate builds for `wasm32-unknown-unknown` without features: the server, the client state
//! machine and hosted signalling, with the browser's clock (`web-time`) and randomness (Web
//! Crypto). The `browser` feature adds what a page needs to be a node; it adds nothing on other
//! targets.
//!
//! Browser objects (`WebSocket`, `RTCDataChannel`, callbacks) are not `Send`, and
//! [`AsyncClient`] needs a connection that is. So the page's sockets stay in local tasks of the
//! page, and reach the client through the bounded queues of a peer link: every connection of a
//! page is a [`LinkClient`], and a page's node is an `AsyncClient<LinkClient>` (`BrowserClient`)
//! with every method of the native one (`connect`, `list`, `send_init`, `send_reply`,
//! `send_setup`, `next_event`, `keep_alive`, `connect_reconnecting_with`).
//!
//! | Item | What it does |
//! |---|---|
//! | `BrowserWs::new(url)` | opens the server's `WebSocket` (JSON in text frames; `.codec(Codec::Bincode)` asks for [`BINCODE_SUBPROTOCOL`] and binary frames) within an open timeout; also the [`Reconnect`] of a client that reconnects with [`Backoff`] |
//! | `BrowserTimer` | the page's clock and `setTimeout`, as the [`Timer`] of the sign-in deadline, the keepalive and the backoff; `BrowserTimer::ticks` for a [`Driver`] |
//! | `link_client(&channel, &config)` | the using side of hosted signalling: a [`LinkClient`] over a data channel the page opened to a neighbour (label [`LINK_LABEL`], protocol [`link_protocol`]) |
//! | `attach_channel(&host, &channel)` | the hosting side: a neighbour's `signal` channel, attached to the page's [`LinkHost`] |
//! | `host_signalling(config, events)` | a [`SignalServer`] over a [`LinkTransport`], driven by a local task of the page and ticked by `BrowserTimer` |
//!
//! ```ignore
//! use std::sync::Arc;
//! use peer_signal::{AsyncClient, BrowserTimer, BrowserWs, ClientConfig, Codec, NodeInfo};
//!
//! // In an async fn of the page (wasm_bindgen_futures::spawn_local):
//! let server = BrowserWs::new("wss://signal.example.org").codec(Codec::Bincode);
//! let config = ClientConfig::default().with_keepalive(std::time::Duration::from_secs(60));
//! let mut node =
//!     AsyncClient::connect_reconnecting_with(server, key, info, config, Arc::new(BrowserTimer)).await?;
//! if let Some(other) = node.list().await?.iter().find(|n| n.id() != node.id()) {
//!     node.send_init(other.id()).await?;
//! }
//! while let Ok(event) = node.next_event().await { /* PeerSetup → the RTCPeerConnection */ }
//! ```
//!
//! Bounds and deadlines, as on native targets: the connection's queues are the link's
//! ([`LinkConfig`]; a server frame over `max_frame_size` closes the socket); the `WebSocket`
//! must open within `BrowserWs::open_timeout` (10 s), a data channel within 10 s; a channel
//! whose send buffer (`bufferedAmount`) stays over 256 KiB for 5 s is closed; the sign-in has
//! [`ClientConfig::sign_in_timeout`]. A page served over `https` may open only `wss://`.
//!
//! `examples/browser/` is a page that signs in, lists, and opens a real `RTCDataChannel` to
//! another page through the server, or hosts signalling for its neighbours, or uses a
//! neighbour's once the server is gone; `tests/browser.rs` runs in headless Chromium against
//! `ws_server` (`scripts/browser-tests.sh`).
//!
//! # Several instances, one network
//!
//! One process holds tens of thousands of connections. Past that, and so that one process is not
//! a single point of failure, several instances behind a load balancer form one network through
//! Redis (feature `redis`): [`SignalServer::with_cluster`] makes a server that emits
//! [`SignalOut::Cluster`] and takes [`SignalIn::Cluster`], and [`Driver::with_backplane`]
//! connects it to a [`Backplane`]: `RedisBackplane`, or [`MemoryBus`] within one process. The
//! core stays sans-IO; without a cluster it emits nothing of the sort and costs what it did.
//!
//! | The server says ([`ClusterOut`]) | The bus says ([`ClusterIn`]) |
//! |---|---|
//! | `Joined`: a node announced here; claim it | `Claimed`: the claim's rank; `TakenOver`: a newer claim elsewhere |
//! | `Left`: a node is gone from here | `Sample`: some remote nodes, and how many there are, for lists |
//! | `Relay`: a set-up for a node that is not here | `Frame`: a set-up from another instance for a node here |
//! | `Undeliverable`: a node here is busy; tell the sender | `Undeliverable`: a relay reached nobody, or a busy node |
//! | | `Up`, `Down`: the bus answers, or not |
//!
//! **In Redis.** Each instance keeps a hash of its nodes (id → `NodeInfo`) that expires unless
//! its heartbeat renews it, and subscribes to one channel per node it holds. A relay is one
//! `PUBLISH` on the destination's channel; Redis answers how many instances received it, so a
//! relay to a node that nobody holds is answered `unknown destination` in one round trip, with no
//! lookup and no cache to go stale. Lists mix the local nodes with a pool of remote ones that a
//! background sample refreshes ([`ClusterConfig::max_remote_pool`], every 2 s by default), in
//! proportion to their numbers: a list request never waits on the network. Everything on the bus
//! is versioned and size-limited, and checked on the way in like a frame from a node: a frame from
//! another instance must decode as a `PeerSetup` whose pair holds the node it is delivered to.
//! With a cluster key (`RedisConfig::cluster_key`) every message and presence entry also carries
//! an HMAC-SHA256, and whoever reaches Redis without the key cannot speak on the bus; Redis can be
//! reached over TLS (`rediss://`). Past one Redis, the nodes are sharded over several independent
//! servers by id (`RedisConfig::shard_urls`): each node's presence, claims and relays live on its
//! shard, and one server's outage takes only its share of the nodes off the bus.
//!
//! **The consistency model.**
//!
//! - *Delivery is at most once, and in order between two instances.* An instance publishes its
//!   relays in the order its nodes sent them, on one connection, and Redis delivers them to the
//!   subscriber in that order. When nobody holds the destination, when it has just left, or when
//!   it is busy, the sender gets the `Error` a local relay would get. While an id moves to a newer
//!   connection on another instance, a relay on its way may reach the old connection (until the
//!   takeover reaches its instance, which then closes it), or neither, without a word; once the
//!   move has settled, each relay reaches the one connection of its destination once.
//! - *The newest connection of an id wins everywhere.* Every claim gets a rank from one counter in
//!   Redis; an instance that hears of a higher rank closes its node with `New Connection with same
//!   ID`, also when it hears of it before its own rank arrives, so two connections of one id that
//!   arrive at once on two instances leave exactly the later claim. An instance that returns after
//!   an outage does not claim anew: an id that another instance holds meanwhile stays theirs.
//! - *Presence expires.* An instance that dies loses its nodes from every list within the presence
//!   TTL plus one sample (10 + 2 s by default), and relays to them fail at once, because Redis
//!   drops a dead connection's subscriptions when its socket closes. A paused instance (SIGSTOP)
//!   leaves lists the same way and, when it resumes, closes the nodes that moved meanwhile and
//!   registers the others again.
//! - *When Redis is down* an instance keeps serving its own nodes (lists, relays between them),
//!   answers relays for other nodes at once with `unknown destination`, lists only its own nodes,
//!   and reports itself not ready (`RedisHandle::is_up`; `ws_server`'s `/ready` answers 503). When
//!   Redis returns it registers every node again, then reports itself ready.
//!
//! Every queue between the core, the backplane and Redis is bounded, in messages and in bytes; a
//! relay that does not fit is answered `unknown destination` at once, and every drop is counted
//! (`RedisStats`). Every Redis command has a deadline, after which the bus counts as down.
//!
//! **What bounds a network of 1,000,000 nodes, on paper.** With 50,000 connections per instance
//! (5.5 KB each in a clustered process, measured: 275 MB per instance), 20 instances, each on a
//! core of its own. Redis holds about 650 B per node (measured: the hash entry, a 64-byte key and
//! about 200 B of JSON, and the channel with its one subscriber): 650 MB, within one Redis.
//! Presence costs one heartbeat per instance (20 scripts every 2 s) and one sample per instance
//! (20 scripts every 2 s, each returning 1,000 entries: about 2 MB/s out of Redis in all), not
//! work per node. A join costs three commands (`SUBSCRIBE`, the claim script, its `PUBLISH`), a
//! leave two: all 1,000,000 nodes reconnecting within ten minutes is 1,700 joins/s, about 5,000
//! commands/s, and 15 µs of Redis's CPU each (measured), a quarter of a core.
//!
//! Relays are what bound it. Each costs one `PUBLISH`, pipelined, and with 20 instances 95% of
//! them cross instances. Redis spent 3 µs of CPU on each in the measurements of the README, so
//! one Redis process carries on the order of 200,000 relays a second on its one core; each
//! instance spends 7 µs per relay it sends or receives, so 20 instances carry that too with a
//! fifth of their cores. A WebRTC set-up is about 20 messages (Init, Offer, Answer, ICE
//! candidates): one Redis carries about 600,000 new peer connections a minute, so each of the
//! million nodes may take part in about one new connection a minute. Beyond that, channels shard
//! by node id over a Redis Cluster (`SPUBLISH`), which this backplane does not do yet, and the
//! per-instance presence hashes shard with them.
//!
//! # Metrics and logs
//!
//! With the feature `metrics`, the server reports through the [`metrics`](https://docs.rs/metrics)
//! facade to whatever recorder the application installs: `metrics-exporter-prometheus` (as the
//! `ws_server` example does), statsd, OpenTelemetry. Install it before making the server and the
//! transport, which register their metrics when they are made. The core counts as things happen,
//! with handles registered once: a relay adds to a few atomic counters, with no lookup and no
//! allocation, and the core still reads no clock (the announce latency is measured in the time it
//! is handed). The WebSocket transport's and the Redis backplane's own counters are kept as they
//! were and published as a snapshot by `WsStatsHandle::publish_metrics` and
//! `RedisHandle::publish_metrics`: call them before each scrape. Without the feature none of this
//! is compiled. Counters end in `_total`, units are bytes and seconds:
//!
//! | Metric | Type | What |
//! |---|---|---|
//! | `peer_signal_connections`, `peer_signal_nodes`, `peer_signal_pending_handshakes` | gauge | open connections, announced nodes, connections yet to announce (servers in one process add up) |
//! | `peer_signal_received_frames_total`, `peer_signal_received_bytes_total` | counter | frames from nodes, and their bytes |
//! | `peer_signal_sent_frames_total`, `peer_signal_sent_bytes_total` | counter | frames to nodes, and their bytes |
//! | `peer_signal_joins_total`, `peer_signal_leaves_total` | counter | announces accepted; announced nodes gone (not counted at [`SignalIn::Stop`]) |
//! | `peer_signal_relays_total` | counter | `PeerSetup` messages forwarded to a local node |
//! | `peer_signal_errors_total{reason}` | counter | `Error` replies, by [`ProtocolError::kind`] |
//! | `peer_signal_evictions_total` | counter | nodes closed for silence past the TTL |
//! | `peer_signal_turn_credentials_total` | counter | TURN credentials issued (with [`SignalConfig::turn`]) |
//! | `peer_signal_dropped_events_total` | counter | events [`DriverEvents`] had no room for |
//! | `peer_signal_announce_duration_seconds` | histogram | from a connection's challenge to its accepted announce |
//! | `peer_signal_cluster_{relays_out,relays_in,undeliverable,bounced,taken_over}_total`, `peer_signal_cluster_rejected_total{stage="server"}` | counter | a clustered server's traffic with the other instances ([`ClusterStats`]) |
//! | `peer_signal_cluster_pool`, `peer_signal_cluster_remote_nodes` | gauge | remote nodes pooled for lists, and known in all |
//! | `peer_signal_ws_send_queue_seconds` | histogram | how long a frame waited in its WebSocket connection's send queue, until the socket took its last byte |
//! | `peer_signal_ws_connection_tasks`, `peer_signal_ws_read_buffer_bytes` | gauge | `WsStats`, published |
//! | `peer_signal_ws_accepted_total`, `peer_signal_ws_refused_total{reason}`, `peer_signal_ws_{failed_handshakes,slow_readers,oversize,protocol_violations,ping_timeouts,clean_closes}_total` | counter | `WsStats`, published; `reason` is `max_connections`, `max_connections_per_ip` or `admission` |
//! | `peer_signal_cluster_up`, `peer_signal_cluster_presence`; `peer_signal_cluster_{downs,published,received,dropped_out,dropped_in}_total`, `peer_signal_cluster_rejected_total{stage="backplane"}` | gauge; counter | `RedisStats`, published |
//!
//! A histogram's buckets are the exporter's to choose (with `metrics-exporter-prometheus`,
//! `set_buckets_for_metric`; without buckets it renders a summary).
//!
//! With the feature `tracing`, the crate emits `tracing` events, and the application's
//! subscriber decides what to keep. `conn` is the connection's [`ConnId`] number everywhere; the
//! transport's `connection opened` ties it to the peer's address. Text from a peer is logged with
//! its control characters, line separators and bidirectional overrides escaped. Lines at `info`
//! or above that a peer can cause at will are bounded: at most 20 refusals of each reason per
//! 10 s (the rest at `debug`; the next line at `info` counts them in `suppressed`), and an
//! announce policy that panics is logged for its first 10 panics, then at the 100th, 1,000th….
//!
//! | Target | Level | Events (fields) |
//! |---|---|---|
//! | `peer_signal::server` | debug | `node joined` (`conn`, `addr`, `node`, `waited`), `node left` (`conn`, `addr`, `node`), `error reply` (`conn`, `addr`, `reason`, `error`), `closing the connection` (`conn`, `addr`, `reason`) |
//! | `peer_signal::server` | error | `announce policy panicked: the node was denied` (`conn`, `count`) |
//! | `peer_signal::websocket` | info | `connection refused: …` (`peer`, `client`, `reason`: `max_connections`, `max_connections_per_ip`, `admission`; `suppressed` after a flood) |
//! | `peer_signal::websocket` | debug | `WebSocket handshake failed` or `timed out` (`peer`), `connection opened` (`conn`, `peer`, `client`, `codec`), `closing: …` (`conn`, `peer`, `reason`), `send queue full` (`conn`), `connection ended` (`conn`, `peer`, `how`) |
//! | `peer_signal::driver` | debug | `application event dropped` |
//!
//! `peer` is the socket's address; `client` is the address the per-IP limit counts, which behind
//! a trusted proxy is the one its `X-Forwarded-For` names; `addr`, in the core's events, is the
//! address the transport reported in [`SignalIn::Opened`] (absent when it reported none).
//!
//! # Example
//!
//! Two nodes meet and set up a connection, with the server driven by hand:
//!
//! ```
//! use std::time::Instant;
//! use peer_signal::ed25519_dalek::SigningKey;
//! use peer_signal::*;
//!
//! let mut server = SignalServer::new(SignalConfig::default().with_rng_seed([7; 32]))
//!     .expect("a valid config");
//! let now = Instant::now();
//! let codec = Codec::Json;
//!
//! // Feeds one input and returns the frames it sent to `to`, decoded.
//! let mut step = |input: SignalIn, to: ConnId| -> Vec<WSSignalMessageToNode> {
//!     server.handle(now, input);
//!     std::iter::from_fn(|| server.poll_output())
//!         .filter_map(|out| match out {
//!             SignalOut::Send { conn, frame } if conn == to => Some(codec.decode(&frame).unwrap()),
//!             _ => None,
//!         })
//!         .collect()
//! };
//! let frame = |message: &WSSignalMessageFromNode| codec.encode(message).unwrap();
//!
//! // Both nodes connect and answer their challenge.
//! let mut ids = Vec::new();
//! for (n, conn) in [(1u8, ConnId::new(1)), (2, ConnId::new(2))] {
//!     let key = SigningKey::from_bytes(&[n; 32]);
//!     let [WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge)] =
//!         step(SignalIn::Opened { conn, codec, addr: None }, conn)[..]
//!     else { panic!("no challenge") };
//!     let info = NodeInfo::new(format!("node-{n}"), "example", key.verifying_key().to_bytes());
//!     ids.push(info.id());
//!     let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
//!         version: SIGNAL_VERSION,
//!         challenge,
//!         node_info: info,
//!         signature: sign_challenge(&key, &challenge),
//!     });
//!     let replies = step(SignalIn::Frame { conn, frame: frame(&announce) }, conn);
//!     assert!(matches!(replies[0], WSSignalMessageToNode::SystemConfig(_)));
//! }
//! let (a, b) = (ConnId::new(1), ConnId::new(2));
//!
//! // A sees B in the list.
//! let reply = step(SignalIn::Frame { conn: a, frame: frame(&WSSignalMessageFromNode::ListIDsRequest) }, a);
//! let [WSSignalMessageToNode::ListIDsReply(nodes)] = &reply[..] else { panic!() };
//! assert!(nodes.iter().any(|node| node.id() == ids[1]));
//!
//! // A and B exchange Init, Offer, Answer and an ICE candidate through the server.
//! for (from, to, message) in [
//!     (a, b, PeerMessage::Init),
//!     (b, a, PeerMessage::Offer("v=0 …".into())),
//!     (a, b, PeerMessage::Answer("v=0 …".into())),
//!     (b, a, PeerMessage::IceCandidate("candidate:1 1 udp …".into())),
//! ] {
//!     let setup = PeerInfo { id_init: ids[0], id_follow: ids[1], message };
//!     let relayed = step(SignalIn::Frame { conn: from, frame: frame(&WSSignalMessageFromNode::PeerSetup(setup.clone())) }, to);
//!     assert_eq!(relayed, [WSSignalMessageToNode::PeerSetup(setup)]);
//! }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

#[macro_use]
mod setters;

mod binding;
mod cluster;
mod codec;
mod crypto;
mod error;
mod ids;
mod limits;
mod protocol;
mod server;
mod telemetry;
mod transport;
mod turn;

/// The ed25519 crate whose keys this crate's API takes.
pub use ed25519_dalek;
/// The TLS crate whose certificate types [`ServerTls`] and [`TlsRoots`] take (feature `tls`).
#[cfg(feature = "tls")]
pub use rustls;

pub use binding::{
    bound_announce_bytes, is_server_id, server_id_of_node, server_id_of_url, setup_bytes, Binding,
    BindingMode, BOUND_ANNOUNCE_DOMAIN, BOUND_ANNOUNCE_VERSION, FLAG_SIGNED_SETUPS, MAX_SERVER_ID_LEN,
    SIGNED_SETUP_DOMAIN,
};
pub use cluster::{
    Backplane, ClusterConfig, ClusterIn, ClusterOut, ClusterStats, Control, MemoryBackplane, MemoryBus,
    Undelivered,
};
#[cfg(feature = "redis")]
pub use cluster::{ClusterKey, RedisBackplane, RedisConfig, RedisError, RedisHandle, RedisStats};
pub use codec::Codec;
pub use crypto::{sign_challenge, verify_challenge};
pub use error::{CodecError, ConfigError, ControlError, ProtocolError, TransportError};
pub use protocol::{
    BoundAnnounce, Capabilities, FledgerConfig, IceServer, IceServers, MessageAnnounce, Modules, NodeID,
    NodeInfo, NodeStat, PeerInfo, PeerMessage, RealmID, SignedSetup, WSSignalMessageFromNode,
    WSSignalMessageToNode, SIGNAL_VERSION, U256,
};
pub use server::{
    AnnouncePolicy, CloseReason, Command, CommandReply, ConnId, ConnectedNode, RateLimit, ServerStats,
    SignalConfig, SignalEvent, SignalIn, SignalOut, SignalServer, Verdict, WhenFull,
};
#[cfg(feature = "tracing")]
pub use telemetry::{LogAdmit, LogThrottle};
pub use turn::{TurnConfig, TurnSecret};

#[cfg(all(feature = "browser", target_arch = "wasm32", target_os = "unknown"))]
mod browser;
mod client;
mod driver;

#[cfg(all(feature = "browser", target_arch = "wasm32", target_os = "unknown"))]
pub use browser::{
    attach_channel, host_signalling, link_client, BrowserClient, BrowserTimer, BrowserWs, Sleep,
};

pub use client::{
    AsyncClient, Backoff, ClientBinding, ClientConfig, ClientConnection, ClientError, ClientEvent,
    PathClient, PathEvent, Reconnect, SetupRejection, SignalClient, SignalPaths, Timer,
};
/// The bus decoder and the core's cluster inputs, for the fuzz target `bus`; not part of the API.
#[doc(hidden)]
pub use cluster::fuzzing as cluster_fuzzing;
pub use driver::{Driver, DriverEvents, DriverHandle, Located, NoBackplane};
pub use transport::memory::{MemoryClient, MemoryConnector, MemoryTransport};
pub use transport::peer_link::{
    link_codec, link_protocol, LinkClient, LinkConfig, LinkError, LinkHost, LinkInbound, LinkOutbound,
    LinkTransport, LINK_BINCODE, LINK_LABEL,
};
/// The WebSocket transport's parsers, for the fuzz targets `frame` and `upgrade`; not part of the API.
#[cfg(feature = "websocket")]
#[doc(hidden)]
pub use transport::ws_fuzzing;
#[cfg(feature = "websocket")]
pub use transport::{
    Admission, AdmissionHook, TokioTimer, UpgradeRequest, WsClient, WsClientBuilder, WsClientError, WsConfig,
    WsStats, WsStatsHandle, WsTransport,
};
#[cfg(feature = "tls")]
pub use transport::{ServerTls, TlsError, TlsRoots};
pub use transport::{Transport, TransportEvent, BINCODE_SUBPROTOCOL};
