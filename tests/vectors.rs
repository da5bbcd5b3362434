//! The compatibility contract: fledger 0.10's own frames, byte for byte.

use ed25519_dalek::SigningKey;
use peer_signal::{
    verify_challenge, Codec, Modules, NodeInfo, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    direction: String,
    json: String,
    name: String,
}

fn vectors() -> Vec<Vector> {
    include_str!("data/fledger-v3-vectors.jsonl")
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).expect("vector line"))
        .collect()
}

fn vector(name: &str) -> String {
    vectors().into_iter().find(|v| v.name == name).map(|v| v.json).expect("vector exists")
}

fn challenge_0_to_31() -> U256 {
    U256(std::array::from_fn(|i| i as u8))
}

#[test]
fn every_vector_decodes_and_reencodes_to_the_same_bytes() {
    let vectors = vectors();
    assert!(vectors.len() >= 16, "vectors file truncated");
    for v in vectors {
        let reencoded = match v.direction.as_str() {
            "to_node" => {
                let m: WSSignalMessageToNode = Codec::Json.decode(v.json.as_bytes()).expect(&v.name);
                Codec::Json.encode(&m).expect(&v.name)
            }
            "from_node" => {
                let m: WSSignalMessageFromNode = Codec::Json.decode(v.json.as_bytes()).expect(&v.name);
                Codec::Json.encode(&m).expect(&v.name)
            }
            other => panic!("unknown direction {other}"),
        };
        assert_eq!(std::str::from_utf8(&reencoded).unwrap(), v.json, "vector {}", v.name);
    }
}

#[test]
fn every_vector_round_trips_through_bincode() {
    for v in vectors() {
        if v.direction == "to_node" {
            let m: WSSignalMessageToNode = Codec::Json.decode(v.json.as_bytes()).unwrap();
            let bin = Codec::Bincode.encode(&m).unwrap();
            assert_eq!(Codec::Bincode.decode::<WSSignalMessageToNode>(&bin).unwrap(), m, "{}", v.name);
            assert!(bin.len() < v.json.len(), "{}: bincode should be smaller", v.name);
        } else {
            let m: WSSignalMessageFromNode = Codec::Json.decode(v.json.as_bytes()).unwrap();
            let bin = Codec::Bincode.encode(&m).unwrap();
            assert_eq!(Codec::Bincode.decode::<WSSignalMessageFromNode>(&bin).unwrap(), m, "{}", v.name);
        }
    }
}

#[test]
fn the_vector_announce_verifies_against_its_challenge() {
    let WSSignalMessageFromNode::Announce(announce) =
        Codec::Json.decode(vector("Announce_valid_signature_over_Challenge").as_bytes()).unwrap()
    else {
        panic!("not an announce");
    };
    assert_eq!(announce.challenge, challenge_0_to_31());
    let info = &announce.node_info;
    assert_eq!(verify_challenge(&info.pubkey, &announce.challenge, &announce.signature), Ok(()));
    // One flipped bit in the challenge and it no longer verifies.
    let mut other = challenge_0_to_31();
    other.0[31] ^= 1;
    assert!(verify_challenge(&info.pubkey, &other, &announce.signature).is_err());
}

#[test]
fn keys_and_ids_match_the_vectors() {
    let key1 = SigningKey::from_bytes(&[1; 32]);
    let key2 = SigningKey::from_bytes(&[2; 32]);
    let id1: U256 = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c".parse().unwrap();
    let id2: U256 = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394".parse().unwrap();
    assert_eq!(key1.verifying_key().to_bytes(), id1.0);
    assert_eq!(key2.verifying_key().to_bytes(), id2.0);
    // Our deterministic signature over the vector challenge is the vector's (ed25519 is deterministic).
    let sig = peer_signal::sign_challenge(&key1, &challenge_0_to_31());
    assert!(vector("Announce_valid_signature_over_Challenge").contains(&hex::encode(sig)));
    let info = NodeInfo {
        name: "probe-node-1".into(),
        client: "libc".into(),
        pubkey: id1.0,
        modules: Modules::stable(),
    };
    assert_eq!(info.id(), id1);
}

#[test]
fn a_peer_setup_frame_is_the_same_in_both_directions() {
    for name in ["PeerSetup_Init", "PeerSetup_Offer", "PeerSetup_Answer", "PeerSetup_IceCandidate"] {
        let json = vector(name);
        let WSSignalMessageFromNode::PeerSetup(info) = Codec::Json.decode(json.as_bytes()).unwrap() else {
            panic!("{name} is not a PeerSetup");
        };
        for codec in [Codec::Json, Codec::Bincode] {
            let from = codec.encode(&WSSignalMessageFromNode::PeerSetup(info.clone())).unwrap();
            let to = codec.encode(&WSSignalMessageToNode::PeerSetup(info.clone())).unwrap();
            assert_eq!(from, to, "{name} over {codec:?}");
            assert_eq!(
                codec.decode::<WSSignalMessageToNode>(&from).unwrap(),
                WSSignalMessageToNode::PeerSetup(info.clone())
            );
        }
    }
}

#[test]
fn modules_text_follows_bitflags() {
    let cases = [
        ("", 0),
        ("STAT", 0x1),
        ("STAT | RAND | GOSSIP | WEBPROXY | WEBPROXY_REQUESTS | DHT_ROUTER | DHT_STORAGE", 0xf7),
        ("STAT | PING", 0x9),
        ("GOSSIP | 0x100", 0x104),
        ("0x300", 0x300),
    ];
    for (text, bits) in cases {
        let parsed: Modules = text.parse().unwrap();
        assert_eq!(parsed, Modules(bits), "{text:?}");
        assert_eq!(parsed.to_string(), text);
    }
    assert_eq!(Modules::stable(), Modules(0xf7));
    // What bitflags accepts on input but never writes.
    assert_eq!("  RAND|STAT ".parse::<Modules>().unwrap(), Modules(0x3));
    for bad in ["FOO", "STAT |", "| STAT", "stat", "0xZZ", "0x1ffffffff"] {
        assert!(bad.parse::<Modules>().is_err(), "{bad:?} should not parse");
    }
}

fn node_info_json(variant: &str, pubkey: &str, modules: &str) -> String {
    format!(r#"{{"{variant}":{{"name":"n","client":"c","pubkey":"{pubkey}","modules":"{modules}"}}}}"#)
}

fn decode_node_info(json: &str) -> Result<NodeInfo, String> {
    serde_json::from_str::<NodeInfo>(json).map_err(|e| e.to_string())
}

#[test]
fn unusable_node_infos_fail_with_a_clear_message() {
    let key = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    assert!(decode_node_info(&node_info_json("NodeInfoV3", key, "STAT")).is_ok());
    let cases = [
        (r#"{"NodeInfoV1":{}}"#.to_string(), "unsupported NodeInfoV1"),
        (
            node_info_json("NodeInfoV2", "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=", "ENABLE_STAT"),
            "unsupported NodeInfoV2",
        ),
        (node_info_json("NodeInfoV3", &key[..62], "STAT"), "public key must be 32 bytes"),
        (node_info_json("NodeInfoV3", &format!("{key}00"), "STAT"), "public key must be 32 bytes"),
        (node_info_json("NodeInfoV3", &key.replace('8', "g"), "STAT"), "public key is not hex"),
        (node_info_json("NodeInfoV3", key, "STAT | NOPE"), "unknown module \"NOPE\""),
        (r#"{"NodeInfoV4":{}}"#.to_string(), "unknown variant `NodeInfoV4`"),
    ];
    for (json, expected) in cases {
        let err = decode_node_info(&json).expect_err(&json);
        assert!(err.contains(expected), "{json}: {err:?} should contain {expected:?}");
    }
}

#[test]
fn ids_accept_upper_case_hex_and_write_lower_case() {
    let upper = "\"8A88E3DD7409F195FD52DB2D3CBA5D72CA6709BF1D94121BF3748801B40F6F5C\"";
    let id: U256 = serde_json::from_str(upper).unwrap();
    assert_eq!(serde_json::to_string(&id).unwrap(), upper.to_lowercase());
    let short = serde_json::from_str::<U256>("\"8a88\"").unwrap_err().to_string();
    assert!(short.contains("id must be 32 bytes (64 hex digits), got 4 characters"), "{short}");
}
