#!/usr/bin/env bash
# Runs the RESP decoder + command dispatch fuzz target (fuzz/) for a bounded time with cargo-fuzz.
# Usage: bash bench/fuzz-zdb.sh [seconds]   (default 60). Needs cargo-fuzz (installed if missing); uses
# RUSTC_BOOTSTRAP=1 because cargo-fuzz passes nightly-only sanitizer flags.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
mkdir -p corpus/resp_dispatch
# Seeds: a few valid requests.
printf '*1\r\n$4\r\nPING\r\n' >corpus/resp_dispatch/ping
printf '*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n' >corpus/resp_dispatch/setget
printf '*1\r\n$4\r\nSCAN\r\n*2\r\n$5\r\nNSNEW\r\n$2\r\nns\r\n*2\r\n$6\r\nSELECT\r\n$2\r\nns\r\n' >corpus/resp_dispatch/ns
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo fuzz run resp_dispatch corpus/resp_dispatch -- -max_total_time="$SECS" -max_len=4096 -timeout=10 -rss_limit_mb=2048
echo "fuzz: resp_dispatch ran ${SECS}s without a crash or hang"
