#!/usr/bin/env bash
# Memory and threads of one `thinnode mount` daemon: RSS and thread count idle, peak RSS (VmHWM) after a
# cold sequential read of a big file (page cache dropped first), and after random 4 KiB reads of it
# from 4 threads once it is cached. Baseline in the same run: the same figures before any read.
#
#   bash bench/mount-memory.sh [FILE_MIB] [RUNS]     (defaults: 1024 MiB, 3 runs)
#
# Needs root and /dev/fuse. Starts its own zdb on loopback; drops the page cache (briefly, for everyone)
# before each cold read.
set -euo pipefail
cd "$(dirname "$0")/.."

FILE_MIB=${1:-1024}
RUNS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode --bin thinnode
cargo build --quiet --release -p mount --example rand_read
BIN=$CARGO_TARGET_DIR/release/thinnode
RAND=$CARGO_TARGET_DIR/release/examples/rand_read

WORK=$(mktemp -d /var/tmp/thinnode-mem.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/src"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$PORT" \
  >"$WORK/zdb.log" 2>&1 &
ZDB_PID=$!
cleanup() {
  "$BIN" umount "$MNT" >/dev/null 2>&1 || true
  kill "$ZDB_PID" 2>/dev/null || true
  wait "$ZDB_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
head -c $((FILE_MIB << 20)) /dev/urandom >"$WORK/src/big.bin"
"$BIN" pack "$WORK/src" --store "zdb://127.0.0.1:$PORT/default" --out "$WORK/img" >/dev/null 2>&1

status() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { echo "$(( $1 / 1024 ))"; }

printf '%-4s %10s %10s %8s %14s %14s %18s\n' run idle_MiB idle_thr cold_MBps cold_peak_MiB peak_thr rand_peak_MiB
for run in $(seq "$RUNS"); do
  rm -rf "$WORK/cache"
  "$BIN" mount "$WORK/img" "$MNT" --cache "$WORK/cache" --daemon --log "$WORK/mount.log" >"$WORK/out" 2>&1
  PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$WORK/out")
  sleep 1
  idle=$(status "$PID" VmRSS)
  idle_thr=$(status "$PID" Threads)
  sync
  echo 3 >/proc/sys/vm/drop_caches
  # A handle open from before the file is complete keeps the inode daemon-served (the kernel does not
  # mix passthrough and daemon handles), so the random reads below still go through the daemon.
  exec 7<"$MNT/big.bin"
  start=$(date +%s.%N)
  dd if="$MNT/big.bin" of=/dev/null bs=1M status=none
  end=$(date +%s.%N)
  mbps=$(python3 -c "print(round($FILE_MIB * 1.048576 / ($end - $start)))")
  cold_peak=$(status "$PID" VmHWM)
  peak_thr=$(status "$PID" Threads)
  "$RAND" "$MNT/big.bin" 3 4 >/dev/null 2>&1 || true
  exec 7<&-
  rand_peak=$(status "$PID" VmHWM)
  printf '%-4s %10s %10s %8s %14s %14s %18s\n' "$run" "$(mib "$idle")" "$idle_thr" "$mbps" \
    "$(mib "$cold_peak")" "$peak_thr" "$(mib "$rand_peak")"
  "$BIN" umount "$MNT"
done
