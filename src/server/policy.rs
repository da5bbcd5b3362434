//! Admission at announce: the application's word on a node whose signature verified, before it
//! joins. Sans-IO and synchronous, like the rest of the core.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo};

/// What an [`AnnouncePolicy`] decides.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The node joins.
    Allow,
    /// The node gets `Error(reason)` and its connection is closed.
    Deny(String),
}

/// Decides, for each node whose announce verified, whether it may join
/// ([`SignalConfig::announce_policy`](crate::SignalConfig::announce_policy)). It sees the
/// [`NodeInfo`] the node announced (its id is its key, which it just proved it holds) and the
/// connection. It runs inside [`SignalServer::handle`](crate::SignalServer::handle): keep it quick.
///
/// ```
/// use peer_signal::{AnnouncePolicy, NodeInfo, SignalConfig, Verdict};
///
/// // Only nodes of one client program.
/// let policy = AnnouncePolicy::new(|info: &NodeInfo, _conn| {
///     if info.client == "libc" { Verdict::Allow } else { Verdict::Deny("only fledger nodes".into()) }
/// });
/// let config = SignalConfig::default().with_announce_policy(policy);
/// ```
#[derive(Clone)]
pub struct AnnouncePolicy(Arc<Decide>);

/// The function behind an [`AnnouncePolicy`].
type Decide = dyn Fn(&NodeInfo, ConnId) -> Verdict + Send + Sync;

impl AnnouncePolicy {
    /// A policy that calls `decide`.
    pub fn new(decide: impl Fn(&NodeInfo, ConnId) -> Verdict + Send + Sync + 'static) -> Self {
        Self(Arc::new(decide))
    }

    /// Only these ids join; any other gets `Error("node not allowed")`.
    pub fn allow_ids(ids: impl IntoIterator<Item = NodeID>) -> Self {
        let ids: HashSet<NodeID> = ids.into_iter().collect();
        Self::new(move |info, _| if ids.contains(&info.id()) { Verdict::Allow } else { denied() })
    }

    /// Every id but these joins; these get `Error("node not allowed")`.
    pub fn deny_ids(ids: impl IntoIterator<Item = NodeID>) -> Self {
        let ids: HashSet<NodeID> = ids.into_iter().collect();
        Self::new(move |info, _| if ids.contains(&info.id()) { denied() } else { Verdict::Allow })
    }

    pub(crate) fn decide(&self, info: &NodeInfo, conn: ConnId) -> Verdict {
        (self.0)(info, conn)
    }
}

fn denied() -> Verdict {
    Verdict::Deny("node not allowed".into())
}

impl fmt::Debug for AnnouncePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnnouncePolicy").finish_non_exhaustive()
    }
}

/// Two policies are equal when one is a clone of the other.
impl PartialEq for AnnouncePolicy {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for AnnouncePolicy {}
