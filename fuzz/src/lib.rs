//! What the fuzz targets share: the codec round trip, and a scripted run of the state machine
//! with its invariants checked after every input.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    sign_challenge, Codec, ConnId, MessageAnnounce, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage,
    SignalIn, SignalOut, SignalServer, WSSignalMessageFromNode,
    WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

/// Decodes `data`; whatever decodes must encode, and decode again to the same message.
pub fn round_trip(codec: Codec, data: &[u8]) {
    if let Ok(message) = codec.decode::<WSSignalMessageFromNode>(data) {
        let frame = codec.encode(&message).expect("a decoded message encodes");
        let again: WSSignalMessageFromNode = codec.decode(&frame).expect("a re-encoded message decodes");
        assert_eq!(again, message);
    }
}

/// One input for the server. `conn` picks among the connections opened so far.
#[derive(Arbitrary, Debug)]
pub enum Op {
    Open { bincode: bool },
    /// Any bytes.
    Frame { conn: u8, bytes: Vec<u8> },
    /// A well-formed message, optionally with `splice` bytes written over it at `at`.
    Message { conn: u8, message: Message, splice: Option<(u16, Vec<u8>)> },
    Close { conn: u8 },
    /// The transport reports the connection's send queue over (or back under) half full.
    Busy { conn: u8, busy: bool },
    /// Moves virtual time forward, then ticks.
    Tick { millis: u16 },
    Stop,
}

/// A message a node might send, built to get past the decoder.
#[derive(Arbitrary, Debug)]
pub enum Message {
    /// `flaw`: 0 none, 1 wrong challenge, 2 bad signature, 3 wrong version, else no change.
    Announce { key: u8, flaw: u8, name: String },
    List,
    Setup { other: u8, mine: bool, follow: bool, kind: u8, text: String },
    Stats { n: u8, version: String },
}

const KEYS: usize = 4;
/// Frames one connection may get in response to one input.
const MAX_FRAMES_PER_STEP: usize = 4;

fn keys() -> &'static [(SigningKey, NodeID)] {
    static KEYS_: OnceLock<Vec<(SigningKey, NodeID)>> = OnceLock::new();
    KEYS_.get_or_init(|| {
        (1..=KEYS as u8)
            .map(|n| {
                let key = SigningKey::from_bytes(&[n; 32]);
                let id = NodeID::from(key.verifying_key().to_bytes());
                (key, id)
            })
            .collect()
    })
}

#[path = "../../tests/common/script_config.rs"]
mod script_config;
pub use script_config::script_config as config;

struct Known {
    codec: Codec,
    challenge: U256,
    node: Option<NodeID>,
}

/// Runs `ops` against a fresh server and checks, after each: no panic, nothing sent to or closed
/// on a connection that is not open, at most a few frames per connection, a bounded output queue,
/// and no more connections than allowed.
pub fn run(ops: &[Op]) {
    let config = config();
    let mut server = SignalServer::new(config.clone()).expect("a valid config");
    let mut now = Instant::now();
    let mut all: Vec<ConnId> = Vec::new();
    let mut open: BTreeMap<ConnId, Known> = BTreeMap::new();
    let mut next = 1u64;
    for op in ops.iter().take(256) {
        let pick = |conn: &u8| all.get(usize::from(*conn) % all.len().max(1)).copied();
        let input = match op {
            Op::Open { bincode } => {
                let conn = ConnId::new(next);
                next += 1;
                all.push(conn);
                let codec = if *bincode { Codec::Bincode } else { Codec::Json };
                open.insert(conn, Known { codec, challenge: U256::default(), node: None });
                SignalIn::Opened { conn, codec, addr: None }
            }
            Op::Frame { conn, bytes } => {
                let Some(conn) = pick(conn) else { continue };
                SignalIn::Frame { conn, frame: bytes.clone().into() }
            }
            Op::Message { conn, message, splice } => {
                let Some(conn) = pick(conn) else { continue };
                let mut frame = encode(open.get(&conn), message);
                if let Some((at, bytes)) = splice {
                    let at = usize::from(*at) % frame.len().max(1);
                    let end = (at + bytes.len()).min(frame.len());
                    frame.splice(at..end, bytes.iter().copied());
                }
                SignalIn::Frame { conn, frame: frame.into() }
            }
            Op::Close { conn } => {
                let Some(conn) = pick(conn) else { continue };
                open.remove(&conn);
                SignalIn::Closed { conn }
            }
            Op::Busy { conn, busy } => {
                let Some(conn) = pick(conn) else { continue };
                SignalIn::Busy { conn, busy: *busy }
            }
            Op::Tick { millis } => {
                now += Duration::from_millis(u64::from(*millis) * 16);
                SignalIn::Tick
            }
            Op::Stop => SignalIn::Stop,
        };
        let open_before = open.len();
        server.handle(now, input);
        let mut outputs = 0usize;
        let mut frames: HashMap<ConnId, usize> = HashMap::new();
        while let Some(output) = server.poll_output() {
            outputs += 1;
            assert!(outputs <= 3 * open_before + config.list_push_fanout + 8, "output queue grows: {outputs}");
            match output {
                SignalOut::Send { conn, frame } => {
                    let known = open.get_mut(&conn).expect("a frame for a connection that is not open");
                    let count = frames.entry(conn).or_default();
                    *count += 1;
                    assert!(*count <= MAX_FRAMES_PER_STEP, "{count} frames for {conn:?} in one step");
                    let message: WSSignalMessageToNode = known.codec.decode(&frame).expect("server frames decode");
                    match message {
                        WSSignalMessageToNode::Challenge(_, challenge) => known.challenge = challenge,
                        WSSignalMessageToNode::SystemConfig(_) => known.node = Some(NodeID::default()),
                        WSSignalMessageToNode::Error(_) | WSSignalMessageToNode::Capabilities(_) => {}
                        _ => assert!(known.node.is_some(), "a frame for an unauthenticated connection"),
                    }
                }
                SignalOut::Close { conn, .. } => {
                    assert!(open.remove(&conn).is_some(), "closing a connection that is not open");
                }
                _ => {}
            }
        }
        let stats = server.stats();
        assert_eq!(stats.connections, open.len());
        assert!(stats.connections <= config.max_connections);
        assert!(stats.pending_handshakes <= config.max_pending_handshakes);
        assert_eq!(stats.nodes, open.values().filter(|known| known.node.is_some()).count());
    }
}

fn encode(known: Option<&Known>, message: &Message) -> Vec<u8> {
    let keys = keys();
    let codec = known.map_or(Codec::Json, |k| k.codec);
    let challenge = known.map_or(U256::default(), |k| k.challenge);
    let me = keys[0].1;
    let message = match message {
        Message::Announce { key, flaw, name } => {
            let (signing, _) = &keys[usize::from(*key) % KEYS];
            let mut info = NodeInfo::new(name.clone(), "fuzz", signing.verifying_key().to_bytes());
            info.modules.0 = u32::from(*flaw);
            let mut announce = MessageAnnounce {
                version: SIGNAL_VERSION,
                challenge,
                node_info: info,
                signature: sign_challenge(signing, &challenge),
            };
            match flaw {
                1 => announce.challenge = U256([0xee; 32]),
                2 => announce.signature[0] ^= 1,
                3 => announce.version = 2,
                _ => {}
            }
            WSSignalMessageFromNode::Announce(announce)
        }
        Message::List => WSSignalMessageFromNode::ListIDsRequest,
        Message::Setup { other, mine, follow, kind, text } => {
            let other = keys[usize::from(*other) % KEYS].1;
            let first = if *mine { me } else { U256([0x55; 32]) };
            let (id_init, id_follow) = if *follow { (other, first) } else { (first, other) };
            let message = match kind % 4 {
                0 => PeerMessage::Init,
                1 => PeerMessage::Offer(text.clone()),
                2 => PeerMessage::Answer(text.clone()),
                _ => PeerMessage::IceCandidate(text.clone()),
            };
            WSSignalMessageFromNode::PeerSetup(PeerInfo { id_init, id_follow, message })
        }
        Message::Stats { n, version } => WSSignalMessageFromNode::NodeStats(vec![
            NodeStat { id: me, version: version.clone(), ping_ms: 1, ping_rx: 2 };
            usize::from(*n % 8)
        ]),
    };
    codec.encode(&message).map(|frame| frame.to_vec()).unwrap_or_default()
}
