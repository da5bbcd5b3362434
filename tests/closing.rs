//! How WebSocket connections end, seen from a raw socket: every close gets its closing handshake
//! (RFC 6455 §5.5.1, §7.1.1) and then a clean end of the TCP stream, whoever starts it, and a
//! connection ends within bounded time whatever the peer does.
//!
//! Nothing sleeps; waits have a safety timeout (`within`).

mod nodes;
mod ws;

use std::time::Duration;

use nodes::{config, key, within};
use peer_signal::{
    sign_challenge, Codec, MessageAnnounce, NodeInfo, WSSignalMessageFromNode, WSSignalMessageToNode,
    WsConfig,
};
use ws::*;

/// Reads the challenge on `raw` and announces with key `seed`; returns once the server accepted.
async fn announce(raw: &mut RawWs, codec: Codec, seed: u32) {
    let (_, challenge) = raw.frame().await.expect("challenge");
    let Ok(WSSignalMessageToNode::Challenge(3, challenge)) = codec.decode(&challenge) else {
        panic!("expected a challenge")
    };
    let key = key(seed);
    let announce = WSSignalMessageFromNode::Announce(MessageAnnounce {
        version: 3,
        challenge,
        node_info: NodeInfo::new("raw", "test", key.verifying_key().to_bytes()),
        signature: sign_challenge(&key, &challenge),
    });
    let opcode = if codec.is_binary() { BINARY } else { TEXT };
    raw.send(opcode, &codec.encode(&announce).unwrap()).await;
    let (_, accepted) = raw.frame().await.expect("system config");
    assert!(matches!(codec.decode(&accepted), Ok(WSSignalMessageToNode::SystemConfig(_))));
}

#[tokio::test]
async fn a_close_from_the_peer_gets_a_close_reply_and_then_a_clean_end_of_stream() {
    let server = start_default().await;
    let mut clean = 0;
    for codec in [Codec::Json, Codec::Bincode] {
        for announced in [false, true] {
            let mut raw = RawWs::connect(&server.url, codec.is_binary()).await;
            if announced {
                announce(&mut raw, codec, 1 + u32::from(codec.is_binary())).await;
            }
            raw.send_close(1000).await;
            assert_eq!(raw.close_frame().await, 1000, "{codec:?}, announced: {announced}");
            assert_eq!(raw.end().await, StreamEnd::Eof, "{codec:?}, announced: {announced}");
            clean += 1;
            eventually("clean close counted", || server.ws.get().clean_closes == clean).await;
        }
    }
    // A close with another code gets that code back, and one without a code gets 1000.
    let mut raw = RawWs::connect(&server.url, false).await;
    raw.send_close(4321).await;
    assert_eq!(raw.close_frame().await, 4321);
    assert_eq!(raw.end().await, StreamEnd::Eof);
    let mut raw = RawWs::connect(&server.url, false).await;
    raw.send(CLOSE, &[]).await;
    assert_eq!(raw.close_frame().await, 1000);
    assert_eq!(raw.end().await, StreamEnd::Eof);
    eventually("every task ended", || server.ws.get().connection_tasks == 0).await;
}

#[tokio::test]
async fn a_close_the_server_starts_waits_for_the_peer_and_ends_cleanly_either_way() {
    let config = config().with_max_errors(1);
    let ws = WsConfig::for_server(&config).with_close_linger(Duration::from_millis(300));
    let server = start(config, ws).await;

    // A peer that answers the close: the server ends the stream as soon as the answer arrives.
    let mut polite = RawWs::connect(&server.url, false).await;
    polite.frame().await.expect("challenge");
    polite.send(TEXT, b"not json").await;
    assert_eq!(polite.close_frame().await, 1008);
    polite.send_close(1000).await;
    assert_eq!(polite.end().await, StreamEnd::Eof);
    eventually("clean close counted", || server.ws.get().clean_closes == 1).await;

    // A peer that never answers: the server still ends the stream cleanly, after its linger.
    let mut mute = RawWs::connect(&server.url, true).await;
    mute.frame().await.expect("challenge");
    mute.send(BINARY, &[0xff; 3]).await;
    assert_eq!(mute.close_frame().await, 1008);
    assert_eq!(mute.end().await, StreamEnd::Eof);

    // A peer that goes on sending after the server's close: dropped unread, then a clean end.
    let mut chatty = RawWs::connect(&server.url, false).await;
    chatty.frame().await.expect("challenge");
    chatty.send(TEXT, b"[]").await;
    for _ in 0..50 {
        chatty.send(TEXT, &[b' '; 1000]).await;
    }
    assert_eq!(chatty.close_frame().await, 1008);
    assert_eq!(chatty.end().await, StreamEnd::Eof);
    eventually("every task ended", || server.ws.get().connection_tasks == 0).await;
    assert_eq!(server.ws.get().clean_closes, 1, "only the polite peer finished the handshake");
}

#[tokio::test]
async fn protocol_violations_are_closed_with_their_codes() {
    let server = start_default().await;
    // An unmasked frame (1002), text that is not UTF-8 (1007), a fragmented ping (1002).
    let unmasked = [0x81, 0x02, b'h', b'i'];
    let mut fragmented_ping = client_frame(PING, b"x");
    fragmented_ping[0] &= 0x7f;
    // A 64-bit length with its most significant bit set (1002, not 1009: no such length exists).
    let mut top_bit = vec![0x82, 0x80 | 127];
    top_bit.extend_from_slice(&(1u64 << 63).to_be_bytes());
    top_bit.extend_from_slice(&[0; 4]);
    // The first fragment of a text message that cannot become UTF-8: refused without waiting
    // for the rest of the message.
    let mut bad_fragment = client_frame(TEXT, &[b'{', 0xff]);
    bad_fragment[0] &= 0x7f;
    for (bytes, code) in [
        (unmasked.to_vec(), 1002),
        (client_frame(TEXT, &[0xc3, 0x28]), 1007),
        (fragmented_ping, 1002),
        (top_bit, 1002),
        (bad_fragment, 1007),
    ] {
        let mut raw = RawWs::connect(&server.url, false).await;
        raw.frame().await.expect("challenge");
        tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &bytes).await.unwrap();
        assert_eq!(raw.close_frame().await, code);
        raw.send_close(code).await;
        assert_eq!(raw.end().await, StreamEnd::Eof);
    }
    eventually("violations counted", || server.ws.get().protocol_violations == 5).await;
}

#[tokio::test]
async fn pings_get_pongs_with_their_payload() {
    let server = start_default().await;
    let mut raw = RawWs::connect(&server.url, false).await;
    raw.frame().await.expect("challenge");
    raw.send(PING, b"are you there").await;
    assert_eq!(raw.frame().await, Ok((0xa, b"are you there".to_vec())));
}

#[tokio::test]
async fn stop_closes_every_client_with_1001_and_drains_before_the_transport_is_gone() {
    let server = start_default().await;
    let clients = raw_clients(&server.url, 200).await;
    server.handle.stop();
    let stopped = within("server task", server.task).await.unwrap();
    assert!(stopped.is_stopped());
    // The driver is done and the transport dropped; the connections finish their handshakes.
    let ends = answer_closes(clients).await;
    assert!(ends.iter().all(|end| *end == (1001, StreamEnd::Eof)), "{ends:?}");
    within("drained", server.ws.all_ended()).await;
    assert_eq!(server.ws.get().clean_closes, 200);
}

#[tokio::test]
async fn a_transport_with_a_bad_configuration_is_refused_naming_the_field() {
    let ws = WsConfig::default().with_write_timeout(Duration::ZERO);
    let error = peer_signal::WsTransport::bind("127.0.0.1:0", ws).await.expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let config_error =
        error.get_ref().and_then(|e| e.downcast_ref::<peer_signal::ConfigError>()).expect("a ConfigError");
    assert_eq!(config_error.field(), "write_timeout");
    assert_eq!(error.to_string(), "write_timeout must be more than zero");
    let ws = WsConfig::default().with_send_backlog_bytes(100);
    let error = peer_signal::WsTransport::bind("127.0.0.1:0", ws).await.expect_err("refused");
    assert_eq!(error.to_string(), "send_backlog_bytes (100) must be at least max_message_size (65536)");
}

#[tokio::test]
async fn frames_a_peer_sent_before_it_vanished_come_before_its_close_even_when_a_send_fails_first() {
    use peer_signal::{Transport, TransportEvent, WsTransport};
    let mut transport = WsTransport::bind("127.0.0.1:0", WsConfig::default()).await.unwrap();
    let stats = transport.stats_handle();
    let url = format!("ws://{}/", transport.local_addr());
    let mut raw = RawWs::connect(&url, false).await;
    let Some(TransportEvent::Opened { conn, .. }) = within("opened", transport.next_event()).await else {
        panic!("no open")
    };
    // A frame, then the peer hangs up at once; its task reads both and ends.
    raw.send(TEXT, b"\"ListIDsRequest\"").await;
    drop(raw);
    eventually("its task ended", || stats.get().connection_tasks == 0).await;
    // The server sends before it has read that frame: the send fails...
    assert!(transport.send(conn, bytes::Bytes::from_static(b"\"late\"")).is_err());
    // ...and the frame still comes, before the close.
    let frame = within("frame", transport.next_event()).await;
    assert_eq!(
        frame,
        Some(TransportEvent::Frame { conn, frame: bytes::Bytes::from_static(b"\"ListIDsRequest\"") })
    );
    assert_eq!(within("close", transport.next_event()).await, Some(TransportEvent::Closed { conn }));
    assert_eq!(stats.get().slow_readers, 0, "a peer that left is no slow reader");
}

#[tokio::test]
async fn what_a_peer_sent_before_resetting_is_handed_on_even_when_a_write_to_it_fails_first() {
    use futures::FutureExt;
    use peer_signal::{Transport, TransportEvent, WsTransport};
    // A peer that reads nothing: the server's writes to it back up in its task.
    let config = WsConfig::default().with_send_backlog(100_000).with_send_backlog_bytes(64 << 20);
    let mut transport = WsTransport::bind("127.0.0.1:0", config).await.unwrap();
    let url = format!("ws://{}/", transport.local_addr());
    let mut raw = RawWs::connect_small(&url).await;
    let Some(TransportEvent::Opened { conn, .. }) = within("opened", transport.next_event()).await else {
        panic!("no open")
    };
    // Past half of the byte backlog, the transport reports the connection busy: by then the
    // kernel's buffers are full and the task holds unwritten frames, waiting for the socket.
    let frame = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
    let mut busy = false;
    for _ in 0..1_000 {
        transport.send(conn, frame.clone()).expect("the connection is open");
        if let Some(event) = transport.next_event().now_or_never() {
            assert_eq!(event, Some(TransportEvent::Busy { conn, busy: true }));
            busy = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(busy, "the writes never backed up");
    // A message, a close, and a reset: the task's next write fails, before it has read them.
    raw.send(TEXT, b"\"ListIDsRequest\"").await;
    raw.send_close(1000).await;
    raw.stream.set_zero_linger().unwrap();
    drop(raw);
    let frame = within("frame", transport.next_event()).await;
    assert_eq!(
        frame,
        Some(TransportEvent::Frame { conn, frame: bytes::Bytes::from_static(b"\"ListIDsRequest\"") })
    );
    assert_eq!(within("close", transport.next_event()).await, Some(TransportEvent::Closed { conn }));
}

#[tokio::test]
async fn data_a_peer_sends_after_its_close_is_neither_handed_on_nor_answered() {
    use peer_signal::{Transport, TransportEvent, WsTransport};
    // RFC 6455 §5.5.1: after its close frame an endpoint sends no more data frames. A peer that
    // does anyway gets the reply to its close and nothing else, whether the frames after it
    // arrive in the same read or trickle in later.
    let mut after_close = client_frame(CLOSE, &1000u16.to_be_bytes());
    after_close.extend(client_frame(TEXT, b"\"ListIDsRequest\""));
    after_close.extend(client_frame(BINARY, b"late"));
    let mut transport = WsTransport::bind("127.0.0.1:0", WsConfig::default()).await.unwrap();
    let url = format!("ws://{}/", transport.local_addr());
    for in_one_write in [true, false] {
        let mut raw = RawWs::connect(&url, false).await;
        let Some(TransportEvent::Opened { conn, .. }) = within("opened", transport.next_event()).await else {
            panic!("no open")
        };
        if in_one_write {
            tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &after_close).await.unwrap();
        } else {
            for piece in after_close.chunks(3) {
                tokio::io::AsyncWriteExt::write_all(&mut raw.stream, piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(raw.close_frame().await, 1000, "in one write: {in_one_write}");
        assert_eq!(raw.end().await, StreamEnd::Eof, "in one write: {in_one_write}");
        let next = within("close", transport.next_event()).await;
        assert_eq!(next, Some(TransportEvent::Closed { conn }), "in one write: {in_one_write}");
    }

    // Through the whole server: a request after the close gets no reply (an unannounced
    // connection's request would be answered with an error).
    let server = start_default().await;
    let mut raw = RawWs::connect(&server.url, false).await;
    raw.frame().await.expect("challenge");
    tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &after_close).await.unwrap();
    assert_eq!(raw.close_frame().await, 1000);
    assert_eq!(raw.end().await, StreamEnd::Eof);

    // The same frames sent with the upgrade request, in one write: the server reads them with
    // the request, and still answers nothing but the challenge and the close.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(host(&server.url)).await.unwrap();
    let mut bytes = b"GET / HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    bytes.extend(&after_close);
    stream.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    within("the server ends the stream", stream.read_to_end(&mut got)).await.unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").expect("a response") + 4;
    assert!(got.starts_with(b"HTTP/1.1 101 "));
    // What follows the response: the challenge (a text frame), then the close, and nothing else.
    let frames = &got[head_end..];
    let challenge_len = usize::from(frames[1]);
    assert_eq!(frames[0], 0x81);
    assert_eq!(&frames[2 + challenge_len..], &[0x88, 0x02, 0x03, 0xe8]);
}
