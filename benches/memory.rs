//! Memory the core holds per connection, counted by a global allocator: per connection that
//! has not announced yet, and per announced node. No I/O; the transport's share is measured by
//! `tools/src/bin/loadgen.rs idle` against a running server.
//!
//! `cargo bench --bench memory` prints the figures; `cargo test --benches` runs it small.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use peer_signal::{
    sign_challenge, Codec, ConnId, MessageAnnounce, NodeInfo, SignalConfig, SignalIn, SignalOut,
    SignalServer, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION,
};

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: then run small.
    let full = std::env::args().any(|arg| arg == "--bench");
    let n: u32 = if full { 50_000 } else { 500 };
    let now = Instant::now();
    let config = SignalConfig::default().with_rng_seed([7; 32]).with_max_pending_handshakes(1 << 20);
    let mut server = SignalServer::new(config).expect("a valid config");

    // Frames and keys are made before counting starts, so that only the server's share counts.
    let keys: Vec<SigningKey> = (0..n).map(key).collect();
    let before = live();
    let mut challenges = Vec::with_capacity(n as usize);
    for i in 0..n {
        server.handle(
            now,
            SignalIn::Opened { conn: ConnId::new(u64::from(i)), codec: Codec::Json, addr: None },
        );
        match server.poll_output() {
            Some(SignalOut::Send { frame, .. }) => match Codec::Json.decode(&frame) {
                Ok(WSSignalMessageToNode::Challenge(_, challenge)) => challenges.push(challenge),
                other => panic!("expected a challenge, got {other:?}"),
            },
            other => panic!("expected a challenge, got {other:?}"),
        }
    }
    let pending = live() - before - (challenges.capacity() * 32) as isize;
    let frames: Vec<_> = keys
        .iter()
        .zip(&challenges)
        .map(|(key, challenge)| {
            let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
                version: SIGNAL_VERSION,
                challenge: *challenge,
                node_info: NodeInfo::new("node-with-a-typical-name", "libc", key.verifying_key().to_bytes()),
                signature: sign_challenge(key, challenge),
            });
            Codec::Json.encode(&announce).unwrap()
        })
        .collect();
    let before_announce = live();
    // Clones share the buffers, which stay alive in `frames` until counting is over.
    for (i, frame) in frames.iter().enumerate() {
        server.handle(now, SignalIn::Frame { conn: ConnId::new(i as u64), frame: frame.clone() });
        while server.poll_output().is_some() {}
    }
    let announced = live() - before_announce;
    drop(frames);
    assert_eq!(server.stats().nodes, n as usize);
    println!(
        "core memory, {n} connections: {:.0} bytes per connection before its announce, {:.0} bytes per announced node",
        pending as f64 / f64::from(n),
        (pending + announced) as f64 / f64::from(n)
    );
}

fn key(i: u32) -> SigningKey {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}
