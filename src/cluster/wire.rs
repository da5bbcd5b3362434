//! What crosses the bus between instances, byte by byte: versioned, size-limited, and checked
//! on the way in like a frame from a node.
//!
//! Every message starts with the format's version and its kind:
//!
//! | bytes | frame (kind 1) | takeover (kind 2) | undeliverable (kind 3) | control (kind 4) |
//! |---|---|---|---|---|
//! | 0 | version, 1 | version, 1 | version, 1 | version, 1 |
//! | 1 | 1 | 2 | 3 | 4 |
//! | 2 | codec: 0 JSON, 1 bincode | rank, ASCII decimal, a space, the instance id (ASCII) | reason: 0 unknown, 1 busy | the command as JSON (`Control`) |
//! | 3.. | the node's frame, as it sent it | … | the unreachable node's id, 32 bytes | … |
//!
//! A message travels on the channel of the node it is for, which names it: no message carries
//! its own destination. With a cluster key, 32 bytes of HMAC-SHA256 follow, over the channel's
//! name and the message (see `ClusterKey`).
#![cfg_attr(not(feature = "redis"), allow(dead_code))]

use bytes::Bytes;

use super::{Control, Undelivered};
use crate::codec::Codec;
use crate::protocol::NodeID;

/// The version of this format; a message of another version is refused, not guessed at.
pub(crate) const VERSION: u8 = 1;
const FRAME: u8 = 1;
const TAKEOVER: u8 = 2;
const UNDELIVERABLE: u8 = 3;
const CONTROL: u8 = 4;
/// The longest instance id in a takeover.
pub(crate) const MAX_INSTANCE_LEN: usize = 64;

/// A message from the bus, decoded and checked.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BusMessage {
    Frame { codec: Codec, frame: Bytes },
    TakenOver { gen: u64, instance: String },
    Undeliverable { about: NodeID, reason: Undelivered },
    Control(Control),
}

/// Why a message from the bus was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WireError {
    TooLarge,
    Version,
    Kind,
    Malformed,
}

pub(crate) fn encode_frame(codec: Codec, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len().saturating_add(3));
    out.extend_from_slice(&[VERSION, FRAME, u8::from(codec.is_binary())]);
    out.extend_from_slice(frame);
    out
}

pub(crate) fn encode_undeliverable(about: NodeID, reason: Undelivered) -> Vec<u8> {
    let reason = match reason {
        Undelivered::Busy => 1,
        Undelivered::Unknown => 0,
    };
    let mut out = Vec::with_capacity(35);
    out.extend_from_slice(&[VERSION, UNDELIVERABLE, reason]);
    out.extend_from_slice(about.as_bytes());
    out
}

/// An application's command for the node of the channel, as JSON.
pub(crate) fn encode_control(control: &Control) -> Vec<u8> {
    let mut out = vec![VERSION, CONTROL];
    // A `Control` always encodes; an empty body is refused by the receiver regardless.
    if let Ok(json) = serde_json::to_vec(control) {
        out.extend_from_slice(&json);
    }
    out
}

/// A takeover: the rank of the newer claim and the instance that holds it.
pub(crate) fn encode_takeover(gen: u64, instance: &str) -> Vec<u8> {
    let mut out = vec![VERSION, TAKEOVER];
    out.extend_from_slice(format!("{gen} {instance}").as_bytes());
    out
}

/// Decodes one message of at most `max` bytes.
pub(crate) fn decode(payload: &[u8], max: usize) -> Result<BusMessage, WireError> {
    if payload.len() > max {
        return Err(WireError::TooLarge);
    }
    let [version, kind, rest @ ..] = payload else { return Err(WireError::Malformed) };
    if *version != VERSION {
        return Err(WireError::Version);
    }
    match *kind {
        FRAME => {
            let [codec, frame @ ..] = rest else { return Err(WireError::Malformed) };
            let codec = match codec {
                0 => Codec::Json,
                1 => Codec::Bincode,
                _ => return Err(WireError::Malformed),
            };
            Ok(BusMessage::Frame { codec, frame: Bytes::copy_from_slice(frame) })
        }
        TAKEOVER => {
            let text = std::str::from_utf8(rest).map_err(|_| WireError::Malformed)?;
            let (gen, instance) = text.split_once(' ').ok_or(WireError::Malformed)?;
            let gen = gen.parse::<u64>().map_err(|_| WireError::Malformed)?;
            if instance.is_empty() || instance.len() > MAX_INSTANCE_LEN {
                return Err(WireError::Malformed);
            }
            Ok(BusMessage::TakenOver { gen, instance: instance.to_string() })
        }
        UNDELIVERABLE => {
            let [reason, about @ ..] = rest else { return Err(WireError::Malformed) };
            let reason = match reason {
                0 => Undelivered::Unknown,
                1 => Undelivered::Busy,
                _ => return Err(WireError::Malformed),
            };
            let about = <[u8; 32]>::try_from(about).map_err(|_| WireError::Malformed)?;
            Ok(BusMessage::Undeliverable { about: NodeID::from(about), reason })
        }
        CONTROL => serde_json::from_slice(rest).map(BusMessage::Control).map_err(|_| WireError::Malformed),
        _ => Err(WireError::Kind),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let frame = encode_frame(Codec::Bincode, b"\x02abc");
        assert_eq!(
            decode(&frame, 100),
            Ok(BusMessage::Frame { codec: Codec::Bincode, frame: Bytes::from_static(b"\x02abc") })
        );
        let about = NodeID::from([3; 32]);
        let bounce = encode_undeliverable(about, Undelivered::Busy);
        assert_eq!(decode(&bounce, 100), Ok(BusMessage::Undeliverable { about, reason: Undelivered::Busy }));
        let takeover = encode_takeover(42, "instance-a");
        assert_eq!(
            decode(&takeover, 100),
            Ok(BusMessage::TakenOver { gen: 42, instance: "instance-a".into() })
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let frame = encode_frame(Codec::Json, b"{}");
        assert_eq!(decode(&frame, 4), Err(WireError::TooLarge));
        for (bad, error) in [
            (&b""[..], WireError::Malformed),
            (b"\x01", WireError::Malformed),
            (b"\x02\x01\x00{}", WireError::Version),
            (b"\x01\x09\x00", WireError::Kind),
            (b"\x01\x01", WireError::Malformed),
            (b"\x01\x01\x07{}", WireError::Malformed),
            (b"\x01\x02x y", WireError::Malformed),
            (b"\x01\x02 42", WireError::Malformed),
            (b"\x01\x02-1 a", WireError::Malformed),
            (b"\x01\x02\xff a", WireError::Malformed),
            (b"\x01\x0342", WireError::Malformed),
            (b"\x01\x03\x05aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", WireError::Malformed),
        ] {
            assert_eq!(decode(bad, 100), Err(error), "{bad:?}");
        }
        let long = encode_takeover(1, &"i".repeat(MAX_INSTANCE_LEN + 1));
        assert_eq!(decode(&long, 1000), Err(WireError::Malformed));
    }
}
