//! DESIGN.md behaviours 1, 2 and 6: the challenge, the announce, and the same id twice.

mod common;

use common::*;
use peer_signal::{
    sign_challenge, CloseReason, Codec, ConnId, FledgerConfig, MessageAnnounce, ProtocolError, SignalConfig,
    SignalEvent, SignalIn, SignalOut, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

#[test]
fn every_connection_gets_its_own_challenge() {
    let mut h = Harness::new();
    let challenges: Vec<U256> = (0..50).map(|_| h.open(Codec::Json).1).collect();
    let mut distinct = challenges.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), challenges.len());
    assert!(challenges.iter().all(|c| c.0 != [0; 32]));
}

#[test]
fn challenges_come_from_the_configured_seed() {
    let challenges = |seed: [u8; 32]| {
        let mut h = Harness::with(SignalConfig::default());
        h.server = peer_signal::SignalServer::new(SignalConfig::default().with_rng_seed(seed)).unwrap();
        (h.open(Codec::Json).1, h.open(Codec::Json).1)
    };
    assert_eq!(challenges([1; 32]), challenges([1; 32]));
    assert_ne!(challenges([1; 32]), challenges([2; 32]));
    // Without a seed, the OS seeds the RNG: two servers disagree.
    let unseeded = || {
        let mut server = peer_signal::SignalServer::new(SignalConfig::default()).unwrap();
        server.handle(
            std::time::Instant::now(),
            SignalIn::Opened { conn: peer_signal::ConnId::new(1), codec: Codec::Json, addr: None },
        );
        server.poll_output()
    };
    assert_ne!(unseeded(), unseeded());
}

#[test]
fn a_good_announce_gets_config_then_list_then_a_new_node_event() {
    let realm = U256([0xab; 32]);
    let mut h = Harness::with(SignalConfig::default().with_system_realm(realm));
    let (conn, challenge) = h.open(Codec::Json);
    let key = key(1);
    let out = h.send(conn, Codec::Json, &announce(&key, challenge));
    let id = U256(key.verifying_key().to_bytes());
    assert_eq!(
        messages_to(&out, conn, Codec::Json),
        vec![
            WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm: Some(realm) }),
            WSSignalMessageToNode::ListIDsReply(vec![node_info(&key)]),
        ]
    );
    let events = events(&out);
    let [SignalEvent::NewNode(node)] = events.as_slice() else { panic!("one NewNode: {out:?}") };
    assert_eq!(
        (node.id, &node.info, node.conn, node.codec, node.addr),
        (id, &node_info(&key), conn, Codec::Json, None)
    );
    assert_eq!(touched(&out), vec![conn]);
    assert_eq!(h.server.node_conn(&id), Some(conn));
    // The system config is fledger's exact text.
    let frames = frames_to(&out, conn);
    let config = std::str::from_utf8(&frames[0]).unwrap();
    assert_eq!(config, format!("{{\"SystemConfig\":{{\"system_realm\":\"{}\"}}}}", "ab".repeat(32)));
}

#[test]
fn a_bincode_node_announces_like_a_json_one() {
    let mut h = Harness::new();
    let node = h.join_with(&key(3), Codec::Bincode);
    let out = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert_eq!(
        messages_to(&out, node.conn, Codec::Bincode),
        vec![WSSignalMessageToNode::ListIDsReply(vec![node_info(&key(3))])]
    );
}

/// Changes an announce made for the given challenge.
type Tamper = dyn FnOnce(&mut MessageAnnounce, U256);

/// Sends a tampered announce on a fresh connection; returns the replies and the connection.
fn announce_with(
    h: &mut Harness,
    tamper: impl FnOnce(&mut MessageAnnounce, U256),
) -> (peer_signal::ConnId, U256, Vec<SignalOut>) {
    let (conn, challenge) = h.open(Codec::Json);
    let WSSignalMessageFromNode::Announce(mut a) = announce(&key(1), challenge) else { unreachable!() };
    tamper(&mut a, challenge);
    let out = h.send(conn, Codec::Json, &WSSignalMessageFromNode::Announce(a));
    (conn, challenge, out)
}

#[test]
fn failed_announces_get_an_error_naming_the_problem_and_the_node_may_retry() {
    let weak_key = {
        // The identity point: a valid encoding, but of small order.
        let mut k = [0; 32];
        k[0] = 1;
        k
    };
    let cases: Vec<(&str, Box<Tamper>)> = vec![
        ("unsupported protocol version 2, expected 3", Box::new(|a, _| a.version = 2)),
        ("unknown challenge", Box::new(|a, _| a.challenge = U256([9; 32]))),
        ("signature does not verify", Box::new(|a, _| a.signature[0] ^= 1)),
        (
            "signature does not verify",
            Box::new(|a, c| {
                a.signature = sign_challenge(&key(2), &c); // signed by another key
            }),
        ),
        ("invalid public key", Box::new(move |a, _| a.node_info.pubkey = weak_key)),
        ("name too long: 257 bytes, limit is 256", Box::new(|a, _| a.node_info.name = "n".repeat(257))),
        ("client too long: 65 bytes, limit is 64", Box::new(|a, _| a.node_info.client = "c".repeat(65))),
    ];
    for (expected, tamper) in cases {
        let mut h = Harness::new();
        let (conn, challenge, out) = announce_with(&mut h, tamper);
        assert_eq!(messages_to(&out, conn, Codec::Json), vec![error(expected)]);
        assert!(events(&out).is_empty() && closed(&out).is_empty(), "{expected}: {out:?}");
        assert_eq!(h.server.nodes().count(), 0);
        // The challenge stays valid: a correct announce on the same connection succeeds.
        let retry = h.send(conn, Codec::Json, &announce(&key(1), challenge));
        assert!(
            matches!(events(&retry).as_slice(), [SignalEvent::NewNode(_)]),
            "{expected}: retry {retry:?}"
        );
    }
}

#[test]
fn the_vector_announce_is_refused_by_a_server_that_sent_another_challenge() {
    // The vector signs the challenge 00..1f; a server that sent another challenge must refuse it.
    let vector = include_str!("data/fledger-v3-vectors.jsonl")
        .lines()
        .find(|l| l.contains("Announce_valid_signature_over_Challenge"))
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(vector).unwrap();
    let frame = json["json"].as_str().unwrap().to_string();
    let mut h = Harness::new();
    let (conn, _) = h.open(Codec::Json);
    let out = h.frame(conn, frame);
    assert_eq!(messages_to(&out, conn, Codec::Json), vec![error("unknown challenge")]);
}

#[test]
fn a_challenge_is_single_use() {
    let mut h = Harness::new();
    let (a, challenge) = h.open(Codec::Json);
    assert!(!events(&h.send(a, Codec::Json, &announce(&key(1), challenge))).is_empty());
    // Announcing again on the same connection, with the same challenge:
    let out = h.send(a, Codec::Json, &announce(&key(1), challenge));
    assert_eq!(messages_to(&out, a, Codec::Json), vec![error("already authenticated")]);
    // Replaying the first connection's announce on another connection:
    let (b, _) = h.open(Codec::Json);
    let out = h.send(b, Codec::Json, &announce(&key(1), challenge));
    assert_eq!(messages_to(&out, b, Codec::Json), vec![error("unknown challenge")]);
    assert_eq!(touched(&out), vec![b]);
}

#[test]
fn repeated_failed_announces_close_the_connection() {
    let max_announce_failures = 3;
    let mut h = Harness::with(SignalConfig::default().with_max_announce_failures(max_announce_failures));
    let other = h.join(2);
    let (conn, challenge) = h.open(Codec::Json);
    let WSSignalMessageFromNode::Announce(mut bad) = announce(&key(1), challenge) else { unreachable!() };
    bad.signature[5] ^= 0x40;
    let bad = WSSignalMessageFromNode::Announce(bad);
    for _ in 1..max_announce_failures {
        let out = h.send(conn, Codec::Json, &bad);
        assert!(closed(&out).is_empty());
    }
    let out = h.send(conn, Codec::Json, &bad);
    assert_eq!(
        messages_to(&out, conn, Codec::Json),
        vec![error("signature does not verify"), error("too many failed announces")]
    );
    assert_eq!(
        out.last(),
        Some(&SignalOut::Close { conn, reason: CloseReason::Error(ProtocolError::TooManyAnnounceFailures) })
    );
    assert_eq!(touched(&out), vec![conn]);
    // Gone: a frame on it now is ignored, and the good node is untouched.
    assert!(h.send(conn, Codec::Json, &announce(&key(1), challenge)).is_empty());
    assert_eq!(h.server.node_conn(&other.id), Some(other.conn));
}

#[test]
fn failed_announces_and_other_errors_have_separate_budgets() {
    let mut h = Harness::with(SignalConfig::default().with_max_errors(3).with_max_announce_failures(3));
    let (conn, challenge) = h.open(Codec::Json);
    let wrong_challenge = announce(&key(1), peer_signal::U256([9; 32]));
    // Two failed announces and two malformed frames: four mistakes, neither budget spent.
    for _ in 0..2 {
        assert!(closed(&h.send(conn, Codec::Json, &wrong_challenge)).is_empty());
        assert!(closed(&h.frame(conn, "{")).is_empty());
    }
    // The third malformed frame spends the error budget.
    let out = h.frame(conn, "{");
    assert_eq!(
        out.last(),
        Some(&SignalOut::Close { conn, reason: CloseReason::Error(ProtocolError::TooManyErrors) })
    );
    // A good announce after failures still works while the budget lasts.
    let (conn, challenge2) = h.open(Codec::Json);
    assert!(closed(&h.send(conn, Codec::Json, &announce(&key(1), challenge))).is_empty());
    assert_eq!(events(&h.send(conn, Codec::Json, &announce(&key(1), challenge2))).len(), 1);
}

#[test]
fn the_same_id_twice_replaces_the_old_connection() {
    let mut h = Harness::new();
    let old = h.join(1);
    let peer = h.join(2);
    let (conn, challenge) = h.open(Codec::Json);
    let out = h.send(conn, Codec::Json, &announce(&key(1), challenge));
    assert_eq!(messages_to(&out, old.conn, Codec::Json), vec![error("New Connection with same ID")]);
    assert!(out
        .contains(&SignalOut::Close { conn: old.conn, reason: CloseReason::Error(ProtocolError::Replaced) }));
    assert!(matches!(events(&out).as_slice(), [SignalEvent::NodeLeft(left), SignalEvent::NewNode(joined)]
        if *left == old.id && joined.id == old.id && joined.conn == conn));
    assert_eq!(h.server.node_conn(&old.id), Some(conn));
    assert_eq!(h.server.nodes().count(), 2);
    // A relay to the id now reaches the new connection only.
    let setup = WSSignalMessageFromNode::PeerSetup(peer_signal::PeerInfo {
        id_init: peer.id,
        id_follow: old.id,
        message: peer_signal::PeerMessage::Init,
    });
    let out = h.from(peer, &setup);
    assert_eq!(touched(&out), vec![conn]);
}

#[test]
fn a_full_pending_table_closes_its_oldest_connection_for_a_newcomer() {
    let mut h =
        Harness::with(SignalConfig::default().with_max_connections(10).with_max_pending_handshakes(2));
    let node = h.join(1);
    let (oldest, _) = h.open(Codec::Json);
    let (second, challenge) = h.open(Codec::Json);
    // Two handshakes pending: the next connection pushes out the oldest, as a handshake timeout.
    let newcomer = ConnId::new(100);
    let out = h.input(SignalIn::Opened { conn: newcomer, codec: Codec::Json, addr: None });
    assert_eq!(messages_to(&out, oldest, Codec::Json), vec![error("handshake timeout")]);
    assert!(out.contains(&SignalOut::Close {
        conn: oldest,
        reason: CloseReason::Error(ProtocolError::HandshakeTimeout)
    }));
    assert!(matches!(
        messages_to(&out, newcomer, Codec::Json).as_slice(),
        [WSSignalMessageToNode::Challenge(3, _)]
    ));
    assert_eq!(touched(&out), vec![oldest, newcomer]);
    let stats = h.server.stats();
    assert_eq!(stats.errors.get("handshake_timeout"), Some(&1));
    assert_eq!((stats.connections, stats.pending_handshakes), (3, 2));
    // The evicted connection is forgotten: its frames are ignored.
    assert!(h.send(oldest, Codec::Json, &announce(&key(2), challenge)).is_empty());
    // The second one is now the oldest, and still announces.
    assert_eq!(events(&h.send(second, Codec::Json, &announce(&key(2), challenge))).len(), 1);
    assert_eq!(h.server.stats().pending_handshakes, 1);
    // A free slot again: nobody is pushed out.
    let out = h.input(SignalIn::Opened { conn: ConnId::new(101), codec: Codec::Json, addr: None });
    assert_eq!(touched(&out), vec![ConnId::new(101)]);
    assert_eq!(h.server.node_conn(&node.id), Some(node.conn));
}

#[test]
fn a_handshake_flood_cannot_lock_an_honest_node_out() {
    let pending = 16;
    let mut h = Harness::with(SignalConfig::default().with_max_pending_handshakes(pending));
    let mut honest = Vec::new();
    let mut opened = 0usize;
    for round in 0..20u8 {
        // The flood keeps the pending table full...
        for _ in 0..100 {
            h.open(Codec::Json);
            opened += 1;
            assert_eq!(h.server.stats().pending_handshakes, pending.min(opened - honest.len()));
        }
        // ...and an honest node answers its challenge while fewer than `pending` others arrive.
        let (conn, challenge) = h.open(Codec::Json);
        for _ in 0..pending - 1 {
            h.open(Codec::Json);
        }
        opened += pending;
        let key = key(round + 1);
        let out = h.send(conn, Codec::Json, &announce(&key, challenge));
        let id = U256(key.verifying_key().to_bytes());
        assert!(
            matches!(events(&out).as_slice(), [SignalEvent::NewNode(node)] if node.id == id),
            "round {round}"
        );
        honest.push(id);
    }
    let stats = h.server.stats();
    assert_eq!(stats.nodes, honest.len());
    assert_eq!(stats.pending_handshakes, pending - 1);
    // Every connection that is gone was pushed out as a handshake timeout; none was refused.
    let gone = (opened - stats.connections) as u64;
    assert_eq!(stats.errors.get("handshake_timeout"), Some(&gone));
    assert!(!stats.errors.contains_key("server_full"));
}

#[test]
fn a_server_full_of_nodes_refuses_newcomers_and_one_with_pending_connections_makes_room() {
    let mut h =
        Harness::with(SignalConfig::default().with_max_connections(3).with_max_pending_handshakes(10));
    h.join(1);
    h.join(2);
    let (pending, _) = h.open(Codec::Json);
    // Full, but one connection has not announced: it makes room.
    let (newcomer, challenge) = h.open(Codec::Json);
    assert_eq!(h.server.stats().errors.get("handshake_timeout"), Some(&1));
    assert_eq!(h.server.stats().connections, 3);
    assert!(h.send(pending, Codec::Json, &WSSignalMessageFromNode::ListIDsRequest).is_empty());
    h.send(newcomer, Codec::Json, &announce(&key(3), challenge));
    // Full of nodes: refused.
    let full = ConnId::new(100);
    let out = h.input(SignalIn::Opened { conn: full, codec: Codec::Json, addr: None });
    assert_eq!(messages_to(&out, full, Codec::Json), vec![error("server full")]);
    assert_eq!(
        out.last(),
        Some(&SignalOut::Close { conn: full, reason: CloseReason::Error(ProtocolError::ServerFull) })
    );
    assert_eq!(touched(&out), vec![full]);
    assert_eq!(h.server.stats().nodes, 3);
}
