//! What the core reports as `tracing` events (feature `tracing`), written as JSON to memory while
//! the harness steps virtual time.
//!
//! One test in a process of its own: `tracing` caches per call site whether anyone listens, and a
//! test on another thread without a subscriber could settle that first.

mod capture;
mod common;

use capture::Capture;
use common::Harness;
use peer_signal::{Codec, ConnId, SignalIn};

#[test]
fn joins_leaves_and_errors_are_tracing_events_naming_the_connection() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let (a, b) = tracing::subscriber::with_default(subscriber, || {
        let mut h = Harness::new();
        let a = h.join(1);
        let b = h.join(2);
        h.frame(b.conn, "not json");
        h.input(SignalIn::Closed { conn: a.conn });
        // A connection whose transport knows the peer's address.
        let addr = Some("192.0.2.7".parse().unwrap());
        h.input(SignalIn::Opened { conn: ConnId::new(77), codec: Codec::Json, addr });
        h.frame(ConnId::new(77), "not json");
        (a, b)
    });
    let lines = capture.lines();
    let find = |message: &str, conn: ConnId| {
        lines
            .iter()
            .find(|line| {
                line.get("message").and_then(|m| m.as_str()) == Some(message)
                    && line.get("conn").and_then(|c| c.as_u64()) == Some(conn.get())
            })
            .unwrap_or_else(|| panic!("no {message:?} for {conn}: {lines:?}"))
    };
    let joined = find("node joined", a.conn);
    assert_eq!(joined.get("node").and_then(|n| n.as_str()), Some(a.id.to_string().as_str()));
    assert_eq!(joined.get("level").and_then(|l| l.as_str()), Some("DEBUG"));
    assert_eq!(joined.get("target").and_then(|t| t.as_str()), Some("peer_signal::server"));
    find("node left", a.conn);
    let error = find("error reply", b.conn);
    assert_eq!(error.get("reason").and_then(|r| r.as_str()), Some("malformed"));
    assert!(error.get("addr").is_none(), "no address, no field: {error}");
    let error = find("error reply", ConnId::new(77));
    assert_eq!(error.get("addr").and_then(|a| a.as_str()), Some("192.0.2.7"));
}
