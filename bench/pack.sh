#!/usr/bin/env bash
# Pack throughput: `thinnode pack` to a dir:// store and to our 0-db server (`thinnode zdb`), timed against
# `tar -c DIR | zstd -1 -T0 > out` on the same generated tree in the same run. Prints a markdown table of
# medians over RUNS runs and the ratios pack/tar (goal: ≤ 1.0).
#
# Part 2 (incremental): builds a real ParityDB with crates/paritydb-harness, packs it, adds 1% new keys
# (`paritydb-harness extend --fraction 0.01`), re-packs with --base, and prints the bytes uploaded by the
# re-pack as a fraction of the first upload, per chunk size.
#
#   bash bench/pack.sh                 # both parts: 2 GiB tree, 3 runs; 200 MB ParityDB
#   SIZE_MB=512 RUNS=1 bash bench/pack.sh
#   MODE=incremental bash bench/pack.sh
#
# Env: MODE (all | throughput | incremental; default all), SIZE_MB (default 2048), RUNS (default 3),
# PDB_SIZE (ParityDB value bytes, default 200MiB), WORK (scratch dir, default /var/tmp/thinnode-bench-pack),
# CARGO_TARGET_DIR (where the release binaries are built, default target).
set -euo pipefail

MODE=${MODE:-all}
SIZE_MB=${SIZE_MB:-2048}
PDB_SIZE=${PDB_SIZE:-200MiB}
RUNS=${RUNS:-3}
WORK=${WORK:-/var/tmp/thinnode-bench-pack}
REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}

command -v zstd >/dev/null || apt-get install -y zstd >/dev/null
command -v tar >/dev/null || apt-get install -y tar >/dev/null

(cd "$REPO" && CARGO_TARGET_DIR=$TARGET cargo build --release -q -p thinnode -p paritydb-harness)
BIN=$TARGET/release/thinnode
HARNESS=$TARGET/release/paritydb-harness

ZDB_PID=""
cleanup() {
    if [ -n "$ZDB_PID" ]; then kill "$ZDB_PID" 2>/dev/null || true; wait "$ZDB_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
rm -rf "$WORK"
mkdir -p "$WORK/src"

throughput() {
# ---- generate the tree: 40% random (SST-like), 25% base64 (mildly compressible), 25% log text (very
# compressible), 10% small files of mixed content.
gen() {
    # `head` closes pipes early on purpose: ignore the writers' SIGPIPE.
    set +o pipefail
    local src=$WORK/src
    local rand_mb=$((SIZE_MB * 40 / 100)) b64_mb=$((SIZE_MB * 25 / 100)) log_mb=$((SIZE_MB * 25 / 100))
    local small_mb=$((SIZE_MB - rand_mb - b64_mb - log_mb))
    mkdir -p "$src/db/sst" "$src/db/blobs" "$src/logs" "$src/small"
    local i=0
    while [ $((i * 64)) -lt "$rand_mb" ]; do
        head -c $((64 << 20)) /dev/urandom >"$src/db/sst/$(printf %06d $i).sst"; i=$((i + 1))
    done
    i=0
    while [ $((i * 128)) -lt "$b64_mb" ]; do
        head -c $((96 << 20)) /dev/urandom | base64 -w 120 | head -c $((128 << 20)) >"$src/db/blobs/blob$i"
        i=$((i + 1))
    done
    i=0
    while [ $((i * 128)) -lt "$log_mb" ]; do
        seq $((i * 3000000)) $(((i + 1) * 3000000)) |
            awk '{printf "%d block #%d imported hash=0x%08x peers=%d txs=%d\n", 1700000000+$1, $1, ($1*2654435761)%4294967296, $1%50, $1%997}' |
            head -c $((128 << 20)) >"$src/logs/node.log.$i"
        i=$((i + 1))
    done
    local n=$((small_mb * 1024 / 64)) j
    for ((j = 0; j < n; j++)); do
        if ((j % 2)); then head -c $((4096 + (j * 7919) % 126976)) /dev/urandom; else
            head -c $((4096 + (j * 7919) % 126976)) "$src/logs/node.log.0"; fi >"$src/small/f$j"
    done
    set -o pipefail
}
echo "generating a ${SIZE_MB} MiB tree in $WORK/src ..." >&2
gen
BYTES=$(du -sb "$WORK/src" | cut -f1)
FILES=$(find "$WORK/src" -type f | wc -l)
# Warm the page cache the same way for every contender.
cat $(find "$WORK/src" -type f) >/dev/null

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc; }

start_zdb() {
    local dir=$1 port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$BIN" zdb --data "$dir/data" --index "$dir/index" --listen 127.0.0.1 --port "$port" >"$dir.log" 2>&1 &
    ZDB_PID=$!
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break
        sleep 0.05
    done
    ZDB_PORT=$port
}
stop_zdb() { kill "$ZDB_PID"; wait "$ZDB_PID" 2>/dev/null || true; ZDB_PID=""; }

declare -a T_TAR T_DIR T_ZDB T_ZDB2 UP_DIR
for r in $(seq "$RUNS"); do
    echo "run $r/$RUNS ..." >&2
    rm -f "$WORK/out.tar.zst"; sync
    t0=$(now); tar -C "$WORK" -c src | zstd -1 -T0 -q >"$WORK/out.tar.zst"; t1=$(now)
    T_TAR+=("$(elapsed "$t0" "$t1")")
    TAR_OUT=$(stat -c %s "$WORK/out.tar.zst")

    rm -rf "$WORK/store"; sync
    t0=$(now); "$BIN" pack "$WORK/src" --store "dir://$WORK/store" --out "$WORK/dir.img" --json >"$WORK/dir.json"; t1=$(now)
    T_DIR+=("$(elapsed "$t0" "$t1")")
    UP_DIR+=("$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/dir.json")")

    rm -rf "$WORK/zdb"; mkdir -p "$WORK/zdb"; sync
    start_zdb "$WORK/zdb"
    t0=$(now); "$BIN" pack "$WORK/src" --store "zdb://127.0.0.1:$ZDB_PORT/default" --out "$WORK/zdb.img" >/dev/null; t1=$(now)
    T_ZDB+=("$(elapsed "$t0" "$t1")")
    # Re-pack the unchanged tree: every chunk is already there (existence checks only).
    t0=$(now); "$BIN" pack "$WORK/src" --store "zdb://127.0.0.1:$ZDB_PORT/default" --out "$WORK/zdb2.img" >/dev/null; t1=$(now)
    T_ZDB2+=("$(elapsed "$t0" "$t1")")
    stop_zdb
done

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
M_TAR=$(median "${T_TAR[@]}"); M_DIR=$(median "${T_DIR[@]}"); M_ZDB=$(median "${T_ZDB[@]}"); M_ZDB2=$(median "${T_ZDB2[@]}")
MIB=$(echo "$BYTES / 1048576" | bc -l)
# Per-run ratios (each contender against the tar|zstd run just before it) are steadier than a ratio of
# medians on a noisy machine; both are printed.
run_ratios() { local -n times=$1; local i; for i in "${!times[@]}"; do echo "${times[$i]} / ${T_TAR[$i]}" | bc -l; done; }
row() { printf '| %s | %.2f | %.0f | %.2f | %.2f |\n' "$1" "$2" "$(echo "$MIB / $2" | bc -l)" "$(echo "$2 / $M_TAR" | bc -l)" "$3"; }

echo
echo "tree: $FILES files, $(printf %.0f "$MIB") MiB; $(nproc) cores; $RUNS runs, medians; page cache warm"
echo "tar|zstd output $(echo "$TAR_OUT / 1048576" | bc) MiB; thinnode stored $(echo "${UP_DIR[0]} / 1048576" | bc) MiB"
echo
echo "| contender | seconds | MiB/s | ratio of medians | median of per-run ratios |"
echo "|---|---|---|---|---|"
row 'tar -c \| zstd -1 -T0 (baseline)' "$M_TAR" 1
row 'thinnode pack → dir:// store' "$M_DIR" "$(median $(run_ratios T_DIR))"
row 'thinnode pack → thinnode zdb' "$M_ZDB" "$(median $(run_ratios T_ZDB))"
row 'thinnode pack again → zdb (all chunks present)' "$M_ZDB2" "$(median $(run_ratios T_ZDB2))"
echo
echo "raw seconds: tar ${T_TAR[*]} | dir ${T_DIR[*]} | zdb ${T_ZDB[*]} | zdb-again ${T_ZDB2[*]}"
}

incremental() {
    local dir=$WORK/pdb json_up cs
    rm -rf "$dir"; mkdir -p "$dir"
    echo "building a ParityDB with $PDB_SIZE of values ..." >&2
    "$HARNESS" build "$dir/db" --size "$PDB_SIZE" >/dev/null
    local sizes="1MiB 256KiB 64KiB"
    json_up() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["bytes_uploaded"], d["chunks_new"], d["chunks_unique"], d["logical_bytes"])' "$1"; }
    for cs in $sizes; do
        "$BIN" pack "$dir/db" --store "dir://$dir/store-$cs" --out "$dir/v1-$cs.img" --chunk-size "$cs" --json >"$dir/v1-$cs.json"
    done
    "$HARNESS" extend "$dir/db" --fraction 0.01 >/dev/null
    echo
    echo "ParityDB ($PDB_SIZE of values, $(du -sm "$dir/db" | cut -f1) MiB on disk); 1% new keys added, re-packed with --base"
    echo
    echo "| chunk size | first pack uploaded (MiB) | re-pack uploaded (MiB) | ratio re-pack / first | new chunks / unique |"
    echo "|---|---|---|---|---|"
    for cs in $sizes; do
        "$BIN" pack "$dir/db" --store "dir://$dir/store-$cs" --out "$dir/v2-$cs.img" --chunk-size "$cs" --base "$dir/v1-$cs.img" --json >"$dir/v2-$cs.json"
        read -r up1 _ _ _ < <(json_up "$dir/v1-$cs.json")
        read -r up2 new2 uniq2 _ < <(json_up "$dir/v2-$cs.json")
        printf '| %s | %.1f | %.1f | %.3f | %s / %s |\n' "$cs" "$(echo "$up1 / 1048576" | bc -l)" \
            "$(echo "$up2 / 1048576" | bc -l)" "$(echo "$up2 / $up1" | bc -l)" "$new2" "$uniq2"
    done
}

case "$MODE" in
    all) throughput; incremental ;;
    throughput) throughput ;;
    incremental) incremental ;;
    *) echo "MODE must be all, throughput or incremental" >&2; exit 2 ;;
esac
