//! The values that cross the APIC's interface: configuration, effects of
//! register writes, outcomes of requests and received IPIs.

use crate::icr::Ipi;

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

/// Static configuration of one APIC.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ApicConfig {
    /// Initial APIC ID (x2APIC ID; xAPIC uses the low 8 bits).
    pub apic_id: u32,
    /// Bootstrap processor (APIC_BASE bit 8).
    pub bsp: bool,
    /// `now` ticks per APIC timer bus cycle (>= 1; 0 is treated as 1).
    pub ticks_per_bus_cycle: u32,
    /// Advertise and honour directed EOI / EOI-broadcast suppression
    /// (version bit 24, SVR bit 12).
    pub directed_eoi: bool,
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
    /// [`LocalApic::next_timer_deadline`]. (A timer write first delivers an
    /// expiry already due at `now`, so IRR may have changed too.)
    TimerChanged,
    /// APIC_BASE changed the mode; the engine refreshes its destination table.
    ModeChanged(ApicMode),
    /// xAPIC LDR or DFR changed: [`LocalApic::address`] differs, the engine
    /// refreshes this APIC's entry in its destination table.
    AddressChanged,
}

/// The vector an EOI retired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EoiInfo {
    /// The highest in-service vector, now cleared.
    pub vector: u8,
    /// TMR was set: the source (host or IOAPIC) needs an EOI.
    pub level: bool,
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

/// LINT pins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lint {
    /// LINT0.
    Lint0,
    /// LINT1.
    Lint1,
}

/// Non-IRR events produced locally (LVT delivery modes other than fixed).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LocalEvent {
    /// Nothing (masked, or fixed and now in IRR).
    None,
    /// Deliver an NMI.
    Nmi,
    /// ExtINT: the vector comes from an external controller.
    ExtInt,
    /// SMI / INIT through an LVT: not supported, reported.
    Unsupported,
}

/// What an IPI did to the APIC that received it ([`LocalApic::accept_ipi`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Received {
    /// Fixed or lowest-priority: the outcome of the IRR request.
    Requested(RequestOutcome),
    /// Deliver an NMI (outside IRR/ISR).
    Nmi,
    /// INIT; `assert` false is the level de-assert, which does nothing on
    /// current processors (Intel SDM vol. 3A §11.6.1).
    Init {
        /// Level assert (or edge) INIT.
        assert: bool,
    },
    /// Start-up IPI with its page number.
    StartUp(u8),
    /// ExtINT: the vector comes from an external controller.
    ExtInt,
    /// SMI or a reserved delivery mode: not supported.
    Unsupported,
    /// The APIC is hardware-disabled: nothing is taken.
    Ignored,
}
