//! [`Hub`]: the part that the in-process transports share. Connections arrive on a queue; each
//! brings a stream of its frames and the transport's handle for sending to it; the hub turns them
//! into [`TransportEvent`]s, fairly, and reports each close once.

use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{self, AbortHandle, BoxStream, SelectAll, StreamExt};

use crate::codec::Codec;
use crate::ids::ConnMap;
use crate::server::ConnId;
use crate::transport::TransportEvent;

/// A connection on its way to the hub.
pub(crate) struct Arrival<L> {
    pub(crate) conn: ConnId,
    pub(crate) codec: Codec,
    /// What the peer sends, in order; its end is the peer's close.
    pub(crate) frames: BoxStream<'static, Bytes>,
    /// The transport's handle for the way back.
    pub(crate) link: L,
}

/// Open connections, each with its send handle `L`, and the queue of those to accept.
pub(crate) struct Hub<L> {
    arrivals: BoxStream<'static, Arrival<L>>,
    accepting: bool,
    /// Each connection's frames, then one `None` when its stream ends.
    inbound: SelectAll<BoxStream<'static, (ConnId, Option<Bytes>)>>,
    links: ConnMap<(L, AbortHandle)>,
    /// Alternates which source is polled first, so neither a connect storm nor a frame storm
    /// starves the other.
    accept_first: bool,
}

impl<L> Hub<L> {
    pub(crate) fn new(arrivals: BoxStream<'static, Arrival<L>>) -> Self {
        Self {
            arrivals,
            accepting: true,
            inbound: SelectAll::new(),
            links: ConnMap::default(),
            accept_first: false,
        }
    }

    /// Connections accepted and not closed yet.
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }

    /// The send handle of an open connection.
    pub(crate) fn link(&self, conn: ConnId) -> Option<&L> {
        self.links.get(&conn).map(|(link, _)| link)
    }

    /// Forgets `conn`'s send handle (dropping it lets the peer read what is queued, then see the
    /// end) and stops reading it. Its `Closed` comes from the next poll.
    pub(crate) fn disconnect(&mut self, conn: ConnId) {
        if let Some((_, inbound)) = self.links.remove(&conn) {
            inbound.abort();
        }
    }

    /// The next event; `Ready(None)` once no connection can arrive and none is open. Changes
    /// state only when it returns an event, so a future around it is cancel-safe.
    pub(crate) fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportEvent>> {
        self.accept_first = !self.accept_first;
        if self.accept_first {
            if let Poll::Ready(event) = self.poll_accept(cx) {
                return Poll::Ready(Some(event));
            }
        }
        match self.inbound.poll_next_unpin(cx) {
            Poll::Ready(Some((conn, Some(frame)))) => {
                return Poll::Ready(Some(TransportEvent::Frame { conn, frame }))
            }
            Poll::Ready(Some((conn, None))) => {
                self.links.remove(&conn);
                return Poll::Ready(Some(TransportEvent::Closed { conn }));
            }
            // No connection at all; SelectAll registered no waker, but the accept queue did.
            Poll::Ready(None) | Poll::Pending => {}
        }
        if !self.accept_first {
            if let Poll::Ready(event) = self.poll_accept(cx) {
                return Poll::Ready(Some(event));
            }
        }
        if !self.accepting && self.inbound.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }

    /// The next event if one is ready now, without a waker of the caller's.
    pub(crate) fn try_event(&mut self) -> Option<TransportEvent> {
        // A pending poll leaves nothing behind: the driver polls again, with its own waker,
        // before it waits.
        match self.poll_event(&mut Context::from_waker(futures::task::noop_waker_ref())) {
            Poll::Ready(event) => event,
            Poll::Pending => None,
        }
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<TransportEvent> {
        if !self.accepting {
            return Poll::Pending;
        }
        match self.arrivals.poll_next_unpin(cx) {
            Poll::Ready(Some(Arrival { conn, codec, frames, link })) => {
                let (frames, inbound) = stream::abortable(frames);
                let frames = frames.map(move |frame| (conn, Some(frame))).chain(stream::iter([(conn, None)]));
                self.inbound.push(frames.boxed());
                self.links.insert(conn, (link, inbound));
                Poll::Ready(TransportEvent::Opened { conn, codec, addr: None })
            }
            Poll::Ready(None) => {
                self.accepting = false;
                Poll::Pending
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
