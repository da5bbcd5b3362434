//! Hosted signalling: the same server over peer links ([`LinkTransport`], [`LinkClient`]). The
//! framing on a link and the guide to adapters are in the crate docs, "Hosted signalling".

mod client;
mod host;
mod pipe;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use client::LinkClient;
use host::Slot;
pub use host::{LinkHost, LinkTransport};
use pipe::{PipeRx, PipeTx, Refused};

use crate::codec::Codec;
use crate::error::ConfigError;
use crate::limits::{at_least, at_most, nonzero, MAX_QUEUE};
use crate::server::SignalConfig;

/// The label of the data channel that carries signalling between neighbours.
pub const LINK_LABEL: &str = "signal";

/// The data channel `protocol` of a link whose frames are bincode; an empty protocol is JSON.
pub const LINK_BINCODE: &str = "peer-signal-bincode";

/// The codec a data channel's `protocol` names: JSON for `""`, bincode for [`LINK_BINCODE`],
/// `None` for anything else (refuse the channel).
pub fn link_codec(protocol: &str) -> Option<Codec> {
    match protocol {
        "" => Some(Codec::Json),
        LINK_BINCODE => Some(Codec::Bincode),
        _ => None,
    }
}

/// The data channel `protocol` for `codec`: the inverse of [`link_codec`].
pub fn link_protocol(codec: Codec) -> &'static str {
    match codec {
        Codec::Json => "",
        Codec::Bincode => LINK_BINCODE,
    }
}

/// Limits of peer links, on the hosting side ([`LinkTransport`]) and the using side
/// ([`LinkClient`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LinkConfig {
    /// Links a host has attached at once; [`LinkHost::attach`] refuses more. Default 1,024: a node
    /// rarely has that many neighbours.
    pub max_links: usize,
    /// The largest message a link carries; a larger one from the neighbour ends the link. Default
    /// 64 KiB, the core's [`SignalConfig::max_frame_size`] (which [`for_server`](Self::for_server)
    /// copies).
    pub max_frame_size: usize,
    /// Messages queued on one link, each way. Default 256, the core's
    /// [`SignalConfig::max_send_backlog`].
    pub max_queued_frames: usize,
    /// Bytes queued on one link, each way; at least `max_frame_size`. Default 128 KiB: room for
    /// the longest list reply and some set-up messages.
    pub max_queued_bytes: usize,
    /// Bytes queued on all of a host's links together. Default 32 MiB. Past it, a neighbour's
    /// message ends its link and a frame for a neighbour closes that one, as when its own queue
    /// is full.
    pub max_queued_bytes_total: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            max_links: 1024,
            max_frame_size: 64 * 1024,
            max_queued_frames: 256,
            max_queued_bytes: 128 * 1024,
            max_queued_bytes_total: 32 * 1024 * 1024,
        }
    }
}

setters! {
    LinkConfig {
        with_max_links => max_links: usize,
        with_max_frame_size => max_frame_size: usize,
        with_max_queued_frames => max_queued_frames: usize,
        with_max_queued_bytes => max_queued_bytes: usize,
        with_max_queued_bytes_total => max_queued_bytes_total: usize,
    }
}

impl LinkConfig {
    /// The defaults, with the frame size and the queue length of the server's `config`.
    pub fn for_server(config: &SignalConfig) -> Self {
        let defaults = Self::default();
        Self {
            max_frame_size: config.max_frame_size,
            max_queued_frames: config.max_send_backlog,
            max_queued_bytes: defaults.max_queued_bytes.max(config.max_frame_size),
            max_queued_bytes_total: defaults.max_queued_bytes_total.max(config.max_frame_size),
            ..defaults
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first setting that is zero, a queue over 2^20 messages, or
    /// a byte bound smaller than the largest message.
    pub fn validate(&self) -> Result<(), ConfigError> {
        nonzero("max_links", self.max_links)?;
        nonzero("max_frame_size", self.max_frame_size)?;
        nonzero("max_queued_frames", self.max_queued_frames)?;
        at_most("max_queued_frames", self.max_queued_frames, MAX_QUEUE)?;
        at_least("max_queued_bytes", self.max_queued_bytes, "max_frame_size", self.max_frame_size)?;
        at_least(
            "max_queued_bytes_total",
            self.max_queued_bytes_total,
            "max_queued_bytes",
            self.max_queued_bytes,
        )
    }
}

/// Why a link refused a message, or a host a link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The other end of the link is gone: the server closed the link, or the client was dropped.
    #[error("the link is closed")]
    Closed,
    /// The neighbour sent faster than the link is read: its queue was full. The link is ended.
    #[error("the neighbour sent more than the link holds")]
    Flooded,
    /// The neighbour sent a message larger than [`LinkConfig::max_frame_size`]. The link is ended.
    #[error("a message of {0} bytes, over the link's largest")]
    TooLarge(usize),
    /// The host has [`LinkConfig::max_links`] links attached already.
    #[error("{0} links are attached already")]
    TooManyLinks(usize),
    /// A channel that is not a signalling link: its label is not [`LINK_LABEL`], or its protocol
    /// names no codec ([`link_codec`]).
    #[error("not a signalling channel: label {label:?}, protocol {protocol:?}")]
    NotALink {
        /// The channel's label.
        label: String,
        /// The channel's protocol.
        protocol: String,
    },
}

/// The end of a link that takes what arrives on its channel. Dropping it ends the link.
pub struct LinkInbound {
    to: Option<PipeTx>,
    max_frame_size: usize,
}

impl fmt::Debug for LinkInbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkInbound").field("open", &self.to.is_some()).finish_non_exhaustive()
    }
}

impl LinkInbound {
    fn new(to: PipeTx, max_frame_size: usize) -> Self {
        Self { to: Some(to), max_frame_size }
    }

    /// Passes on one message from the channel, without waiting.
    ///
    /// # Errors
    ///
    /// [`LinkError::Flooded`] or [`LinkError::TooLarge`]: the link is ended now (the messages
    /// before this one are still read), and the adapter closes the channel.
    /// [`LinkError::Closed`] once the link is over.
    pub fn deliver(&mut self, frame: Bytes) -> Result<(), LinkError> {
        let Some(to) = &self.to else { return Err(LinkError::Closed) };
        let refused = if frame.len() > self.max_frame_size {
            LinkError::TooLarge(frame.len())
        } else {
            match to.try_send(frame) {
                Ok(()) => return Ok(()),
                Err(Refused::Full) => LinkError::Flooded,
                Err(Refused::Closed) => LinkError::Closed,
            }
        };
        self.to = None;
        Err(refused)
    }

    /// Whether the link is over: ended here, or its other end gone.
    pub fn is_closed(&self) -> bool {
        self.to.as_ref().is_none_or(PipeTx::is_closed)
    }
}

/// The end of a link that gives what to send on its channel.
pub struct LinkOutbound {
    from: PipeRx,
    /// The host's place for the link, held until the adapter lets go.
    _slot: Option<Arc<Slot>>,
}

impl fmt::Debug for LinkOutbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkOutbound")
            .field("queued_bytes", &self.from.queued_bytes())
            .finish_non_exhaustive()
    }
}

impl LinkOutbound {
    fn new(from: PipeRx, slot: Option<Arc<Slot>>) -> Self {
        Self { from, _slot: slot }
    }

    /// The next message to send on the channel; `None` once the link is over and everything
    /// before was taken: then close the channel. Dropping the future loses nothing.
    pub async fn recv(&self) -> Option<Bytes> {
        self.from.recv().await
    }

    /// The next message if one is queued.
    pub fn try_recv(&self) -> Option<Bytes> {
        self.from.try_recv()
    }

    /// Bytes queued for the channel.
    pub fn queued_bytes(&self) -> usize {
        self.from.queued_bytes()
    }
}
