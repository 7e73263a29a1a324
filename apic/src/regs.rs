//! Register numbers and layouts (Intel SDM vol. 3A §11.12.1.2 x2APIC MSR map,
//! §11.4.1 xAPIC MMIO map). Register layouts use `bitfield-struct`.

use bitfield_struct::bitfield;

/// IA32_APIC_BASE MSR.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE MSR (TSC-deadline timer mode).
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// First and last MSR of the x2APIC range; MSR = base + (xAPIC offset >> 4).
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last MSR of the x2APIC range.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;

/// x2APIC ID (RO, 32 bits).
pub const MSR_ID: u32 = 0x802;
/// Version (RO).
pub const MSR_VERSION: u32 = 0x803;
/// Task priority (RW).
pub const MSR_TPR: u32 = 0x808;
/// Processor priority (RO).
pub const MSR_PPR: u32 = 0x80A;
/// EOI (WO; only 0 may be written).
pub const MSR_EOI: u32 = 0x80B;
/// Logical destination (RO in x2APIC: derived from the ID).
pub const MSR_LDR: u32 = 0x80D;
/// Spurious-interrupt vector register (RW).
pub const MSR_SVR: u32 = 0x80F;
/// ISR bits 31:0; ISR word `n` is `MSR_ISR0 + n` (RO).
pub const MSR_ISR0: u32 = 0x810;
/// TMR bits 31:0; TMR word `n` is `MSR_TMR0 + n` (RO).
pub const MSR_TMR0: u32 = 0x818;
/// IRR bits 31:0; IRR word `n` is `MSR_IRR0 + n` (RO).
pub const MSR_IRR0: u32 = 0x820;
/// Error status (RW; only 0 may be written).
pub const MSR_ESR: u32 = 0x828;
/// LVT corrected machine-check interrupt.
pub const MSR_LVT_CMCI: u32 = 0x82F;
/// Interrupt command register (64-bit; destination in 63:32).
pub const MSR_ICR: u32 = 0x830;
/// LVT timer.
pub const MSR_LVT_TIMER: u32 = 0x832;
/// LVT thermal sensor.
pub const MSR_LVT_THERMAL: u32 = 0x833;
/// LVT performance-monitoring counters.
pub const MSR_LVT_PMC: u32 = 0x834;
/// LVT LINT0.
pub const MSR_LVT_LINT0: u32 = 0x835;
/// LVT LINT1.
pub const MSR_LVT_LINT1: u32 = 0x836;
/// LVT error.
pub const MSR_LVT_ERROR: u32 = 0x837;
/// Timer initial count (RW).
pub const MSR_TIMER_INITIAL: u32 = 0x838;
/// Timer current count (RO).
pub const MSR_TIMER_CURRENT: u32 = 0x839;
/// Timer divide configuration (RW).
pub const MSR_TIMER_DIVIDE: u32 = 0x83E;
/// SELF_IPI (WO, x2APIC only).
pub const MSR_SELF_IPI: u32 = 0x83F;

/// xAPIC MMIO offset of the ID register (ID in bits 31:24).
pub const XAPIC_ID: u32 = 0x20;
/// xAPIC version.
pub const XAPIC_VERSION: u32 = 0x30;
/// xAPIC task priority.
pub const XAPIC_TPR: u32 = 0x80;
/// xAPIC arbitration priority (reads 0 here, see `read_mmio`).
pub const XAPIC_APR: u32 = 0x90;
/// xAPIC processor priority.
pub const XAPIC_PPR: u32 = 0xA0;
/// xAPIC EOI.
pub const XAPIC_EOI: u32 = 0xB0;
/// xAPIC logical destination (logical ID in bits 31:24).
pub const XAPIC_LDR: u32 = 0xD0;
/// xAPIC destination format (model in bits 31:28).
pub const XAPIC_DFR: u32 = 0xE0;
/// xAPIC spurious-interrupt vector register.
pub const XAPIC_SVR: u32 = 0xF0;
/// xAPIC ISR word 0 (word `n` at `+ 0x10 * n`).
pub const XAPIC_ISR0: u32 = 0x100;
/// xAPIC TMR word 0.
pub const XAPIC_TMR0: u32 = 0x180;
/// xAPIC IRR word 0.
pub const XAPIC_IRR0: u32 = 0x200;
/// xAPIC error status.
pub const XAPIC_ESR: u32 = 0x280;
/// xAPIC LVT CMCI.
pub const XAPIC_LVT_CMCI: u32 = 0x2F0;
/// xAPIC ICR low (writing it sends).
pub const XAPIC_ICR_LOW: u32 = 0x300;
/// xAPIC ICR high (destination in bits 31:24).
pub const XAPIC_ICR_HIGH: u32 = 0x310;
/// xAPIC LVT timer.
pub const XAPIC_LVT_TIMER: u32 = 0x320;
/// xAPIC LVT thermal.
pub const XAPIC_LVT_THERMAL: u32 = 0x330;
/// xAPIC LVT performance counters.
pub const XAPIC_LVT_PMC: u32 = 0x340;
/// xAPIC LVT LINT0.
pub const XAPIC_LVT_LINT0: u32 = 0x350;
/// xAPIC LVT LINT1.
pub const XAPIC_LVT_LINT1: u32 = 0x360;
/// xAPIC LVT error.
pub const XAPIC_LVT_ERROR: u32 = 0x370;
/// xAPIC timer initial count.
pub const XAPIC_TIMER_INITIAL: u32 = 0x380;
/// xAPIC timer current count.
pub const XAPIC_TIMER_CURRENT: u32 = 0x390;
/// xAPIC timer divide configuration.
pub const XAPIC_TIMER_DIVIDE: u32 = 0x3E0;

const _: () = assert!(X2APIC_MSR_BASE + (XAPIC_ICR_LOW >> 4) == MSR_ICR);
const _: () = assert!(X2APIC_MSR_BASE + (XAPIC_LVT_ERROR >> 4) == MSR_LVT_ERROR);
const _: () = assert!(X2APIC_MSR_BASE + (XAPIC_TIMER_DIVIDE >> 4) == MSR_TIMER_DIVIDE);
const _: () = assert!(X2APIC_MSR_BASE + (XAPIC_IRR0 >> 4) == MSR_IRR0);

/// IA32_APIC_BASE bit 8: bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// IA32_APIC_BASE bit 10: x2APIC mode.
pub const APIC_BASE_EXTD: u64 = 1 << 10;
/// IA32_APIC_BASE bit 11: APIC global enable.
pub const APIC_BASE_EN: u64 = 1 << 11;
/// IA32_APIC_BASE bits 51:12: base physical address (MAXPHYADDR 52 assumed).
pub const APIC_BASE_ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Architectural default base address.
pub const APIC_DEFAULT_BASE: u64 = 0xFEE0_0000;

/// Version register: version 0x14 (integrated APIC, Intel SDM vol. 3A §11.4.8).
pub const APIC_VERSION: u32 = 0x14;
/// Number of LVT entries stored (CMCI, timer, thermal, PMC, LINT0, LINT1,
/// error); a model without CMCI has the other 6 (`ApicConfig::cmci`).
pub const LVT_COUNT: usize = 7;
/// Version bit 24: EOI-broadcast suppression supported.
pub const VERSION_DIRECTED_EOI: u32 = 1 << 24;

/// SVR bit 8: APIC software enable.
pub const SVR_ENABLE: u32 = 1 << 8;
/// SVR bit 9: focus processor checking (kept, no effect).
pub const SVR_FOCUS_DISABLE: u32 = 1 << 9;
/// SVR bit 12: EOI-broadcast suppression (writable only with directed EOI).
pub const SVR_SUPPRESS_EOI_BROADCAST: u32 = 1 << 12;

/// LVT bit 16: masked.
pub const LVT_MASKED: u32 = 1 << 16;

bitflags::bitflags! {
    /// Error status register bits (Intel SDM vol. 3A §11.5.3, Table 11-6).
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    pub struct Esr: u32 {
        /// Lowest-priority IPI could not be sent (not produced here: lowest
        /// priority is sent, as fixed to one target, spec §6).
        const REDIRECTABLE_IPI = 1 << 4;
        /// An IPI with a vector 0-15 was sent (ICR fixed / lowest priority,
        /// SELF_IPI); nothing is delivered.
        const SEND_ILLEGAL_VECTOR = 1 << 5;
        /// An interrupt with a vector 0-15 was received or generated locally
        /// (requests, LVT firings, LVT writes of fixed entries).
        const RECEIVE_ILLEGAL_VECTOR = 1 << 6;
        /// Access to a reserved xAPIC register (not produced here: such an
        /// access is [`crate::RegisterError::Unknown`]).
        const ILLEGAL_REGISTER_ADDRESS = 1 << 7;
    }
}

/// ICR in the x2APIC 64-bit layout (Intel SDM vol. 3A §11.6.1, §11.12.9).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct IcrValue {
    /// Vector (start-up page for SIPI).
    pub vector: u8,
    /// Delivery mode (bits 10:8).
    #[bits(3)]
    pub delivery_mode: u8,
    /// Destination mode: logical when set.
    pub logical: bool,
    /// Delivery status (bit 12, read-only; always 0 here).
    pub delivery_status: bool,
    #[bits(1)]
    __rsvd_13: u8,
    /// Level: assert when set.
    pub assert: bool,
    /// Trigger mode: level when set.
    pub level: bool,
    #[bits(2)]
    __rsvd_17_16: u8,
    /// Destination shorthand (bits 19:18).
    #[bits(2)]
    pub shorthand: u8,
    #[bits(12)]
    __rsvd_31_20: u16,
    /// Destination (x2APIC: 32 bits; xAPIC: bits 63:56).
    pub destination: u32,
}

/// x2APIC ICR bits that must be 0 on write (spec §6 choice: 31:20, 17:16,
/// 13 reserved; bit 12 delivery status as AMD does).
pub const ICR_X2APIC_WRITE_RESERVED: u64 = 0xFFF0_0000 | 0x3_0000 | (1 << 13) | (1 << 12);
/// Bits of ICR low that xAPIC keeps (the rest read back as 0).
pub const ICR_LOW_WRITABLE: u32 = 0x000C_CFFF;

/// One LVT entry (Intel SDM vol. 3A §11.5.1, Figure 11-8).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Lvt {
    /// Vector.
    pub vector: u8,
    /// Delivery mode (not in timer / error entries).
    #[bits(3)]
    pub delivery_mode: u8,
    #[bits(1)]
    __rsvd_11: u8,
    /// Delivery status (read-only, 0 here).
    pub delivery_status: bool,
    /// Input pin polarity (LINT only).
    pub polarity: bool,
    /// Remote IRR (LINT only, read-only, not modelled: 0).
    pub remote_irr: bool,
    /// Trigger mode: level when set (LINT only).
    pub level: bool,
    /// Masked.
    pub masked: bool,
    /// Timer mode (timer only): 0 one-shot, 1 periodic, 2 TSC-deadline.
    #[bits(2)]
    pub timer_mode: u8,
    #[bits(13)]
    __rsvd_31_19: u16,
}

/// Writable bits of each LVT, in [`LVT_COUNT`] order (KVM's masks: delivery
/// status and remote IRR are read-only, other reserved bits ignored).
pub const LVT_WRITABLE: [u32; LVT_COUNT] = [
    0x0001_07FF, // CMCI: vector, delivery mode, mask
    0x0007_00FF, // timer: vector, mask, timer mode
    0x0001_07FF, // thermal
    0x0001_07FF, // PMC
    0x0001_A7FF, // LINT0: vector, delivery mode, polarity, trigger, mask
    0x0001_A7FF, // LINT1
    0x0001_00FF, // error: vector, mask
];

/// LVT delivery mode (bits 10:8; Intel SDM vol. 3A §11.5.1, Figure 11-8).
/// A different type from the ICR's ([`crate::IcrDeliveryMode`]): the
/// encodings differ (111 is ExtINT here, reserved in the ICR).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LvtDeliveryMode {
    /// 000: the entry's vector.
    Fixed,
    /// 010
    Smi,
    /// 100
    Nmi,
    /// 101 (LINT entries only).
    Init,
    /// 111 (LINT entries only): the vector comes from an external controller.
    ExtInt,
    /// 001, 011, 110, and INIT / ExtINT in an entry other than LINT.
    Reserved,
}

impl LvtDeliveryMode {
    /// Decodes bits 10:8 of an entry; `pin` is true for LINT0/LINT1, the
    /// only entries where INIT and ExtINT exist (Figure 11-8 notes).
    pub fn decode(bits: u8, pin: bool) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 if pin => Self::Init,
            7 if pin => Self::ExtInt,
            _ => Self::Reserved,
        }
    }
}

/// LVT index of CMCI.
pub const LVT_CMCI: usize = 0;
/// LVT index of the timer.
pub const LVT_TIMER: usize = 1;
/// LVT index of thermal.
pub const LVT_THERMAL: usize = 2;
/// LVT index of PMC.
pub const LVT_PMC: usize = 3;
/// LVT index of LINT0.
pub const LVT_LINT0: usize = 4;
/// LVT index of LINT1.
pub const LVT_LINT1: usize = 5;
/// LVT index of the error entry.
pub const LVT_ERROR: usize = 6;

/// Timer mode field values (LVT timer bits 18:17).
pub const TIMER_ONE_SHOT: u8 = 0;
/// Periodic.
pub const TIMER_PERIODIC: u8 = 1;
/// TSC-deadline.
pub const TIMER_TSC_DEADLINE: u8 = 2;

/// Divide-configuration bits kept (3, 1:0); bit 2 and 31:4 are reserved.
pub const DIVIDE_WRITABLE: u32 = 0xB;

/// Divisor for a divide-configuration value (Intel SDM vol. 3A §11.5.4,
/// Figure 11-10): bits 3,1:0 = 000 -> 2, 001 -> 4, ... 110 -> 128, 111 -> 1.
pub fn timer_divisor(divide_config: u32) -> u32 {
    let code = (divide_config & 3) | ((divide_config >> 1) & 4);
    if code == 7 {
        1
    } else {
        2u32.wrapping_shl(code)
    }
}
