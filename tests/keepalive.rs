//! A node that only waits stays listed when its client keeps it alive, over the in-memory
//! transport and the real driver, in tokio's paused (virtual) time: three minutes pass at once.

mod nodes;

use std::sync::Arc;
use std::time::Duration;

use nodes::{config, id, join, within};
use peer_signal::{ClientError, Codec, NodeInfo, TokioTimer};

#[tokio::test(start_paused = true)]
async fn a_node_kept_alive_outlives_the_ttl_and_one_that_is_not_does_not() {
    let config = config().with_ttl(Duration::from_secs(120));
    // The server's clock and ticks are tokio's, so the paused time drives them too.
    let connector = nodes::start_ticking(config).connector;

    // Alice keeps herself alive every minute, as fledger nodes do; Carol does not. Both only
    // wait for events.
    let mut alice = join(&connector, 1, Codec::Json).await;
    alice.keep_alive(Duration::from_secs(60), Arc::new(TokioTimer));
    let mut carol = join(&connector, 3, Codec::Json).await;
    let alice_task = tokio::spawn(async move { while alice.next_event().await.is_ok() {} });
    let carol_task = tokio::spawn(async move {
        loop {
            match carol.next_event().await {
                Ok(_) => {}
                Err(error) => return error,
            }
        }
    });

    // Three minutes later Bob arrives: Alice is listed, Carol was closed at the TTL.
    tokio::time::sleep(Duration::from_secs(180)).await;
    let mut bob = join(&connector, 2, Codec::Bincode).await;
    let listed: Vec<_> = within("list", bob.list()).await.unwrap().iter().map(NodeInfo::id).collect();
    assert!(listed.contains(&id(1)), "alice is gone: {listed:?}");
    assert!(!listed.contains(&id(3)), "carol outlived the ttl");
    assert_eq!(within("carol", carol_task).await.unwrap(), ClientError::Closed);
    assert!(!alice_task.is_finished());
    alice_task.abort();
}

#[tokio::test(start_paused = true)]
async fn the_keepalive_goes_on_after_a_reconnection() {
    use futures::{FutureExt, StreamExt};
    use peer_signal::{AsyncClient, ClientConfig, ClientEvent, SignalEvent};

    // Whichever server is up; each on tokio's clock, ticked every second, with a TTL of 120 s.
    let slot = nodes::ServerSlot::default();
    let start = |slot: &nodes::ServerSlot| {
        let running = nodes::start_ticking(config().with_ttl(Duration::from_secs(120)));
        slot.set(Some(running.connector));
        (running.handle, running.events, running.server)
    };
    let reconnect = slot.reconnect();
    let (first, _, first_task) = start(&slot);
    let key = nodes::key(1);
    let info = NodeInfo::new("alice", "test", key.verifying_key().to_bytes());
    let config = ClientConfig::default().with_keepalive(Duration::from_secs(60));
    let mut alice =
        AsyncClient::connect_reconnecting_with(reconnect, key, info, config, Arc::new(TokioTimer))
            .await
            .unwrap();
    // The server restarts; Alice comes back to the new one.
    first.stop();
    within("stopped", first_task).await.unwrap();
    let (_second, mut events, _task) = start(&slot);
    loop {
        match within("back", alice.next_event()).await {
            Ok(ClientEvent::Connected(_)) => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    // Five minutes on the new server, well past its TTL: still there, kept alive.
    let alice_task = tokio::spawn(async move {
        loop {
            match alice.next_event().await {
                Ok(ClientEvent::Disconnected) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(!alice_task.is_finished(), "alice lost her connection");
    let mut left = false;
    while let Some(Some(event)) = events.next().now_or_never() {
        left |= matches!(event, SignalEvent::NodeLeft(node) if node == id(1));
    }
    assert!(!left, "the server closed alice");
    alice_task.abort();
}
