//! A relayed frame must not keep its sender's read buffer alive: a 100-byte `PeerSetup` cut from
//! a 64 KiB read and queued for a node that does not read would otherwise hold the 64 KiB while
//! it counts 100 bytes against the queue's bounds. Measured with a counting global allocator,
//! over real sockets.
//!
//! One test function, so that no other test allocates while it measures.

mod counting;
mod nodes;
mod ws;

use std::sync::atomic::Ordering;

use counting::LIVE;
use peer_signal::{Codec, PeerInfo, PeerMessage, RateLimit, WSSignalMessageFromNode, WsConfig};
use tokio::io::AsyncWriteExt;
use ws::*;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

#[tokio::test(flavor = "current_thread")]
async fn small_relayed_frames_do_not_pin_their_senders_read_buffers() {
    let config = nodes::config().with_frame_rate(RateLimit::UNLIMITED).with_byte_rate(RateLimit::UNLIMITED);
    let server = start(config.clone(), WsConfig::for_server(&config)).await;
    // The receiver stops reading at once, with a small receive buffer: what is relayed to it
    // stays queued in the server.
    let mut receiver = RawWs::connect_small(&server.url).await;
    raw_announce(&mut receiver, 5).await;
    let mut sender = join(&server.url, 6, Codec::Json).await;
    let receiver_id = nodes::id(5);

    // Fill the receiver's socket with large offers until the server queues what follows.
    let offer = "o".repeat(8 * 1024);
    let mut sent = 0;
    while server.ws.get().queued_bytes == 0 {
        let setup = PeerInfo {
            id_init: sender.id(),
            id_follow: receiver_id,
            message: PeerMessage::Offer(offer.clone()),
        };
        sender.send_setup(setup).await.unwrap();
        sent += 1;
        assert!(sent < 1000, "the receiver's socket never filled");
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    // Each round: a list request padded to 60 KiB, whose last hundred bytes come in one write
    // with a relay of a hundred bytes, so that the relay is cut from a read buffer of more than
    // 60 KiB.
    let mut raw = RawWs::connect(&server.url, false).await;
    raw_announce(&mut raw, 7).await;
    let _list = raw.frame().await.expect("the list after the announce");
    let padded = format!("{:width$}\"ListIDsRequest\"", "", width = 60 * 1024);
    let rounds = 24;
    let queued_before = server.ws.get().queued_bytes;
    let live_before = LIVE.load(Ordering::SeqCst);
    let mut relay_bytes = 0;
    for round in 0..rounds {
        let setup = WSSignalMessageFromNode::PeerSetup(PeerInfo {
            id_init: nodes::id(7),
            id_follow: receiver_id,
            message: PeerMessage::IceCandidate(format!("candidate:{round}")),
        });
        let relay = Codec::Json.encode(&setup).unwrap();
        relay_bytes += relay.len();
        let padded_frame = client_frame(TEXT, padded.as_bytes());
        let (head, tail) = padded_frame.split_at(padded_frame.len() - 100);
        raw.stream.write_all(head).await.unwrap();
        // The server holds a buffer for the padded frame; its last bytes then arrive with the
        // relay, and the buffer grows (doubling) to take them.
        eventually("the padded frame read", || server.ws.get().read_buffer_bytes >= head.len() as u64).await;
        let mut bytes = tail.to_vec();
        bytes.extend_from_slice(&client_frame(TEXT, &relay));
        raw.stream.write_all(&bytes).await.unwrap();
        // The list that answers the padded request: both frames were handled.
        let (_, reply) = raw.frame().await.expect("a list");
        assert!(reply.starts_with(b"{\"ListIDsReply\""));
    }
    eventually("the relays queued", || server.ws.get().queued_bytes >= queued_before + relay_bytes as u64)
        .await;
    let grown = LIVE.load(Ordering::SeqCst).saturating_sub(live_before);
    // Without copying, each relay would hold its 60 KiB read buffer: ~1.5 MiB for 24 rounds.
    assert!(
        grown < 256 * 1024,
        "{grown} bytes still allocated after {rounds} relays of {relay_bytes} bytes in all"
    );
}
