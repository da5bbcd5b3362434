//! The in-process adapter: every connection is a pair of bounded flume channels.
//!
//! The only file that names flume: channel errors become [`TransportError`] here.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::client::ClientConnection;
use crate::codec::Codec;
use crate::error::TransportError;
use crate::server::{CloseReason, ConnId, SignalConfig};
use crate::transport::hub::{Arrival, Hub};
use crate::transport::{Transport, TransportEvent};

/// The server side of the in-memory adapter: a [`Transport`] whose peers are [`MemoryClient`]s
/// in the same process.
///
/// Made together with the [`MemoryConnector`] that opens connections to it. Every connection is
/// a pair of bounded channels of `capacity` frames each, and so is the queue of connections
/// waiting to be accepted:
///
/// - a client that does not read fills its queue, and the transport closes it (the server sees
///   [`TransportEvent::Closed`]) instead of buffering more;
/// - a client that sends faster than the server reads waits in [`MemoryClient::send`];
/// - dropping a [`MemoryClient`] is a disconnect;
/// - the transport shuts down (`next_event` returns `None`) once every connector is dropped and
///   every connection closed.
///
/// Connection ids count up from 1 and are never reused.
///
/// # Example
///
/// ```
/// use futures::StreamExt;
/// use peer_signal::{
///     AsyncClient, Codec, Driver, MemoryTransport, NodeInfo, SignalConfig, SignalEvent, SignalServer,
/// };
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = SignalConfig::default();
/// let (transport, connector) = MemoryTransport::new(&config);
/// let (driver, _handle, mut events) = Driver::new(SignalServer::new(config)?, transport, 64);
/// let server = tokio::spawn(driver.run(futures::stream::pending()));
///
/// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let conn = connector.connect(Codec::Json).await?;
/// let mut alice = AsyncClient::connect(conn, key, info).await?;
/// assert!(matches!(events.next().await, Some(SignalEvent::NewNode(node)) if node.id == alice.id()));
/// assert_eq!(alice.list().await?.len(), 1);
///
/// // No connector and no connection left: the transport shuts down and the driver stops.
/// drop((connector, alice));
/// assert!(server.await.unwrap().is_stopped());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct MemoryTransport {
    hub: Hub<flume::Sender<Bytes>>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").field("connections", &self.hub.len()).finish_non_exhaustive()
    }
}

impl MemoryTransport {
    /// A transport whose queues hold `config.max_send_backlog` frames, and its connector.
    ///
    /// It reads nothing else of `config`, and every backlog works here (0 acts as 1, and more
    /// than 2^20 as 2^20, as in [`with_capacity`](Self::with_capacity); the queues reserve
    /// nothing up front), so it does
    /// not fail: [`SignalServer::new`](crate::SignalServer::new) validates the whole
    /// configuration, the backlog included.
    pub fn new(config: &SignalConfig) -> (Self, MemoryConnector) {
        Self::with_capacity(config.max_send_backlog)
    }

    /// A transport whose queues hold `capacity` frames (at least 1, at most 2^20: the channels
    /// panic near `usize::MAX`), and its connector.
    pub fn with_capacity(capacity: usize) -> (Self, MemoryConnector) {
        let capacity = capacity.clamp(1, crate::limits::MAX_QUEUE);
        let (accept_tx, accept_rx) = flume::bounded(capacity);
        let transport = Self { hub: Hub::new(accept_rx.into_stream().boxed()) };
        let connector = MemoryConnector { accept: accept_tx, next_id: Arc::new(AtomicU64::new(1)), capacity };
        (transport, connector)
    }

    /// Connections accepted and not closed yet.
    pub fn connections(&self) -> usize {
        self.hub.len()
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn next_event(&mut self) -> Option<TransportEvent> {
        // Cancel-safe: state changes only in the poll that returns the event.
        poll_fn(|cx| self.hub.poll_event(cx)).await
    }

    fn try_next_event(&mut self) -> Option<TransportEvent> {
        self.hub.try_event()
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
        let Some(to_client) = self.hub.link(conn) else { return Err(TransportError::Closed(conn)) };
        match to_client.try_send(frame) {
            Ok(()) => Ok(()),
            // Full: a slow reader, closed rather than buffered.
            Err(flume::TrySendError::Full(_)) => {
                self.hub.disconnect(conn);
                Err(TransportError::Closed(conn))
            }
            // Disconnected: the client is gone. Its inbound stream still yields the frames it sent
            // before, then the close; cutting it here would lose them.
            Err(flume::TrySendError::Disconnected(_)) => Err(TransportError::Closed(conn)),
        }
    }

    fn close(&mut self, conn: ConnId, _reason: CloseReason) {
        // A channel has no close code; the core sent the reason as an `Error` frame already.
        // Dropping the sender lets the client read what is queued, then see the end; no longer
        // reading the client makes its sends fail.
        self.hub.disconnect(conn);
    }
}

/// Opens connections to a [`MemoryTransport`]. Cheap to clone; the transport shuts down once
/// every connector is dropped and every connection closed.
#[derive(Clone)]
pub struct MemoryConnector {
    accept: flume::Sender<Arrival<flume::Sender<Bytes>>>,
    next_id: Arc<AtomicU64>,
    capacity: usize,
}

impl fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryConnector").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl MemoryConnector {
    /// Opens a connection whose frames are encoded with `codec`. Waits while the transport's
    /// queue of connections to accept is full.
    ///
    /// # Errors
    ///
    /// [`TransportError::Shutdown`] when the transport has been dropped.
    pub async fn connect(&self, codec: Codec) -> Result<MemoryClient, TransportError> {
        let conn = ConnId::new(self.next_id.fetch_add(1, Ordering::Relaxed));
        let (to_server, from_client) = flume::bounded(self.capacity);
        let (to_client, from_server) = flume::bounded(self.capacity);
        self.accept
            .send_async(Arrival { conn, codec, frames: from_client.into_stream().boxed(), link: to_client })
            .await
            .map_err(|_| TransportError::Shutdown)?;
        Ok(MemoryClient { conn, codec, to_server, from_server })
    }
}

/// The peer's end of one in-memory connection. Dropping it disconnects.
///
/// Read it: a client whose queue of `capacity` frames is full is closed by the transport.
pub struct MemoryClient {
    conn: ConnId,
    codec: Codec,
    to_server: flume::Sender<Bytes>,
    from_server: flume::Receiver<Bytes>,
}

impl fmt::Debug for MemoryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryClient")
            .field("conn", &self.conn)
            .field("codec", &self.codec)
            .field("queued", &self.from_server.len())
            .finish_non_exhaustive()
    }
}

impl MemoryClient {
    /// The id the server knows this connection by.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// The codec chosen at [`MemoryConnector::connect`].
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Sends a frame to the server, waiting while its queue for this connection is full.
    ///
    /// # Errors
    ///
    /// [`TransportError::Closed`] when the connection is closed.
    pub async fn send(&self, frame: Bytes) -> Result<(), TransportError> {
        self.to_server.send_async(frame).await.map_err(|_| TransportError::Closed(self.conn))
    }

    /// The next frame from the server; `None` once the connection is closed and every frame
    /// queued before the close has been read. Dropping the future loses no frame.
    pub async fn recv(&self) -> Option<Bytes> {
        self.from_server.recv_async().await.ok()
    }
}

#[async_trait]
impl ClientConnection for MemoryClient {
    fn codec(&self) -> Codec {
        self.codec
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        MemoryClient::send(self, frame).await
    }

    async fn recv(&mut self) -> Option<Bytes> {
        MemoryClient::recv(self).await
    }
}
