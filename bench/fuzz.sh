#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a set time and prints a table of executions and findings:
#   resp_dispatch  arbitrary bytes through the zdb server's request processing on a real database
#   resp_parse     the RESP request decoder, checked against redis-protocol
#   manifest       ImageManifest::from_bytes, seeded with valid manifests made by `thinnode pack`, then walked
#   chunk_decode   image::decode_chunk on unsealed, sealed-hostile and round-tripped chunks
#   store_url      store URL parsing, redaction, http object URLs and dir object paths
# A crash, a hang or an out-of-memory input is a finding (its input is kept under fuzz/artifacts/TARGET/).
#
# Usage: bash bench/fuzz.sh [seconds per target]        (default 60; TARGETS="a b" to pick some)
# Needs cargo-fuzz (installed if missing). cargo-fuzz passes nightly-only sanitizer flags, so the build
# runs the stable toolchain with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-${FUZZ_SECS:-60}}
TARGETS=${TARGETS:-"resp_dispatch resp_parse manifest chunk_decode store_url"}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
export RUSTC_BOOTSTRAP=1
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

seed() { # target name bytes (printf format)
    mkdir -p "fuzz/corpus/$1"
    # shellcheck disable=SC2059
    printf "$3" >"fuzz/corpus/$1/$2"
}

# RESP requests.
for t in resp_dispatch resp_parse; do
    seed $t ping '*1\r\n$4\r\nPING\r\n'
    seed $t setget '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n'
    seed $t ns '*1\r\n$4\r\nSCAN\r\n*2\r\n$5\r\nNSNEW\r\n$2\r\nns\r\n*2\r\n$6\r\nSELECT\r\n$2\r\nns\r\n'
    seed $t auth '*3\r\n$4\r\nAUTH\r\n$6\r\nSECURE\r\n$9\r\nCHALLENGE\r\n'
done
# Store URLs.
seed store_url dir 'dir:///var/lib/chunks'
seed store_url zdb 'zdb://user:secret@127.0.0.1:9900/ns?password=pw&timeout_ms=100'
seed store_url unix 'zdb+unix:///run/zdb.sock?ns=a&password=b'
seed store_url http 'https://cdn.example.com/images/base/?timeout_ms=5000&parallel=4'
seed store_url s3 's3://bucket/prefix?endpoint=http://127.0.0.1:8333&region=us-east-1'
seed store_url route 'route:00-7f=dir:///a,80-ff=dir:///b'
seed store_url hex '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'
# Chunks: mode byte, flags, 32-byte key, plaintext length, payload.
seed chunk_decode raw '\000\001KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK\020\000\000\000payload bytes'
seed chunk_decode sealed '\001\001KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK\000\020\000\000(\265/\375 \004!\000\000abcd'
seed chunk_decode roundtrip '\002\003KKKKKKKKKKKKKKKKKKKKKKKKKKKKKKKK\000\000\000\000hello hello hello hello'

# Valid manifests from the real packer: a small tree with every file kind, signed and unsigned, two
# chunk sizes.
if [[ " $TARGETS " == *" manifest "* ]]; then
    cargo build --release -p thinnode >/dev/null 2>&1 || cargo build --release -p thinnode
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/thinnode
    TREE=$WORK/tree
    mkdir -p "$TREE/dir/sub" "$TREE/empty"
    printf 'hello\n' >"$TREE/small"
    head -c 300000 /dev/urandom >"$TREE/dir/random"
    head -c 70000 /dev/zero >"$TREE/dir/sub/zeros"
    truncate -s 200000 "$TREE/sparse"
    ln -s small "$TREE/link"
    setfattr -n user.note -v fuzz "$TREE/small" 2>/dev/null || true
    mkdir -p fuzz/corpus/manifest
    "$BIN" key gen --out "$WORK/key" >/dev/null
    for cs in 64KiB 1MiB; do
        "$BIN" pack "$TREE" --store "dir://$WORK/store" --chunk-size "$cs" --out "fuzz/corpus/manifest/plain-$cs.img" >/dev/null
    done
    "$BIN" pack "$TREE" --store "dir://$WORK/store" --chunk-size 64KiB --sign "$WORK/key" \
        --out fuzz/corpus/manifest/signed.img >/dev/null
fi

printf '| %-14s | %7s | %11s | %9s | %11s | %8s |\n' target seconds executions "execs/s" "corpus" findings >"$WORK/table"
printf '|%s|%s|%s|%s|%s|%s|\n' ---------------- --------- ------------- ----------- ------------- ---------- >>"$WORK/table"
total_findings=0
for t in $TARGETS; do
    mkdir -p "fuzz/artifacts/$t"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    log=$WORK/$t.log
    (cd fuzz && CARGO_TARGET_DIR=$FUZZ_TARGET_DIR cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$SECS" -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/") >"$log" 2>&1 || true
    execs=$(awk '/stat::number_of_executed_units/ { print $NF }' "$log" | tail -1)
    execs=${execs:-0}
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    after=$(find "fuzz/artifacts/$t" -type f | wc -l)
    findings=$((after - before))
    total_findings=$((total_findings + findings))
    if [ "$findings" -gt 0 ]; then
        echo "finding in $t:" >&2
        grep -E "panicked|ERROR|SUMMARY" "$log" | head -5 >&2 || true
        ls -t "fuzz/artifacts/$t" | head -"$findings" | sed "s#^#  fuzz/artifacts/$t/#" >&2
    fi
    printf '| %-14s | %7s | %11s | %9s | %11s | %8s |\n' "$t" "$SECS" "$execs" "$((execs / SECS))" "$corpus" "$findings" >>"$WORK/table"
done
echo
cat "$WORK/table"
echo
echo "command: bash bench/fuzz.sh $SECS ($(date -u +%F), $(nproc) cores)"
[ "$total_findings" -eq 0 ]
