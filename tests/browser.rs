//! In headless Chromium: a page signs in at a real `ws_server` over the browser's WebSocket,
//! lists the native nodes, and plays a set-up exchange with each, in both codecs.
//!
//! `scripts/browser-tests.sh` starts the server and two native nodes (`ws_client`, one speaking
//! JSON and one bincode) on loopback, and passes the server's URL in
//! `PEER_SIGNAL_BROWSER_TEST_URL` when it compiles this file.
#![cfg(all(target_arch = "wasm32", target_os = "unknown", feature = "browser"))]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::{select, Either};
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, Backoff, BrowserClient, BrowserTimer, BrowserWs, ClientConfig, ClientEvent, Codec, NodeInfo,
    PeerInfo, PeerMessage,
};
use wasm_bindgen_test::{console_log, wasm_bindgen_test, wasm_bindgen_test_configure};
use web_time::Instant;

wasm_bindgen_test_configure!(run_in_browser);

/// The `ws_server` the script started.
const URL: Option<&str> = option_env!("PEER_SIGNAL_BROWSER_TEST_URL");

/// Every wait on the server or a node.
const WITHIN: Duration = Duration::from_secs(10);

/// The names the script gives the native nodes, and the codec each speaks.
const NATIVE: [&str; 2] = ["native-json", "native-bincode"];

async fn within<F: Future>(what: &str, future: F) -> F::Output {
    futures::pin_mut!(future);
    match select(future, BrowserTimer::sleep(WITHIN)).await {
        Either::Left((output, _)) => output,
        Either::Right(_) => panic!("{what}: nothing within {WITHIN:?}"),
    }
}

fn url() -> &'static str {
    URL.expect("PEER_SIGNAL_BROWSER_TEST_URL: run scripts/browser-tests.sh")
}

async fn sign_in(codec: Codec, seed: u8, name: &str) -> BrowserClient {
    let key = SigningKey::from_bytes(&[seed; 32]);
    let info = NodeInfo::new(name, "peer-signal browser test", key.verifying_key().to_bytes());
    let conn = within("open the WebSocket", BrowserWs::new(url()).codec(codec).connect())
        .await
        .expect("the WebSocket opens");
    let node = within("sign in", AsyncClient::connect(conn, key, info)).await.expect("signed in");
    console_log!("{name} ({codec:?}): signed in at {} as {}", url(), node.id());
    node
}

/// The next set-up message, skipping lists the server pushes meanwhile.
async fn next_setup(node: &mut BrowserClient) -> PeerInfo {
    within("a set-up message", async {
        loop {
            match node.next_event().await.expect("an event") {
                ClientEvent::PeerSetup(setup) => return setup,
                ClientEvent::NodeList(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
}

fn describe(message: &PeerMessage) -> String {
    match message {
        PeerMessage::Init => "Init".into(),
        PeerMessage::Offer(sdp) => format!("Offer {sdp:?}"),
        PeerMessage::Answer(sdp) => format!("Answer {sdp:?}"),
        PeerMessage::IceCandidate(candidate) => format!("IceCandidate {candidate:?}"),
    }
}

/// Signs in with `codec`, finds both native nodes in the list, and with each plays Init →
/// Offer → Answer → IceCandidate → IceCandidate, checking every message that comes back.
async fn relays_with_the_native_nodes(codec: Codec, seed: u8, name: &str) {
    let mut node = sign_in(codec, seed, name).await;
    let nodes = within("list", node.list()).await.expect("a list");
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    console_log!("{name}: listed {names:?}");
    assert!(nodes.iter().any(|n| n.id() == node.id()), "the page lists itself");
    for native in NATIVE {
        let other = nodes.iter().find(|n| n.name == native).unwrap_or_else(|| panic!("{native} listed"));
        let other = other.id();
        within("send Init", node.send_init(other)).await.expect("Init sent");
        console_log!("{name}: → Init to {native}");

        let offer = next_setup(&mut node).await;
        console_log!("{name}: ← {} from {native}", describe(&offer.message));
        assert_eq!((offer.id_init, offer.id_follow), (node.id(), other));
        assert!(matches!(&offer.message, PeerMessage::Offer(sdp) if sdp.starts_with("v=0")));

        let answer = PeerMessage::Answer(format!("v=0\r\no=- 5 6 IN IP4 127.0.0.1\r\ns={name}\r\n"));
        within("send Answer", node.send_reply(&offer, answer)).await.expect("Answer sent");
        console_log!("{name}: → Answer to {native}");

        let candidate = next_setup(&mut node).await;
        console_log!("{name}: ← {} from {native}", describe(&candidate.message));
        assert_eq!((candidate.id_init, candidate.id_follow), (node.id(), other));
        assert!(matches!(&candidate.message, PeerMessage::IceCandidate(c) if c.contains("typ host")));

        let ours = PeerMessage::IceCandidate("candidate:3 1 udp 2130706431 127.0.0.1 50002 typ host".into());
        within("send IceCandidate", node.send_reply(&candidate, ours)).await.expect("candidate sent");
        console_log!("{name}: → IceCandidate to {native}");
    }
}

#[wasm_bindgen_test]
async fn a_page_speaking_json_relays_set_up_messages_with_native_nodes() {
    relays_with_the_native_nodes(Codec::Json, 41, "page-json").await;
}

#[wasm_bindgen_test]
async fn a_page_speaking_bincode_relays_set_up_messages_with_native_nodes() {
    relays_with_the_native_nodes(Codec::Bincode, 42, "page-bincode").await;
}

#[wasm_bindgen_test]
async fn a_server_that_is_not_there_is_a_connect_error_within_the_open_timeout() {
    // Port 9 on loopback: nothing listens there in CI, and the browser refuses at once.
    let refused = within("a refused connection", BrowserWs::new("ws://127.0.0.1:9/").connect()).await;
    assert!(matches!(refused, Err(peer_signal::TransportError::Connect(_))), "{refused:?}");
}

#[wasm_bindgen_test]
async fn a_page_keeps_alive_with_list_requests_on_the_browser_clock() {
    let mut node = sign_in(Codec::Json, 43, "page-keepalive").await;
    let first = within("the sign-in's list", node.next_event()).await.expect("an event");
    assert!(matches!(first, ClientEvent::NodeList(_)), "{first:?}");
    let interval = Duration::from_secs(1);
    node.keep_alive(interval, Arc::new(BrowserTimer));
    let started = Instant::now();
    // Nothing was asked: the list comes from the keepalive's request, an interval later.
    let event = within("a keepalive's list", node.next_event()).await.expect("an event");
    let after = started.elapsed();
    console_log!("page-keepalive: {} listed {after:?} after keep_alive({interval:?})", summary(&event));
    assert!(matches!(event, ClientEvent::NodeList(_)), "{event:?}");
    assert!(after >= interval - Duration::from_millis(50), "{after:?}");
}

#[wasm_bindgen_test]
async fn a_page_that_is_taken_over_reconnects_after_its_backoff() {
    let key = SigningKey::from_bytes(&[44; 32]);
    let info = NodeInfo::new("page-reconnect", "peer-signal browser test", key.verifying_key().to_bytes());
    let backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    let config = ClientConfig::default().with_backoff(backoff);
    let server = BrowserWs::new(url());
    let connect = AsyncClient::connect_reconnecting_with(
        server,
        key.clone(),
        info.clone(),
        config,
        Arc::new(BrowserTimer),
    );
    let mut node = within("sign in", connect).await.expect("signed in");
    assert!(node.reconnects());
    console_log!("page-reconnect: signed in as {}", node.id());

    // The same node signs in again elsewhere: the server closes the first connection.
    let conn = within("open", BrowserWs::new(url()).connect()).await.expect("open");
    let other = within("sign in again", AsyncClient::connect(conn, key, info)).await.expect("signed in");
    console_log!("page-reconnect: the same node signed in on a second connection");

    let mut disconnected = None;
    let reconnected = within("disconnected and back", async {
        loop {
            let event = node.next_event().await.expect("an event");
            console_log!("page-reconnect: {}", summary(&event));
            match event {
                ClientEvent::Disconnected => disconnected = Some(Instant::now()),
                ClientEvent::Connected(_) if disconnected.is_some() => return Instant::now(),
                _ => {}
            }
        }
    })
    .await;
    let waited = reconnected - disconnected.expect("disconnected first");
    console_log!("page-reconnect: back after {waited:?}");
    // At least the first backoff, less its jitter of a quarter.
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    drop(other);
}

fn summary(event: &ClientEvent) -> String {
    match event {
        ClientEvent::NodeList(nodes) => format!("NodeList of {}", nodes.len()),
        ClientEvent::Connected(_) => "Connected".into(),
        ClientEvent::Disconnected => "Disconnected".into(),
        ClientEvent::Error(error) => format!("Error {error:?}"),
        other => format!("{other:?}"),
    }
}
