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
    let ws = WsConfig::for_server(&config);
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
