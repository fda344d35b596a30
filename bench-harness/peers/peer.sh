#!/usr/bin/env bash
# Installs, starts and stops the brokers `sluice bench compare --peers` measures side by side,
# each on loopback, each from a fresh data directory, each stopped by the PID this script wrote.
#
#   peer.sh install NAME      install the peer (idempotent)
#   peer.sh start NAME        start it fresh, wait until its port answers (installs first if needed)
#   peer.sh stop NAME         stop it by PID (SIGTERM, then SIGKILL after 10 s)
#   peer.sh stop-all
# `sluice bench compare` sets BENCH_PARTITIONS to the workload's partitions per topic and
# BENCH_REPLICATION_FACTOR to its replication factor.
#
# Peers, their addresses and their durability (what an acknowledgement means):
#   sluice  127.0.0.1:9092  this repository's release build; acks=all = fdatasync'd before the
#                           answer (group commit). Data dir $PEER_DIR/sluice. With
#                           BENCH_REPLICATION_FACTOR > 1 it is started with
#                           --clamp-replication-factor true: asked for 3 copies, it keeps one.
#   sluice-rf3 127.0.0.1:9192,9193,9194  this build as a three-node cluster (`sluice cluster dev
#                           --nodes 3 --cores 1`, RPC ports 33145/33155/33165) on this same
#                           machine; acks=all = fdatasync'd on a majority (2 of 3) before the
#                           answer. Data dir $PEER_DIR/sluice-rf3/node-N.
#   sluice-base 127.0.0.1:9096  another Sluice build, $SLUICE_BASE_BIN (e.g. an earlier commit's
#                           release binary), for A/B runs of a change against its base.
#   tansu   127.0.0.1:9094  `cargo install tansu --features libsql` (0.6; with default features
#                           it has no storage engine and exits at start), SQLite engine
#                           (sqlite://tansu.db in its data dir): WAL journal, synchronous=NORMAL,
#                           so a commit reaches the WAL file but is fsynced only at checkpoints:
#                           it survives a process crash, not a power or kernel failure.
#   rivine  127.0.0.1:9092  `cargo install --locked rivine` (0.2.0, binary rivine-broker); it never
#                           fsyncs (its segment flush_log is never called): page cache only.
#                           It must listen on 9092, so it cannot run beside sluice: compare
#                           starts and stops each in turn.
#   redis   redis://127.0.0.1:6390  Debian's redis-server (7.0), Redis Streams, a different
#                           protocol: appendonly yes, appendfsync always (fsync per event-loop
#                           write, i.e. per pipeline), no RDB snapshots.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PEER_DIR=${PEER_DIR:-/tmp/sluice-peers}
CARGO_BIN=${CARGO_HOME:-$HOME/.cargo}/bin
mkdir -p "$PEER_DIR"

port_of() {
  case $1 in
    sluice|rivine) echo 9092 ;;
    tansu) echo 9094 ;;
    sluice-base) echo 9096 ;;
    sluice-rf3) echo 9192 ;;
    redis) echo 6390 ;;
    *) echo "unknown peer $1 (sluice, sluice-base, sluice-rf3, tansu, rivine, redis)" >&2; exit 2 ;;
  esac
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install() {
  case $1 in
    sluice|sluice-rf3) [[ -x $ROOT/target/release/sluice ]] || (cd "$ROOT" && cargo build --release --locked) ;;
    sluice-base) [[ -x ${SLUICE_BASE_BIN:-} ]] || {
                   echo "sluice-base: set SLUICE_BASE_BIN to a sluice binary" >&2; exit 2; } ;;
    # Plain `cargo install tansu` builds no storage engine at all (the broker exits with
    # "FeatureNotEnabled dynostore"); libsql gives the local, disk-backed SQLite engine.
    tansu) [[ -x $CARGO_BIN/tansu ]] && "$CARGO_BIN/tansu" --version >/dev/null 2>&1 && [[ -f $PEER_DIR/.tansu-libsql ]] \
             || { cargo install tansu --version 0.6.0 --features libsql && touch "$PEER_DIR/.tansu-libsql"; } ;;
    rivine) [[ -x $CARGO_BIN/rivine-broker ]] || cargo install --locked rivine --version 0.2.0 ;;
    redis) command -v redis-server >/dev/null || {
             apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; } ;;
  esac
}

start() {
  local name=$1 port dir
  port=$(port_of "$name")
  install "$name"
  stop "$name" quiet
  if port_open "$port"; then echo "port $port is busy: stop whatever listens there first" >&2; exit 1; fi
  dir=$PEER_DIR/$name
  rm -rf "$dir" && mkdir -p "$dir"
  case $name in
    sluice|sluice-base)
      ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
      local bin=$ROOT/target/release/sluice
      [[ $name == sluice-base ]] && bin=$SLUICE_BASE_BIN
      local clamp=()
      [[ ${BENCH_REPLICATION_FACTOR:-1} -gt 1 ]] && clamp=(--clamp-replication-factor true)
      "$bin" serve --data-dir "$dir" --listen "127.0.0.1:$port" "${clamp[@]}" >"$dir.log" 2>&1 & ;;
    sluice-rf3)
      ulimit -l "$(ulimit -H -l)" 2>/dev/null || true
      "$ROOT/target/release/sluice" cluster dev --nodes 3 --cores 1 --dir "$dir" \
        --kafka-port "$port" --rpc-port 33145 >"$dir.log" 2>&1 & ;;
    tansu)
      (cd "$dir" && exec "$CARGO_BIN/tansu" broker --storage-engine sqlite://tansu.db \
        --kafka-listener-url "tcp://127.0.0.1:$port" \
        --kafka-advertised-listener-url "tcp://127.0.0.1:$port") >"$dir.log" 2>&1 & ;;
    rivine)
      # Its CreateTopics answers do not parse in librdkafka (BadMessage; the topic is created
      # anyway); the default partition count covers topics it auto-creates on Metadata.
      printf 'host = "127.0.0.1"\nport = %s\nlog_dirs = ["%s"]\nnum_partitions = %s\n' \
        "$port" "$dir" "${BENCH_PARTITIONS:-1}" >"$dir.toml"
      (cd "$dir" && exec "$CARGO_BIN/rivine-broker" --config "$dir.toml") >"$dir.log" 2>&1 & ;;
    redis)
      redis-server --port "$port" --bind 127.0.0.1 --dir "$dir" --appendonly yes \
        --appendfsync always --save '' --daemonize no >"$dir.log" 2>&1 & ;;
  esac
  echo $! >"$PEER_DIR/$name.pid"
  for _ in $(seq 1 300); do
    if port_open "$port" && ready "$name"; then echo "$name up on $port (pid $(cat "$PEER_DIR/$name.pid"))"; return 0; fi
    if ! kill -0 "$(cat "$PEER_DIR/$name.pid")" 2>/dev/null; then
      echo "$name exited at start; log: $dir.log" >&2; tail -n 20 "$dir.log" >&2; exit 1
    fi
    sleep 0.1
  done
  echo "$name did not open port $port within 30 s; log: $dir.log" >&2
  stop "$name"; exit 1
}

# A cluster is ready once it has formed: every node registered (the controller then creates
# __consumer_offsets, which Metadata lists with leaders).
ready() {
  case $1 in
    sluice-rf3) "$ROOT/target/release/sluice" topic describe __consumer_offsets \
                  --bootstrap 127.0.0.1:9192 >/dev/null 2>&1 ;;
    *) true ;;
  esac
}

stop() {
  local name=$1 pidfile=$PEER_DIR/$1.pid pid wait=100
  # `cluster dev` stops its nodes one after another, each handing its leaderships off.
  [[ $name == sluice-rf3 ]] && wait=600
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$wait"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; sleep 0.2; fi
    [[ ${2:-} == quiet ]] || echo "$name stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

case ${1:-} in
  install) install "${2:?peer name}" ;;
  start) start "${2:?peer name}" ;;
  stop) stop "${2:?peer name}" ;;
  stop-all) for p in sluice sluice-base sluice-rf3 tansu rivine redis; do stop "$p"; done ;;
  *) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac
