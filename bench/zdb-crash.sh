#!/usr/bin/env bash
# Crash safety of our zdb server under load: clients run a mixed SET/GET/DEL load over 4 namespaces against a
# `--sync` server that is killed with SIGKILL every KILL_EVERY seconds and restarted; every reply is checked
# against what was acknowledged, and every key is read back after a last kill. Prints the counts; fails if
# one acknowledged write is lost. The same test runs for 25 s in `cargo test -p zdb --test crash`.
#
# Usage: bash bench/zdb-crash.sh                 (DURATION=600 KILL_EVERY=30 CLIENTS=4)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
KILL_EVERY=${KILL_EVERY:-30}
CLIENTS=${CLIENTS:-4}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
ZDB_CRASH_SECS=$DURATION ZDB_CRASH_KILL_EVERY_SECS=$KILL_EVERY ZDB_CRASH_CLIENTS=$CLIENTS \
    cargo test --release -p zdb --test crash -- --nocapture --test-threads 1 \
    kill_9_under_mixed_load 2>&1 | grep -E "^(zdb crash test|LOST|test result)"
echo "command: bash bench/zdb-crash.sh (DURATION=$DURATION KILL_EVERY=$KILL_EVERY CLIENTS=$CLIENTS), $(date -u +%F)"
