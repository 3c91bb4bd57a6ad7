#!/usr/bin/env bash
# Node density on one host: N litecoind regtest nodes (N = 1, 5, 10, 20) provisioned from one base
# (`thinnode node create`, overlay layers, one shared host cache) and started at once (`node start` of
# all N in parallel), measured in the same run with N = 1 as the baseline:
#   - time from the starts until every node answers RPC (getblockcount);
#   - bytes the store sent while they started (the zdb server's socket writes, /proc/PID/io wchar):
#     every node reads the same chunks at startup, so N nodes should cost what one costs (each chunk
#     fetched once; target <= 1.05x N = 1);
#   - then every node reads the same COLD_MB file of the base (random bytes, not read at startup) from
#     start to end, all at once: bytes the store sent against the file's stored size (target <= 1.05x);
#   - per node (supervisor + mount daemon, the thinnode processes): RSS idle after the start and RSS
#     high-water mark after the sequential read (targets <= 32 MB idle, <= 96 MB under a sequential
#     read), PSS idle (shared pages split between the nodes), threads.
#
#   bash bench/density.sh            (defaults: NODES="1 5 10 20" RUNS=3 COLD_MB=256 BASE_BLOCKS=600)
#
# Medians of RUNS runs per N; one mount daemon's smaps at the largest N go to DENSITY_OUT. Needs root, /dev/fuse, litecoind (scripts/setup.sh). Drops the page cache
# before each run (echo 3 > /proc/sys/vm/drop_caches). Everything it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-1 5 10 20}
RUNS=${RUNS:-3}
COLD_MB=${COLD_MB:-256}
BASE_BLOCKS=${BASE_BLOCKS:-600}
SMAPS_AT=${SMAPS_AT:-${NODES##* }}         # keep one mount daemon's smaps at this N (the largest)
DENSITY_OUT=${DENSITY_OUT:-/var/tmp/thinnode-density-last}
mkdir -p "$DENSITY_OUT"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode
T=$CARGO_TARGET_DIR/release/thinnode

WORK=$(mktemp -d /var/tmp/thinnode-density.XXXXXX)
export THINNODE_STATE_DIR=$WORK/state
ZDB_PID=
cleanup() {
  if [ -d "$THINNODE_STATE_DIR/nodes" ]; then
    for n in $(ls "$THINNODE_STATE_DIR/nodes"); do
      "$T" node rm --force "$n" >/dev/null 2>&1 &
    done
    wait
  fi
  [ -n "$ZDB_PID" ] && kill "$ZDB_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1000000}'; }
wchar() { awk '/^wchar/ {print $2}' "/proc/$ZDB_PID/io"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rpc_answers() { litecoin-cli -regtest -rpcport="$1" -rpcuser=density -rpcpassword=density getblockcount >/dev/null 2>&1; }

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), load:$(uptime | sed 's/.*load average://')"
port=$((20000 + RANDOM % 10000))
"$T" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$port" 2>"$WORK/zdb.log" &
ZDB_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

echo "== base: litecoind regtest, $BASE_BLOCKS blocks with transactions, plus a ${COLD_MB} MB cold file"
python3 bench/litecoin-chain.py "$WORK/chain" "$BASE_BLOCKS" 20 4 >/dev/null
head -c "$((COLD_MB * 1000000))" /dev/urandom > "$WORK/chain/regtest/cold.bin"
"$T" base create "$WORK/chain" --store "zdb://127.0.0.1:$port/default" --out "$WORK/base.img" \
  --chain litecoin-regtest --height "$BASE_BLOCKS" --db-type leveldb >/dev/null
"$T" inspect "$WORK/base.img" | sed 's/^/   /'

# One measurement: N nodes created, started at once, read the cold file at once, stopped.
# Prints: start_ms store_start_bytes store_read_bytes rss_idle_kb pss_idle_kb rss_peak_kb threads
measure() {
  local n=$1 run=$2
  rm -rf "$THINNODE_STATE_DIR" "$WORK/cache"
  local names=() i
  for i in $(seq "$n"); do names+=("d$i"); done
  for name in "${names[@]}"; do
    "$T" node create "$name" --image "$WORK/base.img" --cache "$WORK/cache" --layer-kind overlay >/dev/null
  done
  sync; echo 3 > /proc/sys/vm/drop_caches
  local w0 t0
  w0=$(wchar); t0=$(now)
  for name in "${names[@]}"; do
    "$T" node start "$name" -- litecoind -regtest -datadir={data} -port={port:1} -rpcport={port:2} \
      -rpcuser=density -rpcpassword=density -connect=0 -listen=0 -disablewallet -dbcache=4 \
      -maxmempool=5 -rpcthreads=2 -printtoconsole >/dev/null &
  done
  wait
  local ports=()
  for name in "${names[@]}"; do
    ports+=("$("$T" node ls --json | python3 -c "import json,sys; print([n['ports']['2'] for n in json.load(sys.stdin) if n['name']=='$name'][0])")")
  done
  for p in "${ports[@]}"; do
    until rpc_answers "$p"; do sleep 0.05; done
  done
  local start_ms store_start
  start_ms=$(ms "$t0")
  store_start=$(( $(wchar) - w0 ))
  sleep 5
  # thinnode processes of each node: supervisor and mount daemon
  local pids
  pids=$("$T" node ls --json | python3 -c "
import json,sys
for n in json.load(sys.stdin): print(n['supervisor_pid'], n['mount_pid'])")
  local rss=0 pss=0 thr=0 p
  for p in $pids; do
    rss=$((rss + $(status_kb "$p" VmRSS))); pss=$((pss + $(pss_kb "$p"))); thr=$((thr + $(status_kb "$p" Threads)))
  done
  # every node reads the cold file at once
  local w1=$(wchar)
  for name in "${names[@]}"; do
    cat "$THINNODE_STATE_DIR/nodes/$name/data/regtest/cold.bin" > /dev/null &
  done
  wait
  local store_read=$(( $(wchar) - w1 ))
  local peak=0
  for p in $pids; do peak=$((peak + $(status_kb "$p" VmHWM))); done
  if [ "$n" = "$SMAPS_AT" ] && [ "$run" = 1 ]; then
    local mpid
    mpid=$("$T" node ls --json | python3 -c "import json,sys; print(json.load(sys.stdin)[0]['mount_pid'])")
    cp "/proc/$mpid/smaps" "$DENSITY_OUT/smaps-mount-$n.txt" 2>/dev/null || true
    cp "/proc/$mpid/status" "$DENSITY_OUT/status-mount-$n.txt" 2>/dev/null || true
  fi
  for name in "${names[@]}"; do "$T" node stop "$name" >/dev/null & done
  wait
  for name in "${names[@]}"; do "$T" node rm "$name" >/dev/null; done
  echo "$start_ms $store_start $store_read $((rss / n)) $((pss / n)) $((peak / n)) $((thr / n))"
}

declare -A R
for n in $NODES; do
  for run in $(seq "$RUNS"); do
    line=$(measure "$n" "$run")
    R[$n,$run]=$line
    echo "   N=$n run $run: start ${line%% *} ms; store, start / cold read / per-node RSS idle, PSS idle, RSS peak (kB), threads: $line"
  done
done

col() { local n=$1 c=$2; for run in $(seq "$RUNS"); do echo "${R[$n,$run]}" | cut -d' ' -f"$c"; done | median; }
first=${NODES%% *}
base_ms=$(col "$first" 1); base_store=$(col "$first" 2); base_read=$(col "$first" 3)
echo
echo "$RUNS runs per N, medians; $(date -u '+%Y-%m-%d %H:%M UTC'); cold file ${COLD_MB} MB (random bytes)"
echo
echo "| nodes | all answer RPC, s | ratio to 1 node | store bytes at start, MB | ratio to 1 node (<= 1.05) | store bytes, all read the cold file, MB | ratio to 1 node (<= 1.05) | RSS idle per node, MB (<= 32) | PSS idle per node, MB | RSS peak per node after the read, MB (<= 96) | threads per node |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $NODES; do
  m=$(col "$n" 1); s=$(col "$n" 2); r=$(col "$n" 3)
  echo "| $n | $(awk -v m="$m" 'BEGIN {printf "%.2f", m / 1000}') | $(ratio "$m" "$base_ms") | $(mb "$s") | $(ratio "$s" "$base_store") | $(mb "$r") | $(ratio "$r" "$base_read") | $(awk -v k="$(col "$n" 4)" 'BEGIN {printf "%.1f", k / 1024}') | $(awk -v k="$(col "$n" 5)" 'BEGIN {printf "%.1f", k / 1024}') | $(awk -v k="$(col "$n" 6)" 'BEGIN {printf "%.1f", k / 1024}') | $(col "$n" 7) |"
done
echo
echo "load:$(uptime | sed 's/.*load average://')"
