//! [`pipe`]: a one-way queue of frames bounded in frames and in bytes, optionally also by a budget
//! that several pipes share; the only code of the link adapter that names flume.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};

use futures::task::AtomicWaker;

/// Bytes that several pipes share: at most `max` queued in all of them together.
#[derive(Debug)]
pub(super) struct Budget {
    used: AtomicUsize,
    max: usize,
}

impl Budget {
    pub(super) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self { used: AtomicUsize::new(0), max })
    }

    /// Bytes queued now.
    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `len` bytes if they fit.
    fn take(&self, len: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(len).filter(|&total| total <= self.max)
            })
            .is_ok()
    }

    fn give(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::AcqRel);
    }
}

/// What both ends of a pipe share: its bytes, and the sender waiting for room.
#[derive(Debug)]
struct Shared {
    own: Budget,
    common: Option<Arc<Budget>>,
    room: AtomicWaker,
}

impl Shared {
    fn take(&self, len: usize) -> bool {
        if !self.own.take(len) {
            return false;
        }
        if let Some(common) = &self.common {
            if !common.take(len) {
                self.own.give(len);
                return false;
            }
        }
        true
    }

    fn give(&self, len: usize) {
        self.own.give(len);
        if let Some(common) = &self.common {
            common.give(len);
        }
        self.room.wake();
    }
}

/// Why a frame did not go in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// No room: the frames, the bytes or the shared budget are all taken.
    Full,
    /// The receiving end is gone.
    Closed,
}

/// A pipe of at most `frames` frames and `bytes` bytes, also charged to `common` when given.
pub(super) fn pipe(frames: usize, bytes: usize, common: Option<Arc<Budget>>) -> (PipeTx, PipeRx) {
    let (tx, rx) = flume::bounded(frames);
    let shared = Arc::new(Shared {
        own: Budget { used: AtomicUsize::new(0), max: bytes },
        common,
        room: AtomicWaker::new(),
    });
    (PipeTx { tx, shared: Arc::clone(&shared) }, PipeRx { rx, shared })
}

/// The sending end of a [`pipe`].
#[derive(Debug)]
pub(super) struct PipeTx {
    tx: flume::Sender<Bytes>,
    shared: Arc<Shared>,
}

impl PipeTx {
    /// Queues `frame` if there is room now.
    pub(super) fn try_send(&self, frame: Bytes) -> Result<(), Refused> {
        let len = frame.len();
        if self.tx.is_disconnected() {
            return Err(Refused::Closed);
        }
        if !self.shared.take(len) {
            return Err(Refused::Full);
        }
        self.tx.try_send(frame).map_err(|error| {
            self.shared.give(len);
            match error {
                flume::TrySendError::Full(_) => Refused::Full,
                flume::TrySendError::Disconnected(_) => Refused::Closed,
            }
        })
    }

    /// Queues `frame`, waiting while there is no room. Fails only when the receiving end is
    /// gone. Dropping the future before it completes sends nothing.
    pub(super) async fn send(&self, frame: Bytes) -> Result<(), Refused> {
        let len = frame.len();
        std::future::poll_fn(|cx| {
            if self.tx.is_disconnected() {
                return Poll::Ready(Err(Refused::Closed));
            }
            if self.shared.take(len) {
                return Poll::Ready(Ok(()));
            }
            self.shared.room.register(cx.waker());
            // Room made between the check and the registration would otherwise go unnoticed.
            if self.shared.take(len) {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
        .await?;
        // The bytes are ours; the frames may still be full, and flume waits for them.
        let sending = self.tx.send_async(frame);
        let mut guard = Reserved { shared: &self.shared, len };
        let sent = sending.await.map_err(|_| Refused::Closed);
        if sent.is_ok() {
            guard.len = 0;
        }
        sent
    }

    /// Whether the receiving end is gone.
    pub(super) fn is_closed(&self) -> bool {
        self.tx.is_disconnected()
    }
}

/// Bytes taken for a frame not queued yet, given back if the send does not complete.
struct Reserved<'a> {
    shared: &'a Shared,
    len: usize,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if self.len > 0 {
            self.shared.give(self.len);
        }
    }
}

/// The receiving end of a [`pipe`].
#[derive(Debug)]
pub(super) struct PipeRx {
    rx: flume::Receiver<Bytes>,
    shared: Arc<Shared>,
}

impl PipeRx {
    /// The next frame; `None` once the sending end is gone and every frame read. Dropping the
    /// future loses no frame.
    pub(super) async fn recv(&self) -> Option<Bytes> {
        let frame = self.rx.recv_async().await.ok()?;
        self.shared.give(frame.len());
        Some(frame)
    }

    /// The next frame if one is queued.
    pub(super) fn try_recv(&self) -> Option<Bytes> {
        let frame = self.rx.try_recv().ok()?;
        self.shared.give(frame.len());
        Some(frame)
    }

    /// Bytes queued.
    pub(super) fn queued_bytes(&self) -> usize {
        self.shared.own.used()
    }

    /// The frames as a stream, for the hub.
    pub(super) fn into_stream(self) -> BoxStream<'static, Bytes> {
        futures::stream::unfold(self, |rx| async move {
            let frame = rx.recv().await?;
            Some((frame, rx))
        })
        .boxed()
    }
}

impl Drop for PipeRx {
    fn drop(&mut self) {
        // Frames left in a pipe nobody reads any more give their bytes back to the shared budget.
        while let Ok(frame) = self.rx.try_recv() {
            self.shared.give(frame.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn a_pipe_refuses_frames_over_its_count_and_its_bytes_and_frees_them_as_they_are_read() {
        let (tx, rx) = pipe(2, 100, None);
        tx.try_send(frame(60)).unwrap();
        assert_eq!(tx.try_send(frame(41)), Err(Refused::Full), "101 bytes");
        tx.try_send(frame(40)).unwrap();
        assert_eq!(tx.try_send(frame(0)), Err(Refused::Full), "three frames");
        assert_eq!(rx.try_recv().map(|f| f.len()), Some(60));
        assert_eq!(rx.queued_bytes(), 40);
        tx.try_send(frame(60)).unwrap();
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Closed));
    }

    #[test]
    fn pipes_that_share_a_budget_share_its_bytes_and_a_dropped_pipe_gives_its_back() {
        let budget = Budget::new(100);
        let (a, a_rx) = pipe(10, 100, Some(Arc::clone(&budget)));
        let (b, b_rx) = pipe(10, 100, Some(Arc::clone(&budget)));
        a.try_send(frame(70)).unwrap();
        assert_eq!(b.try_send(frame(31)), Err(Refused::Full));
        b.try_send(frame(30)).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a_rx);
        assert_eq!(budget.used(), 30);
        assert_eq!(b_rx.try_recv().map(|f| f.len()), Some(30));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_waiting_send_completes_once_the_receiver_makes_room() {
        let (tx, rx) = pipe(4, 10, None);
        tx.try_send(frame(8)).unwrap();
        let mut send = Box::pin(tx.send(frame(8)));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        assert!(send.as_mut().poll(&mut cx).is_pending());
        assert_eq!(rx.try_recv().map(|f| f.len()), Some(8));
        assert_eq!(send.as_mut().poll(&mut cx), Poll::Ready(Ok(())));
        drop(send);
        assert_eq!(rx.queued_bytes(), 8);

        // A send dropped before it completes gives its bytes back.
        let send = tx.send(frame(8));
        drop(send);
        assert_eq!(rx.queued_bytes(), 8);
    }
}
