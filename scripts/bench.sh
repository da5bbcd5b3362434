#!/usr/bin/env bash
# Every WebSocket figure of BENCHMARKS.md: starts `ws_server` on loopback, runs `loadgen`
# scenarios against it, appends their JSON summaries to bench-results/ws.jsonl, then plots them.
# Takes about five minutes. Needs python3 with matplotlib for the plot (`pip install matplotlib`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --examples
out=bench-results
mkdir -p "$out"
: > "$out/ws.jsonl"
addr=127.0.0.1:18765

# run "<server flags>" <loadgen args…>: a fresh server for each scenario.
run() {
    local flags=$1
    shift
    # shellcheck disable=SC2086
    ./target/release/examples/ws_server --listen "$addr" --metrics off $flags > /dev/null 2>&1 &
    local pid=$!
    sleep 0.5
    ./target/release/examples/loadgen --server "$addr" --server-pid "$pid" "$@" | tee -a "$out/ws.jsonl"
    kill "$pid"
    wait "$pid" || true
}

for pairs in 10 50 200; do
    run "--unlimited-rates" --label "relay-json-$pairs" relay --pairs "$pairs" --window 8 --secs 5
done
run "--unlimited-rates" --bincode --label relay-bincode-50 relay --pairs 50 --window 8 --secs 5
# Latency at half of the measured maximum (the 50-pair JSON run).
half=$(python3 -c "import json; print(int([json.loads(l) for l in open('$out/ws.jsonl') if '\"relay-json-50\"' in l][0]['relays_per_s'] / 2))")
run "--unlimited-rates" --label relay-json-50-half relay --pairs 50 --window 8 --secs 5 --rate "$half"

for conns in 1000 5000 10000; do
    run "" --label "join-$conns" join --conns "$conns"
done
run "--max-list-len 20" --label join-10000-list20 join --conns 10000
run "" --label idle-10000 idle --conns 10000 --secs 2
# As many as the process may hold: this sandbox fixes the hard file-descriptor limit at 20,000.
run "" --source-ips 8 --label idle-19000 idle --conns 19000 --secs 2
run "" --source-ips 8 --label churn churn --workers 64 --secs 10

python3 scripts/plot.py "$out/ws.jsonl" "$out/scaling.png"
