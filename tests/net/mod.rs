//! Several seeded servers wired through a `MemoryBus`, with one virtual clock: layer 1 of the
//! cluster tests. No executor, no sockets, no sleeps.
#![allow(dead_code, unreachable_pub)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use peer_signal::{
    sign_challenge, ClusterConfig, ClusterIn, Codec, ConnId, MemoryBackplane, MemoryBus, MessageAnnounce,
    NodeID, NodeInfo, SignalConfig, SignalIn, SignalOut, SignalServer, WSSignalMessageFromNode,
    WSSignalMessageToNode, SIGNAL_VERSION, U256,
};

/// The key made from the seed `[n; 32]`.
pub fn key(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}

pub fn id(n: u8) -> NodeID {
    NodeID::from(key(n).verifying_key().to_bytes())
}

/// A node announced on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub instance: usize,
    pub conn: ConnId,
    pub id: NodeID,
    pub codec: Codec,
}

/// What one instance's server emitted, other than its cluster outputs (those went to the bus).
#[derive(Debug, Clone)]
pub struct Seen {
    pub instance: usize,
    pub out: SignalOut,
}

pub struct Net {
    pub bus: MemoryBus,
    pub servers: Vec<SignalServer>,
    pub planes: Vec<MemoryBackplane>,
    pub now: Instant,
    next_conn: u64,
}

impl Net {
    /// `n` instances with `config` (each its own seed) on one bus.
    pub fn new(n: usize, config: SignalConfig) -> Self {
        Self::with(n, config, ClusterConfig::default())
    }

    pub fn with(n: usize, config: SignalConfig, cluster: ClusterConfig) -> Self {
        let bus = MemoryBus::new(4096);
        let servers = (0..n)
            .map(|i| {
                let config = config.clone().with_rng_seed([7 + i as u8; 32]);
                SignalServer::with_cluster(config, cluster.clone()).expect("a valid config")
            })
            .collect();
        let planes = (0..n).map(|_| bus.instance()).collect();
        let mut net = Self { bus, servers, planes, now: Instant::now(), next_conn: 1 };
        net.settle();
        net
    }

    /// Feeds one input to instance `i`, lets the bus settle, and returns what every instance
    /// emitted meanwhile.
    pub fn input(&mut self, i: usize, input: SignalIn) -> Vec<Seen> {
        self.servers[i].handle(self.now, input);
        self.settle()
    }

    /// Hands every cluster output to the bus and every bus input to its server, until nothing
    /// moves. Returns the other outputs, in order per instance.
    pub fn settle(&mut self) -> Vec<Seen> {
        let mut seen = Vec::new();
        loop {
            let mut moved = false;
            for i in 0..self.servers.len() {
                while let Some(out) = self.servers[i].poll_output() {
                    moved = true;
                    match out {
                        SignalOut::Cluster(out) => self.planes[i].send(*out),
                        out => seen.push(Seen { instance: i, out }),
                    }
                }
            }
            for i in 0..self.servers.len() {
                while let Some(input) = self.planes[i].poll() {
                    moved = true;
                    self.servers[i].handle(self.now, SignalIn::Cluster(Box::new(input)));
                }
            }
            if !moved {
                return seen;
            }
        }
    }

    /// Feeds one input without letting the bus move: its cluster outputs stay queued in the
    /// server until the next `settle`.
    pub fn input_held(&mut self, i: usize, input: SignalIn) {
        self.servers[i].handle(self.now, input);
    }

    /// Moves the clock and ticks every instance.
    pub fn advance(&mut self, by: Duration) -> Vec<Seen> {
        self.now += by;
        for i in 0..self.servers.len() {
            self.servers[i].handle(self.now, SignalIn::Tick);
        }
        self.settle()
    }

    pub fn open(&mut self, i: usize, codec: Codec) -> (ConnId, U256) {
        let conn = ConnId::new(self.next_conn);
        self.next_conn += 1;
        let seen = self.input(i, SignalIn::Opened { conn, codec, addr: None });
        match messages_to(&seen, conn, codec).as_slice() {
            [WSSignalMessageToNode::Challenge(SIGNAL_VERSION, challenge)] => (conn, *challenge),
            other => panic!("expected one challenge, got {other:?}"),
        }
    }

    /// An announce of key `n` on a new connection to instance `i`, fed without letting the
    /// bus move.
    pub fn announce_held(&mut self, i: usize, n: u8, codec: Codec) -> Joined {
        let (conn, challenge) = self.open(i, codec);
        let frame = codec.encode(&announce(&key(n), challenge)).expect("encodes");
        self.input_held(i, SignalIn::Frame { conn, frame });
        Joined { instance: i, conn, id: id(n), codec }
    }

    /// Node `n` joins instance `i`; checks that it was accepted.
    pub fn join(&mut self, i: usize, n: u8, codec: Codec) -> Joined {
        let joined = self.announce_held(i, n, codec);
        self.settle();
        assert_eq!(self.servers[i].node_conn(&joined.id), Some(joined.conn), "node {n} did not join {i}");
        joined
    }

    pub fn send(&mut self, node: Joined, message: &WSSignalMessageFromNode) -> Vec<Seen> {
        let frame = node.codec.encode(message).expect("encodes");
        self.input(node.instance, SignalIn::Frame { conn: node.conn, frame })
    }

    /// The instances whose server lists `id` as a local node.
    pub fn holders(&self, id: &NodeID) -> Vec<usize> {
        (0..self.servers.len()).filter(|&i| self.servers[i].node_conn(id).is_some()).collect()
    }

    /// What node `node` received in `seen`, decoded.
    pub fn received(seen: &[Seen], node: Joined) -> Vec<WSSignalMessageToNode> {
        messages_to(seen, node.conn, node.codec)
    }

    /// Feeds a raw bus input to instance `i`.
    pub fn bus_input(&mut self, i: usize, input: ClusterIn) -> Vec<Seen> {
        self.input(i, SignalIn::Cluster(Box::new(input)))
    }
}

pub fn announce(key: &SigningKey, challenge: U256) -> WSSignalMessageFromNode {
    let info = NodeInfo::new(
        format!("node-{}", key.verifying_key().as_bytes()[0]),
        "test",
        key.verifying_key().to_bytes(),
    );
    WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: SIGNAL_VERSION,
        challenge,
        node_info: info,
        signature: sign_challenge(key, &challenge),
    })
}

pub fn frames_to(seen: &[Seen], conn: ConnId) -> Vec<Bytes> {
    seen.iter()
        .filter_map(|s| match &s.out {
            SignalOut::Send { conn: c, frame } if *c == conn => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

pub fn messages_to(seen: &[Seen], conn: ConnId, codec: Codec) -> Vec<WSSignalMessageToNode> {
    frames_to(seen, conn).iter().map(|frame| codec.decode(frame).expect("server frames decode")).collect()
}

pub fn closed(seen: &[Seen]) -> Vec<ConnId> {
    seen.iter()
        .filter_map(|s| match &s.out {
            SignalOut::Close { conn, .. } => Some(*conn),
            _ => None,
        })
        .collect()
}

pub fn error(text: &str) -> WSSignalMessageToNode {
    WSSignalMessageToNode::Error(text.to_string())
}
