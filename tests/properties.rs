//! Layer 3: properties. Both codecs round-trip arbitrary messages, and random scripts of opens,
//! frames (valid, mutated, random), closes, busy reports, ticks and stops keep the state machine's invariants
//! after every step. `PROPTEST_CASES=10000 cargo test --test properties` for a longer run.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::script_config::{script_config, SCRIPT_SERVER};
use common::Harness;
use ed25519_dalek::SigningKey;
use peer_signal::{
    bound_announce_bytes, sign_challenge, BoundAnnounce, Capabilities, Codec, ConnId, FledgerConfig,
    IceServer, IceServers, MessageAnnounce, Modules, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage,
    SignalIn, SignalOut, SignedSetup, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};
use proptest::prelude::*;

// ---- Strategies for the protocol types (here, not in the library: they are test code). ----

fn text(max: usize) -> impl Strategy<Value = String> {
    // Any chars, quotes, backslashes and control characters included.
    proptest::collection::vec(any::<char>(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

fn u256() -> impl Strategy<Value = U256> {
    any::<[u8; 32]>().prop_map(U256)
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (text(24), text(12), any::<[u8; 32]>(), any::<u32>()).prop_map(|(name, client, pubkey, modules)| {
        NodeInfo { name, client, pubkey, modules: Modules(modules) }
    })
}

fn signature() -> impl Strategy<Value = [u8; 64]> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut signature = [0; 64];
        signature[..32].copy_from_slice(&a);
        signature[32..].copy_from_slice(&b);
        signature
    })
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        Just(PeerMessage::Init),
        text(40).prop_map(PeerMessage::Offer),
        text(40).prop_map(PeerMessage::Answer),
        text(40).prop_map(PeerMessage::IceCandidate),
    ]
}

fn peer_info() -> impl Strategy<Value = PeerInfo> {
    (u256(), u256(), peer_message()).prop_map(|(id_init, id_follow, message)| PeerInfo {
        id_init,
        id_follow,
        message,
    })
}

fn node_stat() -> impl Strategy<Value = NodeStat> {
    (u256(), text(12), any::<u32>(), any::<u32>()).prop_map(|(id, version, ping_ms, ping_rx)| NodeStat {
        id,
        version,
        ping_ms,
        ping_rx,
    })
}

fn from_node() -> impl Strategy<Value = WSSignalMessageFromNode> {
    prop_oneof![
        (any::<u64>(), u256(), node_info(), signature()).prop_map(
            |(version, challenge, node_info, signature)| {
                WSSignalMessageFromNode::Announce(MessageAnnounce {
                    version,
                    challenge,
                    node_info,
                    signature,
                })
            }
        ),
        Just(WSSignalMessageFromNode::ListIDsRequest),
        peer_info().prop_map(WSSignalMessageFromNode::PeerSetup),
        proptest::collection::vec(node_stat(), 0..4).prop_map(WSSignalMessageFromNode::NodeStats),
        Just(WSSignalMessageFromNode::IceServersRequest),
        (any::<u64>(), u256(), text(40), text(80), any::<u8>(), signature()).prop_map(
            |(version, challenge, server_id, node_info, flags, signature)| {
                WSSignalMessageFromNode::BoundAnnounce(Box::new(BoundAnnounce {
                    version,
                    challenge,
                    server_id,
                    node_info,
                    flags,
                    signature,
                }))
            }
        ),
        signed_setup().prop_map(|signed| WSSignalMessageFromNode::SignedPeerSetup(Box::new(signed))),
    ]
}

fn signed_setup() -> impl Strategy<Value = SignedSetup> {
    (peer_info(), any::<u64>(), signature()).prop_map(|(setup, seq, signature)| SignedSetup {
        setup,
        seq,
        signature,
    })
}

fn ice_servers() -> impl Strategy<Value = IceServers> {
    let server = (proptest::collection::vec(text(30), 0..3), text(20), text(20))
        .prop_map(|(urls, username, credential)| IceServer { urls, username, credential });
    (any::<u64>(), proptest::collection::vec(server, 0..3))
        .prop_map(|(expires, servers)| IceServers { expires, servers })
}

fn to_node() -> impl Strategy<Value = WSSignalMessageToNode> {
    prop_oneof![
        (any::<u64>(), u256()).prop_map(|(version, c)| WSSignalMessageToNode::Challenge(version, c)),
        proptest::collection::vec(node_info(), 0..4).prop_map(WSSignalMessageToNode::ListIDsReply),
        peer_info().prop_map(WSSignalMessageToNode::PeerSetup),
        proptest::option::of(u256())
            .prop_map(|system_realm| WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm })),
        text(40).prop_map(WSSignalMessageToNode::Error),
        ice_servers().prop_map(WSSignalMessageToNode::IceServers),
        signed_setup().prop_map(|signed| WSSignalMessageToNode::SignedPeerSetup(Box::new(signed))),
        (any::<u64>(), any::<bool>()).prop_map(|(bound_announce, signed_setups)| {
            WSSignalMessageToNode::Capabilities(Capabilities { bound_announce, signed_setups })
        }),
    ]
}

const CODECS: [Codec; 2] = [Codec::Json, Codec::Bincode];

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn messages_from_nodes_round_trip_in_both_codecs(message in from_node()) {
        for codec in CODECS {
            let frame = codec.encode(&message).unwrap();
            let decoded: WSSignalMessageFromNode = codec.decode(&frame).unwrap();
            prop_assert_eq!(&decoded, &message);
            prop_assert_eq!(codec.encode(&decoded).unwrap(), frame, "re-encoding changed the bytes");
        }
    }

    #[test]
    fn messages_to_nodes_round_trip_in_both_codecs(message in to_node()) {
        for codec in CODECS {
            let frame = codec.encode(&message).unwrap();
            let decoded: WSSignalMessageToNode = codec.decode(&frame).unwrap();
            prop_assert_eq!(&decoded, &message);
        }
    }

    /// A relay forwards a node's `PeerSetup` frame unchanged: it must read as the server's.
    #[test]
    fn a_peer_setup_frame_means_the_same_in_both_directions(info in peer_info()) {
        for codec in CODECS {
            let frame = codec.encode(&WSSignalMessageFromNode::PeerSetup(info.clone())).unwrap();
            let relayed: WSSignalMessageToNode = codec.decode(&frame).unwrap();
            prop_assert_eq!(&relayed, &WSSignalMessageToNode::PeerSetup(info.clone()));
        }
    }

    /// So does a `SignedPeerSetup`, to a node that asked for signed set-ups.
    #[test]
    fn a_signed_peer_setup_frame_means_the_same_in_both_directions(signed in signed_setup()) {
        for codec in CODECS {
            let frame = codec.encode(&WSSignalMessageFromNode::SignedPeerSetup(Box::new(signed.clone()))).unwrap();
            let relayed: WSSignalMessageToNode = codec.decode(&frame).unwrap();
            prop_assert_eq!(&relayed, &WSSignalMessageToNode::SignedPeerSetup(Box::new(signed.clone())));
        }
    }
}

// ---- The state machine under random scripts. ----

/// Nodes in scripts use these few keys, so that ids collide and take each other over.
const KEYS: usize = 4;

fn keys() -> Vec<SigningKey> {
    (1..=KEYS as u8).map(|n| SigningKey::from_bytes(&[n; 32])).collect()
}

#[derive(Debug, Clone)]
enum Flaw {
    None,
    WrongChallenge,
    BadSignature,
    WrongVersion,
    LongName,
    /// For a bound announce: signed for another server.
    WrongServer,
}

#[derive(Debug, Clone)]
enum Msg {
    Announce {
        key: usize,
        flaw: Flaw,
    },
    List,
    /// A set-up with the node of key `other`; `mine` puts the sender's own id in the pair.
    Setup {
        other: usize,
        mine: bool,
        follow: bool,
        message: PeerMessage,
    },
    Stats(usize),
    /// A bound announce; `signed` asks for signed set-ups.
    BoundAnnounce {
        key: usize,
        flaw: Flaw,
        signed: bool,
    },
    /// A signed set-up, as `Setup`; the signature is garbage (the server does not check it).
    SignedSetup {
        other: usize,
        mine: bool,
        message: PeerMessage,
    },
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, byte: u8 },
}

/// One step of a script. `conn` picks among the connections opened so far, open or not.
#[derive(Debug, Clone)]
enum Op {
    Open {
        bincode: bool,
    },
    /// An open and a valid announce with `key`: most scripts need a few nodes to relay between.
    Join {
        bincode: bool,
        key: usize,
    },
    Send {
        conn: usize,
        msg: Msg,
    },
    Mutated {
        conn: usize,
        msg: Msg,
        mutation: Mutation,
    },
    Random {
        conn: usize,
        bytes: Vec<u8>,
    },
    /// `n` list requests in a row, at one instant: a flood.
    Burst {
        conn: usize,
        n: usize,
    },
    Close {
        conn: usize,
    },
    /// The transport reports the connection's send queue over (or back under) half full.
    Busy {
        conn: usize,
        busy: bool,
    },
    Advance {
        millis: u64,
    },
    /// Not drawn with the others: a script stops at most once, at `stop_at`.
    Stop,
}

fn flaw() -> impl Strategy<Value = Flaw> {
    prop_oneof![
        4 => Just(Flaw::None),
        1 => Just(Flaw::WrongChallenge),
        1 => Just(Flaw::BadSignature),
        1 => Just(Flaw::WrongVersion),
        1 => Just(Flaw::LongName),
        1 => Just(Flaw::WrongServer),
    ]
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        4 => (0..KEYS, flaw()).prop_map(|(key, flaw)| Msg::Announce { key, flaw }),
        2 => Just(Msg::List),
        4 => (0..KEYS, proptest::bool::weighted(0.8), any::<bool>(), peer_message())
            .prop_map(|(other, mine, follow, message)| Msg::Setup { other, mine, follow, message }),
        1 => (0..4usize).prop_map(Msg::Stats),
        3 => (0..KEYS, flaw(), any::<bool>()).prop_map(|(key, flaw, signed)| Msg::BoundAnnounce { key, flaw, signed }),
        3 => (0..KEYS, proptest::bool::weighted(0.8), peer_message())
            .prop_map(|(other, mine, message)| Msg::SignedSetup { other, mine, message }),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..16usize;
    prop_oneof![
        2 => any::<bool>().prop_map(|bincode| Op::Open { bincode }),
        2 => (any::<bool>(), 0..KEYS).prop_map(|(bincode, key)| Op::Join { bincode, key }),
        10 => (conn.clone(), msg()).prop_map(|(conn, msg)| Op::Send { conn, msg }),
        3 => (conn.clone(), msg(), mutation()).prop_map(|(conn, msg, mutation)| Op::Mutated { conn, msg, mutation }),
        1 => (conn.clone(), proptest::collection::vec(any::<u8>(), 0..48)).prop_map(|(conn, bytes)| Op::Random { conn, bytes }),
        1 => (conn.clone(), 1..12usize).prop_map(|(conn, n)| Op::Burst { conn, n }),
        1 => conn.clone().prop_map(|conn| Op::Close { conn }),
        1 => (conn, any::<bool>()).prop_map(|(conn, busy)| Op::Busy { conn, busy }),
        2 => prop_oneof![0..2_000u64, 0..40_000u64].prop_map(|millis| Op::Advance { millis }),
    ]
}

/// What the script knows about one open connection, learnt only from the server's outputs.
struct Known {
    codec: Codec,
    challenge: Option<U256>,
    /// The key of the last announce sent on it.
    announced_key: Option<usize>,
    /// Set when the server sent `SystemConfig`: it accepted the announce.
    node: Option<NodeID>,
}

struct Script {
    h: Harness,
    keys: Vec<SigningKey>,
    ids: Vec<NodeID>,
    /// Every connection ever opened, in order; ops pick from it.
    all: Vec<ConnId>,
    open: BTreeMap<ConnId, Known>,
    next: u64,
    stopped: bool,
}

/// Frames the server may send one connection in response to one input; see `check`.
const MAX_FRAMES_PER_STEP: usize = 4;

impl Script {
    fn new() -> Self {
        let keys = keys();
        let ids = keys.iter().map(|k| NodeID::from(k.verifying_key().to_bytes())).collect();
        Self {
            h: Harness::with(script_config()),
            keys,
            ids,
            all: Vec::new(),
            open: BTreeMap::new(),
            next: 1,
            stopped: false,
        }
    }

    /// Mostly an open connection, sometimes any (frames for closed ones must be ignored).
    fn pick(&self, index: usize) -> Option<ConnId> {
        if index % 4 != 0 && !self.open.is_empty() {
            return self.open.keys().nth(index % self.open.len()).copied();
        }
        self.all.get(index % self.all.len().max(1)).copied()
    }

    fn encode(&mut self, conn: ConnId, msg: &Msg) -> (Codec, Vec<u8>) {
        let known = self.open.get(&conn);
        let codec = known.map_or(Codec::Json, |k| k.codec);
        let challenge = known.and_then(|k| k.challenge).unwrap_or_default();
        let me = known.and_then(|k| k.node).unwrap_or(self.ids[0]);
        let message = match msg {
            Msg::Announce { key, flaw } => {
                let signing = &self.keys[*key];
                let mut info = NodeInfo::new("script", "test", signing.verifying_key().to_bytes());
                let mut announce = MessageAnnounce {
                    version: SIGNAL_VERSION,
                    challenge,
                    node_info: info.clone(),
                    signature: sign_challenge(signing, &challenge),
                };
                match flaw {
                    Flaw::None | Flaw::WrongServer => {}
                    Flaw::WrongChallenge => announce.challenge = U256([0xee; 32]),
                    Flaw::BadSignature => announce.signature[0] ^= 1,
                    Flaw::WrongVersion => announce.version = 2,
                    Flaw::LongName => {
                        info.name = "n".repeat(17);
                        announce.node_info = info;
                    }
                }
                if let Some(k) = self.open.get_mut(&conn) {
                    k.announced_key = Some(*key);
                }
                WSSignalMessageFromNode::Announce(announce)
            }
            Msg::List => WSSignalMessageFromNode::ListIDsRequest,
            Msg::Setup { other, mine, follow, message } => {
                let other = self.ids[*other];
                let first = if *mine { me } else { U256([0x55; 32]) };
                let (id_init, id_follow) = if *follow { (other, first) } else { (first, other) };
                WSSignalMessageFromNode::PeerSetup(PeerInfo { id_init, id_follow, message: message.clone() })
            }
            Msg::BoundAnnounce { key, flaw, signed } => {
                let signing = &self.keys[*key];
                let name = if matches!(flaw, Flaw::LongName) { "n".repeat(17) } else { "script".into() };
                let info = NodeInfo::new(name, "test", signing.verifying_key().to_bytes());
                let node_info = serde_json::to_string(&info).unwrap();
                let server_id =
                    if matches!(flaw, Flaw::WrongServer) { "wss://m.example" } else { SCRIPT_SERVER };
                let flags = u8::from(*signed);
                let challenge_signed =
                    if matches!(flaw, Flaw::WrongChallenge) { U256([0xee; 32]) } else { challenge };
                let bytes =
                    bound_announce_bytes(server_id, &challenge_signed, &info.pubkey, &node_info, flags)
                        .unwrap();
                let mut signature = ed25519_dalek::Signer::sign(signing, &bytes).to_bytes();
                if matches!(flaw, Flaw::BadSignature) {
                    signature[0] ^= 1;
                }
                let version = if matches!(flaw, Flaw::WrongVersion) { 2 } else { 1 };
                if let Some(k) = self.open.get_mut(&conn) {
                    k.announced_key = Some(*key);
                }
                let bound = BoundAnnounce {
                    version,
                    challenge: challenge_signed,
                    server_id: server_id.into(),
                    node_info,
                    flags,
                    signature,
                };
                WSSignalMessageFromNode::BoundAnnounce(Box::new(bound))
            }
            Msg::SignedSetup { other, mine, message } => {
                let other = self.ids[*other];
                let first = if *mine { me } else { U256([0x55; 32]) };
                let setup = PeerInfo { id_init: first, id_follow: other, message: message.clone() };
                WSSignalMessageFromNode::SignedPeerSetup(Box::new(SignedSetup {
                    setup,
                    seq: 1,
                    signature: [7; 64],
                }))
            }
            Msg::Stats(n) => WSSignalMessageFromNode::NodeStats(vec![
                NodeStat {
                    id: me,
                    version: "1".into(),
                    ping_ms: 3,
                    ping_rx: 4
                };
                *n
            ]),
        };
        (codec, codec.encode(&message).unwrap().to_vec())
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let input = match op {
            Op::Open { bincode } => {
                let conn = ConnId::new(self.next);
                self.next += 1;
                self.all.push(conn);
                let codec = if *bincode { Codec::Bincode } else { Codec::Json };
                self.open.insert(conn, Known { codec, challenge: None, announced_key: None, node: None });
                SignalIn::Opened { conn, codec, addr: None }
            }
            Op::Send { conn, msg } => {
                let Some(conn) = self.pick(*conn) else { return Ok(()) };
                let (_, frame) = self.encode(conn, msg);
                SignalIn::Frame { conn, frame: frame.into() }
            }
            Op::Mutated { conn, msg, mutation } => {
                let Some(conn) = self.pick(*conn) else { return Ok(()) };
                let (_, mut frame) = self.encode(conn, msg);
                let len = frame.len().max(1);
                match *mutation {
                    Mutation::Flip { at, bit } => {
                        if let Some(byte) = frame.get_mut(at % len) {
                            *byte ^= 1 << bit;
                        }
                    }
                    Mutation::Truncate { at } => frame.truncate(at % len),
                    Mutation::Insert { at, byte } => frame.insert(at % len, byte),
                }
                SignalIn::Frame { conn, frame: frame.into() }
            }
            Op::Random { conn, bytes } => {
                let Some(conn) = self.pick(*conn) else { return Ok(()) };
                SignalIn::Frame { conn, frame: bytes.clone().into() }
            }
            Op::Join { bincode, key } => {
                self.run(&Op::Open { bincode: *bincode })?;
                let Some(&conn) = self.all.last() else { return Ok(()) };
                let (_, frame) = self.encode(conn, &Msg::Announce { key: *key, flaw: Flaw::None });
                SignalIn::Frame { conn, frame: frame.into() }
            }
            Op::Burst { conn, n } => {
                for _ in 0..*n {
                    self.run(&Op::Send { conn: *conn, msg: Msg::List })?;
                }
                return Ok(());
            }
            Op::Close { conn } => {
                let Some(conn) = self.pick(*conn) else { return Ok(()) };
                self.open.remove(&conn);
                SignalIn::Closed { conn }
            }
            Op::Busy { conn, busy } => {
                let Some(conn) = self.pick(*conn) else { return Ok(()) };
                let out = self.h.input(SignalIn::Busy { conn, busy: *busy });
                prop_assert!(out.is_empty(), "a busy report caused {out:?}");
                return self.check(&out);
            }
            Op::Advance { millis } => {
                self.h.now += Duration::from_millis(*millis);
                SignalIn::Tick
            }
            Op::Stop => {
                self.stopped = true;
                SignalIn::Stop
            }
        };
        let out = self.h.input(input);
        self.check(&out)
    }

    /// The invariants, after every step.
    fn check(&mut self, out: &[SignalOut]) -> Result<(), TestCaseError> {
        let mut frames: HashMap<ConnId, usize> = HashMap::new();
        for output in out {
            match output {
                SignalOut::Send { conn, frame } => {
                    let Some(known) = self.open.get_mut(conn) else {
                        return Err(TestCaseError::fail(format!("a frame for {conn:?}, which is not open")));
                    };
                    let count = frames.entry(*conn).or_default();
                    *count += 1;
                    prop_assert!(
                        *count <= MAX_FRAMES_PER_STEP,
                        "{count} frames for {conn:?} in one step: {out:?}"
                    );
                    let message: WSSignalMessageToNode = known.codec.decode(frame).unwrap();
                    match message {
                        WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge) => {
                            prop_assert!(known.challenge.is_none(), "a second challenge");
                            known.challenge = Some(challenge);
                        }
                        WSSignalMessageToNode::Capabilities(_) => {
                            prop_assert!(known.challenge.is_none(), "capabilities after the challenge");
                        }
                        WSSignalMessageToNode::Error(_) => {}
                        WSSignalMessageToNode::SystemConfig(_) => {
                            prop_assert!(known.node.is_none(), "a second SystemConfig");
                            let key = known.announced_key.expect("accepted without an announce");
                            known.node = Some(self.ids[key]);
                        }
                        other => prop_assert!(
                            known.node.is_some(),
                            "{other:?} reached an unauthenticated connection {conn:?}"
                        ),
                    }
                }
                SignalOut::Close { conn, .. } => {
                    prop_assert!(self.open.remove(conn).is_some(), "closing {conn:?}, which is not open");
                }
                SignalOut::Event(_) => {}
                other => return Err(TestCaseError::fail(format!("unknown output {other:?}"))),
            }
        }
        prop_assert_eq!(self.h.server.poll_output(), None);

        let listed: BTreeMap<NodeID, Option<ConnId>> =
            self.h.server.nodes().map(|info| (info.id(), self.h.server.node_conn(&info.id()))).collect();
        let authenticated: BTreeMap<NodeID, Option<ConnId>> =
            self.open.iter().filter_map(|(conn, k)| Some((k.node?, Some(*conn)))).collect();
        prop_assert_eq!(&listed, &authenticated, "the node list is not the authenticated open connections");
        prop_assert_eq!(
            authenticated.len(),
            self.open.values().filter(|k| k.node.is_some()).count(),
            "two open connections hold the same id"
        );
        let stats = self.h.server.stats();
        prop_assert_eq!(stats.connections, self.open.len());
        prop_assert!(stats.connections <= script_config().max_connections);
        prop_assert_eq!(stats.pending_handshakes, self.open.values().filter(|k| k.node.is_none()).count());
        prop_assert!(stats.pending_handshakes <= script_config().max_pending_handshakes);
        if self.stopped {
            prop_assert!(self.open.is_empty() && listed.is_empty());
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_scripts_keep_the_invariants(ops in proptest::collection::vec(op(), 1..80), stop_at in any::<Option<u8>>()) {
        let mut script = Script::new();
        for (i, op) in ops.iter().enumerate() {
            if stop_at.is_some_and(|at| usize::from(at) == i) {
                script.run(&Op::Stop)?;
            }
            script.run(op)?;
        }
        // Every connection still open is closed by a stop.
        script.run(&Op::Stop)?;
        prop_assert!(script.open.is_empty());
    }
}
