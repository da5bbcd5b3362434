//! The driver: ticks and a clock supplied by the test, stop, the bounded event stream, and a
//! transport that shuts down. Time moves only when a test moves it.

mod nodes;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, SinkExt, StreamExt};
use nodes::{config, drain_until_closed, id, join, key, start, wait_event, within};
use peer_signal::{
    AsyncClient, ClientError, ClientEvent, Codec, ControlError, Driver, FledgerConfig, MemoryTransport,
    NodeID, NodeInfo, NodeStat, RealmID, SignalEvent, SignalServer, TransportError, WSSignalMessageToNode,
};

#[tokio::test]
async fn ttl_evicts_idle_nodes_on_manual_ticks() {
    let ttl = Duration::from_secs(60);
    let config = config().with_ttl(ttl);
    let start = Instant::now();
    let clock = Arc::new(Mutex::new(start));
    let set_clock = |by: Duration| *clock.lock().unwrap() = start + by;
    let (mut ticks, tick_stream) = futures::channel::mpsc::channel::<()>(1);
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, _handle, mut events) = Driver::new(SignalServer::new(config).unwrap(), transport, 64);
    let now = {
        let clock = Arc::clone(&clock);
        move || *clock.lock().unwrap()
    };
    let server = tokio::spawn(driver.run_with_clock(tick_stream, now));

    let mut a = join(&connector, 1, Codec::Json).await;
    let mut b = join(&connector, 2, Codec::Bincode).await;
    set_clock(ttl * 2 / 3);
    a.list().await.unwrap(); // a's TTL now runs from here; b's from the join
    set_clock(ttl + Duration::from_millis(1));
    ticks.send(()).await.unwrap();

    let seen = wait_event(&mut events, |e| matches!(e, SignalEvent::NodeLeft(_))).await;
    assert_eq!(seen.last(), Some(&SignalEvent::NodeLeft(id(2))), "b is evicted first: {seen:?}");
    let b_saw = drain_until_closed(&mut b).await;
    assert_eq!(b_saw.last(), Some(&ClientEvent::Error("idle timeout".into())));
    let listed: Vec<NodeID> = a.list().await.unwrap().iter().map(|n| n.id()).collect();
    assert_eq!(listed, vec![id(1)], "a was refreshed and stays");

    // a's last frame was the list just now, at ttl + 1 ms.
    set_clock(ttl * 2 + Duration::from_millis(2));
    ticks.send(()).await.unwrap();
    wait_event(&mut events, |e| *e == SignalEvent::NodeLeft(id(1))).await;
    assert_eq!(drain_until_closed(&mut a).await.last(), Some(&ClientEvent::Error("idle timeout".into())));

    drop((ticks, connector));
    let server = within("shutdown", server).await.unwrap();
    assert!(server.is_stopped());
}

#[tokio::test]
async fn stop_closes_every_client_and_returns_the_stopped_server() {
    let mut running = start(config());
    let mut nodes = Vec::new();
    for i in 0..10 {
        let codec = if i % 2 == 0 { Codec::Json } else { Codec::Bincode };
        nodes.push(join(&running.connector, i, codec).await);
    }
    running.handle.stop();
    running.handle.stop();
    let server = within("stop", running.server).await.unwrap();
    assert!(server.is_stopped());
    assert_eq!(server.nodes().count(), 0);

    for node in &mut nodes {
        let events = drain_until_closed(node).await;
        assert!(events.iter().all(|e| matches!(e, ClientEvent::NodeList(_))), "{events:?}");
    }
    let mut seen = Vec::new();
    while let Some(event) = within("events", running.events.next()).await {
        seen.push(event);
    }
    assert_eq!(seen.len(), 11, "{seen:?}");
    assert!(seen[..10].iter().all(|e| matches!(e, SignalEvent::NewNode(_))));
    assert_eq!(seen[10], SignalEvent::Stopped);
    assert_eq!(running.connector.connect(Codec::Json).await.unwrap_err(), TransportError::Shutdown);
}

#[tokio::test]
async fn a_slow_event_consumer_loses_events_not_the_server() {
    let config = config();
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, handle, mut events) = Driver::new(SignalServer::new(config).unwrap(), transport, 1);
    let server = tokio::spawn(driver.run(futures::stream::pending()));

    let mut nodes = Vec::new();
    for i in 0..10 {
        nodes.push(join(&connector, i, Codec::Json).await);
    }
    // Answered after every join's event went out, full queue or not.
    assert_eq!(nodes[0].list().await.unwrap().len(), 10);
    let dropped = handle.dropped_events();
    let mut delivered = 0;
    while let Some(Some(event)) = events.next().now_or_never() {
        assert!(matches!(event, SignalEvent::NewNode(_)));
        delivered += 1;
    }
    assert!(dropped > 0, "a queue of one must overflow with ten joins");
    assert_eq!(delivered + dropped, 10);

    handle.stop();
    assert_eq!(within("stopped", events.next()).await, Some(SignalEvent::Stopped));
    assert!(within("stop", server).await.unwrap().is_stopped());
    assert_eq!(handle.dropped_events(), dropped);
}

#[tokio::test]
async fn a_transport_that_shuts_down_stops_the_server() {
    let mut running = start(config());
    let node = join(&running.connector, 1, Codec::Json).await;
    drop(node);
    drop(running.connector);
    let server = within("shutdown", running.server).await.unwrap();
    assert!(server.is_stopped());
    let seen = wait_event(&mut running.events, |e| *e == SignalEvent::Stopped).await;
    assert!(
        matches!(seen.as_slice(), [SignalEvent::NewNode(joined), SignalEvent::NodeLeft(left), SignalEvent::Stopped]
            if joined.id == id(1) && *left == id(1)),
        "{seen:?}"
    );
}

#[test]
fn runs_on_any_executor() {
    let config = config();
    let (transport, connector) = MemoryTransport::new(&config);
    let (driver, handle, mut events) = Driver::new(SignalServer::new(config).unwrap(), transport, 16);
    let mut pool = futures::executor::LocalPool::new();
    let client = async move {
        // No tokio here, so no `nodes::join` (its safety-net timeout needs tokio's timer).
        let conn = connector.connect(Codec::Bincode).await.unwrap();
        let info = NodeInfo::new("seven", "test", key(7).verifying_key().to_bytes());
        let node = AsyncClient::connect(conn, key(7), info).await.unwrap();
        assert!(matches!(events.next().await, Some(SignalEvent::NewNode(joined)) if joined.id == node.id()));
        handle.stop();
        events.next().await
    };
    let (server, last) =
        pool.run_until(futures::future::join(driver.run(futures::stream::pending()), client));
    assert!(server.is_stopped());
    assert_eq!(last, Some(SignalEvent::Stopped));
}

#[tokio::test]
async fn node_stats_reach_the_application_tagged_with_the_sender() {
    let mut running = start(config());
    let mut node = join(&running.connector, 1, Codec::Bincode).await;
    let stats = vec![NodeStat { id: id(2), version: "0.9".into(), ping_ms: 20, ping_rx: 4 }];
    node.send_stats(stats.clone()).await.unwrap();
    let seen = wait_event(&mut running.events, |e| matches!(e, SignalEvent::NodeStats { .. })).await;
    assert!(
        matches!(seen.as_slice(), [SignalEvent::NewNode(joined), SignalEvent::NodeStats { from, stats: got }]
            if joined.id == id(1) && *from == id(1) && *got == stats),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_refused_handshake_reports_the_servers_reason() {
    let running = start(config().with_max_connections(1));
    let _first = join(&running.connector, 1, Codec::Json).await;
    let conn = running.connector.connect(Codec::Json).await.unwrap();
    let info = NodeInfo::new("late", "test", [0; 32]);
    let refused = within("refusal", AsyncClient::connect(conn, key(2), info)).await;
    assert_eq!(refused.unwrap_err(), ClientError::Refused("server full".into()));
}

#[tokio::test]
async fn the_handle_lists_disconnects_and_sends_to_nodes() {
    let mut running = start(config());
    let mut a = join(&running.connector, 1, Codec::Json).await;
    let mut b = join(&running.connector, 2, Codec::Bincode).await;
    let joined =
        wait_event(&mut running.events, |e| matches!(e, SignalEvent::NewNode(n) if n.id == id(2))).await;
    assert!(matches!(&joined[..], [SignalEvent::NewNode(n), _] if n.id == id(1) && n.info.name == "node-1"));

    let mut nodes = within("list", running.handle.nodes()).await.unwrap();
    nodes.sort_by_key(|n| n.info.name.clone());
    let listed: Vec<(NodeID, Codec)> = nodes.iter().map(|n| (n.id, n.codec)).collect();
    assert_eq!(listed, vec![(id(1), Codec::Json), (id(2), Codec::Bincode)]);
    assert!(nodes.iter().all(|n| n.addr.is_none()), "the memory transport knows no addresses");

    // A frame of the application's, in each node's codec.
    let config = FledgerConfig { system_realm: Some(RealmID::from([5; 32])) };
    for (node, client) in [(id(1), &mut a), (id(2), &mut b)] {
        let message = WSSignalMessageToNode::SystemConfig(config.clone());
        within("send", running.handle.send(node, message)).await.unwrap();
        // A client takes a new SystemConfig as the server's word on the system, as at the start.
        // Lists from the joins may come first.
        let got = within("system config", async {
            loop {
                match client.next_event().await {
                    Ok(ClientEvent::NodeList(_)) => {}
                    other => return other,
                }
            }
        })
        .await;
        assert_eq!(got, Ok(ClientEvent::Connected(config.clone())));
    }

    within("disconnect", running.handle.disconnect(id(1), "going down for maintenance")).await.unwrap();
    assert_eq!(
        drain_until_closed(&mut a).await,
        vec![ClientEvent::Error("going down for maintenance".into())]
    );
    wait_event(&mut running.events, |e| *e == SignalEvent::NodeLeft(id(1))).await;
    let left: Vec<NodeID> =
        within("list", running.handle.nodes()).await.unwrap().iter().map(|n| n.id).collect();
    assert_eq!(left, vec![id(2)]);
    assert_eq!(
        within("disconnect", running.handle.disconnect(id(1), "again")).await,
        Err(ControlError::UnknownNode(id(1)))
    );
    assert_eq!(
        within("send", running.handle.send(id(1), WSSignalMessageToNode::SystemConfig(config))).await,
        Err(ControlError::UnknownNode(id(1)))
    );

    running.handle.stop();
    within("shutdown", running.server).await.unwrap();
    assert_eq!(within("after", running.handle.nodes()).await, Err(ControlError::Stopped));
}

/// A transport that always has another frame ready, for a connection the server never heard of.
struct Flood;

#[async_trait::async_trait]
impl peer_signal::Transport for Flood {
    async fn next_event(&mut self) -> Option<peer_signal::TransportEvent> {
        self.try_next_event()
    }

    fn try_next_event(&mut self) -> Option<peer_signal::TransportEvent> {
        let frame = bytes::Bytes::from_static(b"\"ListIDsRequest\"");
        Some(peer_signal::TransportEvent::Frame { conn: peer_signal::ConnId::new(1), frame })
    }

    fn send(&mut self, _: peer_signal::ConnId, _: bytes::Bytes) -> Result<(), TransportError> {
        Ok(())
    }

    fn close(&mut self, _: peer_signal::ConnId, _: peer_signal::CloseReason) {}
}

/// Events the transport has ready are taken without waiting, but a stop still goes first: a
/// transport that is never empty cannot keep the server running.
#[tokio::test]
async fn a_stop_goes_ahead_of_a_transport_that_always_has_more() {
    let (driver, handle, _events) = Driver::new(SignalServer::new(config()).unwrap(), Flood, 64);
    let server = tokio::spawn(driver.run(futures::stream::pending()));
    // The driver yields every 64 inputs, so this task gets its turn while the flood goes on.
    tokio::task::yield_now().await;
    handle.stop();
    assert!(within("stop", server).await.unwrap().is_stopped());
}
