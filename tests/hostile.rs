//! Hostile clients over real WebSocket, on loopback. For each attack: what the attacker gets (the
//! exact `Error` text, the close code), and that afterwards the server still lets a newcomer in and
//! two good nodes (one JSON, one bincode) still relay both ways with nothing lost or added.
//!
//! Nothing sleeps; waits have a safety timeout (`within`). The servers tick every 20 ms so that
//! their timeouts fire, and the timeouts a test waits for are set short.

mod nodes;
mod ws;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::{FutureExt, SinkExt};
use nodes::{config, drain_until_closed, id, key, wait_event, within};
use peer_signal::{
    sign_challenge, ClientEvent, Codec, MessageAnnounce, NodeInfo, PeerInfo, PeerMessage, RateLimit,
    SignalConfig, SignalEvent, WSSignalMessageFromNode, WSSignalMessageToNode, WsClient, WsConfig, U256,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data as OpData, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;
use ws::*;

/// A server with two good nodes on it: `a` speaks JSON, `b` bincode.
struct Arena {
    server: Server,
    a: WsNode,
    b: WsNode,
    newcomers: u32,
}

async fn arena(config: SignalConfig, ws: WsConfig) -> Arena {
    let server = start_ticking(config, ws, Duration::from_millis(20)).await;
    let a = join(&server.url, 1, Codec::Json).await;
    let b = join(&server.url, 2, Codec::Bincode).await;
    Arena { server, a, b, newcomers: 0 }
}

async fn arena_default() -> Arena {
    let config = config();
    // Attackers and good nodes all come from 127.0.0.1: one source.
    let ws = WsConfig::for_server(&config).without_source_limits();
    arena(config, ws).await
}

impl Arena {
    /// After an attack: a newcomer gets in, and the good nodes relay whole set-up exchanges both
    /// ways and with the newcomer. `exchange` fails on anything missing, changed or extra.
    async fn still_serves(&mut self) {
        self.newcomers += 1;
        let mut newcomer = join(&self.server.url, 1000 + self.newcomers, Codec::Json).await;
        exchange(&mut self.a, &mut self.b).await;
        exchange(&mut self.b, &mut self.a).await;
        exchange(&mut newcomer, &mut self.b).await;
    }

    async fn stranger(&self) -> (Fledger, U256) {
        let mut attacker = Fledger::connect(&self.server.url).await;
        let challenge = attacker.challenge().await;
        (attacker, challenge)
    }

    /// An attacker that has announced with key `seed`.
    async fn insider(&self, seed: u32) -> Fledger {
        let (mut attacker, challenge) = self.stranger().await;
        attacker.send(&announce_text(&key(seed), challenge)).await;
        assert!(attacker.recv().await.starts_with("{\"SystemConfig\""));
        assert!(attacker.recv().await.starts_with("{\"ListIDsReply\""));
        attacker
    }
}

fn json(message: &WSSignalMessageFromNode) -> String {
    String::from_utf8(Codec::Json.encode(message).unwrap().to_vec()).unwrap()
}

fn announce_of(key: &SigningKey, challenge: U256) -> MessageAnnounce {
    MessageAnnounce {
        version: 3,
        challenge,
        node_info: NodeInfo::new("mallory", "test", key.verifying_key().to_bytes()),
        signature: sign_challenge(key, &challenge),
    }
}

fn announce_text(key: &SigningKey, challenge: U256) -> String {
    json(&WSSignalMessageFromNode::Announce(announce_of(key, challenge)))
}

fn setup_text(id_init: U256, id_follow: U256) -> String {
    json(&WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init,
        id_follow,
        message: PeerMessage::Offer("v=0".into()),
    }))
}

#[tokio::test]
async fn malformed_truncated_and_mistyped_json_get_errors_until_the_strike_limit() {
    let mut arena = arena_default().await;
    let (mut attacker, _) = arena.stranger().await;
    for (frame, phrase) in [
        ("{not json", "key must be a string"),
        ("{\"PeerSetup\":{\"id_init\":\"8a", "EOF while parsing"),
        ("{\"PeerSetup\":5}", "invalid type: integer `5`"),
        ("{\"Announce\":{\"version\":\"3\"}}", "invalid type: string \"3\", expected u64"),
    ] {
        attacker.send(frame).await;
        let error = attacker.error().await;
        assert!(error.starts_with("malformed message: ") && error.contains(phrase), "{frame}: {error}");
    }
    // The fifth strike (default `max_errors`) closes.
    attacker.send("[]").await;
    assert!(attacker.error().await.starts_with("malformed message: "));
    assert_eq!(attacker.error().await, "too many errors");
    assert_eq!(attacker.closed().await, Some(CloseCode::Policy));
    arena.still_serves().await;
}

#[tokio::test]
async fn deep_nesting_is_refused_without_recursing() {
    let mut arena = arena_default().await;
    let (mut attacker, challenge) = arena.stranger().await;
    // The message types are not recursive, so nesting fails at the first level that has a type;
    // skipped values are skipped by a loop, not by recursion, however deep.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let v1 = format!(
        "{{\"Announce\":{{\"version\":3,\"challenge\":\"{challenge}\",\"node_info\":{{\"NodeInfoV1\":{}}},\"signature\":\"{}\"}}}}",
        deep(30_000),
        "00".repeat(64)
    );
    for (frame, expected) in [
        (
            format!("{{\"PeerSetup\":{}", "[".repeat(60_000)),
            "invalid type: sequence, expected id of 32 bytes",
        ),
        (format!("{{\"PeerSetup\":{{\"skipped\":{}}}}}", deep(30_000)), "missing field `id_init`"),
        (v1, "unsupported NodeInfoV1, only NodeInfoV3 is accepted"),
    ] {
        attacker.send(&frame).await;
        let error = attacker.error().await;
        assert!(error.starts_with(&format!("malformed message: {expected}")), "{error}");
    }
    arena.still_serves().await;
}

#[tokio::test]
async fn messages_over_the_frame_limit_are_closed_with_1009_however_they_are_fragmented() {
    let config = config().with_max_frame_size(1024);
    let ws = WsConfig::for_server(&config);
    assert_eq!(ws.max_message_size, 1024, "the WebSocket limit is the core's");
    let mut arena = arena(config, ws).await;
    // At the limit: the core gets the frame and answers.
    let (mut attacker, _) = arena.stranger().await;
    attacker.send(&" ".repeat(1024)).await;
    assert!(attacker.error().await.starts_with("malformed message: "));
    // One byte over: closed as too big.
    attacker.send(&" ".repeat(1025)).await;
    assert_eq!(attacker.closed().await, Some(CloseCode::Size));
    eventually("oversize counted", || arena.server.ws.get().oversize == 1).await;

    // Fragments count together: three of 400 bytes are over the limit, each alone is not.
    let (mut attacker, _) = arena.stranger().await;
    for (i, opcode) in [OpData::Text, OpData::Continue, OpData::Continue].into_iter().enumerate() {
        let frame = Frame::message(vec![b' '; 400], OpCode::Data(opcode), i == 2);
        if attacker.ws.send(Message::Frame(frame)).await.is_err() {
            break; // The server closed before the last fragment.
        }
    }
    assert_eq!(attacker.closed().await, Some(CloseCode::Size));
    eventually("both counted", || arena.server.ws.get().oversize == 2).await;
    arena.still_serves().await;
}

#[tokio::test]
async fn binary_junk_gets_malformed_errors_in_both_codecs() {
    let mut arena = arena_default().await;
    let (mut attacker, _) = arena.stranger().await;
    attacker.ws.send(Message::binary(vec![0xff, 0x00, 0x13])).await.unwrap();
    assert!(attacker.error().await.starts_with("malformed message: invalid UTF-8"));

    let mut binary = Fledger::connect_bincode(&arena.server.url).await;
    let challenge: WSSignalMessageToNode = Codec::Bincode.decode(&binary.recv_binary().await).unwrap();
    assert!(matches!(challenge, WSSignalMessageToNode::Challenge(3, _)));
    // Junk, a variant that does not exist, and NodeStats claiming 2^60 entries in 10 bytes.
    let mut bomb = vec![3u8, 0xff];
    bomb.extend_from_slice(&(1u64 << 60).to_le_bytes());
    for junk in [vec![0xff; 7], vec![9, 0, 0], bomb] {
        binary.send_binary(junk.clone()).await;
        let reply: WSSignalMessageToNode = Codec::Bincode.decode(&binary.recv_binary().await).unwrap();
        assert!(
            matches!(&reply, WSSignalMessageToNode::Error(e) if e.starts_with("malformed message: ")),
            "{junk:?}: {reply:?}"
        );
    }
    arena.still_serves().await;
}

#[tokio::test]
async fn requests_before_authentication_reach_nobody() {
    let mut arena = arena_default().await;
    let (mut attacker, _) = arena.stranger().await;
    let (a, b) = (arena.a.id(), arena.b.id());
    for frame in ["\"ListIDsRequest\"".to_string(), setup_text(a, b), "{\"NodeStats\":[]}".to_string()] {
        attacker.send(&frame).await;
        assert_eq!(attacker.error().await, "not authenticated: announce first", "{frame}");
    }
    arena.still_serves().await;
}

#[tokio::test]
async fn forged_peer_setup_pairs_reach_nobody() {
    let mut arena = arena_default().await;
    let mut attacker = arena.insider(50).await;
    let (a, b) = (arena.a.id(), arena.b.id());
    // Someone else's pair, in both orders.
    for frame in [setup_text(a, b), setup_text(b, a)] {
        attacker.send(&frame).await;
        assert_eq!(attacker.error().await, "sender is neither id_init nor id_follow");
    }
    // Its own pair with a node that is not there: an error, but no strike.
    let nobody = U256([0x42; 32]);
    for _ in 0..6 {
        attacker.send(&setup_text(id(50), nobody)).await;
        assert_eq!(attacker.error().await, format!("unknown destination {nobody}"));
    }
    attacker.send("\"ListIDsRequest\"").await;
    assert!(attacker.recv().await.starts_with("{\"ListIDsReply\""));
    arena.still_serves().await;
}

#[tokio::test]
async fn replayed_and_reused_challenges_are_refused() {
    let mut arena = arena_default().await;
    let (mut first, challenge) = arena.stranger().await;
    let signed = announce_text(&key(50), challenge);
    first.send(&signed).await;
    assert!(first.recv().await.starts_with("{\"SystemConfig\""));
    // The same announce again on the same connection.
    first.send(&signed).await;
    assert_eq!(first.error().await, "already authenticated");
    // Replayed verbatim on another connection, while the first is open and after it left.
    let (mut second, _) = arena.stranger().await;
    second.send(&signed).await;
    assert_eq!(second.error().await, "unknown challenge");
    drop(first);
    wait_event(&mut arena.server.events, |e| *e == SignalEvent::NodeLeft(id(50))).await;
    let (mut third, own) = arena.stranger().await;
    third.send(&signed).await;
    assert_eq!(third.error().await, "unknown challenge");
    // Signed over its own challenge but naming the old one.
    let mut mixed = announce_of(&key(50), own);
    mixed.challenge = challenge;
    third.send(&json(&WSSignalMessageFromNode::Announce(mixed))).await;
    assert_eq!(third.error().await, "unknown challenge");
    // The third failed announce closes.
    third.send(&signed).await;
    assert_eq!(third.error().await, "unknown challenge");
    assert_eq!(third.error().await, "too many failed announces");
    assert_eq!(third.closed().await, Some(CloseCode::Policy));
    arena.still_serves().await;
}

#[tokio::test]
async fn wrong_key_and_signature_lengths_and_weak_keys_are_refused() {
    let mut arena = arena_default().await;
    let (mut attacker, challenge) = arena.stranger().await;
    let good = announce_text(&key(50), challenge);
    let pubkey = hex::encode(key(50).verifying_key().to_bytes());
    let signature = hex::encode(sign_challenge(&key(50), &challenge));
    let cases = [
        (
            good.replace(&pubkey, &pubkey[2..]),
            "malformed message: public key must be 32 bytes (64 hex digits), got 62 characters",
        ),
        (
            good.replace(&pubkey, &format!("{pubkey}00")),
            "malformed message: public key must be 32 bytes (64 hex digits), got 66 characters",
        ),
        (
            good.replace(&signature, &signature[2..]),
            "malformed message: signature must be 64 bytes (128 hex digits), got 126 characters",
        ),
    ];
    for (frame, expected) in cases {
        attacker.send(&frame).await;
        let error = attacker.error().await;
        assert!(error.starts_with(expected), "{error}");
    }
    // The identity point: a valid encoding, but a weak key.
    let mut weak = announce_of(&key(50), challenge);
    weak.node_info.pubkey = [0; 32];
    weak.node_info.pubkey[0] = 1;
    attacker.send(&json(&WSSignalMessageFromNode::Announce(weak))).await;
    assert_eq!(attacker.error().await, "invalid public key");
    // The right lengths, a wrong signature.
    let mut forged = announce_of(&key(50), challenge);
    forged.signature[10] ^= 1;
    attacker.send(&json(&WSSignalMessageFromNode::Announce(forged))).await;
    assert_eq!(attacker.error().await, "signature does not verify");
    // Three failed announces (the malformed ones were strikes, not announces): closed.
    let mut old = announce_of(&key(50), challenge);
    old.version = 2;
    attacker.send(&json(&WSSignalMessageFromNode::Announce(old))).await;
    assert_eq!(attacker.error().await, "unsupported protocol version 2, expected 3");
    assert_eq!(attacker.error().await, "too many failed announces");
    assert_eq!(attacker.closed().await, Some(CloseCode::Policy));
    arena.still_serves().await;
}

#[tokio::test]
async fn a_duplicate_id_needs_the_key_and_then_takes_over() {
    let mut arena = arena_default().await;
    let a = arena.a.id();
    // a's public key, signed with another key.
    let (mut attacker, challenge) = arena.stranger().await;
    let mut claim = announce_of(&key(50), challenge);
    claim.node_info.pubkey = *a.as_bytes();
    attacker.send(&json(&WSSignalMessageFromNode::Announce(claim))).await;
    assert_eq!(attacker.error().await, "signature does not verify");
    arena.still_serves().await;

    // The holder of the key reconnects: the new connection takes over, the old one is told why.
    let replacement = join(&arena.server.url, 1, Codec::Bincode).await;
    let mut old = std::mem::replace(&mut arena.a, replacement);
    let rest = drain_until_closed(&mut old).await;
    assert!(rest.contains(&ClientEvent::Error("New Connection with same ID".into())), "{rest:?}");
    arena.still_serves().await;
}

#[tokio::test]
async fn floods_over_the_rate_limits_are_cut_off() {
    let config = config()
        .with_frame_rate(RateLimit::new(20, 40))
        .with_byte_rate(RateLimit::new(1_000, 20_000))
        .with_max_frame_size(16 * 1024);
    let ws = WsConfig::for_server(&config);
    let mut arena = arena(config, ws).await;

    // Frames: 500 list requests in a row. The announce took one frame of the burst of 40; the
    // burst (and whatever refilled meanwhile) is answered, then the rate limit closes.
    let mut flooder = arena.insider(50).await;
    for _ in 0..500 {
        // The server may close while frames are still on their way: sending may fail.
        let _ = flooder.ws.send(Message::text("\"ListIDsRequest\"")).await;
    }
    let mut replies = 0;
    loop {
        let text = flooder.recv().await;
        if text.starts_with("{\"ListIDsReply\"") {
            replies += 1;
            continue;
        }
        assert_eq!(text, "{\"Error\":\"rate limit exceeded\"}");
        break;
    }
    assert!((20..500).contains(&replies), "{replies} replies");
    assert_eq!(flooder.closed().await, Some(CloseCode::Policy));

    // Bytes: valid list requests padded to 8 KB; two fit in the 20 KB burst, the third does not.
    let mut padded = arena.insider(51).await;
    let frame = format!("{}\"ListIDsRequest\"", " ".repeat(8_000));
    for _ in 0..10 {
        let _ = padded.ws.send(Message::text(frame.as_str())).await;
    }
    assert!(padded.recv().await.starts_with("{\"ListIDsReply\""));
    assert!(padded.recv().await.starts_with("{\"ListIDsReply\""));
    assert_eq!(padded.recv().await, "{\"Error\":\"rate limit exceeded\"}");
    assert_eq!(padded.closed().await, Some(CloseCode::Policy));
    eventually("rate limits counted", || arena.server.handle.stats().errors.get("rate_limited") == Some(&2))
        .await;
    arena.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_with_a_full_window_is_released_by_the_write_timeout() {
    let config = config()
        .with_max_setup_len(60_000)
        .with_frame_rate(RateLimit::UNLIMITED)
        .with_byte_rate(RateLimit::UNLIMITED)
        .with_max_send_backlog(10_000);
    // Room for the two good nodes, the sender and the victim, and nobody else.
    let ws = WsConfig::for_server(&config)
        .with_max_connections(4)
        .with_write_timeout(Duration::from_millis(500))
        .with_send_backlog_bytes(1 << 30)
        .with_send_budget_bytes(1 << 30);
    let mut arena = arena(config, ws).await;
    // Joins, then never reads again, on a socket with a 4 KiB receive buffer.
    let mut victim = RawWs::connect_small(&arena.server.url).await;
    let victim_id = U256(SigningKey::from_bytes(&[4; 32]).verifying_key().to_bytes());
    victim_announce(&mut victim, 4).await;
    let mut sender = join(&arena.server.url, 60, Codec::Json).await;
    let tasks = arena.server.ws.get().connection_tasks;
    assert_eq!(tasks, 4);

    // Full: a newcomer's TCP connection is dropped right after `accept`.
    let mut refused = TcpStream::connect(host(&arena.server.url)).await.unwrap();
    let mut byte = [0u8; 1];
    assert!(matches!(within("refusal", refused.read(&mut byte)).await, Ok(0) | Err(_)));
    assert_eq!(arena.server.ws.get().refused, 1);

    // 16 KB candidates until the server lets the victim go. Its socket buffers fill within a few
    // hundred KB; from then on its writes make no progress, and the write timeout ends it.
    let candidate = PeerInfo {
        id_init: sender.id(),
        id_follow: victim_id,
        message: PeerMessage::IceCandidate("c".repeat(16_000)),
    };
    let started = std::time::Instant::now();
    let mut left = false;
    for _ in 0..2_000 {
        within("send", sender.send_setup(candidate.clone())).await.unwrap();
        while let Some(Some(event)) = futures::StreamExt::next(&mut arena.server.events).now_or_never() {
            left |= event == SignalEvent::NodeLeft(victim_id);
        }
        if left {
            break;
        }
        tokio::task::yield_now().await;
    }
    if !left {
        wait_event(&mut arena.server.events, |e| *e == SignalEvent::NodeLeft(victim_id)).await;
    }
    eventually("the victim's task ended", || arena.server.ws.get().connection_tasks == tasks - 1).await;
    eprintln!("stuck reader released after {:?}", started.elapsed());
    assert_eq!(arena.server.ws.get().slow_readers, 1);
    drop(victim);
    // Its slot is free again: the newcomer of `still_serves` gets in.
    arena.still_serves().await;
}

/// Answers the challenge on a raw JSON connection with an announce for key `seed`.
async fn victim_announce(raw: &mut RawWs, seed: u8) {
    let (_, challenge) = raw.frame().await.expect("challenge");
    let Ok(WSSignalMessageToNode::Challenge(3, challenge)) = Codec::Json.decode(&challenge) else {
        panic!("expected a challenge")
    };
    raw.send(TEXT, announce_text(&SigningKey::from_bytes(&[seed; 32]), challenge).as_bytes()).await;
    let (_, accepted) = raw.frame().await.expect("system config");
    assert!(accepted.starts_with(b"{\"SystemConfig\""));
}

#[tokio::test]
async fn half_open_tcp_and_silent_connections_are_dropped() {
    let config = config().with_handshake_timeout(Duration::from_secs(1));
    let ws = WsConfig::for_server(&config).with_handshake_timeout(Duration::from_secs(1));
    let mut arena = arena(config, ws).await;
    let addr = host(&arena.server.url).to_string();
    // TCP only, nothing sent; and half an HTTP upgrade request.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    let mut partial = TcpStream::connect(&addr).await.unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let read = within("half-open close", stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    eventually("failed handshakes counted", || arena.server.ws.get().failed_handshakes == 2).await;
    // A WebSocket that never announces: the core's handshake timeout.
    let (mut mute, _) = arena.stranger().await;
    assert_eq!(mute.error().await, "handshake timeout");
    assert_eq!(mute.closed().await, Some(CloseCode::Policy));
    arena.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_storms_leak_nothing() {
    let config = config().with_max_connections(40).with_max_pending_handshakes(30);
    // 150 connections from 127.0.0.1 in a second: more than one source may open.
    let ws = WsConfig::for_server(&config).without_source_limits();
    let mut arena = arena(config, ws).await;
    let url = arena.server.url.clone();
    let addr = host(&url).to_string();
    // 150 connections, 10 at a time, each gone in one of five ways.
    for wave in 0..15u32 {
        let tasks: Vec<_> = (0..10u32)
            .map(|i| {
                let (url, addr) = (url.clone(), addr.clone());
                let n = wave * 10 + i;
                tokio::spawn(async move {
                    match n % 5 {
                        // TCP, gone before the WebSocket handshake.
                        0 => drop(TcpStream::connect(&addr).await.unwrap()),
                        // Gone right after the challenge, without a close frame.
                        1 => {
                            let mut raw = Fledger::connect(&url).await;
                            raw.challenge().await;
                        }
                        // A polite close after the challenge.
                        2 => {
                            let mut raw = Fledger::connect(&url).await;
                            raw.challenge().await;
                            raw.ws.close(None).await.unwrap();
                        }
                        // A node that joins and leaves at once.
                        3 => drop(join(&url, 200 + n, Codec::Json).await),
                        // A node that joins, lists and closes.
                        _ => {
                            let mut node = join(&url, 200 + n, Codec::Bincode).await;
                            within("list", node.list()).await.unwrap();
                            node.into_inner().close().await;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            within("storm", task).await.unwrap();
        }
    }
    // Every storm connection is forgotten: only the two good nodes remain.
    eventually("storm forgotten", || {
        let stats = arena.server.handle.stats();
        stats.connections == 2 && stats.nodes == 2
    })
    .await;
    assert_eq!(arena.server.ws.get().refused, 0);
    arena.still_serves().await;
}

#[tokio::test]
async fn the_per_ip_cap_refuses_the_connection_over_it() {
    let config = config();
    let ws = WsConfig::for_server(&config).with_max_connections_per_ip(4);
    let mut arena = arena(config, ws).await;
    // a and b, and two more from the same address.
    let extra = join(&arena.server.url, 70, Codec::Json).await;
    let (_raw, _) = arena.stranger().await;
    let refused = within("refused", WsClient::connect(&arena.server.url, Codec::Json)).await;
    assert!(refused.is_err(), "a fifth connection from 127.0.0.1 got through");
    assert_eq!(arena.server.ws.get().refused_per_ip, 1);
    // When one leaves, its place is free again.
    drop(extra);
    wait_event(&mut arena.server.events, |e| *e == SignalEvent::NodeLeft(id(70))).await;
    arena.still_serves().await;
    assert_eq!(arena.server.ws.get().refused_per_ip, 1);
}

#[tokio::test]
async fn a_maximal_frame_holds_a_read_buffer_only_until_it_is_handled() {
    let mut arena = arena_default().await;
    let mut raw = RawWs::connect(&arena.server.url, false).await;
    victim_announce(&mut raw, 5).await;
    let _list = raw.frame().await.expect("the list after the announce");
    eventually("idle connections hold no read buffer", || arena.server.ws.get().read_buffer_bytes == 0).await;

    // A list request padded to the frame limit with JSON whitespace, sent in two halves.
    let limit = config().max_frame_size;
    let request = format!("{:width$}\"ListIDsRequest\"", "", width = limit - 16);
    let frame = client_frame(TEXT, request.as_bytes());
    let (first, second) = frame.split_at(frame.len() / 2);
    raw.stream.write_all(first).await.unwrap();
    // While the frame arrives, the buffer has room for all of it.
    eventually("a buffer for the frame", || arena.server.ws.get().read_buffer_bytes >= limit as u64 / 2)
        .await;
    raw.stream.write_all(second).await.unwrap();
    let (_, reply) = raw.frame().await.expect("the list");
    assert!(reply.starts_with(b"{\"ListIDsReply\":["));
    // Handled: the connection idles with no read buffer, as if it had never sent the frame.
    eventually("the buffer given back", || arena.server.ws.get().read_buffer_bytes == 0).await;
    arena.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_never_reads_its_lists_is_cut_off_at_its_own_cost() {
    let mut arena = arena_default().await;
    // Nodes with long names make each list reply a few KB, for a request of 16 bytes.
    let mut crowd = Vec::new();
    for i in 0..20u32 {
        let (mut raw, challenge) = arena.stranger().await;
        let key = key(300 + i);
        let mut announce = announce_of(&key, challenge);
        announce.node_info.name = "n".repeat(200);
        raw.send(&json(&WSSignalMessageFromNode::Announce(announce))).await;
        assert!(raw.recv().await.starts_with("{\"SystemConfig\""));
        crowd.push(raw);
    }
    let mut greedy = RawWs::connect_small(&arena.server.url).await;
    victim_announce(&mut greedy, 6).await;
    let greedy_id = U256(SigningKey::from_bytes(&[6; 32]).verifying_key().to_bytes());
    let (mut sent, mut left) = (0, false);
    while sent < 10_000 && !left {
        // The server may close the socket before all of them are written.
        if greedy.stream.write_all(&client_frame(TEXT, b"\"ListIDsRequest\"")).await.is_err() {
            break;
        }
        sent += 1;
        while let Some(Some(event)) = futures::StreamExt::next(&mut arena.server.events).now_or_never() {
            left |= event == SignalEvent::NodeLeft(greedy_id);
        }
    }
    if !left {
        wait_event(&mut arena.server.events, |e| *e == SignalEvent::NodeLeft(greedy_id)).await;
    }
    // Cut off by its own byte budget (each reply is charged to it), or as a slow reader if its
    // queue filled first: either way what it could make the server hold was bounded.
    eventually("the cut-off counted", || {
        let rate_limited = arena.server.handle.stats().errors.get("rate_limited").copied().unwrap_or(0);
        rate_limited + arena.server.ws.get().slow_readers == 1
    })
    .await;
    assert!(sent < 10_000, "never cut off");
    eventually("its task ended", || arena.server.ws.get().connection_tasks == 23).await;
    drop(crowd);
    arena.still_serves().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_cannot_get_a_reading_node_closed_they_get_destination_busy() {
    let config = config()
        .with_max_setup_len(60_000)
        .with_frame_rate(RateLimit::UNLIMITED)
        .with_byte_rate(RateLimit::UNLIMITED);
    let ws = WsConfig::for_server(&config);
    let mut arena = arena(config, ws).await;
    // The victim reads, but only after the senders are done: slower than they write.
    let mut victim = RawWs::connect_small(&arena.server.url).await;
    victim_announce(&mut victim, 7).await;
    let victim_id = U256(SigningKey::from_bytes(&[7; 32]).verifying_key().to_bytes());
    let mut senders = Vec::new();
    for i in 0..3 {
        senders.push(join(&arena.server.url, 70 + i, Codec::Json).await);
    }
    // 14 MB in all: more than the socket buffers and the send queue hold together.
    const EACH: usize = 300;
    for sender in &mut senders {
        for n in 0..EACH {
            let candidate = PeerInfo {
                id_init: sender.id(),
                id_follow: victim_id,
                message: PeerMessage::IceCandidate(format!("{n:05}{}", "c".repeat(16_000))),
            };
            within("send", sender.send_setup(candidate)).await.unwrap();
        }
    }
    // Each sender learns of every refused relay; a list round trip shows all answers are in.
    let mut refused = 0;
    for sender in &mut senders {
        within("list", sender.request_list()).await.unwrap();
        loop {
            match within("answers", sender.next_event()).await.unwrap() {
                ClientEvent::Error(error) => {
                    assert_eq!(error, format!("destination busy: {victim_id}"));
                    refused += 1;
                }
                ClientEvent::NodeList(_) => break,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(refused > 0, "the victim never became busy");
    // The victim reads everything that was forwarded, and is still connected.
    let mut delivered = 0;
    while delivered + refused < 3 * EACH {
        let (_, frame) = victim.frame().await.expect("a relayed candidate");
        if frame.starts_with(b"{\"ListIDsReply\"") {
            continue; // The list that followed its announce.
        }
        assert!(frame.starts_with(b"{\"PeerSetup\""), "{}", String::from_utf8_lossy(&frame[..40]));
        delivered += 1;
    }
    victim.send(TEXT, b"\"ListIDsRequest\"").await;
    let (_, list) = victim.frame().await.expect("a list");
    assert!(list.starts_with(b"{\"ListIDsReply\""));
    assert_eq!(arena.server.ws.get().slow_readers, 0);
    eventually("refusals counted", || {
        arena.server.handle.stats().errors.get("destination_busy").copied() == Some(refused as u64)
    })
    .await;
    arena.still_serves().await;
}

#[tokio::test]
async fn a_flood_of_silent_handshakes_cannot_lock_an_honest_node_out() {
    let config = config().with_max_pending_handshakes(20);
    let ws = WsConfig::for_server(&config);
    let mut arena = arena(config, ws).await;
    // Sixty connections take their challenge and say nothing.
    let mut flood = Vec::new();
    for _ in 0..60 {
        let (raw, _) = arena.stranger().await;
        flood.push(raw);
    }
    // The oldest were closed to make room, as if their handshake had timed out.
    for raw in flood.iter_mut().take(40) {
        assert_eq!(raw.error().await, "handshake timeout");
        assert_eq!(raw.closed().await, Some(CloseCode::Policy));
    }
    // The table is full of the newest twenty; an honest node still gets in and relays.
    arena.still_serves().await;
    eventually("the evictions counted", || {
        arena.server.handle.stats().errors.get("handshake_timeout").copied().unwrap_or(0) >= 40
    })
    .await;
}

#[tokio::test]
async fn x_forwarded_for_counts_the_client_only_from_a_trusted_proxy() {
    let config = config();
    // The good nodes and the newcomer of `still_serves` connect from 127.0.0.1: three slots.
    let ws = WsConfig::for_server(&config)
        .with_max_connections_per_ip(3)
        .with_trusted_proxies(vec!["127.0.0.2".parse().unwrap()]);
    let mut arena = arena(config, ws).await;
    let url = arena.server.url.clone();
    let from = |source: &'static str, client: &'static str| {
        let url = url.clone();
        async move { RawWs::try_connect_from(&url, source, &format!("X-Forwarded-For: {client}\r\n")).await }
    };
    let mut held = Vec::new();
    // Through the trusted proxy: each client has its own three slots, whatever the proxy's address.
    for _ in 0..3 {
        held.push(from("127.0.0.2", "203.0.113.7").await.expect("a client behind the proxy"));
    }
    let refused = from("127.0.0.2", "203.0.113.7").await.err().expect("its fourth connection");
    assert_eq!(refused, "HTTP/1.1 429 Too Many Requests");
    held.push(from("127.0.0.2", "203.0.113.8").await.expect("another client behind the proxy"));
    // A client cannot pick its own slot: from an untrusted address the header is ignored.
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        held.push(from("127.0.0.3", client).await.expect("a direct client"));
    }
    let again = from("127.0.0.3", "198.51.100.4").await.err().expect("refused at accept");
    assert_eq!(again, "closed during the upgrade");
    eventually("refusals counted", || arena.server.ws.get().refused_per_ip == 2).await;
    arena.still_serves().await;
}
