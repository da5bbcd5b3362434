//! A relayed set-up message through a node that hosts signalling over peer links, beside the same
//! relay through the WebSocket transport on loopback and through the in-memory transport, in one
//! run.
//!
//! Each relay goes end to end within one thread (a current-thread tokio runtime): the sending
//! node's connection, the transport, the server and its driver, the transport again, the
//! receiving node's connection; for links, also the two pumps that stand in for data channels.
//! So the time per message is the CPU per message of the whole path, both nodes included.
//!
//! `cargo bench --bench hosted` measures; `cargo test --benches` runs each once as a smoke test.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientConnection, Codec, Driver, LinkClient, LinkConfig, LinkInbound, LinkOutbound,
    LinkTransport, MemoryTransport, NodeInfo, PeerInfo, PeerMessage, RateLimit, SignalConfig, SignalServer,
    WSSignalMessageFromNode, WsClient, WsConfig, WsTransport,
};

/// Relays in flight at once.
const WINDOW: u64 = 32;

fn config() -> SignalConfig {
    SignalConfig::default()
        .with_frame_rate(RateLimit::UNLIMITED)
        .with_byte_rate(RateLimit::UNLIMITED)
        .with_list_push_fanout(0)
}

fn node(seed: u8) -> (SigningKey, NodeInfo) {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let info = NodeInfo::new(format!("node-{seed}"), "bench", key.verifying_key().to_bytes());
    (key, info)
}

type Conn = Box<dyn ClientConnection>;

/// Two nodes signed in at a server on `transport`, as raw connections, and the offer frame from
/// the first to the second.
async fn pair(kind: &str) -> (Conn, Conn, Bytes) {
    let conns: [Conn; 2] = match kind {
        "link" => {
            let config = config();
            let (transport, host) = LinkTransport::new(LinkConfig::for_server(&config)).unwrap();
            let (driver, _handle, _events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
            tokio::spawn(driver.run(futures::stream::pending()));
            let link = || -> Conn {
                let (at_host_in, at_host_out) = host.attach(Codec::Json).unwrap();
                let (client, at_node_in, at_node_out) = LinkClient::new(Codec::Json, host.config());
                tokio::spawn(pump(at_node_out, at_host_in));
                tokio::spawn(pump(at_host_out, at_node_in));
                Box::new(client)
            };
            [link(), link()]
        }
        "memory" => {
            let config = config();
            let (transport, connector) = MemoryTransport::new(&config);
            let (driver, _handle, _events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
            tokio::spawn(driver.run(futures::stream::pending()));
            [
                Box::new(connector.connect(Codec::Json).await.unwrap()),
                Box::new(connector.connect(Codec::Json).await.unwrap()),
            ]
        }
        _ => {
            let config = config();
            let ws = WsConfig::for_server(&config).without_source_limits();
            let transport = WsTransport::bind("127.0.0.1:0", ws).await.unwrap();
            let url = format!("ws://{}/", transport.local_addr());
            let (driver, _handle, _events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
            tokio::spawn(driver.run(futures::stream::pending()));
            [
                Box::new(WsClient::connect(&url, Codec::Json).await.unwrap()),
                Box::new(WsClient::connect(&url, Codec::Json).await.unwrap()),
            ]
        }
    };
    let [a, c] = conns;
    let ((a_key, a_info), (c_key, c_info)) = (node(1), node(3));
    let a = AsyncClient::connect(a, a_key, a_info).await.unwrap();
    let c = AsyncClient::connect(c, c_key, c_info).await.unwrap();
    let sdp = format!("v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n{}", "a=x\r\n".repeat(76));
    let offer = WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init: a.id(),
        id_follow: c.id(),
        message: PeerMessage::Offer(sdp),
    });
    (a.into_inner(), c.into_inner(), Codec::Json.encode(&offer).unwrap())
}

async fn pump(from: LinkOutbound, mut to: LinkInbound) {
    while let Some(frame) = from.recv().await {
        if to.deliver(frame).is_err() {
            break;
        }
    }
}

/// `count` relays from `a` to `c`, at most [`WINDOW`] in flight.
async fn relays(a: &mut Conn, c: &mut Conn, offer: &Bytes, count: u64) -> Duration {
    let start = Instant::now();
    let (mut sent, mut got) = (0, 0);
    while got < count {
        while sent < count && sent - got < WINDOW {
            a.send(offer.clone()).await.unwrap();
            sent += 1;
        }
        c.recv().await.unwrap();
        got += 1;
    }
    start.elapsed()
}

fn relay(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut group = c.benchmark_group("hosted_relay");
    group.throughput(Throughput::Elements(1));
    for kind in ["link", "memory", "websocket"] {
        let (mut a, mut to, offer) = runtime.block_on(pair(kind));
        group.bench_function(kind, |b| {
            b.iter_custom(|count| runtime.block_on(relays(&mut a, &mut to, &offer, count)));
        });
    }
    group.finish();
}

criterion_group!(benches, relay);
criterion_main!(benches);
