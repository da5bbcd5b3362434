//! What the application can ask of the server about its nodes: [`Command`] in through
//! [`SignalIn::Command`], [`CommandReply`] out through [`SignalOut::Reply`].

use std::net::IpAddr;

use crate::codec::Codec;
use crate::error::ConfigError;
use crate::ids::ConnId;
use crate::protocol::{NodeID, NodeInfo, WSSignalMessageToNode};
use crate::turn::TurnConfig;

#[cfg(doc)]
use super::{SignalIn, SignalOut, SignalServer};

/// A node announced on this server, as the application sees it: in [`SignalEvent::NewNode`] and
/// in [`CommandReply::Nodes`].
///
/// [`SignalEvent::NewNode`]: super::SignalEvent::NewNode
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectedNode {
    /// Its id: its public key (`info.id()`).
    pub id: NodeID,
    /// What it announced.
    pub info: NodeInfo,
    /// The connection it announced on.
    pub conn: ConnId,
    /// How that connection encodes its frames.
    pub codec: Codec,
    /// The peer's IP address, where the transport reported one (see [`SignalIn::Opened`]).
    pub addr: Option<IpAddr>,
}

/// What the application asks of the server, fed as [`SignalIn::Command`]. Each is answered by
/// one [`SignalOut::Reply`] with the same token: before [`SignalServer::handle`] returns, or, in
/// a cluster, for a node on another instance, once the bus has answered (within 10 s).
///
/// [`ListNodes`](Self::ListNodes) lists this server's nodes; the others reach a node wherever it
/// is on the network.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// List the announced nodes, in no particular order: [`CommandReply::Nodes`].
    ListNodes,
    /// Send `node` an `Error` with `reason`, then close its connection, as for any other close:
    /// the node leaves ([`SignalEvent::NodeLeft`](super::SignalEvent::NodeLeft)) and the error is
    /// counted as `disconnected`. [`CommandReply::Done`], or [`CommandReply::UnknownNode`]. In a
    /// cluster, a node on another instance is reached through the bus ([`ClusterOut::Control`](crate::ClusterOut::Control)):
    /// the reply comes when the bus says whether an instance holds it, within 10 s.
    Disconnect {
        /// The node.
        node: NodeID,
        /// What the node is told. Cut to 128 bytes, as every error text the server sends.
        reason: String,
    },
    /// Send `node` a message of the application's, encoded in the node's codec, for example a
    /// new `SystemConfig`. It is not charged to the node's byte budget.
    /// [`CommandReply::Done`] once queued, or [`CommandReply::UnknownNode`].
    Send {
        /// The node.
        node: NodeID,
        /// The message.
        message: WSSignalMessageToNode,
    },
    /// Where `node` is: [`CommandReply::Nodes`] with it when it is here,
    /// [`CommandReply::Elsewhere`] when another instance of the cluster holds it, or
    /// [`CommandReply::UnknownNode`].
    Locate {
        /// The node.
        node: NodeID,
    },
    /// Replace [`SignalConfig::turn`](super::SignalConfig::turn), for example to rotate the
    /// secret: nodes get credentials from the new one from now on (those they hold stay valid
    /// where the TURN server still accepts the old secret). `None` stops issuing them.
    /// [`CommandReply::Done`], or [`CommandReply::Refused`] for a setting
    /// [`SignalConfig::validate`](super::SignalConfig::validate) refuses.
    SetTurn(Option<Box<TurnConfig>>),
}

/// The server's answer to a [`Command`], in [`SignalOut::Reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandReply {
    /// The announced nodes, for [`Command::ListNodes`].
    Nodes(Vec<ConnectedNode>),
    /// Done: the node was told and closed, or its message queued.
    Done,
    /// No node with this id is announced on this server (nor, in a cluster, on another instance).
    UnknownNode(NodeID),
    /// For [`Command::Locate`]: the node is announced on another instance of the cluster.
    Elsewhere(NodeID),
    /// The new setting is refused, for this reason; the server keeps the old one.
    Refused(ConfigError),
}
