//! DESIGN.md behaviours 4 (relay) and 5 (stats).

mod common;

use bytes::Bytes;
use common::*;
use peer_signal::{
    Codec, ConnId, NodeStat, PeerInfo, PeerMessage, SignalConfig, SignalEvent, SignalIn, SignalOut,
    WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

fn vector(name: &str) -> Bytes {
    let line = include_str!("data/fledger-v3-vectors.jsonl")
        .lines()
        .find(|l| l.contains(&format!("\"name\":\"{name}\"")) && l.contains("from_node"))
        .expect("vector");
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    Bytes::from(value["json"].as_str().unwrap().to_string())
}

fn setup(from: &Joined, to: &Joined, message: PeerMessage) -> WSSignalMessageFromNode {
    WSSignalMessageFromNode::PeerSetup(PeerInfo { id_init: from.id, id_follow: to.id, message })
}

#[test]
fn fledger_setup_frames_reach_the_other_node_byte_for_byte() {
    let mut h = Harness::new();
    let one = h.join(1); // the vectors' id_init
    let two = h.join(2); // the vectors' id_follow
    let _bystander = h.join(3); // must see none of it: `touched` lists only the receiver
    for name in ["PeerSetup_Init", "PeerSetup_Offer", "PeerSetup_Answer", "PeerSetup_IceCandidate"] {
        let frame = vector(name);
        // id_init sends: it reaches id_follow.
        let out = h.frame(one.conn, frame.clone());
        assert_eq!(frames_to(&out, two.conn), vec![frame.clone()], "{name}");
        assert_eq!(touched(&out), vec![two.conn], "{name}");
        // id_follow sends the same PeerInfo back: it reaches id_init.
        let out = h.frame(two.conn, frame.clone());
        assert_eq!(frames_to(&out, one.conn), vec![frame.clone()], "{name}");
        assert_eq!(touched(&out), vec![one.conn], "{name}");
    }
    assert_eq!(h.server.stats().relays, 8);
}

#[test]
fn a_full_exchange_arrives_once_in_order_at_the_right_node() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let steps = [
        (a, b, PeerMessage::Init),
        (a, b, PeerMessage::Offer("v=0 offer".into())),
        (b, a, PeerMessage::Answer("v=0 answer".into())),
        (a, b, PeerMessage::IceCandidate("candidate:1 a".into())),
        (b, a, PeerMessage::IceCandidate("candidate:2 b".into())),
    ];
    for (from, to, message) in steps {
        // id_init is always a, whoever sends.
        let info = PeerInfo { id_init: a.id, id_follow: b.id, message };
        let out = h.from(from, &WSSignalMessageFromNode::PeerSetup(info.clone()));
        assert_eq!(messages_to(&out, to.conn, to.codec), vec![WSSignalMessageToNode::PeerSetup(info)]);
        assert_eq!(touched(&out), vec![to.conn]);
    }
}

#[test]
fn a_relay_between_codecs_is_re_encoded_for_the_receiver() {
    let mut h = Harness::new();
    let json = h.join_with(&key(1), Codec::Json);
    let binary = h.join_with(&key(2), Codec::Bincode);
    let info = PeerInfo { id_init: json.id, id_follow: binary.id, message: PeerMessage::Offer("sdp".into()) };
    let out = h.from(json, &WSSignalMessageFromNode::PeerSetup(info.clone()));
    assert_eq!(
        messages_to(&out, binary.conn, Codec::Bincode),
        vec![WSSignalMessageToNode::PeerSetup(info.clone())]
    );
    let out = h.from(binary, &WSSignalMessageFromNode::PeerSetup(info.clone()));
    assert_eq!(messages_to(&out, json.conn, Codec::Json), vec![WSSignalMessageToNode::PeerSetup(info)]);
}

#[test]
fn a_bincode_relay_is_forwarded_without_re_encoding() {
    let mut h = Harness::new();
    let a = h.join_with(&key(1), Codec::Bincode);
    let b = h.join_with(&key(2), Codec::Bincode);
    let frame = Codec::Bincode.encode(&setup(&a, &b, PeerMessage::Init)).unwrap();
    let out = h.frame(a.conn, frame.clone());
    let sent = frames_to(&out, b.conn);
    assert_eq!(sent, vec![frame.clone()]);
    // The very same buffer, not a copy.
    assert_eq!(sent[0].as_ptr(), frame.as_ptr());
}

#[test]
fn only_the_two_ends_of_a_pair_may_relay() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let intruder = h.join(3);
    let forged = WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init: a.id,
        id_follow: b.id,
        message: PeerMessage::Offer("evil".into()),
    });
    let out = h.from(intruder, &forged);
    assert_eq!(
        messages_to(&out, intruder.conn, Codec::Json),
        vec![error("sender is neither id_init nor id_follow")]
    );
    assert_eq!(touched(&out), vec![intruder.conn]);
}

#[test]
fn an_unknown_destination_gets_an_error_without_a_strike() {
    let mut h = Harness::with(SignalConfig::default().with_max_errors(2));
    let a = h.join(1);
    let gone = U256([0x42; 32]);
    let message = WSSignalMessageFromNode::PeerSetup(PeerInfo {
        id_init: a.id,
        id_follow: gone,
        message: PeerMessage::Init,
    });
    for _ in 0..5 {
        let out = h.from(a, &message);
        assert_eq!(
            messages_to(&out, a.conn, Codec::Json),
            vec![error(&format!("unknown destination {gone}"))]
        );
        assert!(closed(&out).is_empty());
    }
    assert_eq!(h.server.stats().errors.get("unknown_destination"), Some(&5));
}

fn set_busy(h: &mut Harness, conn: ConnId, busy: bool) -> Vec<SignalOut> {
    h.input(SignalIn::Busy { conn, busy })
}

#[test]
fn a_busy_destination_gets_no_setup_and_its_senders_an_error_without_a_strike() {
    let mut h = Harness::with(SignalConfig::default().with_max_errors(2));
    let reader = h.join(1);
    let senders: Vec<Joined> = (2..5).map(|seed| h.join(seed)).collect();
    assert!(set_busy(&mut h, reader.conn, true).is_empty());
    let busy = error(&format!("destination busy: {}", reader.id));
    for _round in 0..5 {
        for sender in &senders {
            let offer = setup(sender, &reader, PeerMessage::Offer("v=0".into()));
            let out = h.from(*sender, &offer);
            assert_eq!(messages_to(&out, sender.conn, Codec::Json), vec![busy.clone()]);
            assert_eq!(touched(&out), vec![sender.conn], "the reader got something, or a close");
        }
    }
    let stats = h.server.stats();
    assert_eq!(stats.errors.get("destination_busy"), Some(&15));
    assert_eq!((stats.relays, stats.nodes), (0, 4));
    // The busy node's list requests go unanswered (it does not read what it has), without a
    // strike, and it still reaches others.
    let out = h.from(reader, &WSSignalMessageFromNode::ListIDsRequest);
    assert!(touched(&out).is_empty());
    assert_eq!(h.server.stats().unanswered_busy, 1);
    let out = h.from(reader, &setup(&reader, &senders[0], PeerMessage::Init));
    assert_eq!(touched(&out), vec![senders[0].conn]);
    // Drained: set-ups flow again.
    assert!(set_busy(&mut h, reader.conn, false).is_empty());
    let out = h.from(senders[0], &setup(&senders[0], &reader, PeerMessage::Init));
    assert_eq!(touched(&out), vec![reader.conn]);
    assert_eq!(h.server.stats().relays, 2);
}

#[test]
fn busy_reports_for_unknown_or_pending_connections() {
    let mut h = Harness::new();
    let a = h.join(1);
    // Unknown, and closed: ignored.
    assert!(set_busy(&mut h, ConnId::new(999), true).is_empty());
    let b = h.join(2);
    h.input(SignalIn::Closed { conn: b.conn });
    assert!(set_busy(&mut h, b.conn, true).is_empty());
    assert_eq!(h.server.stats().connections, 1);
    // A connection busy before it announces is busy once it has.
    let (conn, challenge) = h.open(Codec::Json);
    assert!(set_busy(&mut h, conn, true).is_empty());
    h.send(conn, Codec::Json, &announce(&key(3), challenge));
    let c = Joined { conn, id: U256(key(3).verifying_key().to_bytes()), codec: Codec::Json };
    let out = h.from(a, &setup(&a, &c, PeerMessage::Init));
    assert_eq!(messages_to(&out, a.conn, Codec::Json), vec![error(&format!("destination busy: {}", c.id))]);
}

#[test]
fn an_oversized_setup_message_is_refused() {
    let mut h = Harness::with(SignalConfig::default().with_max_setup_len(100));
    let a = h.join(1);
    let b = h.join(2);
    let out = h.from(a, &setup(&a, &b, PeerMessage::Offer("x".repeat(101))));
    assert_eq!(
        messages_to(&out, a.conn, Codec::Json),
        vec![error("peer message too long: 101 bytes, limit is 100")]
    );
    assert_eq!(touched(&out), vec![a.conn]);
    let out = h.from(a, &setup(&a, &b, PeerMessage::Offer("x".repeat(100))));
    assert_eq!(touched(&out), vec![b.conn]);
}

#[test]
fn node_stats_reach_the_application_tagged_with_the_sender() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let stats = vec![NodeStat { id: b.id, version: "0.10.0".into(), ping_ms: 12, ping_rx: 3 }];
    let out = h.from(a, &WSSignalMessageFromNode::NodeStats(stats.clone()));
    assert_eq!(events(&out), vec![SignalEvent::NodeStats { from: a.id, stats }]);
    assert!(touched(&out).is_empty());
    // The fledger vector's NodeStats frame too.
    let line =
        include_str!("data/fledger-v3-vectors.jsonl").lines().find(|l| l.contains("\"NodeStats\"")).unwrap();
    let frame: serde_json::Value = serde_json::from_str(line).unwrap();
    let out = h.frame(b.conn, frame["json"].as_str().unwrap().to_string());
    assert!(
        matches!(events(&out).as_slice(), [SignalEvent::NodeStats { from, stats }] if *from == b.id && stats[0].ping_ms == 12)
    );
}

#[test]
fn the_relay_accepts_exactly_the_setups_the_full_decoder_accepts() {
    // The relay path checks a PeerSetup without decoding its text; it must agree with the full
    // decoder on every frame, or a fledger node would receive a frame it cannot parse.
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let pair = |message: &str| {
        format!(r#"{{"PeerSetup":{{"id_init":"{}","id_follow":"{}","message":{message}}}}}"#, a.id, b.id)
    };
    let cases = [
        r#""Init""#,
        r#"{"Offer":"v=0\r\n"}"#,
        r#"{"Answer":"tab\there \"quoted\" \\ back \/ slash"}"#,
        r#"{"IceCandidate":"caf\u00e9 \ud83d\ude00"}"#,
        r#"{"Offer":"lone \ud800 surrogate"}"#,
        r#"{"Offer":"lone \udc00 trailing"}"#,
        r#"{"Offer":"bad \x escape"}"#,
        "{\"Offer\":\"raw control \u{1} character\"}",
        r#"{"Offer":5}"#,
        r#"{"Offer":null}"#,
        r#"{"Offer":["v=0"]}"#,
        r#"{"Offer":{"sdp":"v=0"}}"#,
        r#"{"Init":null}"#,
        r#""Offer""#,
        r#"{"Hello":"x"}"#,
        r#"{"Offer":"a","Answer":"b"}"#,
    ];
    for message in cases {
        let frame = pair(message);
        let full = Codec::Json.decode::<WSSignalMessageFromNode>(frame.as_bytes());
        let out = h.frame(a.conn, frame.clone());
        let relayed = frames_to(&out, b.conn);
        assert_eq!(
            full.is_ok(),
            relayed == [Bytes::from(frame.clone())],
            "{message}: full decode {full:?}, out {out:?}"
        );
        if full.is_err() {
            assert!(
                matches!(messages_to(&out, a.conn, Codec::Json).as_slice(), [WSSignalMessageToNode::Error(e)] if e.starts_with("malformed message: ")),
                "{message}"
            );
        }
        // Keep the sender below the error limit.
        h = Harness::new();
        let _ = (h.join(1), h.join(2));
    }
}

#[test]
fn the_setup_length_limit_counts_encoded_bytes() {
    let mut h = Harness::with(SignalConfig::default().with_max_setup_len(10));
    let a = h.join(1);
    let b = h.join(2);
    // Five line breaks: 10 bytes of text, 20 bytes as JSON escapes.
    let out = h.from(a, &setup(&a, &b, PeerMessage::Offer("\r\n\r\n\r\n\r\n\r\n".into())));
    assert_eq!(
        messages_to(&out, a.conn, Codec::Json),
        vec![error("peer message too long: 20 bytes, limit is 10")]
    );
    let out = h.from(a, &setup(&a, &b, PeerMessage::Offer("0123456789".into())));
    assert_eq!(touched(&out), vec![b.conn]);
    // bincode carries the text as is, but it is measured as JSON would write it: a relay may
    // have to, for a JSON node, and a text within the limit must be within it in both codecs.
    let mut h = Harness::with(SignalConfig::default().with_max_setup_len(10));
    let a = h.join_with(&key(1), Codec::Bincode);
    let b = h.join(2);
    let out = h.from(a, &setup(&a, &b, PeerMessage::Offer("\r\n\r\n\r\n\r\n\r\n".into())));
    assert_eq!(
        messages_to(&out, a.conn, Codec::Bincode),
        vec![error("peer message too long: 20 bytes, limit is 10")]
    );
    let within = setup(&a, &b, PeerMessage::Offer("\r\n\r\n\r".into()));
    let out = h.from(a, &within);
    let WSSignalMessageFromNode::PeerSetup(info) = within else { unreachable!() };
    assert_eq!(messages_to(&out, b.conn, Codec::Json), vec![WSSignalMessageToNode::PeerSetup(info)]);
}
