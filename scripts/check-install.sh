#!/usr/bin/env bash
# What an operator does to deploy: `cargo install` the server, then the systemd unit of
# deploy/, checked by systemd itself against the installed binary. CI runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
# The shared target folder keeps this from building everything a second time; --debug for the
# same reason (operators leave it out).
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}" \
    cargo install --locked --debug --path . --example ws_server --root "$root"
"$root/bin/ws_server" --version
sed "s|^ExecStart=/usr/local/bin/ws_server|ExecStart=$root/bin/ws_server|" deploy/peer-signal.service \
    > "$root/peer-signal.service"
grep -q "^ExecStart=$root/bin/ws_server" "$root/peer-signal.service"
systemd-analyze verify "$root/peer-signal.service"
echo "install and unit: ok"
