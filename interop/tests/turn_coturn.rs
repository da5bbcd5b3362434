//! TURN credentials from `ws_server --turn-uri` against a real coturn (`turnserver` with
//! `use-auth-secret`): a node signs in, receives its credentials, and allocates a relay with them
//! through which a datagram reaches a peer; coturn refuses expired and forged credentials; and a
//! fledger 0.10 node signs in at the same server, dropping the `IceServers` message it cannot
//! parse.
//!
//! coturn runs as `turnserver -n --listening-ip=127.0.0.1 --relay-ip=127.0.0.1
//! --listening-port PORT --static-auth-secret=SECRET --use-auth-secret --realm peer-signal.test
//! --no-tls --no-dtls --no-cli --allow-loopback-peers --no-multicast-peers` (see
//! `common/coturn.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::coturn::Coturn;
use common::node::{names, FledgerNode};
use common::run;
use common::server::WsServer;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{AsyncClient, Codec, IceServers, NodeInfo, TurnConfig, TurnSecret, WsClient};
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};
use webrtc::turn::client::{Client, ClientConfig};
use webrtc::util::Conn;

const SECRET: &str = "north-sea-secret";
const LIMIT: Duration = Duration::from_secs(90);
const STEP: Duration = Duration::from_secs(15);

/// A file that holds the TURN secret, removed when dropped.
struct SecretFile(std::path::PathBuf);

impl SecretFile {
    fn new(secret: &str) -> Self {
        let path = std::env::temp_dir().join(format!("peer-signal-turn-secret-{}", std::process::id()));
        std::fs::write(&path, format!("{secret}\n")).expect("write the secret file");
        Self(path)
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A TURN client on a fresh loopback socket with `username` and `password`, listening.
async fn turn_client(coturn: &Coturn, username: &str, password: &str) -> Client {
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
    let config = ClientConfig {
        stun_serv_addr: coturn.addr().to_string(),
        turn_serv_addr: coturn.addr().to_string(),
        username: username.to_string(),
        password: password.to_string(),
        // Learnt from coturn's first 401.
        realm: String::new(),
        software: "peer-signal interop".to_string(),
        rto_in_ms: 0,
        conn: Arc::new(socket),
        vnet: None,
    };
    let client = Client::new(config).await.expect("a TURN client");
    client.listen().await.expect("the client reads its socket");
    client
}

/// The first server's `(username, credential)`: the TURN one.
fn credentials(ice: &IceServers) -> (String, String) {
    let turn = &ice.servers[0];
    (turn.username.clone(), turn.credential.clone())
}

#[test]
fn issued_credentials_allocate_a_relay_on_coturn_and_expired_or_forged_ones_do_not() {
    run(LIMIT, async {
        let started = Instant::now();
        let coturn = Coturn::start(SECRET).await;
        eprintln!("{:>7.1?}  coturn answers STUN on {}", started.elapsed(), coturn.addr());
        let secret = SecretFile::new(SECRET);
        let uri = format!("turn:{}?transport=udp", coturn.addr());
        let file = secret.0.display().to_string();
        let server = WsServer::start_with(&[
            "--turn-uri",
            &uri,
            "--turn-secret-file",
            &file,
            "--turn-ttl-secs",
            "3600",
        ]);

        // A node signs in and gets its credentials.
        let key = SigningKey::from_bytes(&[42; 32]);
        let info = NodeInfo::new("turn-node", "interop", key.verifying_key().to_bytes());
        let conn = WsClient::connect(&server.url(), Codec::Json).await.expect("connect");
        let mut node =
            timeout(STEP, AsyncClient::connect(conn, key, info)).await.expect("in time").expect("sign-in");
        timeout(STEP, async {
            while node.ice_servers().is_none() {
                node.next_event().await.expect("the connection stays open");
            }
        })
        .await
        .expect("credentials in time");
        let ice = node.ice_servers().expect("issued").clone();
        let (username, password) = credentials(&ice);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(ice.servers[0].urls, std::slice::from_ref(&uri));
        assert_eq!(username, format!("{}:{}", ice.expires, node.id()));
        assert!(ice.expires > now + 3500 && ice.expires <= now + 3600, "{} vs {now}", ice.expires);
        eprintln!(
            "{:>7.1?}  node signed in at ws_server, credentials until {} (+{} s)",
            started.elapsed(),
            ice.expires,
            ice.expires - now
        );

        // They allocate a relay, and a datagram sent through it reaches a peer.
        let client = turn_client(&coturn, &username, &password).await;
        let relay = timeout(STEP, client.allocate())
            .await
            .expect("in time")
            .expect("coturn allocates with issued credentials");
        let relayed = relay.local_addr().expect("the relayed address");
        eprintln!("{:>7.1?}  allocated relay {relayed}", started.elapsed());
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        timeout(STEP, relay.send_to(b"through the relay", peer_addr)).await.expect("in time").expect("sent");
        let mut buf = [0; 64];
        let (len, from) = timeout(STEP, peer.recv_from(&mut buf)).await.expect("in time").expect("received");
        assert_eq!((&buf[..len], from), (&b"through the relay"[..], relayed));
        eprintln!("{:>7.1?}  a datagram went through the relay to {peer_addr}", started.elapsed());
        client.close().await.expect("closed");

        // Expired: the same secret and node, an expiry in the past.
        let past = TurnConfig::new([uri.as_str()], TurnSecret::new(SECRET))
            .with_lifetime(Duration::from_secs(3600))
            .with_epoch(std::time::Instant::now(), now - 7200)
            .issue(&node.id(), std::time::Instant::now());
        assert!(past.expires < now);
        let (username, password) = credentials(&past);
        let client = turn_client(&coturn, &username, &password).await;
        let refused = timeout(STEP, client.allocate()).await.expect("in time");
        let refused = refused.err().expect("coturn must refuse expired credentials").to_string();
        assert!(refused.contains("401"), "{refused}");
        eprintln!("{:>7.1?}  expired credentials refused: {refused}", started.elapsed());
        client.close().await.expect("closed");

        // Forged: a fresh username, signed with a secret coturn does not have.
        let forged = TurnConfig::new([uri.as_str()], TurnSecret::new("not-the-secret"))
            .issue(&node.id(), std::time::Instant::now());
        let (username, password) = credentials(&forged);
        let client = turn_client(&coturn, &username, &password).await;
        let refused = timeout(STEP, client.allocate()).await.expect("in time");
        let refused = refused.err().expect("coturn must refuse credentials from another secret").to_string();
        assert!(refused.contains("401"), "{refused}");
        eprintln!("{:>7.1?}  forged credentials refused: {refused}", started.elapsed());
        client.close().await.expect("closed");

        // A fledger 0.10 node signs in at the same server: it drops `IceServers` unread.
        let deadline = Instant::now() + STEP;
        let mut fledger = FledgerNode::connect(&server.url(), "fledger").await;
        fledger.authenticated(deadline).await;
        fledger.list_until(deadline, "the peer-signal node", |list| names(list).contains(&"turn-node")).await;
        eprintln!("{:>7.1?}  a fledger 0.10 node signed in and listed the node", started.elapsed());
    });
}
