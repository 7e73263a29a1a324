//! The whole state of one APIC as a plain value (save / restore).

use crate::regs::*;
use crate::types::ApicConfig;
use crate::vectors::VectorSet;

/// The whole state of one APIC as a plain value, for handoff and tests.
///
/// Every architectural register is here in its register form, with the CPU
/// model it was built for; the timer adds the time its count was last
/// (re)loaded. Nothing is stored twice: the timer's deadline, whether it is
/// armed and the current count are all derived from `timer_start`,
/// `timer_start_count`, the divide configuration and the LVT timer mode (or
/// `tsc_deadline`). [`LocalApic::save`] and [`LocalApic::restore`]
/// round-trip it exactly.
///
/// [`LocalApic::save`]: crate::LocalApic::save
/// [`LocalApic::restore`]: crate::LocalApic::restore
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ApicState {
    /// Interrupt request register.
    pub irr: VectorSet,
    /// In-service register.
    pub isr: VectorSet,
    /// Trigger-mode register (set: level).
    pub tmr: VectorSet,
    /// Host-presented vectors the guest allowed (CONFIGURE_VECTOR).
    pub host_allowed: VectorSet,
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// ICR in the x2APIC layout (xAPIC destination in bits 63:56).
    pub icr: u64,
    /// IA32_TSC_DEADLINE (0: disarmed).
    pub tsc_deadline: u64,
    /// `now` at which the count was `timer_start_count`.
    pub timer_start: u64,
    /// The CPU model (ID, MAXPHYADDR, x2APIC, CMCI, directed EOI, tick rate).
    pub config: ApicConfig,
    /// xAPIC LDR (logical ID in bits 31:24).
    pub ldr: u32,
    /// xAPIC DFR (model in bits 31:28, 27:0 read as 1).
    pub dfr: u32,
    /// Spurious-interrupt vector register.
    pub svr: u32,
    /// ESR as visible to reads.
    pub esr: u32,
    /// ESR bits latched since the last ESR write.
    pub esr_pending: u32,
    /// LVT entries: CMCI, timer, thermal, PMC, LINT0, LINT1, error.
    pub lvt: [u32; LVT_COUNT],
    /// Timer initial count.
    pub timer_initial: u32,
    /// Current count at `timer_start`; 0: the one-shot/periodic count is
    /// stopped (never started, written 0, expired one-shot, or disarmed).
    pub timer_start_count: u32,
    /// Timer divide configuration.
    pub timer_divide: u32,
    /// Task priority.
    pub tpr: u8,
}

impl ApicState {
    /// Power-up state (Intel SDM vol. 3A §11.4.7.1).
    pub(crate) fn power_on(config: &ApicConfig) -> Self {
        let bsp = if config.bsp { APIC_BASE_BSP } else { 0 };
        Self {
            irr: VectorSet::EMPTY,
            isr: VectorSet::EMPTY,
            tmr: VectorSet::EMPTY,
            // Project choice: deny every host vector until the guest allows it
            // with CONFIGURE_VECTOR (as Secure AVIC's ALLOWED_IRR starts empty).
            host_allowed: VectorSet::EMPTY,
            apic_base: APIC_DEFAULT_BASE | APIC_BASE_EN | bsp,
            icr: 0,
            tsc_deadline: 0,
            timer_start: 0,
            config: *config,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            esr: 0,
            esr_pending: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_start_count: 0,
            timer_divide: 0,
            tpr: 0,
        }
    }
}
