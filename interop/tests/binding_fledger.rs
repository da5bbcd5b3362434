//! A server with bound sign-ins in accept mode (`ws_server --binding accept`): a fledger 0.10 node
//! signs in with its v3 announce, dropping the `Capabilities` it cannot parse; a peer-signal node
//! that requires binding signs in bound; and set-up messages go both ways between them, the
//! peer-signal node's signed ones reaching the fledger node as plain `PeerSetup`s, unchanged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::node::{names, FledgerNode};
use common::run;
use common::server::WsServer;
use flarch::web_rtc::messages::PeerMessage as FledgerMessage;
use flarch::web_rtc::node_connection::Direction;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientBinding, ClientConfig, ClientEvent, Codec, NodeInfo, PeerInfo, PeerMessage,
    TokioTimer, WsClient,
};
use tokio::time::{timeout, Instant};

const LIMIT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(15);

#[test]
fn fledger_nodes_sign_in_and_relay_through_a_server_that_accepts_bound_sign_ins() {
    let server = WsServer::start_with(&["--binding", "accept"]);
    run(LIMIT, async move {
        let deadline = Instant::now() + STEP;
        let mut fledger = FledgerNode::connect(&server.url(), "fledger").await;
        fledger.authenticated(deadline).await;

        let key = SigningKey::from_bytes(&[77; 32]);
        let info = NodeInfo::new("bound-node", "interop", key.verifying_key().to_bytes());
        let conn = WsClient::connect(&server.url(), Codec::Json).await.expect("connect");
        let config = ClientConfig::default().with_binding(ClientBinding::Require);
        let mut bound =
            timeout(STEP, AsyncClient::connect_with(conn, key, info, config, Arc::new(TokioTimer)))
                .await
                .expect("in time")
                .expect("a bound sign-in");
        assert!(bound.client().signs_setups(), "bound, and signing its set-up messages");

        // Each lists the other.
        let list =
            fledger.list_until(deadline, "the bound node", |list| names(list).contains(&"bound-node")).await;
        let bound_id_fledger = list.iter().find(|info| info.name == "bound-node").expect("listed").get_id();
        let listed = timeout(STEP, bound.list()).await.expect("in time").expect("a list");
        let fledger_id = listed.iter().find(|info| info.name == "fledger").expect("the fledger node").id();

        // A signed Offer from the bound node reaches fledger's engine as a plain one, unchanged.
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\na=fingerprint:sha-256 AB:CD\r\n";
        let offer =
            PeerInfo { id_init: bound.id(), id_follow: fledger_id, message: PeerMessage::Offer(sdp.into()) };
        timeout(STEP, bound.send_setup(offer)).await.expect("in time").expect("sent");
        let (from, dir, got) = fledger.next_setup_for_engine(deadline).await;
        assert_eq!(
            (from, dir, got),
            (bound_id_fledger, Direction::Incoming, FledgerMessage::Offer(sdp.into()))
        );

        // fledger's plain Answer reaches the bound node, which does not require signatures.
        fledger.engine_emits_setup(
            bound_id_fledger,
            Direction::Incoming,
            FledgerMessage::Answer("v=0 answer".into()),
        );
        let answer = timeout(STEP, async {
            loop {
                match bound.next_event().await.expect("open") {
                    ClientEvent::PeerSetup(setup) => return setup,
                    ClientEvent::NodeList(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        })
        .await
        .expect("in time");
        assert_eq!((answer.id_init, answer.message), (bound.id(), PeerMessage::Answer("v=0 answer".into())));
    });
}
