#!/usr/bin/env bash
# Builds librdkafka's own benchmark tool, `rdkafka_performance`, from the librdkafka source the
# `rdkafka-sys` crate bundles (the exact librdkafka version `sluice bench` links), and prints its
# path. The build lands in ${RDKAFKA_PERF_DIR:-target/rdkafka-perf}; a second call reuses it.
# Usage: bench-harness/peers/rdkafka-performance.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${RDKAFKA_PERF_DIR:-$PWD/target/rdkafka-perf}
BIN=$OUT/librdkafka/examples/rdkafka_performance
if [[ -x $BIN ]]; then echo "$BIN"; exit 0; fi

# The rdkafka-sys source cargo fetched for this workspace (Cargo.lock pins the version).
version=$(sed -n '/^name = "rdkafka-sys"/{n;s/^version = "\(.*\)"/\1/p}' Cargo.lock)
[[ -n $version ]] || { echo "rdkafka-sys not in Cargo.lock" >&2; exit 1; }
cargo fetch --locked >/dev/null
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version"/librdkafka | head -n 1)
[[ -d $src ]] || { echo "librdkafka source for rdkafka-sys $version not found" >&2; exit 1; }

mkdir -p "$OUT"
rm -rf "$OUT/librdkafka"
cp -r "$src" "$OUT/librdkafka"
cd "$OUT/librdkafka"
# Same shape as the library the harness links: no TLS, SASL/OAuth or HTTP; zstd and zlib on when
# their headers exist (install libzstd-dev zlib1g-dev for compressed workloads).
./configure --disable-ssl --disable-gssapi --disable-curl --install-deps=false >"$OUT/configure.log" 2>&1 \
  || ./configure --disable-ssl --disable-gssapi --disable-curl >"$OUT/configure.log" 2>&1
make -j"$(nproc)" libs >"$OUT/build.log" 2>&1
make -C examples rdkafka_performance >>"$OUT/build.log" 2>&1
echo "$BIN"
