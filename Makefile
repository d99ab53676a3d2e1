# csi-fencer: the two commands of the README, and their parts.
#   make demo    the failover demo against a real SCSI target in a VM
#   make test    every test: fmt, clippy, unit + property + mock-API tests, the chart, the image, then the VM rig
.PHONY: test test-host test-windows test-vm test-image image demo bench-vm bench-kube bench-acquire bench-failover fuzz lint help sim

CARGO ?= cargo

help:
	@sed -n '2,3p' Makefile | sed 's/^# *//'

## test: everything CI runs; prints "total: N passed, M failed" last.
test:
	tests/all.sh

## test-host: formatting, lints, unit, property, CLI, real-API-server and mock-API tests, the Windows build under Wine, and the Helm chart tests (no VM).
test-host:
	tests/all.sh --host-only

## test-windows: the Windows build: clippy for x86_64-pc-windows-gnu and its tests under Wine (installs mingw-w64 and Wine if missing).
test-windows:
	tests/windows/run.sh

## image: the container image, offline: a fully static (musl) release binary in an empty image, tagged localhost/csi-fencer:<version>; prints the digest (tests/image/build.sh; IMAGE=repo to name it).
image:
	tests/image/build.sh

## test-image: builds the image, then runs it: --version and crd, a privileged run over the host's /dev and /sys, the daemon against a real kube-apiserver.
test-image: image
	CSI_FENCER_IMAGE=$${IMAGE:-localhost/csi-fencer}:$$(sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -1) $(CARGO) test --test image -- --ignored

## test-vm: the in-guest tests on LIO over iSCSI; TEST=name runs the matching ones.
test-vm:
	tests/vm/run.sh test $(TEST)

## demo: boots the rig and runs the failover scenario with csi-fencer.
demo:
	tests/vm/run.sh script tests/vm/scripts/demo.sh

## bench-vm: failover latency (engine vs raw SG_IO vs sg_persist) and a 64-LUN bulk failover, in the rig.
bench-vm:
	RIG_EXTRA_LUNS=$${RIG_EXTRA_LUNS:-64} RIG_TEST_TIMEOUT=$${RIG_TEST_TIMEOUT:-1500} RIG_TIMEOUT=$${RIG_TIMEOUT:-2400} tests/vm/run.sh script tests/vm/scripts/bench.sh

## bench-kube: the daemon's watch cache against a mock API server: 100k VolumeAttachments, 10k+10k watch events, a relist; peak RSS and CPU (ROUNDS=3); then bench-acquire.
bench-kube:
	tests/bench/kube-bench.sh
	$(CARGO) run --release --example acquire_bench

## bench-acquire: what an acquire asks the API server at 1 000 and 100 000 VolumeAttachments (GETs now, the list it used to make), on the mock and on a real kube-apiserver (REAL_SIZES=1000,10000), and attached -> first PR OUT end to end on the real one; medians side by side (ROUNDS=5).
bench-acquire:
	$(CARGO) run --release --example acquire_bench

## bench-failover: the failover timeline against a real kube-apiserver: node-a's last kubelet Lease renewal -> taint -> pods gone -> node-b attached -> node-b holds, with a kube-controller-manager double acting with its default delays (ROUNDS=3; POD_GC=now: pods deleted at the taint).
bench-failover:
	$(CARGO) run --release --example failover_bench

## sim: random schedules of the deterministic SAN simulation (every capability profile, faults, crashes) for SIM_SECONDS (default 300) or SIM_SCHEDULES of them, whichever ends first; ends "sim: N schedules, M violations". SIM_SEED=N replays one with its trace.
SIM_SECONDS ?= 300
sim:
	SIM_SECONDS=$(SIM_SECONDS) SIM_SCHEDULES=$(SIM_SCHEDULES) $(CARGO) run --release --example sim

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

## fuzz: every fuzz target for FUZZ_SECONDS (default 60) each; installs cargo-fuzz.
FUZZ_SECONDS ?= 60
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd fuzz && for t in $$(RUSTC_BOOTSTRAP=1 $(CARGO) fuzz list); do \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) || exit 1; done
