//! What crosses the server's boundary: [`SignalIn`] in, [`SignalOut`] (with its [`SignalEvent`]s)
//! out, and the [`ServerStats`] counters.

use std::collections::BTreeMap;
use std::net::IpAddr;

use bytes::Bytes;

use crate::cluster::{ClusterIn, ClusterOut, ClusterStats};
use crate::codec::Codec;
use crate::error::CloseReason;
#[cfg(doc)]
use crate::error::ProtocolError;
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeStat};

use super::control::{Command, CommandReply, ConnectedNode};
#[cfg(doc)]
use super::SignalServer;

/// Something the host observed, fed to [`SignalServer::handle`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SignalIn {
    /// The transport accepted a connection that speaks `codec`.
    Opened {
        /// The new connection.
        conn: ConnId,
        /// How its frames are encoded.
        codec: Codec,
        /// The peer's IP address, if the transport knows one. The server only reports it, in
        /// [`SignalEvent::NewNode`] and in the [`ConnectedNode`]s it lists.
        addr: Option<IpAddr>,
    },
    /// A frame arrived; the server decodes it with the connection's codec.
    Frame {
        /// Where it came from.
        conn: ConnId,
        /// The frame's payload.
        frame: Bytes,
    },
    /// The connection went away (the peer closed it, or the transport did).
    Closed {
        /// The connection.
        conn: ConnId,
    },
    /// The transport's send queue for `conn` passed half of its capacity (`busy: true`), or
    /// drained below it again (`busy: false`); see [`TransportEvent::Busy`](crate::TransportEvent::Busy).
    ///
    /// While a connection is busy, `PeerSetup` messages for its node are not forwarded: each
    /// sender gets `destination busy` (no strike), so that several senders cannot get a node
    /// that reads slower than they write closed as a slow reader. Pushes of joins skip it too,
    /// and its own `ListIDsRequest`s go unanswered (counted in
    /// [`ServerStats::unanswered_busy`]): a node that does not read its replies must not make
    /// the server queue more of them. Error replies still go out, charged to it. Ignored for
    /// unknown connections.
    Busy {
        /// The connection.
        conn: ConnId,
        /// Whether its send queue is over half full.
        busy: bool,
    },
    /// A deadline from [`SignalServer::poll_timeout`] has passed.
    Tick,
    /// Close every connection and stop.
    Stop,
    /// What the other instances said, from a [`Backplane`](crate::Backplane). Ignored by a
    /// server made without [`SignalServer::with_cluster`]. Boxed, so that the inputs of a server
    /// without a cluster stay as small as they were.
    Cluster(Box<ClusterIn>),
    /// The application's request about its nodes. Answered by exactly one [`SignalOut::Reply`]
    /// with the same `token` (the host's choice, only handed back), unless the server has
    /// stopped: then it is ignored, as every input.
    Command {
        /// Handed back in the reply.
        token: u64,
        /// What to do. Boxed, so that the inputs on the relay path stay small.
        command: Box<Command>,
    },
}

/// Something the host must do or may want to know, drained from [`SignalServer::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalOut {
    /// Send `frame` on `conn`, as a text frame for [`Codec::Json`], binary for [`Codec::Bincode`].
    Send {
        /// The destination.
        conn: ConnId,
        /// The encoded message. Cloning it is cheap: broadcast frames share one buffer.
        frame: Bytes,
    },
    /// Close `conn`, after sending the frames queued for it before this output. The server has
    /// already forgotten it; a later [`SignalIn::Closed`] for it is ignored.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
    /// For the application.
    Event(SignalEvent),
    /// For the other instances, through a [`Backplane`](crate::Backplane). Only a server made
    /// with [`SignalServer::with_cluster`] emits it. Boxed, so that the outputs of a server
    /// without a cluster stay as small as they were.
    Cluster(Box<ClusterOut>),
    /// The answer to the [`SignalIn::Command`] with this `token`. It comes after the frames and
    /// closes the command caused.
    Reply {
        /// The command's token.
        token: u64,
        /// The answer. Boxed, as the command.
        reply: Box<CommandReply>,
    },
}

/// What happened, for the application's logs, metrics and logic.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// A node announced successfully: who it is, its connection and, where the transport knows
    /// it, its address. A node that takes over its id from an older connection produces
    /// `NodeLeft` for the old connection first, then `NewNode`. Boxed, so that outputs stay
    /// small.
    NewNode(Box<ConnectedNode>),
    /// An announced node disconnected, was evicted or was replaced.
    NodeLeft(NodeID),
    /// An announced node reported statistics about its peers.
    NodeStats {
        /// The reporting node.
        from: NodeID,
        /// Its report.
        stats: Vec<NodeStat>,
    },
    /// The server has stopped: every connection was closed and every node is gone (no
    /// `NodeLeft` is emitted for them). It ignores everything from now on.
    Stopped,
}

/// Counters, for metrics. Get them from [`SignalServer::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Open connections, announced or not.
    pub connections: usize,
    /// Announced nodes.
    pub nodes: usize,
    /// Connections that have not announced yet.
    pub pending_handshakes: usize,
    /// Frames received.
    pub frames_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// `PeerSetup` messages forwarded.
    pub relays: u64,
    /// Successful announces.
    pub joins: u64,
    /// `ListIDsRequest`s left unanswered because the requester's own send queue was busy (see
    /// [`SignalIn::Busy`]): it has not read the replies it already has.
    pub unanswered_busy: u64,
    /// TURN credentials issued (see [`SignalConfig::turn`](crate::SignalConfig::turn)).
    pub turn_credentials: u64,
    /// Error replies, by [`ProtocolError::kind`]. Evictions are `idle_timeout`; pending
    /// connections closed to make room for newer ones are `handshake_timeout`.
    pub errors: BTreeMap<&'static str, u64>,
    /// The cluster's counters, for a server made with [`SignalServer::with_cluster`].
    pub cluster: Option<ClusterStats>,
}
