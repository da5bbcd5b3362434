//! The WebSocket transport: tokio + tokio-tungstenite, behind the `websocket` feature.
//!
//! One task accepts TCP connections; each connection gets its own task, which does the WebSocket
//! handshake under a timeout and then moves frames between the socket and two bounded queues: the
//! connection's send queue, and the events queue that [`WsTransport::next_event`] reads. The
//! transport addresses connections by id in a map it alone owns, so the relay path takes no lock.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, ToSocketAddrs};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{Transport, TransportEvent};
use crate::client::ClientConnection;
use crate::{CloseReason, Codec, ConnId, ProtocolError, SignalConfig, TransportError};

/// The WebSocket subprotocol a client asks for to speak bincode in binary frames. Without it a
/// connection speaks JSON in text frames, as fledger nodes do.
pub const BINCODE_SUBPROTOCOL: &str = "peer-signal-bincode";

/// Settings and limits of the WebSocket transport.
///
/// [`WsConfig::for_server`] derives the limits shared with the core from a [`SignalConfig`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsConfig {
    /// Open TCP connections, including those still in the WebSocket handshake. Connections over
    /// it are dropped right after `accept`. Default 100,000.
    pub max_connections: usize,
    /// Open TCP connections from one IPv4 address, or one IPv6 /64 (a host usually owns a whole
    /// /64), counted from `accept` until the connection's task ends. Connections over it are
    /// dropped right after `accept` and counted in [`WsStats::refused_per_ip`]. Default `None`:
    /// many honest nodes can share an address (a NAT, or a reverse proxy in front of the server,
    /// where every connection comes from the proxy), and `max_connections` and the core's
    /// `max_pending_handshakes` bound the total anyway. Set it when clients connect directly.
    pub max_connections_per_ip: Option<usize>,
    /// Time a client has to complete the WebSocket handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest WebSocket message (and frame) accepted; a larger one closes the connection with
    /// code 1009. Default 128 KiB, twice the core's frame limit, so that the core gets to answer
    /// `frame too large` for frames in between.
    pub max_message_size: usize,
    /// Frames queued for one connection. A connection whose queue is full reads too slowly and
    /// is closed at once. Default 256.
    pub send_backlog: usize,
    /// How often the server pings a quiet connection. A connection from which nothing (not even a
    /// pong) arrived for two intervals is closed. Default 30 s.
    pub ping_interval: Duration,
    /// The read buffer each connection starts with. A longer message grows it to the message's
    /// size. Default 1 KiB: most frames are smaller, and tungstenite's own default of 128 KiB
    /// would dominate the memory of an idle connection.
    pub read_buffer_size: usize,
    /// Largest WebSocket frame the server writes. A longer message (a long node list, a big SDP)
    /// goes out as a fragmented message, which every WebSocket client reassembles. This bounds
    /// each connection's write buffer, which otherwise keeps the size of the longest message it
    /// ever sent for as long as the connection lives. Default 2 KiB.
    pub write_fragment_size: usize,
    /// Connections the kernel queues for `accept` (the listen backlog; the kernel caps it at
    /// `net.core.somaxconn`). A full backlog drops connection attempts, which the client retries
    /// only a second later. Default 4096.
    pub listen_backlog: u32,
    /// Events (opens, frames, closes) waiting for the driver. When it is full, connections stop
    /// reading until the driver catches up. Default 4096.
    pub event_queue: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_connections_per_ip: None,
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 128 * 1024,
            send_backlog: 256,
            ping_interval: Duration::from_secs(30),
            read_buffer_size: 1024,
            write_fragment_size: 2 * 1024,
            listen_backlog: 4096,
            event_queue: 4096,
        }
    }
}

impl WsConfig {
    /// The defaults, with the limits the core also knows taken from `config`.
    pub fn for_server(config: &SignalConfig) -> Self {
        Self {
            max_connections: config.max_connections,
            max_message_size: config.max_frame_size.saturating_mul(2),
            send_backlog: config.max_send_backlog,
            ..Self::default()
        }
    }
}

/// Counters of what the WebSocket layer did on its own, for metrics. Get them from
/// [`WsTransport::stats_handle`]; read them with [`WsStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections`] were open.
    pub refused: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections_per_ip`] were open
    /// from the same address.
    pub refused_per_ip: u64,
    /// Connections that failed or timed out in the WebSocket handshake.
    pub failed_handshakes: u64,
    /// Connections closed because their send queue was full (slow readers).
    pub slow_readers: u64,
    /// Connections closed for a message over [`WsConfig::max_message_size`].
    pub oversize: u64,
    /// Connections closed because nothing arrived for two ping intervals.
    pub ping_timeouts: u64,
}

/// A shared view of a [`WsTransport`]'s [`WsStats`], usable after the transport moved into a driver.
#[derive(Debug, Clone, Default)]
pub struct WsStatsHandle(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    refused: AtomicU64,
    refused_per_ip: AtomicU64,
    failed_handshakes: AtomicU64,
    slow_readers: AtomicU64,
    oversize: AtomicU64,
    ping_timeouts: AtomicU64,
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
            accepted: read(&c.accepted),
            refused: read(&c.refused),
            refused_per_ip: read(&c.refused_per_ip),
            failed_handshakes: read(&c.failed_handshakes),
            slow_readers: read(&c.slow_readers),
            oversize: read(&c.oversize),
            ping_timeouts: read(&c.ping_timeouts),
        }
    }
}

/// What a connection task tells the transport.
enum Event {
    Opened { conn: ConnId, codec: Codec, handle: ConnHandle },
    Frame { conn: ConnId, frame: Bytes },
    Closed { conn: ConnId },
}

/// What the transport tells a connection task.
enum Outbound {
    Frame(Bytes),
    Close(CloseReason),
}

/// The transport's side of one connection.
struct ConnHandle {
    /// `futures`' channel rather than tokio's: it allocates nothing up front, where tokio's
    /// preallocates a block of 32 slots, a fair share of an idle connection's memory.
    queue: futures::channel::mpsc::Sender<Outbound>,
    /// Ends the connection's task at once, without draining its queue.
    kill: Arc<Notify>,
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
    conns: HashMap<ConnId, ConnHandle>,
    /// Closes the transport decided on itself (slow readers), reported before anything else.
    closed: VecDeque<ConnId>,
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
    /// Listens on `addr` and starts accepting connections.
    ///
    /// # Errors
    ///
    /// The error of binding the listener.
    pub async fn bind(addr: impl ToSocketAddrs, config: WsConfig) -> std::io::Result<Self> {
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
    /// The error of reading the listener's local address.
    pub fn from_listener(listener: TcpListener, config: WsConfig) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(config.event_queue.max(1));
        let stats = WsStatsHandle::default();
        let accept = tokio::spawn(accept_loop(listener, Arc::new(config), events_tx, stats.0.clone()));
        Ok(Self { events, conns: HashMap::new(), closed: VecDeque::new(), local_addr, accept, stats })
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
}

impl Drop for WsTransport {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in self.conns.values() {
            handle.kill.notify_one();
        }
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn next_event(&mut self) -> Option<TransportEvent> {
        if let Some(conn) = self.closed.pop_front() {
            return Some(TransportEvent::Closed { conn });
        }
        loop {
            // Frames and closes of connections already closed here are stale: drop them.
            match self.events.recv().await? {
                Event::Opened { conn, codec, handle } => {
                    self.conns.insert(conn, handle);
                    return Some(TransportEvent::Opened { conn, codec });
                }
                Event::Frame { conn, frame } if self.conns.contains_key(&conn) => {
                    return Some(TransportEvent::Frame { conn, frame });
                }
                Event::Closed { conn } if self.conns.remove(&conn).is_some() => {
                    return Some(TransportEvent::Closed { conn });
                }
                Event::Frame { .. } | Event::Closed { .. } => {}
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
        let handle = self.conns.get_mut(&conn).ok_or(TransportError::Closed(conn))?;
        if handle.queue.try_send(Outbound::Frame(frame)).is_err() {
            // A full queue is a slow reader; a closed one, a task that just ended.
            if let Some(handle) = self.conns.remove(&conn) {
                handle.kill.notify_one();
                Counters::bump(&self.stats.0.slow_readers);
            }
            self.closed.push_back(conn);
            return Err(TransportError::Closed(conn));
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(mut handle) = self.conns.remove(&conn) {
            if handle.queue.try_send(Outbound::Close(reason)).is_err() {
                handle.kill.notify_one();
            }
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Arc<WsConfig>,
    events: mpsc::Sender<Event>,
    counters: Arc<Counters>,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.min(Semaphore::MAX_PERMITS)));
    let per_ip = config.max_connections_per_ip.map(|limit| Arc::new(PerIp::new(limit)));
    let mut next_id = 0u64;
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        Counters::bump(&counters.accepted);
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            Counters::bump(&counters.refused);
            continue; // Full: the stream is dropped, which closes it.
        };
        let ip_slot = match &per_ip {
            Some(per_ip) => match PerIp::acquire(per_ip, peer.ip()) {
                Some(ip_slot) => Some(ip_slot),
                None => {
                    Counters::bump(&counters.refused_per_ip);
                    continue;
                }
            },
            None => None,
        };
        next_id += 1;
        let conn = ConnId::new(next_id);
        let (config, events, counters) = (config.clone(), events.clone(), counters.clone());
        let slots = (slot, ip_slot);
        tokio::spawn(async move { serve_connection(stream, conn, &config, events, &counters, slots).await });
    }
}

/// Open connections per address. Locked once when a connection is accepted and once when its
/// task ends, never on the frame path.
struct PerIp {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(limit: usize) -> Self {
        Self { limit, open: Mutex::new(HashMap::new()) }
    }

    /// The key an address is counted under: IPv4 addresses (also IPv4-mapped IPv6 ones) as they
    /// are, IPv6 addresses by their /64, which one host usually owns whole.
    fn key(ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            v4 => v4,
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it has `limit` open.
    fn acquire(this: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = Self::key(ip);
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked before inserting, so that a refused address leaves no entry behind.
        if open.get(&key).is_some_and(|&count| count >= this.limit) || this.limit == 0 {
            return None;
        }
        *open.entry(key).or_insert(0) += 1;
        Some(IpSlot { per_ip: Arc::clone(this), key })
    }
}

/// One connection's place in [`PerIp`], given back when the connection's task ends.
struct IpSlot {
    per_ip: Arc<PerIp>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

// tungstenite's handshake callback dictates the closure's (large) error type.
#[allow(clippy::result_large_err)]
async fn serve_connection(
    stream: TcpStream,
    conn: ConnId,
    config: &WsConfig,
    events: mpsc::Sender<Event>,
    counters: &Counters,
    slots: (OwnedSemaphorePermit, Option<IpSlot>),
) {
    let _ = stream.set_nodelay(true);
    let mut codec = Codec::Json;
    let choose_codec = |request: &Request, mut response: Response| {
        let wants_bincode = request
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|protocol| protocol.trim() == BINCODE_SUBPROTOCOL);
        if wants_bincode {
            codec = Codec::Bincode;
            response
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(BINCODE_SUBPROTOCOL));
        }
        Ok(response)
    };
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.read_buffer_size)
        .write_buffer_size(config.write_fragment_size)
        .max_write_buffer_size(config.max_message_size.saturating_mul(4))
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    // Boxed: the handshake's state is large and needed only until the upgrade, so it should not
    // size the task that lives as long as the connection.
    let handshake =
        Box::pin(tokio_tungstenite::accept_hdr_async_with_config(stream, choose_codec, Some(ws_config)));
    let Ok(Ok(ws)) = tokio::time::timeout(config.handshake_timeout, handshake).await else {
        Counters::bump(&counters.failed_handshakes);
        return; // Never became a WebSocket: the core never hears of it.
    };

    // Capacity is `buffer` plus one per sender, and there is one sender.
    let (queue, outbound) = futures::channel::mpsc::channel(config.send_backlog.saturating_sub(1));
    let kill = Arc::new(Notify::new());
    let handle = ConnHandle { queue, kill: kill.clone() };
    if events.send(Event::Opened { conn, codec, handle }).await.is_err() {
        return;
    }
    let end = run_connection(ws, conn, codec, config, outbound, &kill, &events).await;
    match end {
        End::Oversize => Counters::bump(&counters.oversize),
        End::PingTimeout => Counters::bump(&counters.ping_timeouts),
        End::Other => {}
    }
    // Given back before the close is reported, so that whoever sees the close can reconnect.
    drop(slots);
    let _ = events.send(Event::Closed { conn }).await;
}

/// Why a connection task ended, where a counter cares.
enum End {
    Oversize,
    PingTimeout,
    Other,
}

async fn run_connection(
    ws: WebSocketStream<TcpStream>,
    conn: ConnId,
    codec: Codec,
    config: &WsConfig,
    mut outbound: futures::channel::mpsc::Receiver<Outbound>,
    kill: &Notify,
    events: &mpsc::Sender<Event>,
) -> End {
    let ping_interval = config.ping_interval;
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    let mut last_heard = Instant::now();
    // Registered once, not on every wake-up.
    let killed = kill.notified();
    tokio::pin!(killed);
    loop {
        tokio::select! {
            biased;
            () = &mut killed => return End::Other,
            next = outbound.next() => {
                let Some(first) = next else { return End::Other };
                // Write everything already queued, then flush once.
                let mut item = Some(first);
                while let Some(out) = item.take() {
                    match out {
                        Outbound::Frame(frame) => {
                            for message in to_messages(codec, frame, config.write_fragment_size) {
                                if sink.feed(message).await.is_err() {
                                    return End::Other;
                                }
                            }
                        }
                        Outbound::Close(reason) => {
                            close_and_linger(&mut sink, &mut stream, close_frame(&reason)).await;
                            return End::Other;
                        }
                    }
                    item = outbound.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    return End::Other;
                }
            }
            incoming = stream.next() => {
                let frame = match incoming {
                    Some(Ok(Message::Text(text))) => Bytes::from(text),
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        last_heard = Instant::now();
                        continue;
                    }
                    Some(Err(WsError::Capacity(_))) => {
                        let close = CloseFrame { code: CloseCode::Size, reason: "message too big".into() };
                        let _ = sink.send(Message::Close(Some(close))).await;
                        return End::Oversize;
                    }
                    Some(Ok(Message::Close(_)) | Err(_)) | None => return End::Other,
                };
                last_heard = Instant::now();
                if events.send(Event::Frame { conn, frame }).await.is_err() {
                    return End::Other;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= ping_interval * 2 {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "ping timeout".into() }))).await;
                    return End::PingTimeout;
                }
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    return End::Other;
                }
            }
        }
    }
}

/// How long a connection that the server closes goes on reading, and dropping, what the peer still
/// sends, until the peer answers the close or hangs up.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Sends `frame`, then drains the peer for at most [`CLOSE_LINGER`]. A socket dropped with unread
/// data in it is reset by the kernel, and a reset peer may never read the `Error` and the close
/// frame queued before it; a client that floods the server is exactly such a peer.
async fn close_and_linger<S, R>(sink: &mut S, stream: &mut R, frame: CloseFrame)
where
    S: futures::Sink<Message> + Unpin,
    R: futures::Stream<Item = Result<Message, WsError>> + Unpin,
{
    if sink.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}

/// Text frames for JSON, binary for bincode. A text frame must be UTF-8; JSON frames the core
/// produced or relayed always are, so this drops nothing in practice.
fn to_message(codec: Codec, frame: Bytes) -> Option<Message> {
    if codec.is_binary() {
        Some(Message::Binary(frame))
    } else {
        Utf8Bytes::try_from(frame).ok().map(Message::Text)
    }
}

/// One message, or for a frame longer than `fragment` a fragmented message: a first data frame,
/// continuation frames, the last one final. The pieces share the frame's buffer.
fn to_messages(codec: Codec, frame: Bytes, fragment: usize) -> impl Iterator<Item = Message> {
    let fragment = fragment.max(1);
    let (single, pieces) = if frame.len() <= fragment {
        (to_message(codec, frame), None)
    } else if codec.is_binary() || std::str::from_utf8(&frame).is_ok() {
        // UTF-8 is checked over the whole message: a fragment may end inside a character.
        let first = if codec.is_binary() { OpData::Binary } else { OpData::Text };
        let count = frame.len().div_ceil(fragment);
        let pieces = (0..count).map(move |i| {
            let piece = frame.slice(i * fragment..((i + 1) * fragment).min(frame.len()));
            let opcode = if i == 0 { first } else { OpData::Continue };
            Message::Frame(Frame::message(piece, OpCode::Data(opcode), i + 1 == count))
        });
        (None, Some(pieces))
    } else {
        (None, None)
    };
    single.into_iter().chain(pieces.into_iter().flatten())
}

/// The WebSocket close code and reason for a close the core asked for.
fn close_frame(reason: &CloseReason) -> CloseFrame {
    let code = match reason {
        CloseReason::Stopped => CloseCode::Away,
        CloseReason::Error(ProtocolError::ServerFull) => CloseCode::Again,
        CloseReason::Error(_) => CloseCode::Policy,
    };
    let text = match reason {
        CloseReason::Stopped => "server stopping".to_string(),
        CloseReason::Error(error) => error.to_string(),
    };
    // A close reason holds at most 123 bytes.
    let mut end = text.len().min(123);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame { code, reason: Utf8Bytes::from(&text[..end]) }
}

/// A node's WebSocket connection to a signalling server: a [`ClientConnection`] for
/// [`AsyncClient`](crate::AsyncClient).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use peer_signal::ed25519_dalek::SigningKey;
/// use peer_signal::{AsyncClient, Codec, NodeInfo, WsClient};
///
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let conn = WsClient::connect("ws://127.0.0.1:8765", Codec::Json).await?;
/// let mut node = AsyncClient::connect(conn, key, info).await?;
/// println!("{} nodes connected", node.list().await?.len());
/// # Ok(()) }
/// ```
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("codec", &self.codec).finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/any/path`). With [`Codec::Bincode`] it asks for
    /// [`BINCODE_SUBPROTOCOL`] and fails if the server does not agree.
    ///
    /// # Errors
    ///
    /// [`TransportError::Connect`] when the server cannot be reached or refuses the upgrade.
    pub async fn connect(url: &str, codec: Codec) -> Result<Self, TransportError> {
        let connect_error = |e: &dyn std::fmt::Display| TransportError::Connect(e.to_string());
        let mut request = url.into_client_request().map_err(|e| connect_error(&e))?;
        if codec.is_binary() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(BINCODE_SUBPROTOCOL));
        }
        let (ws, response) =
            tokio_tungstenite::connect_async(request).await.map_err(|e| connect_error(&e))?;
        let agreed = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        if codec.is_binary() && agreed != Some(BINCODE_SUBPROTOCOL) {
            return Err(TransportError::Connect("the server does not speak bincode".into()));
        }
        Ok(Self { ws, codec })
    }

    /// Closes the connection with a normal close frame.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[async_trait]
impl ClientConnection for WsClient {
    fn codec(&self) -> Codec {
        self.codec
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        let message = to_message(self.codec, frame).ok_or(TransportError::Shutdown)?;
        self.ws.send(message).await.map_err(|_| TransportError::Shutdown)
    }

    async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => return Some(Bytes::from(text)),
                Ok(Message::Binary(data)) => return Some(data),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_counted_per_address_and_per_ipv6_slash_64_and_given_back() {
        let per_ip = Arc::new(PerIp::new(2));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = PerIp::acquire(&per_ip, ip("10.0.0.1")).unwrap();
        let _a2 = PerIp::acquire(&per_ip, ip("::ffff:10.0.0.1")).unwrap();
        assert!(PerIp::acquire(&per_ip, ip("10.0.0.1")).is_none());
        let _b = PerIp::acquire(&per_ip, ip("10.0.0.2")).unwrap();
        let _v6 = PerIp::acquire(&per_ip, ip("2001:db8::1")).unwrap();
        let _v6b = PerIp::acquire(&per_ip, ip("2001:db8::ffff:1")).unwrap();
        assert!(PerIp::acquire(&per_ip, ip("2001:db8:0:0:1::9")).is_none(), "same /64");
        assert!(PerIp::acquire(&per_ip, ip("2001:db8:0:1::1")).is_some(), "another /64");
        drop(a1);
        assert!(PerIp::acquire(&per_ip, ip("10.0.0.1")).is_some());
        let open = per_ip.open.lock().unwrap().len();
        assert_eq!(open, 3, "one entry per address with open connections");

        let none = Arc::new(PerIp::new(0));
        assert!(PerIp::acquire(&none, ip("10.0.0.1")).is_none());
        assert!(none.open.lock().unwrap().is_empty(), "refusals leave no entry");
    }

    fn frames(messages: impl Iterator<Item = Message>) -> Vec<(OpCode, bool, Bytes)> {
        messages
            .map(|message| match message {
                Message::Frame(frame) => {
                    (frame.header().opcode, frame.header().is_final, Bytes::copy_from_slice(frame.payload()))
                }
                other => panic!("expected a raw frame, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn short_frames_go_out_whole() {
        let out: Vec<Message> = to_messages(Codec::Json, Bytes::from_static(b"\"short\""), 16).collect();
        assert_eq!(out, vec![Message::text("\"short\"")]);
        let out: Vec<Message> = to_messages(Codec::Bincode, Bytes::from_static(&[1, 2, 3]), 3).collect();
        assert_eq!(out, vec![Message::binary(vec![1, 2, 3])]);
    }

    #[test]
    fn long_frames_are_fragmented_into_one_message() {
        // "é" is two bytes; with 3-byte fragments it is split across the first two.
        let text = Bytes::from("abé-defgh");
        let pieces = frames(to_messages(Codec::Json, text.clone(), 3));
        assert_eq!(pieces.len(), 4);
        assert_eq!(pieces[0].0, OpCode::Data(OpData::Text));
        assert!(pieces[1..].iter().all(|(op, _, _)| *op == OpCode::Data(OpData::Continue)));
        let finals: Vec<bool> = pieces.iter().map(|(_, fin, _)| *fin).collect();
        assert_eq!(finals, vec![false, false, false, true]);
        let joined: Vec<u8> = pieces.iter().flat_map(|(_, _, p)| p.to_vec()).collect();
        assert_eq!(joined, text.to_vec());

        let binary = frames(to_messages(Codec::Bincode, Bytes::from(vec![7u8; 10]), 4));
        assert_eq!(binary.iter().map(|(_, _, p)| p.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
        assert_eq!(binary[0].0, OpCode::Data(OpData::Binary));
    }

    #[test]
    fn invalid_utf8_is_never_sent_as_text() {
        assert_eq!(to_messages(Codec::Json, Bytes::from_static(&[0xff, 0xfe]), 16).count(), 0);
        assert_eq!(to_messages(Codec::Json, Bytes::from(vec![0xff; 40]), 16).count(), 0);
    }
}
