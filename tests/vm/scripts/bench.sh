#!/bin/sh
# bench.sh - `make bench-vm`: the failover benchmark inside the rig guest (release build of
# examples/vm_bench.rs). Prints medians and p95 side by side; asserts nothing about speed.
set -eu
ROUNDS=${RIG_BENCH_ROUNDS:-50}
echo "### failover benchmark, $ROUNDS rounds (engine vs raw SG_IO vs sg_persist per command)"
/tests/vm_bench "$ROUNDS"
