#!/usr/bin/env bash
# thinnode end-to-end demo on an embedded default (run as root on Debian):
#   1. starts our 0-db compatible server on loopback,
#   2. builds a real chain database (litecoind, regtest, 300 blocks) and stops the node,
#   3. packs it into an image whose chunks go to the zdb server,
#   4. mounts the image lazily (one shared host cache) and provisions three nodes on it, each with its
#      own kernel-overlayfs write layer, starts litecoind on each, mines a few blocks on each,
#   5. prints time to ready per node, store bytes and each layer's bytes against a full copy per node.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DEBIAN_FRONTEND=noninteractive
command -v litecoind >/dev/null || { apt-get update -qq; apt-get install -y -qq litecoind >/dev/null; }
cargo build --release -q -p thinnode
T=${CARGO_TARGET_DIR:-$PWD/target}/release/thinnode

work=$(mktemp -d /tmp/thinnode-demo.XXXXXX)
port=$((20000 + RANDOM % 20000))
pids=()
mounts=()
cleanup() {
  for d in "$work"/node*/; do
    [ -d "$d" ] || continue
    litecoin-cli -regtest -datadir="$d/merged" -rpcport="$(cat "$d/rpcport" 2>/dev/null || echo 1)" stop >/dev/null 2>&1 || true
  done
  sleep 1
  for m in "${mounts[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  "$T" umount "$work/mnt" >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Bytes of disk actually used (holes of sparse files do not count).
disk_bytes() { echo $(( $(du -sk "$1" | cut -f1) * 1024 )); }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
cli() { litecoin-cli -regtest -datadir="$1" -rpcport="$2" "${@:3}"; }
wait_rpc() { for _ in $(seq 300); do cli "$1" "$2" getblockcount >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

echo "== 1. our zdb server on 127.0.0.1:$port"
"$T" zdb --data "$work/zdb/data" --index "$work/zdb/index" --listen 127.0.0.1 --port "$port" \
  --logfile "$work/zdb.log" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

echo "== 2. a real chain database: litecoind regtest, 300 blocks"
chain="$work/chain"
mkdir -p "$chain"
litecoind -regtest -datadir="$chain" -daemon -port=$((port + 1)) -rpcport=$((port + 2)) -fallbackfee=0.0001 >/dev/null
wait_rpc "$chain" $((port + 2))
cli "$chain" $((port + 2)) createwallet miner >/dev/null
addr=$(cli "$chain" $((port + 2)) getnewaddress)
cli "$chain" $((port + 2)) generatetoaddress 300 "$addr" >/dev/null
cli "$chain" $((port + 2)) stop >/dev/null
while pgrep -f "datadir=$chain" >/dev/null; do sleep 0.2; done
# Node identity and wallets never go into a shared base.
rm -rf "$chain/regtest/wallets" "$chain/regtest/peers.dat" "$chain/regtest/debug.log"
src_bytes=$(disk_bytes "$chain")

echo "== 3. pack it into an image (chunks to zdb://127.0.0.1:$port/default)"
"$T" pack "$chain" --store "zdb://127.0.0.1:$port/default" --out "$work/chain.img" \
  --label chain=litecoin-regtest --label height=300 --label db=leveldb
store_bytes=$(disk_bytes "$work/zdb/data")

echo "== 4. mount lazily and provision three nodes, each with its own write layer"
mkdir -p "$work/mnt"
t0=$(date +%s%N)
"$T" mount "$work/chain.img" "$work/mnt" --cache "$work/cache" --daemon
mounts+=("$work/mnt")
echo "   image mounted in $(ms "$t0") ms"
for i in 1 2 3; do
  d="$work/node$i"
  mkdir -p "$d/upper" "$d/work" "$d/merged"
  p2p=$((port + 10 * i)); rpc=$((port + 10 * i + 1)); echo $rpc > "$d/rpcport"
  t0=$(date +%s%N)
  mount -t overlay "overlay-node$i" -o "lowerdir=$work/mnt,upperdir=$d/upper,workdir=$d/work" "$d/merged"
  mounts=("$d/merged" "${mounts[@]}")
  litecoind -regtest -datadir="$d/merged" -daemon -port=$p2p -rpcport=$rpc -fallbackfee=0.0001 >/dev/null
  wait_rpc "$d/merged" $rpc
  ready=$(ms "$t0")
  h=$(cli "$d/merged" $rpc getblockcount)
  cli "$d/merged" $rpc createwallet "node$i" >/dev/null
  a=$(cli "$d/merged" $rpc getnewaddress)
  cli "$d/merged" $rpc generatetoaddress $((i * 5)) "$a" >/dev/null
  h2=$(cli "$d/merged" $rpc getblockcount)
  tip=$(cli "$d/merged" $rpc getbestblockhash)
  echo "   node$i: ready in ${ready} ms at height $h; mined to $h2, tip ${tip:0:16}…"
done
for i in 1 2 3; do
  d="$work/node$i"; cli "$d/merged" "$(cat "$d/rpcport")" stop >/dev/null
done
for i in 1 2 3; do while pgrep -f "datadir=$work/node$i/merged" >/dev/null; do sleep 0.2; done; done

echo "== 5. what it saved (disk actually used)"
printf '   %-34s %12s\n' "chain database (one full copy)" "$((src_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "three full copies" "$((3 * src_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "store (zdb data, shared)" "$((store_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "host cache (shared by all nodes)" "$(( $(disk_bytes "$work/cache") / 1024 )) KiB"
total=0
for i in 1 2 3; do
  b=$(disk_bytes "$work/node$i/upper"); total=$((total + b))
  printf '   %-34s %12s  (%s%% of a full copy)\n' "node$i write layer" "$((b / 1024)) KiB" "$((100 * b / src_bytes))"
done
printf '   %-34s %12s  vs %s KiB for three copies\n' "all three layers" "$((total / 1024)) KiB" "$((3 * src_bytes / 1024))"
