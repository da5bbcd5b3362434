//! A soak test: the WebSocket server in-process, with pairs of nodes churning through it on
//! loopback (connect, announce, list, relay a set-up exchange, disconnect) for `--secs`, and the
//! process's resident memory printed at the start, every `--report-secs` and at the end.
//!
//! ```sh
//! cargo run --release -p peer-signal-tools --bin soak  # 10 s
//! cargo run --release -p peer-signal-tools --bin soak -- --secs 600   # what the README reports
//! ```
//!
//! Memory that keeps growing while the number of connections stays level would be a leak. The
//! process exits with an error if any cycle failed or the server still holds connections at the end.

#[path = "../../../examples/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use common::ticks;
use peer_signal::ed25519_dalek::SigningKey;
use peer_signal::{
    AsyncClient, ClientEvent, Codec, Driver, NodeInfo, PeerInfo, PeerMessage, SignalConfig, SignalServer,
    WsClient, WsConfig, WsTransport,
};

/// Churns nodes through an in-process WebSocket server and reports its memory.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Pairs of nodes churning at the same time.
    #[arg(long, default_value_t = 8)]
    pairs: u32,
    /// Seconds between memory reports.
    #[arg(long, default_value_t = 60)]
    report_secs: u64,
}

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    failures: AtomicU64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let config = SignalConfig::default();
    let transport =
        WsTransport::bind("127.0.0.1:0", WsConfig::for_server(&config).without_source_limits()).await?;
    let url = format!("ws://{}", transport.local_addr());
    let (driver, handle, _events) = Driver::new(SignalServer::new(config)?, transport, 1024);
    let server = tokio::spawn(driver.run(ticks(Duration::from_millis(250))));

    let started = Instant::now();
    let rss_start = rss_kib();
    println!("soak: {} pairs for {} s on {url}", args.pairs, args.secs);
    println!("t=0s rss={rss_start} KiB (start)");

    let deadline = started + Duration::from_secs(args.secs);
    let counts = Arc::new(Counts::default());
    let workers: Vec<_> = (0..args.pairs)
        .map(|pair| tokio::spawn(churn(url.clone(), pair, deadline, counts.clone())))
        .collect();

    let mut report = tokio::time::interval(Duration::from_secs(args.report_secs.max(1)));
    report.tick().await;
    let mut last = (Instant::now(), 0u64);
    while Instant::now() < deadline {
        tokio::select! {
            _ = report.tick() => {}
            () = tokio::time::sleep_until(deadline.into()) => break,
        }
        let cycles = counts.cycles.load(Ordering::Relaxed);
        let rate = (cycles - last.1) as f64 / last.0.elapsed().as_secs_f64();
        last = (Instant::now(), cycles);
        let stats = handle.stats();
        println!(
            "t={}s rss={} KiB cycles={cycles} ({rate:.0}/s) connections={} nodes={}",
            started.elapsed().as_secs(),
            rss_kib(),
            stats.connections,
            stats.nodes
        );
    }
    for worker in workers {
        worker.await?;
    }
    let churned = started.elapsed();
    let cycles = counts.cycles.load(Ordering::Relaxed);
    let failures = counts.failures.load(Ordering::Relaxed);

    // Let the server see the last disconnects (and tick) before reading its counters.
    let settle = Instant::now();
    let mut stats = handle.stats();
    while (stats.connections > 0 || stats.joins < 2 * cycles) && settle.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stats = handle.stats();
    }
    let rss_end = rss_kib();
    println!(
        "t={}s rss={rss_end} KiB (end, idle) cycles={cycles} ({:.0}/s) failures={failures} \
         joins={} relays={} connections={}",
        churned.as_secs(),
        cycles as f64 / churned.as_secs_f64(),
        stats.joins,
        stats.relays,
        stats.connections
    );
    println!(
        "rss start {rss_start} KiB, end {rss_end} KiB, change {:+} KiB",
        rss_end as i64 - rss_start as i64
    );
    handle.stop();
    server.await?;
    if failures > 0 || stats.connections > 0 {
        return Err(format!("{failures} failed cycles, {} connections left", stats.connections).into());
    }
    Ok(())
}

/// One pair of nodes, over and over with fresh keys: both connect and announce, the first lists
/// the nodes and sends Init, the second answers with an Offer, both disconnect.
async fn churn(url: String, pair: u32, deadline: Instant, counts: Arc<Counts>) {
    let mut round = 0u32;
    while Instant::now() < deadline {
        round += 1;
        let ok = tokio::time::timeout(Duration::from_secs(10), cycle(&url, pair, round)).await;
        match ok {
            Ok(Ok(())) => counts.cycles.fetch_add(1, Ordering::Relaxed),
            Ok(Err(e)) => {
                eprintln!("pair {pair} round {round}: {e}");
                counts.failures.fetch_add(1, Ordering::Relaxed)
            }
            Err(_) => {
                eprintln!("pair {pair} round {round}: timed out");
                counts.failures.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

async fn cycle(url: &str, pair: u32, round: u32) -> Result<(), Box<dyn std::error::Error>> {
    let codecs = if round % 2 == 0 { [Codec::Json, Codec::Bincode] } else { [Codec::Bincode, Codec::Json] };
    let mut init = node(url, pair, round, 0, codecs[0]).await?;
    let mut follow = node(url, pair, round, 1, codecs[1]).await?;
    // A push of joins sent before the partner joined may pass for the reply: ask again then.
    let mut listed = false;
    for _ in 0..3 {
        listed = init.list().await?.iter().any(|info| info.id() == follow.id());
        if listed {
            break;
        }
    }
    if !listed {
        return Err("the partner is not listed".into());
    }
    init.send_init(follow.id()).await?;
    let setup = next_setup(&mut follow).await?;
    follow.send_reply(&setup, PeerMessage::Offer(format!("v=0 soak {pair} {round}"))).await?;
    let offer = next_setup(&mut init).await?;
    if !matches!(offer.message, PeerMessage::Offer(_)) || offer.id_follow != follow.id() {
        return Err(format!("unexpected reply {offer:?}").into());
    }
    init.into_inner().close().await;
    follow.into_inner().close().await;
    Ok(())
}

async fn node(
    url: &str,
    pair: u32,
    round: u32,
    side: u8,
    codec: Codec,
) -> Result<AsyncClient<WsClient>, Box<dyn std::error::Error>> {
    let mut seed = [side; 32];
    seed[..4].copy_from_slice(&pair.to_le_bytes());
    seed[4..8].copy_from_slice(&round.to_le_bytes());
    let key = SigningKey::from_bytes(&seed);
    let info = NodeInfo::new(format!("soak-{pair}-{round}-{side}"), "soak", key.verifying_key().to_bytes());
    let conn = WsClient::connect(url, codec).await?;
    let mut node = AsyncClient::connect(conn, key, info).await?;
    // The list that follows the announce.
    node.next_event().await?;
    Ok(node)
}

async fn next_setup(node: &mut AsyncClient<WsClient>) -> Result<PeerInfo, Box<dyn std::error::Error>> {
    loop {
        match node.next_event().await? {
            ClientEvent::PeerSetup(setup) => return Ok(setup),
            ClientEvent::NodeList(_) => {}
            other => return Err(format!("unexpected event {other:?}").into()),
        }
    }
}

/// The resident set size of this process, in KiB, from `/proc/self/status` (0 where there is none).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}
