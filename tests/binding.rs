//! Bound sign-ins and signed set-up messages: the attacks they stop, shown against plain v3
//! first, and the test vectors other implementations can check themselves against.
//!
//! H is an honest server (the sans-IO core), M a malicious one, played by the test: it opens a
//! connection at H, takes H's challenge to its victim V as its own, and forwards what V answers.

mod common;

use bytes::Bytes;
use common::{frames_to, key, node_info, Harness};
use peer_signal::{
    bound_announce_bytes, setup_bytes, Binding, BindingMode, ClientBinding, ClientConfig, ClientError,
    ClientEvent, Codec, ConnId, NodeID, PeerInfo, PeerMessage, SetupRejection, SignalClient, SignalConfig,
    SignalEvent, SignalIn, SignalOut, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

const H: &str = "wss://h.example";
const M: &str = "wss://m.example";

fn honest(mode: BindingMode) -> Harness {
    let mut binding = Binding::accept([H]);
    binding.mode = mode;
    Harness::with(SignalConfig::default().with_binding(binding))
}

/// Node `seed`, which dialled `server_id`, with `binding`.
fn node(seed: u8, binding: ClientBinding, server_id: &str) -> SignalClient {
    let config = ClientConfig::default().with_binding(binding).with_server_id(server_id.to_string());
    SignalClient::with_config(key(seed), node_info(&key(seed)), Codec::Json, &config)
}

fn id(seed: u8) -> NodeID {
    NodeID::from(key(seed).verifying_key().to_bytes())
}

/// Opens a connection at `h` and returns it with the frames H sent on it.
fn open(h: &mut Harness, conn: u64) -> (ConnId, Vec<Bytes>) {
    let conn = ConnId::new(conn);
    let out = h.input(SignalIn::Opened { conn, codec: Codec::Json, addr: None });
    (conn, frames_to(&out, conn))
}

fn decode(frame: &[u8]) -> WSSignalMessageToNode {
    Codec::Json.decode(frame).expect("a server frame")
}

/// Feeds `frames` to `client` and returns what it answers.
fn answer(client: &mut SignalClient, frames: &[Bytes]) -> Result<Vec<Bytes>, ClientError> {
    for frame in frames {
        client.handle_frame(frame)?;
    }
    Ok(std::iter::from_fn(|| client.poll_transmit()).collect())
}

fn joined(out: &[SignalOut]) -> Option<NodeID> {
    out.iter().find_map(|out| match out {
        SignalOut::Event(SignalEvent::NewNode(node)) => Some(node.id),
        _ => None,
    })
}

fn errors(out: &[SignalOut], conn: ConnId) -> Vec<String> {
    frames_to(out, conn)
        .iter()
        .filter_map(|frame| match decode(frame) {
            WSSignalMessageToNode::Error(text) => Some(text),
            _ => None,
        })
        .collect()
}

/// M relays H's challenge (with or without H's offer of binding) to V and V's answer to H.
/// Returns what H did with V's answer, or V's refusal to answer.
fn relay_attack(
    h: &mut Harness,
    victim: &mut SignalClient,
    strip_offer: bool,
) -> Result<Vec<SignalOut>, ClientError> {
    let (conn, frames) = open(h, 66);
    let shown: Vec<Bytes> = frames
        .into_iter()
        .filter(|frame| !(strip_offer && matches!(decode(frame), WSSignalMessageToNode::Capabilities(_))))
        .collect();
    let answers = answer(victim, &shown)?;
    Ok(answers.into_iter().flat_map(|frame| h.frame(conn, frame)).collect())
}

#[test]
fn the_relay_attack_succeeds_against_v3_and_fails_against_a_bound_sign_in() {
    // v3: V signs H's challenge for M, and M is listed on H as V.
    let mut h = honest(BindingMode::Accept);
    let mut v = node(1, ClientBinding::Off, M);
    let out = relay_attack(&mut h, &mut v, false).unwrap();
    assert_eq!(joined(&out), Some(id(1)), "against v3 the attack works: {out:?}");

    // Bound: V's signature names M, and H refuses it.
    let mut h = honest(BindingMode::Accept);
    let mut v = node(1, ClientBinding::Prefer, M);
    let out = relay_attack(&mut h, &mut v, false).unwrap();
    assert_eq!(joined(&out), None);
    assert_eq!(errors(&out, ConnId::new(66)), ["signed for another server"]);

    // M rewrites the server id in V's bound announce: the signature no longer verifies.
    let mut h = honest(BindingMode::Accept);
    let mut v = node(1, ClientBinding::Prefer, M);
    let (conn, frames) = open(&mut h, 66);
    let mut bound = answer(&mut v, &frames).unwrap();
    let rewritten = String::from_utf8(bound.remove(0).to_vec()).unwrap().replace(M, H);
    let out = h.frame(conn, rewritten);
    assert_eq!((joined(&out), errors(&out, conn)), (None, vec!["signature does not verify".to_string()]));
}

#[test]
fn a_downgrade_works_on_a_node_that_prefers_binding_at_an_accepting_server_and_nowhere_else() {
    // M strips H's offer: a node that merely prefers binding answers with v3, which an accepting
    // H takes...
    let mut h = honest(BindingMode::Accept);
    let mut v = node(1, ClientBinding::Prefer, M);
    assert_eq!(joined(&relay_attack(&mut h, &mut v, true).unwrap()), Some(id(1)));

    // ...and a requiring H does not,
    let mut h = honest(BindingMode::Require);
    let mut v = node(1, ClientBinding::Prefer, M);
    let out = relay_attack(&mut h, &mut v, true).unwrap();
    assert_eq!(
        (joined(&out), errors(&out, ConnId::new(66))),
        (None, vec!["bound announce required".to_string()])
    );

    // ...and a node that requires binding signs nothing at all.
    let mut h = honest(BindingMode::Accept);
    let mut v = node(1, ClientBinding::Require, M);
    let refused = relay_attack(&mut h, &mut v, true).unwrap_err();
    assert_eq!(refused, ClientError::BindingUnavailable("the server offered no bound sign-in"));
    assert_eq!(v.poll_transmit(), None, "no announce of any kind");
    // Without the server's id it cannot bind either, offer or not.
    let config = ClientConfig::default().with_binding(ClientBinding::Require);
    let mut blind = SignalClient::with_config(key(2), node_info(&key(2)), Codec::Json, &config);
    let (_, frames) = open(&mut honest(BindingMode::Accept), 1);
    assert_eq!(
        answer(&mut blind, &frames),
        Err(ClientError::BindingUnavailable("the server's id is unknown"))
    );
}

#[test]
fn a_bound_sign_in_at_the_right_server_works_in_both_codecs_and_fledger_style_v3_still_does_in_accept_mode() {
    for codec in [Codec::Json, Codec::Bincode] {
        let mut h = honest(BindingMode::Accept);
        let config = ClientConfig::default().with_server_id(H.to_string());
        let mut v = SignalClient::with_config(key(1), node_info(&key(1)), codec, &config);
        let conn = ConnId::new(1);
        let mut pending = h.input(SignalIn::Opened { conn, codec, addr: None });
        for _ in 0..3 {
            for frame in frames_to(&pending, conn) {
                v.handle_frame(&frame).unwrap();
            }
            pending =
                std::iter::from_fn(|| v.poll_transmit()).flat_map(|frame| h.frame(conn, frame)).collect();
            if v.is_connected() {
                break;
            }
        }
        assert!(v.is_connected() && v.signs_setups(), "{codec:?}");
        assert_eq!(h.server.nodes().next().map(|info| info.name.clone()), Some(node_info(&key(1)).name));
    }
    // A plain v3 announce (what fledger 0.10 sends) next to the offer it ignores.
    let mut h = honest(BindingMode::Accept);
    let (conn, frames) = open(&mut h, 1);
    assert!(matches!(decode(&frames[0]), WSSignalMessageToNode::Capabilities(_)));
    let WSSignalMessageToNode::Challenge(3, challenge) = decode(&frames[1]) else { panic!("a challenge") };
    let out = h.send(conn, Codec::Json, &common::announce(&key(3), challenge));
    assert_eq!(joined(&out), Some(id(3)));
    // With binding off there is no offer, and a bound announce is refused.
    let mut off = Harness::new();
    let (conn, frames) = open(&mut off, 1);
    assert_eq!(frames.len(), 1, "the challenge alone, as fledger's server sends");
    let mut v = node(1, ClientBinding::Prefer, H);
    let plain = answer(&mut v, &frames).unwrap();
    assert!(matches!(Codec::Json.decode(&plain[0]).unwrap(), WSSignalMessageFromNode::Announce(_)));
    let _ = conn;
}

#[test]
fn a_challenge_reused_and_node_info_rewritten_in_transit_are_refused() {
    let mut h = honest(BindingMode::Require);
    let mut v = node(1, ClientBinding::Require, H);
    let (first, frames) = open(&mut h, 1);
    let bound = answer(&mut v, &frames).unwrap().remove(0);
    assert_eq!(joined(&h.frame(first, bound.clone())), Some(id(1)));
    // The same signed answer on another connection, whose challenge is another.
    let (second, _) = open(&mut h, 2);
    let out = h.frame(second, bound);
    assert_eq!((joined(&out), errors(&out, second)), (None, vec!["unknown challenge".to_string()]));

    // A man in the middle renames the node in its announce.
    let mut h = honest(BindingMode::Require);
    let mut v = node(4, ClientBinding::Require, H);
    let (conn, frames) = open(&mut h, 1);
    let bound = answer(&mut v, &frames).unwrap().remove(0);
    let name = node_info(&key(4)).name;
    let renamed = String::from_utf8(bound.to_vec()).unwrap().replace(&name, "mallory");
    assert_ne!(renamed.as_bytes(), &bound[..]);
    let out = h.frame(conn, renamed);
    assert_eq!((joined(&out), errors(&out, conn)), (None, vec!["signature does not verify".to_string()]));
}

/// Two nodes signed in at H with binding, signing their set-up messages, and the connections.
struct Pair {
    h: Harness,
    a: SignalClient,
    b: SignalClient,
}

fn sign_in(h: &mut Harness, client: &mut SignalClient, conn: ConnId, codec: Codec) {
    let mut pending = h.input(SignalIn::Opened { conn, codec, addr: None });
    while !client.is_connected() {
        for frame in frames_to(&pending, conn) {
            client.handle_frame(&frame).unwrap();
        }
        pending =
            std::iter::from_fn(|| client.poll_transmit()).flat_map(|frame| h.frame(conn, frame)).collect();
    }
    while client.poll_event().is_some() {}
}

fn pair(b_config: ClientConfig) -> Pair {
    pair_in(Codec::Json, Codec::Json, ClientConfig::default(), b_config)
}

fn pair_in(a_codec: Codec, b_codec: Codec, a_config: ClientConfig, b_config: ClientConfig) -> Pair {
    let mut h = honest(BindingMode::Accept);
    let mut a = SignalClient::with_config(
        key(1),
        node_info(&key(1)),
        a_codec,
        &a_config.with_server_id(H.to_string()),
    );
    let mut b = SignalClient::with_config(
        key(2),
        node_info(&key(2)),
        b_codec,
        &b_config.with_server_id(H.to_string()),
    );
    sign_in(&mut h, &mut a, ConnId::new(1), a_codec);
    sign_in(&mut h, &mut b, ConnId::new(2), b_codec);
    Pair { h, a, b }
}

/// What H forwards to B when A sends `message` to B.
fn a_to_b(p: &mut Pair, message: PeerMessage) -> Bytes {
    p.a.send_setup(PeerInfo { id_init: id(1), id_follow: id(2), message }).unwrap();
    let frame = p.a.poll_transmit().unwrap();
    let out = p.h.frame(ConnId::new(1), frame);
    frames_to(&out, ConnId::new(2)).remove(0)
}

fn deliver(client: &mut SignalClient, frame: &[u8]) -> ClientEvent {
    client.handle_frame(frame).unwrap();
    client.poll_event().expect("an event")
}

#[test]
fn a_set_up_message_changed_in_one_byte_or_replayed_is_refused_by_the_receiving_node() {
    let mut p = pair(ClientConfig::default());
    let offer = PeerMessage::Offer("v=0 a=fingerprint:sha-256 AB:CD".into());
    let frame = a_to_b(&mut p, offer.clone());
    assert!(matches!(decode(&frame), WSSignalMessageToNode::SignedPeerSetup(_)), "relayed signed");

    // A server (or relaying neighbour) that changes one byte of the SDP.
    let tampered = String::from_utf8(frame.to_vec()).unwrap().replace("AB:CD", "AB:CE");
    match deliver(&mut p.b, tampered.as_bytes()) {
        ClientEvent::RejectedSetup { reason: SetupRejection::BadSignature, setup } => {
            assert_eq!(setup.message, PeerMessage::Offer("v=0 a=fingerprint:sha-256 AB:CE".into()));
        }
        other => panic!("{other:?}"),
    }
    // The message as sent passes, once.
    assert_eq!(
        deliver(&mut p.b, &frame),
        ClientEvent::PeerSetup(PeerInfo { id_init: id(1), id_follow: id(2), message: offer })
    );
    assert!(matches!(
        deliver(&mut p.b, &frame),
        ClientEvent::RejectedSetup { reason: SetupRejection::Replayed, .. }
    ));
    // A later message passes; the ids swapped by the relay do not.
    let next = a_to_b(&mut p, PeerMessage::IceCandidate("candidate:1".into()));
    assert!(matches!(deliver(&mut p.b, &next), ClientEvent::PeerSetup(_)));
    let forged = String::from_utf8(a_to_b(&mut p, PeerMessage::Init).to_vec()).unwrap();
    let swapped = forged
        .replace(&id(1).to_string(), "X")
        .replace(&id(2).to_string(), &id(1).to_string())
        .replace('X', &id(2).to_string());
    assert!(matches!(
        deliver(&mut p.b, swapped.as_bytes()),
        ClientEvent::RejectedSetup { reason: SetupRejection::BadSignature, .. }
    ));
}

#[test]
fn signed_set_ups_are_relayed_and_checked_in_bincode_and_across_codecs() {
    for (a_codec, b_codec) in
        [(Codec::Bincode, Codec::Bincode), (Codec::Json, Codec::Bincode), (Codec::Bincode, Codec::Json)]
    {
        let mut p = pair_in(a_codec, b_codec, ClientConfig::default(), ClientConfig::default());
        p.a.send_setup(PeerInfo {
            id_init: id(1),
            id_follow: id(2),
            message: PeerMessage::Offer("v=0".into()),
        })
        .unwrap();
        let out = p.h.frame(ConnId::new(1), p.a.poll_transmit().unwrap());
        let frame = frames_to(&out, ConnId::new(2)).remove(0);
        assert!(
            matches!(b_codec.decode(&frame).unwrap(), WSSignalMessageToNode::SignedPeerSetup(_)),
            "{a_codec:?} → {b_codec:?}"
        );
        assert!(matches!(deliver(&mut p.b, &frame), ClientEvent::PeerSetup(_)), "{a_codec:?} → {b_codec:?}");
    }
}

#[test]
fn unsigned_set_ups_pass_unless_the_node_requires_signatures_and_v3_nodes_get_signed_ones_plain() {
    // B requires signatures; a v3 node C (as fledger) sends plain.
    let mut p = pair(ClientConfig::default().with_require_signed_setups(true));
    let mut c = node(3, ClientBinding::Off, H);
    sign_in(&mut p.h, &mut c, ConnId::new(3), Codec::Json);
    c.send_setup(PeerInfo { id_init: id(3), id_follow: id(2), message: PeerMessage::Init }).unwrap();
    let out = p.h.frame(ConnId::new(3), c.poll_transmit().unwrap());
    let plain = frames_to(&out, ConnId::new(2)).remove(0);
    assert!(matches!(
        deliver(&mut p.b, &plain),
        ClientEvent::RejectedSetup { reason: SetupRejection::Unsigned, .. }
    ));

    // A's signed message reaches C as a plain PeerSetup it can read.
    p.a.send_setup(PeerInfo { id_init: id(1), id_follow: id(3), message: PeerMessage::Init }).unwrap();
    let out = p.h.frame(ConnId::new(1), p.a.poll_transmit().unwrap());
    let to_c = frames_to(&out, ConnId::new(3)).remove(0);
    assert!(matches!(decode(&to_c), WSSignalMessageToNode::PeerSetup(_)));
    assert!(matches!(deliver(&mut c, &to_c), ClientEvent::PeerSetup(_)));
}

#[test]
fn sequence_numbers_go_on_across_a_restart_so_that_peers_do_not_take_new_messages_for_replays() {
    // Before the restart, A had signed up to a counter below the clock's microseconds now.
    let mut p = pair_in(
        Codec::Json,
        Codec::Json,
        ClientConfig::default().with_setup_seq_start(1_000),
        ClientConfig::default(),
    );
    let first = a_to_b(&mut p, PeerMessage::Init);
    assert!(matches!(deliver(&mut p.b, &first), ClientEvent::PeerSetup(_)));
    // A restarts: a new client, whose counter starts from the clock, above the old one's.
    let mut h = std::mem::replace(&mut p.h, Harness::new());
    let mut a = node(1, ClientBinding::Prefer, H);
    sign_in(&mut h, &mut a, ConnId::new(5), Codec::Json);
    a.send_setup(PeerInfo { id_init: id(1), id_follow: id(2), message: PeerMessage::Init }).unwrap();
    let out = h.frame(ConnId::new(5), a.poll_transmit().unwrap());
    let again = frames_to(&out, ConnId::new(2)).remove(0);
    assert!(matches!(deliver(&mut p.b, &again), ClientEvent::PeerSetup(_)));
}

#[test]
fn the_signed_bytes_and_signatures_match_the_vectors_computed_outside_the_crate() {
    let vectors: serde_json::Value = serde_json::from_str(include_str!("data/binding_vectors.json")).unwrap();
    let hex32 = |value: &serde_json::Value| -> [u8; 32] {
        hex::decode(value.as_str().unwrap()).unwrap().try_into().unwrap()
    };
    let bound = vectors["bound_announce"].as_array().unwrap();
    let setups = vectors["signed_setup"].as_array().unwrap();
    assert!(bound.len() >= 3 && setups.len() >= 3);
    for v in bound {
        let key = ed25519_dalek::SigningKey::from_bytes(&hex32(&v["key_seed"]));
        assert_eq!(key.verifying_key().to_bytes(), hex32(&v["public_key"]));
        let bytes = bound_announce_bytes(
            v["server_id"].as_str().unwrap(),
            &U256::from(hex32(&v["challenge"])),
            &key.verifying_key().to_bytes(),
            v["node_info"].as_str().unwrap(),
            u8::try_from(v["flags"].as_u64().unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(hex::encode(&bytes), v["bytes"].as_str().unwrap(), "{}", v["server_id"]);
        use ed25519_dalek::Signer;
        assert_eq!(hex::encode(key.sign(&bytes).to_bytes()), v["signature"].as_str().unwrap());
    }
    for v in setups {
        let key = ed25519_dalek::SigningKey::from_bytes(&hex32(&v["key_seed"]));
        let text = v["text"].as_str().unwrap().to_string();
        let message = match v["kind"].as_str().unwrap() {
            "Init" => PeerMessage::Init,
            "Offer" => PeerMessage::Offer(text),
            "Answer" => PeerMessage::Answer(text),
            _ => PeerMessage::IceCandidate(text),
        };
        let setup = PeerInfo {
            id_init: U256::from(hex32(&v["id_init"])),
            id_follow: U256::from(hex32(&v["id_follow"])),
            message,
        };
        let bytes = setup_bytes(&setup, v["from_init"].as_bool().unwrap(), v["seq"].as_u64().unwrap());
        assert_eq!(hex::encode(&bytes), v["bytes"].as_str().unwrap());
        use ed25519_dalek::Signer;
        assert_eq!(hex::encode(key.sign(&bytes).to_bytes()), v["signature"].as_str().unwrap());
    }
}

#[test]
fn binding_settings_the_server_cannot_use_are_refused_by_name() {
    let error =
        SignalConfig::default().with_binding(Binding::accept(Vec::<String>::new())).validate().unwrap_err();
    assert_eq!(error.to_string(), "binding.server_ids must be more than zero");
    let error = SignalConfig::default()
        .with_binding(Binding::require(["wss://H.example:443/"]))
        .validate()
        .unwrap_err();
    assert_eq!(error.field(), "binding.server_ids");
    assert!(SignalConfig::default().with_binding(Binding::require([H])).validate().is_ok());
}
