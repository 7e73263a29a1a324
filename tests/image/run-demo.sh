#!/usr/bin/env bash
# Builds the test image and runs its demo under QEMU: the simulator
# (tests/sim, no_std) on several simulated vCPUs inside the kernel, with the
# real #HV path (LAPIC timer on vector 28 -> kernel::handle_hv) alive, printing
# the same table as `cargo run -p sim` (see docs/simulator.md).
#
#   tests/image/run-demo.sh [SCENARIO] [VCPUS] [SEED] [STEPS]
#
# Defaults: idle-timer 4 1 200000 (about a second under TCG). Exits 0 only
# if QEMU reported a pass (status 33: no invariant violation, every VMPL0
# vector the #HV model posted taken once) and the table shows 0 violations.
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 120), QEMU (default qemu-system-x86_64).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
scenario="${1:-idle-timer}"
vcpus="${2:-4}"
seed="${3:-1}"
steps="${4:-200000}"

ensure_qemu
build_image
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$SECONDS
run_qemu "demo $scenario $vcpus $seed $steps" "$log"
check_status run-demo.sh
if ! grep -Eq '^  INVARIANT VIOLATIONS +0$' "$log"; then
    echo "run-demo.sh: no clean summary table in the output" >&2
    exit 1
fi
echo "run-demo.sh: passed in $((SECONDS - started)) s (QEMU, TCG)"
