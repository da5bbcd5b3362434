//! peer-signal
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

mod codec;
mod crypto;
mod error;
mod protocol;
mod server;

pub use codec::Codec;
pub use crypto::{sign_challenge, verify_challenge};
pub use error::{CodecError, ProtocolError, TransportError};
pub use protocol::{
    FledgerConfig, MessageAnnounce, Modules, NodeID, NodeInfo, NodeStat, PeerInfo, PeerMessage, RealmID,
    WSSignalMessageFromNode, WSSignalMessageToNode, SIGNAL_VERSION, U256,
};
pub use server::{
    CloseReason, ConnId, ServerStats, SignalConfig, SignalEvent, SignalIn, SignalOut, SignalServer,
};

mod client;
mod driver;
mod transport;

pub use client::{AsyncClient, ClientConnection, ClientError, ClientEvent, SignalClient};
pub use driver::{Driver, DriverEvents, DriverHandle};
pub use transport::memory::{MemoryClient, MemoryConnector, MemoryTransport};
pub use transport::{Transport, TransportEvent};
