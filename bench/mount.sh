#!/usr/bin/env bash
# `thinnode mount` read performance, each figure against a baseline measured in the same run:
#   1. cold sequential read of a big file via the mount, from our zdb on loopback, vs a pipelined raw fetch
#      (get_many from 4 threads, no decoding) of the same chunks, and vs the same fetch plus verification and
#      decoding (the least work a correct reader does), and vs the kernel filling as much fresh page
#      cache (what every buffered read of the file costs at least);
#      Each cold phase also reports the CPU it burns (seconds of all processes per GB, from /proc/stat):
#      on a machine where the fetch itself is CPU-bound, raw-fetch CPU / (fetch + decode) CPU is the
#      highest ratio any reader that verifies what it serves can reach;
#   1b. the same cold read with the store behind a link of 4, 8 and 10 Gbit/s (a `tc tbf` qdisc on
#      loopback, removed at exit), vs the raw fetch through the same link: the usual deployment, where
#      the network and not the CPU limits;
#   2. warm (hydrated) sequential read via the mount vs reading the same bytes from a local file;
#      plus `thinnode hydrate` (fetch, verify, write into the cache file, seal it for passthrough) vs
#      the raw fetch;
#   3. warm 4 KiB random-read IOPS via the mount vs the local file;
#   4. mount ready time (`mount --daemon` returns only when the mount answers) for a 10-file and a
#      many-file image.
#
#   bash bench/mount.sh [FILE_MIB] [MANY_FILES] [RUNS]     (defaults: 2048 MiB, 1000000 files, 3 runs)
#   PARTS=cold,link,warm,ready (default: all) selects parts; LINKS="4gbit 8gbit 10gbit" the links of 1b.
#
# Every cold run is paired with its baseline (raw fetch, then the mount, same link, same round): the
# ratios printed are medians of those per-round ratios, so a load change between rounds moves both
# sides of a ratio alike.
# Needs root and /dev/fuse. Sequential reads use `dd bs=1M`; warm figures read from the page cache on both
# sides (the local file is read once before timing, the mount's file once after hydration).
set -euo pipefail
cd "$(dirname "$0")/.."

FILE_MIB=${1:-2048}
MANY=${2:-1000000}
RUNS=${3:-3}
PARTS=${PARTS:-cold,link,warm,ready}
LINKS=${LINKS:-4gbit 8gbit 10gbit}
part() { [[ ",$PARTS," == *",$1,"* ]]; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

cargo build --quiet --release -p thinnode --bin thinnode
cargo build --quiet --release -p mount --example raw_fetch --example rand_read
BIN=$CARGO_TARGET_DIR/release/thinnode
RAW=$CARGO_TARGET_DIR/release/examples/raw_fetch
RAND=$CARGO_TARGET_DIR/release/examples/rand_read

WORK=$(mktemp -d /var/tmp/thinnode-bench.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT" "$WORK/src" "$WORK/small" "$WORK/many"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$PORT" \
  >"$WORK/zdb.log" 2>&1 &
ZDB_PID=$!
LINKED=0
cleanup() {
  [ "$LINKED" = 1 ] && tc qdisc del dev lo root 2>/dev/null
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
URL="zdb://127.0.0.1:$PORT/default"

now() { date +%s.%N; }
# MB/s of reading $1 with dd (1 MiB blocks)
dd_rate() {
  local t0 t1 bytes
  bytes=$(stat -c %s "$1")
  t0=$(now)
  dd if="$1" of=/dev/null bs=1M status=none
  t1=$(now)
  awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%.0f", b / (c - a) / 1e6}'
}
# CPU seconds used so far by everything on the machine (user, nice, system, irq, softirq)
busy() { awk '/^cpu /{printf "%.2f", ($2 + $3 + $4 + $7 + $8) / 100}' /proc/stat; }
# CPU seconds per GB of FILE_MIB MiB between two busy() readings
cpu_per_gb() { awk -v a="$1" -v b="$2" -v m="$FILE_MIB" 'BEGIN {printf "%.2f", (b - a) / (m * 1048576 / 1e9)}'; }
# the raw fetch's MB/s (args: extra raw_fetch args)
raw_rate() {
  local bytes secs
  read -r bytes secs < <("$RAW" "$WORK/big.img" big.bin "$URL" 4 8 "$@")
  awk -v b="$bytes" -v s="$secs" 'BEGIN {printf "%.0f", b / s / 1e6}'
}
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
# the median of the per-round ratios of two same-length lists given as "a1 a2 …" "b1 b2 …"
ratio_med() {
  paste <(tr ' ' '\n' <<<"$1") <(tr ' ' '\n' <<<"$2") | awk '{printf "%.3f\n", $1 / $2}' | median
}
mount_img() { "$BIN" mount "$1" "$MNT" --cache "$2" --daemon --log "$WORK/mount.log" "${@:3}" >/dev/null 2>&1; }
umount_img() { "$BIN" umount "$MNT" >/dev/null 2>&1; }

echo "preparing a ${FILE_MIB} MiB random file and packing it into zdb..." >&2
head -c "$((FILE_MIB << 20))" /dev/urandom >"$WORK/src/big.bin"
sync
"$BIN" pack "$WORK/src" --store "$URL" --out "$WORK/big.img" >/dev/null 2>&1

ROWS=() NOTES=()
# 1. cold sequential: fresh cache each run
if part cold; then
RAW_RATES=() DEC_RATES=() COLD_RATES=() RAW_CPU=() DEC_CPU=() COLD_CPU=()
for r in $(seq "$RUNS"); do
  b0=$(busy)
  RAW_RATES+=("$(raw_rate)")
  b1=$(busy)
  DEC_RATES+=("$(raw_rate decode)")
  b2=$(busy)
  mount_img "$WORK/big.img" "$WORK/cold-cache-$r"
  b3=$(busy)
  COLD_RATES+=("$(dd_rate "$MNT/big.bin")")
  b4=$(busy)
  umount_img
  rm -rf "$WORK/cold-cache-$r"
  RAW_CPU+=("$(cpu_per_gb "$b0" "$b1")") DEC_CPU+=("$(cpu_per_gb "$b1" "$b2")") COLD_CPU+=("$(cpu_per_gb "$b3" "$b4")")
done
# Reference for what the cold read cannot avoid: the kernel copying FILE_MIB MiB into page-cache pages it
# has not used before (any non-direct read of the file fills the page cache). Measured after the cold
# reads so its freed pages cannot speed them up. On a VM whose freed memory goes back to the host (free
# page reporting, as on this machine) first-touching pages is far dearer than reusing them.
FILL_RATES=()
for _ in $(seq "$RUNS"); do
  t0=$(now)
  dd if=/dev/zero of="$WORK/fill.bin" bs=1M count="$FILE_MIB" status=none
  t1=$(now)
  FILL_RATES+=("$(awk -v b="$((FILE_MIB << 20))" -v a="$t0" -v c="$t1" 'BEGIN {printf "%.0f", b / (c - a) / 1e6}')")
  rm -f "$WORK/fill.bin"
  sleep 5 # let the freed pages go back to the host, as before the cold reads
done
FILL_MED=$(printf '%s\n' "${FILL_RATES[@]}" | median)
RAW_MED=$(printf '%s\n' "${RAW_RATES[@]}" | median)
DEC_MED=$(printf '%s\n' "${DEC_RATES[@]}" | median)
COLD_MED=$(printf '%s\n' "${COLD_RATES[@]}" | median)
RAW_CPU_MED=$(printf '%s\n' "${RAW_CPU[@]}" | median)
DEC_CPU_MED=$(printf '%s\n' "${DEC_CPU[@]}" | median)
COLD_CPU_MED=$(printf '%s\n' "${COLD_CPU[@]}" | median)
ROWS+=("| cold sequential read via mount (MB/s) | $COLD_MED | raw pipelined fetch: $RAW_MED | $(ratio_med "${COLD_RATES[*]}" "${RAW_RATES[*]}") |")
ROWS+=("| cold sequential read via mount (MB/s) | $COLD_MED | pipelined fetch + verify/decode: $DEC_MED | $(ratio_med "${COLD_RATES[*]}" "${DEC_RATES[*]}") |")
ROWS+=("| cold sequential read via mount (MB/s) | $COLD_MED | filling as much fresh page cache (dd of zeros to a new file): $FILL_MED | $(ratio "$COLD_MED" "$FILL_MED") |")
NOTES+=("CPU of the cold phases, seconds (all processes) per GB, median: raw fetch $RAW_CPU_MED, fetch + verify/decode $DEC_CPU_MED, mount read $COLD_CPU_MED.")
NOTES+=("When the fetch is CPU-bound, no reader that verifies can pass raw CPU / (fetch + decode) CPU = $(ratio "$RAW_CPU_MED" "$DEC_CPU_MED") of the raw fetch.")
NOTES+=("cold runs (MB/s): mount ${COLD_RATES[*]}; raw fetch ${RAW_RATES[*]}; fetch + decode ${DEC_RATES[*]}; page-cache fill ${FILL_RATES[*]}")
fi

# 1b. cold read through a limited link
if ! part link; then
  :
elif tc qdisc replace dev lo root tbf rate 10gbit burst 1mb limit 8mb 2>/dev/null; then
  LINKED=1
  for link in $LINKS; do
    tc qdisc replace dev lo root tbf rate "$link" burst 1mb limit 8mb
    LRAW=() LCOLD=()
    for r in $(seq "$RUNS"); do
      LRAW+=("$(raw_rate)")
      mount_img "$WORK/big.img" "$WORK/link-cache-$link-$r"
      LCOLD+=("$(dd_rate "$MNT/big.bin")")
      umount_img
      rm -rf "$WORK/link-cache-$link-$r"
    done
    lraw=$(printf '%s\n' "${LRAW[@]}" | median)
    lcold=$(printf '%s\n' "${LCOLD[@]}" | median)
    ROWS+=("| cold sequential read via mount, store behind a ${link%gbit} Gbit/s link (MB/s) | $lcold | raw pipelined fetch through the same link: $lraw | $(ratio_med "${LCOLD[*]}" "${LRAW[*]}") |")
    NOTES+=("${link%gbit} Gbit/s link runs (MB/s): mount ${LCOLD[*]}; raw fetch ${LRAW[*]}")
  done
  tc qdisc del dev lo root
  LINKED=0
else
  echo "no tc tbf qdisc on loopback (needs root and sch_tbf): skipping the link-limited cold reads" >&2
fi

# 2./3. warm: hydrate once, then the mount serves the file by passthrough; local file from page cache
if part warm; then
t0=$(now)
"$BIN" hydrate "$WORK/big.img" --cache "$WORK/warm-cache" --quiet >/dev/null 2>&1
t1=$(now)
HYDRATE_RATE=$(awk -v b="$((FILE_MIB << 20))" -v a="$t0" -v c="$t1" 'BEGIN {printf "%.0f", b / (c - a) / 1e6}')
mount_img "$WORK/big.img" "$WORK/warm-cache"
dd if="$WORK/src/big.bin" of=/dev/null bs=1M status=none
dd if="$MNT/big.bin" of=/dev/null bs=1M status=none
LOCAL_RATES=() WARM_RATES=() LOCAL_IOPS=() WARM_IOPS=()
for _ in $(seq "$RUNS"); do
  LOCAL_RATES+=("$(dd_rate "$WORK/src/big.bin")")
  WARM_RATES+=("$(dd_rate "$MNT/big.bin")")
  LOCAL_IOPS+=("$("$RAND" "$WORK/src/big.bin" 3 2)")
  WARM_IOPS+=("$("$RAND" "$MNT/big.bin" 3 2)")
done
umount_img
# The same warm read without passthrough (every read through the daemon, from the host cache).
mount_img "$WORK/big.img" "$WORK/warm-cache" --no-passthrough
dd if="$MNT/big.bin" of=/dev/null bs=1M status=none
NOPT_RATES=() NOPT_IOPS=()
for _ in $(seq "$RUNS"); do
  NOPT_RATES+=("$(dd_rate "$MNT/big.bin")")
  NOPT_IOPS+=("$("$RAND" "$MNT/big.bin" 3 2)")
done
umount_img
LOCAL_MED=$(printf '%s\n' "${LOCAL_RATES[@]}" | median)
WARM_MED=$(printf '%s\n' "${WARM_RATES[@]}" | median)
NOPT_MED=$(printf '%s\n' "${NOPT_RATES[@]}" | median)
LIOPS_MED=$(printf '%s\n' "${LOCAL_IOPS[@]}" | median)
WIOPS_MED=$(printf '%s\n' "${WARM_IOPS[@]}" | median)
NIOPS_MED=$(printf '%s\n' "${NOPT_IOPS[@]}" | median)
# The raw fetch of part 1 when it ran, else one measured now.
HYD_BASE=${RAW_MED:-$(raw_rate)}
ROWS+=("| hydrate: fetch, verify, write into the cache file and seal it (MB/s, one run) | $HYDRATE_RATE | raw pipelined fetch: $HYD_BASE | $(ratio "$HYDRATE_RATE" "$HYD_BASE") |")
ROWS+=("| warm sequential read via mount, passthrough (MB/s) | $WARM_MED | local file: $LOCAL_MED | $(ratio_med "${WARM_RATES[*]}" "${LOCAL_RATES[*]}") |")
ROWS+=("| warm sequential read via mount, no passthrough (MB/s) | $NOPT_MED | local file: $LOCAL_MED | $(ratio_med "${NOPT_RATES[*]}" "${LOCAL_RATES[*]}") |")
ROWS+=("| warm 4 KiB random reads via mount, passthrough (IOPS, 2 threads) | $WIOPS_MED | local file: $LIOPS_MED | $(ratio_med "${WARM_IOPS[*]}" "${LOCAL_IOPS[*]}") |")
ROWS+=("| warm 4 KiB random reads via mount, no passthrough (IOPS, 2 threads) | $NIOPS_MED | local file: $LIOPS_MED | $(ratio_med "${NOPT_IOPS[*]}" "${LOCAL_IOPS[*]}") |")
fi

# 4. mount ready time
if part ready; then
for i in $(seq 10); do echo "file $i" >"$WORK/small/f$i"; done
"$BIN" pack "$WORK/small" --store "$URL" --out "$WORK/small.img" >/dev/null 2>&1
echo "creating $MANY empty files in 1000 directories and packing them..." >&2
python3 - "$WORK/many" "$MANY" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
per = max(1, n // 1000)
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // per))
    if i % per == 0:
        os.makedirs(d, exist_ok=True)
    open(os.path.join(d, "f%07d" % i), "w").close()
EOF
"$BIN" pack "$WORK/many" --store "$URL" --out "$WORK/many.img" >/dev/null 2>&1
ready_ms() {
  local t0 t1
  t0=$(now)
  mount_img "$1" "$WORK/ready-cache"
  t1=$(now)
  stat "$MNT" >/dev/null
  umount_img
  awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.0f", (b - a) * 1000}'
}
SMALL_MS=() MANY_MS=()
for _ in $(seq "$RUNS"); do
  SMALL_MS+=("$(ready_ms "$WORK/small.img")")
  MANY_MS+=("$(ready_ms "$WORK/many.img")")
done
SMALL_MED=$(printf '%s\n' "${SMALL_MS[@]}" | median)
MANY_MED=$(printf '%s\n' "${MANY_MS[@]}" | median)
MANY_IMG_MB=$(awk -v b="$(stat -c %s "$WORK/many.img")" 'BEGIN {printf "%.0f", b / 1e6}')
ROWS+=("| mount ready, $MANY-file image ($MANY_IMG_MB MB manifest) (ms) | $MANY_MED | 10-file image: $SMALL_MED ms | $(ratio "$MANY_MED" "$SMALL_MED") |")
fi

printf '\nthinnode mount, %d MiB file, zdb on loopback, median of %d runs, %s cores\n\n' "$FILE_MIB" "$RUNS" "$(nproc)"
printf '| measurement | result | baseline (same run) | ratio |\n|---|---:|---:|---:|\n'
for row in "${ROWS[@]}"; do echo "$row"; done
echo
for note in "${NOTES[@]}"; do echo "$note"; done
