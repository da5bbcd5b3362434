//! A node in a web page: signs in at `ws_server`, lists the other nodes, and opens a real
//! `RTCDataChannel` to one of them through the server; or, in the hosted variant, hosts
//! signalling for its neighbours over data channels, or signs in at a neighbour's and opens a
//! channel through it once the server is gone. `index.html` loads it; the page's address says
//! what it does (see `page.rs`). Build and serve it as the README's "In the browser" says.
//!
//! It builds for `wasm32-unknown-unknown` only (`--features browser`); on other targets it is
//! empty.

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
mod page;
