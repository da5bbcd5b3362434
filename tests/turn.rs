//! TURN credentials from the server (`SignalConfig::turn`): who gets them and when, what they
//! are, and how the client holds them. The sans-IO server on a virtual clock; the real coturn
//! test is in the interop crate.

mod common;

use std::time::Duration;

use common::{announce, key, messages_to, Harness};
use peer_signal::{
    ClientEvent, Codec, ConfigError, IceServers, SignalClient, SignalConfig, TurnConfig, TurnSecret,
    WSSignalMessageFromNode, WSSignalMessageToNode,
};

const UNIX: u64 = 1_765_000_000;
const HOUR: Duration = Duration::from_secs(3600);

/// A server with TURN whose wall clock reads `UNIX` at the harness's start.
fn harness(secret: &str) -> Harness {
    let start = web_time::Instant::now();
    let turn = TurnConfig::new(["turn:127.0.0.1:3478?transport=udp"], TurnSecret::new(secret))
        .with_stun(["stun:127.0.0.1:3478"])
        .with_lifetime(HOUR)
        .with_epoch(start, UNIX);
    let mut harness = Harness::with(SignalConfig::default().with_turn(turn));
    harness.now = start;
    harness
}

fn ice(messages: &[WSSignalMessageToNode]) -> Vec<IceServers> {
    messages
        .iter()
        .filter_map(|message| match message {
            WSSignalMessageToNode::IceServers(servers) => Some(servers.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_gets_credentials_for_its_own_id_only_after_its_signature_is_verified() {
    let mut h = harness("north-sea");
    let (conn, challenge) = h.open(Codec::Json);
    // A request before the announce, and an announce with a bad signature: nothing issued.
    let early = h.send(conn, Codec::Json, &WSSignalMessageFromNode::IceServersRequest);
    assert!(ice(&messages_to(&early, conn, Codec::Json)).is_empty());
    let mut forged = announce(&key(1), challenge);
    if let WSSignalMessageFromNode::Announce(a) = &mut forged {
        a.signature[0] ^= 1;
    }
    let refused = h.send(conn, Codec::Json, &forged);
    assert!(ice(&messages_to(&refused, conn, Codec::Json)).is_empty(), "{refused:?}");

    let out = h.send(conn, Codec::Json, &announce(&key(1), challenge));
    let messages = messages_to(&out, conn, Codec::Json);
    // SystemConfig and the list first, as fledger nodes expect; then the credentials.
    assert!(
        matches!(
            messages[..],
            [
                WSSignalMessageToNode::SystemConfig(_),
                WSSignalMessageToNode::ListIDsReply(_),
                WSSignalMessageToNode::IceServers(_)
            ]
        ),
        "{messages:?}"
    );
    let issued = ice(&messages).remove(0);
    assert_eq!(issued.expires, UNIX + 3600);
    let id = peer_signal::NodeID::from(key(1).verifying_key().to_bytes());
    let turn = &issued.servers[0];
    assert_eq!(turn.urls, ["turn:127.0.0.1:3478?transport=udp"]);
    assert_eq!(turn.username, format!("{}:{id}", issued.expires));
    assert_eq!(turn.credential, TurnSecret::new("north-sea").password(&turn.username));
    assert_ne!(turn.credential, TurnSecret::new("another").password(&turn.username));
    let stun = &issued.servers[1];
    assert_eq!(
        (stun.urls.as_slice(), stun.username.as_str()),
        (&["stun:127.0.0.1:3478".to_string()][..], "")
    );
    assert_eq!(h.server.stats().turn_credentials, 1);
}

#[test]
fn credentials_are_renewed_with_the_first_frame_after_half_their_lifetime_and_on_request() {
    let mut h = harness("s");
    let node = h.join(1);
    h.now += HOUR / 2 - Duration::from_secs(1);
    let before = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(ice(&messages_to(&before, node.conn, node.codec)).is_empty(), "not yet due");
    h.now += Duration::from_secs(1);
    let due = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    let renewed = ice(&messages_to(&due, node.conn, node.codec));
    assert_eq!(renewed.len(), 1, "{due:?}");
    assert_eq!(renewed[0].expires, UNIX + 3600 + 1800);
    // The next frame does not renew again; a request always does.
    let next = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(ice(&messages_to(&next, node.conn, node.codec)).is_empty());
    h.now += Duration::from_secs(5);
    let asked = h.from(node, &WSSignalMessageFromNode::IceServersRequest);
    assert_eq!(ice(&messages_to(&asked, node.conn, node.codec))[0].expires, UNIX + 3600 + 1805);
    assert_eq!(h.server.stats().turn_credentials, 3);
}

#[test]
fn a_server_without_turn_sends_none_and_answers_a_request_with_an_error() {
    let mut h = Harness::new();
    let node = h.join(1);
    let out = h.from(node, &WSSignalMessageFromNode::IceServersRequest);
    assert_eq!(
        messages_to(&out, node.conn, node.codec),
        [WSSignalMessageToNode::Error("no TURN servers here".into())]
    );
}

#[test]
fn the_message_is_an_rtc_ice_server_list_in_json_and_round_trips_in_bincode() {
    let mut h = harness("s");
    let (conn, challenge) = h.open(Codec::Json);
    let out = h.send(conn, Codec::Json, &announce(&key(2), challenge));
    let frame = common::frames_to(&out, conn).pop().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&frame).unwrap();
    let servers = &json["IceServers"]["servers"];
    assert_eq!(servers[0]["urls"][0], "turn:127.0.0.1:3478?transport=udp");
    assert!(servers[0]["username"]
        .as_str()
        .unwrap()
        .ends_with(&peer_signal::NodeID::from(key(2).verifying_key().to_bytes()).to_string()));
    assert!(servers[0]["credential"].is_string());
    assert!(json["IceServers"]["expires"].is_u64());

    let (conn, challenge) = h.open(Codec::Bincode);
    let out = h.send(conn, Codec::Bincode, &announce(&key(3), challenge));
    assert_eq!(ice(&messages_to(&out, conn, Codec::Bincode)).len(), 1);
}

#[test]
fn the_client_reports_and_keeps_the_latest_credentials() {
    let mut h = harness("s");
    let info = common::node_info(&key(4));
    let mut client = SignalClient::new(key(4), info, Codec::Json);
    let conn = peer_signal::ConnId::new(99);
    let mut pending = h.input(peer_signal::SignalIn::Opened { conn, codec: Codec::Json, addr: None });
    for _ in 0..4 {
        for frame in common::frames_to(&pending, conn) {
            client.handle_frame(&frame).unwrap();
        }
        pending.clear();
        while let Some(frame) = client.poll_transmit() {
            pending.extend(h.frame(conn, frame));
        }
    }
    let events: Vec<ClientEvent> = std::iter::from_fn(|| client.poll_event()).collect();
    let issued = client.ice_servers().cloned().expect("credentials after the sign-in");
    assert!(events.contains(&ClientEvent::IceServers(issued.clone())), "{events:?}");
    client.request_ice_servers().unwrap();
    h.now += Duration::from_secs(10);
    let out = h.frame(conn, client.poll_transmit().unwrap());
    for frame in common::frames_to(&out, conn) {
        client.handle_frame(&frame).unwrap();
    }
    assert_eq!(client.ice_servers().unwrap().expires, issued.expires + 10);
}

#[test]
fn a_lifetime_shorter_than_four_ttls_or_a_bad_url_is_refused_at_start() {
    let turn = TurnConfig::new(["turn:a:3478"], TurnSecret::new("s")).with_lifetime(Duration::from_secs(60));
    let error = SignalConfig::default().with_turn(turn).validate().unwrap_err();
    assert_eq!(error.to_string(), "turn.lifetime (60) must be at least 4 × ttl (480)");
    let turn = TurnConfig::new(["https://a"], TurnSecret::new("s"));
    let error = SignalConfig::default().with_turn(turn).validate().unwrap_err();
    assert!(matches!(error, ConfigError::Url { field: "turn.uris", .. }), "{error}");
    assert_eq!(error.to_string(), "turn.uris: \"https://a\" is not a turn: or turns: URL");
}

#[tokio::test]
async fn the_secret_is_rotated_at_run_time_and_a_setting_the_server_refuses_leaves_the_old_one() {
    let config = SignalConfig::default();
    let (transport, connector) = peer_signal::MemoryTransport::new(&config);
    let turn = |secret: &str| TurnConfig::new(["turn:127.0.0.1:3478"], TurnSecret::new(secret));
    let (driver, handle, _events) = peer_signal::Driver::new(
        peer_signal::SignalServer::new(config.with_turn(turn("old"))).unwrap(),
        transport,
        64,
    );
    tokio::spawn(driver.run(futures::stream::pending()));
    let sign_in = |seed: u8| {
        let connector = connector.clone();
        async move {
            let conn = connector.connect(Codec::Json).await.unwrap();
            peer_signal::AsyncClient::connect(conn, key(seed), common::node_info(&key(seed))).await.unwrap()
        }
    };
    let password = |client: &peer_signal::AsyncClient<peer_signal::MemoryClient>| {
        let server = &client.ice_servers().expect("issued").servers[0];
        (server.username.clone(), server.credential.clone())
    };
    let mut first = sign_in(1).await;
    // The credentials come after the list that `connect` waits for.
    while first.ice_servers().is_none() {
        first.next_event().await.unwrap();
    }
    let (user, pass) = password(&first);
    assert_eq!(pass, TurnSecret::new("old").password(&user));

    handle.set_turn(Some(turn("new"))).await.unwrap();
    let mut second = sign_in(2).await;
    while second.ice_servers().is_none() {
        second.next_event().await.unwrap();
    }
    let (user, pass) = password(&second);
    assert_eq!(pass, TurnSecret::new("new").password(&user));

    let silly = turn("newer").with_lifetime(Duration::from_secs(60));
    let refused = handle.set_turn(Some(silly)).await.unwrap_err();
    assert!(matches!(refused, peer_signal::ControlError::Config(_)), "{refused}");
    first.request_ice_servers().await.unwrap();
    loop {
        if let ClientEvent::IceServers(servers) = first.next_event().await.unwrap() {
            let server = &servers.servers[0];
            assert_eq!(server.credential, TurnSecret::new("new").password(&server.username));
            break;
        }
    }
    handle.set_turn(None).await.unwrap();
    first.request_ice_servers().await.unwrap();
    loop {
        match first.next_event().await.unwrap() {
            ClientEvent::Error(text) => break assert_eq!(text, "no TURN servers here"),
            ClientEvent::NodeList(_) => {}
            other => panic!("{other:?}"),
        }
    }
}
