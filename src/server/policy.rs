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
/// A policy that panics does not take the server down: the panic is caught, the node is denied
/// with `node not allowed` as if the policy had said so, and the server goes on serving every
/// other node. (The panic hook still runs, and prints the panic as usual; with `panic = "abort"`
/// in the build profile nothing can be caught, and the process ends.) A policy that holds a lock
/// should expect to find it poisoned after such a panic.
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

    /// The policy's verdict; a panic in it is a denial.
    pub(crate) fn decide(&self, info: &NodeInfo, conn: ConnId) -> Verdict {
        // The policy sees only shared references to data the server does not change during the
        // call, and the server's own state is consistent across it: nothing is half-done if it
        // unwinds. What the closure captured is its own, as with any panic in a callback.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.0)(info, conn))) {
            Ok(verdict) => verdict,
            Err(_) => {
                crate::telemetry::policy_panicked(conn);
                denied()
            }
        }
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
