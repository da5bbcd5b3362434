//! The application's control over nodes, sans-IO: `SignalIn::Command` in, `SignalOut::Reply`
//! out, and what the nodes see.

mod common;

use std::net::IpAddr;

use common::{announce, error, events, key, messages_to, node_info, Harness};
use peer_signal::{
    CloseReason, Codec, Command, CommandReply, ConnId, FledgerConfig, ProtocolError, RateLimit, SignalConfig,
    SignalEvent, SignalIn, SignalOut, WSSignalMessageFromNode, WSSignalMessageToNode, U256,
};

fn command(h: &mut Harness, token: u64, command: Command) -> (CommandReply, Vec<SignalOut>) {
    let out = h.input(SignalIn::Command { token, command: Box::new(command) });
    let replies: Vec<&SignalOut> = out.iter().filter(|o| matches!(o, SignalOut::Reply { .. })).collect();
    let [SignalOut::Reply { token: got, reply }] = replies.as_slice() else { panic!("one reply: {out:?}") };
    assert_eq!(*got, token, "the reply carries the command's token");
    assert!(matches!(out.last(), Some(SignalOut::Reply { .. })), "the reply comes last: {out:?}");
    ((**reply).clone(), out)
}

#[test]
fn new_node_and_the_list_carry_info_connection_codec_and_address() {
    let mut h = Harness::new();
    let addr: IpAddr = "192.0.2.7".parse().unwrap();
    let conn = ConnId::new(500);
    let out = h.input(SignalIn::Opened { conn, codec: Codec::Bincode, addr: Some(addr) });
    let [WSSignalMessageToNode::Challenge(_, challenge)] = messages_to(&out, conn, Codec::Bincode)[..] else {
        panic!("a challenge: {out:?}")
    };
    let out = h.send(conn, Codec::Bincode, &announce(&key(3), challenge));
    let events = events(&out);
    let [SignalEvent::NewNode(node)] = events.as_slice() else { panic!("one NewNode: {out:?}") };
    assert_eq!(node.id, U256(key(3).verifying_key().to_bytes()));
    assert_eq!(node.info, node_info(&key(3)));
    assert_eq!((node.conn, node.codec, node.addr), (conn, Codec::Bincode, Some(addr)));

    let other = h.join(4);
    let (reply, _) = command(&mut h, 1, Command::ListNodes);
    let CommandReply::Nodes(mut nodes) = reply else { panic!("a list: {reply:?}") };
    // The harness numbers its connections from 1: `other` comes first.
    nodes.sort_by_key(|n| std::cmp::Reverse(n.conn));
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0], **node, "the list says what NewNode said");
    assert_eq!((nodes[1].id, nodes[1].conn, nodes[1].addr), (other.id, other.conn, None));
}

#[test]
fn the_list_holds_announced_nodes_only_and_forgets_those_that_left() {
    let mut h = Harness::new();
    let (pending, _) = h.open(Codec::Json);
    let a = h.join(1);
    let b = h.join(2);
    h.input(SignalIn::Closed { conn: a.conn });
    let (reply, out) = command(&mut h, 9, Command::ListNodes);
    let CommandReply::Nodes(nodes) = reply else { panic!("a list: {reply:?}") };
    assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), vec![b.id]);
    assert!(nodes.iter().all(|n| n.conn != pending));
    assert_eq!(out.len(), 1, "listing sends nothing to anybody: {out:?}");
}

#[test]
fn disconnect_tells_the_node_why_closes_it_and_it_leaves() {
    let mut h = Harness::new();
    let a = h.join(1);
    let b = h.join(2);
    let (reply, out) = command(&mut h, 3, Command::Disconnect { node: a.id, reason: "maintenance".into() });
    assert_eq!(reply, CommandReply::Done);
    assert_eq!(messages_to(&out, a.conn, a.codec), vec![error("maintenance")]);
    let reason = CloseReason::Error(ProtocolError::Disconnected("maintenance".into()));
    assert!(out.contains(&SignalOut::Close { conn: a.conn, reason }), "{out:?}");
    assert_eq!(events(&out), vec![SignalEvent::NodeLeft(a.id)]);
    assert!(messages_to(&out, b.conn, b.codec).is_empty(), "others are not disturbed");
    assert_eq!(h.server.node_conn(&a.id), None);
    assert_eq!(h.server.stats().errors.get("disconnected"), Some(&1));
    // Gone: a second disconnect finds nobody.
    let (reply, out) = command(&mut h, 4, Command::Disconnect { node: a.id, reason: "again".into() });
    assert_eq!(reply, CommandReply::UnknownNode(a.id));
    assert_eq!(out.len(), 1, "{out:?}");
}

#[test]
fn a_long_disconnect_reason_is_cut_like_every_error_text() {
    let mut h = Harness::new();
    let a = h.join(1);
    let (_, out) = command(&mut h, 1, Command::Disconnect { node: a.id, reason: "é".repeat(200) });
    let messages = messages_to(&out, a.conn, a.codec);
    let [WSSignalMessageToNode::Error(text)] = messages.as_slice() else { panic!("one error: {messages:?}") };
    assert!(text.len() <= 128 + '…'.len_utf8(), "{} bytes", text.len());
    assert!(text.ends_with('…'));
}

#[test]
fn send_delivers_in_the_node_codec_without_charging_it() {
    // 64 KiB for the node's whole life: no refill.
    let mut h = Harness::with(SignalConfig::default().with_byte_rate(RateLimit::new(0, 64 * 1024)));
    for codec in [Codec::Json, Codec::Bincode] {
        let node = h.join_with(&key(if codec == Codec::Json { 1 } else { 2 }), codec);
        let message = WSSignalMessageToNode::SystemConfig(FledgerConfig { system_realm: None });
        // Far more than the node's byte budget, which never refills: none of it is charged.
        for token in 0..2_000 {
            let (reply, out) =
                command(&mut h, token, Command::Send { node: node.id, message: message.clone() });
            assert_eq!(reply, CommandReply::Done);
            assert_eq!(messages_to(&out, node.conn, codec), vec![message.clone()]);
        }
        let out = h.from(node, &WSSignalMessageFromNode::ListIDsRequest);
        assert!(
            matches!(
                messages_to(&out, node.conn, codec).as_slice(),
                [WSSignalMessageToNode::ListIDsReply(_)]
            ),
            "the node's own budget is intact: {out:?}"
        );
    }
    let stranger = U256([9; 32]);
    let (reply, out) = command(
        &mut h,
        1,
        Command::Send { node: stranger, message: WSSignalMessageToNode::ListIDsReply(vec![]) },
    );
    assert_eq!(reply, CommandReply::UnknownNode(stranger));
    assert_eq!(out.len(), 1);
}

#[test]
fn a_stopped_server_ignores_commands() {
    let mut h = Harness::new();
    h.join(1);
    h.input(SignalIn::Stop);
    let out = h.input(SignalIn::Command { token: 1, command: Box::new(Command::ListNodes) });
    assert!(out.is_empty(), "{out:?}");
}
