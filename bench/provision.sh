#!/usr/bin/env bash
# Time to a ready node: from `node create` to the node's first answered RPC (litecoind regtest,
# `getblockcount`), for a node provisioned by thinnode from a base image, against the classic ways of
# giving a new node the same data dir, measured in the same run:
#   tar|zstd  = extract a `tar | zstd -1` snapshot of the data dir, then start the node (baseline)
#   cp -a     = plain copy of the data dir from local disk, then start the node
#   unpack    = `thinnode unpack` of the base image (full restore from zdb), then start the node
#   thinnode  = `thinnode node create` + `node start` from the image (chunks in our zdb on loopback):
#               cold (fresh host cache, page cache dropped) and warm (a second node on the same host
#               cache, as every further node on a host is)
# The data dir is a litecoind regtest chain (200 blocks) plus SIZE of cold chain data the node does not
# read at startup (a ParityDB built by paritydb-harness under regtest/cold-data, standing in for old block
# files), so the data dir is as big as a real one. Then the disk used by 3 nodes against 3 full copies.
#
#   bash bench/provision.sh [SIZE] [RUNS]        (defaults: 2GiB, 3)
#
# Needs root, /dev/fuse and litecoind (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${1:-2GiB}
RUNS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode -p paritydb-harness
T=$CARGO_TARGET_DIR/release/thinnode
HARNESS=$CARGO_TARGET_DIR/release/paritydb-harness

WORK=$(mktemp -d /var/tmp/thinnode-provision.XXXXXX)
export THINNODE_STATE_DIR=$WORK/state
port=$((20000 + RANDOM % 20000))
ZDB_PID=
cleanup() {
  for n in $("$T" node ls --json 2>/dev/null | sed -n 's/.*"name": "\(.*\)".*/\1/p'); do
    "$T" node rm --force "$n" >/dev/null 2>&1 || true
  done
  for p in $(pgrep -f "datadir=$WORK" || true); do kill "$p" 2>/dev/null || true; done
  [ -n "$ZDB_PID" ] && kill "$ZDB_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s%N; }
ms() { echo $(( ($(now) - $1) / 1000000 )); }
cli() { litecoin-cli -regtest -datadir="$1" -rpcport="$2" "${@:3}"; }
wait_rpc() { for _ in $(seq 3000); do cli "$1" "$2" getblockcount >/dev/null 2>&1 && return 0; sleep 0.02; done; echo "no RPC on $2" >&2; return 1; }
stop_node() { cli "$1" "$2" stop >/dev/null 2>&1 || true; while pgrep -f "datadir=$1 " >/dev/null || pgrep -f "datadir=$1\$" >/dev/null; do sleep 0.1; done; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
disk_bytes() { echo $(( $(du -sk "$1" | cut -f1) * 1024 )); }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
run_litecoind() { # DATADIR RPCPORT: start in the background, detached from this shell's job control
  litecoind -regtest -datadir="$1" -port=$(($2 + 1)) -rpcport="$2" -disablewallet -connect=0 -daemon >/dev/null
}

echo "== zdb on 127.0.0.1:$port"
"$T" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$port" \
  --logfile "$WORK/zdb.log" 2>/dev/null &
ZDB_PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

echo "== chain: litecoind regtest, 200 blocks, plus $SIZE of cold chain data"
chain=$WORK/chain
mkdir -p "$chain"
litecoind -regtest -datadir="$chain" -port=$((port + 1)) -rpcport=$((port + 2)) -fallbackfee=0.0001 -daemon >/dev/null
wait_rpc "$chain" $((port + 2))
cli "$chain" $((port + 2)) createwallet miner >/dev/null
addr=$(cli "$chain" $((port + 2)) getnewaddress)
cli "$chain" $((port + 2)) generatetoaddress 200 "$addr" >/dev/null
stop_node "$chain" $((port + 2))
"$HARNESS" build "$chain/regtest/cold-data" --size "$SIZE" >/dev/null
src_bytes=$(disk_bytes "$chain")
echo "   data dir: $((src_bytes / 1048576)) MiB on disk"

t0=$(now)
"$T" base create "$chain" --store "zdb://127.0.0.1:$port/default" --out "$WORK/chain.img" \
  --chain litecoin-regtest --height 200 --db-type leveldb --strip-secrets >/dev/null
pack_ms=$(ms "$t0")
t0=$(now)
tar -C "$chain" -cf - . | zstd -q -1 -T0 -o "$WORK/snapshot.tar.zst"
snap_ms=$(ms "$t0")
echo "   one-time: base create $pack_ms ms, tar|zstd snapshot $snap_ms ms ($(( $(stat -c %s "$WORK/snapshot.tar.zst") / 1048576 )) MiB)"

declare -a T_TAR T_CP T_UNPACK T_COLD T_WARM
rpc=$((port + 100))
for r in $(seq "$RUNS"); do
  # tar|zstd baseline
  d=$WORK/tar-node; rm -rf "$d"; drop_caches
  t0=$(now); mkdir -p "$d"; zstd -q -dc "$WORK/snapshot.tar.zst" | tar -C "$d" -xf -
  run_litecoind "$d" $rpc; wait_rpc "$d" $rpc; T_TAR+=("$(ms "$t0")")
  stop_node "$d" $rpc; rm -rf "$d"
  # cp -a
  d=$WORK/cp-node; drop_caches
  t0=$(now); cp -a "$chain" "$d"
  run_litecoind "$d" $rpc; wait_rpc "$d" $rpc; T_CP+=("$(ms "$t0")")
  stop_node "$d" $rpc; rm -rf "$d"
  # thinnode unpack (full restore of the image)
  d=$WORK/unpack-node; drop_caches
  t0=$(now); "$T" unpack "$WORK/chain.img" "$d" >/dev/null
  run_litecoind "$d" $rpc; wait_rpc "$d" $rpc; T_UNPACK+=("$(ms "$t0")")
  stop_node "$d" $rpc; rm -rf "$d"
  # thinnode, cold host cache, then a second node on the warm cache
  rm -rf "$WORK/cache"; drop_caches
  for kind in cold warm; do
    t0=$(now)
    "$T" node create "$kind" --image "$WORK/chain.img" --cache "$WORK/cache" >/dev/null
    "$T" node start "$kind" -- litecoind -regtest -datadir={data} -port={port:1} -rpcport=$rpc \
      -disablewallet -connect=0 >/dev/null
    wait_rpc "$THINNODE_STATE_DIR/nodes/$kind/data" $rpc
    if [ $kind = cold ]; then T_COLD+=("$(ms "$t0")"); else T_WARM+=("$(ms "$t0")"); fi
    "$T" node stop "$kind" >/dev/null
    "$T" node rm "$kind" >/dev/null
  done
  echo "   run $r: tar|zstd ${T_TAR[-1]} ms, cp -a ${T_CP[-1]} ms, unpack ${T_UNPACK[-1]} ms, thinnode cold ${T_COLD[-1]} ms, warm ${T_WARM[-1]} ms"
done

m_tar=$(printf '%s\n' "${T_TAR[@]}" | median)
m_cp=$(printf '%s\n' "${T_CP[@]}" | median)
m_unpack=$(printf '%s\n' "${T_UNPACK[@]}" | median)
m_cold=$(printf '%s\n' "${T_COLD[@]}" | median)
m_warm=$(printf '%s\n' "${T_WARM[@]}" | median)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

echo "== disk used by 3 nodes (each mines 5 blocks) vs 3 full copies"
layers=0
for i in 1 2 3; do
  "$T" node create "n$i" --image "$WORK/chain.img" --cache "$WORK/cache" >/dev/null
  "$T" node start "n$i" -- litecoind -regtest -datadir={data} -port={port:1} -rpcport=$((rpc + i)) \
    -disablewallet -connect=0 >/dev/null
  wait_rpc "$THINNODE_STATE_DIR/nodes/n$i/data" $((rpc + i))
  cli "$THINNODE_STATE_DIR/nodes/n$i/data" $((rpc + i)) generatetoaddress 5 "$addr" >/dev/null
  "$T" node stop "n$i" >/dev/null
  b=$("$T" layer du "$THINNODE_STATE_DIR/nodes/n$i/layer" --json | sed 's/.*"allocated_bytes":\([0-9]*\).*/\1/')
  layers=$((layers + b))
done
cache_bytes=$(disk_bytes "$WORK/cache")
store_bytes=$(disk_bytes "$WORK/zdb/data")

echo
echo "data dir $((src_bytes / 1048576)) MiB; $RUNS runs; medians; $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| way to a ready node (first RPC answered) | median ms | ratio to tar\\|zstd | ratio to cp -a |"
echo "|---|---:|---:|---:|"
echo "| extract tar\\|zstd snapshot + start (baseline) | $m_tar | 1.000 | $(ratio "$m_tar" "$m_cp") |"
echo "| cp -a + start | $m_cp | $(ratio "$m_cp" "$m_tar") | 1.000 |"
echo "| thinnode unpack (full restore from zdb) + start | $m_unpack | $(ratio "$m_unpack" "$m_tar") | $(ratio "$m_unpack" "$m_cp") |"
echo "| thinnode node create + start, cold host cache | $m_cold | $(ratio "$m_cold" "$m_tar") | $(ratio "$m_cold" "$m_cp") |"
echo "| thinnode node create + start, warm host cache | $m_warm | $(ratio "$m_warm" "$m_tar") | $(ratio "$m_warm" "$m_cp") |"
echo
echo "| disk used | MiB | ratio to 3 full copies |"
echo "|---|---:|---:|"
echo "| 3 full copies (baseline) | $((3 * src_bytes / 1048576)) | 1.000 |"
echo "| 3 thinnode write layers | $((layers / 1048576)) | $(ratio "$layers" $((3 * src_bytes))) |"
echo "| + host cache (shared, holds what the nodes read) | $(((layers + cache_bytes) / 1048576)) | $(ratio $((layers + cache_bytes)) $((3 * src_bytes))) |"
echo "| store (zdb, shared by every host; compressed) | $((store_bytes / 1048576)) | $(ratio "$store_bytes" $((3 * src_bytes))) |"
