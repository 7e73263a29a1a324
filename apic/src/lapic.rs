//! One emulated local APIC: registers, interrupt state, timer, save/restore.

use crate::icr::{ApicAddress, DeliveryMode, DestinationFormat, Ipi};
use crate::regs::*;
use crate::vectors::VectorSet;

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

/// The whole state of one APIC as a plain value, for handoff and tests.
///
/// Every architectural register is here in its register form; the timer adds
/// the time its count was last (re)loaded. [`LocalApic::save`] and
/// [`LocalApic::restore`] round-trip it exactly.
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
    /// When the armed timer next expires, in `now` ticks.
    pub timer_deadline: u64,
    /// Initial APIC ID (the x2APIC ID; xAPIC shows bits 7:0).
    pub id: u32,
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
    /// Current count at `timer_start`.
    pub timer_start_count: u32,
    /// Timer divide configuration.
    pub timer_divide: u32,
    /// `now` ticks per bus cycle (0 is treated as 1).
    pub ticks_per_bus_cycle: u32,
    /// Task priority.
    pub tpr: u8,
    /// The timer will expire at `timer_deadline`.
    pub timer_armed: bool,
    /// Directed EOI is advertised (version bit 24) and SVR bit 12 writable.
    pub directed_eoi: bool,
}

impl ApicState {
    /// Power-up state (Intel SDM vol. 3A §11.4.7.1).
    fn power_on(config: &ApicConfig) -> Self {
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
            timer_deadline: 0,
            id: config.apic_id,
            ldr: 0,
            dfr: 0xFFFF_FFFF,
            svr: 0xFF,
            esr: 0,
            esr_pending: 0,
            lvt: [LVT_MASKED; LVT_COUNT],
            timer_initial: 0,
            timer_start_count: 0,
            timer_divide: 0,
            ticks_per_bus_cycle: config.ticks_per_bus_cycle,
            tpr: 0,
            timer_armed: false,
            directed_eoi: config.directed_eoi,
        }
    }
}

/// One emulated local APIC (<= 256 bytes).
#[derive(Clone, Debug)]
pub struct LocalApic {
    s: ApicState,
}

const _: () = assert!(core::mem::size_of::<LocalApic>() <= 256);

/// A register of the APIC, independent of how it is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reg {
    Id,
    Version,
    Tpr,
    Apr,
    Ppr,
    Eoi,
    Ldr,
    Dfr,
    Svr,
    Isr(usize),
    Tmr(usize),
    Irr(usize),
    Esr,
    Lvt(usize),
    Icr,
    IcrHigh,
    TimerInitial,
    TimerCurrent,
    TimerDivide,
    SelfIpi,
}

impl Reg {
    /// The register at xAPIC-style index `offset >> 4` (0x00-0x3F).
    fn from_index(index: u32, x2apic: bool) -> Option<Self> {
        // ISR/TMR/IRR word number.
        let word = (index & 7) as usize;
        Some(match index {
            0x02 => Reg::Id,
            0x03 => Reg::Version,
            0x08 => Reg::Tpr,
            0x09 if !x2apic => Reg::Apr,
            0x0A => Reg::Ppr,
            0x0B => Reg::Eoi,
            0x0D => Reg::Ldr,
            0x0E if !x2apic => Reg::Dfr,
            0x0F => Reg::Svr,
            0x10..=0x17 => Reg::Isr(word),
            0x18..=0x1F => Reg::Tmr(word),
            0x20..=0x27 => Reg::Irr(word),
            0x28 => Reg::Esr,
            0x2F => Reg::Lvt(LVT_CMCI),
            0x30 => Reg::Icr,
            0x31 if !x2apic => Reg::IcrHigh,
            0x32 => Reg::Lvt(LVT_TIMER),
            0x33 => Reg::Lvt(LVT_THERMAL),
            0x34 => Reg::Lvt(LVT_PMC),
            0x35 => Reg::Lvt(LVT_LINT0),
            0x36 => Reg::Lvt(LVT_LINT1),
            0x37 => Reg::Lvt(LVT_ERROR),
            0x38 => Reg::TimerInitial,
            0x39 => Reg::TimerCurrent,
            0x3E => Reg::TimerDivide,
            0x3F if x2apic => Reg::SelfIpi,
            _ => return None,
        })
    }

    /// Read-only registers (writes are #GP in x2APIC mode); the LDR is
    /// writable in xAPIC mode only (Intel SDM vol. 3A §11.12.10.2).
    fn read_only(self, x2apic: bool) -> bool {
        matches!(
            self,
            Reg::Id
                | Reg::Version
                | Reg::Apr
                | Reg::Ppr
                | Reg::Isr(_)
                | Reg::Tmr(_)
                | Reg::Irr(_)
                | Reg::TimerCurrent
        ) || (x2apic && self == Reg::Ldr)
    }
}

impl LocalApic {
    /// An APIC after power-on reset: xAPIC mode enabled (APIC_BASE EN = 1,
    /// base 0xFEE0_0000), software-disabled (SVR = 0xFF), every LVT masked.
    pub fn new(config: ApicConfig) -> Self {
        Self {
            s: ApicState::power_on(&config),
        }
    }

    /// APIC ID (x2APIC width).
    pub fn id(&self) -> u32 {
        self.s.id
    }

    /// Current mode.
    pub fn mode(&self) -> ApicMode {
        let b = self.s.apic_base;
        match (b & APIC_BASE_EN != 0, b & APIC_BASE_EXTD != 0) {
            (true, true) => ApicMode::X2Apic,
            (true, false) => ApicMode::XApic,
            _ => ApicMode::Disabled,
        }
    }

    /// Target identity for destination matching.
    pub fn address(&self) -> ApicAddress {
        let mode = self.mode();
        match mode {
            ApicMode::X2Apic => ApicAddress {
                id: self.s.id,
                ldr: x2apic_ldr(self.s.id),
                format: DestinationFormat::Cluster,
                mode,
            },
            _ => ApicAddress {
                id: self.s.id & 0xFF,
                ldr: self.s.ldr >> 24,
                format: self.dfr_format(),
                mode,
            },
        }
    }

    /// xAPIC DFR model: 0xF is flat; project choice: any other value is cluster.
    fn dfr_format(&self) -> DestinationFormat {
        if self.s.dfr >> 28 == 0xF {
            DestinationFormat::Flat
        } else {
            DestinationFormat::Cluster
        }
    }

    /// IA32_APIC_BASE value.
    pub fn apic_base(&self) -> u64 {
        self.s.apic_base
    }

    /// Writes IA32_APIC_BASE; illegal transitions and reserved bits are #GP.
    ///
    /// Intel SDM vol. 3A §11.12.5 (Figure 11-27): disabled <-> xAPIC,
    /// xAPIC -> x2APIC, x2APIC -> disabled; EN = 0 with EXTD = 1 is invalid.
    /// The BSP bit is read-only here (written values ignored). Project
    /// choice: entering the disabled state resets the APIC registers to their
    /// power-up values (the APIC is off, §11.4.3, so nothing it held can be
    /// delivered later); ID, base address and the host-vector filter survive.
    /// The base address may be moved (bits 51:12, MAXPHYADDR 52 assumed).
    pub fn set_apic_base(&mut self, value: u64) -> Result<WriteEffect, RegisterError> {
        let allowed = APIC_BASE_ADDR_MASK | APIC_BASE_EN | APIC_BASE_EXTD | APIC_BASE_BSP;
        if value & !allowed != 0 {
            return Err(RegisterError::InvalidValue);
        }
        let new = match (value & APIC_BASE_EN != 0, value & APIC_BASE_EXTD != 0) {
            (false, false) => ApicMode::Disabled,
            (true, false) => ApicMode::XApic,
            (true, true) => ApicMode::X2Apic,
            (false, true) => return Err(RegisterError::InvalidValue),
        };
        let old = self.mode();
        let legal = old == new
            || matches!(
                (old, new),
                (ApicMode::Disabled, ApicMode::XApic)
                    | (ApicMode::XApic, ApicMode::Disabled)
                    | (ApicMode::XApic, ApicMode::X2Apic)
                    | (ApicMode::X2Apic, ApicMode::Disabled)
            );
        if !legal {
            return Err(RegisterError::InvalidValue);
        }
        let bsp = self.s.apic_base & APIC_BASE_BSP;
        self.s.apic_base = (value & !APIC_BASE_BSP) | bsp;
        if old == new {
            return Ok(WriteEffect::None);
        }
        if new == ApicMode::Disabled {
            self.reset_registers();
        }
        Ok(WriteEffect::ModeChanged(new))
    }

    /// Power-up values for every register but APIC_BASE, the ID and the
    /// host-vector filter.
    fn reset_registers(&mut self) {
        let config = ApicConfig {
            apic_id: self.s.id,
            bsp: false,
            ticks_per_bus_cycle: self.s.ticks_per_bus_cycle,
            directed_eoi: self.s.directed_eoi,
        };
        let fresh = ApicState {
            apic_base: self.s.apic_base,
            host_allowed: self.s.host_allowed,
            ..ApicState::power_on(&config)
        };
        self.s = fresh;
    }

    /// Reads an x2APIC MSR (0x800-0x8FF) in x2APIC mode.
    ///
    /// Also answers IA32_APIC_BASE (any mode) and IA32_TSC_DEADLINE (reads 0
    /// unless the timer is in TSC-deadline mode).
    pub fn read_msr(&self, msr: u32, now: u64) -> Result<u64, RegisterError> {
        match msr {
            MSR_APIC_BASE => return Ok(self.s.apic_base),
            MSR_TSC_DEADLINE => return Ok(self.tsc_deadline()),
            X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {}
            _ => return Err(RegisterError::Unknown),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(RegisterError::WrongMode);
        }
        let reg = Reg::from_index(msr & 0xFF, true).ok_or(RegisterError::Unknown)?;
        Ok(match reg {
            Reg::Id => u64::from(self.s.id),
            Reg::Ldr => u64::from(x2apic_ldr(self.s.id)),
            Reg::Icr => self.s.icr,
            other => u64::from(self.read_common(other, now)?),
        })
    }

    /// Writes an x2APIC MSR (0x800-0x8FF) in x2APIC mode.
    ///
    /// Also takes IA32_APIC_BASE (any mode) and IA32_TSC_DEADLINE.
    pub fn write_msr(
        &mut self,
        msr: u32,
        value: u64,
        now: u64,
    ) -> Result<WriteEffect, RegisterError> {
        match msr {
            MSR_APIC_BASE => return self.set_apic_base(value),
            MSR_TSC_DEADLINE => return Ok(self.set_tsc_deadline(value)),
            X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {}
            _ => return Err(RegisterError::Unknown),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(RegisterError::WrongMode);
        }
        let reg = Reg::from_index(msr & 0xFF, true).ok_or(RegisterError::Unknown)?;
        if reg.read_only(true) {
            return Err(RegisterError::WrongDirection);
        }
        if reg == Reg::Icr {
            // Spec §6 choice: reserved ICR bits and delivery status are #GP.
            if value & ICR_X2APIC_WRITE_RESERVED != 0 {
                return Err(RegisterError::InvalidValue);
            }
            self.s.icr = value;
            return Ok(self.send_icr());
        }
        // Spec §6 choice: bits 63:32 of every other register are #GP.
        let value = u32::try_from(value).map_err(|_| RegisterError::InvalidValue)?;
        match reg {
            // Spec §6 choice: reserved TPR / SELF_IPI bits are #GP, and so is a
            // non-zero EOI or ESR write (Intel SDM vol. 3A §11.12.1.2).
            Reg::Tpr | Reg::SelfIpi if value > 0xFF => Err(RegisterError::InvalidValue),
            Reg::Eoi | Reg::Esr if value != 0 => Err(RegisterError::InvalidValue),
            Reg::SelfIpi => {
                // Intel SDM vol. 3A §11.12.11: a self IPI is edge-triggered fixed.
                self.request(value as u8, Trigger::Edge);
                Ok(WriteEffect::None)
            }
            other => Ok(self.write_common(other, value, now)),
        }
    }

    /// Reads a 32-bit xAPIC register at MMIO `offset` in xAPIC mode.
    pub fn read_mmio(&self, offset: u32, now: u64) -> Result<u32, RegisterError> {
        let reg = mmio_reg(offset)?;
        if self.mode() != ApicMode::XApic {
            return Err(RegisterError::WrongMode);
        }
        match reg {
            Reg::Id => Ok((self.s.id & 0xFF) << 24),
            Reg::Ldr => Ok(self.s.ldr),
            Reg::Dfr => Ok(self.s.dfr),
            // Arbitration priority is not modelled (no bus arbitration): 0,
            // as KVM reads it.
            Reg::Apr => Ok(0),
            Reg::Icr => Ok(self.s.icr as u32),
            Reg::IcrHigh => Ok((self.s.icr >> 32) as u32),
            other => self.read_common(other, now),
        }
    }

    /// Writes a 32-bit xAPIC register at MMIO `offset` in xAPIC mode
    /// (writing ICR low sends).
    ///
    /// MMIO cannot fault on a value: reserved bits are ignored here (Intel
    /// SDM vol. 3A §11.4.1); writes to read-only registers, including the ID
    /// (project choice: read-only, it stays the initial APIC ID), return
    /// [`RegisterError::WrongDirection`] and change nothing.
    pub fn write_mmio(
        &mut self,
        offset: u32,
        value: u32,
        now: u64,
    ) -> Result<WriteEffect, RegisterError> {
        let reg = mmio_reg(offset)?;
        if self.mode() != ApicMode::XApic {
            return Err(RegisterError::WrongMode);
        }
        if reg.read_only(false) {
            return Err(RegisterError::WrongDirection);
        }
        Ok(match reg {
            Reg::Ldr => {
                self.s.ldr = value & 0xFF00_0000;
                WriteEffect::AddressChanged
            }
            Reg::Dfr => {
                self.s.dfr = value | 0x0FFF_FFFF;
                WriteEffect::AddressChanged
            }
            Reg::IcrHigh => {
                let high = u64::from(value & 0xFF00_0000) << 32;
                self.s.icr = (self.s.icr & 0xFFFF_FFFF) | high;
                WriteEffect::None
            }
            Reg::Icr => {
                let low = u64::from(value & ICR_LOW_WRITABLE);
                self.s.icr = (self.s.icr & !0xFFFF_FFFF) | low;
                self.send_icr()
            }
            // xAPIC: the EOI and ESR values are ignored (Intel SDM vol. 3A
            // §11.8.5, §11.5.3).
            Reg::Eoi | Reg::Esr => self.write_common(reg, 0, now),
            Reg::Tpr => self.write_common(reg, value & 0xFF, now),
            other => self.write_common(other, value, now),
        })
    }

    /// Reads shared by both interfaces (32-bit registers).
    fn read_common(&self, reg: Reg, now: u64) -> Result<u32, RegisterError> {
        Ok(match reg {
            Reg::Version => self.version(),
            Reg::Tpr => u32::from(self.s.tpr),
            Reg::Ppr => u32::from(self.ppr()),
            Reg::Svr => self.s.svr,
            Reg::Isr(n) => self.s.isr.word(n),
            Reg::Tmr(n) => self.s.tmr.word(n),
            Reg::Irr(n) => self.s.irr.word(n),
            Reg::Esr => self.s.esr,
            Reg::Lvt(i) => self.s.lvt.get(i).copied().unwrap_or(0),
            Reg::TimerInitial => self.s.timer_initial,
            Reg::TimerCurrent => self.current_count(now),
            Reg::TimerDivide => self.s.timer_divide,
            Reg::Eoi | Reg::SelfIpi => return Err(RegisterError::WrongDirection),
            // Mode-specific registers are answered by the callers.
            _ => return Err(RegisterError::Unknown),
        })
    }

    /// Writes shared by both interfaces, value already validated.
    fn write_common(&mut self, reg: Reg, value: u32, now: u64) -> WriteEffect {
        match reg {
            Reg::Tpr => {
                self.s.tpr = value as u8;
                WriteEffect::None
            }
            Reg::Eoi => match self.eoi() {
                Some(info) => WriteEffect::Eoi(info),
                None => WriteEffect::None,
            },
            Reg::Esr => {
                // Intel SDM vol. 3A §11.5.3: a write makes the latched errors
                // visible and clears the latch.
                self.s.esr = self.s.esr_pending;
                self.s.esr_pending = 0;
                WriteEffect::None
            }
            Reg::Svr => {
                self.write_svr(value);
                WriteEffect::None
            }
            Reg::Lvt(i) => self.write_lvt(i, value, now),
            Reg::TimerInitial => self.write_timer_initial(value, now),
            Reg::TimerDivide => self.write_timer_divide(value, now),
            _ => WriteEffect::None,
        }
    }

    /// Version register: 0x14, max LVT entry in 23:16, directed EOI in 24.
    fn version(&self) -> u32 {
        let max_lvt = (LVT_COUNT as u32).saturating_sub(1) << 16;
        let deoi = if self.s.directed_eoi {
            VERSION_DIRECTED_EOI
        } else {
            0
        };
        APIC_VERSION | max_lvt | deoi
    }

    fn software_enabled(&self) -> bool {
        self.s.svr & SVR_ENABLE != 0
    }

    /// SVR: vector, enable, focus; bit 12 only with directed EOI; other
    /// reserved bits ignored (spec §6 choice, KVM's mask). Clearing the enable
    /// bit masks every LVT (Intel SDM vol. 3A §11.4.7.2); setting it does not
    /// unmask them.
    fn write_svr(&mut self, value: u32) {
        let mut keep = 0xFF | SVR_ENABLE | SVR_FOCUS_DISABLE;
        if self.s.directed_eoi {
            keep |= SVR_SUPPRESS_EOI_BROADCAST;
        }
        self.s.svr = value & keep;
        if !self.software_enabled() {
            for lvt in self.s.lvt.iter_mut() {
                *lvt |= LVT_MASKED;
            }
        }
    }

    fn write_lvt(&mut self, index: usize, value: u32, now: u64) -> WriteEffect {
        let writable = LVT_WRITABLE.get(index).copied().unwrap_or(0);
        let mut value = value & writable;
        if !self.software_enabled() {
            // Intel SDM vol. 3A §11.4.7.2: the mask bits cannot be cleared
            // while the APIC is software-disabled.
            value |= LVT_MASKED;
        }
        if index != LVT_TIMER {
            if let Some(lvt) = self.s.lvt.get_mut(index) {
                *lvt = value;
            }
            return WriteEffect::None;
        }
        // An expiry that happened before this write is delivered first.
        self.poll_timer(now);
        let old_mode = self.timer_mode();
        let mut new = Lvt::from_bits(value);
        if new.timer_mode() == 3 {
            // Project choice: the reserved mode 11b is ignored; the mode stays.
            new.set_timer_mode(old_mode);
        }
        self.s.lvt[LVT_TIMER] = new.into_bits();
        let new_mode = new.timer_mode();
        if old_mode != new_mode
            && (old_mode == TIMER_TSC_DEADLINE || new_mode == TIMER_TSC_DEADLINE)
        {
            // Spec §6 choice: entering or leaving TSC-deadline disarms (and,
            // as KVM does, clears the initial count and the deadline).
            self.disarm_timer();
        }
        // One-shot <-> periodic: the count carries on; the next expiry is the
        // same, only what happens after it changes.
        WriteEffect::TimerChanged
    }

    fn disarm_timer(&mut self) {
        self.s.timer_armed = false;
        self.s.timer_initial = 0;
        self.s.timer_start_count = 0;
        self.s.tsc_deadline = 0;
    }

    fn timer_mode(&self) -> u8 {
        Lvt::from_bits(self.s.lvt[LVT_TIMER]).timer_mode()
    }

    /// `now` ticks per timer count: ticks per bus cycle times the divisor.
    fn count_period(&self) -> u64 {
        u64::from(self.s.ticks_per_bus_cycle.max(1))
            .saturating_mul(u64::from(timer_divisor(self.s.timer_divide)))
    }

    /// Current count (Intel SDM vol. 3A §11.5.4): counts down from
    /// `timer_start_count` at `timer_start`; periodic mode reloads the
    /// initial count at 0; TSC-deadline mode reads 0.
    fn current_count(&self, now: u64) -> u32 {
        let mode = self.timer_mode();
        if mode == TIMER_TSC_DEADLINE {
            return 0;
        }
        let start_count = u64::from(self.s.timer_start_count);
        let counts = now
            .saturating_sub(self.s.timer_start)
            .checked_div(self.count_period())
            .unwrap_or(0);
        if let Some(left) = start_count.checked_sub(counts).filter(|l| *l > 0) {
            return left as u32;
        }
        let initial = u64::from(self.s.timer_initial);
        if mode == TIMER_PERIODIC && start_count != 0 {
            let past = counts.saturating_sub(start_count);
            let into = past.checked_rem(initial).unwrap_or(0);
            return initial.saturating_sub(into) as u32;
        }
        0
    }

    /// Re-arms one-shot/periodic counting from `count` at `now`.
    fn start_count(&mut self, count: u32, now: u64) {
        self.s.timer_start = now;
        self.s.timer_start_count = count;
        self.set_deadline(
            u64::from(count)
                .checked_mul(self.count_period())
                .and_then(|d| now.checked_add(d))
                .filter(|_| count != 0),
        );
    }

    /// Arms the timer for `deadline`; `None` (stopped, or an expiry past the
    /// end of the `now` range, which can never be reached) disarms it. The
    /// count itself is still computed from `timer_start`.
    fn set_deadline(&mut self, deadline: Option<u64>) {
        self.s.timer_armed = deadline.is_some();
        self.s.timer_deadline = deadline.unwrap_or(0);
    }

    fn write_timer_initial(&mut self, value: u32, now: u64) -> WriteEffect {
        self.poll_timer(now);
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            // Intel SDM vol. 3A §11.5.4.1: ignored in TSC-deadline mode.
            return WriteEffect::None;
        }
        self.s.timer_initial = value;
        // Writing 0 stops the timer (§11.5.4).
        self.start_count(value, now);
        WriteEffect::TimerChanged
    }

    fn write_timer_divide(&mut self, value: u32, now: u64) -> WriteEffect {
        self.poll_timer(now);
        let count = self.current_count(now);
        self.s.timer_divide = value & DIVIDE_WRITABLE;
        if self.s.timer_armed && self.timer_mode() != TIMER_TSC_DEADLINE {
            // As KVM does, the current count carries on at the new rate
            // (the part of a count already elapsed is dropped).
            self.start_count(count, now);
        }
        WriteEffect::TimerChanged
    }

    /// Sends the ICR: illegal fixed vectors latch ESR "send illegal vector"
    /// (Intel SDM vol. 3A §11.5.3) and nothing is sent.
    fn send_icr(&mut self) -> WriteEffect {
        let ipi = Ipi::decode(self.s.icr, self.mode(), self.address().id);
        if matches!(ipi.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && ipi.vector < 16
        {
            self.latch_esr(Esr::SEND_ILLEGAL_VECTOR);
            return WriteEffect::None;
        }
        WriteEffect::SendIpi(ipi)
    }

    /// Latches ESR bits and raises the LVT error interrupt when unmasked.
    fn latch_esr(&mut self, bits: Esr) {
        self.s.esr_pending |= bits.bits();
        let lvt = Lvt::from_bits(self.s.lvt[LVT_ERROR]);
        if lvt.masked() || self.mode() == ApicMode::Disabled {
            return;
        }
        if lvt.vector() < 16 {
            // An illegal error vector only latches: no recursion.
            self.s.esr_pending |= Esr::RECEIVE_ILLEGAL_VECTOR.bits();
        } else {
            self.accept(lvt.vector(), Trigger::Edge);
        }
    }

    /// IRR insert with TMR update; the vector is legal and the APIC enabled.
    #[inline]
    fn accept(&mut self, vector: u8, trigger: Trigger) -> RequestOutcome {
        // Intel SDM vol. 3A §11.8.4: TMR is set on acceptance of a level
        // interrupt and cleared for edge (also when the request coalesces).
        if trigger == Trigger::Level {
            self.s.tmr.insert(vector);
        } else {
            self.s.tmr.remove(vector);
        }
        if self.s.irr.insert(vector) {
            RequestOutcome::Accepted
        } else {
            RequestOutcome::Coalesced
        }
    }

    /// Accepts a fixed interrupt from an IPI, the timer or a device model.
    #[inline]
    pub fn request(&mut self, vector: u8, trigger: Trigger) -> RequestOutcome {
        if self.mode() == ApicMode::Disabled {
            return RequestOutcome::Dropped;
        }
        if vector < 16 {
            self.latch_esr(Esr::RECEIVE_ILLEGAL_VECTOR);
            return RequestOutcome::Illegal;
        }
        if !self.software_enabled() {
            return RequestOutcome::Dropped;
        }
        self.accept(vector, trigger)
    }

    /// Accepts a host-presented fixed interrupt through the allowed-vector filter.
    ///
    /// Vectors 0-30 are never allowed (spec §6: illegal for the protocol);
    /// a refused vector leaves no trace in the guest's APIC.
    pub fn request_from_host(&mut self, vector: u8, trigger: Trigger) -> RequestOutcome {
        if !self.s.host_allowed.contains(vector) {
            return RequestOutcome::Denied;
        }
        self.request(vector, trigger)
    }

    /// CONFIGURE_VECTOR: allow or deny one host-presented vector.
    pub fn set_host_vector_allowed(&mut self, vector: u8, allowed: bool) {
        if allowed && VectorSet::HOST_LEGAL.contains(vector) {
            self.s.host_allowed.insert(vector);
        } else {
            self.s.host_allowed.remove(vector);
        }
    }

    /// CONFIGURE_VECTOR with "all vectors".
    pub fn set_all_host_vectors_allowed(&mut self, allowed: bool) {
        self.s.host_allowed = if allowed {
            VectorSet::HOST_LEGAL
        } else {
            VectorSet::EMPTY
        };
    }

    /// Whether the host-presented `vector` would pass the filter.
    pub fn host_vector_allowed(&self, vector: u8) -> bool {
        self.s.host_allowed.contains(vector)
    }

    /// An IPI the engine routed to this APIC arrived (Intel SDM vol. 3A
    /// §11.6.1): fixed and lowest-priority set IRR (edge), NMI, INIT and
    /// start-up are reported for the engine to deliver outside IRR/ISR. A
    /// hardware-disabled APIC takes nothing.
    pub fn accept_ipi(&mut self, ipi: &Ipi) -> Received {
        if self.mode() == ApicMode::Disabled {
            return Received::Ignored;
        }
        match ipi.mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                Received::Requested(self.request(ipi.vector, Trigger::Edge))
            }
            DeliveryMode::Nmi => Received::Nmi,
            DeliveryMode::Init => Received::Init {
                assert: ipi.assert || ipi.trigger == Trigger::Edge,
            },
            DeliveryMode::StartUp => Received::StartUp(ipi.vector),
            DeliveryMode::ExtInt => Received::ExtInt,
            DeliveryMode::Smi | DeliveryMode::Reserved => Received::Unsupported,
        }
    }

    /// INIT reset (Intel SDM vol. 3A §11.4.7.3): every register back to its
    /// power-up value except the APIC ID and IA32_APIC_BASE (so the mode
    /// stays); the host-vector filter is kept too.
    pub fn init_reset(&mut self) {
        self.reset_registers();
    }

    /// A LINT pin fired: fixed mode sets IRR, other modes are returned.
    ///
    /// Intel SDM vol. 3A §11.5.1: a masked entry (always so while
    /// software-disabled) delivers nothing; fixed uses the entry's trigger.
    pub fn local_interrupt(&mut self, pin: Lint) -> LocalEvent {
        let index = match pin {
            Lint::Lint0 => LVT_LINT0,
            Lint::Lint1 => LVT_LINT1,
        };
        let lvt = Lvt::from_bits(self.s.lvt.get(index).copied().unwrap_or(LVT_MASKED));
        if lvt.masked() || self.mode() == ApicMode::Disabled {
            return LocalEvent::None;
        }
        match lvt.delivery_mode() {
            0 => {
                let trigger = if lvt.level() {
                    Trigger::Level
                } else {
                    Trigger::Edge
                };
                self.request(lvt.vector(), trigger);
                LocalEvent::None
            }
            4 => LocalEvent::Nmi,
            7 => LocalEvent::ExtInt,
            _ => LocalEvent::Unsupported,
        }
    }

    /// The highest IRR vector whose class is above PPR.
    #[inline]
    pub fn highest_deliverable(&self) -> Option<u8> {
        let vector = self.s.irr.highest()?;
        (vector & 0xF0 > self.ppr() & 0xF0).then_some(vector)
    }

    /// The guest took `vector`: IRR -> ISR.
    ///
    /// Returns false and changes nothing when `vector` is not pending or its
    /// class is not above every in-service class: such a vector cannot have
    /// been delivered (Intel SDM vol. 3A §11.8.3.1), and taking it would
    /// break the nesting that EOI relies on. (Added return value; callers
    /// that ignore it are unaffected.)
    #[inline]
    pub fn acknowledge(&mut self, vector: u8) -> bool {
        let isrv = self.s.isr.highest().unwrap_or(0);
        if vector & 0xF0 <= isrv & 0xF0 || !self.s.irr.remove(vector) {
            return false;
        }
        self.s.isr.insert(vector);
        true
    }

    /// A delivery of `vector` did not happen after all: ISR -> IRR.
    pub fn unacknowledge(&mut self, vector: u8) {
        if self.s.isr.remove(vector) {
            self.s.irr.insert(vector);
        }
    }

    /// EOI: clears the highest ISR bit; `None` when nothing is in service.
    #[inline]
    pub fn eoi(&mut self) -> Option<EoiInfo> {
        let vector = self.s.isr.highest()?;
        self.s.isr.remove(vector);
        Some(EoiInfo {
            vector,
            level: self.s.tmr.contains(vector),
        })
    }

    /// SVR bit 12 is set (directed EOI advertised): the guest will EOI the
    /// IOAPIC itself, so a level EOI need not be broadcast (Intel SDM vol. 3A
    /// §11.8.5). The engine decides what to do with the host.
    pub fn eoi_broadcast_suppressed(&self) -> bool {
        self.s.directed_eoi && self.s.svr & SVR_SUPPRESS_EOI_BROADCAST != 0
    }

    /// TPR.
    pub fn tpr(&self) -> u8 {
        self.s.tpr
    }

    /// Sets TPR (the guest's CR8/V_TPR).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.s.tpr = tpr;
    }

    /// PPR (Intel SDM vol. 3A §11.8.3.1).
    #[inline]
    pub fn ppr(&self) -> u8 {
        let isrv = self.s.isr.highest().unwrap_or(0);
        if self.s.tpr & 0xF0 >= isrv & 0xF0 {
            self.s.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// IRR.
    pub fn irr(&self) -> &VectorSet {
        &self.s.irr
    }

    /// ISR.
    pub fn isr(&self) -> &VectorSet {
        &self.s.isr
    }

    /// TMR.
    pub fn tmr(&self) -> &VectorSet {
        &self.s.tmr
    }

    /// ESR as latched (not yet visible).
    pub fn pending_esr(&self) -> u32 {
        self.s.esr_pending
    }

    /// When the timer next fires, in `now` ticks; `None` when not armed.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.s.timer_armed.then_some(self.s.timer_deadline)
    }

    /// Fires the timer if due at `now` (sets the LVT timer vector unless masked,
    /// re-arms periodic mode); returns whether it fired.
    ///
    /// A masked timer still expires (and returns true) without an interrupt
    /// (Intel SDM vol. 3A §11.5.4). Periodic expiries missed by a late poll
    /// coalesce into one interrupt; the period stays aligned to the first
    /// start.
    pub fn poll_timer(&mut self, now: u64) -> bool {
        if !self.s.timer_armed || now < self.s.timer_deadline {
            return false;
        }
        let mode = self.timer_mode();
        if mode == TIMER_PERIODIC && self.s.timer_initial != 0 {
            let full = u64::from(self.s.timer_initial).saturating_mul(self.count_period());
            let late = now.saturating_sub(self.s.timer_deadline);
            let skipped = late.checked_div(full).unwrap_or(0);
            // skipped * full <= late, so the reload time is at most `now`.
            let reload = self
                .s
                .timer_deadline
                .saturating_add(skipped.saturating_mul(full));
            self.s.timer_start = reload;
            self.s.timer_start_count = self.s.timer_initial;
            self.set_deadline(reload.checked_add(full));
        } else {
            self.s.timer_armed = false;
            if mode == TIMER_TSC_DEADLINE {
                // Intel SDM vol. 3A §11.5.4.1: the timer disarms itself; the
                // MSR then reads 0 (as KVM does).
                self.s.tsc_deadline = 0;
            }
        }
        let lvt = Lvt::from_bits(self.s.lvt[LVT_TIMER]);
        if !lvt.masked() {
            self.request(lvt.vector(), Trigger::Edge);
        }
        true
    }

    /// IA32_TSC_DEADLINE read.
    pub fn tsc_deadline(&self) -> u64 {
        if self.timer_mode() == TIMER_TSC_DEADLINE {
            self.s.tsc_deadline
        } else {
            0
        }
    }

    /// IA32_TSC_DEADLINE write (ignored unless in TSC-deadline mode).
    ///
    /// 0 disarms; a deadline already past fires at the next poll.
    pub fn set_tsc_deadline(&mut self, deadline: u64) -> WriteEffect {
        if self.timer_mode() != TIMER_TSC_DEADLINE || self.mode() == ApicMode::Disabled {
            return WriteEffect::None;
        }
        self.s.tsc_deadline = deadline;
        self.s.timer_deadline = deadline;
        self.s.timer_armed = deadline != 0;
        WriteEffect::TimerChanged
    }

    /// The whole state as a plain value.
    pub fn save(&self) -> ApicState {
        self.s
    }

    /// Rebuilds an APIC from a saved state.
    ///
    /// A state from elsewhere is made consistent: no vector below 16 in
    /// IRR/ISR/TMR, no host vector below 31 allowed, EN = 0 with EXTD = 1
    /// becomes disabled. Any state `save` produced comes back unchanged.
    pub fn restore(state: &ApicState) -> Self {
        let mut s = *state;
        s.irr = s.irr.intersection(&VectorSet::LEGAL);
        s.isr = s.isr.intersection(&VectorSet::LEGAL);
        s.tmr = s.tmr.intersection(&VectorSet::LEGAL);
        s.host_allowed = s.host_allowed.intersection(&VectorSet::HOST_LEGAL);
        if s.apic_base & APIC_BASE_EN == 0 {
            s.apic_base &= !APIC_BASE_EXTD;
        }
        Self { s }
    }
}

/// x2APIC logical ID derived from the ID (Intel SDM vol. 3A §11.12.10.2).
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | 1u32.wrapping_shl(id & 0xF)
}

/// The register at an xAPIC MMIO offset (16-byte aligned, 0x000-0x3F0).
fn mmio_reg(offset: u32) -> Result<Reg, RegisterError> {
    if offset & 0xF != 0 || offset > 0x3F0 {
        return Err(RegisterError::Unknown);
    }
    Reg::from_index(offset >> 4, false).ok_or(RegisterError::Unknown)
}
