#!/bin/sh
# demo.sh - the failover demo (`make demo`), run inside the rig guest.
#
# Two simulated nodes share LUN VOL0 over iSCSI (two paths each, one dm-multipath map each).
# node-a takes the volume and writes to it; the volume then "moves" to node-b, whose
# csi-fencer acquire PREEMPTs node-a's key (PREEMPT AND ABORT). node-a's writes start failing
# with RESERVATION CONFLICT, node-a's check reports FENCED, and node-a cannot take the volume
# back under its old attachment. Timings come from the guest clock (/proc/uptime).
# The topology (RIG_*) comes from /run/rig/topology.env, exported by guest-init.sh.
set -u
F=${CSI_FENCER_BIN:-csi-fencer}
W=$RIG_VOL0_WWID
COMMON="--volume pv-demo --wwid $W --cluster-name demo --known-nodes node-a,node-b --state-dir"
now() { cut -d' ' -f1 /proc/uptime; }
ms_since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%d", (b-a)*1000}'; }
step() { echo; echo "### $*"; }
ok=0; bad=0
expect() { # expect DESCRIPTION CONDITION...
    d=$1; shift
    if "$@"; then echo "  [ok] $d"; ok=$((ok+1)); else echo "  [FAILED] $d"; bad=$((bad+1)); fi
}

step "The cluster: node keys (cluster tag from --cluster-name demo)"
KA=$($F key --node node-a --cluster-name demo)
KB=$($F key --node node-b --cluster-name demo)
echo "  node-a key $KA"
echo "  node-b key $KB"
echo "  VOL0 $W: node-a map $RIG_VOL0_A_DM ($RIG_VOL0_A1_SD $RIG_VOL0_A2_SD), node-b map $RIG_VOL0_B_DM ($RIG_VOL0_B1_SD $RIG_VOL0_B2_SD)"

step "node-a: volume attached (attachment gen-1): csi-fencer acquire"
t=$(now)
$F acquire $COMMON /tmp/demo-a --node node-a --attachment gen-1 --attached-nodes node-a
rc=$?; TA=$(ms_since "$t")
expect "node-a holds VOL0 (exit $rc, ${TA} ms)" [ $rc -eq 0 ]
$F inspect "$RIG_VOL0_A_DM" | sed 's/^/  /'

step "node-a starts writing (O_DIRECT, 4 KiB at a time, through its multipath map)"
( i=0
  while dd if=/dev/zero of="$RIG_VOL0_A_DM" bs=4096 count=1 seek=$((i % 1000)) oflag=direct 2>/tmp/writer.err >/dev/null; do
      i=$((i+1)); echo $i > /tmp/writer.count
  done
  echo "$(now) $(head -n1 /tmp/writer.err)" > /tmp/writer.end ) &
WRITER=$!
sleep 2
echo "  writer running: $(cat /tmp/writer.count 2>/dev/null || echo 0) writes so far"

step "the volume moves to node-b (attachment uid-b-1; node-a is cut off): csi-fencer acquire on node-b"
t=$(now)
$F acquire $COMMON /tmp/demo-b --node node-b --map-uuid-prefix mpathb- --attachment uid-b-1 --attached-nodes node-b
rc=$?; TB=$(ms_since "$t"); TBEND=$(now)
expect "node-b holds VOL0 after preempting node-a (exit $rc, ${TB} ms)" [ $rc -eq 0 ]

step "node-a's writer"
i=0; while kill -0 $WRITER 2>/dev/null && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done
if [ -f /tmp/writer.end ]; then
    set -- $(cat /tmp/writer.end)
    TW=$(awk -v a="$TBEND" -v b="$1" 'BEGIN{d=(b-a)*1000; if (d<0) d=0; printf "%d", d}')
    shift; echo "  writer stopped after $(cat /tmp/writer.count 2>/dev/null || echo 0) writes, ${TW} ms after node-b's acquire returned: $*"
fi
expect "node-a's writes fail with RESERVATION CONFLICT (EBADE, 'Invalid exchange')" grep -q 'Invalid exchange' /tmp/writer.err
dd if=/dev/zero of="$RIG_VOL0_B_DM" bs=4096 count=1 oflag=direct 2>/dev/null
expect "node-b writes" [ $? -eq 0 ]

step "node-a: csi-fencer check"
$F check $COMMON /tmp/demo-a --node node-a
rc=$?
expect "node-a reports FENCED (exit $rc = 10)" [ $rc -eq 10 ]

step "node-a's stale source still says 'attached, gen-1': csi-fencer acquire on node-a"
$F acquire $COMMON /tmp/demo-a --node node-a --attachment gen-1 --attached-nodes node-a
rc=$?
expect "refused: a fenced node never re-registers under its old attachment (exit $rc = 10)" [ $rc -eq 10 ]

step "what the LUN says (sg_persist, independent of csi-fencer)"
sg_persist --in --read-keys "$RIG_VOL0_B1_SD" | sed 's/^/  /'
sg_persist --in --read-reservation "$RIG_VOL0_B1_SD" | sed 's/^/  /'

echo
echo "================================ summary ================================"
echo "  node-a acquire (empty LUN)            ${TA} ms"
echo "  node-b acquire (failover, fences A)   ${TB} ms"
echo "  node-a writer stopped                 ${TW:-?} ms after node-b's acquire returned"
echo "  checks: $ok passed, $bad failed"
echo "========================================================================="
[ $bad -eq 0 ]
