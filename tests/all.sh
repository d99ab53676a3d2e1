#!/usr/bin/env bash
# tests/all.sh [--host-only] - every test of csi-fencer, as `make test` and CI run them.
#
#  1. cargo fmt --check and cargo clippy -D warnings (installs the components if missing);
#  2. cargo test: unit, property and CLI tests on the host (the vm_* tests show as ignored),
#     and the Kubernetes tests against a real kube-apiserver and etcd (KUBEBUILDER_ASSETS, or
#     ../shared/kube beside the repository);
#  3. the Windows build (tests/windows/run.sh): clippy for x86_64-pc-windows-gnu, and its tests
#     run under Wine (mingw-w64 and Wine installed if missing);
#  4. the Helm chart (tests/chart/run.sh): rendered by a real Helm engine, linted strict,
#     every object validated against Kubernetes 1.30 and the newest schemas (PyPI, in a venv);
#  5. the container image (make test-image): a static binary in an empty image, built offline
#     with podman (installed if missing) and run: --version, crd, over the host's /dev and /sys,
#     and the daemon inside it against a real kube-apiserver;
#  6. the VM rig (tests/vm/run.sh test): the vm_* tests on a real LIO target in QEMU.
# The last line sums every run as "total: N passed, M failed"; any failure exits non-zero.
set -euo pipefail
cd "$(dirname "$0")/.."
host_only=false
[ "${1:-}" = "--host-only" ] && host_only=true

step() { printf '\n==> %s\n' "$*"; }

ensure_components() {
    for c in rustfmt clippy; do
        if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
            command -v rustup >/dev/null || { echo "cargo $c is missing and rustup is not installed" >&2; exit 1; }
            rustup component add "$c"
        fi
    done
}

# The real-API-server tests (src/k8s/tests/real.rs) make certificates with
# openssl and unpack the control plane's binaries with xz.
ensure_host_tools() {
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v xz >/dev/null || missing+=(xz-utils)
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" = 0 ] || { echo "missing ${missing[*]}: install them (apt-get install ${missing[*]})" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step "format and lints"
ensure_host_tools
ensure_components
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

step "host tests (cargo test)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
host_passed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^passed;?$/) s+=$(i-1)} END{print s+0}' "$log")
host_failed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^failed;?$/) s+=$(i-1)} END{print s+0}' "$log")
if [ "$rc" -ne 0 ] && [ "$host_failed" -eq 0 ]; then host_failed=1; fi   # build failure
echo "host: $host_passed passed, $host_failed failed"
if [ "$rc" -ne 0 ]; then
    echo "total: $host_passed passed, $host_failed failed"
    exit 1
fi

step "Windows build: clippy and the tests under Wine (tests/windows/run.sh)"
set +e
tests/windows/run.sh 2>&1 | tee "$log"
win_rc=${PIPESTATUS[0]}
set -e
win_passed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^passed;?$/) s+=$(i-1)} END{print s+0}' "$log")
win_failed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^failed;?$/) s+=$(i-1)} END{print s+0}' "$log")
if [ "$win_rc" -ne 0 ] && [ "$win_failed" -eq 0 ]; then win_failed=1; fi   # the build or clippy failed
echo "windows: $win_passed passed, $win_failed failed"
host_passed=$((host_passed + win_passed))
host_failed=$((host_failed + win_failed))
if [ "$win_rc" -ne 0 ]; then
    echo "total: $host_passed passed, $host_failed failed"
    exit 1
fi

step "Helm chart: real Helm engine + kubernetes-validate (tests/chart/run.sh)"
set +e
tests/chart/run.sh 2>&1 | tee "$log"
chart_rc=${PIPESTATUS[0]}
set -e
chart_line=$(grep -E '^chart: [0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
chart_passed=$(echo "${chart_line:-chart: 0 passed}" | awk '{print $2}')
chart_failed=$(echo "${chart_line:-chart: 0 passed, 0 failed}" | awk '{print $4}')
if [ "$chart_rc" -ne 0 ] && [ "${chart_failed:-0}" -eq 0 ]; then chart_failed=1; fi   # setup failed
host_passed=$((host_passed + chart_passed))
host_failed=$((host_failed + chart_failed))
if [ "$chart_rc" -ne 0 ]; then
    echo "total: $host_passed passed, $host_failed failed"
    exit 1
fi
if $host_only; then
    echo "total: $host_passed passed, $host_failed failed"
    exit 0
fi

step "container image: built offline and run with podman (make test-image)"
set +e
make --no-print-directory test-image 2>&1 | tee "$log"
image_rc=${PIPESTATUS[0]}
set -e
image_passed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^passed;?$/) s+=$(i-1)} END{print s+0}' "$log")
image_failed=$(awk '/^test result:/{for(i=1;i<=NF;i++) if($i ~ /^failed;?$/) s+=$(i-1)} END{print s+0}' "$log")
if [ "$image_rc" -ne 0 ] && [ "$image_failed" -eq 0 ]; then image_failed=1; fi   # the image was not built
echo "image: $image_passed passed, $image_failed failed"
host_passed=$((host_passed + image_passed))
host_failed=$((host_failed + image_failed))
if [ "$image_rc" -ne 0 ]; then
    echo "total: $host_passed passed, $host_failed failed"
    exit 1
fi

step "VM rig: real LIO target over iSCSI (tests/vm/run.sh test)"
set +e
tests/vm/run.sh test 2>&1 | tee "$log"
vm_rc=${PIPESTATUS[0]}
set -e
vm_line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -1 || true)
vm_passed=$(echo "${vm_line:-0 passed}" | awk '{print $1}')
vm_failed=$(echo "${vm_line:-0 passed, 0 failed}" | awk '{print $3}')
if [ "$vm_rc" -ne 0 ] && [ "${vm_failed:-0}" -eq 0 ]; then vm_failed=1; fi   # rig did not run
echo "vm: ${vm_passed:-0} passed, ${vm_failed:-0} failed"
echo "total: $((host_passed + vm_passed)) passed, $((host_failed + vm_failed)) failed"
[ "$vm_rc" -eq 0 ]
