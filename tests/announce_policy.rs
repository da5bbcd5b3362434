//! Admission at announce: the application's policy decides, after the signature verified,
//! whether a node joins. Driven by hand with a virtual clock; no sockets.

mod common;
mod nodes;

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

/// A policy with a bug: it panics on the node of key `seed` 2.
fn panicking_policy() -> AnnouncePolicy {
    let bad = id(2);
    AnnouncePolicy::new(move |info, _| {
        assert_ne!(info.id(), bad, "a bug in the application's policy");
        Verdict::Allow
    })
}

#[test]
fn a_policy_that_panics_denies_that_node_and_the_server_goes_on() {
    let mut h = harness(panicking_policy());
    let first = h.join(1);
    let (conn, out) = try_join(&mut h, 2, Codec::Json);
    assert_eq!(
        messages_to(&out, conn, Codec::Json),
        vec![WSSignalMessageToNode::Error("node not allowed".into())]
    );
    assert!(out.contains(&SignalOut::Close {
        conn,
        reason: CloseReason::Error(ProtocolError::Denied("node not allowed".into()))
    }));
    // Everybody else is served as before: the next node joins and sees the first.
    h.join(3);
    let nodes: Vec<NodeID> = h.server.nodes().map(NodeInfo::id).collect();
    assert_eq!(nodes.len(), 2);
    assert!(nodes.contains(&id(1)) && nodes.contains(&id(3)));
    let out = h.send(first.conn, Codec::Json, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(matches!(
        messages_to(&out, first.conn, Codec::Json).as_slice(),
        [WSSignalMessageToNode::ListIDsReply(list)] if list.len() == 2
    ));
    assert_eq!(h.server.stats().errors.get("denied"), Some(&1));
}

#[tokio::test]
async fn a_policy_that_panics_does_not_take_the_driver_down() {
    use peer_signal::{AsyncClient, ClientError};
    let running = nodes::start(nodes::config().with_announce_policy({
        let bad = nodes::id(2);
        AnnouncePolicy::new(move |info, _| {
            assert_ne!(info.id(), bad, "a bug in the application's policy");
            Verdict::Allow
        })
    }));
    let mut first = nodes::join(&running.connector, 1, Codec::Json).await;
    let conn = running.connector.connect(Codec::Json).await.expect("transport is up");
    let key = nodes::key(2);
    let info = NodeInfo::new("node-2", "test", key.verifying_key().to_bytes());
    let refused = nodes::within("refusal", AsyncClient::connect(conn, key, info)).await;
    assert!(
        matches!(refused, Err(ClientError::Refused(ref reason)) if reason == "node not allowed"),
        "{refused:?}"
    );
    // The driver still runs: another node joins, and the first one is still served.
    nodes::join(&running.connector, 3, Codec::Bincode).await;
    let nodes = nodes::within("nodes", running.handle.nodes()).await.expect("the driver runs");
    let mut ids: Vec<NodeID> = nodes.iter().map(|node| node.info.id()).collect();
    ids.sort();
    let mut expected = vec![nodes::id(1), nodes::id(3)];
    expected.sort();
    assert_eq!(ids, expected);
    nodes::within("list", first.list()).await.expect("a list");
    assert!(!running.server.is_finished());
}
