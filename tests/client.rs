//! The node-side `SignalClient`, on its own and against the core: no executor, no sockets.

mod common;

use std::time::Instant;

use common::{key, node_info};
use peer_signal::{
    verify_challenge, ClientError, ClientEvent, Codec, ConnId, FledgerConfig, MessageAnnounce, NodeInfo,
    PeerInfo, PeerMessage, SignalClient, SignalConfig, SignalEvent, SignalIn, SignalOut, SignalServer,
    WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

fn to_node(codec: Codec, message: &WSSignalMessageToNode) -> Vec<u8> {
    codec.encode(message).unwrap().to_vec()
}

fn transmitted(client: &mut SignalClient) -> Vec<WSSignalMessageFromNode> {
    let codec = client.codec();
    std::iter::from_fn(|| client.poll_transmit()).map(|frame| codec.decode(&frame).unwrap()).collect()
}

fn events(client: &mut SignalClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| client.poll_event()).collect()
}

fn announce_sent(client: &mut SignalClient) -> MessageAnnounce {
    match transmitted(client).as_slice() {
        [WSSignalMessageFromNode::Announce(announce)] => announce.clone(),
        other => panic!("expected one announce, got {other:?}"),
    }
}

/// A client the server has accepted (as far as the client knows), with nothing left to drain.
fn connected(codec: Codec) -> SignalClient {
    let mut client = SignalClient::new(key(1), node_info(&key(1)), codec);
    client.handle_frame(&to_node(codec, &WSSignalMessageToNode::Challenge(3, U256([9; 32])))).unwrap();
    client
        .handle_frame(&to_node(codec, &WSSignalMessageToNode::SystemConfig(FledgerConfig::default())))
        .unwrap();
    let _ = (transmitted(&mut client), events(&mut client));
    client
}

#[test]
fn answers_the_challenge_with_an_announce_that_verifies() {
    for codec in [Codec::Json, Codec::Bincode] {
        let mut client = SignalClient::new(key(1), node_info(&key(1)), codec);
        let challenge = U256([42; 32]);
        client.handle_frame(&to_node(codec, &WSSignalMessageToNode::Challenge(3, challenge))).unwrap();

        let announce = announce_sent(&mut client);
        assert_eq!(announce.version, 3);
        assert_eq!(announce.challenge, challenge);
        assert_eq!(announce.node_info, node_info(&key(1)));
        verify_challenge(&announce.node_info.pubkey, &challenge, &announce.signature).unwrap();
        assert!(events(&mut client).is_empty());
        assert!(!client.is_connected());
    }
}

#[test]
fn announces_the_key_it_signs_with_whatever_info_says() {
    let wrong = NodeInfo::new("mallory", "test", key(2).verifying_key().to_bytes());
    let mut client = SignalClient::new(key(1), wrong, Codec::Json);
    assert_eq!(client.id(), U256(key(1).verifying_key().to_bytes()));
    client.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::Challenge(3, U256([1; 32])))).unwrap();
    let announce = announce_sent(&mut client);
    assert_eq!(announce.node_info.pubkey, key(1).verifying_key().to_bytes());
    assert_eq!(announce.node_info.name, "mallory");
}

#[test]
fn only_the_first_challenge_of_a_connection_is_signed() {
    for codec in [Codec::Json, Codec::Bincode] {
        let mut client = SignalClient::new(key(1), node_info(&key(1)), codec);
        let first = to_node(codec, &WSSignalMessageToNode::Challenge(3, U256([1; 32])));
        client.handle_frame(&first).unwrap();
        assert_eq!(announce_sent(&mut client).challenge, U256([1; 32]));
        // A server asking again, before or after accepting: bytes of its choosing, never signed.
        let second = to_node(codec, &WSSignalMessageToNode::Challenge(3, U256([2; 32])));
        assert_eq!(client.handle_frame(&second), Err(ClientError::UnexpectedChallenge));
        assert_eq!(client.handle_frame(&first), Err(ClientError::UnexpectedChallenge));
        client
            .handle_frame(&to_node(codec, &WSSignalMessageToNode::SystemConfig(FledgerConfig::default())))
            .unwrap();
        assert_eq!(client.handle_frame(&second), Err(ClientError::UnexpectedChallenge));
        assert!(transmitted(&mut client).is_empty());
        // The client is still usable.
        assert!(client.is_connected());
        client.request_list().unwrap();
        assert_eq!(transmitted(&mut client), vec![WSSignalMessageFromNode::ListIDsRequest]);
    }
}

#[test]
fn a_challenge_of_another_version_is_not_answered() {
    let mut client = SignalClient::new(key(1), node_info(&key(1)), Codec::Json);
    let frame = to_node(Codec::Json, &WSSignalMessageToNode::Challenge(2, U256([1; 32])));
    assert_eq!(client.handle_frame(&frame), Err(ClientError::UnsupportedVersion(2)));
    assert!(client.poll_transmit().is_none());
}

#[test]
fn requests_wait_for_the_system_config() {
    let mut client = SignalClient::new(key(1), node_info(&key(1)), Codec::Json);
    assert_eq!(client.request_list(), Err(ClientError::NotConnected));
    assert_eq!(client.send_init(U256([2; 32])), Err(ClientError::NotConnected));
    assert!(client.poll_transmit().is_none());

    client.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::Challenge(3, U256([9; 32])))).unwrap();
    let _ = announce_sent(&mut client);
    assert_eq!(client.request_list(), Err(ClientError::NotConnected), "announced is not connected");
    let config = FledgerConfig { system_realm: Some(U256([5; 32])) };
    client.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::SystemConfig(config.clone()))).unwrap();
    assert!(client.is_connected());
    assert_eq!(client.system_config(), Some(&config));
    assert_eq!(events(&mut client), vec![ClientEvent::Connected(config)]);
    client.request_list().unwrap();
    assert_eq!(transmitted(&mut client), vec![WSSignalMessageFromNode::ListIDsRequest]);
}

#[test]
fn server_messages_become_events_in_order() {
    let mut client = connected(Codec::Bincode);
    let setup = PeerInfo { id_init: U256([2; 32]), id_follow: client.id(), message: PeerMessage::Init };
    let nodes = vec![node_info(&key(1)), node_info(&key(2))];
    for message in [
        WSSignalMessageToNode::ListIDsReply(nodes.clone()),
        WSSignalMessageToNode::PeerSetup(setup.clone()),
        WSSignalMessageToNode::Error("unknown destination".into()),
    ] {
        client.handle_frame(&to_node(Codec::Bincode, &message)).unwrap();
    }
    assert_eq!(
        events(&mut client),
        vec![
            ClientEvent::NodeList(nodes),
            ClientEvent::PeerSetup(setup),
            ClientEvent::Error("unknown destination".into())
        ]
    );
    assert!(client.poll_transmit().is_none(), "nothing here needs an answer");
}

#[test]
fn a_malformed_frame_is_an_error_and_changes_nothing() {
    let mut client = connected(Codec::Json);
    assert!(matches!(client.handle_frame(b"{\"Challenge\":"), Err(ClientError::Malformed(_))));
    // A JSON frame on a bincode connection is malformed too.
    let mut binary = connected(Codec::Bincode);
    let json = to_node(Codec::Json, &WSSignalMessageToNode::Error("x".into()));
    assert!(matches!(binary.handle_frame(&json), Err(ClientError::Malformed(_))));
    for client in [&mut client, &mut binary] {
        assert!(client.is_connected());
        assert!(client.poll_event().is_none() && client.poll_transmit().is_none());
    }
}

#[test]
fn setup_helpers_keep_the_pair_in_order() {
    let mut client = connected(Codec::Json);
    let me = client.id();
    let peer = U256([2; 32]);
    client.send_init(peer).unwrap();
    let init = PeerInfo { id_init: me, id_follow: peer, message: PeerMessage::Init };
    let offer = PeerInfo { id_init: peer, id_follow: me, message: PeerMessage::Offer("sdp".into()) };
    client.send_reply(&offer, PeerMessage::Answer("answer".into())).unwrap();
    client.send_setup(init.clone()).unwrap();
    client.send_stats(Vec::new()).unwrap();
    assert_eq!(
        transmitted(&mut client),
        vec![
            WSSignalMessageFromNode::PeerSetup(init.clone()),
            WSSignalMessageFromNode::PeerSetup(PeerInfo {
                id_init: peer,
                id_follow: me,
                message: PeerMessage::Answer("answer".into())
            }),
            WSSignalMessageFromNode::PeerSetup(init),
            WSSignalMessageFromNode::NodeStats(Vec::new()),
        ]
    );
}

#[test]
fn queues_are_bounded_when_the_application_does_not_drain() {
    let mut client = connected(Codec::Json);
    let error = to_node(Codec::Json, &WSSignalMessageToNode::Error("e".into()));
    for _ in 0..1100 {
        client.handle_frame(&error).unwrap();
    }
    assert_eq!(client.dropped_events(), 1100 - 1024);
    assert_eq!(events(&mut client).len(), 1024);

    let accepted = (0..1100).take_while(|_| client.request_list().is_ok()).count();
    assert_eq!(accepted, 1024);
    assert_eq!(client.request_list(), Err(ClientError::Backlog));
    assert_eq!(transmitted(&mut client).len(), 1024);
    client.request_list().unwrap();
}

/// Moves frames between the core and the clients until neither has anything to say.
fn pump(server: &mut SignalServer, clients: &mut [(ConnId, SignalClient)], now: Instant) -> Vec<SignalEvent> {
    let mut server_events = Vec::new();
    for _ in 0..10 {
        let mut quiet = true;
        while let Some(out) = server.poll_output() {
            match out {
                SignalOut::Send { conn, frame } => {
                    let (_, client) = clients.iter_mut().find(|(c, _)| *c == conn).unwrap();
                    client.handle_frame(&frame).unwrap();
                }
                SignalOut::Event(event) => server_events.push(event),
                other => panic!("unexpected {other:?}"),
            }
        }
        for (conn, client) in clients.iter_mut() {
            while let Some(frame) = client.poll_transmit() {
                quiet = false;
                server.handle(now, SignalIn::Frame { conn: *conn, frame });
            }
        }
        if quiet {
            return server_events;
        }
    }
    panic!("the conversation does not settle")
}

#[test]
fn two_clients_join_and_relay_through_the_core_without_an_executor() {
    let mut server = SignalServer::new(SignalConfig::default().with_rng_seed([7; 32])).unwrap();
    let now = Instant::now();
    let mut clients = vec![
        (ConnId::new(1), SignalClient::new(key(1), node_info(&key(1)), Codec::Json)),
        (ConnId::new(2), SignalClient::new(key(2), node_info(&key(2)), Codec::Bincode)),
    ];
    for (conn, client) in &clients {
        server.handle(now, SignalIn::Opened { conn: *conn, codec: client.codec(), addr: None });
    }
    let joined = pump(&mut server, &mut clients, now);
    let (alice, bob) = (clients[0].1.id(), clients[1].1.id());
    assert!(
        matches!(joined.as_slice(), [SignalEvent::NewNode(a), SignalEvent::NewNode(b)] if a.id == alice && b.id == bob),
        "{joined:?}"
    );
    assert!(clients.iter().all(|(_, c)| c.is_connected()));
    for (_, client) in &mut clients {
        assert!(matches!(client.poll_event(), Some(ClientEvent::Connected(_))));
        assert!(matches!(client.poll_event(), Some(ClientEvent::NodeList(_))));
    }

    clients[0].1.send_init(bob).unwrap();
    pump(&mut server, &mut clients, now);
    let init = PeerInfo { id_init: alice, id_follow: bob, message: PeerMessage::Init };
    assert_eq!(clients[1].1.poll_event(), Some(ClientEvent::PeerSetup(init.clone())));
    clients[1].1.send_reply(&init, PeerMessage::Offer("v=0".into())).unwrap();
    clients[1].1.request_list().unwrap();
    pump(&mut server, &mut clients, now);
    let offer = PeerInfo { message: PeerMessage::Offer("v=0".into()), ..init };
    assert_eq!(clients[0].1.poll_event(), Some(ClientEvent::PeerSetup(offer)));
    let Some(ClientEvent::NodeList(nodes)) = clients[1].1.poll_event() else { panic!("expected a list") };
    let mut ids: Vec<U256> = nodes.iter().map(|n| n.id()).collect();
    ids.sort_unstable();
    let mut both = vec![alice, bob];
    both.sort_unstable();
    assert_eq!(ids, both);
    assert!(clients.iter_mut().all(|(_, c)| c.poll_event().is_none()));
}

#[test]
fn the_keepalive_asks_for_the_list_every_interval_once_connected() {
    use std::time::Duration;
    let key = key(1);
    let mut client = SignalClient::new(key.clone(), node_info(&key), Codec::Json);
    client.set_keepalive(Some(Duration::from_secs(60)));
    let start = Instant::now();
    // Before the server accepts the node, only the sign-in is timed.
    client.handle_timeout(start).unwrap();
    assert_eq!(
        client.poll_timeout(),
        Some(start + SignalClient::new(key.clone(), node_info(&key), Codec::Json).config().sign_in_timeout)
    );
    client.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::Challenge(3, U256([5; 32])))).unwrap();
    let _ = announce_sent(&mut client);
    client
        .handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::SystemConfig(FledgerConfig::default())))
        .unwrap();
    assert_eq!(client.poll_timeout(), None, "the sign-in deadline is gone, the keepalive not armed yet");
    // The first call arms it; each due time sends one request and arms the next.
    client.handle_timeout(start).unwrap();
    assert_eq!(client.poll_timeout(), Some(start + Duration::from_secs(60)));
    assert!(transmitted(&mut client).is_empty());
    client.handle_timeout(start + Duration::from_secs(59)).unwrap();
    assert!(transmitted(&mut client).is_empty(), "not yet due");
    client.handle_timeout(start + Duration::from_secs(61)).unwrap();
    assert_eq!(transmitted(&mut client), vec![WSSignalMessageFromNode::ListIDsRequest]);
    assert_eq!(client.poll_timeout(), Some(start + Duration::from_secs(121)));
    // Off again: nothing is timed.
    client.set_keepalive(None);
    client.handle_timeout(start + Duration::from_secs(500)).unwrap();
    assert!(transmitted(&mut client).is_empty());
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn messages_that_make_no_sense_yet_or_any_more_are_refused_counted_and_change_nothing() {
    use WSSignalMessageToNode as M;
    let codec = Codec::Json;
    let me = node_info(&key(1)).id();
    let list = M::ListIDsReply(vec![node_info(&key(2))]);
    let setup = M::PeerSetup(PeerInfo { id_init: U256([2; 32]), id_follow: me, message: PeerMessage::Init });
    let config = M::SystemConfig(FledgerConfig::default());
    let unexpected = |client: &mut SignalClient, message: &M| {
        matches!(client.handle_frame(&to_node(codec, message)), Err(ClientError::Unexpected(_)))
    };

    // Before the challenge: no list, no set-up, no acceptance of an announce never sent.
    let mut client = SignalClient::new(key(1), node_info(&key(1)), codec);
    for message in [&list, &setup, &config] {
        assert!(unexpected(&mut client, message), "{message:?}");
    }
    // After the announce, before the acceptance: no list, no set-up.
    client.handle_frame(&to_node(codec, &M::Challenge(3, U256([9; 32])))).unwrap();
    let _ = announce_sent(&mut client);
    for message in [&list, &setup] {
        assert!(unexpected(&mut client, message), "{message:?}");
    }
    assert!(events(&mut client).is_empty() && !client.is_connected());
    client.handle_frame(&to_node(codec, &config)).unwrap();
    // Connected: no challenge, no set-up for a pair without this node.
    let stranger = PeerInfo { id_init: U256([2; 32]), id_follow: U256([3; 32]), message: PeerMessage::Init };
    assert!(unexpected(&mut client, &M::PeerSetup(stranger)));
    let challenge = to_node(codec, &M::Challenge(3, U256([8; 32])));
    assert_eq!(client.handle_frame(&challenge), Err(ClientError::UnexpectedChallenge));
    assert_eq!(client.refused_messages(), 7);
    // An error is news in any state; what is in place is taken as before, and a new system
    // config is the server's word on the system.
    client.handle_frame(&to_node(codec, &M::Error("e".into()))).unwrap();
    client.handle_frame(&to_node(codec, &list)).unwrap();
    client.handle_frame(&to_node(codec, &setup)).unwrap();
    client.handle_frame(&to_node(codec, &config)).unwrap();
    assert_eq!(events(&mut client).len(), 5, "connected, error, list, set-up, connected");
    assert!(client.is_connected() && client.poll_transmit().is_none());
}

#[test]
fn events_are_bounded_in_bytes_as_well_as_in_number() {
    use std::time::Duration;
    let mut client = connected(Codec::Json);
    let budget = client.config().max_event_bytes;
    // 200 offers of 30 KiB, never drained: under a count of 1,024 alone, 6 MB held.
    let me = client.id();
    let offer = |i: u8| {
        let message = PeerMessage::Offer(char::from(b'a' + i % 26).to_string().repeat(30 * 1024));
        to_node(
            Codec::Json,
            &WSSignalMessageToNode::PeerSetup(PeerInfo { id_init: U256([2; 32]), id_follow: me, message }),
        )
    };
    for i in 0..200u32 {
        client.handle_frame(&offer(i as u8)).unwrap();
    }
    assert!(client.queued_event_bytes() <= budget, "{} bytes held", client.queued_event_bytes());
    let held = events(&mut client);
    let text: usize = held
        .iter()
        .map(|e| match e {
            ClientEvent::PeerSetup(setup) => setup.message.text().map_or(0, str::len),
            _ => 0,
        })
        .sum();
    assert!(text <= budget && held.len() >= budget / (31 * 1024), "{} events, {text} bytes", held.len());
    assert_eq!(client.dropped_events(), 200 - held.len() as u64);
    assert_eq!(client.queued_event_bytes(), 0, "what is drained is given back");
    // Room again once drained, in the order the server sent.
    client.handle_frame(&offer(7)).unwrap();
    assert!(
        matches!(client.poll_event(), Some(ClientEvent::PeerSetup(s)) if s.message.text().unwrap().starts_with('h'))
    );

    // A smaller budget is the application's to set.
    let config = peer_signal::ClientConfig::default()
        .with_max_event_bytes(64 * 1024)
        .with_keepalive(Duration::from_secs(5));
    let mut small = SignalClient::with_config(key(1), node_info(&key(1)), Codec::Json, &config);
    small.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::Challenge(3, U256([9; 32])))).unwrap();
    small
        .handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::SystemConfig(FledgerConfig::default())))
        .unwrap();
    for i in 0..10 {
        small.handle_frame(&offer(i)).unwrap();
    }
    assert_eq!(events(&mut small).len(), 1 + 2, "the acceptance and two offers");
    assert_eq!(small.dropped_events(), 8);
}

#[test]
fn the_sign_in_has_a_deadline_from_the_first_timeout_that_a_silent_server_runs_into() {
    use std::time::Duration;
    let start = Instant::now();
    let mut client = SignalClient::new(key(1), node_info(&key(1)), Codec::Json);
    client.handle_timeout(start).unwrap();
    let deadline = start + Duration::from_secs(10);
    assert_eq!(client.poll_timeout(), Some(deadline));
    // The challenge comes and is answered, but the acceptance does not.
    client.handle_frame(&to_node(Codec::Json, &WSSignalMessageToNode::Challenge(3, U256([9; 32])))).unwrap();
    let _ = announce_sent(&mut client);
    client.handle_timeout(deadline - Duration::from_millis(1)).unwrap();
    assert_eq!(client.handle_timeout(deadline), Err(ClientError::SignInTimeout(Duration::from_secs(10))));
    // Dead: nothing more is timed, taken or sent.
    assert_eq!(client.poll_timeout(), None);
    let accept = to_node(Codec::Json, &WSSignalMessageToNode::SystemConfig(FledgerConfig::default()));
    assert_eq!(client.handle_frame(&accept), Err(ClientError::Closed));
    assert!(!client.is_connected());
    assert_eq!(client.request_list(), Err(ClientError::Closed));
    assert_eq!(
        client.handle_timeout(deadline + Duration::from_secs(1)),
        Err(ClientError::SignInTimeout(Duration::from_secs(10)))
    );
}

#[test]
fn with_a_keepalive_a_server_silent_for_two_intervals_is_taken_for_gone() {
    use std::time::Duration;
    let second = Duration::from_secs(1);
    let mut client = connected(Codec::Json);
    client.set_keepalive(Some(10 * second));
    let t0 = Instant::now();
    client.handle_timeout(t0).unwrap();
    let reply = to_node(Codec::Json, &WSSignalMessageToNode::ListIDsReply(Vec::new()));
    // Answered: alive as long as it answers.
    for i in 1..=5 {
        client.handle_timeout(t0 + i * 10 * second).unwrap();
        assert_eq!(transmitted(&mut client), vec![WSSignalMessageFromNode::ListIDsRequest]);
        client.handle_frame(&reply).unwrap();
    }
    // Then nothing: the request at 60 s has one interval, and another, to be answered.
    for at in [60, 70] {
        client.handle_timeout(t0 + at * second).unwrap();
        assert_eq!(transmitted(&mut client).len(), 1);
    }
    assert_eq!(client.handle_timeout(t0 + 80 * second), Err(ClientError::Unresponsive(20 * second)));
    assert!(transmitted(&mut client).is_empty() && client.poll_timeout().is_none() && !client.is_connected());

    // Any frame is a sign of life, even one the client refuses.
    let mut client = connected(Codec::Json);
    client.set_keepalive(Some(10 * second));
    client.handle_timeout(t0).unwrap();
    for i in 1..=10 {
        client.handle_timeout(t0 + i * 10 * second).unwrap();
        let _ = client.handle_frame(b"not json");
    }
    assert!(client.is_connected());
}
