#!/usr/bin/env bash
# End-to-end demo on an embedded default; filled in as the commands land.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q
echo "demo: thinnode built at target/release/thinnode"
