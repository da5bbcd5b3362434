//! A WebSocket load generator for any server that speaks fledger's signalling protocol v3.
//!
//! ```sh
//! cargo run --release --example ws_server -- --metrics off --unlimited-rates &
//! cargo run --release --example loadgen -- relay --pairs 50 --window 8 --secs 10 --server-pid $!
//! cargo run --release --example loadgen -- join --conns 10000 --server-pid $!
//! cargo run --release --example loadgen -- idle --conns 10000 --secs 5 --server-pid $!
//! cargo run --release --example loadgen -- churn --workers 64 --secs 10 --server-pid $!
//! ```
//!
//! `relay` sends far more than a node does; without `--unlimited-rates` the server's per-connection
//! rate limits (50 frames/s by default) close its connections.
//!
//! Scenarios:
//! - `join`: `--conns` nodes connect and announce, `--window` at a time; then all disconnect.
//! - `relay`: `--pairs` pairs of nodes bounce `PeerSetup` offers and answers, `--window` in flight
//!   per pair, for `--secs`; latency is measured from send to receipt.
//! - `idle`: `--conns` nodes join and stay idle for `--secs`: the server's memory per connection.
//! - `churn`: `--workers` loops of connect, announce, relay one message, disconnect, for `--secs`.
//!
//! A progress line goes to stderr every second; one JSON summary line goes to stdout at the end,
//! with the server's CPU seconds and RSS read from `/proc/<pid>` when `--server-pid` is given.
//! Every loop is bounded by `--secs` or a count. Connections come from 127.0.0.1..127.0.0.N
//! (`--source-ips`), so that more than one address's worth of ephemeral ports is available.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use futures::{SinkExt, StreamExt};
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{Codec, NodeID, NodeInfo, PeerInfo, PeerMessage, SignalClient, BINCODE_SUBPROTOCOL};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The server's address (host:port); connections use ws://<server>/.
    #[arg(long, default_value = "127.0.0.1:8765")]
    server: SocketAddr,
    /// The server's pid, to report its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Speak bincode (binary frames) instead of JSON.
    #[arg(long)]
    bincode: bool,
    /// Spread connections over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 4)]
    source_ips: u8,
    /// A label copied into the summary.
    #[arg(long, default_value = "")]
    label: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// Nodes connect and announce as fast as the window allows.
    Join {
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Pairs bounce set-up messages.
    Relay {
        #[arg(long, default_value_t = 50)]
        pairs: u32,
        /// Messages in flight per pair.
        #[arg(long, default_value_t = 8)]
        window: u32,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Bytes of SDP per message.
        #[arg(long, default_value_t = 400)]
        size: usize,
        /// Messages per second for all pairs together (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Nodes join and stay idle.
    Idle {
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        #[arg(long, default_value_t = 256)]
        window: usize,
        /// Before idling, each node sends one list request of this many bytes (padded with JSON
        /// whitespace; 65536 is the server's default frame limit) and reads the reply: what a
        /// connection that once sent a maximal frame keeps costing. 0: no such frame.
        #[arg(long, default_value_t = 0)]
        big_frame: usize,
    },
    /// Connect, announce, relay, disconnect, in loops.
    Churn {
        #[arg(long, default_value_t = 64)]
        workers: u32,
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A node: its socket and the sans-IO client that speaks the protocol.
struct Node {
    ws: Ws,
    client: SignalClient,
}

impl Node {
    /// Connects from `source` and completes the handshake (challenge, announce, config, list).
    async fn join(args: &Args, source: IpAddr, index: u64) -> Result<Self, String> {
        let codec = if args.bincode { Codec::Bincode } else { Codec::Json };
        let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
        // Real clients close from many hosts; this one closes tens of thousands of sockets from a
        // few addresses, and their TIME_WAIT states would exhaust its ports and slow every later
        // connect (and the next run). A zero linger closes with a reset and leaves none; tokio
        // deprecates SO_LINGER because a non-zero linger blocks on drop, which zero does not.
        #[allow(deprecated)]
        socket.set_linger(Some(Duration::ZERO)).map_err(|e| e.to_string())?;
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
        let stream = socket.connect(args.server).await.map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut request =
            format!("ws://{}/", args.server).into_client_request().map_err(|e| e.to_string())?;
        if args.bincode {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", BINCODE_SUBPROTOCOL.parse().map_err(|_| "header")?);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream))
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        let key = key(index);
        let info = NodeInfo::new(format!("load-{index}"), "loadgen", key.verifying_key().to_bytes());
        let mut node = Self { ws, client: SignalClient::new(key, info, codec) };
        // Challenge → announce → SystemConfig → list.
        while !node.client.is_connected() {
            node.read_one().await?;
        }
        Ok(node)
    }

    fn id(&self) -> NodeID {
        self.client.id()
    }

    /// Reads one frame, feeds it to the client, and sends what the client wants to send.
    async fn read_one(&mut self) -> Result<(), String> {
        let frame = loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => break bytes::Bytes::from(text),
                Some(Ok(Message::Binary(data))) => break data,
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed".into()),
            }
        };
        self.client.handle_frame(&frame).map_err(|e| e.to_string())?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), String> {
        while let Some(frame) = self.client.poll_transmit() {
            let message = if self.client.codec().is_binary() {
                Message::Binary(frame)
            } else {
                Message::Text(Utf8Bytes::try_from(frame).map_err(|e| e.to_string())?)
            };
            self.ws.feed(message).await.map_err(|e| e.to_string())?;
        }
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    /// Sends `text` as one frame and reads the reply it earns.
    async fn send_raw(&mut self, text: &str) -> Result<(), String> {
        let message = if self.client.codec().is_binary() {
            Message::Binary(bytes::Bytes::copy_from_slice(text.as_bytes()))
        } else {
            Message::Text(text.into())
        };
        self.ws.send(message).await.map_err(|e| e.to_string())?;
        self.read_one().await
    }

    /// Sends a set-up message.
    async fn send_setup(&mut self, setup: PeerInfo) -> Result<(), String> {
        self.client.send_setup(setup).map_err(|e| e.to_string())?;
        self.flush().await
    }

    /// The next `PeerSetup` that reaches this node.
    async fn next_setup(&mut self) -> Result<PeerInfo, String> {
        loop {
            while let Some(event) = self.client.poll_event() {
                if let peer_signal::ClientEvent::PeerSetup(setup) = event {
                    return Ok(setup);
                }
            }
            self.read_one().await?;
        }
    }
}

fn key(index: u64) -> SigningKey {
    let mut seed = [0x4c; 32];
    seed[..8].copy_from_slice(&index.to_le_bytes());
    SigningKey::from_bytes(&seed)
}

/// What the server process used, from /proc.
#[derive(Clone, Copy, Default)]
struct Proc {
    cpu_s: f64,
    /// Of `cpu_s`, the time in the kernel (sockets, wake-ups).
    sys_s: f64,
    rss_kb: u64,
}

fn read_proc(pid: Option<u32>) -> Option<Proc> {
    let pid = pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let (user, sys) = (fields.get(11)?.parse::<f64>().ok()?, fields.get(12)?.parse::<f64>().ok()?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Proc { cpu_s: (user + sys) / 100.0, sys_s: sys / 100.0, rss_kb })
}

/// Counters shared by the tasks of a run, and the latency samples.
#[derive(Default)]
struct Stats {
    ops: AtomicU64,
    errors: AtomicU64,
    latencies_us: Mutex<Vec<u32>>,
}

const MAX_SAMPLES: usize = 5_000_000;

impl Stats {
    fn record(&self, latency: Duration) {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut samples = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() < MAX_SAMPLES {
            samples.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }

    fn error(&self, what: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("error: {what}");
        }
    }

    fn percentiles(&self) -> serde_json::Value {
        let mut samples = self.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if samples.is_empty() {
            return serde_json::Value::Null;
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "p999": at(0.999), "max": at(1.0), "samples": samples.len()})
    }
}

fn source(args: &Args, index: u64) -> IpAddr {
    let n = u64::from(args.source_ips.max(1));
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (index % n) as u8))
}

/// Prints a progress line every second until `done` is set.
fn progress(stats: Arc<Stats>, done: Arc<AtomicBool>, what: &'static str) {
    tokio::spawn(async move {
        let start = Instant::now();
        let mut last = 0;
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let ops = stats.ops.load(Ordering::Relaxed);
            eprintln!(
                "{:>5.1}s  {what}: {ops} ({}/s)  errors: {}",
                start.elapsed().as_secs_f64(),
                ops - last,
                stats.errors.load(Ordering::Relaxed)
            );
            last = ops;
        }
    });
}

/// Joins `count` nodes, `window` handshakes at a time; returns them and the time it took.
async fn join_many(args: &Arc<Args>, count: u32, window: usize, stats: &Arc<Stats>) -> (Vec<Node>, Duration) {
    let slots = Arc::new(Semaphore::new(window.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count as usize);
    for index in 0..u64::from(count) {
        let (args, stats, slots) = (args.clone(), stats.clone(), slots.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            let began = Instant::now();
            match Node::join(&args, source(&args, index), index).await {
                Ok(node) => {
                    stats.record(began.elapsed());
                    Some(node)
                }
                Err(e) => {
                    stats.error(&e);
                    None
                }
            }
        }));
    }
    let mut nodes = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok(Some(node)) = task.await {
            nodes.push(node);
        }
    }
    (nodes, start.elapsed())
}

async fn close_all(nodes: Vec<Node>) {
    futures::future::join_all(nodes.into_iter().map(|mut node| async move {
        let _ = node.ws.close(None).await;
    }))
    .await;
}

#[tokio::main]
async fn main() {
    raise_fd_limit();
    let args = Arc::new(Args::parse());
    let stats = Arc::new(Stats::default());
    let done = Arc::new(AtomicBool::new(false));
    let before = read_proc(args.server_pid);
    let started = Instant::now();
    let mut extra = serde_json::Map::new();

    match args.scenario.clone() {
        Scenario::Join { conns, window } => {
            progress(stats.clone(), done.clone(), "joined");
            let (nodes, took) = join_many(&args, conns, window, &stats).await;
            extra.insert("joined".into(), json!(nodes.len()));
            extra.insert("join_s".into(), json!(took.as_secs_f64()));
            extra.insert("joins_per_s".into(), json!(nodes.len() as f64 / took.as_secs_f64()));
            if let Some(after) = read_proc(args.server_pid) {
                extra.insert("server_rss_after_join_kb".into(), json!(after.rss_kb));
            }
            close_all(nodes).await;
        }
        Scenario::Idle { conns, secs, window, big_frame } => {
            progress(stats.clone(), done.clone(), "joined");
            let (mut nodes, took) = join_many(&args, conns, window, &stats).await;
            if big_frame > 0 {
                let request =
                    format!("{:width$}\"ListIDsRequest\"", "", width = big_frame.saturating_sub(16));
                for node in &mut nodes {
                    if let Err(e) = node.send_raw(&request).await {
                        eprintln!("big frame: {e}");
                    }
                }
                extra.insert("big_frame_bytes".into(), json!(request.len()));
            }
            let held = read_proc(args.server_pid);
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let after = read_proc(args.server_pid);
            extra.insert("joined".into(), json!(nodes.len()));
            extra.insert("join_s".into(), json!(took.as_secs_f64()));
            if let (Some(b), Some(h), Some(a)) = (before, held, after) {
                let per_conn = (a.rss_kb.saturating_sub(b.rss_kb) * 1024) as f64 / nodes.len().max(1) as f64;
                extra.insert("server_rss_idle_kb".into(), json!(a.rss_kb));
                extra.insert("server_rss_joined_kb".into(), json!(h.rss_kb));
                extra.insert("server_bytes_per_idle_conn".into(), json!(per_conn.round()));
            }
            close_all(nodes).await;
        }
        Scenario::Relay { pairs, window, secs, size, rate } => {
            let (mut nodes, _) = join_many(&args, pairs * 2, 256, &stats).await;
            stats.ops.store(0, Ordering::Relaxed);
            stats.latencies_us.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let epoch = Instant::now();
            let deadline = epoch + Duration::from_secs_f64(secs);
            progress(stats.clone(), done.clone(), "relays");
            let before_relay = read_proc(args.server_pid);
            let pace = (rate > 0).then(|| Duration::from_secs_f64(f64::from(pairs) / rate as f64));
            let mut tasks = Vec::new();
            while let (Some(b), Some(a)) = (nodes.pop(), nodes.pop()) {
                tasks.push(tokio::spawn(bounce(a, b, window, size, epoch, deadline, pace, stats.clone())));
            }
            for task in tasks {
                let _ = task.await;
            }
            let elapsed = epoch.elapsed().as_secs_f64();
            let after = read_proc(args.server_pid);
            let relays = stats.ops.load(Ordering::Relaxed);
            extra.insert("relays".into(), json!(relays));
            extra.insert("relays_per_s".into(), json!(relays as f64 / elapsed));
            if let (Some(b), Some(a)) = (before_relay, after) {
                let per_relay = |s: f64| s * 1e6 / relays.max(1) as f64;
                extra.insert("server_cpu_us_per_relay".into(), json!(per_relay(a.cpu_s - b.cpu_s)));
                extra.insert("server_kernel_us_per_relay".into(), json!(per_relay(a.sys_s - b.sys_s)));
            }
        }
        Scenario::Churn { workers, secs } => {
            // A permanent partner that every cycle relays to.
            let partner = match Node::join(&args, source(&args, 0), u64::MAX).await {
                Ok(node) => node,
                Err(e) => {
                    eprintln!("cannot join the partner node: {e}");
                    std::process::exit(1);
                }
            };
            let partner_id = partner.id();
            let drain = tokio::spawn(async move {
                let mut partner = partner;
                while partner.next_setup().await.is_ok() {}
            });
            progress(stats.clone(), done.clone(), "cycles");
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for worker in 0..workers {
                let (args, stats) = (args.clone(), stats.clone());
                tasks.push(tokio::spawn(async move {
                    let mut index = u64::from(worker) << 32;
                    while Instant::now() < deadline {
                        index += 1;
                        let began = Instant::now();
                        let cycle = async {
                            let mut node = Node::join(&args, source(&args, index), index).await?;
                            let init = PeerInfo {
                                id_init: node.id(),
                                id_follow: partner_id,
                                message: PeerMessage::Init,
                            };
                            node.send_setup(init).await?;
                            node.ws.close(None).await.map_err(|e| e.to_string())
                        };
                        match cycle.await {
                            Ok(()) => stats.record(began.elapsed()),
                            Err(e) => stats.error(&e),
                        }
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
            drain.abort();
            let cycles = stats.ops.load(Ordering::Relaxed);
            extra.insert("cycles".into(), json!(cycles));
            extra.insert("cycles_per_s".into(), json!(cycles as f64 / started.elapsed().as_secs_f64()));
        }
    }
    done.store(true, Ordering::Relaxed);

    let after = read_proc(args.server_pid);
    let mut summary = json!({
        "scenario": format!("{:?}", args.scenario).split_whitespace().next().unwrap_or_default(),
        "label": args.label,
        "codec": if args.bincode { "bincode" } else { "json" },
        "params": format!("{:?}", args.scenario),
        "duration_s": started.elapsed().as_secs_f64(),
        "ops": stats.ops.load(Ordering::Relaxed),
        "errors": stats.errors.load(Ordering::Relaxed),
        "latency_us": stats.percentiles(),
    });
    if let (Some(b), Some(a)) = (before, after) {
        summary["server"] = json!({
            "cpu_s": a.cpu_s - b.cpu_s,
            "kernel_s": a.sys_s - b.sys_s,
            "rss_start_kb": b.rss_kb,
            "rss_end_kb": a.rss_kb,
        });
    }
    if let Some(object) = summary.as_object_mut() {
        object.extend(extra);
    }
    println!("{summary}");
}

/// One pair. Closed loop: `a` offers, `b` answers each offer, `window` messages in flight.
/// Paced (`pace` set): `a` offers once per `pace`, `b` only receives. Every message carries its
/// send time and its receiver records the latency. Stops at `deadline`.
#[allow(clippy::too_many_arguments)]
async fn bounce(
    mut a: Node,
    mut b: Node,
    window: u32,
    size: usize,
    epoch: Instant,
    deadline: Instant,
    pace: Option<Duration>,
    stats: Arc<Stats>,
) {
    let (a_id, b_id) = (a.id(), b.id());
    let stamp = |message: fn(String) -> PeerMessage| {
        let nanos = epoch.elapsed().as_nanos();
        let mut text = format!("{nanos:020} ");
        text.extend(std::iter::repeat_n('x', size.saturating_sub(21)));
        PeerInfo { id_init: a_id, id_follow: b_id, message: message(text) }
    };
    let latency = |setup: &PeerInfo| {
        let text = setup.message.text().unwrap_or_default();
        let sent = text.get(..20).and_then(|t| t.parse::<u64>().ok()).unwrap_or_default();
        epoch.elapsed().saturating_sub(Duration::from_nanos(sent))
    };
    if let Some(pace) = pace {
        // Open loop: `a` offers at a fixed rate whatever happens, `b` records each arrival at once.
        let mut ticker = tokio::time::interval(pace);
        while Instant::now() < deadline {
            tokio::select! {
                _ = ticker.tick() => if let Err(e) = a.send_setup(stamp(PeerMessage::Offer)).await {
                    return stats.error(&e);
                },
                got = b.next_setup() => match got {
                    Ok(offer) => stats.record(latency(&offer)),
                    Err(e) => return stats.error(&e),
                },
            }
        }
    } else {
        // Closed loop: `window` messages in flight; each arrival is answered at once.
        for _ in 0..window {
            if let Err(e) = a.send_setup(stamp(PeerMessage::Offer)).await {
                return stats.error(&e);
            }
        }
        while Instant::now() < deadline {
            tokio::select! {
                got = b.next_setup() => match got {
                    Ok(offer) => {
                        stats.record(latency(&offer));
                        if let Err(e) = b.send_setup(stamp(PeerMessage::Answer)).await { return stats.error(&e) }
                    }
                    Err(e) => return stats.error(&e),
                },
                got = a.next_setup() => match got {
                    Ok(answer) => {
                        stats.record(latency(&answer));
                        if let Err(e) = a.send_setup(stamp(PeerMessage::Offer)).await { return stats.error(&e) }
                    }
                    Err(e) => return stats.error(&e),
                },
            }
        }
    }
    let _ = a.ws.close(None).await;
    let _ = b.ws.close(None).await;
}

/// Lets this process hold many sockets: the soft limit up to the hard one, and as root both.
fn raise_fd_limit() {
    let want = 1 << 20;
    if rlimit::Resource::NOFILE.set(want, want).is_err() {
        let _ = rlimit::increase_nofile_limit(want);
    }
}
