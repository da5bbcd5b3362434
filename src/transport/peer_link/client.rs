//! [`LinkClient`]: a node's connection to the signalling a neighbour hosts, over a link.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::pipe::{pipe, PipeRx, PipeTx};
use super::{LinkConfig, LinkInbound, LinkOutbound};
use crate::client::{ClientConnection, Timer};
use crate::codec::Codec;
use crate::error::TransportError;

/// A [`ClientConnection`] over a peer link: with it, an [`AsyncClient`](crate::AsyncClient) signs
/// in at a neighbour's hosted signalling exactly as at a WebSocket server.
///
/// [`LinkClient::new`] gives the connection and the two ends for the link's adapter, as
/// [`LinkHost::attach`](crate::LinkHost::attach) does on the hosting side: [`LinkInbound`] takes
/// what arrives on the channel, [`LinkOutbound`] gives what to send on it. Both ways are bounded
/// by the [`LinkConfig`]'s `max_queued_frames` and `max_queued_bytes`, and a frame from the
/// neighbour larger than its `max_frame_size` ends the link: a hosting neighbour cannot make the
/// node buffer without bound. Dropping the `LinkInbound` (the channel closed) ends the connection
/// once the frames before it are read; dropping the `LinkClient` ends `LinkOutbound::recv`.
pub struct LinkClient {
    codec: Codec,
    to_link: PipeTx,
    from_link: PipeRx,
    timer: Option<Arc<dyn Timer>>,
    server_id: Option<String>,
}

impl fmt::Debug for LinkClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkClient")
            .field("codec", &self.codec)
            .field("queued_bytes", &self.from_link.queued_bytes())
            .finish_non_exhaustive()
    }
}

impl LinkClient {
    /// A connection whose frames are encoded with `codec`, with the queue limits of `config`,
    /// and the adapter's two ends of the link.
    pub fn new(codec: Codec, config: &LinkConfig) -> (Self, LinkInbound, LinkOutbound) {
        let frames = config.max_queued_frames.clamp(1, crate::limits::MAX_QUEUE);
        let bytes = config.max_queued_bytes.max(config.max_frame_size);
        let (in_tx, in_rx) = pipe(frames, bytes, None);
        let (out_tx, out_rx) = pipe(frames, bytes, None);
        let client = Self { codec, to_link: out_tx, from_link: in_rx, timer: None, server_id: None };
        (client, LinkInbound::new(in_tx, config.max_frame_size), LinkOutbound::new(out_rx, None))
    }

    /// The clock of the runtime the adapter runs on: with it, [`AsyncClient::connect`](crate::AsyncClient::connect)
    /// bounds the sign-in by [`ClientConfig::sign_in_timeout`](crate::ClientConfig::sign_in_timeout).
    /// Without it (and without [`AsyncClient::connect_with`](crate::AsyncClient::connect_with)),
    /// a neighbour that never sends its challenge holds the sign-in for good.
    #[must_use]
    pub fn with_timer(mut self, timer: Arc<dyn Timer>) -> Self {
        self.timer = Some(timer);
        self
    }

    /// The hosting neighbour, for a sign-in bound to it: its server id is
    /// [`server_id_of_node`](crate::server_id_of_node) of its node id, which the node knows from
    /// the connection it has to the neighbour.
    #[must_use]
    pub fn with_host(mut self, host: &crate::NodeID) -> Self {
        self.server_id = Some(crate::server_id_of_node(host));
        self
    }

    /// The server's id for a bound sign-in, when the link stands for a connection to a server
    /// (the browser's WebSocket: [`server_id_of_url`](crate::server_id_of_url) of its URL).
    #[cfg(all(feature = "browser", target_arch = "wasm32", target_os = "unknown"))]
    pub(crate) fn with_server_id(mut self, server_id: Option<String>) -> Self {
        self.server_id = server_id;
        self
    }
}

#[async_trait]
impl ClientConnection for LinkClient {
    fn codec(&self) -> Codec {
        self.codec
    }

    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        // Waits only for the adapter, which hands frames to the channel without waiting for the
        // neighbour.
        self.to_link.send(frame).await.map_err(|_| TransportError::Shutdown)
    }

    async fn recv(&mut self) -> Option<Bytes> {
        self.from_link.recv().await
    }

    fn timer(&self) -> Option<Arc<dyn Timer>> {
        self.timer.clone()
    }

    fn server_id(&self) -> Option<String> {
        self.server_id.clone()
    }
}
