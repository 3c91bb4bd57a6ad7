#!/usr/bin/env bash
# Builds the thinnode container image from the Dockerfile with podman, exactly as users build it, then
# runs it: a zdb server container with its data and index on a volume, a `thinnode pack` container that
# uploads a directory to it, and a `thinnode mount` container (/dev/fuse, CAP_SYS_ADMIN) whose view of
# the image must equal the directory byte for byte.
#
# No registry is reachable here, so the base images the Dockerfile names are made locally and tagged
# with those names: Debian bookworm from debootstrap (`podman import`), and a stand-in for the Rust
# build image made from it plus this machine's Rust toolchain. They, the crates the build downloads and
# the build's target directory are cached in $THINNODE_CONTAINER_CACHE (default
# /var/cache/thinnode-ci) between runs on one machine; a first run on a fresh machine builds everything.
#
# podman settings this machine needs (see /work/shared/DESIGN.md "Containers here"): runtime runc, a
# containers.conf with `default_ulimits = []`, `--pull=never --network host`.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${THINNODE_CONTAINER_CACHE:-/var/cache/thinnode-ci}
tag=${THINNODE_IMAGE_TAG:-localhost/thinnode:test}
mkdir -p "$cache"
exec 9>"$cache/lock"
flock 9   # one run at a time per cache (image tags and the target directory are shared)

# The base images, as the Dockerfile names them.
debian_image=$(sed -n 's/^ARG DEBIAN_IMAGE=//p' Dockerfile)
rust_image=$(sed -n 's/^ARG RUST_IMAGE=//p' Dockerfile)
mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
mirror=${mirror:-http://deb.debian.org/debian}

conf="$cache/containers.conf"
cat > "$conf" <<'EOF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
EOF
export CONTAINERS_CONF="$conf"
podman() { command podman --runtime runc "$@"; }

phase_start=$SECONDS
phase() {
  echo "container-test: $1 ($((SECONDS - phase_start)) s)"
  phase_start=$SECONDS
}

# 1. Debian bookworm slim: debootstrap minbase, imported once.
if ! podman image exists "$debian_image"; then
  rootfs="$cache/rootfs-bookworm"
  if [ ! -e "$rootfs/.complete" ]; then
    rm -rf "$rootfs"
    mkdir -p "$cache/debs"
    debootstrap --variant=minbase --cache-dir="$cache/debs" bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log"
    # The image's own apt sources: the same mirror.
    echo "deb $mirror bookworm main" > "$rootfs/etc/apt/sources.list"
    touch "$rootfs/.complete"
  fi
  tar -C "$rootfs" --exclude=./.complete -c . | podman import - "$debian_image" >/dev/null 2>&1
  phase "imported $debian_image from debootstrap"
fi

# 2. The Rust build image: that Debian plus gcc and this machine's toolchain, where the official image
#    has them (CARGO_HOME=/usr/local/cargo, cargo and rustc on PATH), and this machine's CA bundle (the
#    registry may be reached through a TLS-inspecting proxy whose CA only the host trusts).
rustc_version="$(rustc --version); ca $(sha256sum /etc/ssl/certs/ca-certificates.crt | cut -c1-12)"
if [ "$(podman image inspect --format '{{ index .Labels "rustc" }}' "$rust_image" 2>/dev/null)" != "$rustc_version" ]; then
  sysroot=$(rustc --print sysroot)
  ctx="$cache/rust-context"
  rm -rf "$ctx"
  mkdir -p "$ctx/toolchain/bin"
  # Hard links when the cache shares the toolchain's filesystem (no copy), else a copy.
  cp -al "$sysroot/lib" "$ctx/toolchain/lib" 2>/dev/null || cp -a "$sysroot/lib" "$ctx/toolchain/lib"
  cp -a "$sysroot/bin/cargo" "$sysroot/bin/rustc" "$ctx/toolchain/bin/"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  cat > "$ctx/Containerfile" <<EOF
FROM $debian_image
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates pkg-config make \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY toolchain /usr/local/rust
RUN mkdir -p /usr/local/cargo/bin && ln -s /usr/local/rust/bin/cargo /usr/local/rust/bin/rustc /usr/local/cargo/bin/
ENV CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL rustc="$rustc_version"
EOF
  podman build --pull=never --network host -q -t "$rust_image" "$ctx" >/dev/null
  rm -rf "$ctx"
  phase "built the stand-in $rust_image ($rustc_version)"
fi

# 3. The image, from the Dockerfile as it is. The crate downloads and the target directory are volumes
#    of the build, kept between runs.
mkdir -p "$cache/cargo-registry" "$cache/target"
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
podman build --pull=never --network host \
  --build-arg THINNODE_GIT_COMMIT="$commit" \
  -v "$cache/cargo-registry:/usr/local/cargo/registry" \
  -v "$cache/target:/src/target" \
  -t "$tag" . >"$cache/build.log" 2>&1 || { tail -40 "$cache/build.log"; exit 1; }
phase "built $tag from the Dockerfile"
version=$(podman run --rm --pull=never --network host "$tag" --version)
echo "container-test: $version"
case "$version" in *"$commit"*) ;; *) echo "container-test: --version lacks commit $commit" >&2; exit 1 ;; esac

# 4. Run it: a zdb server container, a pack container, a mount container.
work=$(mktemp -d /tmp/thinnode-container-test.XXXXXX)
name="thinnode-ct-$$"
cleanup() {
  podman rm -f -t 5 "$name-zdb" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$work/zdb" "$work/src/sub"
head -c 3000000 /dev/urandom > "$work/src/blob"
head -c 100000 /dev/urandom > "$work/src/sub/small"
printf 'hello from the host\n' > "$work/src/sub/text"
ln -s sub/text "$work/src/link"

podman run -d --pull=never --network host --name "$name-zdb" \
  -v "$work/zdb:/var/lib/thinnode-zdb" "$tag" \
  zdb --data /var/lib/thinnode-zdb/data --index /var/lib/thinnode-zdb/index \
  --listen 127.0.0.1 --port "$port" >/dev/null
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
podman run --rm --pull=never --network host -v "$work:/work" "$tag" \
  pack /work/src --store "zdb://127.0.0.1:$port/default" --out /work/base.img >/dev/null
phase "zdb container up, pack container uploaded $(du -sb "$work/src" | cut -f1) bytes"
ls "$work/zdb/data/default" "$work/zdb/index/default" >/dev/null   # data and index on the volume

podman run --rm --pull=never --network host --device /dev/fuse --cap-add SYS_ADMIN \
  -v "$work:/work" --entrypoint /bin/sh "$tag" -c '
    set -e
    mkdir -p /mnt/base
    thinnode mount /work/base.img /mnt/base --cache /tmp/cache --daemon --log /tmp/mount.log
    cp -a /mnt/base /work/copy
    thinnode umount /mnt/base'
diff -r --no-dereference "$work/src" "$work/copy"
cmp "$work/src/blob" "$work/copy/blob"
phase "mount container read back every byte"
echo "container-test: ok"
