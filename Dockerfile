# thinnode: build with cargo on Debian, run on Debian slim with fuse3.
#
#   podman build -t thinnode --build-arg THINNODE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
#   podman run -d --name zdb -p 9900:9900 -v zdb:/var/lib/thinnode-zdb thinnode      # the zdb server
#   podman run --rm -v $PWD:/work thinnode pack /work/data --store zdb://HOST:9900/default --out /work/x.img
#   podman run --rm --device /dev/fuse --cap-add SYS_ADMIN thinnode mount …           # FUSE needs both
#
# The default command is the zdb server with its data and index on the volume /var/lib/thinnode-zdb;
# any other thinnode command replaces it. See docs/tutorial.md and compose.yaml.

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG DEBIAN_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
# The commit `thinnode --version` prints (the context has no .git).
ARG THINNODE_GIT_COMMIT=unknown
ENV THINNODE_GIT_COMMIT=${THINNODE_GIT_COMMIT}
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p thinnode \
 && install -m 0755 target/release/thinnode /usr/local/bin/thinnode \
 && mkdir -p /out/man /out/completions \
 && thinnode man --out /out/man >/dev/null \
 && thinnode completions bash > /out/completions/thinnode \
 && thinnode completions zsh > /out/completions/_thinnode \
 && thinnode completions fish > /out/completions/thinnode.fish

FROM ${DEBIAN_IMAGE}
# fuse3: fusermount3 for FUSE mounts; ca-certificates: https:// and s3:// stores.
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/thinnode /usr/bin/thinnode
COPY --from=build /out/man/ /usr/share/man/man1/
COPY --from=build /out/completions/thinnode /usr/share/bash-completion/completions/thinnode
COPY --from=build /out/completions/_thinnode /usr/share/zsh/vendor-completions/_thinnode
COPY --from=build /out/completions/thinnode.fish /usr/share/fish/vendor_completions.d/thinnode.fish
LABEL org.opencontainers.image.title="thinnode" \
      org.opencontainers.image.description="Thin-provision blockchain nodes from content-addressed images stored in 0-db" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/thinnode/thinnode"
ENV THINNODE_STATE_DIR=/var/lib/thinnode THINNODE_CACHE=/var/cache/thinnode
VOLUME ["/var/lib/thinnode-zdb"]
EXPOSE 9900
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/thinnode"]
CMD ["zdb", "--data", "/var/lib/thinnode-zdb/data", "--index", "/var/lib/thinnode-zdb/index", "--listen", "0.0.0.0", "--port", "9900"]
