#!/usr/bin/env bash
# Builds the bootable test image and runs it under QEMU (see docs/testing.md).
#
#   tests/image/run-tests.sh [FILTER]
#
# FILTER selects the tests whose name contains it (like `cargo test FILTER`).
# Exits 0 only if the image reported a pass: QEMU status 33 (isa-debug-exit
# value 0x10) and a final "N passed, 0 failed" line with N > 0.
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 120), QEMU (default qemu-system-x86_64).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
filter="${1:-}"
qemu="${QEMU:-qemu-system-x86_64}"
timeout_s="${QEMU_TIMEOUT:-120}"
target=x86_64-unknown-none

if ! command -v "$qemu" >/dev/null 2>&1; then
    echo "run-tests.sh: $qemu not found, installing qemu-system-x86" >&2
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null; then
        $sudo apt-get update >/dev/null
        $sudo apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null
    fi
fi
"$qemu" --version | head -n 1

cd "$root"
# The target comes from rust-toolchain.toml; an older rustup may not add it itself.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
    rustup target add "$target"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/image}"
cargo build -p image --release --target "$target"
kernel="$CARGO_TARGET_DIR/$target/release/image"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
# -cpu max: the local APIC timer and the TSC are what the tests need; TCG here
# (no KVM). -no-reboot: a triple fault ends the run instead of looping.
timeout --foreground -k 5 "$timeout_s" "$qemu" \
    -machine q35 -cpu max -m 128M \
    -display none -serial stdio -monitor none -no-reboot \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -kernel "$kernel" -append "$filter" </dev/null | tee "$log" || status=$?
# With `set -o pipefail` the status is QEMU's (tee succeeds).

summary="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)"
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "run-tests.sh: QEMU timed out after ${timeout_s}s" >&2
    exit 1
fi
if [ "$status" -eq 0 ]; then
    echo "run-tests.sh: QEMU stopped without a test verdict (triple fault or reset?)" >&2
    exit 1
fi
if [ "$status" -ne 33 ]; then
    echo "run-tests.sh: image failed (QEMU exit status $status)" >&2
    exit 1
fi
if ! [[ "$summary" =~ ^([0-9]+)\ passed,\ 0\ failed$ ]] || [ "${BASH_REMATCH[1]}" -eq 0 ]; then
    echo "run-tests.sh: no passing tests reported (summary: '${summary}')" >&2
    exit 1
fi
echo "run-tests.sh: $summary"
