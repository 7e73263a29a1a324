# Every target installs what it needs (the pinned toolchain and the
# x86_64-unknown-none target come from rust-toolchain.toml through rustup).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARGO ?= cargo
NO_STD_TARGET := x86_64-unknown-none
LIB_CRATES := -p altinj-vmsa -p altinj-doorbell -p altinj-apic -p altinj-kernel
NIGHTLY ?= nightly

.PHONY: all no-std-target build test image-test svm-test linux-test soak soak-seeds lint fmt doc bench bench-instr miri run sim fuzz loom msrv example package clean linux-guest linux-direct

all: build test

# The pinned toolchain's no_std target. rustup installs it with the toolchain
# from rust-toolchain.toml, but not when that toolchain was already installed
# without it (seen on this project's machines).
no-std-target:
	rustup target add $(NO_STD_TARGET) >/dev/null 2>&1 || true

build: no-std-target
	$(CARGO) build --workspace --all-targets
	$(CARGO) build --target $(NO_STD_TARGET) $(LIB_CRATES)
	$(CARGO) build --target $(NO_STD_TARGET) -p sim --no-default-features

test: no-std-target
	$(CARGO) test --workspace
	$(MAKE) loom
	$(MAKE) image-test
	$(MAKE) svm-test
	$(MAKE) linux-test
	$(MAKE) soak

# Every simulator scenario at 64 vCPUs for 1,000,000 steps: any invariant
# violation fails (well under a second each in release).
SOAK_SCENARIOS := idle-timer ipi-storm device-level boot hostile-hv hostile-guest deregister \
  reinject-stall tsc-deadline handback-due level-edge handback-fail recreate apic-disable
soak:
	$(CARGO) build --release -p sim
	for s in $(SOAK_SCENARIOS); do \
	  $(CARGO) run --release -q -p sim -- --scenario $$s --vcpus 64 --seed 1 --steps 1000000 \
	    | grep -E "^  (scenario|wall time|world switches|INVARIANT)" || exit 1; \
	done

# Every scenario over SOAK_SEEDS seeds (not part of `make test`: about ten
# minutes on two cores); prints per scenario the failing seeds and the
# violation kinds. SOAK_JOBS simulations run at once.
SOAK_SEEDS ?= 200
SOAK_JOBS ?= 2
soak-seeds:
	JOBS=$(SOAK_JOBS) tests/sim/soak-seeds.sh $(SOAK_SEEDS) 64 1000000 $(SOAK_SCENARIOS)

# The in-kernel tests: the crates' unit tests and the #HV tests, booted under QEMU.
image-test:
	tests/image/run-tests.sh
	tests/image/run-demo.sh idle-timer 4 1 50000

# Real guests on QEMU's SVM under the engine: every program over SVM_SEEDS
# seeds on 4 vCPUs; fails on any ledger mismatch or hang (docs/testing.md).
SVM_SEEDS ?= 20
svm-test:
	tests/image/run-svm.sh all $(SVM_SEEDS) 4

# The Linux guest's parts: Debian's cloud kernel and busybox-static fetched with
# apt-get download, unpacked with dpkg -x into target/linux (never installed),
# and the initramfs built from tests/image/linux/init.sh.
linux-guest:
	tests/image/linux/initramfs.sh

# The same guest booted directly by QEMU (no harness): the reference run.
linux-direct:
	tests/image/linux/run-direct.sh $(VCPUS)

# Debian's Linux as the guest of the SVM harness, every interrupt injected by
# the engine: one vCPU, four vCPUs (x2APIC as firmware leaves it; xAPIC with
# every APIC access a decoded MMIO trap), and four vCPUs under the hostile
# host. Fails unless the guest reports success, the harness's ledger balances
# and QEMU exits with the pass status (about a minute; docs/testing.md).
linux-test: linux-guest
	tests/image/run-linux.sh 1 x2apic
	tests/image/run-linux.sh 4 x2apic
	tests/image/run-linux.sh 4 xapic-mmio
	tests/image/run-linux.sh 4 x2apic hostile 1

# Model checks of the lock-free doorbell and mailbox code (spec §3) and of
# the engine's sequencing around them (kernel/tests/loom_engine.rs).
loom:
	CARGO_TARGET_DIR=target/loom \
	  $(CARGO) test --release -p altinj-doorbell --features loom --test loom
	CARGO_TARGET_DIR=target/loom \
	  $(CARGO) test --release -p altinj-kernel --features loom --test loom
	CARGO_TARGET_DIR=target/loom \
	  $(CARGO) test --release -p altinj-kernel --features loom --test loom_engine

# The library crates on the declared minimum Rust version (workspace
# rust-version), for x86_64-unknown-none as an SVSM builds them.
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
msrv:
	rustup toolchain install $(MSRV) --profile minimal --target $(NO_STD_TARGET) >/dev/null
	CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) build --target $(NO_STD_TARGET) $(LIB_CRATES)

# The example SVSM skeleton (its own workspace, docs/integration.md's code)
# built as an embedder builds it: MSRV toolchain, x86_64-unknown-none, no
# warnings. Its lock file may hold only the four crates (names read from
# their manifests), their real dependencies and the example itself; the
# guide's code blocks must be the example's code.
EXAMPLE := examples/svsm-skeleton
EXAMPLE_DEPS := bitfield-struct bitflags zerocopy zerocopy-derive log proc-macro2 quote syn unicode-ident svsm-skeleton
example:
	rustup toolchain install $(MSRV) --profile minimal --target $(NO_STD_TARGET) >/dev/null
	cd $(EXAMPLE) && CARGO_TARGET_DIR=$(CURDIR)/target/example RUSTFLAGS="-D warnings" \
	  $(CARGO) +$(MSRV) build --target $(NO_STD_TARGET)
	allowed="$$(sed -n 's/^name = "\(.*\)"/\1/p' vmsa/Cargo.toml doorbell/Cargo.toml apic/Cargo.toml kernel/Cargo.toml) $(EXAMPLE_DEPS)"; \
	extra=$$(sed -n 's/^name = "\(.*\)"/\1/p' $(EXAMPLE)/Cargo.lock | grep -vxF $$(printf -- '-e %s ' $$allowed) || true); \
	if [ -n "$$extra" ]; then echo "example: unexpected packages in $(EXAMPLE)/Cargo.lock:" $$extra; exit 1; fi; \
	echo "example: built; Cargo.lock holds only:" $$(sed -n 's/^name = "\(.*\)"/\1/p' $(EXAMPLE)/Cargo.lock)
	# Every line of docs/integration.md's Rust blocks is a line of the example.
	drift=$$(awk '/^```rust/{f=1;next} /^```/{f=0} f && NF' docs/integration.md | \
	  grep -vxF -f <(cat $(EXAMPLE)/src/*.rs) || true); \
	if [ -n "$$drift" ]; then echo "example: docs/integration.md code not in $(EXAMPLE):"; echo "$$drift"; exit 1; fi

# The publishable crates package and build from their packaged sources.
PUBLISHED := $(LIB_CRATES) -p altinj-ktest
package:
	CARGO_TARGET_DIR=target/package $(CARGO) package --allow-dirty $(PUBLISHED)

lint: no-std-target
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(NO_STD_TARGET) $(LIB_CRATES) -- -D warnings
	$(CARGO) clippy --target $(NO_STD_TARGET) $(LIB_CRATES) --features ktests -- -D warnings
	$(CARGO) clippy --target $(NO_STD_TARGET) -p image -- -D warnings
	$(CARGO) clippy --target $(NO_STD_TARGET) -p sim --no-default-features -- -D warnings

fmt:
	$(CARGO) fmt --all

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

bench:
	$(CARGO) bench --workspace

# Instructions per operation of the hot paths under callgrind, against the
# goals of issue 14 (kernel/benches/instr.rs; fails when a goal is missed).
bench-instr:
	tests/perf/bench-instr.sh

# Unit tests of the library crates under Miri (nightly component, installed on demand).
miri:
	rustup component add --toolchain $(NIGHTLY) miri rust-src >/dev/null
	MIRIFLAGS="-Zmiri-strict-provenance" $(CARGO) +$(NIGHTLY) miri test $(LIB_CRATES) --lib

# Each cargo-fuzz target under tests/fuzz for FUZZ_SECONDS (nightly; cargo-fuzz installed on demand).
FUZZ_SECONDS ?= 60
fuzz:
	rustup toolchain install $(NIGHTLY) --profile minimal >/dev/null
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for t in $$($(CARGO) +$(NIGHTLY) fuzz list --fuzz-dir tests/fuzz); do \
	  CARGO_TARGET_DIR=target/fuzz $(CARGO) +$(NIGHTLY) fuzz run --fuzz-dir tests/fuzz $$t -- \
	    -max_total_time=$(FUZZ_SECONDS) || exit 1; \
	done

SCENARIO ?= idle-timer
VCPUS ?= 4
SEED ?= 1
STEPS ?= 200000
# The demo: the simulator's models and the real engine inside the bootable
# image under QEMU, with the real #HV path (vector 28) alive.
# Then the SVM harness: PROGRAM (timer ipi device tpr nested, or all)
# with real guests, its table and ledger verdict.
PROGRAM ?= all
# GUEST=linux instead boots Debian's Linux under the SVM harness (VCPUS,
# LINUX_MODE x2apic | xapic | xapic-mmio) and prints its table.
GUEST ?=
LINUX_MODE ?= x2apic
run:
ifeq ($(GUEST),linux)
	tests/image/run-linux.sh $(VCPUS) $(LINUX_MODE)
else
	tests/image/run-demo.sh $(SCENARIO) $(VCPUS) $(SEED) $(STEPS)
	if [ "$(PROGRAM)" = all ]; then tests/image/run-svm.sh all $(SEED) $(VCPUS); \
	else tests/image/run-svm.sh $(PROGRAM) $(VCPUS) $(SEED); fi
endif

# The same scenario in the host simulator (adds --trace FILE and long runs).
sim:
	$(CARGO) run --release -p sim -- --scenario $(SCENARIO) --vcpus $(VCPUS) --seed $(SEED) --steps $(STEPS)

clean:
	$(CARGO) clean
