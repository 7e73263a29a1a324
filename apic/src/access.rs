//! Register access through x2APIC MSRs and xAPIC MMIO (Intel SDM vol. 3A
//! §11.4.1, §11.12.1.2).

use crate::lapic::{LocalApic, x2apic_ldr};
use crate::regs::*;
use crate::types::*;

/// A register of the APIC, independent of how it is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Reg {
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
    pub(crate) fn from_index(index: u32, x2apic: bool, cmci: bool) -> Option<Self> {
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
            0x2F if cmci => Reg::Lvt(LVT_CMCI),
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
    pub(crate) fn read_only(self, x2apic: bool) -> bool {
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
    /// Reads an x2APIC MSR (0x800-0x8FF) in x2APIC mode.
    ///
    /// Also answers IA32_APIC_BASE (any mode) and IA32_TSC_DEADLINE (reads 0
    /// unless the timer is in TSC-deadline mode). Like every call that takes
    /// `now`, it first delivers the timer expiries due at `now`, so what it
    /// reads is consistent (a current count of 0 past a deadline comes with
    /// the timer vector in IRR).
    pub fn read_msr(&mut self, msr: u32, now: u64) -> Result<u64, RegisterError> {
        match msr {
            MSR_APIC_BASE => return Ok(self.s.apic_base),
            MSR_TSC_DEADLINE => return Ok(self.tsc_deadline()),
            X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {}
            _ => return Err(RegisterError::Unknown),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(RegisterError::WrongMode);
        }
        let reg = self.msr_reg(msr)?;
        self.poll_timer(now);
        Ok(match reg {
            Reg::Id => u64::from(self.id()),
            Reg::Ldr => u64::from(x2apic_ldr(self.id())),
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
            MSR_TSC_DEADLINE => return Ok(self.set_tsc_deadline(value, now)),
            X2APIC_MSR_BASE..=X2APIC_MSR_LAST => {}
            _ => return Err(RegisterError::Unknown),
        }
        if self.mode() != ApicMode::X2Apic {
            return Err(RegisterError::WrongMode);
        }
        let reg = self.msr_reg(msr)?;
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
                // value <= 0xFF here.
                self.self_ipi(value as u8);
                Ok(WriteEffect::None)
            }
            other => Ok(self.write_common(other, value, now)),
        }
    }

    /// Reads a 32-bit xAPIC register at MMIO `offset` in xAPIC mode (first
    /// delivering the timer expiries due at `now`, as [`LocalApic::read_msr`]).
    pub fn read_mmio(&mut self, offset: u32, now: u64) -> Result<u32, RegisterError> {
        let reg = self.mmio_reg(offset)?;
        if self.mode() != ApicMode::XApic {
            return Err(RegisterError::WrongMode);
        }
        self.poll_timer(now);
        match reg {
            Reg::Id => Ok((self.id() & 0xFF) << 24),
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
    /// MMIO cannot fault: reserved bits are ignored (Intel SDM vol. 3A
    /// §11.4.1), and a write to a read-only register, including the ID
    /// (project choice: read-only, it stays the initial APIC ID), is
    /// silently ignored (`Ok(WriteEffect::None)`). Errors remain for what
    /// is not an xAPIC register access at all: an offset that is no register
    /// ([`RegisterError::Unknown`]) or an APIC not in xAPIC mode
    /// ([`RegisterError::WrongMode`]).
    pub fn write_mmio(
        &mut self,
        offset: u32,
        value: u32,
        now: u64,
    ) -> Result<WriteEffect, RegisterError> {
        let reg = self.mmio_reg(offset)?;
        if self.mode() != ApicMode::XApic {
            return Err(RegisterError::WrongMode);
        }
        if reg.read_only(false) {
            return Ok(WriteEffect::None);
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
                self.sync_ppr();
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

    /// Version register: 0x14, max LVT entry in 23:16 (6 with CMCI, else 5;
    /// Intel SDM vol. 3A §11.4.8), directed EOI in 24.
    pub(crate) fn version(&self) -> u32 {
        let max_lvt: u32 = if self.s.config.cmci { 6 << 16 } else { 5 << 16 };
        let deoi = if self.s.config.directed_eoi {
            VERSION_DIRECTED_EOI
        } else {
            0
        };
        APIC_VERSION | max_lvt | deoi
    }

    pub(crate) fn software_enabled(&self) -> bool {
        self.s.svr & SVR_ENABLE != 0
    }

    /// SVR: vector, enable, focus; bit 12 only with directed EOI; other
    /// reserved bits ignored (spec §6 choice, KVM's mask). Clearing the enable
    /// bit masks every LVT (Intel SDM vol. 3A §11.4.7.2); setting it does not
    /// unmask them.
    pub(crate) fn write_svr(&mut self, value: u32) {
        let mut keep = 0xFF | SVR_ENABLE | SVR_FOCUS_DISABLE;
        if self.s.config.directed_eoi {
            keep |= SVR_SUPPRESS_EOI_BROADCAST;
        }
        self.s.svr = value & keep;
        if !self.software_enabled() {
            for lvt in self.s.lvt.iter_mut() {
                *lvt |= LVT_MASKED;
            }
        }
    }

    pub(crate) fn write_lvt(&mut self, index: usize, value: u32, now: u64) -> WriteEffect {
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
            // After the store: an error entry written with an illegal
            // vector signals through itself (latch only, masked or not).
            self.check_lvt_vector(index, value);
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
        self.timer_mode_change(old_mode, new.timer_mode());
        self.check_lvt_vector(index, value);
        WriteEffect::TimerChanged
    }
}

impl LocalApic {
    /// The register at an x2APIC MSR (0x800-0x8FF) of this model.
    fn msr_reg(&self, msr: u32) -> Result<Reg, RegisterError> {
        Reg::from_index(msr & 0xFF, true, self.s.config.cmci).ok_or(RegisterError::Unknown)
    }

    /// The register at an xAPIC MMIO offset (16-byte aligned, 0x000-0x3F0)
    /// of this model.
    fn mmio_reg(&self, offset: u32) -> Result<Reg, RegisterError> {
        if offset & 0xF != 0 || offset > 0x3F0 {
            return Err(RegisterError::Unknown);
        }
        Reg::from_index(offset >> 4, false, self.s.config.cmci).ok_or(RegisterError::Unknown)
    }
}
