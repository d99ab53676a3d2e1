#!/usr/bin/env bash
# build-initramfs.sh - build the guest's initramfs as two concatenated cpio archives.
#
#   build-initramfs.sh --out FILE --init GUEST_INIT --fencer BIN [--test NAME=BIN]... [--script FILE] [--kube DIR]
#
# The kernel unpacks any sequence of (compressed or plain) newc cpio archives passed as one
# initrd, later files adding to earlier ones.  So the slow, rarely changing part is cached and
# only the small per-run part is rebuilt:
#
#   BASE    target/rig/base-$KV-<hash>.cpio.gz, rebuilt only when this script, lib.sh, the kernel
#           or the host packages it copies from change (they are all in <hash>):
#             busybox-static (+ /bin/sh), the kernel modules for LIO iSCSI target + iSCSI
#             initiator + sd/sg + brd + dm-delay/dm-multipath in dependency order, decompressed
#             (busybox insmod calls init_module(), which cannot take .ko.xz); sg3_utils, dmsetup,
#             iscsid, iscsiadm and their shared libraries; /etc/passwd (iscsid needs a root
#             user), /etc/iscsi, and /etc/target/pr (must exist before target_core_mod loads).
#             Zero-padded to a multiple of 512 bytes so that a plain cpio can follow it (the
#             kernel only accepts a cpio header at a 4-byte aligned offset).
#   PAYLOAD plain cpio (no compression: it is rebuilt every run, and gunzip in the TCG guest
#           costs ~0.5 s per 20 MB):
#             /init (GUEST_INIT), /usr/bin/csi-fencer, /tests/NAME for each in-guest test binary,
#             /rig/script.sh, all ELF files with debug info stripped (objcopy --strip-debug keeps
#             the symbol table, so RUST_BACKTRACE still names functions), plus any shared library
#             they need that the base lacks (Rust binaries need libgcc_s).
#
# FILE = BASE ++ PAYLOAD, ready for qemu -initrd.  Needs deps.sh to have run (target/rig/kernel.env).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

# Modules the guest loads, in this order (modprobe adds their dependencies before them).
# crc32c_generic first: iscsi_target_mod/libiscsi_tcp allocate the "crc32c" hash and busybox
# cannot service the kernel's request_module("crypto-crc32c").
GUEST_MODULES=(crc32c_generic configfs target_core_mod target_core_file target_core_iblock
    iscsi_target_mod scsi_mod sd_mod sg scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp
    brd dm-mod dm-delay dm-multipath dm-round-robin virtio_console)
# virtio_console: the virtio-serial port that carries the host's kube-apiserver to vm_kube.
# brd: one 64 MiB RAM disk (/dev/ram0) under dm-delay for the SLOW LUN.
declare -A MODULE_PARAMS=([brd]="rd_nr=1 rd_size=65536")
GUEST_TOOLS=(sg_persist sg_inq sg_vpd sg_turs sg_dd sg_requests sg_readcap sg_raw sg_rtpg sg_luns
    sg_reset dmsetup iscsid iscsiadm)
# Host packages the base copies files from: their versions are part of the base's cache key.
BASE_SOURCE_PACKAGES=(busybox-static sg3-utils open-iscsi dmsetup libc6)
LIBDIR=lib/x86_64-linux-gnu

usage() { sed -n '3,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

# Shared libraries (host paths) that the given ELF files load; nothing for static ones.
shared_libraries_of() {
    local f
    for f; do ldd "$f" 2>/dev/null || true; done |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' | sort -u
}

# Where a host library goes in the guest: the dynamic loader at /lib64, the rest in one lib dir.
guest_library_path() {
    case $1 in
        */ld-linux-x86-64.so.2) echo lib64/ld-linux-x86-64.so.2 ;;
        *) echo "$LIBDIR/$(basename "$1")" ;;
    esac
}

# copy_libraries ROOT MANIFEST_TO_SKIP ELF...: copy the libraries the ELFs need into ROOT unless
# the manifest (one guest path per line) lists them already; print the guest paths copied.
copy_libraries() {
    local root=$1 skip=$2 lib rel
    shift 2
    for lib in $(shared_libraries_of "$@"); do
        rel=$(guest_library_path "$lib")
        [ -n "$skip" ] && grep -qxF "$rel" "$skip" && continue
        mkdir -p "$root/$(dirname "$rel")"
        cp -L "$lib" "$root/$rel"
        echo "$rel"
    done
}

# newc cpio of a directory tree (root-owned, sorted for reproducibility) on stdout.
cpio_of() { (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet); }

pad_to_512() {
    local size pad
    size=$(stat -c %s "$1"); pad=$(( (512 - size % 512) % 512 ))
    [ "$pad" -gt 0 ] && head -c "$pad" /dev/zero >> "$1"
    return 0
}

base_cache_key() {
    { cat "$0" "$RIG_HOST_DIR/lib.sh"; echo "$RIG_KV"; dpkg-query -W "${BASE_SOURCE_PACKAGES[@]}"; } |
        sha256sum | cut -c1-12
}

install_modules() {
    local root=$1 mods=$RIG_KDIR/lib/modules/$RIG_KV f rel name
    mkdir -p "$root/etc/rig"
    : > "$root/etc/rig/modules.txt"
    for name in "${GUEST_MODULES[@]}"; do
        modprobe -d "$RIG_KDIR" -S "$RIG_KV" --show-depends "$name" || rig_die "module $name not in kernel $RIG_KV"
    done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' | while read -r f; do
        rel=${f#"$mods"/}
        mkdir -p "$root/lib/modules/$RIG_KV/$(dirname "$rel")"
        case $rel in
            *.ko.xz)  xz -dc "$f" > "$root/lib/modules/$RIG_KV/${rel%.xz}"; rel=${rel%.xz} ;;
            *.ko.zst) zstd -dqc "$f" > "$root/lib/modules/$RIG_KV/${rel%.zst}"; rel=${rel%.zst} ;;
            *)        cp "$f" "$root/lib/modules/$RIG_KV/$rel" ;;
        esac
        name=$(basename "$rel" .ko)
        echo "$rel ${MODULE_PARAMS[$name]:-}" >> "$root/etc/rig/modules.txt"
    done
}

install_tools() {
    local root=$1 t p paths=()
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"          # /init is a #!/bin/sh script: needed before busybox --install
    for t in "${GUEST_TOOLS[@]}"; do
        p=$(command -v "$t") || rig_die "host tool $t missing (run deps.sh)"
        paths+=("$p")
    done
    cp -L "${paths[@]}" "$root/usr/bin/"
    copy_libraries "$root" "" "${paths[@]}" > "$root/etc/rig/base-libs.txt"
}

install_config() {
    local root=$1
    # iscsid authorises iscsiadm's IPC with getpwuid(peer uid) == "root": without /etc/passwd
    # iscsiadm dies of SIGPIPE (rc 141).
    echo "root:x:0:0:root:/root:/bin/sh" > "$root/etc/passwd"
    echo "root:x:0:" > "$root/etc/group"
    # LIO picks its dbroot (APTPL files go to dbroot/pr) when target_core_mod loads:
    # /etc/target if that directory exists, else /var/target.
    mkdir -p "$root/etc/target/pr" "$root/var/target/pr"
    mkdir -p "$root/etc/iscsi/ifaces" "$root/etc/iscsi/nodes" "$root/etc/iscsi/send_targets"
    echo "InitiatorName=iqn.2025-01.test.rig:default" > "$root/etc/iscsi/initiatorname.iscsi"
    # Short timeouts: a dead path should fail in seconds, not minutes, inside a test.
    cat > "$root/etc/iscsi/iscsid.conf" <<'CONF'
node.startup = manual
node.session.auth.authmethod = None
discovery.sendtargets.auth.authmethod = None
node.session.timeo.replacement_timeout = 15
node.conn[0].timeo.login_timeout = 15
node.conn[0].timeo.logout_timeout = 15
node.conn[0].timeo.noop_out_interval = 5
node.conn[0].timeo.noop_out_timeout = 5
node.session.err_timeo.abort_timeout = 15
node.session.err_timeo.lu_reset_timeout = 30
node.session.initial_login_retry_max = 2
node.session.cmds_max = 128
node.session.queue_depth = 32
node.session.iscsi.InitialR2T = No
node.session.iscsi.ImmediateData = Yes
node.session.iscsi.FirstBurstLength = 262144
node.session.iscsi.MaxBurstLength = 16776192
node.conn[0].iscsi.MaxRecvDataSegmentLength = 262144
node.conn[0].iscsi.HeaderDigest = None
node.session.nr_sessions = 1
CONF
}

# Build the base archive unless the cached one for this key exists; print its path.
build_base() {
    local key base root
    key=$(base_cache_key)
    base=$RIG_WORK/base-$RIG_KV-$key.cpio.gz
    if [ -f "$base" ] && [ -f "$base.libs" ]; then echo "$base"; return; fi
    rig_log "building base initramfs $(basename "$base")"
    root=$RIG_WORK/base-root
    rm -rf "$root"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,lib64,$LIBDIR,proc,sys,dev,tmp,run,etc/rig}
    install_tools "$root"
    install_modules "$root"
    install_config "$root"
    echo "kernel=$RIG_KV key=$key built=$(date -u +%FT%TZ)" > "$root/etc/rig/base-info"
    rm -f "$RIG_WORK"/base-"$RIG_KV"-*.cpio.gz "$RIG_WORK"/base-"$RIG_KV"-*.cpio.gz.libs
    cpio_of "$root" | gzip -6 > "$base.tmp"
    pad_to_512 "$base.tmp"
    cp "$root/etc/rig/base-libs.txt" "$base.libs"
    mv "$base.tmp" "$base"
    rig_log "base: $(du -h "$base" | cut -f1) gz, $(du -sh "$root" | cut -f1) unpacked, $(wc -l < "$root/etc/rig/modules.txt") modules"
    rm -rf "$root"
    echo "$base"
}

# install_stripped SRC DEST: copy an ELF without its debug sections.
install_stripped() {
    mkdir -p "$(dirname "$2")"
    objcopy --strip-debug "$1" "$2" || rig_die "objcopy --strip-debug $1 failed"
    chmod 755 "$2"
}

# build_payload OUT BASE_LIBS INIT FENCER SCRIPT KUBE TEST_SPEC...: the per-run plain cpio.
build_payload() {
    local out=$1 base_libs=$2 init=$3 fencer=$4 script=$5 kube=$6 spec name bin root elves=()
    shift 6
    root=$RIG_WORK/payload-root
    rm -rf "$root"
    mkdir -p "$root/usr/bin" "$root/tests" "$root/rig"
    install -m 755 "$init" "$root/init"
    install_stripped "$fencer" "$root/usr/bin/csi-fencer"
    elves+=("$root/usr/bin/csi-fencer")
    for spec; do
        name=${spec%%=*}; bin=${spec#*=}
        [ -f "$bin" ] || rig_die "test binary $bin not found"
        install_stripped "$bin" "$root/tests/$name"
        elves+=("$root/tests/$name")
    done
    [ -n "$script" ] && install -m 755 "$script" "$root/rig/script.sh"
    # The host's kube-apiserver credentials (CA, admin certificate, token), for vm_kube.
    [ -n "$kube" ] && cp -r "$kube" "$root/kube"
    copy_libraries "$root" "$base_libs" "${elves[@]}" > "$root/rig/payload-libs.txt"
    cpio_of "$root" > "$out"
    rig_log "payload: $(du -h "$out" | cut -f1) ($(cd "$root" && find usr/bin tests -type f | tr '\n' ' ')+ libs: $(tr '\n' ' ' < "$root/rig/payload-libs.txt"))"
    rm -rf "$root"
}

main() {
    local out="" init="" fencer="" script="" kube="" tests=() base
    while [ $# -gt 0 ]; do
        case $1 in
            --out) out=$2; shift 2 ;;
            --init) init=$2; shift 2 ;;
            --fencer) fencer=$2; shift 2 ;;
            --script) script=$2; shift 2 ;;
            --kube) kube=$2; shift 2 ;;
            --test) tests+=("$2"); shift 2 ;;
            *) usage ;;
        esac
    done
    [ -n "$out" ] && [ -n "$init" ] && [ -n "$fencer" ] || usage
    [ -f "$fencer" ] || rig_die "csi-fencer binary $fencer not found"
    rig_load_kernel_env
    mkdir -p "$RIG_WORK" "$(dirname "$out")"
    base=$(build_base)
    build_payload "$out.payload" "$base.libs" "$init" "$fencer" "$script" "$kube" ${tests[@]+"${tests[@]}"}
    cat "$base" "$out.payload" > "$out"
    rm -f "$out.payload"
}

main "$@"
