# syntax=docker/dockerfile:1
#
# csi-fencer node daemon image.
#   docker build --build-arg VERSION=0.1.0 -t ghcr.io/csi-fencer/csi-fencer:0.1.0 .
#
# Base images are pinned by tag here (no engine was at hand to resolve digests).
# pin by digest in CI: docker buildx imagetools inspect rust:1.95-bookworm
# (and debian:12.12-slim) prints the index digest; write it as
# FROM rust:1.95-bookworm@sha256:<digest> so a rebuild gets the same bytes.

ARG VERSION=0.1.0

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Build inputs only (see .dockerignore). protox compiles the .proto in
# build.rs, so no system protoc is needed.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY examples ./examples
COPY tests ./tests
# The release build documented in README.md.
RUN cargo build --release --locked --bin csi-fencer

# Same Debian release as the builder, so the glibc the binary links is there.
# debian:12.12-slim is a point-release tag (bookworm); pin its digest in CI too.
FROM debian:12.12-slim
ARG VERSION
LABEL org.opencontainers.image.title="csi-fencer" \
      org.opencontainers.image.description="Fences shared SAN block volumes for Kubernetes with SCSI-3 Persistent Reservations" \
      org.opencontainers.image.source="https://github.com/csi-fencer/csi-fencer" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# No packages are installed:
# - ca-certificates is not needed: kube-rs (rustls) trusts only the cluster CA
#   from the service-account mount (or the kubeconfig), never system roots.
# - sg3-utils is not needed: the binary speaks SG_IO itself.
# - sg3-utils and multipath-tools are useful for troubleshooting, but they
#   stay out of the image on purpose (attack surface, and multipathd must never
#   run in here): use them from the host.
COPY --from=builder /src/target/release/csi-fencer /usr/local/bin/csi-fencer
# root: SG_IO PERSISTENT RESERVE OUT needs CAP_SYS_RAWIO on the host's device
# nodes, which the chart grants with a privileged container running as UID 0.
USER root
ENTRYPOINT ["/usr/local/bin/csi-fencer"]
