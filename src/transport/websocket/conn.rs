//! One WebSocket connection's task after its handshake: moves bytes between the socket and the
//! transport's queues, and sleeps until the next deadline of its [`ConnState`].
//!
//! What to write, when to give up on the peer and how the connection ends are the state's to
//! say (see `state.rs`); this task owns the socket, the read buffer and the queues. The kill
//! notification beats every wait.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::channel::{Event, Outbound, Shared};
use super::frame::{OutFrame, Reader};
use super::link::Link;
use super::state::{ConnState, Done, End, MAX_WRITE_QUEUE};
use super::stats::Counters;
use super::WsConfig;
use crate::telemetry::{self, SendQueueMeter, Stamp};
use crate::{Codec, ConnId};

/// Bytes read in one turn at most before the messages in them are handled.
const READ_BATCH: usize = 64 * 1024;

/// What a connection's task works with: its identity, its settings and what it shares with the
/// transport.
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
    /// Serves the connection until it ends: writes `response` (the handshake's), then speaks
    /// WebSocket; `buf` holds what was read after the handshake.
    ///
    /// One task owns the socket and waits on its readiness, so reads and writes need no lock
    /// between them, a read takes every message that arrived, and a write sends every frame
    /// queued, in one vectored system call. What to write, when to give up and how the
    /// connection ends is [`ConnState`]'s to say; this loop moves bytes and sleeps until its
    /// next deadline.
    pub(super) async fn run(
        &self,
        mut link: Link,
        response: Bytes,
        mut buf: BytesMut,
        mut outbound: futures::channel::mpsc::Receiver<Outbound>,
    ) -> End {
        let config = self.config;
        let mut now = Instant::now();
        let mut reader = Reader::new(config.max_message_size);
        let mut state = ConnState::new(config, self.codec, response, now);
        // What the core queued when it heard of the connection (its challenge) goes out with the
        // response, in one write: one segment and one wake-up of the peer fewer per connection.
        while state.has_room() {
            let Ok(item) = outbound.try_recv() else { break };
            if !self.enqueue(&mut state, now, item) {
                break;
            }
        }
        // A frame for the transport that waits for room in its queue; reading stops meanwhile.
        let mut inbox: Option<Event> = None;
        let mut report_drained = false;
        let mut held = HeldBuffer { counters: self.counters, held: 0 };
        held.update(buf.capacity());

        let killed = self.shared.kill.notified();
        tokio::pin!(killed);
        let deadline = tokio::time::sleep_until(now);
        tokio::pin!(deadline);

        loop {
            // Take whole messages out of the buffer while the transport has room for them.
            while inbox.is_none() && state.is_reading() && !state.is_garbage() {
                match reader.next(&mut buf) {
                    Ok(Some(message)) => {
                        let Some(frame) = state.handle_message(message) else { continue };
                        let frame = detach(frame, held.held);
                        match self.events.try_send(Event::Frame { conn: self.conn, frame }) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(event)) => inbox = Some(event),
                            Err(mpsc::error::TrySendError::Closed(_)) => return End::Killed,
                        }
                    }
                    Ok(None) => break,
                    Err(violation) => {
                        state.handle_violation(violation);
                        // The stream cannot be parsed past a violation.
                        reader = Reader::new(0);
                        break;
                    }
                }
            }
            if state.is_garbage() {
                buf.clear();
            }
            if buf.is_empty() && !reader.is_assembling() {
                // Give the buffer back: an idle connection holds no read buffer, and one that
                // once received a maximal message does not keep it.
                buf = BytesMut::new();
                held.update(0);
            }

            if state.can_write() && (!state.queue().is_empty() || link.wants_write()) {
                let mut drained = false;
                let stamp = Stamp::now();
                let mut done = |frame: &OutFrame| {
                    drained |= self.written(frame.payload_len());
                    self.send_queue.written(frame.queued, stamp);
                };
                match link.write_now(state.queue(), &mut done) {
                    Ok(written) => {
                        let queued = if written > 0 { self.shared.queued.load(Ordering::Acquire) } else { 0 };
                        state.handle_written(now, written, queued);
                    }
                    Err(_) => state.handle_write_failed(now),
                }
                report_drained |= drained;
            }

            match state.poll(now, link.wants_write(), inbox.is_none()) {
                None => {}
                Some(Done::Now(end)) => return end,
                Some(Done::AfterShutdown(end)) => {
                    let _ = tokio::time::timeout(config.write_timeout, link.shutdown()).await;
                    return end;
                }
            }
            // Re-armed only when it must fire earlier: progress moves the write deadline later at
            // every write, and a timer that fires early only finds nothing due.
            let wake_at = state.poll_timeout();
            if let Some(at) = wake_at {
                if deadline.deadline() > at || deadline.is_elapsed() {
                    deadline.as_mut().reset(at);
                }
            }

            let writing = state.is_writing();
            let room = state.has_room();
            let reading = inbox.is_none() && state.is_reading();
            let reporting = inbox.is_some() || report_drained;
            tokio::select! {
                biased;
                () = &mut killed => return End::Killed,
                () = &mut deadline, if wake_at.is_some() => {
                    now = Instant::now();
                    if let Some(end) = state.handle_timeout(now) {
                        return end;
                    }
                }
                ready = link.writable(), if writing => {
                    if ready.is_err() {
                        return End::Error;
                    }
                    now = Instant::now();
                }
                permit = self.events.reserve(), if reporting => {
                    let Ok(permit) = permit else { return End::Killed };
                    if let Some(event) = inbox.take() {
                        permit.send(event);
                    } else {
                        report_drained = false;
                        permit.send(Event::Busy { conn: self.conn, busy: false });
                    }
                    now = Instant::now();
                }
                next = outbound.next(), if room => {
                    let Some(first) = next else {
                        // The transport let go of the connection without a close: it is gone.
                        return End::Killed;
                    };
                    now = Instant::now();
                    let mut next = Some(first);
                    while let Some(item) = next.take() {
                        if !self.enqueue(&mut state, now, item) {
                            break;
                        }
                        if state.queue().len() < MAX_WRITE_QUEUE {
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
                    now = Instant::now();
                    match read {
                        Ok(Some(len)) => {
                            if let Some(end) = state.handle_read(now, len) {
                                return end;
                            }
                        }
                        Ok(None) => {}
                        Err(_) => return End::Error,
                    }
                }
            }
        }
    }

    /// Hands `item` from the transport to the state, logging a close. Returns false for a close.
    fn enqueue(&self, state: &mut ConnState, now: Instant, item: Outbound) -> bool {
        if let Outbound::Close(reason) = &item {
            telemetry::ws::closing(self.conn, self.peer, reason);
        }
        state.handle_outbound(now, item)
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

#[cfg(test)]
mod tests {
    use super::*;

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
