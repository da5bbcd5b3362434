//! [`ConnState`]: the rules of one open WebSocket connection without I/O or a clock: the write
//! queue, the closing handshake, the drain window, pings, and every deadline as data.
//!
//! The connection task feeds it what happened (a message read, bytes written, a frame queued by
//! the transport, a deadline reached), each with the time it happened, and does what it answers:
//! write its queue, end the connection, sleep until [`ConnState::poll_timeout`]. So every rule
//! about waiting on the peer is a unit test with injected time, like the core's.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::channel::Outbound;
use super::frame::{Incoming, Opcode, OutFrame, Violation};
use super::WsConfig;
use crate::{CloseReason, Codec, ProtocolError};

/// Frames in the write queue at most before the connection stops taking frames from its send
/// queue (where they count against the backlog) and stops answering pings.
pub(super) const MAX_WRITE_QUEUE: usize = 64;

/// The state of one connection after its handshake. See the [module](self).
///
/// The task's turn, in order: hand it the messages read ([`handle_message`](Self::handle_message),
/// [`handle_violation`](Self::handle_violation)); write [`queue`](Self::queue) and report it
/// ([`handle_written`](Self::handle_written) or [`handle_write_failed`](Self::handle_write_failed));
/// call [`poll`](Self::poll), which arms the deadlines and may end the connection; then wait for
/// the socket, the send queue, or [`poll_timeout`](Self::poll_timeout), and report what woke it.
#[derive(Debug)]
pub(super) struct ConnState {
    timing: Timing,
    binary: bool,
    /// Frames to write, in order.
    out: VecDeque<OutFrame>,
    closing: Closing,
    window: DrainWindow,
    /// When the peer last sent anything, for the ping timeout.
    last_heard: Instant,
    /// When the next ping is due.
    next_ping: Instant,
    /// The socket refused a write (the peer reset the connection): nothing more is written, but
    /// what the peer sent before its reset may still wait in the socket. It is read and handed on
    /// until the stream ends, at most until this deadline.
    broken: Option<Instant>,
    /// Whether the last [`poll`](Self::poll) found bytes waiting to be written.
    writing: bool,
    timers: TimerTable,
}

/// The settings of [`WsConfig`] that the state needs.
#[derive(Debug, Clone, Copy)]
struct Timing {
    write_timeout: Duration,
    close_linger: Duration,
    ping_interval: Duration,
    drain_floor: usize,
    /// Bytes a drain window must see written while the queue is above the floor.
    drain_needed: usize,
}

/// How a connection ends, once [`ConnState`] says it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// End it now.
    Now(End),
    /// Shut the stream down (the TCP FIN, TLS's close_notify), within the write timeout, then end.
    AfterShutdown(End),
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

/// The connection's deadlines, one slot each; an empty slot is not armed.
#[derive(Debug, Clone, Copy)]
enum Timer {
    /// The next ping, or the ping timeout.
    Ping,
    /// The end of the drain window while bytes wait to be written.
    Write,
    /// The end of the wait for the peer's close frame after ours is written.
    Linger,
    /// The end of the reading after a failed write.
    Broken,
}

#[derive(Debug, Default)]
struct TimerTable([Option<Instant>; 4]);

impl TimerTable {
    fn set(&mut self, timer: Timer, at: Option<Instant>) {
        if let Some(slot) = self.0.get_mut(timer as usize) {
            *slot = at;
        }
    }

    fn get(&self, timer: Timer) -> Option<Instant> {
        self.0.get(timer as usize).copied().flatten()
    }

    fn expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|at| at <= now)
    }

    fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }
}

impl ConnState {
    /// A connection that opened at `now`, speaking `codec`, whose write queue starts with
    /// `response` (the handshake's answer).
    pub(super) fn new(config: &WsConfig, codec: Codec, response: Bytes, now: Instant) -> Self {
        let drain_needed = (config.min_drain_rate as f64 * config.write_timeout.as_secs_f64()) as usize;
        let timing = Timing {
            write_timeout: config.write_timeout,
            close_linger: config.close_linger,
            ping_interval: config.ping_interval,
            drain_floor: config.drain_floor,
            drain_needed: drain_needed.max(1),
        };
        let next_ping = now + timing.ping_interval;
        let mut timers = TimerTable::default();
        timers.set(Timer::Ping, Some(next_ping));
        Self {
            timing,
            binary: codec.is_binary(),
            out: VecDeque::from([OutFrame::raw(response)]),
            closing: Closing::default(),
            window: DrainWindow::new(now),
            last_heard: now,
            next_ping,
            broken: None,
            writing: false,
            timers,
        }
    }

    /// Takes a frame or a close from the transport into the write queue. Returns false for a
    /// close, after which the task takes nothing more from the transport.
    pub(super) fn handle_outbound(&mut self, now: Instant, item: Outbound) -> bool {
        if self.out.is_empty() {
            // The queue was empty: the write deadline starts with these frames.
            self.window = DrainWindow::new(now);
        }
        match item {
            Outbound::Frame(frame, queued) => {
                // JSON frames from the core are UTF-8: serde_json wrote them, or they are
                // relayed frames that the codec checked on arrival.
                let opcode = if self.binary { Opcode::Binary } else { Opcode::Text };
                let mut frame = OutFrame::new(opcode, frame);
                frame.queued = queued;
                self.out.push_back(frame);
                true
            }
            Outbound::Close(reason) => {
                let (code, text) = close_frame(&reason);
                self.closing.start(&mut self.out, OutFrame::close(code, &text), None);
                false
            }
        }
    }

    /// Takes a whole message the peer sent; returns the payload to hand to the transport, if any.
    pub(super) fn handle_message(&mut self, message: Incoming) -> Option<Bytes> {
        match message {
            // Closing: what the peer still sends is dropped.
            Incoming::Text(frame) | Incoming::Binary(frame) => (!self.closing.sent).then_some(frame),
            Incoming::Ping(payload) => {
                // A peer that pings without reading gets no more pongs than the write queue holds.
                if !self.closing.sent && self.out.len() < MAX_WRITE_QUEUE {
                    self.out.push_back(OutFrame::new(Opcode::Pong, payload));
                }
                None
            }
            Incoming::Pong => None,
            Incoming::Close(code) => {
                self.closing.received = true;
                // Echo the peer's code (§5.5.1); a close without one gets 1000.
                let code = code.map_or(CloseCode::Normal, CloseCode::from);
                self.closing.start(&mut self.out, OutFrame::close(code, ""), None);
                None
            }
        }
    }

    /// The peer broke the protocol: our close goes out with the violation's code, and from now
    /// on what the peer sends is noise ([`is_garbage`](Self::is_garbage)), read and dropped until
    /// it closes or the linger ends.
    pub(super) fn handle_violation(&mut self, violation: Violation) {
        let (code, reason) = violation.close();
        let cause = if violation == Violation::TooBig { End::Oversize } else { End::Violation };
        self.closing.start(&mut self.out, OutFrame::close(code, reason), Some(cause));
        self.closing.garbage = true;
    }

    /// A read from the socket returned `len` bytes (0: the stream ended). Returns how the
    /// connection ends, if this ends it.
    pub(super) fn handle_read(&mut self, now: Instant, len: usize) -> Option<End> {
        if len > 0 {
            self.last_heard = now;
            return None;
        }
        if self.broken.is_some() {
            return Some(End::Error);
        }
        // The peer hung up: after our close that is its answer, before it there is nobody left
        // to answer.
        Some(self.closing.end())
    }

    /// `written` bytes of the queue went out at `now`, and `queued` payload bytes still wait
    /// for the connection (in the write queue and in the transport's send queue).
    pub(super) fn handle_written(&mut self, now: Instant, written: usize, queued: usize) {
        if written > 0 {
            self.window.wrote(now, written, queued, &self.timing);
        }
        if self.out.is_empty() && self.out.capacity() > MAX_WRITE_QUEUE {
            self.out = VecDeque::new();
        }
    }

    /// The socket refused a write: nothing more is written; what the peer sent before is still
    /// read, for at most [`WsConfig::close_linger`].
    pub(super) fn handle_write_failed(&mut self, now: Instant) {
        self.broken = Some(now + self.timing.close_linger);
        self.out = VecDeque::new();
    }

    /// The time is `now`, at or past [`poll_timeout`](Self::poll_timeout) (earlier does no
    /// harm). Returns how the connection ends, if a deadline ends it.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Option<End> {
        if self.timers.expired(Timer::Write, now) && !self.window.next(now, &self.timing) {
            return Some(End::WriteTimeout);
        }
        if self.timers.expired(Timer::Ping, now) {
            if now.saturating_duration_since(self.last_heard) >= self.timing.ping_interval.saturating_mul(2) {
                let close = OutFrame::close(CloseCode::Away, "ping timeout");
                self.closing.start(&mut self.out, close, Some(End::PingTimeout));
            } else if self.out.len() < MAX_WRITE_QUEUE {
                self.out.push_back(OutFrame::new(Opcode::Ping, Bytes::new()));
            }
            self.next_ping = now + self.timing.ping_interval;
        }
        // The linger and the broken connection's reading end in the next `poll`.
        None
    }

    /// Decides, after the turn's reads and writes, whether the connection ends, and arms the
    /// deadlines for the wait that follows. `link_pending`: the stream holds bytes not yet on the
    /// socket (TLS records); `inbox_empty`: no message read waits for room in the transport's
    /// queue.
    pub(super) fn poll(&mut self, now: Instant, link_pending: bool, inbox_empty: bool) -> Option<Done> {
        self.writing = self.broken.is_none() && (!self.out.is_empty() || link_pending);
        let pinging = !self.closing.sent && self.broken.is_none();
        self.timers.set(Timer::Ping, pinging.then_some(self.next_ping));
        self.timers.set(Timer::Broken, self.broken);
        self.timers.set(Timer::Write, None);
        self.timers.set(Timer::Linger, None);
        if let Some(until) = self.broken {
            // Done once the peer's close frame came (nothing is read after it) with every message
            // before it handed on, or at the deadline.
            if until <= now || (self.closing.received && inbox_empty) {
                return Some(Done::Now(End::Error));
            }
        } else if self.writing {
            self.timers.set(Timer::Write, Some(self.window.start + self.timing.write_timeout));
        } else if self.closing.sent {
            let until = *self.closing.linger_until.get_or_insert(now + self.timing.close_linger);
            if self.closing.received || until <= now {
                return Some(Done::AfterShutdown(self.closing.end()));
            }
            self.timers.set(Timer::Linger, Some(until));
        }
        None
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next, as armed by the last
    /// [`poll`](Self::poll).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// The frames to write, in order. Written frames are popped by the writer.
    pub(super) fn queue(&mut self) -> &mut VecDeque<OutFrame> {
        &mut self.out
    }

    /// Whether there is something to write, as of the last [`poll`](Self::poll).
    pub(super) fn is_writing(&self) -> bool {
        self.writing
    }

    /// Whether the socket may still be written to: no write has failed.
    pub(super) fn can_write(&self) -> bool {
        self.broken.is_none()
    }

    /// Whether the peer may still send messages: its close frame has not arrived.
    pub(super) fn is_reading(&self) -> bool {
        !self.closing.received
    }

    /// Whether the write queue takes more frames from the transport.
    pub(super) fn has_room(&self) -> bool {
        self.out.len() < MAX_WRITE_QUEUE && !self.closing.sent && self.broken.is_none()
    }

    /// Whether what the peer sends is no longer parsed, after a violation.
    pub(super) fn is_garbage(&self) -> bool {
        self.closing.garbage
    }
}

/// How the connection is closing.
#[derive(Debug, Default)]
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

/// The write deadline of [`WsConfig::write_timeout`] as a window: a queue above
/// [`WsConfig::drain_floor`] must drain at least [`WsConfig::min_drain_rate`] over each window,
/// and below it any progress starts a new one.
#[derive(Debug)]
struct DrainWindow {
    start: Instant,
    written: usize,
}

impl DrainWindow {
    fn new(now: Instant) -> Self {
        Self { start: now, written: 0 }
    }

    /// `written` bytes went out at `now`; `queued` still wait.
    fn wrote(&mut self, now: Instant, written: usize, queued: usize, timing: &Timing) {
        if queued <= timing.drain_floor {
            *self = Self::new(now);
        } else {
            self.written = self.written.saturating_add(written);
        }
    }

    /// The window is over at `now`: starts the next one if this one drained enough.
    fn next(&mut self, now: Instant, timing: &Timing) -> bool {
        if self.written < timing.drain_needed {
            return false;
        }
        *self = Self::new(now);
        true
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
    use super::*;
    use crate::telemetry::Stamp;

    const LINGER: Duration = Duration::from_secs(1);
    const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
    const PING: Duration = Duration::from_secs(30);
    const MS: Duration = Duration::from_millis(1);

    fn config() -> WsConfig {
        WsConfig::default()
            .with_write_timeout(WRITE_TIMEOUT)
            .with_close_linger(LINGER)
            .with_ping_interval(PING)
            .with_min_drain_rate(4096)
            .with_drain_floor(16 * 1024)
    }

    /// A connection opened at `t0`, its handshake response already written.
    fn open() -> (ConnState, Instant) {
        let t0 = Instant::now();
        let mut state =
            ConnState::new(&config(), Codec::Json, Bytes::from_static(b"HTTP/1.1 101\r\n\r\n"), t0);
        drain(&mut state, t0, 0);
        assert_eq!(state.poll(t0, false, true), None);
        (state, t0)
    }

    /// A socket that takes everything queued at `now`, with `queued` payload bytes still waiting
    /// in the transport: each frame written, as (opcode, payload).
    fn drain(state: &mut ConnState, now: Instant, queued: usize) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut written = 0;
        while let Some(frame) = state.queue().pop_front() {
            let (head, payload) = frame.remaining();
            written += head.len() + payload.len();
            frames.push((head.first().map_or(0, |b| b & 0x0f), payload.to_vec()));
        }
        state.handle_written(now, written, queued);
        frames
    }

    fn close_code(payload: &[u8]) -> u16 {
        u16::from_be_bytes([payload[0], payload[1]])
    }

    fn frame(len: usize) -> Outbound {
        Outbound::Frame(Bytes::from(vec![b'x'; len]), Stamp::now())
    }

    #[test]
    fn the_peers_close_is_echoed_with_its_code_and_ends_the_connection_cleanly() {
        let (mut state, t0) = open();
        assert_eq!(state.handle_message(Incoming::Close(Some(1001))), None);
        assert!(!state.is_reading(), "nothing is read after the peer's close");
        // Not before our echo is written.
        assert_eq!(state.poll(t0, false, true), None);
        let frames = drain(&mut state, t0, 0);
        assert_eq!(frames.len(), 1);
        assert_eq!((frames[0].0, close_code(&frames[0].1)), (0x8, 1001));
        assert_eq!(state.poll(t0, false, true), Some(Done::AfterShutdown(End::Closed)));
    }

    #[test]
    fn our_close_waits_for_the_peers_answer_and_drops_what_comes_before_it() {
        let (mut state, t0) = open();
        assert!(!state.handle_outbound(t0, Outbound::Close(CloseReason::Stopped)));
        assert!(!state.has_room(), "nothing is taken from the transport after a close");
        let frames = drain(&mut state, t0, 0);
        assert_eq!((frames[0].0, close_code(&frames[0].1)), (0x8, 1001));
        assert_eq!(state.poll(t0, false, true), None);
        assert_eq!(state.poll_timeout(), Some(t0 + LINGER), "the linger, and no ping");
        let t = t0 + LINGER / 2;
        assert_eq!(state.handle_message(Incoming::Text(Bytes::from_static(b"late"))), None);
        assert_eq!(state.handle_message(Incoming::Close(Some(1000))), None);
        assert!(state.queue().is_empty(), "a close is sent once");
        assert_eq!(state.poll(t, false, true), Some(Done::AfterShutdown(End::Closed)));
    }

    #[test]
    fn an_unanswered_close_ends_when_the_linger_does() {
        let (mut state, t0) = open();
        state.handle_outbound(t0, Outbound::Close(CloseReason::Stopped));
        // The close frame waits for the socket for a while: the linger starts once it is written.
        assert_eq!(state.poll(t0, false, true), None);
        let t = t0 + Duration::from_secs(3);
        drain(&mut state, t, 0);
        assert_eq!(state.poll(t, false, true), None);
        assert_eq!(state.poll_timeout(), Some(t + LINGER));
        assert_eq!(state.handle_timeout(t + LINGER - MS), None);
        assert_eq!(state.poll(t + LINGER - MS, false, true), None);
        assert_eq!(state.handle_timeout(t + LINGER), None);
        assert_eq!(state.poll(t + LINGER, false, true), Some(Done::AfterShutdown(End::Gone)));
    }

    #[test]
    fn a_zero_linger_ends_as_soon_as_the_close_is_written() {
        let t0 = Instant::now();
        let config = config().with_close_linger(Duration::ZERO);
        let mut state = ConnState::new(&config, Codec::Json, Bytes::new(), t0);
        state.handle_outbound(t0, Outbound::Close(CloseReason::Stopped));
        drain(&mut state, t0, 0);
        assert_eq!(state.poll(t0, false, true), Some(Done::AfterShutdown(End::Gone)));
    }

    #[test]
    fn a_silent_peer_is_pinged_then_closed_for_ping_timeout() {
        let (mut state, t0) = open();
        assert_eq!(state.poll_timeout(), Some(t0 + PING));
        assert_eq!(state.handle_timeout(t0 + PING - MS), None);
        assert!(state.queue().is_empty(), "no ping before the interval");
        assert_eq!(state.handle_timeout(t0 + PING), None);
        let frames = drain(&mut state, t0 + PING, 0);
        assert_eq!(frames, vec![(0x9, Vec::new())], "a ping");
        assert_eq!(state.poll(t0 + PING, false, true), None);
        assert_eq!(state.poll_timeout(), Some(t0 + 2 * PING));
        // Two intervals without a byte from the peer.
        let t = t0 + 2 * PING;
        assert_eq!(state.handle_timeout(t), None);
        let frames = drain(&mut state, t, 0);
        assert_eq!((frames[0].0, close_code(&frames[0].1)), (0x8, 1001));
        assert_eq!(&frames[0].1[2..], b"ping timeout");
        assert_eq!(state.poll(t, false, true), None);
        assert_eq!(state.poll(t + LINGER, false, true), Some(Done::AfterShutdown(End::PingTimeout)));
    }

    #[test]
    fn a_peer_heard_within_two_intervals_is_pinged_not_closed() {
        let (mut state, t0) = open();
        state.handle_timeout(t0 + PING);
        drain(&mut state, t0 + PING, 0);
        state.poll(t0 + PING, false, true);
        assert_eq!(state.handle_read(t0 + PING + MS, 2), None, "its pong");
        state.handle_timeout(t0 + 2 * PING);
        assert_eq!(drain(&mut state, t0 + 2 * PING, 0), vec![(0x9, Vec::new())]);
        assert_eq!(state.poll(t0 + 2 * PING, false, true), None);
    }

    #[test]
    fn a_write_that_makes_no_progress_ends_at_the_write_timeout() {
        let (mut state, t0) = open();
        assert!(state.handle_outbound(t0, frame(100)));
        // The socket takes nothing.
        assert_eq!(state.poll(t0, false, true), None);
        assert!(state.is_writing());
        assert_eq!(state.poll_timeout(), Some(t0 + WRITE_TIMEOUT), "the write deadline, before the ping");
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT - MS), None);
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT), Some(End::WriteTimeout));
    }

    #[test]
    fn bytes_the_stream_still_holds_keep_the_write_deadline_armed() {
        let (mut state, t0) = open();
        // TLS records not yet on the socket, with the write queue empty.
        assert_eq!(state.poll(t0, true, true), None);
        assert_eq!(state.poll_timeout(), Some(t0 + WRITE_TIMEOUT));
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT), Some(End::WriteTimeout));
    }

    #[test]
    fn below_the_floor_any_progress_starts_a_new_window() {
        let (mut state, t0) = open();
        state.handle_outbound(t0, frame(100));
        state.handle_outbound(t0, frame(100));
        // One frame goes out at 9 s, with little still queued.
        let t = t0 + Duration::from_secs(9);
        let first = state.queue().pop_front().map(|f| f.remaining().1.len()).unwrap_or(0);
        state.handle_written(t, first + 2, 100);
        assert_eq!(state.poll(t, false, true), None);
        assert_eq!(state.poll_timeout(), Some(t + WRITE_TIMEOUT));
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT), None);
    }

    #[test]
    fn above_the_floor_a_window_must_drain_the_minimum_rate() {
        // A byte a second, with 200 KiB queued: progress, but 40 KiB short of the window's due.
        let (mut state, t0) = open();
        state.handle_outbound(t0, frame(1000));
        for s in 1..=10 {
            state.handle_written(t0 + Duration::from_secs(s), 1, 200 * 1024);
            assert_eq!(state.poll(t0 + Duration::from_secs(s), false, true), None);
        }
        assert_eq!(state.poll_timeout(), Some(t0 + WRITE_TIMEOUT), "a trickle does not move the deadline");
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT), Some(End::WriteTimeout));

        // 41 KiB in the window: the next window starts when this one ends.
        let (mut state, t0) = open();
        state.handle_outbound(t0, frame(1000));
        state.handle_written(t0 + MS, 41 * 1024, 150 * 1024);
        assert_eq!(state.poll(t0 + MS, false, true), None);
        assert_eq!(state.handle_timeout(t0 + WRITE_TIMEOUT), None);
        assert_eq!(state.poll(t0 + WRITE_TIMEOUT, false, true), None);
        assert_eq!(state.poll_timeout(), Some(t0 + 2 * WRITE_TIMEOUT), "the next window");
        assert_eq!(
            state.handle_timeout(t0 + 2 * WRITE_TIMEOUT),
            Some(End::WriteTimeout),
            "with nothing written"
        );
    }

    #[test]
    fn after_a_failed_write_the_peer_is_read_until_the_linger() {
        let (mut state, t0) = open();
        state.handle_outbound(t0, frame(100));
        state.handle_write_failed(t0);
        assert!(!state.can_write() && !state.is_writing() && !state.has_room());
        assert_eq!(state.poll(t0, false, true), None);
        assert_eq!(
            state.poll_timeout(),
            Some(t0 + LINGER),
            "the linger, and neither ping nor write deadline"
        );
        assert!(state.is_reading());
        assert_eq!(state.poll(t0 + LINGER, false, true), Some(Done::Now(End::Error)));

        // Its close ends the reading once every message before it is handed on.
        let (mut state, t0) = open();
        state.handle_write_failed(t0);
        state.handle_message(Incoming::Close(None));
        assert_eq!(state.poll(t0, false, false), None, "a message still waits for the transport");
        assert_eq!(state.poll(t0, false, true), Some(Done::Now(End::Error)));
        // So does the end of the stream.
        let (mut state, t0) = open();
        state.handle_write_failed(t0);
        assert_eq!(state.handle_read(t0, 0), Some(End::Error));
    }

    #[test]
    fn a_violation_closes_with_its_code_and_counts_as_the_cause() {
        let (mut state, t0) = open();
        state.handle_violation(Violation::TooBig);
        assert!(state.is_garbage());
        let frames = drain(&mut state, t0, 0);
        assert_eq!((frames[0].0, close_code(&frames[0].1)), (0x8, 1009));
        assert_eq!(state.poll(t0, false, true), None);
        // The peer answers by hanging up: the cause stands.
        assert_eq!(state.handle_read(t0 + MS, 0), Some(End::Oversize));
    }

    #[test]
    fn a_peer_that_hangs_up_unasked_is_gone_and_data_is_handed_on() {
        let (mut state, t0) = open();
        let data = Bytes::from_static(b"{}");
        assert_eq!(state.handle_message(Incoming::Text(data.clone())), Some(data));
        assert_eq!(state.handle_read(t0, 0), Some(End::Gone));
    }

    #[test]
    fn pings_are_answered_only_while_the_write_queue_has_room() {
        let (mut state, _) = open();
        for _ in 0..1000 {
            state.handle_message(Incoming::Ping(Bytes::from_static(b"p")));
        }
        assert_eq!(state.queue().len(), MAX_WRITE_QUEUE);
        assert!(!state.has_room());
    }
}
