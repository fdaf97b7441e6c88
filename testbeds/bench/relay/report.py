#!/usr/bin/env python3
"""Markdown tables from relay_bench's JSON lines (testbeds/bench/relay/run.sh): per
target, packet size and phase, the median over the rounds."""
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
groups = {}
for r in rows:
    groups.setdefault((r["size"], r["phase"], r["target"], r["offered_pps"]), []).append(r)


def med(rs, key):
    vals = [r[key] for r in rs if isinstance(r[key], (int, float)) and r[key] == r[key]]
    return statistics.median(vals) if vals else float("nan")


order = {"direct": 0, "permit": 1, "rtpengine": 2}
for size in sorted({k[0] for k in groups}):
    print(f"\n#### {size}-byte packets\n")
    print("| target | p50 µs | p99 µs | p99.9 µs | rounds |")
    print("|---|---|---|---|---|")
    for key in sorted((k for k in groups if k[0] == size and k[1] == "latency"), key=lambda k: order[k[2]]):
        rs = groups[key]
        print(f"| {key[2]} | {med(rs, 'p50_us'):.1f} | {med(rs, 'p99_us'):.1f} | {med(rs, 'p999_us'):.1f} | {len(rs)} |")
    print("\n| target | offered pps | received pps | loss | relay CPU (cores) | pps per core | rounds |")
    print("|---|---|---|---|---|---|---|")
    loads = sorted((k for k in groups if k[0] == size and k[1] == "load" and k[2] != "direct"), key=lambda k: (order[k[2]], k[3]))
    for key in loads:
        rs = groups[key]
        print(
            f"| {key[2]} | {key[3]:,} | {med(rs, 'rx_pps'):,.0f} | {med(rs, 'loss') * 100:.2f} % "
            f"| {med(rs, 'relay_cpu'):.3f} | {med(rs, 'pps_per_core'):,.0f} | {len(rs)} |"
        )
