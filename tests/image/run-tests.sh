#!/usr/bin/env bash
# Builds the bootable test image and runs its in-kernel tests under QEMU (see
# docs/testing.md).
#
#   tests/image/run-tests.sh [FILTER]
#
# FILTER selects the tests whose name contains it (like `cargo test FILTER`).
# Exits 0 only if the image reported a pass: QEMU status 33 (isa-debug-exit
# value 0x10) and a final "N passed, 0 failed" line with N > 0.
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 120), QEMU (default qemu-system-x86_64).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
filter="${1:-}"
case "$filter" in
    demo | demo\ *) echo "run-tests.sh: a filter starting with 'demo' selects the demo; use run-demo.sh" >&2; exit 2 ;;
    svm | svm\ *) echo "run-tests.sh: a filter starting with 'svm' selects the SVM harness; use run-svm.sh" >&2; exit 2 ;;
esac

ensure_qemu
build_image
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
run_qemu "$filter" "$log"
check_status run-tests.sh

summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)"
if ! [[ "$summary" =~ ^([0-9]+)\ passed,\ 0\ failed$ ]] || [ "${BASH_REMATCH[1]}" -eq 0 ]; then
    echo "run-tests.sh: no passing tests reported (summary: '${summary}')" >&2
    exit 1
fi
echo "run-tests.sh: $summary"
