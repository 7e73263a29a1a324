//! One emulated local APIC: mode, requests, IPIs, EOI, priorities, save/restore.

use crate::icr::{ApicAddress, DestinationFormat, IcrDeliveryMode, Ipi};
use crate::regs::*;
use crate::state::ApicState;
use crate::types::*;
use crate::vectors::VectorSet;

/// One emulated local APIC (<= 256 bytes).
#[derive(Clone, Debug)]
pub struct LocalApic {
    pub(crate) s: ApicState,
    /// Derived from TPR and ISR and kept current by every write of either
    /// ([`LocalApic::sync_ppr`]), so that the delivery check reads one
    /// byte instead of scanning ISR (issue 14: highest deliverable in about
    /// ten instructions). Not part of the saved state.
    ///
    /// PPR's class | 0x0F: a vector is deliverable when it is above this
    /// (its class is above PPR's class).
    deliver_above: u8,
    /// The highest in-service vector, 0 when none (0-15 never enter ISR).
    isrv: u8,
}

const _: () = assert!(core::mem::size_of::<LocalApic>() <= 256);

impl LocalApic {
    /// An APIC after power-on reset: xAPIC mode enabled (APIC_BASE EN = 1,
    /// base 0xFEE0_0000), software-disabled (SVR = 0xFF), every LVT masked.
    pub fn new(config: ApicConfig) -> Self {
        Self::with_state(ApicState::power_on(&config))
    }

    fn with_state(s: ApicState) -> Self {
        let mut apic = Self {
            s,
            deliver_above: 0,
            isrv: 0,
        };
        apic.sync_ppr();
        apic
    }

    /// Recomputes the cached ISRV and PPR (Intel SDM vol. 3A §11.8.3.1);
    /// called by every write of TPR or ISR.
    #[inline]
    pub(crate) fn sync_ppr(&mut self) {
        self.set_ppr(self.s.isr.highest().unwrap_or(0));
    }

    /// Caches `isrv` (the highest in-service vector, 0 for none) and the
    /// class of the PPR it gives with TPR.
    #[inline]
    fn set_ppr(&mut self, isrv: u8) {
        self.isrv = isrv;
        self.deliver_above = (self.s.tpr & 0xF0).max(isrv & 0xF0) | 0x0F;
    }

    /// APIC ID (x2APIC width).
    pub fn id(&self) -> u32 {
        self.s.config.apic_id
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
                id: self.id(),
                ldr: x2apic_ldr(self.id()),
                format: DestinationFormat::Cluster,
                mode,
            },
            _ => ApicAddress {
                id: self.id() & 0xFF,
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

    /// The CPU model this APIC was built for.
    pub fn config(&self) -> &ApicConfig {
        &self.s.config
    }

    /// Writes IA32_APIC_BASE; illegal transitions and reserved bits are #GP.
    ///
    /// Intel SDM vol. 3A §11.12.5 (Figure 11-27): disabled <-> xAPIC,
    /// xAPIC -> x2APIC, x2APIC -> disabled; EN = 0 with EXTD = 1 is invalid.
    /// Reserved, and so #GP: bits 0-7, 9, MAXPHYADDR-63 (§11.4.4, Figure
    /// 11-5, MAXPHYADDR from [`ApicConfig::max_phys_addr`]) and EXTD when the
    /// model has no x2APIC (§11.12.1). The BSP bit is read-only here
    /// (written values ignored). Project choice: entering the disabled state
    /// resets the APIC registers to their power-up values (the APIC is off,
    /// §11.4.3, so nothing it held can be delivered later); ID, base address
    /// and the host-vector filter survive.
    pub fn set_apic_base(&mut self, value: u64) -> Result<WriteEffect, RegisterError> {
        if value & !self.apic_base_writable() != 0 {
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

    /// APIC_BASE bits a write may set for this model.
    fn apic_base_writable(&self) -> u64 {
        // Base address bits 12 .. MAXPHYADDR-1 (32 <= MAXPHYADDR <= 52).
        let top = 1u64
            .checked_shl(self.s.config.phys_addr_bits())
            .unwrap_or(0)
            .wrapping_sub(1);
        let extd = if self.s.config.x2apic {
            APIC_BASE_EXTD
        } else {
            0
        };
        (top & APIC_BASE_ADDR_MASK) | APIC_BASE_EN | APIC_BASE_BSP | extd
    }

    /// Power-up values for every register but APIC_BASE, the ID and the
    /// host-vector filter.
    pub(crate) fn reset_registers(&mut self) {
        let fresh = ApicState {
            apic_base: self.s.apic_base,
            host_allowed: self.s.host_allowed,
            ..ApicState::power_on(&self.s.config)
        };
        self.s = fresh;
        self.sync_ppr();
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

    /// Accepts a fixed interrupt from a source the guest controls or trusts:
    /// an IPI routed by the engine, a device model, an emulated IOAPIC or an
    /// MSI of the guest's own devices (trigger as the source programmed it).
    ///
    /// A hardware-disabled APIC drops it (`Dropped`, nothing latched); a
    /// vector 0-15 is refused (`Illegal`) and latches ESR bit 6, "receive
    /// illegal vector" (Intel SDM vol. 3A §11.5.3, Table 11-6), which may
    /// raise the LVT error interrupt; a software-disabled APIC drops it
    /// (spec §6 choice).
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

    /// Accepts an interrupt the *host* presented (the doorbell descriptor of
    /// spec §3: host device models, the host's IOAPIC, host MSIs), through
    /// the guest's allowed-vector filter (CONFIGURE_VECTOR).
    ///
    /// Vectors 0-30 are never allowed (spec §6: illegal for the protocol). A
    /// refused vector (`Denied`) leaves no trace in the guest's APIC, not
    /// even an ESR bit: the host must not be able to make the guest see
    /// errors. An allowed one continues as [`LocalApic::request`].
    #[inline]
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
    /// §11.6.1): fixed and lowest-priority set IRR (edge); NMI, INIT and
    /// start-up are reported for the engine to deliver outside IRR/ISR.
    ///
    /// What needs no action is filtered here and comes back as
    /// [`Received::Ignored`]: anything to a hardware-disabled APIC, and the
    /// INIT level de-assert (no effect on current processors, §11.6.1).
    pub fn accept_ipi(&mut self, ipi: &Ipi) -> Received {
        if self.mode() == ApicMode::Disabled {
            return Received::Ignored;
        }
        match ipi.mode {
            IcrDeliveryMode::Fixed | IcrDeliveryMode::LowestPriority => {
                Received::Requested(self.request(ipi.vector, Trigger::Edge))
            }
            IcrDeliveryMode::Nmi => Received::Nmi,
            IcrDeliveryMode::Init if ipi.is_init_deassert() => Received::Ignored,
            IcrDeliveryMode::Init => Received::Init,
            IcrDeliveryMode::StartUp => Received::StartUp(ipi.vector),
            IcrDeliveryMode::Smi | IcrDeliveryMode::Reserved => Received::Unsupported,
        }
    }

    /// INIT reset (Intel SDM vol. 3A §11.4.7.3): every register back to its
    /// power-up value except the APIC ID and IA32_APIC_BASE (so the mode
    /// stays); the host-vector filter is kept too.
    pub fn init_reset(&mut self) {
        self.reset_registers();
    }

    /// The highest IRR vector whose class is above PPR.
    #[inline]
    pub fn highest_deliverable(&self) -> Option<u8> {
        let vector = self.s.irr.highest()?;
        // vector[7:4] > PPR[7:4], as one compare.
        (vector > self.deliver_above).then_some(vector)
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
        if vector & 0xF0 <= self.isrv & 0xF0 || !self.s.irr.remove(vector) {
            return false;
        }
        self.s.isr.insert(vector);
        // Its class is above every other in-service class: the new ISRV,
        // no scan needed.
        self.set_ppr(vector);
        true
    }

    /// A delivery of `vector` did not happen after all: ISR -> IRR.
    pub fn unacknowledge(&mut self, vector: u8) {
        if self.s.isr.remove(vector) {
            self.s.irr.insert(vector);
            self.sync_ppr();
        }
    }

    /// EOI: clears the highest ISR bit; `None` when nothing is in service.
    ///
    /// [`EoiInfo::broadcast`] says whether the EOI goes on to the IOAPIC
    /// (level vector, and no EOI-broadcast suppression, Intel SDM vol. 3A
    /// §11.8.5).
    #[inline]
    pub fn eoi(&mut self) -> Option<EoiInfo> {
        // The highest in-service vector (cached; an empty ISR has none, and
        // vector 0 is never in service).
        let vector = self.isrv;
        if !self.s.isr.remove(vector) {
            return None;
        }
        self.sync_ppr();
        let level = self.s.tmr.contains(vector);
        Some(EoiInfo {
            vector,
            level,
            broadcast: level && !self.eoi_broadcast_suppressed(),
        })
    }

    /// SVR bit 12 is set (directed EOI advertised): the guest will EOI the
    /// IOAPIC itself, so a level EOI is not broadcast (Intel SDM vol. 3A
    /// §11.8.5). Already folded into [`EoiInfo::broadcast`].
    pub fn eoi_broadcast_suppressed(&self) -> bool {
        self.s.config.directed_eoi && self.s.svr & SVR_SUPPRESS_EOI_BROADCAST != 0
    }

    /// TPR.
    pub fn tpr(&self) -> u8 {
        self.s.tpr
    }

    /// Sets TPR (the guest's CR8/V_TPR).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.s.tpr = tpr;
        self.sync_ppr();
    }

    /// PPR (Intel SDM vol. 3A §11.8.3.1).
    #[inline]
    pub fn ppr(&self) -> u8 {
        let isrv = self.isrv;
        if self.s.tpr & 0xF0 >= isrv & 0xF0 {
            self.s.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The highest in-service vector (cached: no scan of ISR).
    #[inline]
    pub fn highest_in_service(&self) -> Option<u8> {
        // 0-15 never enter ISR, so 0 means none.
        (self.isrv != 0).then_some(self.isrv)
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
    /// becomes disabled, EXTD without an x2APIC in the model becomes xAPIC,
    /// an absent LVT CMCI stays masked. Any state `save` produced comes back
    /// unchanged.
    pub fn restore(state: &ApicState) -> Self {
        let mut s = *state;
        s.irr = s.irr.intersection(&VectorSet::LEGAL);
        s.isr = s.isr.intersection(&VectorSet::LEGAL);
        s.tmr = s.tmr.intersection(&VectorSet::LEGAL);
        s.host_allowed = s.host_allowed.intersection(&VectorSet::HOST_LEGAL);
        if s.apic_base & APIC_BASE_EN == 0 || !s.config.x2apic {
            s.apic_base &= !APIC_BASE_EXTD;
        }
        if !s.config.cmci {
            s.lvt[LVT_CMCI] = LVT_MASKED;
        }
        Self::with_state(s)
    }
}

/// x2APIC logical ID derived from the ID (Intel SDM vol. 3A §11.12.10.2).
pub fn x2apic_ldr(id: u32) -> u32 {
    ((id >> 4) << 16) | 1u32.wrapping_shl(id & 0xF)
}
