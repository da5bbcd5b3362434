//! The node's side of the protocol: [`SignalClient`] (sans-IO) and [`AsyncClient`] (over any
//! [`ClientConnection`]).

mod async_client;
mod config;
mod paths;
mod signal;

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use web_time::Instant;

use rand_core::RngCore;

use async_trait::async_trait;
use bytes::Bytes;
use ed25519_dalek::SigningKey;

use crate::binding::{bound_announce_bytes, setup_bytes, BOUND_ANNOUNCE_VERSION, FLAG_SIGNED_SETUPS};
use crate::codec::Codec;
use crate::crypto::sign_challenge;
use crate::error::{CodecError, ProtocolError, TransportError};
use crate::protocol::{BoundAnnounce, Capabilities, IceServer, IceServers, SignedSetup, U256};
use crate::protocol::{
    FledgerConfig, MessageAnnounce, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage,
    WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION,
};

use std::collections::HashMap;

pub use async_client::{AsyncClient, ClientConnection, Reconnect, Timer};
use config::*;
pub use config::{Backoff, ClientBinding, ClientConfig};
pub use paths::{PathClient, PathEvent, SignalPaths};
pub use signal::SignalClient;
use signal::*;

/// What the server told the node, drained from [`SignalClient::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server accepted the announce and sent its `SystemConfig`; or, later, sent a new one.
    Connected(FledgerConfig),
    /// A `ListIDsReply`: the answer to a list request, or a push of nodes that joined.
    NodeList(Vec<NodeInfo>),
    /// A set-up message from the other node of a pair.
    PeerSetup(PeerInfo),
    /// The server refused something the node sent; the text is the server's.
    Error(String),
    /// A set-up message that failed its check and was not passed on: its signature does not
    /// verify (a server or a relaying neighbour changed it, or it is forged), it replays one seen
    /// before, or it came unsigned to a client that requires signatures. The set-up is as it
    /// arrived.
    RejectedSetup {
        /// The message as it arrived.
        setup: PeerInfo,
        /// Why it was refused.
        reason: SetupRejection,
    },
    /// ICE servers with TURN credentials for this node, ready for an `RTCPeerConnection`'s
    /// configuration: sent by a server with [`SignalConfig::turn`](crate::SignalConfig::turn)
    /// after the sign-in, before the last ones expire, and on request. The latest are also in
    /// [`SignalClient::ice_servers`].
    IceServers(IceServers),
    /// The connection was lost. A client that reconnects (see
    /// [`AsyncClient::connect_reconnecting`]) is now trying again; it reports
    /// [`Connected`](Self::Connected) once the server has accepted its announce anew.
    Disconnected,
}

/// Why a set-up message was refused: [`ClientEvent::RejectedSetup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetupRejection {
    /// The signature does not verify under the sender's id: the message was changed on the way,
    /// or forged.
    BadSignature,
    /// Its sequence number is not above the last one seen from that sender: a replay.
    Replayed,
    /// It came unsigned, and [`ClientConfig::require_signed_setups`] is on.
    Unsigned,
}

/// What went wrong on the node's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server sent a frame that does not decode; it was ignored.
    #[error("malformed frame from the server")]
    Malformed(#[source] CodecError),
    /// The server's challenge names another protocol version; it was not answered.
    #[error("unsupported protocol version {0}, expected 3")]
    UnsupportedVersion(u64),
    /// The server sent a second challenge on the connection; it was not answered. The client signs
    /// one challenge per connection: otherwise a server could collect the node's signatures over
    /// bytes of its choosing.
    #[error("unexpected challenge: this connection's challenge was answered already")]
    UnexpectedChallenge,
    /// The server sent a message that makes no sense at this point of the connection (see
    /// [`SignalClient::handle_frame`] for the rules); it was ignored and counted in
    /// [`SignalClient::refused_messages`]. The text says which.
    #[error("unexpected message from the server: {0}")]
    Unexpected(&'static str),
    /// A request before the server accepted the announce; it was not sent.
    #[error("not connected yet")]
    NotConnected,
    /// The application has not drained [`SignalClient::poll_transmit`]; the request was not queued.
    #[error("too many frames waiting to be sent")]
    Backlog,
    /// The server answered the announce with this error.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// The server did not accept the announce within
    /// [`ClientConfig::sign_in_timeout`]; the connection is dead.
    #[error("no sign-in within {0:?}")]
    SignInTimeout(Duration),
    /// Nothing came from the server for two keepalive intervals; the connection is dead.
    #[error("the server sent nothing for {0:?}")]
    Unresponsive(Duration),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
    /// The client requires a bound sign-in ([`ClientBinding::Require`]) and the server did not
    /// offer it, or the client does not know the server's id; it did not sign the challenge, and
    /// the connection is dead.
    #[error("no bound sign-in possible here: {0}")]
    BindingUnavailable(&'static str),
    /// None of the node's signalling paths lists the node (see [`SignalPaths`]).
    #[error("no signalling path lists node {0}")]
    NoPath(NodeID),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_that_would_overflow_a_deadline_are_clamped_to_a_day() {
        let day = Duration::from_secs(24 * 60 * 60);
        let backoff = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(backoff, Backoff::new(day, day));
        for failures in [1, 2, 40, u32::MAX] {
            assert!(backoff.delay(failures, u32::MAX) <= day.mul_f64(1.25));
        }
        assert_eq!(Backoff::new(Duration::ZERO, Duration::ZERO).delay(1, 0), Duration::from_micros(750));

        let key = SigningKey::from_bytes(&[1; 32]);
        let info = NodeInfo::new("n", "test", key.verifying_key().to_bytes());
        let config = ClientConfig::default()
            .with_sign_in_timeout(Duration::MAX)
            .with_keepalive(Duration::MAX)
            .with_stable_session(Duration::MAX);
        let mut client = SignalClient::with_config(key, info, Codec::Json, &config);
        assert_eq!(client.config().sign_in_timeout, day);
        assert_eq!(client.config().stable_session, day);
        assert_eq!(client.keepalive(), Some(day));
        let now = Instant::now();
        client.handle_timeout(now).unwrap();
        assert_eq!(client.poll_timeout(), Some(now + day));
        client.set_keepalive(Some(Duration::MAX));
        assert_eq!(client.keepalive(), Some(day));
        client.set_keepalive(Some(Duration::from_nanos(1)));
        assert_eq!(client.keepalive(), Some(SHORTEST_KEEPALIVE), "not a flood of requests");
        client.set_keepalive(Some(Duration::ZERO));
        assert_eq!(client.keepalive(), None);
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_within_a_quarter_either_way() {
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let bounds = |base: f64| (Duration::from_secs_f64(base * 0.75), Duration::from_secs_f64(base * 1.25));
        for (failures, base) in [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (40, 30.0)] {
            let (low, high) = bounds(base);
            for random in [0, u32::MAX / 3, u32::MAX] {
                let delay = backoff.delay(failures, random);
                assert!(delay >= low && delay <= high, "{failures} failures: {delay:?}");
            }
            assert!(backoff.delay(failures, 0) < backoff.delay(failures, u32::MAX), "jitter spreads");
        }
    }
}
