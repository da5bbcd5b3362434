//! The state machine alone, no I/O: relays, announces against raw `verify_strict`, list requests,
//! and the cost of a join as the number of nodes grows.
//!
//! `cargo bench --bench server` measures; `cargo test --benches` runs each once as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use peer_signal::{
    sign_challenge, Codec, ConnId, MessageAnnounce, NodeInfo, PeerInfo, PeerMessage, RateLimit, SignalConfig,
    SignalIn, SignalOut, SignalServer, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

fn key(n: u32) -> SigningKey {
    let mut seed = [0u8; 32];
    seed[..4].copy_from_slice(&n.to_le_bytes());
    seed[31] = 1;
    SigningKey::from_bytes(&seed)
}

fn announce_message(key: &SigningKey, challenge: U256) -> WSSignalMessageFromNode {
    WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: SIGNAL_VERSION,
        challenge,
        node_info: NodeInfo::new("bench", "bench", key.verifying_key().to_bytes()),
        signature: sign_challenge(key, &challenge),
    })
}

/// A server with `nodes` announced nodes on conns 1..=nodes, all speaking `codec`.
struct Bench {
    server: SignalServer,
    now: Instant,
    ids: Vec<U256>,
}

impl Bench {
    fn new(config: SignalConfig, nodes: u32, codec: Codec) -> Self {
        // Unlimited rates: the benches feed one connection thousands of frames at one instant.
        let config = config
            .with_rng_seed([7; 32])
            .with_max_connections(1 << 20)
            .with_frame_rate(RateLimit::UNLIMITED)
            .with_byte_rate(RateLimit::UNLIMITED);
        let mut bench = Self {
            server: SignalServer::new(config).expect("a valid config"),
            now: Instant::now(),
            ids: Vec::new(),
        };
        for n in 1..=nodes {
            bench.join(ConnId::new(u64::from(n)), &key(n), codec);
        }
        // Let the joins' pushes go out, so that measurements start from a settled server.
        bench.now += Duration::from_secs(5);
        bench.server.handle(bench.now, SignalIn::Tick);
        bench.drain();
        bench
    }

    /// Opens `conn` and returns the challenge the server sent it.
    fn open(&mut self, conn: ConnId, codec: Codec) -> U256 {
        self.server.handle(self.now, SignalIn::Opened { conn, codec, addr: None });
        match self.server.poll_output() {
            Some(SignalOut::Send { frame, .. }) => match codec.decode(&frame) {
                Ok(WSSignalMessageToNode::Challenge(_, challenge)) => challenge,
                other => panic!("expected a challenge, got {other:?}"),
            },
            other => panic!("expected a challenge, got {other:?}"),
        }
    }

    /// Opens `conn` and announces `key` on it, in JSON. Returns the server's time for both; the
    /// node's signing is not counted.
    fn timed_announce(&mut self, conn: ConnId, key: &SigningKey) -> Duration {
        let start = Instant::now();
        let challenge = self.open(conn, Codec::Json);
        let server_time = start.elapsed();
        let frame = Codec::Json.encode(&announce_message(key, challenge)).unwrap();
        let start = Instant::now();
        self.server.handle(self.now, SignalIn::Frame { conn, frame });
        self.drain();
        server_time + start.elapsed()
    }

    fn join(&mut self, conn: ConnId, key: &SigningKey, codec: Codec) -> usize {
        let challenge = self.open(conn, codec);
        self.ids.push(U256(key.verifying_key().to_bytes()));
        let frame = codec.encode(&announce_message(key, challenge)).unwrap();
        self.server.handle(self.now, SignalIn::Frame { conn, frame });
        self.drain()
    }

    fn drain(&mut self) -> usize {
        std::iter::from_fn(|| self.server.poll_output()).map(black_box).count()
    }
}

fn relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    for codec in [Codec::Json, Codec::Bincode] {
        let mut bench = Bench::new(SignalConfig::default(), 2, codec);
        let offer = WSSignalMessageFromNode::PeerSetup(PeerInfo {
            id_init: bench.ids[0],
            id_follow: bench.ids[1],
            message: PeerMessage::Offer("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n".repeat(8)),
        });
        let frame: Bytes = codec.encode(&offer).unwrap();
        group.bench_function(BenchmarkId::new("offer", format!("{codec:?}")), |b| {
            b.iter(|| {
                bench
                    .server
                    .handle(bench.now, SignalIn::Frame { conn: ConnId::new(1), frame: frame.clone() });
                bench.drain()
            })
        });
        // What was measured must be relays, not error replies (criterion may have filtered the
        // benchmark out, so no relay at all is fine).
        let stats = bench.server.stats();
        assert!(stats.errors.is_empty(), "{stats:?}");
    }
    // The same relay with the metrics feature's counters going to a Prometheus recorder, as in
    // ws_server (above, no recorder is installed and the counters go nowhere).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        let mut bench = Bench::new(SignalConfig::default(), 2, Codec::Json);
        let offer = WSSignalMessageFromNode::PeerSetup(PeerInfo {
            id_init: bench.ids[0],
            id_follow: bench.ids[1],
            message: PeerMessage::Offer("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n".repeat(8)),
        });
        let frame: Bytes = Codec::Json.encode(&offer).unwrap();
        group.bench_function(BenchmarkId::new("offer", "Json, metrics to Prometheus"), |b| {
            b.iter(|| {
                bench
                    .server
                    .handle(bench.now, SignalIn::Frame { conn: ConnId::new(1), frame: frame.clone() });
                bench.drain()
            })
        });
        assert!(recorder.handle().render().contains("peer_signal_relays_total"));
    });
    group.finish();
}

fn announce(c: &mut Criterion) {
    let mut group = c.benchmark_group("announce");
    group.throughput(Throughput::Elements(1));
    let signer = key(1);
    let challenge = U256([3; 32]);
    let signature = Signature::from_bytes(&sign_challenge(&signer, &challenge));
    let verifying = signer.verifying_key();
    let key_bytes = verifying.to_bytes();
    // The physical bound: one strict signature verification, with the key already decompressed…
    group.bench_function("verify_strict", |b| {
        b.iter(|| verifying.verify_strict(black_box(challenge.as_bytes()), black_box(&signature)).unwrap())
    });
    // …and from the 32 key bytes, as a server receives them.
    group.bench_function("verify_strict_from_bytes", |b| {
        b.iter(|| {
            let key = VerifyingKey::from_bytes(black_box(&key_bytes)).unwrap();
            key.verify_strict(black_box(challenge.as_bytes()), black_box(&signature)).unwrap()
        })
    });
    // The server's side of a whole connection: open and challenge, announce (decode, verify,
    // SystemConfig, list, NewNode), close. The node's signing is not timed.
    let mut bench = Bench::new(SignalConfig::default(), 0, Codec::Json);
    let mut next = 0u64;
    group.bench_function("server_open_announce_close", |b| {
        b.iter_custom(|iters| {
            let mut server_time = Duration::ZERO;
            for _ in 0..iters {
                next += 1;
                let conn = ConnId::new(next);
                server_time += bench.timed_announce(conn, &signer);
                let start = Instant::now();
                bench.server.handle(bench.now, SignalIn::Closed { conn });
                bench.drain();
                server_time += start.elapsed();
            }
            server_time
        })
    });
    group.finish();
}

/// What binding costs: a bound sign-in beside a v3 one through the server, and signing and
/// checking a set-up message beside a bare signature check (`announce/verify_strict_from_bytes`).
fn binding(c: &mut Criterion) {
    use ed25519_dalek::Signer;
    use peer_signal::{bound_announce_bytes, setup_bytes, Binding, BoundAnnounce};

    let mut group = c.benchmark_group("binding");
    group.throughput(Throughput::Elements(1));
    let signer = key(1);
    let server_id = "wss://signal.example.org";
    let config = SignalConfig::default().with_binding(Binding::accept([server_id]));
    let mut bench = Bench::new(config, 0, Codec::Json);
    let mut next = 0u64;
    // The server's side of a whole bound connection: open (Capabilities, challenge), the bound
    // announce (decode, parse the node info, hash, verify, SystemConfig, list, NewNode), close.
    group.bench_function("server_open_bound_announce_close", |b| {
        b.iter_custom(|iters| {
            let mut server_time = Duration::ZERO;
            for _ in 0..iters {
                next += 1;
                let conn = ConnId::new(next);
                let start = Instant::now();
                bench.server.handle(bench.now, SignalIn::Opened { conn, codec: Codec::Json, addr: None });
                let challenge = std::iter::from_fn(|| bench.server.poll_output())
                    .find_map(|out| match out {
                        SignalOut::Send { frame, .. } => match Codec::Json.decode(&frame) {
                            Ok(WSSignalMessageToNode::Challenge(_, challenge)) => Some(challenge),
                            _ => None,
                        },
                        _ => None,
                    })
                    .expect("a challenge");
                server_time += start.elapsed();
                let node_info = serde_json::to_string(&NodeInfo::new(
                    "bench",
                    "bench",
                    signer.verifying_key().to_bytes(),
                ))
                .unwrap();
                let bytes = bound_announce_bytes(
                    server_id,
                    &challenge,
                    &signer.verifying_key().to_bytes(),
                    &node_info,
                    1,
                )
                .unwrap();
                let bound = WSSignalMessageFromNode::BoundAnnounce(Box::new(BoundAnnounce {
                    version: 1,
                    challenge,
                    server_id: server_id.into(),
                    node_info,
                    flags: 1,
                    signature: signer.sign(&bytes).to_bytes(),
                }));
                let frame = Codec::Json.encode(&bound).unwrap();
                let start = Instant::now();
                bench.server.handle(bench.now, SignalIn::Frame { conn, frame });
                bench.drain();
                bench.server.handle(bench.now, SignalIn::Closed { conn });
                bench.drain();
                server_time += start.elapsed();
            }
            server_time
        })
    });
    // A set-up message with a 430-byte offer: the sender's signing, the receiver's check.
    let setup = PeerInfo {
        id_init: U256(signer.verifying_key().to_bytes()),
        id_follow: U256([9; 32]),
        message: PeerMessage::Offer("v=0\r\n".repeat(86)),
    };
    group.bench_function("sign_setup", |b| {
        b.iter(|| signer.sign(&setup_bytes(black_box(&setup), true, black_box(7))).to_bytes())
    });
    let signature = Signature::from_bytes(&signer.sign(&setup_bytes(&setup, true, 7)).to_bytes());
    let key_bytes = signer.verifying_key().to_bytes();
    group.bench_function("verify_setup", |b| {
        b.iter(|| {
            let key = VerifyingKey::from_bytes(black_box(&key_bytes)).unwrap();
            key.verify_strict(&setup_bytes(black_box(&setup), true, 7), black_box(&signature)).unwrap()
        })
    });
    group.finish();
}

fn list(c: &mut Criterion) {
    let mut group = c.benchmark_group("list");
    for nodes in [10, 100, 1000] {
        let config = SignalConfig::default().with_max_list_len(100).with_list_push_fanout(0);
        let mut bench = Bench::new(config, nodes, Codec::Json);
        let request = Bytes::from_static(b"\"ListIDsRequest\"");
        group.bench_function(BenchmarkId::new("request", nodes), |b| {
            b.iter(|| {
                bench
                    .server
                    .handle(bench.now, SignalIn::Frame { conn: ConnId::new(1), frame: request.clone() });
                bench.drain()
            })
        });
    }
    group.finish();
}

/// One more node joins a server holding `n` nodes, its join is pushed to others, and it leaves
/// again, so that `n` stays put. Prints the frames and bytes the server sent per join: they must
/// not grow with `n`.
fn join(c: &mut Criterion) {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each routine once: keep it small.
    let sizes: &[u32] =
        if std::env::args().any(|a| a == "--bench") { &[1_000, 10_000, 50_000] } else { &[100] };
    let mut group = c.benchmark_group("join");
    group.throughput(Throughput::Elements(1));
    for &n in sizes {
        // Each iteration moves the clock by a push interval; the `n` nodes must not expire.
        let config = SignalConfig::default().with_ttl(Duration::from_secs(100 * 365 * 24 * 3600));
        let mut bench = Bench::new(config, n, Codec::Json);
        let signer = key(u32::MAX);
        let (mut joins, mut frames, mut bytes) = (0u64, 0u64, 0u64);
        let mut next = u64::from(n);
        group.bench_function(BenchmarkId::new("one_more", n), |b| {
            b.iter_custom(|iters| {
                let mut server_time = Duration::ZERO;
                for _ in 0..iters {
                    next += 1;
                    let conn = ConnId::new(next);
                    let before = bench.server.stats();
                    server_time += bench.timed_announce(conn, &signer);
                    let start = Instant::now();
                    // The push of this join to other nodes.
                    bench.now += bench.server.config().list_push_interval;
                    bench.server.handle(bench.now, SignalIn::Tick);
                    bench.drain();
                    server_time += start.elapsed();
                    let after = bench.server.stats();
                    bench.server.handle(bench.now, SignalIn::Closed { conn });
                    bench.drain();
                    joins += 1;
                    frames += after.frames_out - before.frames_out;
                    bytes += after.bytes_out - before.bytes_out;
                }
                server_time
            })
        });
        println!(
            "join/one_more/{n}: {:.1} frames and {:.0} bytes sent per join (challenge, config, list, pushes)",
            frames as f64 / joins.max(1) as f64,
            bytes as f64 / joins.max(1) as f64
        );
    }
    group.finish();
}

criterion_group!(benches, relay, announce, binding, list, join);
criterion_main!(benches);
