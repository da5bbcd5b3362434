//! [`LinkTransport`] and [`LinkHost`]: a node's own signalling server, whose connections are the
//! links it has to its neighbours.

use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use super::pipe::{pipe, Budget, PipeTx, Refused};
use super::{LinkConfig, LinkError, LinkInbound, LinkOutbound};
use crate::codec::Codec;
use crate::error::{ConfigError, TransportError};
use crate::server::{CloseReason, ConnId};
use crate::transport::hub::{Arrival, Hub};
use crate::transport::{Transport, TransportEvent};

/// A [`Transport`] whose connections are peer links: each link the application
/// [attaches](LinkHost::attach) is one connection of the [`SignalServer`](crate::SignalServer)
/// it drives, speaking protocol v3, one message per frame.
///
/// Made together with its [`LinkHost`]. Every link has two queues, one each way, bounded by
/// [`LinkConfig::max_queued_frames`] and [`LinkConfig::max_queued_bytes`], and all of them share
/// [`LinkConfig::max_queued_bytes_total`]:
///
/// - a neighbour that sends faster than the server reads, or a frame larger than
///   [`LinkConfig::max_frame_size`], ends its link ([`LinkInbound::deliver`] says so);
/// - a link whose adapter does not take the server's frames ([`LinkOutbound::recv`]) fills its
///   queue, and the transport closes it, as the WebSocket transport closes a slow reader;
/// - the server's own deadlines (sign-in, idle TTL) apply to links as to sockets.
///
/// The transport shuts down (`next_event` returns `None`) once every [`LinkHost`] is dropped and
/// every link closed. Connection ids count up from 1.
///
/// # Example
///
/// A node that hosts signalling, and a neighbour that signs in over a link; the two ends of the
/// link are joined by hand here, where a real node would pass them to its data channel:
///
/// ```
/// use peer_signal::{
///     AsyncClient, Codec, Driver, LinkClient, LinkConfig, LinkTransport, NodeInfo, SignalConfig,
///     SignalServer,
/// };
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let config = SignalConfig::default();
/// let (transport, host) = LinkTransport::new(LinkConfig::for_server(&config))?;
/// let (driver, _handle, _events) = Driver::new(SignalServer::new(config)?, transport, 64);
/// tokio::spawn(driver.run(futures::stream::pending()));
///
/// // The hosting node's side of the neighbour's data channel, and the neighbour's side.
/// let (mut at_host, from_host) = host.attach(Codec::Json)?;
/// let (client, mut at_client, from_client) = LinkClient::new(Codec::Json, &LinkConfig::default());
/// tokio::spawn(async move {
///     while let Some(frame) = from_client.recv().await {
///         if at_host.deliver(frame).is_err() { break }
///     }
/// });
/// tokio::spawn(async move {
///     while let Some(frame) = from_host.recv().await {
///         if at_client.deliver(frame).is_err() { break }
///     }
/// });
///
/// let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let mut alice = AsyncClient::connect(client, key, info).await?;
/// assert_eq!(alice.list().await?.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
pub struct LinkTransport {
    hub: Hub<HostLink>,
    budget: Arc<Budget>,
}

impl fmt::Debug for LinkTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkTransport")
            .field("links", &self.hub.len())
            .field("queued_bytes", &self.budget.used())
            .finish_non_exhaustive()
    }
}

impl LinkTransport {
    /// A transport with the limits of `config`, and the host that attaches links to it.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting [`LinkConfig::validate`] refuses.
    pub fn new(config: LinkConfig) -> Result<(Self, LinkHost), ConfigError> {
        config.validate()?;
        let (arrive, arrivals) = flume::unbounded();
        let budget = Budget::new(config.max_queued_bytes_total);
        let transport = Self { hub: Hub::new(arrivals.into_stream().boxed()), budget: Arc::clone(&budget) };
        let host = LinkHost {
            arrive,
            next_id: Arc::new(AtomicU64::new(1)),
            attached: Arc::new(AtomicUsize::new(0)),
            budget,
            config,
        };
        Ok((transport, host))
    }

    /// Links attached and not closed yet (as far as the transport has seen).
    pub fn links(&self) -> usize {
        self.hub.len()
    }

    /// Bytes queued in all links, both ways.
    pub fn queued_bytes(&self) -> usize {
        self.budget.used()
    }
}

#[async_trait]
impl Transport for LinkTransport {
    async fn next_event(&mut self) -> Option<TransportEvent> {
        // Cancel-safe: the hub changes state only in the poll that returns the event.
        poll_fn(|cx| self.hub.poll_event(cx)).await
    }

    fn try_next_event(&mut self) -> Option<TransportEvent> {
        self.hub.try_event()
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
        let Some(link) = self.hub.link(conn) else { return Err(TransportError::Closed(conn)) };
        match link.to_link.try_send(frame) {
            Ok(()) => Ok(()),
            // Full: the adapter does not take what the server sends; a link whose channel is gone
            // cannot carry anything. Either way the link ends here.
            Err(Refused::Full | Refused::Closed) => {
                self.hub.disconnect(conn);
                Err(TransportError::Closed(conn))
            }
        }
    }

    fn close(&mut self, conn: ConnId, _reason: CloseReason) {
        // The core sent the reason as an `Error` frame already. The adapter reads what is queued,
        // then `None`, and closes its channel.
        self.hub.disconnect(conn);
    }
}

/// Attaches links to a [`LinkTransport`]. Cheap to clone; the transport shuts down once every
/// host is dropped and every link closed.
#[derive(Clone)]
pub struct LinkHost {
    arrive: flume::Sender<Arrival<HostLink>>,
    next_id: Arc<AtomicU64>,
    /// Links attached and not ended, counted from `attach` until the transport lets go of both of
    /// the link's queues.
    attached: Arc<AtomicUsize>,
    budget: Arc<Budget>,
    config: LinkConfig,
}

impl fmt::Debug for LinkHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkHost")
            .field("attached", &self.attached.load(Ordering::Relaxed))
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl LinkHost {
    /// Attaches a link to a neighbour that wants to use this node's signalling: one new
    /// connection of the server, whose frames are encoded with `codec`. Returns the two ends for
    /// the link's adapter: [`LinkInbound`] takes what arrives on the channel, [`LinkOutbound`]
    /// gives what to send on it. Dropping the `LinkInbound` detaches the link (the neighbour
    /// left); once the server closes it, `LinkOutbound::recv` returns the queued frames and then
    /// `None`, and the adapter closes the channel.
    ///
    /// # Errors
    ///
    /// [`LinkError::TooManyLinks`] when [`LinkConfig::max_links`] links are attached;
    /// [`LinkError::Closed`] when the transport is gone.
    pub fn attach(&self, codec: Codec) -> Result<(LinkInbound, LinkOutbound), LinkError> {
        let max = self.config.max_links;
        let taken = self
            .attached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .is_err();
        if taken {
            return Err(LinkError::TooManyLinks(max));
        }
        let slot = Slot(Arc::clone(&self.attached));
        let conn = ConnId::new(self.next_id.fetch_add(1, Ordering::Relaxed));
        let LinkConfig { max_frame_size, max_queued_frames, max_queued_bytes, .. } = self.config;
        let budget = Some(Arc::clone(&self.budget));
        let (in_tx, in_rx) = pipe(max_queued_frames, max_queued_bytes, budget.clone());
        let (out_tx, out_rx) = pipe(max_queued_frames, max_queued_bytes, budget);
        // The slot is given back when both of the transport's ends are gone: the hub's entry for
        // the link (dropped when it closes) and the adapter's outbound end.
        let slot = Arc::new(slot);
        let link = HostLink { to_link: out_tx, _slot: Arc::clone(&slot) };
        let arrival = Arrival { conn, codec, frames: in_rx.into_stream(), link };
        self.arrive.send(arrival).map_err(|_| LinkError::Closed)?;
        let inbound = LinkInbound::new(in_tx, max_frame_size);
        let outbound = LinkOutbound::new(out_rx, Some(slot));
        Ok((inbound, outbound))
    }

    /// Links attached and not yet ended.
    pub fn attached(&self) -> usize {
        self.attached.load(Ordering::Acquire)
    }

    /// Bytes queued in all links, both ways: at most [`LinkConfig::max_queued_bytes_total`].
    pub fn queued_bytes(&self) -> usize {
        self.budget.used()
    }

    /// The limits the links get.
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }
}

/// The transport's end of a link: where the server's frames go, and the link's place.
struct HostLink {
    to_link: PipeTx,
    _slot: Arc<Slot>,
}

/// One link's place in [`LinkConfig::max_links`], given back when dropped.
#[derive(Debug)]
pub(super) struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
