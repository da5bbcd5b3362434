//! The messages of fledger's signalling protocol, version 3, with their serde encodings.
//!
//! The JSON form of every type here is byte-compatible with fledger 0.10 (`flmodules::network::signal`).
//! Human-readable serializers (JSON) get lowercase hex for byte strings and the `bitflags` text form
//! for [`Modules`]; compact ones (bincode) get raw bytes and integers.
//!
//! The wire enums are deliberately exhaustive: they mirror a frozen format, and a new variant would be
//! a new protocol version.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; the first element of every `Challenge`.
pub const SIGNAL_VERSION: u64 = 3;

/// 256 bits: a node id, a challenge or a realm id. JSON: 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct U256(pub [u8; 32]);

/// A node's id: in protocol v3, the raw bytes of its ed25519 public key.
pub type NodeID = U256;

/// The id of a realm, as carried in [`FledgerConfig::system_realm`].
pub type RealmID = U256;

impl U256 {
    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for U256 {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for U256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "U256({self})")
    }
}

impl std::str::FromStr for U256 {
    type Err = hex::FromHexError;

    /// Parses 64 hex digits, in either case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0; 32];
        hex::decode_to_slice(s, &mut bytes)?;
        Ok(Self(bytes))
    }
}

impl Serialize for U256 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        fixed_bytes::serialize(&self.0, serializer)
    }
}

impl<'de> Deserialize<'de> for U256 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        fixed_bytes::deserialize(deserializer, "id").map(Self)
    }
}

/// Byte arrays as lowercase hex (human-readable formats) or length-prefixed bytes (compact ones).
/// The field name goes into the error, so that a bad key length says which key.
mod fixed_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&hex::encode(bytes))
        } else {
            serializer.serialize_bytes(bytes)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
        what: &'static str,
    ) -> Result<[u8; N], D::Error> {
        let visitor = FixedBytes::<N> { what };
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(visitor)
        } else {
            deserializer.deserialize_bytes(visitor)
        }
    }

    struct FixedBytes<const N: usize> {
        what: &'static str,
    }

    impl<const N: usize> Visitor<'_> for FixedBytes<N> {
        type Value = [u8; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{} of {N} bytes", self.what)
        }

        fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
            if s.len() != 2 * N {
                return Err(E::custom(format_args!(
                    "{} must be {N} bytes ({} hex digits), got {} characters",
                    self.what,
                    2 * N,
                    s.len()
                )));
            }
            let mut bytes = [0; N];
            hex::decode_to_slice(s, &mut bytes)
                .map_err(|e| E::custom(format_args!("{} is not hex: {e}", self.what)))?;
            Ok(bytes)
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Self::Value, E> {
            <[u8; N]>::try_from(b)
                .map_err(|_| E::custom(format_args!("{} must be {N} bytes, got {}", self.what, b.len())))
        }
    }

    /// `#[serde(with)]` for an ed25519 public key.
    pub(super) mod pubkey {
        use super::*;
        pub(in super::super) fn serialize<S: Serializer>(b: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
            super::serialize(b, s)
        }
        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
            super::deserialize(d, "public key")
        }
    }

    /// `#[serde(with)]` for an ed25519 signature.
    pub(super) mod signature {
        use super::*;
        pub(in super::super) fn serialize<S: Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
            super::serialize(b, s)
        }
        pub(in super::super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
            super::deserialize(d, "signature")
        }
    }
}

/// `#[serde(deserialize_with)]` for the sequences of the messages. bincode writes a sequence's
/// length before its elements, and serde's own `Vec` reserves room for up to 1 MiB of elements on
/// the strength of that number alone; a ten-byte frame could claim 2^60 of them. Here the claim
/// reserves at most [`PREALLOC`](bounded_seq::PREALLOC) bytes, and the vector grows only with
/// elements actually decoded, each of which the frame has to hold.
mod bounded_seq {
    use std::marker::PhantomData;

    use super::*;

    /// The most a claimed length may reserve up front, in bytes.
    pub(crate) const PREALLOC: usize = 4096;

    pub(crate) fn deserialize<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        deserializer.deserialize_seq(Bounded(PhantomData))
    }

    struct Bounded<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let most = PREALLOC / std::mem::size_of::<T>().max(1);
            let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(most));
            while let Some(item) = seq.next_element()? {
                items.push(item);
            }
            Ok(items)
        }
    }
}

/// The set of modules a node runs: fledger's `Modules` bitflags.
///
/// JSON uses the `bitflags` 2 text form: flag names joined by `" | "`, unknown bits as one
/// trailing `0x…` hex number, the empty set as `""`. Decoding accepts exactly what that crate
/// accepts, so a list this server sends never holds a value a fledger node would reject.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Modules(pub u32);

impl Modules {
    /// Statistics.
    pub const STAT: Self = Self(0x1);
    /// Random connections.
    pub const RAND: Self = Self(0x2);
    /// Gossip of events.
    pub const GOSSIP: Self = Self(0x4);
    /// Obsolete, kept so that old data still parses.
    pub const PING: Self = Self(0x8);
    /// Web proxy.
    pub const WEBPROXY: Self = Self(0x10);
    /// Web proxy requests.
    pub const WEBPROXY_REQUESTS: Self = Self(0x20);
    /// DHT routing.
    pub const DHT_ROUTER: Self = Self(0x40);
    /// DHT storage.
    pub const DHT_STORAGE: Self = Self(0x80);

    const NAMED: [(&'static str, Self); 8] = [
        ("STAT", Self::STAT),
        ("RAND", Self::RAND),
        ("GOSSIP", Self::GOSSIP),
        ("PING", Self::PING),
        ("WEBPROXY", Self::WEBPROXY),
        ("WEBPROXY_REQUESTS", Self::WEBPROXY_REQUESTS),
        ("DHT_ROUTER", Self::DHT_ROUTER),
        ("DHT_STORAGE", Self::DHT_STORAGE),
    ];

    /// Every module except the obsolete `PING`: fledger's `Modules::stable()`, its default.
    pub const fn stable() -> Self {
        Self(0xff & !Self::PING.0)
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Modules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0;
        let mut sep = "";
        for (name, flag) in Self::NAMED {
            if rest & flag.0 != 0 && self.contains(flag) {
                write!(f, "{sep}{name}")?;
                rest &= !flag.0;
                sep = " | ";
            }
        }
        if rest != 0 {
            write!(f, "{sep}{rest:#x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Modules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modules({self})")
    }
}

/// [`Modules::stable`] as `Display` writes it.
const STABLE_TEXT: &str = "STAT | RAND | GOSSIP | WEBPROXY | WEBPROXY_REQUESTS | DHT_ROUTER | DHT_STORAGE";

impl std::str::FromStr for Modules {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        // What nearly every node announces, and so nearly every entry of a list: one comparison
        // instead of seven tokens to trim and look up.
        if text == STABLE_TEXT {
            return Ok(Self::stable());
        }
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self(0));
        }
        text.split('|').try_fold(Self(0), |acc, token| {
            let token = token.trim();
            let bits = if let Some(hex) = token.strip_prefix("0x") {
                u32::from_str_radix(hex, 16).map_err(|_| format!("invalid hex module flags {token:?}"))?
            } else {
                let (_, flag) = Self::NAMED
                    .iter()
                    .find(|(name, _)| *name == token)
                    .ok_or_else(|| format!("unknown module {token:?}"))?;
                flag.0
            };
            Ok(Self(acc.0 | bits))
        })
    }
}

impl Serialize for Modules {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            serializer.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Modules {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
            text.parse().map_err(de::Error::custom)
        } else {
            u32::deserialize(deserializer).map(Self)
        }
    }
}

/// What a node says about itself when it announces (fledger's `NodeInfo`, written as `NodeInfoV3`).
///
/// Only version 3 is accepted: `NodeInfoV1` cannot be converted at all and `NodeInfoV2` carries a
/// key format no current node sends, so both fail to decode with an error naming the version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// A free-form name.
    pub name: String,
    /// The kind of client, e.g. `"libc"`.
    pub client: String,
    /// The node's ed25519 public key, which is also its [`NodeID`].
    pub pubkey: [u8; 32],
    /// The modules the node runs.
    pub modules: Modules,
}

impl NodeInfo {
    /// A `NodeInfo` for the given key, running the stable modules.
    pub fn new(name: impl Into<String>, client: impl Into<String>, pubkey: [u8; 32]) -> Self {
        Self { name: name.into(), client: client.into(), pubkey, modules: Modules::stable() }
    }

    /// The node's id: the raw public key bytes, as fledger 0.10 computes it.
    pub fn id(&self) -> NodeID {
        U256(self.pubkey)
    }
}

/// The fields of `NodeInfoV3`, in wire order.
#[derive(Serialize, Deserialize)]
struct NodeInfoV3<'a> {
    #[serde(borrow)]
    name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    client: std::borrow::Cow<'a, str>,
    #[serde(with = "fixed_bytes::pubkey")]
    pubkey: [u8; 32],
    modules: Modules,
}

/// fledger's `VersionedSerde` wrapper: one variant per version, the newest written.
#[derive(Serialize, Deserialize)]
enum VersionedNodeInfo<'a> {
    #[serde(skip_serializing)]
    NodeInfoV1(de::IgnoredAny),
    #[serde(skip_serializing)]
    NodeInfoV2(de::IgnoredAny),
    #[serde(borrow)]
    NodeInfoV3(NodeInfoV3<'a>),
}

impl Serialize for NodeInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        VersionedNodeInfo::NodeInfoV3(NodeInfoV3 {
            name: self.name.as_str().into(),
            client: self.client.as_str().into(),
            pubkey: self.pubkey,
            modules: self.modules,
        })
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for NodeInfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match VersionedNodeInfo::deserialize(deserializer)? {
            VersionedNodeInfo::NodeInfoV3(v3) => Ok(Self {
                name: v3.name.into_owned(),
                client: v3.client.into_owned(),
                pubkey: v3.pubkey,
                modules: v3.modules,
            }),
            VersionedNodeInfo::NodeInfoV1(_) => {
                Err(de::Error::custom("unsupported NodeInfoV1, only NodeInfoV3 is accepted"))
            }
            VersionedNodeInfo::NodeInfoV2(_) => {
                Err(de::Error::custom("unsupported NodeInfoV2, only NodeInfoV3 is accepted"))
            }
        }
    }
}

/// A node's answer to the challenge: who it is, and the challenge signed with its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageAnnounce {
    /// The protocol version the node speaks; must be [`SIGNAL_VERSION`].
    pub version: u64,
    /// The challenge the server sent on this connection.
    pub challenge: U256,
    /// The node's description, including its public key.
    pub node_info: NodeInfo,
    /// The ed25519 signature over the 32 raw challenge bytes.
    #[serde(with = "fixed_bytes::signature")]
    pub signature: [u8; 64],
}

/// One step of a WebRTC connection set-up between two nodes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerMessage {
    /// The initiator asks the follower to start.
    Init,
    /// An SDP offer.
    Offer(String),
    /// An SDP answer.
    Answer(String),
    /// One ICE candidate line.
    IceCandidate(String),
}

impl PeerMessage {
    /// The SDP or candidate text, if the message carries one.
    pub fn text(&self) -> Option<&str> {
        match self {
            Self::Init => None,
            Self::Offer(s) | Self::Answer(s) | Self::IceCandidate(s) => Some(s),
        }
    }
}

/// A set-up message relayed between the two nodes of a pair.
///
/// `id_init` is always the node that sent `Init`, whichever way the message travels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The node that started the connection.
    pub id_init: NodeID,
    /// The node that was asked to connect.
    pub id_follow: NodeID,
    /// The set-up step.
    pub message: PeerMessage,
}

/// ICE servers for one node, ready for an `RTCPeerConnection`'s configuration: what a signed-in
/// node receives in [`WSSignalMessageToNode::IceServers`](crate::WSSignalMessageToNode::IceServers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServers {
    /// When the credentials expire, in seconds since the Unix epoch. The server sends new ones
    /// before that, while the node is connected.
    pub expires: u64,
    /// The servers, as `RTCIceServer`s.
    pub servers: Vec<IceServer>,
}

/// One `RTCIceServer`: its URLs, and for TURN the credentials. Empty strings for STUN.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `turn:`, `turns:` or `stun:` URLs.
    pub urls: Vec<String>,
    /// `<expiry>:<node id>` for TURN; empty for STUN.
    pub username: String,
    /// `base64(HMAC-SHA1(secret, username))` for TURN; empty for STUN.
    pub credential: String,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A credential is a password: logs get its length only.
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .field("credential", &format_args!("<{} bytes>", self.credential.len()))
            .finish()
    }
}

/// What a server offers beyond protocol v3, in [`WSSignalMessageToNode::Capabilities`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The version of [`BoundAnnounce`] the server takes (1), or 0 for none.
    pub bound_announce: u64,
    /// Whether the server relays [`SignedSetup`]s to the nodes that ask for them.
    pub signed_setups: bool,
}

/// The answer to the challenge, bound to the server the node dialled: the signature covers the
/// server id, the challenge, the node's key and the node info exactly as sent (see
/// [`bound_announce_bytes`](crate::bound_announce_bytes) for the layout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundAnnounce {
    /// The bound announce's version: 1.
    pub version: u64,
    /// The challenge the server sent on this connection.
    pub challenge: U256,
    /// The server the node dialled, canonical ([`server_id_of_url`](crate::server_id_of_url),
    /// [`server_id_of_node`](crate::server_id_of_node)).
    pub server_id: String,
    /// The node's [`NodeInfo`] as JSON text; its bytes are hashed as they are, so nobody has to
    /// re-encode them the same way.
    pub node_info: String,
    /// Bit 0 ([`FLAG_SIGNED_SETUPS`](crate::FLAG_SIGNED_SETUPS)): the node signs its set-up
    /// messages and wants the ones it gets signed.
    pub flags: u8,
    /// The ed25519 signature over the bound-announce bytes.
    #[serde(with = "fixed_bytes::signature")]
    pub signature: [u8; 64],
}

/// A set-up message signed by its sender over both ids, a sequence number and the message (see
/// [`setup_bytes`](crate::setup_bytes)). The receiving node checks it against the sender's id,
/// which is its key, and refuses a sequence number it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedSetup {
    /// The set-up message.
    pub setup: PeerInfo,
    /// The sender's counter: strictly increasing over everything it signs.
    pub seq: u64,
    /// The sender's ed25519 signature.
    #[serde(with = "fixed_bytes::signature")]
    pub signature: [u8; 64],
}

/// A node's report about one of its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStat {
    /// The peer.
    pub id: NodeID,
    /// The peer's software version.
    pub version: String,
    /// Round-trip time to the peer, in milliseconds.
    pub ping_ms: u32,
    /// Pings received from the peer.
    pub ping_rx: u32,
}

/// Configuration the server hands every node after it has announced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FledgerConfig {
    /// The realm the system runs in, if any.
    pub system_realm: Option<RealmID>,
}

/// A message from the server to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WSSignalMessageToNode {
    /// Sent on connect: the protocol version and 32 random bytes to sign.
    Challenge(u64, U256),
    /// Known nodes, possibly a random sample.
    ListIDsReply(#[serde(deserialize_with = "bounded_seq::deserialize")] Vec<NodeInfo>),
    /// A set-up message from the other node of a pair.
    PeerSetup(PeerInfo),
    /// Sent after a successful announce.
    SystemConfig(FledgerConfig),
    /// What went wrong with the node's last message.
    Error(String),
    /// ICE servers with TURN credentials for this node (not in fledger's protocol: fledger 0.10
    /// nodes drop it as a message they cannot parse). Sent when the server has
    /// [`SignalConfig::turn`](crate::SignalConfig::turn): after the `ListIDsReply` that follows
    /// the sign-in, again before the credentials expire, and on `IceServersRequest`.
    IceServers(IceServers),
    /// A set-up message signed by its sender (not in fledger's protocol): relayed to nodes that
    /// asked for signed set-ups in their [`BoundAnnounce`]; others get it as a plain `PeerSetup`.
    SignedPeerSetup(Box<SignedSetup>),
    /// What the server offers beyond v3 (not in fledger's protocol: fledger 0.10 nodes drop it).
    /// Sent before the `Challenge` by a server with binding enabled.
    Capabilities(Capabilities),
}

/// A message from a node to the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WSSignalMessageFromNode {
    /// The answer to the challenge.
    Announce(MessageAnnounce),
    /// Asks for the known nodes.
    ListIDsRequest,
    /// A set-up message for the other node of the pair.
    PeerSetup(PeerInfo),
    /// Statistics about the node's peers.
    NodeStats(#[serde(deserialize_with = "bounded_seq::deserialize")] Vec<NodeStat>),
    /// Asks for fresh [`WSSignalMessageToNode::IceServers`] (not in fledger's protocol; a server
    /// without TURN answers with an `Error`).
    IceServersRequest,
    /// The answer to the challenge bound to the server (not in fledger's protocol): see
    /// [`BoundAnnounce`].
    BoundAnnounce(Box<BoundAnnounce>),
    /// A set-up message signed by its sender (not in fledger's protocol): see [`SignedSetup`].
    SignedPeerSetup(Box<SignedSetup>),
}

/// A `ListIDsReply` that borrows its nodes, so that a reply is encoded without cloning them.
/// Encodes exactly like `WSSignalMessageToNode::ListIDsReply` when `T` encodes like `NodeInfo`:
/// `&NodeInfo`, or for JSON the node's pre-encoded `&RawValue`.
pub(crate) struct ListIDsReplyRef<'a, T>(pub(crate) &'a [T]);

impl<T: Serialize> Serialize for ListIDsReplyRef<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_variant("WSSignalMessageToNode", 1, "ListIDsReply", self.0)
    }
}

/// What the server decodes a node's frame into: [`WSSignalMessageFromNode`], except that a
/// `PeerSetup` is checked and routed without copying its SDP out. Same wire shape, same variant
/// order, so it accepts exactly the frames `WSSignalMessageFromNode` accepts.
#[derive(Deserialize)]
#[serde(rename = "WSSignalMessageFromNode")]
pub(crate) enum Inbound {
    Announce(MessageAnnounce),
    ListIDsRequest,
    PeerSetup(SetupRoute),
    NodeStats(#[serde(deserialize_with = "bounded_seq::deserialize")] Vec<NodeStat>),
    IceServersRequest,
    BoundAnnounce(BoundAnnounce),
    SignedPeerSetup(SignedRoute),
}

/// A `SignedSetup` as far as routing needs it; the receiving node checks the signature.
#[derive(Deserialize)]
#[serde(rename = "SignedSetup")]
pub(crate) struct SignedRoute {
    pub(crate) setup: SetupRoute,
    #[allow(dead_code)]
    pub(crate) seq: u64,
    #[allow(dead_code)]
    #[serde(with = "fixed_bytes::signature")]
    pub(crate) signature: [u8; 64],
}

/// A `PeerInfo` as far as routing needs it: the pair, and the encoded length of the message text.
#[derive(Deserialize)]
#[serde(rename = "PeerInfo")]
pub(crate) struct SetupRoute {
    pub(crate) id_init: NodeID,
    pub(crate) id_follow: NodeID,
    pub(crate) message: SetupMessage,
}

#[derive(Deserialize)]
#[serde(rename = "PeerMessage")]
pub(crate) enum SetupMessage {
    Init,
    Offer(SetupText),
    Answer(SetupText),
    IceCandidate(SetupText),
}

impl SetupMessage {
    /// The length of the SDP or candidate text as encoded in JSON, escapes included: as the frame
    /// holds it for JSON, as a relay to a JSON node would write it for bincode.
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Self::Init => 0,
            Self::Offer(text) | Self::Answer(text) | Self::IceCandidate(text) => text.0,
        }
    }
}

/// A string that is validated and measured, never copied.
pub(crate) struct SetupText(usize);

impl<'de> Deserialize<'de> for SetupText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            // serde_json hands out the raw text of the value after checking its syntax, without
            // unescaping it: a string literal is all we need to know.
            let raw = <&'de serde_json::value::RawValue>::deserialize(deserializer)?.get();
            if !raw.starts_with('"') {
                return Err(de::Error::invalid_type(de::Unexpected::Other(raw), &"a string"));
            }
            // `\u` escapes can hide lone surrogates, which only a full parse rejects.
            if raw.contains("\\u") {
                serde_json::from_str::<String>(raw).map_err(de::Error::custom)?;
            }
            Ok(Self(raw.len().saturating_sub(2)))
        } else {
            deserializer.deserialize_str(TextLen).map(Self)
        }
    }
}

struct TextLen;

impl Visitor<'_> for TextLen {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<usize, E> {
        Ok(encoded_len(text))
    }
}

/// The length of `text` in the longer of the two encodings, JSON: with serde_json's escapes (two
/// bytes for `"`, `\` and the control characters with a short escape, six for the other control
/// characters), where bincode writes the UTF-8 bytes as they are. Limits on strings are checked
/// against this, so that a string within its limit is within it in every codec.
pub(crate) fn encoded_len(text: &str) -> usize {
    // Each byte's cost beyond itself, summed in 16-bit lanes over chunks short enough that a lane
    // cannot overflow (8,192 bytes of at most 5 each): a loop the compiler vectorises, on the
    // relay path of every bincode `PeerSetup`, whose SDP has a control character on every line.
    text.as_bytes().chunks(8192).fold(text.len(), |len, chunk| {
        let extra = chunk.iter().fold(0u16, |extra, &byte| {
            let control = u16::from(byte < 0x20) * 5;
            let short = u16::from(matches!(byte, b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r')) * 4;
            let quoted = u16::from(byte == b'"' || byte == b'\\');
            extra + control - short + quoted
        });
        len.saturating_add(usize::from(extra))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_len_is_the_length_serde_json_writes() {
        let mut texts: Vec<String> = (0..=0x7fu8).map(|b| char::from(b).to_string()).collect();
        texts.extend(
            ["", "plain", "é日本\u{1f600}", "\"\\\u{0}\u{1f}\u{7f}\n", "a\tb\rc\u{8}\u{c}"].map(String::from),
        );
        for text in texts {
            let json = serde_json::to_string(&text).unwrap();
            assert_eq!(encoded_len(&text), json.len() - 2, "{text:?} is {json}");
            assert!(encoded_len(&text) >= text.len());
        }
    }

    #[test]
    fn encoded_len_counts_each_byte_as_the_escape_table_says() {
        let table = |byte: u8| match byte {
            b'"' | b'\\' | b'\x08' | b'\x0c' | b'\n' | b'\r' | b'\t' => 2,
            0..=0x1f => 6,
            _ => 1,
        };
        // Every ASCII byte, alone and in runs across the chunks' edges.
        for byte in 0..0x80u8 {
            for n in [1, 31, 8191, 8192, 8193, 20_000] {
                let text = char::from(byte).to_string().repeat(n);
                assert_eq!(encoded_len(&text), table(byte) * n, "{byte:#x} x {n}");
            }
        }
        let mixed: String =
            (0..0x80u8).map(char::from).chain("é日本\u{1f600}".chars()).cycle().take(50_000).collect();
        assert_eq!(encoded_len(&mixed), mixed.bytes().map(table).sum::<usize>());
    }

    #[test]
    fn the_stable_modules_text_is_what_display_writes_and_parses_as_the_general_path_does() {
        assert_eq!(Modules::stable().to_string(), STABLE_TEXT);
        // The same text with spacing the fast path does not match goes the general way.
        let spaced = format!(" {STABLE_TEXT}").replace(" | ", "|");
        assert_eq!(spaced.parse::<Modules>(), Ok(Modules::stable()));
        assert_eq!(STABLE_TEXT.parse::<Modules>(), Ok(Modules::stable()));
    }
}
