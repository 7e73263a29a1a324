//! One emulated local APIC: mode, requests, IPIs, EOI, priorities, save/restore.

use crate::icr::{ApicAddress, DeliveryMode, DestinationFormat, Ipi};
use crate::regs::*;
use crate::state::ApicState;
use crate::types::*;
use crate::vectors::VectorSet;

/// One emulated local APIC (<= 256 bytes).
#[derive(Clone, Debug)]
pub struct LocalApic {
    pub(crate) s: ApicState,
}

const _: () = assert!(core::mem::size_of::<LocalApic>() <= 256);

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
    pub(crate) fn dfr_format(&self) -> DestinationFormat {
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
    pub(crate) fn reset_registers(&mut self) {
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

    pub(crate) fn send_icr(&mut self) -> WriteEffect {
        let ipi = Ipi::decode(self.s.icr, self.mode(), self.address().id);
        if matches!(ipi.mode, DeliveryMode::Fixed | DeliveryMode::LowestPriority) && ipi.vector < 16
        {
            self.latch_esr(Esr::SEND_ILLEGAL_VECTOR);
            return WriteEffect::None;
        }
        WriteEffect::SendIpi(ipi)
    }

    /// Latches ESR bits and raises the LVT error interrupt when unmasked.
    pub(crate) fn latch_esr(&mut self, bits: Esr) {
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
    pub(crate) fn accept(&mut self, vector: u8, trigger: Trigger) -> RequestOutcome {
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
