#!/bin/sh
# bench.sh - `make bench-vm`: benchmarks inside the rig guest (release build of
# examples/vm_bench.rs). Prints medians and p95 side by side; asserts nothing about speed.
#   failover: 50 failovers of VOL0, engine vs raw SG_IO vs sg_persist per command
#   bulk:     3 rounds of node-b taking over every extra LUN (RIG_EXTRA_LUNS on the host)
set -eu
ROUNDS=50
echo "### failover benchmark, $ROUNDS rounds (engine vs raw SG_IO vs sg_persist per command)"
/tests/vm_bench failover "$ROUNDS"
if [ "${RIG_EXTRA_COUNT:-0}" -gt 0 ]; then
    echo
    echo "### bulk benchmark: $RIG_EXTRA_COUNT LUNs"
    /tests/vm_bench bulk 3
fi
