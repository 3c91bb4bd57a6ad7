#!/usr/bin/env bash
# thinnode end-to-end demo on an embedded default (run as root on Debian):
#   1. starts our 0-db compatible server on loopback,
#   2. builds a real chain database (litecoind, regtest, 300 blocks) and stops the node,
#   3. `thinnode base create`: turns the stopped node's data dir into a base image in zdb (the miner's
#      wallet is a secret: it is left out with --strip-secrets),
#   4. `thinnode node create` + `node start` three nodes from it (lazy mount, shared host cache, one write
#      layer and a fresh identity per node, a supervisor per node), mines a few blocks on each,
#   5. `thinnode node ls`, then time to ready per node, store bytes and each layer's bytes against a full
#      copy per node.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DEBIAN_FRONTEND=noninteractive
command -v litecoind >/dev/null || { apt-get update -qq; apt-get install -y -qq litecoind >/dev/null; }
cargo build --release -q -p thinnode
T=${CARGO_TARGET_DIR:-$PWD/target}/release/thinnode

work=$(mktemp -d /tmp/thinnode-demo.XXXXXX)
export THINNODE_STATE_DIR="$work/state"
port=$((20000 + RANDOM % 20000))
zdb_pid=""
cleanup() {
  for i in 1 2 3; do "$T" node stop "node$i" >/dev/null 2>&1 || true; done
  [ -n "$zdb_pid" ] && kill "$zdb_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Bytes of disk actually used (holes of sparse files do not count).
disk_bytes() { echo $(( $(du -sk "$1" | cut -f1) * 1024 )); }
ms() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
cli() { litecoin-cli -regtest -datadir="$1" -rpcport="$2" "${@:3}"; }
wait_rpc() { for _ in $(seq 600); do cli "$1" "$2" getblockcount >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }

echo "== 1. our zdb server on 127.0.0.1:$port"
"$T" zdb --data "$work/zdb/data" --index "$work/zdb/index" --listen 127.0.0.1 --port "$port" \
  --logfile "$work/zdb.log" 2>/dev/null &
zdb_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done

echo "== 2. a real chain database: litecoind regtest, 300 blocks"
chain="$work/chain"
mkdir -p "$chain"
litecoind -regtest -datadir="$chain" -daemon -port=$((port + 1)) -rpcport=$((port + 2)) -fallbackfee=0.0001 >/dev/null
wait_rpc "$chain" $((port + 2))
cli "$chain" $((port + 2)) createwallet miner >/dev/null
addrs=()
for i in 1 2 3; do addrs+=("$(cli "$chain" $((port + 2)) getnewaddress)"); done
cli "$chain" $((port + 2)) generatetoaddress 300 "${addrs[0]}" >/dev/null
tip=$(cli "$chain" $((port + 2)) getbestblockhash)
cli "$chain" $((port + 2)) stop >/dev/null
while pgrep -f "datadir=$chain" >/dev/null; do sleep 0.2; done
src_bytes=$(disk_bytes "$chain")

echo "== 3. thinnode base create (chunks to zdb://127.0.0.1:$port/default)"
"$T" base create "$chain" --store "zdb://127.0.0.1:$port/default" --out "$work/chain.img" \
  --chain litecoin-regtest --height 300 --block-hash "$tip" --strip-secrets
store_bytes=$(disk_bytes "$work/zdb/data")

echo "== 4. three nodes from the one base: node create + node start, then mine on each"
declare -A ready
for i in 1 2 3; do
  p2p=$((port + 10 * i)); rpc=$((port + 10 * i + 1))
  t0=$(date +%s%N)
  "$T" node create "node$i" --image "$work/chain.img" --cache "$work/cache" | sed 's/^/   /'
  "$T" node start "node$i" -- litecoind -regtest -datadir={data} -port=$p2p -rpcport=$rpc \
    -disablewallet -connect=0 -printtoconsole | sed 's/^/   /'
  d="$THINNODE_STATE_DIR/nodes/node$i/data"
  wait_rpc "$d" $rpc
  ready[$i]=$(ms "$t0")
  h=$(cli "$d" $rpc getblockcount)
  cli "$d" $rpc generatetoaddress $((i * 5)) "${addrs[$((i - 1))]}" >/dev/null
  h2=$(cli "$d" $rpc getblockcount)
  t=$(cli "$d" $rpc getbestblockhash)
  echo "   node$i: RPC answered ${ready[$i]} ms after node create, at height $h; mined to $h2, tip ${t:0:16}…"
done
echo
"$T" node ls
for i in 1 2 3; do "$T" node stop "node$i" >/dev/null; done

echo
echo "== 5. what it saved (disk actually used)"
printf '   %-34s %12s\n' "chain database (one full copy)" "$((src_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "three full copies" "$((3 * src_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "store (zdb data, shared)" "$((store_bytes / 1024)) KiB"
printf '   %-34s %12s\n' "host cache (shared by all nodes)" "$(( $(disk_bytes "$work/cache") / 1024 )) KiB"
total=0
for i in 1 2 3; do
  b=$("$T" layer du "$THINNODE_STATE_DIR/nodes/node$i/layer" --json | sed 's/.*"allocated_bytes":\([0-9]*\).*/\1/')
  total=$((total + b))
  printf '   %-34s %12s  (%s%% of a full copy; ready in %s ms)\n' "node$i write layer" "$((b / 1024)) KiB" \
    "$((100 * b / src_bytes))" "${ready[$i]}"
done
printf '   %-34s %12s  vs %s KiB for three copies\n' "all three layers" "$((total / 1024)) KiB" "$((3 * src_bytes / 1024))"
for i in 1 2 3; do "$T" node rm "node$i" >/dev/null; done
