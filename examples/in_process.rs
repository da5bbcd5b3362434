//! A node application that hosts the signalling server in its own process for a handful of peer
//! nodes, over the in-memory transport. Two peers set up a WebRTC connection through it, one
//! reports statistics, one leaves; then the host stops the server.
//!
//! Run with `cargo run --example in_process`.

use std::error::Error;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use peer_signal::{
    AsyncClient, ClientEvent, Codec, Driver, DriverEvents, MemoryClient, MemoryConnector, MemoryTransport,
    NodeInfo, NodeStat, PeerInfo, PeerMessage, SignalConfig, SignalEvent, SignalServer,
};

type Peer = AsyncClient<MemoryClient>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let config = SignalConfig::default().with_ttl(Duration::from_secs(60));
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, handle, mut events) = Driver::new(SignalServer::new(config)?, transport, 256);

    // The server wants a tick about once a second for its timeouts; any timer will do.
    let ticks =
        futures::stream::unfold(tokio::time::interval(Duration::from_secs(1)), |mut interval| async {
            interval.tick().await;
            Some(((), interval))
        });
    let server = tokio::spawn(driver.run(Box::pin(ticks)));
    let mut alice = peer(&connector, 1, "alice", Codec::Json).await?;
    let mut bob = peer(&connector, 2, "bob", Codec::Bincode).await?;
    let mut carol = peer(&connector, 3, "carol", Codec::Json).await?;
    let dave = peer(&connector, 4, "dave", Codec::Json).await?;
    host_log(&mut events, 4, |event| matches!(event, SignalEvent::NewNode(_))).await;

    let names: Vec<String> = alice.list().await?.into_iter().map(|node| node.name).collect();
    println!("[alice] sees {names:?}");

    alice.send_init(bob.id()).await?;
    let init = setup(&mut bob, "bob").await?;
    bob.send_reply(&init, PeerMessage::Offer("v=0 (bob's offer)".into())).await?;
    let offer = setup(&mut alice, "alice").await?;
    alice.send_reply(&offer, PeerMessage::Answer("v=0 (alice's answer)".into())).await?;
    setup(&mut bob, "bob").await?;
    alice
        .send_reply(&offer, PeerMessage::IceCandidate("candidate:1 1 UDP 1 10.0.0.1 9 typ host".into()))
        .await?;
    bob.send_reply(&init, PeerMessage::IceCandidate("candidate:1 1 UDP 1 10.0.0.2 9 typ host".into()))
        .await?;
    setup(&mut bob, "bob").await?;
    setup(&mut alice, "alice").await?;

    let stat = NodeStat { id: alice.id(), version: "0.1.0".into(), ping_ms: 12, ping_rx: 3 };
    carol.send_stats(vec![stat]).await?;
    host_log(&mut events, 1, |event| matches!(event, SignalEvent::NodeStats { .. })).await;

    drop(dave);
    host_log(&mut events, 1, |event| matches!(event, SignalEvent::NodeLeft(_))).await;
    let names: Vec<String> = carol.list().await?.into_iter().map(|node| node.name).collect();
    println!("[carol] sees {names:?} after dave left");

    handle.stop();
    host_log(&mut events, 1, |event| *event == SignalEvent::Stopped).await;
    let stats = server.await?.stats();
    println!("[host] {} joins, {} relayed set-up messages", stats.joins, stats.relays);
    for (name, peer) in [("alice", &mut alice), ("bob", &mut bob), ("carol", &mut carol)] {
        let closed = closed(peer).await;
        println!("[{name}] connection closed: {closed}");
    }
    Ok(())
}

/// Prints the host's events until `count` of them match `until`.
async fn host_log(events: &mut DriverEvents, mut count: usize, until: impl Fn(&SignalEvent) -> bool) {
    while count > 0 {
        let Some(event) = events.next().await else { return };
        if until(&event) {
            count -= 1;
        }
        match event {
            SignalEvent::NewNode(node) => {
                println!("[host] node {} ({}) joined", short(&node.id.to_string()), node.info.name)
            }
            SignalEvent::NodeLeft(id) => println!("[host] node {} left", short(&id.to_string())),
            SignalEvent::NodeStats { from, stats } => {
                println!("[host] node {} reports {} peer(s)", short(&from.to_string()), stats.len())
            }
            SignalEvent::Stopped => println!("[host] signalling stopped"),
            other => println!("[host] {other:?}"),
        }
    }
}

/// A peer node: its own key, connected to the in-process server.
async fn peer(
    connector: &MemoryConnector,
    seed: u8,
    name: &str,
    codec: Codec,
) -> Result<Peer, Box<dyn Error>> {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let info = NodeInfo::new(name, "in_process example", key.verifying_key().to_bytes());
    let peer = AsyncClient::connect(connector.connect(codec).await?, key, info).await?;
    println!("[{name}] connected as {} over {codec:?}", short(&peer.id().to_string()));
    Ok(peer)
}

/// Waits for the next set-up message and prints it; lists the server pushes are skipped.
async fn setup(peer: &mut Peer, name: &str) -> Result<PeerInfo, Box<dyn Error>> {
    loop {
        match peer.next_event().await? {
            ClientEvent::PeerSetup(setup) => {
                println!("[{name}] got {:?}", setup.message);
                return Ok(setup);
            }
            ClientEvent::Error(text) => return Err(text.into()),
            _ => {}
        }
    }
}

/// Reads what is left until the server's close arrives.
async fn closed(peer: &mut Peer) -> bool {
    // The host queued a handful of frames at most; the bound only guards against a bug.
    for _ in 0..100 {
        if peer.next_event().await.is_err() {
            return true;
        }
    }
    false
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}
