//! wss:// end to end on loopback: a certificate made in the test, nodes that trust it, a client
//! that does not, a TLS handshake that stalls, and a certificate reloaded while the server runs.
//! Nothing sleeps; waits have a safety timeout (`within`).

mod nodes;
mod ws;

use std::time::Duration;

use nodes::{config, key, within};
use peer_signal::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use peer_signal::{
    AsyncClient, ClientEvent, Codec, Driver, NodeInfo, ServerTls, SignalConfig, SignalServer, TlsRoots,
    WsClient, WsClientError, WsConfig, WsStatsHandle, WsTransport,
};
use tokio::io::AsyncReadExt;
use ws::{eventually, exchange, TempFile, WsNode};

/// A self-signed certificate for `localhost` and 127.0.0.1, with its key.
fn certificate() -> (CertificateDer<'static>, PrivateKeyDer<'static>, rcgen::CertifiedKey) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    (cert, key, made)
}

struct Server {
    url: String,
    port: u16,
    stats: WsStatsHandle,
}

async fn start_wss(tls: ServerTls, ws: WsConfig, config: SignalConfig) -> Server {
    let ws = ws.with_tls(tls);
    let transport = WsTransport::bind("127.0.0.1:0", ws).await.unwrap();
    let port = transport.local_addr().port();
    let stats = transport.stats_handle();
    let (driver, _handle, _events) = Driver::new(SignalServer::new(config).unwrap(), transport, 1024);
    tokio::spawn(driver.run(futures::stream::pending()));
    Server { url: format!("wss://localhost:{port}/"), port, stats }
}

async fn join_trusting(url: &str, i: u32, codec: Codec, roots: &TlsRoots) -> WsNode {
    let conn =
        within("connect", WsClient::connect_trusting(url, codec, roots)).await.expect("connect over wss");
    let key = key(i);
    let info = NodeInfo::new(format!("tls-{i}"), "test", key.verifying_key().to_bytes());
    let mut node = within("handshake", AsyncClient::connect(conn, key, info)).await.expect("announce");
    assert!(matches!(within("first list", node.next_event()).await, Ok(ClientEvent::NodeList(_))));
    node
}

#[tokio::test]
async fn nodes_over_wss_authenticate_and_relay_in_both_codecs() {
    let (cert, key, _) = certificate();
    let config = config();
    let server = start_wss(
        ServerTls::from_der(vec![cert.clone()], key).unwrap(),
        WsConfig::for_server(&config),
        config,
    )
    .await;
    let roots = TlsRoots::Custom(vec![cert]);
    let mut a = join_trusting(&server.url, 1, Codec::Json, &roots).await;
    let mut b = join_trusting(&server.url, 2, Codec::Bincode, &roots).await;
    exchange(&mut a, &mut b).await;
    exchange(&mut b, &mut a).await;
    // A large offer crosses several TLS records.
    let big = peer_signal::PeerInfo {
        id_init: a.id(),
        id_follow: b.id(),
        message: peer_signal::PeerMessage::Offer("v".repeat(30_000)),
    };
    a.send_setup(big.clone()).await.unwrap();
    assert_eq!(nodes::next_setup(&mut b).await, big);
    // A polite close finishes its handshake over TLS too.
    a.into_inner().close().await;
    eventually("a clean close", || server.stats.get().clean_closes == 1).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_gets_a_clear_error() {
    let (cert, key, _) = certificate();
    let config = config();
    let server =
        start_wss(ServerTls::from_der(vec![cert], key).unwrap(), WsConfig::for_server(&config), config).await;
    // Trusting the public roots only, or another certificate: refused.
    let (other, _, _) = certificate();
    for roots in [TlsRoots::WebPki, TlsRoots::Custom(vec![other])] {
        let error = within("refusal", WsClient::connect_trusting(&server.url, Codec::Json, &roots))
            .await
            .unwrap_err();
        let WsClientError::Connect(text) = &error else { panic!("{error:?}") };
        assert!(text.starts_with("the server's certificate is not trusted: "), "{text}");
    }
    eventually("counted as failed handshakes", || server.stats.get().failed_handshakes == 2).await;
}

#[tokio::test]
async fn a_tls_handshake_that_stalls_is_cut_by_the_handshake_timeout() {
    let (cert, key, _) = certificate();
    let config = config();
    let ws = WsConfig::for_server(&config).with_handshake_timeout(Duration::from_millis(300));
    let server = start_wss(ServerTls::from_der(vec![cert], key).unwrap(), ws, config).await;
    // TCP only, and the first bytes of a ClientHello: both wait for more that never comes.
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    for stream in [&mut silent, &mut partial] {
        let mut buf = [0u8; 64];
        let read = within("cut", stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    eventually("both counted", || server.stats.get().failed_handshakes == 2).await;
    assert_eq!(server.stats.get().connection_tasks, 0);
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_keeps_open_ones() {
    let (old_cert, _, old) = certificate();
    let (new_cert, _, new) = certificate();
    let chain = TempFile::new("chain.pem", &old.cert.pem());
    let key = TempFile::new("key.pem", &old.key_pair.serialize_pem());
    let tls = ServerTls::from_pem_files(&chain.0, &key.0).unwrap();
    let config = config();
    let server = start_wss(tls.clone(), WsConfig::for_server(&config), config).await;
    let old_roots = TlsRoots::Custom(vec![old_cert]);
    let new_roots = TlsRoots::Custom(vec![new_cert]);
    let mut before = join_trusting(&server.url, 1, Codec::Json, &old_roots).await;

    std::fs::write(&chain.0, new.cert.pem()).unwrap();
    std::fs::write(&key.0, new.key_pair.serialize_pem()).unwrap();
    tls.reload_pem_files(&chain.0, &key.0).unwrap();
    let mut after = join_trusting(&server.url, 2, Codec::Json, &new_roots).await;
    assert!(WsClient::connect_trusting(&server.url, Codec::Json, &old_roots).await.is_err());
    // The connection made before the reload goes on.
    exchange(&mut before, &mut after).await;

    // A broken file is refused with a sentence naming it, and the certificate in use stays.
    std::fs::write(&key.0, "not a key").unwrap();
    let error = tls.reload_pem_files(&chain.0, &key.0).unwrap_err().to_string();
    assert!(error.starts_with("cannot read private key from ") && error.contains("key.pem"), "{error}");
    join_trusting(&server.url, 3, Codec::Json, &new_roots).await;
}

#[tokio::test]
async fn a_reload_while_a_renewal_writes_the_pair_waits_for_the_key_instead_of_keeping_the_old_pair() {
    let (_, _, old) = certificate();
    let (new_cert, _, new) = certificate();
    let chain = TempFile::new("renew-chain.pem", &old.cert.pem());
    let key = TempFile::new("renew-key.pem", &old.key_pair.serialize_pem());
    let tls = ServerTls::from_pem_files(&chain.0, &key.0).unwrap();
    // The renewal has written the new chain, not yet the new key: the pair does not match.
    std::fs::write(&chain.0, new.cert.pem()).unwrap();
    let once = tls.reload_pem_files(&chain.0, &key.0).unwrap_err().to_string();
    assert!(once.starts_with("certificate and key: "), "{once}");
    // A reload that retries: its first attempt fails the same way, and it waits.
    let reload = {
        let (tls, chain, key) = (tls.clone(), chain.0.clone(), key.0.clone());
        tokio::spawn(
            async move { tls.reload_pem_files_retrying(chain, key, 5, Duration::from_millis(20)).await },
        )
    };
    // On this single-threaded runtime, the reload's first attempt runs here and it then sleeps.
    tokio::task::yield_now().await;
    assert!(!reload.is_finished());
    // The renewal writes the key (a half-written key first: the next attempt fails on it too).
    let key_pem = new.key_pair.serialize_pem();
    std::fs::write(&key.0, &key_pem[..key_pem.len() / 2]).unwrap();
    assert!(tls.reload_pem_files(&chain.0, &key.0).is_err(), "half a key does not load");
    std::fs::write(&key.0, &key_pem).unwrap();
    let attempts = within("reload", reload).await.unwrap().expect("the new pair loads");
    assert_eq!(attempts, 2);
    // New connections get the new certificate.
    let config = config();
    let server = start_wss(tls, WsConfig::for_server(&config), config).await;
    join_trusting(&server.url, 1, Codec::Json, &TlsRoots::Custom(vec![new_cert])).await;

    // A pair that never settles: every attempt is made, and the last error returned.
    std::fs::write(&key.0, "not a key").unwrap();
    let error = tls_clone_reload_error(&chain.0, &key.0, &new).await;
    assert!(error.starts_with("cannot read private key from "), "{error}");
}

/// The error of a retrying reload of `chain` and `key`, on a `ServerTls` made from `made`.
async fn tls_clone_reload_error(
    chain: &std::path::Path,
    key: &std::path::Path,
    made: &rcgen::CertifiedKey,
) -> String {
    let good_key = TempFile::new("renew-key-good.pem", &made.key_pair.serialize_pem());
    let tls = ServerTls::from_pem_files(chain, &good_key.0).unwrap();
    tls.reload_pem_files_retrying(chain, key, 3, Duration::from_millis(1)).await.unwrap_err().to_string()
}
