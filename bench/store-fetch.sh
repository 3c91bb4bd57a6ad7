#!/usr/bin/env bash
# Fetch (and store) throughput of the zdb:// chunk store from a local server (our `zdb`, or any 0-db given with ZDB_BIN),
# against plain loopback TCP measured in the same run.
#
#   bash bench/store-fetch.sh [COUNT] [SIZE_BYTES] [RUNS]      (defaults: 512 objects of 1 MiB, 3 runs)
#
# Prints one table row per mode: median MB/s over RUNS interleaved rounds and the median of the per-round
# ratio to loopback TCP moving the same bytes.
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

# MB/s printed by one run of: $BENCH <args>
rate() { "$BENCH" "$@" | sed -n 's/.*MB\/s=\([0-9]*\).*/\1/p'; }

# Each round measures the baseline and then every mode once (in random order), so that load from other processes on this
# shared machine hits the baseline and the modes alike; ratios are taken within a round.
MODES=(
  "get_each, batches of 64 (ChunkStore, streamed, reused buffer)|fetch --mode each --batch 64"
  "get_many, batches of 64 (ChunkStore, pipelined GET)|fetch --mode many --batch 64"
  "get_many, batches of 16 (ChunkStore, pipelined GET)|fetch --mode many --batch 16"
  "MGET, batches of 64|fetch --mode mget --batch 64"
  "one GET at a time|fetch --mode single"
  "get_many, batches of 64, glibc trim/mmap thresholds raised|fetch --mode many --batch 64 --tuned-malloc"
  "put, one at a time (fresh objects)|store --batch 1"
  "put_many, batches of 64 (pipelined SET, fresh objects)|store --batch 64"
)
TUNED=glibc.malloc.trim_threshold=4294967295:glibc.malloc.mmap_threshold=33554432
RESULTS="$WORK/results"
: >"$RESULTS"
for round in $(seq "$RUNS"); do
  base=$(rate loopback --bytes "$BYTES")
  printf 'baseline\t%s\t%s\n' "$round" "$base" >>"$RESULTS"
  # A fresh random order each round, so no mode always runs after the same neighbour.
  for i in $(shuf -i 0-$((${#MODES[@]} - 1))); do
    entry=${MODES[$i]}
    label=${entry%%|*}
    read -r -a args <<<"${entry#*|}"
    env_prefix=()
    kept=()
    for a in "${args[@]}"; do
      if [[ $a == --tuned-malloc ]]; then env_prefix=(env "GLIBC_TUNABLES=$TUNED"); else kept+=("$a"); fi
    done
    args=("${kept[@]}")
    case ${args[0]} in
      fetch) r=$("${env_prefix[@]}" "$BENCH" "${args[@]}" --store "$URL" --ids "$WORK/ids" | sed -n 's/.*MB\/s=\([0-9]*\).*/\1/p') ;;
      store) r=$("$BENCH" "${args[@]}" --store "$URL" --count "$COUNT" --size "$SIZE" | sed -n 's/.*MB\/s=\([0-9]*\).*/\1/p') ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$label" "$round" "$r" "$(awk -v a="$r" -v b="$base" 'BEGIN {printf "%.3f", a/b}')" >>"$RESULTS"
  done
done

median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf '\nzdb store of %d objects of %d bytes (%d MiB), %d interleaved rounds, %s cores\n\n' \
  "$COUNT" "$SIZE" $((BYTES >> 20)) "$RUNS" "$(nproc)"
printf '| mode | median MB/s | median ratio to loopback TCP in the same round |\n|---|---:|---:|\n'
printf '| loopback TCP, 1 MiB writes (baseline) | %s | 1.00 |\n' \
  "$(awk -F'\t' '$1 == "baseline" {print $3}' "$RESULTS" | median)"
for entry in "${MODES[@]}"; do
  label=${entry%%|*}
  mbs=$(awk -F'\t' -v l="$label" '$1 == l {print $3}' "$RESULTS" | median)
  ratio=$(awk -F'\t' -v l="$label" '$1 == l {print $4}' "$RESULTS" | median)
  printf '| %s | %s | %.2f |\n' "$label" "$mbs" "$ratio"
done
