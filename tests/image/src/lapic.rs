//! The emulated machine's real local APIC, in xAPIC mode (MMIO at 0xFEE0_0000),
//! used by the hypervisor model to raise #HV asynchronously with its timer
//! (Intel SDM vol. 3A §11.4-§11.5), and the legacy 8259 PICs, which are masked.

use crate::cpu;

/// Physical (= virtual) base of the xAPIC registers, mapped uncached by `boot`.
const BASE: usize = 0xFEE0_0000;
/// IA32_APIC_BASE MSR: bit 10 EXTD (x2APIC), bit 11 EN (SDM vol. 3A §11.4.4).
const IA32_APIC_BASE: u32 = 0x1B;

const REG_EOI: usize = 0xB0;
const REG_SVR: usize = 0xF0;
const REG_ISR: usize = 0x100;
const REG_IRR: usize = 0x200;
const REG_LVT_TIMER: usize = 0x320;
const REG_LVT_LINT0: usize = 0x350;
const REG_LVT_LINT1: usize = 0x360;
const REG_LVT_ERROR: usize = 0x370;
const REG_TIMER_INITIAL: usize = 0x380;
const REG_TIMER_CURRENT: usize = 0x390;
const REG_TIMER_DIVIDE: usize = 0x3E0;

const LVT_MASKED: u32 = 1 << 16;
const LVT_PERIODIC: u32 = 1 << 17;

fn read(reg: usize) -> u32 {
    // SAFETY: BASE..BASE+4 KiB is the xAPIC register page, identity-mapped UC by
    // `boot`; `reg` is one of the aligned register offsets above.
    unsafe { core::ptr::read_volatile((BASE | reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as for `read`; the registers written only steer interrupt delivery to
    // this kernel's own handlers.
    unsafe { core::ptr::write_volatile((BASE | reg) as *mut u32, value) }
}

/// Masks both 8259 PICs (SeaBIOS leaves the PIT on IRQ0 at vector 8) and brings the
/// local APIC up in xAPIC mode: software-enabled, spurious vector 0xFF, LINT0/LINT1,
/// error and timer LVTs masked.
///
/// Returns a message when the APIC is not in xAPIC mode at 0xFEE0_0000.
pub fn init() -> Result<(), &'static str> {
    cpu::outb(0x21, 0xFF);
    cpu::outb(0xA1, 0xFF);
    let apic_base = cpu::rdmsr(IA32_APIC_BASE);
    if apic_base & (1 << 11) == 0 || apic_base & (1 << 10) != 0 {
        return Err("local APIC is not enabled in xAPIC mode");
    }
    if apic_base & 0xF_FFFF_F000 != BASE as u64 {
        return Err("local APIC is not at 0xFEE00000");
    }
    write(REG_LVT_LINT0, LVT_MASKED);
    write(REG_LVT_LINT1, LVT_MASKED);
    write(REG_LVT_ERROR, LVT_MASKED);
    stop_timer();
    write(REG_SVR, (1 << 8) | u32::from(crate::idt::SPURIOUS_VECTOR));
    Ok(())
}

/// Arms the LVT timer on `vector`: divide by 1, `count` ticks, one-shot or periodic
/// (SDM vol. 3A §11.5.4).
pub fn start_timer(vector: u8, count: u32, periodic: bool) {
    write(REG_TIMER_DIVIDE, 0b1011);
    let mode = if periodic { LVT_PERIODIC } else { 0 };
    write(REG_LVT_TIMER, mode | u32::from(vector));
    write(REG_TIMER_INITIAL, count);
}

/// Stops and masks the timer.
pub fn stop_timer() {
    write(REG_TIMER_INITIAL, 0);
    write(REG_LVT_TIMER, LVT_MASKED);
}

/// The timer's current count (0 once a one-shot expired).
pub fn timer_current() -> u32 {
    read(REG_TIMER_CURRENT)
}

fn vector_bit(base: usize, vector: u8) -> bool {
    // Vector v is bit v % 32 of the register at base + 0x10 * (v / 32).
    let reg = base | (usize::from(vector >> 5) << 4);
    read(reg) & (1 << (vector & 31)) != 0
}

/// Whether `vector` is in service (ISR), i.e. was delivered by the APIC.
pub fn in_service(vector: u8) -> bool {
    vector_bit(REG_ISR, vector)
}

/// Whether `vector` is pending (IRR).
pub fn pending(vector: u8) -> bool {
    vector_bit(REG_IRR, vector)
}

/// Signals end of interrupt for the highest in-service vector.
pub fn eoi() {
    write(REG_EOI, 0);
}

const REG_ICR_LOW: usize = 0x300;

/// Sends fixed `vector` to this CPU (ICR destination shorthand "self",
/// SDM vol. 3A §11.6.1).
pub fn self_ipi(vector: u8) {
    write(REG_ICR_LOW, (0b01 << 18) | u32::from(vector));
}

const REG_ID: usize = 0x20;
const REG_ICR_HIGH: usize = 0x310;

/// This CPU's local APIC ID (xAPIC ID register bits 31:24).
pub fn id() -> u32 {
    read(REG_ID) >> 24
}

/// Sends `icr_low` (vector, delivery mode, shorthand) to the CPU with APIC
/// ID `dest` (SDM vol. 3A §11.6.1: ICR high first; the low write sends).
pub fn send_ipi(dest: u32, icr_low: u32) {
    write(REG_ICR_HIGH, dest << 24);
    write(REG_ICR_LOW, icr_low);
}

const REG_TMR: usize = 0x180;

/// Whether the APIC accepted `vector` as level-triggered (TMR, SDM vol. 3A
/// §11.8.4): the IOAPIC line stays asserted until this vector's EOI.
pub fn level_triggered(vector: u8) -> bool {
    vector_bit(REG_TMR, vector)
}

const REG_LDR: usize = 0xD0;
const REG_DFR: usize = 0xE0;

/// Puts this APIC in the flat logical model with logical ID bit `bit`
/// (SDM vol. 3A §11.6.2.2), so that an IOAPIC entry in logical mode that
/// names that bit reaches this CPU.
pub fn set_flat_logical_id(bit: u8) {
    write(REG_DFR, 0xFFFF_FFFF);
    write(REG_LDR, 1u32.checked_shl(u32::from(bit) + 24).unwrap_or(0));
}
