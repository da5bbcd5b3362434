//! In a web page (feature `browser`, `wasm32-unknown-unknown`): the client over the browser's
//! `WebSocket` ([`BrowserWs`]), peer links over `RTCDataChannel` ([`attach_channel`],
//! [`link_client`], [`host_signalling`]), and the page's clock ([`BrowserTimer`]).
//!
//! Browser objects are not `Send`; none of them crosses into the client. Each adapter keeps its
//! channel in a local task of the page and hands frames to the client through the bounded queues
//! of a peer link, so a page's node is an [`AsyncClient`](crate::AsyncClient)`<`[`LinkClient`](crate::LinkClient)`>`
//! with every method of the native client: over the server's WebSocket and over a neighbour's
//! data channel alike.

mod channel;
mod link;
mod timer;
mod ws;

pub use link::{attach_channel, host_signalling, link_client};
pub use timer::{BrowserTimer, Sleep};
pub use ws::BrowserWs;

/// A node in a page: [`AsyncClient`](crate::AsyncClient) over a [`BrowserWs`] connection or a
/// [`link_client`].
pub type BrowserClient = crate::client::AsyncClient<crate::transport::peer_link::LinkClient>;
