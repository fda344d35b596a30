#!/usr/bin/env bash
# Measures the device limits Sluice's storage numbers are compared with, on the disk holding
# DIR (default: ./target/fio), with fio's io_uring engine and O_DIRECT, as Sluice writes:
#   - sequential direct writes at the batch sizes of the append benchmarks (16k, 64k, 1m), qd1
#     and qd4, into a preallocated file, no fsync;
#   - 4 KiB write + fdatasync latency, (a) into a fresh, growing file (what a new segment sees),
#     (b) overwriting blocks already written (what a pre-zeroed or recycled segment sees);
#   - sequential direct reads at 1 MiB.
#   - the loopback network: one TCP stream's bandwidth and 100-byte ping-pong latency, and the
#     paced floor: how late a thread sleeping to each millisecond wakes, and a 1 KiB echo a
#     millisecond (`sluice bench loopback`, when target/release/sluice exists; LOOPBACK=0 skips it).
# Prints one summary line per job and leaves fio's JSON in $DIR/*.json (loopback.json).
# Usage: bench-harness/fio/device-limits.sh [DIR] [RUNTIME_SECONDS]
set -euo pipefail
DIR=${1:-./target/fio}
RUNTIME=${2:-10}
SIZE=${FIO_SIZE:-2g}
mkdir -p "$DIR"
command -v fio >/dev/null || { echo "fio is not installed (apt-get install fio)" >&2; exit 1; }

common=(--ioengine=io_uring --direct=1 --time_based --runtime="$RUNTIME" --group_reporting
        --output-format=json)

run() { # name, extra fio args...
  local name=$1; shift
  fio --name="$name" --filename="$DIR/$name.dat" "${common[@]}" "$@" --output="$DIR/$name.json"
  python3 - "$DIR/$name.json" "$name" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
name = sys.argv[2]
for kind in ("write", "read"):
    d = j[kind]
    if d["io_bytes"] == 0:
        continue
    bw = d["bw_bytes"] / 1e6
    lat = d.get("clat_ns") or d.get("lat_ns")
    pct = lat.get("percentile", {})
    p = lambda q: pct.get(q, 0) / 1000
    line = f"{name:28s} {kind:5s} {bw:9.1f} MB/s  iops {d['iops']:9.0f}  clat p50 {p('50.000000'):8.1f} us  p99 {p('99.000000'):8.1f} us  p99.9 {p('99.900000'):8.1f} us"
    sync = j.get("sync", {})
    if sync.get("lat_ns", {}).get("N", 0):
        sp = sync["lat_ns"]["percentile"]
        line += f"  | fdatasync p50 {sp['50.000000']/1000:.1f} p99 {sp['99.000000']/1000:.1f} p99.9 {sp['99.900000']/1000:.1f} us  | write+fdatasync per op {1e6/d['iops']:.1f} us mean"
    print(line)
PY
}

for bs in 16k 64k 256k 1m; do
  rm -f "$DIR/seqwrite-$bs-qd1.dat" "$DIR/seqwrite-$bs-qd4.dat"
  run "seqwrite-$bs-qd1" --rw=write --bs="$bs" --iodepth=1 --size="$SIZE" --fallocate=native
  run "seqwrite-$bs-qd4" --rw=write --bs="$bs" --iodepth=4 --size="$SIZE" --fallocate=native
done

# Durable 4 KiB appends: every write followed by fdatasync.
rm -f "$DIR/fdatasync-4k-fresh.dat"
run fdatasync-4k-fresh --rw=write --bs=4k --iodepth=1 --fdatasync=1 --size=1g --fallocate=none
# Overwrite: lay the file down first, then rewrite it with fdatasync after each write.
rm -f "$DIR/fdatasync-4k-overwrite.dat"
fio --name=layout --filename="$DIR/fdatasync-4k-overwrite.dat" --ioengine=io_uring --direct=1 --rw=write \
    --bs=1m --size=256m --output=/dev/null
run fdatasync-4k-overwrite --rw=write --bs=4k --iodepth=1 --fdatasync=1 --size=256m --overwrite=1

run seqread-1m --rw=read --bs=1m --iodepth=1 --size="$SIZE"
rm -f "$DIR"/*.dat

# The network half of the device limits.
SLUICE=$(cd "$(dirname "$0")/../.." && pwd)/target/release/sluice
if [[ ${LOOPBACK:-1} != 0 && -x $SLUICE ]]; then
  "$SLUICE" bench loopback --seconds "$RUNTIME" >"$DIR/loopback.json"
  python3 - "$DIR/loopback.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
l = j["ping_pong_100b_us"]
print(f"{'loopback-tcp':28s} stream {j['stream_mb_per_s']:9.1f} MB/s  100-byte ping-pong p50 {l['p50']} us  p99 {l['p99']} us  p99.9 {l['p99_9']} us  ({j['ping_pong_per_s']:.0f} round trips/s)")
for key, name in (("timer_wake_late_us", "paced-timer-wake-late"), ("paced_ping_pong_1kib_us", "paced-ping-pong-1kib")):
    l = j[key]
    print(f"{name:28s} 1,000/s from the intended time: p50 {l['p50']} us  p99 {l['p99']} us  p99.9 {l['p99_9']} us  max {l['max']} us")
PY
fi
