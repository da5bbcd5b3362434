//! Real WebRTC (webrtc-rs, on loopback) end to end: three nodes connect through the `ws_server`,
//! the middle one hosts signalling over its data channels, the server goes away, and the outer
//! two connect through the middle one. Then the middle one leaves in the middle of a set-up.
//!
//! ```text
//!   A ──── B ──── C      WebRTC connections made through ws_server (A inits to B, C inits to B)
//!   A ─"signal"─► B ◄─"signal"─ C      link channels: B's LinkTransport + SignalServer + Driver
//!   A ─────────────────── C      made through B's hosted signalling, once ws_server is killed
//! ```
//!
//! Every step prints how long it took (`-- --nocapture`).

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::rtc::{AppChannel, LinkChannel, Peer};
use common::run;
use common::server::WsServer;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientConnection, ClientError, ClientEvent, Codec, Driver, DriverHandle, LinkConfig,
    LinkHost, LinkTransport, NodeID, NodeInfo, PathEvent, PeerInfo, PeerMessage, SignalConfig, SignalPaths,
    SignalServer, TokioTimer, WsClient,
};
use tokio::time::{timeout_at, Instant};

/// The whole scenario, set-up included.
const LIMIT: Duration = Duration::from_secs(120);
/// One step: a connection, an exchange of messages, a sign-in.
const STEP: Duration = Duration::from_secs(20);
/// How long A may take to learn that B left.
const LOST_WITHIN: Duration = Duration::from_secs(10);

/// The path through the WebSocket server, and the one through B.
const WS: &str = "ws";
const VIA_B: &str = "B";

#[test]
fn a_and_c_connect_through_b_once_the_server_is_gone() {
    let server = WsServer::start();
    run(LIMIT, async move {
        let mut steps = Steps::new();
        let [mut a, b, mut c] = three_linked_nodes(server, Codec::Json, &mut steps).await;

        let deadline = Instant::now() + STEP;
        // B's hosted server lists the nodes signed in there: A itself and C.
        let listed = within(deadline, "list", a.paths.list()).await;
        let routes: Vec<_> = listed.iter().map(|(info, via)| (info.name.as_str(), via.clone())).collect();
        assert_eq!(routes, [("A", vec![VIA_B]), ("C", vec![VIA_B])], "A lists C via B only");
        assert_eq!(a.paths.names().copied().collect::<Vec<_>>(), [VIA_B], "A's ws path is gone");
        steps.done("A lists C via B only (ws path lost)");

        let path = connect_pair(&mut a, &mut c, deadline).await;
        assert_eq!(path, VIA_B);
        steps.done("A-C WebRTC connection through B's hosted signalling");
        exchange(&mut a, &mut c, deadline).await;
        steps.done("A-C one message each way");
        steps.total();
        drop(b);
    });
}

#[test]
fn a_hears_that_b_left_in_the_middle_of_a_set_up() {
    let server = WsServer::start();
    run(LIMIT, async move {
        let mut steps = Steps::new();
        let [mut a, mut b, mut c] = three_linked_nodes(server, Codec::Bincode, &mut steps).await;

        let deadline = Instant::now() + STEP;
        within(deadline, "list", a.paths.list()).await;
        assert_eq!(a.paths.routes(&c.id()), [VIA_B]);
        assert_eq!(a.init(c.id(), deadline).await, VIA_B);
        let (path, init) = c.next_setup(deadline).await;
        assert_eq!((path, &init.message), (VIA_B, &PeerMessage::Init));
        c.handle_setup(path, init, deadline).await;
        steps.done("A sent Init and Offer to C through B; C has the Init");

        b.leave().await;
        steps.done("B closed its link channels and peer connections");

        let error = a.wait_lost(VIA_B, Instant::now() + LOST_WITHIN).await;
        steps.done(&format!("A: path B lost ({error})"));
        let error = c.wait_lost(VIA_B, Instant::now() + LOST_WITHIN).await;
        steps.done(&format!("C: path B lost ({error})"));
        // The adapters let go of both ends of the links on A's and C's side.
        for (node, name) in [(&a, "A"), (&c, "C")] {
            let links = node.peers[&b.id()].links();
            assert!(!links.is_empty() && links.iter().all(LinkChannel::is_ended), "{name}'s link to B ended");
        }

        // C's answer has no way to go: the set-up fails loudly rather than hanging.
        let answer =
            PeerInfo { id_init: a.id(), id_follow: c.id(), message: PeerMessage::Answer("v=0".into()) };
        let sent = within(deadline, "send", c.paths.send_via(&VIA_B, answer)).await;
        assert!(matches!(sent, Err(ClientError::NoPath(_))), "C's answer: {sent:?}");
        let offer =
            PeerInfo { id_init: a.id(), id_follow: c.id(), message: PeerMessage::Offer("v=0".into()) };
        let sent = within(deadline, "send", a.paths.send_via(&VIA_B, offer)).await;
        assert!(matches!(sent, Err(ClientError::NoPath(_))), "A's offer: {sent:?}");
        steps.total();
    });
}

/// A, B and C signed in at the `ws_server` with `codec`; A-B and C-B connected over WebRTC
/// through it, with one message each way; A and C signed in at B's hosted signalling over link
/// channels with `codec`; then the server killed.
async fn three_linked_nodes(server: WsServer, codec: Codec, steps: &mut Steps) -> [Node; 3] {
    let url = server.url();
    let mut a = Node::connect(&url, "A", 1, codec, false).await;
    let mut b = Node::connect(&url, "B", 2, codec, true).await;
    let mut c = Node::connect(&url, "C", 3, codec, false).await;
    let deadline = Instant::now() + STEP;
    for node in [&mut a, &mut b, &mut c] {
        let listed = within(deadline, "list", node.paths.list()).await;
        assert_eq!(listed.len(), 3, "{} lists A, B and C", node.name);
    }
    steps.done(&format!("A, B, C signed in at ws_server ({codec:?})"));

    let deadline = Instant::now() + STEP;
    assert_eq!(connect_pair(&mut a, &mut b, deadline).await, WS);
    steps.done("A-B WebRTC connection through ws_server");
    exchange(&mut a, &mut b, deadline).await;
    steps.done("A-B one message each way");

    let deadline = Instant::now() + STEP;
    assert_eq!(connect_pair(&mut c, &mut b, deadline).await, WS);
    steps.done("C-B WebRTC connection through ws_server");
    exchange(&mut c, &mut b, deadline).await;
    steps.done("C-B one message each way");

    let deadline = Instant::now() + STEP;
    a.use_hosted(b.id(), VIA_B, codec, deadline).await;
    c.use_hosted(b.id(), VIA_B, codec, deadline).await;
    steps.done(&format!("A and C signed in at B's hosted signalling over \"signal\" channels ({codec:?})"));

    // Killed, and waited for.
    drop(server);
    steps.done("ws_server killed");
    [a, b, c]
}

/// One node: its key, its signalling paths, its peer connections and application channels, and,
/// for B, the signalling it hosts.
struct Node {
    name: &'static str,
    key: SigningKey,
    info: NodeInfo,
    paths: SignalPaths<&'static str>,
    peers: HashMap<NodeID, Peer>,
    apps: HashMap<NodeID, AppChannel>,
    hosting: Option<Hosting>,
}

/// A node's own signalling server over its links.
struct Hosting {
    host: LinkHost,
    handle: DriverHandle,
}

impl Hosting {
    fn start() -> Self {
        let config = SignalConfig::default();
        let (transport, host) = LinkTransport::new(LinkConfig::for_server(&config)).expect("link config");
        let server = SignalServer::new(config).expect("server config");
        let (driver, handle, _events) = Driver::new(server, transport, 64);
        let ticks =
            futures::stream::unfold(tokio::time::interval(Duration::from_secs(1)), |mut ticks| async {
                ticks.tick().await;
                Some(((), ticks))
            });
        tokio::spawn(driver.run(Box::pin(ticks)));
        Self { host, handle }
    }
}

impl Drop for Hosting {
    fn drop(&mut self) {
        self.handle.stop();
    }
}

impl Node {
    /// Signs in at the `ws_server` at `url` with the key of `seed`; with `hosts`, hosts signalling.
    async fn connect(url: &str, name: &'static str, seed: u8, codec: Codec, hosts: bool) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let info = NodeInfo::new(name, "peer-signal-interop", key.verifying_key().to_bytes());
        let conn = WsClient::connect(url, codec).await.expect("WsClient::connect");
        let conn: Box<dyn ClientConnection> = Box::new(conn);
        let client =
            AsyncClient::connect(conn, key.clone(), info.clone()).await.expect("sign in at ws_server");
        let mut paths = SignalPaths::new();
        paths.add(WS, client);
        let hosting = hosts.then(Hosting::start);
        Self { name, key, info, paths, peers: HashMap::new(), apps: HashMap::new(), hosting }
    }

    fn id(&self) -> NodeID {
        self.info.id()
    }

    fn host(&self) -> Option<LinkHost> {
        self.hosting.as_ref().map(|hosting| hosting.host.clone())
    }

    /// Starts a connection to `to`: `Init` through the first path that lists it, then the offer
    /// on the same path, with an application channel in it. Returns the path.
    async fn init(&mut self, to: NodeID, deadline: Instant) -> &'static str {
        let path = within(deadline, "send Init", self.paths.send_init(to)).await.expect("send Init");
        let peer = Peer::new(self.host()).await;
        let app = peer.open_channel(&format!("app {}", self.name)).await;
        let offer = within(deadline, "offer", peer.offer()).await;
        let offer = PeerInfo { id_init: self.id(), id_follow: to, message: PeerMessage::Offer(offer) };
        within(deadline, "send Offer", self.paths.send_via(&path, offer)).await.expect("send Offer");
        self.peers.insert(to, peer);
        self.apps.insert(to, app);
        path
    }

    /// The next set-up message, and the path it came on. Lost paths are reported and skipped.
    async fn next_setup(&mut self, deadline: Instant) -> (&'static str, PeerInfo) {
        loop {
            match timeout_at(deadline, self.paths.next_event()).await {
                Err(_) => panic!("{}: no set-up message in time", self.name),
                Ok(None) => panic!("{}: no signalling path left", self.name),
                Ok(Some((path, PathEvent::Event(ClientEvent::PeerSetup(setup))))) => return (path, setup),
                Ok(Some((path, PathEvent::Lost(error)))) => {
                    eprintln!("{}: path {path} lost: {error}", self.name)
                }
                Ok(Some(_)) => {}
            }
        }
    }

    /// Acts on one set-up message that came on `path`.
    async fn handle_setup(&mut self, path: &'static str, setup: PeerInfo, deadline: Instant) {
        let remote = if setup.id_init == self.id() { setup.id_follow } else { setup.id_init };
        if !self.peers.contains_key(&remote) {
            let peer = Peer::new(self.host()).await;
            self.peers.insert(remote, peer);
        }
        let peer = &self.peers[&remote];
        match &setup.message {
            PeerMessage::Init => {}
            PeerMessage::Offer(sdp) => {
                let answer = PeerMessage::Answer(within(deadline, "answer", peer.answer(sdp)).await);
                let sent = within(deadline, "send Answer", self.paths.send_reply(&path, &setup, answer));
                sent.await.expect("send Answer");
            }
            PeerMessage::Answer(sdp) => within(deadline, "accept the answer", peer.accept_answer(sdp)).await,
            PeerMessage::IceCandidate(candidate) => {
                within(deadline, "add a candidate", peer.add_candidate(candidate)).await;
            }
        }
    }

    /// Handles set-up messages until one that `last` picks; returns its path.
    async fn setup_until(&mut self, deadline: Instant, last: fn(&PeerMessage) -> bool) -> &'static str {
        loop {
            let (path, setup) = self.next_setup(deadline).await;
            let done = last(&setup.message);
            self.handle_setup(path, setup, deadline).await;
            if done {
                return path;
            }
        }
    }

    /// The application channel with `remote`: the one opened here, or the one the remote opened.
    async fn app(&mut self, remote: NodeID, deadline: Instant) -> &mut AppChannel {
        if !self.apps.contains_key(&remote) {
            let peer = self.peers.get_mut(&remote).expect("a peer connection");
            let channel = peer.accept_channel(deadline).await;
            self.apps.insert(remote, channel);
        }
        self.apps.get_mut(&remote).expect("an application channel")
    }

    /// Signs in at the signalling that the neighbour `host` hosts, over a link channel on the
    /// connection with it, and adds that as the path `name`.
    async fn use_hosted(&mut self, host: NodeID, name: &'static str, codec: Codec, deadline: Instant) {
        let peer = self.peers.get(&host).expect("a connection to the host");
        let (client, _link) = within(deadline, "open a link channel", peer.open_link(codec)).await;
        let conn: Box<dyn ClientConnection> = Box::new(client.with_timer(Arc::new(TokioTimer)));
        let signed_in = timeout_at(deadline, AsyncClient::connect(conn, self.key.clone(), self.info.clone()));
        let client = signed_in.await.expect("sign-in at the host in time").expect("sign in at the host");
        self.paths.add(name, client);
    }

    /// Waits until the path `name` is reported lost; returns why.
    async fn wait_lost(&mut self, name: &'static str, deadline: Instant) -> ClientError {
        loop {
            match timeout_at(deadline, self.paths.next_event()).await {
                Err(_) => panic!("{}: path {name} not lost in time", self.name),
                Ok(None) => panic!("{}: no path left, and {name} never reported lost", self.name),
                Ok(Some((path, PathEvent::Lost(error)))) if path == name => return error,
                Ok(Some((path, event))) => eprintln!("{}: {path}: {}", self.name, summary(&event)),
            }
        }
    }

    /// Leaves: ends every link and closes every peer connection.
    async fn leave(&mut self) {
        for peer in self.peers.values() {
            peer.close().await;
        }
    }
}

/// A path's event in a few words.
fn summary(event: &PathEvent) -> String {
    match event {
        PathEvent::Event(ClientEvent::NodeList(list)) => {
            let names: Vec<&str> = list.iter().map(|info| info.name.as_str()).collect();
            format!("list {names:?}")
        }
        PathEvent::Event(ClientEvent::PeerSetup(setup)) => match &setup.message {
            PeerMessage::Init => "set-up: Init".to_string(),
            PeerMessage::Offer(_) => "set-up: Offer".to_string(),
            PeerMessage::Answer(_) => "set-up: Answer".to_string(),
            PeerMessage::IceCandidate(_) => "set-up: IceCandidate".to_string(),
        },
        PathEvent::Lost(error) => format!("lost: {error}"),
        other => format!("{other:?}"),
    }
}

/// `init` connects to `follow` over WebRTC through `init`'s first path that lists it: Init and
/// Offer one way, Answer back, then both wait for the connection. Returns the path.
async fn connect_pair(init: &mut Node, follow: &mut Node, deadline: Instant) -> &'static str {
    let path = init.init(follow.id(), deadline).await;
    let answered = follow.setup_until(deadline, |message| matches!(message, PeerMessage::Offer(_))).await;
    assert_eq!(answered, path, "{} answers on the path the offer came", follow.name);
    init.setup_until(deadline, |message| matches!(message, PeerMessage::Answer(_))).await;
    let (init_id, follow_id) = (init.id(), follow.id());
    init.peers.get_mut(&follow_id).expect("peer").connected(deadline).await;
    follow.peers.get_mut(&init_id).expect("peer").connected(deadline).await;
    path
}

/// One message each way on the application channel between `x` and `y`.
async fn exchange(x: &mut Node, y: &mut Node, deadline: Instant) {
    let (x_id, y_id) = (x.id(), y.id());
    let there = format!("hello {} from {}", y.name, x.name);
    let back = format!("hello {} from {}", x.name, y.name);
    x.app(y_id, deadline).await.send(&there, deadline).await;
    assert_eq!(y.app(x_id, deadline).await.recv(deadline).await, there);
    y.app(x_id, deadline).await.send(&back, deadline).await;
    assert_eq!(x.app(y_id, deadline).await.recv(deadline).await, back);
}

/// `future`, or a panic naming `what` once `deadline` has passed.
async fn within<F: std::future::Future>(deadline: Instant, what: &str, future: F) -> F::Output {
    match timeout_at(deadline, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done in time"),
    }
}

/// The time each step took, printed as it ends.
struct Steps {
    start: Instant,
    last: Instant,
}

impl Steps {
    fn new() -> Self {
        let now = Instant::now();
        Self { start: now, last: now }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!("{:>9.1} ms  {what}", (now - self.last).as_secs_f64() * 1e3);
        self.last = now;
    }

    fn total(&self) {
        eprintln!("{:>9.1} ms  in all", (Instant::now() - self.start).as_secs_f64() * 1e3);
    }
}
