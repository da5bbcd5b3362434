//! The server as a whole cannot be exhausted from a few sources: a full server makes room for
//! newcomers at the expense of the source that holds most, and a node that does not read its
//! replies is not sent more of them. State machine only, virtual time.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use peer_signal::{
    CloseReason, Codec, ProtocolError, SignalConfig, SignalIn, SignalOut, WSSignalMessageFromNode,
    WSSignalMessageToNode, WhenFull,
};

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

/// The connections `out` closes with `server full`.
fn made_room(out: &[SignalOut]) -> Vec<peer_signal::ConnId> {
    out.iter()
        .filter_map(|o| match o {
            SignalOut::Close { conn, reason: CloseReason::Error(ProtocolError::ServerFull) } => Some(*conn),
            _ => None,
        })
        .collect()
}

/// A server of `max` connections, filled with announced nodes from one address, a second apart;
/// every one but the `idle`-th then sends a list request, so that one is the idlest.
fn sybil_fill(max: usize, idle: usize) -> (Harness, Vec<Joined>) {
    let mut h = Harness::with(SignalConfig::default().with_max_connections(max));
    let mut sybils = Vec::new();
    for i in 0..max {
        sybils.push(h.join_from(&key(100 + i as u8), Codec::Json, ip("192.0.2.66")));
        h.advance(Duration::from_secs(1));
    }
    for (i, node) in sybils.clone().into_iter().enumerate() {
        if i != idle {
            h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
        }
    }
    (h, sybils)
}

#[test]
fn a_server_full_of_one_sources_nodes_makes_room_for_a_newcomer_from_another() {
    let (mut h, sybils) = sybil_fill(8, 5);
    let conn = peer_signal::ConnId::new(1000);
    let out = h.input(SignalIn::Opened { conn, codec: Codec::Json, addr: ip("198.51.100.7") });
    // The sybil that was silent longest is closed, and the newcomer gets its challenge.
    assert_eq!(made_room(&out), vec![sybils[5].conn]);
    assert!(matches!(
        messages_to(&out, conn, Codec::Json).as_slice(),
        [WSSignalMessageToNode::Challenge(..)]
    ));
    assert_eq!(h.server.stats().errors.get("server_full"), Some(&1));
    assert_eq!(h.server.stats().connections, 8);
    assert!(h.server.node_conn(&sybils[5].id).is_none());
}

#[test]
fn a_newcomer_from_the_source_that_holds_most_is_refused() {
    let (mut h, _) = sybil_fill(8, 0);
    let conn = peer_signal::ConnId::new(1000);
    let out = h.input(SignalIn::Opened { conn, codec: Codec::Json, addr: ip("192.0.2.66") });
    assert_eq!(messages_to(&out, conn, Codec::Json), vec![error("server full")]);
    assert_eq!(touched(&out), vec![conn]);
    assert_eq!(h.server.stats().nodes, 8);
}

#[test]
fn with_refuse_a_full_server_keeps_whoever_filled_it() {
    let mut h =
        Harness::with(SignalConfig::default().with_max_connections(4).with_when_full(WhenFull::Refuse));
    for i in 0..4 {
        h.join_from(&key(100 + i), Codec::Json, ip("192.0.2.66"));
    }
    let conn = peer_signal::ConnId::new(1000);
    let out = h.input(SignalIn::Opened { conn, codec: Codec::Json, addr: ip("198.51.100.7") });
    assert_eq!(touched(&out), vec![conn]);
    assert_eq!(messages_to(&out, conn, Codec::Json), vec![error("server full")]);
}

#[test]
fn a_full_server_converges_to_equal_shares_and_never_closes_a_node_alone_on_its_address() {
    let max = 12;
    let mut h = Harness::with(SignalConfig::default().with_max_connections(max));
    // An attacker fills the server from two addresses.
    let mut attackers = Vec::new();
    for i in 0..max {
        let from = if i % 2 == 0 { "192.0.2.1" } else { "192.0.2.2" };
        attackers.push(h.join_from(&key(100 + i as u8), Codec::Json, ip(from)));
    }
    // Honest nodes, each alone on its address, all get in.
    let mut honest = Vec::new();
    for i in 0..6u8 {
        honest.push(h.join_from(&key(10 + i), Codec::Json, ip(&format!("198.51.100.{i}"))));
        h.advance(Duration::from_millis(10));
    }
    // The attacker keeps coming back from its two addresses and from fresh ones.
    for round in 0..40u8 {
        let from = match round % 4 {
            0 => "192.0.2.1".to_string(),
            1 => "192.0.2.2".to_string(),
            _ => format!("203.0.113.{}", round % 3),
        };
        let conn = peer_signal::ConnId::new(2000 + u64::from(round));
        h.input(SignalIn::Opened { conn, codec: Codec::Json, addr: ip(&from) });
        h.advance(Duration::from_millis(10));
    }
    for node in &honest {
        assert_eq!(h.server.node_conn(&node.id), Some(node.conn), "an honest node was closed to make room");
    }
    assert_eq!(h.server.stats().connections, max);
}

#[test]
fn ipv6_nodes_of_one_prefix_count_as_one_source() {
    let mut h = Harness::with(SignalConfig::default().with_max_connections(4));
    // Four addresses of one /56 (distinct /64s): one source holding four.
    for i in 0..4u8 {
        h.join_from(&key(100 + i), Codec::Json, ip(&format!("2001:db8:0:{i:x}::1")));
    }
    // Another address of the same /56 is refused; one of another /56 gets in.
    let same = peer_signal::ConnId::new(1000);
    let out = h.input(SignalIn::Opened { conn: same, codec: Codec::Json, addr: ip("2001:db8:0:ff::9") });
    assert_eq!(touched(&out), vec![same]);
    let other = peer_signal::ConnId::new(1001);
    let out = h.input(SignalIn::Opened { conn: other, codec: Codec::Json, addr: ip("2001:db8:0:100::1") });
    assert_eq!(made_room(&out).len(), 1);

    // With /64 sources the same four are four sources, and nobody makes room.
    let mut h = Harness::with(SignalConfig::default().with_max_connections(4).with_ipv6_source_prefix(64));
    for i in 0..4u8 {
        h.join_from(&key(100 + i), Codec::Json, ip(&format!("2001:db8:0:{i:x}::1")));
    }
    let out = h.input(SignalIn::Opened { conn: other, codec: Codec::Json, addr: ip("2001:db8:0:100::1") });
    // Refused itself, and nobody else closed.
    assert_eq!(touched(&out), vec![other]);
    assert_eq!(made_room(&out), vec![other]);
}

#[test]
fn a_prefix_longer_than_an_address_is_refused_with_a_sentence() {
    let error = SignalConfig::default().with_ipv6_source_prefix(129).validate().unwrap_err();
    assert_eq!(error.to_string(), "ipv6_source_prefix (129) must be at most 128");
}

#[test]
fn a_node_whose_queue_is_busy_gets_no_list_until_it_drains() {
    let mut h = Harness::new();
    let node = h.join(1);
    h.join(2);
    h.input(SignalIn::Busy { conn: node.conn, busy: true });
    let out = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(frames_to(&out, node.conn).is_empty(), "a list was queued behind a busy queue: {out:?}");
    assert_eq!(h.server.stats().unanswered_busy, 1);
    // Not a strike: the node stays, and once drained it is answered again.
    h.input(SignalIn::Busy { conn: node.conn, busy: false });
    let out = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(
        matches!(messages_to(&out, node.conn, Codec::Json).as_slice(), [WSSignalMessageToNode::ListIDsReply(list)] if list.len() == 2)
    );
}
