//! [`WsTransport`]: the [`Transport`] over WebSocket, which owns the map of open connections, their
//! send queues and the global send budget; and what the connection tasks report to it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpSocket, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::accept::accept_loop;
use super::channel::{ConnHandle, Event, Outbound, Shared};
use super::stats::Counters;
use super::{WsConfig, WsStatsHandle};
use crate::ids::ConnMap;
use crate::telemetry::{self, SendQueueMeter, Stamp};
use crate::transport::{Transport, TransportEvent};
use crate::{CloseReason, ConfigError, ConnId, TransportError};

/// A [`Transport`] that accepts WebSocket connections on a TCP listener.
///
/// Must be created inside a tokio runtime; it spawns its tasks there. Dropping it stops accepting
/// and ends every connection.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use peer_signal::{SignalConfig, WsConfig, WsTransport};
///
/// let config = SignalConfig::default();
/// let transport = WsTransport::bind("0.0.0.0:8765", WsConfig::for_server(&config)).await?;
/// println!("listening on {}", transport.local_addr());
/// # Ok(()) }
/// ```
pub struct WsTransport {
    events: mpsc::Receiver<Event>,
    conns: ConnMap<ConnHandle>,
    /// Connections the transport found busy, reported before anything else.
    local: VecDeque<TransportEvent>,
    /// Connections the core closed whose tasks have not ended yet: what they still hold queued
    /// is released from [`Counters::queued`] when they do.
    closing: ConnMap<(Arc<Shared>, usize)>,
    /// [`WsConfig::send_backlog_bytes`].
    backlog_bytes: usize,
    /// [`WsConfig::send_budget_bytes`].
    budget: usize,
    /// Bytes queued by killed connections whose tasks have not ended yet.
    dying: usize,
    local_addr: SocketAddr,
    accept: JoinHandle<()>,
    stats: WsStatsHandle,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("local_addr", &self.local_addr)
            .field("connections", &self.conns.len())
            .finish_non_exhaustive()
    }
}

impl WsTransport {
    /// What a connection task reported, as the transport's event; `None` for the frames and
    /// closes of connections already closed here, which are stale.
    fn take(&mut self, event: Event) -> Option<TransportEvent> {
        match event {
            Event::Opened { conn, codec, addr, handle } => {
                self.conns.insert(conn, handle);
                Some(TransportEvent::Opened { conn, codec, addr: Some(addr) })
            }
            Event::Frame { conn, frame } if self.conns.contains_key(&conn) => {
                Some(TransportEvent::Frame { conn, frame })
            }
            Event::Busy { conn, busy } if self.conns.contains_key(&conn) => {
                Some(TransportEvent::Busy { conn, busy })
            }
            Event::Closed { conn } => {
                // The task has ended: nothing more is written, and what it did not write is freed.
                let (shared, dying, open) = match self.conns.remove(&conn) {
                    Some(handle) => (handle.shared, handle.dying, true),
                    None => {
                        let (shared, dying) = self.closing.remove(&conn)?;
                        (shared, dying, false)
                    }
                };
                self.dying = self.dying.saturating_sub(dying);
                let left = shared.queued.swap(0, Ordering::AcqRel);
                self.stats.0.queued.fetch_sub(left, Ordering::AcqRel);
                open.then_some(TransportEvent::Closed { conn })
            }
            Event::Frame { .. } | Event::Busy { .. } => None,
        }
    }

    /// Listens on `addr` and starts accepting connections.
    ///
    /// # Errors
    ///
    /// The error of binding the listener, or an [`InvalidInput`](std::io::ErrorKind::InvalidInput)
    /// error whose source is the [`ConfigError`] of [`WsConfig::validate`].
    pub async fn bind(addr: impl ToSocketAddrs, config: WsConfig) -> std::io::Result<Self> {
        config.validate().map_err(invalid_config)?;
        let mut last_error = None;
        for addr in tokio::net::lookup_host(addr).await? {
            let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            // A restarted server can take its port back while old connections linger.
            socket.set_reuseaddr(true)?;
            match socket.bind(addr).and_then(|()| socket.listen(config.listen_backlog)) {
                Ok(listener) => return Self::from_listener(listener, config),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error
            .unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind")))
    }

    /// Starts accepting connections on a listener that is already bound.
    ///
    /// # Errors
    ///
    /// The error of reading the listener's local address, or an invalid configuration as for
    /// [`bind`](Self::bind).
    pub fn from_listener(listener: TcpListener, config: WsConfig) -> std::io::Result<Self> {
        config.validate().map_err(invalid_config)?;
        let local_addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::channel(config.event_queue.max(1));
        let stats = WsStatsHandle::default();
        let (backlog_bytes, budget) = (config.send_backlog_bytes, config.send_budget_bytes);
        let meter = SendQueueMeter::new();
        let accept = tokio::spawn(accept_loop(listener, Arc::new(config), events_tx, stats.0.clone(), meter));
        Ok(Self {
            events,
            conns: ConnMap::default(),
            closing: ConnMap::default(),
            local: VecDeque::new(),
            backlog_bytes,
            budget,
            dying: 0,
            local_addr,
            accept,
            stats,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to the transport's counters, which stays valid after the transport moved into
    /// a driver.
    pub fn stats_handle(&self) -> WsStatsHandle {
        self.stats.clone()
    }

    /// Open WebSocket connections (after the handshake) that the transport has reported.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Ends `conn` at once, without a closing handshake: its queue is full (`slow`, counted as a
    /// slow reader), or its task has already ended (and counted why). Its close is reported when
    /// its task says so, after the frames it read before: reporting it here, ahead of them,
    /// would make the core drop them as frames of a connection it has forgotten.
    fn kill(&mut self, conn: ConnId, slow: bool) {
        if let Some(handle) = self.conns.get_mut(&conn).filter(|handle| !handle.killed) {
            handle.killed = true;
            handle.dying = handle.shared.queued.load(Ordering::Acquire);
            self.dying = self.dying.saturating_add(handle.dying);
            handle.shared.kill.notify_one();
            if slow {
                Counters::bump(&self.stats.0.slow_readers);
                telemetry::ws::slow_reader(conn);
            }
        }
    }

    /// All queues together hold `total` bytes, over [`WsConfig::send_budget_bytes`] even without
    /// those of connections already killed: ends the connections that hold most until the rest
    /// fits. A scan of every connection, but only when the budget is exceeded, and each scan
    /// frees at least the excess.
    fn shed(&mut self, total: usize) {
        let mut excess = total.saturating_sub(self.dying).saturating_sub(self.budget);
        if excess == 0 {
            return;
        }
        let mut holders: Vec<(usize, ConnId)> = self
            .conns
            .iter()
            .filter(|(_, handle)| !handle.killed)
            .map(|(conn, handle)| (handle.shared.queued.load(Ordering::Acquire), *conn))
            .filter(|&(held, _)| held > 0)
            .collect();
        holders.sort_unstable_by(|a, b| b.cmp(a));
        for (held, conn) in holders {
            if excess == 0 {
                break;
            }
            self.kill(conn, false);
            Counters::bump(&self.stats.0.shed);
            telemetry::ws::slow_reader(conn);
            excess = excess.saturating_sub(held);
        }
    }
}

fn invalid_config(error: ConfigError) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, error)
}

/// Stops accepting and ends the connections still open at once. Connections that were asked to
/// close finish their closing handshake on their own, within bounded time; wait for them with
/// [`WsStatsHandle::all_ended`].
impl Drop for WsTransport {
    fn drop(&mut self) {
        self.accept.abort();
        for handle in self.conns.values() {
            handle.shared.kill.notify_one();
        }
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn next_event(&mut self) -> Option<TransportEvent> {
        if let Some(event) = self.local.pop_front() {
            return Some(event);
        }
        loop {
            let event = self.events.recv().await?;
            if let Some(event) = self.take(event) {
                return Some(event);
            }
        }
    }

    fn try_next_event(&mut self) -> Option<TransportEvent> {
        if let Some(event) = self.local.pop_front() {
            return Some(event);
        }
        loop {
            let event = self.events.try_recv().ok()?;
            if let Some(event) = self.take(event) {
                return Some(event);
            }
        }
    }

    fn send(&mut self, conn: ConnId, frame: Bytes) -> Result<(), TransportError> {
        let handle =
            self.conns.get_mut(&conn).filter(|handle| !handle.killed).ok_or(TransportError::Closed(conn))?;
        let len = frame.len();
        let total = &self.stats.0.queued;
        // Counted before the frame is in the queue, so the task never writes uncounted bytes.
        let queued = handle.shared.queued.fetch_add(len, Ordering::AcqRel).saturating_add(len);
        let all = total.fetch_add(len, Ordering::AcqRel).saturating_add(len);
        // Over the byte bound, or a full queue: a slow reader. A closed queue: a task that just
        // ended, whose close is on its way.
        let refused = if queued > self.backlog_bytes {
            Some(true)
        } else {
            handle.queue.try_send(Outbound::Frame(frame, Stamp::now())).err().map(|e| e.is_full())
        };
        if let Some(slow) = refused {
            // Never queued: uncounted again.
            handle.shared.queued.fetch_sub(len, Ordering::AcqRel);
            total.fetch_sub(len, Ordering::AcqRel);
            self.kill(conn, slow);
            return Err(TransportError::Closed(conn));
        }
        if queued > self.backlog_bytes / 2 && !handle.shared.busy.swap(true, Ordering::AcqRel) {
            self.local.push_back(TransportEvent::Busy { conn, busy: true });
        }
        if all > self.budget {
            self.shed(all);
        }
        Ok(())
    }

    fn close(&mut self, conn: ConnId, reason: CloseReason) {
        if let Some(mut handle) = self.conns.remove(&conn) {
            if handle.queue.try_send(Outbound::Close(reason)).is_err() {
                handle.shared.kill.notify_one();
            }
            self.closing.insert(conn, (handle.shared, handle.dying));
        }
    }
}
