//! Identifiers shared by the core and the adapters.

use std::fmt;

/// A map keyed by [`ConnId`]. Connection ids are counters the transport picks, never input from
/// a peer, so a fast hash without DoS resistance serves: it keeps hashing off the relay path's
/// profile (SipHash was about 2% of a relay's server CPU).
pub(crate) type ConnMap<V> = rustc_hash::FxHashMap<ConnId, V>;

/// A transport's handle for one connection. The transport picks the numbers; they must be unique
/// among open connections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// Wraps a transport's connection number.
    pub const fn new(id: u64) -> Self {
        Self(id)
    }

    /// The transport's connection number.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.0)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
