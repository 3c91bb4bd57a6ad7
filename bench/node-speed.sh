#!/usr/bin/env bash
# Does a node on a thin mount run at local-disk speed? Every figure is a ratio to the same workload on a
# local copy of the same data, measured in the same run, with the page cache dropped before each side
# (which also drops the store's files) and the reader in a memory cgroup (v1) that caps what it may keep
# in the page cache, so that most of its reads miss the page cache as a big chain database's do:
#   1. fio 4 KiB random reads (4 jobs, psync, time-based) over a SIZE_MIB data set (two random files,
#      a.bin and b.bin), host cache complete (`thinnode hydrate` first, which seals every file, so every
#      open is FUSE passthrough from the host-cache file): plain mount, overlay layer and blocks layer vs
#      the local files;
#   2. the same with the host cache half full: a fresh cache with a.bin hydrated, and a
#      `thinnode hydrate --rate HALF_RATE` of the rest running during fio;
#   3. sequential cold read (`dd bs=1M`, fresh host cache: the daemon fetches, verifies and writes each
#      chunk into the file's sparse cache file) with the store behind a LINK `tc tbf` qdisc on
#      loopback vs the raw pipelined fetch of the same chunks through the same link
#      (crates/mount/examples/raw_fetch), and unlimited with the store's files cold vs the local cold read;
#   4. real workloads against the same workload on a local copy, host cache complete and cold: ParityDB
#      (crates/paritydb-harness `verify`, every key read back) on the blocks layer, and litecoind replaying
#      a regtest chain with transactions (`-reindex-chainstate`, from start until the tip is back at the
#      chain's height) on the overlay layer (chain made once by bench/litecoin-chain.py and kept under
#      CHAIN_CACHE, keyed by that script's hash and the chain's shape);
#   5. host-cache bytes on disk after `hydrate` (`du --block-size=1`: cache files, presence maps, chunk
#      index) vs the image's unique plain bytes (`thinnode inspect --json`);
#   6. peak RSS (VmHWM) and peak thread count of the mount daemon during (3) and (1).
# The workload never shares a cgroup with the mount daemon (the daemon's host-cache writes would be charged
# to it). Reads that pass through to a sealed host-cache file are done in the reader's context and capped
# like the local side's; reads the daemon serves itself (a file not yet sealed, a blocks-layer file with
# written blocks, such as ParityDB's index files) would fill a page cache no cgroup caps and make the thin
# side look faster than the disk. So in parts 1, 2 and 4 (ParityDB) the daemon is moved, right after
# mounting, into a cgroup of its own with the same page-cache budget (plus its RSS); the counters
# (passthrough opens, daemon CPU-s) and how much of the host cache sat in the page cache after each run
# are printed per run. In part 3 and for litecoind the daemon is not capped.
#
# Global knobs: the `tc` qdisc on lo and drop_caches affect every process on the host, so the script holds
# an exclusive flock on /var/tmp/thinnode-bench.lock while it runs (bench/mount.sh takes the same lock);
# a second benchmark waits for the first. The qdisc is removed, and mounts, daemons and cgroups stopped,
# on exit or Ctrl-C.
#
#   bash bench/node-speed.sh
#   RUNS=1 SIZE_MIB=512 PDB_SIZE=512M LTC_BLOCKS=1000 FIO_SECS=5 bash bench/node-speed.sh   # a few minutes
#
# Environment: RUNS (3; medians are printed), SIZE_MIB (2048), MEM_MIB (the reader's cgroup cap:
# SIZE_MIB/4, at most 256), FIO_SECS (20), FIO_RAMP (2), HALF_RATE (50MB/s), LINK (10gbit), PDB_SIZE
# (1G), PDB_CHUNK (64KiB), PDB_MEM_MIB (MEM_MIB), LTC_BLOCKS (3000), LTC_TXS (40 per block), LTC_OUTPUTS
# (12 per transaction), LTC_DBCACHE (64, MiB), LTC_MEM_MIB (256: litecoind's own memory counts too),
# CHAIN_CACHE (/var/tmp/thinnode-bench-chains), PARTS (fio,half,seq,paritydb,litecoin: the parts to run),
# THINNODE (a thinnode binary to measure instead of building this tree's, e.g. an older build kept for a
# before/after comparison; the helpers are still built from this tree).
# Needs root, /dev/fuse, fio and litecoind (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

exec 9>/var/tmp/thinnode-bench.lock
if ! flock -n 9; then
  echo "node-speed: waiting for /var/tmp/thinnode-bench.lock (another benchmark that drops caches or shapes lo)" >&2
  flock 9
fi

RUNS=${RUNS:-3}
SIZE_MIB=${SIZE_MIB:-2048}
MEM_MIB=${MEM_MIB:-$((SIZE_MIB / 4 < 256 ? SIZE_MIB / 4 : 256))}
FIO_SECS=${FIO_SECS:-20}
FIO_RAMP=${FIO_RAMP:-2}
HALF_RATE=${HALF_RATE:-50MB/s}
LINK=${LINK:-10gbit}
PDB_SIZE=${PDB_SIZE:-1G}
PDB_CHUNK=${PDB_CHUNK:-64KiB}
PDB_MEM_MIB=${PDB_MEM_MIB:-$MEM_MIB}
LTC_BLOCKS=${LTC_BLOCKS:-3000}
LTC_TXS=${LTC_TXS:-40}
LTC_OUTPUTS=${LTC_OUTPUTS:-12}
LTC_DBCACHE=${LTC_DBCACHE:-64}
LTC_MEM_MIB=${LTC_MEM_MIB:-256}
CHAIN_CACHE=${CHAIN_CACHE:-/var/tmp/thinnode-bench-chains}
PARTS=${PARTS:-fio,half,seq,paritydb,litecoin}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}

part() { [[ ",$PARTS," == *",$1,"* ]]; }
die() { echo "node-speed: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (page-cache drops, memory cgroups, FUSE, tc)"
[ -c /dev/fuse ] || die "needs /dev/fuse"
[ -d /sys/fs/cgroup/memory ] || die "needs the cgroup v1 memory controller at /sys/fs/cgroup/memory"
for tool in fio jq fincore curl; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash scripts/setup.sh installs it)"
done
if part litecoin; then
  command -v litecoind >/dev/null || die "litecoind is missing (bash scripts/setup.sh installs it)"
fi

if [ -z "${THINNODE:-}" ]; then
  cargo build --quiet --release -p thinnode --bin thinnode
  THINNODE=$CARGO_TARGET_DIR/release/thinnode
  MEASURED="this tree, commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates || echo ' + local changes')"
else
  [ -x "$THINNODE" ] || die "THINNODE=$THINNODE is not an executable"
  MEASURED="$THINNODE"
fi
cargo build --quiet --release -p mount --example raw_fetch
cargo build --quiet --release -p paritydb-harness
BIN=$THINNODE
RAW=$CARGO_TARGET_DIR/release/examples/raw_fetch
HARNESS=$CARGO_TARGET_DIR/release/paritydb-harness

WORK=$(mktemp -d /var/tmp/thinnode-node-speed.XXXXXX)
CG_ROOT=/sys/fs/cgroup/memory
CG_PREFIX=thinnode-node-speed-$$
MOUNTS=() BG_PIDS=() ZDB_PID='' LINKED=0
cleanup() {
  set +e
  [ "$LINKED" = 1 ] && tc qdisc del dev lo root 2>/dev/null
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for cg in "$CG_ROOT/$CG_PREFIX"-*; do
    [ -d "$cg" ] || continue
    for p in $(cat "$cg/cgroup.procs"); do kill "$p" 2>/dev/null; done
  done
  for p in "${BG_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  for cg in "$CG_ROOT/$CG_PREFIX"-*; do
    [ -d "$cg" ] || continue
    for _ in $(seq 100); do [ -z "$(cat "$cg/cgroup.procs")" ] && break; sleep 0.1; done
    rmdir "$cg"
  done
  for m in "${MOUNTS[@]}"; do
    mountpoint -q "$m" && "$BIN" umount "$m" >/dev/null 2>&1
  done
  if [ -n "$ZDB_PID" ]; then kill "$ZDB_PID" 2>/dev/null; wait "$ZDB_PID" 2>/dev/null; fi
  rm -rf "$WORK" "$CHAIN_CACHE"/*.tmp.$$
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
median() { sort -n | awk '{v[NR]=$1} END {if (NR == 0) print "-"; else print v[int((NR+1)/2)]}'; }
med() { printf '%s\n' "$@" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "-"; else printf "%.2f", a / b}'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
allocated() { du -s --block-size=1 "$1" | cut -f1; }
mib() { awk -v b="$1" 'BEGIN {printf "%.0f", b / 1048576}'; }
# CPU seconds a process has used (user + system)
proc_cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# busy and total jiffies of the whole machine so far, as "BUSY TOTAL"
machine_cpu() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit}' /proc/stat; }
# "daemon D CPU-s/GB, zdb Z CPU-s/GB, machine M of N cores busy" between two samples of each, for SIZE_MIB read
seq_cpu() { # D0 D1 Z0 Z1 "BUSY0 TOTAL0" "BUSY1 TOTAL1"
  awk -v d0="$1" -v d1="$2" -v z0="$3" -v z1="$4" -v m0="$5" -v m1="$6" -v gb="$(awk -v m="$SIZE_MIB" 'BEGIN {print m * 1048576 / 1e9}')" -v n="$(nproc)" \
    'BEGIN {split(m0, a, " "); split(m1, b, " "); printf "daemon %.2f CPU-s/GB, zdb %.2f CPU-s/GB, machine %.1f of %d cores busy", (d1 - d0) / gb, (z1 - z0) / gb, n * (b[1] - a[1]) / (b[2] - a[2]), n}'
}
# bytes of the files under $1 held in the page cache
resident() { find "$1" -type f -print0 | xargs -0 -r fincore --bytes --noheadings --output RES 2>/dev/null | awk '{s += $1} END {print s + 0}'; }

# A fresh memory cgroup capped at $1 MiB; prints its path.
new_cgroup() {
  local cg
  cg=$CG_ROOT/$CG_PREFIX-$(date +%s%N)
  mkdir "$cg"
  echo $(($1 << 20)) >"$cg/memory.limit_in_bytes"
  echo "$cg"
}
drop_cgroup() { rmdir "$1" 2>/dev/null || true; }
# Runs a command inside cgroup $1.
in_cgroup() { sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$@"; }

# --- mounts (every one records its daemon's pid; a sampler keeps the daemon's peak thread count) ---
DAEMON_PID='' SAMPLER_PID='' METRICS_PORT=''
mount_image() { # IMAGE MOUNTPOINT CACHE [thinnode mount options...]
  local out
  mkdir -p "$2"
  METRICS_PORT=$(free_port)
  MOUNTS+=("$2")
  # A mount that does not come up within a minute is stopped (its daemon by pid) rather than waited for.
  "$BIN" mount "$1" "$2" --cache "$3" --daemon --log "$WORK/mount.log" \
    --metrics "127.0.0.1:$METRICS_PORT" "${@:4}" >"$WORK/mount.out" 2>&1 &
  local mp=$! i
  for i in $(seq 600); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$mp" 2>/dev/null; then
    local stack=''
    for i in $(pgrep -P "$mp"); do
      stack+=$(head -3 "/proc/$i/stack" 2>/dev/null | tr '\n' ' ')
      kill -9 "$i" 2>/dev/null || true
    done
    kill "$mp" 2>/dev/null || true
    die "mount $1 did not come up in 60 s (daemon kernel stack: $stack)"
  fi
  wait "$mp" || die "mount $1 failed: $(cat "$WORK/mount.out")"
  out=$(cat "$WORK/mount.out")
  DAEMON_PID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
  [ -n "$DAEMON_PID" ] || die "no daemon pid in: $out"
  (
    max=0
    while [ -d "/proc/$DAEMON_PID" ]; do
      t=$(awk '/^Threads:/{print $2}' "/proc/$DAEMON_PID/status" 2>/dev/null || echo 0)
      [ "${t:-0}" -gt "$max" ] && max=$t && echo "$max" >"$WORK/threads.$DAEMON_PID"
      sleep 0.2
    done
  ) &
  SAMPLER_PID=$!
  BG_PIDS+=("$SAMPLER_PID")
}
# Peak RSS (MiB) and peak threads of the current daemon, as "RSS THREADS".
daemon_peaks() {
  local hwm
  hwm=$(awk '/^VmHWM:/{print $2}' "/proc/$DAEMON_PID/status")
  echo "$((hwm / 1024)) $(cat "$WORK/threads.$DAEMON_PID" 2>/dev/null || echo 0)"
}
# The daemon's counters (thinnode_mount_*_total that are not zero), one line.
daemon_counters() {
  curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
    awk '/^thinnode_mount_[a-z_]*_total / && $2 != 0 {sub("thinnode_mount_", "", $1); sub("_total", "", $1); printf "%s=%s ", $1, $2}'
}
umount_image() {
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  "$BIN" umount "$1" >/dev/null 2>&1 || die "umount $1 failed"
  if [ -n "$DAEMON_CG" ]; then drop_cgroup "$DAEMON_CG"; DAEMON_CG=''; fi
}
# Moves the current daemon into a cgroup of its own that lets it keep MIB MiB of page cache (on top of
# what it holds now): a variant for reads the daemon itself serves (the blocks layer), which otherwise
# come from a page cache no cgroup caps.
DAEMON_CG=''
cap_daemon() {
  local rss
  rss=$(awk '/^VmRSS:/{print int($2 / 1024)}' "/proc/$DAEMON_PID/status")
  DAEMON_CG=$(new_cgroup $(($1 + rss + 16)))
  echo "$DAEMON_PID" >"$DAEMON_CG/cgroup.procs"
}
# Mounts IMAGE with CACHE at $WORK/node in one of the three ways; prints the path the workload uses.
NODE=$WORK/node
mount_kind() { # KIND(plain|overlay|blocks) IMAGE CACHE
  rm -rf "$WORK/layer"
  case $1 in
    plain) mount_image "$2" "$NODE" "$3" ;;
    overlay | blocks) mount_image "$2" "$NODE" "$3" --layer "$WORK/layer" --layer-kind "$1" ;;
    *) die "unknown mount kind $1" ;;
  esac
}
umount_kind() { umount_image "$NODE"; rm -rf "$WORK/layer"; }

# --- workloads ---
# fio 4 KiB random reads of the data set in DIR (a.bin and b.bin, I/Os alternating between them) in a
# fresh cgroup of MEM_MIB; prints IOPS.
fio_iops() {
  local cg
  cg=$(new_cgroup "$MEM_MIB")
  in_cgroup "$cg" fio --name=randread --filename="$1/a.bin:$1/b.bin" --readonly --rw=randread --bs=4k --ioengine=psync \
    --numjobs=4 --time_based --runtime="$FIO_SECS" --ramp_time="$FIO_RAMP" --norandommap \
    --group_reporting --output-format=json --output="$WORK/fio.json" >/dev/null
  drop_cgroup "$cg"
  jq '.jobs[0].read.iops | floor' "$WORK/fio.json"
}
# Sequential read of the data set in DIR (a.bin, then b.bin) with dd bs=1M in a fresh cgroup of
# MEM_MIB; prints MB/s.
seq_rate() {
  local cg t0 t1 bytes
  cg=$(new_cgroup "$MEM_MIB")
  bytes=$(($(stat -c %s "$1/a.bin") + $(stat -c %s "$1/b.bin")))
  t0=$(now)
  in_cgroup "$cg" sh -c 'for f; do dd if="$f" of=/dev/null bs=1M status=none; done' - "$1/a.bin" "$1/b.bin"
  t1=$(now)
  drop_cgroup "$cg"
  awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN {printf "%.0f", b / (c - a) / 1e6}'
}
# The raw pipelined fetch of the data set's chunks (no decoding; a.bin, then b.bin); prints MB/s.
raw_rate() {
  local bytes secs total=0 time=0 f
  for f in a.bin b.bin; do
    read -r bytes secs < <("$RAW" "$WORK/data.img" "$f" "$URL" 4 8)
    total=$((total + bytes))
    time=$(awk -v a="$time" -v b="$secs" 'BEGIN {print a + b}')
  done
  awk -v b="$total" -v s="$time" 'BEGIN {printf "%.0f", b / s / 1e6}'
}
warm_store() { find "$WORK/zdb" -type f -exec cat {} + >/dev/null; }
# Seconds `paritydb-harness verify DIR` takes in a fresh cgroup of PDB_MEM_MIB.
pdb_verify_secs() {
  local cg t0 t1
  cg=$(new_cgroup "$PDB_MEM_MIB")
  t0=$(now)
  in_cgroup "$cg" "$HARNESS" verify "$1" >"$WORK/verify.out" 2>&1 || die "verify $1: $(cat "$WORK/verify.out")"
  t1=$(now)
  drop_cgroup "$cg"
  awk -v a="$t0" -v c="$t1" 'BEGIN {printf "%.2f", c - a}'
}
# Seconds from starting litecoind -reindex-chainstate on DATADIR (in a fresh cgroup of LTC_MEM_MIB)
# until its tip is back at LTC_BLOCKS; then stops it.
ltc_replay_secs() {
  local dir=$1 cg rpc pid t0 t1 h=
  cg=$(new_cgroup "$LTC_MEM_MIB")
  rpc=$(free_port)
  t0=$(now)
  sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" litecoind -regtest -datadir="$dir" -rpcport="$rpc" -port="$(free_port)" -listen=0 \
    -connect=0 -disablewallet -reindex-chainstate -dbcache="$LTC_DBCACHE" -printtoconsole=0 \
    >/dev/null 2>&1 &
  pid=$!
  BG_PIDS+=("$pid")
  while [ "$h" != "$LTC_BLOCKS" ]; do
    kill -0 "$pid" 2>/dev/null || die "litecoind on $dir exited: $(tail -5 "$dir/regtest/debug.log")"
    sleep 0.05
    h=$(litecoin-cli -regtest -datadir="$dir" -rpcport="$rpc" getblockcount 2>/dev/null || true)
  done
  t1=$(now)
  litecoin-cli -regtest -datadir="$dir" -rpcport="$rpc" stop >/dev/null
  wait "$pid" || true
  drop_cgroup "$cg"
  awk -v a="$t0" -v c="$t1" 'BEGIN {printf "%.2f", c - a}'
}
# Packs DIR into the store as IMAGE (extra pack options after them).
pack() { "$BIN" pack "$1" --store "$URL" --out "$2" "${@:3}" >"$WORK/pack.out" 2>&1 || die "pack $1: $(cat "$WORK/pack.out")"; }
# Host-cache bytes on disk after hydrating IMAGE into a fresh CACHE, as "cache_bytes unique_bytes".
hydrate_full() { # IMAGE CACHE
  "$BIN" hydrate "$1" --cache "$2" --quiet 2>"$WORK/hydrate.out" || die "hydrate $1: $(cat "$WORK/hydrate.out")"
  echo "$(allocated "$2") $("$BIN" inspect "$1" --json | jq .unique_bytes)"
}

log "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg); work dir $WORK"
PORT=$(free_port)
"$BIN" zdb --data "$WORK/zdb/data" --index "$WORK/zdb/index" --listen 127.0.0.1 --port "$PORT" \
  >"$WORK/zdb.log" 2>&1 &
ZDB_PID=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.1
done
URL="zdb://127.0.0.1:$PORT/default"

ROWS=() PEAK_ROWS=() DETAILS=() CACHE5_ROWS=()
# add_row FIGURE THIN_VALUES LOCAL_VALUES TARGET [lower]: medians of both and the median of per-run
# ratios (thin/local; local/thin with "lower", for times, so that > 1 is always faster than local).
add_row() {
  local figure=$1 target=$4 lower=${5:-} thin local_ ratios=() i
  read -ra thin <<<"$2"
  read -ra local_ <<<"$3"
  for i in "${!thin[@]}"; do
    if [ -n "$lower" ]; then ratios+=("$(ratio "${local_[$i]}" "${thin[$i]}")"); else ratios+=("$(ratio "${thin[$i]}" "${local_[$i]}")"); fi
  done
  local r met=""
  r=$(med "${ratios[@]}")
  case $target in
    "≥ "*) met=$(awk -v r="$r" -v t="${target#≥ }" 'BEGIN {print (r >= t) ? "yes" : "**no**"}') ;;
    "≤ "*) met=$(awk -v r="$r" -v t="${target#≤ }" 'BEGIN {print (r <= t) ? "yes" : "**no**"}') ;;
    *) met="–" ;;
  esac
  ROWS+=("| $figure | $(med "${thin[@]}") | $(med "${local_[@]}") | $r | $target | $met |")
  DETAILS+=("$figure: thin ${thin[*]}; local ${local_[*]}; ratios ${ratios[*]}")
}

# ---------------------------------------------------------------- data sets and images
if part fio || part half || part seq; then
  log "data set: two random files of $((SIZE_MIB / 2)) MiB, packed into zdb (1 MiB chunks)"
  mkdir -p "$WORK/src"
  for f in a b; do head -c "$((SIZE_MIB << 19))" /dev/urandom >"$WORK/src/$f.bin"; done
  pack "$WORK/src" "$WORK/data.img"
  [ "$SIZE_MIB" -ge $((4 * MEM_MIB)) ] || log "warning: the data set is less than 4× the reader's cap ($MEM_MIB MiB)"
fi
if part fio; then
  log "hydrate the data set into the host cache"
  read -r cache_b uniq_b < <(hydrate_full "$WORK/data.img" "$WORK/cache-data")
  # Fragmentation matters for random reads that miss the page cache: extents of the local files and of
  # the two largest files in the host cache.
  log "  extents: local $(filefrag "$WORK/src/a.bin" "$WORK/src/b.bin" | awk '{printf "%s ", $2}'); host cache $(find "$WORK/cache-data" -type f -printf '%s %p\n' | sort -rn | head -2 | cut -d' ' -f2- | xargs -r filefrag | awk '{printf "%s ", $(NF-2)}')"
  CACHE5_ROWS=("| 5 | host cache on disk after hydrate / unique plain bytes, ${SIZE_MIB} MiB fio data set (MiB) | $(mib "$cache_b") | $(mib "$uniq_b") | $(ratio "$cache_b" "$uniq_b") | ≤ 1.05 | $(awk -v a="$cache_b" -v b="$uniq_b" 'BEGIN {print (a <= 1.05 * b) ? "yes" : "**no**"}') |")
fi
if part paritydb; then
  log "ParityDB: paritydb-harness build --size $PDB_SIZE, packed with --chunk-size $PDB_CHUNK"
  "$HARNESS" build "$WORK/pdb-src" --size "$PDB_SIZE" >"$WORK/build.out" 2>&1 || die "paritydb-harness build: $(cat "$WORK/build.out")"
  pack "$WORK/pdb-src" "$WORK/pdb.img" --chunk-size "$PDB_CHUNK"
  cp -a "$WORK/pdb-src" "$WORK/pdb-local"
  PDB_BYTES=$(allocated "$WORK/pdb-src")
  [ "$PDB_BYTES" -ge $((4 * PDB_MEM_MIB << 20)) ] || log "warning: the ParityDB is less than 4× the reader's cap ($PDB_MEM_MIB MiB)"
  read -r cache_b uniq_b < <(hydrate_full "$WORK/pdb.img" "$WORK/cache-pdb")
  CACHE5_ROWS+=("| 5 | host cache on disk after hydrate / unique plain bytes, ParityDB $(mib "$PDB_BYTES") MiB (MiB) | $(mib "$cache_b") | $(mib "$uniq_b") | $(ratio "$cache_b" "$uniq_b") | ≤ 1.05 | $(awk -v a="$cache_b" -v b="$uniq_b" 'BEGIN {print (a <= 1.05 * b) ? "yes" : "**no**"}') |")
fi
if part litecoin; then
  key=$(sha256sum bench/litecoin-chain.py | cut -c1-12)
  CHAIN=$CHAIN_CACHE/litecoin-$key-${LTC_BLOCKS}x${LTC_TXS}x${LTC_OUTPUTS}
  if [ ! -d "$CHAIN" ]; then
    log "making the litecoind chain once ($LTC_BLOCKS blocks, $LTC_TXS transactions each; kept in $CHAIN)"
    mkdir -p "$CHAIN_CACHE"
    python3 bench/litecoin-chain.py "$CHAIN.tmp.$$" "$LTC_BLOCKS" "$LTC_TXS" "$LTC_OUTPUTS" >&2
    mv "$CHAIN.tmp.$$" "$CHAIN"
  fi
  LTC_BYTES=$(allocated "$CHAIN")
  log "litecoind chain: $(mib "$LTC_BYTES") MiB; packed into zdb"
  pack "$CHAIN" "$WORK/ltc.img"
  read -r cache_b uniq_b < <(hydrate_full "$WORK/ltc.img" "$WORK/cache-ltc")
  CACHE5_ROWS+=("| 5 | host cache on disk after hydrate / unique plain bytes, litecoind chain $(mib "$LTC_BYTES") MiB (MiB) | $(mib "$cache_b") | $(mib "$uniq_b") | $(ratio "$cache_b" "$uniq_b") | ≤ 1.05 | $(awk -v a="$cache_b" -v b="$uniq_b" 'BEGIN {print (a <= 1.05 * b) ? "yes" : "**no**"}') |")
fi

# ---------------------------------------------------------------- runs
declare -A V # V[key] = space-separated per-run values
add() { V[$1]="${V[$1]:-} $2"; }
for r in $(seq "$RUNS"); do
  log "run $r of $RUNS (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  if part fio; then
    drop_caches
    iops=$(fio_iops "$WORK/src")
    add fio.local "$iops"
    log "  fio local copy: $iops IOPS"
    for kind in plain overlay blocks; do
      mount_kind "$kind" "$WORK/data.img" "$WORK/cache-data"
      cap_daemon "$MEM_MIB"
      drop_caches
      c0=$(proc_cpu "$DAEMON_PID")
      iops=$(fio_iops "$NODE")
      c1=$(proc_cpu "$DAEMON_PID")
      read -r rss thr < <(daemon_peaks)
      res=$(resident "$WORK/cache-data")
      add "fio.$kind" "$iops"
      add "cpu.fio.$kind" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}')"
      add "rss.fio.$kind" "$rss"
      add "thr.fio.$kind" "$thr"
      log "  fio $kind, host cache complete: $iops IOPS; daemon $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}') CPU-s, peak RSS $rss MiB, $thr threads; host cache in page cache after: $(mib "$res") MiB; $(daemon_counters)"
      umount_kind
    done
  fi
  if part half; then
    [ -n "${V[fio.local]:-}" ] || {
      drop_caches
      add fio.local "$(fio_iops "$WORK/src")"
    }
    for kind in plain overlay blocks; do
      # Half full: a.bin hydrated, b.bin not yet; then the rest is hydrated at HALF_RATE during fio.
      cache=$WORK/cache-half
      rm -rf "$cache"
      mount_kind "$kind" "$WORK/data.img" "$cache"
      cap_daemon "$MEM_MIB"
      "$BIN" hydrate "$NODE" --file a.bin --quiet >"$WORK/hydrate.out" 2>&1 || die "hydrate a.bin: $(cat "$WORK/hydrate.out")"
      before=$(allocated "$cache")
      "$BIN" hydrate "$NODE" --rate "$HALF_RATE" --quiet >/dev/null 2>&1 &
      hp=$!
      BG_PIDS+=("$hp")
      drop_caches
      c0=$(proc_cpu "$DAEMON_PID")
      iops=$(fio_iops "$NODE")
      c1=$(proc_cpu "$DAEMON_PID")
      after=$(allocated "$cache")
      kill -INT "$hp" 2>/dev/null || true
      wait "$hp" 2>/dev/null || true
      res=$(resident "$cache")
      add "half.$kind" "$iops"
      add "cpu.half.$kind" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}')"
      log "  fio $kind, a.bin hydrated, b.bin hydrating at $HALF_RATE: $iops IOPS; daemon $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}') CPU-s; host cache on disk $(mib "$before") → $(mib "$after") MiB during fio, $(mib "$res") MiB of it in page cache after; $(daemon_counters)"
      umount_kind
      rm -rf "$cache"
    done
  fi
  if part seq; then
    # Through the link: the store's files are read into the page cache first, so the link is the limit.
    if tc qdisc show dev lo | grep -q '^qdisc noqueue'; then
      drop_caches
      warm_store
      tc qdisc replace dev lo root tbf rate "$LINK" burst 1mb limit 8mb
      LINKED=1
      raw=$(raw_rate)
      rm -rf "$WORK/cache-cold"
      mount_image "$WORK/data.img" "$NODE" "$WORK/cache-cold"
      c0=$(proc_cpu "$DAEMON_PID") z0=$(proc_cpu "$ZDB_PID") m0=$(machine_cpu)
      rate=$(seq_rate "$NODE")
      c1=$(proc_cpu "$DAEMON_PID") z1=$(proc_cpu "$ZDB_PID") m1=$(machine_cpu)
      tc qdisc del dev lo root
      LINKED=0
      read -r rss thr < <(daemon_peaks)
      umount_image "$NODE"
      add link.thin "$rate"
      add cpu.link "$(awk -v a="$c0" -v b="$c1" -v m="$SIZE_MIB" 'BEGIN {printf "%.2f", (b - a) / (m * 1048576 / 1e9)}')"
      add link.raw "$raw"
      add rss.link "$rss"
      add thr.link "$thr"
      log "  cold sequential through $LINK: mount $rate MB/s, raw fetch $raw MB/s; $(seq_cpu "$c0" "$c1" "$z0" "$z1" "$m0" "$m1"), peak RSS $rss MiB, $thr threads"
    else
      log "  a qdisc is already on lo (someone else's benchmark?): skipping the link-limited read"
    fi
    # Unlimited, store files cold, vs the local file cold.
    drop_caches
    loc=$(seq_rate "$WORK/src")
    rm -rf "$WORK/cache-cold"
    mount_image "$WORK/data.img" "$NODE" "$WORK/cache-cold"
    drop_caches
    c0=$(proc_cpu "$DAEMON_PID") z0=$(proc_cpu "$ZDB_PID") m0=$(machine_cpu)
    rate=$(seq_rate "$NODE")
    c1=$(proc_cpu "$DAEMON_PID") z1=$(proc_cpu "$ZDB_PID") m1=$(machine_cpu)
    read -r rss thr < <(daemon_peaks)
    umount_image "$NODE"
    rm -rf "$WORK/cache-cold"
    add cold.thin "$rate"
    add cpu.cold "$(awk -v a="$c0" -v b="$c1" -v m="$SIZE_MIB" 'BEGIN {printf "%.2f", (b - a) / (m * 1048576 / 1e9)}')"
    add cold.local "$loc"
    add rss.cold "$rss"
    add thr.cold "$thr"
    log "  cold sequential, unlimited, store files cold: mount $rate MB/s, local $loc MB/s; $(seq_cpu "$c0" "$c1" "$z0" "$z1" "$m0" "$m1"), peak RSS $rss MiB, $thr threads"
  fi
  if part paritydb; then
    drop_caches
    s=$(pdb_verify_secs "$WORK/pdb-local")
    add pdb.local "$s"
    log "  ParityDB verify, local copy: $s s"
    for state in complete cold; do
      cache=$WORK/cache-pdb
      if [ $state = cold ]; then cache=$WORK/cache-pdb-cold; rm -rf "$cache"; fi
      mount_kind blocks "$WORK/pdb.img" "$cache"
      cap_daemon "$PDB_MEM_MIB"
      drop_caches
      c0=$(proc_cpu "$DAEMON_PID")
      s=$(pdb_verify_secs "$NODE")
      c1=$(proc_cpu "$DAEMON_PID")
      read -r rss thr < <(daemon_peaks)
      add "pdb.$state" "$s"
      add "cpu.pdb.$state" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}')"
      log "  ParityDB verify, blocks layer, host cache $state: $s s; daemon $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}') CPU-s, peak RSS $rss MiB, $thr threads; host cache in page cache after: $(mib "$(resident "$cache")") MiB; $(daemon_counters)"
      umount_kind
    done
    rm -rf "$WORK/cache-pdb-cold"
  fi
  if part litecoin; then
    rm -rf "$WORK/ltc-local"
    cp -a "$CHAIN" "$WORK/ltc-local"
    drop_caches
    s=$(ltc_replay_secs "$WORK/ltc-local")
    add ltc.local "$s"
    rm -rf "$WORK/ltc-local"
    log "  litecoind -reindex-chainstate, local copy: $s s"
    for state in complete cold; do
      cache=$WORK/cache-ltc
      if [ $state = cold ]; then cache=$WORK/cache-ltc-cold; rm -rf "$cache"; fi
      mount_kind overlay "$WORK/ltc.img" "$cache"
      drop_caches
      c0=$(proc_cpu "$DAEMON_PID")
      s=$(ltc_replay_secs "$NODE")
      c1=$(proc_cpu "$DAEMON_PID")
      read -r rss thr < <(daemon_peaks)
      add "ltc.$state" "$s"
      add "cpu.ltc.$state" "$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}')"
      log "  litecoind -reindex-chainstate, overlay layer, host cache $state: $s s; daemon $(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}') CPU-s, peak RSS $rss MiB, $thr threads; layer $(mib "$(allocated "$WORK/layer")") MiB; $(daemon_counters)"
      umount_kind
    done
    rm -rf "$WORK/cache-ltc-cold"
  fi
done

# ---------------------------------------------------------------- table
if part fio; then
  add_row "1 | fio 4 KiB random reads, host cache complete, plain mount (IOPS)" "${V[fio.plain]}" "${V[fio.local]}" "≥ 0.9"
  add_row "1 | same, overlay layer (IOPS)" "${V[fio.overlay]}" "${V[fio.local]}" "≥ 0.9"
  add_row "1 | same, blocks layer (IOPS)" "${V[fio.blocks]}" "${V[fio.local]}" "≥ 0.8"
  for kind in plain overlay blocks; do
    PEAK_ROWS+=("| 6 | mount daemon during (1), $kind: peak RSS MiB / peak threads | $(med ${V[rss.fio.$kind]}) / $(med ${V[thr.fio.$kind]}) | – | – | report | – |")
  done
fi
if part half; then
  add_row "2 | fio, host cache half full + hydrate --rate $HALF_RATE, plain mount (IOPS)" "${V[half.plain]}" "${V[fio.local]}" "report"
  add_row "2 | same, overlay layer (IOPS)" "${V[half.overlay]}" "${V[fio.local]}" "report"
  add_row "2 | same, blocks layer (IOPS)" "${V[half.blocks]}" "${V[fio.local]}" "report"
fi
if part seq; then
  if [ -n "${V[link.thin]:-}" ]; then
    add_row "3 | cold sequential read, store behind a $LINK link (MB/s; baseline: raw fetch through the same link)" "${V[link.thin]}" "${V[link.raw]}" "≥ 0.95"
    PEAK_ROWS+=("| 6 | mount daemon during (3), $LINK link: peak RSS MiB / peak threads | $(med ${V[rss.link]}) / $(med ${V[thr.link]}) | – | – | report | – |")
  fi
  add_row "3 | cold sequential read, unlimited, store files cold (MB/s; baseline: local cold read)" "${V[cold.thin]}" "${V[cold.local]}" "report"
  PEAK_ROWS+=("| 6 | mount daemon during (3), unlimited: peak RSS MiB / peak threads | $(med ${V[rss.cold]}) / $(med ${V[thr.cold]}) | – | – | report | – |")
fi
if part paritydb; then
  add_row "4 | ParityDB verify (every key), blocks layer, host cache complete (s)" "${V[pdb.complete]}" "${V[pdb.local]}" "≥ 0.8" lower
  add_row "4 | same, host cache cold (s)" "${V[pdb.cold]}" "${V[pdb.local]}" "≥ 0.8" lower
fi
if part litecoin; then
  add_row "4 | litecoind -reindex-chainstate, overlay layer, host cache complete (s)" "${V[ltc.complete]}" "${V[ltc.local]}" "≥ 0.8" lower
  add_row "4 | same, host cache cold (s)" "${V[ltc.cold]}" "${V[ltc.local]}" "≥ 0.8" lower
fi

echo
echo "node speed: $(date -u '+%Y-%m-%d %H:%M UTC'), thinnode from $MEASURED, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "RUNS=$RUNS SIZE_MIB=$SIZE_MIB MEM_MIB=$MEM_MIB FIO_SECS=$FIO_SECS HALF_RATE=$HALF_RATE LINK=$LINK PDB_SIZE=$PDB_SIZE PDB_CHUNK=$PDB_CHUNK PDB_MEM_MIB=$PDB_MEM_MIB LTC_BLOCKS=$LTC_BLOCKS LTC_MEM_MIB=$LTC_MEM_MIB"
[ -n "${PDB_BYTES:-}" ] && echo "ParityDB $(mib "$PDB_BYTES") MiB on disk; litecoind chain ${LTC_BYTES:+$(mib "$LTC_BYTES") MiB, }$LTC_BLOCKS blocks"
echo
echo "| # | figure | thin (median) | local copy / baseline (median) | ratio (median of runs) | target | met |"
echo "|---|---|---:|---:|---:|---|---|"
for row in "${ROWS[@]}" "${CACHE5_ROWS[@]}" "${PEAK_ROWS[@]}"; do echo "$row"; done
echo
echo "Ratios are thin / local for rates and local / thin for times (> 1: faster than the local copy)."
echo "Per run:"
for d in "${DETAILS[@]}"; do echo "  $d"; done
echo "Mount daemon CPU (median of runs; CPU-s per run of the workload, CPU-s per GB read for the sequential reads):"
for k in $(printf '%s\n' "${!V[@]}" | grep '^cpu\.' | sort); do echo "  ${k#cpu.}: $(med ${V[$k]}) (${V[$k]# })"; done
