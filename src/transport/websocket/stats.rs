//! [`WsStats`]: what the WebSocket layer counts, the shared counters behind them, and the guard
//! that counts a connection task alive.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counters of what the WebSocket layer did on its own, for metrics. Get them from
/// [`WsTransport::stats_handle`](super::WsTransport::stats_handle); read them with [`WsStatsHandle::get`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Connection tasks alive now: in the WebSocket handshake, open, or closing. A gauge; it
    /// returns to zero once every connection has ended.
    pub connection_tasks: u64,
    /// TCP connections accepted.
    pub accepted: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections`](super::WsConfig::max_connections) were open.
    pub refused: u64,
    /// TCP connections dropped at once because [`WsConfig::max_connections_per_ip`](super::WsConfig::max_connections_per_ip) were open
    /// from the same address.
    pub refused_per_ip: u64,
    /// Connections that failed or timed out before the server accepted their WebSocket upgrade:
    /// the TLS handshake or the upgrade request. The accepting response goes out with the
    /// connection's first frames, so a failure to write it ends the connection like any later
    /// write failure.
    pub failed_handshakes: u64,
    /// Upgrade requests that [`WsConfig::admission`](super::WsConfig::admission) refused.
    pub refused_admission: u64,
    /// TCP connections dropped at once because their source opened more than
    /// [`WsConfig::accept_rate_per_ip`](super::WsConfig::accept_rate_per_ip) allows.
    pub refused_rate: u64,
    /// Connections ended in their TLS or WebSocket handshake to make room for newer ones (see
    /// [`WsConfig::max_pending_upgrades`](super::WsConfig::max_pending_upgrades)).
    pub evicted_handshakes: u64,
    /// Connections closed as slow readers: their send queue was full, a write made no progress
    /// for [`WsConfig::write_timeout`](super::WsConfig::write_timeout), or a queue above [`WsConfig::drain_floor`](super::WsConfig::drain_floor) drained slower
    /// than [`WsConfig::min_drain_rate`](super::WsConfig::min_drain_rate).
    pub slow_readers: u64,
    /// Connections ended because together they held more than [`WsConfig::send_budget_bytes`](super::WsConfig::send_budget_bytes)
    /// queued, the ones holding most first.
    pub shed: u64,
    /// Bytes queued for sending now, by every connection together. A gauge, bounded by
    /// [`WsConfig::send_budget_bytes`](super::WsConfig::send_budget_bytes).
    pub queued_bytes: u64,
    /// Connections closed for a message over [`WsConfig::max_message_size`](super::WsConfig::max_message_size).
    pub oversize: u64,
    /// Connections closed for breaking the WebSocket protocol (unmasked or malformed frames, text
    /// that is not UTF-8, and the like).
    pub protocol_violations: u64,
    /// Connections closed because nothing arrived for two ping intervals.
    pub ping_timeouts: u64,
    /// Connections whose closing handshake completed: each side sent its close frame.
    pub clean_closes: u64,
    /// Bytes held in read buffers now, by every connection together. A gauge: a connection holds
    /// a buffer only while a message is arriving or waits to be handed on, so idle connections
    /// add nothing, whatever they sent before.
    pub read_buffer_bytes: u64,
}

/// A shared view of a [`WsTransport`](super::WsTransport)'s [`WsStats`], usable after the transport moved into a driver.
#[derive(Debug, Clone, Default)]
pub struct WsStatsHandle(pub(super) Arc<Counters>);

/// The counters behind [`WsStats`], shared by the transport, the accept loop and every
/// connection task.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) tasks: AtomicUsize,
    /// Woken when `tasks` drops to zero.
    pub(super) all_ended: Notify,
    pub(super) accepted: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) refused_per_ip: AtomicU64,
    pub(super) failed_handshakes: AtomicU64,
    pub(super) refused_admission: AtomicU64,
    pub(super) refused_rate: AtomicU64,
    pub(super) evicted_handshakes: AtomicU64,
    pub(super) slow_readers: AtomicU64,
    pub(super) shed: AtomicU64,
    /// Payload bytes queued for sending, by every connection together.
    pub(super) queued: AtomicUsize,
    pub(super) oversize: AtomicU64,
    pub(super) protocol_violations: AtomicU64,
    pub(super) ping_timeouts: AtomicU64,
    pub(super) clean_closes: AtomicU64,
    pub(super) read_buffers: AtomicUsize,
}

impl Counters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl WsStatsHandle {
    /// The counters now.
    pub fn get(&self) -> WsStats {
        let c = &self.0;
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        WsStats {
            connection_tasks: c.tasks.load(Ordering::Acquire) as u64,
            accepted: read(&c.accepted),
            refused: read(&c.refused),
            refused_per_ip: read(&c.refused_per_ip),
            failed_handshakes: read(&c.failed_handshakes),
            refused_admission: read(&c.refused_admission),
            refused_rate: read(&c.refused_rate),
            evicted_handshakes: read(&c.evicted_handshakes),
            slow_readers: read(&c.slow_readers),
            shed: read(&c.shed),
            queued_bytes: c.queued.load(Ordering::Relaxed) as u64,
            oversize: read(&c.oversize),
            protocol_violations: read(&c.protocol_violations),
            ping_timeouts: read(&c.ping_timeouts),
            clean_closes: read(&c.clean_closes),
            read_buffer_bytes: c.read_buffers.load(Ordering::Relaxed) as u64,
        }
    }

    /// Sets the transport's metrics (feature `metrics`) to its counters now: the gauges
    /// `peer_signal_ws_connection_tasks` and `peer_signal_ws_read_buffer_bytes`, and the
    /// `peer_signal_ws_*_total` counters, one for each counter of [`WsStats`] (refusals as
    /// `peer_signal_ws_refused_total{reason="max_connections"|"max_connections_per_ip"|"admission"|"accept_rate_per_ip"}`).
    /// Call it before each scrape (or on a timer, for an exporter that pushes). The histogram
    /// `peer_signal_ws_send_queue_seconds` needs no call: connections record it as they write.
    #[cfg(feature = "metrics")]
    pub fn publish_metrics(&self) {
        publish(&self.get());
    }

    /// Waits until no connection task is alive: every connection has finished its closing
    /// handshake, or given up on it. Each closing connection ends within
    /// [`WsConfig::write_timeout`](super::WsConfig::write_timeout) plus [`WsConfig::close_linger`](super::WsConfig::close_linger), so after a
    /// [`DriverHandle::stop`](crate::DriverHandle::stop) this is how a server drains before its
    /// process exits; bound it with your own timeout all the same.
    pub async fn all_ended(&self) {
        loop {
            let notified = self.0.all_ended.notified();
            if self.0.tasks.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts a connection task from `accept` to its end, however it ends.
pub(super) struct TaskGuard(pub(super) Arc<Counters>);

impl TaskGuard {
    pub(super) fn new(counters: &Arc<Counters>) -> Self {
        counters.tasks.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counters))
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.all_ended.notify_waiters();
        }
    }
}

/// Sets the `peer_signal_ws_*` metrics to a snapshot of the WebSocket transport's counters.
#[cfg(feature = "metrics")]
fn publish(ws: &WsStats) {
    use metrics::{counter, describe_counter, describe_gauge, gauge, Unit};
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    DESCRIBED.call_once(|| {
        describe_gauge!(
            "peer_signal_ws_connection_tasks",
            "WebSocket connection tasks alive: in the handshake, open or closing."
        );
        describe_gauge!(
            "peer_signal_ws_read_buffer_bytes",
            Unit::Bytes,
            "Bytes held in read buffers by every connection together."
        );
        describe_counter!("peer_signal_ws_accepted_total", "TCP connections accepted.");
        describe_counter!(
            "peer_signal_ws_refused_total",
            "Connections refused before the WebSocket handshake finished, by the limit that refused them."
        );
        describe_counter!(
            "peer_signal_ws_failed_handshakes_total",
            "TLS or WebSocket handshakes that failed or timed out."
        );
        describe_counter!(
            "peer_signal_ws_slow_readers_total",
            "Connections closed for reading too slowly (full queue or write timeout)."
        );
        describe_gauge!(
            "peer_signal_ws_queued_bytes",
            Unit::Bytes,
            "Bytes queued for sending by every connection together."
        );
        describe_counter!(
            "peer_signal_ws_shed_total",
            "Connections ended because all queues together exceeded the send budget."
        );
        describe_counter!(
            "peer_signal_ws_evicted_handshakes_total",
            "Connections ended in their handshake to make room for newer ones."
        );
        describe_counter!("peer_signal_ws_oversize_total", "Connections closed for an oversize message.");
        describe_counter!(
            "peer_signal_ws_protocol_violations_total",
            "Connections closed for breaking the WebSocket protocol."
        );
        describe_counter!(
            "peer_signal_ws_ping_timeouts_total",
            "Connections closed for silence past two pings."
        );
        describe_counter!(
            "peer_signal_ws_clean_closes_total",
            "Connections whose closing handshake completed."
        );
    });
    gauge!("peer_signal_ws_connection_tasks").set(ws.connection_tasks as f64);
    gauge!("peer_signal_ws_read_buffer_bytes").set(ws.read_buffer_bytes as f64);
    counter!("peer_signal_ws_accepted_total").absolute(ws.accepted);
    counter!("peer_signal_ws_refused_total", "reason" => "max_connections").absolute(ws.refused);
    counter!("peer_signal_ws_refused_total", "reason" => "max_connections_per_ip")
        .absolute(ws.refused_per_ip);
    counter!("peer_signal_ws_refused_total", "reason" => "admission").absolute(ws.refused_admission);
    counter!("peer_signal_ws_refused_total", "reason" => "accept_rate_per_ip").absolute(ws.refused_rate);
    gauge!("peer_signal_ws_queued_bytes").set(ws.queued_bytes as f64);
    counter!("peer_signal_ws_shed_total").absolute(ws.shed);
    counter!("peer_signal_ws_evicted_handshakes_total").absolute(ws.evicted_handshakes);
    counter!("peer_signal_ws_failed_handshakes_total").absolute(ws.failed_handshakes);
    counter!("peer_signal_ws_slow_readers_total").absolute(ws.slow_readers);
    counter!("peer_signal_ws_oversize_total").absolute(ws.oversize);
    counter!("peer_signal_ws_protocol_violations_total").absolute(ws.protocol_violations);
    counter!("peer_signal_ws_ping_timeouts_total").absolute(ws.ping_timeouts);
    counter!("peer_signal_ws_clean_closes_total").absolute(ws.clean_closes);
}
