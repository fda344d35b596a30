#!/usr/bin/env bash
# What security costs: one Sluice with three listeners — PLAINTEXT, SSL (TLS 1.3) and SASL_SSL
# (SCRAM-SHA-512 over TLS 1.3) — and the standard workloads run through each, interleaved
# (every listener once per round, each round starting with another), with `sluice bench run` (librdkafka with OpenSSL
# inside). Prints, per workload and listener, the median over the rounds of the published
# records/s and MB/s and the publish and end-to-end p50/p99, and each median's ratio to
# plaintext. The load generator and the broker share the machine: both sides' encryption is
# in the numbers, as on a client host that is also the broker's.
#   (a) 1 topic, 1 partition, 1 KiB, acks=all, max rate (searched per run)
#   (b) 1 topic, 16 partitions, 1 KiB, acks=all, fixed rate (RATE_B, default 20000)
#   (l) 1 partition, 1,000 records/s, linger 0, acks=all (the latency floor)
# Usage: bench-harness/security.sh   (env: RUNS=3 DURATION=15 WARMUP=3 RATE_B=20000 ONLY="a b l"
#                                     OUT=target/security-bench)
# It builds target/release/sluice with the bench-ssl feature (needs libssl-dev and pkg-config).
# Certificates are made here with openssl (a throwaway CA, deleted afterwards).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-target/security-bench}
RUNS=${RUNS:-3}
DURATION=${DURATION:-15}
WARMUP=${WARMUP:-3}
RATE_B=${RATE_B:-20000}
ONLY=${ONLY:-a b l}
SLUICE=target/release/sluice
# librdkafka with OpenSSL (libssl-dev and pkg-config must be installed).
cargo build --release --locked --bin sluice --features bench-ssl

rm -rf "$OUT"
mkdir -p "$OUT/pki" "$OUT/results"
pki=$OUT/pki
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj "/CN=sluice bench CA" -keyout "$pki/ca.key" -out "$pki/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$pki/san.ext"
openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.pem" -CAkey "$pki/ca.key" \
  -CAcreateserial -days 2 -extfile "$pki/san.ext" -out "$pki/server.pem" 2>/dev/null

"$SLUICE" serve --data-dir "$OUT/data" --admin-listen 127.0.0.1:0 \
  --listeners PLAINTEXT://127.0.0.1:19092,SSL://127.0.0.1:19093,SASL_SSL://127.0.0.1:19094 \
  --ssl-certificate "$pki/server.pem" --ssl-key "$pki/server.key" \
  --sasl-enabled-mechanisms SCRAM-SHA-512 2>"$OUT/broker.log" &
broker=$!
trap 'kill $broker 2>/dev/null; wait $broker 2>/dev/null; rm -rf "$OUT/data" "$pki"' EXIT
for _ in $(seq 100); do
  grep -q 'listening.*19094' "$OUT/broker.log" && break
  sleep 0.1
done
"$SLUICE" user create bench --password bench-secret --bootstrap 127.0.0.1:19092 >/dev/null

tls=(-X security.protocol=ssl -X "ssl.ca.location=$pki/ca.pem")
sasl=(-X security.protocol=sasl_ssl -X "ssl.ca.location=$pki/ca.pem" -X sasl.mechanisms=SCRAM-SHA-512
  -X sasl.username=bench -X sasl.password=bench-secret)
run() { # workload letter, listener name, extra args
  local letter=$1 name=$2
  shift 2
  local file rate=()
  case $letter in
    a) file=1-topic-1-partition-1kb-max ;;
    b) file=1-topic-16-partitions-1kb-fixed rate=(--rate "$RATE_B") ;;
    l) file=1-partition-1000-rps-linger-0 ;;
  esac
  "$SLUICE" bench run "bench-harness/workloads/$file.yaml" "${rate[@]}" --duration "$DURATION" \
    --warmup "$WARMUP" --out "$OUT/results/$letter" --quiet "$@" >/dev/null
}
listener() { # name: runs the workload through that listener
  case $1 in
    plaintext) run "$letter" plaintext --target plaintext=127.0.0.1:19092 ;;
    ssl) run "$letter" ssl --target ssl=127.0.0.1:19093 "${tls[@]}" ;;
    sasl_ssl) run "$letter" sasl_ssl --target sasl_ssl=127.0.0.1:19094 "${sasl[@]}" ;;
  esac
  # The run's topics were deleted: let their files' removal and the writeback settle, so the
  # next listener does not pay for this one.
  sync
  sleep 3
}
orders=("plaintext ssl sasl_ssl" "ssl sasl_ssl plaintext" "sasl_ssl plaintext ssl")
for letter in $ONLY; do
  for round in $(seq "$RUNS"); do
    # Each round starts with another listener: none always runs right after a heavy one.
    for name in ${orders[$(((round - 1) % 3))]}; do listener "$name"; done
    echo "security.sh: workload $letter round $round done" >&2
  done
done

python3 - "$OUT/results" <<'EOF' | tee "$OUT/summary.md"
import json, pathlib, statistics, sys
root = pathlib.Path(sys.argv[1])
for workload in sorted(p for p in root.iterdir() if p.is_dir()):
    runs = {}
    for f in workload.glob("*.json"):
        r = json.loads(f.read_text())
        runs.setdefault(r["target"], []).append(r)
    name = next(iter(runs.values()))[0]["workload"]["name"]
    print(f"\n{name} ({len(next(iter(runs.values())))} runs each; medians)\n")
    print("| listener | records/s | MB/s | publish p50 ms | publish p99 ms | end-to-end p50 ms | end-to-end p99 ms |")
    print("|---|---|---|---|---|---|---|")
    base = None
    for target in ["plaintext", "ssl", "sasl_ssl"]:
        rs = runs.get(target, [])
        if not rs:
            continue
        m = {
            "rps": statistics.median(r["publish"]["msg_per_s"] for r in rs),
            "mbs": statistics.median(r["publish"]["mb_per_s"] for r in rs),
            "pp50": statistics.median(r["publish_latency_us"]["p50"] for r in rs) / 1000,
            "pp99": statistics.median(r["publish_latency_us"]["p99"] for r in rs) / 1000,
            "ep50": statistics.median(r["end_to_end_latency_us"]["p50"] for r in rs) / 1000,
            "ep99": statistics.median(r["end_to_end_latency_us"]["p99"] for r in rs) / 1000,
        }
        base = base or m
        def cell(k, fmt):
            v = fmt.format(m[k])
            return v if m is base else f"{v} ({m[k] / base[k]:.2f}×)" if base[k] else v
        print(f"| {target} | {cell('rps', '{:,.0f}')} | {cell('mbs', '{:.1f}')} | {cell('pp50', '{:.2f}')} "
              f"| {cell('pp99', '{:.2f}')} | {cell('ep50', '{:.2f}')} | {cell('ep99', '{:.2f}')} |")
EOF
