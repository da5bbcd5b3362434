//! Layer 2: the real driver over the in-memory transport, with many nodes. Wiring only: codec
//! selection, routing of frames to the right connection, close propagation, slow readers.

mod nodes;

use std::collections::BTreeSet;

use bytes::Bytes;
use futures::FutureExt;
use nodes::{config, drain_until_closed, id, join, next_setup, start, wait_event, within, Node};
use peer_signal::{
    ClientEvent, CloseReason, Codec, ConnId, MemoryClient, MemoryConnector, MemoryTransport, NodeID,
    PeerInfo, PeerMessage, SignalEvent, Transport, TransportError, TransportEvent, WSSignalMessageToNode,
};

/// Mixes the codecs so that some pairs share one (the frame is forwarded as is) and some do not
/// (the server re-encodes it).
fn codec(i: u32) -> Codec {
    if i % 3 == 0 {
        Codec::Bincode
    } else {
        Codec::Json
    }
}

async fn join_all(connector: &MemoryConnector, count: u32) -> Vec<Node> {
    let joins: Vec<_> = (0..count)
        .map(|i| {
            let connector = connector.clone();
            tokio::spawn(async move { join(&connector, i, codec(i)).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for join in joins {
        nodes.push(join.await.unwrap());
    }
    nodes
}

#[tokio::test]
async fn two_hundred_nodes_join_and_each_lists_all_the_others() {
    let mut running = start(config());
    let nodes = join_all(&running.connector, 200).await;
    let everybody: BTreeSet<NodeID> = (0..200).map(id).collect();

    let lists: Vec<_> = nodes
        .into_iter()
        .map(|mut node| {
            tokio::spawn(async move {
                let list = within("list", node.list()).await.unwrap();
                (node.id(), list)
            })
        })
        .collect();
    for list in lists {
        let (me, list) = list.await.unwrap();
        let listed: BTreeSet<NodeID> = list.iter().map(|info| info.id()).collect();
        assert_eq!(list.len(), 200, "{me}: duplicates or missing nodes");
        assert_eq!(listed, everybody, "{me} does not see everybody");
    }

    // Every join's event was emitted before the joins' lists were answered.
    let mut new_nodes = BTreeSet::new();
    while let Some(Some(event)) = futures::StreamExt::next(&mut running.events).now_or_never() {
        if let SignalEvent::NewNode(node) = event {
            new_nodes.insert(node.id);
        }
    }
    assert_eq!(new_nodes, everybody);
}

/// What node `i` of the pair expects to receive, in order, and sends.
fn setup(init: u32, follow: u32, message: PeerMessage) -> PeerInfo {
    PeerInfo { id_init: id(init), id_follow: id(follow), message }
}

#[tokio::test]
async fn hundred_pairs_exchange_init_offer_answer_ice_exactly_once() {
    let mut running = start(config());
    let mut nodes = join_all(&running.connector, 200).await.into_iter();
    let initiators: Vec<Node> = nodes.by_ref().take(100).collect();
    let followers: Vec<Node> = nodes.collect();

    let mut tasks = Vec::new();
    for (p, (mut a, mut b)) in (0..100u32).zip(initiators.into_iter().zip(followers)) {
        let follow = p + 100;
        tasks.push(tokio::spawn(async move {
            a.send_init(id(follow)).await.unwrap();
            let offer = next_setup(&mut a).await;
            a.send_reply(&offer, PeerMessage::Answer(format!("answer {p}"))).await.unwrap();
            a.send_reply(&offer, PeerMessage::IceCandidate(format!("ice {p} from init"))).await.unwrap();
            let ice = next_setup(&mut a).await;
            (a, vec![offer, ice])
        }));
        tasks.push(tokio::spawn(async move {
            let init = next_setup(&mut b).await;
            b.send_reply(&init, PeerMessage::Offer(format!("offer {p}"))).await.unwrap();
            let answer = next_setup(&mut b).await;
            b.send_reply(&init, PeerMessage::IceCandidate(format!("ice {p} from follow"))).await.unwrap();
            let ice = next_setup(&mut b).await;
            (b, vec![init, answer, ice])
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }

    // Every message sent has been received, so the server has routed all of them. Stopping
    // flushes whatever else it queued for anyone: a stray copy would show up in the drain.
    running.handle.stop();
    let server = running.server.await.unwrap();
    assert_eq!(server.stats().relays, 500);
    for (mut node, mut received) in done {
        let rest = drain_until_closed(&mut node).await;
        received.extend(rest.into_iter().filter_map(|event| match event {
            ClientEvent::PeerSetup(setup) => Some(setup),
            ClientEvent::NodeList(_) => None,
            other => panic!("unexpected {other:?}"),
        }));
        let me = (0..200).find(|&i| id(i) == node.id()).unwrap();
        let expected = if me < 100 {
            vec![
                setup(me, me + 100, PeerMessage::Offer(format!("offer {me}"))),
                setup(me, me + 100, PeerMessage::IceCandidate(format!("ice {me} from follow"))),
            ]
        } else {
            let p = me - 100;
            vec![
                setup(p, me, PeerMessage::Init),
                setup(p, me, PeerMessage::Answer(format!("answer {p}"))),
                setup(p, me, PeerMessage::IceCandidate(format!("ice {p} from init"))),
            ]
        };
        assert_eq!(received, expected, "node {me}");
    }
    let left = wait_event(&mut running.events, |e| *e == SignalEvent::Stopped).await;
    assert!(!left.iter().any(|e| matches!(e, SignalEvent::NodeLeft(_))), "nobody left before the stop");
}

#[tokio::test]
async fn a_dropped_node_is_gone_from_the_next_list() {
    let mut running = start(config());
    let mut a = join(&running.connector, 1, Codec::Json).await;
    let b = join(&running.connector, 2, Codec::Bincode).await;
    let before: BTreeSet<NodeID> = a.list().await.unwrap().iter().map(|n| n.id()).collect();
    assert_eq!(before, BTreeSet::from([id(1), id(2)]));

    drop(b);
    wait_event(&mut running.events, |e| *e == SignalEvent::NodeLeft(id(2))).await;
    let after: Vec<NodeID> = a.list().await.unwrap().iter().map(|n| n.id()).collect();
    assert_eq!(after, vec![id(1)]);
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_while_the_others_go_on() {
    let backlog = 4;
    let mut running = start(config().with_max_send_backlog(backlog));
    let mut a = join(&running.connector, 1, Codec::Json).await;
    let mut b = join(&running.connector, 2, Codec::Json).await;
    let mut slow = join(&running.connector, 3, Codec::Bincode).await;

    // Each request is answered with a list the slow node never reads; its queue holds `backlog`.
    let mut refused_at = None;
    for i in 0..100 {
        if slow.request_list().await.is_err() {
            refused_at = Some(i);
            break;
        }
    }
    assert!(refused_at.is_some(), "the slow client was never closed");
    wait_event(&mut running.events, |e| *e == SignalEvent::NodeLeft(id(3))).await;
    let slow = slow.into_inner();
    let mut unread = 0;
    while within("slow drain", slow.recv()).await.is_some() {
        unread += 1;
    }
    assert!(unread <= backlog, "{unread} frames queued for a client whose queue holds {backlog}");

    let listed: BTreeSet<NodeID> = a.list().await.unwrap().iter().map(|n| n.id()).collect();
    assert_eq!(listed, BTreeSet::from([id(1), id(2)]));
    a.send_init(id(2)).await.unwrap();
    assert_eq!(next_setup(&mut b).await, setup(1, 2, PeerMessage::Init));
}

#[tokio::test]
async fn each_connection_speaks_the_codec_it_chose() {
    let running = start(config());
    for codec in [Codec::Json, Codec::Bincode] {
        let client = running.connector.connect(codec).await.unwrap();
        assert_eq!(client.codec(), codec);
        let frame = within("challenge", client.recv()).await.unwrap();
        let challenge: WSSignalMessageToNode = codec.decode(&frame).unwrap();
        assert!(matches!(challenge, WSSignalMessageToNode::Challenge(3, _)));
        let other = if codec == Codec::Json { Codec::Bincode } else { Codec::Json };
        assert!(
            other.decode::<WSSignalMessageToNode>(&frame).is_err(),
            "{codec:?} frame also decodes as {other:?}"
        );
    }
}

// The transport on its own, without a driver: polled by hand, so "nothing more" is checkable.

fn next_now(transport: &mut MemoryTransport) -> Option<Option<TransportEvent>> {
    transport.next_event().now_or_never()
}

/// The transport's next event; fails the test instead of hanging.
async fn next(transport: &mut MemoryTransport) -> Option<TransportEvent> {
    within("transport event", transport.next_event()).await
}

async fn recv(client: &MemoryClient) -> Option<Bytes> {
    within("frame", client.recv()).await
}

/// Connects a client and checks that the transport reports it, with its codec.
async fn open(transport: &mut MemoryTransport, connector: &MemoryConnector, codec: Codec) -> MemoryClient {
    let client = connector.connect(codec).await.unwrap();
    assert_eq!(
        next(transport).await,
        Some(TransportEvent::Opened { conn: client.conn(), codec, addr: None })
    );
    client
}

#[tokio::test]
async fn connection_ids_are_unique_and_never_reused() {
    let (mut transport, connector) = MemoryTransport::with_capacity(8);
    let first = open(&mut transport, &connector, Codec::Json).await;
    let second = open(&mut transport, &connector, Codec::Bincode).await;
    let gone = second.conn();
    drop(second);
    assert_eq!(next(&mut transport).await, Some(TransportEvent::Closed { conn: gone }));
    assert_eq!(next_now(&mut transport), None, "one Closed per connection");

    let third = open(&mut transport, &connector, Codec::Json).await;
    let ids = [first.conn(), gone, third.conn()];
    assert_eq!(ids, [ConnId::new(1), ConnId::new(2), ConnId::new(3)]);
    assert_eq!(transport.connections(), 2);
}

#[tokio::test]
async fn frames_travel_both_ways_and_a_close_delivers_the_queued_frames_first() {
    let (mut transport, connector) = MemoryTransport::with_capacity(8);
    let client = open(&mut transport, &connector, Codec::Json).await;
    let conn = client.conn();

    client.send(Bytes::from_static(b"up")).await.unwrap();
    assert_eq!(
        next(&mut transport).await,
        Some(TransportEvent::Frame { conn, frame: Bytes::from_static(b"up") })
    );

    transport.send(conn, Bytes::from_static(b"one")).unwrap();
    transport.send(conn, Bytes::from_static(b"two")).unwrap();
    transport.close(conn, CloseReason::Stopped);
    assert_eq!(transport.send(conn, Bytes::from_static(b"late")), Err(TransportError::Closed(conn)));
    assert_eq!(next(&mut transport).await, Some(TransportEvent::Closed { conn }));
    assert_eq!(next_now(&mut transport), None);

    assert_eq!(recv(&client).await.as_deref(), Some(&b"one"[..]));
    assert_eq!(recv(&client).await.as_deref(), Some(&b"two"[..]));
    assert_eq!(recv(&client).await, None);
    assert_eq!(client.send(Bytes::from_static(b"after")).await, Err(TransportError::Closed(conn)));
    transport.close(conn, CloseReason::Stopped);
    assert_eq!(next_now(&mut transport), None, "closing twice reports nothing more");
}

#[tokio::test]
async fn a_full_queue_closes_the_connection_instead_of_growing() {
    let (mut transport, connector) = MemoryTransport::with_capacity(2);
    let slow = open(&mut transport, &connector, Codec::Json).await;
    let other = open(&mut transport, &connector, Codec::Bincode).await;
    transport.send(slow.conn(), Bytes::from_static(b"1")).unwrap();
    transport.send(slow.conn(), Bytes::from_static(b"2")).unwrap();
    assert_eq!(
        transport.send(slow.conn(), Bytes::from_static(b"3")),
        Err(TransportError::Closed(slow.conn()))
    );
    assert_eq!(next(&mut transport).await, Some(TransportEvent::Closed { conn: slow.conn() }));

    transport.send(other.conn(), Bytes::from_static(b"fine")).unwrap();
    assert_eq!(recv(&other).await.as_deref(), Some(&b"fine"[..]));
    assert_eq!(recv(&slow).await.as_deref(), Some(&b"1"[..]));
    assert_eq!(recv(&slow).await.as_deref(), Some(&b"2"[..]));
    assert_eq!(recv(&slow).await, None);
}

#[tokio::test]
async fn the_transport_shuts_down_once_no_connector_and_no_connection_is_left() {
    let (mut transport, connector) = MemoryTransport::with_capacity(4);
    let client = open(&mut transport, &connector, Codec::Json).await;
    let conn = client.conn();
    drop(connector);
    assert_eq!(next_now(&mut transport), None, "a connection is still open");
    drop(client);
    assert_eq!(next(&mut transport).await, Some(TransportEvent::Closed { conn }));
    assert_eq!(next(&mut transport).await, None);

    let (transport, connector) = MemoryTransport::with_capacity(4);
    drop(transport);
    assert_eq!(connector.connect(Codec::Json).await.unwrap_err(), TransportError::Shutdown);
}

#[tokio::test]
async fn frames_a_client_sent_before_it_left_come_before_its_close_even_when_a_send_fails_first() {
    let config = config();
    let (mut transport, connector) = MemoryTransport::new(&config);
    let client = connector.connect(Codec::Json).await.unwrap();
    let Some(TransportEvent::Opened { conn, .. }) = within("opened", transport.next_event()).await else {
        panic!("no open")
    };
    client.send(Bytes::from_static(b"\"ListIDsRequest\"")).await.unwrap();
    drop(client);
    // The server sends before it has read that frame: the send fails...
    assert!(transport.send(conn, Bytes::from_static(b"\"late\"")).is_err());
    // ...and the frame still comes, before the close.
    let frame = within("frame", transport.next_event()).await;
    assert_eq!(frame, Some(TransportEvent::Frame { conn, frame: Bytes::from_static(b"\"ListIDsRequest\"") }));
    assert_eq!(within("close", transport.next_event()).await, Some(TransportEvent::Closed { conn }));
}

/// What a driver takes without waiting: the same events as `next_event`, in the same order, and
/// `None` both when nothing is ready and once the transport has ended (which `next_event` tells).
#[tokio::test]
async fn events_ready_now_come_without_waiting_in_order() {
    let (mut transport, connector) = MemoryTransport::with_capacity(8);
    assert_eq!(transport.try_next_event(), None, "nothing has happened");
    let client = connector.connect(Codec::Bincode).await.unwrap();
    let conn = client.conn();
    assert_eq!(
        transport.try_next_event(),
        Some(TransportEvent::Opened { conn, codec: Codec::Bincode, addr: None })
    );
    for frame in [&b"a"[..], b"b", b"c"] {
        client.send(Bytes::from_static(frame)).await.unwrap();
    }
    drop(client);
    drop(connector);
    for frame in [&b"a"[..], b"b", b"c"] {
        assert_eq!(
            transport.try_next_event(),
            Some(TransportEvent::Frame { conn, frame: Bytes::from_static(frame) })
        );
    }
    assert_eq!(transport.try_next_event(), Some(TransportEvent::Closed { conn }));
    assert_eq!(transport.try_next_event(), None);
    assert_eq!(next(&mut transport).await, None, "the end is next_event's to tell");
}
