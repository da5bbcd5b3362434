//! Admission at announce: the application's policy decides, after the signature verified,
//! whether a node joins. Driven by hand with a virtual clock; no sockets.

mod common;

use std::sync::{Arc, Mutex};

use common::{announce, key, messages_to, Harness};
use peer_signal::{
    AnnouncePolicy, CloseReason, Codec, NodeID, NodeInfo, ProtocolError, SignalConfig, SignalEvent,
    SignalOut, Verdict, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

fn id(seed: u8) -> NodeID {
    U256(key(seed).verifying_key().to_bytes())
}

fn harness(policy: AnnouncePolicy) -> Harness {
    Harness::with(SignalConfig::default().with_announce_policy(policy))
}

/// Announces with key `seed` on a new connection; returns the outputs.
fn try_join(h: &mut Harness, seed: u8, codec: Codec) -> (peer_signal::ConnId, Vec<SignalOut>) {
    let (conn, challenge) = h.open(codec);
    let out = h.send(conn, codec, &announce(&key(seed), challenge));
    (conn, out)
}

#[test]
fn an_allow_list_lets_in_its_ids_only_and_the_others_learn_why() {
    let mut h = harness(AnnouncePolicy::allow_ids([id(1), id(2)]));
    h.join(1);
    let (conn, out) = try_join(&mut h, 3, Codec::Json);
    assert_eq!(
        messages_to(&out, conn, Codec::Json),
        vec![WSSignalMessageToNode::Error("node not allowed".into())]
    );
    assert!(out.contains(&SignalOut::Close {
        conn,
        reason: CloseReason::Error(ProtocolError::Denied("node not allowed".into()))
    }));
    assert!(!out.iter().any(|o| matches!(o, SignalOut::Event(SignalEvent::NewNode(_)))));
    h.join_with(&key(2), Codec::Bincode);
    // The denied node is nowhere.
    let nodes: Vec<NodeID> = h.server.nodes().map(NodeInfo::id).collect();
    assert!(nodes.contains(&id(1)) && nodes.contains(&id(2)) && !nodes.contains(&id(3)));
    assert_eq!(h.server.stats().errors.get("denied"), Some(&1));
}

#[test]
fn a_deny_list_keeps_out_its_ids_only() {
    let mut h = harness(AnnouncePolicy::deny_ids([id(9)]));
    h.join(1);
    let (conn, out) = try_join(&mut h, 9, Codec::Bincode);
    assert_eq!(
        messages_to(&out, conn, Codec::Bincode),
        vec![WSSignalMessageToNode::Error("node not allowed".into())]
    );
    assert_eq!(h.server.stats().nodes, 1);
}

#[test]
fn a_policy_of_ones_own_sees_the_verified_node_and_its_connection_and_gives_its_reason() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let policy = {
        let seen = Arc::clone(&seen);
        AnnouncePolicy::new(move |info, conn| {
            seen.lock().unwrap().push((info.id(), conn));
            if info.name.starts_with("node-") && conn.get() % 2 == 1 {
                Verdict::Allow
            } else {
                Verdict::Deny(format!("no room for {} on {conn}", info.name))
            }
        })
    };
    let mut h = harness(policy);
    let first = h.join(1); // connection 1: odd, allowed
    let (second, out) = try_join(&mut h, 2, Codec::Json);
    let name = common::node_info(&key(2)).name;
    assert_eq!(
        messages_to(&out, second, Codec::Json),
        vec![WSSignalMessageToNode::Error(format!("no room for {name} on {second}"))]
    );
    assert_eq!(*seen.lock().unwrap(), vec![(id(1), first.conn), (id(2), second)]);
    // A bad signature never reaches the policy.
    let (conn, challenge) = h.open(Codec::Json);
    let WSSignalMessageFromNode::Announce(mut bad) = announce(&key(4), challenge) else { unreachable!() };
    bad.signature[0] ^= 1;
    h.send(conn, Codec::Json, &WSSignalMessageFromNode::Announce(bad));
    assert_eq!(seen.lock().unwrap().len(), 2);
}
