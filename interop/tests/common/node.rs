//! A fledger node as fledger 0.10 builds one natively, minus the WebRTC engine.
//!
//! `flmodules::network::network_start` is three lines: flarch's `WebSocketClient::connect`,
//! `WebRTCConn::new(web_rtc_spawner(..))`, and `Network::start`. We make the same calls with one
//! change: in place of the WebRTC engine, `Network` is linked to a bare `BrokerWebRTCConn` that the
//! test reads and writes. Everything between that broker and the signalling server is fledger's:
//! `Network`'s answer to the challenge, its announce, its list requests, its translation of the
//! engine's setup messages into `PeerSetup` and back, and flarch's WebSocket client. The engine
//! itself would only produce SDP and ICE strings, and would need STUN servers and network
//! interfaces to do so, which this test must not touch.

use std::time::Duration;

use flarch::nodeids::NodeID;
use flarch::web_rtc::messages::PeerMessage;
use flarch::web_rtc::node_connection::{Direction, NCInput, NCOutput};
use flarch::web_rtc::web_socket_client::WebSocketClient;
use flarch::web_rtc::websocket::{BrokerWSClient, WSClientIn};
use flarch::web_rtc::{BrokerWebRTCConn, WebRTCConnIn, WebRTCConnOut};
use flmodules::network::broker::{BrokerNetwork, Network, NetworkIn, NetworkOut};
use flmodules::network::signal::FledgerConfig;
use flmodules::nodeconfig::{NodeConfig, NodeInfo};
use flmodules::timer::Timer;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::{timeout_at, Instant};

/// How long one list request may take to be answered before it is sent again.
const LIST_RETRY: Duration = Duration::from_millis(300);

/// One fledger node: its `Network` broker, its WebSocket client, and the stand-in engine.
pub struct FledgerNode {
    pub name: String,
    pub info: NodeInfo,
    pub id: NodeID,
    ws: BrokerWSClient,
    network: BrokerNetwork,
    /// What `Network` tells its user: lists, the system config, errors.
    network_out: UnboundedReceiver<NetworkOut>,
    /// The stand-in engine's ends: what `Network` asks of the engine, and what the engine emits.
    webrtc: BrokerWebRTCConn,
    webrtc_in: UnboundedReceiver<WebRTCConnIn>,
    /// Fledger's one-second tick; `Network` asks for a list on every 60th.
    _timer: Timer,
}

impl FledgerNode {
    /// Connects a new node, with a fresh key, to the signalling server at `url`.
    pub async fn connect(url: &str, name: &str) -> Self {
        let mut config = NodeConfig::new();
        config.info.name = name.to_string();
        let info = config.info.clone();
        let id = info.get_id();

        let ws = WebSocketClient::connect(url).await.expect("flarch WebSocketClient::connect");
        let mut webrtc = BrokerWebRTCConn::new();
        let (webrtc_in, _) = webrtc.get_tap_in().await.expect("tap the engine's input");
        let mut timer = Timer::start().await.expect("fledger timer");
        let Network { broker: mut network, .. } =
            Network::start(config, ws.clone(), webrtc.clone(), &mut timer).await.expect("Network::start");
        // flarch's client reads its first frame one second after connecting, so nothing
        // `Network` says can come before this tap is in place.
        let (network_out, _) = network.get_tap_out().await.expect("tap the network's output");
        Self { name: name.to_string(), info, id, ws, network, network_out, webrtc, webrtc_in, _timer: timer }
    }

    /// Connects a node whose tasks all run on `runtime`: flarch spawns them on the runtime it is
    /// called from.
    pub async fn connect_on(runtime: &tokio::runtime::Handle, url: &str, name: &str) -> Self {
        let (url, name) = (url.to_string(), name.to_string());
        runtime.spawn(async move { Self::connect(&url, &name).await }).await.expect("connect the node")
    }

    /// Waits for the `SystemConfig` that follows a successful announce.
    pub async fn authenticated(&mut self, deadline: Instant) -> FledgerConfig {
        loop {
            match self.next_out(deadline).await {
                Some(NetworkOut::SystemConfig(config)) => return config,
                Some(_) => {}
                None => panic!("{}: no SystemConfig, so no successful announce", self.name),
            }
        }
    }

    /// Asks for lists until one satisfies `want`, and returns it; panics at `deadline` with the
    /// last list seen. Lists the server pushes on its own count as well.
    pub async fn list_until(
        &mut self,
        deadline: Instant,
        what: &str,
        want: impl Fn(&[NodeInfo]) -> bool,
    ) -> Vec<NodeInfo> {
        let mut last = None;
        while Instant::now() < deadline {
            self.request_list();
            let retry = (Instant::now() + LIST_RETRY).min(deadline);
            while let Some(list) = self.next_list(retry).await {
                if want(&list) {
                    return list;
                }
                last = Some(list);
            }
        }
        panic!("{}: no list where {what}; last list: {:?}", self.name, last.as_deref().map(names));
    }

    /// Sends `ListIDsRequest`, as `Network` does on `WSUpdateListRequest`.
    pub fn request_list(&mut self) {
        self.network.emit_msg_in(NetworkIn::WSUpdateListRequest).expect("WSUpdateListRequest");
    }

    /// The next list `Network` reports before `deadline`.
    pub async fn next_list(&mut self, deadline: Instant) -> Option<Vec<NodeInfo>> {
        loop {
            match self.next_out(deadline).await? {
                NetworkOut::NodeListFromWS(list) => return Some(list),
                _ => continue,
            }
        }
    }

    /// Everything `Network` reported so far and nobody read, without waiting.
    pub fn pending_out(&mut self) -> Vec<NetworkOut> {
        std::iter::from_fn(|| self.network_out.try_recv().ok()).collect()
    }

    /// Asks `Network` to connect to `remote`, as a fledger module does before sending to it.
    pub fn connect_to(&mut self, remote: NodeID) {
        self.network.emit_msg_in(NetworkIn::Connect(remote)).expect("NetworkIn::Connect");
    }

    /// The next request `Network` makes of the WebRTC engine.
    pub async fn next_engine_request(&mut self, deadline: Instant) -> Option<WebRTCConnIn> {
        timeout_at(deadline, self.webrtc_in.recv()).await.ok().flatten()
    }

    /// The engine emits a setup message for its connection with `remote`, as flarch's
    /// `NodeConnection` does with each offer, answer and ICE candidate.
    pub fn engine_emits_setup(&mut self, remote: NodeID, dir: Direction, message: PeerMessage) {
        self.webrtc
            .emit_msg_out(WebRTCConnOut::Message(remote, NCOutput::Setup(dir, message)))
            .expect("engine output");
    }

    /// The next setup message `Network` hands to the engine, with the remote id and direction.
    pub async fn next_setup_for_engine(&mut self, deadline: Instant) -> (NodeID, Direction, PeerMessage) {
        loop {
            match self.next_engine_request(deadline).await {
                Some(WebRTCConnIn::Message(remote, NCInput::Setup(dir, message))) => {
                    return (remote, dir, message)
                }
                Some(_) => continue,
                None => panic!("{}: no PeerSetup reached the engine", self.name),
            }
        }
    }

    /// Leaves the way flarch's client does: `WSClientIn::Disconnect` sends a WebSocket Close.
    ///
    /// First it lets everything the node already asked for reach the socket (flarch's
    /// `Broker::settle` through `Network` to the WebSocket client): the client reconnects on any
    /// write after its Disconnect, so a list request still on its way would bring the node back
    /// whatever the server does.
    pub async fn disconnect(&mut self) {
        self.network.settle(vec![]).await.expect("settle the node's brokers");
        self.ws.emit_msg_in(WSClientIn::Disconnect).expect("WSClientIn::Disconnect");
    }

    async fn next_out(&mut self, deadline: Instant) -> Option<NetworkOut> {
        let out = timeout_at(deadline, self.network_out.recv()).await.ok().flatten()?;
        if let NetworkOut::Error(error) = &out {
            panic!("{}: the server sent Error({error:?})", self.name);
        }
        Some(out)
    }
}

/// The names in a list, for messages.
pub fn names(list: &[NodeInfo]) -> Vec<&str> {
    list.iter().map(|info| info.name.as_str()).collect()
}

/// Whether `list` holds `node`, with its name, client, key and modules as the node announced them.
pub fn lists(list: &[NodeInfo], node: &NodeInfo) -> bool {
    list.iter().any(|info| {
        info.get_id() == node.get_id()
            && info.name == node.name
            && info.client == node.client
            && info.pubkey == node.pubkey
            && info.modules == node.modules
    })
}

/// Whether `list` holds `id` at all.
pub fn lists_id(list: &[NodeInfo], id: NodeID) -> bool {
    list.iter().any(|info| info.get_id() == id)
}
