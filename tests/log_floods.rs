//! What a flood of refused connections writes to the logs (features `tracing` and `websocket`):
//! a bounded number of lines at `info`, however many connections are refused.
//!
//! One test in a process of its own, as in `logs.rs`: `tracing` caches per call site whether
//! anyone listens.

mod capture;
mod nodes;
mod ws;

use capture::Capture;
use peer_signal::{WsConfig, WsTransport};
use tokio::net::TcpStream;
use ws::eventually;

#[tokio::test]
async fn refused_connections_write_a_bounded_number_of_lines_at_info_and_count_every_one() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    // The test's runtime runs the accept loop on this thread: the subscriber sees its events.
    let _guard = tracing::subscriber::set_default(subscriber);

    let transport =
        WsTransport::bind("127.0.0.1:0", WsConfig::default().with_max_connections(1).without_source_limits())
            .await
            .unwrap();
    let stats = transport.stats_handle();
    let addr = transport.local_addr();
    // One upgraded connection holds the only slot (one still in its handshake would give its
    // place up to a newcomer); 300 more are refused at accept, one at a time so that the
    // client's side never overflows the listen backlog.
    let _holder = ws::RawWs::connect(&format!("ws://{addr}/"), false).await;
    eventually("the slot is taken", || stats.get().accepted == 1).await;
    for refused in 1..=300 {
        let stream = TcpStream::connect(addr).await.unwrap();
        eventually("refused", || stats.get().refused == refused).await;
        drop(stream);
    }
    let text = capture.text();
    let lines = text.lines().filter(|line| line.contains("connection refused: max_connections")).count();
    // 20 a window of 10 s; a slow machine may take the test into a second window.
    assert!((20..=40).contains(&lines), "{lines} lines at info for 300 refusals:\n{text}");
    assert_eq!(stats.get().refused, 300, "every refusal is counted, logged or not");
    drop(transport);
}
