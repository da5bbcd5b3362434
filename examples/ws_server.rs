//! The signalling server over WebSocket, for fledger nodes and any client of this crate.
//!
//! ```sh
//! cargo run --release --example ws_server                       # ws://0.0.0.0:8765, metrics on 127.0.0.1:9765
//! cargo run --release --example ws_server -- --help             # every limit
//! RUST_LOG=peer_signal=debug cargo run --release --example ws_server
//! ```
//!
//! Nodes connect with plain `ws://` on any path, or `wss://` with `--tls-cert` and `--tls-key`
//! (reloaded on SIGHUP). `GET /health`, `GET /ready` and `GET /metrics` (Prometheus text) are
//! served on the metrics address: `/health` is liveness, `/ready` answers 503 while draining.
//! Ctrl-C or SIGTERM closes every client, waits for their closing handshakes (`--drain-secs`),
//! then exits.
//!
//! Logs go to standard output, as text or, with `--log-format json`, as one JSON object a line
//! (`timestamp`, `level`, `message`, the event's fields, `target`); `RUST_LOG` filters them
//! (`info` by default). Refused connections are logged at `info` with the peer's address
//! (`peer`, and `client` behind a trusted proxy); with `RUST_LOG=peer_signal=debug`, so are
//! handshakes that fail, every connection's address and id (`conn`) when it opens, and the
//! core's joins, leaves and errors by `conn`.
//!
//! # Metrics
//!
//! `/metrics` is rendered by `metrics-exporter-prometheus` from the library's `metrics` facade
//! (the crate's `metrics` feature), with `metrics-process` for the process:
//!
//! | Metric | Type | What |
//! |---|---|---|
//! | `peer_signal_build_info{version}` | gauge | always 1; the version in the label |
//! | `peer_signal_connections`, `peer_signal_nodes`, `peer_signal_pending_handshakes` | gauge | open connections, announced nodes, connections yet to announce |
//! | `peer_signal_received_frames_total`, `peer_signal_received_bytes_total` | counter | frames and their bytes from nodes |
//! | `peer_signal_sent_frames_total`, `peer_signal_sent_bytes_total` | counter | frames and their bytes to nodes |
//! | `peer_signal_joins_total`, `peer_signal_leaves_total` | counter | announces accepted; announced nodes gone |
//! | `peer_signal_relays_total` | counter | set-ups forwarded to a local node |
//! | `peer_signal_errors_total{reason}` | counter | error replies, by `ProtocolError::kind` |
//! | `peer_signal_evictions_total` | counter | nodes closed for silence past the TTL |
//! | `peer_signal_turn_credentials_total` | counter | TURN credentials issued (with `--turn-uri`) |
//! | `peer_signal_dropped_events_total` | counter | application events nobody read in time |
//! | `peer_signal_announce_duration_seconds` | histogram | from the challenge to the accepted announce |
//! | `peer_signal_ws_send_queue_seconds` | histogram | a frame's wait in its connection's send queue, until the socket took it |
//! | `peer_signal_ws_connection_tasks`, `peer_signal_ws_read_buffer_bytes` | gauge | connection tasks alive; bytes in read buffers |
//! | `peer_signal_ws_accepted_total`, `peer_signal_ws_refused_total{reason}` | counter | TCP connections accepted; refused by `max_connections`, `max_connections_per_ip` or `admission` |
//! | `peer_signal_ws_failed_handshakes_total` | counter | TLS or WebSocket handshakes failed or timed out |
//! | `peer_signal_ws_{slow_readers,oversize,protocol_violations,ping_timeouts,clean_closes}_total` | counter | how connections ended |
//! | `peer_signal_cluster_up`, `peer_signal_cluster_presence`, `peer_signal_cluster_pool`, `peer_signal_cluster_remote_nodes` | gauge | with `--redis`: Redis reachable, local nodes registered, remote nodes pooled and known |
//! | `peer_signal_cluster_{relays_out,relays_in,undeliverable,bounced,taken_over,downs,published,received,dropped_out,dropped_in}_total`, `peer_signal_cluster_rejected_total{stage}` | counter | with `--redis` |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds` | | the process |
//!
//! Several instances form one network through Redis:
//!
//! ```sh
//! cargo run --release --example ws_server -- --listen 0.0.0.0:8765 --metrics 127.0.0.1:9765 --redis redis://127.0.0.1:6379
//! cargo run --release --example ws_server -- --listen 0.0.0.0:8766 --metrics 127.0.0.1:9766 --redis redis://127.0.0.1:6379
//! ```
//!
//! TURN credentials for the nodes (coturn's `use-auth-secret`; the secret in a file, read again
//! on SIGHUP):
//!
//! ```sh
//! cargo run --release --example ws_server -- --turn-uri turn:turn.example.org:3478 --turn-secret-file /etc/peer-signal/turn-secret
//! ```
//!
//! `/ready` answers 503 while such an instance cannot reach Redis (it keeps serving its own
//! nodes meanwhile), so that a load balancer sends newcomers elsewhere.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::ticks;
use futures::StreamExt;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use peer_signal::{
    server_id_of_url, Binding, BindingMode, ClusterConfig, ClusterKey, ConfigError, Driver, DriverEvents,
    DriverHandle, LogAdmit, LogThrottle, RateLimit, RealmID, RedisBackplane, RedisConfig, RedisHandle,
    ServerTls, SignalConfig, SignalEvent, SignalServer, TurnConfig, TurnSecret, WhenFull, WsConfig,
    WsStatsHandle, WsTransport,
};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// A fledger-compatible signalling server over WebSocket.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Where nodes connect (plain ws://, any path).
    #[arg(long, env = "PEER_SIGNAL_LISTEN", default_value = "0.0.0.0:8765")]
    listen: SocketAddr,
    /// PEM certificate chain (leaf first): serve wss:// instead of ws://, with --tls-key.
    /// Both files are read again on SIGHUP, for new connections; open ones go on.
    #[arg(long, env = "PEER_SIGNAL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "PEER_SIGNAL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where /health, /ready and /metrics are served; "off" serves none and collects no metrics.
    #[arg(long, env = "PEER_SIGNAL_METRICS", default_value = "127.0.0.1:9765")]
    metrics: String,
    /// Log lines as text, or as JSON objects, one a line (RUST_LOG filters either).
    #[arg(long, env = "PEER_SIGNAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Seconds a node may stay silent before it is closed.
    #[arg(long, env = "PEER_SIGNAL_TTL_SECS", default_value_t = SignalConfig::default().ttl.as_secs())]
    ttl_secs: u64,
    /// Seconds a new connection has to announce.
    #[arg(long, env = "PEER_SIGNAL_HANDSHAKE_TIMEOUT_SECS", default_value_t = SignalConfig::default().handshake_timeout.as_secs())]
    handshake_timeout_secs: u64,
    /// Realm sent to every node in SystemConfig (64 hex digits).
    #[arg(long, env = "PEER_SIGNAL_SYSTEM_REALM")]
    system_realm: Option<RealmID>,
    /// Most nodes in one list reply.
    #[arg(long, env = "PEER_SIGNAL_MAX_LIST_LEN", default_value_t = SignalConfig::default().max_list_len)]
    max_list_len: usize,
    /// Most open connections.
    #[arg(long, env = "PEER_SIGNAL_MAX_CONNECTIONS", default_value_t = SignalConfig::default().max_connections)]
    max_connections: usize,
    /// Most connections that have not announced yet; a newcomer beyond it takes the place of the
    /// oldest.
    #[arg(long, env = "PEER_SIGNAL_MAX_PENDING_HANDSHAKES", default_value_t = SignalConfig::default().max_pending_handshakes)]
    max_pending_handshakes: usize,
    /// Longest frame the server decodes, in bytes.
    #[arg(long, env = "PEER_SIGNAL_MAX_FRAME_SIZE", default_value_t = SignalConfig::default().max_frame_size)]
    max_frame_size: usize,
    /// Longest node name, in bytes.
    #[arg(long, env = "PEER_SIGNAL_MAX_NAME_LEN", default_value_t = SignalConfig::default().max_name_len)]
    max_name_len: usize,
    /// Longest node client string and stats version, in bytes.
    #[arg(long, env = "PEER_SIGNAL_MAX_CLIENT_LEN", default_value_t = SignalConfig::default().max_client_len)]
    max_client_len: usize,
    /// Longest SDP or ICE candidate, in bytes.
    #[arg(long, env = "PEER_SIGNAL_MAX_SETUP_LEN", default_value_t = SignalConfig::default().max_setup_len)]
    max_setup_len: usize,
    /// Most entries in one NodeStats message.
    #[arg(long, env = "PEER_SIGNAL_MAX_NODE_STATS", default_value_t = SignalConfig::default().max_node_stats)]
    max_node_stats: usize,
    /// Errors a connection may make before it is closed (failed announces not included).
    #[arg(long, env = "PEER_SIGNAL_MAX_ERRORS", default_value_t = SignalConfig::default().max_errors)]
    max_errors: u32,
    /// Failed announces a connection may make before it is closed.
    #[arg(long, env = "PEER_SIGNAL_MAX_ANNOUNCE_FAILURES", default_value_t = SignalConfig::default().max_announce_failures)]
    max_announce_failures: u32,
    /// Frames per second one connection may send, sustained.
    #[arg(long, env = "PEER_SIGNAL_FRAMES_PER_SEC", default_value_t = SignalConfig::default().frame_rate.per_sec)]
    frames_per_sec: u64,
    /// Frames one connection may send at once after a quiet spell.
    #[arg(long, env = "PEER_SIGNAL_FRAME_BURST", default_value_t = SignalConfig::default().frame_rate.burst)]
    frame_burst: u64,
    /// Bytes per second one connection may send, sustained.
    #[arg(long, env = "PEER_SIGNAL_BYTES_PER_SEC", default_value_t = SignalConfig::default().byte_rate.per_sec)]
    bytes_per_sec: u64,
    /// Bytes one connection may send at once after a quiet spell (at least --max-frame-size).
    #[arg(long, env = "PEER_SIGNAL_BYTE_BURST", default_value_t = SignalConfig::default().byte_rate.burst)]
    byte_burst: u64,
    /// No frame or byte rate limit per connection (for load tests, or behind a proxy that limits
    /// rates itself); overrides the four flags above.
    #[arg(long, env = "PEER_SIGNAL_UNLIMITED_RATES")]
    unlimited_rates: bool,
    /// Frames queued for one connection before it is closed as a slow reader.
    #[arg(long, env = "PEER_SIGNAL_MAX_SEND_BACKLOG", default_value_t = SignalConfig::default().max_send_backlog)]
    max_send_backlog: usize,
    /// Milliseconds between pushes of new joins to other nodes.
    #[arg(long, env = "PEER_SIGNAL_LIST_PUSH_INTERVAL_MS", default_value_t = SignalConfig::default().list_push_interval.as_millis() as u64)]
    list_push_interval_ms: u64,
    /// Nodes that receive each push of new joins (0: off).
    #[arg(long, env = "PEER_SIGNAL_LIST_PUSH_FANOUT", default_value_t = SignalConfig::default().list_push_fanout)]
    list_push_fanout: usize,
    /// What a full server does with a newcomer once every connection has announced: make room
    /// by closing the idlest node of the source (IPv4 address or IPv6 prefix) that holds most, or
    /// refuse the newcomer.
    #[arg(long, env = "PEER_SIGNAL_WHEN_FULL", value_enum, default_value_t = WhenFullArg::EvictFromLargestSource)]
    when_full: WhenFullArg,
    /// Leading bits of an IPv6 address that name its source, for the limits per source.
    #[arg(long, env = "PEER_SIGNAL_IPV6_SOURCE_PREFIX", default_value_t = SignalConfig::default().ipv6_source_prefix)]
    ipv6_source_prefix: u8,
    /// Most open TCP connections from one source (IPv4 address or IPv6 prefix); 0: no cap.
    /// Behind a reverse proxy, name it with --trusted-proxy so that its clients are counted, or
    /// set 0.
    #[arg(long, env = "PEER_SIGNAL_MAX_CONNECTIONS_PER_IP", default_value_t = WsConfig::default().max_connections_per_ip.unwrap_or(0))]
    max_connections_per_ip: usize,
    /// New connections accepted per second from one source, sustained; 0: no limit.
    #[arg(long, env = "PEER_SIGNAL_ACCEPTS_PER_SEC_PER_IP", default_value_t = WsConfig::default().accept_rate_per_ip.map_or(0, |(rate, _)| rate))]
    accepts_per_sec_per_ip: u32,
    /// New connections accepted at once from one source after a quiet spell.
    #[arg(long, env = "PEER_SIGNAL_ACCEPT_BURST_PER_IP", default_value_t = WsConfig::default().accept_rate_per_ip.map_or(1, |(_, burst)| burst))]
    accept_burst_per_ip: u32,
    /// Connections in their TLS or WebSocket handshake at once; a newcomer beyond it ends the
    /// oldest.
    #[arg(long, env = "PEER_SIGNAL_MAX_PENDING_UPGRADES", default_value_t = WsConfig::default().max_pending_upgrades)]
    max_pending_upgrades: usize,
    /// A reverse proxy whose X-Forwarded-For header names the client, for the per-IP limit
    /// (repeat the flag, or separate addresses with commas). Only these are believed.
    #[arg(long = "trusted-proxy", env = "PEER_SIGNAL_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// Seconds a client has for the WebSocket handshake.
    #[arg(long, env = "PEER_SIGNAL_WS_HANDSHAKE_TIMEOUT_SECS", default_value_t = WsConfig::default().handshake_timeout.as_secs())]
    ws_handshake_timeout_secs: u64,
    /// Seconds between server pings; two silent intervals close a connection.
    #[arg(long, env = "PEER_SIGNAL_PING_INTERVAL_SECS", default_value_t = WsConfig::default().ping_interval.as_secs())]
    ping_interval_secs: u64,
    /// Bytes read from a socket at a time (idle connections hold no read buffer).
    #[arg(long, env = "PEER_SIGNAL_READ_BUFFER_SIZE", default_value_t = WsConfig::default().read_buffer_size)]
    read_buffer_size: usize,
    /// Bytes queued for one connection before it is closed as a slow reader; past half of it,
    /// relays to the connection are refused with "destination busy".
    #[arg(long, env = "PEER_SIGNAL_SEND_BACKLOG_BYTES", default_value_t = WsConfig::default().send_backlog_bytes)]
    send_backlog_bytes: usize,
    /// Bytes queued for sending by all connections together; beyond it, the connections that
    /// hold most are closed.
    #[arg(long, env = "PEER_SIGNAL_SEND_BUDGET_BYTES", default_value_t = WsConfig::default().send_budget_bytes)]
    send_budget_bytes: usize,
    /// Bytes per second a connection must drain while more than --drain-floor bytes wait for it.
    #[arg(long, env = "PEER_SIGNAL_MIN_DRAIN_RATE", default_value_t = WsConfig::default().min_drain_rate)]
    min_drain_rate: usize,
    /// Queued bytes below which any progress satisfies the write deadline.
    #[arg(long, env = "PEER_SIGNAL_DRAIN_FLOOR", default_value_t = WsConfig::default().drain_floor)]
    drain_floor: usize,
    /// Seconds a write may make no progress before the connection is closed as a slow reader.
    #[arg(long, env = "PEER_SIGNAL_WRITE_TIMEOUT_SECS", default_value_t = WsConfig::default().write_timeout.as_secs())]
    write_timeout_secs: u64,
    /// Milliseconds a closing connection waits for the peer's close frame.
    #[arg(long, env = "PEER_SIGNAL_CLOSE_LINGER_MS", default_value_t = WsConfig::default().close_linger.as_millis() as u64)]
    close_linger_ms: u64,
    /// Seconds to wait, on SIGTERM or Ctrl-C, for clients to finish their closing handshake
    /// before the process exits.
    #[arg(long, env = "PEER_SIGNAL_DRAIN_SECS", default_value_t = 5)]
    drain_secs: u64,
    /// Runtime threads. With 1 (the default), the server and every connection share one thread,
    /// which avoids a cross-thread wake-up per frame and is the fastest on small machines.
    #[arg(long, env = "PEER_SIGNAL_THREADS", default_value_t = 1)]
    threads: usize,
    /// Form one network with the other instances that use this Redis, e.g.
    /// redis://127.0.0.1:6379 (rediss:// for TLS). Several, repeated or comma-separated, are
    /// independent servers the nodes are sharded over by id: every instance must list the same
    /// ones in the same order. Without it, the server stands alone.
    #[arg(long, env = "PEER_SIGNAL_REDIS", value_delimiter = ',')]
    redis: Vec<String>,
    /// This instance's name on Redis (letters, digits, '-', '_', '.'; at most 64); a random one
    /// when not given. Must differ between instances.
    #[arg(long, env = "PEER_SIGNAL_INSTANCE_ID")]
    instance_id: Option<String>,
    /// Remote nodes kept for lists.
    #[arg(long, env = "PEER_SIGNAL_MAX_REMOTE_POOL", default_value_t = ClusterConfig::default().max_remote_pool)]
    max_remote_pool: usize,
    /// Milliseconds an instance's nodes stay listed after its last heartbeat to Redis.
    #[arg(long, env = "PEER_SIGNAL_PRESENCE_TTL_MS", default_value_t = RedisConfig::default().presence_ttl.as_millis() as u64)]
    presence_ttl_ms: u64,
    /// Milliseconds between heartbeats to Redis (less than --presence-ttl-ms).
    #[arg(long, env = "PEER_SIGNAL_HEARTBEAT_MS", default_value_t = RedisConfig::default().heartbeat.as_millis() as u64)]
    heartbeat_ms: u64,
    /// Milliseconds between refreshes of the pool of remote nodes.
    #[arg(long, env = "PEER_SIGNAL_SAMPLE_INTERVAL_MS", default_value_t = RedisConfig::default().sample_interval.as_millis() as u64)]
    sample_interval_ms: u64,
    /// Milliseconds every Redis command may take before the instance counts Redis as down.
    #[arg(long, env = "PEER_SIGNAL_REDIS_TIMEOUT_MS", default_value_t = RedisConfig::default().command_timeout.as_millis() as u64)]
    redis_timeout_ms: u64,
    /// A TURN server for the nodes (`turn:host:port`, `turns:host:port`), repeatable or
    /// comma-separated: each signed-in node gets its own credentials for them (coturn's
    /// `use-auth-secret`). Needs --turn-secret-file.
    #[arg(
        long = "turn-uri",
        env = "PEER_SIGNAL_TURN_URI",
        value_delimiter = ',',
        requires = "turn_secret_file"
    )]
    turn_uris: Vec<String>,
    /// A STUN server handed out with the TURN servers, repeatable or comma-separated.
    #[arg(long = "turn-stun-uri", env = "PEER_SIGNAL_TURN_STUN_URI", value_delimiter = ',')]
    turn_stun_uris: Vec<String>,
    /// The file that holds the secret shared with the TURN server (coturn's
    /// `static-auth-secret`), on its first line; never on the command line. Read again on SIGHUP,
    /// to rotate it.
    #[arg(long, env = "PEER_SIGNAL_TURN_SECRET_FILE", requires = "turn_uris")]
    turn_secret_file: Option<PathBuf>,
    /// The file whose first line is the key the instances of one network share (at least 16
    /// bytes; `openssl rand -hex 32`): every message on the Redis bus and every presence entry
    /// is authenticated with it, and what fails is dropped and counted, so that whoever reaches
    /// Redis without it cannot close, list or speak for a node. Every instance needs the same.
    #[arg(long, env = "PEER_SIGNAL_CLUSTER_KEY_FILE", requires = "redis")]
    cluster_key_file: Option<PathBuf>,
    /// For `--redis rediss://…`: a PEM file of the certificates to trust instead of the
    /// system's roots (a private CA's).
    #[arg(long, env = "PEER_SIGNAL_REDIS_CA_FILE", requires = "redis")]
    redis_ca_file: Option<PathBuf>,
    /// Bound sign-ins: `off` (protocol v3 only), `accept` (bound announces beside v3 ones; fledger
    /// nodes sign in unchanged) or `require` (bound only: no sign-in with a v3 signature relayed
    /// from another server). Set-up messages signed by their senders are relayed as such.
    #[arg(long, env = "PEER_SIGNAL_BINDING", value_enum, default_value_t = BindingArg::Off)]
    binding: BindingArg,
    /// A name nodes dial this server by, for bound sign-ins (`wss://signal.example.org`,
    /// `ws://127.0.0.1:8765`), repeatable or comma-separated; canonical, as
    /// `peer_signal::server_id_of_url` makes it. Default: the --listen address, when it is not a
    /// wildcard.
    #[arg(long = "server-name", env = "PEER_SIGNAL_SERVER_NAME", value_delimiter = ',')]
    server_names: Vec<String>,
    /// How long TURN credentials last, in seconds; at least 4 × --ttl-secs.
    #[arg(long, env = "PEER_SIGNAL_TURN_TTL_SECS", default_value_t = 4 * 3600)]
    turn_ttl_secs: u64,
}

impl Args {
    fn signal_config(&self) -> SignalConfig {
        let mut config = SignalConfig::default()
            .with_ttl(Duration::from_secs(self.ttl_secs))
            .with_handshake_timeout(Duration::from_secs(self.handshake_timeout_secs))
            .with_max_list_len(self.max_list_len)
            .with_max_connections(self.max_connections)
            .with_when_full(match self.when_full {
                WhenFullArg::EvictFromLargestSource => WhenFull::EvictFromLargestSource,
                WhenFullArg::Refuse => WhenFull::Refuse,
            })
            .with_ipv6_source_prefix(self.ipv6_source_prefix)
            .with_max_pending_handshakes(self.max_pending_handshakes)
            .with_max_frame_size(self.max_frame_size)
            .with_max_name_len(self.max_name_len)
            .with_max_client_len(self.max_client_len)
            .with_max_setup_len(self.max_setup_len)
            .with_max_node_stats(self.max_node_stats)
            .with_max_errors(self.max_errors)
            .with_max_announce_failures(self.max_announce_failures)
            .with_frame_rate(self.rate(RateLimit::new(self.frames_per_sec, self.frame_burst)))
            .with_byte_rate(self.rate(RateLimit::new(self.bytes_per_sec, self.byte_burst)))
            .with_max_send_backlog(self.max_send_backlog)
            .with_list_push_interval(Duration::from_millis(self.list_push_interval_ms))
            .with_list_push_fanout(self.list_push_fanout);
        config.system_realm = self.system_realm;
        config
    }

    /// The bound sign-in, with the server's names.
    fn binding(&self, tls: bool) -> Result<Binding, Failure> {
        let mode = match self.binding {
            BindingArg::Off => return Ok(Binding::default()),
            BindingArg::Accept => BindingMode::Accept,
            BindingArg::Require => BindingMode::Require,
        };
        let mut names = self.server_names.clone();
        if names.is_empty() {
            if self.listen.ip().is_unspecified() {
                return Err(Failure::Config(format!(
                    "invalid configuration: --binding {} needs the name nodes dial this server by; pass --server-name \
                     wss://HOST",
                    if mode == BindingMode::Require { "require" } else { "accept" }
                )));
            }
            let scheme = if tls { "wss" } else { "ws" };
            names.extend(server_id_of_url(&format!("{scheme}://{}", self.listen)));
        }
        let mut binding = Binding::accept(names);
        binding.mode = mode;
        Ok(binding)
    }

    /// The TURN settings, with the secret read from its file.
    fn turn_config(&self) -> Result<Option<TurnConfig>, Failure> {
        let Some(file) = &self.turn_secret_file else { return Ok(None) };
        let secret = read_turn_secret(file)?;
        Ok(Some(
            TurnConfig::new(self.turn_uris.clone(), secret)
                .with_stun(self.turn_stun_uris.clone())
                .with_lifetime(Duration::from_secs(self.turn_ttl_secs)),
        ))
    }

    fn cluster_config(&self) -> ClusterConfig {
        ClusterConfig::default().with_max_remote_pool(self.max_remote_pool)
    }

    fn redis_config(&self, url: &str, config: &SignalConfig) -> RedisConfig {
        RedisConfig::default()
            .with_url(url)
            .with_instance(self.instance_id.clone().unwrap_or_default())
            .with_presence_ttl(Duration::from_millis(self.presence_ttl_ms))
            .with_heartbeat(Duration::from_millis(self.heartbeat_ms))
            .with_sample_interval(Duration::from_millis(self.sample_interval_ms))
            .with_command_timeout(Duration::from_millis(self.redis_timeout_ms))
            .with_max_sample(self.max_remote_pool)
            .with_max_message_size(config.max_frame_size.saturating_add(64))
    }

    fn rate(&self, limit: RateLimit) -> RateLimit {
        if self.unlimited_rates {
            RateLimit::UNLIMITED
        } else {
            limit
        }
    }

    fn ws_config(&self, config: &SignalConfig) -> WsConfig {
        let mut ws = WsConfig::for_server(config)
            .with_handshake_timeout(Duration::from_secs(self.ws_handshake_timeout_secs))
            .with_ping_interval(Duration::from_secs(self.ping_interval_secs))
            .with_read_buffer_size(self.read_buffer_size)
            .with_trusted_proxies(self.trusted_proxies.clone())
            .with_send_backlog_bytes(self.send_backlog_bytes)
            .with_write_timeout(Duration::from_secs(self.write_timeout_secs))
            .with_close_linger(Duration::from_millis(self.close_linger_ms))
            .with_max_pending_upgrades(self.max_pending_upgrades)
            .with_send_budget_bytes(self.send_budget_bytes)
            .with_min_drain_rate(self.min_drain_rate)
            .with_drain_floor(self.drain_floor);
        ws.max_connections = config.max_connections.saturating_add(self.max_pending_upgrades);
        ws.max_connections_per_ip = (self.max_connections_per_ip > 0).then_some(self.max_connections_per_ip);
        ws.accept_rate_per_ip = (self.accepts_per_sec_per_ip > 0)
            .then_some((self.accepts_per_sec_per_ip, self.accept_burst_per_ip));
        ws
    }
}

/// `--binding`: [`BindingMode`] as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BindingArg {
    /// Protocol v3 only.
    Off,
    /// Bound sign-ins beside v3 ones.
    Accept,
    /// Bound sign-ins only.
    Require,
}

/// `--when-full`: [`WhenFull`] as a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum WhenFullArg {
    /// Close the idlest node of the source that holds most, if it holds two more than the
    /// newcomer's.
    EvictFromLargestSource,
    /// Refuse the newcomer with "server full".
    Refuse,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// For people: one line of text per event.
    Text,
    /// For log pipelines: one JSON object per line, the event's fields at the top level.
    Json,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    raise_fd_limit(args.max_connections);
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let result = match runtime {
        Ok(runtime) => runtime.block_on(serve(args)),
        Err(e) => Err(Failure::Runtime(format!("cannot start the runtime: {e}"))),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("ws_server: {failure}");
            failure.exit_code()
        }
    }
}

/// Why the server could not run, as one sentence for the operator.
#[derive(Debug)]
enum Failure {
    /// The flags do not make a valid configuration (exit status 2, as for a usage error).
    Config(String),
    /// Something the server needs is not available (exit status 1).
    Runtime(String),
}

impl Failure {
    fn exit_code(&self) -> std::process::ExitCode {
        match self {
            Self::Config(_) => std::process::ExitCode::from(2),
            Self::Runtime(_) => std::process::ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(text) | Self::Runtime(text) => f.write_str(text),
        }
    }
}

impl Failure {
    /// A refused setting, named by the flag that sets it; `ws` for a field of `WsConfig`.
    fn config(error: ConfigError, ws: bool) -> Self {
        let mut text = error.to_string();
        let mut fields = vec![error.field()];
        if let ConfigError::Below { other, .. } = &error {
            fields.push(other);
        }
        for field in fields {
            if let Some(flag) = flag_of(field, ws) {
                text = text.replacen(field, flag, 1);
            }
        }
        Self::Config(format!("invalid configuration: {text}"))
    }
}

/// The flag that sets a field of `SignalConfig`, or with `ws` of `WsConfig`.
fn flag_of(field: &str, ws: bool) -> Option<&'static str> {
    Some(match field {
        "ttl" => "--ttl-secs",
        "handshake_timeout" if ws => "--ws-handshake-timeout-secs",
        "handshake_timeout" => "--handshake-timeout-secs",
        "max_list_len" => "--max-list-len",
        "max_connections" => "--max-connections",
        "max_pending_handshakes" => "--max-pending-handshakes",
        "max_frame_size" | "max_message_size" => "--max-frame-size",
        "max_name_len" => "--max-name-len",
        "max_client_len" => "--max-client-len",
        "max_setup_len" => "--max-setup-len",
        "max_node_stats" => "--max-node-stats",
        "frame_rate.burst" => "--frame-burst",
        "byte_rate.burst" => "--byte-burst",
        "max_send_backlog" | "send_backlog" => "--max-send-backlog",
        "list_push_interval" => "--list-push-interval-ms",
        "max_connections_per_ip" => "--max-connections-per-ip",
        "send_backlog_bytes" => "--send-backlog-bytes",
        "write_timeout" => "--write-timeout-secs",
        "close_linger" => "--close-linger-ms",
        "ping_interval" => "--ping-interval-secs",
        "read_buffer_size" => "--read-buffer-size",
        "max_remote_pool" | "max_sample" => "--max-remote-pool",
        "presence_ttl" => "--presence-ttl-ms",
        "heartbeat" => "--heartbeat-ms",
        "sample_interval" => "--sample-interval-ms",
        "command_timeout" => "--redis-timeout-ms",
        "instance" => "--instance-id",
        "turn.uris" => "--turn-uri",
        "turn.stun" => "--turn-stun-uri",
        "turn.secret" => "--turn-secret-file",
        "turn.lifetime" => "--turn-ttl-secs",
        "4 × ttl" => "4 × --ttl-secs",
        "binding.server_ids" => "--server-name",
        "cluster_key" => "--cluster-key-file",
        _ => return None,
    })
}

async fn serve(args: Args) -> Result<(), Failure> {
    // Before the server and the transport exist: they register their metrics when made.
    let prometheus = if args.metrics == "off" { None } else { Some(install_metrics()?) };
    let mut config = args.signal_config();
    config.turn = args.turn_config()?;
    config.binding = args.binding(args.tls_cert.is_some())?;
    let mut ws_config = args.ws_config(&config);
    // Checked before anything starts, so that a bad flag is one line and status 2.
    config.validate().map_err(|e| Failure::config(e, false))?;
    ws_config.validate().map_err(|e| Failure::config(e, true))?;
    // A list reply that cannot fit in the send backlog would close every node that asks for one.
    config.check_send_backlog(ws_config.send_backlog_bytes).map_err(|e| Failure::config(e, true))?;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::from_pem_files(cert, key)
            .map_err(|e| Failure::Runtime(format!("{e}; check --tls-cert and --tls-key")))?;
        tokio::spawn(reload_on_hangup(tls.clone(), cert.clone(), key.clone()));
        ws_config.tls = Some(tls);
    }
    let scheme = if ws_config.tls.is_some() { "wss" } else { "ws" };
    let listen = args.listen;
    let transport = WsTransport::bind(listen, ws_config).await.map_err(|e| {
        Failure::Runtime(format!("cannot listen for nodes on {listen}: {}; pass --listen ADDR", reason(&e)))
    })?;
    info!("signalling on {scheme}://{}", transport.local_addr());
    let ws_stats = transport.stats_handle();

    // With Redis the server is clustered and the driver carries a backplane: another type.
    let mut cluster = None;
    if let Some((url, shards)) = args.redis.split_first() {
        let cluster_config = args.cluster_config();
        cluster_config.validate().map_err(|e| Failure::config(e, false))?;
        let mut redis_config = args.redis_config(url, &config).with_shard_urls(shards.to_vec());
        if let Some(file) = &args.redis_ca_file {
            let roots = std::fs::read(file).map_err(|e| {
                Failure::Runtime(format!("cannot read {}: {}; check --redis-ca-file", file.display(), e))
            })?;
            redis_config.tls_roots = Some(roots);
        }
        if let Some(file) = &args.cluster_key_file {
            redis_config.cluster_key = Some(read_cluster_key(file)?);
        } else {
            warn!("the Redis bus is not authenticated: whoever reaches Redis can close and list nodes; pass --cluster-key-file");
        }
        redis_config.validate().map_err(|e| Failure::config(e, false))?;
        let server = SignalServer::with_cluster(config.clone(), cluster_config)
            .map_err(|e| Failure::config(e, false))?;
        let (backplane, redis) = RedisBackplane::start(redis_config).map_err(|e| match e {
            peer_signal::RedisError::Config(e) => Failure::config(e, false),
            other => Failure::Config(format!("{other}; pass --redis redis://HOST:PORT")),
        })?;
        info!(instance = redis.instance(), "instance {} on redis", redis.instance());
        cluster = Some((server, backplane, redis));
    }
    let redis = cluster.as_ref().map(|(_, _, redis)| redis.clone());
    let ticks = ticks(Duration::from_millis(250));
    let (run, handle, events): (_, DriverHandle, DriverEvents) = match cluster {
        Some((server, backplane, _)) => {
            let (driver, handle, events) = Driver::with_backplane(server, transport, backplane, 4096);
            (futures::future::Either::Left(driver.run(ticks)), handle, events)
        }
        None => {
            let server = SignalServer::new(config).map_err(|e| Failure::config(e, false))?;
            let (driver, handle, events) = Driver::new(server, transport, 4096);
            (futures::future::Either::Right(driver.run(ticks)), handle, events)
        }
    };
    let mut events = events;
    if args.metrics != "off" {
        let listener = TcpListener::bind(&args.metrics).await.map_err(|e| {
            Failure::Runtime(format!(
                "cannot listen for metrics on {}: {}; pass --metrics ADDR or --metrics off",
                args.metrics,
                reason(&e)
            ))
        })?;
        let local = listener.local_addr().map_err(|e| Failure::Runtime(format!("metrics listener: {e}")))?;
        info!("metrics on http://{local}/metrics");
        if let Some(prometheus) = prometheus {
            let probes = Probes {
                handle: handle.clone(),
                ws_stats: ws_stats.clone(),
                redis: redis.clone(),
                prometheus,
                process: metrics_process::Collector::default(),
            };
            tokio::spawn(serve_metrics(listener, probes));
        }
    }
    tokio::spawn(stop_on_signal(handle.clone()));
    if let Some(file) = args.turn_secret_file.clone() {
        tokio::spawn(reload_turn_on_hangup(handle.clone(), args.clone(), file));
    }
    tokio::spawn(async move {
        // Nodes that come and go as fast as they can sign cannot flood the log: at most 20 joins
        // and 20 leaves per 10 s at info, the rest at debug, counted in the next info line.
        let churn = LogThrottle::new(LogThrottle::LINES, LogThrottle::WINDOW);
        while let Some(event) = events.next().await {
            match event {
                SignalEvent::NewNode(node) => {
                    let addr = node.addr.map(|addr| addr.to_string()).unwrap_or_default();
                    let (id, name, conn) = (node.id, &node.info.name, node.conn);
                    match churn.admit("joined", std::time::Instant::now()) {
                        LogAdmit::Pass { suppressed: 0 } => info!(%id, ?name, %conn, %addr, "node joined"),
                        LogAdmit::Pass { suppressed } => {
                            info!(%id, ?name, %conn, %addr, suppressed, "node joined")
                        }
                        _ => debug!(%id, ?name, %conn, %addr, "node joined"),
                    }
                }
                SignalEvent::NodeLeft(id) => match churn.admit("left", std::time::Instant::now()) {
                    LogAdmit::Pass { suppressed: 0 } => info!(%id, "node left"),
                    LogAdmit::Pass { suppressed } => info!(%id, suppressed, "node left"),
                    _ => debug!(%id, "node left"),
                },
                SignalEvent::NodeStats { from, stats } => debug!(%from, entries = stats.len(), "node stats"),
                SignalEvent::Stopped => info!("stopped"),
                other => debug!(?other, "event"),
            }
        }
    });

    // A task of its own, so that on a multi-threaded runtime it runs on a worker like the
    // connections rather than on the thread that blocks on `main`.
    let server =
        tokio::spawn(run).await.map_err(|e| Failure::Runtime(format!("the server task failed: {e}")))?;
    if let Some(redis) = &redis {
        // Off the bus at once, rather than when the presence expires.
        redis.shutdown().await;
    }
    // Every connection was sent its close; give them time to finish the closing handshake.
    let drain = Duration::from_secs(args.drain_secs);
    match tokio::time::timeout(drain, ws_stats.all_ended()).await {
        Ok(()) => info!("every connection closed"),
        Err(_) => warn!(left = ws_stats.get().connection_tasks, "drain timeout: closing the rest"),
    }
    info!(stats = ?server.stats(), "bye");
    Ok(())
}

/// An I/O error as the end of a sentence: "address in use", not "Os { code: 98, … }".
fn reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => "address in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "no such local address".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

/// Room for `connections` sockets plus some: the soft limit up to the hard one, and as root both.
fn raise_fd_limit(connections: usize) {
    let want = u64::try_from(connections).unwrap_or(u64::MAX).saturating_add(1024);
    if rlimit::Resource::NOFILE.get().is_ok_and(|(soft, _)| soft >= want) {
        return;
    }
    if rlimit::Resource::NOFILE.set(want, want).is_err() {
        match rlimit::increase_nofile_limit(want) {
            Ok(got) if got < want => warn!("file descriptors limited to {got}: fewer connections fit"),
            Ok(_) => {}
            Err(e) => warn!("cannot raise the file descriptor limit: {e}"),
        }
    }
}

/// Reads the certificate and key again on each SIGHUP; a pair that still does not load after a
/// few attempts leaves the certificate in use as it is.
async fn reload_on_hangup(tls: ServerTls, cert: PathBuf, key: PathBuf) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(e) => return warn!("cannot listen for SIGHUP, the certificate will not be reloaded: {e}"),
        };
        while hangups.recv().await.is_some() {
            // A renewal may be writing the pair right now: a pair that does not load yet is read
            // again, a few times, before the certificate in use is kept.
            let (attempts, delay) = (ServerTls::RELOAD_ATTEMPTS, ServerTls::RELOAD_DELAY);
            match tls.reload_pem_files_retrying(&cert, &key, attempts, delay).await {
                Ok(_) => info!(cert = %cert.display(), "SIGHUP: certificate reloaded for new connections"),
                Err(e) => warn!("SIGHUP: keeping the certificate in use after {attempts} attempts: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tls, cert, key);
}

/// Reads the cluster key from the first line of `file`.
fn read_cluster_key(file: &std::path::Path) -> Result<ClusterKey, Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::Runtime(format!(
            "cannot read the cluster key from {}: {}; check --cluster-key-file",
            file.display(),
            e
        ))
    })?;
    Ok(ClusterKey::new(text.lines().next().unwrap_or_default().trim()))
}

/// Reads the TURN secret from the first line of `file`.
fn read_turn_secret(file: &std::path::Path) -> Result<TurnSecret, Failure> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Failure::Runtime(format!(
            "cannot read the TURN secret from {}: {}; check --turn-secret-file",
            file.display(),
            e
        ))
    })?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        return Err(Failure::Config(format!(
            "invalid configuration: the TURN secret file {} is empty; put the secret on its first line",
            file.display()
        )));
    }
    Ok(TurnSecret::new(secret))
}

/// Reads the TURN secret again on each SIGHUP and hands the server the new setting: nodes get
/// credentials from the new secret from then on. A file that does not read keeps the old one.
async fn reload_turn_on_hangup(handle: DriverHandle, args: Args, file: PathBuf) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(e) => return warn!("cannot listen for SIGHUP, the TURN secret will not be reloaded: {e}"),
        };
        while hangups.recv().await.is_some() {
            match args.turn_config() {
                Ok(turn) => match handle.set_turn(turn).await {
                    Ok(()) => info!(file = %file.display(), "SIGHUP: TURN secret reloaded"),
                    Err(e) => warn!("SIGHUP: keeping the TURN secret in use: {e}"),
                },
                Err(e) => warn!("SIGHUP: keeping the TURN secret in use: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (handle, args, file);
}

async fn stop_on_signal(handle: DriverHandle) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    let signal = tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        () = terminate => "SIGTERM",
    };
    // Stopped before it is said, so that whoever reads the line sees the server stopping.
    handle.stop();
    info!("{signal}: closing every connection");
}

/// Histogram buckets, in seconds. An announce takes a round trip and a signature check:
/// milliseconds on a good link, seconds on a bad one, at most the handshake timeout.
const ANNOUNCE_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// A frame waits for the connection's task to run (microseconds), then for a slow reader's socket
/// to drain (up to the write timeout).
const SEND_QUEUE_BUCKETS: &[f64] = &[
    0.000_05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Installs the Prometheus recorder for the library's metrics, with buckets for its histograms,
/// and sets the build information.
fn install_metrics() -> Result<PrometheusHandle, Failure> {
    let histogram = |name: &str| Matcher::Full(name.to_string());
    let prometheus = PrometheusBuilder::new()
        .set_buckets_for_metric(histogram("peer_signal_announce_duration_seconds"), ANNOUNCE_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(histogram("peer_signal_ws_send_queue_seconds"), SEND_QUEUE_BUCKETS)
        })
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| Failure::Runtime(format!("cannot collect metrics: {e}")))?;
    metrics::describe_gauge!("peer_signal_build_info", "Always 1: the server's version is in the label.");
    metrics::gauge!("peer_signal_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics_process::Collector::default().describe();
    // Histograms hold their samples until they are folded into buckets: at each scrape, and at
    // least this often, so that memory stays bounded without scrapes.
    let upkeep = prometheus.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(prometheus)
}

/// What `/ready` and `/metrics` read.
#[derive(Clone)]
struct Probes {
    handle: DriverHandle,
    ws_stats: WsStatsHandle,
    redis: Option<RedisHandle>,
    prometheus: PrometheusHandle,
    process: metrics_process::Collector,
}

/// Metrics connections served at once; more are closed at once.
const MAX_METRICS_CONNECTIONS: usize = 64;

/// Serves `GET /health`, `/ready` and `/metrics` over HTTP/1.1 (hyper): one request per
/// connection, a request head of at most 8 KiB that must arrive within 5 s, 10 s for all of it.
async fn serve_metrics(listener: TcpListener, probes: Probes) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};

    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_METRICS_CONNECTIONS));
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(10);
                stream
            }
            Err(e) => {
                // Out of descriptors, typically: wait for some to be freed rather than spin.
                debug!("metrics accept failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let probes = probes.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = probes.answer(&request);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .max_buf_size(8192)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), connection).await;
            drop(slot);
        });
    }
}

impl Probes {
    fn answer<B>(&self, request: &hyper::Request<B>) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
        use hyper::StatusCode;

        const TEXT: &str = "text/plain; charset=utf-8";
        let (status, content_type, body) = match (request.method(), request.uri().path()) {
            (&hyper::Method::GET, "/health") => (StatusCode::OK, TEXT, "ok\n".to_string()),
            (&hyper::Method::GET, "/ready") => match &self.redis {
                // Draining after SIGTERM: the process is on its way out.
                _ if self.handle.is_stopping() => {
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, "draining\n".into())
                }
                // Cut off from the other instances (from every Redis server: with one of several
                // down, only its share of the nodes is unreachable, and the instance serves the
                // rest): newcomers are better served elsewhere. The nodes here are still served.
                Some(redis) if redis.shards_up() == 0 => {
                    (StatusCode::SERVICE_UNAVAILABLE, TEXT, "redis unreachable\n".into())
                }
                _ => (StatusCode::OK, TEXT, "ready\n".into()),
            },
            (&hyper::Method::GET, "/metrics") => {
                // The transport's and the backplane's counters are snapshots; the core's are live.
                self.ws_stats.publish_metrics();
                if let Some(redis) = &self.redis {
                    redis.publish_metrics();
                }
                self.process.collect();
                (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", self.prometheus.render())
            }
            (&hyper::Method::GET, _) => (StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
            _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into()),
        };
        let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
        response
    }
}
