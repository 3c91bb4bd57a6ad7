#!/usr/bin/env bash
# Write layers on a ParityDB (Polkadot's database), each figure against a plain local copy of the same DB
# measured in the same run:
#   open   = open + close the DB with no writes (`paritydb-harness extend --blocks 0`)
#   write  = open, insert FRACTION new keys (0.001 = 0.1%), commit, close (`extend --fraction`)
#   layer  = bytes allocated in the layer afterwards (`thinnode layer du`), vs the DB size
#   blocks estimate = bytes of the DB that changed (or are new) after the writes, counted in whole blocks
#            of 4 KiB .. 1 MiB: what a blocks layer of that block size would hold (block size choice)
# for: plain local copy (baseline; its "layer" is the growth of the copy), kernel overlayfs (our
# options) over a `thinnode mount` of the packed DB, and the blocks layer (thinnode's writable FUSE
# filesystem, `blocks-mount`, 4 KiB blocks) over a `thinnode mount` of it; each cold (fresh host cache,
# chunks fetched from a dir store on local disk; page cache dropped).
#
#   bash bench/layers.sh [SIZE] [FRACTION]        (defaults: 1GiB, 0.001)
#
# Needs root and /dev/fuse.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${1:-1GiB}
FRACTION=${2:-0.001}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

cargo build --quiet --release -p thinnode --bin thinnode
cargo build --quiet --release -p paritydb-harness
cargo build --quiet --release -p layer --example overlay
cargo build --quiet --release -p layer-testkit --bin blocks-mount
BIN=$CARGO_TARGET_DIR/release/thinnode
HARNESS=$CARGO_TARGET_DIR/release/paritydb-harness
OVERLAY=$CARGO_TARGET_DIR/release/examples/overlay
BLOCKS=$CARGO_TARGET_DIR/release/blocks-mount

WORK=$(mktemp -d /var/tmp/thinnode-layers.XXXXXX)
LOWER=$WORK/lower
NODE=$WORK/node
mkdir -p "$LOWER" "$NODE" "$WORK/node-blocks"
BLOCKS_PID=
cleanup() {
  if [ -n "$BLOCKS_PID" ]; then kill "$BLOCKS_PID" 2>/dev/null || true; wait "$BLOCKS_PID" 2>/dev/null || true; fi
  "$OVERLAY" umount "$WORK/layer" "$NODE" >/dev/null 2>&1 || true
  "$BIN" umount "$LOWER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2 - $1:.2f}')"; }
ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
allocated() { du -s --block-size=1 "$1" | cut -f1; }

echo "building a $SIZE ParityDB..." >&2
"$HARNESS" build "$WORK/src" --size "$SIZE" >/dev/null 2>&1
DB_BYTES=$(allocated "$WORK/src")
sync

# Baseline: plain local copy.
cp -a "$WORK/src" "$WORK/plain"
sync
echo 3 >/proc/sys/vm/drop_caches
t0=$(now); "$HARNESS" extend "$WORK/plain" --blocks 0 >/dev/null 2>&1; t1=$(now)
"$HARNESS" extend "$WORK/plain" --fraction "$FRACTION" >/dev/null 2>&1; t2=$(now)
"$HARNESS" verify "$WORK/plain" >/dev/null 2>&1
PLAIN_OPEN=$(elapsed "$t0" "$t1"); PLAIN_WRITE=$(elapsed "$t1" "$t2")
PLAIN_GROWTH=$(( $(allocated "$WORK/plain") - DB_BYTES ))

# Block size for the blocks layer: bytes of the DB that differ after the writes (or are new), rounded up
# to whole blocks of each size; what a blocks layer with that block size would have to hold.
BLOCK_TABLE=$(python3 - "$WORK/src" "$WORK/plain" "$DB_BYTES" <<'PY'
import os, sys
src, new, db = sys.argv[1], sys.argv[2], int(sys.argv[3])
sizes = [4096, 16384, 65536, 262144, 1048576]
changed = {b: 0 for b in sizes}
for root, _, files in os.walk(new):
    for name in files:
        p = os.path.join(root, name)
        q = os.path.join(src, os.path.relpath(p, new))
        a = open(p, "rb").read()
        b = open(q, "rb").read() if os.path.exists(q) else b""
        for bs in sizes:
            for off in range(0, len(a), bs):
                if a[off:off + bs] != b[off:off + bs]:
                    changed[bs] += min(bs, len(a) - off)
for bs in sizes:
    print(f"| {bs // 1024} KiB | {changed[bs] / 1048576:.2f} MiB | {changed[bs] / db:.4f} |")
PY
)

# Overlay over a FUSE mount of the packed DB.
"$BIN" pack "$WORK/src" --store "dir://$WORK/store" --out "$WORK/image" >/dev/null 2>&1
"$BIN" mount "$WORK/image" "$LOWER" --cache "$WORK/cache" --daemon --log "$WORK/mount.log" >/dev/null
"$OVERLAY" mount "$WORK/layer" "$LOWER" "$NODE"
echo 3 >/proc/sys/vm/drop_caches
t0=$(now); "$HARNESS" extend "$NODE" --blocks 0 >/dev/null 2>&1; t1=$(now)
OPEN_LAYER=$("$BIN" layer du "$WORK/layer" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated_bytes"])')
t2=$(now); "$HARNESS" extend "$NODE" --fraction "$FRACTION" >/dev/null 2>&1; t3=$(now)
"$HARNESS" verify "$NODE" >/dev/null 2>&1
OV_OPEN=$(elapsed "$t0" "$t1"); OV_WRITE=$(elapsed "$t2" "$t3")
OV_LAYER=$("$BIN" layer du "$WORK/layer" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated_bytes"])')
"$OVERLAY" umount "$WORK/layer" "$NODE"
"$BIN" umount "$LOWER" >/dev/null

# Blocks layer over a fresh (cold) FUSE mount of the same image.
NODE_B=$WORK/node-blocks
"$BIN" mount "$WORK/image" "$LOWER" --cache "$WORK/cache-blocks" --daemon --log "$WORK/mount-blocks.log" >/dev/null
mkfifo "$WORK/blocks-ready"
"$BLOCKS" "$WORK/blocks-layer" "$LOWER" "$NODE_B" >"$WORK/blocks-ready" 2>"$WORK/blocks.log" &
BLOCKS_PID=$!
read -r READY <"$WORK/blocks-ready"
[ "$READY" = READY ] || { echo "blocks-mount did not come up: $(cat "$WORK/blocks.log")" >&2; exit 1; }
blocks_du() { du -s --block-size=1 "$WORK/blocks-layer/tree" "$WORK/blocks-layer/maps" | awk '{s += $1} END {print s}'; }
echo 3 >/proc/sys/vm/drop_caches
t0=$(now); "$HARNESS" extend "$NODE_B" --blocks 0 >/dev/null 2>&1; t1=$(now)
BL_OPEN_LAYER=$(blocks_du)
t2=$(now); "$HARNESS" extend "$NODE_B" --fraction "$FRACTION" >/dev/null 2>&1; t3=$(now)
"$HARNESS" verify "$NODE_B" >/dev/null 2>&1
BL_OPEN=$(elapsed "$t0" "$t1"); BL_WRITE=$(elapsed "$t2" "$t3")
kill -TERM "$BLOCKS_PID"; wait "$BLOCKS_PID"; BLOCKS_PID=
BL_LAYER=$(blocks_du)
"$BIN" umount "$LOWER" >/dev/null
"$BIN" verify "$WORK/image" --deep --store "dir://$WORK/store" >/dev/null

MiB() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
echo "ParityDB $SIZE ($(MiB "$DB_BYTES") MiB on disk), insert $FRACTION of the keys; $(nproc) cores"
echo
echo "| layer | open s | open vs plain | write s | write vs plain | bytes in layer after open | bytes in layer after writes | layer / DB size |"
echo "|---|---|---|---|---|---|---|---|"
echo "| plain local copy (baseline) | $PLAIN_OPEN | 1.00 | $PLAIN_WRITE | 1.00 | 0 | $(MiB "$PLAIN_GROWTH") MiB (growth) | $(ratio "$PLAIN_GROWTH" "$DB_BYTES") |"
echo "| overlay over cold thinnode mount | $OV_OPEN | $(ratio "$OV_OPEN" "$PLAIN_OPEN") | $OV_WRITE | $(ratio "$OV_WRITE" "$PLAIN_WRITE") | $(MiB "$OPEN_LAYER") MiB | $(MiB "$OV_LAYER") MiB | $(ratio "$OV_LAYER" "$DB_BYTES") |"
echo "| blocks over cold thinnode mount | $BL_OPEN | $(ratio "$BL_OPEN" "$PLAIN_OPEN") | $BL_WRITE | $(ratio "$BL_WRITE" "$PLAIN_WRITE") | $(MiB "$BL_OPEN_LAYER") MiB | $(MiB "$BL_LAYER") MiB | $(python3 -c "print(f'{$BL_LAYER / $DB_BYTES:.4f}')") |"
echo
echo "image verified with verify --deep after the run"
echo
echo "blocks layer estimate (bytes changed or new after the writes on the plain copy, in whole blocks):"
echo
echo "| block size | bytes a blocks layer would hold | / DB size |"
echo "|---|---|---|"
echo "$BLOCK_TABLE"
