//! End to end: three `ws_server` processes and one Redis, nodes over WebSocket spread over them.
//! Set-ups across instances in JSON and bincode, lists with remote nodes, a duplicate id, an
//! instance killed with `kill -9`, one paused with SIGSTOP and resumed, Redis killed and
//! restarted; each measured. `cargo test` builds the examples before it runs any test.
//!
//! These tests need `redis-server`; `bash .ci/run` installs it when missing and runs them with
//! `cargo test --test ws_cluster -- --ignored`.

mod nodes;
mod redis_server;
mod ws;

use std::process::Stdio;
use std::time::{Duration, Instant};

use nodes::{drain_until_closed, id, next_error, next_setup, within};
use peer_signal::{ClientEvent, Codec, NodeID, PeerInfo, PeerMessage};
use redis_server::{keys_and_channels, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use ws::{exchange, join, ws_server_binary, WsNode};

struct Instance {
    child: Child,
    url: String,
    metrics: String,
}

/// The key every instance of these tests shares, in a file of the test process's own.
fn cluster_key_file() -> String {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let path = FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("peer-signal-cluster-key-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef0123456789abcdef\n").expect("write the cluster key");
        path
    });
    path.display().to_string()
}

impl Instance {
    /// A `ws_server` on ephemeral loopback ports, joined to Redis, once it is ready.
    async fn start(redis: &str, name: &str) -> Self {
        let mut child = Command::new(ws_server_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics",
                "127.0.0.1:0",
                "--redis",
                redis,
                "--instance-id",
                name,
            ])
            .args(["--unlimited-rates", "--cluster-key-file", &cluster_key_file()])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start ws_server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // The server says where it listens; those lines are the signal that it runs.
        let (url, metrics) = within("ws_server listening", async {
            let (mut url, mut metrics) = (None, None);
            while let Some(line) = lines.next_line().await.expect("read the server's log") {
                if let Some(at) = line.find("signalling on ws://") {
                    url = Some(line[at + "signalling on ".len()..].trim().to_string());
                }
                if let Some(at) = line.find("metrics on http://") {
                    let rest = &line[at + "metrics on http://".len()..];
                    metrics = rest.split('/').next().map(str::to_string);
                }
                if let (Some(url), Some(metrics)) = (&url, &metrics) {
                    return (url.clone(), metrics.clone());
                }
            }
            panic!("ws_server exited before it listened");
        })
        .await;
        // Keep reading its log, so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let instance = Self { child, url: format!("{url}/"), metrics };
        instance.until_ready(true).await;
        instance
    }

    /// The status of `GET path` on the metrics address, and the body.
    async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(&self.metrics).await.expect("metrics address");
        let request = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("request");
        let mut response = String::new();
        stream.read_to_string(&mut response).await.expect("response");
        let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        (status, response)
    }

    /// Waits until `/ready` says `ready`.
    async fn until_ready(&self, ready: bool) -> Duration {
        let start = Instant::now();
        let want = if ready { 200 } else { 503 };
        within("readiness", async {
            while self.get("/ready").await.0 != want {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        start.elapsed()
    }

    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    async fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid()]).status().await.expect("kill");
        assert!(status.success());
    }
}

async fn listed(node: &mut WsNode) -> Vec<NodeID> {
    node.list().await.expect("list").iter().map(|n| n.id()).collect()
}

/// Asks for the list until `done` holds for it; returns how long that took.
async fn until_list(node: &mut WsNode, what: &str, done: impl Fn(&[NodeID]) -> bool) -> Duration {
    let start = Instant::now();
    within(what, async {
        while !done(&listed(node).await) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    start.elapsed()
}

fn init(from: NodeID, to: NodeID) -> PeerInfo {
    PeerInfo { id_init: from, id_follow: to, message: PeerMessage::Init }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn three_instances_are_one_network() {
    let redis = RedisServer::start();
    let a = Instance::start(&redis.url(), "a").await;
    let b = Instance::start(&redis.url(), "b").await;
    let c = Instance::start(&redis.url(), "c").await;
    let mut n1 = join(&a.url, 1, Codec::Json).await;
    let mut n2 = join(&b.url, 2, Codec::Bincode).await;
    let mut n3 = join(&c.url, 3, Codec::Json).await;
    let mut n4 = join(&a.url, 4, Codec::Bincode).await;

    let took =
        until_list(&mut n1, "remote nodes listed", |ids| [2, 3].iter().all(|&n| ids.contains(&id(n)))).await;
    println!("remote nodes in the list after {took:?} (one refresh: 2 s)");
    assert!(took < Duration::from_millis(2500), "{took:?}");

    exchange(&mut n1, &mut n2).await;
    exchange(&mut n2, &mut n3).await;
    exchange(&mut n4, &mut n3).await;
    exchange(&mut n3, &mut n1).await;

    // A duplicate id on b closes the connection on a.
    let mut old = join(&a.url, 5, Codec::Json).await;
    until_list(&mut n2, "node 5 listed on b", |ids| ids.contains(&id(5))).await;
    let _newer = join(&b.url, 5, Codec::Bincode).await;
    let events = drain_until_closed(&mut old).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");

    // The core counts the takeover at once; Redis's presence follows once the backplane has
    // withdrawn the old connection's registration.
    within("metrics", async {
        loop {
            let (_, metrics) = a.get("/metrics").await;
            if metrics.contains("peer_signal_cluster_taken_over_total 1")
                && metrics.contains("peer_signal_cluster_presence 2")
            {
                assert!(metrics.contains("peer_signal_cluster_up 1"), "{metrics}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // After the churn, Redis holds what it held with no node: the heartbeats and the counter.
    drop((n1, n2, n3, n4, _newer));
    within("baseline", async {
        loop {
            let (keys, channels) = keys_and_channels(&redis.url()).await;
            if keys == ["peer-signal:gen", "peer-signal:instances"] && channels.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn a_killed_instance_leaves_every_list_and_relays_to_it_fail_at_once() {
    let redis = RedisServer::start();
    let a = Instance::start(&redis.url(), "a").await;
    let b = Instance::start(&redis.url(), "b").await;
    let mut c = Instance::start(&redis.url(), "c").await;
    let mut n1 = join(&a.url, 1, Codec::Json).await;
    let mut n2 = join(&b.url, 2, Codec::Bincode).await;
    let _n3 = join(&c.url, 3, Codec::Json).await;
    until_list(&mut n1, "node 3 listed", |ids| ids.contains(&id(3))).await;
    until_list(&mut n2, "node 3 listed", |ids| ids.contains(&id(3))).await;

    c.child.start_kill().expect("kill -9");
    let killed = Instant::now();
    c.child.wait().await.expect("reaped");
    n1.send_setup(init(id(1), id(3))).await.unwrap();
    assert_eq!(next_error(&mut n1).await, format!("unknown destination {}", id(3)));
    let error_after = killed.elapsed();
    println!("kill -9: a relay to its node answered with an error after {error_after:?}");
    assert!(error_after < Duration::from_secs(1), "{error_after:?}");
    until_list(&mut n1, "node 3 gone on a", |ids| !ids.contains(&id(3))).await;
    until_list(&mut n2, "node 3 gone on b", |ids| !ids.contains(&id(3))).await;
    let gone_after = killed.elapsed();
    println!("kill -9: its node gone from every list after {gone_after:?}");
    assert!(gone_after < Duration::from_secs(15), "{gone_after:?}");
    // The survivors still relay to each other.
    exchange(&mut n1, &mut n2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn a_paused_instance_that_comes_back_does_not_evict_newer_owners() {
    let redis = RedisServer::start();
    let a = Instance::start(&redis.url(), "a").await;
    let b = Instance::start(&redis.url(), "b").await;
    let c = Instance::start(&redis.url(), "c").await;
    let mut n1 = join(&a.url, 1, Codec::Json).await;
    let mut stale = join(&b.url, 2, Codec::Json).await;
    let _n6 = join(&b.url, 6, Codec::Bincode).await;
    until_list(&mut n1, "b's nodes listed", |ids| ids.contains(&id(2)) && ids.contains(&id(6))).await;

    b.signal("-STOP").await;
    let paused = Instant::now();
    until_list(&mut n1, "b's nodes gone", |ids| !ids.contains(&id(6))).await;
    let gone_after = paused.elapsed();
    println!("SIGSTOP: the paused instance's nodes gone from lists after {gone_after:?}");
    assert!(gone_after < Duration::from_secs(15), "{gone_after:?}");
    // Node 2 reconnects to c meanwhile: the newer connection.
    let mut newer = join(&c.url, 2, Codec::Bincode).await;

    b.signal("-CONT").await;
    let resumed = Instant::now();
    // b learns that node 2 moved, and closes its stale connection; it keeps node 6.
    let events = drain_until_closed(&mut stale).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    until_list(&mut n1, "node 6 back", |ids| ids.contains(&id(6)) && ids.contains(&id(2))).await;
    println!("SIGCONT: b's remaining node listed again after {:?}", resumed.elapsed());
    // Relays to node 2 reach the newer connection, and nobody gets an error.
    for _ in 0..3 {
        n1.send_setup(init(id(1), id(2))).await.unwrap();
        assert_eq!(next_setup(&mut newer).await, init(id(1), id(2)));
    }
    exchange(&mut n1, &mut newer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn without_redis_instances_serve_their_own_nodes_and_recover_when_it_returns() {
    let mut redis = RedisServer::start();
    let a = Instance::start(&redis.url(), "a").await;
    let b = Instance::start(&redis.url(), "b").await;
    let mut n1 = join(&a.url, 1, Codec::Json).await;
    let mut n3 = join(&a.url, 3, Codec::Bincode).await;
    let mut n2 = join(&b.url, 2, Codec::Json).await;
    until_list(&mut n1, "node 2 listed", |ids| ids.contains(&id(2))).await;

    redis.kill();
    let killed = Instant::now();
    let not_ready = a.until_ready(false).await;
    println!("Redis killed: /ready 503 after {not_ready:?}");
    // No hang: local service goes on, remote relays fail at once.
    exchange(&mut n1, &mut n3).await;
    let start = Instant::now();
    n1.send_setup(init(id(1), id(2))).await.unwrap();
    assert_eq!(next_error(&mut n1).await, format!("unknown destination {}", id(2)));
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    println!(
        "Redis killed: local relays go on, remote ones fail at once ({:?} after the kill)",
        killed.elapsed()
    );

    let restarted = redis.restart();
    a.until_ready(true).await;
    b.until_ready(true).await;
    // Both ready: every node is registered again. a's server hears so with the first sample:
    // once b's node is listed, the first relay gets through.
    until_list(&mut n1, "node 2 listed again", |ids| ids.contains(&id(2))).await;
    n1.send_setup(init(id(1), id(2))).await.unwrap();
    assert_eq!(next_setup(&mut n2).await, init(id(1), id(2)));
    let resumed = restarted.elapsed();
    println!("Redis restarted: cross-instance relays resumed after {resumed:?}");
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    exchange(&mut n2, &mut n3).await;
}
