#!/usr/bin/env bash
# Node density on one host: N litecoind regtest nodes (N = 1, 5, 10, 20) provisioned from one base
# (`thinnode node create`, overlay layers, one shared host cache) and started at once (`node start` of
# all N in parallel), measured in the same run with N = 1 as the baseline:
#   - time from the starts until every node answers RPC (getblockcount), and its ratio to one node;
#   - bytes the store sent while they started (our zdb's own counter of bytes written to clients,
#     `--metrics`): every node reads the same chunks at startup, so N nodes should cost what one costs
#     (each chunk fetched once: target <= 1.05x one node);
#   - then every node reads the same COLD_MB file of the base (random bytes, not read at startup) from
#     start to end, all at once: bytes the store sent against the file's size, the unique bytes the
#     nodes touch (target <= 1.05x);
#   - memory of the thinnode processes of a node (its supervisor and its mount daemon), per node:
#     RSS idle after the start and its high-water mark (VmHWM) after the sequential read (targets
#     <= 32 MB idle, <= 96 MB under a sequential read), PSS idle (pages shared between the nodes, such as
#     the binary's code, split between them: what a node adds to the host), and threads; each also for
#     the mount daemon and the supervisor alone, with the mount daemon's anonymous memory (heap, thread
#     stacks and malloc arenas).
#
#   bash bench/density.sh            (defaults: NODES="1 5 10 20" RUNS=3 COLD_MB=256 BASE_BLOCKS=600)
#
# Medians of RUNS runs per N (N interleaved: 1 5 10 20, then again). One mount daemon's smaps and status
# at the largest N go to DENSITY_OUT. Extra environment for the nodes' processes (e.g. an allocator
# setting to compare) can be given as NODE_ENV="NAME=VALUE ...". Needs root, /dev/fuse, litecoind
# (scripts/setup.sh). Drops the page cache before each run (echo 3 > /proc/sys/vm/drop_caches).
# Everything it starts is stopped on exit, by PID or through `thinnode node rm` of its own state dir.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=${NODES:-1 5 10 20}
RUNS=${RUNS:-3}
COLD_MB=${COLD_MB:-256}
BASE_BLOCKS=${BASE_BLOCKS:-600}
SMAPS_AT=${SMAPS_AT:-${NODES##* }}         # keep one mount daemon's smaps at this N (the largest)
DENSITY_OUT=${DENSITY_OUT:-/var/tmp/thinnode-density-last}
NODE_ENV=${NODE_ENV:-}
RPC_TIMEOUT_S=${RPC_TIMEOUT_S:-300}
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
  # Never delete through a mount that is still there (a node that could not be removed).
  if awk -v w="$WORK/" 'index($5, w) == 1 {found = 1} END {exit !found}' /proc/self/mountinfo; then
    echo "density: mounts below $WORK remain; left in place" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print 0; else print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1000000}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pss_kb() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
rpc_answers() { litecoin-cli -regtest -rpcport="$1" -rpcuser=density -rpcpassword=density getblockcount >/dev/null 2>&1; }
node_json() { "$T" node ls --json; }

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), load:$(uptime | sed 's/.*load average://')"
port=$(free_port)
metrics_port=$(free_port)
"$T" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$port" \
  --metrics "127.0.0.1:$metrics_port" 2>"$WORK/zdb.log" &
ZDB_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
# Bytes our zdb has written to its clients (RESP replies: the chunks and their framing).
sent() {
  curl -sf "http://127.0.0.1:$metrics_port/metrics" | awk '$1 == "thinnode_zdb_sent_bytes_total" {print $2}'
}
[ -n "$(sent)" ] || { echo "density: zdb metrics endpoint gives no sent_bytes counter" >&2; exit 1; }

echo "== base: litecoind regtest, $BASE_BLOCKS blocks with transactions, plus a ${COLD_MB} MB cold file"
python3 bench/litecoin-chain.py "$WORK/chain" "$BASE_BLOCKS" 20 4 >/dev/null
head -c "$((COLD_MB * 1000000))" /dev/urandom > "$WORK/chain/regtest/cold.bin"
COLD_BYTES=$(stat -c %s "$WORK/chain/regtest/cold.bin")
"$T" base create "$WORK/chain" --store "zdb://127.0.0.1:$port/default" --out "$WORK/base.img" \
  --chain litecoin-regtest --height "$BASE_BLOCKS" --db-type leveldb >/dev/null
"$T" inspect "$WORK/base.img" | sed 's/^/   /'

# One measurement: N nodes created, started at once, read the cold file at once, stopped.
# Prints (per node unless said): start_ms store_start_bytes store_read_bytes rss_idle_kb pss_idle_kb
# rss_peak_kb threads mount_rss_idle_kb mount_anon_idle_kb mount_peak_kb mount_threads sup_rss_idle_kb
# sup_threads
measure() {
  local n=$1 run=$2
  rm -rf "$THINNODE_STATE_DIR" "$WORK/cache"
  local names=() i
  for i in $(seq "$n"); do names+=("d$i"); done
  for name in "${names[@]}"; do
    "$T" node create "$name" --image "$WORK/base.img" --cache "$WORK/cache" --layer-kind overlay >/dev/null
  done
  sync; echo 3 > /proc/sys/vm/drop_caches
  local s0 t0
  s0=$(sent); t0=$(now)
  for name in "${names[@]}"; do
    # shellcheck disable=SC2086 # NODE_ENV is a list of NAME=VALUE words
    env $NODE_ENV "$T" node start "$name" -- litecoind -regtest -datadir={data} -port={port:1} -rpcport={port:2} \
      -rpcuser=density -rpcpassword=density -connect=0 -listen=0 -disablewallet -dbcache=4 \
      -maxmempool=5 -rpcthreads=2 -printtoconsole >/dev/null &
  done
  wait
  local ports
  ports=$(node_json | python3 -c "import json,sys; print(' '.join(str(n['ports']['2']) for n in json.load(sys.stdin)))")
  local p deadline=$(( $(date +%s) + RPC_TIMEOUT_S ))
  for p in $ports; do
    until rpc_answers "$p"; do
      if [ "$(date +%s)" -gt "$deadline" ]; then
        echo "density: a node (RPC port $p) did not answer within ${RPC_TIMEOUT_S} s" >&2
        node_json >&2
        exit 1
      fi
      sleep 0.05
    done
  done
  local start_ms store_start
  start_ms=$(ms "$t0")
  store_start=$(( $(sent) - s0 ))
  sleep 5
  # The thinnode processes of each node: its supervisor and its mount daemon.
  local sups mounts
  sups=$(node_json | python3 -c "import json,sys; print(' '.join(str(n['supervisor_pid']) for n in json.load(sys.stdin)))")
  mounts=$(node_json | python3 -c "import json,sys; print(' '.join(str(n['mount_pid']) for n in json.load(sys.stdin)))")
  local m_rss=0 m_anon=0 m_pss=0 m_thr=0 s_rss=0 s_pss=0 s_thr=0
  for p in $mounts; do
    m_rss=$((m_rss + $(status_kb "$p" VmRSS))); m_anon=$((m_anon + $(status_kb "$p" RssAnon)))
    m_pss=$((m_pss + $(pss_kb "$p"))); m_thr=$((m_thr + $(status_kb "$p" Threads)))
  done
  for p in $sups; do
    s_rss=$((s_rss + $(status_kb "$p" VmRSS))); s_pss=$((s_pss + $(pss_kb "$p"))); s_thr=$((s_thr + $(status_kb "$p" Threads)))
  done
  # Every node reads the cold file at once.
  local s1
  s1=$(sent)
  for name in "${names[@]}"; do
    cat "$THINNODE_STATE_DIR/nodes/$name/data/regtest/cold.bin" > /dev/null &
  done
  wait
  local store_read=$(( $(sent) - s1 ))
  local m_peak=0 s_peak=0
  for p in $mounts; do m_peak=$((m_peak + $(status_kb "$p" VmHWM))); done
  for p in $sups; do s_peak=$((s_peak + $(status_kb "$p" VmHWM))); done
  if [ "$n" = "$SMAPS_AT" ] && [ "$run" = 1 ]; then
    local mpid=${mounts%% *}
    cp "/proc/$mpid/smaps" "$DENSITY_OUT/smaps-mount-$n.txt" 2>/dev/null || true
    cp "/proc/$mpid/status" "$DENSITY_OUT/status-mount-$n.txt" 2>/dev/null || true
  fi
  for name in "${names[@]}"; do "$T" node stop "$name" >/dev/null & done
  wait
  for name in "${names[@]}"; do "$T" node rm "$name" >/dev/null; done
  echo "$start_ms $store_start $store_read $(( (m_rss + s_rss) / n )) $(( (m_pss + s_pss) / n ))" \
    "$(( (m_peak + s_peak) / n )) $(( (m_thr + s_thr) / n )) $((m_rss / n)) $((m_anon / n))" \
    "$((m_peak / n)) $((m_thr / n)) $((s_rss / n)) $((s_thr / n))"
}

declare -A R
for run in $(seq "$RUNS"); do
  for n in $NODES; do
    line=$(measure "$n" "$run")
    R[$n,$run]=$line
    echo "   N=$n run $run: start_ms store_start store_read | per node, kB: rss_idle pss_idle rss_peak threads | mount: rss anon peak threads | supervisor: rss threads"
    echo "      $line"
  done
done

col() { local n=$1 c=$2; for run in $(seq "$RUNS"); do echo "${R[$n,$run]}" | cut -d' ' -f"$c"; done | median; }
first=${NODES%% *}
base_ms=$(col "$first" 1); base_store=$(col "$first" 2)
echo
echo "$RUNS runs per N, medians; $(date -u '+%Y-%m-%d %H:%M UTC'); $(git rev-parse --short HEAD); cold file ${COLD_MB} MB (random bytes)${NODE_ENV:+; node environment: $NODE_ENV}"
echo
echo "| nodes | all answer RPC, s | ratio to 1 node | store bytes at start, MB | ratio to 1 node (<= 1.05) | store bytes, all read the cold file, MB | ratio to the file's bytes (<= 1.05) | RSS idle per node, MiB (<= 32) | PSS idle per node, MiB | RSS peak per node after the read, MiB (<= 96) | threads per node |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $NODES; do
  m=$(col "$n" 1); s=$(col "$n" 2); r=$(col "$n" 3)
  echo "| $n | $(awk -v m="$m" 'BEGIN {printf "%.2f", m / 1000}') | $(ratio "$m" "$base_ms") | $(mb "$s") | $(ratio "$s" "$base_store") | $(mb "$r") | $(ratio "$r" "$COLD_BYTES") | $(mib "$(col "$n" 4)") | $(mib "$(col "$n" 5)") | $(mib "$(col "$n" 6)") | $(col "$n" 7) |"
done
echo
echo "Per process (MiB, medians): mount daemon RSS idle / of it anonymous / peak after the read / threads; supervisor RSS idle / threads"
echo
echo "| nodes | mount RSS idle | mount anon idle | mount RSS peak | mount threads | supervisor RSS idle | supervisor threads |"
echo "|---:|---:|---:|---:|---:|---:|---:|"
for n in $NODES; do
  echo "| $n | $(mib "$(col "$n" 8)") | $(mib "$(col "$n" 9)") | $(mib "$(col "$n" 10)") | $(col "$n" 11) | $(mib "$(col "$n" 12)") | $(col "$n" 13) |"
done
echo
echo "load:$(uptime | sed 's/.*load average://')"
