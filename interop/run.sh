#!/usr/bin/env bash
# fledger 0.10's own node code against this repository's ws_server (see README.md).
# Builds the server example in the repository root, then runs this crate's tests with it.
# Arguments go to `cargo test`.
set -euo pipefail
interop="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$interop")"
target="$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")"

(cd "$root" && cargo build --example ws_server)
export PEER_SIGNAL_WS_SERVER="$target/debug/examples/ws_server"
cd "$interop"
cargo test --locked "$@"
