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
//! Several instances form one network through Redis:
//!
//! ```sh
//! cargo run --release --example ws_server -- --listen 0.0.0.0:8765 --metrics 127.0.0.1:9765 --redis redis://127.0.0.1:6379
//! cargo run --release --example ws_server -- --listen 0.0.0.0:8766 --metrics 127.0.0.1:9766 --redis redis://127.0.0.1:6379
//! ```
//!
//! `/ready` answers 503 while such an instance cannot reach Redis (it keeps serving its own
//! nodes meanwhile), so that a load balancer sends newcomers elsewhere.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::ticks;
use futures::StreamExt;
use peer_signal::{
    ClusterConfig, ConfigError, Driver, DriverEvents, DriverHandle, RateLimit, RealmID, RedisBackplane,
    RedisConfig, RedisHandle, RedisStats, ServerStats, ServerTls, SignalConfig, SignalEvent, SignalServer,
    WsConfig, WsStats, WsStatsHandle, WsTransport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// A fledger-compatible signalling server over WebSocket.
#[derive(Parser, Debug)]
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
    /// Where /health and /metrics are served; "off" serves neither.
    #[arg(long, env = "PEER_SIGNAL_METRICS", default_value = "127.0.0.1:9765")]
    metrics: String,
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
    /// Most open TCP connections from one IPv4 address or IPv6 /64 (default: no cap; leave it
    /// off behind a reverse proxy, where every connection comes from the proxy).
    #[arg(long, env = "PEER_SIGNAL_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
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
    /// redis://127.0.0.1:6379. Without it, the server stands alone.
    #[arg(long, env = "PEER_SIGNAL_REDIS")]
    redis: Option<String>,
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
}

impl Args {
    fn signal_config(&self) -> SignalConfig {
        let mut config = SignalConfig::default()
            .with_ttl(Duration::from_secs(self.ttl_secs))
            .with_handshake_timeout(Duration::from_secs(self.handshake_timeout_secs))
            .with_max_list_len(self.max_list_len)
            .with_max_connections(self.max_connections)
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
            .with_close_linger(Duration::from_millis(self.close_linger_ms));
        ws.max_connections_per_ip = self.max_connections_per_ip;
        ws
    }
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
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
        _ => return None,
    })
}

async fn serve(args: Args) -> Result<(), Failure> {
    let config = args.signal_config();
    let mut ws_config = args.ws_config(&config);
    // Checked before anything starts, so that a bad flag is one line and status 2.
    config.validate().map_err(|e| Failure::config(e, false))?;
    ws_config.validate().map_err(|e| Failure::config(e, true))?;
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
    if let Some(url) = &args.redis {
        let cluster_config = args.cluster_config();
        cluster_config.validate().map_err(|e| Failure::config(e, false))?;
        let redis_config = args.redis_config(url, &config);
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
        tokio::spawn(serve_metrics(listener, handle.clone(), ws_stats.clone(), redis.clone()));
    }
    tokio::spawn(stop_on_signal(handle.clone()));
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                SignalEvent::NewNode(node) => {
                    let addr = node.addr.map(|addr| addr.to_string()).unwrap_or_default();
                    info!(id = %node.id, name = %node.info.name, conn = %node.conn, %addr, "node joined");
                }
                SignalEvent::NodeLeft(id) => info!(%id, "node left"),
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

/// Reads the certificate and key again on each SIGHUP; a file that does not parse leaves the
/// certificate in use as it is.
async fn reload_on_hangup(tls: ServerTls, cert: PathBuf, key: PathBuf) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => signal,
            Err(e) => return warn!("cannot listen for SIGHUP, the certificate will not be reloaded: {e}"),
        };
        while hangups.recv().await.is_some() {
            match tls.reload_pem_files(&cert, &key) {
                Ok(()) => info!(cert = %cert.display(), "SIGHUP: certificate reloaded for new connections"),
                Err(e) => warn!("SIGHUP: keeping the certificate in use: {e}"),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tls, cert, key);
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

/// A minimal HTTP/1.1 responder for `GET /health` and `GET /metrics`: one request per
/// connection, a bounded request head, a deadline.
async fn serve_metrics(
    listener: TcpListener,
    handle: DriverHandle,
    ws_stats: WsStatsHandle,
    redis: Option<RedisHandle>,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let mut stream = match listener.accept().await {
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
        let (handle, ws_stats, redis) = (handle.clone(), ws_stats.clone(), redis.clone());
        tokio::spawn(async move {
            let mut head = Vec::with_capacity(512);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
                    }
                }
            });
            if read.await.is_err() {
                return;
            }
            let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
            let (status, content_type, body) = match request_line {
                line if line.starts_with(b"GET /health ") => ("200 OK", "text/plain", "ok\n".to_string()),
                // Not ready while cut off from the other instances: newcomers are better served
                // elsewhere. The nodes already here are still served.
                line if line.starts_with(b"GET /ready ") => match &redis {
                    // Draining after SIGTERM: the process is on its way out.
                    _ if handle.is_stopping() => {
                        ("503 Service Unavailable", "text/plain", "draining\n".to_string())
                    }
                    Some(redis) if !redis.is_up() => {
                        ("503 Service Unavailable", "text/plain", "redis unreachable\n".to_string())
                    }
                    _ => ("200 OK", "text/plain", "ready\n".to_string()),
                },
                line if line.starts_with(b"GET /metrics ") => (
                    "200 OK",
                    "text/plain; version=0.0.4",
                    prometheus(
                        &handle.stats(),
                        handle.dropped_events(),
                        &ws_stats.get(),
                        redis.as_ref().map(RedisHandle::stats).as_ref(),
                    ),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(response.as_bytes())).await;
        });
    }
}

fn prometheus(stats: &ServerStats, dropped_events: u64, ws: &WsStats, redis: Option<&RedisStats>) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        out.push_str(&format!("# HELP peer_signal_{name} {help}\n# TYPE peer_signal_{name} {kind}\npeer_signal_{name} {value}\n"));
    };
    metric("connections", "gauge", "Open connections, announced or not.", stats.connections as u64);
    metric("nodes", "gauge", "Announced nodes.", stats.nodes as u64);
    metric("frames_in_total", "counter", "Frames received.", stats.frames_in);
    metric("bytes_in_total", "counter", "Bytes received.", stats.bytes_in);
    metric("frames_out_total", "counter", "Frames sent.", stats.frames_out);
    metric("bytes_out_total", "counter", "Bytes sent.", stats.bytes_out);
    metric("relays_total", "counter", "PeerSetup messages relayed.", stats.relays);
    metric("joins_total", "counter", "Successful announces.", stats.joins);
    metric(
        "evictions_total",
        "counter",
        "Nodes closed for being idle longer than the TTL.",
        stats.errors.get("idle_timeout").copied().unwrap_or(0),
    );
    metric(
        "dropped_events_total",
        "counter",
        "Application events dropped because nobody read them.",
        dropped_events,
    );
    metric("ws_connection_tasks", "gauge", "WebSocket connection tasks alive.", ws.connection_tasks);
    metric("ws_accepted_total", "counter", "TCP connections accepted.", ws.accepted);
    metric("ws_refused_total", "counter", "TCP connections refused: too many open.", ws.refused);
    metric(
        "ws_refused_per_ip_total",
        "counter",
        "TCP connections refused: too many open from one address.",
        ws.refused_per_ip,
    );
    metric(
        "ws_failed_handshakes_total",
        "counter",
        "WebSocket handshakes that failed or timed out.",
        ws.failed_handshakes,
    );
    metric(
        "ws_slow_readers_total",
        "counter",
        "Connections closed for reading too slowly (full queue or write timeout).",
        ws.slow_readers,
    );
    metric(
        "ws_protocol_violations_total",
        "counter",
        "Connections closed for breaking the WebSocket protocol.",
        ws.protocol_violations,
    );
    metric(
        "ws_clean_closes_total",
        "counter",
        "Connections whose closing handshake completed.",
        ws.clean_closes,
    );
    metric("ws_oversize_total", "counter", "Connections closed for an oversize message.", ws.oversize);
    metric(
        "ws_ping_timeouts_total",
        "counter",
        "Connections closed for silence past two pings.",
        ws.ping_timeouts,
    );
    if let (Some(cluster), Some(redis)) = (&stats.cluster, redis) {
        metric(
            "cluster_up",
            "gauge",
            "1 while Redis answers and every local node is registered.",
            u64::from(redis.up),
        );
        metric("cluster_downs_total", "counter", "Times Redis became unreachable.", redis.downs);
        metric(
            "cluster_relays_out_total",
            "counter",
            "Set-ups handed to other instances.",
            cluster.relays_out,
        );
        metric(
            "cluster_relays_in_total",
            "counter",
            "Set-ups from other instances delivered here.",
            cluster.relays_in,
        );
        metric(
            "cluster_undeliverable_total",
            "counter",
            "Set-ups from local nodes that reached no instance.",
            cluster.undeliverable,
        );
        metric(
            "cluster_bounced_total",
            "counter",
            "Set-ups from other instances for nodes gone or busy here.",
            cluster.bounced,
        );
        metric(
            "cluster_rejected_total",
            "counter",
            "Bus inputs refused by the checks.",
            cluster.rejected + redis.rejected,
        );
        metric(
            "cluster_taken_over_total",
            "counter",
            "Local nodes replaced by a newer connection elsewhere.",
            cluster.taken_over,
        );
        metric("cluster_pool", "gauge", "Remote nodes in the pool for lists.", cluster.pool as u64);
        metric(
            "cluster_remote_nodes",
            "gauge",
            "Nodes on other instances, as last sampled.",
            cluster.remote_nodes,
        );
        metric("cluster_presence", "gauge", "Local nodes registered in Redis.", redis.registered as u64);
        metric(
            "cluster_dropped_out_total",
            "counter",
            "Messages dropped: the queue to Redis was full.",
            redis.dropped_out,
        );
        metric(
            "cluster_dropped_in_total",
            "counter",
            "Messages dropped: the queue to the server was full.",
            redis.dropped_in,
        );
    }
    out.push_str("# HELP peer_signal_errors_total Error replies, by reason.\n# TYPE peer_signal_errors_total counter\n");
    for (reason, count) in &stats.errors {
        out.push_str(&format!("peer_signal_errors_total{{reason=\"{reason}\"}} {count}\n"));
    }
    out
}
