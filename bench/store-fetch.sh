#!/usr/bin/env bash
# Fetch throughput of the zdb:// chunk store from a local server (our `zdb`, or any 0-db given with ZDB_BIN),
# against plain loopback TCP measured in the same run.
#
#   bash bench/store-fetch.sh [COUNT] [SIZE_BYTES] [RUNS]      (defaults: 512 objects of 1 MiB, 3 runs)
#
# Prints one table row per mode: median MB/s over RUNS and the ratio to loopback TCP moving the same bytes.
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${1:-512}
SIZE=${2:-1048576}
RUNS=${3:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

cargo build --quiet --release -p zdb -p store --example store-fetch-bench
BENCH=$CARGO_TARGET_DIR/release/examples/store-fetch-bench
ZDB_BIN=${ZDB_BIN:-$CARGO_TARGET_DIR/release/zdb}

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ZDB_BIN" --data "$WORK/data" --index "$WORK/index" --listen 127.0.0.1 --port "$PORT" >"$WORK/zdb.log" 2>&1 &
ZDB_PID=$!
cleanup() { kill "$ZDB_PID" 2>/dev/null || true; wait "$ZDB_PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done

URL="zdb://127.0.0.1:$PORT/default"
"$BENCH" fill --store "$URL" --ids "$WORK/ids" --count "$COUNT" --size "$SIZE"
BYTES=$((COUNT * SIZE))

# median MB/s of RUNS runs of: $BENCH <args>
median() {
  for _ in $(seq "$RUNS"); do "$BENCH" "$@" | sed -n 's/.*MB\/s=\([0-9]*\).*/\1/p'; done | sort -n |
    awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'
}

BASE=$(median loopback --bytes "$BYTES")
printf '\nzdb fetch of %d objects of %d bytes (%d MiB), median of %d runs, %s\n\n' \
  "$COUNT" "$SIZE" $((BYTES >> 20)) "$RUNS" "$(nproc) cores"
printf '| mode | MB/s | vs loopback TCP |\n|---|---:|---:|\n'
printf '| loopback TCP, 1 MiB writes (baseline) | %s | 1.00 |\n' "$BASE"
row() {
  local label=$1; shift
  local rate
  rate=$(median fetch --store "$URL" --ids "$WORK/ids" "$@")
  printf '| %s | %s | %s |\n' "$label" "$rate" "$(awk -v a="$rate" -v b="$BASE" 'BEGIN {printf "%.2f", a/b}')"
}
row "get_each, batches of 64 (ChunkStore, streamed, reused buffer)" --mode each --batch 64
row "get_many, batches of 64 (ChunkStore, pipelined GET)" --mode many --batch 64
row "get_many, batches of 16 (ChunkStore, pipelined GET)" --mode many --batch 16
row "MGET, batches of 64" --mode mget --batch 64
row "one GET at a time" --mode single
# The same get_many with glibc told not to hand freed memory back to the kernel: shows how much of the
# gap is page faults on freshly allocated result buffers rather than the protocol.
GLIBC_TUNABLES=glibc.malloc.trim_threshold=4294967295:glibc.malloc.mmap_threshold=33554432 \
  row "get_many, batches of 64, glibc trim/mmap thresholds raised" --mode many --batch 64
