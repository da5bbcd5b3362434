//! Shared by the interop tests: the server process, fledger nodes, and a runtime that survives
//! fledger's client.

#![allow(dead_code)]

pub mod node;
pub mod server;

use std::future::Future;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Runs a scenario on a multi-threaded tokio runtime, fledger's native runtime, within `limit`.
///
/// flarch 0.10's WebSocket client keeps polling its read half after the server's Close: the
/// stream then returns `None` at once, forever, so that task spins on a worker thread and never
/// yields. A runtime dropped the usual way waits for that thread and hangs, so the runtime gets
/// spare workers and is shut down without waiting; the spinning thread ends with the process.
pub fn run<F: Future<Output = ()>>(limit: Duration, scenario: F) {
    // fledger logs through `log`; silent unless RUST_LOG asks (RUST_LOG=flarch=warn shows its
    // client's reconnects).
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off"))
        .is_test(true)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
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
