#!/usr/bin/env bash
# The tests in a browser (tests/browser.rs and tests/browser_links.rs, headless Chromium through
# chromedriver): starts the ws_server example and two native nodes (the ws_client example, one
# speaking JSON and one bincode) on loopback, compiles the tests with the server's URL, runs
# them, and stops what it started. Needs wasm-bindgen-cli of the wasm-bindgen crate's version, chromium and
# chromium-driver (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

cargo build --example ws_server --example ws_client
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Waits up to 30 s for a line matching $2 in the file $1, and prints it.
await_line() {
    for _ in $(seq 300); do
        if line=$(grep -m1 -E "$2" "$1"); then
            echo "$line"
            return 0
        fi
        sleep 0.1
    done
    echo "no line matching '$2' in $1 within 30 s:" >&2
    cat "$1" >&2
    return 1
}

NO_COLOR=1 RUST_LOG=info "$target/debug/examples/ws_server" --listen 127.0.0.1:0 --metrics off \
    >"$work/server.log" 2>&1 &
pids+=($!)
url=$(await_line "$work/server.log" 'signalling on ws://' | grep -oE 'ws://[0-9.]+:[0-9]+')
echo "ws_server at $url"

for node in native-json native-bincode; do
    flags=()
    [ "$node" = native-bincode ] && flags+=(--bincode)
    "$target/debug/examples/ws_client" --url "$url" --name "$node" --exit-after 600 "${flags[@]}" \
        >"$work/$node.log" 2>&1 &
    pids+=($!)
    await_line "$work/$node.log" '^connected to'
done

PEER_SIGNAL_BROWSER_TEST_URL="$url" \
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    CHROMEDRIVER=${CHROMEDRIVER:-$(command -v chromedriver)} \
    cargo test --target wasm32-unknown-unknown --features browser --test browser --test browser_links -- --nocapture

for node in native-json native-bincode; do
    echo "--- what $node printed"
    cat "$work/$node.log"
done
