//! DESIGN.md behaviours 7 (idle nodes, handshake timeout), 8 (leave) and 9 (stop), on virtual time.

mod common;

use std::time::Duration;

use common::*;
use peer_signal::{
    CloseReason, Codec, ConnId, ProtocolError, SignalConfig, SignalEvent, SignalIn, SignalOut,
    WSSignalMessageFromNode,
};

const MS: Duration = Duration::from_millis(1);

#[test]
fn a_connection_that_never_announces_is_closed_after_the_handshake_timeout() {
    let config = SignalConfig::default();
    let mut h = Harness::new();
    let node = h.join(1);
    let (conn, _) = h.open(Codec::Json);
    assert!(h.advance(config.handshake_timeout - MS).is_empty());
    let out = h.advance(MS);
    assert_eq!(messages_to(&out, conn, Codec::Json), vec![error("handshake timeout")]);
    assert_eq!(
        out.last(),
        Some(&SignalOut::Close { conn, reason: CloseReason::Error(ProtocolError::HandshakeTimeout) })
    );
    assert_eq!(touched(&out), vec![conn]);
    assert_eq!(h.server.node_conn(&node.id), Some(node.conn));
}

#[test]
fn an_idle_node_is_evicted_after_the_ttl() {
    let ttl = Duration::from_secs(30);
    let mut h = Harness::with(SignalConfig::default().with_ttl(ttl).with_list_push_fanout(0));
    let node = h.join(1);
    assert!(h.advance(ttl - MS).is_empty());
    let out = h.advance(MS);
    assert_eq!(messages_to(&out, node.conn, Codec::Json), vec![error("idle timeout")]);
    assert!(out.contains(&SignalOut::Close {
        conn: node.conn,
        reason: CloseReason::Error(ProtocolError::IdleTimeout)
    }));
    assert_eq!(events(&out), vec![SignalEvent::NodeLeft(node.id)]);
    assert_eq!(h.server.nodes().count(), 0);
    assert_eq!(h.server.stats().errors.get("idle_timeout"), Some(&1));
}

#[test]
fn valid_frames_refresh_the_ttl_and_invalid_ones_do_not() {
    let ttl = Duration::from_secs(30);
    let mut h = Harness::with(SignalConfig::default().with_ttl(ttl).with_list_push_fanout(0));
    let lively = h.join(1);
    let noisy = h.join(2);
    h.advance(ttl / 2);
    h.from(lively, &WSSignalMessageFromNode::ListIDsRequest);
    let out = h.frame(noisy.conn, "not json");
    assert_eq!(closed(&out), vec![]);
    // The noisy node's TTL still runs from its join; the lively one's from its request.
    let out = h.advance(ttl / 2);
    assert_eq!(closed(&out), vec![noisy.conn]);
    assert!(h.advance(ttl / 2 - MS).is_empty());
    assert_eq!(closed(&h.advance(MS)), vec![lively.conn]);
}

#[test]
fn poll_timeout_names_the_next_deadline() {
    let config = SignalConfig::default();
    let mut h = Harness::new();
    assert_eq!(h.server.poll_timeout(), None);
    h.open(Codec::Json);
    assert_eq!(h.server.poll_timeout(), Some(h.now + config.handshake_timeout));
    h.join(1);
    // The join is pushed to others after the push interval, sooner than any timeout.
    assert_eq!(h.server.poll_timeout(), Some(h.now + config.list_push_interval));
}

#[test]
fn time_never_goes_backwards() {
    let mut h = Harness::new();
    let (conn, _) = h.open(Codec::Json);
    let later = h.now + Duration::from_secs(11);
    h.server.handle(later, SignalIn::Tick);
    assert_eq!(closed(&std::iter::from_fn(|| h.server.poll_output()).collect::<Vec<_>>()), vec![conn]);
    // An input stamped in the past is handled at the latest time seen: the new connection's
    // handshake deadline runs from `later`, not from the earlier stamp.
    let (late, _) = {
        h.now -= Duration::from_secs(60);
        h.open(Codec::Json)
    };
    h.server.handle(later + Duration::from_secs(9), SignalIn::Tick);
    assert_eq!(h.server.poll_output(), None);
    h.server.handle(later + Duration::from_secs(10), SignalIn::Tick);
    assert_eq!(closed(&std::iter::from_fn(|| h.server.poll_output()).collect::<Vec<_>>()), vec![late]);
}

#[test]
fn timers_of_closed_connections_are_compacted_away() {
    let mut h = Harness::new();
    for _ in 0..3000 {
        let (conn, _) = h.open(Codec::Json);
        h.input(SignalIn::Closed { conn });
    }
    // Some of the 3000 dead handshake timers are still in the heap (the rest were swept out as
    // they were pushed): they make `poll_timeout` early, and firing does nothing.
    assert!(h.server.poll_timeout().is_some());
    assert!(h.advance(Duration::from_secs(1)).is_empty());
    assert!(h.advance(SignalConfig::default().handshake_timeout).is_empty());
    assert_eq!(h.server.poll_timeout(), None);
    // A live connection's timer still fires.
    let (conn, _) = h.open(Codec::Json);
    let out = h.advance(SignalConfig::default().handshake_timeout);
    assert_eq!(closed(&out), vec![conn]);
}

#[test]
fn stop_closes_everyone_and_then_refuses_everything() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let (pending, _) = h.open(Codec::Json);
    let out = h.input(SignalIn::Stop);
    let mut expected: Vec<SignalOut> = [a.conn, b.conn, pending]
        .into_iter()
        .map(|conn| SignalOut::Close { conn, reason: CloseReason::Stopped })
        .collect();
    expected.push(SignalOut::Event(SignalEvent::Stopped));
    assert_eq!(out, expected);
    assert!(h.server.is_stopped());
    assert_eq!(h.server.poll_timeout(), None);
    assert_eq!(h.server.nodes().count(), 0);
    let late = ConnId::new(99);
    assert_eq!(
        h.input(SignalIn::Opened { conn: late, codec: Codec::Json, addr: None }),
        vec![SignalOut::Close { conn: late, reason: CloseReason::Stopped }]
    );
    assert!(h.frame(a.conn, "\"ListIDsRequest\"").is_empty());
    assert!(h.input(SignalIn::Stop).is_empty());
}

#[test]
fn huge_durations_mean_never_rather_than_overflow() {
    // The longest durations a configuration may hold: a century.
    let forever = Duration::from_secs(100 * 365 * 24 * 3600);
    let mut h = Harness::with(
        SignalConfig::default()
            .with_ttl(forever)
            .with_handshake_timeout(forever)
            .with_list_push_interval(forever),
    );
    let node = h.join(1);
    h.open(Codec::Json);
    assert!(h.advance(Duration::from_secs(10 * 365 * 24 * 3600)).is_empty());
    assert_eq!(h.server.node_conn(&node.id), Some(node.conn));
    assert_eq!(h.server.stats().connections, 2);
}
