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

# ---- the daemons: attachment change -> reservation held, measured by the daemons' own
# histogram (csi_fencer_attachment_to_held_seconds: from the read of the changed attachment
# file to the LUN saying so; the file is polled every 250 ms, which comes on top).
MOVES=50
F=csi-fencer
set +e   # sg_turs and sg_persist exit non-zero on the unit attentions they consume
echo
echo "### daemons: $MOVES moves of VOL0 between node-a and node-b"
sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1; sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1
sg_persist --out --register-ignore --param-sark 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
sg_persist --out --clear --param-rk 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
for n in a b; do
    d=/tmp/bd-$n; rm -rf $d; mkdir -p $d
    p=mpath-; [ $n = b ] && p=mpathb-
    printf 'clusterName: bench\nmapUuidPrefix: %s\nmonitorIntervalSeconds: 30\nresyncIntervalSeconds: 30\n' $p > $d/config.yaml
done
attach() { # attach HOLDER GENERATION: both nodes' sources say the same
    for n in a b; do
        printf -- '- {volume: pv-b, wwid: %s, node: %s, accessMode: ReadWriteOnce, generation: %s}\n' \
            "$RIG_VOL0_WWID" "$1" "$2" > /tmp/bd-$n/att.tmp && mv /tmp/bd-$n/att.tmp /tmp/bd-$n/att.yaml
    done
}
phase() { $F ctl --socket /tmp/bd-$1/sock get pv-b --json 2>/dev/null | sed -n 's/.*"phase":"\([a-z]*\)".*/\1/p'; }
attach node-a 1
for n in a b; do
    $F run --node-name node-$n --config /tmp/bd-$n/config.yaml --source file:/tmp/bd-$n/att.yaml \
        --state-dir /tmp/bd-$n/state --grpc-socket /tmp/bd-$n/sock --http-endpoint 127.0.0.1:980$([ $n = a ] && echo 5 || echo 6) 2>/tmp/bd-$n/log &
done
i=0; while [ "$(phase a)" != held ] && [ $i -lt 300 ]; do usleep 100000; i=$((i+1)); done
gen=1; m=0
while [ $m -lt $MOVES ]; do
    m=$((m+1)); gen=$((gen+1))
    t=b; [ $((m % 2)) -eq 0 ] && t=a
    attach node-$t $gen
    i=0; while [ "$(phase $t)" != held ] && [ $i -lt 300 ]; do usleep 50000; i=$((i+1)); done
    [ "$(phase $t)" = held ] || { echo "move $m: node-$t did not get the volume"; tail -5 /tmp/bd-$t/log; exit 1; }
done
{ wget -q -O - http://127.0.0.1:9805/metrics; wget -q -O - http://127.0.0.1:9806/metrics; } |
  awk '/^csi_fencer_attachment_to_held_seconds_bucket/ {
          le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); c[le] += $2; if (!(le in seen)) { seen[le] = 1; order[n++] = le } }
       /^csi_fencer_attachment_to_held_seconds_sum/ { s += $2 }
       /^csi_fencer_attachment_to_held_seconds_count/ { k += $2 }
       function q(p,   i, want, lo, prev, le, x) {
           want = p * k; prev = 0; lo = 0
           for (i = 0; i < n; i++) { le = order[i]; if (le == "+Inf") return lo; x = le + 0
               if (c[le] >= want) return lo + (x - lo) * (want - prev) / (c[le] - prev + 1e-9)
               prev = c[le]; lo = x }
           return lo }
       END { printf "attachment change read -> held, from the daemons'"'"' histogram: n=%d  mean %.1f ms  median ~%.1f ms  p95 ~%.1f ms (interpolated in buckets)\n", k, 1000*s/k, 1000*q(0.5), 1000*q(0.95) }'
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null

# ---- the kernel's notice: node-b takes the volume while node-a's source still says node-a (cut
# off); node-a's next write fails with RESERVATION CONFLICT and its daemon, whose monitor interval
# is an hour, learns it from the kernel log. Measured by node-a's own histogram
# (csi_fencer_kernel_notice_to_fenced_seconds: from the kernel's first conflict record for the
# LUN to the daemon reporting it fenced).
FENCES=20
echo
echo "### kernel notice: $FENCES fences of node-a found through its own write (monitor interval 3600 s)"
sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1; sg_turs "$RIG_VOL0_A1_SD" >/dev/null 2>&1
sg_persist --out --register-ignore --param-sark 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
sg_persist --out --clear --param-rk 0x5c5c "$RIG_VOL0_A1_SD" >/dev/null 2>&1
for n in a b; do
    d=/tmp/kd-$n; rm -rf $d; mkdir -p $d
    p=mpath-; [ $n = b ] && p=mpathb-
    printf 'clusterName: bench\nmapUuidPrefix: %s\nmonitorIntervalSeconds: 3600\nresyncIntervalSeconds: 3600\n' $p > $d/config.yaml
done
view() { # view NODE HOLDER GENERATION: what NODE's source says
    printf -- '- {volume: pv-k, wwid: %s, node: %s, accessMode: ReadWriteOnce, generation: %s}\n' \
        "$RIG_VOL0_WWID" "$2" "$3" > /tmp/kd-$1/att.tmp && mv /tmp/kd-$1/att.tmp /tmp/kd-$1/att.yaml
}
kphase() { $F ctl --socket /tmp/kd-$1/sock get pv-k --json 2>/dev/null | sed -n 's/.*"phase":"\([a-z]*\)".*/\1/p'; }
kwait() { i=0; while [ "$(kphase $1)" != "$2" ] && [ $i -lt 600 ]; do usleep 20000; i=$((i+1)); done
          [ "$(kphase $1)" = "$2" ] || { echo "node-$1 not $2"; tail -5 /tmp/kd-$1/log; exit 1; }; }
view a node-a 1; view b node-a 1
for n in a b; do
    $F run --node-name node-$n --config /tmp/kd-$n/config.yaml --source file:/tmp/kd-$n/att.yaml \
        --state-dir /tmp/kd-$n/state --grpc-socket /tmp/kd-$n/sock --http-endpoint 127.0.0.1:981$([ $n = a ] && echo 5 || echo 6) 2>/tmp/kd-$n/log &
done
f=0
while [ $f -lt $FENCES ]; do
    f=$((f+1)); g=$((2 * f))
    view a node-a $g; view b node-a $g
    kwait a held
    view b node-b $((g + 1))          # node-a's source is cut off: it still says node-a
    kwait b held
    /tests/vm_bench write "$RIG_VOL0_A_DM" && { echo "fence $f: node-a's write succeeded"; exit 1; }
    kwait a fenced
done
wget -q -O - http://127.0.0.1:9815/metrics |
  awk '/^csi_fencer_kernel_notice_to_fenced_seconds_bucket/ {
          le = $1; sub(/.*le="/, "", le); sub(/".*/, "", le); c[le] += $2; if (!(le in seen)) { seen[le] = 1; order[n++] = le } }
       /^csi_fencer_kernel_notice_to_fenced_seconds_sum/ { s += $2 }
       /^csi_fencer_kernel_notice_to_fenced_seconds_count/ { k += $2 }
       /^csi_fencer_kernel_conflicts_total/ { kc += $2 }
       function q(p,   i, want, lo, prev, le, x) {
           want = p * k; prev = 0; lo = 0
           for (i = 0; i < n; i++) { le = order[i]; if (le == "+Inf") return lo; x = le + 0
               if (c[le] >= want) return lo + (x - lo) * (want - prev) / (c[le] - prev + 1e-9)
               prev = c[le]; lo = x }
           return lo }
       END { printf "kernel conflict record -> fenced, from node-a'"'"'s histogram: n=%d  mean %.1f ms  median ~%.1f ms  p95 ~%.1f ms (interpolated in buckets); %d conflict records read\n", k, 1000*s/k, 1000*q(0.5), 1000*q(0.95), kc }'
kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; true
