//! One WebSocket connection after its handshake, in one task: reads messages and hands them to the
//! transport, writes what the transport queued, answers pings and closes, and ends within bounded
//! time whatever the peer does.
//!
//! Every wait on the peer has a deadline: a write that makes no progress for
//! [`WsConfig::write_timeout`], a closing handshake the peer does not finish within
//! [`WsConfig::close_linger`], silence past two ping intervals. The kill notification beats all of
//! them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::frame::{Incoming, Opcode, OutFrame, Reader, Violation};
use super::link::Link;
use super::stats::Counters;
use super::transport::Event;
use super::WsConfig;
use crate::telemetry::{self, SendQueueMeter, Stamp};
use crate::{CloseReason, Codec, ConnId, ProtocolError};

/// Frames taken from the send queue into the write queue at most; the rest wait in the send
/// queue, where they count against the backlog.
const MAX_WRITE_QUEUE: usize = 64;

/// Bytes read in one turn at most before the messages in them are handled.
const READ_BATCH: usize = 64 * 1024;

/// What the transport and a connection's task share.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// Ends the task at once, without a closing handshake.
    pub(super) kill: Notify,
    /// Payload bytes queued for the connection and not written yet.
    pub(super) queued: AtomicUsize,
    /// Whether the transport reported the connection busy (`queued` over half the backlog) and
    /// has not heard it drained since.
    pub(super) busy: AtomicBool,
}

/// What the transport tells a connection task.
#[derive(Debug)]
pub(super) enum Outbound {
    /// A frame, and when the transport queued it.
    Frame(Bytes, Stamp),
    Close(CloseReason),
}

/// Why a connection task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum End {
    /// The closing handshake finished: each side sent its close frame.
    Closed,
    /// The connection ended without a finished closing handshake, for none of the reasons below:
    /// the peer hung up, or did not answer our close in time.
    Gone,
    /// The transport killed it, or went away.
    Killed,
    /// A write made no progress for the write timeout: a slow reader.
    WriteTimeout,
    /// Nothing arrived for two ping intervals.
    PingTimeout,
    /// A message over the size limit.
    Oversize,
    /// The peer broke the WebSocket protocol.
    Violation,
    /// The socket failed.
    Error,
}

impl End {
    /// A short label for the logs.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Gone => "gone",
            Self::Killed => "killed",
            Self::WriteTimeout => "write_timeout",
            Self::PingTimeout => "ping_timeout",
            Self::Oversize => "oversize",
            Self::Violation => "protocol_violation",
            Self::Error => "socket_error",
        }
    }
}

/// How the connection is closing.
#[derive(Default)]
struct Closing {
    /// Our close frame is queued: no data frame goes out after it.
    sent: bool,
    /// The peer's close frame arrived: nothing more is read from it.
    received: bool,
    /// Why we started closing, when it was a problem of the peer's.
    cause: Option<End>,
    /// When the linger for the peer's close frame ends.
    linger_until: Option<Instant>,
    /// The peer broke the protocol: what it still sends is not parsed.
    garbage: bool,
}

pub(super) struct Connection<'a> {
    pub(super) conn: ConnId,
    /// The socket's peer, for the logs.
    pub(super) peer: SocketAddr,
    pub(super) codec: Codec,
    pub(super) config: &'a WsConfig,
    pub(super) shared: &'a Shared,
    pub(super) events: &'a mpsc::Sender<Event>,
    pub(super) counters: &'a Counters,
    pub(super) send_queue: SendQueueMeter,
}

/// A connection's share of [`WsStats::read_buffer_bytes`](super::WsStats::read_buffer_bytes):
/// the capacity of its read buffer as last counted, taken back when the connection ends.
struct HeldBuffer<'a> {
    counters: &'a Counters,
    held: usize,
}

impl HeldBuffer<'_> {
    fn update(&mut self, capacity: usize) {
        if capacity > self.held {
            self.counters.read_buffers.fetch_add(capacity - self.held, Ordering::Relaxed);
        } else if capacity < self.held {
            self.counters.read_buffers.fetch_sub(self.held - capacity, Ordering::Relaxed);
        }
        self.held = capacity;
    }
}

impl Drop for HeldBuffer<'_> {
    fn drop(&mut self) {
        self.update(0);
    }
}

impl Connection<'_> {
    /// Moves `item` from the transport into the write queue. Returns false for a close, after
    /// which nothing more is taken.
    fn enqueue(&self, item: Outbound, out: &mut VecDeque<OutFrame>, closing: &mut Closing) -> bool {
        match item {
            Outbound::Frame(frame, queued) => {
                // JSON frames from the core are UTF-8: serde_json wrote them, or they are
                // relayed frames that the codec checked on arrival.
                let opcode = if self.codec.is_binary() { Opcode::Binary } else { Opcode::Text };
                let mut frame = OutFrame::new(opcode, frame);
                frame.queued = queued;
                out.push_back(frame);
                true
            }
            Outbound::Close(reason) => {
                telemetry::ws::closing(self.conn, self.peer, &reason);
                let (code, text) = close_frame(&reason);
                closing.start(out, OutFrame::close(code, &text), None);
                false
            }
        }
    }

    /// Serves the connection until it ends: writes `response` (the handshake's), then speaks
    /// WebSocket; `buf` holds what was read after the handshake.
    ///
    /// One task owns the socket and waits on its readiness, so reads and writes need no lock
    /// between them, a read takes every message that arrived, and a write sends every frame
    /// queued, in one vectored system call.
    pub(super) async fn run(
        &self,
        mut link: Link,
        response: Bytes,
        mut buf: BytesMut,
        mut outbound: futures::channel::mpsc::Receiver<Outbound>,
    ) -> End {
        let config = self.config;
        let mut reader = Reader::new(config.max_message_size);
        let mut out = VecDeque::from([OutFrame::raw(response)]);
        let mut closing = Closing::default();
        // What the core queued when it heard of the connection (its challenge) goes out with the
        // response, in one write: one segment and one wake-up of the peer fewer per connection.
        while out.len() < MAX_WRITE_QUEUE {
            let Ok(item) = outbound.try_recv() else { break };
            if !self.enqueue(item, &mut out, &mut closing) {
                break;
            }
        }
        // A frame for the transport that waits for room in its queue; reading stops meanwhile.
        let mut inbox: Option<Event> = None;
        let mut report_drained = false;
        // The socket refused a write (the peer reset the connection): nothing more is written,
        // but what the peer sent before its reset may still wait in the socket. It is read and
        // handed on until the stream ends, for at most `close_linger`.
        let mut broken: Option<Instant> = None;
        let mut held = HeldBuffer { counters: self.counters, held: 0 };
        held.update(buf.capacity());

        let killed = self.shared.kill.notified();
        tokio::pin!(killed);
        let mut ping = tokio::time::interval_at(Instant::now() + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_heard = Instant::now();
        // The write deadline's window: from when it started, how much was written in it. Below
        // `drain_floor` queued, any progress starts a new window; above it, a window must drain
        // `min_drain_rate` per second.
        let mut window = DrainWindow::new(config);
        let deadline = tokio::time::sleep_until(window.start);
        tokio::pin!(deadline);

        loop {
            // Take whole messages out of the buffer while the transport has room for them.
            while inbox.is_none() && !closing.received {
                match reader.next(&mut buf) {
                    Ok(Some(Incoming::Text(frame) | Incoming::Binary(frame))) => {
                        if closing.sent {
                            continue; // Closing: what the peer still sends is dropped.
                        }
                        let frame = detach(frame, held.held);
                        match self.events.try_send(Event::Frame { conn: self.conn, frame }) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(event)) => inbox = Some(event),
                            Err(mpsc::error::TrySendError::Closed(_)) => return End::Killed,
                        }
                    }
                    Ok(Some(Incoming::Ping(payload))) => {
                        // A peer that pings without reading gets no more pongs than the write
                        // queue holds.
                        if !closing.sent && out.len() < MAX_WRITE_QUEUE {
                            out.push_back(OutFrame::new(Opcode::Pong, payload));
                        }
                    }
                    Ok(Some(Incoming::Pong)) => {}
                    Ok(Some(Incoming::Close(code))) => {
                        closing.received = true;
                        // Echo the peer's code (§5.5.1); a close without one gets 1000.
                        let code = code.map_or(CloseCode::Normal, CloseCode::from);
                        closing.start(&mut out, OutFrame::close(code, ""), None);
                    }
                    Ok(None) => break,
                    Err(violation) => {
                        let (code, reason) = violation.close();
                        let cause =
                            if violation == Violation::TooBig { End::Oversize } else { End::Violation };
                        closing.start(&mut out, OutFrame::close(code, reason), Some(cause));
                        // The stream cannot be parsed past a violation: from now on it is noise,
                        // read and dropped until the peer closes or the linger ends.
                        closing.garbage = true;
                        reader = Reader::new(0);
                        break;
                    }
                }
            }
            if closing.garbage {
                buf.clear();
            }
            if buf.is_empty() && !reader.is_assembling() {
                // Give the buffer back: an idle connection holds no read buffer, and one that
                // once received a maximal message does not keep it.
                buf = BytesMut::new();
                held.update(0);
            }

            if broken.is_none() && (!out.is_empty() || link.wants_write()) {
                let mut drained = false;
                let now = Stamp::now();
                let mut done = |frame: &OutFrame| {
                    drained |= self.written(frame.payload_len());
                    self.send_queue.written(frame.queued, now);
                };
                match link.write_now(&mut out, &mut done) {
                    Ok(0) => {}
                    Ok(written) => window.wrote(written, self.shared.queued.load(Ordering::Acquire)),
                    Err(_) => {
                        broken = Some(Instant::now() + config.close_linger);
                        out.clear();
                    }
                }
                report_drained |= drained;
                if out.is_empty() && out.capacity() > MAX_WRITE_QUEUE {
                    out = VecDeque::new();
                }
            }
            let writing = broken.is_none() && (!out.is_empty() || link.wants_write());

            let wake_at = if let Some(until) = broken {
                // Done once the peer's close frame came (nothing is read after it) with every
                // message before it handed on, or at the deadline.
                if until <= Instant::now() || (closing.received && inbox.is_none()) {
                    return End::Error;
                }
                Some(until)
            } else if writing {
                Some(window.start + config.write_timeout)
            } else if closing.sent {
                let until = *closing.linger_until.get_or_insert_with(|| Instant::now() + config.close_linger);
                if closing.received || until <= Instant::now() {
                    let _ = tokio::time::timeout(config.write_timeout, link.shutdown()).await;
                    return closing.end();
                }
                Some(until)
            } else {
                None
            };
            // Re-armed only when it must fire earlier: progress moves the write deadline later at
            // every write, and the timer catches up when it fires.
            if let Some(at) = wake_at {
                if deadline.deadline() > at || deadline.is_elapsed() {
                    deadline.as_mut().reset(at);
                }
            }

            let room = out.len() < MAX_WRITE_QUEUE && !closing.sent && broken.is_none();
            let reading = inbox.is_none() && !closing.received;
            let reporting = inbox.is_some() || report_drained;
            tokio::select! {
                biased;
                () = &mut killed => return End::Killed,
                () = &mut deadline, if wake_at.is_some() => {
                    if wake_at.is_some_and(|at| at <= Instant::now()) && writing && !window.next() {
                        return End::WriteTimeout;
                    }
                    // Early (progress moved the deadline) or the linger ended: the next turn
                    // re-arms or finishes the close.
                }
                ready = link.writable(), if writing => {
                    if ready.is_err() {
                        return End::Error;
                    }
                }
                permit = self.events.reserve(), if reporting => {
                    let Ok(permit) = permit else { return End::Killed };
                    if let Some(event) = inbox.take() {
                        permit.send(event);
                    } else {
                        report_drained = false;
                        permit.send(Event::Busy { conn: self.conn, busy: false });
                    }
                }
                next = outbound.next(), if room => {
                    let Some(first) = next else {
                        // The transport let go of the connection without a close: it is gone.
                        return End::Killed;
                    };
                    if out.is_empty() {
                        window = DrainWindow::new(config);
                    }
                    let mut next = Some(first);
                    while let Some(item) = next.take() {
                        if !self.enqueue(item, &mut out, &mut closing) {
                            break;
                        }
                        if out.len() < MAX_WRITE_QUEUE {
                            next = outbound.try_recv().ok();
                        }
                    }
                }
                ready = link.readable(), if reading => {
                    if ready.is_err() {
                        return End::Error;
                    }
                    let wanted = reader.wanted(&buf);
                    let read = link.read_now(&mut buf, wanted, config.read_buffer_size, READ_BATCH);
                    held.update(buf.capacity());
                    match read {
                        Ok(Some(0)) if broken.is_some() => return End::Error,
                        Ok(Some(0)) => {
                            // The peer hung up: after our close that is its answer, before it
                            // there is nobody left to answer.
                            return closing.end();
                        }
                        Ok(Some(_)) => last_heard = Instant::now(),
                        Ok(None) => {}
                        Err(_) => return End::Error,
                    }
                }
                _ = ping.tick(), if !closing.sent && broken.is_none() => {
                    if last_heard.elapsed() >= config.ping_interval.saturating_mul(2) {
                        closing.start(&mut out, OutFrame::close(CloseCode::Away, "ping timeout"), Some(End::PingTimeout));
                    } else if out.len() < MAX_WRITE_QUEUE {
                        out.push_back(OutFrame::new(Opcode::Ping, Bytes::new()));
                    }
                }
            }
        }
    }

    /// Records `len` payload bytes written; true when this drained a busy connection below half
    /// its backlog.
    fn written(&self, len: usize) -> bool {
        self.counters.queued.fetch_sub(len, Ordering::AcqRel);
        let left = self.shared.queued.fetch_sub(len, Ordering::AcqRel).saturating_sub(len);
        left <= self.config.send_backlog_bytes / 2
            && self.shared.busy.compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

/// A frame split off a read buffer of `allocation` bytes, copied out when it would keep much
/// more memory alive than its own length: a 100-byte relay cut from a 64 KiB read must not hold
/// the 64 KiB for as long as it waits in a slow reader's queue, where it counts 100 bytes. So a
/// queued frame holds at most eight times its length.
fn detach(frame: Bytes, allocation: usize) -> Bytes {
    if frame.len().saturating_mul(PIN_RATIO) < allocation {
        Bytes::copy_from_slice(&frame)
    } else {
        frame
    }
}

/// See [`detach`].
const PIN_RATIO: usize = 8;

/// The write deadline of [`WsConfig::write_timeout`] as a window: a queue above
/// [`WsConfig::drain_floor`] must drain at least [`WsConfig::min_drain_rate`] over each window,
/// and below it any progress starts a new one.
struct DrainWindow {
    start: Instant,
    written: usize,
    floor: usize,
    /// Bytes a window must see written while the queue is above the floor.
    needed: usize,
}

impl DrainWindow {
    fn new(config: &WsConfig) -> Self {
        let needed = (config.min_drain_rate as f64 * config.write_timeout.as_secs_f64()) as usize;
        Self { start: Instant::now(), written: 0, floor: config.drain_floor, needed: needed.max(1) }
    }

    /// `written` bytes went out; `queued` still wait.
    fn wrote(&mut self, written: usize, queued: usize) {
        if queued <= self.floor {
            self.start = Instant::now();
            self.written = 0;
        } else {
            self.written = self.written.saturating_add(written);
        }
    }

    /// The window is over: starts the next one if this one drained enough.
    fn next(&mut self) -> bool {
        if self.written < self.needed {
            return false;
        }
        self.start = Instant::now();
        self.written = 0;
        true
    }
}

impl Closing {
    /// Queues our close frame; from now on no data frame is written, and the peer has
    /// [`WsConfig::close_linger`] after it is written to answer.
    fn start(&mut self, out: &mut VecDeque<OutFrame>, frame: OutFrame, cause: Option<End>) {
        if self.sent {
            return;
        }
        self.sent = true;
        self.cause = cause;
        out.push_back(frame);
    }

    /// How the connection ended, once it has.
    fn end(&self) -> End {
        match self.cause {
            Some(cause) => cause,
            None if self.sent && self.received => End::Closed,
            None => End::Gone,
        }
    }
}

/// The WebSocket close code and reason for a close the core asked for.
pub(super) fn close_frame(reason: &CloseReason) -> (CloseCode, String) {
    let code = match reason {
        CloseReason::Stopped => CloseCode::Away,
        CloseReason::Error(ProtocolError::ServerFull) => CloseCode::Again,
        CloseReason::Error(_) => CloseCode::Policy,
    };
    let text = match reason {
        CloseReason::Stopped => "server stopping".to_string(),
        CloseReason::Error(error) => error.to_string(),
    };
    (code, text)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> WsConfig {
        WsConfig::default()
            .with_write_timeout(Duration::from_secs(10))
            .with_min_drain_rate(4096)
            .with_drain_floor(16 * 1024)
    }

    #[tokio::test(start_paused = true)]
    async fn above_the_floor_a_window_must_drain_the_minimum_rate() {
        let mut window = DrainWindow::new(&config());
        // A byte now and then, with 200 KiB queued: progress, but 40 KiB short of the window's due.
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(1)).await;
            window.wrote(1, 200 * 1024);
        }
        assert!(!window.next(), "a trickle kept a full queue alive");

        let mut window = DrainWindow::new(&config());
        window.wrote(41 * 1024, 150 * 1024);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(window.next(), "a window that drained 41 KiB in 10 s was refused");
        assert_eq!(window.start, Instant::now(), "the next window starts now");
        assert!(!window.next(), "the next window starts with nothing written");
    }

    #[tokio::test(start_paused = true)]
    async fn below_the_floor_any_progress_starts_a_new_window() {
        let mut window = DrainWindow::new(&config());
        tokio::time::advance(Duration::from_secs(9)).await;
        window.wrote(1, 8 * 1024);
        assert_eq!(window.start, Instant::now());
    }

    #[test]
    fn small_frames_are_copied_out_of_large_buffers_and_large_ones_shared() {
        let buffer = Bytes::from(vec![7u8; 64 * 1024]);
        let small = detach(buffer.slice(..100), 64 * 1024);
        assert_eq!(small, buffer.slice(..100));
        assert_ne!(small.as_ptr(), buffer.as_ptr(), "copied");
        let large = detach(buffer.slice(..9 * 1024), 64 * 1024);
        assert_eq!(large.as_ptr(), buffer.as_ptr(), "shared, not copied");
    }
}
