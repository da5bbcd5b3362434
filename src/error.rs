//! Errors, one enum per audience: the peer ([`ProtocolError`]), the codec ([`CodecError`]) and the
//! transports ([`TransportError`]).

use crate::protocol::NodeID;
use crate::server::ConnId;

/// What a peer did wrong, or why the server refuses it.
///
/// Its `Display` text is exactly the `Error(String)` the server sends to the node; these strings are
/// stable. [`kind`](Self::kind) is a short label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The frame is longer than [`SignalConfig::max_frame_size`](crate::SignalConfig::max_frame_size).
    #[error("frame too large: {size} bytes, limit is {limit}")]
    FrameTooLarge {
        /// The frame's length.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The frame does not decode as a message from a node.
    #[error("malformed message: {0}")]
    Malformed(CodecError),
    /// Anything but `Announce` before the node has announced.
    #[error("not authenticated: announce first")]
    NotAuthenticated,
    /// A second `Announce` on a connection that already announced.
    #[error("already authenticated")]
    AlreadyAuthenticated,
    /// The `Announce` names another protocol version.
    #[error("unsupported protocol version {0}, expected 3")]
    UnsupportedVersion(u64),
    /// The `Announce` answers a challenge that this connection was not sent.
    #[error("unknown challenge")]
    UnknownChallenge,
    /// The announced public key is not a valid ed25519 key (or is a weak one).
    #[error("invalid public key")]
    InvalidPublicKey,
    /// The signature over the challenge does not verify under the announced key.
    #[error("signature does not verify")]
    BadSignature,
    /// A string field is longer than its configured limit.
    #[error("{field} too long: {len} bytes, limit is {limit}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A `NodeStats` message with more entries than allowed.
    #[error("too many node stats: {len}, limit is {limit}")]
    TooManyStats {
        /// The number of entries.
        len: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A `PeerSetup` whose sender is neither `id_init` nor `id_follow`.
    #[error("sender is neither id_init nor id_follow")]
    NotInPair,
    /// A `PeerSetup` for a node that is not connected.
    #[error("unknown destination {0}")]
    UnknownDestination(NodeID),
    /// Another connection announced the same id and took over; this one is closed.
    /// The text is fledger's own.
    #[error("New Connection with same ID")]
    Replaced,
    /// The server holds [`SignalConfig::max_connections`](crate::SignalConfig::max_connections).
    #[error("server full")]
    ServerFull,
    /// Too many connections have not announced yet.
    #[error("too many pending handshakes")]
    TooManyHandshakes,
    /// The connection did not announce within the handshake timeout.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// The node sent nothing valid for longer than the TTL.
    #[error("idle timeout")]
    IdleTimeout,
    /// The connection made too many errors.
    #[error("too many errors")]
    TooManyErrors,
    /// The connection sent more frames or bytes than
    /// [`SignalConfig::frame_rate`](crate::SignalConfig::frame_rate) or
    /// [`SignalConfig::byte_rate`](crate::SignalConfig::byte_rate) allow; it is closed.
    #[error("rate limit exceeded")]
    RateLimited,
    /// The connection failed to announce
    /// [`SignalConfig::max_announce_failures`](crate::SignalConfig::max_announce_failures) times;
    /// it is closed.
    #[error("too many failed announces")]
    TooManyAnnounceFailures,
}

impl ProtocolError {
    /// A stable snake_case label, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::Malformed(_) => "malformed",
            Self::NotAuthenticated => "not_authenticated",
            Self::AlreadyAuthenticated => "already_authenticated",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnknownChallenge => "unknown_challenge",
            Self::InvalidPublicKey => "invalid_public_key",
            Self::BadSignature => "bad_signature",
            Self::TooLong { .. } => "too_long",
            Self::TooManyStats { .. } => "too_many_stats",
            Self::NotInPair => "not_in_pair",
            Self::UnknownDestination(_) => "unknown_destination",
            Self::Replaced => "replaced",
            Self::ServerFull => "server_full",
            Self::TooManyHandshakes => "too_many_handshakes",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TooManyErrors => "too_many_errors",
            Self::RateLimited => "rate_limited",
            Self::TooManyAnnounceFailures => "too_many_announce_failures",
        }
    }
}

/// A frame that does not decode, or a message that does not encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Invalid JSON, or JSON that is not a message of this protocol.
    #[error("{0}")]
    Json(String),
    /// Invalid bincode, or bincode that is not a message of this protocol.
    #[error("{0}")]
    Bincode(String),
}

/// A transport could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection is closed, or was never open.
    #[error("connection {0} is closed")]
    Closed(ConnId),
    /// The transport itself has shut down.
    #[error("transport shut down")]
    Shutdown,
    /// A client could not reach or upgrade to the server.
    #[error("cannot connect: {0}")]
    Connect(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One instance of every variant. The match below is exhaustive, so a new variant does not
    /// compile until it is added here, with its text pinned.
    fn every_variant() -> Vec<ProtocolError> {
        use ProtocolError::*;
        let all = vec![
            FrameTooLarge { size: 70_000, limit: 65_536 },
            Malformed(CodecError::Json("EOF while parsing a value at line 1 column 1".into())),
            Malformed(CodecError::Bincode("io error: unexpected end of file".into())),
            NotAuthenticated,
            AlreadyAuthenticated,
            UnsupportedVersion(2),
            UnknownChallenge,
            InvalidPublicKey,
            BadSignature,
            TooLong { field: "name", len: 300, limit: 256 },
            TooManyStats { len: 300, limit: 256 },
            NotInPair,
            UnknownDestination(NodeID::from([0xab; 32])),
            Replaced,
            ServerFull,
            TooManyHandshakes,
            HandshakeTimeout,
            IdleTimeout,
            TooManyErrors,
            RateLimited,
            TooManyAnnounceFailures,
        ];
        for error in &all {
            match error {
                FrameTooLarge { .. } | Malformed(_) | NotAuthenticated | AlreadyAuthenticated => {}
                UnsupportedVersion(_) | UnknownChallenge | InvalidPublicKey | BadSignature => {}
                TooLong { .. } | TooManyStats { .. } | NotInPair | UnknownDestination(_) => {}
                Replaced | ServerFull | TooManyHandshakes | HandshakeTimeout | IdleTimeout => {}
                TooManyErrors | RateLimited | TooManyAnnounceFailures => {}
            }
        }
        all
    }

    #[test]
    fn every_error_text_and_kind_is_pinned() {
        let texts: Vec<(String, &str)> = every_variant().iter().map(|e| (e.to_string(), e.kind())).collect();
        let expected = [
            ("frame too large: 70000 bytes, limit is 65536", "frame_too_large"),
            ("malformed message: EOF while parsing a value at line 1 column 1", "malformed"),
            ("malformed message: io error: unexpected end of file", "malformed"),
            ("not authenticated: announce first", "not_authenticated"),
            ("already authenticated", "already_authenticated"),
            ("unsupported protocol version 2, expected 3", "unsupported_version"),
            ("unknown challenge", "unknown_challenge"),
            ("invalid public key", "invalid_public_key"),
            ("signature does not verify", "bad_signature"),
            ("name too long: 300 bytes, limit is 256", "too_long"),
            ("too many node stats: 300, limit is 256", "too_many_stats"),
            ("sender is neither id_init nor id_follow", "not_in_pair"),
            (
                "unknown destination abababababababababababababababababababababababababababababababab",
                "unknown_destination",
            ),
            ("New Connection with same ID", "replaced"),
            ("server full", "server_full"),
            ("too many pending handshakes", "too_many_handshakes"),
            ("handshake timeout", "handshake_timeout"),
            ("idle timeout", "idle_timeout"),
            ("too many errors", "too_many_errors"),
            ("rate limit exceeded", "rate_limited"),
            ("too many failed announces", "too_many_announce_failures"),
        ];
        let expected: Vec<(String, &str)> = expected.iter().map(|(t, k)| (t.to_string(), *k)).collect();
        assert_eq!(texts, expected);
    }
}
