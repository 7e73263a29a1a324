//! The values that cross the APIC's interface: configuration, effects of
//! register writes, outcomes of requests and received IPIs.

use crate::icr::Ipi;
use crate::regs::{LVT_CMCI, LVT_LINT0, LVT_LINT1, LVT_PMC, LVT_THERMAL, LvtDeliveryMode};

/// Trigger mode of a request (Intel SDM vol. 3A §11.8.4: TMR is set for level).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Trigger {
    /// Edge-triggered.
    #[default]
    Edge,
    /// Level-triggered: the EOI must reach the source.
    Level,
}

/// IA32_APIC_BASE EN/EXTD state (Intel SDM vol. 3A §11.12.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ApicMode {
    /// EN = 0, EXTD = 0.
    Disabled,
    /// EN = 1, EXTD = 0.
    XApic,
    /// EN = 1, EXTD = 1.
    X2Apic,
}

/// Why a register access failed; every variant is #GP to the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RegisterError {
    /// Not a register (SVSM protocol: INVALID_ADDRESS).
    Unknown,
    /// Write to a read-only or read of a write-only register (INVALID_PARAMETER).
    WrongDirection,
    /// Reserved bits set or an illegal value (INVALID_PARAMETER).
    InvalidValue,
    /// The register is not reachable in the current APIC mode (e.g. x2APIC MSR
    /// while in xAPIC mode, or any access while disabled).
    WrongMode,
}

/// Static configuration of one APIC: the CPU model it belongs to, as the
/// guest's CPUID describes it.
///
/// `ApicConfig::default()` is a current Intel-like model: x2APIC supported,
/// MAXPHYADDR 52, CMCI present (7 LVT entries), no directed EOI.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ApicConfig {
    /// Initial APIC ID (x2APIC ID; xAPIC uses the low 8 bits).
    pub apic_id: u32,
    /// Bootstrap processor (APIC_BASE bit 8).
    pub bsp: bool,
    /// `now` ticks per APIC timer bus cycle (>= 1; 0 is treated as 1). Only
    /// the timer uses it: an SVSM without a platform timer keeps the default.
    pub ticks_per_bus_cycle: u32,
    /// Advertise and honour directed EOI / EOI-broadcast suppression
    /// (version bit 24, SVR bit 12).
    pub directed_eoi: bool,
    /// CPUID.01H:ECX\[21\]: x2APIC mode exists. Without it APIC_BASE EXTD
    /// (bit 10) is reserved: setting it is #GP (Intel SDM vol. 3A §11.12.1).
    pub x2apic: bool,
    /// CPUID.80000008H:EAX\[7:0\] MAXPHYADDR: APIC_BASE bits MAXPHYADDR-63
    /// are reserved (#GP; Intel SDM vol. 3A §11.4.4, Figure 11-5). Values
    /// outside 32-52 are taken as the nearest bound.
    pub max_phys_addr: u8,
    /// LVT CMCI exists (Intel SDM vol. 3A §11.5.1): the version register
    /// reports 7 LVT entries (max LVT 6) and MSR 0x82F / MMIO 0x2F0 are
    /// registers; without it 6 entries (max LVT 5) and both are invalid (#GP).
    pub cmci: bool,
}

impl Default for ApicConfig {
    fn default() -> Self {
        Self {
            apic_id: 0,
            bsp: false,
            ticks_per_bus_cycle: 1,
            directed_eoi: false,
            x2apic: true,
            max_phys_addr: 52,
            cmci: true,
        }
    }
}

impl ApicConfig {
    /// MAXPHYADDR as used: clamped to 32-52.
    pub fn phys_addr_bits(&self) -> u32 {
        u32::from(self.max_phys_addr.clamp(32, 52))
    }
}

/// What a register write asks the engine to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum WriteEffect {
    /// Nothing beyond the register update.
    None,
    /// An EOI retired a vector.
    Eoi(EoiInfo),
    /// ICR was written: route this IPI (also for the self shorthand).
    SendIpi(Ipi),
    /// Timer registers changed: re-arm the platform timer from
    /// [`LocalApic::next_timer_deadline`]. Nothing else to do: every expiry
    /// due at `now` has been delivered (IRR may have changed), and the
    /// deadline is `None` or after `now`.
    ///
    /// [`LocalApic::next_timer_deadline`]: crate::LocalApic::next_timer_deadline
    TimerChanged,
    /// APIC_BASE changed the mode; the engine refreshes its destination table.
    ModeChanged(ApicMode),
    /// xAPIC LDR or DFR changed: [`LocalApic::address`] differs, the engine
    /// refreshes this APIC's entry in its destination table.
    ///
    /// [`LocalApic::address`]: crate::LocalApic::address
    AddressChanged,
}

/// The vector an EOI retired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EoiInfo {
    /// The highest in-service vector, now cleared.
    pub vector: u8,
    /// TMR was set: the vector was level-triggered.
    pub level: bool,
    /// The EOI goes on to the IOAPIC (the source of the level interrupt):
    /// `level`, and EOI-broadcast suppression (SVR bit 12 with directed
    /// EOI) is off (Intel SDM vol. 3A §11.8.5). With suppression the guest
    /// EOIs the IOAPIC itself.
    pub broadcast: bool,
}

/// Result of asking the APIC to accept an interrupt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestOutcome {
    /// Newly set in IRR.
    Accepted,
    /// Already pending in IRR: coalesced.
    Coalesced,
    /// Vector 0-15: ESR "received illegal vector" latched instead.
    Illegal,
    /// Software-disabled APIC drops fixed interrupts (spec §6 choice).
    Dropped,
    /// Host-presented vector refused by the allowed-vector filter.
    Denied,
}

/// A local interrupt source with an LVT entry (Intel SDM vol. 3A §11.5.1);
/// the timer and the error entry are raised by the APIC itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalInterrupt {
    /// LINT0 pin.
    Lint0,
    /// LINT1 pin.
    Lint1,
    /// Thermal sensor.
    Thermal,
    /// Performance-monitoring counter overflow.
    Pmc,
    /// Corrected machine-check error (only with [`ApicConfig::cmci`]).
    Cmci,
}

impl LocalInterrupt {
    /// Index of the source's LVT entry in [`crate::ApicState::lvt`].
    pub fn lvt_index(self) -> usize {
        match self {
            LocalInterrupt::Lint0 => LVT_LINT0,
            LocalInterrupt::Lint1 => LVT_LINT1,
            LocalInterrupt::Thermal => LVT_THERMAL,
            LocalInterrupt::Pmc => LVT_PMC,
            LocalInterrupt::Cmci => LVT_CMCI,
        }
    }
}

/// What a local interrupt needs from the engine ([`crate::LocalApic::local_interrupt`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalEvent {
    /// Nothing: masked, absent, or fixed (the vector is in IRR, or was
    /// refused and latched in the ESR).
    None,
    /// Deliver an NMI ("NMI via LVT"; outside IRR/ISR).
    Nmi,
    /// ExtINT (LINT only): the vector comes from an external controller.
    ExtInt,
    /// SMI, INIT or a reserved delivery mode: not emulated; the engine
    /// decides what to do.
    Unsupported(LvtDeliveryMode),
}

/// What an IPI did to the APIC that received it ([`crate::LocalApic::accept_ipi`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// Fixed or lowest-priority: the outcome of the IRR request.
    Requested(RequestOutcome),
    /// Deliver an NMI (outside IRR/ISR).
    Nmi,
    /// INIT (edge, or level assert).
    Init,
    /// Start-up IPI with its page number.
    StartUp(u8),
    /// SMI or a reserved delivery mode: not supported.
    Unsupported,
    /// Nothing to do: the APIC is hardware-disabled, or an INIT level
    /// de-assert (no effect on current processors, Intel SDM vol. 3A §11.6.1).
    Ignored,
}
