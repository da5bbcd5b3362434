//! Small limits, so that short random scripts reach every one of them: shared by the property
//! tests and the fuzz targets (`fuzz/src/lib.rs` includes this file).

use std::time::Duration;

use peer_signal::{RateLimit, SignalConfig};

pub fn script_config() -> SignalConfig {
    SignalConfig {
        rng_seed: Some([7; 32]),
        ttl: Duration::from_secs(60),
        handshake_timeout: Duration::from_secs(20),
        max_connections: 6,
        max_pending_handshakes: 4,
        max_frame_size: 600,
        max_name_len: 16,
        max_setup_len: 96,
        max_node_stats: 2,
        max_errors: 4,
        max_announce_failures: 2,
        frame_rate: RateLimit::new(5, 10),
        byte_rate: RateLimit::new(2000, 4000),
        max_list_len: 3,
        list_push_fanout: 2,
        list_push_interval: Duration::from_millis(500),
        ..SignalConfig::default()
    }
}
