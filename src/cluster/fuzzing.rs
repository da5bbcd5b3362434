//! Entry point for the fuzz target `bus`: bytes from the bus between instances, through the bus
//! decoder and into the core as a clustered server receives them; not part of the API.

use bytes::Bytes;
use web_time::Instant;

use super::wire::{self, BusMessage};
use super::{ClusterConfig, ClusterIn, Undelivered};
use crate::codec::Codec;
use crate::protocol::{NodeID, NodeInfo};
use crate::server::{ConnId, SignalConfig, SignalIn, SignalOut, SignalServer};

/// The longest bus message the target's decoder takes.
const MAX: usize = 600;

/// Decodes `data` as a bus message and checks that what decodes encodes back to the same
/// message; then feeds the same bytes to a clustered server as every kind of bus input (a frame
/// for a node here, in both codecs; a sample whose node info is the bytes as JSON; a takeover and
/// a bounce about a node here) and checks that it answers within bounds and never panics.
///
/// # Panics
///
/// When a check fails: that is what the fuzzer looks for.
pub fn bus(data: &[u8]) {
    if let Ok(message) = wire::decode(data, MAX) {
        let again = match &message {
            BusMessage::Frame { codec, frame } => wire::encode_frame(*codec, frame),
            BusMessage::TakenOver { gen, instance } => wire::encode_takeover(*gen, instance),
            BusMessage::Undeliverable { about, reason } => wire::encode_undeliverable(*about, *reason),
            BusMessage::Control(control) => wire::encode_control(control),
        };
        assert_eq!(wire::decode(&again, MAX + 64), Ok(message), "a message that does not encode back");
    }

    let config = SignalConfig::default().with_rng_seed([3; 32]).with_max_frame_size(MAX);
    let Ok(mut server) = SignalServer::with_cluster(config, ClusterConfig::default()) else {
        panic!("the fuzz target's configuration is valid");
    };
    let now = Instant::now();
    let conn = ConnId::new(1);
    let here = NodeID::from([data.first().copied().unwrap_or(0); 32]);
    server.handle(now, SignalIn::Opened { conn, codec: Codec::Json, addr: None });
    let frame = Bytes::copy_from_slice(data);
    let first = data.first().copied().unwrap_or(0);
    let mut inputs = vec![
        ClusterIn::Up,
        ClusterIn::Frame { to: here, codec: Codec::Json, frame: frame.clone() },
        ClusterIn::Frame { to: here, codec: Codec::Bincode, frame },
        ClusterIn::TakenOver { id: here, gen: u64::from(first) },
        ClusterIn::Undeliverable { to: here, about: here, reason: Undelivered::Busy },
        ClusterIn::Claimed { id: here, conn, gen: u64::from(first) },
    ];
    if let Ok(info) = serde_json::from_slice::<NodeInfo>(data) {
        inputs.push(ClusterIn::Sample { nodes: vec![info], total: u64::from(first) });
    }
    for input in inputs {
        server.handle(now, SignalIn::Cluster(Box::new(input)));
        let mut outputs = 0;
        while let Some(output) = server.poll_output() {
            outputs += 1;
            assert!(outputs <= 8, "one bus input caused {outputs} outputs");
            if let SignalOut::Send { frame, .. } = output {
                assert!(frame.len() <= 64 * 1024, "a frame of {} bytes", frame.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target's checks over a few thousand seeded inputs: valid messages, mutated, and
    /// noise. A smoke run for CI, where the fuzzer itself does not run.
    #[test]
    fn the_bus_decoder_and_the_core_survive_mutated_bus_messages() {
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let seeds: Vec<Vec<u8>> = vec![
            wire::encode_frame(Codec::Json, br#"{"PeerSetup":{"id_init":"00","id_follow":"00","message":"Init"}}"#),
            wire::encode_takeover(42, "instance-a"),
            wire::encode_undeliverable(NodeID::from([3; 32]), Undelivered::Unknown),
            br#"{"name":"n","client":"c","pubkey":"0000000000000000000000000000000000000000000000000000000000000000","modules":0}"#.to_vec(),
        ];
        for round in 0..3000 {
            let mut input = seeds.get(round % seeds.len()).cloned().unwrap_or_default();
            for _ in 0..(next() % 4) {
                if input.is_empty() {
                    break;
                }
                let at = (next() as usize) % input.len();
                match next() % 3 {
                    0 => input[at] ^= 1 << (next() % 8),
                    1 => input.truncate(at),
                    _ => input.insert(at, next() as u8),
                }
            }
            if round % 7 == 0 {
                input = (0..(next() % 64)).map(|_| next() as u8).collect();
            }
            bus(&input);
        }
    }
}
