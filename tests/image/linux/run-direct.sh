#!/usr/bin/env bash
# Reference run: boots the Linux guest directly under QEMU (its own firmware,
# QEMU's emulated LAPIC, no harness, no engine), to compare boot time and
# interrupt counts with the harness run.
#
#   tests/image/linux/run-direct.sh [VCPUS]
#
# Exits 0 only if the guest printed "LINUX-GUEST: PASS". Environment:
# QEMU_TIMEOUT (seconds, default 300), QEMU (default qemu-system-x86_64).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
out="$root/target/linux"
vcpus="${1:-1}"
"$here/initramfs.sh" "$out"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$SECONDS
timeout --foreground -k 5 "${QEMU_TIMEOUT:-300}" "${QEMU:-qemu-system-x86_64}" \
    -machine q35 -cpu max -smp "$vcpus" -m 256M \
    -display none -serial stdio -monitor none -no-reboot \
    -chardev null,id=level -device pci-serial,chardev=level \
    -kernel "$out/vmlinuz" -initrd "$out/initramfs.cpio" \
    -append "console=ttyS0 panic=-1 quiet 8250.nr_uarts=5" </dev/null | tee "$log" || true
if ! grep -q '^LINUX-GUEST: PASS' "$log"; then
    echo "run-direct.sh: no success marker from the guest" >&2
    exit 1
fi
echo "run-direct.sh: passed in $((SECONDS - started)) s ($vcpus vCPUs, QEMU TCG, no harness)"
