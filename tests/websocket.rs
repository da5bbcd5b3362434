//! End to end over loopback WebSocket: the real transport, driver and clients, on ephemeral ports.
//! Nothing sleeps; every wait has a safety timeout (`within`).

mod nodes;
mod ws;

use std::time::Duration;

use futures::SinkExt;
use nodes::{config, id, wait_event, within};
use peer_signal::{
    sign_challenge, Codec, MessageAnnounce, NodeInfo, PeerInfo, PeerMessage, SignalEvent,
    WSSignalMessageFromNode, WSSignalMessageToNode, WsConfig,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use ws::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_the_wire_gets_its_answer_and_good_nodes_carry_on() {
    let config = config().with_max_frame_size(1024).with_max_send_backlog(4);
    let ws = WsConfig::for_server(&config).with_handshake_timeout(Duration::from_millis(200));
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

    // Over the frame limit, which the WebSocket layer shares with the core: closed as too big.
    bad.send(&" ".repeat(1025)).await;
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
    // Counted when each connection's task ends, after its closing handshake.
    eventually("counted", || server.ws.get().oversize == 1).await;
    let ws = server.ws.get();
    assert_eq!((ws.oversize, ws.failed_handshakes, ws.slow_readers), (1, 1, 0), "{ws:?}");
    server.handle.stop();
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
    let mut bin = Fledger::connect_bincode(&server.url).await;
    server.handle.stop();
    for node in &mut raw {
        assert_eq!(node.closed().await, Some(CloseCode::Away));
    }
    assert_eq!(bin.closed().await, Some(CloseCode::Away));
    let stopped = within("server task", server.task).await.unwrap();
    assert!(stopped.is_stopped());
}

#[tokio::test]
async fn nodes_come_with_their_address_and_behind_a_trusted_proxy_with_the_client_s() {
    let config = config();
    let ws = WsConfig::for_server(&config).with_trusted_proxies(vec!["127.0.0.2".parse().unwrap()]);
    let mut server = start(config, ws).await;
    let _direct = join(&server.url, 1, Codec::Json).await;
    let mut proxied = within(
        "upgrade",
        RawWs::try_connect_from(&server.url, "127.0.0.2", "X-Forwarded-For: 203.0.113.7\r\n"),
    )
    .await
    .expect("a client behind the proxy");
    let (_, challenge) = within("challenge", proxied.frame()).await.expect("a challenge");
    let Ok(WSSignalMessageToNode::Challenge(_, challenge)) = Codec::Json.decode(&challenge) else {
        panic!("not a challenge")
    };
    let key = nodes::key(2);
    let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: 3,
        challenge,
        node_info: NodeInfo::new("proxied", "test", key.verifying_key().to_bytes()),
        signature: sign_challenge(&key, &challenge),
    });
    proxied.send(0x1, &Codec::Json.encode(&announce).unwrap()).await;

    let seen =
        wait_event(&mut server.events, |e| matches!(e, SignalEvent::NewNode(n) if n.id == id(2))).await;
    let addresses: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            SignalEvent::NewNode(node) => Some((node.id, node.addr)),
            _ => None,
        })
        .collect();
    let loopback = "127.0.0.1".parse().ok();
    assert_eq!(addresses, vec![(id(1), loopback), (id(2), "203.0.113.7".parse().ok())]);
    let mut listed: Vec<_> =
        within("list", server.handle.nodes()).await.unwrap().into_iter().map(|n| (n.id, n.addr)).collect();
    listed.sort_by_key(|(_, addr)| *addr);
    assert_eq!(listed, vec![(id(1), loopback), (id(2), "203.0.113.7".parse().ok())]);
}

/// The client reads its socket 16 KiB at a time: offers of several times that, sent back to back
/// with small messages between them, arrive whole, unchanged and in order, in both codecs.
#[tokio::test]
async fn frames_larger_than_the_client_s_read_buffer_arrive_whole_and_in_order() {
    let config = nodes::config().with_max_setup_len(60 * 1024);
    let server = start(config.clone(), WsConfig::for_server(&config)).await;
    for codec in [Codec::Json, Codec::Bincode] {
        let base = if codec.is_binary() { 20 } else { 10 };
        let mut init = join(&server.url, base, codec).await;
        let mut follow = join(&server.url, base + 1, codec).await;
        // Within the 64 KiB frame limit once ids and framing are added.
        let sizes = [40 * 1024, 1, 60 * 1024, 17 * 1024, 3];
        let sent: Vec<PeerInfo> = sizes
            .iter()
            .enumerate()
            .map(|(i, &len)| {
                let sdp: String = (0..len).map(|j| char::from(b'a' + ((i + j) % 26) as u8)).collect();
                PeerInfo { id_init: init.id(), id_follow: follow.id(), message: PeerMessage::Offer(sdp) }
            })
            .collect();
        for setup in &sent {
            init.send_setup(setup.clone()).await.unwrap();
        }
        for (i, setup) in sent.iter().enumerate() {
            let got = nodes::next_setup(&mut follow).await;
            let len = |p: &PeerInfo| p.message.text().map_or(0, str::len);
            assert!(got == *setup, "{codec:?} message {i}: {} bytes arrived for {}", len(&got), len(setup));
        }
    }
    server.handle.stop();
}
