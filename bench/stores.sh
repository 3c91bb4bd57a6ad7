#!/usr/bin/env bash
# Read throughput of one image from every store kind, as ratios to the raw fetch rate of a single zdb store
# measured in the same run:
#   zdb (one `thinnode zdb`), dir://, http:// (`thinnode serve-store` over the dir store),
#   route: with 2 full replicas (two zdb servers), disperse:4+2 (six zdb servers),
#   s3:// on SeaweedFS (`weed mini`, every port pinned on loopback; installed by scripts/setup.sh).
# Each reader is `raw_fetch IMAGE data.bin URL 4 8 decode` (crates/mount/examples): 4 threads, 8 chunks per
# request, every object verified and decrypted — the work any cold reader of the image does. The baseline
# is the same fetch from the single zdb store without decoding.
#
#   bash bench/stores.sh [SIZE_MIB] [RUNS]        (defaults: 1024 MiB, 3 rounds; medians are printed)
#
# The s3 rows: the s3:// store read with decoding (same reader as every row) and its raw fetch without
# decoding (the S3 engine's own rate, for reference). With root and /dev/fuse, two more rows read the image
# the way a node does: a cold `dd bs=1M` of the file through `thinnode mount` (fresh host cache each time),
# from the zdb store and from the s3 store.
#
# Notes: all servers run on this machine over loopback, so "cold" means nothing is cached by thinnode;
# the servers' files are in the page cache (this shared machine must not drop caches).
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${1:-1024}
RUNS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --quiet --release -p thinnode -p mount --example raw_fetch
BIN=$CARGO_TARGET_DIR/release/thinnode
RAW=$CARGO_TARGET_DIR/release/examples/raw_fetch

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
ZDB_PORTS=()
start_zdb() {
  local port dir
  port=$(free_port)
  dir=$WORK/zdb$port
  "$BIN" zdb --data "$dir/data" --index "$dir/index" --listen 127.0.0.1 --port "$port" >"$dir.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  ZDB_PORTS+=("$port")
}
for _ in $(seq 9); do start_zdb; done
Z() { echo "zdb://127.0.0.1:${ZDB_PORTS[$1]}/default"; }

HTTP_PORT=$(free_port)
mkdir -p "$WORK/dir"
"$BIN" serve-store "$WORK/dir" --listen "127.0.0.1:$HTTP_PORT" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
wait_port "$HTTP_PORT"

# SeaweedFS: master, volume, filer, s3 and admin with their gRPC ports, all pinned; one identity; one bucket.
command -v weed >/dev/null || { echo "weed (SeaweedFS) not found: run scripts/setup.sh" >&2; exit 1; }
mapfile -t WP < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(10)]
for s in socks: s.bind(("127.0.0.1", 0))
for s in socks: print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=bench-key AWS_SECRET_ACCESS_KEY=bench-secret
unset AWS_SESSION_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_S3
mkdir -p "$WORK/weed/data"
printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List"]}]}' \
  "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/weed/s3.json"
weed mini -dir="$WORK/weed/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port="${WP[0]}" -master.port.grpc="${WP[1]}" -volume.port="${WP[2]}" -volume.port.grpc="${WP[3]}" \
  -filer.port="${WP[4]}" -filer.port.grpc="${WP[5]}" -s3.port="${WP[6]}" -s3.port.grpc="${WP[7]}" \
  -admin.port="${WP[8]}" -admin.port.grpc="${WP[9]}" -admin.ui=false -webdav=false -s3.port.iceberg=0 \
  -s3.port.lance=0 -master.telemetry=false -s3.autoCreateBucket=false -s3.config="$WORK/weed/s3.json" \
  -s3.localSocket="$WORK/weed/s3.sock" -filer.localSocket="$WORK/weed/filer.sock" -bucket=bench \
  >"$WORK/weed.log" 2>&1 &
PIDS+=($!)
wait_port "${WP[6]}"
for _ in $(seq 600); do
  # The bucket is served once the filer holds its directory.
  python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:${WP[4]}/buckets/bench/?limit=1')" 2>/dev/null && break
  sleep 0.05
done

mkdir -p "$WORK/src"
head -c "$((SIZE_MIB * 1048576))" /dev/urandom >"$WORK/src/data.bin"

declare -A URL
URL[zdb]=$(Z 0)
URL[dir]="dir://$WORK/dir"
URL[route2]="route: $(Z 1) $(Z 2)"
URL[disperse42]="disperse:4+2 $(Z 3) $(Z 4) $(Z 5) $(Z 6) $(Z 7) $(Z 8)"
URL[s3]="s3://bench/chunks?endpoint=http://127.0.0.1:${WP[6]}&region=us-east-1&path_style=true"
for kind in zdb dir route2 disperse42 s3; do
  "$BIN" pack "$WORK/src" --store "${URL[$kind]}" --out "$WORK/$kind.tni" >/dev/null 2>&1
done
URL[http]="http://127.0.0.1:$HTTP_PORT/"
cp "$WORK/dir.tni" "$WORK/http.tni"

# MB/s of stored bytes for: raw_fetch IMAGE data.bin URL 4 8 [decode]
rate() {
  local out
  out=$("$RAW" "$1" data.bin "$2" 4 8 ${3:-})
  awk '{ printf "%d\n", $1 / $2 / 1e6 }' <<<"$out"
}

KINDS=(zdb dir http route2 disperse42 s3 s3raw)
URL[s3raw]=${URL[s3]}
cp "$WORK/s3.tni" "$WORK/s3raw.tni"
if [ "$(id -u)" = 0 ] && [ -e /dev/fuse ]; then
  KINDS+=(mountzdb mounts3)
  cp "$WORK/zdb.tni" "$WORK/mountzdb.tni"
  cp "$WORK/s3.tni" "$WORK/mounts3.tni"
  mkdir -p "$MNT"
else
  echo "no root or /dev/fuse: the mount rows are left out" >&2
fi

# MB/s of a cold sequential read of data.bin through a fresh mount of image $1 (its recorded store).
mount_rate() {
  local cache=$WORK/cache t0 t1 bytes
  rm -rf "$cache"
  "$BIN" mount "$1" "$MNT" --cache "$cache" --daemon --log "$WORK/mount.log" >/dev/null 2>&1
  bytes=$(stat -c %s "$MNT/data.bin")
  t0=$(date +%s.%N)
  dd if="$MNT/data.bin" of=/dev/null bs=1M status=none
  t1=$(date +%s.%N)
  "$BIN" umount "$MNT" >/dev/null 2>&1
  rm -rf "$cache"
  awk -v b="$bytes" -v a="$t0" -v c="$t1" 'BEGIN { printf "%d\n", b / (c - a) / 1e6 }'
}
RESULTS=$WORK/results
: >"$RESULTS"
for round in $(seq "$RUNS"); do
  base=$(rate "$WORK/zdb.tni" "${URL[zdb]}")
  printf 'baseline\t%s\t%s\n' "$round" "$base" >>"$RESULTS"
  for i in $(shuf -i 0-$((${#KINDS[@]} - 1))); do
    kind=${KINDS[$i]}
    case $kind in
      mount*) r=$(mount_rate "$WORK/$kind.tni") ;;
      s3raw) r=$(rate "$WORK/$kind.tni" "${URL[$kind]}") ;;
      *) r=$(rate "$WORK/$kind.tni" "${URL[$kind]}" decode) ;;
    esac
    printf '%s\t%s\t%s\n' "$kind" "$round" "$r" >>"$RESULTS"
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
base_median=$(awk -F'\t' '$1 == "baseline" { print $3 }' "$RESULTS" | median)
echo "image: ${SIZE_MIB} MiB of random data (1 MiB chunks), ${RUNS} rounds; readers: 4 threads, 8 chunks/request, verify+decrypt"
echo
echo "| store | MB/s (median) | ratio to raw zdb fetch (median of per-round ratios) |"
echo "|---|---|---|"
echo "| raw zdb fetch, no decode (baseline) | $base_median | 1.00 |"
declare -A LABEL=(
  [zdb]="zdb:// (one server)"
  [dir]="dir://"
  [http]="http:// (thinnode serve-store over the dir store)"
  [route2]="route: 2 full replicas (two zdb servers)"
  [disperse42]="disperse:4+2 (six zdb servers)"
  [s3]="s3:// (SeaweedFS weed mini)"
  [s3raw]="raw s3:// fetch, no decode (SeaweedFS)"
  [mountzdb]="cold read through thinnode mount, zdb:// store"
  [mounts3]="cold read through thinnode mount, s3:// store"
)
for kind in "${KINDS[@]}"; do
  mbs=$(awk -F'\t' -v k="$kind" '$1 == k { print $3 }' "$RESULTS" | median)
  ratio=$(awk -F'\t' -v k="$kind" '
    $1 == "baseline" { b[$2] = $3 }
    $1 == k { r[$2] = $3 }
    END { for (i in r) if (b[i] > 0) printf "%.3f\n", r[i] / b[i] }' "$RESULTS" | median)
  printf '| %s | %s | %.2f |\n' "${LABEL[$kind]}" "$mbs" "$ratio"
done
