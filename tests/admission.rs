//! Admission before the upgrade, over real sockets: the application's hook sees the path, the
//! headers and the client's address, and a refused request gets its HTTP status and nothing more.

mod nodes;
mod ws;

use nodes::config;
use peer_signal::{Admission, AdmissionHook, Codec, WsConfig};
use ws::*;

async fn server_with(admission: AdmissionHook) -> Server {
    let config = config();
    let ws = WsConfig::for_server(&config).with_admission(admission);
    start(config, ws).await
}

fn base(server: &Server) -> String {
    format!("ws://{}", host(&server.url))
}

#[tokio::test]
async fn a_shared_secret_lets_in_who_has_it_from_a_header_or_the_query() {
    let server = server_with(AdmissionHook::bearer_token("s3cret")).await;
    let base = base(&server);
    RawWs::try_connect_from(&format!("{base}/"), "127.0.0.1", "Authorization: Bearer s3cret\r\n")
        .await
        .expect("header");
    RawWs::try_connect_from(&format!("{base}/signal?token=s3cret"), "127.0.0.1", "").await.expect("query");
    for (path, headers) in [("/", ""), ("/?token=wrong", ""), ("/", "Authorization: Bearer wrong\r\n")] {
        let refused = RawWs::try_connect_from(&format!("{base}{path}"), "127.0.0.1", headers).await.err();
        assert_eq!(refused.as_deref(), Some("HTTP/1.1 401 Unauthorized"), "{path} {headers}");
    }
    // A node of this crate passes the token in its URL, as fledger nodes and browsers can.
    let mut node = join(&format!("{base}/?token=s3cret"), 1, Codec::Json).await;
    assert_eq!(nodes::within("list", node.list()).await.unwrap().len(), 1);
    eventually("refusals counted", || server.ws.get().refused_admission == 3).await;
    assert_eq!(server.ws.get().failed_handshakes, 0);
}

#[tokio::test]
async fn pages_of_other_origins_are_refused() {
    let server = server_with(AdmissionHook::allow_origins(["https://app.example.org"])).await;
    let url = format!("{}/", base(&server));
    RawWs::try_connect_from(&url, "127.0.0.1", "Origin: https://app.example.org\r\n")
        .await
        .expect("our page");
    RawWs::try_connect_from(&url, "127.0.0.1", "").await.expect("not a browser");
    let refused = RawWs::try_connect_from(&url, "127.0.0.1", "Origin: https://evil.example\r\n").await.err();
    assert_eq!(refused.as_deref(), Some("HTTP/1.1 403 Forbidden"));
}

#[tokio::test]
async fn the_hook_sees_the_path_the_headers_and_the_address_and_picks_the_status() {
    let hook = AdmissionHook::new(|request| {
        let expected = request.path == "/room/7?x=1"
            && request.header("x-test") == Some("yes")
            && request.client.to_string() == "127.0.0.4"
            && request.peer.ip() == request.client;
        if expected {
            Admission::Accept
        } else {
            Admission::refuse(418, format!("unexpected {} from {}", request.path, request.client))
        }
    });
    let server = server_with(hook).await;
    let base = base(&server);
    RawWs::try_connect_from(&format!("{base}/room/7?x=1"), "127.0.0.4", "X-Test: yes\r\n")
        .await
        .expect("as expected");
    let refused =
        RawWs::try_connect_from(&format!("{base}/room/8"), "127.0.0.4", "X-Test: yes\r\n").await.err();
    assert_eq!(refused.as_deref(), Some("HTTP/1.1 418 Client Error"));
}

#[tokio::test]
async fn a_client_of_this_crate_sends_its_token_as_a_header() {
    use peer_signal::{AsyncClient, NodeInfo, WsClient, WsClientError};
    let server = server_with(AdmissionHook::bearer_token("s3cret")).await;
    let url = format!("{}/", base(&server));
    let refused = WsClient::builder(&url).connect().await.err();
    assert!(matches!(&refused, Some(WsClientError::Connect(text)) if text.contains("401")), "{refused:?}");
    let builder = WsClient::builder(&url).codec(Codec::Bincode).header("Authorization", "Bearer s3cret");
    let conn = nodes::within("connect", builder.connect()).await.expect("let in");
    let key = nodes::key(7);
    let info = NodeInfo::new("with-token", "test", key.verifying_key().to_bytes());
    let node = nodes::within("announce", AsyncClient::connect(conn, key, info)).await.expect("announced");
    assert_eq!(node.id(), nodes::id(7));
    let invalid = WsClient::builder(&url).header("Bad Name", "x").connect().await.err();
    assert!(
        matches!(&invalid, Some(WsClientError::Connect(text)) if text.starts_with("invalid header name"))
    );
}
