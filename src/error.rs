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
