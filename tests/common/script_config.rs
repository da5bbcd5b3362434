//! Small limits, so that short random scripts reach every one of them: shared by the property
//! tests and the fuzz targets (`fuzz/src/lib.rs` includes this file).

use std::time::Duration;

use peer_signal::{Binding, RateLimit, SignalConfig};

/// The name the scripts' server answers bound announces for.
pub const SCRIPT_SERVER: &str = "wss://h.example";

pub fn script_config() -> SignalConfig {
    SignalConfig::default()
        .with_rng_seed([7; 32])
        .with_ttl(Duration::from_secs(60))
        .with_handshake_timeout(Duration::from_secs(20))
        .with_max_connections(6)
        .with_max_pending_handshakes(4)
        .with_max_frame_size(600)
        .with_max_name_len(16)
        .with_max_setup_len(96)
        .with_max_node_stats(2)
        .with_max_errors(4)
        .with_max_announce_failures(2)
        .with_frame_rate(RateLimit::new(5, 10))
        .with_byte_rate(RateLimit::new(2000, 4000))
        .with_max_list_len(3)
        .with_list_push_fanout(2)
        .with_list_push_interval(Duration::from_millis(500))
        .with_binding(Binding::accept([SCRIPT_SERVER]))
}
