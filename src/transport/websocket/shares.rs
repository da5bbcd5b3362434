//! What one source may take of the transport before its connections are WebSockets: open
//! connections per source, new connections per second per source, and the connections still in
//! their TLS or upgrade handshake, of which the oldest makes room when there are too many.
//!
//! A source is an IPv4 address or an IPv6 prefix ([`WsConfig::ipv6_source_prefix`]). All three
//! are touched once when a connection is accepted and once when its handshake or its task ends,
//! never on the frame path.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::server::source_of;

#[cfg(doc)]
use super::WsConfig;

/// Open connections per source. Locked once when a connection is accepted and once when its
/// task ends.
pub(super) struct PerIp {
    limit: usize,
    v6_prefix: u8,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    pub(super) fn new(limit: usize, v6_prefix: u8) -> Self {
        Self { limit, v6_prefix, open: Mutex::new(HashMap::new()) }
    }

    /// A slot for one more connection from `ip`, or `None` when its source has `limit` open.
    pub(super) fn acquire(this: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let key = source_of(ip, this.v6_prefix);
        let mut open = this.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked before inserting, so that a refused address leaves no entry behind.
        if open.get(&key).is_some_and(|&count| count >= this.limit) || this.limit == 0 {
            return None;
        }
        *open.entry(key).or_insert(0) += 1;
        Some(IpSlot { per_ip: Arc::clone(this), key })
    }
}

/// One connection's place in [`PerIp`], given back when the connection's task ends.
pub(super) struct IpSlot {
    per_ip: Arc<PerIp>,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// New connections per second per source: a token bucket each, kept by the accept loop alone.
pub(super) struct AcceptRate {
    per_sec: u32,
    burst: u32,
    v6_prefix: u8,
    /// Tokens left and when they were counted. Bounded by `max_sources`: a full table first
    /// forgets the sources whose bucket has refilled, and while it is still full, sources it does
    /// not know are let through uncounted (`max_connections` still holds them).
    buckets: HashMap<IpAddr, (f64, Instant)>,
    max_sources: usize,
    /// When the full table was last swept. A sweep visits every entry, so it runs at most once
    /// per [`SWEEP_EVERY`]: otherwise every connection from a new source would cost a scan of
    /// the whole table while it is full.
    swept: Option<Instant>,
    /// Sweeps so far, for the tests.
    sweeps: u64,
}

/// How often a full table of accept rates may be swept, at most.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl AcceptRate {
    pub(super) fn new(per_sec: u32, burst: u32, v6_prefix: u8, max_sources: usize) -> Self {
        Self { per_sec, burst, v6_prefix, buckets: HashMap::new(), max_sources, swept: None, sweeps: 0 }
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(since).as_secs_f64() * f64::from(self.per_sec);
        (tokens + refill).min(f64::from(self.burst))
    }

    /// Whether a connection from `ip` may be accepted at `now`; takes its token.
    pub(super) fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let key = source_of(ip, self.v6_prefix);
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_sources {
            if self.swept.is_none_or(|swept| now.saturating_duration_since(swept) >= SWEEP_EVERY) {
                let (per_sec, max) = (f64::from(self.per_sec), f64::from(self.burst));
                self.buckets.retain(|_, (tokens, since)| {
                    *tokens + now.saturating_duration_since(*since).as_secs_f64() * per_sec < max
                });
                self.swept = Some(now);
                self.sweeps += 1;
            }
            if self.buckets.len() >= self.max_sources {
                return true;
            }
        }
        let level = match self.buckets.get(&key) {
            Some(&(tokens, since)) => self.level(tokens, since, now),
            None => f64::from(self.burst),
        };
        if level < 1.0 {
            self.buckets.insert(key, (level, now));
            return false;
        }
        self.buckets.insert(key, (level - 1.0, now));
        true
    }
}

/// Connections still in their TLS or WebSocket handshake, oldest first, each with its place
/// under [`WsConfig::max_connections`]. When there are too many, or no place is left, the oldest
/// is ended and its place goes to the newcomer: connections that stay silent cannot lock
/// newcomers out, they only shorten the time everyone has to finish the handshake.
#[derive(Default)]
pub(super) struct Upgrades {
    pending: Mutex<BTreeMap<u64, Pending>>,
}

struct Pending {
    kill: Arc<Notify>,
    slot: OwnedSemaphorePermit,
}

impl Upgrades {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Connections in their handshake now.
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Ends the oldest connection in its handshake and hands over its place.
    pub(super) fn evict_oldest(&self) -> Option<OwnedSemaphorePermit> {
        let (_, pending) = self.lock().pop_first()?;
        pending.kill.notify_one();
        Some(pending.slot)
    }

    /// Registers connection number `seq` (numbers grow with time) with its place.
    pub(super) fn register(this: &Arc<Self>, seq: u64, slot: OwnedSemaphorePermit) -> Ticket {
        let kill = Arc::new(Notify::new());
        this.lock().insert(seq, Pending { kill: Arc::clone(&kill), slot });
        Ticket { upgrades: Arc::clone(this), seq, kill }
    }
}

/// A connection's entry in [`Upgrades`] while its handshake runs.
pub(super) struct Ticket {
    upgrades: Arc<Upgrades>,
    seq: u64,
    kill: Arc<Notify>,
}

impl Ticket {
    /// Resolves when the connection was ended to make room.
    pub(super) async fn evicted(&self) {
        self.kill.notified().await;
    }

    /// The handshake is done: the connection's place, or `None` when it was ended to make room
    /// in the meantime.
    pub(super) fn finish(self) -> Option<OwnedSemaphorePermit> {
        self.upgrades.lock().remove(&self.seq).map(|pending| pending.slot)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.upgrades.lock().remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::Semaphore;

    #[test]
    fn per_ip_slots_are_counted_per_address_and_per_ipv6_prefix_and_given_back() {
        let per_ip = Arc::new(PerIp::new(2, 56));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let a1 = PerIp::acquire(&per_ip, ip("10.0.0.1")).unwrap();
        let _a2 = PerIp::acquire(&per_ip, ip("::ffff:10.0.0.1")).unwrap();
        assert!(PerIp::acquire(&per_ip, ip("10.0.0.1")).is_none());
        let _b = PerIp::acquire(&per_ip, ip("10.0.0.2")).unwrap();
        let _v6 = PerIp::acquire(&per_ip, ip("2001:db8::1")).unwrap();
        let _v6b = PerIp::acquire(&per_ip, ip("2001:db8::ffff:1")).unwrap();
        assert!(PerIp::acquire(&per_ip, ip("2001:db8:0:ff:1::9")).is_none(), "same /56");
        assert!(PerIp::acquire(&per_ip, ip("2001:db8:0:100::1")).is_some(), "another /56");
        drop(a1);
        assert!(PerIp::acquire(&per_ip, ip("10.0.0.1")).is_some());
        let open = per_ip.open.lock().unwrap().len();
        assert_eq!(open, 3, "one entry per address with open connections");

        let none = Arc::new(PerIp::new(0, 56));
        assert!(PerIp::acquire(&none, ip("10.0.0.1")).is_none());
        assert!(none.open.lock().unwrap().is_empty(), "refusals leave no entry");
    }

    #[test]
    fn a_source_gets_its_burst_then_its_rate() {
        let mut rate = AcceptRate::new(2, 3, 56, 16);
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| rate.allow(a, t0)));
        assert!(!rate.allow(a, t0));
        // Another address of the same /56 shares the bucket; another IPv4 address does not.
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(rate.allow(b, t0));
        assert!(!rate.allow(a, t0 + Duration::from_millis(400)));
        assert!(rate.allow(a, t0 + Duration::from_millis(600)));
        let v6: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let v6_same: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        assert!((0..3).all(|_| rate.allow(v6, t0)));
        assert!(!rate.allow(v6_same, t0));
    }

    #[test]
    fn the_table_of_sources_stays_bounded_and_forgets_refilled_ones_first() {
        let mut rate = AcceptRate::new(1, 1, 56, 4);
        let t0 = Instant::now();
        for i in 0..4u8 {
            assert!(rate.allow(IpAddr::from([192, 0, 2, i]), t0));
        }
        // Full of empty buckets: an unknown source passes uncounted.
        assert!(rate.allow(IpAddr::from([198, 51, 100, 1]), t0));
        assert_eq!(rate.buckets.len(), 4);
        // A second later they have refilled and are forgotten, making room.
        assert!(rate.allow(IpAddr::from([198, 51, 100, 1]), t0 + Duration::from_secs(2)));
        assert_eq!(rate.buckets.len(), 1);
    }

    #[test]
    fn a_full_table_is_swept_at_most_once_a_second_however_many_new_sources_come() {
        let mut rate = AcceptRate::new(1, 1, 56, 4);
        let t0 = Instant::now();
        for i in 0..4u8 {
            assert!(rate.allow(IpAddr::from([192, 0, 2, i]), t0));
        }
        // A thousand new sources within the second: one sweep, each let through uncounted.
        for i in 0..1000u16 {
            let [a, b] = i.to_be_bytes();
            assert!(rate.allow(IpAddr::from([198, 51, a, b]), t0 + Duration::from_millis(u64::from(i % 900))));
        }
        assert_eq!(rate.sweeps, 1);
        assert_eq!(rate.buckets.len(), 4);
        // A second later the next sweep forgets the refilled buckets.
        assert!(rate.allow(IpAddr::from([203, 0, 113, 1]), t0 + Duration::from_secs(2)));
        assert_eq!(rate.sweeps, 2);
        assert_eq!(rate.buckets.len(), 1);
    }

    #[tokio::test]
    async fn the_oldest_handshake_hands_its_place_to_a_newcomer() {
        let slots = Arc::new(Semaphore::new(2));
        let upgrades = Arc::new(Upgrades::default());
        let first = Upgrades::register(&upgrades, 1, slots.clone().try_acquire_owned().unwrap());
        let second = Upgrades::register(&upgrades, 2, slots.clone().try_acquire_owned().unwrap());
        assert!(slots.clone().try_acquire_owned().is_err());
        let place = upgrades.evict_oldest().expect("a place");
        // The first was told, and finds its place gone.
        first.evicted().await;
        assert!(first.finish().is_none());
        assert_eq!(upgrades.len(), 1);
        let third = Upgrades::register(&upgrades, 3, place);
        let held = second.finish();
        assert!(held.is_some());
        drop(third);
        assert_eq!(upgrades.len(), 0);
        assert_eq!(
            slots.available_permits(),
            1,
            "the second's place is held by its caller; the third's is back"
        );
        drop(held);
        assert_eq!(slots.available_permits(), 2);
    }
}
