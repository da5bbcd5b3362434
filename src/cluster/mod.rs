//! Several servers, one network: what a [`SignalServer`](crate::SignalServer) says to and hears
//! from the other instances ([`ClusterOut`], [`ClusterIn`]), and the [`Backplane`] that carries it.
//!
//! The core stays sans-IO: it never learns how the instances talk. A backplane turns
//! [`ClusterOut`] into messages on a shared bus (Redis behind the `redis` feature, or
//! [`MemoryBus`] in one process) and reports what the bus says as [`ClusterIn`]. The
//! [`Driver`](crate::Driver) connects the two, as it connects a [`Transport`](crate::Transport).

use async_trait::async_trait;
use bytes::Bytes;

use crate::codec::Codec;
use crate::error::{ConfigError, ProtocolError};
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo, WSSignalMessageToNode};

#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;
pub(crate) mod state;
pub(crate) mod wire;

/// The settings of a server that shares its network with other instances; pass it to
/// [`SignalServer::with_cluster`](crate::SignalServer::with_cluster).
///
/// ```
/// use peer_signal::ClusterConfig;
///
/// let config = ClusterConfig::default().with_max_remote_pool(500);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// Nodes of other instances kept for lists: each [`ClusterIn::Sample`] replaces the pool
    /// with at most this many. Lists mix them with the local nodes in proportion to their
    /// numbers, never waiting on the network. Default 1,000 (about 250 KB).
    pub max_remote_pool: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self { max_remote_pool: 1000 }
    }
}

setters! {
    ClusterConfig {
        with_max_remote_pool => max_remote_pool: usize,
    }
}

impl ClusterConfig {
    /// Checks that a server can work with these settings: `max_remote_pool` more than zero.
    ///
    /// # Errors
    ///
    /// The refused setting, as a [`ConfigError`] that names it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::limits::nonzero("max_remote_pool", self.max_remote_pool)
    }
}

/// What a clustered server tells the other instances, through [`SignalOut::Cluster`](crate::SignalOut::Cluster).
///
/// A backplane must handle them in order: a `Left` may follow a `Joined` for the same id at
/// once, when a node takes over its id from another connection of the same instance.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterOut {
    /// `id` announced on `conn` here: claim it on the bus, route its frames here, and tell the
    /// instances that hold it that a newer connection took over. Answer with
    /// [`ClusterIn::Claimed`] once the claim is ranked.
    Joined {
        /// The node.
        id: NodeID,
        /// Its connection here.
        conn: ConnId,
        /// What other instances list for it.
        info: NodeInfo,
    },
    /// `id`, announced on `conn`, is no longer here: stop routing its frames here.
    Left {
        /// The node.
        id: NodeID,
        /// The connection it was on.
        conn: ConnId,
    },
    /// A `PeerSetup` from the local node `from` for `to`, which is not here: deliver it to the
    /// instance that holds `to` as [`ClusterIn::Frame`], or answer
    /// [`ClusterIn::Undeliverable`] at once when none does or the bus is down.
    Relay {
        /// The sender, a node here.
        from: NodeID,
        /// The destination.
        to: NodeID,
        /// How `frame` is encoded.
        codec: Codec,
        /// The sender's frame, as it arrived.
        frame: Bytes,
    },
    /// The application's command ([`Command::Disconnect`](crate::Command::Disconnect),
    /// [`Command::Send`](crate::Command::Send)) for `to`, which is not here: carry it to the
    /// instance that holds `to` as [`ClusterIn::Control`], and answer [`ClusterIn::Controlled`]
    /// with `token` and whether one did (at once, unreached, when the bus is down).
    Control {
        /// The server's number for the command, handed back in `Controlled`.
        token: u64,
        /// The node.
        to: NodeID,
        /// What to do. Boxed: a message can be long.
        control: Box<Control>,
    },
    /// A frame from another instance could not be delivered here: its destination is busy, or
    /// not here (it left while the frame was on its way). Tell its sender `to`, a node of
    /// another instance, as [`ClusterIn::Undeliverable`] there. (A frame for a node that moved
    /// to a newer connection elsewhere is dropped and counted, not bounced: the instance that
    /// holds it now received it too.)
    Undeliverable {
        /// The sender of the frame, on another instance.
        to: NodeID,
        /// The destination it could not reach.
        about: NodeID,
        /// Why.
        reason: Undelivered,
    },
}

/// What the other instances told a clustered server, fed as [`SignalIn::Cluster`](crate::SignalIn::Cluster).
///
/// Everything here came over a network from other processes: the server checks it like a
/// frame from a node (sizes, codecs, that a frame is a `PeerSetup` for the node it is
/// delivered to) and counts what it refuses in [`ClusterStats::rejected`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterIn {
    /// The claim of `id` on `conn` ([`ClusterOut::Joined`]) has the rank `gen` on the bus: a
    /// claim with a higher rank is newer. Ranks are unique across the bus.
    Claimed {
        /// The node.
        id: NodeID,
        /// The connection of the claim.
        conn: ConnId,
        /// Its rank.
        gen: u64,
    },
    /// Another instance claimed `id` with rank `gen`. A local node with an older claim is
    /// closed with `New Connection with same ID`; one with a newer claim stays. `u64::MAX`
    /// beats every claim: a backplane that finds, on reconnecting, that another instance holds
    /// an id uses it.
    TakenOver {
        /// The node.
        id: NodeID,
        /// The rank of the other claim.
        gen: u64,
    },
    /// A `PeerSetup` from another instance for the local node `to`.
    Frame {
        /// The destination, a node here.
        to: NodeID,
        /// How `frame` is encoded.
        codec: Codec,
        /// The frame its sender sent.
        frame: Bytes,
    },
    /// A relay from the local node `to` could not be delivered to `about`: `to` gets the
    /// matching `Error`, with no strike.
    Undeliverable {
        /// The sender, a node here.
        to: NodeID,
        /// The destination it could not reach.
        about: NodeID,
        /// Why.
        reason: Undelivered,
    },
    /// A fresh sample of the nodes of other instances, and how many they hold in all: replaces
    /// the pool that lists draw from.
    Sample {
        /// Some of the remote nodes.
        nodes: Vec<NodeInfo>,
        /// How many remote nodes there are, for mixing lists in proportion.
        total: u64,
    },
    /// The application of another instance has a command for the local node `to`.
    Control {
        /// The node.
        to: NodeID,
        /// What to do.
        control: Box<Control>,
    },
    /// Whether the command `token` ([`ClusterOut::Control`]) reached an instance that holds its
    /// node.
    Controlled {
        /// The server's number for the command.
        token: u64,
        /// Whether an instance holds the node.
        reached: bool,
    },
    /// The bus works: relays to other instances go out.
    Up,
    /// The bus is unreachable: the server keeps serving its own nodes, answers relays to others
    /// at once with `unknown destination`, and empties its pool of remote nodes.
    Down,
}

/// A command of an application for a node on another instance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Control {
    /// Send the node an `Error` with this reason and close it ([`Command::Disconnect`](crate::Command::Disconnect)).
    Disconnect(String),
    /// Send the node this message ([`Command::Send`](crate::Command::Send)).
    Send(WSSignalMessageToNode),
    /// Nothing: whether an instance holds the node is the answer ([`Command::Locate`](crate::Command::Locate)).
    Locate,
}

/// Why a relay did not reach its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Undelivered {
    /// No instance holds the destination (or the bus is down): `unknown destination`.
    Unknown,
    /// The destination's send queue is over half full: `destination busy`.
    Busy,
}

impl Undelivered {
    /// The error its sender gets.
    pub fn error(self, about: NodeID) -> ProtocolError {
        match self {
            Self::Unknown => ProtocolError::UnknownDestination(about),
            Self::Busy => ProtocolError::DestinationBusy(about),
        }
    }
}

/// Counters of a clustered server, in [`ServerStats::cluster`](crate::ServerStats::cluster).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterStats {
    /// Whether the backplane reported the bus up last.
    pub up: bool,
    /// `PeerSetup` frames handed to the backplane for other instances.
    pub relays_out: u64,
    /// `PeerSetup` frames from other instances delivered to local nodes.
    pub relays_in: u64,
    /// Relays from local nodes that reached no one, answered with an error.
    pub undeliverable: u64,
    /// Frames from other instances not delivered here: the node is busy or has left (then its
    /// sender is told), or it moved to a newer connection elsewhere.
    pub bounced: u64,
    /// Inputs from the bus refused by the checks (too large, not a `PeerSetup` for its
    /// destination, strings over the limits).
    pub rejected: u64,
    /// Local nodes closed because a newer connection with their id arrived elsewhere.
    pub taken_over: u64,
    /// Remote nodes in the pool that lists draw from.
    pub pool: usize,
    /// Remote nodes in all, as the last sample said.
    pub remote_nodes: u64,
}

/// Carries a clustered server's [`ClusterOut`] to the other instances and their answers back,
/// as [`ClusterIn`]; the [`Driver`](crate::Driver) connects it to the server.
///
/// Like a [`Transport`](crate::Transport), a backplane decides nothing about the protocol. Its
/// duties:
///
/// 1. [`send`](Self::send) never waits: it queues, and a bounded queue that is full turns a
///    [`ClusterOut::Relay`] into [`ClusterIn::Undeliverable`] at once (and counts it), so that no
///    sender waits for an answer that will not come.
/// 2. Presence (`Joined`, `Left`) is state, not a message: a backplane keeps the ids it holds
///    and registers them again after the bus comes back, with no input from the server.
/// 3. Report [`ClusterIn::Down`] when the bus stops answering within its deadline, and
///    [`ClusterIn::Up`] once everything is registered again.
/// 4. Check what comes from the bus (versions, sizes) before it becomes a [`ClusterIn`].
/// 5. [`next_event`](Self::next_event) is cancel-safe.
///
/// [`MemoryBus`] is the in-process backplane; `RedisBackplane` (feature `redis`) the one for
/// several processes.
#[async_trait]
pub trait Backplane: Send {
    /// Waits for what the bus said next; `None` once the backplane has shut down for good.
    ///
    /// Must be cancel-safe: dropping the future before it completes loses no event.
    async fn next_event(&mut self) -> Option<ClusterIn>;

    /// Hands over an output of the server; must not wait.
    fn send(&mut self, output: ClusterOut);
}

pub use memory::{MemoryBackplane, MemoryBus};
#[cfg(feature = "redis")]
pub use redis::{ClusterKey, RedisBackplane, RedisConfig, RedisError, RedisHandle, RedisStats};
