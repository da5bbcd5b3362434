//! A real coturn (`turnserver`) on a free loopback port, with `use-auth-secret`: the TURN REST
//! API credentials that `ws_server --turn-uri` hands out. Stopped when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use webrtc::stun::agent::TransactionId;
use webrtc::stun::message::{Message, BINDING_REQUEST};

/// The realm coturn names in its challenges.
pub const REALM: &str = "peer-signal.test";

/// How long coturn may take to answer its first STUN binding request.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A running `turnserver`, killed when dropped.
pub struct Coturn {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Coturn {
    /// Starts coturn on 127.0.0.1 with `secret` as its only `static-auth-secret`, and returns
    /// once it answers STUN.
    pub async fn start(secret: &str) -> Self {
        let addr = free_udp_port();
        let dir =
            std::env::temp_dir().join(format!("peer-signal-coturn-{}-{}", std::process::id(), addr.port()));
        std::fs::create_dir_all(&dir).expect("a directory for coturn");
        let port = addr.port().to_string();
        let child = Command::new("turnserver")
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--listening-port", &port])
            .arg(format!("--static-auth-secret={secret}"))
            .args(["--use-auth-secret", "--realm", REALM])
            // Loopback only, no TLS listeners, no telnet CLI; loopback peers, so that a relay on
            // 127.0.0.1 can reach 127.0.0.1.
            .args(["--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--no-multicast-peers"])
            .arg(format!("--pidfile={}", dir.join("turnserver.pid").display()))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .args(["--log-file=stdout", "--simple-log"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnserver (Debian's coturn; .ci/run installs it)");
        let coturn = Self { child, addr, dir };
        coturn.wait_ready().await;
        coturn
    }

    /// Where TURN clients send to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends STUN binding requests until one is answered: coturn binds its ports after it starts.
    async fn wait_ready(&self) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket");
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let mut buf = [0; 1500];
        loop {
            let mut request = Message::new();
            request
                .build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
                .expect("a binding request");
            // An ICMP "port unreachable" before coturn binds shows as an error here: try again.
            let _ = socket.send_to(&request.raw, self.addr).await;
            if let Ok(Ok((len, _))) =
                tokio::time::timeout(Duration::from_millis(100), socket.recv_from(&mut buf)).await
            {
                let mut answer = Message::new();
                answer.raw = buf[..len].to_vec();
                if answer.decode().is_ok() && answer.transaction_id == request.transaction_id {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "coturn did not answer STUN on {} within {READY_WITHIN:?}",
                self.addr
            );
        }
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback UDP port free right now (coturn also listens on TCP there; a clash is rare, and
/// then `wait_ready` fails loudly).
fn free_udp_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral UDP port");
    socket.local_addr().expect("local address")
}
