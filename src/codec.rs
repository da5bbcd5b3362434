//! Frames to messages and back: JSON text frames (fledger's format) and bincode binary frames.

use bincode::Options;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{cut, CodecError};

/// How a connection encodes its messages. Chosen by the transport when the connection opens.
///
/// `Json` is fledger's wire format, one message per text frame. `Bincode` carries the same messages
/// in a compact binary form (bincode 1.3, varint integers, byte strings instead of hex), one per
/// binary frame. Both decoders reject trailing bytes.
///
/// # What decoding may allocate
///
/// Neither decoder trusts a length that the frame claims. bincode copies a string only once its
/// bytes are in the frame, and never reads past the frame's end. The sequences of this crate's
/// messages (the stats of `NodeStats`, the nodes of `ListIDsReply`) reserve room for at most
/// 4 KiB of elements up front, whatever length they claim, and then grow only with elements
/// actually decoded, each of which takes at least 36 bytes of the frame (serde's own `Vec`
/// would reserve up to 1 MiB on the claim alone). So decoding a bincode frame of `n` bytes into
/// this crate's messages allocates at most 4 KiB + 8 × `n` bytes at its peak (the message, with a
/// growing vector's old and new buffers), plus, when it fails, the error's text, cut to 128
/// bytes. serde_json claims no lengths: JSON allocates what the message holds and the error.
/// `tests/alloc.rs` pins these bounds with a counting allocator and hostile frames.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// JSON text frames, byte-compatible with fledger 0.10.
    #[default]
    Json,
    /// bincode binary frames.
    Bincode,
}

impl Codec {
    /// Whether frames of this codec travel as binary (rather than text) frames.
    pub fn is_binary(self) -> bool {
        matches!(self, Self::Bincode)
    }

    /// Decodes one frame.
    ///
    /// # Errors
    ///
    /// [`CodecError`] with the decoder's description when the frame is not a `T`, cut to 128
    /// bytes: it may quote the frame.
    pub fn decode<'a, T: Deserialize<'a>>(self, frame: &'a [u8]) -> Result<T, CodecError> {
        match self {
            // A text frame is UTF-8 as a whole; checking it once up front (fast for ASCII) lets the
            // parser skip the check inside every string, and covers the strings it only skips.
            Self::Json => std::str::from_utf8(frame)
                .map_err(|e| CodecError::Json(format!("invalid UTF-8: {e}")))
                .and_then(|text| serde_json::from_str(text).map_err(|e| CodecError::Json(describe_json(&e)))),
            Self::Bincode => bincode_options(u64::try_from(frame.len()).unwrap_or(u64::MAX))
                .deserialize(frame)
                .map_err(|e| CodecError::Bincode(cut(&e.to_string()).into_owned())),
        }
    }

    /// Encodes one message into a frame.
    ///
    /// # Errors
    ///
    /// None for this crate's message types; a foreign `T` may fail to serialize.
    pub fn encode<T: Serialize + ?Sized>(self, message: &T) -> Result<Bytes, CodecError> {
        match self {
            Self::Json => serde_json::to_vec(message).map_err(|e| CodecError::Json(e.to_string())),
            Self::Bincode => {
                bincode_options(u64::MAX).serialize(message).map_err(|e| CodecError::Bincode(e.to_string()))
            }
        }
        .map(Bytes::from)
    }
}

/// serde_json's description of `error`, cut, with its position kept after the cut: the
/// description may quote a whole string or key of the frame, the position is what helps.
fn describe_json(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(description) => format!("{}{position}", cut(description)),
        None => cut(&text).into_owned(),
    }
}

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit).reject_trailing_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoder_message_quotes_at_most_128_bytes_and_keeps_its_position() {
        let frame = format!("{{\"{}\":1}}", "x".repeat(10_000));
        let Err(CodecError::Json(text)) =
            Codec::Json.decode::<crate::WSSignalMessageFromNode>(frame.as_bytes())
        else {
            panic!("decoded")
        };
        assert!(text.starts_with("unknown variant `xxx"), "{text}");
        assert!(text.ends_with("… at line 1 column 10003"), "{text}");
        assert!(text.len() < 128 + 30, "{} bytes", text.len());
    }
}
