#!/usr/bin/env bash
# deps.sh - install what the VM test rig needs on a Debian 12 host, and fetch the guest kernel.
#
# Why: the host kernel has no SCSI stack, so the rig boots Debian's linux-image-6.12 in QEMU
# (TCG) with a busybox initramfs.  The host only needs the tools whose binaries are copied into
# that initramfs (busybox, sg3-utils, open-iscsi's iscsid/iscsiadm, dmsetup), QEMU itself,
# and the tools to build the initramfs (kmod for depmod/modprobe --show-depends, xz/zstd to
# decompress modules, cpio, binutils for objcopy --strip-debug).  Nothing iSCSI runs on the host.
#
# What it does:
#   1. apt-get install --no-install-recommends the missing host packages (running apt-get update
#      once, only when something is missing or the kernel cannot be resolved);
#   2. resolves the newest Debian linux-image-6.12.*+deb12-amd64 (override: RIG_KERNEL_VERSION,
#      e.g. 6.12.117+deb12-amd64), `apt-get download`s it and `dpkg -x`es it into
#      target/rig/kernel-$KV/ (never into the host's /boot), then `depmod -b` (the .deb ships
#      no modules.dep).  Cached by version: a second run downloads nothing;
#   3. writes target/rig/kernel.env (RIG_KV, RIG_KDIR) for the other scripts.
# Idempotent; safe to run before every rig run (run.sh does).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

HOST_PACKAGES=(qemu-system-x86 busybox-static sg3-utils open-iscsi dmsetup kmod xz-utils zstd cpio binutils)
KERNEL_META=linux-image-6.12-amd64
APT_UPDATED=0

apt_update_once() {
    if [ "$APT_UPDATED" = 0 ]; then
        rig_log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
}

package_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

install_missing_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do package_installed "$p" || missing+=("$p"); done
    command -v python3 >/dev/null || missing+=(python3)
    [ ${#missing[@]} -eq 0 ] && return 0
    apt_update_once
    rig_log "installing: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Print the newest linux-image-6.12.N+deb12-amd64 version string ("6.12.N+deb12-amd64") that apt
# knows: what the linux-image-6.12-amd64 metapackage depends on, else the highest one by name.
newest_kernel_from_apt() {
    local pattern='^linux-image-6\.12\.[0-9]+\+deb12-amd64$' kv
    kv=$(apt-cache depends "$KERNEL_META" 2>/dev/null | awk '$1 == "Depends:" { print $2 }' | grep -E "$pattern")
    [ -n "$kv" ] || kv=$(apt-cache search --names-only "$pattern" 2>/dev/null | awk '{ print $1 }')
    echo "$kv" | grep -E "$pattern" | sed 's/^linux-image-//' | sort -V | tail -n 1
}

# Newest kernel already unpacked in the cache (used when apt cannot resolve one, e.g. offline).
newest_cached_kernel() {
    local d
    for d in "$RIG_WORK"/kernel-*/.complete; do
        [ -e "$d" ] && basename "$(dirname "$d")" | sed 's/^kernel-//'
    done | sort -V | tail -n 1
}

resolve_kernel_version() {
    local kv=${RIG_KERNEL_VERSION:-}
    [ -n "$kv" ] && { echo "$kv"; return; }
    kv=$(newest_kernel_from_apt)
    if [ -z "$kv" ]; then
        apt_update_once
        kv=$(newest_kernel_from_apt)
    fi
    [ -z "$kv" ] && kv=$(newest_cached_kernel)
    [ -n "$kv" ] || rig_die "cannot resolve a linux-image-6.12.*+deb12-amd64 package with apt-cache"
    echo "$kv"
}

# Download + unpack linux-image-$1 into $RIG_WORK/kernel-$1 unless it is already there.
fetch_kernel() {
    local kv=$1 kdir=$RIG_WORK/kernel-$1 tmp
    if [ -e "$kdir/.complete" ]; then
        rig_log "kernel $kv: cached in $kdir"
        return 0
    fi
    rig_log "kernel $kv: downloading linux-image-$kv"
    rm -rf "$kdir"
    tmp=$(mktemp -d "$RIG_WORK/kernel-dl.XXXXXX")
    # apt-get download writes into the current directory; as root it warns that _apt cannot
    # access the directory (the download is then unsandboxed) - harmless.
    (cd "$tmp" && apt-get download -qq "linux-image-$kv" 2>&1 | grep -v 'unsandboxed' >&2 || true)
    ls "$tmp"/linux-image-"$kv"_*.deb >/dev/null 2>&1 || { rm -rf "$tmp"; rig_die "apt-get download linux-image-$kv failed"; }
    mkdir -p "$kdir"
    dpkg -x "$tmp"/linux-image-"$kv"_*.deb "$kdir"
    rm -rf "$tmp"
    depmod -b "$kdir" "$kv"
    [ -f "$kdir/boot/vmlinuz-$kv" ] && [ -f "$kdir/lib/modules/$kv/modules.dep" ] ||
        rig_die "kernel package $kv unpacked without vmlinuz or modules.dep"
    touch "$kdir/.complete"
}

main() {
    [ "$(id -u)" = 0 ] || rig_die "deps.sh needs root (apt-get install)"
    mkdir -p "$RIG_WORK"
    install_missing_packages
    local kv
    kv=$(resolve_kernel_version)
    fetch_kernel "$kv"
    printf 'RIG_KV=%s\nRIG_KDIR=%s\n' "$kv" "$RIG_WORK/kernel-$kv" > "$RIG_KERNEL_ENV"
}

main "$@"
