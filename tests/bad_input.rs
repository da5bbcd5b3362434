//! DESIGN.md behaviour 10: for each kind of bad frame, the exact reply, the connection's state
//! afterwards, and that no other connection saw anything.

mod common;

use bytes::Bytes;
use common::*;
use peer_signal::{
    sign_challenge, Codec, MessageAnnounce, Modules, NodeInfo, NodeStat, PeerInfo, PeerMessage, SignalConfig,
    SignalEvent, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

/// What a bad frame is built from.
struct Ctx {
    challenge: U256,
    me: U256,
    other: U256,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Phase {
    /// Connected, challenged, not announced.
    Pending,
    /// Announced.
    Node,
}

struct Case {
    name: &'static str,
    phase: Phase,
    frame: fn(&Ctx) -> Bytes,
    /// The reply: exact, or for decoder messages, its start and a phrase it must contain.
    reply: Reply,
    kind: &'static str,
}

enum Reply {
    Exact(&'static str),
    Malformed(&'static str),
}

fn json(message: &WSSignalMessageFromNode) -> Bytes {
    Codec::Json.encode(message).unwrap()
}

fn announce_json(ctx: &Ctx) -> String {
    String::from_utf8(json(&announce(&key(1), ctx.challenge)).to_vec()).unwrap()
}

/// A valid announce by key 1, with these strings.
fn announce_named(ctx: &Ctx, name: String, client: &str) -> Bytes {
    let key = key(1);
    let mut info = NodeInfo::new(name, client, key.verifying_key().to_bytes());
    info.modules = Modules::stable();
    json(&WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: SIGNAL_VERSION,
        challenge: ctx.challenge,
        node_info: info,
        signature: sign_challenge(&key, &ctx.challenge),
    }))
}

fn cases() -> Vec<Case> {
    use Phase::*;
    use Reply::*;
    vec![
        Case {
            name: "invalid JSON",
            phase: Pending,
            frame: |_| "{".into(),
            reply: Malformed("EOF while parsing"),
            kind: "malformed",
        },
        Case {
            name: "truncated JSON",
            phase: Node,
            frame: |_| "{\"PeerSetup\":{\"id_init\":\"8a".into(),
            reply: Malformed("EOF while parsing"),
            kind: "malformed",
        },
        Case {
            name: "empty frame",
            phase: Node,
            frame: |_| Bytes::new(),
            reply: Malformed("EOF while parsing a value"),
            kind: "malformed",
        },
        Case {
            name: "not UTF-8",
            phase: Pending,
            frame: |_| Bytes::from_static(&[0xff, 0xfe, 0x00]),
            reply: Malformed("invalid UTF-8"),
            kind: "malformed",
        },
        Case {
            name: "unknown message",
            phase: Node,
            frame: |_| "{\"Hello\":1}".into(),
            reply: Malformed("unknown variant `Hello`"),
            kind: "malformed",
        },
        Case {
            name: "a server message sent by a node",
            phase: Node,
            frame: |c| format!("{{\"Challenge\":[3,\"{}\"]}}", c.me).into(),
            reply: Malformed("unknown variant `Challenge`"),
            kind: "malformed",
        },
        Case {
            name: "wrong type",
            phase: Node,
            frame: |_| "{\"PeerSetup\":5}".into(),
            reply: Malformed("invalid type: integer `5`"),
            kind: "malformed",
        },
        Case {
            name: "trailing garbage",
            phase: Node,
            frame: |_| "\"ListIDsRequest\"x".into(),
            reply: Malformed("trailing characters"),
            kind: "malformed",
        },
        Case {
            name: "deep nesting",
            phase: Node,
            frame: |_| {
                format!("{{\"PeerSetup\":{{\"skipped\":{}{}}}}}", "[".repeat(5000), "]".repeat(5000)).into()
            },
            reply: Malformed("missing field `id_init`"),
            kind: "malformed",
        },
        Case {
            name: "oversize frame",
            phase: Node,
            frame: |_| vec![b' '; 64 * 1024 + 1].into(),
            reply: Exact("frame too large: 65537 bytes, limit is 65536"),
            kind: "frame_too_large",
        },
        Case {
            name: "list before announce",
            phase: Pending,
            frame: |_| "\"ListIDsRequest\"".into(),
            reply: Exact("not authenticated: announce first"),
            kind: "not_authenticated",
        },
        Case {
            name: "setup before announce",
            phase: Pending,
            frame: |c| {
                json(&WSSignalMessageFromNode::PeerSetup(PeerInfo {
                    id_init: c.me,
                    id_follow: c.other,
                    message: PeerMessage::Init,
                }))
            },
            reply: Exact("not authenticated: announce first"),
            kind: "not_authenticated",
        },
        Case {
            name: "stats before announce",
            phase: Pending,
            frame: |_| "{\"NodeStats\":[]}".into(),
            reply: Exact("not authenticated: announce first"),
            kind: "not_authenticated",
        },
        Case {
            name: "public key of 31 bytes",
            phase: Pending,
            frame: |c| announce_json(c).replace("\"pubkey\":\"8a88", "\"pubkey\":\"").into(),
            reply: Malformed("public key must be 32 bytes (64 hex digits), got 60 characters"),
            kind: "malformed",
        },
        Case {
            name: "public key not hex",
            phase: Pending,
            frame: |c| announce_json(c).replace("\"pubkey\":\"8a88", "\"pubkey\":\"zz88").into(),
            reply: Malformed("public key is not hex"),
            kind: "malformed",
        },
        Case {
            name: "signature of 63 bytes",
            phase: Pending,
            frame: |c| {
                let s = announce_json(c);
                let at = s.find("\"signature\":\"").unwrap() + 13;
                format!("{}{}", &s[..at], &s[at + 2..]).into()
            },
            reply: Malformed("signature must be 64 bytes (128 hex digits), got 126 characters"),
            kind: "malformed",
        },
        Case {
            name: "NodeInfoV2",
            phase: Pending,
            frame: |c| announce_json(c).replace("NodeInfoV3", "NodeInfoV2").into(),
            reply: Malformed("unsupported NodeInfoV2, only NodeInfoV3 is accepted"),
            kind: "malformed",
        },
        Case {
            name: "NodeInfoV1",
            phase: Pending,
            frame: |c| {
                format!("{{\"Announce\":{{\"version\":3,\"challenge\":\"{}\",\"node_info\":{{\"NodeInfoV1\":{{}}}},\"signature\":\"{}\"}}}}", c.challenge, "00".repeat(64)).into()
            },
            reply: Malformed("unsupported NodeInfoV1"),
            kind: "malformed",
        },
        Case {
            name: "unknown module",
            phase: Pending,
            frame: |c| announce_json(c).replace("\"modules\":\"STAT", "\"modules\":\"TELEPORT").into(),
            reply: Malformed("unknown module \"TELEPORT\""),
            kind: "malformed",
        },
        Case {
            name: "announce twice",
            phase: Node,
            frame: |c| announce_json(c).into(),
            reply: Exact("already authenticated"),
            kind: "already_authenticated",
        },
        Case {
            name: "forged pair",
            phase: Node,
            frame: |c| {
                json(&WSSignalMessageFromNode::PeerSetup(PeerInfo {
                    id_init: c.other,
                    id_follow: U256([5; 32]),
                    message: PeerMessage::Init,
                }))
            },
            reply: Exact("sender is neither id_init nor id_follow"),
            kind: "not_in_pair",
        },
        Case {
            name: "too many stats",
            phase: Node,
            frame: |c| {
                json(&WSSignalMessageFromNode::NodeStats(vec![
                    NodeStat {
                        id: c.other,
                        version: "1".into(),
                        ping_ms: 1,
                        ping_rx: 1
                    };
                    257
                ]))
            },
            reply: Exact("too many node stats: 257, limit is 256"),
            kind: "too_many_stats",
        },
        Case {
            name: "stat version too long",
            phase: Node,
            frame: |c| {
                json(&WSSignalMessageFromNode::NodeStats(vec![NodeStat {
                    id: c.other,
                    version: "v".repeat(65),
                    ping_ms: 1,
                    ping_rx: 1,
                }]))
            },
            reply: Exact("version too long: 65 bytes, limit is 64"),
            kind: "too_long",
        },
        Case {
            name: "stat version of control characters",
            phase: Node,
            // 11 characters, 66 bytes as JSON escapes: over 64.
            frame: |c| {
                json(&WSSignalMessageFromNode::NodeStats(vec![NodeStat {
                    id: c.other,
                    version: "\u{1}".repeat(11),
                    ping_ms: 1,
                    ping_rx: 1,
                }]))
            },
            reply: Exact("version too long: 66 bytes, limit is 64"),
            kind: "too_long",
        },
        Case {
            name: "name of control characters",
            phase: Pending,
            // 43 characters, 258 bytes as JSON escapes: over 256.
            frame: |c| announce_named(c, "\u{1f}".repeat(43), "test"),
            reply: Exact("name too long: 258 bytes, limit is 256"),
            kind: "too_long",
        },
        Case {
            name: "client of quotes",
            phase: Pending,
            // 33 quotes, 66 bytes as JSON escapes: over 64.
            frame: |c| announce_named(c, "node".into(), &"\"".repeat(33)),
            reply: Exact("client too long: 66 bytes, limit is 64"),
            kind: "too_long",
        },
        Case {
            name: "ping out of range",
            phase: Node,
            frame: |c| {
                format!(
                    "{{\"NodeStats\":[{{\"id\":\"{}\",\"version\":\"1\",\"ping_ms\":-1,\"ping_rx\":0}}]}}",
                    c.other
                )
                .into()
            },
            reply: Malformed("invalid value: integer `-1`, expected u32"),
            kind: "malformed",
        },
    ]
}

#[test]
fn every_bad_frame_gets_its_error_and_harms_nobody() {
    for case in cases() {
        let mut h = Harness::new();
        let bystander = h.join(9);
        let (conn, challenge) = h.open(Codec::Json);
        let me = U256(key(1).verifying_key().to_bytes());
        if case.phase == Phase::Node {
            h.send(conn, Codec::Json, &announce(&key(1), challenge));
        }
        let ctx = Ctx { challenge, me, other: bystander.id };
        let out = h.frame(conn, (case.frame)(&ctx));

        let replies = messages_to(&out, conn, Codec::Json);
        let [peer_signal::WSSignalMessageToNode::Error(text)] = replies.as_slice() else {
            panic!("{}: expected one Error, got {out:?}", case.name);
        };
        match case.reply {
            Reply::Exact(expected) => assert_eq!(text, expected, "{}", case.name),
            Reply::Malformed(phrase) => assert!(
                text.starts_with("malformed message: ") && text.contains(phrase),
                "{}: {text:?} lacks {phrase:?}",
                case.name
            ),
        }
        assert_eq!(touched(&out), vec![conn], "{}: others saw something", case.name);
        assert!(events(&out).is_empty(), "{}", case.name);
        assert_eq!(
            h.server.stats().errors.get(case.kind),
            Some(&1),
            "{}: {:?}",
            case.name,
            h.server.stats().errors
        );

        // The connection is still open, in the same phase.
        match case.phase {
            Phase::Node => assert_eq!(h.server.node_conn(&me), Some(conn), "{}", case.name),
            Phase::Pending => {
                let out = h.send(conn, Codec::Json, &announce(&key(1), challenge));
                assert!(
                    matches!(events(&out).as_slice(), [SignalEvent::NewNode(node)] if node.id == me),
                    "{}: cannot announce after",
                    case.name
                );
            }
        }
        // And the bystander still relays.
        let setup = WSSignalMessageFromNode::PeerSetup(PeerInfo {
            id_init: bystander.id,
            id_follow: me,
            message: PeerMessage::Init,
        });
        assert_eq!(touched(&h.from(bystander, &setup)), vec![conn], "{}", case.name);
    }
}

#[test]
fn bad_binary_frames_get_an_error_too() {
    for frame in [&[][..], &[0xff; 3][..], &[2, 0xff, 0xff, 0xff, 0xff, 0x0f][..], &[1, 0][..]] {
        let mut h = Harness::new();
        let node = h.join_with(&key(1), Codec::Bincode);
        let out = h.frame(node.conn, Bytes::copy_from_slice(frame));
        let replies = messages_to(&out, node.conn, Codec::Bincode);
        assert!(
            matches!(replies.as_slice(), [peer_signal::WSSignalMessageToNode::Error(t)] if t.starts_with("malformed message: ")),
            "{frame:?}: {replies:?}"
        );
        assert_eq!(touched(&out), vec![node.conn]);
    }
}

#[test]
fn a_bincode_length_prefix_cannot_make_the_server_allocate() {
    // A NodeStats claiming 2^60 entries in a 12-byte frame.
    let mut frame = vec![3u8];
    frame.push(253); // bincode's varint marker for a u64
    frame.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let mut h = Harness::new();
    let node = h.join_with(&key(1), Codec::Bincode);
    let out = h.frame(node.conn, frame);
    assert_eq!(touched(&out), vec![node.conn]);
    assert_eq!(h.server.stats().errors.get("malformed"), Some(&1));
}

#[test]
fn errors_are_counted_per_connection_and_limits_are_configurable() {
    let mut h = Harness::with(SignalConfig::default().with_max_frame_size(10).with_max_errors(2));
    let (conn, _) = h.open(Codec::Json);
    let out = h.frame(conn, "\"ListIDsRequest\"");
    assert_eq!(messages_to(&out, conn, Codec::Json), vec![error("frame too large: 16 bytes, limit is 10")]);
    let out = h.frame(conn, "{");
    assert_eq!(closed(&out), vec![conn]);
}

#[test]
fn strings_within_their_limit_as_json_escapes_are_accepted_in_both_codecs() {
    for codec in [Codec::Json, Codec::Bincode] {
        let mut h = Harness::new();
        let (conn, challenge) = h.open(codec);
        let key = key(1);
        // 42 control characters: 252 bytes as JSON escapes, within 256.
        let info = NodeInfo::new("\u{1}".repeat(42), "\\".repeat(32), key.verifying_key().to_bytes());
        let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
            version: SIGNAL_VERSION,
            challenge,
            node_info: info.clone(),
            signature: sign_challenge(&key, &challenge),
        });
        let out = h.send(conn, codec, &announce);
        assert!(
            matches!(events(&out).as_slice(), [SignalEvent::NewNode(node)] if node.info == info),
            "{codec:?}"
        );
        // One more of each is refused, in bincode too, which writes them as single bytes.
        let (conn, challenge) = h.open(codec);
        let long = NodeInfo::new("\u{1}".repeat(43), "test", key.verifying_key().to_bytes());
        let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
            version: SIGNAL_VERSION,
            challenge,
            node_info: long,
            signature: sign_challenge(&key, &challenge),
        });
        let out = h.send(conn, codec, &announce);
        assert_eq!(messages_to(&out, conn, codec), vec![error("name too long: 258 bytes, limit is 256")]);
    }
}

#[test]
fn error_replies_quote_at_most_128_bytes_of_the_frame() {
    let long = "x".repeat(10 * 1024);
    let frames: Vec<(&str, String)> = vec![
        ("unknown variant", format!("{{\"{long}\":1}}")),
        ("unknown variant, as a string", format!("\"{long}\"")),
        ("unknown field", format!("{{\"PeerSetup\":{{\"{long}\":1}}}}")),
        ("string for a sequence", format!("{{\"NodeStats\":\"{long}\"}}")),
        ("unknown module", format!("{{\"Announce\":{{\"version\":3,\"challenge\":\"{}\",\"node_info\":{{\"NodeInfoV3\":{{\"name\":\"a\",\"client\":\"b\",\"pubkey\":\"{}\",\"modules\":\"{long}\"}}}},\"signature\":\"{}\"}}}}", "00".repeat(32), "00".repeat(32), "00".repeat(64))),
        ("a number for an SDP", format!("{{\"PeerSetup\":{{\"id_init\":\"{0}\",\"id_follow\":\"{0}\",\"message\":{{\"Offer\":[{1}]}}}}}}", "00".repeat(32), "1,".repeat(5000) + "1")),
        ("an id of the wrong length", format!("{{\"PeerSetup\":{{\"id_init\":\"{long}\"}}}}")),
        ("control characters", format!("{{\"{}\":1}}", "\\u0001".repeat(2000))),
        ("multi-byte characters", format!("{{\"{}\":1}}", "日".repeat(3000))),
    ];
    for (name, frame) in frames {
        assert!(frame.len() > 9000, "{name}");
        let mut h = Harness::new();
        let node = h.join(1);
        let out = h.frame(node.conn, frame);
        let sent = frames_to(&out, node.conn);
        let [reply] = sent.as_slice() else { panic!("{name}: {out:?}") };
        let Ok(WSSignalMessageToNode::Error(text)) = Codec::Json.decode(reply) else {
            panic!("{name}: {reply:?}")
        };
        assert!(text.starts_with("malformed message: "), "{name}: {text}");
        // The prefix, 128 bytes of the decoder's description, the cut mark and a position.
        assert!(text.len() <= 19 + 128 + 3 + 30, "{name}: {} bytes: {text}", text.len());
        // As JSON, each quoted control character may take six bytes.
        assert!(reply.len() <= 32 + 6 * 128 + 60, "{name}: a reply of {} bytes", reply.len());
        assert_eq!(h.server.stats().errors.get("malformed"), Some(&1), "{name}");
    }
}
