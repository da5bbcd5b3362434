//! A `redis-server` of the test's own, on a free loopback port, with no persistence; stopped
//! when dropped. A machine without `redis-server` fails the test with a sentence that says so:
//! CI installs it, and these tests never skip.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// With TLS: the files of its certificate and key, and only a TLS port.
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

impl RedisServer {
    pub fn start() -> Self {
        let mut server = Self { child: None, port: free_port(), tls: None };
        server.spawn();
        server
    }

    /// A Redis that speaks TLS only (`rediss://`), with a certificate for `localhost` and
    /// 127.0.0.1; returns it with the certificate (PEM), for clients to trust.
    pub fn start_tls() -> (Self, Vec<u8>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("a self-signed certificate");
        let port = free_port();
        let dir = std::env::temp_dir();
        let cert = dir.join(format!("peer-signal-redis-{}-{port}.crt", std::process::id()));
        let key = dir.join(format!("peer-signal-redis-{}-{port}.key", std::process::id()));
        std::fs::write(&cert, certified.cert.pem()).expect("write the certificate");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write the key");
        let mut server = Self { child: None, port, tls: Some((cert, key)) };
        server.spawn();
        (server, certified.cert.pem().into_bytes())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts redis-server on `self.port` and waits for its "Ready to accept connections".
    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        match &self.tls {
            None => command.args(["--port", &port]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &port, "--tls-auth-clients", "no"])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(cert),
        };
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install it (Debian: apt-get install redis-server)")
        });
        let stdout = child.stdout.take().expect("redis-server's stdout");
        let (ready, waiter) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !said && line.contains("Ready to accept connections") {
                    said = true;
                    let _ = ready.send(());
                }
            }
        });
        waiter.recv_timeout(Duration::from_secs(20)).expect("redis-server did not become ready within 20 s");
        self.child = Some(child);
    }

    /// `kill -9`: Redis is gone at once, with every connection.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Redis again on the same port, empty; returns when it accepts connections.
    pub fn restart(&mut self) -> Instant {
        self.kill();
        self.spawn();
        Instant::now()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if let Some((cert, key)) = &self.tls {
            let _ = std::fs::remove_file(cert);
            let _ = std::fs::remove_file(key);
        }
    }
}

/// Every key and channel of the crate's prefix in the Redis at `url`, sorted.
pub async fn keys_and_channels(url: &str) -> (Vec<String>, Vec<String>) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("peer-signal:*").query_async(&mut conn).await.unwrap();
    let mut channels: Vec<String> =
        redis::cmd("PUBSUB").arg("CHANNELS").arg("peer-signal:*").query_async(&mut conn).await.unwrap();
    keys.sort();
    channels.sort();
    (keys, channels)
}
