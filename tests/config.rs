//! `SignalConfig::validate` and `SignalServer::new`: every setting the server cannot work with is
//! refused, by name.

mod common;
mod nodes;
mod ws;

use std::time::Duration;

use common::script_config::script_config;
use peer_signal::{ConfigError, RateLimit, SignalConfig, SignalServer};

const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn with(change: impl FnOnce(&mut SignalConfig)) -> SignalConfig {
    let mut config = SignalConfig::default();
    change(&mut config);
    config
}

#[test]
fn the_defaults_and_the_test_configs_are_valid() {
    assert_eq!(SignalConfig::default().validate(), Ok(()));
    assert_eq!(script_config().validate(), Ok(()));
    let unlimited = with(|c| (c.frame_rate, c.byte_rate) = (RateLimit::UNLIMITED, RateLimit::UNLIMITED));
    assert_eq!(unlimited.validate(), Ok(()));
}

#[test]
fn each_refused_field_names_itself() {
    let too_long = CENTURY + Duration::from_secs(1);
    let cases: Vec<(SignalConfig, &str, &str)> = vec![
        (with(|c| c.ttl = Duration::ZERO), "ttl", "ttl must be more than zero"),
        (
            with(|c| c.ttl = Duration::MAX),
            "ttl",
            "ttl (18446744073709551615.999999999s) must be at most a century",
        ),
        (
            with(|c| c.handshake_timeout = Duration::ZERO),
            "handshake_timeout",
            "handshake_timeout must be more than zero",
        ),
        (
            with(|c| c.handshake_timeout = too_long),
            "handshake_timeout",
            "handshake_timeout (3153600001s) must be at most a century",
        ),
        (with(|c| c.max_list_len = 0), "max_list_len", "max_list_len must be more than zero"),
        (with(|c| c.max_connections = 0), "max_connections", "max_connections must be more than zero"),
        (
            with(|c| c.max_pending_handshakes = 0),
            "max_pending_handshakes",
            "max_pending_handshakes must be more than zero",
        ),
        (with(|c| c.max_frame_size = 0), "max_frame_size", "max_frame_size must be more than zero"),
        (with(|c| c.max_name_len = 0), "max_name_len", "max_name_len must be more than zero"),
        (with(|c| c.max_client_len = 0), "max_client_len", "max_client_len must be more than zero"),
        (with(|c| c.max_setup_len = 0), "max_setup_len", "max_setup_len must be more than zero"),
        (with(|c| c.max_node_stats = 0), "max_node_stats", "max_node_stats must be more than zero"),
        (with(|c| c.frame_rate.burst = 0), "frame_rate.burst", "frame_rate.burst must be more than zero"),
        (with(|c| c.byte_rate.burst = 0), "byte_rate.burst", "byte_rate.burst must be more than zero"),
        (
            with(|c| c.byte_rate.burst = 1000),
            "byte_rate.burst",
            "byte_rate.burst (1000) must be at least max_frame_size (65536)",
        ),
        (with(|c| c.max_send_backlog = 0), "max_send_backlog", "max_send_backlog must be more than zero"),
        (
            // Its transports' channels panic at such capacities (futures' mpsc, flume).
            with(|c| c.max_send_backlog = usize::MAX),
            "max_send_backlog",
            "max_send_backlog (18446744073709551615) must be at most 1048576",
        ),
        (
            with(|c| c.list_push_interval = Duration::ZERO),
            "list_push_interval",
            "list_push_interval must be more than zero",
        ),
        (
            with(|c| c.list_push_interval = too_long),
            "list_push_interval",
            "list_push_interval (3153600001s) must be at most a century",
        ),
    ];
    for (config, field, text) in cases {
        let error = config.validate().expect_err(field);
        assert_eq!(error.field(), field);
        assert_eq!(error.to_string(), text);
        // The server refuses it with the same error.
        assert_eq!(SignalServer::new(config).map(|_| ()), Err(error));
    }
}

#[test]
fn zero_is_accepted_where_it_has_a_meaning() {
    // Pushes off: then the push interval does not matter.
    for interval in [Duration::ZERO, Duration::MAX] {
        let config = with(|c| (c.list_push_fanout, c.list_push_interval) = (0, interval));
        assert_eq!(config.validate(), Ok(()));
    }
    // No refill: the burst is all a connection ever gets.
    let config = with(|c| (c.frame_rate.per_sec, c.byte_rate.per_sec) = (0, 0));
    assert_eq!(config.validate(), Ok(()));
    // No tolerance: the first error closes.
    let config = with(|c| (c.max_errors, c.max_announce_failures) = (0, 0));
    assert_eq!(config.validate(), Ok(()));
    // Exactly a century, and a burst of exactly the largest frame.
    let config = with(|c| {
        (c.ttl, c.handshake_timeout, c.list_push_interval) = (CENTURY, CENTURY, CENTURY);
        c.byte_rate.burst = 64 * 1024;
    });
    assert_eq!(config.validate(), Ok(()));
}

#[test]
fn the_first_refused_field_in_declaration_order_is_reported() {
    let config = with(|c| (c.ttl, c.max_send_backlog) = (Duration::ZERO, 0));
    assert_eq!(config.validate(), Err(ConfigError::Zero { field: "ttl" }));
}

#[test]
fn the_longest_list_reply_is_an_upper_bound_of_every_list() {
    use peer_signal::{Codec, Modules, NodeInfo, WSSignalMessageToNode};
    let config = SignalConfig::default().with_max_list_len(3).with_max_name_len(40).with_max_client_len(8);
    // Three nodes at the limits, with escapes in their names, every module set.
    let name = "\u{1}\"\\".repeat(4); // 4 × (6 + 2 + 2) = 40 bytes in JSON
    let node = NodeInfo { modules: Modules(u32::MAX), ..NodeInfo::new(name, "12345678", [0xff; 32]) };
    let longest = config.max_list_reply_len();
    for codec in [Codec::Json, Codec::Bincode] {
        let frame = codec.encode(&WSSignalMessageToNode::ListIDsReply(vec![node.clone(); 3])).unwrap();
        assert!(frame.len() <= longest, "{codec:?}: {} > {longest}", frame.len());
        if codec == Codec::Json {
            // The bound is tight for JSON, the longer codec: at most the comma after the last.
            assert!(frame.len() + 1 >= longest, "{} is far below {longest}", frame.len());
        }
    }
    assert_eq!(SignalConfig::default().max_list_reply_len(), 54_619);
    assert_eq!(SignalConfig::default().with_max_list_len(usize::MAX).max_list_reply_len(), usize::MAX);
}

#[test]
fn a_list_longer_than_the_send_backlog_is_refused_naming_both() {
    let config = SignalConfig::default().with_max_list_len(2_000);
    let longest = config.max_list_reply_len();
    assert!(longest > 1 << 20, "{longest}");
    let error = config.check_send_backlog(1 << 20).unwrap_err();
    assert_eq!(error.field(), "send_backlog_bytes");
    assert_eq!(
        error.to_string(),
        format!("send_backlog_bytes (1048576) must be at least the longest list reply of max_list_len nodes ({longest})")
    );
    assert_eq!(config.check_send_backlog(longest), Ok(()));
    assert_eq!(SignalConfig::default().check_send_backlog(1 << 20), Ok(()));
}

#[test]
fn the_extremes_that_validate_run_without_a_panic() {
    use common::Harness;
    use peer_signal::{SignalIn, WSSignalMessageFromNode};
    // Every limit at its largest, every duration at a century, rates unlimited or nearly: each
    // valid configuration serves joins, lists and garbage, and ticks a few centuries on.
    for rate in [RateLimit::UNLIMITED, RateLimit::new(u64::MAX - 1, u64::MAX), RateLimit::new(1, u64::MAX)] {
        let config = with(|c| {
            (c.ttl, c.handshake_timeout, c.list_push_interval) = (CENTURY, CENTURY, CENTURY);
            (c.max_list_len, c.max_connections, c.max_pending_handshakes) =
                (usize::MAX, usize::MAX, usize::MAX);
            (c.max_frame_size, c.max_name_len, c.max_client_len) = (usize::MAX, usize::MAX, usize::MAX);
            (c.max_setup_len, c.max_node_stats, c.max_send_backlog) = (usize::MAX, usize::MAX, 1 << 20);
            (c.list_push_fanout, c.max_errors, c.max_announce_failures) = (usize::MAX, u32::MAX, u32::MAX);
            (c.frame_rate, c.byte_rate) = (rate, rate);
        });
        assert_eq!(config.validate(), Ok(()));
        let mut h = Harness::with(config);
        let a = h.join(1);
        h.join(2);
        h.from(a, &WSSignalMessageFromNode::ListIDsRequest);
        h.frame(a.conn, vec![b'x'; 100]);
        for _ in 0..3 {
            h.advance(CENTURY);
        }
        h.join(3);
        h.input(SignalIn::Stop);
    }
}

#[tokio::test]
async fn the_largest_backlogs_that_validate_work_over_memory_and_websocket() {
    use peer_signal::{Codec, WsConfig};
    // The largest backlog a configuration may have, over the memory transport...
    let config = nodes::config().with_max_send_backlog(1 << 20);
    assert_eq!(config.validate(), Ok(()));
    let running = nodes::start(config.clone());
    nodes::join(&running.connector, 1, Codec::Json).await;
    // ...and a larger one given to the memory transport directly is taken as that.
    let (_transport, connector) = peer_signal::MemoryTransport::with_capacity(usize::MAX);
    drop(connector);
    // Over WebSocket, with the largest queues and read buffer.
    let ws = WsConfig::for_server(&config).with_event_queue(1 << 20).with_read_buffer_size(16 << 20);
    let server = ws::start(config, ws).await;
    ws::join(&server.url, 1, Codec::Json).await;
}

#[tokio::test]
async fn websocket_queues_and_buffers_that_would_panic_are_refused_naming_the_field() {
    use peer_signal::{WsConfig, WsTransport};
    for (ws, text) in [
        // tokio's channel panics above usize::MAX >> 3.
        (
            WsConfig::default().with_event_queue(usize::MAX),
            "event_queue (18446744073709551615) must be at most 1048576",
        ),
        // futures' channel panics above usize::MAX >> 1, in every connection's task.
        (
            WsConfig::default().with_send_backlog(usize::MAX),
            "send_backlog (18446744073709551615) must be at most 1048576",
        ),
        // Every connection reserves it at each read: capacity overflow, in every task.
        (
            WsConfig::default().with_read_buffer_size(usize::MAX),
            "read_buffer_size (18446744073709551615) must be at most 16777216",
        ),
    ] {
        assert_eq!(ws.validate().unwrap_err().to_string(), text);
        let error = WsTransport::bind("127.0.0.1:0", ws).await.expect_err("refused");
        assert_eq!(error.to_string(), text);
    }
}

#[test]
fn redis_settings_that_would_panic_are_refused_naming_the_field() {
    use peer_signal::RedisConfig;
    let checks: [(RedisConfig, &str); 5] = [
        (
            RedisConfig::default().with_presence_ttl(Duration::MAX),
            "presence_ttl (18446744073709551615.999999999s) must be at most a century",
        ),
        (
            RedisConfig::default().with_heartbeat(CENTURY + Duration::from_secs(1)),
            "heartbeat (3153600001s) must be at most a century",
        ),
        (
            RedisConfig::default().with_sample_interval(Duration::MAX),
            "sample_interval (18446744073709551615.999999999s) must be at most a century",
        ),
        (
            RedisConfig::default().with_command_timeout(Duration::MAX),
            "command_timeout (18446744073709551615.999999999s) must be at most a century",
        ),
        (
            RedisConfig::default().with_max_events(usize::MAX),
            "max_events (18446744073709551615) must be at most 1048576",
        ),
    ];
    for (config, text) in checks {
        assert_eq!(config.validate().unwrap_err().to_string(), text);
    }
    assert!(RedisConfig::default().validate().is_ok());
}
