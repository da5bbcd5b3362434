//! Real WebRTC on loopback, for the hosted-signalling test: [`Peer`] (a webrtc-rs peer connection
//! that only ever uses 127.0.0.1, set up with `PeerMessage` strings), [`AppChannel`] (a data
//! channel of the application), and [`join_link`], the adapter between a data channel and the two
//! ends of a peer link, as the crate docs ("Writing an adapter", `src/lib.rs`) describe it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use peer_signal::{
    link_codec, link_protocol, Codec, LinkClient, LinkConfig, LinkHost, LinkInbound, LinkOutbound, LINK_LABEL,
};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::APIBuilder;
use webrtc::data::data_channel::DataChannel;
use webrtc::data_channel::data_channel_init::RTCDataChannelInit;
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

/// A link channel that does not open within this is closed.
const LINK_OPEN_WITHIN: Duration = Duration::from_secs(10);
/// One message handed to the channel; webrtc-rs queues it without waiting for the peer.
const LINK_SEND_WITHIN: Duration = Duration::from_secs(5);
/// Past this many bytes in the channel's send buffer, the adapter stops taking the link's frames
/// until the buffer drains to half; the link's own queue then fills and the server closes the
/// link as a slow reader, or the adapter does after [`LINK_STALL`].
const LINK_BUFFERED_HIGH: usize = 256 * 1024;
/// How long the send buffer may stay over [`LINK_BUFFERED_HIGH`] before the channel is closed.
const LINK_STALL: Duration = Duration::from_secs(5);
/// How long closing a channel or a peer connection may take.
const CLOSE_WITHIN: Duration = Duration::from_secs(3);
/// Messages of an application channel not read yet; more are dropped (the tests send one).
const APP_QUEUE: usize = 64;
/// The largest message read from a channel; a larger one fails the read and ends the channel.
/// One more than the largest frame a link takes, so that [`LinkInbound::deliver`] is the one to
/// refuse it.
const READ_BUFFER: usize = 64 * 1024 + 1;

/// The raw channel under `channel`, once it is open.
///
/// Data channels are detached ([`SettingEngine::detach_data_channels`]) and read by our own
/// task: webrtc-rs 0.12 starts reading a channel as it opens and drops what arrives before
/// `on_message` is set, and a channel created on a connection that is up is open before
/// `create_data_channel` returns. A detached channel keeps what arrives until it is read.
fn detached(channel: &Arc<RTCDataChannel>) -> oneshot::Receiver<Arc<DataChannel>> {
    let (detached_tx, detached) = oneshot::channel();
    let weak = Arc::downgrade(channel);
    channel.on_open(Box::new(move || {
        Box::pin(async move {
            if let Some(channel) = weak.upgrade() {
                if let Ok(raw) = channel.detach().await {
                    let _ = detached_tx.send(raw);
                }
            }
        })
    }));
    detached
}

/// A data channel joined to a peer link by [`join_link`]: the handle to end the link and to see
/// it end.
#[derive(Clone)]
pub struct LinkChannel {
    shared: Arc<LinkShared>,
}

struct LinkShared {
    /// The link's inbound end, dropped when the link ends (the neighbour left, or refused).
    inbound: Mutex<Option<LinkInbound>>,
    ended: watch::Sender<bool>,
}

impl LinkShared {
    fn end(&self) {
        // Flagged first: whoever sees the link closed (its client, through the inbound end) sees
        // it ended too.
        self.ended.send_replace(true);
        let inbound = self.inbound.lock().expect("link lock").take();
        drop(inbound);
    }

    /// Passes one message to the link; whether the link took it.
    fn deliver(&self, frame: Bytes) -> bool {
        let mut inbound = self.inbound.lock().expect("link lock");
        inbound.as_mut().is_some_and(|link| link.deliver(frame).is_ok())
    }
}

impl LinkChannel {
    /// Ends the link: the adapter closes the channel and drops both ends.
    pub fn close(&self) {
        self.shared.end();
    }

    /// Waits until the link has ended, at most until `deadline`; whether it did.
    pub async fn ended(&self, deadline: Instant) -> bool {
        let mut ended = self.shared.ended.subscribe();
        let waited = timeout_at(deadline, ended.wait_for(|ended| *ended)).await;
        matches!(waited, Ok(Ok(_)))
    }

    pub fn is_ended(&self) -> bool {
        *self.shared.ended.borrow()
    }
}

/// Joins `channel` to a link's two ends, the frames encoded with `codec`:
///
/// - every message the channel receives goes to [`LinkInbound::deliver`], which never waits; an
///   error (the neighbour flooded the link, or sent a frame over the limit) ends the link;
/// - a task sends what [`LinkOutbound::recv`] gives, text for JSON and binary for bincode, once
///   the channel is open; `None` ends the link; so does a send buffer that stays over
///   [`LINK_BUFFERED_HIGH`] for [`LINK_STALL`];
/// - when the link ends, for whichever reason (the channel closed or failed, the link refused a
///   message, [`LinkChannel::close`]), the task closes the channel and both ends are dropped.
///
/// Call it before the channel opens, or on an open channel; the peer connection must detach its
/// channels (see [`Peer`]).
pub fn join_link(
    channel: Arc<RTCDataChannel>,
    codec: Codec,
    inbound: LinkInbound,
    outbound: LinkOutbound,
) -> LinkChannel {
    let shared = Arc::new(LinkShared { inbound: Mutex::new(Some(inbound)), ended: watch::channel(false).0 });
    let opened = detached(&channel);
    let task = Arc::clone(&shared);
    tokio::spawn(async move {
        let mut ended = task.ended.subscribe();
        let open = async {
            tokio::select! {
                raw = opened => raw.ok(),
                _ = ended.wait_for(|ended| *ended) => None,
            }
        };
        if let Ok(Some(raw)) = timeout(LINK_OPEN_WITHIN, open).await {
            tokio::spawn(read_link(Arc::clone(&raw), Arc::clone(&task)));
            pump(&raw, codec, &outbound, task.ended.subscribe()).await;
        }
        task.end();
        drop(outbound);
        let _ = timeout(CLOSE_WITHIN, channel.close()).await;
    });
    LinkChannel { shared }
}

/// Reads the channel into the link until either ends.
async fn read_link(raw: Arc<DataChannel>, shared: Arc<LinkShared>) {
    let mut ended = shared.ended.subscribe();
    let mut buffer = vec![0; READ_BUFFER];
    loop {
        let read = tokio::select! {
            read = raw.read_data_channel(&mut buffer) => read,
            _ = ended.wait_for(|ended| *ended) => return,
        };
        match read {
            // Zero bytes: the stream was reset (the neighbour closed the channel). The protocol
            // has no empty messages.
            Ok((0, _)) | Err(_) => break,
            Ok((n, _)) => {
                if !shared.deliver(Bytes::copy_from_slice(&buffer[..n])) {
                    break;
                }
            }
        }
    }
    shared.end();
}

/// Sends the link's frames on the channel until the link ends.
async fn pump(raw: &DataChannel, codec: Codec, outbound: &LinkOutbound, mut ended: watch::Receiver<bool>) {
    let drained = Arc::new(Notify::new());
    raw.set_buffered_amount_low_threshold(LINK_BUFFERED_HIGH / 2);
    let on_low = Arc::clone(&drained);
    raw.on_buffered_amount_low(Box::new(move || {
        on_low.notify_one();
        Box::pin(async {})
    }));
    loop {
        let frame = tokio::select! {
            frame = outbound.recv() => frame,
            _ = ended.wait_for(|ended| *ended) => return,
        };
        let Some(frame) = frame else { return };
        let sent = timeout(LINK_SEND_WITHIN, raw.write_data_channel(&frame, !codec.is_binary())).await;
        if !matches!(sent, Ok(Ok(_))) {
            return;
        }
        if raw.buffered_amount() > LINK_BUFFERED_HIGH {
            let stalled = Instant::now() + LINK_STALL;
            while raw.buffered_amount() > LINK_BUFFERED_HIGH / 2 {
                if timeout_at(stalled, drained.notified()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A data channel of the application, whose text messages the test reads.
pub struct AppChannel {
    channel: Arc<RTCDataChannel>,
    opened: watch::Receiver<bool>,
    messages: mpsc::Receiver<String>,
}

impl AppChannel {
    /// Reads the channel once it opens, into a queue for [`recv`](Self::recv).
    fn wrap(channel: Arc<RTCDataChannel>) -> Self {
        let raw = detached(&channel);
        let (opened_tx, opened) = watch::channel(false);
        let (to_app, messages) = mpsc::channel(APP_QUEUE);
        tokio::spawn(async move {
            let Ok(raw) = raw.await else { return };
            opened_tx.send_replace(true);
            let mut buffer = vec![0; READ_BUFFER];
            while let Ok((n, _)) = raw.read_data_channel(&mut buffer).await {
                if n == 0 {
                    break;
                }
                let _ = to_app.try_send(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        });
        Self { channel, opened, messages }
    }

    pub fn label(&self) -> &str {
        self.channel.label()
    }

    /// Waits until the channel is open, then sends `text`.
    pub async fn send(&mut self, text: &str, deadline: Instant) {
        let label = self.channel.label().to_string();
        let open = timeout_at(deadline, self.opened.wait_for(|open| *open)).await;
        assert!(matches!(open, Ok(Ok(_))), "channel {label:?} did not open");
        let sent = timeout_at(deadline, self.channel.send_text(text.to_string())).await;
        assert!(matches!(sent, Ok(Ok(_))), "channel {label:?}: send failed: {sent:?}");
    }

    /// The next message, before `deadline`.
    pub async fn recv(&mut self, deadline: Instant) -> String {
        let label = self.channel.label().to_string();
        match timeout_at(deadline, self.messages.recv()).await {
            Ok(Some(text)) => text,
            Ok(None) => panic!("channel {label:?} closed"),
            Err(_) => panic!("channel {label:?}: no message in time"),
        }
    }
}

/// A webrtc-rs peer connection restricted to loopback: host candidates on 127.0.0.1 over UDP
/// only, no STUN or TURN server, no mDNS. Set up without trickle: the offer and the answer are
/// sent once gathering is complete, with every candidate in the SDP (on loopback that takes
/// milliseconds). Candidates that come as `IceCandidate` messages are added all the same.
///
/// With a [`LinkHost`], the node hosts signalling: every channel the neighbour opens labelled
/// [`LINK_LABEL`] is attached to the host. Other channels the remote opens are application
/// channels ([`accept_channel`](Self::accept_channel)). Its channels are detached and read by
/// tasks of ours (see [`detached`]).
pub struct Peer {
    pc: Arc<RTCPeerConnection>,
    state: watch::Receiver<RTCPeerConnectionState>,
    channels: mpsc::UnboundedReceiver<AppChannel>,
    /// Link channels on this connection, opened here or attached to the host.
    links: Arc<Mutex<Vec<LinkChannel>>>,
}

impl Peer {
    pub async fn new(host: Option<LinkHost>) -> Self {
        let mut settings = SettingEngine::default();
        settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
        settings.set_include_loopback_candidate(true);
        settings.set_network_types(vec![NetworkType::Udp4]);
        settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        settings.detach_data_channels();
        // The answerer's first check can reach the offerer before the offerer has taken the
        // answer's candidates: it then learns the same 127.0.0.1 address as peer-reflexive, and
        // webrtc-ice waits 1 s by default before it nominates such a pair. On loopback it is the
        // host candidate seen early.
        settings.set_prflx_acceptance_min_wait(Some(Duration::ZERO));
        let api = APIBuilder::new().with_setting_engine(settings).build();
        let pc = api.new_peer_connection(RTCConfiguration::default()).await.expect("new peer connection");
        let pc = Arc::new(pc);

        let links: Arc<Mutex<Vec<LinkChannel>>> = Arc::default();
        let (state_tx, state) = watch::channel(RTCPeerConnectionState::New);
        let on_state = Arc::clone(&links);
        pc.on_peer_connection_state_change(Box::new(move |now| {
            state_tx.send_replace(now);
            // A connection that is gone takes its links with it, whatever the channels say.
            if matches!(
                now,
                RTCPeerConnectionState::Disconnected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            ) {
                on_state.lock().expect("links lock").iter().for_each(LinkChannel::close);
            }
            Box::pin(async {})
        }));

        let (to_app, channels) = mpsc::unbounded_channel();
        let on_channel = Arc::clone(&links);
        pc.on_data_channel(Box::new(move |channel: Arc<RTCDataChannel>| {
            // Runs before the channel opens.
            if channel.label() != LINK_LABEL {
                let _ = to_app.send(AppChannel::wrap(channel));
                return Box::pin(async {});
            }
            let codec = link_codec(channel.protocol());
            match (&host, codec) {
                (Some(host), Some(codec)) => match host.attach(codec) {
                    Ok((inbound, outbound)) => {
                        let link = join_link(channel, codec, inbound, outbound);
                        on_channel.lock().expect("links lock").push(link);
                    }
                    Err(error) => {
                        eprintln!("refused a link: {error}");
                        refuse(channel);
                    }
                },
                // Not hosting, or a protocol that names no codec.
                _ => refuse(channel),
            }
            Box::pin(async {})
        }));
        Self { pc, state, channels, links }
    }

    /// A data channel of the application, opened from this side; negotiated in the offer when
    /// opened before it.
    pub async fn open_channel(&self, label: &str) -> AppChannel {
        let channel = self.pc.create_data_channel(label, None).await.expect("create data channel");
        AppChannel::wrap(channel)
    }

    /// Opens a link channel to the neighbour, to use the signalling it hosts: returns the
    /// connection for an `AsyncClient`, and the handle of the link.
    pub async fn open_link(&self, codec: Codec) -> (LinkClient, LinkChannel) {
        let init =
            RTCDataChannelInit { protocol: Some(link_protocol(codec).to_string()), ..Default::default() };
        let channel = self.pc.create_data_channel(LINK_LABEL, Some(init)).await.expect("create link channel");
        let (client, inbound, outbound) = LinkClient::new(codec, &LinkConfig::default());
        let link = join_link(channel, codec, inbound, outbound);
        self.links.lock().expect("links lock").push(link.clone());
        (client, link)
    }

    /// Creates the offer and returns its SDP, with every candidate.
    pub async fn offer(&self) -> String {
        let offer = self.pc.create_offer(None).await.expect("create offer");
        self.describe(offer).await
    }

    /// Takes the remote's offer, and returns the answer's SDP, with every candidate.
    pub async fn answer(&self, offer: &str) -> String {
        let offer = RTCSessionDescription::offer(offer.to_string()).expect("offer SDP");
        self.pc.set_remote_description(offer).await.expect("set the remote offer");
        let answer = self.pc.create_answer(None).await.expect("create answer");
        self.describe(answer).await
    }

    /// Takes the remote's answer.
    pub async fn accept_answer(&self, answer: &str) {
        let answer = RTCSessionDescription::answer(answer.to_string()).expect("answer SDP");
        self.pc.set_remote_description(answer).await.expect("set the remote answer");
    }

    /// Adds a remote candidate (a candidate line, as trickle ICE would send it).
    pub async fn add_candidate(&self, candidate: &str) {
        let init = RTCIceCandidateInit { candidate: candidate.to_string(), ..Default::default() };
        self.pc.add_ice_candidate(init).await.expect("add ICE candidate");
    }

    /// Sets the local description and returns it once gathering is complete.
    async fn describe(&self, description: RTCSessionDescription) -> String {
        let mut gathered = self.pc.gathering_complete_promise().await;
        self.pc.set_local_description(description).await.expect("set the local description");
        timeout(Duration::from_secs(10), gathered.recv()).await.expect("ICE gathering within 10 s");
        let local = self.pc.local_description().await.expect("a local description");
        assert!(local.sdp.contains("127.0.0.1"), "no loopback candidate in {}", local.sdp);
        local.sdp
    }

    /// Waits for the connection (ICE and DTLS) to be up.
    pub async fn connected(&mut self, deadline: Instant) {
        let up =
            timeout_at(deadline, self.state.wait_for(|state| *state == RTCPeerConnectionState::Connected));
        let up = matches!(up.await, Ok(Ok(_)));
        assert!(up, "peer connection not connected in time: {}", *self.state.borrow());
    }

    /// The state of the connection now.
    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// The next application channel the remote opened.
    pub async fn accept_channel(&mut self, deadline: Instant) -> AppChannel {
        match timeout_at(deadline, self.channels.recv()).await {
            Ok(Some(channel)) => channel,
            _ => panic!("the remote opened no channel in time"),
        }
    }

    /// The link channels on this connection.
    pub fn links(&self) -> Vec<LinkChannel> {
        self.links.lock().expect("links lock").clone()
    }

    /// Ends every link, then closes the connection.
    pub async fn close(&self) {
        self.links().iter().for_each(LinkChannel::close);
        let _ = timeout(CLOSE_WITHIN, self.pc.close()).await;
    }
}

/// Closes a channel nobody takes.
fn refuse(channel: Arc<RTCDataChannel>) {
    tokio::spawn(async move {
        let _ = timeout(CLOSE_WITHIN, channel.close()).await;
    });
}
