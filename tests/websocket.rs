//! End to end over loopback WebSocket: the real transport, driver and clients, on ephemeral ports.
//! Nothing sleeps; every wait has a safety timeout (`within`).

mod nodes;

use std::time::Duration;

use futures::{FutureExt, SinkExt, StreamExt};
use nodes::{config, drain_until_closed, id, key, next_setup, wait_event, within};
use peer_signal::{
    AsyncClient, ClientConnection, ClientEvent, Codec, Driver, DriverEvents, DriverHandle, NodeInfo,
    PeerInfo, PeerMessage, SignalConfig, SignalEvent, SignalServer, WsClient, WsConfig, WsStatsHandle,
    WsTransport, BINCODE_SUBPROTOCOL,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

type WsNode = AsyncClient<WsClient>;

struct Server {
    url: String,
    handle: DriverHandle,
    events: DriverEvents,
    task: JoinHandle<SignalServer>,
    ws: WsStatsHandle,
}

async fn start(config: SignalConfig, ws: WsConfig) -> Server {
    let transport = WsTransport::bind("127.0.0.1:0", ws).await.expect("bind loopback");
    let url = format!("ws://{}/any/path", transport.local_addr());
    let ws = transport.stats_handle();
    let (driver, handle, events) = Driver::new(SignalServer::new(config), transport, 4096);
    let task = tokio::spawn(driver.run(futures::stream::pending()));
    Server { url, handle, events, task, ws }
}

async fn start_default() -> Server {
    let config = config();
    let ws = WsConfig::for_server(&config);
    start(config, ws).await
}

async fn join(url: &str, i: u32, codec: Codec) -> WsNode {
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
async fn exchange<A: ClientConnection, B: ClientConnection>(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_authenticate_list_and_relay_in_pairs() {
    let mut server = start_default().await;
    let mut nodes = Vec::new();
    for i in 0..50 {
        nodes.push(join(&server.url, i, Codec::Json).await);
    }
    let everyone: std::collections::BTreeSet<_> = (0..50).map(id).collect();
    for node in &mut nodes {
        let listed: std::collections::BTreeSet<_> =
            within("list", node.list()).await.unwrap().iter().map(NodeInfo::id).collect();
        assert_eq!(listed, everyone);
    }
    let mut pairs = Vec::new();
    while let (Some(mut follow), Some(mut init)) = (nodes.pop(), nodes.pop()) {
        pairs.push(tokio::spawn(async move {
            exchange(&mut init, &mut follow).await;
            (init, follow)
        }));
    }
    for pair in pairs {
        within("pair", pair).await.expect("pair task");
    }
    server.handle.stop();
    let server_state = within("stop", server.task).await.unwrap();
    assert_eq!(server_state.stats().relays, 25 * 5);
    assert!(wait_event(&mut server.events, |e| *e == SignalEvent::Stopped).await.len() >= 50);
}

#[tokio::test]
async fn json_and_bincode_nodes_relay_to_each_other() {
    let server = start_default().await;
    let mut json = join(&server.url, 1, Codec::Json).await;
    let mut binary = join(&server.url, 2, Codec::Bincode).await;
    let mut binary2 = join(&server.url, 3, Codec::Bincode).await;
    exchange(&mut json, &mut binary).await;
    exchange(&mut binary, &mut json).await;
    exchange(&mut binary, &mut binary2).await;
    server.handle.stop();
}

/// A raw WebSocket client that speaks fledger's frames as text, byte for byte.
struct Fledger {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

impl Fledger {
    async fn connect(url: &str) -> Self {
        let (ws, _) = within("connect", tokio_tungstenite::connect_async(url)).await.unwrap();
        Self { ws }
    }

    /// Connects with a 4 KiB receive buffer, so that a client that stops reading backs up fast.
    async fn connect_small(url: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(host(url).parse().unwrap()).await.unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (ws, _) = within("connect", tokio_tungstenite::client_async(url, stream)).await.unwrap();
        Self { ws }
    }

    async fn recv(&mut self) -> String {
        loop {
            match within("text frame", self.ws.next()).await {
                Some(Ok(Message::Text(text))) => return text.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.unwrap();
    }

    /// The close frame the server sends, after skipping whatever text comes first.
    async fn closed(&mut self) -> Option<CloseCode> {
        loop {
            match within("close", self.ws.next()).await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    }
}

fn vector(name: &str) -> String {
    let line = include_str!("data/fledger-v3-vectors.jsonl")
        .lines()
        .find(|l| l.contains(&format!("\"name\":\"{name}\"")))
        .expect("vector");
    serde_json::from_str::<serde_json::Value>(line).unwrap()["json"].as_str().unwrap().to_string()
}

fn host(url: &str) -> &str {
    url.trim_start_matches("ws://").split('/').next().unwrap()
}

async fn fledger_join(url: &str, seed: u8) -> Fledger {
    fledger_announce(Fledger::connect(url).await, seed).await
}

/// Answers the challenge with the vectors' own announce text, with only the challenge, the
/// signature (and for keys other than 1 the name and key) replaced.
async fn fledger_announce(mut node: Fledger, seed: u8) -> Fledger {
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

#[tokio::test]
async fn a_fledger_node_gets_fledgers_frames_byte_for_byte() {
    let server = start_default().await;
    let mut one = fledger_join(&server.url, 1).await;
    let mut two = fledger_join(&server.url, 2).await;
    one.send("\"ListIDsRequest\"").await;
    assert_eq!(one.recv().await, vector("ListIDsReply_2_nodes"));
    for name in ["PeerSetup_Init", "PeerSetup_Offer", "PeerSetup_Answer", "PeerSetup_IceCandidate"] {
        one.send(&vector(name)).await;
        assert_eq!(two.recv().await, vector(name), "{name} from id_init");
        two.send(&vector(name)).await;
        assert_eq!(one.recv().await, vector(name), "{name} from id_follow");
    }
    one.send(&vector("NodeStats")).await;
    server.handle.stop();
    assert_eq!(one.closed().await, Some(CloseCode::Away));
}

/// Two good nodes that keep relaying while the bad input goes on.
async fn still_relaying(a: &mut WsNode, b: &mut WsNode) {
    exchange(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_wire_gets_its_answer_and_good_nodes_carry_on() {
    let config = SignalConfig { max_frame_size: 1024, max_send_backlog: 4, ..config() };
    let ws = WsConfig { handshake_timeout: Duration::from_millis(200), ..WsConfig::for_server(&config) };
    let server = start(config, ws).await;
    let mut a = join(&server.url, 1, Codec::Json).await;
    let mut b = join(&server.url, 2, Codec::Json).await;

    // Invalid JSON: an error, and the connection stays.
    let mut bad = Fledger::connect(&server.url).await;
    bad.recv().await; // the challenge
    bad.send("{not json").await;
    assert!(bad.recv().await.starts_with("{\"Error\":\"malformed message: "));
    bad.send("\"ListIDsRequest\"").await;
    assert_eq!(bad.recv().await, "{\"Error\":\"not authenticated: announce first\"}");
    still_relaying(&mut a, &mut b).await;

    // Over the core's limit but within the WebSocket layer's: the core answers.
    bad.send(&" ".repeat(1500)).await;
    assert_eq!(bad.recv().await, "{\"Error\":\"frame too large: 1500 bytes, limit is 1024\"}");
    // Over the WebSocket layer's limit: closed as too big.
    bad.send(&" ".repeat(4096)).await;
    assert_eq!(bad.closed().await, Some(CloseCode::Size));
    still_relaying(&mut a, &mut b).await;

    // Binary junk on a JSON connection: an error.
    let mut junk = Fledger::connect(&server.url).await;
    junk.recv().await;
    junk.ws.send(Message::binary(vec![0xff, 0x00, 0x13])).await.unwrap();
    assert!(junk.recv().await.starts_with("{\"Error\":\"malformed message: "));

    // A TCP connection that never completes the handshake is dropped after the timeout.
    let mut silent = TcpStream::connect(host(&server.url)).await.unwrap();
    let mut buf = [0u8; 16];
    let read = within("half-open close", silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    still_relaying(&mut a, &mut b).await;
    let ws = server.ws.get();
    assert_eq!((ws.oversize, ws.failed_handshakes, ws.slow_readers), (1, 1, 0), "{ws:?}");
    server.handle.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_the_others_go_on() {
    let config = SignalConfig { max_send_backlog: 4, max_setup_len: 60_000, ..config() };
    let ws = WsConfig::for_server(&config);
    let mut server = start(config, ws).await;
    let mut sender = join(&server.url, 1, Codec::Json).await;
    let mut b = join(&server.url, 2, Codec::Json).await;
    let mut c = join(&server.url, 3, Codec::Json).await;
    // Joins and never reads again.
    let sluggard = fledger_announce(Fledger::connect_small(&server.url).await, 4).await;
    let sluggard_id =
        peer_signal::U256(ed25519_dalek::SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());

    // Offers of 50 KB until the server gives up on it: the socket buffers and the queue of 4
    // frames hold a few MB at most, so 200 offers (10 MB) are more than enough.
    let offer = PeerInfo {
        id_init: sender.id(),
        id_follow: sluggard_id,
        message: PeerMessage::Offer("x".repeat(50_000)),
    };
    let mut left = false;
    for _ in 0..200 {
        within("send", sender.send_setup(offer.clone())).await.unwrap();
        while let Some(Some(event)) = server.events.next().now_or_never() {
            left |= event == SignalEvent::NodeLeft(sluggard_id);
        }
        if left {
            break;
        }
    }
    if !left {
        wait_event(&mut server.events, |e| *e == SignalEvent::NodeLeft(sluggard_id)).await;
    }
    assert_eq!(server.ws.get().slow_readers, 1);
    // The others relay as before (the sender may still see errors for the offers in flight).
    exchange(&mut b, &mut c).await;
    drop(sluggard);
    server.handle.stop();
    let mut rest = drain_until_closed(&mut b).await;
    rest.retain(|e| !matches!(e, ClientEvent::NodeList(_)));
    assert!(rest.is_empty(), "{rest:?}");
    let _ = drain_until_closed(&mut sender).await;
}

#[tokio::test]
async fn stop_closes_every_client_with_going_away() {
    let server = start_default().await;
    let mut raw = Vec::new();
    for _ in 0..5 {
        let mut node = Fledger::connect(&server.url).await;
        node.recv().await;
        raw.push(node);
    }
    let mut bin = {
        let mut request = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url.as_str(),
        )
        .unwrap();
        request.headers_mut().insert("sec-websocket-protocol", BINCODE_SUBPROTOCOL.parse().unwrap());
        let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers().get("sec-websocket-protocol").unwrap(), BINCODE_SUBPROTOCOL);
        Fledger { ws }
    };
    server.handle.stop();
    for node in &mut raw {
        assert_eq!(node.closed().await, Some(CloseCode::Away));
    }
    assert_eq!(bin.closed().await, Some(CloseCode::Away));
    let stopped = within("server task", server.task).await.unwrap();
    assert!(stopped.is_stopped());
}
