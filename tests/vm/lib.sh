# shellcheck shell=bash
# Host-side helpers shared by deps.sh, build-initramfs.sh and run.sh (sourced, not executed).
#
# It fixes where things live so that every script agrees:
#   RIG_HOST_DIR  this directory (tests/vm)
#   RIG_REPO      the repository root (two levels above this file)
#   RIG_WORK      the rig's cache and output directory: $RIG_REPO/target/rig (override: RIG_WORK)
#   RIG_OUT       per-run outputs (console.log, marks.txt, ...): $RIG_WORK/out
# and gives small logging helpers. Everything the rig downloads or builds stays under
# target/rig, so `cargo clean` (or rm -rf target/rig) resets it; nothing goes to /boot.

RIG_HOST_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RIG_REPO=$(cd "$RIG_HOST_DIR/../.." && pwd)
RIG_WORK=${RIG_WORK:-$RIG_REPO/target/rig}
# shellcheck disable=SC2034  # used by run.sh
RIG_OUT=$RIG_WORK/out
# Written by deps.sh: RIG_KV (kernel version) and RIG_KDIR (the unpacked kernel package).
RIG_KERNEL_ENV=$RIG_WORK/kernel.env

rig_log() { printf 'rig: %s\n' "$*" >&2; }
rig_die() { printf 'rig: FAIL: %s\n' "$*" >&2; exit 1; }

# Seconds since the epoch with milliseconds, and a difference of two of them.
rig_now() { date +%s.%N; }
rig_elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Load RIG_KV / RIG_KDIR written by deps.sh (fails with a clear message if deps.sh has not run).
rig_load_kernel_env() {
    [ -f "$RIG_KERNEL_ENV" ] || rig_die "$RIG_KERNEL_ENV missing: run tests/vm/deps.sh first"
    # shellcheck source=/dev/null
    . "$RIG_KERNEL_ENV"
    [ -f "$RIG_KDIR/boot/vmlinuz-$RIG_KV" ] || rig_die "kernel $RIG_KV not unpacked in $RIG_KDIR: run tests/vm/deps.sh"
}
