//! Several instances, one network, through the in-memory bus: relays across instances in both
//! codecs, undeliverable relays, the same id on two instances, the bus going down and up, lists
//! with remote nodes, and the checks on what comes from the bus. Virtual time, fixed seeds.

mod net;

use bytes::Bytes;
use net::{closed, error, id, Joined, Net};
use peer_signal::{
    ClusterConfig, ClusterIn, Codec, PeerInfo, PeerMessage, SignalConfig, SignalIn, SignalOut, SignalServer,
    WSSignalMessageFromNode, WSSignalMessageToNode,
};

fn config() -> SignalConfig {
    SignalConfig::default().with_list_push_fanout(0)
}

fn setup(from: Joined, to: Joined, message: PeerMessage) -> (WSSignalMessageFromNode, PeerInfo) {
    let info = PeerInfo { id_init: from.id, id_follow: to.id, message };
    (WSSignalMessageFromNode::PeerSetup(info.clone()), info)
}

#[test]
fn set_ups_cross_instances_in_both_codecs() {
    let mut net = Net::new(3, config());
    let a = net.join(0, 1, Codec::Json);
    let b = net.join(1, 2, Codec::Bincode);
    let c = net.join(2, 3, Codec::Json);
    for (from, to, message) in [
        (a, b, PeerMessage::Init),
        (b, a, PeerMessage::Offer("v=0 offer".into())),
        (a, b, PeerMessage::Answer("v=0 \"answer\"\n".into())),
        (a, c, PeerMessage::IceCandidate("candidate:1 1 udp 2 192.0.2.1 3 typ host".into())),
        (c, b, PeerMessage::Init),
    ] {
        let (message, info) = setup(from, to, message);
        let seen = net.send(from, &message);
        assert_eq!(Net::received(&seen, to), [WSSignalMessageToNode::PeerSetup(info)], "{from:?} → {to:?}");
        assert!(Net::received(&seen, from).is_empty(), "the sender got {:?}", Net::received(&seen, from));
    }
    // Same codec at both ends: the frame crosses the bus byte for byte.
    let (message, _) = setup(a, c, PeerMessage::Offer("v=0".into()));
    let sent = a.codec.encode(&message).unwrap();
    let seen = net.send(a, &message);
    assert_eq!(net::frames_to(&seen, c.conn), [sent]);
    let stats = |i: usize| net.servers[i].stats().cluster.unwrap();
    assert_eq!((stats(0).relays_out, stats(0).relays_in), (4, 1));
    assert_eq!((stats(1).relays_out, stats(1).relays_in), (1, 3));
    assert_eq!((stats(2).relays_out, stats(2).relays_in), (1, 2));
}

#[test]
fn a_relay_to_a_node_nowhere_is_unknown_destination_without_a_strike() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let gone = Joined { instance: 1, conn: a.conn, id: id(9), codec: Codec::Json };
    let expected = error(&format!("unknown destination {}", id(9)));
    // More than max_errors: none of them is a strike.
    for _ in 0..2 * config().max_errors {
        let seen = net.send(a, &setup(a, gone, PeerMessage::Init).0);
        assert_eq!(Net::received(&seen, a), std::slice::from_ref(&expected));
        assert!(closed(&seen).is_empty());
    }
    // A node that has left another instance is nowhere too.
    let b = net.join(1, 2, Codec::Bincode);
    net.input(1, SignalIn::Closed { conn: b.conn });
    let seen = net.send(a, &setup(a, b, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, a), [error(&format!("unknown destination {}", b.id))]);
    assert_eq!(net.servers[0].stats().cluster.unwrap().undeliverable, 2 * u64::from(config().max_errors) + 1);
}

#[test]
fn the_newer_connection_of_an_id_wins_on_every_instance() {
    let mut net = Net::new(3, config());
    let old = net.join(0, 5, Codec::Json);
    let c = net.join(2, 3, Codec::Json);
    let newer = net.announce_held(1, 5, Codec::Bincode);
    let seen = net.settle();
    assert_eq!(Net::received(&seen, old), [error("New Connection with same ID")]);
    assert_eq!(closed(&seen), [old.conn]);
    assert_eq!(net.holders(&id(5)), [1]);
    assert_eq!(net.bus.holders(&id(5)), [1]);
    assert_eq!(net.servers[0].stats().cluster.unwrap().taken_over, 1);
    // Relays reach the new connection only.
    let (message, info) = setup(c, newer, PeerMessage::Init);
    let seen = net.send(c, &message);
    assert_eq!(Net::received(&seen, newer), [WSSignalMessageToNode::PeerSetup(info)]);
    assert!(net::frames_to(&seen, old.conn).is_empty());
}

#[test]
fn two_connections_of_one_id_at_once_leave_exactly_the_later_claim() {
    for first in [0, 1] {
        let mut net = Net::new(2, config());
        // Both announces are handled before the bus moves: neither instance knows of the other.
        let x = net.announce_held(first, 5, Codec::Json);
        let y = net.announce_held(1 - first, 5, Codec::Json);
        assert_eq!(net.holders(&id(5)).len(), 2);
        let seen = net.settle();
        // The bus ranks the claims in the order they reached it: `first` handed its claim over
        // first, so the other one is newer.
        assert_eq!(net.holders(&id(5)), [y.instance], "first = {first}");
        assert_eq!(net.bus.holders(&id(5)), [y.instance]);
        assert_eq!(closed(&seen), [x.conn]);
    }
}

#[test]
fn a_takeover_heard_before_the_own_rank_is_kept_until_the_rank_arrives() {
    let cluster = ClusterConfig::default();
    for (theirs, mine, replaced) in [(5, 3, true), (5, 7, false)] {
        let mut net = Net::with(1, config(), cluster.clone());
        let x = net.announce_held(0, 5, Codec::Json);
        // Take the Joined off the server without giving it to the bus.
        let joined = std::iter::from_fn(|| net.servers[0].poll_output())
            .find(|out| matches!(out, SignalOut::Cluster(_)))
            .expect("a Joined");
        assert!(
            matches!(&joined, SignalOut::Cluster(out) if matches!(**out, peer_signal::ClusterOut::Joined { .. }))
        );
        let seen = net.bus_input(0, ClusterIn::TakenOver { id: x.id, gen: theirs });
        assert!(closed(&seen).is_empty(), "closed before its own rank was known");
        let seen = net.bus_input(0, ClusterIn::Claimed { id: x.id, conn: x.conn, gen: mine });
        assert_eq!(closed(&seen).contains(&x.conn), replaced, "theirs {theirs}, mine {mine}");
    }
}

#[test]
fn without_the_bus_an_instance_serves_its_own_nodes_and_refuses_remote_relays_at_once() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let a2 = net.join(0, 2, Codec::Bincode);
    let b = net.join(1, 3, Codec::Json);
    net.bus.set_up(0, false);
    net.settle();
    assert!(!net.servers[0].stats().cluster.unwrap().up);
    // Remote relays: an error at once, no relay handed to the bus.
    let seen = net.send(a, &setup(a, b, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, a), [error(&format!("unknown destination {}", b.id))]);
    assert_eq!(net.servers[0].stats().cluster.unwrap().relays_out, 0);
    // And from the other side: a is nowhere on the bus.
    let seen = net.send(b, &setup(b, a, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, b), [error(&format!("unknown destination {}", a.id))]);
    // Local service goes on.
    let (message, info) = setup(a, a2, PeerMessage::Offer("v=0".into()));
    let seen = net.send(a, &message);
    assert_eq!(Net::received(&seen, a2), [WSSignalMessageToNode::PeerSetup(info)]);
    // Lists hold the local nodes only.
    let seen = net.send(a, &WSSignalMessageFromNode::ListIDsRequest);
    let [WSSignalMessageToNode::ListIDsReply(list)] = &Net::received(&seen, a)[..] else { panic!() };
    let mut listed: Vec<_> = list.iter().map(|n| n.id()).collect();
    listed.sort_unstable();
    let mut local = vec![a.id, a2.id];
    local.sort_unstable();
    assert_eq!(listed, local);

    // Meanwhile node 2 reconnects to instance 1; node 4 joins instance 0.
    let a2_new = net.join(1, 2, Codec::Json);
    let d = net.join(0, 4, Codec::Json);
    net.bus.set_up(0, true);
    let seen = net.settle();
    // Instance 0 registered its nodes again, except node 2, which is instance 1's now.
    assert_eq!(closed(&seen), [a2.conn]);
    assert_eq!(net.holders(&a2.id), [1]);
    for node in [a, d] {
        assert_eq!(net.bus.holders(&node.id), [0]);
    }
    let (message, info) = setup(b, d, PeerMessage::Init);
    let seen = net.send(b, &message);
    assert_eq!(Net::received(&seen, d), [WSSignalMessageToNode::PeerSetup(info)]);
    let (message, info) = setup(a, a2_new, PeerMessage::Init);
    let seen = net.send(a, &message);
    assert_eq!(Net::received(&seen, a2_new), [WSSignalMessageToNode::PeerSetup(info)]);
}

fn listed(net: &mut Net, node: Joined) -> Vec<peer_signal::NodeID> {
    let seen = net.send(node, &WSSignalMessageFromNode::ListIDsRequest);
    let [WSSignalMessageToNode::ListIDsReply(list)] = &Net::received(&seen, node)[..] else {
        panic!("no list")
    };
    let mut ids: Vec<_> = list.iter().map(|n| n.id()).collect();
    ids.sort_unstable();
    ids
}

#[test]
fn lists_include_remote_nodes_and_lose_those_of_a_dead_instance() {
    let mut net = Net::new(3, config());
    let a = net.join(0, 1, Codec::Json);
    let b = net.join(1, 2, Codec::Bincode);
    let c = net.join(2, 3, Codec::Json);
    let mut all = vec![a.id, b.id, c.id];
    all.sort_unstable();
    for node in [a, b, c] {
        assert_eq!(listed(&mut net, node), all, "instance {}", node.instance);
    }
    net.bus.kill(2);
    net.settle();
    assert_eq!(listed(&mut net, a), {
        let mut ids = vec![a.id, b.id];
        ids.sort_unstable();
        ids
    });
    // Relays to the dead instance's node: an error at once.
    let seen = net.send(a, &setup(a, c, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, a), [error(&format!("unknown destination {}", c.id))]);
}

#[test]
fn lists_mix_local_and_remote_nodes_in_proportion() {
    let config = config().with_max_list_len(8);
    let mut net = Net::new(2, config);
    let locals: Vec<Joined> = (1..=10).map(|n| net.join(0, n, Codec::Json)).collect();
    for n in 11..=40 {
        net.join(1, n, Codec::Bincode);
    }
    // 10 local, 30 remote: 8 places split 2 : 6.
    for _ in 0..20 {
        let ids = listed(&mut net, locals[0]);
        assert_eq!(ids.len(), 8);
        let local = ids.iter().filter(|id| locals.iter().any(|l| l.id == **id)).count();
        assert_eq!(local, 2, "{ids:?}");
    }
    // A pool smaller than the remote share: local nodes fill the rest.
    let mut net =
        Net::with(2, self::config().with_max_list_len(8), ClusterConfig::default().with_max_remote_pool(3));
    let locals: Vec<Joined> = (1..=10).map(|n| net.join(0, n, Codec::Json)).collect();
    for n in 11..=40 {
        net.join(1, n, Codec::Bincode);
    }
    let ids = listed(&mut net, locals[0]);
    let local = ids.iter().filter(|id| locals.iter().any(|l| l.id == **id)).count();
    assert_eq!((ids.len(), local), (8, 5));
    assert_eq!(net.servers[0].stats().cluster.unwrap().pool, 3);
}

#[test]
fn what_comes_from_the_bus_is_checked_like_a_frame_from_a_node() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let b = net.join(1, 2, Codec::Json);
    let other = Joined { instance: 1, conn: b.conn, id: id(7), codec: Codec::Json };
    let valid = Codec::Json.encode(&setup(b, a, PeerMessage::Init).0).unwrap();
    let not_for_a = Codec::Json.encode(&setup(b, other, PeerMessage::Init).0).unwrap();
    let too_long = Codec::Json
        .encode(&setup(b, a, PeerMessage::Offer("x".repeat(config().max_setup_len + 1))).0)
        .unwrap();
    let list = Codec::Json.encode(&WSSignalMessageFromNode::ListIDsRequest).unwrap();
    let huge = Bytes::from(vec![b'['; config().max_frame_size + 1]);
    for (frame, codec) in [
        (Bytes::from_static(b"not json"), Codec::Json),
        (valid.clone(), Codec::Bincode),
        (not_for_a, Codec::Json),
        (too_long, Codec::Json),
        (list, Codec::Json),
        (huge, Codec::Json),
    ] {
        let seen = net.bus_input(0, ClusterIn::Frame { to: a.id, codec, frame });
        assert!(seen.is_empty(), "{seen:?}");
    }
    assert_eq!(net.servers[0].stats().cluster.unwrap().rejected, 6);
    let seen = net.bus_input(0, ClusterIn::Frame { to: a.id, codec: Codec::Json, frame: valid });
    assert_eq!(net::frames_to(&seen, a.conn).len(), 1);
    // Samples: names over the limit and local ids stay out of the pool.
    let long = peer_signal::NodeInfo::new("n".repeat(config().max_name_len + 1), "test", [9; 32]);
    let fine = peer_signal::NodeInfo::new("fine", "test", [8; 32]);
    let local = peer_signal::NodeInfo::new("me", "test", *a.id.as_bytes());
    net.bus_input(0, ClusterIn::Sample { nodes: vec![long, fine.clone(), local, fine], total: 4 });
    let stats = net.servers[0].stats().cluster.unwrap();
    assert_eq!((stats.pool, stats.rejected), (1, 7));
}

#[test]
fn a_relay_for_a_busy_node_elsewhere_is_destination_busy() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let b = net.join(1, 2, Codec::Bincode);
    net.input(1, SignalIn::Busy { conn: b.conn, busy: true });
    let seen = net.send(a, &setup(a, b, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, a), [error(&format!("destination busy: {}", b.id))]);
    assert!(net::frames_to(&seen, b.conn).is_empty());
    assert!(closed(&seen).is_empty());
}

#[test]
fn stopping_an_instance_takes_its_nodes_off_the_bus() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let b = net.join(1, 2, Codec::Json);
    net.input(1, SignalIn::Stop);
    assert!(net.bus.holders(&b.id).is_empty());
    let seen = net.send(a, &setup(a, b, PeerMessage::Init).0);
    assert_eq!(Net::received(&seen, a), [error(&format!("unknown destination {}", b.id))]);
    assert_eq!(listed(&mut net, a), [a.id]);
}

#[test]
fn a_server_without_a_cluster_emits_nothing_for_one() {
    let mut server = SignalServer::new(config().with_rng_seed([7; 32])).unwrap();
    let now = std::time::Instant::now();
    server
        .handle(now, SignalIn::Opened { conn: peer_signal::ConnId::new(1), codec: Codec::Json, addr: None });
    let out: Vec<SignalOut> = std::iter::from_fn(|| server.poll_output()).collect();
    assert!(out.iter().all(|o| !matches!(o, SignalOut::Cluster(_))));
    assert_eq!(server.stats().cluster, None);
}

/// The cluster's inputs and outputs are boxed: a server without a cluster moves what it moved
/// before its cluster variants existed, 48 and 56 bytes.
#[cfg(target_pointer_width = "64")]
#[test]
fn inputs_and_outputs_stay_as_small_as_without_a_cluster() {
    assert_eq!(std::mem::size_of::<SignalIn>(), 48);
    assert_eq!(std::mem::size_of::<SignalOut>(), 56);
}

#[test]
fn a_frame_for_a_node_that_left_is_bounced_but_not_one_for_a_node_that_moved() {
    let mut net = Net::new(3, config());
    let a = net.join(0, 1, Codec::Json);
    let x = net.join(1, 5, Codec::Json);
    let frame = |to: Joined| Codec::Json.encode(&setup(a, to, PeerMessage::Init).0).unwrap();
    // Node 9 never was on instance 1 (or left just now): a's relay is bounced to a.
    let gone = Joined { instance: 1, conn: x.conn, id: id(9), codec: Codec::Json };
    let seen = net.bus_input(1, ClusterIn::Frame { to: gone.id, codec: Codec::Json, frame: frame(gone) });
    assert_eq!(Net::received(&seen, a), [error(&format!("unknown destination {}", id(9)))]);
    // Node 5 moves to instance 2: a frame that still reaches instance 1 is dropped in silence,
    // since instance 2 received it too.
    let moved = net.join(2, 5, Codec::Json);
    assert_eq!(net.holders(&id(5)), [2]);
    let seen = net.bus_input(1, ClusterIn::Frame { to: x.id, codec: Codec::Json, frame: frame(moved) });
    assert!(Net::received(&seen, a).is_empty(), "{seen:?}");
    assert_eq!(net.servers[1].stats().cluster.unwrap().bounced, 2);
}

#[test]
fn a_command_from_the_bus_reaches_a_local_node_but_never_with_a_message_of_the_sign_in() {
    let mut net = Net::new(2, config());
    let a = net.join(0, 1, Codec::Json);
    let send =
        |message| ClusterIn::Control { to: a.id, control: Box::new(peer_signal::Control::Send(message)) };
    let seen = net.bus_input(0, send(peer_signal::WSSignalMessageToNode::Error("from elsewhere".into())));
    assert_eq!(net::frames_to(&seen, a.conn).len(), 1);
    // A fledger node panics on a challenge of another version; neither it nor an offer of
    // capabilities reaches a node from the bus.
    let rejected = net.servers[0].stats().cluster.unwrap().rejected;
    for message in [
        peer_signal::WSSignalMessageToNode::Challenge(2, peer_signal::U256::from([1; 32])),
        peer_signal::WSSignalMessageToNode::Capabilities(peer_signal::Capabilities::default()),
    ] {
        let seen = net.bus_input(0, send(message));
        assert!(net::frames_to(&seen, a.conn).is_empty(), "{seen:?}");
    }
    assert_eq!(net.servers[0].stats().cluster.unwrap().rejected, rejected + 2);
}
