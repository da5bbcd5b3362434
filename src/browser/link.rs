//! Hosted signalling in a page: links over `RTCDataChannel`s, on the hosting side
//! ([`attach_channel`], [`host_signalling`]) and the using side ([`link_client`]).

use std::sync::Arc;
use std::time::Duration;

use web_sys::RtcDataChannel;

use super::channel::{join, Channel, OPEN_WITHIN};
use super::timer::BrowserTimer;
use crate::driver::{Driver, DriverEvents, DriverHandle};
use crate::error::ConfigError;
use crate::server::{SignalConfig, SignalServer};
use crate::transport::peer_link::{
    link_codec, LinkClient, LinkConfig, LinkError, LinkHost, LinkTransport, LINK_LABEL,
};

/// How often a hosting server in a page is ticked: its deadlines are whole seconds.
const TICK: Duration = Duration::from_secs(1);

/// Starts a signalling server that this page hosts for its neighbours: a
/// [`SignalServer`] with `config` over a [`LinkTransport`], driven by a local task of the page and
/// ticked by [`BrowserTimer`]. Attach each neighbour's channel with [`attach_channel`]; stop it
/// with [`DriverHandle::stop`]. `event_capacity` bounds the events waiting in
/// [`DriverEvents`].
///
/// # Errors
///
/// A [`ConfigError`] naming the first setting of `config` that the server or the transport
/// refuses.
pub fn host_signalling(
    config: SignalConfig,
    event_capacity: usize,
) -> Result<(LinkHost, DriverHandle, DriverEvents), ConfigError> {
    let (transport, host) = LinkTransport::new(LinkConfig::for_server(&config))?;
    let (driver, handle, events) = Driver::new(SignalServer::new(config)?, transport, event_capacity);
    wasm_bindgen_futures::spawn_local(async move {
        let _server = driver.run(BrowserTimer::ticks(TICK)).await;
    });
    Ok((host, handle, events))
}

/// Attaches a neighbour's data channel to the signalling this page hosts: a channel labelled
/// [`LINK_LABEL`] whose protocol names its codec ([`link_codec`]), as it comes from the peer
/// connection's `datachannel` event. Its messages are read from this moment on; once it is open,
/// the server's frames go out on it. The channel is closed when the server closes the link, and
/// the link ends when the channel closes.
///
/// # Errors
///
/// [`LinkError::NotALink`] for a channel with another label or an unknown protocol (it is left
/// alone: it may be the application's), and the errors of [`LinkHost::attach`] (then it is
/// closed).
pub fn attach_channel(host: &LinkHost, channel: &RtcDataChannel) -> Result<(), LinkError> {
    let codec = signalling_codec(channel)?;
    match host.attach(codec) {
        Ok((inbound, outbound)) => {
            join(channel.clone(), codec, inbound, outbound, OPEN_WITHIN, None);
            Ok(())
        }
        Err(refused) => {
            channel.close();
            Err(refused)
        }
    }
}

/// A connection to the signalling a neighbour hosts, over a data channel this page opened to it
/// (labelled [`LINK_LABEL`], with the protocol of its codec, [`link_protocol`](crate::link_protocol)):
/// give it to [`AsyncClient::connect`](crate::AsyncClient::connect). Its queues are bounded by
/// `config`; it carries a [`BrowserTimer`], so that the sign-in has its deadline. For a sign-in
/// bound to the neighbour, add its id with [`LinkClient::with_host`]. Dropping the client (or the
/// [`AsyncClient`](crate::AsyncClient)) closes the channel.
///
/// # Errors
///
/// [`LinkError::NotALink`] for a channel with another label or an unknown protocol.
pub fn link_client(channel: &RtcDataChannel, config: &LinkConfig) -> Result<LinkClient, LinkError> {
    let codec = signalling_codec(channel)?;
    let (client, inbound, outbound) = LinkClient::new(codec, config);
    join(channel.clone(), codec, inbound, outbound, OPEN_WITHIN, None);
    Ok(client.with_timer(Arc::new(BrowserTimer)))
}

fn signalling_codec(channel: &RtcDataChannel) -> Result<crate::codec::Codec, LinkError> {
    let (label, protocol) = (channel.label(), channel.protocol());
    match link_codec(&protocol) {
        Some(codec) if label == LINK_LABEL => Ok(codec),
        _ => Err(LinkError::NotALink { label, protocol }),
    }
}
