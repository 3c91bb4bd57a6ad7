#!/usr/bin/env bash
# The same tree as a ThreeFold flist (`pack --format fl`: 512 KiB rfs blocks, snappy) and as a thinnode
# image (`pack`: 1 MiB chunks, zstd-1) on the same store (one `thinnode zdb`, a fresh server per round):
# pack time, stored bytes, and a cold and a warm read of every file through `thinnode mount`, each printed
# as the flist's ratio to the image measured in the same round. Medians over the rounds.
#
#   bash bench/flist.sh [SIZE_MIB] [RUNS]        (defaults: 512 MiB of file data, 3 rounds; needs root and
#                                                 /dev/fuse for the read rows)
#
# The tree: 40% random bytes (incompressible), 40% text-like bytes (compressible), 5% in 4 KiB files,
# a sparse file with 15% of the size as holes (both formats skip or dedup them), and the rest in 1 MiB
# files. Cold read: a fresh host cache, `tar` of the whole mount to a pipe; warm read: the same after a
# remount on the now-filled host cache. The zdb server's files stay in the page cache (this shared
# machine must not drop caches), so "cold" means nothing is cached by thinnode.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-512}
RUNS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode
BIN=$CARGO_TARGET_DIR/release/thinnode

WORK=$(mktemp -d)
PIDS=()
MNT=$WORK/mnt
cleanup() {
  "$BIN" umount "$MNT" >/dev/null 2>&1 || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

. bench/lib.sh

# The tree.
TREE=$WORK/tree
mkdir -p "$TREE/small" "$TREE/big" "$MNT"
python3 - "$TREE" "$SIZE_MIB" <<'EOF'
import os, random, sys
root, size = sys.argv[1], int(sys.argv[2]) << 20
rnd = random.Random(12)
def chunk(n, text):
    if text:
        words = [b"block", b"state", b"trie", b"node", b"header", b"tx", b"0x", b"leveldb", b"sst"]
        out = bytearray()
        while len(out) < n:
            out += rnd.choice(words) + b" " + str(rnd.randrange(10**6)).encode() + b"\n"
        return bytes(out[:n])
    return os.urandom(n)
def write(path, n, text):
    with open(path, "wb") as f:
        while n > 0:
            k = min(n, 1 << 20)
            f.write(chunk(k, text)); n -= k
write(f"{root}/big/random.bin", size * 40 // 100, False)
write(f"{root}/big/text.log", size * 40 // 100, True)
for i in range(size * 5 // 100 // 4096):
    write(f"{root}/small/f{i:05d}", 4096, i % 2 == 0)
for i in range(size * 5 // 100 // (1 << 20)):
    write(f"{root}/big/m{i:03d}.bin", 1 << 20, i % 2 == 0)
with open(f"{root}/big/sparse.db", "wb") as f:
    f.truncate(size * 15 // 100)
    f.seek(0); f.write(b"head" * 1024)
EOF
LOGICAL=$(du -sb --apparent-size "$TREE" | cut -f1)
echo "tree: $(find "$TREE" -type f | wc -l) files, $((LOGICAL >> 20)) MiB apparent"

CAN_MOUNT=0
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then CAN_MOUNT=1; fi

# Reads every file of the mount of $1 with host cache $2; prints seconds.
read_all() {
  "$BIN" mount "$1" "$MNT" --cache "$2" --daemon --log "$WORK/mount.log" >/dev/null 2>&1
  local t0 t1
  t0=$(now)
  tar -C "$MNT" -cf - . | cat >/dev/null
  t1=$(now)
  "$BIN" umount "$MNT" >/dev/null 2>&1
  python3 -c "print($t1 - $t0)"
}

declare -A R
for run in $(seq "$RUNS"); do
  port=$(free_port)
  zdir=$WORK/zdb$run
  "$BIN" zdb --data "$zdir/data" --index "$zdir/index" --listen 127.0.0.1 --port "$port" >"$zdir.log" 2>&1 &
  ZPID=$!
  PIDS+=($ZPID)
  wait_port "$port"
  STORE="zdb://127.0.0.1:$port/default"
  # Alternate which format packs first (the second finds the page cache warm for the tree).
  if [ $((run % 2)) = 1 ]; then order="image fl"; else order="fl image"; fi
  for fmt in $order; do
    t0=$(now)
    if [ "$fmt" = image ]; then
      "$BIN" pack "$TREE" --store "$STORE" --out "$WORK/t.img" --json >"$WORK/image.json"
      R[image_stored_$run]=$(python3 -c "import json; print(json.load(open('$WORK/image.json'))['bytes_stored'])")
    else
      "$BIN" pack "$TREE" --format fl --store "$STORE" --out "$WORK/t.fl" --json >"$WORK/fl.json" 2>/dev/null
      R[fl_stored_$run]=$(python3 -c "import json; print(json.load(open('$WORK/fl.json'))['pack']['bytes_stored'])")
    fi
    t1=$(now)
    R[${fmt}_pack_$run]=$(python3 -c "print($t1 - $t0)")
  done
  if [ "$CAN_MOUNT" = 1 ]; then
    for fmt in $order; do
      f=$WORK/t.img; [ "$fmt" = fl ] && f=$WORK/t.fl
      rm -rf "$WORK/cache-$fmt"
      R[${fmt}_cold_$run]=$(read_all "$f" "$WORK/cache-$fmt")
      R[${fmt}_warm_$run]=$(read_all "$f" "$WORK/cache-$fmt")
    done
  fi
  kill "$ZPID"; wait "$ZPID" 2>/dev/null || true
  rm -rf "$zdir" "$WORK"/cache-*
  echo "round $run: pack image ${R[image_pack_$run]} s, fl ${R[fl_pack_$run]} s;" \
    "stored image ${R[image_stored_$run]} B, fl ${R[fl_stored_$run]} B" \
    "$([ "$CAN_MOUNT" = 1 ] && echo "; cold image ${R[image_cold_$run]} s, fl ${R[fl_cold_$run]} s; warm image ${R[image_warm_$run]} s, fl ${R[fl_warm_$run]} s")"
done

# Medians and ratios (flist / image; for times, > 1 means the flist is slower).
python3 - "$RUNS" "$LOGICAL" "$CAN_MOUNT" <<EOF
import statistics, sys
runs, logical, can_mount = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
R = {$(for k in "${!R[@]}"; do printf '"%s": %s, ' "$k" "${R[$k]}"; done)}
def med(fmt, what): return statistics.median(R[f"{fmt}_{what}_{r}"] for r in range(1, runs + 1))
def ratio(what): return statistics.median(R[f"fl_{what}_{r}"] / R[f"image_{what}_{r}"] for r in range(1, runs + 1))
rows = [("pack time (s)", "pack"), ("stored bytes (MiB)", "stored")]
if can_mount:
    rows += [("cold read through the mount (s)", "cold"), ("warm read, host cache filled (s)", "warm")]
print(f"\n| {logical >> 20} MiB tree, {runs} rounds, medians | thinnode image | flist | flist / image |")
print("|---|---|---|---|")
for name, what in rows:
    a, b = med("image", what), med("fl", what)
    if what == "stored": a, b = a / 2**20, b / 2**20
    print(f"| {name} | {a:.2f} | {b:.2f} | {ratio(what):.2f} |")
if can_mount:
    for what in ("cold", "warm"):
        print(f"read rate {what}: image {logical / med('image', what) / 2**20:.0f} MiB/s, flist {logical / med('fl', what) / 2**20:.0f} MiB/s")
EOF
