#!/usr/bin/env bash
# The scoreboard of docs/benchmarks.md, in one sitting: device limits (fio + loopback), then the
# three standard workloads against Sluice and every peer (interleaved rounds, fresh broker per
# run, started and stopped by peers/peer.sh), then charts, then the rdkafka_performance
# cross-check on Sluice. Everything lands in $OUT (default target/scoreboard).
#   (a) 1 topic, 1 partition, 1 KiB, acks=all, max rate
#   (b) 1 topic, 16 partitions, 1 KiB, acks=all, fixed rate = half of Sluice's max for (b)
#   (c) 1 topic, 4 partitions, 100 B, acks=all, max rate
# Usage: bench-harness/scoreboard.sh     (env: RUNS=3 DURATION=20 WARMUP=5 PEERS="sluice tansu rivine redis"
#                                         SKIP_FIO=1 to reuse limits, FIO_SECONDS=5,
#                                         ONLY="a b c x" to run some parts: workloads, cross-check)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/scoreboard}
RUNS=${RUNS:-3}
DURATION=${DURATION:-20}
WARMUP=${WARMUP:-5}
PEERS=${PEERS:-sluice tansu rivine redis}
SLUICE=target/release/sluice
PEER=bench-harness/peers/peer.sh
mkdir -p "$OUT"
cargo build --release --locked
for p in $PEERS; do $PEER install "$p"; done
trap '$PEER stop-all' EXIT

address() {
  case $1 in
    sluice|rivine) echo 127.0.0.1:9092 ;;
    tansu) echo 127.0.0.1:9094 ;;
    redis) echo redis://127.0.0.1:6390 ;;
  esac
}
targets=()
for p in $PEERS; do targets+=(--target "$p=$(address "$p")"); done

{ echo "date: $(date -u +%FT%TZ)"; echo "kernel: $(uname -r)"; nproc; grep -m1 'model name' /proc/cpuinfo
  free -g | sed -n 2p; uptime; } >"$OUT/machine.txt"

if [[ ${SKIP_FIO:-0} != 1 ]]; then
  bench-harness/fio/device-limits.sh "$OUT/fio" "${FIO_SECONDS:-5}" | tee "$OUT/device-limits.txt"
fi

compare() { # workload file, extra args...
  local w=$1; shift
  "$SLUICE" bench compare "bench-harness/workloads/$w" "${targets[@]}" --runs "$RUNS" \
    --duration "$DURATION" --warmup "$WARMUP" --peers "$PEER" --out "$OUT/${w%.yaml}" --quiet "$@" \
    | tee "$OUT/${w%.yaml}.txt"
}

want() { [[ " ${ONLY:-a b c x} " == *" $1 "* ]]; }

want a && compare 1-topic-1-partition-1kb-max.yaml

half=${B_RATE:-}
if want b && [[ -z $half ]]; then
  # (b)'s rate: half of what Sluice sustains in (b)'s own shape (16 partitions, 2 producers,
  # 2 consumers), found by the max-rate search on a fresh Sluice.
  $PEER start sluice >/dev/null
  "$SLUICE" bench bench-harness/workloads/1-topic-16-partitions-1kb-fixed.yaml --rate max \
    --duration 10 --warmup 2 --target sluice=127.0.0.1:9092 --out "$OUT/b-max" --quiet | tee "$OUT/b-max.txt"
  $PEER stop sluice >/dev/null
  half=$(python3 - "$OUT"/b-max/*.json <<'PY'
import json, sys
print(int(json.load(open(sys.argv[1]))["target_rate"] / 2))
PY
)
  echo "(b) runs at $half records/s, half of Sluice's max rate for (b)'s shape" | tee "$OUT/b-rate.txt"
fi
want b && compare 1-topic-16-partitions-1kb-fixed.yaml --rate "$half"
want c && compare 1-topic-4-partitions-100b-max.yaml

# Charts from the last round of each workload (one run per target).
for w in 1-topic-1-partition-1kb-max 1-topic-16-partitions-1kb-fixed 1-topic-4-partitions-100b-max; do
  ls "$OUT/$w"/*-run"$RUNS".json >/dev/null 2>&1 || continue
  "$SLUICE" bench plot "$OUT/$w"/*-run"$RUNS".json --out "$OUT/plots/$w" >/dev/null
done

if want x; then
  $PEER start sluice >/dev/null
  bench-harness/cross-check.sh 127.0.0.1:9092 10 "${XCHECK_RATE:-20000}" "$RUNS" | tee "$OUT/cross-check.txt"
  $PEER stop sluice >/dev/null
fi
echo "scoreboard in $OUT"
