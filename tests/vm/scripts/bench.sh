#!/bin/sh
# bench.sh - `make bench-vm`: benchmarks inside the rig guest (release build of
# examples/vm_bench.rs). Prints medians and p95 side by side; asserts nothing about speed.
#   failover: acquire from empty, failover, steady check and release of VOL0, 50 rounds:
#             SCSI commands, engine vs raw SG_IO, and sg_persist per command
#   bulk:     3 rounds of node-b taking over every extra LUN (RIG_EXTRA_LUNS on the host)
#   daemons:  50 moves of a volume between two daemons
#   kernel:   20 fences noticed through the fenced node's own write
# BENCH_ROUNDS, BENCH_MOVES and BENCH_FENCES shorten a run (a quick look, not figures).
set -eu
ROUNDS=${BENCH_ROUNDS:-50}
echo "### failover benchmark, $ROUNDS rounds (engine vs raw SG_IO vs sg_persist per command)"
/tests/vm_bench failover "$ROUNDS"
if [ "${RIG_EXTRA_COUNT:-0}" -gt 0 ]; then
    echo
    echo "### bulk benchmark: $RIG_EXTRA_COUNT LUNs"
    /tests/vm_bench bulk 3
fi

F=csi-fencer
set +e   # sg_turs and sg_persist exit non-zero on the unit attentions they consume

clear_vol0() { # the pending unit attentions drained, every registration gone
    sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1; sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1
    sg_persist --out --register-ignore --param-sark 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
    sg_persist --out --clear --param-rk 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
}

daemon_dirs() { # daemon_dirs DIR_PREFIX MONITOR_A MONITOR_B: fresh state and configs
    for n in a b; do
        d=$1-$n; rm -rf $d; mkdir -p $d
        p=mpath-; [ $n = b ] && p=mpathb-
        m=$2; [ $n = b ] && m=$3
        printf 'clusterName: bench\nmapUuidPrefix: %s\nmonitorIntervalSeconds: %s\nresyncIntervalSeconds: %s\n' $p $m $m > $d/config.yaml
    done
}

start_daemons() { # start_daemons DIR_PREFIX PORT_A PORT_B
    for n in a b; do
        port=$2; [ $n = b ] && port=$3
        $F run --node-name node-$n --config $1-$n/config.yaml --source file:$1-$n/att.yaml \
            --state-dir $1-$n/state --grpc-socket $1-$n/sock --http-endpoint 127.0.0.1:$port 2>$1-$n/log &
    done
}

source_says() { # source_says DIR HOLDER GENERATION VOLUME: what one node's source lists
    printf -- '- {volume: %s, wwid: %s, node: %s, accessMode: ReadWriteOnce, generation: %s}\n' \
        "$4" "$RIG_VOL0_WWID" "$2" "$3" > $1/att.tmp && mv $1/att.tmp $1/att.yaml
}

phase_of() { # phase_of DIR VOLUME
    $F ctl --socket $1/sock get $2 --json 2>/dev/null | sed -n 's/.*"phase":"\([a-z]*\)".*/\1/p'
}

wait_phase() { # wait_phase DIR VOLUME PHASE: up to 30 s
    i=0; while [ "$(phase_of $1 $2)" != "$3" ] && [ $i -lt 1500 ]; do usleep 20000; i=$((i+1)); done
    [ "$(phase_of $1 $2)" = "$3" ] || { echo "$1: $2 not $3"; tail -5 $1/log; exit 1; }
}

histogram() { # histogram METRIC WHAT URL...: n, mean, interpolated median and p95 of a histogram
    metric=$1; what=$2; shift 2
    for u in "$@"; do wget -q -O - "$u"; done |
      awk -v m="$metric" -v what="$what" '
           index($0, m "_bucket") == 1 {
              le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); c[le] += $2; if (!(le in seen)) { seen[le] = 1; order[n++] = le } }
           index($0, m "_sum") == 1 { s += $2 }
           index($0, m "_count") == 1 { k += $2 }
           function q(p,   i, want, lo, prev, le, x) {
               want = p * k; prev = 0; lo = 0
               for (i = 0; i < n; i++) { le = order[i]; if (le == "+Inf") return lo; x = le + 0
                   if (c[le] >= want) return lo + (x - lo) * (want - prev) / (c[le] - prev + 1e-9)
                   prev = c[le]; lo = x }
               return lo }
           END { printf "%s: n=%d  mean %.1f ms  median ~%.1f ms  p95 ~%.1f ms (interpolated in buckets)\n", what, k, 1000*s/(k+1e-9), 1000*q(0.5), 1000*q(0.95) }'
}

# ---- the daemons: attachment change -> reservation held, measured by the daemons' own
# histogram (csi_fencer_attachment_to_held_seconds: from the read of the changed attachment
# file to the LUN saying so; the file is polled every 250 ms, which comes on top).
MOVES=${BENCH_MOVES:-50}
echo
echo "### daemons: $MOVES moves of VOL0 between node-a and node-b"
clear_vol0
daemon_dirs /tmp/bd 30 30
attach() { source_says /tmp/bd-a "$1" "$2" pv-b; source_says /tmp/bd-b "$1" "$2" pv-b; }
attach node-a 1
start_daemons /tmp/bd 9805 9806
wait_phase /tmp/bd-a pv-b held
gen=1; m=0
while [ $m -lt $MOVES ]; do
    m=$((m+1)); gen=$((gen+1))
    t=b; [ $((m % 2)) -eq 0 ] && t=a
    attach node-$t $gen
    wait_phase /tmp/bd-$t pv-b held
done
histogram csi_fencer_attachment_to_held_seconds "attachment change read -> held, from the daemons' histogram" \
    http://127.0.0.1:9805/metrics http://127.0.0.1:9806/metrics
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null

# ---- the kernel's notice: node-b takes the volume while node-a's source still says node-a (cut
# off); node-a's next write fails with RESERVATION CONFLICT and its daemon, whose monitor interval
# is an hour, learns it from the kernel log. Measured by node-a's own histogram
# (csi_fencer_kernel_notice_to_fenced_seconds: from the kernel's first conflict record for the
# LUN to the daemon reporting it fenced).
FENCES=${BENCH_FENCES:-20}
echo
echo "### kernel notice: $FENCES fences of node-a found through its own write (monitor interval 3600 s)"
clear_vol0
daemon_dirs /tmp/kd 3600 3600
source_says /tmp/kd-a node-a 1 pv-k; source_says /tmp/kd-b node-a 1 pv-k
start_daemons /tmp/kd 9815 9816
f=0
while [ $f -lt $FENCES ]; do
    f=$((f+1)); g=$((2 * f))
    source_says /tmp/kd-a node-a $g pv-k; source_says /tmp/kd-b node-a $g pv-k
    wait_phase /tmp/kd-a pv-k held
    source_says /tmp/kd-b node-b $((g + 1)) pv-k     # node-a's source is cut off: it still says node-a
    wait_phase /tmp/kd-b pv-k held
    /tests/vm_bench write "$RIG_VOL0_A_DM" && { echo "fence $f: node-a's write succeeded"; exit 1; }
    wait_phase /tmp/kd-a pv-k fenced
done
histogram csi_fencer_kernel_notice_to_fenced_seconds "kernel conflict record -> fenced, from node-a's histogram" \
    http://127.0.0.1:9815/metrics
echo "conflict records node-a read: $(wget -q -O - http://127.0.0.1:9815/metrics | sed -n 's/^csi_fencer_kernel_conflicts_total //p')"
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; true
