//! Provisional: replaced by the transports branch.
use async_trait::async_trait;
use bytes::Bytes;

use crate::{CloseReason, Codec, ConnId, TransportError};

#[cfg(feature = "websocket")]
mod websocket;
#[cfg(feature = "websocket")]
pub use websocket::{WsConfig, WsTransport, BINCODE_SUBPROTOCOL};

/// Moves frames.
#[async_trait]
pub trait Transport: Send {
    /// Next event.
    async fn next_event(&mut self) -> Option<TransportEvent>;
    /// Queues a frame.
    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError>;
    /// Closes a connection.
    fn close(&mut self, conn: ConnId, reason: CloseReason);
}

/// What a transport observed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportEvent {
    /// Opened.
    Opened {
        /// Conn.
        conn: ConnId,
        /// Codec.
        codec: Codec,
    },
    /// Frame.
    Frame {
        /// Conn.
        conn: ConnId,
        /// Frame.
        frame: Bytes,
    },
    /// Closed.
    Closed {
        /// Conn.
        conn: ConnId,
    },
}
