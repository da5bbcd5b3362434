//! Properties of several instances on one bus, under random scripts of joins (one at a time and
//! at once), leaves, relays, and instances cut off and back: after the bus settles, each id is
//! held by at most one instance, the bus agrees, and every relay to a held id is delivered
//! exactly once when nothing fails. `PROPTEST_CASES=10000 cargo test --test cluster_properties`
//! for a longer run.

mod net;

use std::collections::BTreeMap;

use net::{id, Joined, Net};
use peer_signal::{
    Codec, ConnId, NodeID, PeerInfo, PeerMessage, SignalConfig, SignalIn, WSSignalMessageFromNode,
    WSSignalMessageToNode,
};
use proptest::prelude::*;

const INSTANCES: usize = 3;
/// Few keys, so that ids collide and move between instances.
const KEYS: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    Join {
        instance: usize,
        key: u8,
        bincode: bool,
    },
    /// The same id announced on two instances before the bus moves.
    JoinAtOnce {
        key: u8,
        first: usize,
        second: usize,
    },
    Leave {
        key: u8,
    },
    Relay {
        from: u8,
        to: u8,
        offer: bool,
    },
    Cut {
        instance: usize,
    },
    Reconnect {
        instance: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let instance = 0..INSTANCES;
    let key = 1..=KEYS;
    prop_oneof![
        4 => (instance.clone(), key.clone(), any::<bool>())
            .prop_map(|(instance, key, bincode)| Op::Join { instance, key, bincode }),
        1 => (key.clone(), instance.clone(), instance.clone())
            .prop_map(|(key, first, second)| Op::JoinAtOnce { key, first, second }),
        1 => key.clone().prop_map(|key| Op::Leave { key }),
        6 => (key.clone(), key, any::<bool>()).prop_map(|(from, to, offer)| Op::Relay { from, to, offer }),
        1 => instance.clone().prop_map(|instance| Op::Cut { instance }),
        2 => instance.prop_map(|instance| Op::Reconnect { instance }),
    ]
}

struct Script {
    net: Net,
    up: [bool; INSTANCES],
}

impl Script {
    fn new() -> Self {
        let config = SignalConfig::default().with_list_push_fanout(0);
        Self { net: Net::new(INSTANCES, config), up: [true; INSTANCES] }
    }

    /// Where node `key` is connected, as the servers say.
    fn located(&self, key: u8) -> Vec<Joined> {
        let id = id(key);
        (0..INSTANCES)
            .filter_map(|instance| {
                let conn = self.net.servers[instance].node_conn(&id)?;
                Some(Joined { instance, conn, id, codec: self.codec(instance, conn) })
            })
            .collect()
    }

    fn codec(&self, _instance: usize, conn: ConnId) -> Codec {
        // Connections with odd numbers speak bincode: see `join`.
        if conn.get() % 2 == 1 {
            Codec::Bincode
        } else {
            Codec::Json
        }
    }

    /// Opens connections until one of the wanted parity comes up, so that the codec can be read
    /// back from the number.
    fn join_held(&mut self, instance: usize, key: u8, bincode: bool) {
        loop {
            let codec = if bincode { Codec::Bincode } else { Codec::Json };
            let (conn, challenge) = self.net.open(instance, codec);
            if (conn.get() % 2 == 1) == bincode {
                let frame = codec.encode(&net::announce(&net::key(key), challenge)).unwrap();
                self.net.input_held(instance, SignalIn::Frame { conn, frame });
                return;
            }
            self.net.input(instance, SignalIn::Closed { conn });
        }
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Join { instance, key, bincode } => {
                self.join_held(instance, key, bincode);
                self.net.settle();
            }
            Op::JoinAtOnce { key, first, second } => {
                self.join_held(first, key, false);
                self.join_held(second, key, true);
                self.net.settle();
            }
            Op::Leave { key } => {
                if let Some(node) = self.located(key).first() {
                    self.net.input(node.instance, SignalIn::Closed { conn: node.conn });
                }
            }
            Op::Relay { from, to, offer } => return self.relay(from, to, offer),
            Op::Cut { instance } => {
                self.net.bus.set_up(instance, false);
                self.up[instance] = false;
                self.net.settle();
            }
            Op::Reconnect { instance } => {
                self.net.bus.set_up(instance, true);
                self.up[instance] = true;
                self.net.settle();
            }
        }
        self.check()
    }

    fn relay(&mut self, from: u8, to: u8, offer: bool) -> Result<(), TestCaseError> {
        let Some(sender) = self.located(from).first().copied() else { return Ok(()) };
        let message =
            if offer { PeerMessage::Offer(format!("v=0 {from}→{to}")) } else { PeerMessage::Init };
        let info = PeerInfo { id_init: sender.id, id_follow: id(to), message };
        let frame = sender.codec.encode(&WSSignalMessageFromNode::PeerSetup(info.clone())).unwrap();
        let holders = self.located(to);
        let seen = self.net.input(sender.instance, SignalIn::Frame { conn: sender.conn, frame });
        let all_up = self.up.iter().all(|&up| up);
        let delivered: usize = holders
            .iter()
            .map(|holder| {
                Net::received(&seen, *holder)
                    .iter()
                    .filter(|m| **m == WSSignalMessageToNode::PeerSetup(info.clone()))
                    .count()
            })
            .sum();
        let to_sender = Net::received(&seen, sender);
        if from == to {
            prop_assert!(delivered <= 1);
            return self.check();
        }
        let reachable =
            holders.len() == 1 && (all_up || holders.first().is_some_and(|h| h.instance == sender.instance));
        if reachable {
            prop_assert_eq!(delivered, 1, "a relay to a held id was not delivered exactly once");
            prop_assert!(to_sender.is_empty(), "the sender got {:?}", to_sender);
        } else if holders.is_empty() {
            prop_assert_eq!(
                to_sender,
                vec![WSSignalMessageToNode::Error(format!("unknown destination {}", id(to)))]
            );
        } else {
            prop_assert!(delivered <= 1, "delivered {} times", delivered);
        }
        self.check()
    }

    /// After the bus settled: with every instance connected, each id is held by at most one
    /// instance, and the bus routes it there.
    fn check(&self) -> Result<(), TestCaseError> {
        if !self.up.iter().all(|&up| up) {
            return Ok(());
        }
        let mut held: BTreeMap<NodeID, Vec<usize>> = BTreeMap::new();
        for key in 1..=KEYS {
            let id = id(key);
            let holders = self.net.holders(&id);
            prop_assert!(holders.len() <= 1, "node {} held by {:?}", key, holders);
            prop_assert_eq!(&self.net.bus.holders(&id), &holders, "the bus disagrees about node {}", key);
            held.insert(id, holders);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ids_are_held_once_and_relays_to_them_arrive_once(ops in proptest::collection::vec(op(), 1..60)) {
        let mut script = Script::new();
        for op in &ops {
            script.run(op)?;
        }
        // Everybody back on the bus: the invariants hold at the end of every script.
        for instance in 0..INSTANCES {
            script.run(&Op::Reconnect { instance })?;
        }
        script.check()?;
    }
}
