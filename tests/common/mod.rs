//! A deterministic harness: a seeded server, a virtual clock and fixed keys. No sockets, no sleeps.
#![allow(dead_code, unreachable_pub)]

pub mod script_config;

use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use peer_signal::{
    sign_challenge, Codec, ConnId, MessageAnnounce, NodeID, NodeInfo, SignalConfig, SignalEvent, SignalIn,
    SignalOut, SignalServer, WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

/// The ed25519 key made from the seed `[n; 32]`; key 1 and key 2 are the ones in the vectors.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn node_info(key: &SigningKey) -> NodeInfo {
    NodeInfo::new(
        format!("node-{}", key.verifying_key().as_bytes()[0]),
        "test",
        key.verifying_key().to_bytes(),
    )
}

pub fn announce(key: &SigningKey, challenge: U256) -> WSSignalMessageFromNode {
    WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: SIGNAL_VERSION,
        challenge,
        node_info: node_info(key),
        signature: sign_challenge(key, &challenge),
    })
}

/// An announced node in the harness.
#[derive(Debug, Clone, Copy)]
pub struct Joined {
    pub conn: ConnId,
    pub id: NodeID,
    pub codec: Codec,
}

pub struct Harness {
    pub server: SignalServer,
    pub now: Instant,
    next_conn: u64,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(SignalConfig::default())
    }

    /// A harness whose server has `config`, with the RNG seed pinned.
    pub fn with(config: SignalConfig) -> Self {
        let config = config.with_rng_seed([7; 32]);
        Self { server: SignalServer::new(config).expect("a valid config"), now: Instant::now(), next_conn: 1 }
    }

    /// Feeds one input and returns everything it caused.
    pub fn input(&mut self, input: SignalIn) -> Vec<SignalOut> {
        self.server.handle(self.now, input);
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Moves the virtual clock and ticks; never sleeps.
    pub fn advance(&mut self, by: Duration) -> Vec<SignalOut> {
        self.now += by;
        self.input(SignalIn::Tick)
    }

    /// Opens a connection and returns it with the challenge it was sent.
    pub fn open(&mut self, codec: Codec) -> (ConnId, U256) {
        self.open_from(codec, None)
    }

    /// Opens a connection from `addr` and returns it with the challenge it was sent.
    pub fn open_from(&mut self, codec: Codec, addr: Option<std::net::IpAddr>) -> (ConnId, U256) {
        let conn = ConnId::new(self.next_conn);
        self.next_conn += 1;
        let out = self.input(SignalIn::Opened { conn, codec, addr });
        match messages_to(&out, conn, codec).as_slice() {
            [WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge)] => (conn, *challenge),
            other => panic!("expected one challenge, got {other:?}"),
        }
    }

    /// Sends raw bytes on a connection.
    pub fn frame(&mut self, conn: ConnId, frame: impl Into<Bytes>) -> Vec<SignalOut> {
        self.input(SignalIn::Frame { conn, frame: frame.into() })
    }

    /// Encodes a message with `codec` and sends it on `conn`.
    pub fn send(&mut self, conn: ConnId, codec: Codec, message: &WSSignalMessageFromNode) -> Vec<SignalOut> {
        let frame = codec.encode(message).expect("test messages encode");
        self.frame(conn, frame)
    }

    /// Opens a connection and announces with `key`; checks that the server accepted it.
    pub fn join_with(&mut self, key: &SigningKey, codec: Codec) -> Joined {
        self.join_from(key, codec, None)
    }

    /// As [`join_with`](Self::join_with), from `addr`.
    pub fn join_from(&mut self, key: &SigningKey, codec: Codec, addr: Option<std::net::IpAddr>) -> Joined {
        let (conn, challenge) = self.open_from(codec, addr);
        let out = self.send(conn, codec, &announce(key, challenge));
        let id = U256(key.verifying_key().to_bytes());
        assert!(
            out.iter().any(|o| matches!(o, SignalOut::Event(SignalEvent::NewNode(node)) if node.id == id)),
            "join failed: {out:?}"
        );
        Joined { conn, id, codec }
    }

    pub fn join(&mut self, seed: u8) -> Joined {
        self.join_with(&key(seed), Codec::Json)
    }

    /// Sends a message from an announced node.
    pub fn from(&mut self, node: Joined, message: &WSSignalMessageFromNode) -> Vec<SignalOut> {
        self.send(node.conn, node.codec, message)
    }
}

/// The messages in `out` sent to `conn`, decoded with `codec`.
pub fn messages_to(out: &[SignalOut], conn: ConnId, codec: Codec) -> Vec<WSSignalMessageToNode> {
    frames_to(out, conn).iter().map(|frame| codec.decode(frame).expect("server frames decode")).collect()
}

/// The raw frames in `out` sent to `conn`.
pub fn frames_to(out: &[SignalOut], conn: ConnId) -> Vec<Bytes> {
    out.iter()
        .filter_map(|o| match o {
            SignalOut::Send { conn: c, frame } if *c == conn => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

/// Every connection that `out` sends to or closes.
pub fn touched(out: &[SignalOut]) -> Vec<ConnId> {
    let mut conns: Vec<ConnId> = out
        .iter()
        .filter_map(|o| match o {
            SignalOut::Send { conn, .. } | SignalOut::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect();
    conns.sort_unstable();
    conns.dedup();
    conns
}

pub fn error(text: &str) -> WSSignalMessageToNode {
    WSSignalMessageToNode::Error(text.to_string())
}

pub fn events(out: &[SignalOut]) -> Vec<SignalEvent> {
    out.iter()
        .filter_map(|o| match o {
            SignalOut::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

pub fn closed(out: &[SignalOut]) -> Vec<ConnId> {
    out.iter()
        .filter_map(|o| match o {
            SignalOut::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}
