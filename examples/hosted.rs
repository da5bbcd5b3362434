//! Bob hosts signalling for his neighbours alice and carol over the links he has to them, and
//! alice sets up a connection to carol through him: no signalling server involved. The links are
//! in-memory stand-ins for data channels labelled `peer_signal::LINK_LABEL`.
//!
//! Run with `cargo run --example hosted`.

use std::error::Error;

use ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientEvent, Codec, Driver, LinkClient, LinkConfig, LinkHost, LinkInbound, LinkOutbound,
    LinkTransport, NodeInfo, PathClient, PathEvent, PeerMessage, SignalConfig, SignalPaths, SignalServer,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Bob: an unchanged SignalServer on a transport whose connections are his links.
    let config = SignalConfig::default();
    let (transport, bob) = LinkTransport::new(LinkConfig::for_server(&config))?;
    let (driver, _handle, _events) = Driver::new(SignalServer::new(config)?, transport, 64);
    tokio::spawn(driver.run(futures::stream::pending()));

    // Alice and carol each open a link to bob and sign in over it.
    let mut alice = SignalPaths::new();
    alice.add("bob", neighbour(&bob, 1, "alice").await?);
    let mut carol = SignalPaths::new();
    carol.add("bob", neighbour(&bob, 3, "carol").await?);

    for (node, via) in alice.list().await {
        println!("[alice] {} is reachable through {via:?}", node.name);
    }
    let carol_id = SigningKey::from_bytes(&[3; 32]).verifying_key().to_bytes().into();
    let path = alice.send_init(carol_id).await?;
    println!("[alice] Init to carol through {path}");

    let init = loop {
        if let Some((via, PathEvent::Event(ClientEvent::PeerSetup(init)))) = carol.next_event().await {
            println!("[carol] {:?} from alice through {via}", init.message);
            break init;
        }
    };
    carol.send_reply(&"bob", &init, PeerMessage::Offer("v=0 (carol's offer)".into())).await?;
    while let Some((via, event)) = alice.next_event().await {
        if let PathEvent::Event(ClientEvent::PeerSetup(offer)) = event {
            println!("[alice] {:?} from carol through {via}", offer.message);
            break;
        }
    }
    Ok(())
}

/// A neighbour of bob's: a link to him (here two in-memory pumps; in a real node, a data
/// channel), and a client signed in over it.
async fn neighbour(bob: &LinkHost, seed: u8, name: &str) -> Result<PathClient, Box<dyn Error>> {
    let (at_bob_in, at_bob_out) = bob.attach(Codec::Json)?;
    let (client, at_node_in, at_node_out) = LinkClient::new(Codec::Json, bob.config());
    tokio::spawn(pump(at_node_out, at_bob_in));
    tokio::spawn(pump(at_bob_out, at_node_in));
    let key = SigningKey::from_bytes(&[seed; 32]);
    let info = NodeInfo::new(name, "example", key.verifying_key().to_bytes());
    Ok(AsyncClient::connect(Box::new(client) as Box<dyn peer_signal::ClientConnection>, key, info).await?)
}

/// What a data channel does: carries each message from one end to the other.
async fn pump(from: LinkOutbound, mut to: LinkInbound) {
    while let Some(frame) = from.recv().await {
        if to.deliver(frame).is_err() {
            break;
        }
    }
}
