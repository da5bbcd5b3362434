//! What decoding hostile frames allocates, measured by a counting global allocator: a length that
//! a frame claims must not make the decoder reserve memory for it (see the `Codec` docs).
//!
//! One test function, so that no other test allocates while it measures.

mod common;
mod counting;

use std::sync::atomic::Ordering;

use common::{key, Harness};
use counting::{LIVE, PEAK};
use peer_signal::{
    Codec, NodeInfo, NodeStat, SignalIn, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// The most `f` had allocated at once, beyond what was allocated before it ran.
fn peak_during(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    f();
    PEAK.load(Ordering::SeqCst) - before
}

/// bincode's varint for a u64 that needs eight bytes.
fn varint(n: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend_from_slice(&n.to_le_bytes());
    bytes
}

/// `prefix`, then a length claim, then a few bytes of what should follow.
fn claim(prefix: &[u8], n: u64) -> Vec<u8> {
    let mut frame = prefix.to_vec();
    frame.extend(varint(n));
    frame.extend_from_slice(&[32, 1, 2, 3]);
    frame
}

#[test]
fn a_claimed_length_reserves_at_most_4_kib() {
    const LIMIT: usize = 8 * 1024;
    let claims = [1 << 60, 1 << 32, 1 << 20, 1 << 14, 300];
    let mut hostile: Vec<(String, Vec<u8>)> = Vec::new();
    for n in claims {
        // NodeStats (variant 3) with `n` stats; ListIDsReply (variant 1) with `n` nodes.
        hostile.push((format!("NodeStats of {n}"), claim(&[3], n)));
        hostile.push((format!("ListIDsReply of {n}"), claim(&[1], n)));
        // A PeerSetup (2) whose Offer (1) claims `n` bytes of SDP.
        let mut setup = vec![2, 32];
        setup.extend([0; 32]);
        setup.push(32);
        setup.extend([0; 32]);
        setup.push(1);
        hostile.push((format!("Offer of {n} bytes"), claim(&setup, n)));
        // An Announce (0) whose name claims `n` bytes.
        let mut announce = vec![0, 3, 32];
        announce.extend([0; 32]);
        announce.push(2); // NodeInfoV3
        hostile.push((format!("name of {n} bytes"), claim(&announce, n)));
    }
    for (name, frame) in &hostile {
        let from = peak_during(|| {
            assert!(Codec::Bincode.decode::<WSSignalMessageFromNode>(frame).is_err(), "{name}");
        });
        let to = peak_during(|| {
            assert!(Codec::Bincode.decode::<WSSignalMessageToNode>(frame).is_err(), "{name}");
        });
        println!("{name}: {from} and {to} bytes");
        assert!(from <= LIMIT && to <= LIMIT, "{name}: {from} and {to} bytes");
    }

    // The server decodes into its own types: the same holds there, reply included.
    let mut h = Harness::new();
    let node = h.join_with(&key(1), Codec::Bincode);
    for (name, frame) in &hostile {
        let frame = bytes::Bytes::from(frame.clone());
        let mut replies = Vec::with_capacity(4);
        let server = peak_during(|| {
            h.server.handle(h.now, SignalIn::Frame { conn: node.conn, frame });
            replies.extend(std::iter::from_fn(|| h.server.poll_output()));
        });
        println!("{name} through the server: {server} bytes");
        assert!(server <= LIMIT, "{name}: {server} bytes through the server");
        assert_eq!(replies.len(), 1, "{name}: {replies:?}");
        // Keep the node below the error limit.
        h = Harness::new();
        let _ = h.join_with(&key(1), Codec::Bincode);
    }

    // Honest frames cost at most 4 KiB and eight times their length: their smallest elements
    // (empty strings) take 36 bytes of a frame and under 100 in memory, and a growing vector
    // holds its old and its new buffer for a moment.
    let stat =
        |version: &str| NodeStat { id: U256([7; 32]), version: version.into(), ping_ms: 12, ping_rx: 3 };
    let node = |n: u16, name: &str| NodeInfo::new(name, "", [(n % 256) as u8; 32]);
    let honest = [
        WSSignalMessageFromNode::NodeStats(vec![stat("0.10.0"); 256]),
        WSSignalMessageFromNode::NodeStats(vec![stat(""); 1000]),
    ];
    let lists = [
        WSSignalMessageToNode::ListIDsReply((0..100).map(|n| node(n, "node")).collect()),
        WSSignalMessageToNode::ListIDsReply((0..1000).map(|n| node(n, "")).collect()),
    ];
    let frames = honest
        .iter()
        .map(|m| Codec::Bincode.encode(m).unwrap())
        .chain(lists.iter().map(|m| Codec::Bincode.encode(m).unwrap()));
    for frame in frames {
        let peak = peak_during(|| {
            let from = Codec::Bincode.decode::<WSSignalMessageFromNode>(&frame);
            let to = Codec::Bincode.decode::<WSSignalMessageToNode>(&frame);
            assert!(from.is_ok() || to.is_ok());
        });
        println!("honest frame of {} bytes: {peak} bytes", frame.len());
        assert!(peak <= 4096 + 8 * frame.len(), "a frame of {} bytes took {peak}", frame.len());
    }
}
