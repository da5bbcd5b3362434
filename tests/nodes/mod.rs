//! In-memory nodes around a driven server: layer 2 of the tests. No sockets, no sleeps.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use peer_signal::{
    AsyncClient, ClientConnection, ClientEvent, Codec, Driver, DriverEvents, DriverHandle, MemoryClient,
    MemoryConnector, MemoryTransport, NodeID, NodeInfo, PeerInfo, SignalConfig, SignalEvent, SignalServer,
};
use tokio::task::JoinHandle;

pub type Node = AsyncClient<MemoryClient>;

/// A safety net, not a clock: a test that waits for something that never comes fails instead of
/// hanging. Nothing here waits for time to pass.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future).await.unwrap_or_else(|_| panic!("stuck: {what}"))
}

/// A key for node `i`; distinct for every `i`.
pub fn key(i: u32) -> SigningKey {
    let mut seed = [0x5a; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

pub fn id(i: u32) -> NodeID {
    NodeID::from(key(i).verifying_key().to_bytes())
}

/// The default config with the RNG pinned, lists long enough for everybody, and no pushes, so
/// that every `ListIDsReply` a node gets answers its own request.
pub fn config() -> SignalConfig {
    SignalConfig::default().with_rng_seed([7; 32]).with_max_list_len(10_000).with_list_push_fanout(0)
}

/// A server driven on the current runtime, without ticks.
pub struct Running {
    pub connector: MemoryConnector,
    pub handle: DriverHandle,
    pub events: DriverEvents,
    pub server: JoinHandle<SignalServer>,
}

pub fn start(config: SignalConfig) -> Running {
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, handle, events) = Driver::new(SignalServer::new(config).unwrap(), transport, 4096);
    let server = tokio::spawn(driver.run(futures::stream::pending()));
    Running { connector, handle, events, server }
}

/// Connects node `i` and completes its handshake.
pub async fn join(connector: &MemoryConnector, i: u32, codec: Codec) -> Node {
    let conn = connector.connect(codec).await.expect("transport is up");
    let key = key(i);
    let info = NodeInfo::new(format!("node-{i}"), "test", key.verifying_key().to_bytes());
    let node = within("handshake", AsyncClient::connect(conn, key, info)).await.expect("handshake");
    assert_eq!(node.id(), id(i));
    node
}

/// Waits for the driver's next event that `wanted` accepts; the skipped ones are returned too.
pub async fn wait_event(
    events: &mut DriverEvents,
    wanted: impl Fn(&SignalEvent) -> bool,
) -> Vec<SignalEvent> {
    within("driver event", async {
        let mut seen = Vec::new();
        while let Some(event) = events.next().await {
            let done = wanted(&event);
            seen.push(event);
            if done {
                return seen;
            }
        }
        panic!("the driver ended before the event; saw {seen:?}")
    })
    .await
}

/// The next `PeerSetup` for `node`, skipping node lists; any other event fails the test.
pub async fn next_setup<C: ClientConnection>(node: &mut AsyncClient<C>) -> PeerInfo {
    within("peer setup", async {
        loop {
            match node.next_event().await {
                Ok(ClientEvent::PeerSetup(setup)) => return setup,
                Ok(ClientEvent::NodeList(_)) => {}
                other => panic!("expected a PeerSetup, got {other:?}"),
            }
        }
    })
    .await
}

/// Reads a node's events until its connection closes; returns them. Bounded by what the server
/// queued before it closed the connection.
pub async fn drain_until_closed<C: ClientConnection>(node: &mut AsyncClient<C>) -> Vec<ClientEvent> {
    within("close", async {
        let mut events = Vec::new();
        loop {
            match node.next_event().await {
                Ok(event) => events.push(event),
                Err(peer_signal::ClientError::Closed) => return events,
                Err(e) => panic!("unexpected client error {e}"),
            }
        }
    })
    .await
}

/// The text of `node`'s next `Error`, skipping node lists; any other event fails the test.
pub async fn next_error<C: ClientConnection>(node: &mut AsyncClient<C>) -> String {
    within("an error", async {
        loop {
            match node.next_event().await {
                Ok(ClientEvent::Error(text)) => return text,
                Ok(ClientEvent::NodeList(_)) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    })
    .await
}

/// A server on the in-memory transport, on tokio's clock and ticked every second, so that a
/// paused (virtual) clock drives its TTLs and handshake timeouts.
pub fn start_ticking(config: SignalConfig) -> Running {
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, handle, events) = Driver::new(SignalServer::new(config).unwrap(), transport, 1024);
    let ticks =
        Box::pin(futures::stream::unfold(tokio::time::interval(Duration::from_secs(1)), |mut i| async {
            i.tick().await;
            Some(((), i))
        }));
    let server = tokio::spawn(driver.run_with_clock(ticks, || tokio::time::Instant::now().into_std()));
    Running { connector, handle, events, server }
}

/// Whichever in-memory server is up now, for a client that reconnects: it asks this slot each
/// time, and gets `Shutdown` while it is empty.
#[derive(Clone, Default)]
pub struct ServerSlot(std::sync::Arc<std::sync::Mutex<Option<MemoryConnector>>>);

impl ServerSlot {
    pub fn set(&self, connector: Option<MemoryConnector>) {
        *self.0.lock().unwrap() = connector;
    }

    /// What `AsyncClient::connect_reconnecting` takes: a JSON connection to the server in the slot.
    pub fn reconnect(
        &self,
    ) -> impl Fn() -> std::pin::Pin<
        Box<dyn Future<Output = Result<MemoryClient, peer_signal::TransportError>> + Send>,
    > + Send
           + Sync
           + 'static {
        let slot = self.clone();
        move || {
            let connector = slot.0.lock().unwrap().clone();
            Box::pin(async move {
                match connector {
                    Some(connector) => connector.connect(Codec::Json).await,
                    None => Err(peer_signal::TransportError::Shutdown),
                }
            })
        }
    }
}
