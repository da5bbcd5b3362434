//! In headless Chromium, one page and two peer connections on loopback: hosted signalling over a
//! real `RTCDataChannel`, with the page's server on one end (`host_signalling`,
//! `attach_channel`) and a client on the other (`link_client`), in both codecs; and what the
//! hosting side refuses. Needs no server: `scripts/browser-tests.sh` runs it with the others.
#![cfg(all(target_arch = "wasm32", target_os = "unknown", feature = "browser"))]

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures::future::{select, Either};
use futures::StreamExt;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    attach_channel, host_signalling, link_client, link_protocol, AsyncClient, BrowserTimer, Codec,
    LinkConfig, LinkError, LinkHost, NodeInfo, SignalConfig, SignalEvent, LINK_LABEL,
};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use web_sys::{
    RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit, RtcPeerConnection, RtcPeerConnectionIceEvent,
    RtcSdpType, RtcSessionDescriptionInit,
};

wasm_bindgen_test_configure!(run_in_browser);

/// Every wait on the browser or the other end.
const WITHIN: Duration = Duration::from_secs(10);

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    futures::pin_mut!(future);
    match select(future, BrowserTimer::sleep(WITHIN)).await {
        Either::Left((output, _)) => output,
        Either::Right(_) => panic!("{what}: nothing within {WITHIN:?}"),
    }
}

/// A neighbour's channel for signalling in `codec`, created before the offer.
fn signal_channel(pc: &RtcPeerConnection, codec: Codec) -> RtcDataChannel {
    let init = RtcDataChannelInit::new();
    init.set_protocol(link_protocol(codec));
    pc.create_data_channel_with_data_channel_dict(LINK_LABEL, &init)
}

/// Sets the local description of `pc` and waits until its candidates are gathered; its SDP.
async fn describe(pc: &RtcPeerConnection, kind: RtcSdpType) -> String {
    let (gathered_tx, gathered) = oneshot::channel::<()>();
    let gathered_tx = RefCell::new(Some(gathered_tx));
    let on_candidate =
        Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new(move |event: RtcPeerConnectionIceEvent| {
            if event.candidate().is_none() {
                if let Some(done) = gathered_tx.borrow_mut().take() {
                    let _ = done.send(());
                }
            }
        });
    pc.set_onicecandidate(Some(on_candidate.as_ref().unchecked_ref()));
    let made = match kind {
        RtcSdpType::Offer => pc.create_offer(),
        _ => pc.create_answer(),
    };
    let made = within("create a description", JsFuture::from(made)).await.expect("a description");
    let sdp = js_sys::Reflect::get(&made, &JsValue::from_str("sdp")).expect("sdp").as_string().expect("text");
    let description = RtcSessionDescriptionInit::new(kind);
    description.set_sdp(&sdp);
    within("set it", JsFuture::from(pc.set_local_description(&description))).await.expect("set");
    within("gather candidates", gathered).await.expect("gathered");
    pc.set_onicecandidate(None);
    pc.local_description().expect("a local description").sdp()
}

/// Connects `opener` (whose channels exist) to `host`, candidates included in the SDP.
async fn connect(opener: &RtcPeerConnection, host: &RtcPeerConnection) {
    let offer = describe(opener, RtcSdpType::Offer).await;
    let remote = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
    remote.set_sdp(&offer);
    within("take the offer", JsFuture::from(host.set_remote_description(&remote))).await.expect("offer");
    let answer = describe(host, RtcSdpType::Answer).await;
    let remote = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
    remote.set_sdp(&answer);
    within("take the answer", JsFuture::from(opener.set_remote_description(&remote))).await.expect("answer");
}

/// What `attach_channel` said for each incoming channel.
type Attached = Rc<RefCell<Vec<Result<(), LinkError>>>>;

/// The host's side: every incoming channel goes to `attach_channel`, and its result is kept.
fn attach_incoming(
    pc: &RtcPeerConnection,
    host: LinkHost,
) -> (Attached, Closure<dyn FnMut(RtcDataChannelEvent)>) {
    let attached = Rc::new(RefCell::new(Vec::new()));
    let handler = {
        let attached = Rc::clone(&attached);
        Closure::<dyn FnMut(RtcDataChannelEvent)>::new(move |event: RtcDataChannelEvent| {
            attached.borrow_mut().push(attach_channel(&host, &event.channel()));
        })
    };
    pc.set_ondatachannel(Some(handler.as_ref().unchecked_ref()));
    (attached, handler)
}

async fn a_neighbour_signs_in_over_a_data_channel(codec: Codec, seed: u8) {
    let (host, handle, mut events) = host_signalling(SignalConfig::default(), 16).expect("a server");
    let (host_pc, user_pc) = (RtcPeerConnection::new().expect("pc"), RtcPeerConnection::new().expect("pc"));
    let (attached, _handler) = attach_incoming(&host_pc, host.clone());
    let channel = signal_channel(&user_pc, codec);
    // Read from now on: the host speaks first.
    let client = link_client(&channel, &LinkConfig::default()).expect("a signalling channel");
    connect(&user_pc, &host_pc).await;

    let key = SigningKey::from_bytes(&[seed; 32]);
    let info = NodeInfo::new("neighbour", "peer-signal browser test", key.verifying_key().to_bytes());
    let mut node =
        within("sign in at the page", AsyncClient::connect(client, key, info)).await.expect("signed in");
    let listed = within("list", node.list()).await.expect("a list");
    console_log!(
        "{codec:?}: signed in at the page's server over a data channel as {}, listed {}",
        node.id(),
        listed.len()
    );
    assert_eq!(listed.iter().map(NodeInfo::id).collect::<Vec<_>>(), vec![node.id()]);
    assert!(matches!(attached.borrow().as_slice(), [Ok(())]), "{:?}", attached.borrow());
    let nodes = within("the host's nodes", handle.nodes()).await.expect("nodes");
    assert_eq!(nodes.iter().map(|n| (n.id, n.codec)).collect::<Vec<_>>(), vec![(node.id(), codec)]);
    assert_eq!(host.attached(), 1);

    // The neighbour leaves: dropping its client closes the channel, and the host forgets it.
    let id = node.id();
    drop(node);
    within("the host forgets the node", async {
        loop {
            match events.next().await.expect("the server runs") {
                SignalEvent::NodeLeft(left) if left == id => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(within("the host's nodes", handle.nodes()).await.expect("nodes").is_empty());
    console_log!("{codec:?}: the host forgot the node once its channel closed");
    handle.stop();
    host_pc.close();
    user_pc.close();
}

#[wasm_bindgen_test]
async fn a_neighbour_signs_in_at_a_pages_server_over_a_json_data_channel() {
    a_neighbour_signs_in_over_a_data_channel(Codec::Json, 51).await;
}

#[wasm_bindgen_test]
async fn a_neighbour_signs_in_at_a_pages_server_over_a_bincode_data_channel() {
    a_neighbour_signs_in_over_a_data_channel(Codec::Bincode, 52).await;
}

#[wasm_bindgen_test]
async fn the_host_refuses_other_channels_and_closes_one_that_sends_more_than_a_frame() {
    let config = SignalConfig::default();
    let largest = config.max_frame_size;
    let (host, handle, _events) = host_signalling(config, 16).expect("a server");
    let (host_pc, user_pc) = (RtcPeerConnection::new().expect("pc"), RtcPeerConnection::new().expect("pc"));
    let (attached, _handler) = attach_incoming(&host_pc, host.clone());
    let chat = user_pc.create_data_channel("chat");
    let raw = signal_channel(&user_pc, Codec::Bincode);
    raw.set_binary_type(web_sys::RtcDataChannelType::Arraybuffer);

    // The raw channel reports its first message (the host's challenge) and its close.
    let (challenge_tx, challenge) = oneshot::channel::<usize>();
    let challenge_tx = RefCell::new(Some(challenge_tx));
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
        let len = event.data().dyn_into::<js_sys::ArrayBuffer>().map_or(0, |b| b.byte_length() as usize);
        if let Some(first) = challenge_tx.borrow_mut().take() {
            let _ = first.send(len);
        }
    });
    raw.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let (closed_tx, closed) = oneshot::channel::<()>();
    let closed_tx = RefCell::new(Some(closed_tx));
    let on_close = Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
        if let Some(closed) = closed_tx.borrow_mut().take() {
            let _ = closed.send(());
        }
    });
    raw.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    connect(&user_pc, &host_pc).await;

    let challenge = within("the host's challenge", challenge).await.expect("a challenge");
    console_log!("raw signalling channel: a challenge of {challenge} bytes");
    assert!(challenge > 0);
    assert!(
        matches!(attached.borrow().as_slice(), [Err(LinkError::NotALink { label, .. }), Ok(())] | [Ok(()), Err(LinkError::NotALink { label, .. })] if label == "chat"),
        "{:?}",
        attached.borrow()
    );
    assert_eq!(
        chat.ready_state(),
        web_sys::RtcDataChannelState::Open,
        "a channel that is not a link is left alone"
    );

    raw.send_with_u8_array(&vec![0; largest + 1]).expect("sent");
    within("the host closes the channel", closed).await.expect("closed");
    console_log!("raw signalling channel: closed by the host after a message of {} bytes", largest + 1);
    handle.stop();
    host_pc.close();
    user_pc.close();
}
