//! `SignalConfig::validate` and `SignalServer::new`: every setting the server cannot work with is
//! refused, by name.

mod common;

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
