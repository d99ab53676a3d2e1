#!/bin/sh
# demo.sh - the failover demo (`make demo`), run inside the rig guest.
#
# Two simulated nodes share LUN VOL0 over iSCSI (two paths each, one dm-multipath map each),
# and each runs the csi-fencer daemon with its own attachment file. node-a holds the volume
# and writes to it; then the attachment moves to node-b (node-a is "cut off": its own file
# still says it has the volume). node-b's daemon PREEMPTs node-a's key, node-a's writes fail
# with RESERVATION CONFLICT, node-a's daemon reports the volume FENCED and never registers
# again. Timings come from the guest clock (/proc/uptime); the topology (RIG_*) comes from
# /run/rig/topology.env.
set -u
F=${CSI_FENCER_BIN:-csi-fencer}
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%d", (b-a)*1000}'; }
step() { echo; echo "### $*"; }
ok=0; bad=0
expect() { # expect DESCRIPTION COMMAND...
    d=$1; shift
    if "$@"; then echo "  [ok] $d"; ok=$((ok+1)); else echo "  [FAILED] $d"; bad=$((bad+1)); fi
}

# setup NODE PREFIX PORT: a config and an empty attachment file for NODE's daemon
setup() {
    d=/tmp/demo-$1; rm -rf "$d"; mkdir -p "$d"
    printf 'clusterName: demo\nmapUuidPrefix: %s\nmonitorIntervalSeconds: 1\nresyncIntervalSeconds: 5\nknownNodes: [node-a, node-b]\n' "$2" > "$d/config.yaml"
    : > "$d/att.yaml"
}
# attach NODE-DIR HOLDER GENERATION: what that node's source says (written atomically)
attach() {
    printf -- '- {volume: pv-demo, wwid: %s, node: %s, accessMode: ReadWriteOnce, generation: %s}\n' \
        "$RIG_VOL0_WWID" "$2" "$3" > "/tmp/demo-$1/att.tmp" && mv "/tmp/demo-$1/att.tmp" "/tmp/demo-$1/att.yaml"
}
start() { # start NODE PORT
    d=/tmp/demo-$1
    $F run --node-name "node-${1#node-}" --config "$d/config.yaml" --source "file:$d/att.yaml" \
        --state-dir "$d/state" --grpc-socket "$d/sock" --http-endpoint "127.0.0.1:$2" 2> "$d/log" &
    eval "PID_$(echo "$1" | tr -d -)=\$!"
}
phase() { $F ctl --socket "/tmp/demo-$1/sock" get pv-demo --json 2>/dev/null | sed -n 's/.*"phase":"\([a-z]*\)".*/\1/p'; }
wait_phase() { # wait_phase NODE PHASE SECONDS
    i=0; while [ "$(phase "$1")" != "$2" ] && [ $i -lt $(($3 * 10)) ]; do usleep 100000; i=$((i+1)); done
    [ "$(phase "$1")" = "$2" ]
}
metrics() { wget -q -O - "http://127.0.0.1:$1/metrics" | grep -E "^csi_fencer_($2)" | sed 's/^/    /'; }

step "Two nodes, one LUN: keys from --cluster-name demo"
echo "  node-a key $($F key --node node-a --cluster-name demo), map $RIG_VOL0_A_DM ($RIG_VOL0_A1_SD $RIG_VOL0_A2_SD)"
echo "  node-b key $($F key --node node-b --cluster-name demo), map $RIG_VOL0_B_DM ($RIG_VOL0_B1_SD $RIG_VOL0_B2_SD)"
setup node-a mpath-; setup node-b mpathb-
attach node-a node-a 1; attach node-b node-a 1

step "Both daemons start; pv-demo is attached to node-a (generation 1)"
t=$(now)
start node-a 9801; start node-b 9802
wait_phase node-a held 30
expect "node-a's daemon holds pv-demo ($(ms_since "$t") ms after start)" [ "$(phase node-a)" = held ]

step "node-a writes (O_DIRECT, 4 KiB at a time, through its multipath map)"
( i=0
  while dd if=/dev/zero of="$RIG_VOL0_A_DM" bs=4096 count=1 seek=$((i % 1000)) oflag=direct 2>/tmp/writer.err >/dev/null; do
      i=$((i+1)); echo $i > /tmp/writer.count
  done
  echo "$(now) $(head -n1 /tmp/writer.err)" > /tmp/writer.end ) &
sleep 2
echo "  writer running: $(cat /tmp/writer.count 2>/dev/null || echo 0) writes so far"

step "The volume moves to node-b (generation 2); node-a is cut off and its file still says node-a"
t=$(now)
attach node-b node-b 2
wait_phase node-b held 30
TB=$(ms_since "$t"); TBEND=$(now)
expect "node-b's daemon holds pv-demo, ${TB} ms after its attachment changed" [ "$(phase node-b)" = held ]
i=0; while [ ! -f /tmp/writer.end ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
if [ -f /tmp/writer.end ]; then
    set -- $(cat /tmp/writer.end)
    TW=$(awk -v a="$t" -v b="$1" 'BEGIN{printf "%d", (b-a)*1000}')
    shift; echo "  node-a's writer stopped ${TW} ms after the move, after $(cat /tmp/writer.count) writes: $*"
fi
expect "node-a's writes fail with RESERVATION CONFLICT (EBADE, 'Invalid exchange')" grep -q 'Invalid exchange' /tmp/writer.err
t=$(now)
wait_phase node-a fenced 30
expect "node-a's daemon reports pv-demo FENCED ($(ms_since "$t") ms later, by its monitor)" [ "$(phase node-a)" = fenced ]
dd if=/dev/zero of="$RIG_VOL0_B_DM" bs=4096 count=1 oflag=direct 2>/dev/null
expect "node-b writes" [ $? -eq 0 ]

step "node-a's daemon keeps its stale attachment (generation 1) and does not re-register"
G1=$(sg_persist --in --read-keys "$RIG_VOL0_B1_SD" | sed -n 's/.*PR generation=\(0x[0-9a-f]*\).*/\1/p')
sleep 3
G2=$(sg_persist --in --read-keys "$RIG_VOL0_B1_SD" | sed -n 's/.*PR generation=\(0x[0-9a-f]*\).*/\1/p')
expect "PR generation unchanged over 3 monitor cycles ($G1 -> $G2)" [ "$G1" = "$G2" ]

step "csi-fencer ctl list, on each node"
echo "  node-a:"; $F ctl --socket /tmp/demo-node-a/sock list | sed 's/^/    /'
echo "  node-b:"; $F ctl --socket /tmp/demo-node-b/sock list | sed 's/^/    /'

step "Metrics excerpts"
echo "  node-a (:9801):"; metrics 9801 'volumes\{|reservation_conflicts_total|operations_total\{operation="(acquire|check)"'
echo "  node-b (:9802):"; metrics 9802 'volumes\{|preemptions_total|operations_total\{operation="acquire"|attachment_to_held_seconds_(sum|count)'

step "What the LUN says (sg_persist, independent of csi-fencer)"
sg_persist --in --read-keys "$RIG_VOL0_B1_SD" | sed 's/^/  /'
sg_persist --in --read-reservation "$RIG_VOL0_B1_SD" | sed 's/^/  /'

kill $PID_nodea $PID_nodeb 2>/dev/null; wait 2>/dev/null
echo
echo "================================ summary ================================"
echo "  attachment moved to node-b -> node-b holds the reservation   ${TB} ms"
echo "  node-a's writer stopped (RESERVATION CONFLICT)               ${TW:-?} ms after the move"
echo "  node-a reports FENCED, never re-registers under generation 1"
echo "  checks: $ok passed, $bad failed"
echo "========================================================================="
[ $bad -eq 0 ]
