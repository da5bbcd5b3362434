//! Bound sign-ins and signed set-up messages: the bytes a node signs, without JSON
//! canonicalisation, so that another implementation can produce them byte for byte.
//!
//! A bound announce signs:
//!
//! ```text
//! "peer-signal bound-announce v1" 0x00
//! || u8 len || server id (len bytes, UTF-8)      what the node dialled, canonical
//! || challenge (32)                               this connection's
//! || node key (32)                                the node's ed25519 public key
//! || SHA-256(node info as sent) (32)             the `node_info` string of the message, its UTF-8 bytes
//! || u8 flags                                     bit 0: the node signs set-up messages and wants them signed
//! ```
//!
//! A signed set-up message signs:
//!
//! ```text
//! "peer-signal signed-setup v1" 0x00
//! || id_init (32) || id_follow (32)
//! || u8 direction                                 0: sent by id_init, 1: sent by id_follow
//! || u64 seq (big-endian)                         the sender's counter, strictly increasing
//! || u8 kind                                      0 Init, 1 Offer, 2 Answer, 3 IceCandidate
//! || u32 len (big-endian) || text (len bytes)     the SDP or candidate, UTF-8; empty for Init
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::error::ConfigError;
use crate::protocol::{NodeID, PeerInfo, PeerMessage, U256};

/// The domain of a bound announce's signature.
pub const BOUND_ANNOUNCE_DOMAIN: &[u8] = b"peer-signal bound-announce v1";
/// The domain of a signed set-up message's signature.
pub const SIGNED_SETUP_DOMAIN: &[u8] = b"peer-signal signed-setup v1";
/// The version of the bound announce this crate speaks.
pub const BOUND_ANNOUNCE_VERSION: u64 = 1;
/// Bound-announce flag: the node signs its set-up messages and wants the ones it gets signed.
pub const FLAG_SIGNED_SETUPS: u8 = 1;

/// The longest server id: its length is one byte.
pub const MAX_SERVER_ID_LEN: usize = 255;

/// Whether a server takes bound announces, and whether it insists on them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum BindingMode {
    /// Protocol v3 only, as fledger's server: no `Capabilities`, a `BoundAnnounce` is refused.
    #[default]
    Off,
    /// Bound announces from nodes that can, plain v3 announces from the others (fledger 0.10
    /// nodes sign in unchanged).
    Accept,
    /// Bound announces only: a plain `Announce` is refused with `bound announce required`, so
    /// nobody can sign in with a v3 signature relayed from another server.
    Require,
}

/// A server's bound sign-in: [`SignalConfig::binding`](crate::SignalConfig::binding).
///
/// ```
/// use peer_signal::{Binding, SignalConfig};
/// let config = SignalConfig::default().with_binding(Binding::accept(["wss://signal.example.org"]));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Binding {
    /// Off, accept or require. Default off.
    pub mode: BindingMode,
    /// The server's own names, canonical ([`server_id_of_url`], [`server_id_of_node`]): a bound
    /// announce must name one of them. At least one when the mode is not off.
    pub server_ids: Vec<String>,
    /// Whether set-up messages signed by their senders are relayed as such to the nodes that ask
    /// for them (the rest get them plain). Default true.
    pub signed_setups: bool,
}

impl Binding {
    /// Bound announces accepted beside v3 ones, for a server known as `server_ids`.
    pub fn accept<S: Into<String>>(server_ids: impl IntoIterator<Item = S>) -> Self {
        Self {
            mode: BindingMode::Accept,
            server_ids: server_ids.into_iter().map(Into::into).collect(),
            signed_setups: true,
        }
    }

    /// Bound announces only, for a server known as `server_ids`.
    pub fn require<S: Into<String>>(server_ids: impl IntoIterator<Item = S>) -> Self {
        Self { mode: BindingMode::Require, ..Self::accept(server_ids) }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Zero`] for a mode other than off without server ids, and
    /// [`ConfigError::Url`] for a server id that is not canonical.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.mode == BindingMode::Off {
            return Ok(());
        }
        if self.server_ids.is_empty() {
            return Err(ConfigError::Zero { field: "binding.server_ids" });
        }
        if let Some(id) = self.server_ids.iter().find(|id| !is_server_id(id)) {
            return Err(ConfigError::Url {
                field: "binding.server_ids",
                url: id.clone(),
                expected: "canonical ws: or wss: (scheme and host in lower case, no default port, no path), or node:<id>,",
            });
        }
        Ok(())
    }
}

/// The bytes a bound announce signs (see the module docs), or `None` for a server id longer
/// than 255 bytes.
pub fn bound_announce_bytes(
    server_id: &str,
    challenge: &U256,
    node_key: &[u8; 32],
    node_info: &str,
    flags: u8,
) -> Option<Vec<u8>> {
    let len = u8::try_from(server_id.len()).ok()?;
    let mut bytes = Vec::with_capacity(BOUND_ANNOUNCE_DOMAIN.len() + 2 + server_id.len() + 97);
    bytes.extend_from_slice(BOUND_ANNOUNCE_DOMAIN);
    bytes.push(0);
    bytes.push(len);
    bytes.extend_from_slice(server_id.as_bytes());
    bytes.extend_from_slice(challenge.as_bytes());
    bytes.extend_from_slice(node_key);
    bytes.extend_from_slice(&Sha256::digest(node_info.as_bytes()));
    bytes.push(flags);
    Some(bytes)
}

/// The bytes a set-up message signs (see the module docs), sent by `id_init` when `from_init`.
pub fn setup_bytes(setup: &PeerInfo, from_init: bool, seq: u64) -> Vec<u8> {
    let (kind, text) = match &setup.message {
        PeerMessage::Init => (0, ""),
        PeerMessage::Offer(text) => (1, text.as_str()),
        PeerMessage::Answer(text) => (2, text.as_str()),
        PeerMessage::IceCandidate(text) => (3, text.as_str()),
    };
    let mut bytes = Vec::with_capacity(SIGNED_SETUP_DOMAIN.len() + 79 + text.len());
    bytes.extend_from_slice(SIGNED_SETUP_DOMAIN);
    bytes.push(0);
    bytes.extend_from_slice(setup.id_init.as_bytes());
    bytes.extend_from_slice(setup.id_follow.as_bytes());
    bytes.push(u8::from(!from_init));
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.push(kind);
    // A text over 4 GiB cannot come through a frame; saturating keeps this total.
    bytes.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    bytes.extend_from_slice(text.as_bytes());
    bytes
}

/// Signs `bytes` with `key`.
pub(crate) fn sign(key: &SigningKey, bytes: &[u8]) -> [u8; 64] {
    key.sign(bytes).to_bytes()
}

/// Whether `signature` over `bytes` verifies, strictly, under the key `key`.
pub(crate) fn verifies(key: &[u8; 32], bytes: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(key)
        .is_ok_and(|key| key.verify_strict(bytes, &Signature::from_bytes(signature)).is_ok())
}

/// The server id of a WebSocket URL, as a node that dialled it binds its sign-in to:
/// `ws://host[:port]` or `wss://host[:port]`, scheme and host in lower case, the default port
/// (80, 443) left out, no path, query or user. `None` for anything else.
///
/// ```
/// use peer_signal::server_id_of_url;
/// assert_eq!(server_id_of_url("WSS://Signal.Example.org:443/path?x=1").as_deref(), Some("wss://signal.example.org"));
/// assert_eq!(server_id_of_url("ws://127.0.0.1:8765/").as_deref(), Some("ws://127.0.0.1:8765"));
/// assert_eq!(server_id_of_url("https://example.org"), None);
/// ```
pub fn server_id_of_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "ws" => "80",
        "wss" => "443",
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    // An IPv6 literal keeps its brackets; the port is what follows the last colon after them.
    let (host, port) = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => (&authority[..at], Some(&authority[at + 1..])),
        _ => (authority, None),
    };
    if host.is_empty()
        || port.is_some_and(|port| port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let id = match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    };
    (id.len() <= MAX_SERVER_ID_LEN).then_some(id)
}

/// The server id of a node that hosts signalling over its peer links: `node:` and its id in hex.
pub fn server_id_of_node(node: &NodeID) -> String {
    format!("node:{node}")
}

/// Whether `id` is a server id in canonical form: what [`server_id_of_url`] or
/// [`server_id_of_node`] make.
pub fn is_server_id(id: &str) -> bool {
    if let Some(hex) = id.strip_prefix("node:") {
        return hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    }
    server_id_of_url(id).as_deref() == Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_become_canonical_server_ids() {
        for (url, id) in [
            ("wss://example.org", Some("wss://example.org")),
            ("wss://example.org:443/", Some("wss://example.org")),
            ("ws://example.org:80", Some("ws://example.org")),
            ("ws://example.org:443", Some("ws://example.org:443")),
            ("wss://[::1]:8765/x", Some("wss://[::1]:8765")),
            ("wss://[::1]", Some("wss://[::1]")),
            ("wss://user@example.org", None),
            ("wss://example.org:", None),
            ("wss://example.org:x1", None),
            ("wss:///path", None),
            ("example.org", None),
        ] {
            assert_eq!(server_id_of_url(url).as_deref(), id, "{url}");
        }
        assert!(is_server_id("wss://example.org"));
        assert!(!is_server_id("wss://Example.org"));
        assert!(!is_server_id("wss://example.org:443"));
        assert!(is_server_id(&server_id_of_node(&NodeID::from([0xab; 32]))));
        assert!(!is_server_id("node:AB"));
    }

    #[test]
    fn a_server_id_over_255_bytes_cannot_be_signed() {
        let long = "x".repeat(256);
        assert!(bound_announce_bytes(&long, &U256::from([0; 32]), &[0; 32], "{}", 0).is_none());
        assert!(bound_announce_bytes(&long[..255], &U256::from([0; 32]), &[0; 32], "{}", 0).is_some());
    }
}
