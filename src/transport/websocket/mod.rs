//! The WebSocket transport, behind the `websocket` feature: tokio sockets, WebSocket framing of
//! our own on tungstenite's frame headers, and tokio-tungstenite for [`WsClient`].
//!
//! One task accepts TCP connections; each connection gets its own task, which does the WebSocket
//! handshake under a timeout and then moves frames between the socket and two bounded queues: the
//! connection's send queue, and the events queue that [`WsTransport::next_event`] reads. The
//! transport addresses connections by id in a map it alone owns, so the relay path takes no lock.
//!
//! The framing is ours so that the connection task controls its buffers and its waits: it holds no
//! read buffer while idle, writes every queued frame in one vectored system call without copying
//! it, and bounds every write, ping and closing handshake by a deadline.
//!
//! ```text
//! transport.rs   WsTransport: the map of open connections, send queues, the global send budget
//! config.rs      WsConfig: every setting and limit, defaults and validation
//! stats.rs       WsStats and the counters behind them
//! channel.rs     what the transport and the connection tasks tell each other and share
//! accept.rs      the accept loop and its limits, trusted proxies, the handshake under its deadline
//! shares.rs      what one source may hold: connections, accept rate, handshakes in progress
//! admission.rs   the application's say on each upgrade request
//! handshake.rs   the upgrade request: head scan, checks, the 101 answer
//! conn.rs        a connection's task: moves bytes, sleeps until the state's next deadline
//! state.rs       ConnState: a connection's rules and deadlines, without I/O
//! frame.rs       the frame reader and the frames written, without I/O
//! link.rs        the byte stream: TCP, or TLS over it
//! certs.rs       wss:// certificates and the client's trust roots (feature `tls`)
//! client.rs      WsClient, its builder and WsClientError
//! timer.rs       TokioTimer, tokio's clock for the client
//! fuzzing.rs     entry points for the fuzz targets
//! ```

mod accept;
mod admission;
#[cfg(feature = "tls")]
mod certs;
mod channel;
mod client;
mod config;
mod conn;
mod frame;
#[doc(hidden)]
pub mod fuzzing;
mod handshake;
mod link;
mod shares;
mod state;
mod stats;
mod timer;
mod transport;

pub use self::admission::{Admission, AdmissionHook, UpgradeRequest};
#[cfg(feature = "tls")]
pub use self::certs::{ServerTls, TlsError, TlsRoots};
pub use self::client::{WsClient, WsClientBuilder, WsClientError};
pub use self::config::WsConfig;
pub use self::stats::{WsStats, WsStatsHandle};
pub use self::timer::TokioTimer;
pub use self::transport::WsTransport;
