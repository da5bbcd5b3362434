//! Layer 2 for several instances: real drivers, each with its memory transport and a backplane on
//! one `MemoryBus`. Checks the wiring only (outputs reach the bus, its inputs reach the server);
//! the rules are `tests/cluster.rs`'s.

mod nodes;

use futures::StreamExt;
use nodes::{config, id, join, next_setup, within};
use peer_signal::{
    ClientEvent, ClusterConfig, Codec, Driver, DriverHandle, MemoryBus, MemoryConnector, MemoryTransport,
    PeerInfo, PeerMessage, SignalServer,
};
use tokio::task::JoinHandle;

struct Instance {
    connector: MemoryConnector,
    handle: DriverHandle,
    server: JoinHandle<SignalServer>,
}

fn start(bus: &MemoryBus) -> Instance {
    let config = config();
    let (transport, connector) = MemoryTransport::new(&config);
    let server = SignalServer::with_cluster(config, ClusterConfig::default()).unwrap();
    let (driver, handle, mut events) = Driver::with_backplane(server, transport, bus.instance(), 1024);
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let server = tokio::spawn(driver.run(futures::stream::pending()));
    Instance { connector, handle, server }
}

#[tokio::test]
async fn drivers_on_one_bus_relay_across_instances_and_list_each_others_nodes() {
    let bus = MemoryBus::new(1024);
    let (a_side, b_side) = (start(&bus), start(&bus));
    let mut a = join(&a_side.connector, 1, Codec::Json).await;
    let mut b = join(&b_side.connector, 2, Codec::Bincode).await;
    within("b listed on a", async {
        while !a.list().await.unwrap().iter().any(|n| n.id() == id(2)) {
            tokio::task::yield_now().await;
        }
    })
    .await;
    for (from_a, message) in [(true, PeerMessage::Init), (false, PeerMessage::Offer("v=0".into()))] {
        let setup = PeerInfo { id_init: id(1), id_follow: id(2), message };
        if from_a {
            a.send_setup(setup.clone()).await.unwrap();
            assert_eq!(next_setup(&mut b).await, setup);
        } else {
            b.send_setup(setup.clone()).await.unwrap();
            assert_eq!(next_setup(&mut a).await, setup);
        }
    }
    // Instance b dies: a's relays to its node fail at once.
    bus.kill(1);
    a.send_setup(PeerInfo { id_init: id(1), id_follow: id(2), message: PeerMessage::Init }).await.unwrap();
    let error = within("error", async {
        loop {
            match a.next_event().await.unwrap() {
                ClientEvent::Error(text) => return text,
                _ => continue,
            }
        }
    })
    .await;
    assert_eq!(error, format!("unknown destination {}", id(2)));
    for side in [a_side, b_side] {
        side.handle.stop();
        assert!(within("stop", side.server).await.unwrap().is_stopped());
    }
}

#[tokio::test]
async fn control_reaches_a_node_on_another_instance_and_a_node_nowhere_is_unknown() {
    let bus = MemoryBus::new(1024);
    let (a_side, b_side) = (start(&bus), start(&bus));
    let mut b = join(&b_side.connector, 2, Codec::Json).await;
    let _c = join(&b_side.connector, 3, Codec::Json).await;
    let _d = join(&a_side.connector, 4, Codec::Json).await;
    // Where the nodes are, from instance a.
    assert_eq!(a_side.handle.locate(id(2)).await.unwrap(), peer_signal::Located::Elsewhere);
    assert!(
        matches!(a_side.handle.locate(id(4)).await.unwrap(), peer_signal::Located::Here(node) if node.id == id(4))
    );
    assert_eq!(a_side.handle.locate(id(9)).await.unwrap_err(), peer_signal::ControlError::UnknownNode(id(9)));
    // The application of instance a, for nodes of instance b.
    let config = peer_signal::FledgerConfig { system_realm: None };
    a_side
        .handle
        .send(id(2), peer_signal::WSSignalMessageToNode::SystemConfig(config.clone()))
        .await
        .unwrap();
    let got = within("the message", async {
        loop {
            match b.next_event().await.unwrap() {
                ClientEvent::Connected(config) => return config,
                _ => continue,
            }
        }
    })
    .await;
    assert_eq!(got, config);
    a_side.handle.disconnect(id(2), "maintenance").await.unwrap();
    let events = nodes::drain_until_closed(&mut b).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("maintenance".into())), "{events:?}");
    assert!(b_side.handle.nodes().await.unwrap().iter().all(|node| node.info.id() != id(2)));
    // Nobody holds this one.
    let unknown = a_side.handle.disconnect(id(9), "x").await.unwrap_err();
    assert_eq!(unknown, peer_signal::ControlError::UnknownNode(id(9)));
    // Instance b cut off: its nodes are unknown to a's commands at once.
    bus.kill(1);
    let cut = a_side.handle.disconnect(id(3), "x").await.unwrap_err();
    assert_eq!(cut, peer_signal::ControlError::UnknownNode(id(3)));
    for side in [a_side, b_side] {
        side.handle.stop();
        assert!(within("stop", side.server).await.unwrap().is_stopped());
    }
}
