//! Hosted signalling over in-memory links: a node B hosts the unchanged server on a
//! `LinkTransport`, and its neighbours sign in over links with `LinkClient`. No sockets, no
//! WebRTC, no sleeps; the clock is tokio's paused one where time matters.

mod nodes;

use std::time::Duration;

use nodes::{config, id, key, start, wait_event, within};
use peer_signal::{
    AsyncClient, ClientConfig, ClientError, ClientEvent, Codec, Driver, DriverEvents, DriverHandle,
    LinkClient, LinkConfig, LinkError, LinkHost, LinkInbound, LinkOutbound, LinkTransport, NodeID, NodeInfo,
    PathClient, PathEvent, PeerInfo, PeerMessage, SignalClient, SignalConfig, SignalEvent, SignalPaths,
    SignalServer, TokioTimer,
};
use tokio::task::JoinHandle;

/// A node that hosts signalling: its server, driven on tokio's clock and ticked every second.
struct Host {
    links: LinkHost,
    handle: DriverHandle,
    events: DriverEvents,
    _server: JoinHandle<SignalServer>,
}

fn host(config: SignalConfig, links: LinkConfig) -> Host {
    let (transport, host) = LinkTransport::new(links).expect("valid link config");
    let (driver, handle, events) = Driver::new(SignalServer::new(config).unwrap(), transport, 4096);
    let ticks =
        Box::pin(futures::stream::unfold(tokio::time::interval(Duration::from_secs(1)), |mut i| async {
            i.tick().await;
            Some(((), i))
        }));
    let server = tokio::spawn(driver.run_with_clock(ticks, || tokio::time::Instant::now().into_std()));
    Host { links: host, handle, events, _server: server }
}

/// A stand-in for a data channel between two link ends: one pump each way. When either pump
/// ends (its side closed the link), it drops both ends it holds, and the close travels on.
struct Cable {
    pumps: [JoinHandle<()>; 2],
}

impl Cable {
    fn new(a: (LinkInbound, LinkOutbound), b: (LinkInbound, LinkOutbound)) -> Self {
        let ((a_in, a_out), (b_in, b_out)) = (a, b);
        Self { pumps: [tokio::spawn(pump(a_out, b_in)), tokio::spawn(pump(b_out, a_in))] }
    }

    /// The channel breaks: both ends on both sides are dropped at once.
    fn cut(&self) {
        self.pumps.iter().for_each(JoinHandle::abort);
    }
}

impl Drop for Cable {
    fn drop(&mut self) {
        self.cut();
    }
}

async fn pump(from: LinkOutbound, mut to: LinkInbound) {
    while let Some(frame) = from.recv().await {
        if to.deliver(frame).is_err() {
            break;
        }
    }
}

fn info(i: u32) -> NodeInfo {
    NodeInfo::new(format!("node-{i}"), "test", key(i).verifying_key().to_bytes())
}

/// Node `i` signs in at `host` over a new link, with a keepalive on tokio's clock.
async fn sign_in(host: &LinkHost, i: u32, codec: Codec) -> (PathClient, Cable) {
    let at_host = host.attach(codec).expect("a free link slot");
    let (client, at_client_in, at_client_out) = LinkClient::new(codec, host.config());
    let cable = Cable::new(at_host, (at_client_in, at_client_out));
    let conn: Box<dyn peer_signal::ClientConnection> =
        Box::new(client.with_timer(std::sync::Arc::new(TokioTimer)));
    let node =
        within("sign-in over a link", AsyncClient::connect(conn, key(i), info(i))).await.expect("sign-in");
    (node, cable)
}

/// The next event of `paths` that is not a node list.
async fn next_of(paths: &mut SignalPaths<&'static str>) -> (&'static str, PathEvent) {
    within("a path event", async {
        loop {
            match paths.next_event().await.expect("a path is left") {
                (_, PathEvent::Event(ClientEvent::NodeList(_))) => {}
                other => return other,
            }
        }
    })
    .await
}

fn setup(paths_event: (&'static str, PathEvent)) -> (&'static str, PeerInfo) {
    match paths_event {
        (path, PathEvent::Event(ClientEvent::PeerSetup(setup))) => (path, setup),
        other => panic!("expected a set-up message, got {other:?}"),
    }
}

fn paths(name: &'static str, client: PathClient) -> SignalPaths<&'static str> {
    let mut paths = SignalPaths::new();
    paths.add(name, client);
    paths
}

#[tokio::test(start_paused = true)]
async fn a_and_c_set_up_a_connection_through_their_neighbour_b_in_either_codec() {
    let b = host(config(), LinkConfig::default());
    let (a_client, _ab) = sign_in(&b.links, 1, Codec::Json).await;
    let (c_client, _cb) = sign_in(&b.links, 3, Codec::Bincode).await;
    let (mut a, mut c) = (paths("B", a_client), paths("B", c_client));

    let listed = a.list().await;
    let names: Vec<(NodeID, Vec<&str>)> = listed.iter().map(|(node, via)| (node.id(), via.clone())).collect();
    assert!(names.contains(&(id(3), vec!["B"])), "{names:?}");
    assert_eq!(a.routes(&id(3)), vec!["B"]);

    assert_eq!(a.send_init(id(3)).await, Ok("B"));
    let (via, init) = setup(next_of(&mut c).await);
    assert_eq!(
        (via, init.id_init, init.id_follow, init.message.clone()),
        ("B", id(1), id(3), PeerMessage::Init)
    );
    c.send_reply(&via, &init, PeerMessage::Offer("v=0 offer".into())).await.unwrap();
    let (via, offer) = setup(next_of(&mut a).await);
    assert_eq!((via, offer.message.clone()), ("B", PeerMessage::Offer("v=0 offer".into())));
    a.send_reply(&via, &offer, PeerMessage::Answer("v=0 answer".into())).await.unwrap();
    let (_, answer) = setup(next_of(&mut c).await);
    assert_eq!(answer.message, PeerMessage::Answer("v=0 answer".into()));
    c.send_reply(&"B", &answer, PeerMessage::IceCandidate("candidate:1".into())).await.unwrap();
    let (_, ice) = setup(next_of(&mut a).await);
    assert_eq!(
        (ice.id_init, ice.id_follow, ice.message),
        (id(1), id(3), PeerMessage::IceCandidate("candidate:1".into()))
    );

    // B's own application saw both neighbours sign in at its server.
    let b_nodes: Vec<NodeID> =
        b.handle.nodes().await.unwrap().into_iter().map(|node| node.info.id()).collect();
    assert!(b_nodes.contains(&id(1)) && b_nodes.contains(&id(3)), "{b_nodes:?}");
}

#[tokio::test(start_paused = true)]
async fn once_the_server_is_gone_the_paths_go_through_the_neighbour_that_lists_the_node() {
    // A and C are on the server and on B; the server goes away.
    let server = start(config());
    let b = host(config(), LinkConfig::default());
    let mut nodes = Vec::new();
    for i in [1, 3] {
        let conn: Box<dyn peer_signal::ClientConnection> =
            Box::new(server.connector.connect(Codec::Json).await.unwrap());
        let on_server = within("sign-in", AsyncClient::connect(conn, key(i), info(i))).await.unwrap();
        let (on_b, cable) = sign_in(&b.links, i, Codec::Json).await;
        let mut paths = SignalPaths::new();
        paths.add("server", on_server);
        paths.add("B", on_b);
        nodes.push((paths, cable));
    }
    let (mut c, _cb) = nodes.pop().unwrap();
    let (mut a, _ab) = nodes.pop().unwrap();
    let listed = a.list().await;
    let via: Vec<&str> = listed.iter().find(|(node, _)| node.id() == id(3)).unwrap().1.clone();
    assert_eq!(via, vec!["server", "B"], "both paths list C, in the order they were added");
    assert_eq!(a.send_init(id(3)).await, Ok("server"), "the first path that lists C");
    let (via, _) = setup(next_of(&mut c).await);
    assert_eq!(via, "server", "events say which path they came from");

    server.handle.stop();
    assert_eq!(next_of(&mut a).await, ("server", PathEvent::Lost(ClientError::Closed)));
    assert_eq!(a.names().copied().collect::<Vec<_>>(), vec!["B"]);
    assert_eq!(a.routes(&id(3)), vec!["B"]);
    assert_eq!(a.send_init(id(3)).await, Ok("B"), "losing one path leaves the others working");
    loop {
        match next_of(&mut c).await {
            ("server", PathEvent::Lost(ClientError::Closed)) => {}
            (via, PathEvent::Event(ClientEvent::PeerSetup(init))) => {
                assert_eq!((via, init.id_init, init.message), ("B", id(1), PeerMessage::Init));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // No path lists a node that nobody knows.
    assert_eq!(a.send_init(id(99)).await, Err(ClientError::NoPath(id(99))));
}

#[tokio::test(start_paused = true)]
async fn a_link_lost_mid_setup_is_a_close_on_both_sides_and_a_clear_error_for_the_other_node() {
    let mut b = host(config(), LinkConfig::default());
    let (a_client, ab) = sign_in(&b.links, 1, Codec::Json).await;
    let (c_client, _cb) = sign_in(&b.links, 3, Codec::Json).await;
    let (mut a, mut c) = (paths("B", a_client), paths("B", c_client));
    a.list().await;
    a.send_init(id(3)).await.unwrap();
    let (via, init) = setup(next_of(&mut c).await);

    // The link between A and B breaks before C answers.
    ab.cut();
    assert_eq!(next_of(&mut a).await, ("B", PathEvent::Lost(ClientError::Closed)));
    assert!(a.is_empty());
    assert_eq!(a.next_event().await, None, "no path left: no hang");
    wait_event(&mut b.events, |event| matches!(event, SignalEvent::NodeLeft(node) if *node == id(1))).await;

    // C's answer finds nobody; C hears it from B's server.
    c.send_reply(&via, &init, PeerMessage::Offer("v=0".into())).await.unwrap();
    match next_of(&mut c).await {
        ("B", PathEvent::Event(ClientEvent::Error(text))) => {
            assert!(text.starts_with("unknown destination"), "{text}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

/// A link that carries everything until told to fall silent, then holds everything and closes
/// nothing: a neighbour that hangs with its channel open.
struct Silenceable {
    silence: tokio::sync::watch::Sender<bool>,
    forward: JoinHandle<()>,
}

impl Silenceable {
    fn new(host: &LinkHost) -> (Self, LinkClient) {
        let (mut at_host_in, at_host_out) = host.attach(Codec::Json).unwrap();
        let (client, mut at_client_in, at_client_out) = LinkClient::new(Codec::Json, &LinkConfig::default());
        let (silence, mut silent) = tokio::sync::watch::channel(false);
        let forward = tokio::spawn(async move {
            loop {
                tokio::select! {
                    frame = at_client_out.recv() => {
                        let Some(frame) = frame else { break };
                        if !*silent.borrow() { let _ = at_host_in.deliver(frame); }
                    }
                    frame = at_host_out.recv() => {
                        let Some(frame) = frame else { break };
                        if !*silent.borrow() { let _ = at_client_in.deliver(frame); }
                    }
                    _ = silent.changed() => {}
                }
            }
            // Held until the test ends: the link never closes.
            std::future::pending::<()>().await;
        });
        (Self { silence, forward }, client)
    }

    fn fall_silent(&self) {
        self.silence.send_replace(true);
    }
}

impl Drop for Silenceable {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn a_silent_neighbour_is_lost_after_two_keepalive_intervals() {
    let b = host(config(), LinkConfig::default());
    let (link, client) = Silenceable::new(&b.links);
    let conn: Box<dyn peer_signal::ClientConnection> = Box::new(client);
    let keepalive = ClientConfig::default().with_keepalive(Duration::from_secs(10));
    let node = AsyncClient::connect_with(conn, key(1), info(1), keepalive, std::sync::Arc::new(TokioTimer))
        .await
        .unwrap();
    let mut a = paths("B", node);
    a.list().await;
    link.fall_silent();
    let started = tokio::time::Instant::now();
    let (path, lost) = next_of(&mut a).await;
    assert_eq!((path, lost), ("B", PathEvent::Lost(ClientError::Unresponsive(Duration::from_secs(20)))));
    let waited = started.elapsed();
    // Two whole intervals without a word; the one in which the silence began does not count.
    assert!(waited >= Duration::from_secs(20) && waited <= Duration::from_secs(30), "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_path_does_not_hold_the_lists_of_the_others() {
    let (b, d) = (host(config(), LinkConfig::default()), host(config(), LinkConfig::default()));
    let (on_b, _cable) = sign_in(&b.links, 1, Codec::Json).await;
    let (link, client) = Silenceable::new(&d.links);
    let conn: Box<dyn peer_signal::ClientConnection> = Box::new(client);
    let on_d = AsyncClient::connect_with(
        conn,
        key(1),
        info(1),
        ClientConfig::default(),
        std::sync::Arc::new(TokioTimer),
    )
    .await
    .unwrap();
    let mut a = paths("B", on_b);
    a.add("D", on_d);
    link.fall_silent();
    let started = tokio::time::Instant::now();
    let listed = within("lists", a.list()).await;
    assert_eq!(
        listed.iter().map(|(node, via)| (node.id(), via.clone())).collect::<Vec<_>>(),
        [(id(1), vec!["B"])]
    );
    assert_eq!(
        started.elapsed(),
        ClientConfig::default().sign_in_timeout,
        "D had its sign-in timeout, no more"
    );
    assert_eq!(
        next_of(&mut a).await,
        ("D", PathEvent::Lost(ClientError::Unresponsive(Duration::from_secs(10))))
    );
    assert_eq!(a.names().copied().collect::<Vec<_>>(), ["B"]);
}

#[tokio::test(start_paused = true)]
async fn a_neighbour_that_floods_its_link_loses_it_and_the_others_go_on() {
    let links = LinkConfig::default().with_max_queued_frames(16);
    let mut b = host(config(), links.clone());
    let (a_client, _ab) = sign_in(&b.links, 1, Codec::Json).await;
    let (c_client, _cb) = sign_in(&b.links, 3, Codec::Json).await;
    let (mut a, mut c) = (paths("B", a_client), paths("B", c_client));

    // The flooder delivers without yielding, so B's server reads nothing meanwhile: the 17th
    // message finds the queue full, and the link is ended there.
    let (mut flood_in, flood_out) = b.links.attach(Codec::Json).unwrap();
    let mut delivered = 0;
    let refused = loop {
        match flood_in.deliver(bytes::Bytes::from_static(br#""ListIDsRequest""#)) {
            Ok(()) => delivered += 1,
            Err(error) => break error,
        }
        assert!(delivered <= 16, "the queue is bounded");
    };
    assert_eq!((delivered, refused), (16, LinkError::Flooded));
    assert!(flood_in.is_closed());
    assert_eq!(flood_in.deliver(bytes::Bytes::from_static(b"{}")), Err(LinkError::Closed));
    // B's server reads what was queued, answers it (a challenge, errors: it never announced),
    // then sees the close; the link's outbound ends.
    within("the flooded link ends", async { while flood_out.recv().await.is_some() {} }).await;

    // A frame over the largest also ends a link, before anything is queued.
    let (mut big_in, big_out) = b.links.attach(Codec::Json).unwrap();
    let big = bytes::Bytes::from(vec![b' '; links.max_frame_size + 1]);
    assert_eq!(big_in.deliver(big), Err(LinkError::TooLarge(links.max_frame_size + 1)));
    within("the link with a large frame ends", async { while big_out.recv().await.is_some() {} }).await;

    // The others relay as before.
    a.list().await;
    a.send_init(id(3)).await.unwrap();
    let (_, init) = setup(next_of(&mut c).await);
    assert_eq!(init.id_init, id(1));
    assert_eq!(b.handle.nodes().await.unwrap().len(), 2, "the flooders never signed in");
    let seen = wait_event(&mut b.events, |event| matches!(event, SignalEvent::NewNode(_))).await;
    assert!(!seen.iter().any(|event| matches!(event, SignalEvent::NodeLeft(_))), "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_link_whose_adapter_does_not_take_the_servers_frames_is_closed_as_a_slow_reader() {
    let links = LinkConfig::default().with_max_queued_frames(8);
    let b = host(config().with_max_send_backlog(8), links);
    let (mut to_host, from_host) = b.links.attach(Codec::Json).unwrap();
    // The node signs in by hand, reading what it must.
    let mut node = SignalClient::new(key(1), info(1), Codec::Json);
    while !node.is_connected() {
        let frame = within("a frame from the host", from_host.recv()).await.expect("open");
        node.handle_frame(&frame).unwrap();
        while let Some(frame) = node.poll_transmit() {
            to_host.deliver(frame).unwrap();
        }
    }
    // Then asks for lists and reads none of the replies: at most 8 wait, then the link closes.
    for _ in 0..64 {
        if to_host.deliver(bytes::Bytes::from_static(br#""ListIDsRequest""#)).is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut queued = 0;
    within("the slow link ends", async {
        while from_host.recv().await.is_some() {
            queued += 1;
        }
    })
    .await;
    assert!(queued <= 8, "{queued} frames were queued for a reader that took none");
    assert!(to_host.is_closed());
}

#[tokio::test(start_paused = true)]
async fn a_host_attaches_at_most_max_links_and_a_link_that_ends_frees_its_place() {
    let b = host(config(), LinkConfig::default().with_max_links(3));
    let mut links: Vec<_> = (0..3).map(|_| b.links.attach(Codec::Json).unwrap()).collect();
    assert_eq!(b.links.attach(Codec::Json).unwrap_err(), LinkError::TooManyLinks(3));
    assert_eq!(b.links.attached(), 3);
    // The neighbour leaves: the adapter drops both ends.
    drop(links.pop());
    within("the place is free again", async {
        while b.links.attached() > 2 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(b.links.attach(Codec::Json).is_ok());
}

#[tokio::test(start_paused = true)]
async fn two_nodes_each_host_signalling_for_the_other_on_one_pair_of_links() {
    // A and B host; each signs in at the other, each over a link of its own. C is B's neighbour.
    let a_host = host(config(), LinkConfig::default());
    let b_host = host(config(), LinkConfig::default());
    let (a_at_b, a_to_b) = sign_in(&b_host.links, 1, Codec::Json).await;
    let (b_at_a, _b_to_a) = sign_in(&a_host.links, 2, Codec::Bincode).await;
    let (c_at_b, _c_to_b) = sign_in(&b_host.links, 3, Codec::Json).await;
    let (mut a, mut b, mut c) = (paths("B", a_at_b), paths("A", b_at_a), paths("B", c_at_b));

    let listed = |nodes: Vec<(NodeInfo, Vec<&'static str>)>| {
        let mut ids: Vec<NodeID> = nodes.into_iter().map(|(node, _)| node.id()).collect();
        ids.sort();
        ids
    };
    let mut at_b = vec![id(1), id(3)];
    at_b.sort();
    assert_eq!(listed(a.list().await), at_b, "B's server has A and C, not B itself");
    assert_eq!(listed(b.list().await), vec![id(2)], "A's server has B alone");

    // A reaches C through B's server while B uses A's.
    a.send_init(id(3)).await.unwrap();
    assert_eq!(setup(next_of(&mut c).await).1.id_init, id(1));

    // The link A uses goes; the one B uses stays.
    a_to_b.cut();
    assert!(matches!(next_of(&mut a).await, ("B", PathEvent::Lost(_))));
    assert_eq!(listed(b.list().await), vec![id(2)]);
    let at_a: Vec<NodeID> =
        a_host.handle.nodes().await.unwrap().into_iter().map(|node| node.info.id()).collect();
    assert_eq!(at_a, vec![id(2)]);
}

/// The node ids in `events` that signed in.
fn joined(events: &[SignalEvent]) -> Vec<NodeID> {
    events
        .iter()
        .filter_map(|event| match event {
            SignalEvent::NewNode(node) => Some(node.info.id()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_driver_sees_links_open_and_close_like_connections() {
    let mut b = host(config(), LinkConfig::default());
    let (node, cable) = sign_in(&b.links, 5, Codec::Json).await;
    let seen = wait_event(&mut b.events, |event| matches!(event, SignalEvent::NewNode(_))).await;
    assert_eq!(joined(&seen), vec![id(5)]);
    drop(cable);
    wait_event(&mut b.events, |event| matches!(event, SignalEvent::NodeLeft(node) if *node == id(5))).await;
    drop(node);
}

#[tokio::test(start_paused = true)]
async fn a_neighbour_binds_its_sign_in_to_the_node_that_hosts_and_a_relayed_one_is_refused() {
    use peer_signal::{server_id_of_node, Binding, ClientBinding};

    let b = host(config().with_binding(Binding::require([server_id_of_node(&id(2))])), LinkConfig::default());
    let bound = ClientConfig::default().with_binding(ClientBinding::Require);
    let connect = |host_id: NodeID| {
        let (at_host, (client, at_client_in, at_client_out)) =
            (b.links.attach(Codec::Json).unwrap(), LinkClient::new(Codec::Json, &LinkConfig::default()));
        let cable = Cable::new(at_host, (at_client_in, at_client_out));
        let conn: Box<dyn peer_signal::ClientConnection> = Box::new(client.with_host(&host_id));
        let config = bound.clone();
        (cable, async move {
            AsyncClient::connect_with(conn, key(1), info(1), config, std::sync::Arc::new(TokioTimer)).await
        })
    };
    let (_cable, signing_in) = connect(id(2));
    let node = within("a bound sign-in over a link", signing_in).await.expect("bound to B");
    assert!(node.client().signs_setups());
    // A node that believes it talks to another host (its sign-in relayed by a neighbour in
    // between, say) signs for that one, and B refuses it.
    let (_cable, signing_in) = connect(id(9));
    let refused = within("a refused sign-in", signing_in).await.unwrap_err();
    assert_eq!(refused, ClientError::Refused("signed for another server".into()));
}
