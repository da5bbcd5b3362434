//! Shared by the interop tests: the server process, fledger nodes, real WebRTC peers, and the
//! runtimes they run on.

#![allow(dead_code)]

pub mod coturn;
pub mod node;
pub mod rtc;
pub mod server;

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Runs a scenario on a multi-threaded tokio runtime, fledger's native runtime, within `limit`.
/// The runtime is shut down without waiting for fledger's tasks, which never end by themselves.
pub fn run<F: Future<Output = ()>>(limit: Duration, scenario: F) {
    // fledger logs through `log`; silent unless RUST_LOG asks (RUST_LOG=flarch=warn shows its
    // client's reconnects).
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .is_test(true)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            tokio::time::timeout(limit, scenario).await.expect("scenario exceeded its time limit")
        })
    }));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        resume_unwind(panic);
    }
}

/// A runtime of its own for a node that closes its WebSocket.
///
/// After the server's Close, flarch 0.10's client keeps polling the finished stream, which
/// returns `None` at once, forever: that task spins on its worker thread and never yields. The
/// tasks and timers that worker holds starve with it, so the node that leaves must not share a
/// runtime with the rest of the test, and its runtime is dropped without waiting for that thread,
/// which ends with the process.
pub struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("leaving-node")
            .enable_all()
            .build()
            .expect("tokio runtime");
        Self(Some(runtime))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime").handle()
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
