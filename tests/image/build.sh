#!/usr/bin/env bash
# tests/image/build.sh - `make image`: the fully static binary and the image, offline.
#
#  1. installs what is missing: podman and runc, musl-tools and binutils (apt, as root),
#     the x86_64-unknown-linux-musl target (rustup);
#  2. cargo build --release --locked --target x86_64-unknown-linux-musl --bin csi-fencer;
#  3. refuses a binary that is not fully static (an interpreter or a NEEDED library would
#     not run in an empty image), strips it into target/image/out/;
#  4. podman build of the Dockerfile's `image` stage from that binary (BINARY=prebuilt:
#     nothing is pulled), tagged $IMAGE:<version of Cargo.toml>; prints tag, digest, size.
# IMAGE (default localhost/csi-fencer) names the repository. --no-cache: podman 4.3 (buildah 1.28)
# reuses a cached LABEL step whatever the build args say; the whole build takes seconds.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=x86_64-unknown-linux-musl
IMAGE=${IMAGE:-localhost/csi-fencer}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || { echo "no version in Cargo.toml" >&2; exit 1; }

# podman as this machine runs it: the runc runtime (crun refuses hybrid cgroups), cgroupfs.
podman() { command podman --runtime runc --cgroup-manager=cgroupfs "$@"; }

ensure_tools() {
    local missing=()
    # type -P: the podman function above would satisfy `command -v`.
    type -P podman >/dev/null || missing+=(podman)
    command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
    command -v musl-gcc >/dev/null || missing+=(musl-tools)
    command -v readelf >/dev/null && command -v strip >/dev/null || missing+=(binutils)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { echo "missing ${missing[*]}: apt-get install ${missing[*]}" >&2; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! rustup target list --installed | grep -qx "$TARGET"; then
        rustup target add "$TARGET"
    fi
}

# A binary for an empty image: no program interpreter, no shared library.
check_static() {
    local bin=$1
    if readelf -lW "$bin" | grep -q 'Requesting program interpreter'; then
        echo "$bin is dynamically linked (it names a program interpreter): it cannot run in the image" >&2
        return 1
    fi
    if readelf -dW "$bin" | grep -q '(NEEDED)'; then
        echo "$bin needs shared libraries ($(readelf -dW "$bin" | grep '(NEEDED)' | sed 's/.*\[\(.*\)\]/\1/' | tr '\n' ' ')): it cannot run in the image" >&2
        return 1
    fi
}

ensure_tools
bin=target/$TARGET/release/csi-fencer
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" --bin csi-fencer
check_static "$bin"
mkdir -p target/image/out
strip -o target/image/out/csi-fencer "$bin"
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
podman build --quiet --no-cache --target image \
    --build-arg BINARY=prebuilt --build-arg VERSION="$version" --build-arg REVISION="$revision" \
    -t "$IMAGE:$version" . >/dev/null
echo "image: $IMAGE:$version"
echo "digest: $(podman inspect --format '{{.Digest}}' "$IMAGE:$version")"
echo "size: $(podman image inspect --format '{{.Size}}' "$IMAGE:$version") bytes (uncompressed; binary $(stat -c %s target/image/out/csi-fencer) bytes)"
