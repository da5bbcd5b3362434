//! Errors, one enum per audience: the peer ([`ProtocolError`], and [`CloseReason`] for the
//! transport that closes it), the codec ([`CodecError`]), the transports ([`TransportError`]) and
//! the host's configuration ([`ConfigError`]).

use std::borrow::Cow;
use std::time::Duration;

use crate::ids::ConnId;
use crate::protocol::NodeID;

/// At most this many bytes of a decoder's description go into a [`CodecError`], and so into an
/// `Error` reply: the description may quote what the peer sent (an unknown variant, a string of
/// the wrong type), and a reply must not echo a whole frame back.
pub(crate) const MAX_QUOTE: usize = 128;

/// `text`, cut to [`MAX_QUOTE`] bytes on a char boundary, with `…` marking the cut.
pub(crate) fn cut(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_QUOTE {
        return Cow::Borrowed(text);
    }
    let end = (0..=MAX_QUOTE).rev().find(|&at| text.is_char_boundary(at)).unwrap_or(0);
    Cow::Owned(format!("{}…", text.get(..end).unwrap_or_default()))
}

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
    /// The frame does not decode as a message from a node. The text is the decoder's, with at
    /// most 128 bytes of its description (see [`CodecError`]).
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
    /// A string field is longer than its configured limit, measured as encoded in JSON.
    #[error("{field} too long: {len} bytes, limit is {limit}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length as encoded in JSON, escapes included.
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
    /// A `PeerSetup` for a node whose connection cannot take more frames for now: its transport
    /// reported it busy with [`SignalIn::Busy`](crate::SignalIn::Busy). The message was dropped.
    #[error("destination busy: {0}")]
    DestinationBusy(NodeID),
    /// Another connection announced the same id and took over; this one is closed.
    /// The text is fledger's own.
    #[error("New Connection with same ID")]
    Replaced,
    /// The server holds [`SignalConfig::max_connections`](crate::SignalConfig::max_connections).
    #[error("server full")]
    ServerFull,
    /// The connection did not announce within the handshake timeout, or it was the oldest of
    /// [`SignalConfig::max_pending_handshakes`](crate::SignalConfig::max_pending_handshakes)
    /// pending connections when a new one arrived.
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
    /// The application's [`AnnouncePolicy`](crate::AnnouncePolicy) refused the node, for this
    /// reason; it is closed.
    #[error("{0}")]
    Denied(String),
    /// The connection failed to announce
    /// [`SignalConfig::max_announce_failures`](crate::SignalConfig::max_announce_failures) times;
    /// it is closed.
    #[error("too many failed announces")]
    TooManyAnnounceFailures,
    /// The application disconnected the node ([`Command::Disconnect`](crate::Command::Disconnect)),
    /// for this reason (cut to 128 bytes); it is closed.
    #[error("{}", cut(.0))]
    Disconnected(String),
    /// `IceServersRequest` to a server without [`SignalConfig::turn`](crate::SignalConfig::turn).
    #[error("no TURN servers here")]
    NoTurn,
    /// A plain v3 `Announce` to a server whose [`BindingMode`](crate::BindingMode) is
    /// `Require`.
    #[error("bound announce required")]
    BindingRequired,
    /// A `BoundAnnounce` to a server with binding off.
    #[error("bound announce not enabled here")]
    BindingOff,
    /// A `BoundAnnounce` of another version than 1.
    #[error("unsupported bound announce version {0}, expected 1")]
    UnsupportedBinding(u64),
    /// A `BoundAnnounce` signed for another server: relayed from somewhere else, or mistaken.
    #[error("signed for another server")]
    WrongServer,
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
            Self::DestinationBusy(_) => "destination_busy",
            Self::Replaced => "replaced",
            Self::ServerFull => "server_full",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TooManyErrors => "too_many_errors",
            Self::RateLimited => "rate_limited",
            Self::TooManyAnnounceFailures => "too_many_announce_failures",
            Self::Denied(_) => "denied",
            Self::Disconnected(_) => "disconnected",
            Self::NoTurn => "no_turn",
            Self::BindingRequired => "binding_required",
            Self::BindingOff => "binding_off",
            Self::UnsupportedBinding(_) => "unsupported_binding",
            Self::WrongServer => "wrong_server",
        }
    }
}

/// Why the server closes a connection, in [`SignalOut::Close`](crate::SignalOut::Close): what a
/// transport tells the peer as it closes (a normal stop is not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The server is stopping.
    Stopped,
    /// The peer broke a rule or hit a limit; it was sent this error just before.
    Error(ProtocolError),
}

/// A frame that does not decode, or a message that does not encode.
///
/// The text is the decoder's description, cut to its first 128 bytes (the cut marked with `…`),
/// and for JSON followed by the position: a description may quote what the peer sent.
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

/// A command of the application's, through a [`DriverHandle`](crate::DriverHandle), was not
/// carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No node with this id is announced on this server.
    #[error("unknown node {0}")]
    UnknownNode(NodeID),
    /// The driver has returned: the server is stopped.
    #[error("the server has stopped")]
    Stopped,
    /// The server refused a new setting; it keeps the old one.
    #[error("refused setting: {0}")]
    Config(ConfigError),
}

/// A [`SignalConfig`](crate::SignalConfig) setting that the server cannot work with, from
/// [`SignalConfig::validate`](crate::SignalConfig::validate) and
/// [`SignalServer::new`](crate::SignalServer::new).
///
/// The text names the field, e.g. `ttl must be more than zero`;
/// [`field`](Self::field) returns the name alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A setting that must not be zero is zero.
    #[error("{field} must be more than zero")]
    Zero {
        /// The field, as it is spelt in `SignalConfig` (`frame_rate.burst` for a part of one).
        field: &'static str,
    },
    /// A duration longer than a century: no deadline that far can be computed on every platform.
    #[error("{field} ({value:?}) must be at most a century")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A limit smaller than another that it must hold, e.g. a byte burst smaller than the largest
    /// frame, which could then never pass.
    #[error("{field} ({value}) must be at least {other} ({other_value})")]
    Below {
        /// The field that is too small.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The field it must hold.
        other: &'static str,
        /// That field's value.
        other_value: u64,
    },
    /// A number larger than the setting allows, e.g. an IPv6 prefix longer than 128 bits, or a
    /// queue longer than the channels under it can hold.
    #[error("{field} ({value}) must be at most {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The largest value allowed.
        limit: u64,
    },
    /// A name with characters or a length the setting does not allow, e.g. an instance id of a
    /// cluster.
    #[error("{field} is not a valid name")]
    Invalid {
        /// The field.
        field: &'static str,
    },
    /// A URL of the wrong kind, e.g. an `http:` URL among the TURN servers.
    #[error("{field}: {url:?} is not a {expected} URL")]
    Url {
        /// The field.
        field: &'static str,
        /// The URL, as given.
        url: String,
        /// The schemes it may have.
        expected: &'static str,
    },
}

impl ConfigError {
    /// The name of the refused field, as it is spelt in its config struct (`SignalConfig`,
    /// `WsConfig`, `ClusterConfig` or `RedisConfig`).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Zero { field }
            | Self::TooLong { field, .. }
            | Self::Below { field, .. }
            | Self::TooLarge { field, .. }
            | Self::Invalid { field }
            | Self::Url { field, .. } => field,
        }
    }
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
            DestinationBusy(NodeID::from([0xcd; 32])),
            Replaced,
            ServerFull,
            HandshakeTimeout,
            IdleTimeout,
            TooManyErrors,
            RateLimited,
            TooManyAnnounceFailures,
            Denied("node not allowed".into()),
            NoTurn,
            BindingRequired,
            BindingOff,
            UnsupportedBinding(2),
            WrongServer,
            Disconnected("x".repeat(200)),
        ];
        for error in &all {
            match error {
                FrameTooLarge { .. } | Malformed(_) | NotAuthenticated | AlreadyAuthenticated => {}
                UnsupportedVersion(_) | UnknownChallenge | InvalidPublicKey | BadSignature => {}
                TooLong { .. } | TooManyStats { .. } | NotInPair | UnknownDestination(_) => {}
                DestinationBusy(_) | Replaced | ServerFull | HandshakeTimeout | IdleTimeout => {}
                TooManyErrors | RateLimited | TooManyAnnounceFailures | Denied(_) => {}
                Disconnected(_) | NoTurn | BindingRequired | BindingOff | UnsupportedBinding(_) => {}
                WrongServer => {}
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
            (
                "destination busy: cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
                "destination_busy",
            ),
            ("New Connection with same ID", "replaced"),
            ("server full", "server_full"),
            ("handshake timeout", "handshake_timeout"),
            ("idle timeout", "idle_timeout"),
            ("too many errors", "too_many_errors"),
            ("rate limit exceeded", "rate_limited"),
            ("too many failed announces", "too_many_announce_failures"),
            ("node not allowed", "denied"),
            ("no TURN servers here", "no_turn"),
            ("bound announce required", "binding_required"),
            ("bound announce not enabled here", "binding_off"),
            ("unsupported bound announce version 2, expected 1", "unsupported_binding"),
            ("signed for another server", "wrong_server"),
        ];
        let mut expected: Vec<(String, &str)> = expected.iter().map(|(t, k)| (t.to_string(), *k)).collect();
        expected.push((format!("{}…", "x".repeat(128)), "disconnected"));
        assert_eq!(texts, expected);
    }

    #[test]
    fn config_errors_name_their_field() {
        let errors = [
            (ConfigError::Zero { field: "ttl" }, "ttl must be more than zero"),
            (
                ConfigError::TooLong { field: "handshake_timeout", value: Duration::from_secs(5) },
                "handshake_timeout (5s) must be at most a century",
            ),
            (
                ConfigError::Below {
                    field: "byte_rate.burst",
                    value: 1000,
                    other: "max_frame_size",
                    other_value: 65536,
                },
                "byte_rate.burst (1000) must be at least max_frame_size (65536)",
            ),
            (
                ConfigError::TooLarge { field: "event_queue", value: u64::MAX, limit: 1 << 20 },
                "event_queue (18446744073709551615) must be at most 1048576",
            ),
        ];
        for (error, text) in errors {
            assert_eq!(error.to_string(), text);
            assert!(text.starts_with(error.field()));
        }
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_on_a_char_boundary() {
        assert_eq!(cut("short"), "short");
        let exact = "a".repeat(MAX_QUOTE);
        assert_eq!(cut(&exact), exact.as_str());
        let long = "b".repeat(10 * MAX_QUOTE);
        assert_eq!(cut(&long), format!("{}…", "b".repeat(MAX_QUOTE)));
        // 'é' is two bytes: byte 128 falls inside the 64th of them, which is dropped whole.
        let accents = format!("a{}", "é".repeat(MAX_QUOTE));
        let cut_text = cut(&accents);
        assert_eq!(cut_text, format!("a{}…", "é".repeat(63)));
        assert!(cut_text.len() <= MAX_QUOTE + '…'.len_utf8());
    }
}
