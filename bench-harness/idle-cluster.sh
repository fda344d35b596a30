#!/usr/bin/env bash
# What idle partitions cost a cluster at rest: `sluice cluster dev` (three nodes, one core
# each) with one topic of PARTITIONS partitions at replication factor 3 and nothing written,
# each node's CPU over MEASURE seconds (user + system, from /proc/PID/stat) once SETTLE seconds
# passed after the topic was created, its RSS, and how many of its Raft groups are quiet
# (`sluice_raft_groups` on `/metrics`). One line per run. SETTLE counts from the moment every
# node holds the topic's groups all quiet. With DOWN=1 the third node is
# SIGSTOPped once the topic settled (`cluster dev` stops every node when one dies), and the
# two others are measured SETTLE seconds later: a cluster at rest with a node down (the
# stopped node's figures read 0). With LOAD=RATE, the measurement is a `sluice bench run` of
# the 16-partition workload (RF 3, RATE records/s, 5 s warm-up, MEASURE s) beside the idle
# partitions, and the line adds its publish p50/p99: what idle partitions cost the busy ones.
# Usage: bench-harness/idle-cluster.sh PARTITIONS   (env: SLUICE=target/release/sluice
#        DIR=target/idle-cluster SETTLE=15 MEASURE=20 DOWN=0 LOAD=; ports 19092-19094,
#        23145-23165, 19644-19646)
set -euo pipefail
cd "$(dirname "$0")/.."
PARTITIONS=${1:?usage: idle-cluster.sh PARTITIONS}
SLUICE=${SLUICE:-target/release/sluice}
DIR=${DIR:-target/idle-cluster}
SETTLE=${SETTLE:-15}
MEASURE=${MEASURE:-20}
DOWN=${DOWN:-0}
LOAD=${LOAD:-}
rm -rf "$DIR"
mkdir -p "$DIR"
"$SLUICE" cluster dev --nodes 3 --dir "$DIR/data" --kafka-port 19092 --rpc-port 23145 \
  --admin-port 19644 > "$DIR/dev.log" 2>&1 &
dev=$!
stopped=
# The nodes' logs are kept (DIR/node-N.log); their data is not.
trap '[[ -n $stopped ]] && kill -CONT "$stopped"; kill -INT $dev 2>/dev/null; wait $dev 2>/dev/null; for n in 0 1 2; do cp "$DIR/data/node-$n/sluice.log" "$DIR/node-$n.log" 2>/dev/null; done; rm -rf "$DIR/data"' EXIT
# Until the cluster has formed (every node registered), creating the topic is refused.
created=
for _ in $(seq 150); do
  if "$SLUICE" topic create idle --partitions "$PARTITIONS" --replication-factor 3 \
    --bootstrap 127.0.0.1:19092 > "$DIR/create.log" 2>&1; then
    created=1
    break
  fi
  sleep 0.2
done
[[ -n $created ]] || { cat "$DIR/create.log" >&2; exit 1; }
# The topic exists once the controller committed it; every node then opens its replicas and
# they elect (~30 s for 10,000 here). Settling starts once every node holds them all quiet.
quiet_on() { { curl -s --max-time 2 "http://127.0.0.1:$1/metrics" || true; } | awk '/^sluice_raft_groups\{.*state="quiet"/ {n += $2} END {print n + 0}'; }
for _ in $(seq 600); do
  settled=1
  for port in 19644 19645 19646; do
    (( $(quiet_on $port) >= PARTITIONS )) || settled=
  done
  [[ -n $settled ]] && break
  sleep 0.5
done
[[ -n $settled ]] || { echo "the idle partitions did not all go quiet within 300 s" >&2; exit 1; }
sleep "$SETTLE"
mapfile -t pids < <(pgrep -P "$dev")
if [[ $DOWN == 1 ]]; then
  stopped=${pids[2]}
  kill -STOP "$stopped"
  sleep "$SETTLE"
fi
ticks() { for p in "${pids[@]}"; do awk '{print $14 + $15}' "/proc/$p/stat"; done; }
if [[ -n $LOAD ]]; then
  # The workload's own topic is created (and settles) during the warm-up.
  "$SLUICE" bench run bench-harness/workloads/1-topic-16-partitions-1kb-fixed.yaml \
    --target 127.0.0.1:19092 --replication-factor 3 --rate "$LOAD" --duration "$MEASURE" \
    --warmup 5 --out "$DIR/bench" --quiet > "$DIR/bench.log" 2>&1 &
  bench=$!
  sleep 6
fi
mapfile -t before < <(ticks)
if [[ -n $LOAD ]]; then
  wait $bench || { cat "$DIR/bench.log" >&2; exit 1; }
  measured=$(( MEASURE - 1 ))
else
  sleep "$MEASURE"
  measured=$MEASURE
fi
mapfile -t after < <(ticks)
MEASURE=$measured
hz=$(getconf CLK_TCK)
line="partitions=$PARTITIONS down=$DOWN cpu%:"
for i in "${!pids[@]}"; do
  line+=" $(( (after[i] - before[i]) * 100 / hz / MEASURE )).$(( (after[i] - before[i]) * 1000 / hz / MEASURE % 10 ))"
done
line+=" rss_kb:"
for p in "${pids[@]}"; do line+=" $(awk '/VmRSS/ {print $2}' "/proc/$p/status")"; done
line+=" quiet:"
for port in 19644 19645 19646; do line+=" $(quiet_on $port)"; done
if [[ -n $LOAD ]]; then
  # The summary's latency table: "publish  p50 p90 p99 p99.9 p99.99 max" in ms.
  line+=" load=$LOAD publish_p50_p99_ms: $(awk '/latency ms/ {t = 1; next} t && $1 == "publish" {print $2, $4; exit}' "$DIR"/bench/*.txt)"
fi
echo "$line"
