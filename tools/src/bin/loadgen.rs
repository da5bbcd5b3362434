//! A WebSocket load generator for any server that speaks fledger's signalling protocol v3, and,
//! to compare, for matchbox_server 0.15 (`--protocol matchbox`).
//!
//! ```sh
//! cargo run --release --example ws_server -- --metrics off --unlimited-rates \
//!     --max-connections-per-ip 0 --accepts-per-sec-per-ip 0 &
//! cargo run --release -p peer-signal-tools --bin loadgen -- relay --pairs 50 --window 8 --secs 10 --server-pid $!
//! cargo run --release -p peer-signal-tools --bin loadgen -- join --conns 10000 --server-pid $!
//! cargo run --release -p peer-signal-tools --bin loadgen -- idle --conns 10000 --secs 5 --server-pid $!
//! cargo run --release -p peer-signal-tools --bin loadgen -- churn --workers 64 --secs 10 --server-pid $!
//!
//! matchbox_server 127.0.0.1:3536 &
//! cargo run --release -p peer-signal-tools --bin loadgen -- --protocol matchbox --server 127.0.0.1:3536 \
//!     relay --pairs 50 --window 8 --secs 10 --server-pid $!
//! ```
//!
//! `relay` sends far more than a node does; without `--unlimited-rates` the server's per-connection
//! rate limits (50 frames/s by default) close its connections.
//!
//! Scenarios:
//! - `join`: `--conns` nodes connect and join, `--window` at a time; then all disconnect.
//! - `relay`: `--pairs` pairs of nodes bounce offers and answers, `--window` in flight per pair,
//!   for `--secs`; latency is measured from send to receipt. Every message carries its sequence
//!   number: each is checked for its sender and addressee and for arriving in order, and what is
//!   in flight at the end must still arrive (`lost`, `misrouted`, `out_of_order` in the summary).
//! - `idle`: `--conns` nodes join and stay idle for `--secs`: the server's memory per connection.
//! - `churn`: `--workers` loops of connect, join, relay one message to a partner node, disconnect,
//!   for `--secs`; the partner counts what reaches it.
//!
//! After its join, a node reads whatever reaches it (lists pushed to it, matchbox's `NewPeer`)
//! until every node has joined and the server has gone quiet, so that a join's fan-out to the
//! other nodes is in the join's server CPU and is never left queued in the server.
//!
//! With `--protocol matchbox` a node speaks matchbox_protocol 0.15's JSON as matchbox_server's
//! room topology routes it: it connects to `ws://<server>/<room>`, gets `{"IdAssigned":"<uuid>"}`,
//! hears of every later node of its room by `{"NewPeer":"<uuid>"}`, and relays
//! `{"Signal":{"receiver":"<uuid>","data":{"Offer":"<sdp>"}}}`, which reaches the receiver as
//! `{"Signal":{"sender":"<uuid>","data":{"Offer":"<sdp>"}}}` (the data is matchbox_socket's
//! `PeerSignal`: `Offer`, `Answer` or `IceCandidate`, each with a string). A relay pair has a room of
//! its own, and one of the two must have heard of the other by `NewPeer`; the other scenarios put
//! `--room-size` nodes in a room (0: all in one). matchbox's `?next=N` is not used: it is
//! matchmaking (a room closes once N have come), not a relay. Where fledger has no payload (the
//! `Init` of `churn`), matchbox gets its smallest signal, the end of candidates
//! (`{"IceCandidate":"null"}`).
//!
//! A progress line goes to stderr every second; one JSON summary line goes to stdout at the end,
//! with the server's CPU seconds and RSS read from `/proc/<pid>` when `--server-pid` is given.
//! Every loop is bounded by `--secs` or a count, every wait on the server by a timeout, and the
//! whole run by `--timeout-secs`. Connections come from 127.0.0.1..127.0.0.N (`--source-ips`), so
//! that more than one address's worth of ephemeral ports is available.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use futures::{SinkExt, StreamExt};
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    ClientEvent, Codec, NodeID, NodeInfo, PeerInfo, PeerMessage, SignalClient, BINCODE_SUBPROTOCOL,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's address (host:port); connections use ws://<server>/ (matchbox: /<room>).
    #[arg(long, default_value = "127.0.0.1:8765")]
    server: SocketAddr,
    /// The server's pid, to report its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The protocol the server speaks.
    #[arg(long, value_enum, default_value_t = Protocol::PeerSignal)]
    protocol: Protocol,
    /// Speak bincode (binary frames) instead of JSON (peer-signal only).
    #[arg(long)]
    bincode: bool,
    /// matchbox: nodes per room, 0 for one room for all (a relay pair always has its own room).
    #[arg(long, default_value_t = 0)]
    room_size: u64,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// A label copied into the summary.
    #[arg(long, default_value = "")]
    label: String,
    /// Give up (exit status 3) when the whole run takes longer than this.
    #[arg(long, default_value_t = 900.0)]
    timeout_secs: f64,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Nodes connect and join as fast as the window allows.
    Join {
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Pairs bounce set-up messages.
    Relay {
        #[arg(long, default_value_t = 50)]
        pairs: u32,
        /// Messages in flight per pair.
        #[arg(long, default_value_t = 8)]
        window: u32,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Bytes of SDP per message (at least 32: the send time and the sequence number).
        #[arg(long, default_value_t = 400)]
        size: usize,
        /// Messages per second for all pairs together (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Nodes join and stay idle.
    Idle {
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Before idling, each node sends one request of this many bytes, padded with JSON
        /// whitespace (peer-signal: a list request, and reads the reply, 65536 being the server's
        /// default frame limit; matchbox: a `KeepAlive`): what a connection that once sent a
        /// maximal frame keeps costing. 0: no such frame.
        #[arg(long, default_value_t = 0)]
        big_frame: usize,
    },
    /// Rounds of an attack: nodes with a 4 KiB receive buffer join, ask for the list as fast
    /// as they can without reading a byte, then all hang up; the server's resident memory is
    /// read after each round, once it is quiet (peer-signal only; start the server with
    /// `--unlimited-rates`, or the rate limits end the attack first).
    SlowReaders {
        #[arg(long, default_value_t = 200)]
        conns: u32,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// How long each round's nodes keep asking.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// How long to wait after each round before reading the server's memory.
        #[arg(long, default_value_t = 3.0)]
        idle_secs: f64,
    },
    /// Connect, join, relay, disconnect, in loops.
    Churn {
        #[arg(long, default_value_t = 64)]
        workers: u32,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
}

/// Which server the nodes talk to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Protocol {
    /// fledger's signalling protocol v3, as `ws_server` speaks it.
    PeerSignal,
    /// matchbox_server 0.15's (matchbox_protocol's JSON, rooms by path).
    Matchbox,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::PeerSignal => "peer-signal",
            Self::Matchbox => "matchbox",
        }
    }
}

/// A connection that has not finished joining after this long has failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the messages still in flight when a relay run ends may take to arrive.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a join's fan-out may keep the server busy after the last join.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A node's id: fledger's 256 bits, or the UUID matchbox assigns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Id {
    Node(NodeID),
    Peer(u128),
}

/// The set-up messages the scenarios send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Init,
    Offer,
    Answer,
}

/// A set-up message that reached a node: who sent it, to whom, and its SDP.
struct Setup {
    from: Id,
    to: Id,
    text: String,
}

/// What a node read.
enum Incoming {
    Setup(Setup),
    /// Anything else the server sends a joined node: a list, a join or a leave.
    Notice,
}

/// A node of either protocol; the scenarios see only this.
// A few thousand nodes at most, each holding a socket: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Node {
    PeerSignal(FlNode),
    Matchbox(MbNode),
}

impl Node {
    /// Connects from `source` and joins; `index` picks the key (peer-signal) or room (matchbox).
    async fn join(args: &Args, source: IpAddr, index: u64) -> Result<Self, String> {
        let join = async {
            match args.protocol {
                Protocol::PeerSignal => FlNode::join(args, source, index).await.map(Self::PeerSignal),
                Protocol::Matchbox => MbNode::join(args, source, index).await.map(Self::Matchbox),
            }
        };
        tokio::time::timeout(JOIN_TIMEOUT, join).await.map_err(|_| "join timed out".to_string())?
    }

    fn id(&self) -> Id {
        match self {
            Self::PeerSignal(node) => Id::Node(node.client.id()),
            Self::Matchbox(node) => Id::Peer(node.id),
        }
    }

    fn ws(&mut self) -> &mut Ws {
        match self {
            Self::PeerSignal(node) => &mut node.ws,
            Self::Matchbox(node) => &mut node.ws,
        }
    }

    /// The last node this one heard of by a join notice (matchbox's `NewPeer`; peer-signal's
    /// lists are not kept).
    fn last_new_peer(&self) -> Option<Id> {
        match self {
            Self::PeerSignal(_) => None,
            Self::Matchbox(node) => node.last_new_peer.map(Id::Peer),
        }
    }

    /// Sends a set-up message to `to`; returns the bytes of the frame.
    async fn send(&mut self, to: Id, kind: Kind, text: String) -> Result<usize, String> {
        match (self, to) {
            (Self::PeerSignal(node), Id::Node(to)) => node.send(to, kind, text).await,
            (Self::Matchbox(node), Id::Peer(to)) => node.send(to, kind, text).await,
            (_, to) => Err(format!("{to:?} is an id of the other protocol")),
        }
    }

    /// Reads the next thing that reaches this node.
    async fn next(&mut self) -> Result<Incoming, String> {
        match self {
            Self::PeerSignal(node) => node.next().await,
            Self::Matchbox(node) => node.next().await,
        }
    }

    /// The next set-up message that reaches this node.
    async fn next_setup(&mut self) -> Result<Setup, String> {
        loop {
            if let Incoming::Setup(setup) = self.next().await? {
                return Ok(setup);
            }
        }
    }

    /// Reads until `stop`, counting set-up messages and notices; gives the node back at `stop`.
    async fn drain(
        mut self,
        mut stop: watch::Receiver<bool>,
        setups: &AtomicU64,
        notices: &AtomicU64,
    ) -> Result<Self, String> {
        loop {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => return Ok(self),
                got = self.next() => match got? {
                    Incoming::Setup(setup) if setup.to != self.id() => {
                        return Err(format!("a message for {:?} reached {:?}", setup.to, self.id()))
                    }
                    Incoming::Setup(_) => setups.fetch_add(1, Ordering::Relaxed),
                    Incoming::Notice => notices.fetch_add(1, Ordering::Relaxed),
                },
            };
        }
    }

    /// Sends a request of `bytes` bytes, padded with JSON whitespace; returns its length.
    async fn send_padded(&mut self, bytes: usize) -> Result<usize, String> {
        match self {
            Self::PeerSignal(node) => {
                let request = format!("{:width$}\"ListIDsRequest\"", "", width = bytes.saturating_sub(16));
                node.send_raw(&request).await?;
                Ok(request.len())
            }
            Self::Matchbox(node) => {
                // matchbox answers nothing to a keep-alive.
                let request = format!("{:width$}\"KeepAlive\"", "", width = bytes.saturating_sub(11));
                node.ws.send(Message::Text(request.as_str().into())).await.map_err(|e| e.to_string())?;
                Ok(request.len())
            }
        }
    }

    async fn close(&mut self) {
        let _ = self.ws().close(None).await;
    }
}

/// Opens a WebSocket to `ws://<server>/<path>` from `source`.
async fn connect(args: &Args, source: IpAddr, path: &str) -> Result<Ws, String> {
    connect_with(args, source, path, None).await
}

/// As [`connect`], with the socket's receive buffer set to `recv_buffer` bytes.
async fn connect_with(
    args: &Args,
    source: IpAddr,
    path: &str,
    recv_buffer: Option<u32>,
) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).map_err(|e| e.to_string())?;
    }
    // Real clients close from many hosts; this one closes tens of thousands of sockets from a
    // few addresses, and their TIME_WAIT states would exhaust its ports and slow every later
    // connect (and the next run). A zero linger closes with a reset and leaves none; tokio
    // deprecates SO_LINGER because a non-zero linger blocks on drop, which zero does not.
    #[allow(deprecated)]
    socket.set_linger(Some(Duration::ZERO)).map_err(|e| e.to_string())?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket.connect(args.server).await.map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut request =
        format!("ws://{}/{path}", args.server).into_client_request().map_err(|e| e.to_string())?;
    if args.bincode {
        request
            .headers_mut()
            .insert("sec-websocket-protocol", BINCODE_SUBPROTOCOL.parse().map_err(|_| "header")?);
    }
    // tungstenite zeroes its whole read buffer (128 KiB unless set) before every read: with small
    // frames that memset was the load generator's largest cost, for either server.
    let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, MaybeTlsStream::Plain(stream), Some(config))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

/// The next data frame, skipping pings and pongs.
async fn read_frame(ws: &mut Ws) -> Result<Message, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => return Ok(message),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("closed".into()),
        }
    }
}

/// A peer-signal node: its socket and the sans-IO client that speaks the protocol.
struct FlNode {
    ws: Ws,
    client: SignalClient,
}

impl FlNode {
    /// Connects from `source` and completes the handshake (challenge, announce, config, list).
    async fn join(args: &Args, source: IpAddr, index: u64) -> Result<Self, String> {
        Self::join_with(args, source, index, None).await
    }

    /// As [`join`](Self::join), with a receive buffer of `recv_buffer` bytes.
    async fn join_with(
        args: &Args,
        source: IpAddr,
        index: u64,
        recv_buffer: Option<u32>,
    ) -> Result<Self, String> {
        let codec = if args.bincode { Codec::Bincode } else { Codec::Json };
        let ws = connect_with(args, source, "", recv_buffer).await?;
        let key = key(index);
        let info = NodeInfo::new(format!("load-{index}"), "loadgen", key.verifying_key().to_bytes());
        let mut node = Self { ws, client: SignalClient::new(key, info, codec) };
        // Challenge → announce → SystemConfig → list.
        while !node.client.is_connected() {
            node.read_one().await?;
        }
        Ok(node)
    }

    /// Reads one frame, feeds it to the client, and sends what the client wants to send.
    async fn read_one(&mut self) -> Result<(), String> {
        let frame = match read_frame(&mut self.ws).await? {
            Message::Text(text) => bytes::Bytes::from(text),
            Message::Binary(data) => data,
            other => return Err(format!("unexpected {other:?}")),
        };
        self.client.handle_frame(&frame).map_err(|e| e.to_string())?;
        self.flush().await.map(drop)
    }

    /// Sends what the client has queued; returns the bytes sent.
    async fn flush(&mut self) -> Result<usize, String> {
        let mut sent = 0;
        while let Some(frame) = self.client.poll_transmit() {
            sent += frame.len();
            let message = if self.client.codec().is_binary() {
                Message::Binary(frame)
            } else {
                Message::Text(Utf8Bytes::try_from(frame).map_err(|e| e.to_string())?)
            };
            self.ws.feed(message).await.map_err(|e| e.to_string())?;
        }
        self.ws.flush().await.map_err(|e| e.to_string())?;
        Ok(sent)
    }

    /// Sends `text` as one frame and reads the reply it earns.
    async fn send_raw(&mut self, text: &str) -> Result<(), String> {
        let message = if self.client.codec().is_binary() {
            Message::Binary(bytes::Bytes::copy_from_slice(text.as_bytes()))
        } else {
            Message::Text(text.into())
        };
        self.ws.send(message).await.map_err(|e| e.to_string())?;
        self.read_one().await
    }

    /// Sends a `PeerSetup`: this node initiates an `Init` or an `Offer` and follows an `Answer`.
    async fn send(&mut self, to: NodeID, kind: Kind, text: String) -> Result<usize, String> {
        let me = self.client.id();
        let (id_init, id_follow, message) = match kind {
            Kind::Init => (me, to, PeerMessage::Init),
            Kind::Offer => (me, to, PeerMessage::Offer(text)),
            Kind::Answer => (to, me, PeerMessage::Answer(text)),
        };
        self.client.send_setup(PeerInfo { id_init, id_follow, message }).map_err(|e| e.to_string())?;
        self.flush().await
    }

    async fn next(&mut self) -> Result<Incoming, String> {
        loop {
            match self.client.poll_event() {
                Some(ClientEvent::PeerSetup(setup)) => {
                    // The pair names both ends; the sender is the end that is not this node.
                    let me = self.client.id();
                    let (from, to) = if setup.id_follow == me {
                        (setup.id_init, me)
                    } else if setup.id_init == me {
                        (setup.id_follow, me)
                    } else {
                        (setup.id_init, setup.id_follow)
                    };
                    let text = setup.message.text().unwrap_or_default().to_owned();
                    return Ok(Incoming::Setup(Setup { from: Id::Node(from), to: Id::Node(to), text }));
                }
                Some(ClientEvent::Error(error)) => return Err(format!("server error: {error}")),
                Some(_) => return Ok(Incoming::Notice),
                None => self.read_one().await?,
            }
        }
    }
}

/// Keys derived before a scenario's clock starts. A node has its key before it connects (fledger
/// derives it once, at start-up): deriving one per join would add load-generator time to every
/// join, and to none of matchbox's.
static KEYS: OnceLock<HashMap<u64, SigningKey>> = OnceLock::new();

/// A churn worker's nodes take turns with this many keys: a key comes back after the worker's
/// previous node with it has long left.
const CHURN_KEYS: u64 = 256;

/// Derives the keys of the nodes `args` will join, for [`key`] to look up.
fn preload_keys(args: &Args) {
    if args.protocol != Protocol::PeerSignal {
        return;
    }
    let indices: Vec<u64> = match args.scenario {
        Scenario::Join { conns, .. } | Scenario::Idle { conns, .. } => (0..u64::from(conns)).collect(),
        Scenario::SlowReaders { conns, rounds, .. } => (0..u64::from(conns) * u64::from(rounds)).collect(),
        Scenario::Relay { pairs, .. } => (0..2 * u64::from(pairs)).collect(),
        Scenario::Churn { workers, .. } => (0..workers)
            .flat_map(|worker| (0..CHURN_KEYS).map(move |i| churn_index(worker, i)))
            .chain([u64::MAX])
            .collect(),
    };
    let _ = KEYS.set(indices.into_iter().map(|index| (index, derive_key(index))).collect());
}

/// The node index of a churn worker's `cycle`.
fn churn_index(worker: u32, cycle: u64) -> u64 {
    (u64::from(worker) << 32) + 1 + cycle % CHURN_KEYS
}

/// The key of node `index`: preloaded, or derived now.
fn key(index: u64) -> SigningKey {
    KEYS.get().and_then(|keys| keys.get(&index)).cloned().unwrap_or_else(|| derive_key(index))
}

fn derive_key(index: u64) -> SigningKey {
    let mut seed = [0x4c; 32];
    seed[..8].copy_from_slice(&index.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// A matchbox node: its socket, the id the server assigned, and the last node it heard of.
struct MbNode {
    ws: Ws,
    id: u128,
    last_new_peer: Option<u128>,
}

/// matchbox_protocol 0.15's `PeerEvent<PeerSignal>`, server to node. A `PeerId` is a UUID string.
#[derive(Deserialize)]
enum MbEvent {
    IdAssigned(String),
    NewPeer(String),
    PeerLeft(serde::de::IgnoredAny),
    Signal { sender: String, data: MbSignal },
}

/// matchbox_protocol 0.15's `PeerRequest<PeerSignal>`, node to server.
#[derive(Serialize)]
enum MbRequest {
    Signal { receiver: String, data: MbSignal },
}

/// matchbox_socket 0.15's `PeerSignal`: the `data` of a signal.
#[derive(Serialize, Deserialize)]
enum MbSignal {
    IceCandidate(String),
    Offer(String),
    Answer(String),
}

impl MbNode {
    /// Connects from `source` to the room of node `index` and waits for `IdAssigned`.
    async fn join(args: &Args, source: IpAddr, index: u64) -> Result<Self, String> {
        let mut ws = connect(args, source, &room(args, index)).await?;
        // The server's first event names the node.
        match decode(&read_frame(&mut ws).await?)? {
            MbEvent::IdAssigned(id) => Ok(Self { ws, id: parse_uuid(&id)?, last_new_peer: None }),
            _ => Err("the first event is not IdAssigned".into()),
        }
    }

    async fn send(&mut self, to: u128, kind: Kind, text: String) -> Result<usize, String> {
        let data = match kind {
            Kind::Init => MbSignal::IceCandidate("null".into()),
            Kind::Offer => MbSignal::Offer(text),
            Kind::Answer => MbSignal::Answer(text),
        };
        let request = MbRequest::Signal { receiver: format_uuid(to), data };
        let text = serde_json::to_string(&request).map_err(|e| e.to_string())?;
        let sent = text.len();
        self.ws.send(Message::Text(text.into())).await.map_err(|e| e.to_string())?;
        Ok(sent)
    }

    async fn next(&mut self) -> Result<Incoming, String> {
        match decode(&read_frame(&mut self.ws).await?)? {
            MbEvent::Signal { sender, data } => {
                let (MbSignal::IceCandidate(text) | MbSignal::Offer(text) | MbSignal::Answer(text)) = data;
                let from = Id::Peer(parse_uuid(&sender)?);
                Ok(Incoming::Setup(Setup { from, to: Id::Peer(self.id), text }))
            }
            MbEvent::NewPeer(id) => {
                self.last_new_peer = Some(parse_uuid(&id)?);
                Ok(Incoming::Notice)
            }
            MbEvent::PeerLeft(_) => Ok(Incoming::Notice),
            MbEvent::IdAssigned(_) => Err("IdAssigned twice".into()),
        }
    }
}

fn decode(message: &Message) -> Result<MbEvent, String> {
    match message {
        Message::Text(text) => serde_json::from_str(text).map_err(|e| format!("{e}: {text}")),
        _ => Err("matchbox sends text frames only".into()),
    }
}

/// The room of node `index`: a relay pair's own, or `--room-size` nodes per room.
fn room(args: &Args, index: u64) -> String {
    match args.scenario {
        Scenario::Relay { .. } => format!("pair-{}", index / 2),
        _ if args.room_size == 0 => "bench".into(),
        _ => format!("room-{}", index / args.room_size),
    }
}

fn parse_uuid(text: &str) -> Result<u128, String> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    u128::from_str_radix(&hex, 16).map_err(|_| format!("not a UUID: {text}"))
}

fn format_uuid(id: u128) -> String {
    let hex = format!("{id:032x}");
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// What the server process used, from /proc.
#[derive(Clone, Copy, Default)]
struct Proc {
    cpu_s: f64,
    /// Of `cpu_s`, the time in the kernel (sockets, wake-ups).
    sys_s: f64,
    rss_kb: u64,
}

fn read_proc(pid: Option<u32>) -> Option<Proc> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, sys) = (fields.get(11)?.parse::<f64>().ok()?, fields.get(12)?.parse::<f64>().ok()?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Proc { cpu_s: (user + sys) / 100.0, sys_s: sys / 100.0, rss_kb })
}

/// The machine's one-minute load average.
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}

/// Waits until the server has used at most one clock tick (10 ms) of CPU in 200 ms, or for
/// `SETTLE_TIMEOUT`; without a pid, 200 ms.
async fn settle(pid: Option<u32>) {
    const WINDOW: Duration = Duration::from_millis(200);
    let give_up = Instant::now() + SETTLE_TIMEOUT;
    let Some(mut last) = read_proc(pid) else {
        return tokio::time::sleep(WINDOW).await;
    };
    while Instant::now() < give_up {
        tokio::time::sleep(WINDOW).await;
        let Some(now) = read_proc(pid) else { return };
        if now.cpu_s - last.cpu_s <= 0.0101 {
            return;
        }
        last = now;
    }
    eprintln!("the server was still busy after {SETTLE_TIMEOUT:?}");
}

/// Counters shared by the tasks of a run, and the latency samples.
#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    errors: AtomicU64,
    /// Relayed messages that arrived from another node than their sender, or for another node.
    misrouted: AtomicU64,
    /// Relayed messages that arrived after a later one of the same sender.
    out_of_order: AtomicU64,
    /// Relayed messages that never arrived.
    lost: AtomicU64,
    /// Relayed messages that arrived, including those still in flight at the deadline.
    delivered: AtomicU64,
    /// The largest relayed frame sent.
    frame_bytes: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

const MAX_SAMPLES: usize = 5_000_000;

impl Stats {
    fn record(&self, latency: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < MAX_SAMPLES {
            samples.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn error(&self, what: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("error: {what}");
        }
    }

    fn fault(&self, counter: &AtomicU64, count: u64, what: &str) {
        if counter.fetch_add(count, Ordering::Relaxed) < 5 {
            eprintln!("fault: {what}");
        }
    }

    fn percentiles(&self) -> serde_json::Value {
        let mut samples = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if samples.is_empty() {
            return serde_json::Value::Null;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "samples": samples.len()})
    }
}

fn source(args: &Args, index: u64) -> IpAddr {
    let n = u64::from(args.source_ips.max(1));
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % n) as u8))
}

/// Prints a progress line every second until `done` is set.
fn progress(stats: Arc<Stats>, done: Arc<AtomicBool>, what: &'static str) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ops = stats.ops.load(Ordering::Relaxed);
            eprintln!(
                "{:>5.1}s  {what}: {ops} ({}/s)  errors: {}",
                start.elapsed().as_secs_f64(),
                ops - last,
                stats.errors.load(Ordering::Relaxed)
            );
            last = ops;
        }
    });
}

/// The nodes of [`join_many`] and what it took.
struct Joined {
    nodes: Vec<Node>,
    /// Until the last node had joined.
    took: Duration,
    /// Until the server was quiet after that.
    settled: Duration,
    /// Frames the nodes read after their own join.
    notices: u64,
}

/// Joins `count` nodes, `window` handshakes at a time. Each joined node reads what reaches it
/// until all have joined and the server is quiet.
async fn join_many(args: &Arc<Args>, count: u32, window: usize, stats: &Arc<Stats>) -> Joined {
    let slots = Arc::new(Semaphore::new(window.max(1)));
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for index in 0..u64::from(count) {
        let (args, stats, slots) = (args.clone(), stats.clone(), slots.clone());
        let (joined_tx, stop_rx, counts) = (joined_tx.clone(), stop_rx.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            let slot = slots.acquire_owned().await.ok()?;
            let began = Instant::now();
            let node = Node::join(&args, source(&args, index), index).await;
            drop(slot);
            let _ = joined_tx.send(());
            drop(joined_tx);
            let node = match node {
                Ok(node) => node,
                Err(e) => {
                    stats.error(&e);
                    return None;
                }
            };
            stats.record(began.elapsed());
            let (setups, notices) = &*counts;
            node.drain(stop_rx, setups, notices).await.map_err(|e| stats.error(&e)).ok()
        }));
    }
    drop(joined_tx);
    while joined_rx.recv().await.is_some() {}
    let took = start.elapsed();
    settle(args.server_pid).await;
    let settled = start.elapsed();
    let _ = stop_tx.send(true);
    let mut nodes = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Some(node)) = task.await {
            nodes.push(node);
        }
    }
    let (setups, notices) = &*counts;
    if setups.load(Ordering::Relaxed) > 0 {
        stats.error("a set-up message reached a node that only joined");
    }
    Joined { nodes, took, settled, notices: notices.load(Ordering::Relaxed) }
}

async fn close_all(nodes: Vec<Node>) {
    futures::future::join_all(nodes.into_iter().map(|mut node| async move { node.close().await })).await;
}

#[tokio::main]
async fn main() {
    raise_fd_limit();
    let args = Arc::new(Args::parse());
    if args.bincode && args.protocol == Protocol::Matchbox {
        eprintln!("--bincode: matchbox speaks JSON only");
        std::process::exit(2);
    }
    watchdog(Duration::from_secs_f64(args.timeout_secs));
    preload_keys(&args);
    let stats = Arc::new(Stats::default());
    let done = Arc::new(AtomicBool::new(false));
    let before = read_proc(args.server_pid);
    let load_before = load_average();
    let started = Instant::now();
    let mut extra = serde_json::Map::new();

    match args.scenario.clone() {
        Scenario::Join { conns, window } => {
            progress(stats.clone(), done.clone(), "joined");
            let joined = join_many(&args, conns, window, &stats).await;
            let n = joined.nodes.len();
            extra.insert("joined".into(), json!(n));
            extra.insert("join_s".into(), json!(joined.took.as_secs_f64()));
            extra.insert("joins_per_s".into(), json!(n as f64 / joined.took.as_secs_f64()));
            extra.insert("settle_s".into(), json!(joined.settled.as_secs_f64()));
            extra.insert("notices".into(), json!(joined.notices));
            if let (Some(b), Some(after)) = (before, read_proc(args.server_pid)) {
                extra.insert("server_rss_after_join_kb".into(), json!(after.rss_kb));
                // Until the server went quiet: the joins and their fan-out to the other nodes.
                let per_join = (after.cpu_s - b.cpu_s) * 1e6 / n.max(1) as f64;
                extra.insert("server_cpu_us_per_join".into(), json!(per_join));
            }
            close_all(joined.nodes).await;
        }
        Scenario::Idle { conns, secs, window, big_frame } => {
            progress(stats.clone(), done.clone(), "joined");
            let Joined { mut nodes, took, notices, .. } = join_many(&args, conns, window, &stats).await;
            if big_frame > 0 {
                let mut bytes = 0;
                for node in &mut nodes {
                    match node.send_padded(big_frame).await {
                        Ok(sent) => bytes = sent,
                        Err(e) => eprintln!("big frame: {e}"),
                    }
                }
                extra.insert("big_frame_bytes".into(), json!(bytes));
            }
            let held = read_proc(args.server_pid);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let after = read_proc(args.server_pid);
            extra.insert("joined".into(), json!(nodes.len()));
            extra.insert("join_s".into(), json!(took.as_secs_f64()));
            extra.insert("notices".into(), json!(notices));
            if let (Some(b), Some(h), Some(a)) = (before, held, after) {
                let per_conn = (a.rss_kb.saturating_sub(b.rss_kb) * 1024) as f64 / nodes.len().max(1) as f64;
                extra.insert("server_rss_idle_kb".into(), json!(a.rss_kb));
                extra.insert("server_rss_joined_kb".into(), json!(h.rss_kb));
                extra.insert("server_bytes_per_idle_conn".into(), json!(per_conn.round()));
            }
            close_all(nodes).await;
        }
        Scenario::Relay { pairs, window, secs, size, rate } => {
            let mut nodes = join_many(&args, pairs * 2, 256, &stats).await.nodes;
            stats.ops.store(0, Ordering::Relaxed);
            stats.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let epoch = Instant::now();
            let deadline = epoch + Duration::from_secs_f64(secs);
            progress(stats.clone(), done.clone(), "relays");
            let before_relay = read_proc(args.server_pid);
            let pace = (rate > 0).then(|| Duration::from_secs_f64(f64::from(pairs) / rate as f64));
            let mut tasks = Vec::new();
            while let (Some(b), Some(a)) = (nodes.pop(), nodes.pop()) {
                // A matchbox pair shares a room: one of the two heard of the other.
                if args.protocol == Protocol::Matchbox
                    && a.last_new_peer() != Some(b.id())
                    && b.last_new_peer() != Some(a.id())
                {
                    stats.error("a pair did not hear of each other by NewPeer");
                }
                tasks.push(tokio::spawn(bounce(a, b, window, size, epoch, deadline, pace, stats.clone())));
            }
            for task in tasks {
                if let Ok((a, b)) = task.await {
                    nodes.extend([a, b]);
                }
            }
            let after = read_proc(args.server_pid);
            let relays = stats.ops.load(Ordering::Relaxed);
            let delivered = stats.delivered.load(Ordering::Relaxed);
            extra.insert("relays".into(), json!(relays));
            extra.insert("relays_per_s".into(), json!(relays as f64 / secs));
            extra.insert("delivered".into(), json!(delivered));
            extra.insert("frame_bytes".into(), json!(stats.frame_bytes.load(Ordering::Relaxed)));
            if let (Some(b), Some(a)) = (before_relay, after) {
                // Per message that crossed the server, in flight at the deadline included.
                let per_relay = |s: f64| s * 1e6 / delivered.max(1) as f64;
                extra.insert("server_cpu_us_per_relay".into(), json!(per_relay(a.cpu_s - b.cpu_s)));
                extra.insert("server_kernel_us_per_relay".into(), json!(per_relay(a.sys_s - b.sys_s)));
            }
            close_all(nodes).await;
        }
        Scenario::SlowReaders { conns, rounds, secs, idle_secs } => {
            if args.protocol != Protocol::PeerSignal {
                eprintln!("slow-readers: peer-signal only");
                std::process::exit(2);
            }
            let mut memory = Vec::new();
            for round in 0..rounds {
                let peak = Arc::new(AtomicU64::new(0));
                let watcher = {
                    let (peak, pid) = (peak.clone(), args.server_pid);
                    tokio::spawn(async move {
                        loop {
                            if let Some(now) = read_proc(pid) {
                                peak.fetch_max(now.rss_kb, Ordering::Relaxed);
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    })
                };
                let deadline = Instant::now() + Duration::from_secs_f64(secs);
                let tasks: Vec<_> = (0..u64::from(conns))
                    .map(|i| {
                        let (args, stats) = (args.clone(), stats.clone());
                        let index = u64::from(round) * u64::from(conns) + i;
                        tokio::spawn(async move {
                            let source = source(&args, index);
                            let mut node = match FlNode::join_with(&args, source, index, Some(4096)).await {
                                Ok(node) => node,
                                Err(e) => return stats.error(&e),
                            };
                            let request = Message::Text("\"ListIDsRequest\"".into());
                            // Until the deadline, or until the server stops taking requests.
                            while let Ok(Ok(())) =
                                tokio::time::timeout_at(deadline.into(), node.ws.send(request.clone())).await
                            {
                                stats.ops.fetch_add(1, Ordering::Relaxed);
                            }
                            // Hang up with a reset, without reading what the server queued.
                            drop(node);
                        })
                    })
                    .collect();
                futures::future::join_all(tasks).await;
                tokio::time::sleep(Duration::from_secs_f64(idle_secs)).await;
                settle(args.server_pid).await;
                watcher.abort();
                let after = read_proc(args.server_pid).map(|p| p.rss_kb);
                memory.push(json!({"round": round, "peak_rss_kb": peak.load(Ordering::Relaxed), "rss_after_kb": after}));
                eprintln!("round {round}: peak {} kB, after {after:?} kB", peak.load(Ordering::Relaxed));
            }
            extra.insert("requests".into(), json!(stats.ops.load(Ordering::Relaxed)));
            extra.insert("rounds".into(), json!(memory));
        }
        Scenario::Churn { workers, secs } => {
            // A permanent partner that every cycle relays to.
            let partner = match Node::join(&args, source(&args, 0), u64::MAX).await {
                Ok(node) => node,
                Err(e) => {
                    eprintln!("cannot join the partner node: {e}");
                    std::process::exit(1);
                }
            };
            let partner_id = partner.id();
            let counts = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
            let (stop_tx, stop_rx) = watch::channel(false);
            let drain = tokio::spawn({
                let (counts, stats) = (counts.clone(), stats.clone());
                async move {
                    let (delivered, notices) = &*counts;
                    match partner.drain(stop_rx, delivered, notices).await {
                        Ok(mut partner) => partner.close().await,
                        Err(e) => stats.error(&format!("partner: {e}")),
                    }
                }
            });
            progress(stats.clone(), done.clone(), "cycles");
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for worker in 0..workers {
                let (args, stats) = (args.clone(), stats.clone());
                tasks.push(tokio::spawn(async move {
                    let mut cycle = 0;
                    while Instant::now() < deadline {
                        let index = churn_index(worker, cycle);
                        cycle += 1;
                        let began = Instant::now();
                        let cycle = async {
                            let mut node = Node::join(&args, source(&args, index), index).await?;
                            node.send(partner_id, Kind::Init, String::new()).await?;
                            node.ws().close(None).await.map_err(|e| e.to_string())
                        };
                        match cycle.await {
                            Ok(()) => stats.record(began.elapsed()),
                            Err(e) => stats.error(&e),
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            let cycles = stats.ops.load(Ordering::Relaxed);
            // What the last cycles sent may still be on its way to the partner.
            let (delivered, _) = &*counts;
            let give_up = Instant::now() + DRAIN_TIMEOUT;
            while delivered.load(Ordering::Relaxed) < cycles && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = stop_tx.send(true);
            let _ = drain.await;
            let delivered = delivered.load(Ordering::Relaxed);
            if delivered < cycles {
                stats.lost.fetch_add(cycles - delivered, Ordering::Relaxed);
            }
            extra.insert("cycles".into(), json!(cycles));
            extra.insert("cycles_per_s".into(), json!(cycles as f64 / elapsed));
            extra.insert("delivered".into(), json!(delivered));
        }
    }
    done.store(true, Ordering::Relaxed);

    let after = read_proc(args.server_pid);
    let mut summary = json!({
        "scenario": format!("{:?}", args.scenario).split_whitespace().next().unwrap_or_default(),
        "label": args.label,
        "protocol": args.protocol.name(),
        "codec": if args.bincode { "bincode" } else { "json" },
        "params": format!("{:?}", args.scenario),
        "duration_s": started.elapsed().as_secs_f64(),
        "ops": stats.ops.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "misrouted": stats.misrouted.load(Ordering::Relaxed),
        "out_of_order": stats.out_of_order.load(Ordering::Relaxed),
        "lost": stats.lost.load(Ordering::Relaxed),
        "latency_us": stats.percentiles(),
        // Others' work on the machine, which the figures share it with.
        "load_1min": [load_before, load_average()],
    });
    if args.protocol == Protocol::Matchbox {
        let rooms = if matches!(args.scenario, Scenario::Relay { .. }) { 2 } else { args.room_size };
        summary["room_size"] = json!(rooms);
    }
    if let (Some(b), Some(a)) = (before, after) {
        summary["server"] = json!({
            "cpu_s": a.cpu_s - b.cpu_s,
            "kernel_s": a.sys_s - b.sys_s,
            "rss_start_kb": b.rss_kb,
            "rss_end_kb": a.rss_kb,
        });
    }
    if let Some(object) = summary.as_object_mut() {
        object.extend(extra);
    }
    println!("{summary}");
}

/// One direction of a pair: what was sent, what arrived, and the next sequence number due.
#[derive(Default)]
struct Lane {
    sent: u64,
    received: u64,
    due: u64,
}

impl Lane {
    /// The next message's text: its send time and sequence number, padded to `size` bytes.
    fn stamp(&mut self, epoch: Instant, size: usize) -> String {
        let mut text = format!("{:020} {:010} ", epoch.elapsed().as_nanos(), self.sent);
        text.extend(std::iter::repeat_n('x', size.saturating_sub(text.len())));
        self.sent += 1;
        text
    }

    /// Checks a message that arrived on this lane, which runs `from` → `to`; returns its latency.
    fn check(&mut self, setup: &Setup, from: Id, to: Id, epoch: Instant, stats: &Stats) -> Duration {
        if setup.from != from || setup.to != to {
            stats.fault(
                &stats.misrouted,
                1,
                &format!("{:?} → {:?} on the lane {from:?} → {to:?}", setup.from, setup.to),
            );
        }
        let mut fields = setup.text.split(' ').map(|field| field.parse::<u64>().ok());
        let (sent, seq) = (fields.next().flatten(), fields.next().flatten());
        if seq != Some(self.due) {
            stats.fault(&stats.out_of_order, 1, &format!("message {seq:?} where {} was due", self.due));
        }
        self.due = seq.map_or(self.due, |seq| seq + 1);
        self.received += 1;
        stats.delivered.fetch_add(1, Ordering::Relaxed);
        epoch.elapsed().saturating_sub(Duration::from_nanos(sent.unwrap_or_default()))
    }
}

/// One pair. Closed loop: `a` offers, `b` answers each offer, `window` messages in flight.
/// Paced (`pace` set): `a` offers once per `pace`, `b` only receives. Every message carries its
/// send time and its receiver records the latency. Stops sending at `deadline`, then waits for
/// what is in flight; gives the pair back.
#[allow(clippy::too_many_arguments)]
async fn bounce(
    mut a: Node,
    mut b: Node,
    window: u32,
    size: usize,
    epoch: Instant,
    deadline: Instant,
    pace: Option<Duration>,
    stats: Arc<Stats>,
) -> (Node, Node) {
    let (a_id, b_id) = (a.id(), b.id());
    let (mut ab, mut ba) = (Lane::default(), Lane::default());
    let run = async {
        let stop = tokio::time::sleep_until(deadline.into());
        tokio::pin!(stop);
        let sent = a.send(b_id, Kind::Offer, ab.stamp(epoch, size)).await?;
        stats.frame_bytes.fetch_max(sent as u64, Ordering::Relaxed);
        if let Some(pace) = pace {
            // Open loop: `a` offers at a fixed rate whatever happens, `b` records each arrival at once.
            let mut ticker = tokio::time::interval(pace);
            ticker.tick().await;
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    _ = ticker.tick() => {
                        a.send(b_id, Kind::Offer, ab.stamp(epoch, size)).await?;
                    }
                    got = b.next_setup() => stats.record(ab.check(&got?, a_id, b_id, epoch, &stats)),
                }
            }
        } else {
            // Closed loop: `window` messages in flight; each arrival is answered at once.
            for _ in 1..window {
                a.send(b_id, Kind::Offer, ab.stamp(epoch, size)).await?;
            }
            loop {
                tokio::select! {
                    () = &mut stop => break,
                    got = b.next_setup() => {
                        stats.record(ab.check(&got?, a_id, b_id, epoch, &stats));
                        b.send(a_id, Kind::Answer, ba.stamp(epoch, size)).await?;
                    }
                    got = a.next_setup() => {
                        stats.record(ba.check(&got?, b_id, a_id, epoch, &stats));
                        a.send(b_id, Kind::Offer, ab.stamp(epoch, size)).await?;
                    }
                }
            }
        }
        // Nothing sent may be lost: what is in flight at the deadline must still arrive.
        let give_up = tokio::time::sleep(DRAIN_TIMEOUT);
        tokio::pin!(give_up);
        while ab.received < ab.sent || ba.received < ba.sent {
            tokio::select! {
                () = &mut give_up => break,
                got = b.next_setup(), if ab.received < ab.sent => {
                    ab.check(&got?, a_id, b_id, epoch, &stats);
                }
                got = a.next_setup(), if ba.received < ba.sent => {
                    ba.check(&got?, b_id, a_id, epoch, &stats);
                }
            }
        }
        Ok::<_, String>(())
    };
    if let Err(e) = run.await {
        stats.error(&e);
    }
    let lost = (ab.sent - ab.received) + (ba.sent - ba.received);
    if lost > 0 {
        stats.fault(&stats.lost, lost, &format!("{lost} messages of a pair never arrived"));
    }
    (a, b)
}

/// Ends the process if the run takes longer than `limit`: every run is bounded in time.
fn watchdog(limit: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("loadgen: the run took longer than {limit:?}; giving up");
        std::process::exit(3);
    });
}

/// Lets this process hold many sockets: the soft limit up to the hard one, and as root both.
fn raise_fd_limit() {
    let want = 1 << 20;
    if rlimit::Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
}
