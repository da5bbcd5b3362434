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
    let config = SignalConfig::default().with_frame_rate(RateLimit::new(10, 20));
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
    let config = SignalConfig::default().with_frame_rate(RateLimit::new(10, 20));
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
    let config = SignalConfig::default()
        .with_byte_rate(RateLimit::new(1000, 4000))
        .with_max_frame_size(1500)
        .with_max_errors(100);
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
    let config =
        SignalConfig::default().with_byte_rate(RateLimit::new(1_000_000, 100)).with_max_frame_size(100);
    let mut h = Harness::with(config);
    let (conn, _) = h.open(Codec::Json);
    h.now += Duration::from_secs(60);
    assert!(rate_limited(&h.frame(conn, vec![b' '; 101]), conn));
}

#[test]
fn unlimited_rates_never_refuse() {
    let config =
        SignalConfig::default().with_frame_rate(RateLimit::UNLIMITED).with_byte_rate(RateLimit::UNLIMITED);
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

/// Tight byte budgets, and nodes that stay listed however long a test runs.
fn budget(byte_rate: RateLimit, max_frame_size: usize) -> SignalConfig {
    SignalConfig::default()
        .with_byte_rate(byte_rate)
        .with_max_frame_size(max_frame_size)
        .with_ttl(Duration::from_secs(24 * 3600))
}

#[test]
fn list_replies_are_charged_to_the_node_that_asks() {
    let burst = 16 * 1024;
    let config = budget(RateLimit::new(256, burst), 4096).with_max_list_len(20);
    let mut h = Harness::with(config);
    let nodes: Vec<Joined> = (1..=20).map(|seed| h.join(seed)).collect();
    let (greedy, honest) = (nodes[0], nodes[1]);
    // A quiet spell refills every bucket; then the list is the same reply for every request.
    h.now += Duration::from_secs(3600);
    let reply_len = frames_to(&h.frame(honest.conn, LIST), honest.conn)[0].len() as u64;
    assert!(reply_len > 3000, "a list of 20 nodes is {reply_len} bytes");
    // Each request costs its own bytes and its reply's; the bucket may go down to empty, so a
    // request passes while its own bytes still fit.
    let request = LIST.len() as u64;
    let expected = (burst - request) / (request + reply_len) + 1;
    let mut answered = 0;
    loop {
        let out = h.frame(greedy.conn, LIST);
        if rate_limited(&out, greedy.conn) {
            break;
        }
        assert_eq!(frames_to(&out, greedy.conn).len(), 1);
        answered += 1;
        assert!(answered <= expected, "{answered} lists answered");
    }
    assert_eq!(answered, expected);
    assert_eq!(h.server.node_conn(&greedy.id), None);
    // A node that asks once a minute, as fledger nodes do, is never cut off.
    for minute in 0..120 {
        h.now += Duration::from_secs(60);
        let out = h.frame(honest.conn, LIST);
        assert_eq!(frames_to(&out, honest.conn).len(), 1, "minute {minute}");
        assert!(closed(&out).is_empty(), "minute {minute}");
    }
    assert_eq!(h.server.stats().errors.get("rate_limited"), Some(&1));
}

#[test]
fn error_replies_are_charged_to_the_node_that_caused_them() {
    let burst = 1024;
    let mut h = Harness::with(budget(RateLimit::new(burst, burst), 1024));
    let node = h.join(1);
    h.now += Duration::from_secs(10);
    // A set-up for a node that is not there: an error reply, but no strike, so only the byte
    // budget stops it.
    let setup = WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init: node.id,
        id_follow: peer_signal::U256([0x42; 32]),
        message: PeerMessage::Init,
    });
    let frame = Codec::Json.encode(&setup).unwrap();
    let mut replies = Vec::new();
    loop {
        let out = h.frame(node.conn, frame.clone());
        if rate_limited(&out, node.conn) {
            break;
        }
        replies.extend(frames_to(&out, node.conn));
    }
    let (request, reply) = (frame.len() as u64, replies[0].len() as u64);
    assert_eq!(replies.len() as u64, (burst - request) / (request + reply) + 1);
    // Charging the requests alone would have let more through.
    assert!(replies.len() as u64 + 1 < burst / request, "{} replies", replies.len());
}

#[test]
fn frames_a_node_did_not_ask_for_are_not_charged_to_it() {
    let mut h = Harness::with(budget(RateLimit::new(4096, 4096), 4096));
    let a = h.join(1);
    let b = h.join(2);
    let sdp = "a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host\r\n".repeat(36);
    // b receives 20 offers of 2 KiB in 20 s, ten times its own byte burst, paid for by a.
    for _ in 0..20 {
        h.now += Duration::from_secs(1);
        let setup = PeerInfo { id_init: a.id, id_follow: b.id, message: PeerMessage::Offer(sdp.clone()) };
        let out = h.from(a, &WSSignalMessageFromNode::PeerSetup(setup));
        assert_eq!(touched(&out), vec![b.conn]);
    }
    // At the same instant, b's own request passes.
    let out = h.frame(b.conn, LIST);
    assert!(closed(&out).is_empty());
    assert_eq!(frames_to(&out, b.conn).len(), 1);
}
