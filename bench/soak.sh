#!/usr/bin/env bash
# Chaos soak of the whole stack (crate `soak`, binary thinnode-soak; the short version runs in
# `cargo test --test soak`): three litecoind regtest nodes (overlay, blocks, overlay layers) provisioned
# from one base whose chunks live on
#   1. a `disperse:4+2` store over six zdb servers, then
#   2. a `route:` store with two key ranges on two replicas each (four zdb servers),
# mining, sending wallet transactions and reading blocks back for SOAK_S seconds each, while a seeded
# fault injector (seed printed; the same seed gives the same schedule) kills -9 / hangs (SIGSTOP) /
# replaces (empty disk, then `store repair`) zdb servers up to the store's tolerance, kills a node's
# supervisor (a service manager runs `node start` again after 2 s) and its mount daemon, drops the page
# cache (echo 3 > /proc/sys/vm/drop_caches) and fills the host-cache filesystem (a loop-mounted ext4)
# to ENOSPC. At the end every node's chain (verifychain 4 0, acknowledged blocks), wallet and layer is
# checked, the base passes verify --deep, store repair restores full redundancy (verify --deep with every
# tolerated set of servers down), and a report prints faults injected and survived, node downtime per
# fault kind (RPC polled every 200 ms) and bytes lost (must be 0). Definitions: crates/soak/src/report.rs
# and check.rs.
#
#   bash bench/soak.sh       (defaults: SOAK_S=900 SEED=1 STORES="disperse route" BASE_BLOCKS=1500
#                             LAYERS=overlay,blocks,overlay)
#
# Reports and logs are kept in SOAK_OUT (default /var/tmp/thinnode-soak-last). Needs root, /dev/fuse,
# loop devices, litecoind (scripts/setup.sh). Run it when the machine is quiet (`uptime`): it drops the
# host's page cache, and timings are noisy. Everything it starts is stopped by PID on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_S=${SOAK_S:-900}
SEED=${SEED:-1}
STORES=${STORES:-disperse route}
BASE_BLOCKS=${BASE_BLOCKS:-1500}
LAYERS=${LAYERS:-overlay,blocks,overlay}
SOAK_OUT=${SOAK_OUT:-/var/tmp/thinnode-soak-last}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode -p soak
T=$CARGO_TARGET_DIR/release/thinnode
S=$CARGO_TARGET_DIR/release/thinnode-soak

WORK=$(mktemp -d /var/tmp/thinnode-soak.XXXXXX)
SOAK_PID=
cleanup() {
  if [ -n "$SOAK_PID" ] && kill -0 "$SOAK_PID" 2>/dev/null; then
    kill -TERM "$SOAK_PID" 2>/dev/null || true
    wait "$SOAK_PID" 2>/dev/null || true
  fi
  for run in "$WORK"/run-*; do
    [ -f "$run/owned.json" ] && "$S" cleanup "$run" || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$SOAK_OUT"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(git rev-parse --short HEAD), load:$(uptime | sed 's/.*load average://')"
echo "== base chain: litecoind regtest, $BASE_BLOCKS blocks with transactions (bench/litecoin-chain.py)"
python3 bench/litecoin-chain.py "$WORK/chain" "$BASE_BLOCKS" 20 4

status=0
for store in $STORES; do
  echo
  echo "== soak on a $store store: ${SOAK_S} s, seed $SEED"
  cp -a "$WORK/chain" "$WORK/chain-$store"
  "$S" run --thinnode "$T" --work "$WORK/run-$store" --store "$store" --duration-s "$SOAK_S" \
    --seed "$SEED" --layers "$LAYERS" --base-dir "$WORK/chain-$store" --json "$SOAK_OUT/report-$store.json" \
    > >(tee "$SOAK_OUT/soak-$store.txt") 2>&1 &
  SOAK_PID=$!
  wait "$SOAK_PID" || status=$?
  SOAK_PID=
  cp "$WORK/run-$store/soak.log" "$SOAK_OUT/soak-$store.log" 2>/dev/null || true
done
echo
echo "== reports in $SOAK_OUT; load:$(uptime | sed 's/.*load average://')"
exit "$status"
