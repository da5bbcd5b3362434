//! Where connections come from: every open connection counted under its source (an IPv4 address,
//! or an IPv6 prefix), so that a full server makes room at the expense of the source that holds
//! most, instead of refusing everybody who comes after a flood.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use rustc_hash::FxHashSet;

use crate::ids::ConnId;

/// What to do with a new connection when [`SignalConfig::max_connections`] are open and every
/// one of them has announced (connections that have not announced always make room first, oldest
/// first).
///
/// [`SignalConfig::max_connections`]: crate::SignalConfig::max_connections
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Refuse the newcomer with `server full`. Whoever filled the server keeps it.
    Refuse,
    /// The default: if some source (an IPv4 address, or an IPv6 prefix of
    /// [`SignalConfig::ipv6_source_prefix`](crate::SignalConfig::ipv6_source_prefix) bits) holds
    /// at least two connections more than the newcomer's source, the node of that source that has
    /// been silent longest is closed with `server full` and the newcomer takes its place;
    /// otherwise the newcomer is refused. So a full server converges to equal shares per source:
    /// whoever fills it from few sources loses connections to every new source, and a node that
    /// is alone on its address is never closed to make room. Connections whose transport reports
    /// no address count as one source.
    #[default]
    EvictFromLargestSource,
}

/// The source of an address: IPv4 addresses (IPv4-mapped IPv6 ones too) as they are, IPv6
/// addresses cut to their first `v6_prefix` bits (at most 128).
pub(crate) fn source_of(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
        v4 => v4,
    }
}

/// Open connections by source.
#[derive(Debug)]
pub(super) struct Sources {
    v6_prefix: u8,
    /// Keyed by addresses peers pick within their own ranges: SipHash, not a fast hash.
    conns: HashMap<Option<IpAddr>, FxHashSet<ConnId>>,
    /// Every source once, by how many connections it holds.
    by_size: BTreeSet<(usize, Option<IpAddr>)>,
}

impl Sources {
    pub(super) fn new(v6_prefix: u8) -> Self {
        Self { v6_prefix, conns: HashMap::new(), by_size: BTreeSet::new() }
    }

    fn key(&self, addr: Option<IpAddr>) -> Option<IpAddr> {
        addr.map(|ip| source_of(ip, self.v6_prefix))
    }

    /// Connections open from `addr`'s source.
    pub(super) fn count(&self, addr: Option<IpAddr>) -> usize {
        self.conns.get(&self.key(addr)).map_or(0, FxHashSet::len)
    }

    pub(super) fn add(&mut self, conn: ConnId, addr: Option<IpAddr>) {
        let key = self.key(addr);
        let set = self.conns.entry(key).or_default();
        let before = set.len();
        if set.insert(conn) {
            self.by_size.remove(&(before, key));
            self.by_size.insert((before + 1, key));
        }
    }

    pub(super) fn remove(&mut self, conn: ConnId, addr: Option<IpAddr>) {
        let key = self.key(addr);
        let Some(set) = self.conns.get_mut(&key) else { return };
        let before = set.len();
        if !set.remove(&conn) {
            return;
        }
        self.by_size.remove(&(before, key));
        if set.is_empty() {
            self.conns.remove(&key);
        } else {
            self.by_size.insert((before - 1, key));
            if set.capacity() > 4 * set.len().max(4) {
                set.shrink_to_fit();
            }
        }
    }

    /// The connections of the source that holds most, if it holds at least `margin` more than
    /// `addr`'s source.
    pub(super) fn largest_beyond(&self, addr: Option<IpAddr>, margin: usize) -> Option<&FxHashSet<ConnId>> {
        let (size, key) = self.by_size.last()?;
        (*size >= self.count(addr).saturating_add(margin)).then(|| self.conns.get(key)).flatten()
    }

    pub(super) fn clear(&mut self) {
        self.conns.clear();
        self.by_size.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_cut_to_their_prefix_and_ipv4_ones_kept_whole() {
        let a: IpAddr = "2001:db8:1:2ff:1:2:3:4".parse().unwrap();
        assert_eq!(source_of(a, 56), "2001:db8:1:200::".parse::<IpAddr>().unwrap());
        assert_eq!(source_of(a, 48), "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(source_of(a, 128), a);
        assert_eq!(source_of(a, 0), "::".parse::<IpAddr>().unwrap());
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_of(mapped, 56), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_largest_source_is_found_and_counts_follow_opens_and_closes() {
        let mut sources = Sources::new(56);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap());
        let b2: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        for i in 0..3 {
            sources.add(ConnId::new(i), Some(a));
        }
        sources.add(ConnId::new(10), Some(b));
        sources.add(ConnId::new(11), Some(b2));
        assert_eq!(sources.count(Some(b)), 2, "one /56, one source");
        // A newcomer from a fresh source: `a` holds 3, at least 2 more than 0.
        assert_eq!(sources.largest_beyond(None, 2).map(FxHashSet::len), Some(3));
        // From `b`'s source (2 open), 3 is not 2 more.
        assert!(sources.largest_beyond(Some(b), 2).is_none());
        sources.remove(ConnId::new(0), Some(a));
        sources.remove(ConnId::new(0), Some(a));
        assert_eq!(sources.count(Some(a)), 2);
        for i in 1..3 {
            sources.remove(ConnId::new(i), Some(a));
        }
        assert_eq!(sources.count(Some(a)), 0);
        assert_eq!(sources.by_size.len(), 1);
        assert_eq!(sources.conns.len(), 1);
    }
}
