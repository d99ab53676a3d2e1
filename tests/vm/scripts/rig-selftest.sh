#!/bin/sh
# rig-selftest.sh - guest script (tests/vm/run.sh script tests/vm/scripts/rig-selftest.sh) that
# checks the rig itself with sg3_utils only, no csi-fencer:
#   1. every LUN reports its WWID/serial on all four paths, and the two TPGs have distinct
#      relative target port ids;
#   2. NOPR (emulate_pr=0) rejects PERSISTENT RESERVE IN and OUT (ILLEGAL REQUEST, 20/00);
#   3. PREEMPT AND ABORT works over iSCSI on the SLOW LUN: node A holds a type 5 reservation and
#      has writes in flight (dm-delay keeps each one 200 ms inside LIO), node B preempts-and-aborts
#      A's key; the command returns, A's writers fail instead of hanging, A's idle path sees the
#      2A/05 unit attention, A's writes then get RESERVATION CONFLICT, B writes;
#   4. cleans up (CLEAR) so the LUN is left unreserved.
# Exit status: number of failed checks (0 = the rig behaves as the README says).
FAILED=0
ok() { echo "ok: $*"; }
bad() { echo "NOT OK: $*"; FAILED=$((FAILED + 1)); }
# check DESCRIPTION COMMAND...: expect COMMAND to succeed
check() { d=$1; shift; if "$@" > /tmp/check.out 2>&1; then ok "$d"; else bad "$d (rc=$?)"; cat /tmp/check.out; fi; }
# expect_rc RC DESCRIPTION COMMAND...: expect COMMAND to exit with RC; show its output
expect_rc() {
    want=$1 d=$2; shift 2
    "$@" > /tmp/check.out 2>&1; rc=$?
    sed 's/^/    | /' /tmp/check.out
    if [ "$rc" = "$want" ]; then ok "$d (rc=$rc)"; else bad "$d: rc=$rc, want $want"; fi
}
hdr() { echo; echo "#### $*"; }
drain() { for g in "$@"; do sg_turs "$g" > /dev/null 2>&1; sg_turs "$g" > /dev/null 2>&1; done; }

hdr "1. identity on every path"
for lun in VOL0 VOL1 SLOW NOPR; do
    eval "want=\$RIG_${lun}_WWID sn=\$RIG_${lun}_SERIAL"
    for p in A1 A2 B1 B2; do
        eval "sd=\$RIG_${lun}_${p}_SD"
        got="naa.$(sg_vpd -p di -q "$sd" 2>/dev/null | head -n 1 | tr -d ' ' | sed 's/^0x//')"
        gotsn=$(sg_vpd -p sn "$sd" 2>/dev/null | sed -n 's/^ *Unit serial number: *//p')
        [ "$got" = "$want" ] && [ "$gotsn" = "$sn" ] || bad "$lun $p ($sd): naa $got sn $gotsn, want $want $sn"
    done
    ok "$lun: $want serial $sn on A1 A2 B1 B2"
done
rtpi() { sg_vpd -p di "$1" | awk '/Relative target port:/ { print $NF; exit }'; }
r1=$(rtpi "$RIG_VOL0_A1_SD"); r2=$(rtpi "$RIG_VOL0_A2_SD"); rb1=$(rtpi "$RIG_VOL0_B1_SD")
echo "relative target ports: A1=$r1 A2=$r2 B1=$rb1"
[ -n "$r1" ] && [ "$r1" != "$r2" ] && [ "$r1" = "$rb1" ] && ok "TPG 1 and TPG 2 have distinct rtpi" || bad "rtpi"

hdr "2. NOPR: no PR support"
drain "$RIG_NOPR_A1_SG"
# sg_persist exits 9 (SG_LIB_CAT_INVALID_OP) on ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
expect_rc 9 "PR IN READ KEYS on NOPR is rejected" sg_persist -vv --in --read-keys "$RIG_NOPR_A1_SD"
grep -q '70 00 05 00 00 00 00 0a  00 00 00 00 20 00 00 00' /tmp/check.out &&
    ok "sense: fixed format, ILLEGAL REQUEST, ASC/ASCQ 20/00" || bad "NOPR sense"
expect_rc 9 "PR OUT REGISTER on NOPR is rejected" sg_persist -v --out --register --param-sark=0xa "$RIG_NOPR_A1_SD"
[ "$(cat "$RIG_NOPR_BACKSTORE/attrib/emulate_pr")" = 0 ] && [ "$(cat "$RIG_VOL0_BACKSTORE/attrib/emulate_pr")" = 1 ] &&
    ok "emulate_pr: NOPR 0, VOL0 1" || bad "emulate_pr attributes"

hdr "3. PREEMPT AND ABORT on SLOW with A's writes in flight"
drain "$RIG_SLOW_A1_SG" "$RIG_SLOW_A2_SG" "$RIG_SLOW_B1_SG" "$RIG_SLOW_B2_SG"
check "A registers 0xa on A1" sg_persist --out --register --param-sark=0xa "$RIG_SLOW_A1_SD"
check "A registers 0xa on A2" sg_persist --out --register --param-sark=0xa "$RIG_SLOW_A2_SD"
check "A reserves type 5" sg_persist --out --reserve --param-rk=0xa --prout-type=5 "$RIG_SLOW_A1_SD"
check "B registers 0xb on B1" sg_persist --out --register --param-sark=0xb "$RIG_SLOW_B1_SD"
check "B registers 0xb on B2" sg_persist --out --register --param-sark=0xb "$RIG_SLOW_B2_SD"
sg_persist --in --read-keys "$RIG_SLOW_B1_SD" | sed 's/^/    | /'
# Three O_DIRECT writers on A1 (each 64 KiB write sits 200 ms in dm-delay); A2 stays idle so its
# first command afterwards shows the unit attention.
# LIO logs each command it aborts for the preempted nexuses (dynamic debug of target_core_tmr.c).
mount -t debugfs debugfs /sys/kernel/debug 2> /dev/null
echo 'file target_core_tmr.c +p' > /sys/kernel/debug/dynamic_debug/control
for k in 1 2 3; do
    ( dd if=/dev/zero of="$RIG_SLOW_A1_SD" bs=64k count=2000 seek=$((k * 16)) oflag=direct > /tmp/w$k 2>&1
      echo "rc=$?" >> /tmp/w$k ) &
done
sleep 1
echo "in flight on A1 before the preempt: $(cat /sys/block/${RIG_SLOW_A1_SD#/dev/}/inflight)"
t0=$(cut -d' ' -f1 /proc/uptime)
check "B: PREEMPT AND ABORT rk=0xb sark=0xa type 5 (on B1)" \
    sg_persist --out --preempt-abort --param-rk=0xb --param-sark=0xa --prout-type=5 "$RIG_SLOW_B1_SD"
t1=$(cut -d' ' -f1 /proc/uptime)
echo "PREEMPT AND ABORT took $(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }') s"
i=0
while [ $i -lt 100 ] && [ "$(cat /tmp/w1 /tmp/w2 /tmp/w3 2>/dev/null | grep -c '^rc=')" -lt 3 ]; do sleep 0.1; i=$((i + 1)); done
for k in 1 2 3; do echo "writer $k: $(tr '\n' ' ' < /tmp/w$k)"; done
[ "$(grep -l '^rc=[1-9]' /tmp/w1 /tmp/w2 /tmp/w3 | wc -l)" = 3 ] && ok "all of A's writers failed (not hung)" || bad "A's writers"
echo 'file target_core_tmr.c -p' > /sys/kernel/debug/dynamic_debug/control
n=$(dmesg | grep -c 'LUN_RESET: ITT')
dmesg | grep -m 3 'LUN_RESET: ITT' | sed 's/^/    | /'
[ "$n" -gt 0 ] && ok "LIO aborted $n in-flight command(s) of A" || bad "no aborted commands logged by LIO"
expect_rc 6 "A2 (idle) sees UNIT ATTENTION" sg_turs -v "$RIG_SLOW_A2_SG"
grep -q 'Registrations preempted' /tmp/check.out && ok "sense is 2A/05 registrations preempted" || bad "UA sense"
drain "$RIG_SLOW_A1_SG" "$RIG_SLOW_A2_SG"
expect_rc 99 "A write via sg_dd fails" sg_dd if=/dev/zero of="$RIG_SLOW_A2_SG" bs=512 count=8
grep -q 'Reservation Conflict' /tmp/check.out && ok "status RESERVATION CONFLICT" || bad "A's write status"
expect_rc 1 "A write via dd on the a-slow map fails" dd if=/dev/zero of="$RIG_SLOW_A_DM" bs=4096 count=1 oflag=direct
expect_rc 24 "A's REGISTER with its preempted key -> RESERVATION CONFLICT" \
    sg_persist --out --register --param-rk=0xa --param-sark=0xa1 "$RIG_SLOW_A1_SD"
check "B writes" dd if=/dev/zero of="$RIG_SLOW_B2_SD" bs=4096 count=1 oflag=direct
sg_persist --in --read-keys "$RIG_SLOW_B1_SD" | sed 's/^/    | /'
sg_persist --in --read-keys "$RIG_SLOW_B1_SD" | grep -q '0xa$' && bad "A's key still there" || ok "only B's keys left"
sg_persist --in --read-reservation "$RIG_SLOW_B1_SD" | grep -q 'Key=0xb' && ok "B holds the reservation" || bad "holder"

hdr "4. cleanup"
check "B clears" sg_persist --out --clear --param-rk=0xb "$RIG_SLOW_B1_SD"
drain "$RIG_SLOW_A1_SG" "$RIG_SLOW_A2_SG" "$RIG_SLOW_B1_SG" "$RIG_SLOW_B2_SG"

echo
echo "rig-selftest: $FAILED check(s) failed"
exit $FAILED
