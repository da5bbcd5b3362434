//! fledger 0.10's own node code (flmodules `Network`, flarch `WebSocketClient`) against this
//! repository's `ws_server`, over loopback.
//!
//! Waits poll with deadlines; nothing sleeps to synchronise.

mod common;

use std::time::Duration;

use common::node::{lists, lists_id, names, FledgerNode};
use common::server::{WsServer, SYSTEM_REALM};
use common::{run, OwnRuntime};
use flarch::web_rtc::messages::PeerMessage;
use flarch::web_rtc::node_connection::Direction;
use flarch::web_rtc::WebRTCConnIn;
use flmodules::network::broker::NetworkOut;
use flmodules::nodeconfig::NodeInfo;
use tokio::runtime::Handle;
use tokio::time::Instant;

/// For one step of a scenario. flarch's client reads its first frame one second after it
/// connects, so a node needs a little over a second to authenticate.
const STEP: Duration = Duration::from_secs(10);

/// The most one scenario may take.
const LIMIT: Duration = Duration::from_secs(40);

/// How long a node that left must stay off the lists. After a connection error flarch's client
/// reconnects at once and reads the new challenge a second later, so a node that comes back is
/// listed again about a second after it left.
///
/// A node that left also reconnects on its next write, and `Network` writes a list request every
/// 60 s of its timer. Each scenario ends long before that (see [`LIMIT`]).
const STAYS_GONE: Duration = Duration::from_secs(3);

/// Starts three nodes, the third on `third_runtime`, and waits until each has authenticated and
/// lists all three.
async fn three_nodes(server: &WsServer, third_runtime: &Handle) -> [FledgerNode; 3] {
    let url = server.url();
    let mut nodes = [
        FledgerNode::connect(&url, "interop-a").await,
        FledgerNode::connect(&url, "interop-b").await,
        FledgerNode::connect_on(third_runtime, &url, "interop-c").await,
    ];
    let deadline = Instant::now() + STEP;
    for node in &mut nodes {
        let config = node.authenticated(deadline).await;
        assert_eq!(
            serde_json::to_value(&config).unwrap(),
            serde_json::json!({ "system_realm": SYSTEM_REALM }),
            "{}: SystemConfig",
            node.name
        );
    }
    let infos: Vec<NodeInfo> = nodes.iter().map(|node| node.info.clone()).collect();
    let deadline = Instant::now() + STEP;
    for node in &mut nodes {
        let list = node
            .list_until(deadline, "all three nodes are listed as they announced", |list| {
                infos.iter().all(|info| lists(list, info))
            })
            .await;
        assert_eq!(list.len(), 3, "{}: only the three nodes, once each: {:?}", node.name, names(&list));
    }
    nodes
}

#[test]
fn three_fledger_nodes_authenticate_list_each_other_and_relay_a_setup() {
    let server = WsServer::start();
    run(LIMIT, async {
        let [mut a, mut b, _c] = three_nodes(&server, &Handle::current()).await;
        let deadline = Instant::now() + STEP;

        // `Network` asks its engine to connect; fledger's engine would now start an offer.
        a.connect_to(b.id);
        match a.next_engine_request(deadline).await {
            Some(WebRTCConnIn::Connect(id)) => assert_eq!(id, b.id),
            other => panic!("a: expected Connect(b) for the engine, got {other:?}"),
        }

        // A setup exchange in the order WebRTC makes it: a (id_init) sends Init, its offer and its
        // candidates; b answers and sends its own. fledger 0.10's native engine turns Init into an
        // offer locally, but the relay must carry all four kinds.
        let from_a = [
            PeerMessage::Init,
            PeerMessage::Offer(OFFER.to_string()),
            PeerMessage::IceCandidate(CANDIDATE_A.to_string()),
        ];
        let from_b =
            [PeerMessage::Answer(ANSWER.to_string()), PeerMessage::IceCandidate(CANDIDATE_B.to_string())];
        for message in &from_a {
            a.engine_emits_setup(b.id, Direction::Outgoing, message.clone());
        }
        for sent in &from_a {
            let (from, dir, got) = b.next_setup_for_engine(deadline).await;
            assert_eq!((from, dir, &got), (a.id, Direction::Incoming, sent), "b received");
        }
        for message in &from_b {
            b.engine_emits_setup(a.id, Direction::Incoming, message.clone());
        }
        for sent in &from_b {
            let (from, dir, got) = a.next_setup_for_engine(deadline).await;
            assert_eq!((from, dir, &got), (b.id, Direction::Outgoing, sent), "a received");
        }
    });
}

#[test]
fn a_fledger_node_that_closes_its_websocket_leaves_the_lists_for_good() {
    let server = WsServer::start();
    let leaver_runtime = OwnRuntime::new();
    run(LIMIT, async {
        let [mut a, mut b, mut leaver] = three_nodes(&server, leaver_runtime.handle()).await;
        leaver.disconnect().await;
        let deadline = Instant::now() + STEP;
        for node in [&mut a, &mut b] {
            node.list_until(deadline, "the node that left is gone", |list| !lists_id(list, leaver.id)).await;
        }

        // If the server dropped the socket without answering the Close, flarch's client takes it
        // for a network error, reconnects and announces again. Keep asking for a while.
        let until = Instant::now() + STAYS_GONE;
        while Instant::now() < until {
            for node in [&mut a, &mut b] {
                node.request_list();
            }
            for node in [&mut a, &mut b] {
                let deadline = (Instant::now() + Duration::from_millis(500)).min(until);
                while let Some(list) = node.next_list(deadline).await {
                    assert!(
                        !lists_id(&list, leaver.id),
                        "{}: the node that left is listed again: {:?}; since it left, it got {:?}",
                        node.name,
                        names(&list),
                        leaver.pending_out().iter().map(ToString::to_string).collect::<Vec<_>>(),
                    );
                    assert_eq!(list.len(), 2, "{}: {:?}", node.name, names(&list));
                }
            }
        }
        // The server sends SystemConfig only after a successful announce.
        let heard = leaver.pending_out();
        assert!(
            !heard.iter().any(|out| matches!(out, NetworkOut::SystemConfig(_))),
            "the node that left announced again; since it left, it got {:?}",
            heard.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    });
}

/// An SDP offer as webrtc-rs makes it for fledger's data channel.
const OFFER: &str = "v=0\r\no=- 6190745937339563474 460637168 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 3B:5B:41:63:0A:1E:59:22:8E:AC:1B:9B:2C:7E:5A:66:32:4D:9B:93:1C:64:5B:FB:0C:A3:52:9F:E4:2E:61:1C\r\n\
a=extmap-allow-mixed\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
a=ice-ufrag:qWbUOoZHLVPpaNKu\r\na=ice-pwd:HfWxlqBbNUvGKqAbwHBmEqzrgkZoTnHb\r\n";

/// The answer to [`OFFER`].
const ANSWER: &str = "v=0\r\no=- 1820613393616744937 460637169 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
a=fingerprint:sha-256 C7:90:0E:5B:5C:4A:36:E5:73:8D:53:A6:D1:8C:9A:5F:14:60:48:0D:3E:0B:0C:28:4F:D0:6F:0C:77:62:AB:31\r\n\
a=extmap-allow-mixed\r\na=group:BUNDLE 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
c=IN IP4 0.0.0.0\r\na=setup:active\r\na=mid:0\r\na=sendrecv\r\na=sctp-port:5000\r\n\
a=ice-ufrag:dLhXzJsCPeqMYiDa\r\na=ice-pwd:bTfQJnUrZWkyDpqoXgHcsVuLeEiRmAOt\r\n";

/// ICE candidates as flarch's native engine sends them: the bare `candidate` attribute.
const CANDIDATE_A: &str = "candidate:1966762134 1 udp 2130706431 127.0.0.1 50123 typ host";
const CANDIDATE_B: &str = "candidate:3637146427 1 udp 2130706431 127.0.0.1 50456 typ host";
