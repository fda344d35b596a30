#!/usr/bin/env bash
# Cross-checks `sluice bench` against librdkafka's own benchmark tool, rdkafka_performance (built
# from the same librdkafka source by peers/rdkafka-performance.sh), on one Kafka address: the same
# load (one partition, 1 KiB records, acks=all, linger.ms=1, batch.size=128 KiB, publish only)
# measured by both tools, interleaved, RUNS times:
#   - unpaced: records/s each tool reaches;
#   - paced at RATE records/s: publish latency percentiles. rdkafka_performance times from its
#     produce() call and paces with usleep (it undershoots the rate); sluice bench times from the
#     intended send time (coordinated-omission corrected), so its tail can only be higher.
# Usage: bench-harness/cross-check.sh [BOOTSTRAP] [SECONDS] [RATE] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
BOOTSTRAP=${1:-127.0.0.1:9092}
SECONDS_PER_RUN=${2:-10}
RATE=${3:-5000}
RUNS=${4:-3}
OUT=${OUT:-target/cross-check}
mkdir -p "$OUT"
SLUICE=target/release/sluice
[[ -x $SLUICE ]] || cargo build --release --locked
PERF=$(bench-harness/peers/rdkafka-performance.sh)

cat >"$OUT/workload.yaml" <<YAML
name: cross-check
partitions_per_topic: 1
message_size: 1024
consumers_per_subscription: 0
producer_rate: unpaced
warmup_s: 1
duration_s: $SECONDS_PER_RUN
producer: {acks: all, linger_ms: 1, batch_size: 131072}
YAML

perf_run() { # rate-or-0, label -> prints "msgs/s p50 p99 p99.9" (ms)
  local rate=$1 topic=xcheck-$RANDOM$RANDOM count
  "$SLUICE" topic create "$topic" --partitions 1 --bootstrap "$BOOTSTRAP" >/dev/null
  local args=(-P -t "$topic" -p 0 -b "$BOOTSTRAP" -s 1024 -a -1 -l -A "$OUT/lat.txt"
              -X linger.ms=1 -X batch.size=131072)
  if [[ $rate == 0 ]]; then
    count=2000000; args+=(-c "$count")
    timeout -s INT "$((SECONDS_PER_RUN + 1))" stdbuf -oL "$PERF" "${args[@]}" >"$OUT/perf.log" 2>&1 || true
  else
    count=$((rate * SECONDS_PER_RUN)); args+=(-c "$count" -r "$rate")
    "$PERF" "${args[@]}" >"$OUT/perf.log" 2>&1
  fi
  "$SLUICE" topic delete "$topic" --bootstrap "$BOOTSTRAP" >/dev/null 2>&1 || true
  python3 - "$OUT/perf.log" "$OUT/lat.txt" <<'PY'
import re, sys
lines = [l for l in open(sys.argv[1]) if "delivered" in l]
m = re.search(r"(\d+) delivered .* in (\d+)ms", lines[-1])
rate = int(m.group(1)) / (int(m.group(2)) / 1000)
v = sorted(int(x) for x in open(sys.argv[2]) if x.strip())
q = lambda p: v[min(len(v) - 1, int(len(v) * p))] / 1000
print(f"{rate:.0f} {q(0.5):.3f} {q(0.99):.3f} {q(0.999):.3f}")
PY
}

ours_run() { # rate-or-0
  local rate=$1 rate_arg=unpaced
  [[ $rate == 0 ]] || rate_arg=$rate
  rm -rf "$OUT/ours" && mkdir -p "$OUT/ours"
  "$SLUICE" bench "$OUT/workload.yaml" --target "$BOOTSTRAP" --rate "$rate_arg" --out "$OUT/ours" --quiet >/dev/null
  python3 - "$OUT"/ours/*.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
l = r["publish_latency_us"]
print(f"{r['publish']['msg_per_s']:.0f} {l['p50']/1000:.3f} {l['p99']/1000:.3f} {l['p99_9']/1000:.3f}")
PY
}

echo "tool                   mode           msgs/s   p50 ms   p99 ms  p99.9 ms"
for run in $(seq 1 "$RUNS"); do
  for mode in 0 "$RATE"; do
    label=unpaced; [[ $mode == 0 ]] || label="${mode}/s"
    read -r r a b c < <(perf_run "$mode")
    printf "%-22s %-12s %8s %8s %8s %9s\n" "rdkafka_performance" "$label" "$r" "$a" "$b" "$c"
    read -r r a b c < <(ours_run "$mode")
    printf "%-22s %-12s %8s %8s %8s %9s\n" "sluice bench" "$label" "$r" "$a" "$b" "$c"
  done
done | tee "$OUT/cross-check.txt"
