//! A client that reconnects: after the server goes away it reports `Disconnected`, tries again
//! with backoff, announces again and reports `Connected`. On the in-memory transport in tokio's
//! paused (virtual) time, and over WebSocket with a server stopped and started on the same port.

mod nodes;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use nodes::{config, id, key, wait_event, within};
use peer_signal::{
    AsyncClient, Backoff, ClientEvent, Codec, Driver, MemoryConnector, MemoryTransport, NodeInfo,
    SignalEvent, SignalServer, TokioTimer, TransportError, WsClient, WsConfig,
};

fn info(i: u32) -> NodeInfo {
    NodeInfo::new(format!("again-{i}"), "test", key(i).verifying_key().to_bytes())
}

#[tokio::test(start_paused = true)]
async fn over_memory_the_client_comes_back_to_a_new_server_and_announces_again() {
    // Whichever server is up: the reconnecting client asks this slot each time.
    let slot = nodes::ServerSlot::default();
    let start = |slot: &nodes::ServerSlot| {
        let config = config();
        let (transport, connector) = MemoryTransport::new(&config);
        let (driver, handle, events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
        let task = tokio::spawn(driver.run(futures::stream::pending()));
        slot.set(Some(connector));
        (handle, events, task)
    };
    let reconnect = slot.reconnect();
    let (first, _, first_task) = start(&slot);
    let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
    let mut node =
        AsyncClient::connect_reconnecting(reconnect, key(1), info(1), backoff, Arc::new(TokioTimer))
            .await
            .unwrap();
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))));

    // The server goes away, and a new one comes only twenty (virtual) seconds later.
    slot.set(None);
    first.stop();
    within("stopped", first_task).await.unwrap();
    assert_eq!(within("lost", node.next_event()).await, Ok(ClientEvent::Disconnected));
    let lost_at = tokio::time::Instant::now();
    let restart = {
        let slot = slot.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            start(&slot)
        })
    };
    let event = node.next_event().await;
    assert!(matches!(event, Ok(ClientEvent::Connected(_))), "{event:?}");
    let waited = lost_at.elapsed();
    // Back within one backoff step (at most 8 s, spread by a quarter) after the server returned.
    assert!(waited >= Duration::from_secs(20) && waited <= Duration::from_secs(30), "{waited:?}");
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(nodes)) if nodes.len() == 1));
    let (_second, mut events, _task) = restart.await.unwrap();
    wait_event(&mut events, |event| matches!(event, SignalEvent::NewNode(node) if node.id == id(1))).await;
    // And it works as before.
    assert_eq!(within("list", node.list()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_websocket_the_client_comes_back_when_the_server_restarts_on_its_port() {
    let config = config();
    let server = ws::start(config.clone(), WsConfig::for_server(&config)).await;
    let url = server.url.clone();
    let builder = WsClient::builder(url.clone()).codec(Codec::Bincode);
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
    let mut node = within(
        "connect",
        AsyncClient::connect_reconnecting(builder, key(2), info(2), backoff, Arc::new(TokioTimer)),
    )
    .await
    .unwrap();
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))));

    // Stopped: every client gets its close; the listener goes with the transport.
    server.handle.stop();
    within("stopped", server.task).await.unwrap();
    assert_eq!(within("lost", node.next_event()).await, Ok(ClientEvent::Disconnected));

    // Started again on the same port.
    let addr = ws::host(&url).to_string();
    // The old listener goes when its accept task, aborted with the transport, has ended.
    let transport = within("the port again", async {
        loop {
            match peer_signal::WsTransport::bind(addr.as_str(), WsConfig::for_server(&config)).await {
                Ok(transport) => return transport,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => tokio::task::yield_now().await,
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let (driver, _handle, mut events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
    tokio::spawn(driver.run(futures::stream::pending()));
    let event = within("back", node.next_event()).await;
    assert!(matches!(event, Ok(ClientEvent::Connected(_))), "{event:?}");
    wait_event(&mut events, |event| matches!(event, SignalEvent::NewNode(node) if node.id == id(2))).await;
    assert!(
        matches!(within("list", node.next_event()).await, Ok(ClientEvent::NodeList(nodes)) if nodes.len() == 1)
    );
}

/// A server on the in-memory transport, on tokio's (paused) clock, ticked every second.
fn ticking(config: peer_signal::SignalConfig) -> (MemoryConnector, tokio::task::JoinHandle<SignalServer>) {
    let running = nodes::start_ticking(config);
    (running.connector, running.server)
}

fn connecting(
    connector: &MemoryConnector,
) -> impl Fn() -> futures::future::BoxFuture<'static, Result<peer_signal::MemoryClient, TransportError>>
       + Send
       + Sync
       + 'static {
    let connector = connector.clone();
    move || {
        let connector = connector.clone();
        Box::pin(async move { connector.connect(Codec::Json).await })
    }
}

#[tokio::test(start_paused = true)]
async fn two_processes_with_one_key_take_the_node_from_each_other_at_a_bounded_rate() {
    let (connector, _server) = ticking(config());
    let window = Duration::from_secs(600);
    let start = tokio::time::Instant::now();
    // Each process counts the sessions it gets; a runaway loop stops at 1,000.
    let run = |connector: &MemoryConnector| {
        let reconnect = connecting(connector);
        tokio::spawn(async move {
            let mut node = AsyncClient::connect_reconnecting(
                reconnect,
                key(7),
                info(7),
                Backoff::default(),
                Arc::new(TokioTimer),
            )
            .await
            .unwrap();
            let mut sessions = 1u32;
            while start.elapsed() < window && sessions < 1000 {
                match tokio::time::timeout_at(start + window, node.next_event()).await {
                    Ok(Ok(ClientEvent::Connected(_))) => sessions += 1,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            sessions
        })
    };
    let (first, second) = (run(&connector), run(&connector));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    // With no wait after an accepted session they would alternate at round-trip speed. Each
    // now waits the backoff, which doubles after every short session up to 30 s (±25%): about
    // ten sessions while it grows, then one per ~30 s, alternating, over ten minutes.
    let sessions = first + second;
    assert!(sessions <= 50, "{first} + {second} sessions in {window:?}");
    assert!(first >= 2 && second >= 2, "both still get the node: {first} + {second}");
}

#[tokio::test(start_paused = true)]
async fn after_an_idle_eviction_the_node_comes_back_and_keeps_alive_often_enough() {
    // A server that closes nodes silent for 4 s, and a node that keeps alive every 60 s.
    let (connector, _server) = ticking(config().with_ttl(Duration::from_secs(4)));
    let config = peer_signal::ClientConfig::default().with_keepalive(Duration::from_secs(60));
    let mut node = AsyncClient::connect_reconnecting_with(
        connecting(&connector),
        key(8),
        info(8),
        config,
        Arc::new(TokioTimer),
    )
    .await
    .unwrap();
    assert!(matches!(node.next_event().await, Ok(ClientEvent::NodeList(_))));
    let start = tokio::time::Instant::now();
    assert_eq!(within("evicted", node.next_event()).await, Ok(ClientEvent::Error("idle timeout".into())));
    assert_eq!(within("lost", node.next_event()).await, Ok(ClientEvent::Disconnected));
    assert!(matches!(within("back", node.next_event()).await, Ok(ClientEvent::Connected(_))));
    let back = start.elapsed();
    assert!(back < Duration::from_secs(10), "back after {back:?}");
    // Half the silence the server tolerated (4 to 5 s, as its ticks fall).
    let interval = node.client().keepalive().unwrap();
    assert!(interval >= Duration::from_secs(2) && interval <= Duration::from_millis(2500), "{interval:?}");
    // Then it stays: ten minutes of lists that answer its keepalives, no eviction.
    let until = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut lists = 0;
    while let Ok(event) = tokio::time::timeout_at(until, node.next_event()).await {
        match event {
            Ok(ClientEvent::NodeList(_)) => lists += 1,
            other => panic!("{other:?} after {:?}", start.elapsed()),
        }
    }
    assert!(lists >= 240, "{lists} keepalives answered");
}
