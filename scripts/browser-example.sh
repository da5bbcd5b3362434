#!/usr/bin/env bash
# The browser example (examples/browser/) in headless Chromium pages, driven over WebDriver by
# scripts/browser_example.py: two pages open a data channel through ws_server, then three pages
# do it through hosted signalling after the server is gone. Builds the page's wasm (release) and
# binds it with wasm-bindgen-cli, serves it on loopback, and prints what each page logged and the
# size of the .wasm file. Needs what scripts/browser-tests.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}

cargo build --example ws_server
# Optimised for size: a page downloads it.
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
    cargo build --release --example browser --target wasm32-unknown-unknown --features browser
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
cp examples/browser/index.html "$site/"
wasm-bindgen --target web --no-typescript --out-dir "$site/pkg" \
    "$target/wasm32-unknown-unknown/release/examples/browser.wasm"
size() {
    echo "$(stat -c %s "$1") bytes, $(gzip -9 -c "$1" | wc -c) gzipped"
}
echo "browser_bg.wasm: $(size "$site/pkg/browser_bg.wasm")"
# With binaryen, also its size optimised for size (the pages load the one above).
if command -v wasm-opt >/dev/null 2>&1; then
    wasm-opt -Oz --all-features "$site/pkg/browser_bg.wasm" -o "$site/opt.wasm"
    echo "browser_bg.wasm after wasm-opt -Oz: $(size "$site/opt.wasm")"
fi

python3 scripts/browser_example.py --site "$site" --ws-server "$target/debug/examples/ws_server" \
    --chromedriver "${CHROMEDRIVER:-$(command -v chromedriver)}"
