//! Entry points for the fuzz targets of the two parsers this transport writes itself, the frame
//! reader and the upgrade request's head; not part of the API.

use bytes::BytesMut;

use super::frame::{Incoming, Reader, Violation};
use super::handshake::{self, HeadScan};

/// Feeds `data` to the frame reader twice, in one read and in reads of the sizes its bytes
/// pick, and checks that both see the same messages and the same violation, that no message is
/// over the limit, and that text is UTF-8. The first byte picks the limit (0 to 255 bytes, so
/// that limits are reached), the second the longest read.
///
/// # Panics
///
/// When a check fails: that is what the fuzzer looks for.
pub fn frame(data: &[u8]) {
    let [limit, read, stream @ ..] = data else { return };
    let max_message = usize::from(*limit);
    let whole = read_frames(max_message, stream, stream.len().max(1));
    let chunked = read_frames(max_message, stream, usize::from(*read % 16) + 1);
    assert_eq!(whole, chunked, "the reads' sizes changed what was read");
}

/// Every message read from `stream` in reads of at most `read` bytes, then the violation.
fn read_frames(max_message: usize, stream: &[u8], read: usize) -> (Vec<Incoming>, Option<Violation>) {
    let mut reader = Reader::new(max_message);
    let mut buf = BytesMut::new();
    let mut messages = Vec::new();
    for chunk in stream.chunks(read) {
        // At most one message, or one control frame (125 bytes), or a header.
        assert!(reader.wanted(&buf) <= max_message.max(125), "wants more than one message");
        buf.extend_from_slice(chunk);
        loop {
            match reader.next(&mut buf) {
                Ok(Some(message)) => {
                    match &message {
                        Incoming::Text(text) => {
                            assert!(text.len() <= max_message);
                            assert!(std::str::from_utf8(text).is_ok(), "text that is not UTF-8");
                        }
                        Incoming::Binary(data) => assert!(data.len() <= max_message),
                        Incoming::Ping(payload) => assert!(payload.len() <= 125),
                        Incoming::Pong | Incoming::Close(_) => {}
                    }
                    messages.push(message);
                }
                Ok(None) => break,
                Err(violation) => return (messages, Some(violation)),
            }
        }
    }
    (messages, None)
}

/// Feeds `data` to the head scan in reads of the sizes its first byte picks, checks it against
/// a scan of the whole, and parses the head it finds; an accepted upgrade's response must be a
/// well-formed `101`.
///
/// # Panics
///
/// When a check fails.
pub fn upgrade(data: &[u8]) {
    let [read, request @ ..] = data else { return };
    let expected = request.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4);
    let mut scan = HeadScan::default();
    let mut found = None;
    let step = usize::from(*read % 32) + 1;
    let mut end = 0;
    while found.is_none() && end < request.len() {
        end = (end + step).min(request.len());
        found = scan.find(request.get(..end).unwrap_or_default());
    }
    assert_eq!(found, expected, "the resumed scan missed the end of the head");
    let Some(head) = found.and_then(|len| request.get(..len)) else { return };
    if let Ok(upgrade) = handshake::parse(head) {
        let response = handshake::accept(&upgrade);
        assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(response.ends_with(b"\r\n\r\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz targets' checks over a few thousand seeded inputs: valid frames and requests,
    /// mutated, and noise. A smoke run for CI, where the fuzzer itself does not run.
    #[test]
    fn the_parsers_survive_mutated_input() {
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Masked frames: text, binary in two fragments, ping, close with a code.
        let frames: &[&[u8]] = &[
            b"\x81\x82\x00\x00\x00\x00hi",
            b"\x02\x83\x01\x02\x03\x04abc\x80\x81\x01\x02\x03\x04d",
            b"\x89\x80\x00\x00\x00\x00",
            b"\x88\x84\x00\x00\x00\x00\x03\xe8ok",
        ];
        let request: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        for round in 0..4000 {
            let mut input: Vec<u8> = vec![(next() % 64) as u8, next() as u8];
            match round % 3 {
                0 => input.extend_from_slice(request),
                1 => (0..1 + next() % 4).for_each(|_| {
                    input.extend_from_slice(frames[(next() % frames.len() as u64) as usize]);
                }),
                _ => input.extend((0..next() % 200).map(|_| next() as u8)),
            }
            // Flip, insert or drop a few bytes.
            for _ in 0..next() % 4 {
                let at = (next() % input.len() as u64) as usize;
                match next() % 3 {
                    0 => input[at] ^= 1 << (next() % 8),
                    1 => input.insert(at, next() as u8),
                    _ => {
                        input.remove(at);
                    }
                }
                if input.is_empty() {
                    break;
                }
            }
            frame(&input);
            upgrade(&input[1..]);
        }
    }
}
