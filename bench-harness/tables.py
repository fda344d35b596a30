#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from a scoreboard directory (bench-harness/scoreboard.sh).

For each workload: per target, the median of its runs (min-max in brackets) of throughput and
latency percentiles, the ratio to Sluice, and Sluice's throughput as a fraction of the device
limits measured in the same sitting (fio sequential write, loopback TCP stream).

Usage: bench-harness/tables.py [target/scoreboard]
"""
import glob
import json
import os
import re
import statistics
import sys

OUT = sys.argv[1] if len(sys.argv) > 1 else "target/scoreboard"
WORKLOADS = [
    ("1-topic-1-partition-1kb-max", "(a) 1 topic, 1 partition, 1 KiB, acks=all, max sustainable rate"),
    ("1-topic-16-partitions-1kb-fixed", "(b) 1 topic, 16 partitions, 1 KiB, acks=all, fixed rate"),
    ("1-topic-4-partitions-100b-max", "(c) 1 topic, 4 partitions, 100 B, acks=all, max sustainable rate"),
]
ORDER = ["sluice", "tansu", "rivine", "redis"]


def device_limits():
    limits = {}
    path = os.path.join(OUT, "device-limits.txt")
    if not os.path.exists(path):
        return limits
    for line in open(path):
        m = re.match(r"(seqwrite-1m-qd1|seqwrite-256k-qd4)\s+write\s+([\d.]+) MB/s", line)
        if m:
            limits[m.group(1)] = float(m.group(2))
        m = re.match(r"loopback-tcp\s+stream\s+([\d.]+) MB/s.*p50 (\d+) us\s+p99 (\d+) us", line)
        if m:
            limits["loopback"] = float(m.group(1))
            limits["pingpong_p50_us"] = int(m.group(2))
            limits["pingpong_p99_us"] = int(m.group(3))
        m = re.match(r"fdatasync-4k-fresh.*clat p50\s+([\d.]+) us\s+p99\s+([\d.]+) us.*fdatasync p50 ([\d.]+) p99 ([\d.]+)", line)
        if m:
            limits["wsync_p50_us"] = float(m.group(1)) + float(m.group(3))
            limits["wsync_p99_us"] = float(m.group(2)) + float(m.group(4))
    return limits


def fmt(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def cell(values):
    m = statistics.median(values)
    return m, f"{fmt(m)} ({fmt(min(values))}-{fmt(max(values))})"


METRICS = [
    ("msg/s", lambda r: r["publish"]["msg_per_s"], True),
    ("MB/s", lambda r: r["publish"]["mb_per_s"], True),
    ("publish p50 ms", lambda r: r["publish_latency_us"]["p50"] / 1000, False),
    ("publish p99 ms", lambda r: r["publish_latency_us"]["p99"] / 1000, False),
    ("publish p99.9 ms", lambda r: r["publish_latency_us"]["p99_9"] / 1000, False),
    ("e2e p50 ms", lambda r: r["end_to_end_latency_us"]["p50"] / 1000, False),
    ("e2e p99 ms", lambda r: r["end_to_end_latency_us"]["p99"] / 1000, False),
    ("e2e p99.9 ms", lambda r: r["end_to_end_latency_us"]["p99_9"] / 1000, False),
]

limits = device_limits()
for directory, title in WORKLOADS:
    files = glob.glob(os.path.join(OUT, directory, "*-run*.json"))
    if not files:
        continue
    runs = {}
    for f in files:
        r = json.load(open(f))
        runs.setdefault(r["target"], []).append(r)
    targets = [t for t in ORDER if t in runs] + sorted(t for t in runs if t not in ORDER)
    print(f"#### {title}\n")
    print("| metric | " + " | ".join(f"{t} ({len(runs[t])} runs)" for t in targets) + " |")
    print("|---|" + "---|" * len(targets))
    rate_row = ["rate msg/s (open loop)"]
    for t in targets:
        rate_row.append(cell([r["target_rate"] or 0 for r in runs[t]])[1])
    print("| " + " | ".join(rate_row) + " |")
    for name, get, _ in METRICS:
        row = [name]
        base = statistics.median(get(r) for r in runs["sluice"]) if "sluice" in runs else None
        for t in targets:
            usable = runs[t]
            if "latency" in name or " p" in name:
                kind = "publish_latency_us" if name.startswith("publish") else "end_to_end_latency_us"
                usable = [r for r in runs[t] if r[kind]["count"] > 0]
                if not usable:
                    row.append("n/a: fell behind, nothing sent in the window")
                    continue
            m, text = cell([get(r) for r in usable])
            if base and t != "sluice" and m > 0:
                text += f" **{m / base:.2f}×**"
            row.append(text)
        print("| " + " | ".join(row) + " |")
    unsent = {t: sum(r.get("unsent_in_window", 0) for r in runs[t]) for t in targets}
    if any(unsent.values()):
        print("| records scheduled but never sent (all runs) | " + " | ".join(str(unsent[t]) for t in targets) + " |")
    print()
    if "sluice" in runs and limits:
        mb = statistics.median(r["publish"]["mb_per_s"] for r in runs["sluice"])
        parts = []
        if "seqwrite-1m-qd1" in limits:
            parts.append(f"{mb / limits['seqwrite-1m-qd1']:.2f}× fio's 1 MiB sequential direct write ({limits['seqwrite-1m-qd1']:.0f} MB/s)")
        if "loopback" in limits:
            parts.append(f"{mb / limits['loopback']:.2f}× one loopback TCP stream ({limits['loopback']:.0f} MB/s)")
        print(f"Sluice's {fmt(mb)} MB/s is " + "; ".join(parts) + ".")
        if "wsync_p99_us" in limits:
            p99 = statistics.median(r["publish_latency_us"]["p99"] for r in runs["sluice"]) / 1000
            print(f"Its publish p99 ({fmt(p99)} ms) is {p99 * 1000 / limits['wsync_p99_us']:.0f}× the device's 4 KiB write+fdatasync p99 "
                  f"({limits['wsync_p99_us']:.0f} µs) and {p99 * 1000 / limits['pingpong_p99_us']:.0f}× a loopback 100-byte round trip p99 ({limits['pingpong_p99_us']} µs).")
        print()
