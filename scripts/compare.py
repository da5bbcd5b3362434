#!/usr/bin/env python3
"""Prints the side-by-side table of matchbox_server and peer-signal from loadgen's JSON summaries.

usage: compare.py bench-results/ws.jsonl

Each row pairs two runs of one `scripts/bench.sh` run with the same label and the same load, one
against each server. The ratio is peer-signal's figure divided by matchbox_server's. A figure
from a run that had errors, or that lost or misrouted messages, is marked with an asterisk and
explained below the table.
"""
import json
import sys


def relay_cpu(run):
    return run.get("server_cpu_us_per_relay")


def p99_ms(run):
    return run["latency_us"]["p99"] / 1000 if run.get("latency_us") else None


def cpu_per_cycle(run):
    # The server's CPU over the whole run, which the cycles fill.
    return run["server"]["cpu_s"] * 1e6 / run["cycles"] if run.get("cycles") and "server" in run else None


def delivered_pct(run):
    return 100 * run["delivered"] / run["cycles"] if run.get("cycles") else None


# (label, figure, value of a run, format, which way is better)
ROWS = [
    ("relay-json-50", "relay, 50 pairs × 8 in flight: msgs/s", lambda r: r["relays_per_s"], "{:,.0f}", "more"),
    ("relay-json-50", "relay, 50 pairs × 8 in flight: server CPU per message (µs)", relay_cpu, "{:.2f}", "less"),
    ("relay-json-50", "relay, 50 pairs × 8 in flight: p99 latency (ms)", p99_ms, "{:.2f}", "less"),
    ("relay-json-50-w1", "relay, 50 pairs × 1 in flight: msgs/s", lambda r: r["relays_per_s"], "{:,.0f}", "more"),
    ("relay-json-50-w1", "relay, 50 pairs × 1 in flight: server CPU per message (µs)", relay_cpu, "{:.2f}", "less"),
    ("relay-json-50-half", "relay at half of peer-signal's maximum: p99 latency (ms)", p99_ms, "{:.2f}", "less"),
    ("join-2000-w256", "join 2,000 nodes, one room, 256 in flight: wall time (s)", lambda r: r["join_s"], "{:.2f}", "less"),
    ("join-2000-w256", "join 2,000 nodes, one room, 256 in flight: server CPU per join (µs)",
     lambda r: r.get("server_cpu_us_per_join"), "{:,.0f}", "less"),
    ("join-2000-w100", "join 2,000 nodes, one room, 100 in flight: wall time (s)", lambda r: r["join_s"], "{:.2f}", "less"),
    ("join-2000-w100", "join 2,000 nodes, one room, 100 in flight: server CPU per join (µs)",
     lambda r: r.get("server_cpu_us_per_join"), "{:,.0f}", "less"),
    ("join-2000-rooms100-w256", "join 2,000 nodes, rooms of 100, 256 in flight: wall time (s)",
     lambda r: r["join_s"], "{:.2f}", "less"),
    ("join-2000-rooms100-w256", "join 2,000 nodes, rooms of 100, 256 in flight: server CPU per join (µs)",
     lambda r: r.get("server_cpu_us_per_join"), "{:,.0f}", "less"),
    ("join-2000-rooms100-w100", "join 2,000 nodes, rooms of 100, 100 in flight: wall time (s)",
     lambda r: r["join_s"], "{:.2f}", "less"),
    ("join-2000-rooms100-w100", "join 2,000 nodes, rooms of 100, 100 in flight: server CPU per join (µs)",
     lambda r: r.get("server_cpu_us_per_join"), "{:,.0f}", "less"),
    ("churn-16", "churn, 16 workers: cycles/s", lambda r: r["cycles_per_s"], "{:,.0f}", "more"),
    ("churn-16", "churn, 16 workers: server CPU per cycle (µs)", cpu_per_cycle, "{:,.0f}", "less"),
    ("churn-16", "churn, 16 workers: relayed messages that reached the partner (%)", delivered_pct, "{:.2f}", "more"),
    ("idle-10000", "idle, 10,000 connections: server memory per connection (bytes)",
     lambda r: r.get("server_bytes_per_idle_conn"), "{:,.0f}", "less"),
]

SERVERS = ("matchbox", "peer-signal")


def faults(run):
    found = [f"{run[key]:,} {key}" for key in ("errors", "lost", "misrouted", "out_of_order") if run.get(key)]
    return ", ".join(found)


def main(source):
    runs = {}
    for line in open(source):
        if line.strip().startswith("{"):
            run = json.loads(line)
            runs[(run["label"], run.get("protocol", "peer-signal"))] = run
    print("| Figure | matchbox_server | peer-signal | Ratio |")
    print("|---|---:|---:|---:|")
    notes = {}
    for label, figure, value, fmt, better in ROWS:
        cells, values = [], []
        for server in SERVERS:
            run = runs.get((label, server))
            v = value(run) if run else None
            values.append(v)
            if v is None:
                cells.append("–")
                continue
            cell = fmt.format(v)
            if faults(run):
                notes[(label, server)] = faults(run)
                cell += "*"
            cells.append(cell)
        mb, ps = values
        ratio = f"{ps / mb:.2f}×" if mb and ps is not None else "–"
        print(f"| {figure} ({better} is better) | {cells[0]} | {cells[1]} | {ratio} |")
    print()
    print("Ratio: peer-signal ÷ matchbox_server, each pair of figures from one run of bench.sh.")
    loads = [x for run in runs.values() for x in run.get("load_1min") or [] if x is not None]
    if loads:
        print(f"One-minute load average of the machine during these runs: {min(loads):.1f} to {max(loads):.1f}.")
    for (label, server), text in notes.items():
        print(f"* {label} against {server}: {text}.")


if __name__ == "__main__":
    main(sys.argv[1])
