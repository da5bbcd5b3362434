//! [`BrowserWs`]: connections to a signalling server over the page's `WebSocket`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::channel::oneshot;
use futures::future::{select, Either};
use web_sys::WebSocket;

use super::channel::join;
use super::timer::BrowserTimer;
use crate::client::Reconnect;
use crate::codec::Codec;
use crate::error::TransportError;
use crate::transport::peer_link::{LinkClient, LinkConfig};
use crate::transport::BINCODE_SUBPROTOCOL;

/// Opens connections to a signalling server over the browser's `WebSocket`, each one a
/// [`LinkClient`] ready for [`AsyncClient`](crate::AsyncClient): JSON in text frames, or bincode
/// in binary frames under [`BINCODE_SUBPROTOCOL`].
///
/// It is also the [`Reconnect`] of a client that reconnects by itself
/// ([`AsyncClient::connect_reconnecting_with`](crate::AsyncClient::connect_reconnecting_with)).
/// The connection's queues are bounded by its [`LinkConfig`] (the server's frames above
/// `max_frame_size` close it), and it carries a [`BrowserTimer`], so that the sign-in has its
/// deadline.
#[derive(Debug, Clone)]
pub struct BrowserWs {
    url: String,
    codec: Codec,
    config: LinkConfig,
    open_timeout: Duration,
}

impl BrowserWs {
    /// Connections to `url` (`ws://` or `wss://`; a page served over `https` may open only
    /// `wss://`), speaking JSON, with the default [`LinkConfig`] and 10 s to open.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            codec: Codec::Json,
            config: LinkConfig::default(),
            open_timeout: Duration::from_secs(10),
        }
    }

    /// Speak `codec`: [`Codec::Bincode`] asks for [`BINCODE_SUBPROTOCOL`], and a server that
    /// does not agree is refused.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// The bounds of the connection's queues and of the server's frames.
    #[must_use]
    pub fn link_config(mut self, config: LinkConfig) -> Self {
        self.config = config;
        self
    }

    /// How long the `WebSocket` may take to open; then it is closed. Default 10 s.
    #[must_use]
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a connection and waits until it is open.
    ///
    /// # Errors
    ///
    /// [`TransportError::Connect`] when the URL is refused, the server cannot be reached or does
    /// not open the socket within the open timeout, or does not agree to bincode when asked.
    pub async fn connect(&self) -> Result<LinkClient, TransportError> {
        let (client, inbound, outbound) = LinkClient::new(self.codec, &self.config);
        // The server's name for a bound sign-in, as `WsClient` takes it from its URL.
        let client =
            client.with_timer(Arc::new(BrowserTimer)).with_server_id(crate::server_id_of_url(&self.url));
        let (report, opened) = oneshot::channel();
        {
            let socket = match self.codec {
                Codec::Json => WebSocket::new(&self.url),
                Codec::Bincode => WebSocket::new_with_str(&self.url, BINCODE_SUBPROTOCOL),
            }
            .map_err(|_| TransportError::Connect(format!("the browser refuses the URL {}", self.url)))?;
            // The socket's handlers are set here, before any message can arrive. The socket
            // itself stays on the page's thread, with the adapter's task.
            join(socket, self.codec, inbound, outbound, self.open_timeout, Some(report));
        }
        // Dropping `client` on the way out closes the socket.
        let protocol = match select(opened, BrowserTimer::sleep(self.open_timeout)).await {
            Either::Left((Ok(Some(protocol)), _)) => protocol,
            Either::Left(_) => {
                return Err(TransportError::Connect(format!("{} closed before it opened", self.url)))
            }
            Either::Right(_) => {
                return Err(TransportError::Connect(format!(
                    "{} did not open within {:?}",
                    self.url, self.open_timeout
                )))
            }
        };
        if self.codec == Codec::Bincode && protocol != BINCODE_SUBPROTOCOL {
            return Err(TransportError::Connect(format!(
                "{} does not speak {BINCODE_SUBPROTOCOL}",
                self.url
            )));
        }
        Ok(client)
    }
}

#[async_trait]
impl Reconnect<LinkClient> for BrowserWs {
    async fn connect(&self) -> Result<LinkClient, TransportError> {
        BrowserWs::connect(self).await
    }
}
