#!/usr/bin/env bash
# Every WebSocket figure of BENCHMARKS.md: runs `loadgen` scenarios against fresh `ws_server`
# processes on loopback and, side by side with the same load, against fresh matchbox_server 0.15
# processes; appends their JSON summaries to bench-results/ws.jsonl, plots them, and prints the
# comparison table (scripts/compare.py). Takes about three minutes once built; the first time also
# builds the server and the tools and installs matchbox_server into bench-tools/ (git-ignored). Needs python3
# with matplotlib for the plot (`pip install matplotlib`).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example ws_server -p peer-signal -p peer-signal-tools
bin=${CARGO_TARGET_DIR:-target}/release
server=$bin/examples/ws_server
mbx=bench-tools/bin/matchbox_server
if [ ! -x "$mbx" ]; then
    # In a temporary target folder of its own: only the binary stays.
    env -u CARGO_TARGET_DIR cargo install matchbox_server --version 0.15.0 --locked --root bench-tools
fi
out=bench-results
mkdir -p "$out"
: > "$out/ws.jsonl"
port=18765
addr=127.0.0.1:$port
# matchbox_server keeps the soft limit it is given; idle-10000 needs more than the usual 1024.
ulimit -n "$(ulimit -Hn)"

# Returns once something listens on $port, polling /proc/net/tcp (no connection is made), or fails
# when the server exits or after 10 s.
wait_listening() {
    local pid=$1 hex
    hex=$(printf ':%04X 00000000:0000 0A' "$port")
    for _ in $(seq 200); do
        if grep -q "$hex" /proc/net/tcp; then
            return 0
        fi
        kill -0 "$pid" 2> /dev/null || { echo "the server exited before listening" >&2; return 1; }
        sleep 0.05
    done
    echo "nothing listens on $addr after 10 s" >&2
    kill "$pid"
    return 1
}

# run <peer-signal|matchbox> "<ws_server flags>" <loadgen args…>: a fresh server for one scenario.
# Both servers log nothing and run on one runtime thread (ws_server's default), so that each
# measures its signalling, not its logging, on the same share of the machine.
run() {
    local protocol=$1 flags=$2
    shift 2
    if [ "$protocol" = matchbox ]; then
        RUST_LOG=off TOKIO_WORKER_THREADS=1 "$mbx" "$addr" > /dev/null 2>&1 &
    else
        # Every load generator connection comes from one of a few loopback addresses: no limits
        # per source.
        # shellcheck disable=SC2086
        RUST_LOG=off "$server" --listen "$addr" --metrics off \
            --max-connections-per-ip 0 --accepts-per-sec-per-ip 0 $flags > /dev/null 2>&1 &
    fi
    local pid=$!
    wait_listening "$pid"
    "$bin/loadgen" --protocol "$protocol" --server "$addr" --server-pid "$pid" "$@" | tee -a "$out/ws.jsonl"
    kill "$pid"
    wait "$pid" || true
}

# both "<ws_server flags>" <loadgen args…>: the same load against a fresh matchbox_server, then a
# fresh ws_server.
both() {
    run matchbox "" "${@:2}"
    run peer-signal "$1" "${@:2}"
}

for pairs in 10 50 200; do
    both "--unlimited-rates" --label "relay-json-$pairs" relay --pairs "$pairs" --window 8 --secs 5
done
both "--unlimited-rates" --label relay-json-50-w1 relay --pairs 50 --window 1 --secs 5
run peer-signal "--unlimited-rates" --bincode --label relay-bincode-50 relay --pairs 50 --window 8 --secs 5
# Latency at half of peer-signal's measured maximum (the 50-pair JSON run), for both servers.
half=$(python3 -c "import json; print(int([r for r in map(json.loads, open('$out/ws.jsonl')) if r['label'] == 'relay-json-50' and r['protocol'] == 'peer-signal'][0]['relays_per_s'] / 2))")
both "--unlimited-rates" --label relay-json-50-half relay --pairs 50 --window 8 --secs 5 --rate "$half"

# matchbox sends every node of a room a NewPeer per later node: O(N²) frames in one room, so its
# joins run at 2,000 nodes in one room and in rooms of 100 (the length of peer-signal's lists).
# matchbox_server listens with a backlog of 128: with 256 handshakes in flight, some SYNs wait for
# a retransmission (1 s); the runs with 100 in flight show the joins without it.
for window in 256 100; do
    both "" --label "join-2000-w$window" join --conns 2000 --window "$window"
    both "" --room-size 100 --label "join-2000-rooms100-w$window" join --conns 2000 --window "$window"
done
for conns in 1000 5000 10000; do
    run peer-signal "" --label "join-$conns" join --conns "$conns"
done
run peer-signal "--max-list-len 20" --label join-10000-list20 join --conns 10000

both "" --room-size 100 --label idle-10000 idle --conns 10000 --secs 2
# As many as the process may hold: this sandbox fixes the hard file-descriptor limit at 20,000.
run peer-signal "" --source-ips 8 --label idle-19000 idle --conns 19000 --secs 2

both "--unlimited-rates" --source-ips 8 --label churn-16 churn --workers 16 --secs 10
run peer-signal "--unlimited-rates" --source-ips 8 --label churn churn --workers 64 --secs 10

python3 scripts/plot.py "$out/ws.jsonl" "$out/scaling.png" || echo "no plot (pip install matplotlib); the table follows"
python3 scripts/compare.py "$out/ws.jsonl"
