//! Loopback WebSocket helpers shared by the end-to-end suites: a driven server on an ephemeral
//! port, good nodes, the set-up exchange, and `Fledger`, a raw client that speaks text frames.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use peer_signal::{
    AsyncClient, ClientConnection, ClientEvent, Codec, Driver, DriverEvents, DriverHandle, NodeInfo,
    PeerInfo, PeerMessage, SignalConfig, SignalServer, WSSignalMessageToNode, WsClient, WsConfig,
    WsStatsHandle, WsTransport, BINCODE_SUBPROTOCOL, U256,
};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::nodes::{config, key, next_setup, within};

pub type WsNode = AsyncClient<WsClient>;

pub struct Server {
    pub url: String,
    pub handle: DriverHandle,
    pub events: DriverEvents,
    pub task: JoinHandle<SignalServer>,
    pub ws: WsStatsHandle,
}

/// A server without ticks: nothing times out.
pub async fn start(config: SignalConfig, ws: WsConfig) -> Server {
    start_with_ticks(config, ws, Box::pin(futures::stream::pending())).await
}

/// A server ticked every `period`, so that its handshake timeouts and TTLs fire.
pub async fn start_ticking(config: SignalConfig, ws: WsConfig, period: Duration) -> Server {
    let interval = tokio::time::interval(period);
    let ticks = futures::stream::unfold(interval, |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    });
    start_with_ticks(config, ws, Box::pin(ticks)).await
}

async fn start_with_ticks(
    config: SignalConfig,
    ws: WsConfig,
    ticks: std::pin::Pin<Box<dyn futures::Stream<Item = ()> + Send>>,
) -> Server {
    let transport = WsTransport::bind("127.0.0.1:0", ws).await.expect("bind loopback");
    let url = format!("ws://{}/any/path", transport.local_addr());
    let ws = transport.stats_handle();
    let (driver, handle, events) = Driver::new(SignalServer::new(config).unwrap(), transport, 4096);
    let task = tokio::spawn(driver.run(ticks));
    Server { url, handle, events, task, ws }
}

pub async fn start_default() -> Server {
    let config = config();
    // Every test client comes from 127.0.0.1: one source.
    let ws = WsConfig::for_server(&config).without_source_limits();
    start(config, ws).await
}

pub async fn join(url: &str, i: u32, codec: Codec) -> WsNode {
    let conn = within("connect", WsClient::connect(url, codec)).await.expect("connect");
    let key = key(i);
    let info = NodeInfo::new(format!("ws-{i}"), "test", key.verifying_key().to_bytes());
    let mut node = within("handshake", AsyncClient::connect(conn, key, info)).await.expect("handshake");
    // The list that follows the announce.
    assert!(matches!(within("first list", node.next_event()).await, Ok(ClientEvent::NodeList(_))));
    node
}

/// The set-up exchange between an initiator and a follower: Init, Offer, Answer, and one ICE
/// candidate each way; asserts every step arrives, once, unchanged, at the right node.
pub async fn exchange<A: ClientConnection, B: ClientConnection>(
    init: &mut AsyncClient<A>,
    follow: &mut AsyncClient<B>,
) {
    let tag = format!("{}", init.id());
    init.send_init(follow.id()).await.unwrap();
    let got = next_setup(follow).await;
    assert_eq!((got.id_init, got.id_follow, &got.message), (init.id(), follow.id(), &PeerMessage::Init));
    let steps = [
        (false, PeerMessage::Offer(format!("offer {tag}"))),
        (true, PeerMessage::Answer(format!("answer {tag}"))),
        (true, PeerMessage::IceCandidate(format!("candidate:1 {tag}"))),
        (false, PeerMessage::IceCandidate(format!("candidate:2 {tag}"))),
    ];
    for (from_init, message) in steps {
        let setup = PeerInfo { id_init: init.id(), id_follow: follow.id(), message };
        let received = if from_init {
            init.send_setup(setup.clone()).await.unwrap();
            next_setup(follow).await
        } else {
            follow.send_setup(setup.clone()).await.unwrap();
            next_setup(init).await
        };
        assert_eq!(received, setup);
    }
}

/// A raw WebSocket client that speaks fledger's frames as text, byte for byte.
pub struct Fledger {
    pub ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Fledger {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url)).await.unwrap();
        Self { ws }
    }

    /// Connects with a 4 KiB receive buffer, so that a client that stops reading backs up fast.
    pub async fn connect_small(url: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(host(url).parse().unwrap()).await.unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (ws, _) = within("connect", tokio_tungstenite::client_async(url, stream)).await.unwrap();
        Self { ws }
    }

    /// Connects asking for bincode, and checks that the server agreed.
    pub async fn connect_bincode(url: &str) -> Self {
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert("sec-websocket-protocol", BINCODE_SUBPROTOCOL.parse().unwrap());
        let (ws, response) = within("connect", tokio_tungstenite::connect_async(request)).await.unwrap();
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), BINCODE_SUBPROTOCOL);
        Self { ws }
    }

    /// The challenge the server sends first, on a JSON connection.
    pub async fn challenge(&mut self) -> U256 {
        match Codec::Json.decode(self.recv().await.as_bytes()) {
            Ok(WSSignalMessageToNode::Challenge(3, challenge)) => challenge,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// The text of the next `Error`, skipping list replies; anything else fails the test.
    pub async fn error(&mut self) -> String {
        loop {
            let text = self.recv().await;
            match Codec::Json.decode(text.as_bytes()) {
                Ok(WSSignalMessageToNode::Error(error)) => return error,
                Ok(WSSignalMessageToNode::ListIDsReply(_)) => {}
                _ => panic!("expected an Error, got {text}"),
            }
        }
    }

    pub async fn recv_binary(&mut self) -> Vec<u8> {
        loop {
            match within("binary frame", self.ws.next()).await {
                Some(Ok(Message::Binary(data))) => return data.to_vec(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a binary frame, got {other:?}"),
            }
        }
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.unwrap();
    }

    pub async fn recv(&mut self) -> String {
        loop {
            match within("text frame", self.ws.next()).await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The close frame the server sends, after skipping whatever text comes first.
    pub async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match within("close", self.ws.next()).await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }
}

pub fn vector(name: &str) -> String {
    let line = include_str!("../data/fledger-v3-vectors.jsonl")
        .lines()
        .find(|l| l.contains(&format!("\"name\":\"{name}\"")))
        .expect("vector");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["json"].as_str().unwrap().to_string()
}

/// The path and query of `url`.
pub fn target(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map_or("/".to_string(), |at| rest[at..].to_string())
}

pub fn host(url: &str) -> &str {
    url.trim_start_matches("ws://").split('/').next().unwrap()
}

pub async fn fledger_join(url: &str, seed: u8) -> Fledger {
    fledger_announce(Fledger::connect(url).await, seed).await
}

/// Answers the challenge with the vectors' own announce text, with only the challenge, the
/// signature (and for keys other than 1 the name and key) replaced.
pub async fn fledger_announce(mut node: Fledger, seed: u8) -> Fledger {
    let challenge_text = node.recv().await;
    let hex = challenge_text
        .strip_prefix("{\"Challenge\":[3,\"")
        .and_then(|rest| rest.strip_suffix("\"]}"))
        .unwrap_or_else(|| panic!("not fledger's challenge: {challenge_text}"));
    let challenge: peer_signal::U256 = hex.parse().unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let vector_challenge = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let mut announce = vector("Announce_valid_signature_over_Challenge").replace(vector_challenge, hex);
    let signature = peer_signal::sign_challenge(&signing, &challenge);
    let start = announce.find("\"signature\":\"").unwrap() + 13;
    announce.replace_range(start..start + 128, &hex::encode(signature));
    if seed != 1 {
        let key1 = hex::encode(ed25519_dalek::SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes());
        announce = announce
            .replace(&key1, &hex::encode(signing.verifying_key().to_bytes()))
            .replace("probe-node-1", &format!("probe-node-{seed}"));
    }
    node.send(&announce).await;
    assert_eq!(node.recv().await, vector("SystemConfig_no_realm"));
    assert!(node.recv().await.starts_with("{\"ListIDsReply\":["));
    node
}

/// Two good nodes that keep relaying while the bad input goes on.
pub async fn still_relaying(a: &mut WsNode, b: &mut WsNode) {
    exchange(a, b).await;
}

/// Waits until `done` holds, yielding to the runtime in between (no sleep, no clock): for state
/// that only a tick reveals, such as [`DriverHandle::stats`]. Fails after the safety timeout.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::task::yield_now().await;
        }
    })
    .await;
}

/// How a raw connection ended, as the client's socket saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server ended the TCP stream cleanly (FIN): a read returned 0.
    Eof,
    /// The connection was reset: data were lost.
    Reset,
}

/// A WebSocket client written by hand on a TCP socket, so that a test sees exactly what the
/// server sends and how the connection ends: each frame, the close frames and the end of the
/// stream, which a library client would handle for itself.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

impl RawWs {
    /// Connects and upgrades; with `bincode` asks for the bincode subprotocol.
    pub async fn connect(url: &str, bincode: bool) -> Self {
        let stream = TcpStream::connect(host(url)).await.unwrap();
        Self::upgrade(stream, bincode).await
    }

    /// As `connect`, with a 4 KiB receive buffer, so that a client that stops reading backs up
    /// fast.
    pub async fn connect_small(url: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(host(url).parse().unwrap()).await.unwrap();
        Self::upgrade(stream, false).await
    }

    /// Connects from the loopback address `source` (any of 127.0.0.0/8), sending `headers` (whole
    /// lines, each ending in CRLF) with the upgrade request. `Err` with the status line when the
    /// server does not switch protocols.
    pub async fn try_connect_from(url: &str, source: &str, headers: &str) -> Result<Self, String> {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let stream = socket.connect(host(url).parse().unwrap()).await.unwrap();
        Self::try_upgrade(stream, false, &target(url), headers).await
    }

    async fn upgrade(stream: TcpStream, bincode: bool) -> Self {
        Self::try_upgrade(stream, bincode, "/raw", "").await.unwrap_or_else(|status| panic!("{status}"))
    }

    async fn try_upgrade(
        mut stream: TcpStream,
        bincode: bool,
        target: &str,
        headers: &str,
    ) -> Result<Self, String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let protocol = if bincode {
            format!("Sec-WebSocket-Protocol: {BINCODE_SUBPROTOCOL}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}{headers}\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let head_end = within("upgrade", async {
            loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    return Some(at + 4);
                }
                let mut chunk = [0u8; 1024];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .ok_or_else(|| "closed during the upgrade".to_string())?;
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        if !head.starts_with("HTTP/1.1 101 ") {
            return Err(head.lines().next().unwrap_or_default().to_string());
        }
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"), "{head}");
        assert_eq!(head.contains(BINCODE_SUBPROTOCOL), bincode, "{head}");
        buf.drain(..head_end);
        Ok(Self { stream, buf })
    }

    /// Sends one masked, final frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(&client_frame(opcode, payload)).await.unwrap();
    }

    /// Sends a close frame with `code`.
    pub async fn send_close(&mut self, code: u16) {
        self.send(CLOSE, &code.to_be_bytes()).await;
    }

    /// The next frame's opcode and payload; `Err` with how the stream ended if it ended first.
    pub async fn frame(&mut self) -> Result<(u8, Vec<u8>), StreamEnd> {
        use tokio::io::AsyncReadExt;
        within("frame", async {
            loop {
                if let Some((frame, used)) = parse_server_frame(&self.buf) {
                    self.buf.drain(..used);
                    return Ok(frame);
                }
                let mut chunk = [0u8; 16 * 1024];
                match self.stream.read(&mut chunk).await {
                    Ok(0) => return Err(StreamEnd::Eof),
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    Err(_) => return Err(StreamEnd::Reset),
                }
            }
        })
        .await
    }

    /// Skips data frames (and pings) up to the server's close frame; returns its code.
    pub async fn close_frame(&mut self) -> u16 {
        loop {
            match self.frame().await {
                Ok((CLOSE, payload)) => {
                    assert!(payload.len() >= 2, "a close frame without a code");
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                Ok(_) => {}
                Err(end) => panic!("the stream ended ({end:?}) before a close frame"),
            }
        }
    }

    /// How the stream ends after everything the server still sends, which must be nothing but
    /// pings.
    pub async fn end(&mut self) -> StreamEnd {
        loop {
            match self.frame().await {
                Ok((PING, _)) => {}
                Ok((opcode, payload)) => panic!("a frame after the close: {opcode} {payload:?}"),
                Err(end) => return end,
            }
        }
    }
}

/// A frame as a client writes it: final, masked.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// One unmasked frame from the front of `buf`: its opcode, payload and length in `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    assert_eq!(second & 0x80, 0, "the server masked a frame");
    assert_ne!(first & 0x80, 0, "the server fragmented a message");
    let (len, head) = match second & 0x7f {
        126 => (u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize, 10),
        n => (n as usize, 2),
    };
    let payload = buf.get(head..head + len)?.to_vec();
    Some(((first & 0x0f, payload), head + len))
}

/// `count` raw clients that have read their challenge, every other one speaking bincode.
pub async fn raw_clients(url: &str, count: usize) -> Vec<RawWs> {
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let mut raw = RawWs::connect(url, i % 2 == 1).await;
        raw.frame().await.expect("challenge");
        clients.push(raw);
    }
    clients
}

/// Each client, at once: reads the server's close frame, answers it with the same code, and
/// sees how the stream ends. Returns the code and the end, per client.
pub async fn answer_closes(clients: Vec<RawWs>) -> Vec<(u16, StreamEnd)> {
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut raw| {
            tokio::spawn(async move {
                let code = raw.close_frame().await;
                raw.send_close(code).await;
                (code, raw.end().await)
            })
        })
        .collect();
    let mut ends = Vec::with_capacity(readers.len());
    for reader in readers {
        ends.push(within("client", reader).await.expect("client task"));
    }
    ends
}

/// A file in the system's temporary folder, unique to this process and name, removed when
/// dropped.
pub struct TempFile(pub std::path::PathBuf);

impl TempFile {
    pub fn new(name: &str, contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("peer-signal-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The `ws_server` binary that cargo built next to this test's own (`cargo test` builds the
/// examples before it runs any test).
pub fn ws_server_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> → target/<profile>/examples/ws_server
    let profile = exe.parent().and_then(|deps| deps.parent()).expect("target directory");
    let binary = profile.join("examples").join(format!("ws_server{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} is missing: build the examples (cargo test does)", binary.display());
    binary
}

/// Answers `raw`'s challenge with an announce as node `i` (`nodes::key(i)`), and reads the
/// server's acceptance.
pub async fn raw_announce(raw: &mut RawWs, i: u32) {
    let (_, challenge) = raw.frame().await.expect("challenge");
    let Ok(WSSignalMessageToNode::Challenge(3, challenge)) = Codec::Json.decode(&challenge) else {
        panic!("expected a challenge")
    };
    let key = crate::nodes::key(i);
    let message = peer_signal::WSSignalMessageFromNode::Announce(peer_signal::MessageAnnounce {
        version: peer_signal::SIGNAL_VERSION,
        challenge,
        node_info: NodeInfo::new(format!("raw-{i}"), "test", key.verifying_key().to_bytes()),
        signature: peer_signal::sign_challenge(&key, &challenge),
    });
    raw.send(TEXT, &Codec::Json.encode(&message).unwrap()).await;
    let (_, accepted) = raw.frame().await.expect("system config");
    assert!(accepted.starts_with(b"{\"SystemConfig\""), "{}", String::from_utf8_lossy(&accepted));
}
