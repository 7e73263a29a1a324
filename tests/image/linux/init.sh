#!/bin/busybox sh
# /init of the Linux guest's initramfs (tests/image/linux/initramfs.sh puts it
# there, with Debian's static busybox as /bin/busybox). It reports the APIC
# mode and /proc/interrupts, runs a timer and a cross-CPU (IPI) workload,
# prints the success marker and powers off through ACPI (reboot(POWER_OFF):
# Debian's cloud kernel has no /dev/port to reach isa-debug-exit). The harness
# traps the ACPI sleep-enable write and reports its verdict; the run scripts
# require the marker line "LINUX-GUEST: PASS" on the serial console.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp

fail() {
    echo "LINUX-GUEST: FAIL $*"
    poweroff -f
}

cpus=$(nproc)
echo "LINUX-GUEST: up, $cpus CPU(s), uptime $(cut -d' ' -f1 /proc/uptime) s"
# Linux prints "Switched APIC routing to ... x2apic" / "x2apic enabled" when it
# runs the x2APIC driver.
if dmesg | grep -qi 'APIC routing to.*x2apic\|x2apic enabled'; then
    echo "LINUX-GUEST: APIC mode x2apic"
else
    echo "LINUX-GUEST: APIC mode xapic"
fi
dmesg | grep -i 'x2apic\|apic routing\|tsc-deadline\|TSC deadline\|clocksource: Switched' \
    | sed 's/^/LINUX-GUEST: dmesg: /'
cat /proc/interrupts

# Timer: 20 sleeps of 50 ms (hrtimer expiries through the local APIC timer).
t0=$(cut -d' ' -f1 /proc/uptime)
i=0
while [ $i -lt 20 ]; do usleep 50000; i=$((i + 1)); done
t1=$(cut -d' ' -f1 /proc/uptime)
echo "LINUX-GUEST: timer: 20 x 50 ms slept, uptime $t0 -> $t1"

# IPIs: a ping-pong over two FIFOs between a shell pinned to CPU 0 and one
# pinned to the last CPU; each wakeup of the sleeping peer is a reschedule IPI.
if [ "$cpus" -gt 1 ]; then
    rounds=${PINGPONG_ROUNDS:-200}
    last=$((cpus - 1))
    mkfifo /tmp/ping /tmp/pong
    taskset -p -c 0 $$ >/dev/null || fail "taskset cpu 0"
    taskset -c "$last" sh -c 'exec 3</tmp/ping 4>/tmp/pong; while read -r x <&3; do echo "$x" >&4; done' &
    exec 3>/tmp/ping 4</tmp/pong
    i=0
    while [ $i -lt "$rounds" ]; do
        echo "$i" >&3
        read -r y <&4 || fail "ping-pong: no answer"
        [ "$y" = "$i" ] || fail "ping-pong: sent $i got $y"
        i=$((i + 1))
    done
    exec 3>&- 4<&-
    wait
    echo "LINUX-GUEST: ipi: $rounds ping-pong rounds between CPU 0 and CPU $last"
    # Function-call IPIs to every CPU.
    sync
    echo 3 >/proc/sys/vm/drop_caches
    # NMIs: sysrq "l" makes CPU 0 send an NMI IPI to every other CPU, whose
    # NMI handler prints its backtrace.
    nmis() { awk '$1 == "NMI:" { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print n }' /proc/interrupts; }
    before=$(nmis)
    echo l >/proc/sysrq-trigger
    sleep 1
    after=$(nmis)
    [ "$after" -ge $((before + cpus - 1)) ] || fail "nmi: $before -> $after NMIs"
    echo "LINUX-GUEST: nmi: $((after - before)) NMIs (sysrq backtrace of all CPUs)"
fi

# A level-triggered line: QEMU's PCI serial card (-device pci-serial, driven
# by the built-in 8250_pci as ttyS4 with 8250.nr_uarts=5 on the command
# line) interrupts through PCI INTx, an IOAPIC pin Linux programs
# level-triggered ("fasteoi"). Writing to it takes transmit interrupts.
if grep -q '^4: uart:16550A' /proc/tty/driver/serial 2>/dev/null; then
    level() { awk '/fasteoi/ && /ttyS/ { n = 0; for (i = 2; i < NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print n }' /proc/interrupts; }
    # Keep the port open: its line leaves /proc/interrupts when it closes.
    exec 5>/dev/ttyS4 || fail "level: open ttyS4"
    i=0
    while [ $i -lt 50 ]; do
        echo "level-triggered line check $i: 0123456789abcdefghijklmnopqrstuvwxyz" >&5 ||
            fail "level: write to ttyS4"
        i=$((i + 1))
    done
    sleep 1
    n=$(level)
    grep 'fasteoi.*ttyS' /proc/interrupts
    exec 5>&-
    [ "${n:-0}" -gt 0 ] || fail "level: no interrupt from the PCI serial card"
    echo "LINUX-GUEST: level: $n level-triggered interrupts from the PCI serial card"
else
    echo "LINUX-GUEST: level: no PCI serial card (skipped)"
fi

cat /proc/interrupts
echo "LINUX-GUEST: uptime $(cut -d' ' -f1 /proc/uptime) s"
echo "LINUX-GUEST: PASS"
poweroff -f
