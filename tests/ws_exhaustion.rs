//! The server as a whole cannot be exhausted over WebSocket from a few sources, at scaled-down
//! limits: silent connections before the upgrade, connections opened faster than a source's
//! rate, a server filled with one address's nodes, and slow readers that together hold more than
//! the send budget. After each, honest nodes still get in and relay.

mod nodes;
mod ws;

use std::time::Duration;

use nodes::{config, wait_event, within};
use peer_signal::{Codec, SignalEvent, WsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ws::*;

/// Whether the server dropped `stream` (it reads end of stream or an error, not data).
async fn dropped(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(within("the server's answer", stream.read(&mut buf)).await, Ok(0) | Err(_))
}

#[tokio::test]
async fn silent_connections_before_the_upgrade_cannot_lock_newcomers_out() {
    let config = config();
    // 16 places in all, 8 of them for handshakes; nothing times out during the test.
    let ws = WsConfig::for_server(&config)
        .without_source_limits()
        .with_max_connections(16)
        .with_max_pending_upgrades(8)
        .with_handshake_timeout(Duration::from_secs(600));
    let server = start(config, ws).await;
    let addr = host(&server.url).to_string();
    // A slowloris: connections that send nothing, and connections that send half a request.
    let mut silent = Vec::new();
    for i in 0..40 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        if i % 4 == 0 {
            stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
        }
        silent.push(stream);
    }
    eventually("the flood accepted", || server.ws.get().accepted == 40).await;
    // Honest nodes still get in and relay, while every silent connection is still open on its side.
    let mut a = join(&server.url, 1, Codec::Json).await;
    let mut b = join(&server.url, 2, Codec::Bincode).await;
    exchange(&mut a, &mut b).await;
    let stats = server.ws.get();
    assert_eq!(stats.refused, 0, "nobody was turned away at accept");
    assert!(stats.evicted_handshakes >= 32, "{stats:?}");
    // The oldest went first.
    assert!(dropped(&mut silent[0]).await);
}

#[tokio::test]
async fn one_source_cannot_open_connections_faster_than_its_accept_rate() {
    let config = config();
    let ws = WsConfig::for_server(&config).without_source_limits().with_accept_rate_per_ip((1, 3));
    let server = start(config, ws).await;
    let addr = host(&server.url).to_string();
    let mut burst = Vec::new();
    for _ in 0..3 {
        burst.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut fourth = TcpStream::connect(&addr).await.unwrap();
    assert!(dropped(&mut fourth).await, "a fourth connection in the same second got through");
    assert_eq!(server.ws.get().refused_rate, 1);
    // Another address is another source, with a bucket of its own.
    let mut other = RawWs::try_connect_from(&server.url, "127.0.0.2", "").await.expect("another source");
    raw_announce(&mut other, 9).await;
}

#[tokio::test]
async fn a_server_full_of_one_addresss_nodes_makes_room_for_a_node_from_another() {
    let config = config().with_max_connections(4);
    let ws = WsConfig::for_server(&config).without_source_limits();
    let mut server = start(config, ws).await;
    let mut sybils = Vec::new();
    for i in 0..4 {
        sybils.push(join(&server.url, 10 + i, Codec::Json).await);
    }
    // Full: another node from the same address is refused.
    let mut same = RawWs::try_connect_from(&server.url, "127.0.0.1", "").await.expect("upgrade");
    let (_, refusal) = same.frame().await.expect("an error");
    assert_eq!(refusal, b"{\"Error\":\"server full\"}");
    // A node from another address gets in, and one of the first four leaves to make room.
    let mut newcomer = RawWs::try_connect_from(&server.url, "127.0.0.2", "").await.expect("upgrade");
    raw_announce(&mut newcomer, 20).await;
    let left = wait_event(&mut server.events, |e| matches!(e, SignalEvent::NodeLeft(_))).await;
    let Some(SignalEvent::NodeLeft(gone)) = left.last() else { panic!("{left:?}") };
    assert!(sybils.iter().any(|node| node.id() == *gone));
}

/// A server for the queue tests: unlimited rates, 16 KiB frames, 64 KiB per connection.
fn queue_configs() -> (peer_signal::SignalConfig, WsConfig) {
    let config = config()
        .with_frame_rate(peer_signal::RateLimit::UNLIMITED)
        .with_byte_rate(peer_signal::RateLimit::UNLIMITED)
        .with_max_frame_size(16 * 1024)
        .with_max_setup_len(16 * 1024);
    let ws = WsConfig::for_server(&config).without_source_limits().with_send_backlog_bytes(64 * 1024);
    (config, ws)
}

fn offer(from: &WsNode, to: peer_signal::NodeID) -> peer_signal::PeerInfo {
    let message = peer_signal::PeerMessage::Offer("o".repeat(12 * 1024));
    peer_signal::PeerInfo { id_init: from.id(), id_follow: to, message }
}

#[tokio::test]
async fn slow_readers_together_cannot_hold_more_than_the_send_budget() {
    let (config, ws) = queue_configs();
    let budget = 96 * 1024;
    let server = start(config, ws.with_send_budget_bytes(budget)).await;
    // Four readers that never read, each of which may hold up to 64 KiB.
    let mut readers = Vec::new();
    for seed in 30..34u8 {
        let mut raw = RawWs::connect_small(&server.url).await;
        raw_announce(&mut raw, u32::from(seed)).await;
        readers.push((raw, nodes::id(u32::from(seed))));
    }
    let mut sender = join(&server.url, 1, Codec::Json).await;
    let mut peak = 0;
    let mut sent = 0;
    while server.ws.get().shed == 0 {
        let to = readers[sent % readers.len()].1;
        sender.send_setup(offer(&sender, to)).await.unwrap();
        sent += 1;
        assert!(sent < 2_000, "nothing was shed: {:?}", server.ws.get());
        tokio::task::yield_now().await;
        peak = peak.max(server.ws.get().queued_bytes);
    }
    // Killed connections count until their tasks end, so the total may pass the budget by what
    // they held (at most the budget again), never more.
    assert!(peak <= 2 * budget as u64 + 16 * 1024, "peak {peak}");
    eventually("back under the budget", || server.ws.get().queued_bytes <= budget as u64).await;
    // Honest nodes are still served.
    let mut a = join(&server.url, 2, Codec::Json).await;
    let mut b = join(&server.url, 3, Codec::Bincode).await;
    exchange(&mut a, &mut b).await;
    drop(readers);
}

#[tokio::test]
async fn a_reader_that_trickles_a_few_bytes_is_closed_as_a_slow_reader() {
    let (config, ws) = queue_configs();
    let ws = ws
        .with_write_timeout(Duration::from_millis(400))
        .with_min_drain_rate(200 * 1024)
        .with_drain_floor(16 * 1024);
    let server = start(config, ws).await;
    let mut raw = RawWs::connect_small(&server.url).await;
    raw_announce(&mut raw, 40).await;
    let reader = nodes::id(40);
    // It reads 1 KiB every 20 ms: progress at every write deadline, 50 KB/s in all, a quarter of
    // the drain rate asked for.
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut buf = [0u8; 1024];
        for _ in 0..1_000 {
            tick.tick().await;
            match raw.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });
    let mut sender = join(&server.url, 1, Codec::Json).await;
    // Past what the sockets hold, and then enough to keep more than the floor waiting in the
    // server for it, until it is closed (within a few write timeouts).
    let mut sent = 0;
    while server.ws.get().slow_readers == 0 {
        if server.ws.get().queued_bytes <= 24 * 1024 {
            sender.send_setup(offer(&sender, reader)).await.unwrap();
            sent += 1;
            assert!(sent < 2_000, "the trickling reader was never closed: {:?}", server.ws.get());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    trickle.abort();
}
