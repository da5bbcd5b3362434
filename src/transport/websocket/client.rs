//! The node's side of the WebSocket transport: [`WsClient`] over tokio-tungstenite, how it
//! connects ([`WsClientBuilder`]), and what goes wrong with it ([`WsClientError`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[cfg(feature = "tls")]
use super::TlsRoots;
use super::TokioTimer;
use crate::client::ClientConnection;
use crate::transport::BINCODE_SUBPROTOCOL;
use crate::{Codec, SignalConfig, TransportError};

/// A node's WebSocket connection to a signalling server: a [`ClientConnection`] for
/// [`AsyncClient`](crate::AsyncClient).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use peer_signal::ed25519_dalek::SigningKey;
/// use peer_signal::{AsyncClient, Codec, NodeInfo, WsClient};
///
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let info = NodeInfo::new("alice", "example", key.verifying_key().to_bytes());
/// let conn = WsClient::connect("ws://127.0.0.1:8765", Codec::Json).await?;
/// let mut node = AsyncClient::connect(conn, key, info).await?;
/// println!("{} nodes connected", node.list().await?.len());
/// # Ok(()) }
/// ```
pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    codec: Codec,
    /// The canonical id of the URL it dialled, for a bound sign-in.
    server_id: Option<String>,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient").field("codec", &self.codec).finish_non_exhaustive()
    }
}

impl WsClient {
    /// Connects to `url` (`ws://host:port/any/path`, or with feature `tls` `wss://…`, trusting
    /// the [webpki roots](TlsRoots::WebPki)). With [`Codec::Bincode`] it asks for
    /// [`BINCODE_SUBPROTOCOL`] and fails if the server does not agree. For headers, other roots
    /// or another timeout, see [`builder`](Self::builder).
    ///
    /// # Errors
    ///
    /// [`WsClientError::Connect`] when the server cannot be reached within ten seconds, its
    /// certificate is not trusted, or it refuses the upgrade.
    pub async fn connect(url: &str, codec: Codec) -> Result<Self, WsClientError> {
        Self::builder(url).codec(codec).connect().await
    }

    /// Connects to `url` as [`connect`](Self::connect) does, trusting `roots` for wss://: a
    /// private CA, or a self-signed certificate (feature `tls`).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect).
    #[cfg(feature = "tls")]
    pub async fn connect_trusting(url: &str, codec: Codec, roots: &TlsRoots) -> Result<Self, WsClientError> {
        Self::builder(url).codec(codec).trust(roots.clone()).connect().await
    }

    /// A connection to `url` to set up: its codec, extra headers (a token), the roots it trusts.
    /// The builder can connect again and again, as a client that reconnects does.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), peer_signal::WsClientError> {
    /// use peer_signal::{Codec, WsClient};
    ///
    /// let conn = WsClient::builder("wss://signal.example.org/")
    ///     .codec(Codec::Bincode)
    ///     .header("Authorization", "Bearer s3cret")
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(url: impl Into<String>) -> WsClientBuilder {
        WsClientBuilder {
            url: url.into(),
            codec: Codec::Json,
            headers: Vec::new(),
            #[cfg(feature = "tls")]
            roots: TlsRoots::WebPki,
            timeout: Duration::from_secs(10),
            max_message_size: SignalConfig::default().max_frame_size,
        }
    }

    /// Sends one frame: a text message with [`Codec::Json`], a binary one with
    /// [`Codec::Bincode`]. [`ClientConnection::send`] is this, with the error as a
    /// [`TransportError`].
    ///
    /// # Errors
    ///
    /// [`WsClientError::NotUtf8`] for a JSON frame that is not UTF-8 (nothing is sent),
    /// [`WsClientError::WriteTimeout`] when the server does not take the frame within ten
    /// seconds, [`WsClientError::Closed`] once the connection is closed or failed.
    pub async fn send_frame(&mut self, frame: Bytes) -> Result<(), WsClientError> {
        let message = if self.codec.is_binary() {
            Message::Binary(frame)
        } else {
            Message::Text(Utf8Bytes::try_from(frame).map_err(|_| WsClientError::NotUtf8)?)
        };
        // A server that stops reading must not hold the node forever.
        match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WsClientError::Closed),
            Err(_) => Err(WsClientError::WriteTimeout(CLIENT_WRITE_TIMEOUT)),
        }
    }

    /// Closes the connection with a normal close frame and waits, at most two seconds, for the
    /// server's close frame and the end of the stream.
    pub async fn close(mut self) {
        let handshake = async {
            if self.ws.close(None).await.is_ok() {
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        };
        let _ = tokio::time::timeout(CLIENT_CLOSE_WAIT, handshake).await;
    }
}

/// What went wrong with a [`WsClient`].
///
/// [`ClientConnection`] and [`Reconnect`](crate::Reconnect) speak [`TransportError`], which
/// [`AsyncClient`](crate::AsyncClient) sees: a [`Connect`](Self::Connect) stays a
/// [`TransportError::Connect`] with the same text, and every error of a connection that was open
/// becomes [`TransportError::Shutdown`], as the end of the connection it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WsClientError {
    /// The server could not be reached within the timeout, its certificate is not trusted, it
    /// refused the upgrade or bincode, or a header to send is not valid HTTP.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A frame to send as text ([`Codec::Json`]) is not UTF-8; nothing was sent.
    #[error("a text frame is not UTF-8")]
    NotUtf8,
    /// The server did not take a frame within this long: it stopped reading.
    #[error("the server took no frame within {0:?}")]
    WriteTimeout(Duration),
    /// The connection is closed, by either side, or failed.
    #[error("the connection is closed")]
    Closed,
}

impl From<WsClientError> for TransportError {
    fn from(error: WsClientError) -> Self {
        match error {
            WsClientError::Connect(why) => Self::Connect(why),
            WsClientError::NotUtf8 | WsClientError::WriteTimeout(_) | WsClientError::Closed => Self::Shutdown,
        }
    }
}

/// Why the server's certificate was refused, when that is why a connection failed.
fn untrusted(error: &tokio_tungstenite::tungstenite::Error) -> Option<String> {
    #[cfg(feature = "tls")]
    if let tokio_tungstenite::tungstenite::Error::Io(io) = error {
        if let Some(rustls::Error::InvalidCertificate(why)) = io.get_ref().and_then(|e| e.downcast_ref()) {
            return Some(format!("{why:?}"));
        }
    }
    #[cfg(not(feature = "tls"))]
    let _ = error;
    None
}

/// How a [`WsClient`] connects; from [`WsClient::builder`].
#[derive(Debug, Clone)]
#[must_use]
pub struct WsClientBuilder {
    url: String,
    codec: Codec,
    headers: Vec<(String, String)>,
    #[cfg(feature = "tls")]
    roots: TlsRoots,
    timeout: Duration,
    max_message_size: usize,
}

impl WsClientBuilder {
    /// The codec to speak (JSON unless set).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// A header to send with the upgrade request, for example a token for the server's
    /// [`AdmissionHook`](super::AdmissionHook).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The roots to trust for wss:// (the webpki roots unless set; feature `tls`).
    #[cfg(feature = "tls")]
    pub fn trust(mut self, roots: TlsRoots) -> Self {
        self.roots = roots;
        self
    }

    /// How long connecting may take, TCP, TLS and upgrade together (ten seconds unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest message (and frame) the client takes from the server, in bytes; a longer one
    /// ends the connection before it is buffered whole. Unless set, the server's own limit on
    /// frames, [`SignalConfig::max_frame_size`] (64 KiB), which holds a default list of 100 nodes
    /// with the longest names and the longest set-up message; raise it for a server that sends
    /// longer lists. At least 1 KiB (smaller values are raised to it).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1024);
        self
    }

    /// Connects.
    ///
    /// # Errors
    ///
    /// [`WsClientError::Connect`] when a header is not valid HTTP, the server cannot be reached
    /// within the timeout, its certificate is not trusted, it refuses the upgrade, or it does not
    /// agree to bincode when asked.
    pub async fn connect(&self) -> Result<WsClient, WsClientError> {
        let connect_error = |e: &dyn std::fmt::Display| WsClientError::Connect(e.to_string());
        let mut request = self.url.as_str().into_client_request().map_err(|e| connect_error(&e))?;
        for (name, value) in &self.headers {
            let name = tokio_tungstenite::tungstenite::http::HeaderName::try_from(name.as_str())
                .map_err(|_| WsClientError::Connect(format!("invalid header name {name:?}")))?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|_| WsClientError::Connect(format!("invalid value for header {name}")))?;
            request.headers_mut().append(name, value);
        }
        if self.codec.is_binary() {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", HeaderValue::from_static(BINCODE_SUBPROTOCOL));
        }
        #[cfg(feature = "tls")]
        let connecting = {
            let config = self.roots.client_config().map_err(|e| WsClientError::Connect(e.to_string()))?;
            let tls = tokio_tungstenite::Connector::Rustls(config);
            tokio_tungstenite::connect_async_tls_with_config(
                request,
                Some(client_config(self.max_message_size)),
                true,
                Some(tls),
            )
        };
        #[cfg(not(feature = "tls"))]
        let connecting = tokio_tungstenite::connect_async_with_config(
            request,
            Some(client_config(self.max_message_size)),
            true,
        );
        let connected = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| WsClientError::Connect(format!("no answer within {:?}", self.timeout)))?;
        let (ws, response) = connected.map_err(|e| match untrusted(&e) {
            Some(why) => WsClientError::Connect(format!("the server's certificate is not trusted: {why}")),
            None => connect_error(&e),
        })?;
        let agreed = response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok());
        if self.codec.is_binary() && agreed != Some(BINCODE_SUBPROTOCOL) {
            return Err(WsClientError::Connect("the server does not speak bincode".into()));
        }
        Ok(WsClient { ws, codec: self.codec, server_id: crate::server_id_of_url(&self.url) })
    }
}

/// How many bytes a client reads from its socket at a time. tungstenite zeroes this much before
/// every read, and its default (128 KiB) made that memset the largest cost of a client taking
/// small frames; a frame larger than this is simply read in several steps.
pub(crate) const CLIENT_READ_BUFFER: usize = 16 * 1024;

/// The client's WebSocket settings: tungstenite's, with [`CLIENT_READ_BUFFER`] and the largest
/// message and frame the client takes (tungstenite's own are 64 MiB and 16 MiB).
fn client_config(max_message_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER)
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size))
}

/// A builder connects anew each time: what a client that reconnects needs
/// ([`AsyncClient::connect_reconnecting`](crate::AsyncClient::connect_reconnecting)).
#[async_trait]
impl crate::Reconnect<WsClient> for WsClientBuilder {
    async fn connect(&self) -> Result<WsClient, TransportError> {
        Ok(WsClientBuilder::connect(self).await?)
    }
}

/// How long a [`WsClient`] write may wait for the server to take it.
const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`WsClient`] waits on the server to finish a closing handshake.
const CLIENT_CLOSE_WAIT: Duration = Duration::from_secs(2);

#[async_trait]
impl ClientConnection for WsClient {
    fn codec(&self) -> Codec {
        self.codec
    }

    /// See [`WsClient::send_frame`]; its errors become [`TransportError::Shutdown`].
    async fn send(&mut self, frame: Bytes) -> Result<(), TransportError> {
        Ok(self.send_frame(frame).await?)
    }

    fn timer(&self) -> Option<Arc<dyn crate::Timer>> {
        Some(Arc::new(TokioTimer))
    }

    fn server_id(&self) -> Option<String> {
        self.server_id.clone()
    }

    async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => return Some(Bytes::from(text)),
                Ok(Message::Binary(data)) => return Some(data),
                Ok(Message::Close(_)) => {
                    // tungstenite queued the reply to the server's close; send it, so that the
                    // server sees a finished handshake.
                    let _ = tokio::time::timeout(CLIENT_CLOSE_WAIT, self.ws.flush()).await;
                    return None;
                }
                Err(_) => return None,
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_of_an_open_connection_end_it_for_the_client_and_connect_errors_keep_their_text() {
        let connect = WsClientError::Connect("no answer within 10s".into());
        assert_eq!(connect.to_string(), "cannot connect: no answer within 10s");
        assert_eq!(TransportError::from(connect), TransportError::Connect("no answer within 10s".into()));
        for error in
            [WsClientError::NotUtf8, WsClientError::WriteTimeout(CLIENT_WRITE_TIMEOUT), WsClientError::Closed]
        {
            assert_eq!(TransportError::from(error), TransportError::Shutdown);
        }
        assert_eq!(
            WsClientError::WriteTimeout(CLIENT_WRITE_TIMEOUT).to_string(),
            "the server took no frame within 10s"
        );
    }
}
