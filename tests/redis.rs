//! Instances in this process, each with its driver and memory transport, forming one network
//! through a real Redis that the test starts itself: relays across instances in both codecs,
//! lists with remote nodes, unknown destinations, takeovers, Redis killed and restarted, and
//! Redis's keys and channels back to their baseline after churn.
//!
//! These tests need `redis-server`; `bash .ci/run` installs it when missing and runs them with
//! `cargo test --test redis -- --ignored`.

mod nodes;
mod redis_server;

use std::time::{Duration, Instant};

use futures::StreamExt;
use nodes::{drain_until_closed, id, join, next_error, next_setup, within, Node};
use peer_signal::{
    ClientEvent, ClusterConfig, Codec, Driver, DriverHandle, MemoryConnector, MemoryTransport, NodeID,
    NodeInfo, PeerInfo, PeerMessage, RateLimit, RedisBackplane, RedisConfig, RedisHandle, SignalServer,
};
use redis_server::{keys_and_channels, RedisServer};
use tokio::task::JoinHandle;

struct Instance {
    connector: MemoryConnector,
    handle: DriverHandle,
    redis: RedisHandle,
    server: JoinHandle<SignalServer>,
}

fn redis_config(url: &str, name: &str) -> RedisConfig {
    RedisConfig::default()
        .with_url(url)
        .with_instance(name)
        .with_presence_ttl(Duration::from_secs(2))
        .with_heartbeat(Duration::from_millis(300))
        .with_sample_interval(Duration::from_millis(300))
        .with_command_timeout(Duration::from_millis(500))
}

async fn start(url: &str, name: &str) -> Instance {
    start_with(redis_config(url, name)).await
}

async fn start_with(redis_config: RedisConfig) -> Instance {
    // Unlimited rates: the tests send a hundred set-ups in a row.
    let config = nodes::config().with_frame_rate(RateLimit::UNLIMITED).with_byte_rate(RateLimit::UNLIMITED);
    let (transport, connector) = MemoryTransport::new(&config);
    let server = SignalServer::with_cluster(config, ClusterConfig::default()).unwrap();
    let (backplane, redis) = RedisBackplane::start(redis_config).unwrap();
    let (driver, handle, mut events) = Driver::with_backplane(server, transport, backplane, 4096);
    tokio::spawn(async move { while events.next().await.is_some() {} });
    let server = tokio::spawn(driver.run(futures::stream::pending()));
    within("redis up", redis.wait_up(true)).await;
    Instance { connector, handle, redis, server }
}

impl Instance {
    async fn stop(self) {
        self.handle.stop();
        within("driver stops", self.server).await.unwrap();
        within("backplane stops", self.redis.shutdown()).await;
    }
}

/// Waits until `instance` has `n` nodes registered in Redis: only then is its claim ranked
/// before any later one.
async fn until_registered(instance: &Instance, n: usize) {
    within("registered", async {
        while instance.redis.stats().registered != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// Asks for the list until it holds every id of `wanted`; returns how long that took.
async fn until_listed(node: &mut Node, wanted: &[NodeID]) -> Duration {
    let start = Instant::now();
    within("listed", async {
        loop {
            let listed: Vec<NodeID> = node.list().await.unwrap().iter().map(|n| n.id()).collect();
            if wanted.iter().all(|id| listed.contains(id)) {
                return start.elapsed();
            }
            // The pool refreshes on its own schedule; ask again soon.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

fn init(from: u32, to: u32) -> PeerInfo {
    PeerInfo { id_init: id(from), id_follow: id(to), message: PeerMessage::Init }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn set_ups_cross_instances_in_both_codecs_and_lists_include_remote_nodes() {
    let redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    let mut a = join(&a_side.connector, 1, Codec::Json).await;
    let mut b = join(&b_side.connector, 2, Codec::Bincode).await;
    let waited = until_listed(&mut a, &[id(1), id(2)]).await;
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    until_listed(&mut b, &[id(1), id(2)]).await;

    for (from, to, message) in [
        (1, 2, PeerMessage::Init),
        (2, 1, PeerMessage::Offer("v=0 offer".into())),
        (1, 2, PeerMessage::Answer("v=0 answer".into())),
        (2, 1, PeerMessage::IceCandidate("candidate:1 1 udp 1 192.0.2.1 9 typ host".into())),
    ] {
        let setup = PeerInfo { id_init: id(1), id_follow: id(2), message };
        let (sender, receiver) = if from == 1 { (&mut a, &mut b) } else { (&mut b, &mut a) };
        sender.send_setup(setup.clone()).await.unwrap();
        assert_eq!(next_setup(receiver).await, setup, "{from} → {to}");
    }
    // Round trips across the bus, measured.
    let start = Instant::now();
    for _ in 0..100 {
        let setup = PeerInfo { id_init: id(1), id_follow: id(2), message: PeerMessage::Init };
        a.send_setup(setup.clone()).await.unwrap();
        assert_eq!(next_setup(&mut b).await, setup);
    }
    println!("one relay across instances through Redis: {:?}", start.elapsed() / 100);
    // Each was received before it was delivered; the publisher counts it once Redis answers.
    assert!(b_side.redis.stats().received >= 102);
    within("published counted", async {
        while a_side.redis.stats().published < 102 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn a_relay_to_a_node_nowhere_is_answered_at_once() {
    let redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    let mut a = join(&a_side.connector, 1, Codec::Json).await;
    let b = join(&b_side.connector, 2, Codec::Json).await;
    drop(b);
    let start = Instant::now();
    for target in [9, 2] {
        a.send_setup(PeerInfo { id_init: id(1), id_follow: id(target), message: PeerMessage::Init })
            .await
            .unwrap();
        assert_eq!(next_error(&mut a).await, format!("unknown destination {}", id(target)));
    }
    let took = start.elapsed();
    println!("two unknown destinations answered in {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn a_newer_connection_on_another_instance_closes_the_older_one() {
    let redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    let c_side = start(&redis.url(), "c").await;
    let mut old = join(&a_side.connector, 5, Codec::Json).await;
    until_registered(&a_side, 1).await;
    let _newer = join(&b_side.connector, 5, Codec::Bincode).await;
    let events = drain_until_closed(&mut old).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    // Relays to the id reach the newer connection.
    let mut c = join(&c_side.connector, 3, Codec::Json).await;
    let mut newer = _newer;
    let setup = PeerInfo { id_init: id(3), id_follow: id(5), message: PeerMessage::Init };
    c.send_setup(setup.clone()).await.unwrap();
    assert_eq!(next_setup(&mut newer).await, setup);
    for side in [a_side, b_side, c_side] {
        side.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn ranks_do_not_go_backwards_when_redis_comes_back_empty() {
    let mut redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    // Several claims before the restart: with a plain counter, the id that moves later would
    // hold rank 4 here and get rank 1 on the fresh Redis.
    let mut others = Vec::new();
    for i in [10, 11, 12] {
        others.push(join(&a_side.connector, i, Codec::Json).await);
    }
    let mut old = join(&a_side.connector, 5, Codec::Json).await;
    until_registered(&a_side, 4).await;

    let _ = redis.restart();
    within("a is back", a_side.redis.wait_up(true)).await;
    within("b is back", b_side.redis.wait_up(true)).await;
    // a registers what it holds again, keeping its ranks; then the id moves to b.
    until_registered(&a_side, 4).await;
    let _newer = join(&b_side.connector, 5, Codec::Json).await;
    let events = drain_until_closed(&mut old).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn without_redis_local_service_goes_on_and_relays_resume_after_it_returns() {
    let mut redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    let mut a = join(&a_side.connector, 1, Codec::Json).await;
    let mut a2 = join(&a_side.connector, 3, Codec::Bincode).await;
    let mut b = join(&b_side.connector, 2, Codec::Json).await;
    until_listed(&mut a, &[id(2)]).await;

    redis.kill();
    let killed = Instant::now();
    within("a notices", a_side.redis.wait_up(false)).await;
    within("b notices", b_side.redis.wait_up(false)).await;
    println!("Redis killed: both instances not ready after {:?}", killed.elapsed());
    // Remote relays: an error at once; local ones go on.
    let start = Instant::now();
    a.send_setup(PeerInfo { id_init: id(1), id_follow: id(2), message: PeerMessage::Init }).await.unwrap();
    assert_eq!(next_error(&mut a).await, format!("unknown destination {}", id(2)));
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    let local = PeerInfo { id_init: id(1), id_follow: id(3), message: PeerMessage::Offer("v=0".into()) };
    a.send_setup(local.clone()).await.unwrap();
    assert_eq!(next_setup(&mut a2).await, local);
    let listed: Vec<NodeID> = a.list().await.unwrap().iter().map(|n| n.id()).collect();
    assert!(!listed.contains(&id(2)), "a remote node listed while Redis is down");

    let restarted = redis.restart();
    within("a is back", a_side.redis.wait_up(true)).await;
    within("b is back", b_side.redis.wait_up(true)).await;
    // The backplanes are ready; their servers hear so a moment later, with the first sample:
    // once b's node is listed, a's server relays to other instances again.
    until_listed(&mut a, &[id(2)]).await;
    a.send_setup(init(1, 2)).await.unwrap();
    assert_eq!(next_setup(&mut b).await, init(1, 2));
    let resumed = restarted.elapsed();
    println!("Redis restarted: cross-instance relays resumed after {resumed:?}");
    assert!(resumed < Duration::from_secs(5), "{resumed:?}");
    until_listed(&mut b, &[id(1), id(3)]).await;
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn after_churn_redis_holds_what_it_held_before() {
    let redis = RedisServer::start();
    let a_side = start(&redis.url(), "a").await;
    let b_side = start(&redis.url(), "b").await;
    // The baseline: the instances' heartbeats and the claim counter, no node.
    let first = join(&a_side.connector, 200, Codec::Json).await;
    until_registered(&a_side, 1).await;
    drop(first);
    let baseline = within("baseline", async {
        loop {
            let (keys, channels) = keys_and_channels(&redis.url()).await;
            if channels.is_empty() && keys.len() == 2 {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(baseline, ["peer-signal:gen", "peer-signal:instances"]);

    for round in 0..5u32 {
        let mut nodes = Vec::new();
        for i in 0..20 {
            let side = if i % 2 == 0 { &a_side } else { &b_side };
            nodes.push(join(&side.connector, round * 100 + i, Codec::Json).await);
        }
        until_registered(&a_side, 10).await;
        until_registered(&b_side, 10).await;
        // Some take their id over on the other instance.
        for i in 0..5 {
            let side = if i % 2 == 0 { &b_side } else { &a_side };
            nodes.push(join(&side.connector, round * 100 + i, Codec::Bincode).await);
        }
        let (keys, channels) = keys_and_channels(&redis.url()).await;
        assert!(keys.len() >= 3 && !channels.is_empty(), "{keys:?}");
        drop(nodes);
    }
    let settled = within("back to baseline", async {
        loop {
            let now = keys_and_channels(&redis.url()).await;
            if now == (baseline.clone(), Vec::new()) {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(settled.0, baseline);
    a_side.stop().await;
    b_side.stop().await;
    let (keys, _) = keys_and_channels(&redis.url()).await;
    assert_eq!(keys, ["peer-signal:gen"], "stopped instances leave nothing but the counter");
}

/// Redis's own counters: calls per command, and bytes in and out.
#[derive(Debug, Default, Clone)]
struct RedisCounters {
    calls: std::collections::BTreeMap<String, u64>,
    bytes_in: u64,
    bytes_out: u64,
}

impl RedisCounters {
    async fn read(url: &str) -> Self {
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let commands: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
        let stats: String = redis::cmd("INFO").arg("stats").query_async(&mut conn).await.unwrap();
        let mut counters = Self::default();
        for line in commands.lines() {
            // cmdstat_publish:calls=12,usec=…
            let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls=")).and_then(|n| n.parse().ok());
            counters.calls.insert(name.to_string(), calls.unwrap_or(0));
        }
        for line in stats.lines() {
            if let Some(n) = line.strip_prefix("total_net_input_bytes:") {
                counters.bytes_in = n.trim().parse().unwrap_or(0);
            }
            if let Some(n) = line.strip_prefix("total_net_output_bytes:") {
                counters.bytes_out = n.trim().parse().unwrap_or(0);
            }
        }
        counters
    }

    /// What happened between `self` and `later`, per action of `n`: commands (by name) and
    /// bytes. The reads of the counters themselves are left out.
    fn per(&self, later: &Self, n: u64) -> (Vec<(String, f64)>, f64, f64) {
        let mut commands: Vec<(String, f64)> = later
            .calls
            .iter()
            .filter(|(name, _)| *name != "info")
            .filter_map(|(name, &calls)| {
                let before = self.calls.get(name).copied().unwrap_or(0);
                (calls > before).then(|| (name.clone(), (calls - before) as f64 / n as f64))
            })
            .collect();
        commands.sort_by(|a, b| a.0.cmp(&b.0));
        let bytes_in = later.bytes_in.saturating_sub(self.bytes_in) as f64 / n as f64;
        let bytes_out = later.bytes_out.saturating_sub(self.bytes_out) as f64 / n as f64;
        (commands, bytes_in, bytes_out)
    }
}

fn total(commands: &[(String, f64)]) -> f64 {
    commands.iter().map(|(_, n)| n).sum()
}

/// The figures of the capacity model in BENCHMARKS.md: what Redis does per join, relay and
/// leave, from Redis's own counters (`INFO commandstats`, `INFO stats`). Heartbeats and samples
/// are slowed to one a minute here, so that they do not fall into the measured windows; their
/// cost is one script call each, per instance and interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn redis_work_per_join_relay_and_leave_is_a_few_commands() {
    let redis = RedisServer::start();
    let slow = |name: &str| {
        redis_config(&redis.url(), name)
            .with_presence_ttl(Duration::from_secs(180))
            .with_heartbeat(Duration::from_secs(60))
            .with_sample_interval(Duration::from_secs(60))
    };
    let start_slow = |name: &'static str| {
        let config =
            nodes::config().with_frame_rate(RateLimit::UNLIMITED).with_byte_rate(RateLimit::UNLIMITED);
        let (transport, connector) = MemoryTransport::new(&config);
        let server = SignalServer::with_cluster(config, ClusterConfig::default()).unwrap();
        let (backplane, redis) = RedisBackplane::start(slow(name)).unwrap();
        let (driver, handle, mut events) = Driver::with_backplane(server, transport, backplane, 4096);
        tokio::spawn(async move { while events.next().await.is_some() {} });
        let server = tokio::spawn(driver.run(futures::stream::pending()));
        Instance { connector, handle, redis, server }
    };
    let (a_side, b_side) = (start_slow("a"), start_slow("b"));
    within("a up", a_side.redis.wait_up(true)).await;
    within("b up", b_side.redis.wait_up(true)).await;
    let url = redis.url();
    const N: u32 = 200;

    let before = RedisCounters::read(&url).await;
    let mut nodes = Vec::new();
    for i in 0..N {
        nodes.push(join(&a_side.connector, 1000 + i, Codec::Json).await);
    }
    until_registered(&a_side, N as usize).await;
    let joined = RedisCounters::read(&url).await;
    let (join_commands, join_in, join_out) = before.per(&joined, u64::from(N));

    let mut far = join(&b_side.connector, 999, Codec::Json).await;
    until_registered(&b_side, 1).await;
    let before = RedisCounters::read(&url).await;
    let offer = PeerMessage::Offer("v=0\r\n".repeat(86));
    for _ in 0..N {
        let setup = PeerInfo { id_init: id(1000), id_follow: id(999), message: offer.clone() };
        nodes[0].send_setup(setup).await.unwrap();
    }
    for _ in 0..N {
        next_setup(&mut far).await;
    }
    let relayed = RedisCounters::read(&url).await;
    let (relay_commands, relay_in, relay_out) = before.per(&relayed, u64::from(N));

    let before = RedisCounters::read(&url).await;
    drop(nodes);
    within("left", async {
        while a_side.redis.stats().registered > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let left = RedisCounters::read(&url).await;
    let (leave_commands, leave_in, leave_out) = before.per(&left, u64::from(N));

    for (what, commands, bytes_in, bytes_out) in [
        ("join", &join_commands, join_in, join_out),
        ("relay (430-byte offer)", &relay_commands, relay_in, relay_out),
        ("leave", &leave_commands, leave_in, leave_out),
    ] {
        println!(
            "per {what}: {:.2} commands {commands:?}, {bytes_in:.0} bytes in, {bytes_out:.0} bytes out",
            total(commands)
        );
    }
    // A join: three round trips, the subscription, the claim script (whose TIME, INCR, SET,
    // HSET and PEXPIRE Redis counts as commands of their own) and the takeover's PUBLISH; a
    // relay: one PUBLISH; a leave: the unsubscription and the presence entry.
    let calls = |commands: &[(String, f64)], name: &str| {
        commands.iter().find(|(n, _)| n == name).map_or(0.0, |(_, calls)| *calls)
    };
    assert!(
        calls(&join_commands, "evalsha") <= 1.1 && calls(&join_commands, "subscribe") <= 1.1,
        "{join_commands:?}"
    );
    assert!(total(&join_commands) <= 8.5, "{join_commands:?}");
    assert!(total(&relay_commands) <= 1.1, "{relay_commands:?}");
    assert!(total(&leave_commands) <= 2.5, "{leave_commands:?}");
    a_side.stop().await;
    b_side.stop().await;
}

/// Publishes `payload` on the channel of node `to`, as anyone who can reach Redis can.
async fn publish_by_hand(url: &str, to: NodeID, payload: &[u8]) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let channel = format!("peer-signal:n:{to}");
    let _: i64 = redis::cmd("PUBLISH").arg(channel).arg(payload).query_async(&mut conn).await.unwrap();
}

/// A takeover of the highest rank, from an instance that does not exist.
fn forged_takeover() -> Vec<u8> {
    let mut takeover = vec![1, 2];
    takeover.extend_from_slice(format!("{} evil", u64::MAX - 1).as_bytes());
    takeover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn without_a_cluster_key_anyone_on_redis_closes_a_node_and_with_one_nobody_does() {
    let redis = RedisServer::start();
    let url = redis.url();
    // Without a key: a takeover published by hand closes the node.
    let open = start(&url, "open").await;
    let mut victim = join(&open.connector, 5, Codec::Json).await;
    until_registered(&open, 1).await;
    publish_by_hand(&url, id(5), &forged_takeover()).await;
    let events = drain_until_closed(&mut victim).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    open.stop().await;

    // With one: the same message, and one tagged under another key, are dropped and counted.
    let key = peer_signal::ClusterKey::new([7u8; 32]);
    let a_side = start_with(redis_config(&url, "a").with_cluster_key(key.clone())).await;
    let b_side = start_with(redis_config(&url, "b").with_cluster_key(key)).await;
    let mut x = join(&a_side.connector, 5, Codec::Json).await;
    let mut y = join(&b_side.connector, 2, Codec::Json).await;
    until_registered(&a_side, 1).await;
    until_registered(&b_side, 1).await;
    let rejected = a_side.redis.stats().rejected;
    publish_by_hand(&url, id(5), &forged_takeover()).await;
    let mut wrong_key = forged_takeover();
    wrong_key.extend_from_slice(&[0xab; 32]);
    publish_by_hand(&url, id(5), &wrong_key).await;
    let mut frame = vec![1, 1, 0];
    frame.extend_from_slice(br#"{"PeerSetup":{"id_init":"00","id_follow":"00","message":"Init"}}"#);
    publish_by_hand(&url, id(5), &frame).await;
    within("rejected", async {
        while a_side.redis.stats().rejected < rejected + 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    // The keyed instances still speak with each other: a relay, both ways.
    until_listed(&mut y, &[id(5)]).await;
    y.send_setup(init(2, 5)).await.unwrap();
    assert_eq!(next_setup(&mut x).await, init(2, 5), "x is still connected, and hears relays");
    let answer = PeerInfo { id_init: id(2), id_follow: id(5), message: PeerMessage::Offer("v=0".into()) };
    x.send_setup(answer.clone()).await.unwrap();
    assert_eq!(next_setup(&mut y).await, answer);

    // A presence entry written by hand is not listed anywhere.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let invented = NodeInfo::new("invented", "evil", key_bytes(77));
    let json = serde_json::to_string(&invented).unwrap();
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let _: () = redis::cmd("HSET")
        .arg("peer-signal:i:evil")
        .arg(invented.id().to_string())
        .arg(&json)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg("peer-signal:instances")
        .arg(now_ms + 60_000)
        .arg("evil")
        .query_async(&mut conn)
        .await
        .unwrap();
    let rejected = b_side.redis.stats().rejected;
    within("the invented entry sampled and refused", async {
        while b_side.redis.stats().rejected == rejected {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let listed: Vec<String> = y.list().await.unwrap().into_iter().map(|node| node.name).collect();
    assert!(!listed.contains(&"invented".to_string()), "{listed:?}");
    a_side.stop().await;
    b_side.stop().await;
}

fn key_bytes(i: u32) -> [u8; 32] {
    nodes::key(i).verifying_key().to_bytes()
}

/// The Redis user that README.md documents for instances: its own keys and channels, and only the
/// commands the backplane and its scripts use.
const ACL_USER: &[&str] = &[
    "ACL",
    "SETUSER",
    "peer-signal",
    "on",
    ">instance-password",
    "resetkeys",
    "~peer-signal:*",
    "resetchannels",
    "&peer-signal:*",
    "-@all",
    "+@connection",
    "+subscribe",
    "+unsubscribe",
    "+publish",
    "+pubsub|numsub",
    "+evalsha",
    "+eval",
    "+script|load",
    "+hset",
    "+hdel",
    "+del",
    "+pexpire",
    "+zadd",
    "+zremrangebyscore",
    "+zrangebyscore",
    "+hlen",
    "+hrandfield",
    "+incr",
    "+set",
    "+time",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn instances_work_as_the_restricted_redis_user_that_the_readme_documents() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let mut acl = redis::cmd(ACL_USER[0]);
    for arg in &ACL_USER[1..] {
        acl.arg(*arg);
    }
    let _: () = acl.query_async(&mut admin).await.unwrap();
    let url = format!("redis://peer-signal:instance-password@127.0.0.1:{}", redis.port);

    let a_side = start(&url, "a").await;
    let b_side = start(&url, "b").await;
    let mut x = join(&a_side.connector, 5, Codec::Json).await;
    let mut y = join(&b_side.connector, 2, Codec::Json).await;
    until_registered(&a_side, 1).await;
    until_listed(&mut y, &[id(5)]).await;
    y.send_setup(init(2, 5)).await.unwrap();
    assert_eq!(next_setup(&mut x).await, init(2, 5));
    // A takeover, through the restricted user too.
    let _newer = join(&b_side.connector, 5, Codec::Json).await;
    let events = drain_until_closed(&mut x).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    assert_eq!((a_side.redis.stats().downs, b_side.redis.stats().downs), (0, 0), "no command was refused");

    // The user can do nothing else: no other keys, no administration.
    let restricted = redis::Client::open(url.as_str()).unwrap();
    let mut conn = restricted.get_multiplexed_async_connection().await.unwrap();
    let other: Result<(), _> = redis::cmd("SET").arg("elsewhere").arg("x").query_async(&mut conn).await;
    assert!(other.is_err(), "a key outside the prefix");
    let flush: Result<(), _> = redis::cmd("FLUSHALL").query_async(&mut conn).await;
    assert!(flush.is_err(), "administration");
    // With the default user off, whoever connects without the password reads nothing: a
    // SUBSCRIBE to a node's channel (every set-up message for it) is refused.
    let _: () =
        redis::cmd("ACL").arg("SETUSER").arg("default").arg("off").query_async(&mut admin).await.unwrap();
    let anonymous = redis::Client::open(redis.url()).unwrap();
    let mut stranger = anonymous.get_multiplexed_async_connection().await.unwrap();
    let read: Result<(), _> =
        redis::cmd("SUBSCRIBE").arg(format!("peer-signal:n:{}", id(5))).query_async(&mut stranger).await;
    let refused = read.unwrap_err().to_string();
    assert!(refused.contains("NOAUTH") || refused.contains("NOPERM"), "{refused}");
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn instances_speak_to_redis_over_tls() {
    let (redis, certificate) = RedisServer::start_tls();
    let url = format!("rediss://localhost:{}", redis.port);
    let tls = |name: &str| redis_config(&url, name).with_tls_roots(certificate.clone());
    let a_side = start_with(tls("a")).await;
    let b_side = start_with(tls("b")).await;
    let mut x = join(&a_side.connector, 5, Codec::Json).await;
    let mut y = join(&b_side.connector, 2, Codec::Bincode).await;
    until_registered(&a_side, 1).await;
    until_listed(&mut y, &[id(5)]).await;
    y.send_setup(init(2, 5)).await.unwrap();
    assert_eq!(next_setup(&mut x).await, init(2, 5));
    a_side.stop().await;
    b_side.stop().await;

    // A Redis whose certificate is not trusted is never up.
    let untrusted = redis_config(&url, "c").with_tls_roots(
        rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap().cert.pem().into_bytes(),
    );
    let (_backplane, handle) = RedisBackplane::start(untrusted).unwrap();
    let up = tokio::time::timeout(Duration::from_secs(2), handle.wait_up(true)).await;
    assert!(up.is_err(), "up with an untrusted certificate");
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn nodes_sharded_over_three_redis_servers_and_an_outage_takes_only_its_share() {
    let mut servers = [RedisServer::start(), RedisServer::start(), RedisServer::start()];
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let sharded = |name: &str| redis_config(&urls[0], name).with_shard_urls(urls[1..].to_vec());
    let a_side = start_with(sharded("a")).await;
    let b_side = start_with(sharded("b")).await;
    assert_eq!((a_side.redis.shards(), a_side.redis.shards_up()), (3, 3));
    let config = sharded("any");
    let mut receivers = Vec::new();
    for i in 100..130u32 {
        receivers.push((i, config.shard_of(&id(i)), join(&b_side.connector, i, Codec::Json).await));
    }
    let per_shard: Vec<usize> =
        (0..3).map(|s| receivers.iter().filter(|(_, shard, _)| *shard == s).count()).collect();
    assert!(per_shard.iter().all(|&n| n > 0), "every shard holds some: {per_shard:?}");
    until_registered(&b_side, receivers.len()).await;
    // Each Redis holds the presence of its share only.
    for (s, url) in urls.iter().enumerate() {
        let (keys, channels) = keys_and_channels(url).await;
        assert!(keys.contains(&"peer-signal:i:b".to_string()), "{keys:?}");
        assert_eq!(channels.len(), per_shard[s], "shard {s}: {channels:?}");
    }
    let mut sender = join(&a_side.connector, 1, Codec::Json).await;
    for (i, _, receiver) in &mut receivers {
        sender.send_setup(init(1, *i)).await.unwrap();
        assert_eq!(next_setup(receiver).await, init(1, *i));
    }

    // One Redis goes: the nodes of its share are unreachable from elsewhere, the others are not.
    let down = receivers.iter().find(|(_, shard, _)| *shard != 0).map_or(1, |(_, shard, _)| *shard);
    servers[down].kill();
    within("a notices", a_side.redis.wait_up(false)).await;
    assert_eq!(a_side.redis.shards_up(), 2);
    for (i, shard, receiver) in &mut receivers {
        sender.send_setup(init(1, *i)).await.unwrap();
        if *shard == down {
            assert_eq!(next_error(&mut sender).await, format!("unknown destination {}", id(*i)));
        } else {
            assert_eq!(next_setup(receiver).await, init(1, *i));
        }
    }
    // It comes back, empty: its share registers again and is reachable.
    let _ = servers[down].restart();
    within("a is back", a_side.redis.wait_up(true)).await;
    within("b is back", b_side.redis.wait_up(true)).await;
    for (i, shard, receiver) in &mut receivers {
        if *shard == down {
            within("reachable again", async {
                loop {
                    sender.send_setup(init(1, *i)).await.unwrap();
                    // Either the relay arrives, or the sender hears it did not and tries again.
                    tokio::select! {
                        event = receiver.next_event() => {
                            assert_eq!(event.unwrap(), ClientEvent::PeerSetup(init(1, *i)));
                            return;
                        }
                        event = sender.next_event() => match event.unwrap() {
                            ClientEvent::Error(_) => {}
                            other => panic!("{other:?}"),
                        },
                    }
                }
            })
            .await;
        }
    }
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn the_application_of_one_instance_reaches_nodes_on_another() {
    let redis = RedisServer::start();
    let key = peer_signal::ClusterKey::new([9u8; 32]);
    let a_side = start_with(redis_config(&redis.url(), "a").with_cluster_key(key.clone())).await;
    let b_side = start_with(redis_config(&redis.url(), "b").with_cluster_key(key)).await;
    let mut y = join(&b_side.connector, 2, Codec::Json).await;
    until_registered(&b_side, 1).await;
    assert_eq!(within("locate", a_side.handle.locate(id(2))).await.unwrap(), peer_signal::Located::Elsewhere);
    let message = peer_signal::WSSignalMessageToNode::Error("a word from instance a".into());
    within("send", a_side.handle.send(id(2), message)).await.unwrap();
    assert_eq!(next_error(&mut y).await, "a word from instance a");
    within("disconnect", a_side.handle.disconnect(id(2), "maintenance")).await.unwrap();
    let events = drain_until_closed(&mut y).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("maintenance".into())), "{events:?}");
    let unknown = within("unknown", a_side.handle.disconnect(id(9), "x")).await.unwrap_err();
    assert_eq!(unknown, peer_signal::ControlError::UnknownNode(id(9)));
    a_side.stop().await;
    b_side.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs redis-server; bash .ci/run installs it and runs these"]
async fn a_saturated_frame_path_drops_frames_but_never_a_takeover_or_the_bus_state() {
    let redis = RedisServer::start();
    // Instance a's queue of frames from the bus holds one: a flood overflows it at once.
    let a_side = start_with(redis_config(&redis.url(), "a").with_max_events(1)).await;
    let b_side = start(&redis.url(), "b").await;
    let mut x = join(&a_side.connector, 5, Codec::Json).await;
    let mut sink = join(&a_side.connector, 6, Codec::Json).await;
    let flooder = join(&b_side.connector, 7, Codec::Json).await;
    until_registered(&a_side, 2).await;
    until_registered(&b_side, 1).await;
    // b's node floods a's node with set-ups, while x's id moves to b.
    let flood = tokio::spawn(async move {
        let mut flooder = flooder;
        for _ in 0..2000 {
            let setup =
                PeerInfo { id_init: id(7), id_follow: id(6), message: PeerMessage::Offer("v=0".into()) };
            if flooder.send_setup(setup).await.is_err() {
                break;
            }
        }
        flooder
    });
    let _newer = join(&b_side.connector, 5, Codec::Json).await;
    let events = drain_until_closed(&mut x).await;
    assert_eq!(events.last(), Some(&ClientEvent::Error("New Connection with same ID".into())), "{events:?}");
    let _flooder = within("the flood", flood).await.unwrap();
    within("frames dropped", async {
        while a_side.redis.stats().dropped_in == 0 {
            let _ = sink.next_event().await;
        }
    })
    .await;
    // The bus's state came through too: a is ready, and its nodes still relay to b's.
    assert!(a_side.redis.is_up());
    let mut newer = _newer;
    sink.send_setup(init(6, 5)).await.unwrap();
    within("relayed", async {
        loop {
            if let ClientEvent::PeerSetup(setup) = newer.next_event().await.unwrap() {
                if setup == init(6, 5) {
                    return;
                }
            }
        }
    })
    .await;
    a_side.stop().await;
    b_side.stop().await;
}
