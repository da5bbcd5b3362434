//! The per-connection token buckets: frames and bytes per second, driven by virtual time.

mod common;

use std::time::Duration;

use common::*;
use peer_signal::{
    CloseReason, Codec, PeerInfo, PeerMessage, ProtocolError, RateLimit, SignalConfig, SignalOut,
    WSSignalMessageFromNode,
};

const LIST: &str = "\"ListIDsRequest\"";

fn rate_limited(out: &[SignalOut], conn: peer_signal::ConnId) -> bool {
    out.contains(&SignalOut::Close { conn, reason: CloseReason::Error(ProtocolError::RateLimited) })
}

#[test]
fn a_burst_over_the_frame_bucket_gets_an_error_and_a_close() {
    let config = SignalConfig { frame_rate: RateLimit::new(10, 20), ..SignalConfig::default() };
    let mut h = Harness::with(config);
    let bystander = h.join(2);
    let node = h.join(1); // The announce took one frame.
    for i in 0..19 {
        let out = h.frame(node.conn, LIST);
        assert!(closed(&out).is_empty(), "frame {i} of the burst was refused");
    }
    let out = h.frame(node.conn, LIST);
    assert_eq!(messages_to(&out, node.conn, Codec::Json), vec![error("rate limit exceeded")]);
    assert!(rate_limited(&out, node.conn));
    assert_eq!(touched(&out), vec![node.conn]);
    assert_eq!(h.server.node_conn(&node.id), None);
    assert_eq!(h.server.node_conn(&bystander.id), Some(bystander.conn));
    assert_eq!(h.server.stats().errors.get("rate_limited"), Some(&1));
}

#[test]
fn the_bucket_refills_at_the_sustained_rate() {
    let config = SignalConfig { frame_rate: RateLimit::new(10, 20), ..SignalConfig::default() };
    let mut h = Harness::with(config);
    let node = h.join(1);
    for _ in 0..19 {
        h.frame(node.conn, LIST);
    }
    // Empty now. 100 ms buy exactly one frame.
    h.now += Duration::from_millis(100);
    assert!(closed(&h.frame(node.conn, LIST)).is_empty());
    h.now += Duration::from_millis(99);
    assert!(rate_limited(&h.frame(node.conn, LIST), node.conn));

    // At exactly the sustained rate, for a long time, nothing is refused.
    let node = h.join(3);
    for _ in 0..5000 {
        h.now += Duration::from_millis(100);
        assert!(closed(&h.frame(node.conn, LIST)).is_empty());
    }
    // A quiet spell refills only up to the burst.
    h.now += Duration::from_secs(3600);
    for _ in 0..20 {
        assert!(closed(&h.frame(node.conn, LIST)).is_empty());
    }
    assert!(rate_limited(&h.frame(node.conn, LIST), node.conn));
}

#[test]
fn the_byte_bucket_counts_every_frame_even_unauthenticated_and_oversize_ones() {
    let config = SignalConfig {
        byte_rate: RateLimit::new(1000, 4000),
        max_frame_size: 1500,
        max_errors: 100,
        ..SignalConfig::default()
    };
    let mut h = Harness::with(config);
    let (conn, _) = h.open(Codec::Json);
    // 1200 + 1600 bytes fit in the 4000 of the burst, 1300 more do not: the oversize frame, refused
    // as too large, still took its bytes.
    let out = h.frame(conn, vec![b' '; 1200]);
    assert!(closed(&out).is_empty());
    let out = h.frame(conn, vec![b' '; 1600]);
    assert_eq!(
        messages_to(&out, conn, Codec::Json),
        vec![error("frame too large: 1600 bytes, limit is 1500")]
    );
    let out = h.frame(conn, vec![b' '; 1300]);
    assert!(rate_limited(&out, conn), "{out:?}");
}

#[test]
fn a_frame_larger_than_the_byte_burst_never_passes() {
    // The burst may not be below `max_frame_size` (see `config.rs`), so only an oversize frame
    // can be larger than it; it never passes, however long the connection waits.
    let config = SignalConfig {
        byte_rate: RateLimit::new(1_000_000, 100),
        max_frame_size: 100,
        ..SignalConfig::default()
    };
    let mut h = Harness::with(config);
    let (conn, _) = h.open(Codec::Json);
    h.now += Duration::from_secs(60);
    assert!(rate_limited(&h.frame(conn, vec![b' '; 101]), conn));
}

#[test]
fn unlimited_rates_never_refuse() {
    let config = SignalConfig {
        frame_rate: RateLimit::UNLIMITED,
        byte_rate: RateLimit::UNLIMITED,
        ..SignalConfig::default()
    };
    let mut h = Harness::with(config);
    let node = h.join(1);
    for _ in 0..10_000 {
        assert!(closed(&h.frame(node.conn, LIST)).is_empty());
    }
}

#[test]
fn the_defaults_leave_a_busy_fledger_node_alone() {
    let mut h = Harness::new();
    let node = h.join(1);
    let peers: Vec<Joined> = (2..12).map(|seed| h.join(seed)).collect();
    // For an hour: a list request every minute, and each minute a burst of set-ups with the ten
    // other nodes (Init, Offer, Answer and a few ICE candidates each), with 2 KiB SDPs.
    let sdp = "a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host\r\n".repeat(36);
    for _minute in 0..60 {
        h.now += Duration::from_secs(60);
        assert!(closed(&h.from(node, &WSSignalMessageFromNode::ListIDsRequest)).is_empty());
        for peer in &peers {
            for message in [
                PeerMessage::Init,
                PeerMessage::Offer(sdp.clone()),
                PeerMessage::Answer(sdp.clone()),
                PeerMessage::IceCandidate("candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host".into()),
                PeerMessage::IceCandidate("candidate:2 1 tcp 1518280447 192.0.2.1 9 typ host".into()),
            ] {
                let setup = PeerInfo { id_init: node.id, id_follow: peer.id, message };
                let out = h.from(node, &WSSignalMessageFromNode::PeerSetup(setup));
                assert!(closed(&out).is_empty(), "{out:?}");
            }
        }
        // Keep the peers alive.
        for peer in &peers {
            h.from(*peer, &WSSignalMessageFromNode::ListIDsRequest);
        }
    }
    assert_eq!(h.server.stats().errors.get("rate_limited"), None);
}
