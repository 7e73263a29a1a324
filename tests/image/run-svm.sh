#!/usr/bin/env bash
# Builds the test image and runs the SVM harness under QEMU: real guests
# under the engine on QEMU's SVM (see docs/testing.md, "The SVM harness").
#
#   tests/image/run-svm.sh PROGRAM [VCPUS [SEED [ROUNDS [broken]]]]
#   tests/image/run-svm.sh all [SEEDS [VCPUS]]
#
# PROGRAM is timer, ipi, device, tpr or nested; `all` runs every program
# over seeds 1..SEEDS (default 3). `broken` disables the engine's recall
# (test-only switch) to show the ledger failing. Exits 0 only if QEMU
# reported a pass (status 33) and every run printed its PASS verdict.
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 120), QEMU (default qemu-system-x86_64), QEMU_SMP (default 5).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
args="${*:-all}"
# One CPU per vCPU plus the BSP, which plays the devices; QEMU_SMP=1 runs
# every vCPU round-robin on one CPU instead.
export QEMU_SMP="${QEMU_SMP:-5}"

ensure_qemu
build_image
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$SECONDS
run_qemu "svm $args" "$log"
check_status run-svm.sh
if grep -Eq '^svm: .* FAIL$' "$log" || ! grep -Eq '^svm: .* PASS$' "$log"; then
    echo "run-svm.sh: a run failed its ledger verdict" >&2
    exit 1
fi
echo "run-svm.sh: passed in $((SECONDS - started)) s (QEMU, TCG)"
