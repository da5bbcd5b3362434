//! Memory the core holds per connection, counted by a global allocator: per connection that
//! has not announced yet, and per announced node. No I/O; the transport's share is measured by
//! `tools/src/bin/loadgen.rs idle` against a running server.
//!
//! Then the same for a node that hosts signalling: what the core and the `LinkTransport` hold per
//! attached link whose neighbour has signed in.
//!
//! `cargo bench --bench memory` prints the figures; `cargo test --benches` runs it small.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use ed25519_dalek::SigningKey;
use peer_signal::{
    sign_challenge, Codec, ConnId, Driver, LinkConfig, LinkTransport, MessageAnnounce, NodeInfo,
    SignalConfig, SignalIn, SignalOut, SignalServer, WSSignalMessageFromNode, WSSignalMessageToNode,
    SIGNAL_VERSION,
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
    drop(server);
    hosted(if full { 10_000 } else { 200 });
}

/// What a hosting node holds per attached, signed-in link: the core's share and the transport's
/// (the link's two queues, its hub entry, its inbound stream), with the driver on a
/// current-thread runtime. The neighbours' side is made before counting and takes no part.
fn hosted(n: u32) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a runtime");
    runtime.block_on(async {
        let config = SignalConfig::default().with_rng_seed([7; 32]).with_max_pending_handshakes(1 << 20);
        let links = LinkConfig::for_server(&config).with_max_links(n as usize);
        let (transport, host) = LinkTransport::new(links).expect("a valid config");
        let (driver, handle, _events) =
            Driver::new(SignalServer::new(config).expect("a valid config"), transport, 64);
        let driver = tokio::spawn(driver.run(futures::stream::pending()));
        let keys: Vec<SigningKey> = (0..n).map(key).collect();
        let mut ends = Vec::with_capacity(n as usize);
        let before = live();
        for key in &keys {
            let (mut to_host, from_host) = host.attach(Codec::Json).expect("a free slot");
            let Some(Ok(WSSignalMessageToNode::Challenge(_, challenge))) =
                from_host.recv().await.map(|frame| Codec::Json.decode(&frame))
            else {
                panic!("expected a challenge")
            };
            let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
                version: SIGNAL_VERSION,
                challenge,
                node_info: NodeInfo::new("node-with-a-typical-name", "libc", key.verifying_key().to_bytes()),
                signature: sign_challenge(key, &challenge),
            });
            to_host.deliver(Codec::Json.encode(&announce).expect("encodes")).expect("room");
            // SystemConfig and the list that follow the acceptance, read and dropped.
            for _ in 0..2 {
                from_host.recv().await.expect("the link is open");
            }
            ends.push((to_host, from_host));
        }
        let held = live() - before - (ends.capacity() * std::mem::size_of_val(&ends[0])) as isize;
        assert_eq!(handle.nodes().await.expect("running").len(), n as usize);
        println!(
            "hosted signalling, {n} links: {:.0} bytes per attached, signed-in link",
            held as f64 / f64::from(n)
        );
        handle.stop();
        drop(ends);
        driver.await.expect("the driver ends");
    });
}

fn key(i: u32) -> SigningKey {
    let mut seed = [9u8; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}
