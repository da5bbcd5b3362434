//! Figures for several instances on one Redis: CPU per relay across instances, CPU per join, and
//! memory per idle connection, read from `/proc` for the processes named with `--pid`.
//!
//! ```sh
//! # Redis and two instances, then:
//! cargo run --release -p peer-signal-tools --bin cluster_load -- relay --url ws://127.0.0.1:8765 --url ws://127.0.0.1:8766 --pid <a>,<b>,<redis>
//! cargo run --release -p peer-signal-tools --bin cluster_load -- join  --url ws://127.0.0.1:8765 --pid <a>,<redis>
//! cargo run --release -p peer-signal-tools --bin cluster_load -- idle  --url ws://127.0.0.1:8765 --count 20000 --pid <a>
//! ```
//!
//! Only loopback addresses are meant: every loop is bounded by `--secs` or `--count`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{AsyncClient, ClientEvent, Codec, NodeInfo, PeerInfo, PeerMessage, WsClient};

#[derive(Parser, Debug)]
struct Args {
    /// The instances, each `ws://host:port`; nodes are spread over them in turn.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Processes whose CPU time and memory are reported (the instances, Redis), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Speak bincode.
    #[arg(long)]
    bincode: bool,
    /// Distinguishes the keys of several runs at once.
    #[arg(long, default_value_t = 1)]
    seed: u32,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand, Debug)]
enum What {
    /// Pairs of nodes on different instances exchange set-ups, one in flight per pair.
    Relay {
        #[arg(long, default_value_t = 32)]
        pairs: u32,
        #[arg(long, default_value_t = 10)]
        secs: u64,
    },
    /// Nodes join and leave, `workers` at a time.
    Join {
        #[arg(long, default_value_t = 2000)]
        count: u32,
        #[arg(long, default_value_t = 16)]
        workers: u32,
    },
    /// `count` nodes join and stay for `hold` seconds; memory is read while they are connected.
    Idle {
        #[arg(long, default_value_t = 1000)]
        count: u32,
        #[arg(long, default_value_t = 5)]
        hold: u64,
    },
}

fn key(seed: u32, i: u32) -> SigningKey {
    let mut bytes = [0x33u8; 32];
    bytes[..4].copy_from_slice(&seed.to_le_bytes());
    bytes[4..8].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

type Node = AsyncClient<WsClient>;

async fn join(url: &str, codec: Codec, key: SigningKey) -> Result<Node, String> {
    let conn = WsClient::connect(url, codec).await.map_err(|e| e.to_string())?;
    let info = NodeInfo::new("load", "cluster_load", key.verifying_key().to_bytes());
    let node = AsyncClient::connect(conn, key, info).await.map_err(|e| e.to_string())?;
    Ok(node)
}

/// CPU seconds (user + system) of each process, from `/proc/<pid>/stat`.
fn cpu(pids: &[u32]) -> Vec<f64> {
    pids.iter()
        .map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<f64>().ok()).sum();
            ticks / 100.0
        })
        .collect()
}

/// Resident memory of each process in KiB, from `/proc/<pid>/status`.
fn rss(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

fn per_op(pids: &[u32], before: &[f64], after: &[f64], ops: u64, what: &str) {
    for (i, pid) in pids.iter().enumerate() {
        let seconds = after.get(i).copied().unwrap_or(0.0) - before.get(i).copied().unwrap_or(0.0);
        println!("pid {pid}: {:.2} s CPU, {:.2} µs per {what}", seconds, seconds * 1e6 / ops.max(1) as f64);
    }
    let total: f64 = after.iter().sum::<f64>() - before.iter().sum::<f64>();
    println!("all: {:.2} µs CPU per {what}", total * 1e6 / ops.max(1) as f64);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let codec = if args.bincode { Codec::Bincode } else { Codec::Json };
    match args.what {
        What::Relay { pairs, secs } => {
            let relays = Arc::new(AtomicU64::new(0));
            let mut nodes = Vec::new();
            for p in 0..pairs {
                let a = join(&args.urls[0], codec, key(args.seed, 2 * p)).await.expect("join");
                let b = join(&args.urls[1 % args.urls.len()], codec, key(args.seed, 2 * p + 1))
                    .await
                    .expect("join");
                nodes.push((a, b));
            }
            // Let the joins settle (claims registered) before counting.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let deadline = Instant::now() + Duration::from_secs(secs);
            let before = cpu(&args.pid);
            let start = Instant::now();
            let tasks: Vec<_> = nodes
                .into_iter()
                .map(|(mut a, mut b)| {
                    let relays = Arc::clone(&relays);
                    tokio::spawn(async move {
                        let setup = PeerInfo {
                            id_init: a.id(),
                            id_follow: b.id(),
                            message: PeerMessage::Offer("v=0 o=- 0 0 IN IP4 127.0.0.1".into()),
                        };
                        while Instant::now() < deadline {
                            if a.send_setup(setup.clone()).await.is_err() {
                                return;
                            }
                            loop {
                                match tokio::time::timeout(Duration::from_secs(5), b.next_event()).await {
                                    Ok(Ok(ClientEvent::PeerSetup(_))) => break,
                                    Ok(Ok(_)) => continue,
                                    _ => return,
                                }
                            }
                            relays.fetch_add(1, Ordering::Relaxed);
                            std::mem::swap(&mut a, &mut b);
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
            let elapsed = start.elapsed();
            let after = cpu(&args.pid);
            let n = relays.load(Ordering::Relaxed);
            println!(
                "{n} relays across instances in {elapsed:.2?}: {:.0}/s",
                n as f64 / elapsed.as_secs_f64()
            );
            per_op(&args.pid, &before, &after, n, "relay");
        }
        What::Join { count, workers } => {
            let done = Arc::new(AtomicU64::new(0));
            let before = cpu(&args.pid);
            let start = Instant::now();
            let tasks: Vec<_> = (0..workers)
                .map(|w| {
                    let urls = args.urls.clone();
                    let done = Arc::clone(&done);
                    let seed = args.seed;
                    tokio::spawn(async move {
                        let mut i = w;
                        while i < count {
                            let url = &urls[i as usize % urls.len()];
                            if let Ok(node) = join(url, codec, key(seed, i)).await {
                                drop(node);
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                            i += workers;
                        }
                    })
                })
                .collect();
            for task in tasks {
                let _ = task.await;
            }
            let elapsed = start.elapsed();
            // The leaves finish on the servers after the clients are gone.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let after = cpu(&args.pid);
            let n = done.load(Ordering::Relaxed);
            println!("{n} joins and leaves in {elapsed:.2?}: {:.0}/s", n as f64 / elapsed.as_secs_f64());
            per_op(&args.pid, &before, &after, n, "join and leave");
        }
        What::Idle { count, hold } => {
            let before = rss(&args.pid);
            let mut nodes = Vec::with_capacity(count as usize);
            let start = Instant::now();
            for i in 0..count {
                let url = &args.urls[i as usize % args.urls.len()];
                match join(url, codec, key(args.seed, i)).await {
                    Ok(node) => nodes.push(node),
                    Err(e) => {
                        eprintln!("node {i}: {e}");
                        break;
                    }
                }
            }
            println!("{} nodes connected in {:.2?}", nodes.len(), start.elapsed());
            tokio::time::sleep(Duration::from_secs(hold)).await;
            let after = rss(&args.pid);
            for (i, pid) in args.pid.iter().enumerate() {
                let grown =
                    after.get(i).copied().unwrap_or(0).saturating_sub(before.get(i).copied().unwrap_or(0));
                println!(
                    "pid {pid}: RSS {} KiB → {} KiB",
                    before.get(i).copied().unwrap_or(0),
                    after.get(i).copied().unwrap_or(0)
                );
                let share = nodes.len() as u64 / args.pid.len().max(1) as u64;
                println!(
                    "pid {pid}: {:.0} B per connection ({} connections)",
                    grown as f64 * 1024.0 / share.max(1) as f64,
                    share
                );
            }
        }
    }
}
