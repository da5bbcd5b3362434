//! A node on the command line: connects to a signalling server over WebSocket, authenticates,
//! prints the node list, and plays through a (pretend) WebRTC set-up with another node. When the
//! connection is lost (the server restarts, or closes the node for idleness) it reconnects by
//! itself, with backoff.
//!
//! In two terminals, with the server running (`cargo run --release --example ws_server`):
//!
//! ```sh
//! cargo run --example ws_client -- --name alice                  # prints alice's id, then waits
//! cargo run --example ws_client -- --name bob --connect-to <id>  # Init → Offer → Answer → ICE
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientConfig, ClientError, ClientEvent, Codec, NodeID, NodeInfo, PeerInfo, PeerMessage,
    TokioTimer, WsClient,
};

/// A node that talks to a signalling server.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server.
    #[arg(long, default_value = "ws://127.0.0.1:8765")]
    url: String,
    /// The node's name.
    #[arg(long, default_value = "ws-client")]
    name: String,
    /// A file with the node's 32-byte key seed in hex; created with a fresh key if missing.
    /// Without it, every run is a new node.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Speak bincode in binary frames instead of JSON.
    #[arg(long)]
    bincode: bool,
    /// Start a set-up exchange with this node id (64 hex digits).
    #[arg(long)]
    connect_to: Option<NodeID>,
    /// Exit after this many seconds (default: run until Ctrl-C or the server closes).
    #[arg(long)]
    exit_after: Option<u64>,
    /// Seconds between the list requests that keep the node listed (well inside the server's
    /// TTL, 120 s by default) and show that the server is still there; 0 sends none. After the
    /// server closes the node for idleness it comes back and keeps alive more often.
    #[arg(long, default_value_t = 60)]
    keepalive_secs: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let key = load_or_create_key(args.key.as_ref())?;
    let info = NodeInfo::new(&args.name, "peer-signal ws_client", key.verifying_key().to_bytes());
    let codec = if args.bincode { Codec::Bincode } else { Codec::Json };

    let mut config = ClientConfig::default();
    if args.keepalive_secs > 0 {
        config = config.with_keepalive(Duration::from_secs(args.keepalive_secs));
    }
    let server = WsClient::builder(&args.url).codec(codec);
    let mut node =
        AsyncClient::connect_reconnecting_with(server, key, info, config, Arc::new(TokioTimer)).await?;
    println!("connected to {} as {} ({})", args.url, args.name, node.id());

    // The list the server sends after the announce; later ones are printed when they change.
    let mut listed = Vec::new();
    if let ClientEvent::NodeList(nodes) = node.next_event().await? {
        print_list(&nodes, node.id());
        listed = ids(&nodes);
    }
    if let Some(other) = args.connect_to {
        println!("→ Init to {other}");
        node.send_init(other).await?;
    }

    let run = async {
        loop {
            let event = match node.next_event().await {
                Ok(event) => event,
                Err(ClientError::Closed) => return Err(ClientError::Closed),
                // A frame the client refused; the connection goes on.
                Err(e) => {
                    println!("! {e}");
                    continue;
                }
            };
            match event {
                ClientEvent::NodeList(nodes) if ids(&nodes) != listed => {
                    print_list(&nodes, node.id());
                    listed = ids(&nodes);
                }
                ClientEvent::NodeList(_) => {}
                ClientEvent::PeerSetup(setup) => {
                    let from = if setup.id_init == node.id() { setup.id_follow } else { setup.id_init };
                    println!("← {} from {from}", describe(&setup.message));
                    if let Some(reply) = next_step(&setup, node.id()) {
                        println!("→ {} to {from}", describe(&reply));
                        if let Err(e) = node.send_reply(&setup, reply).await {
                            println!("! not sent: {e}");
                        }
                    }
                }
                ClientEvent::Error(error) => println!("! server says: {error}"),
                ClientEvent::Disconnected => println!("· disconnected; reconnecting"),
                ClientEvent::Connected(_) => {
                    let every = node.client().keepalive().map(|k| format!(", keepalive every {k:?}"));
                    println!("· connected again{}", every.unwrap_or_default());
                }
                other => println!("· {other:?}"),
            }
        }
        #[allow(unreachable_code)]
        Ok::<(), peer_signal::ClientError>(())
    };
    let limit = args.exit_after.map_or(Duration::MAX, Duration::from_secs);
    tokio::select! {
        result = run => if let Err(e) = result { println!("disconnected: {e}") },
        _ = tokio::time::sleep(limit) => println!("done"),
        _ = tokio::signal::ctrl_c() => println!("bye"),
    }
    Ok(())
}

/// The ids of a list, sorted, to tell whether it changed.
fn ids(nodes: &[NodeInfo]) -> Vec<NodeID> {
    let mut ids: Vec<NodeID> = nodes.iter().map(NodeInfo::id).collect();
    ids.sort_unstable();
    ids
}

/// The pretend WebRTC dance: the follower offers, the initiator answers, the follower sends a
/// candidate, and the initiator sends one back.
fn next_step(setup: &PeerInfo, me: NodeID) -> Option<PeerMessage> {
    let initiator = setup.id_init == me;
    match (&setup.message, initiator) {
        (PeerMessage::Init, false) => Some(PeerMessage::Offer("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into())),
        (PeerMessage::Offer(_), true) => {
            Some(PeerMessage::Answer("v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\n".into()))
        }
        (PeerMessage::Answer(_), false) => {
            Some(PeerMessage::IceCandidate("candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host".into()))
        }
        (PeerMessage::IceCandidate(_), true) => {
            Some(PeerMessage::IceCandidate("candidate:2 1 udp 2130706431 127.0.0.1 50001 typ host".into()))
        }
        _ => None,
    }
}

fn describe(message: &PeerMessage) -> &'static str {
    match message {
        PeerMessage::Init => "Init",
        PeerMessage::Offer(_) => "Offer",
        PeerMessage::Answer(_) => "Answer",
        PeerMessage::IceCandidate(_) => "IceCandidate",
    }
}

fn print_list(nodes: &[NodeInfo], me: NodeID) {
    println!("{} node(s) connected:", nodes.len());
    for node in nodes {
        let marker = if node.id() == me { " (me)" } else { "" };
        println!("  {}  {}{marker}", node.id(), node.name);
    }
}

fn load_or_create_key(path: Option<&PathBuf>) -> Result<SigningKey, Box<dyn std::error::Error>> {
    let fresh = || SigningKey::generate(&mut rand_core::OsRng);
    let Some(path) = path else { return Ok(fresh()) };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut seed = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut seed)?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = fresh();
            std::fs::write(path, hex::encode(key.to_bytes()))?;
            Ok(key)
        }
        Err(e) => Err(e.into()),
    }
}
