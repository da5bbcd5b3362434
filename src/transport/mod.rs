//! The boundary between the sans-IO core and the world: [`Transport`] moves frames, nothing else.
//!
//! The guide to writing an adapter is on [`Transport`] itself, so that it shows up in the
//! rendered docs. Adapters live in submodules: only `memory` may name flume, only `websocket`
//! tokio and tungstenite.

use std::net::IpAddr;

use async_trait::async_trait;
use bytes::Bytes;

use crate::codec::Codec;
use crate::error::TransportError;
use crate::server::{CloseReason, ConnId, SignalIn};

mod hub;
pub(crate) mod memory;
pub(crate) mod peer_link;
#[cfg(feature = "websocket")]
mod websocket;
#[cfg(feature = "websocket")]
#[doc(hidden)]
pub use websocket::fuzzing as ws_fuzzing;
#[cfg(feature = "websocket")]
pub use websocket::{
    Admission, AdmissionHook, TokioTimer, UpgradeRequest, WsClient, WsClientBuilder, WsClientError, WsConfig,
    WsStats, WsStatsHandle, WsTransport,
};
#[cfg(feature = "tls")]
pub use websocket::{ServerTls, TlsError, TlsRoots};

/// The WebSocket subprotocol a client asks for to speak bincode in binary frames. Without it a
/// connection speaks JSON in text frames, as fledger nodes do.
pub const BINCODE_SUBPROTOCOL: &str = "peer-signal-bincode";

/// Something a [`Transport`] observed, for the driver to feed into the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A connection was accepted. Every later event about it names the same `conn`.
    Opened {
        /// The transport's id for it: unique, never reused.
        conn: ConnId,
        /// How the peer encodes its frames, e.g. text frames are [`Codec::Json`].
        codec: Codec,
        /// The peer's IP address, where the transport knows it: for a connection through a
        /// trusted reverse proxy, the client's rather than the proxy's.
        addr: Option<IpAddr>,
    },
    /// A whole frame arrived on `conn`. The transport does not look inside it.
    Frame {
        /// Where it came from.
        conn: ConnId,
        /// Its payload, undecoded.
        frame: Bytes,
    },
    /// `conn`'s send queue passed half its capacity (`busy: true`), or drained below half again
    /// (`busy: false`). Reported on each change, never twice in a row with the same value; a
    /// transport that does not track its queues never reports it.
    Busy {
        /// The connection.
        conn: ConnId,
        /// Whether its queue is more than half full.
        busy: bool,
    },
    /// `conn` is gone: the peer left, or the transport closed it (on request, or as a slow
    /// reader). Reported exactly once per `Opened`.
    Closed {
        /// The connection.
        conn: ConnId,
    },
}

impl From<TransportEvent> for SignalIn {
    fn from(event: TransportEvent) -> Self {
        match event {
            TransportEvent::Opened { conn, codec, addr } => SignalIn::Opened { conn, codec, addr },
            TransportEvent::Frame { conn, frame } => SignalIn::Frame { conn, frame },
            TransportEvent::Busy { conn, busy } => SignalIn::Busy { conn, busy },
            TransportEvent::Closed { conn } => SignalIn::Closed { conn },
        }
    }
}

/// Moves frames between peers and a [`SignalServer`](crate::SignalServer); the
/// [`Driver`](crate::Driver) connects the two.
///
/// A transport accepts connections, reports what arrives, sends and closes on command. It never
/// decodes a frame and never decides anything about the protocol: authentication, limits, routing
/// and error replies all happen in the core, so every adapter behaves the same.
/// [`MemoryTransport`](crate::MemoryTransport) is the in-process adapter.
///
/// # Writing your own adapter
///
/// 1. Give each accepted connection a [`ConnId`] that is unique for the transport's lifetime
///    (a counter), and report [`TransportEvent::Opened`] with the codec the peer speaks (and its
///    address, if there is one) before any of its frames.
/// 2. Report each received frame whole, in order, as [`TransportEvent::Frame`]. Check no size:
///    the core enforces [`SignalConfig::max_frame_size`](crate::SignalConfig::max_frame_size).
/// 3. Report [`TransportEvent::Closed`] exactly once per connection, whoever closed it.
/// 4. Make [`send`](Self::send) queue and return: the driver calls it for many connections in a
///    row, and one slow peer must not hold up the others. Bound each connection's queue by
///    [`SignalConfig::max_send_backlog`](crate::SignalConfig::max_send_backlog) and close the
///    connection when it is full.
/// 5. Make [`next_event`](Self::next_event) cancel-safe: the driver drops its future whenever a
///    tick or a stop arrives first, and an event must not get lost then.
/// 6. Return `None` from `next_event` only when no connection can ever arrive again; the driver
///    then stops the server.
///
/// # Example
///
/// A transport that replays a script of events and records what the server sends. It is enough
/// to run the real driver:
///
/// ```
/// use std::collections::VecDeque;
/// use std::sync::{Arc, Mutex};
///
/// use async_trait::async_trait;
/// use bytes::Bytes;
/// use peer_signal::{
///     CloseReason, Codec, ConnId, Driver, SignalConfig, SignalServer, Transport, TransportError,
///     TransportEvent, WSSignalMessageToNode,
/// };
///
/// struct Script {
///     events: VecDeque<TransportEvent>,
///     sent: Arc<Mutex<Vec<(ConnId, Bytes)>>>,
/// }
///
/// #[async_trait]
/// impl Transport for Script {
///     async fn next_event(&mut self) -> Option<TransportEvent> {
///         // `None` at the end of the script: the driver stops the server.
///         self.events.pop_front()
///     }
///
///     fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
///         self.sent.lock().map_err(|_| TransportError::Shutdown)?.push((conn, frame));
///         Ok(())
///     }
///
///     fn close(&mut self, _conn: ConnId, _reason: CloseReason) {}
/// }
///
/// let conn = ConnId::new(1);
/// let sent = Arc::new(Mutex::new(Vec::new()));
/// let script = Script {
///     events: VecDeque::from([
///         TransportEvent::Opened { conn, codec: Codec::Json, addr: None },
///         TransportEvent::Frame { conn, frame: Bytes::from_static(b"not json") },
///     ]),
///     sent: Arc::clone(&sent),
/// };
/// let server = SignalServer::new(SignalConfig::default()).expect("a valid config");
/// let (driver, _handle, _events) = Driver::new(server, script, 16);
/// let server = futures::executor::block_on(driver.run(futures::stream::pending()));
/// assert!(server.is_stopped());
///
/// let replies: Vec<WSSignalMessageToNode> =
///     sent.lock().unwrap().iter().map(|(_, frame)| Codec::Json.decode(frame).unwrap()).collect();
/// assert!(matches!(replies[0], WSSignalMessageToNode::Challenge(3, _)));
/// assert!(matches!(&replies[1], WSSignalMessageToNode::Error(e) if e.starts_with("malformed message")));
/// ```
#[async_trait]
pub trait Transport: Send {
    /// Waits for what happened next; `None` once the transport has shut down for good.
    ///
    /// Must be cancel-safe: dropping the future before it completes loses no event.
    async fn next_event(&mut self) -> Option<TransportEvent>;

    /// The next event if one is ready now, without waiting; `None` when none is (the end of the
    /// transport included: [`next_event`](Self::next_event) reports that).
    ///
    /// A driver takes the events that arrived together this way before it builds a
    /// `next_event` future, which `async_trait` puts on the heap. The default has nothing ready,
    /// which is always correct, only slower.
    fn try_next_event(&mut self) -> Option<TransportEvent> {
        None
    }

    /// Queues a frame for `conn`; must not wait for the peer.
    ///
    /// A connection whose queue is full
    /// ([`SignalConfig::max_send_backlog`](crate::SignalConfig::max_send_backlog)) is closed by
    /// the transport, which reports [`TransportEvent::Closed`] later.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] when `conn` is closed (including just now, because its queue
    /// was full) or unknown; the frame is dropped.
    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError>;

    /// Closes `conn` after the frames queued before this call. Closing a closed or unknown
    /// connection does nothing.
    fn close(&mut self, conn: ConnId, reason: CloseReason);
}
