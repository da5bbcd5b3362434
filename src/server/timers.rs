//! The connections' deadlines as one heap of `(deadline, connection)` entries, re-armed lazily:
//! refreshing a deadline that moves later costs nothing, and the entries that closed or re-armed
//! connections leave behind are swept out before they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use web_time::Instant;

use crate::ids::ConnId;

/// Live entries may be outnumbered by stale ones up to twice over, plus this many, before a sweep.
const SLACK: usize = 1024;

/// One entry per live connection at its armed deadline, plus stale entries.
#[derive(Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, ConnId)>>,
}

impl Timers {
    /// The earliest entry's deadline, stale or not: it may be early, never late.
    pub(super) fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Instant, ConnId)> {
        let &Reverse((at, conn)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some((at, conn))
    }

    /// Adds an entry for `conn` at `at`, which the caller records as the connection's armed
    /// deadline. A host may feed many inputs between ticks (or none at all): once entries exceed
    /// twice the `live` connections (plus a slack), the heap is rebuilt from `armed`, every live
    /// connection's armed deadline. The rebuild costs O(live + stale), paid for by the stale
    /// entries' own pushes.
    pub(super) fn arm<I>(&mut self, at: Instant, conn: ConnId, live: usize, armed: impl FnOnce() -> I)
    where
        I: IntoIterator<Item = (Instant, ConnId)>,
    {
        self.heap.push(Reverse((at, conn)));
        if self.heap.len() > live.saturating_mul(2).saturating_add(SLACK) {
            self.heap = armed().into_iter().map(Reverse).collect();
        }
    }

    /// Drops every entry.
    pub(super) fn clear(&mut self) {
        self.heap.clear();
    }

    /// Entries held, stale ones included.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn due_entries_come_out_earliest_first_and_the_rest_stay() {
        let start = Instant::now();
        let mut timers = Timers::default();
        for (secs, conn) in [(3, 1), (1, 2), (2, 3), (9, 4)] {
            timers.arm(start + Duration::from_secs(secs), ConnId::new(conn), 4, Vec::new);
        }
        assert_eq!(timers.next(), Some(start + Duration::from_secs(1)));
        let due: Vec<u64> = std::iter::from_fn(|| timers.pop_due(start + Duration::from_secs(3)))
            .map(|(_, conn)| conn.get())
            .collect();
        assert_eq!(due, vec![2, 3, 1]);
        assert_eq!(timers.next(), Some(start + Duration::from_secs(9)));
    }

    #[test]
    fn stale_entries_are_swept_from_the_live_deadlines() {
        let at = Instant::now();
        let live = [(at, ConnId::new(1)), (at, ConnId::new(2))];
        let mut timers = Timers::default();
        for n in 0..10_000 {
            timers.arm(at, ConnId::new(100 + n), live.len(), || live);
            assert!(timers.len() <= 2 * live.len() + SLACK + 1);
        }
        // The last sweep left only the live entries, and what was armed since.
        assert!(timers.len() < SLACK, "{}", timers.len());
    }
}
