# Shared by run-tests.sh and run-demo.sh (sourced, not run): installs QEMU when
# missing, builds the image, and runs it under QEMU with a timeout.
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 120), QEMU (default qemu-system-x86_64), QEMU_SMP (CPUs,
# default 1).

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
qemu="${QEMU:-qemu-system-x86_64}"
timeout_s="${QEMU_TIMEOUT:-120}"
target=x86_64-unknown-none

# Installs qemu-system-x86 with apt-get when the QEMU binary is missing.
ensure_qemu() {
    if ! command -v "$qemu" >/dev/null 2>&1; then
        echo "$(basename "$0"): $qemu not found, installing qemu-system-x86" >&2
        local sudo=""
        if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
        export DEBIAN_FRONTEND=noninteractive
        if ! $sudo apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null; then
            $sudo apt-get update >/dev/null
            $sudo apt-get install -y --no-install-recommends qemu-system-x86 >/dev/null
        fi
    fi
    "$qemu" --version | head -n 1
}

# Builds the kernel; sets $kernel to its path.
build_image() {
    cd "$root"
    # The target comes from rust-toolchain.toml; an older rustup may not add it itself.
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
        rustup target add "$target"
    fi
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/image}"
    cargo build -p image --release --target "$target"
    kernel="$CARGO_TARGET_DIR/$target/release/image"
}

# run_qemu CMDLINE LOG: boots the kernel with CMDLINE (`-append`), copies the
# serial output to stdout and LOG, and sets $status to QEMU's exit status
# (33 = pass, 3 = fail, 124/137 = timeout, 0 = triple fault or reset).
run_qemu() {
    status=0
    # -cpu max: the local APIC timer and the TSC are what the image needs; TCG
    # here (no KVM). -no-reboot: a triple fault ends the run instead of looping.
    timeout --foreground -k 5 "$timeout_s" "$qemu" \
        -machine q35 -cpu max -m 128M -smp "${QEMU_SMP:-1}" \
        -display none -serial stdio -monitor none -no-reboot \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
        -kernel "$kernel" -append "$1" </dev/null | tee "$2" || status=$?
    # With `set -o pipefail` the status is QEMU's (tee succeeds).
}

# check_status NAME: exits 1 with a message unless $status is 33.
check_status() {
    if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
        echo "$1: QEMU timed out after ${timeout_s}s" >&2
        exit 1
    fi
    if [ "$status" -eq 0 ]; then
        echo "$1: QEMU stopped without a verdict (triple fault or reset?)" >&2
        exit 1
    fi
    if [ "$status" -ne 33 ]; then
        echo "$1: image failed (QEMU exit status $status)" >&2
        exit 1
    fi
}
