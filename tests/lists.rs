//! DESIGN.md behaviours 2 (others learn of a join), 3 (lists) and 8 (leave).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use peer_signal::{
    sign_challenge, Codec, MessageAnnounce, Modules, NodeID, NodeInfo, SignalConfig, SignalIn, SignalOut,
    WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION,
};

fn list_ids(message: &WSSignalMessageToNode) -> Vec<NodeID> {
    match message {
        WSSignalMessageToNode::ListIDsReply(nodes) => nodes.iter().map(NodeInfo::id).collect(),
        other => panic!("not a list: {other:?}"),
    }
}

fn request_list(h: &mut Harness, node: Joined) -> Vec<NodeID> {
    let out = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert_eq!(touched(&out), vec![node.conn]);
    match messages_to(&out, node.conn, node.codec).as_slice() {
        [reply] => list_ids(reply),
        other => panic!("expected one reply, got {other:?}"),
    }
}

#[test]
fn the_list_reply_is_fledgers_exact_text() {
    let mut h = Harness::new();
    for (seed, name) in [(1, "probe-node-1"), (2, "probe-node-2")] {
        let key = key(seed);
        let (conn, challenge) = h.open(Codec::Json);
        let info = NodeInfo {
            name: name.into(),
            client: "libc".into(),
            pubkey: key.verifying_key().to_bytes(),
            modules: Modules::stable(),
        };
        let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
            version: SIGNAL_VERSION,
            challenge,
            node_info: info,
            signature: sign_challenge(&key, &challenge),
        });
        h.send(conn, Codec::Json, &announce);
    }
    let out =
        h.input(SignalIn::Frame { conn: peer_signal::ConnId::new(2), frame: "\"ListIDsRequest\"".into() });
    let expected = include_str!("data/fledger-v3-vectors.jsonl")
        .lines()
        .find(|l| l.contains("\"ListIDsReply_2_nodes\""))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["json"].as_str().unwrap().to_string())
        .unwrap();
    assert_eq!(frames_to(&out, peer_signal::ConnId::new(2)), vec![bytes::Bytes::from(expected)]);
}

#[test]
fn a_list_holds_every_node_up_to_the_limit() {
    let mut h = Harness::with(SignalConfig::default().with_max_list_len(10));
    let nodes: Vec<Joined> = (1..=10).map(|seed| h.join(seed)).collect();
    let all: BTreeSet<NodeID> = nodes.iter().map(|n| n.id).collect();
    let listed: BTreeSet<NodeID> = request_list(&mut h, nodes[3]).into_iter().collect();
    assert_eq!(listed, all);
}

#[test]
fn a_long_list_is_a_fresh_uniform_sample_every_time() {
    let mut h = Harness::with(SignalConfig::default().with_max_list_len(5));
    let nodes: Vec<Joined> = (1..=30).map(|seed| h.join(seed)).collect();
    let all: BTreeSet<NodeID> = nodes.iter().map(|n| n.id).collect();
    let mut seen = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for _ in 0..60 {
        let ids = request_list(&mut h, nodes[0]);
        assert_eq!(ids.len(), 5);
        let distinct: BTreeSet<NodeID> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), 5, "a sample repeats a node: {ids:?}");
        assert!(distinct.is_subset(&all));
        seen.extend(distinct.iter().copied());
        samples.insert(distinct.into_iter().collect::<Vec<_>>());
    }
    // A per-connection seed would give the same sample every time.
    assert!(samples.len() > 50, "only {} distinct samples", samples.len());
    assert_eq!(seen, all, "some nodes are never listed");
}

#[test]
fn a_node_that_leaves_is_gone_from_the_next_list() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let c = h.join(3);
    let out = h.input(SignalIn::Closed { conn: b.conn });
    assert_eq!(events(&out), vec![peer_signal::SignalEvent::NodeLeft(b.id)]);
    assert!(touched(&out).is_empty(), "a leave is not broadcast: {out:?}");
    let listed: BTreeSet<NodeID> = request_list(&mut h, a).into_iter().collect();
    assert_eq!(listed, BTreeSet::from([a.id, c.id]));
    // Closing an unknown or already closed connection changes nothing.
    assert!(h.input(SignalIn::Closed { conn: b.conn }).is_empty());
    assert_eq!(h.server.stats().nodes, 2);
}

/// Joins `n` nodes and lets every pending push go out.
fn settled(config: SignalConfig, n: u8) -> (Harness, Vec<Joined>) {
    let mut h = Harness::with(config);
    let nodes = (1..=n).map(|seed| h.join(seed)).collect();
    h.advance(Duration::from_secs(60));
    (h, nodes)
}

#[test]
fn joins_are_pushed_to_a_few_random_nodes_once_per_interval() {
    let config =
        SignalConfig::default().with_list_push_fanout(4).with_list_push_interval(Duration::from_secs(1));
    let (mut h, nodes) = settled(config, 20);
    let newcomer = h.join_with(&key(100), Codec::Json);
    let second = h.join_with(&key(101), Codec::Bincode);
    // Nothing reaches the others at join time.
    assert!(h.advance(Duration::from_millis(999)).is_empty());
    let out = h.advance(Duration::from_millis(1));
    let recipients = touched(&out);
    assert_eq!(recipients.len(), 4, "{out:?}");
    assert!(!recipients.contains(&newcomer.conn) && !recipients.contains(&second.conn));
    let mut frames = BTreeSet::new();
    for conn in &recipients {
        let node = nodes.iter().find(|n| n.conn == *conn).expect("a settled node");
        let sent = frames_to(&out, *conn);
        assert_eq!(sent.len(), 1);
        frames.insert(sent[0].clone());
        let ids = list_ids(&messages_to(&out, *conn, node.codec)[0]);
        // The newcomers come first, then a random fill.
        let first: BTreeSet<NodeID> = ids.iter().take(2).copied().collect();
        assert_eq!(first, BTreeSet::from([newcomer.id, second.id]));
        assert_eq!(ids.len(), 22);
    }
    // Encoded once: every recipient gets the same buffer.
    assert_eq!(frames.len(), 1);
    // Nothing more until the next join.
    assert!(h.advance(Duration::from_secs(5)).is_empty());
}

#[test]
fn a_join_costs_the_same_frames_whatever_the_number_of_nodes() {
    let config = SignalConfig::default().with_list_push_fanout(8).with_max_list_len(20);
    let mut costs = Vec::new();
    for n in [20, 200] {
        let (mut h, _) = settled(config.clone(), n);
        let before = h.server.stats();
        h.join_with(&key(255), Codec::Json);
        h.advance(Duration::from_secs(2));
        let after = h.server.stats();
        costs.push((after.frames_out - before.frames_out, after.bytes_out - before.bytes_out));
    }
    // Challenge, SystemConfig, the newcomer's list, and one push to each of the fanout nodes.
    assert_eq!(costs[0].0, 3 + 8);
    assert_eq!(costs[0].0, costs[1].0, "{costs:?}");
    let (small, large) = (costs[0].1 as f64, costs[1].1 as f64);
    assert!((large / small) < 1.2, "bytes per join grew with N: {costs:?}");
}

#[test]
fn pushes_skip_busy_nodes() {
    // A fanout larger than the network: every node but the newcomer would get the push.
    let config = SignalConfig::default().with_list_push_fanout(16);
    let (mut h, nodes) = settled(config, 6);
    for node in &nodes[..4] {
        h.input(SignalIn::Busy { conn: node.conn, busy: true });
    }
    h.join(50);
    let out = h.advance(Duration::from_secs(1));
    assert_eq!(touched(&out), vec![nodes[4].conn, nodes[5].conn]);
}

#[test]
fn pushing_can_be_turned_off() {
    let config = SignalConfig::default().with_list_push_fanout(0);
    let (mut h, _) = settled(config, 5);
    let node = h.join(50);
    // No push is scheduled: nothing is due within the push interval.
    assert!(h.server.poll_timeout() > Some(h.now + SignalConfig::default().list_push_interval));
    let out = h.advance(Duration::from_secs(2));
    assert!(out.iter().all(|o| !matches!(o, SignalOut::Send { .. })), "{out:?}");
    assert_eq!(h.server.node_conn(&node.id), Some(node.conn));
}

#[test]
fn repeated_lists_follow_every_join_and_leave() {
    // Full lists are cached between changes; each change must show in the next reply.
    for codec in [Codec::Json, Codec::Bincode] {
        let mut h = Harness::with(SignalConfig::default().with_list_push_fanout(0));
        let a = h.join_with(&key(1), codec);
        assert_eq!(request_list(&mut h, a), vec![a.id]);
        assert_eq!(request_list(&mut h, a), vec![a.id]);
        let b = h.join_with(&key(2), Codec::Json);
        assert_eq!(request_list(&mut h, a), vec![a.id, b.id]);
        h.input(SignalIn::Closed { conn: b.conn });
        assert_eq!(request_list(&mut h, a), vec![a.id]);
        let c = h.join_with(&key(3), Codec::Bincode);
        let frames: BTreeSet<_> =
            (0..3).map(|_| frames_to(&h.from(a, &WSSignalMessageFromNode::ListIDsRequest), a.conn)).collect();
        assert_eq!(frames.len(), 1, "the same state gives the same reply");
        assert_eq!(request_list(&mut h, a), vec![a.id, c.id]);
    }
}
