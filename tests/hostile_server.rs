//! A server that does not play by the rules, against the node's client: what it can make the
//! node hold, and how long it can make it wait. Scripted servers in tokio's paused (virtual)
//! time, and raw WebSocket servers on 127.0.0.1 for the message size.

mod nodes;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use nodes::{key, within};
use peer_signal::{
    AsyncClient, ClientConfig, ClientConnection, ClientError, ClientEvent, Codec, FledgerConfig, NodeInfo,
    PeerInfo, PeerMessage, Timer, TokioTimer, TransportError, WSSignalMessageFromNode, WSSignalMessageToNode,
    WsClient, U256,
};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// The node's end of a scripted connection: frames from the script, frames to it, on tokio's
/// clock.
struct Scripted {
    from_server: mpsc::UnboundedReceiver<Bytes>,
    to_server: mpsc::UnboundedSender<Bytes>,
}

#[async_trait]
impl ClientConnection for Scripted {
    fn codec(&self) -> Codec {
        Codec::Json
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        self.to_server.unbounded_send(frame).map_err(|_| TransportError::Shutdown)
    }

    async fn recv(&mut self) -> Option<Bytes> {
        self.from_server.next().await
    }

    fn timer(&self) -> Option<Arc<dyn Timer>> {
        Some(Arc::new(TokioTimer))
    }
}

/// The script's end: what the server sends, and what it got.
struct Server {
    to_node: mpsc::UnboundedSender<Bytes>,
    from_node: mpsc::UnboundedReceiver<Bytes>,
}

impl Server {
    fn send(&self, message: &WSSignalMessageToNode) {
        let _ = self.to_node.unbounded_send(Codec::Json.encode(message).unwrap());
    }

    async fn receive(&mut self) -> Option<WSSignalMessageFromNode> {
        let frame = self.from_node.next().await?;
        Some(Codec::Json.decode(&frame).unwrap())
    }

    /// Challenge, announce, acceptance and the list, without checking anything.
    async fn sign_in(&mut self) {
        self.send(&WSSignalMessageToNode::Challenge(3, U256([3; 32])));
        assert!(matches!(self.receive().await, Some(WSSignalMessageFromNode::Announce(_))));
        self.send(&WSSignalMessageToNode::SystemConfig(FledgerConfig::default()));
        self.send(&WSSignalMessageToNode::ListIDsReply(Vec::new()));
    }
}

fn scripted() -> (Scripted, Server) {
    let (to_node, from_server) = mpsc::unbounded();
    let (to_server, from_node) = mpsc::unbounded();
    (Scripted { from_server, to_server }, Server { to_node, from_node })
}

fn info() -> NodeInfo {
    NodeInfo::new("victim", "test", key(1).verifying_key().to_bytes())
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_sends_its_challenge_does_not_hold_the_first_sign_in() {
    // The plain `connect`, on the connection's own clock: the default deadline.
    let (conn, _server) = scripted();
    let start = tokio::time::Instant::now();
    let result = within("sign-in", AsyncClient::connect(conn, key(1), info())).await;
    assert_eq!(result.err(), Some(ClientError::SignInTimeout(Duration::from_secs(10))));
    assert_eq!(start.elapsed(), Duration::from_secs(10));

    // And one of the application's choosing.
    let (conn, _server) = scripted();
    let start = tokio::time::Instant::now();
    let config = ClientConfig::default().with_sign_in_timeout(Duration::from_secs(5));
    let result =
        within("sign-in", AsyncClient::connect_with(conn, key(1), info(), config, Arc::new(TokioTimer)))
            .await;
    assert_eq!(result.err(), Some(ClientError::SignInTimeout(Duration::from_secs(5))));
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_takes_the_announce_and_never_accepts_does_not_hold_it_either() {
    let (conn, mut server) = scripted();
    let start = tokio::time::Instant::now();
    let script = tokio::spawn(async move {
        server.send(&WSSignalMessageToNode::Challenge(3, U256([3; 32])));
        let announce = server.receive().await;
        // Then nothing, with the connection open: no close, no FIN.
        (server, announce)
    });
    let result = within(
        "sign-in",
        AsyncClient::connect_with(conn, key(1), info(), ClientConfig::default(), Arc::new(TokioTimer)),
    )
    .await;
    assert_eq!(result.err(), Some(ClientError::SignInTimeout(Duration::from_secs(10))));
    assert_eq!(start.elapsed(), Duration::from_secs(10), "the default deadline, from the connection's start");
    assert!(matches!(script.await.unwrap().1, Some(WSSignalMessageFromNode::Announce(_))));
}

#[tokio::test(start_paused = true)]
async fn a_server_that_vanishes_without_a_close_is_noticed_within_two_keepalive_intervals() {
    let (conn, mut server) = scripted();
    let keepalive = Duration::from_secs(15);
    let config = ClientConfig::default().with_keepalive(keepalive);
    let (node, ()) = tokio::join!(
        AsyncClient::connect_with(conn, key(1), info(), config, Arc::new(TokioTimer)),
        server.sign_in()
    );
    let mut node = node.unwrap();
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))));
    // The server answers the first keepalive, then is gone: its frames stop, the socket stays.
    let start = tokio::time::Instant::now();
    let script = tokio::spawn(async move {
        assert_eq!(server.receive().await, Some(WSSignalMessageFromNode::ListIDsRequest));
        server.send(&WSSignalMessageToNode::ListIDsReply(Vec::new()));
        let mut unanswered = 0;
        while server.receive().await.is_some() {
            unanswered += 1;
        }
        unanswered
    });
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))), "the answer to the first");
    let result = tokio::time::timeout(Duration::from_secs(600), node.next_event()).await.expect("noticed");
    assert_eq!(result, Err(ClientError::Unresponsive(keepalive * 2)));
    // The answer came at 15 s; the request at 30 s went unanswered for two intervals.
    assert_eq!(start.elapsed(), Duration::from_secs(60));
    // And it stays given up: the next read does not wait on the silent server.
    let again = tokio::time::timeout(Duration::from_secs(1), node.next_event()).await;
    assert_eq!(again, Ok(Err(ClientError::Unresponsive(keepalive * 2))));
    drop(node);
    assert_eq!(script.await.unwrap(), 2, "a request per interval, none after the connection was given up");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_floods_set_up_messages_makes_the_node_hold_at_most_its_event_budget() {
    let (conn, mut server) = scripted();
    let budget = 256 * 1024;
    let config = ClientConfig::default().with_max_event_bytes(budget);
    let (node, ()) = tokio::join!(
        AsyncClient::connect_with(conn, key(1), info(), config, Arc::new(TokioTimer)),
        server.sign_in()
    );
    let mut node = node.unwrap();
    let me = node.id();
    // While the node waits for the answer to its list request, 300 set-up messages of 30 KiB
    // each come first: 9 MB that the application has not asked for.
    let sdp = "x".repeat(30 * 1024);
    let script = tokio::spawn(async move {
        assert_eq!(server.receive().await, Some(WSSignalMessageFromNode::ListIDsRequest));
        for _ in 0..300 {
            let setup =
                PeerInfo { id_init: U256([2; 32]), id_follow: me, message: PeerMessage::Offer(sdp.clone()) };
            server.send(&WSSignalMessageToNode::PeerSetup(setup));
        }
        server.send(&WSSignalMessageToNode::ListIDsReply(Vec::new()));
        server
    });
    assert_eq!(within("list", node.list()).await, Ok(Vec::new()), "the list request is answered");
    assert!(node.queued_event_bytes() <= budget, "{} bytes held", node.queued_event_bytes());
    let mut held = Vec::new();
    while node.queued_event_bytes() > 0 {
        held.push(node.next_event().await.unwrap());
    }
    // The first list (from the sign-in) and as many offers as fit; the rest dropped and counted.
    let offers = held.iter().filter(|event| matches!(event, ClientEvent::PeerSetup(_))).count();
    assert!(offers >= 1 && offers * 30 * 1024 <= budget, "offers held: {offers}");
    assert_eq!(node.dropped_events(), 300 - offers as u64);
    drop(script);
}

#[tokio::test(start_paused = true)]
async fn messages_out_of_place_are_errors_the_node_can_read_past() {
    let (conn, mut server) = scripted();
    let (node, ()) = tokio::join!(
        AsyncClient::connect_with(conn, key(1), info(), ClientConfig::default(), Arc::new(TokioTimer)),
        server.sign_in()
    );
    let mut node = node.unwrap();
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))));
    // A set-up message between two other nodes, and a second challenge.
    let stranger = PeerInfo { id_init: U256([2; 32]), id_follow: U256([3; 32]), message: PeerMessage::Init };
    server.send(&WSSignalMessageToNode::PeerSetup(stranger));
    server.send(&WSSignalMessageToNode::Challenge(3, U256([4; 32])));
    server.send(&WSSignalMessageToNode::Error("fine".into()));
    assert!(matches!(node.next_event().await, Err(ClientError::Unexpected(_))));
    assert_eq!(node.next_event().await, Err(ClientError::UnexpectedChallenge));
    assert_eq!(node.next_event().await, Ok(ClientEvent::Error("fine".into())));
    assert_eq!(node.client().refused_messages(), 2);
    assert!(node.client().is_connected());
}

/// A WebSocket server on 127.0.0.1 that sends `message` first, whatever the client says.
async fn sending_first(message: Message) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        let _ = ws.send(message).await;
        // Held open until the client goes.
        while let Some(Ok(_)) = ws.next().await {}
    });
    url
}

fn error_of(len: usize) -> Message {
    let text = String::from_utf8(
        Codec::Json.encode(&WSSignalMessageToNode::Error("x".repeat(len))).unwrap().to_vec(),
    );
    Message::text(text.unwrap())
}

#[tokio::test]
async fn a_message_over_the_servers_frame_limit_ends_the_connection() {
    // 4 MiB: tungstenite's default would have taken up to 64 MiB.
    let url = sending_first(error_of(4 * 1024 * 1024)).await;
    let conn = within("connect", WsClient::connect(&url, Codec::Json)).await.unwrap();
    let result = within("sign-in", AsyncClient::connect(conn, key(1), info())).await;
    assert_eq!(result.err(), Some(ClientError::Closed));

    // One within the default limit (64 KiB) is read: here, a refusal.
    let url = sending_first(error_of(60 * 1024)).await;
    let conn = within("connect", WsClient::connect(&url, Codec::Json)).await.unwrap();
    let result = within("sign-in", AsyncClient::connect(conn, key(1), info())).await;
    assert!(matches!(result.err(), Some(ClientError::Refused(text)) if text.len() == 60 * 1024));

    // And the limit is the builder's to set.
    let url = sending_first(error_of(8 * 1024)).await;
    let conn = within("connect", WsClient::builder(url).max_message_size(4 * 1024).connect()).await.unwrap();
    let result = within("sign-in", AsyncClient::connect(conn, key(1), info())).await;
    assert_eq!(result.err(), Some(ClientError::Closed));
}

#[tokio::test]
async fn a_websocket_server_that_never_speaks_fails_the_first_sign_in_at_its_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let ws = tokio_tungstenite::accept_async(stream).await.unwrap();
        std::future::pending::<()>().await;
        drop(ws);
    });
    let conn = within("connect", WsClient::connect(&url, Codec::Json)).await.unwrap();
    let config = ClientConfig::default().with_sign_in_timeout(Duration::from_millis(200));
    let start = std::time::Instant::now();
    let timer = conn.timer().expect("a WebSocket connection has tokio's clock");
    let result = within("sign-in", AsyncClient::connect_with(conn, key(1), info(), config, timer)).await;
    assert_eq!(result.err(), Some(ClientError::SignInTimeout(Duration::from_millis(200))));
    assert!(start.elapsed() < Duration::from_secs(5));
}
