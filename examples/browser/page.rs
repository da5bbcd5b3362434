//! The page's node. Its address says what it does:
//!
//! - `?name=A&server=URL` signs in at the server and answers set-ups: a node that asks gets a
//!   data channel `app`, on which both sides say hello.
//! - `&connect=B` also waits until B is listed and asks B for a channel.
//! - `&role=host` hosts signalling: a node that asks through the server gets a channel
//!   `signal`, attached to the page's own server.
//! - `&via=B` signs in at B's signalling over such a channel; with `&connect=C`, once the server
//!   is gone, it asks C for a channel through B.
//! - `&codec=bincode` speaks bincode to the server and on links.
//!
//! Every line it logs goes to the page's `<pre id="log">` and the console.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either};
use futures::StreamExt;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    attach_channel, host_signalling, link_client, link_protocol, AsyncClient, BrowserClient, BrowserTimer,
    BrowserWs, ClientError, ClientEvent, Codec, LinkConfig, LinkHost, NodeID, NodeInfo, PeerInfo,
    PeerMessage, SignalConfig, LINK_LABEL,
};
use rand_core::{OsRng, RngCore};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{spawn_local, JsFuture};
use web_sys::{
    MessageEvent, RtcDataChannel, RtcDataChannelEvent, RtcDataChannelInit, RtcIceCandidateInit,
    RtcPeerConnection, RtcPeerConnectionIceEvent, RtcSdpType, RtcSessionDescriptionInit,
};

/// Every wait on the server, a neighbour or the browser.
const WITHIN: Duration = Duration::from_secs(20);
/// How often to ask for the list while waiting for a node to appear.
const LIST_EVERY: Duration = Duration::from_millis(300);
/// Set-up messages waiting for one peer connection.
const SETUP_QUEUE: usize = 64;
/// Requests waiting for one signalling connection.
const REQUEST_QUEUE: usize = 64;

#[wasm_bindgen(start)]
pub fn start() {
    spawn_local(async {
        if let Err(error) = run().await {
            log(&format!("error: {error}"));
        }
    });
}

/// Appends a line to the page's log and the console.
fn log(line: &str) {
    web_sys::console::log_1(&JsValue::from_str(line));
    let Some(document) = web_sys::window().and_then(|window| window.document()) else { return };
    if let Some(pre) = document.get_element_by_id("log") {
        let text = pre.text_content().unwrap_or_default();
        pre.set_text_content(Some(&format!("{text}{line}\n")));
    }
}

fn js_error(error: JsValue) -> String {
    error.as_string().or_else(|| js_sys::JSON::stringify(&error).ok().map(String::from)).unwrap_or_default()
}

/// The page's parameters, from its address.
struct Params(HashMap<String, String>);

impl Params {
    fn from_location() -> Self {
        let search = web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default();
        let pairs = search.trim_start_matches('?').split('&').filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let value = js_sys::decode_uri_component(value).ok().map(String::from)?;
            Some((key.to_string(), value))
        });
        Self(pairs.collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
}

/// `future`, or an error naming `what` once [`WITHIN`] has passed.
async fn within<F: std::future::Future>(what: &str, future: F) -> Result<F::Output, String> {
    futures::pin_mut!(future);
    match select(future, BrowserTimer::sleep(WITHIN)).await {
        Either::Left((output, _)) => Ok(output),
        Either::Right(_) => Err(format!("{what}: nothing within {WITHIN:?}")),
    }
}

/// What the page knows and does, shared by its tasks.
struct Page {
    name: String,
    /// The node's key: one node on every signalling path.
    key: SigningKey,
    codec: Codec,
    /// The signalling this page hosts, when it does.
    host: Option<LinkHost>,
    /// Names of the nodes listed so far.
    names: RefCell<HashMap<NodeID, String>>,
    /// Set-ups under way: per signalling path and peer, the queue of that peer connection's task.
    sessions: RefCell<HashMap<(&'static str, NodeID), mpsc::Sender<PeerInfo>>>,
    /// The neighbour whose signalling this page uses, once listed.
    neighbour: RefCell<Option<NodeID>>,
    /// The signalling connection at the hosting neighbour, once it is up.
    hosted: RefCell<Option<oneshot::Sender<Signal>>>,
}

impl Page {
    fn name_of(&self, id: NodeID) -> String {
        self.names.borrow().get(&id).cloned().unwrap_or_else(|| id.to_string())
    }
}

/// A request to a signalling connection's task.
enum Request {
    Init(NodeID),
    Reply(PeerInfo, PeerMessage),
    List(oneshot::Sender<Vec<NodeInfo>>),
}

/// A signalling connection, run by its own task: `path` names it in the log.
#[derive(Clone)]
struct Signal {
    path: &'static str,
    me: NodeID,
    requests: mpsc::Sender<Request>,
}

impl Signal {
    fn request(&self, request: Request) -> Result<(), String> {
        self.requests.clone().try_send(request).map_err(|_| format!("{}: the connection is gone", self.path))
    }

    async fn list(&self) -> Result<Vec<NodeInfo>, String> {
        let (reply, listed) = oneshot::channel();
        self.request(Request::List(reply))?;
        within("list", listed).await?.map_err(|_| format!("{}: the connection is gone", self.path))
    }

    /// Lists until a node named `name` is there.
    async fn find(&self, name: &str) -> Result<NodeID, String> {
        within(&format!("{name} listed"), async {
            loop {
                if let Some(node) = self.list().await?.into_iter().find(|node| node.name == name) {
                    return Ok(node.id());
                }
                BrowserTimer::sleep(LIST_EVERY).await;
            }
        })
        .await?
    }
}

/// Runs `node`'s connection: set-up messages go to their peer connection's task, requests go
/// out. The returned receiver fires when the connection is gone.
fn run_signal(
    page: &Rc<Page>,
    path: &'static str,
    mut node: BrowserClient,
) -> (Signal, oneshot::Receiver<()>) {
    let (requests, mut incoming) = mpsc::channel(REQUEST_QUEUE);
    let signal = Signal { path, me: node.id(), requests };
    let (gone_tx, gone) = oneshot::channel();
    let page = Rc::clone(page);
    let this = signal.clone();
    spawn_local(async move {
        let mut waiting: Vec<oneshot::Sender<Vec<NodeInfo>>> = Vec::new();
        loop {
            let next = {
                let event = node.next_event();
                futures::pin_mut!(event);
                match select(event, incoming.next()).await {
                    Either::Left((event, _)) => Either::Left(event),
                    Either::Right((request, _)) => Either::Right(request),
                }
            };
            let sent = match next {
                Either::Left(Ok(ClientEvent::NodeList(nodes))) => {
                    page.names.borrow_mut().extend(nodes.iter().map(|node| (node.id(), node.name.clone())));
                    if !waiting.is_empty() {
                        let _ = waiting.remove(0).send(nodes);
                    }
                    Ok(())
                }
                Either::Left(Ok(ClientEvent::PeerSetup(setup))) => {
                    on_setup(&page, &this, setup);
                    Ok(())
                }
                Either::Left(Ok(ClientEvent::Error(error))) => {
                    log(&format!("{}: {path} says: {error}", page.name));
                    Ok(())
                }
                Either::Left(Ok(_)) => Ok(()),
                Either::Left(Err(ClientError::Closed)) => break,
                Either::Left(Err(error)) => {
                    log(&format!("{}: {path}: {error}", page.name));
                    continue;
                }
                Either::Right(Some(Request::Init(to))) => node.send_init(to).await,
                Either::Right(Some(Request::Reply(to, message))) => node.send_reply(&to, message).await,
                Either::Right(Some(Request::List(reply))) => {
                    if waiting.len() >= REQUEST_QUEUE {
                        // The oldest waiter gave up long ago (its list has a deadline).
                        waiting.remove(0);
                    }
                    waiting.push(reply);
                    node.request_list().await
                }
                Either::Right(None) => break,
            };
            if let Err(error) = sent {
                log(&format!("{}: {path}: not sent: {error}", page.name));
            }
        }
        log(&format!("{}: {path}: connection closed", page.name));
        let _ = gone_tx.send(());
    });
    (signal, gone)
}

/// A set-up message for this page: to the task of its peer connection, which is made for an
/// `Init` (this page follows: it makes the channels and the offer) or an `Offer` (this page
/// asked: it answers).
fn on_setup(page: &Rc<Page>, signal: &Signal, setup: PeerInfo) {
    let peer = if setup.id_init == signal.me { setup.id_follow } else { setup.id_init };
    let key = (signal.path, peer);
    let fresh = matches!(setup.message, PeerMessage::Init | PeerMessage::Offer(_));
    if fresh && !page.names.borrow().contains_key(&peer) {
        // A node that joined after the last list: the reply names it.
        let (reply, _) = oneshot::channel();
        let _ = signal.request(Request::List(reply));
    }
    if fresh {
        let (queue, setups) = mpsc::channel(SETUP_QUEUE);
        page.sessions.borrow_mut().insert(key, queue);
        let (page, signal) = (Rc::clone(page), signal.clone());
        spawn_local(async move {
            if let Err(error) = peer_connection(&page, &signal, peer, setups).await {
                log(&format!("{}: with {}: {error}", page.name, page.name_of(peer)));
            }
        });
    }
    let queued = page.sessions.borrow_mut().get_mut(&key).map(|queue| queue.try_send(setup).is_ok());
    if queued != Some(true) {
        log(&format!("{}: a set-up message from {} dropped", page.name, page.name_of(peer)));
    }
}

/// One peer connection, set up with the messages from `setups` in their order.
async fn peer_connection(
    page: &Rc<Page>,
    signal: &Signal,
    peer: NodeID,
    mut setups: mpsc::Receiver<PeerInfo>,
) -> Result<(), String> {
    let pc = RtcPeerConnection::new().map_err(js_error)?;
    // Candidates go to the peer as they come.
    let on_candidate = {
        let signal = signal.clone();
        let to = Rc::new(RefCell::new(None::<PeerInfo>));
        let pending = Rc::new(RefCell::new(Vec::new()));
        (to, pending, signal)
    };
    let (reply_to, pending_candidates, candidate_signal) = on_candidate;
    let onicecandidate = {
        let (reply_to, pending, signal) =
            (Rc::clone(&reply_to), Rc::clone(&pending_candidates), candidate_signal);
        Closure::<dyn FnMut(RtcPeerConnectionIceEvent)>::new(move |event: RtcPeerConnectionIceEvent| {
            let Some(candidate) = event.candidate() else { return };
            let json = js_sys::JSON::stringify(&candidate.to_json()).map(String::from).unwrap_or_default();
            match reply_to.borrow().as_ref() {
                Some(to) => {
                    let _ = signal.request(Request::Reply(to.clone(), PeerMessage::IceCandidate(json)));
                }
                None => pending.borrow_mut().push(json),
            }
        })
    };
    pc.set_onicecandidate(Some(onicecandidate.as_ref().unchecked_ref()));
    let ondatachannel = {
        let page = Rc::clone(page);
        let (pc, path) = (pc.clone(), signal.path);
        Closure::<dyn FnMut(RtcDataChannelEvent)>::new(move |event: RtcDataChannelEvent| {
            channel_opened_by_peer(&page, peer, event.channel());
            if path == "server" && *page.neighbour.borrow() == Some(peer) {
                // The node that uses a neighbour's signalling opens the link, once the data
                // channel transport is up (the peer's channel arriving says so): channels
                // opened by both sides before it is up may be given the same stream.
                let init = RtcDataChannelInit::new();
                init.set_protocol(link_protocol(page.codec));
                use_neighbour(&page, peer, &pc.create_data_channel_with_data_channel_dict(LINK_LABEL, &init));
            }
        })
    };
    pc.set_ondatachannel(Some(ondatachannel.as_ref().unchecked_ref()));

    // The session's inbox: open for as long as the page holds the peer connection.
    while let Some(setup) = setups.next().await {
        match &setup.message {
            PeerMessage::Init => {
                // The offerer's channel also brings the data channel transport into the
                // offer, on which the other side may open channels of its own.
                app_channel(page, peer, pc.create_data_channel("app"));
                let offer = within("an offer", JsFuture::from(pc.create_offer())).await?.map_err(js_error)?;
                let sdp = sdp_of(&offer);
                let description = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
                description.set_sdp(&sdp);
                within("set the offer", JsFuture::from(pc.set_local_description(&description)))
                    .await?
                    .map_err(js_error)?;
                signal.request(Request::Reply(setup.clone(), PeerMessage::Offer(sdp)))?;
            }
            PeerMessage::Offer(sdp) => {
                let description = RtcSessionDescriptionInit::new(RtcSdpType::Offer);
                description.set_sdp(sdp);
                within("take the offer", JsFuture::from(pc.set_remote_description(&description)))
                    .await?
                    .map_err(js_error)?;
                let answer =
                    within("an answer", JsFuture::from(pc.create_answer())).await?.map_err(js_error)?;
                let sdp = sdp_of(&answer);
                let description = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                description.set_sdp(&sdp);
                within("set the answer", JsFuture::from(pc.set_local_description(&description)))
                    .await?
                    .map_err(js_error)?;
                signal.request(Request::Reply(setup.clone(), PeerMessage::Answer(sdp)))?;
            }
            PeerMessage::Answer(sdp) => {
                let description = RtcSessionDescriptionInit::new(RtcSdpType::Answer);
                description.set_sdp(sdp);
                within("take the answer", JsFuture::from(pc.set_remote_description(&description)))
                    .await?
                    .map_err(js_error)?;
            }
            PeerMessage::IceCandidate(json) => {
                let init: RtcIceCandidateInit = js_sys::JSON::parse(json).map_err(js_error)?.unchecked_into();
                let added = JsFuture::from(pc.add_ice_candidate_with_opt_rtc_ice_candidate_init(Some(&init)));
                within("take a candidate", added).await?.map_err(js_error)?;
            }
        }
        if reply_to.borrow().is_none() {
            *reply_to.borrow_mut() = Some(setup.clone());
            for json in pending_candidates.borrow_mut().drain(..) {
                signal.request(Request::Reply(setup.clone(), PeerMessage::IceCandidate(json)))?;
            }
        }
    }
    Ok(())
}

fn sdp_of(description: &JsValue) -> String {
    js_sys::Reflect::get(description, &JsValue::from_str("sdp"))
        .ok()
        .and_then(|sdp| sdp.as_string())
        .unwrap_or_default()
}

/// A channel the peer opened: `app` is the application's; `signal` asks for this page's
/// signalling.
fn channel_opened_by_peer(page: &Rc<Page>, peer: NodeID, channel: RtcDataChannel) {
    if channel.label() != LINK_LABEL {
        return app_channel(page, peer, channel);
    }
    let Some(host) = &page.host else {
        log(&format!(
            "{}: {} wants signalling, which this page does not host",
            page.name,
            page.name_of(peer)
        ));
        return channel.close();
    };
    match attach_channel(host, &channel) {
        Ok(()) => log(&format!("{}: hosting signalling for {}", page.name, page.name_of(peer))),
        Err(error) => log(&format!("{}: {error}", page.name)),
    }
}

/// Signs in at the neighbour's signalling over `channel`, which this page opened.
fn use_neighbour(page: &Rc<Page>, peer: NodeID, channel: &RtcDataChannel) {
    let client = match link_client(channel, &LinkConfig::default()) {
        // Bound to the neighbour, where its server offers bound sign-ins.
        Ok(client) => client.with_host(&peer),
        Err(error) => return log(&format!("{}: {error}", page.name)),
    };
    let page = Rc::clone(page);
    spawn_local(async move {
        let peer_name = page.name_of(peer);
        let (key, info) = identity(&page);
        match within("sign-in via the neighbour", AsyncClient::connect(client, key, info)).await {
            Ok(Ok(node)) => {
                log(&format!("{}: signed in via {peer_name} as {}", page.name, node.id()));
                let (signal, _gone) = run_signal(&page, "neighbour", node);
                if let Some(hosted) = page.hosted.borrow_mut().take() {
                    let _ = hosted.send(signal);
                }
            }
            Ok(Err(error)) => log(&format!("{}: no sign-in via {peer_name}: {error}", page.name)),
            Err(error) => log(&format!("{}: {error}", page.name)),
        }
    });
}

/// The application's channel: says hello once open, and logs what arrives.
fn app_channel(page: &Rc<Page>, peer: NodeID, channel: RtcDataChannel) {
    let onopen = {
        let (channel, page) = (channel.clone(), Rc::clone(page));
        Closure::<dyn FnMut(JsValue)>::new(move |_: JsValue| {
            log(&format!("{}: app channel open to {}", page.name, page.name_of(peer)));
            let _ = channel.send_with_str(&format!("hello from {}", page.name));
        })
    };
    let onmessage = {
        let page = Rc::clone(page);
        Closure::<dyn FnMut(MessageEvent)>::new(move |event: MessageEvent| {
            let text = event.data().as_string().unwrap_or_default();
            log(&format!("{}: received {text:?} from {}", page.name, page.name_of(peer)));
        })
    };
    channel.set_onopen(Some(onopen.as_ref().unchecked_ref()));
    channel.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    // The page's channels live as long as the page.
    onopen.forget();
    onmessage.forget();
}

/// The page's key, and what its node announces.
fn identity(page: &Page) -> (SigningKey, NodeInfo) {
    let info = NodeInfo::new(&page.name, "peer-signal browser example", page.key.verifying_key().to_bytes());
    (page.key.clone(), info)
}

async fn run() -> Result<(), String> {
    let params = Params::from_location();
    let name = params.get("name").unwrap_or("page").to_string();
    let server = params.get("server").unwrap_or("ws://127.0.0.1:8765").to_string();
    let codec = if params.get("codec") == Some("bincode") { Codec::Bincode } else { Codec::Json };
    let host = match params.get("role") {
        Some("host") => {
            let (host, _handle, _events) =
                host_signalling(SignalConfig::default(), 64).map_err(|e| e.to_string())?;
            Some(host)
        }
        _ => None,
    };
    let (hosted_tx, hosted) = oneshot::channel();
    // A fresh node each time the page loads.
    let mut seed = [0; 32];
    OsRng.fill_bytes(&mut seed);
    let page = Rc::new(Page {
        name: name.clone(),
        key: SigningKey::from_bytes(&seed),
        codec,
        host,
        names: RefCell::new(HashMap::new()),
        sessions: RefCell::new(HashMap::new()),
        neighbour: RefCell::new(None),
        hosted: RefCell::new(Some(hosted_tx)),
    });

    let (key, info) = identity(&page);
    let conn = within("open the WebSocket", BrowserWs::new(&server).codec(codec).connect())
        .await?
        .map_err(|e| e.to_string())?;
    let node = within("sign-in", AsyncClient::connect(conn, key, info)).await?.map_err(|e| e.to_string())?;
    log(&format!("{name}: signed in at {server} as {} ({codec:?})", node.id()));
    let (signal, server_gone) = run_signal(&page, "server", node);
    let listed = signal.list().await?;
    let mut names: Vec<&str> = listed.iter().map(|node| node.name.as_str()).collect();
    names.sort_unstable();
    log(&format!("{name}: the server lists {names:?}"));
    if page.host.is_some() {
        log(&format!("{name}: hosting signalling"));
    }

    match (params.get("via"), params.get("connect")) {
        (None, Some(other)) => {
            let id = signal.find(other).await?;
            log(&format!("{name}: → Init to {other} through the server"));
            signal.request(Request::Init(id))?;
        }
        (Some(neighbour), connect) => {
            let id = signal.find(neighbour).await?;
            *page.neighbour.borrow_mut() = Some(id);
            log(&format!("{name}: → Init to {neighbour} for its signalling"));
            signal.request(Request::Init(id))?;
            let hosted = within("a link to the neighbour", hosted).await?.map_err(|_| "no link")?;
            if let Some(other) = connect {
                // Through the neighbour only: wait until the server is gone.
                let _ = server_gone.await;
                log(&format!("{name}: the server is gone"));
                let id = hosted.find(other).await?;
                log(&format!("{name}: → Init to {other} through {neighbour}"));
                hosted.request(Request::Init(id))?;
            }
        }
        (None, None) => {}
    }
    Ok(())
}
