#!/usr/bin/env bash
# Storage benchmarks beside the device limits, measured in one sitting, interleaved:
#   for each run: fio device limits, then the storage criterion benches (append, durable, read).
# Prints medians over the runs and the ratios docs/benchmarks.md quotes; keeps every raw result
# under $OUT (default target/storage-vs-device).
# Usage: bench-harness/storage-vs-device.sh [RUNS] [FIO_RUNTIME_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
FIO_RUNTIME=${2:-5}
OUT=${OUT:-target/storage-vs-device}
rm -rf "$OUT"; mkdir -p "$OUT"
ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
cargo bench -p sluice-storage --no-run >/dev/null 2>&1

for run in $(seq 1 "$RUNS"); do
  echo "== run $run/$RUNS: fio" >&2
  bench-harness/fio/device-limits.sh "$OUT/fio-$run" "$FIO_RUNTIME" > "$OUT/fio-$run.txt"
  echo "== run $run/$RUNS: storage benches" >&2
  rm -rf target/criterion
  cargo bench -p sluice-storage 2>/dev/null > "$OUT/bench-$run.txt"
  mkdir -p "$OUT/criterion-$run"
  cp -r target/criterion/. "$OUT/criterion-$run/"
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, re, statistics, sys, pathlib
out, runs = pathlib.Path(sys.argv[1]), int(sys.argv[2])
med = statistics.median

def fio(run, job, kind="write"):
    j = json.load(open(out / f"fio-{run}" / f"{job}.json"))["jobs"][0]
    d = j[kind]
    pct = d["clat_ns"]["percentile"]
    res = {"MBps": d["bw_bytes"] / 1e6, "p50": pct["50.000000"] / 1e3, "p99": pct["99.000000"] / 1e3,
           "p999": pct["99.900000"] / 1e3, "iops": d["iops"]}
    s = j.get("sync", {}).get("lat_ns", {})
    if s.get("N"):
        sp = s["percentile"]
        res.update(sync_p50=sp["50.000000"] / 1e3, sync_p99=sp["99.000000"] / 1e3, sync_p999=sp["99.900000"] / 1e3)
    return res

def crit(run, bench_id):
    base = out / f"criterion-{run}" / bench_id / "new"
    est = json.load(open(base / "estimates.json"))["median"]["point_estimate"]  # ns per iteration
    meta = json.load(open(base / "benchmark.json"))
    thr = (meta.get("throughput") or {}).get("Bytes")
    return est, thr

def latency_lines(run):
    lines = {}
    for line in open(out / f"bench-{run}.txt"):
        m = re.search(r"LATENCY durable_append_1KiB appenders=(\d+): n=(\d+) p50=(\d+)us p99=(\d+)us p99.9=(\d+)us", line)
        if m:
            lines[int(m[1])] = dict(p50=int(m[3]), p99=int(m[4]), p999=int(m[5]))
    return lines

def across(f):
    return med([f(r) for r in range(1, runs + 1)])

print(f"# medians of {runs} interleaved runs")
print("\n## Append without fsync (MB/s), vs fio sequential O_DIRECT writes")
fio_rows = {}
for bs in ["16k", "64k", "256k", "1m"]:
    for qd in ["qd1", "qd4"]:
        fio_rows[(bs, qd)] = across(lambda r: fio(r, f"seqwrite-{bs}-{qd}")["MBps"])
        spread = [round(fio(r, f"seqwrite-{bs}-{qd}")["MBps"]) for r in range(1, runs + 1)]
        print(f"fio seqwrite bs={bs:4s} {qd}: {fio_rows[(bs, qd)]:8.0f} MB/s   runs: {spread}")
for label, bs in [("16KiB", "16k"), ("64KiB", "64k"), ("1MiB", "1m")]:
    vals = []
    for r in range(1, runs + 1):
        ns, b = crit(r, f"append_no_fsync/{label}")
        vals.append(b / ns * 1e3)
    ours = med(vals)
    print(f"sluice append {label:6s} batches: {ours:8.0f} MB/s   runs: {[round(v) for v in vals]}   "
          f"vs fio same size qd1: {ours / fio_rows[(bs, 'qd1')]:.2f}x   vs fio 256k qd4 (our write size/depth): "
          f"{ours / fio_rows[('256k', 'qd4')]:.2f}x   vs fio 1m qd1: {ours / fio_rows[('1m', 'qd1')]:.2f}x")

print("\n## Durable append, one 1 KiB record per batch, vs fio 4 KiB write + fdatasync")
for job in ["fdatasync-4k-fresh", "fdatasync-4k-overwrite"]:
    w = {k: across(lambda r: fio(r, job)[k]) for k in ["p50", "p99", "p999", "sync_p50", "sync_p99", "sync_p999", "iops"]}
    print(f"fio {job:24s}: write p50/p99/p99.9 {w['p50']:.0f}/{w['p99']:.0f}/{w['p999']:.0f} us; fdatasync "
          f"{w['sync_p50']:.0f}/{w['sync_p99']:.0f}/{w['sync_p999']:.0f} us; sum p50 {w['p50'] + w['sync_p50']:.0f} "
          f"p99 {w['p99'] + w['sync_p99']:.0f} p99.9 {w['p999'] + w['sync_p999']:.0f} us; {w['iops']:.0f} ops/s")
    fio_rows[job] = w
fresh = fio_rows["fdatasync-4k-fresh"]
over = fio_rows["fdatasync-4k-overwrite"]
for n in [1, 4, 16]:
    p = {k: med([latency_lines(r)[n][k] for r in range(1, runs + 1)]) for k in ["p50", "p99", "p999"]}
    ns, _ = crit(1, f"durable_append_1KiB/appenders/{n}")
    rate = med([1e9 / crit(r, f"durable_append_1KiB/appenders/{n}")[0] for r in range(1, runs + 1)])
    print(f"sluice {n:2d} appenders: p50/p99/p99.9 {p['p50']:.0f}/{p['p99']:.0f}/{p['p999']:.0f} us, {rate:.0f} appends/s; "
          f"p99 vs fio fresh (write p99 + fdatasync p99): {p['p99'] / (fresh['p99'] + fresh['sync_p99']):.2f}x, "
          f"vs fio overwrite: {p['p99'] / (over['p99'] + over['sync_p99']):.2f}x")

print("\n## Sequential read, 1 MiB reads")
f = across(lambda r: fio(r, "seqread-1m", "read")["MBps"])
vals = []
for r in range(1, runs + 1):
    ns, b = crit(r, "sequential_read/1MiB_reads_of_64KiB_batches")
    vals.append(b / ns * 1e3)
print(f"fio seqread 1m qd1: {f:.0f} MB/s; sluice read: {med(vals):.0f} MB/s (runs {[round(v) for v in vals]}); ratio {med(vals) / f:.2f}x")
PY
