//! Token buckets for [`SignalConfig::frame_rate`] and [`SignalConfig::byte_rate`].

use web_time::Instant;

#[cfg(doc)]
use super::{SignalConfig, SignalServer};

/// A token bucket: up to `burst` at once, refilled at `per_sec`, for [`SignalConfig::frame_rate`]
/// and [`SignalConfig::byte_rate`].
///
/// Checking a frame costs a few integer operations and no clock read: the bucket refills from the
/// `now` passed to [`SignalServer::handle`]. A `per_sec` of 0 allows `burst` over the connection's
/// whole life; a `burst` of 0 refuses every frame.
///
/// ```
/// use peer_signal::{RateLimit, SignalConfig};
///
/// // A server behind a proxy that already limits rates.
/// let config = SignalConfig::default()
///     .with_frame_rate(RateLimit::UNLIMITED)
///     .with_byte_rate(RateLimit::UNLIMITED);
/// assert_eq!(SignalConfig::default().frame_rate, RateLimit::new(50, 100));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RateLimit {
    /// Sustained rate: tokens added per second.
    pub per_sec: u64,
    /// Bucket size: what may arrive at once after a quiet spell. A new connection starts full.
    pub burst: u64,
}

impl RateLimit {
    /// No limit at all.
    pub const UNLIMITED: Self = Self { per_sec: u64::MAX, burst: u64::MAX };

    /// `per_sec` sustained, `burst` at once.
    pub const fn new(per_sec: u64, burst: u64) -> Self {
        Self { per_sec, burst }
    }

    /// The bucket's size in token-nanoseconds (saturating: huge limits mean no limit).
    fn capacity(self) -> u64 {
        self.burst.saturating_mul(NANOS_PER_SEC)
    }

    /// `level` after `nanos` of refill. An unlimited rate refills at once, even when no time
    /// passed between two frames: otherwise enough frames stamped with one instant would drain
    /// even the largest bucket.
    fn refill(self, level: u64, nanos: u64) -> u64 {
        if self.per_sec == u64::MAX {
            return self.capacity();
        }
        level.saturating_add(nanos.saturating_mul(self.per_sec)).min(self.capacity())
    }
}

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A connection's two token buckets, in token-nanoseconds so that refilling needs no division:
/// a frame costs 10^9 frame units and `len * 10^9` byte units; a nanosecond adds `per_sec` units.
pub(super) struct Buckets {
    refilled: Instant,
    frames: u64,
    bytes: u64,
    /// Replies charged beyond what the byte bucket held: the refill pays this first, and no frame
    /// passes until it is paid. So a node's own replies count in full against its rate, however
    /// small the requests that earn them.
    debt: u64,
}

impl Buckets {
    /// Buckets as full as `frame_rate` and `byte_rate` allow, as a new connection's are.
    pub(super) fn full(now: Instant, frame_rate: RateLimit, byte_rate: RateLimit) -> Self {
        Self { refilled: now, frames: frame_rate.capacity(), bytes: byte_rate.capacity(), debt: 0 }
    }

    /// Takes `len` bytes that the server sends out of the byte bucket; what the bucket does not
    /// hold becomes debt. A reply is never held back: the connection's next frames pay for it.
    /// Called right after [`take`](Self::take) at the same `now`, so no refill is due.
    pub(super) fn charge(&mut self, len: usize) {
        let cost = u64::try_from(len).unwrap_or(u64::MAX).saturating_mul(NANOS_PER_SEC);
        match self.bytes.checked_sub(cost) {
            Some(left) => self.bytes = left,
            None => {
                self.debt = self.debt.saturating_add(cost - self.bytes);
                self.bytes = 0;
            }
        }
    }

    /// Takes one frame of `len` bytes out of the buckets, which refill at `frame_rate` and
    /// `byte_rate`; `false` when either is short.
    pub(super) fn take(
        &mut self,
        now: Instant,
        len: usize,
        frame_rate: RateLimit,
        byte_rate: RateLimit,
    ) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.refilled = now;
        let frames = frame_rate.refill(self.frames, nanos);
        // The refill pays the debt first; an unlimited rate forgives it at once.
        let unlimited = byte_rate.per_sec == u64::MAX;
        let added = nanos.saturating_mul(byte_rate.per_sec);
        let paid = added.min(self.debt);
        self.debt = if unlimited { 0 } else { self.debt - paid };
        let bytes = byte_rate.refill(self.bytes.saturating_add(added - paid), 0);
        let cost = u64::try_from(len).unwrap_or(u64::MAX).saturating_mul(NANOS_PER_SEC);
        self.bytes = bytes;
        match (frames.checked_sub(NANOS_PER_SEC), bytes.checked_sub(cost)) {
            (Some(frames), Some(bytes)) if self.debt == 0 => {
                (self.frames, self.bytes) = (frames, bytes);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The default frame rate, which these tests do not exercise.
    const FRAMES: RateLimit = RateLimit::new(50, 100);

    #[test]
    fn unlimited_rates_never_run_dry_even_without_time_passing() {
        let unlimited = RateLimit::UNLIMITED;
        let now = Instant::now();
        let mut buckets = Buckets::full(now, unlimited, unlimited);
        // Each frame's cost saturates the byte bucket; at one instant, a finite bucket would
        // refuse the second.
        assert!((0..1000).all(|_| buckets.take(now, usize::MAX / 2, unlimited, unlimited)));
        // A limited bucket does run dry at one instant.
        let (frames, bytes) = (RateLimit::new(10, 3), RateLimit::new(256 * 1024, 512 * 1024));
        let mut buckets = Buckets::full(now, frames, bytes);
        assert_eq!((0..5).filter(|_| buckets.take(now, 1, frames, bytes)).count(), 3);
    }

    #[test]
    fn replies_beyond_the_bucket_are_debt_that_the_refill_pays_first() {
        let bytes = RateLimit::new(1000, 1000);
        let start = Instant::now();
        let mut buckets = Buckets::full(start, FRAMES, bytes);
        assert!(buckets.take(start, 10, FRAMES, bytes));
        // A reply of 5,000 bytes: 990 from the bucket, 4,010 owed.
        buckets.charge(5_000);
        // 4 s refill 4,000 bytes: not yet paid, so even a 1-byte frame is refused.
        assert!(!buckets.take(start + Duration::from_secs(4), 1, FRAMES, bytes));
        // After 4.1 s in all the debt is paid and 90 bytes are back.
        let later = start + Duration::from_millis(4_100);
        assert!(buckets.take(later, 80, FRAMES, bytes));
        assert!(!buckets.take(later, 20, FRAMES, bytes));
    }
}
