//! Frames to messages and back: JSON text frames (fledger's format) and bincode binary frames.

use bincode::Options;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::CodecError;

/// How a connection encodes its messages. Chosen by the transport when the connection opens.
///
/// `Json` is fledger's wire format, one message per text frame. `Bincode` carries the same messages
/// in a compact binary form (bincode 1.3, varint integers, byte strings instead of hex), one per
/// binary frame. Both decoders reject trailing bytes, and bincode never allocates more than the
/// frame's length.
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
    /// [`CodecError`] with the decoder's description when the frame is not a `T`.
    pub fn decode<'a, T: Deserialize<'a>>(self, frame: &'a [u8]) -> Result<T, CodecError> {
        match self {
            // A text frame is UTF-8 as a whole; checking it once up front (fast for ASCII) lets the
            // parser skip the check inside every string, and covers the strings it only skips.
            Self::Json => std::str::from_utf8(frame)
                .map_err(|e| CodecError::Json(format!("invalid UTF-8: {e}")))
                .and_then(|text| serde_json::from_str(text).map_err(|e| CodecError::Json(e.to_string()))),
            Self::Bincode => bincode_options(frame.len() as u64)
                .deserialize(frame)
                .map_err(|e| CodecError::Bincode(e.to_string())),
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

fn bincode_options(limit: u64) -> impl Options {
    bincode::DefaultOptions::new().with_limit(limit).reject_trailing_bytes()
}
