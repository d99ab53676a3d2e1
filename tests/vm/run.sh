#!/usr/bin/env bash
# run.sh - host entry point of the VM test rig: build, boot the guest, judge the result.
#
#   tests/vm/run.sh test [FILTER]   run every in-guest test binary (integration tests named vm_*,
#                                   #[ignore]d so the host's cargo test skips them) with --ignored
#   tests/vm/run.sh script FILE     run a guest shell script (e.g. a `make demo` scenario)
#
# Why a VM: csi-fencer must be tested against a real SCSI target with real SG_IO, multipath and
# two initiators; the host kernel has none of that.  QEMU/TCG boots Debian's 6.12 kernel with a
# busybox initramfs (see guest-init.sh for the topology and README.md for the whole story).
#
# Steps: deps.sh (host packages + cached guest kernel); cargo build of csi-fencer and, in test
# mode, of the vm_* integration tests; build-initramfs.sh (cached base + per-run payload); boot
# qemu under `timeout`, the console piped through console.py into target/rig/out/; then read
# the guest's markers and exit non-zero with a one-line reason if anything went wrong.  In test
# mode the last line printed is "N passed, M failed".
#
# Environment:
#   RIG_PROJECT_DIR   the cargo project to build (default: this repository)
#   RIG_TIMEOUT       seconds for the whole qemu run (default 1200)
#   RIG_TEST_TIMEOUT  watchdog seconds per test binary / script inside the guest (default 300)
#   RIG_MEM           guest memory in MiB (default 2048)
#   RIG_APPEND        extra kernel command line arguments
#   RIG_EXTRA_LUNS    0..128 extra 1 MiB LUNs (4..) with a map per node, for bulk benchmarks (default 0)
#   RIG_QUIET=1       do not echo the guest console (it is still in target/rig/out/console.log)
#   RIG_ACCEL         tcg (default: software emulation, runs anywhere) or kvm (a host with
#                     working KVM; guest system calls run at hardware speed, for benchmarks)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

RIG_TIMEOUT=${RIG_TIMEOUT:-1200}
RIG_TEST_TIMEOUT=${RIG_TEST_TIMEOUT:-300}
RIG_MEM=${RIG_MEM:-2048}
RIG_EXTRA_LUNS=${RIG_EXTRA_LUNS:-0}
RIG_ACCEL=${RIG_ACCEL:-tcg}
PROJECT_DIR=$(cd "${RIG_PROJECT_DIR:-$RIG_REPO}" && pwd)
INITRD=$RIG_WORK/initrd.img

MODE=""
FILTER=""
SCRIPT=""
FENCER_BIN=""
TEST_SPECS=()        # NAME=PATH of each vm_* test executable
QEMU_RC=0
REASONS=()           # one line per problem found; any -> exit 1
TEST_PASS=0
TEST_FAIL=0
FAILED_TESTS=()      # "BINARY: TEST" of every failed (or unfinished) test

usage() {
    echo "usage: tests/vm/run.sh test [FILTER] | tests/vm/run.sh script FILE" >&2
    exit 2
}

parse_args() {
    [ $# -ge 1 ] || usage
    [[ $RIG_EXTRA_LUNS =~ ^[0-9]{1,3}$ ]] && [ $((10#$RIG_EXTRA_LUNS)) -le 128 ] ||
        rig_die "RIG_EXTRA_LUNS='$RIG_EXTRA_LUNS' must be a number from 0 to 128"
    RIG_EXTRA_LUNS=$((10#$RIG_EXTRA_LUNS))
    case $RIG_ACCEL in
        tcg) ACCEL_ARGS=(-accel tcg,thread=multi -cpu max) ;;
        kvm) ACCEL_ARGS=(-accel kvm -cpu host) ;;
        *) rig_die "RIG_ACCEL='$RIG_ACCEL' must be tcg or kvm" ;;
    esac
    MODE=$1
    case $MODE in
        test)
            [ $# -le 2 ] || usage
            FILTER=${2:-}
            # The filter travels on the kernel command line: one word, no quotes.
            [[ $FILTER =~ ^[A-Za-z0-9_:.-]*$ ]] || rig_die "filter '$FILTER' must match [A-Za-z0-9_:.-]*"
            ;;
        script)
            [ $# -eq 2 ] || usage
            SCRIPT=$(realpath "$2")
            [ -f "$SCRIPT" ] || rig_die "script $2 not found"
            ;;
        *) usage ;;
    esac
}

# cargo_artifacts JSON_FILE KIND: from cargo's --message-format=json output print
#   bin:      the csi-fencer executable
#   examples: NAME=PATH for every example named vm_* (benchmarks run by script mode)
#   tests: NAME=PATH for every integration test target (kind "test", test profile) named vm_*
cargo_artifacts() {
    python3 - "$1" "$2" <<'PY'
import json, sys
path, kind = sys.argv[1], sys.argv[2]
for line in open(path):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable"):
        continue
    t = m["target"]
    if kind == "bin" and "bin" in t["kind"] and t["name"] == "csi-fencer":
        print(m["executable"])
    elif kind == "tests" and t["kind"] == ["test"] and m["profile"]["test"] and t["name"].startswith("vm_"):
        print("%s=%s" % (t["name"], m["executable"]))
    elif kind == "examples" and t["kind"] == ["example"] and t["name"].startswith("vm_"):
        print("%s=%s" % (t["name"], m["executable"]))
PY
}

build_project() {
    local json=$RIG_OUT/cargo-bin.json spec
    rig_log "cargo build --bin csi-fencer (in $PROJECT_DIR)"
    (cd "$PROJECT_DIR" && cargo build --bin csi-fencer --message-format=json-render-diagnostics > "$json") ||
        rig_die "cargo build --bin csi-fencer failed"
    FENCER_BIN=$(cargo_artifacts "$json" bin | tail -n 1)
    [ -n "$FENCER_BIN" ] || rig_die "cargo built no csi-fencer executable"
    if [ "$MODE" = script ]; then
        # Scripts (demo, benchmarks) may also run the project's vm_* example binaries:
        # they land in /tests/ too, where script mode never runs them by itself.
        json=$RIG_OUT/cargo-examples.json
        if ls "$PROJECT_DIR"/examples/vm_*.rs > /dev/null 2>&1; then
            (cd "$PROJECT_DIR" && cargo build --release --examples --message-format=json-render-diagnostics > "$json") ||
                rig_die "cargo build --release --examples failed"
            while read -r spec; do TEST_SPECS+=("--test" "$spec"); done < <(cargo_artifacts "$json" examples)
        fi
        return 0
    fi
    json=$RIG_OUT/cargo-tests.json
    rig_log "cargo test --no-run --test 'vm_*'"
    (cd "$PROJECT_DIR" && cargo test --no-run --message-format=json-render-diagnostics --test 'vm_*' > "$json") ||
        rig_die "cargo test --no-run failed (are there tests/vm_*.rs integration tests in $PROJECT_DIR?)"
    while read -r spec; do TEST_SPECS+=("--test" "$spec"); done < <(cargo_artifacts "$json" tests)
    [ ${#TEST_SPECS[@]} -gt 0 ] || rig_die "no vm_* integration test executables in $PROJECT_DIR"
    case " ${TEST_SPECS[*]} " in
        *" vm_kube="*) start_kube_relay ;;
    esac
}

# vm_kube's control plane: a real etcd and kube-apiserver on the host's loopback, reached from the
# guest through one virtio-serial port (examples/kube_relay.rs, tests/common/relay.rs). It stops
# when QEMU closes the port; KUBE_ARGS are the extra qemu and initramfs arguments.
start_kube_relay() {
    local json=$RIG_OUT/cargo-relay.json relay i
    rig_log "cargo build --example kube_relay; starting the host's kube-apiserver for vm_kube"
    (cd "$PROJECT_DIR" && cargo build --example kube_relay --message-format=json-render-diagnostics > "$json") ||
        rig_die "cargo build --example kube_relay failed"
    relay=$(python3 -c 'import json,sys
for l in open(sys.argv[1]):
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "kube_relay" and m.get("executable"):
        print(m["executable"])' "$json" | tail -n 1)
    [ -n "$relay" ] || rig_die "cargo built no kube_relay executable"
    rm -rf "$RIG_OUT/kube" "$RIG_OUT/kube.sock"
    "$relay" "$RIG_OUT/kube" "$RIG_OUT/kube.sock" 2> "$RIG_OUT/kube-relay.log" &
    RELAY_PID=$!
    for i in $(seq 1 600); do
        [ -f "$RIG_OUT/kube/ready" ] && break
        kill -0 "$RELAY_PID" 2> /dev/null ||
            rig_die "kube_relay (the host's kube-apiserver for vm_kube) failed: $(tail -n 20 "$RIG_OUT/kube-relay.log")"
        sleep 0.2
    done
    [ -f "$RIG_OUT/kube/ready" ] || rig_die "kube_relay not ready after 120 s: $(tail -n 20 "$RIG_OUT/kube-relay.log")"
    KUBE_ARGS=(-device virtio-serial-pci -chardev "socket,id=kube,path=$RIG_OUT/kube.sock"
        -device virtserialport,chardev=kube,name=kube)
    KUBE_DIR=$RIG_OUT/kube
}

# After the guest: the relay ends when QEMU closes the port. One that died early, failed, or
# outlived QEMU is a reason to fail the run, with its log.
stop_kube_relay() {
    [ -n "${RELAY_PID:-}" ] || return 0
    local i rc=0 alive=1
    for i in $(seq 1 50); do kill -0 "$RELAY_PID" 2> /dev/null || { alive=0; break; }; sleep 0.2; done
    [ "$alive" = 1 ] && kill "$RELAY_PID" 2> /dev/null
    wait "$RELAY_PID" 2> /dev/null || rc=$?
    if [ "$alive" = 1 ]; then
        REASONS+=("kube_relay still running 10 s after QEMU exited: $(tail -n 5 "$RIG_OUT/kube-relay.log" | tr '\n' ' ')")
    elif [ "$rc" != 0 ]; then
        REASONS+=("kube_relay failed (rc=$rc): $(tail -n 20 "$RIG_OUT/kube-relay.log" | tr '\n' ' ')")
    fi
}

build_initrd() {
    local args=(--out "$INITRD" --init "$RIG_HOST_DIR/guest-init.sh" --fencer "$FENCER_BIN")
    [ -n "$SCRIPT" ] && args+=(--script "$SCRIPT")
    [ -n "${KUBE_DIR:-}" ] && args+=(--kube "$KUBE_DIR")
    "$RIG_HOST_DIR/build-initramfs.sh" "${args[@]}" ${TEST_SPECS[@]+"${TEST_SPECS[@]}"}
}

kernel_cmdline() {
    local c="console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off rig.mode=$MODE rig.timeout=$RIG_TEST_TIMEOUT"
    [ -n "$FILTER" ] && c+=" rig.filter=$FILTER"
    [ "$RIG_EXTRA_LUNS" -gt 0 ] && c+=" rig.extra_luns=$RIG_EXTRA_LUNS"
    [ -n "${RIG_APPEND:-}" ] && c+=" $RIG_APPEND"
    echo "$c"
}

boot_guest() {
    local t0=$1 rcs
    # fd 3: where the guest console is echoed (reopening /dev/stdout would rewind a log file).
    if [ "${RIG_QUIET:-0}" = 1 ]; then exec 3> /dev/null; else exec 3>&1; fi
    rm -f "$RIG_OUT/qemu.pid"
    rig_log "booting: qemu-system-x86_64 (${RIG_ACCEL^^}, 2 vCPUs, ${RIG_MEM} MiB), timeout ${RIG_TIMEOUT}s"
    set +e
    timeout -k 10 "$RIG_TIMEOUT" qemu-system-x86_64 -M pc "${ACCEL_ARGS[@]}" -smp 2 \
        -m "$RIG_MEM" -nographic -no-reboot -nic none -pidfile "$RIG_OUT/qemu.pid" \
        -kernel "$RIG_KDIR/boot/vmlinuz-$RIG_KV" -initrd "$INITRD" \
        ${KUBE_ARGS[@]+"${KUBE_ARGS[@]}"} -append "$(kernel_cmdline)" < /dev/null 2> "$RIG_OUT/qemu.stderr" |
        python3 -u "$RIG_HOST_DIR/console.py" "$RIG_OUT" "$t0" "$RIG_OUT/qemu.pid" >&3
    rcs=("${PIPESTATUS[@]}")
    set -e
    exec 3>&-
    QEMU_RC=${rcs[0]}
    [ "${rcs[1]}" = 0 ] || REASONS+=("console reader failed (rc=${rcs[1]})")
}

# mark_time NAME: host seconds (since qemu start) at which the guest printed @@MARK NAME.
mark_time() {
    awk -v m="$1" '$1 == m { for (i = 2; i <= NF; i++) if (sub(/^host_elapsed=/, "", $i)) { print $i; exit } }' "$RIG_OUT/marks.txt"
}

# The last boot milestone (@@MARK) the guest reached, or "none".
last_mark() { awk '/guest_uptime=/ { m = $1 } END { print (m == "" ? "none" : m) }' "$RIG_OUT/marks.txt"; }

# Count libtest result lines per RIG-TEST block.  A block without END (hang or crash) counts the
# test that was running as failed.  Output lines: "failed BINARY TEST", "unfinished BINARY TEST|-",
# and last "counts PASSED FAILED".
count_test_results() {
    awk '
        function finish_block() {
            if (bin == "") return
            print "unfinished", bin, (running == "" ? "-" : running)
            if (running != "") { fail++; print "failed", bin, running " (did not finish)" }
            bin = ""
        }
        /===== RIG-TEST [^ ]* BEGIN =====/ { finish_block(); sub(/.*===== RIG-TEST /, ""); bin = $1; running = ""; next }
        /===== RIG-TEST [^ ]* END rc=[0-9]+ =====/ { bin = ""; next }
        bin != "" && /^test .* \.\.\. / {
            name = $0; sub(/^test /, "", name); sub(/ \.\.\. .*$/, "", name)
            if ($0 ~ / \.\.\. ok$/) { pass++; running = "" }
            else if ($0 ~ / \.\.\. FAILED$/) { fail++; print "failed", bin, name; running = "" }
            else running = name
        }
        END { finish_block(); print "counts", pass + 0, fail + 0 }
    ' "$RIG_OUT/guest.log"
}

# Fill REASONS from the guest log; print the failed tests and, in test mode, the count line.
judge_run() {
    local log=$RIG_OUT/guest.log line name rc pass=0 fail=0 failed=()
    case $QEMU_RC in
        0) ;;
        124|137) REASONS+=("qemu timed out after ${RIG_TIMEOUT}s (RIG_TIMEOUT)") ;;
        *) REASONS+=("qemu failed (rc=$QEMU_RC): $(head -c 300 "$RIG_OUT/qemu.stderr" | tr '\n' ' ')") ;;
    esac
    # A guest that never started the tests: one reason is enough, the checks below would only
    # repeat it.
    if line=$(grep -m1 -o 'RIG-SETUP-FAILED .* =====' "$log"); then
        line=${line#RIG-SETUP-FAILED }; REASONS+=("guest setup failed: ${line% =====}")
        return 0
    fi
    if ! grep -q '^@@MARK tests_start' "$log"; then
        line=$(grep -m1 -o 'Kernel panic.*' "$log" || true)
        REASONS+=("guest did not boot (never reached tests_start; last milestone: $(last_mark)${line:+; $line}; see $RIG_OUT/console.log)")
        return 0
    fi
    while read -r line; do
        REASONS+=("watchdog: $line (HUNG; kernel stacks in console.log)")
    done < <(sed -n 's/.*===== RIG-HUNG \(.*\) =====$/\1/p' "$log")
    while read -r name rc; do
        [ "$rc" = 0 ] || REASONS+=("$name exited rc=$rc")
    done < <(sed -n 's/.*===== RIG-\(TEST \([^ ]*\)\|\(SCRIPT\)\) END rc=\([0-9]*\) =====$/\2\3 \4/p' "$log")
    if [ "$MODE" = script ] && ! grep -q '===== RIG-SCRIPT END' "$log"; then
        REASONS+=("the script has no END marker (hang or crash)")
    fi
    while read -r kind a b; do
        case $kind in
            counts) pass=$a; fail=$b ;;
            failed) failed+=("$a: $b") ;;
            unfinished) REASONS+=("RIG-TEST $a has no END (hang or crash; test running then: $b)") ;;
        esac
    done < <(count_test_results)
    if [ "$MODE" = test ] && [ $((pass + fail)) -eq 0 ]; then
        REASONS+=("zero tests ran${FILTER:+ (filter '$FILTER')}")
    fi
    # Unfiltered, every tests/vm_*.rs must have run tests of its own: a binary
    # that was not built, not copied or lost its tests fails the run.
    if [ "$MODE" = test ] && [ -z "$FILTER" ]; then
        local f name n
        for f in "$PROJECT_DIR"/tests/vm_*.rs; do
            name=$(basename "$f" .rs)
            n=$(sed -n "/===== RIG-TEST $name BEGIN =====/,/===== RIG-TEST $name END/p" "$log" |
                sed -n 's/.*test result: [a-zA-Z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' |
                awk '{s += $1 + $2} END {print s + 0}')
            [ "$n" -gt 0 ] || REASONS+=("$name ran no test (not built or not in the guest?)")
        done
    fi
    grep -q '===== RIG-DONE =====$' "$log" || REASONS+=("guest did not finish (no RIG-DONE marker)")
    TEST_PASS=$pass; TEST_FAIL=$fail
    FAILED_TESTS=(${failed[@]+"${failed[@]}"})
}

report() {
    local t_start=$1 t_boot=$2 t_end=$3 ts te tests='?' rss f
    ts=$(mark_time tests_start); te=$(mark_time tests_end)
    [ -n "$te" ] || te=$(mark_time console_eof)
    [ -n "$ts" ] && [ -n "$te" ] && tests=$(rig_elapsed "$ts" "$te")
    rss=$(sed -n 's/^qemu_peak_rss_mb=//p' "$RIG_OUT/marks.txt")
    {
        echo "rig: log: $RIG_OUT/console.log (marks: $RIG_OUT/marks.txt, topology: $RIG_OUT/topology.env)"
        echo "rig: timings: build $(rig_elapsed "$t_start" "$t_boot")s, boot to tests start ${ts:-?}s, tests ${tests}s, total $(rig_elapsed "$t_start" "$t_end")s; qemu peak RSS ${rss:-?} MiB"
        for f in ${FAILED_TESTS[@]+"${FAILED_TESTS[@]}"}; do echo "rig: failed test: $f"; done
        for f in ${REASONS[@]+"${REASONS[@]}"}; do echo "rig: FAIL: $f"; done
        if [ "$MODE" = test ]; then
            echo "$TEST_PASS passed, $TEST_FAIL failed"
        elif [ ${#REASONS[@]} -eq 0 ]; then
            echo "rig: script passed"
        fi
    } | tee "$RIG_OUT/summary.txt"
}

main() {
    local t_start t_boot t_end
    parse_args "$@"
    t_start=$(rig_now)
    "$RIG_HOST_DIR/deps.sh"
    rig_load_kernel_env
    rm -rf "$RIG_OUT"; mkdir -p "$RIG_OUT"
    build_project
    build_initrd
    t_boot=$(rig_now)
    boot_guest "$t_boot"
    stop_kube_relay
    t_end=$(rig_now)
    judge_run
    report "$t_start" "$t_boot" "$t_end"
    [ ${#REASONS[@]} -eq 0 ]
}

main "$@"
