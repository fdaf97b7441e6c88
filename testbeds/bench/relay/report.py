#!/usr/bin/env python3
"""Markdown tables from relay_bench's JSON lines (testbeds/bench/relay/run.sh)."""
import json
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sizes = sorted({r["size"] for r in rows})
for size in sizes:
    print(f"\n### {size}-byte packets\n")
    print("| target | p50 µs | p99 µs | p99.9 µs (5,000 pps, 1 stream) |")
    print("|---|---|---|---|")
    for r in rows:
        if r["size"] == size and r["phase"] == "latency":
            print(f"| {r['target']} | {r['p50_us']:.1f} | {r['p99_us']:.1f} | {r['p999_us']:.1f} |")
    print("\n| target | offered pps | received pps | loss | relay CPU (cores) | pps per core |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r["size"] == size and r["phase"] == "load" and r["target"] != "direct":
            print(
                f"| {r['target']} | {r['offered_pps']:,} | {r['rx_pps']:,} | {r['loss'] * 100:.2f} % "
                f"| {r['relay_cpu']:.3f} | {r['pps_per_core']:,} |"
            )
