#!/usr/bin/env bash
# Boots Debian's cloud kernel as the guest of the SVM harness: the test
# image is the SVSM + hypervisor, Linux runs under QEMU's SVM with nested
# paging, and every interrupt it takes is injected by the engine (see
# docs/testing.md, "The Linux guest").
#
#   tests/image/run-linux.sh [VCPUS [x2apic|xapic [hostile [SEED]]]]
#
# Defaults: 1 x2apic. Fetches the kernel and busybox with apt-get download
# (tests/image/linux/fetch.sh) into target/linux the first time. Exits 0
# only if the guest printed "LINUX-GUEST: PASS", the harness printed
# "linux: PASS" and QEMU reported a pass (status 33).
# Environment: CARGO_TARGET_DIR (default: <repo>/target/image), QEMU_TIMEOUT
# (seconds, default 240; the harness itself stops a hung guest after 180 s),
# QEMU (default qemu-system-x86_64).
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
timeout_s="${QEMU_TIMEOUT:-240}"
vcpus="${1:-1}"
mode="${2:-x2apic}"
extra="${*:3}"
linux="$root/target/linux"

ensure_qemu
"$here/linux/initramfs.sh" "$linux"
build_image
kernel_len=$(stat -c %s "$linux/vmlinuz")
initrd_len=$(stat -c %s "$linux/initramfs.cpio")
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
started=$SECONDS
status=0
# The staging addresses are linux_svm::setup::{KERNEL,INITRD}_STAGE. The
# machine has as many CPUs as the guest so that the firmware's ACPI tables
# list them; the harness runs every vCPU on CPU 0. The PCI serial card is
# the workload's level-triggered device (its output is discarded).
timeout --foreground -k 5 "$timeout_s" "$qemu" \
    -machine q35 -cpu max -smp "$vcpus" -m 1G -nic none -vga none ${QEMU_ACCEL:+-accel "$QEMU_ACCEL"} \
    -display none -serial stdio -monitor none -no-reboot \
    -chardev null,id=level -device pci-serial,chardev=level \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
    -device "loader,file=$linux/vmlinuz,addr=0x30000000,force-raw=on" \
    -device "loader,file=$linux/initramfs.cpio,addr=0x34000000,force-raw=on" \
    -kernel "$kernel" -append "linux $vcpus $mode $kernel_len $initrd_len $extra" \
    </dev/null | tee "$log" || status=$?
check_status run-linux.sh
if ! grep -q '^LINUX-GUEST: PASS' "$log" || ! grep -q '^linux: PASS' "$log" ||
    ! grep -q '^LINUX-GUEST: level: [0-9]* level-triggered' "$log"; then
    echo "run-linux.sh: the guest or the harness did not report a pass" >&2
    exit 1
fi
boot="$(tr -d '\r' <"$log" | sed -n 's/^LINUX-GUEST: up, .* uptime \([0-9.]*\) s$/\1/p' | head -n 1)"
echo "run-linux.sh: passed in $((SECONDS - started)) s ($vcpus vCPU(s), $mode, QEMU TCG); boot to shell ${boot} s (guest uptime at /init)"
