#!/usr/bin/env bash
# The Kubernetes watch-cache benchmark (make bench-kube): builds the daemon and
# examples/kube_bench.rs in release, then runs it. Prints figures; asserts
# nothing about speed. Env: ROUNDS (3), OBJECTS (100000), NODES (200),
# EVENTS (10000), PACED_RATE (1000), PHASE_TIMEOUT (300), KUBE_API_QPS,
# KUBE_API_BURST, CSI_FENCER_BIN (default target/release/csi-fencer).
set -euo pipefail
cd "$(dirname "$0")/../.."
CARGO=${CARGO:-cargo}
"$CARGO" build --release --bin csi-fencer --example kube_bench
target_dir=$("$CARGO" metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
target_dir=${target_dir:-target}
export CSI_FENCER_BIN=${CSI_FENCER_BIN:-$target_dir/release/csi-fencer}
exec "$target_dir/release/examples/kube_bench" "$@"
