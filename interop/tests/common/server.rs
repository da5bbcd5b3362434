//! This repository's `ws_server` example as a child process on a free loopback port.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The realm the server hands out in `SystemConfig`, so that the test sees it arrive.
pub const SYSTEM_REALM: &str = "5ea1ed00000000000000000000000000000000000000000000000000000000a1";

/// How long the server may take to accept TCP connections after it is spawned.
const READY_WITHIN: Duration = Duration::from_secs(10);
const READY_POLL: Duration = Duration::from_millis(20);

/// A running `ws_server`, killed when dropped.
pub struct WsServer {
    child: Child,
    addr: SocketAddr,
}

impl WsServer {
    /// Starts the server on a free port of 127.0.0.1 and returns once it accepts connections.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// As [`start`](Self::start), with more flags.
    pub fn start_with(extra: &[&str]) -> Self {
        let addr = free_loopback_addr();
        let mut command = Command::new(ws_server_binary());
        command
            .args(["--listen", &addr.to_string(), "--metrics", "off", "--system-realm", SYSTEM_REALM])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        let child = command.spawn().expect("spawn ws_server");
        let mut server = Self { child, addr };
        server.wait_ready();
        server
    }

    /// Where fledger nodes connect.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    /// Polls the port until a TCP connect succeeds; the listener is bound before it accepts.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child.try_wait().expect("ws_server status") {
                panic!("ws_server exited before it was ready: {status}");
            }
            if TcpStream::connect_timeout(&self.addr, READY_POLL).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ws_server not listening on {} after {READY_WITHIN:?}",
                self.addr
            );
            std::thread::sleep(READY_POLL);
        }
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nobody listens on right now. Another process could take it before the server binds it;
/// on a test machine that is rare enough, and the server then fails loudly in `wait_ready`.
fn free_loopback_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address")
}

/// `PEER_SIGNAL_WS_SERVER` if set, else the debug build of the example, built once per process.
fn ws_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PEER_SIGNAL_WS_SERVER") {
        return PathBuf::from(path);
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_ws_server).clone()
}

fn build_ws_server() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The repository's own target directory, whatever this crate is built into.
    let status = Command::new(cargo)
        .args(["build", "--example", "ws_server"])
        .current_dir(root)
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("run cargo build --example ws_server");
    assert!(status.success(), "cargo build --example ws_server failed: {status}");
    let binary = root.join("target/debug/examples/ws_server");
    assert!(binary.is_file(), "no ws_server at {}", binary.display());
    binary
}
