//! The few privileged instructions the test kernel needs, each behind a safe wrapper.
//!
//! The kernel runs alone at CPL 0 on one CPU, so these instructions cannot break
//! another program's invariants; what each one may break for *this* kernel is noted.

use core::arch::asm;

/// Writes a byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: the kernel only addresses the legacy devices it drives (COM1, the 8259
    // PICs, the PIT, port 0x61 and isa-debug-exit); no port touches memory.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Writes a double word to an I/O port.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`; used for isa-debug-exit only.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`; reading these ports has no memory side effects.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: only architectural MSRs that exist on every x86-64 CPU are read
    // (IA32_APIC_BASE); reading has no side effects.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC only reads a counter (CR4.TSD is clear at CPL 0 anyway).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Masks maskable interrupts (RFLAGS.IF = 0).
pub fn cli() {
    // SAFETY: only delays interrupt delivery. Not `nomem`: it orders memory accesses
    // against the handlers, like a compiler fence.
    unsafe { asm!("cli", options(nostack, preserves_flags)) };
}

/// Unmasks maskable interrupts (RFLAGS.IF = 1); a pending one is taken after the
/// next instruction (Intel SDM vol. 3A §6.8.3, STI interrupt shadow).
pub fn sti() {
    // SAFETY: the IDT is loaded before anything calls this, and every handler the
    // kernel can receive is installed (others raise #NP, which is reported).
    unsafe { asm!("sti", options(nostack, preserves_flags)) };
}

/// Whether RFLAGS.IF is set.
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: pushes and pops RFLAGS on the current stack; no other effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Raises vector 28 (#HV) as a software interrupt (`int 28`), regardless of IF.
pub fn int28() {
    // SAFETY: vector 28 is installed and its handler saves every register it uses.
    // Not `nomem`: the handler reads and writes the doorbell page.
    unsafe { asm!("int 28") };
}

/// Reads CR2 (the faulting address of the last #PF).
pub fn cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects.
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// Spin-loop hint.
pub fn pause() {
    core::hint::spin_loop();
}

/// Stops the CPU for good with interrupts masked.
pub fn halt_forever() -> ! {
    loop {
        cli();
        // SAFETY: HLT with IF = 0 only waits for NMI/SMI/reset.
        unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
    }
}
