#!/usr/bin/env python3
"""Plots join cost and relay latency against N from loadgen's JSON summaries: peer-signal's, with
matchbox_server's relay latency beside it where the same runs were made against it.

usage: plot.py bench-results/ws.jsonl bench-results/scaling.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    every = [json.loads(line) for line in open(source) if line.strip().startswith("{")]
    runs = [r for r in every if r.get("protocol", "peer-signal") == "peer-signal"]
    joins = sorted(
        (r for r in runs if r["label"].startswith("join-") and r["label"][5:].isdigit()),
        key=lambda r: r["joined"],
    )

    def relay_runs(protocol):
        return sorted(
            (
                r
                for r in every
                if r.get("protocol", "peer-signal") == protocol
                and r["label"].startswith("relay-json-")
                and r["label"][11:].isdigit()
            ),
            key=lambda r: int(r["label"][11:]),
        )

    relays = relay_runs("peer-signal")
    matchbox = relay_runs("matchbox")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))

    n = [r["joined"] for r in joins]
    left.plot(n, [r["join_s"] for r in joins], "o-", label="wall time to join all (s)")
    left.plot(n, [r["server"]["cpu_s"] for r in joins], "s--", label="server CPU (s)")
    left.set_xlabel("nodes joining (N)")
    left.set_ylabel("seconds")
    left.set_title("Join N nodes over WebSocket")
    left.grid(alpha=0.3)
    left.legend()
    per_join = left.twinx()
    cpu_per_join = [r["server"]["cpu_s"] / r["joined"] * 1e6 for r in joins]
    per_join.plot(n, cpu_per_join, "^:", color="gray")
    per_join.set_ylim(0, max(cpu_per_join) * 1.3)
    per_join.set_ylabel("server CPU per join (µs, dotted)")

    pairs = [int(r["label"][11:]) * 2 for r in relays]
    for key, style in (("p50", "o-"), ("p99", "s-"), ("p999", "^--")):
        right.plot(pairs, [r["latency_us"][key] / 1000 for r in relays], style, label=f"{key}, peer-signal")
    for key, style in (("p50", "o:"), ("p99", "s:")):
        right.plot(
            [int(r["label"][11:]) * 2 for r in matchbox],
            [r["latency_us"][key] / 1000 for r in matchbox],
            style,
            color="gray",
            label=f"{key}, matchbox_server",
        )
    right.set_xscale("log")
    right.minorticks_off()
    right.set_xticks(pairs, [str(p) for p in pairs])
    right.set_xlabel("relaying nodes (N), 8 messages in flight per pair")
    right.set_ylabel("relay latency (ms)")
    right.set_title("Relay latency at full load")
    right.grid(alpha=0.3)
    right.legend()

    fig.tight_layout()
    fig.savefig(target, dpi=110)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
