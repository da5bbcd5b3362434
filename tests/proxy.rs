//! nginx in front of the WebSocket transport, with `deploy/nginx.conf` as shipped (ports and
//! paths replaced): wss:// terminated by nginx, nodes authenticating and relaying through it,
//! and the per-IP limit counting each client by nginx's X-Forwarded-For.
//!
//! These tests need Debian's nginx; `bash .ci/run` installs it when missing and runs them with
//! `cargo test --test proxy -- --ignored`. Nothing sleeps to synchronise: waits poll with a
//! deadline.

mod nodes;
mod ws;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nodes::{config, key, within};
use peer_signal::rustls::pki_types::CertificateDer;
use peer_signal::{AsyncClient, ClientEvent, Codec, NodeInfo, TlsRoots, TransportError, WsClient, WsConfig};
use tokio::process::{Child, Command};
use ws::{exchange, start, Server, WsNode};

const NEEDS: &str = "needs nginx (apt-get install nginx-light); bash .ci/run installs it and runs these";

/// A folder of its own for one nginx, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("peer-signal-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx running `deploy/nginx.conf` on `port`, forwarding to `upstream`; stopped when dropped.
struct Nginx {
    child: Child,
    port: u16,
    _scratch: Scratch,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nginx {
    async fn start(upstream: &str, certificate: &rcgen::CertifiedKey) -> Self {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .unwrap_or_else(|| panic!("nginx is missing: {NEEDS}"));
        let scratch = Scratch::new("nginx");
        let dir = &scratch.0;
        std::fs::write(dir.join("cert.pem"), certificate.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), certificate.key_pair.serialize_pem()).unwrap();
        let port = free_port();
        let shipped = include_str!("../deploy/nginx.conf");
        let site = shipped
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
            .replace("server 127.0.0.1:8765;", &format!("server {upstream};"))
            .replace(
                "/etc/letsencrypt/live/signal.example.org/fullchain.pem",
                &dir.join("cert.pem").display().to_string(),
            )
            .replace(
                "/etc/letsencrypt/live/signal.example.org/privkey.pem",
                &dir.join("key.pem").display().to_string(),
            );
        assert!(
            site.contains(&format!("127.0.0.1:{port} ssl")) && site.contains(upstream),
            "placeholders moved"
        );
        std::fs::write(dir.join("site.conf"), site).unwrap();
        let d = dir.display();
        let main = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             include {d}/site.conf;\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), main).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        // nginx says nothing when it is ready: wait until it accepts, with a deadline.
        within("nginx listening", async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        Self { child, port, _scratch: scratch }
    }

    fn url(&self) -> String {
        format!("wss://localhost:{}/any/path", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn certificate() -> (rcgen::CertifiedKey, TlsRoots) {
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let roots = TlsRoots::Custom(vec![CertificateDer::from(made.cert.der().to_vec())]);
    (made, roots)
}

async fn join_through(url: &str, i: u32, codec: Codec, roots: &TlsRoots) -> Result<WsNode, TransportError> {
    let conn = within("connect", WsClient::connect_trusting(url, codec, roots)).await?;
    let key = key(i);
    let info = NodeInfo::new(format!("proxied-{i}"), "test", key.verifying_key().to_bytes());
    let mut node = within("handshake", AsyncClient::connect(conn, key, info)).await.expect("announce");
    assert!(matches!(within("first list", node.next_event()).await, Ok(ClientEvent::NodeList(_))));
    Ok(node)
}

fn upstream(server: &Server) -> String {
    server.url.trim_start_matches("ws://").split('/').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx; bash .ci/run installs it and runs these"]
async fn nodes_authenticate_and_relay_through_nginx_over_wss() {
    let config = config();
    let server = start(config.clone(), WsConfig::for_server(&config)).await;
    let (certificate, roots) = certificate();
    let nginx = Nginx::start(&upstream(&server), &certificate).await;
    let mut server = server;
    let mut a = join_through(&nginx.url(), 1, Codec::Json, &roots).await.unwrap();
    let mut b = join_through(&nginx.url(), 2, Codec::Bincode, &roots).await.unwrap();
    exchange(&mut a, &mut b).await;
    exchange(&mut b, &mut a).await;
    let listed = within("list", a.list()).await.unwrap();
    assert_eq!(listed.len(), 2);
    // A close through nginx reaches the server as a close.
    let id = a.id();
    a.into_inner().close().await;
    nodes::wait_event(&mut server.events, |event| *event == peer_signal::SignalEvent::NodeLeft(id)).await;
}

type Upgraded = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a wss:// WebSocket through nginx from the loopback address `source`; `Err` with the
/// client library's words when the upgrade is refused.
async fn upgrade_from(
    source: &str,
    port: u16,
    certificate: &rcgen::CertifiedKey,
) -> Result<Upgraded, String> {
    use peer_signal::rustls;
    let mut store = rustls::RootCertStore::empty();
    store.add(CertificateDer::from(certificate.cert.der().to_vec())).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(rustls::crypto::ring::default_provider().into())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    let connector = tokio_tungstenite::Connector::Rustls(client.into());
    let url = format!("wss://localhost:{port}/");
    let upgrade = tokio_tungstenite::client_async_tls_with_config(url, stream, None, Some(connector));
    within("upgrade", upgrade).await.map(|(ws, _)| ws).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx; bash .ci/run installs it and runs these"]
async fn behind_nginx_the_per_ip_limit_counts_each_client_not_the_proxy() {
    // One connection per client. Every connection reaches the server from nginx at 127.0.0.1;
    // the clients come from other loopback addresses, which nginx reports in X-Forwarded-For.
    let config = config();
    let ws = WsConfig::for_server(&config)
        .with_max_connections_per_ip(1)
        .with_trusted_proxies(vec!["127.0.0.1".parse().unwrap()]);
    let server = start(config, ws).await;
    let (certificate, _) = certificate();
    let nginx = Nginx::start(&upstream(&server), &certificate).await;
    let _first = upgrade_from("127.0.0.5", nginx.port, &certificate).await.expect("a client");
    let _second = upgrade_from("127.0.0.6", nginx.port, &certificate)
        .await
        .expect("another client, through the same proxy");
    let refused =
        upgrade_from("127.0.0.5", nginx.port, &certificate).await.expect_err("the first client again");
    assert!(refused.contains("429"), "{refused}");
    assert_eq!(server.ws.get().refused_per_ip, 1);
}
