# syntax=docker/dockerfile:1
#
# The csi-fencer image: one fully static binary (x86_64-unknown-linux-musl)
# in an empty image. Nothing else is in it: no shell, no libc, no
# certificates (kube-rs trusts only the cluster CA from the service-account
# mount or the kubeconfig), no sg3-utils or multipath-tools (use them from
# the host; multipathd must never run in here).
#
# Two ways to build it; the last stage, `image`, is the same in both, and
# it is the stage `make test` builds and runs:
#   make image                        # offline: the binary built on this machine
#                                     # (cargo --target x86_64-unknown-linux-musl),
#                                     # BINARY=prebuilt; prints the digest
#   podman build --build-arg BINARY=builder --build-arg VERSION=0.1.0 \
#       -t ghcr.io/csi-fencer/csi-fencer:0.1.0 .   # a machine with a registry:
#                                     # the binary built in the `builder` stage
# (docker build works the same.) Pin the builder's base by digest in CI:
#   podman inspect --format '{{.Digest}}' docker.io/library/rust:1.95-bookworm

ARG BINARY=builder
ARG VERSION=0.1.0
ARG REVISION=unknown

# The binary built from source, on a machine that can pull the Rust image.
FROM docker.io/library/rust:1.95-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Build inputs only (see .dockerignore). protox compiles the .proto in
# build.rs, so no system protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY examples ./examples
COPY tests ./tests
ENV CC_x86_64_unknown_linux_musl=musl-gcc
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin csi-fencer \
    && mkdir /out \
    && strip -o /out/csi-fencer target/x86_64-unknown-linux-musl/release/csi-fencer

# The binary `make image` built and checked on this machine (tests/image/build.sh
# puts it in target/image/out/): nothing to pull.
FROM scratch AS prebuilt
COPY target/image/out/csi-fencer /out/csi-fencer

FROM ${BINARY} AS binary

FROM scratch AS image
ARG VERSION
ARG REVISION
LABEL org.opencontainers.image.title="csi-fencer" \
      org.opencontainers.image.description="Fences shared SAN block volumes for Kubernetes with SCSI-3 Persistent Reservations" \
      org.opencontainers.image.source="https://github.com/csi-fencer/csi-fencer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=binary /out/csi-fencer /usr/local/bin/csi-fencer
# root: SG_IO PERSISTENT RESERVE OUT needs CAP_SYS_RAWIO on the host's device
# nodes, which the chart grants with a privileged container running as UID 0.
USER 0:0
ENTRYPOINT ["/usr/local/bin/csi-fencer"]
