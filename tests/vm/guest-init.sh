#!/bin/sh
# guest-init.sh - /init of the rig's QEMU guest (busybox ash).
#
# The guest is both the SAN and the two cluster nodes: LIO's iSCSI target and the in-kernel iSCSI
# initiator (iscsi_tcp, driven by open-iscsi's iscsid/iscsiadm) talk over the guest's own
# loopback; there is no NIC.  This script
#   1. mounts the pseudo file systems and loads the modules listed in /etc/rig/modules.txt;
#   2. builds the LIO target through configfs: one IQN, TPG 1 on 127.0.0.1:3260 and TPG 2 on
#      127.0.0.1:3261, both exporting the same four LUNs (demo-mode ACLs: any initiator);
#   3. logs in four I_T nexuses: node A (ifa1 -> TPG 1, ifa2 -> TPG 2) and node B (ifb1, ifb2),
#      each iface with its node's initiator name, so A and B are distinct PR initiators;
#   4. maps sessions to paths through /sys/class/iscsi_session/*/ifacename and each LUN of a
#      session to its sd/sg by the SCSI LUN number (never by sdX names), builds one dm-multipath
#      map per node and LUN with dmsetup (no multipathd, no udev);
#   5. writes /run/rig/topology.env (+ .json), prints it, drains unit attentions;
#   6. runs the mode given on the kernel command line:
#        rig.mode=test   [rig.filter=NAME]  every /tests/* binary with --ignored --test-threads=1
#        rig.mode=script                    /rig/script.sh
#      each under a watchdog (rig.timeout=SECONDS, default 300): a process stuck in SG_IO sleeps
#      uninterruptibly and cannot be killed, so on timeout we dump kernel stacks and power off;
#   7. always ends with `poweroff -f` - after RIG-DONE, after a setup failure, after a hang.
# The host (run.sh) reads the serial console: @@MARK lines carry boot milestones, ===== lines
# frame the results.
#
# LUNs (same LUN number on both TPGs; serials: see SERIAL_* below):
#   0 VOL0  fileio on tmpfs, 64 MiB, serial vol0serial   - the main shared volume
#   1 VOL1  fileio on tmpfs, 64 MiB, serial vol1serial   - a second volume
#   2 SLOW  iblock on dm-delay (writes +200 ms, reads 0) on brd /dev/ram0 64 MiB, serial slow2serial:
#           writes stay in flight inside LIO long enough for PREEMPT AND ABORT to abort them
#   3 NOPR  fileio 16 MiB, attrib/emulate_pr=0, serial nopr3serial - a target without PR support.
#           On 6.12 emulate_pr can be written at any time: before or after enable, while exported,
#           even with registrations and a reservation in place - they are kept but NOT enforced
#           while it is 0 (an unregistered initiator could write through a WERO reservation) and
#           come back, enforced, when it is set to 1 again (verified).  We set it before the TPGs
#           link the LUN, so no initiator ever sees PR on it.
#           PERSISTENT RESERVE IN and OUT then fail with CHECK CONDITION, fixed-format sense
#           70 00 05 ... 20 00: ILLEGAL REQUEST, ASC/ASCQ 20/00 INVALID COMMAND OPERATION CODE
#           (sg_persist exits 9, "command not supported"); RESERVE(6) gets the same.
#   4.. only with rig.extra_luns=N (N = 1..128; default 0: none of this runs): N more LUNs for bulk
#           benchmarks, X000..X<N-1>, LUN numbers 4..3+N on both TPGs, fileio on tmpfs, 1 MiB each,
#           serial x<iii>serial with <iii> the zero-padded decimal index: its digits (plus the "ea"
#           of "serial") are the serial's only hex digits, so the WWIDs naa.6001405<iii>ea0... are
#           distinct from each other and from LUNs 0-3.  One map per node and LUN like VOL0's
#           (a-x<iii>, uuid mpath-3<hex>; b-x<iii>, uuid mpathb-3<hex>).  Everything is batched:
#           one truncate/mkdir for all backing files and LUN dirs, one wait per session for its
#           SCSI scan, sysfs lookups without subshells, `dmsetup create --concise` (one call per
#           node), and RCU grace periods expedited while LIO is set up (see expedite_rcu).  Topology:
#           RIG_EXTRA_COUNT and RIG_EXTRA_<iii>_{WWID,A_DM,B_DM,A1_SD,A2_SD,B1_SD,B2_SD}.

export PATH=/usr/bin:/usr/sbin:/bin:/sbin
LIO=/sys/kernel/config/target
TARGET_IQN=iqn.2003-01.org.linux-iscsi.rig:target
NODE_A_INITIATOR=iqn.2025-01.test.rig:nodea
NODE_B_INITIATOR=iqn.2025-01.test.rig:nodeb
PATHS="A1 A2 B1 B2"
LUNS="VOL0 VOL1 SLOW NOPR"
MPATH_LUNS="VOL0 VOL1 SLOW"
RUN=/run/rig
TOPO=$RUN/topology.env
WORKDIR=/tmp/work
SLOW_WRITE_DELAY_MS=200
# Unit serials (VPD 0x80).  LIO derives the NAA designator (VPD 0x83, hence the WWID) from the
# serial's hex digits only: "slowserial" and "noprserial" would both give naa.6001405ea000...
# Each serial therefore carries its LUN number, giving naa.6001405{0,1,2,3}ea0...; map_luns
# refuses duplicate WWIDs.
SERIAL_VOL0=vol0serial
SERIAL_VOL1=vol1serial
SERIAL_SLOW=slow2serial
SERIAL_NOPR=nopr3serial

MODE="test"
FILTER=
TEST_TIMEOUT=300
# Extra LUNs (rig.extra_luns=N): see the header.  EXTRA_IDS is "000 001 ... <N-1>".
EXTRA_LUNS=0
EXTRA_MAX=128
EXTRA_IDS=
EXTRA_FIRST_LUN=4
EXTRA_SIZE=1048576
EXTRA_HBA=fileio_0
# Seconds to wait for a session's LUNs to be scanned (sd + sg for each); more with extra LUNs.
SCAN_TIMEOUT=30
WWIDS_SEEN=

# ---------------------------------------------------------------- output helpers
mark() { echo "@@MARK $1 guest_uptime=$(cut -d' ' -f1 /proc/uptime)"; }
banner() { echo "===== $* ====="; }
say() { echo "rig: $*"; }

power_off() {
    sync
    poweroff -f
    sleep 30      # poweroff -f does not return; if it ever does, let the host's timeout act
}

diagnostics() {
    echo "--- dmesg (tail)"; dmesg | tail -n 60
    [ -f /tmp/iscsid.log ] && { echo "--- iscsid log (tail)"; tail -n 30 /tmp/iscsid.log; }
}

# A setup step failed: say which, show what might explain it, power off (no RIG-DONE).
fail() {
    banner "RIG-SETUP-FAILED $*"
    diagnostics
    power_off
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.1 s until it succeeds; 1 on timeout.
wait_for() {
    local ticks=$(($1 * 10))
    shift
    while ! "$@" 2>/dev/null; do
        ticks=$((ticks - 1))
        [ $ticks -le 0 ] && return 1
        sleep 0.1
    done
}

# ---------------------------------------------------------------- watchdog
# Direct children of PID (parsed from /proc/*/stat: "pid (comm) state ppid ...").
children_of() {
    local want=$1 s line rest
    for s in /proc/[0-9]*/stat; do
        read -r line < "$s" 2>/dev/null || continue
        rest=${line##*) }
        set -- $rest
        [ "$2" = "$want" ] && echo "${line%% *}"
    done
}

descendants_of() {
    local p
    for p in $(children_of "$1"); do echo "$p"; descendants_of "$p"; done
}

# Print why PID (and everything below it) is stuck: state, wchan, kernel stack, blocked tasks.
dump_hung() {
    local p t
    for p in $1 $(descendants_of "$1"); do
        for t in /proc/$p/task/*; do     # every thread: libtest runs each test in its own thread
            echo "--- pid $p tid ${t##*/} ($(cat "$t/comm" 2>/dev/null)) state: $(grep '^State' "$t/status" 2>/dev/null | cut -f2) wchan: $(cat "$t/wchan" 2>/dev/null)"
            cat "$t/stack" 2>/dev/null
        done
    done
    echo "--- kernel log (tail)"
    dmesg | tail -n 40
    echo "--- sysrq-w: tasks in uninterruptible sleep"
    echo w > /proc/sysrq-trigger
    sleep 1
    dmesg | sed -n '/sysrq: Show Blocked State/,$p'
}

# run_watched SECONDS NAME COMMAND...: run COMMAND (output straight to the console); return its
# exit status.  If it is still running after SECONDS: print the RIG-HUNG marker and the stacks,
# and power off - a task in uninterruptible sleep cannot be killed, and nothing after it can be
# trusted.  The wrapper subshell writes the status to a file, so no zombie bookkeeping is needed.
run_watched() {
    local limit=$1 name=$2 pid ticks rcfile=/tmp/rc.$$.$2
    shift 2
    rm -f "$rcfile"
    ( "$@"; echo $? > "$rcfile" ) &
    pid=$!
    ticks=$((limit * 5))
    while [ ! -s "$rcfile" ]; do
        if [ $ticks -le 0 ]; then
            echo   # the hung command may have left a partial line (e.g. "test foo ... ")
            banner "RIG-HUNG $name still running after ${limit}s"
            dump_hung "$pid"
            mark hung
            power_off
        fi
        sleep 0.2
        ticks=$((ticks - 1))
    done
    wait "$pid" 2>/dev/null
    return "$(cat "$rcfile")"
}

# ---------------------------------------------------------------- boot
mount_filesystems() {
    /bin/busybox mkdir -p /proc /sys /dev /tmp /run
    /bin/busybox --install -s /bin
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /run
    mkdir -p /run/lock/iscsi $RUN $WORKDIR /tmp/lio
    dmesg -n 1                         # keep kernel chatter off the console; dmesg has it all
    echo 1 > /proc/sys/kernel/sysrq
}

# rig.mode=, rig.filter=, rig.timeout= from the kernel command line.
parse_cmdline() {
    local w
    for w in $(cat /proc/cmdline); do
        case $w in
            rig.mode=*) MODE=${w#rig.mode=} ;;
            rig.filter=*) FILTER=${w#rig.filter=} ;;
            rig.timeout=*) TEST_TIMEOUT=${w#rig.timeout=} ;;
            rig.extra_luns=*) EXTRA_LUNS=${w#rig.extra_luns=} ;;
        esac
    done
    parse_extra_luns
}

# Validate EXTRA_LUNS (decimal, 0..EXTRA_MAX), set EXTRA_IDS and the scan timeout.  No subshells.
parse_extra_luns() {
    local n=$EXTRA_LUNS i=0 id
    case $n in ''|*[!0-9]*) fail "rig.extra_luns=$EXTRA_LUNS: not a number (0..$EXTRA_MAX)" ;; esac
    while :; do case $n in 0?*) n=${n#0} ;; *) break ;; esac; done    # 064 is not octal here
    [ ${#n} -le 3 ] && [ "$n" -le $EXTRA_MAX ] || fail "rig.extra_luns=$EXTRA_LUNS: at most $EXTRA_MAX"
    EXTRA_LUNS=$n
    while [ $i -lt "$n" ]; do
        case $i in ?) id=00$i ;; ??) id=0$i ;; *) id=$i ;; esac
        EXTRA_IDS="$EXTRA_IDS $id"
        i=$((i + 1))
    done
    SCAN_TIMEOUT=$((SCAN_TIMEOUT + n / 2))
}

load_modules() {
    local kv rel params
    kv=$(uname -r)
    while read -r rel params; do
        [ -n "$rel" ] || continue
        insmod "/lib/modules/$kv/$rel" $params 2>/tmp/insmod.err || fail "insmod $rel: $(cat /tmp/insmod.err)"
    done < /etc/rig/modules.txt
    mount -t configfs configfs /sys/kernel/config 2>/dev/null
    [ -d $LIO ] || fail "no $LIO after loading target_core_mod"
    ip link set lo up || fail "ip link set lo up"
}

# expedite_rcu 0|1: /sys/kernel/rcu_expedited.  Linking a LUN into a TPG in configfs waits for
# RCU grace periods, ~25 ms per link under TCG (64 extra LUNs x 2 TPGs: ~3.2 s); expedited, the
# links take ~0.4 s per 64.  (It made no measurable difference to the SCSI scan or dmsetup.)
# Only on while LIO is set up with extra LUNs, then restored.
RCU_EXPEDITED_WAS=0
expedite_rcu() {
    [ -w /sys/kernel/rcu_expedited ] || return 0
    [ "$1" = 1 ] && read -r RCU_EXPEDITED_WAS < /sys/kernel/rcu_expedited
    echo "$1" > /sys/kernel/rcu_expedited
}

# ---------------------------------------------------------------- LIO target
# write VALUE FILE: echo into a configfs/sysfs file, fail loudly.
write() { echo "$1" > "$2" || fail "echo $1 > $2"; }

# new_backstore LUN_NAME HBA DEVNAME CONTROL SERIAL: create and enable a backstore; sets BS_<LUN>.
new_backstore() {
    local lun=$1 bs=$LIO/core/$2/$3
    mkdir -p "$bs" || fail "mkdir $bs"
    write "$4" "$bs/control"
    write "$5" "$bs/wwn/vpd_unit_serial"
    write 1 "$bs/enable"
    eval "BS_$lun=$bs"
}

create_backstores() {
    local mib64=67108864 ramsz dm
    truncate -s $mib64 /tmp/lio/vol0.img /tmp/lio/vol1.img
    truncate -s 16777216 /tmp/lio/nopr.img
    new_backstore VOL0 fileio_0 vol0 "fd_dev_name=/tmp/lio/vol0.img,fd_dev_size=$mib64" $SERIAL_VOL0
    new_backstore VOL1 fileio_0 vol1 "fd_dev_name=/tmp/lio/vol1.img,fd_dev_size=$mib64" $SERIAL_VOL1
    # SLOW: every WRITE waits SLOW_WRITE_DELAY_MS in dm-delay, reads are not delayed.
    ramsz=$(cat /sys/block/ram0/size) || fail "no /dev/ram0 (brd)"
    DM_DISABLE_UDEV=1 dmsetup create rig-slow-delay \
        --table "0 $ramsz delay /dev/ram0 0 0 /dev/ram0 0 $SLOW_WRITE_DELAY_MS" || fail "dmsetup create rig-slow-delay"
    dm=$(dm_dev_of rig-slow-delay)
    new_backstore SLOW iblock_0 slow "udev_path=$dm" $SERIAL_SLOW
    new_backstore NOPR fileio_0 nopr "fd_dev_name=/tmp/lio/nopr.img,fd_dev_size=16777216" $SERIAL_NOPR
    write 0 "$BS_NOPR/attrib/emulate_pr"     # before any TPG exports it (see the header)
    [ -z "$EXTRA_IDS" ] || create_extra_backstores
}

# Extra LUNs: all backing files in one truncate, all backstore dirs in one mkdir, then only
# shell builtins (echo into configfs).
create_extra_backstores() {
    local id files= dirs= bs
    for id in $EXTRA_IDS; do
        files="$files /tmp/lio/x$id.img"
        dirs="$dirs $LIO/core/$EXTRA_HBA/x$id"
    done
    truncate -s $EXTRA_SIZE $files || fail "truncate extra LUN files"
    mkdir $dirs || fail "mkdir extra LUN backstores"
    for id in $EXTRA_IDS; do
        bs=$LIO/core/$EXTRA_HBA/x$id
        write "fd_dev_name=/tmp/lio/x$id.img,fd_dev_size=$EXTRA_SIZE" "$bs/control"
        write "x${id}serial" "$bs/wwn/vpd_unit_serial"
        write 1 "$bs/enable"
    done
}

# link_extra_luns TPG_DIR: export the extra backstores as LUNs 4.. of the TPG (before enable).
link_extra_luns() {
    local tpg=$1 id n=$EXTRA_FIRST_LUN dirs=
    for id in $EXTRA_IDS; do dirs="$dirs $tpg/lun/lun_$n"; n=$((n + 1)); done
    mkdir $dirs || fail "mkdir extra LUN dirs in ${tpg##*/}"
    n=$EXTRA_FIRST_LUN
    for id in $EXTRA_IDS; do
        ln -s "$LIO/core/$EXTRA_HBA/x$id" "$tpg/lun/lun_$n/port" || fail "link x$id into ${tpg##*/} lun_$n"
        n=$((n + 1))
    done
}

# One TPG: portal 127.0.0.1:PORT, the four LUNs, demo mode (generate_node_acls), no auth.
create_tpg() {
    local t=$1 port=$2 tpg=$LIO/iscsi/$TARGET_IQN/tpgt_$1 lun n bs
    mkdir -p "$tpg" || fail "mkdir $tpg"
    # 6.12 may leave the relative target port id at 0 on every port; give each TPG its own.
    [ -f "$tpg/rtpi" ] && { echo "$t" > "$tpg/rtpi" 2>/dev/null || say "tpgt_$t: rtpi not writable ($(cat "$tpg/rtpi"))"; }
    for lun in $LUNS; do
        n=$(lun_number "$lun"); eval "bs=\$BS_$lun"
        mkdir -p "$tpg/lun/lun_$n" || fail "mkdir $tpg/lun/lun_$n"
        ln -s "$bs" "$tpg/lun/lun_$n/port" || fail "link $bs into tpgt_$t lun_$n"
    done
    [ -z "$EXTRA_IDS" ] || link_extra_luns "$tpg"
    mkdir "$tpg/np/127.0.0.1:$port" || fail "portal 127.0.0.1:$port"
    write 0 "$tpg/attrib/authentication"
    write 1 "$tpg/attrib/generate_node_acls"
    write 1 "$tpg/attrib/cache_dynamic_acls"
    write 0 "$tpg/attrib/demo_mode_write_protect"
    write 1 "$tpg/enable"
}

lun_number() {
    case $1 in VOL0) echo 0 ;; VOL1) echo 1 ;; SLOW) echo 2 ;; NOPR) echo 3 ;; esac
}

setup_target() {
    create_backstores
    create_tpg 1 3260
    create_tpg 2 3261
}

# ---------------------------------------------------------------- initiator
path_iface() { echo "if$(echo "$1" | tr 'AB' 'ab')"; }                      # A1 -> ifa1
path_tpgt() { echo "${1#?}"; }                                               # A1 -> 1
path_port() { echo $((3259 + ${1#?})); }                                     # A1 -> 3260
path_initiator() { case $1 in A?) echo $NODE_A_INITIATOR ;; B?) echo $NODE_B_INITIATOR ;; esac; }

iscsid_listening() { grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; }

login_paths() {
    local p ifc
    iscsid -f > /tmp/iscsid.log 2>&1 &
    wait_for 10 iscsid_listening || fail "iscsid did not start"
    mark iscsid_up
    for p in $PATHS; do
        ifc=$(path_iface "$p")
        iscsiadm -m iface -I "$ifc" -o new > /dev/null || fail "iscsiadm iface $ifc"
        iscsiadm -m iface -I "$ifc" -o update -n iface.initiatorname -v "$(path_initiator "$p")" > /dev/null ||
            fail "iscsiadm iface $ifc initiatorname"
    done
    # One node record per path (what sendtargets discovery would create, minus the cross
    # products), then the four logins in parallel: each login is its own session/I_T nexus.
    for p in $PATHS; do
        iscsiadm -m node -o new -T $TARGET_IQN -p "127.0.0.1:$(path_port "$p"),$(path_tpgt "$p")" -I "$(path_iface "$p")" \
            > /tmp/node.log 2>&1 || fail "iscsiadm node record for $p: $(cat /tmp/node.log)"
    done
    for p in $PATHS; do
        iscsiadm -m node -T $TARGET_IQN -p "127.0.0.1:$(path_port "$p")" -I "$(path_iface "$p")" --login > /tmp/login.$p 2>&1 &
        eval "LOGIN_$p=\$!"
    done
    for p in $PATHS; do
        eval "wait \$LOGIN_$p" || fail "iscsiadm login $p: $(cat /tmp/login.$p)"
    done
    mark logged_in
}

# session_of IFACE: the /sys/class/iscsi_session/sessionN whose ifacename is IFACE.
session_of() {
    local s
    for s in /sys/class/iscsi_session/session*; do
        [ "$(cat "$s/ifacename" 2>/dev/null)" = "$1" ] && { echo "$s"; return 0; }
    done
    return 1
}

# scsi_device_of SESSION LUN_NUMBER: the sysfs dir H:C:T:L of that LUN under the session.
scsi_device_of() {
    local d
    for d in "$1"/device/target*/*:*:*:"$2"; do
        [ -d "$d/block" ] && [ -d "$d/scsi_generic" ] && { echo "$d"; return 0; }
    done
    return 1
}

session_scanned() {
    local lun
    for lun in $LUNS; do scsi_device_of "$1" "$(lun_number "$lun")" > /dev/null || return 1; done
    [ -z "$EXTRA_IDS" ] && return 0
    count_probed "$1"
    [ "$PROBED" -ge $((EXTRA_FIRST_LUN + EXTRA_LUNS)) ]
}

# count_probed SESSION: PROBED = how many of the session's LUNs have both their sd and sg.
count_probed() {
    local d
    PROBED=0
    for d in "$1"/device/target*/*:*:*:*; do
        [ -d "$d/block" ] && [ -d "$d/scsi_generic" ] && PROBED=$((PROBED + 1))
    done
}

# ---------------------------------------------------------------- topology
# topo KEY VALUE: set the shell variable and append KEY=VALUE to topology.env.
topo() {
    eval "$1=\$2"
    echo "$1=$2" >> $TOPO
}

map_paths() {
    local p s conn lun n dev
    for p in $PATHS; do
        wait_for 30 session_of "$(path_iface "$p")" > /dev/null || fail "no iSCSI session for $p"
        s=$(session_of "$(path_iface "$p")")
        if ! wait_for $SCAN_TIMEOUT session_scanned "$s"; then
            [ -z "$EXTRA_IDS" ] && fail "path $p: not all LUNs of ${s##*/} appeared"
            count_probed "$s"
            fail "path $p: only $PROBED of $((EXTRA_FIRST_LUN + EXTRA_LUNS)) LUNs of ${s##*/} scanned after ${SCAN_TIMEOUT}s"
        fi
        conn=$(ls -d /sys/class/iscsi_connection/connection"${s##*session}":* | head -n 1)
        topo "RIG_${p}_SESSION" "$s"
        topo "RIG_${p}_IFACE" "$(cat "$s/ifacename")"
        topo "RIG_${p}_PORTAL" "$(cat "$conn/persistent_address"):$(cat "$conn/persistent_port")"
        for lun in $LUNS; do
            n=$(lun_number "$lun")
            dev=$(scsi_device_of "$s" "$n")
            topo "RIG_${lun}_${p}_SD" "/dev/$(ls "$dev/block")"
            topo "RIG_${lun}_${p}_SG" "/dev/$(ls "$dev/scsi_generic")"
            topo "RIG_${lun}_${p}_HCTL" "${dev##*/}"
        done
        [ -z "$EXTRA_IDS" ] || map_extra_path "$p" "$s"
    done
}

# map_extra_path PATH SESSION: RIG_EXTRA_<iii>_<PATH>_SD of every extra LUN, found by its LUN
# number under the session (globs and builtins only: 4 x 128 subshells would cost seconds).
map_extra_path() {
    local p=$1 s=$2 id n=$EXTRA_FIRST_LUN d b sd
    for id in $EXTRA_IDS; do
        sd=
        for d in "$s"/device/target*/*:*:*:$n; do
            for b in "$d"/block/*; do [ -e "$b" ] && sd=/dev/${b##*/}; done
        done
        [ -n "$sd" ] || fail "path $p: no sd for extra LUN $n (x$id) under ${s##*/}"
        topo "RIG_EXTRA_${id}_${p}_SD" "$sd"
        n=$((n + 1))
    done
}

# LUN identity: the kernel's wwid (VPD 0x83 NAA designator), identical on all four paths.
map_luns() {
    local lun p sd wwid first
    for lun in $LUNS; do
        first=
        for p in $PATHS; do
            eval "sd=\$RIG_${lun}_${p}_SD"
            wwid=$(cat "/sys/block/${sd#/dev/}/device/wwid")
            [ -z "$first" ] && first=$wwid
            [ "$wwid" = "$first" ] || fail "$lun: wwid differs between paths ($first vs $wwid on $p)"
        done
        echo "$first" | grep -qE '^naa\.[0-9a-f]{32}$' || fail "$lun: unexpected wwid '$first'"
        topo "RIG_${lun}_WWID" "$first"
        case " $WWIDS_SEEN " in *" $first "*) fail "$lun: wwid $first is not unique (serials need distinct hex digits)" ;; esac
        WWIDS_SEEN="$WWIDS_SEEN $first"
        eval "topo RIG_${lun}_SERIAL \$SERIAL_$lun"
        topo "RIG_${lun}_LUN" "$(lun_number "$lun")"
        eval "topo RIG_${lun}_BACKSTORE \"\$BS_$lun\""
    done
    [ -z "$EXTRA_IDS" ] || map_extra_luns
}

# The extra LUNs' wwids: same on all four paths, well-formed, unique among all LUNs.
map_extra_luns() {
    local id p sd wwid first
    for id in $EXTRA_IDS; do
        first=
        for p in $PATHS; do
            eval "sd=\$RIG_EXTRA_${id}_${p}_SD"
            read -r wwid < "/sys/block/${sd#/dev/}/device/wwid" || fail "x$id: no wwid for $sd ($p)"
            [ -z "$first" ] && first=$wwid
            [ "$wwid" = "$first" ] || fail "x$id: wwid differs between paths ($first vs $wwid on $p)"
        done
        case ${first#naa.} in "$first"|*[!0-9a-f]*) fail "x$id: unexpected wwid '$first'" ;; esac
        [ ${#first} -eq 36 ] || fail "x$id: unexpected wwid '$first'"
        case " $WWIDS_SEEN " in *" $first "*) fail "x$id: wwid $first is not unique (serials need distinct hex digits)" ;; esac
        WWIDS_SEEN="$WWIDS_SEEN $first"
        topo "RIG_EXTRA_${id}_WWID" "$first"
    done
}

# dm_dev_of NAME: /dev/dm-N of a device-mapper map.
dm_dev_of() {
    local d
    for d in /sys/block/dm-*; do
        [ "$(cat "$d/dm/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}

# create_mpath NAME UUID SD1 SD2: round-robin multipath map over two paths, no features, no
# hardware handler (what multipathd would build, minus queue_if_no_path).
create_mpath() {
    local size mm1 mm2
    size=$(cat "/sys/block/${3#/dev/}/size")
    mm1=$(cat "/sys/block/${3#/dev/}/dev"); mm2=$(cat "/sys/block/${4#/dev/}/dev")
    DM_DISABLE_UDEV=1 dmsetup create "$1" -u "$2" \
        --table "0 $size multipath 0 0 1 1 round-robin 0 2 1 $mm1 1 $mm2 1" || fail "dmsetup create $1"
}

# Node A's map carries multipath-tools' uuid mpath-<wwid>, wwid = "3" + NAA hex; node B's map
# needs another uuid because dm uuids are unique in one kernel.
create_maps() {
    local lun name hex node
    for lun in $MPATH_LUNS; do
        name=$(echo "$lun" | tr 'A-Z' 'a-z')
        eval "hex=\${RIG_${lun}_WWID#naa.}"
        for node in A B; do
            if [ $node = A ]; then
                eval "create_mpath a-$name mpath-3$hex \$RIG_${lun}_A1_SD \$RIG_${lun}_A2_SD"
                topo "RIG_${lun}_A_DM" "$(dm_dev_of "a-$name")"
                topo "RIG_${lun}_A_DM_NAME" "a-$name"
            else
                eval "create_mpath b-$name mpathb-3$hex \$RIG_${lun}_B1_SD \$RIG_${lun}_B2_SD"
                topo "RIG_${lun}_B_DM" "$(dm_dev_of "b-$name")"
                topo "RIG_${lun}_B_DM_NAME" "b-$name"
            fi
        done
    done
    [ -z "$EXTRA_IDS" ] || create_extra_maps
}

# All extra maps (a-x<iii>, b-x<iii>; same tables and uuids as create_mpath) in two concurrent
# dmsetup calls, node A's and node B's (one call per vCPU: 128 maps take ~1.5 s in one call, ~0.8 s
# in two; more calls are no faster), then one pass over /sys/block/dm-* to find their dm-N.
create_extra_maps() {
    local id node hex sd1 sd2 size mm1 mm2 table spec_a= spec_b= pid d name a b
    for id in $EXTRA_IDS; do
        eval "hex=\${RIG_EXTRA_${id}_WWID#naa.}"
        for node in A B; do
            eval "sd1=\${RIG_EXTRA_${id}_${node}1_SD#/dev/} sd2=\${RIG_EXTRA_${id}_${node}2_SD#/dev/}"
            read -r size < "/sys/block/$sd1/size"
            read -r mm1 < "/sys/block/$sd1/dev"
            read -r mm2 < "/sys/block/$sd2/dev"
            table="0 $size multipath 0 0 1 1 round-robin 0 2 1 $mm1 1 $mm2 1"
            if [ $node = A ]; then
                spec_a="$spec_a${spec_a:+;}a-x$id,mpath-3$hex,,,$table"
            else
                spec_b="$spec_b${spec_b:+;}b-x$id,mpathb-3$hex,,,$table"
            fi
        done
    done
    DM_DISABLE_UDEV=1 dmsetup create --concise "$spec_a" > /tmp/dmsetup.a 2>&1 &
    pid=$!
    DM_DISABLE_UDEV=1 dmsetup create --concise "$spec_b" > /tmp/dmsetup.b 2>&1 ||
        fail "dmsetup create --concise (node B's $EXTRA_LUNS extra maps): $(tail -n 3 /tmp/dmsetup.b)"
    wait $pid || fail "dmsetup create --concise (node A's $EXTRA_LUNS extra maps): $(tail -n 3 /tmp/dmsetup.a)"
    for d in /sys/block/dm-*; do
        read -r name < "$d/dm/name" || continue
        case $name in [ab]-x[0-9][0-9][0-9]) eval "DM_OF_${name%%-*}_${name#?-x}=/dev/${d##*/}" ;; esac
    done
    for id in $EXTRA_IDS; do
        eval "a=\${DM_OF_a_$id:-} b=\${DM_OF_b_$id:-}"
        [ -n "$a" ] && [ -n "$b" ] || fail "x$id: no dm device for a-x$id or b-x$id after dmsetup create"
        topo "RIG_EXTRA_${id}_A_DM" "$a"
        topo "RIG_EXTRA_${id}_B_DM" "$b"
    done
}

write_topology_header() {
    : > $TOPO
    topo RIG_FABRIC iscsi
    topo RIG_TARGET_IQN $TARGET_IQN
    topo RIG_NODE_A_INITIATOR $NODE_A_INITIATOR
    topo RIG_NODE_B_INITIATOR $NODE_B_INITIATOR
    topo RIG_LIO_CONFIGFS $LIO
    topo CSI_FENCER_BIN /usr/bin/csi-fencer
    [ -z "$EXTRA_IDS" ] || topo RIG_EXTRA_COUNT "$EXTRA_LUNS"
}

# topology.json: the same KEY=VALUE pairs as one flat JSON object of strings.
write_topology_json() {
    awk -F= 'BEGIN { printf "{" } { printf "%s\n  \"%s\": \"%s\"", (NR > 1 ? "," : ""), $1, substr($0, length($1) + 2) }
             END { print "\n}" }' $TOPO > $RUN/topology.json
}

print_topology() {
    local p lun
    echo "paths:"
    printf '  %-4s %-6s %-29s %-16s %s\n' PATH IFACE INITIATOR PORTAL SESSION
    for p in $PATHS; do
        eval "printf '  %-4s %-6s %-29s %-16s %s\n' $p \$RIG_${p}_IFACE $(path_initiator "$p") \$RIG_${p}_PORTAL \${RIG_${p}_SESSION##*/}"
    done
    echo "luns:"
    printf '  %-4s %-3s %-11s %-37s %-24s %-24s %s\n' LUN N SERIAL WWID "A map" "B map" BACKSTORE
    for lun in $LUNS; do
        eval "printf '  %-4s %-3s %-11s %-37s %-24s %-24s %s\n' $lun \$RIG_${lun}_LUN \$RIG_${lun}_SERIAL \$RIG_${lun}_WWID \
            \"\${RIG_${lun}_A_DM_NAME:--}\${RIG_${lun}_A_DM:+=\$RIG_${lun}_A_DM}\" \
            \"\${RIG_${lun}_B_DM_NAME:--}\${RIG_${lun}_B_DM:+=\$RIG_${lun}_B_DM}\" \${RIG_${lun}_BACKSTORE#$LIO/}"
    done
    echo "devices (sd sg H:C:T:L):"
    printf '  %-4s' LUN; for p in $PATHS; do printf ' %-24s' "$p"; done; echo
    for lun in $LUNS; do
        printf '  %-4s' "$lun"
        for p in $PATHS; do
            eval "printf ' %-24s' \"\${RIG_${lun}_${p}_SD#/dev/} \${RIG_${lun}_${p}_SG#/dev/} \$RIG_${lun}_${p}_HCTL\""
        done
        echo
    done
    [ -z "$EXTRA_IDS" ] || print_extra_luns
    banner "RIG-TOPOLOGY BEGIN"
    if [ -z "$EXTRA_IDS" ]; then
        cat $TOPO
    else    # the RIG_EXTRA_<iii>_* lines (7 per LUN) stay in the guest's topology.env/.json only
        grep -v '^RIG_EXTRA_[0-9]' $TOPO
    fi
    banner "RIG-TOPOLOGY END"
}

# Extra LUNs in two lines (the first and the last), not one per LUN.
print_extra_luns() {
    local ids id p
    set -- $EXTRA_IDS
    ids=$1; [ $# -gt 1 ] && eval "ids=\"\$ids \${$#}\""
    echo "extra luns: $EXTRA_LUNS, LUN $EXTRA_FIRST_LUN..$((EXTRA_FIRST_LUN + EXTRA_LUNS - 1)) (fileio $EXTRA_SIZE bytes, serial x<iii>serial, maps a-x<iii> b-x<iii>), first and last:"
    for id in $ids; do
        eval "printf '  x%s %s A=%s B=%s' $id \$RIG_EXTRA_${id}_WWID \$RIG_EXTRA_${id}_A_DM \$RIG_EXTRA_${id}_B_DM"
        for p in $PATHS; do eval "printf ' %s=%s' $p \${RIG_EXTRA_${id}_${p}_SD#/dev/}"; done
        echo
    done
}

# New I_T nexuses start with a POWER ON / RESET unit attention; consume it on every sg path so
# the first command of a test sees a clean path.
drain_unit_attentions() {
    local v
    for v in $(grep -oE '^RIG_(VOL0|VOL1|SLOW|NOPR)_[AB][12]_SG=[^ ]*' $TOPO | cut -d= -f2); do
        sg_turs "$v" > /dev/null 2>&1
        sg_turs "$v" > /dev/null 2>&1
    done
}

# ---------------------------------------------------------------- modes
run_tests() {
    local bin name rc count=0
    for bin in /tests/*; do
        [ -x "$bin" ] || continue
        name=${bin##*/}
        count=$((count + 1))
        banner "RIG-TEST $name BEGIN"
        run_watched "$TEST_TIMEOUT" "$name" "$bin" --ignored --test-threads=1 $FILTER
        rc=$?
        echo   # in case the binary's output did not end with a newline
        banner "RIG-TEST $name END rc=$rc"
    done
    [ $count -gt 0 ] || say "no test binaries in /tests"
}

run_script() {
    local rc
    [ -f /rig/script.sh ] || fail "script mode but no /rig/script.sh"
    banner "RIG-SCRIPT BEGIN"
    run_watched "$TEST_TIMEOUT" script sh /rig/script.sh
    rc=$?
    echo
    banner "RIG-SCRIPT END rc=$rc"
}

main() {
    mount_filesystems
    mark init_running
    parse_cmdline
    say "kernel $(uname -r), mode=$MODE filter='${FILTER}' timeout=${TEST_TIMEOUT}s${EXTRA_IDS:+ extra_luns=$EXTRA_LUNS}"
    load_modules
    mark modules_loaded
    [ -z "$EXTRA_IDS" ] || expedite_rcu 1
    setup_target
    [ -z "$EXTRA_IDS" ] || expedite_rcu "$RCU_EXPEDITED_WAS"
    mark lio_ready
    login_paths
    write_topology_header
    map_paths
    mark sessions_up
    map_luns
    create_maps
    mark maps_ready
    write_topology_json
    print_topology
    drain_unit_attentions
    set -a; . $TOPO; set +a
    export RUST_BACKTRACE=1
    cd $WORKDIR || fail "cd $WORKDIR"
    mark tests_start
    case $MODE in
        test) run_tests ;;
        script) run_script ;;
        *) fail "unknown rig.mode=$MODE" ;;
    esac
    mark tests_end
    banner "RIG-DONE"
    power_off
}

main
power_off
