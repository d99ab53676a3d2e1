#!/usr/bin/env bash
# tests/windows/run.sh - the Windows build, checked and tested on this Linux machine:
#  1. cargo clippy --target x86_64-pc-windows-gnu --all-targets -- -D warnings;
#  2. cargo test for that target, every test binary run under Wine (tests/windows/wine.sh):
#     the IOCTL layouts against Microsoft's definitions, every Win32 status mapped, discovery,
#     the real system calls (no disk matches under Wine), and every platform-neutral test.
#     The Linux-only test files (VM rig, sysfs fixtures, kube-apiserver) build empty there;
#     the examples (Linux benchmarks) are linted, not linked.
# Installs what it needs: the Rust target (rustup), mingw-w64 (linker, C compiler for ring)
# and Wine (apt, as root). No Windows machine is needed, and none is used.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=x86_64-pc-windows-gnu

ensure_tools() {
    local missing=()
    command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
    command -v wine >/dev/null || missing+=(wine)
    [ -x /usr/lib/wine/wine64 ] || missing+=(wine64)
    if [ ${#missing[@]} -gt 0 ]; then
        [ "$(id -u)" = 0 ] || { echo "missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
        command -v rustup >/dev/null || { echo "the $target target is missing and rustup is not installed" >&2; exit 1; }
        rustup target add "$target"
    fi
}

ensure_tools
echo "==> clippy for $target"
cargo clippy --target "$target" --all-targets -- -D warnings
echo "==> tests for $target under Wine"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$PWD/tests/windows/wine.sh" \
    cargo test --target "$target" --no-fail-fast --lib --bins --tests
