//! Interrupts and errors the APIC generates itself: the LVT sources, the
//! ESR and its error interrupt, and IPIs at the sender (Intel SDM vol. 3A
//! §11.5, §11.6.1, §11.12.11).

use crate::icr::Ipi;
use crate::lapic::LocalApic;
use crate::regs::*;
use crate::types::*;

/// A guest ICR write of one of the two common IPIs, recognised without
/// decoding an [`Ipi`] ([`LocalApic::write_icr_fast`]): fixed, edge (the
/// level bits do not matter for a fixed IPI, spec §6), a legal vector.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FastIcr {
    /// To one physical x2APIC ID (not the broadcast ID).
    Physical {
        /// Destination APIC ID.
        id: u32,
        /// Vector (16-255).
        vector: u8,
    },
    /// Shorthand all-excluding-self.
    AllButSelf {
        /// Vector (16-255).
        vector: u8,
    },
}

impl LocalApic {
    /// The common guest IPIs with one mask test (the engine's fast path,
    /// issue 14): an x2APIC ICR write of a fixed IPI with a legal vector to
    /// one physical ID or to all but self, no reserved bit. Stores the ICR
    /// as [`LocalApic::write_msr`] does and says where it goes; for every
    /// other value it changes nothing and returns `None` (use `write_msr`,
    /// which decodes it fully, errors included).
    #[inline]
    pub fn write_icr_fast(&mut self, value: u64) -> Option<FastIcr> {
        // Bits 13:8 (fixed = 000, physical, delivery status, reserved),
        // 17:16 (reserved) and 31:20 (reserved): everything but the
        // vector, level, trigger and shorthand.
        const NOT_FIXED_PHYSICAL: u64 = 0xFFF3_3F00;
        const SHORTHAND: u64 = 3 << 18;
        let vector = value as u8;
        if value & NOT_FIXED_PHYSICAL != 0 || vector < 16 || self.mode() != ApicMode::X2Apic {
            return None;
        }
        let fast = match value & SHORTHAND {
            0 => {
                let id = (value >> 32) as u32;
                if id == u32::MAX {
                    return None;
                }
                FastIcr::Physical { id, vector }
            }
            SHORTHAND => FastIcr::AllButSelf { vector },
            _ => return None,
        };
        self.s.icr = value;
        Some(fast)
    }

    /// Sends the ICR. A fixed or lowest-priority IPI with a vector 0-15 is a
    /// send error: ESR bit 5, "send illegal vector", is latched (Intel SDM
    /// vol. 3A §11.5.3, Table 11-6: "a write to the ICR ... or to SELF IPI
    /// register") and nothing is sent, to itself or anyone else, so no
    /// receiver latches bit 6 (project choice, as Xen: one error, one bit,
    /// at the sender). Lowest priority is sent (spec §6), so bit 4
    /// "redirectable IPI" is never the answer.
    pub(crate) fn send_icr(&mut self) -> WriteEffect {
        let ipi = Ipi::decode(self.s.icr, self.mode(), self.address().id);
        if ipi.mode.carries_vector() && ipi.vector < 16 {
            self.latch_esr(Esr::SEND_ILLEGAL_VECTOR);
            return WriteEffect::None;
        }
        WriteEffect::SendIpi(ipi)
    }

    /// SELF_IPI write (x2APIC only, Intel SDM vol. 3A §11.12.11): an
    /// edge-triggered fixed IPI to this APIC. A vector 0-15 is a send error
    /// like the ICR's (Table 11-6 bit 5) and nothing is received.
    pub(crate) fn self_ipi(&mut self, vector: u8) {
        if vector < 16 {
            self.latch_esr(Esr::SEND_ILLEGAL_VECTOR);
        } else {
            let _ = self.request(vector, Trigger::Edge);
        }
    }

    /// Latches ESR bits; the LVT error interrupt is raised only when one of
    /// `bits` is newly set in the latch (Intel SDM vol. 3A §11.5.3: the ESR
    /// write "rearms the APIC error interrupt triggering mechanism"; a
    /// repeated error whose bit is still latched raises nothing, as Xen).
    pub(crate) fn latch_esr(&mut self, bits: Esr) {
        let new = bits.bits() & !self.s.esr_pending;
        self.s.esr_pending |= bits.bits();
        if new == 0 {
            return;
        }
        let lvt = Lvt::from_bits(self.s.lvt[LVT_ERROR]);
        if lvt.masked() || self.mode() == ApicMode::Disabled {
            return;
        }
        if lvt.vector() < 16 {
            // An illegal error vector is itself a receive error (Table 11-6
            // bit 6, "generated locally from the local vector table"); it
            // only latches: no recursion.
            self.s.esr_pending |= Esr::RECEIVE_ILLEGAL_VECTOR.bits();
        } else {
            self.accept(lvt.vector(), Trigger::Edge);
        }
    }

    /// An LVT entry was written: a fixed-mode entry with a vector 0-15 is
    /// signalled as an illegal vector, masked or not (Intel SDM vol. 3A
    /// §11.5.2: "the APIC may signal an illegal vector error, without regard
    /// to whether the mask bit is set"; project choice: it does). The error
    /// is the receive one, bit 6 (Table 11-6: "an interrupt generated
    /// locally from the local vector table"). Timer and error entries have
    /// no delivery-mode field: always fixed.
    pub(crate) fn check_lvt_vector(&mut self, index: usize, value: u32) {
        let lvt = Lvt::from_bits(value);
        let fixed = matches!(index, LVT_TIMER | LVT_ERROR) || lvt.delivery_mode() == 0;
        if fixed && lvt.vector() < 16 {
            self.latch_esr(Esr::RECEIVE_ILLEGAL_VECTOR);
        }
    }

    /// A local interrupt source fired (Intel SDM vol. 3A §11.5.1): a LINT
    /// pin, the thermal sensor, a performance-counter overflow or a
    /// corrected machine check.
    ///
    /// A masked entry (always so while software-disabled), a
    /// hardware-disabled APIC or an LVT the model lacks (CMCI without
    /// [`ApicConfig::cmci`]) delivers nothing. Fixed sets IRR with the
    /// entry's trigger (LINT pins; the others are edge), through
    /// [`LocalApic::request`], so a vector 0-15 latches ESR bit 6. NMI and
    /// ExtINT are returned for the engine; SMI, INIT and reserved modes are
    /// returned as unsupported. Thermal, PMC and CMCI entries support only
    /// fixed, SMI and NMI (Figure 11-8 notes): INIT and ExtINT there are
    /// reserved.
    pub fn local_interrupt(&mut self, source: LocalInterrupt) -> LocalEvent {
        let index = source.lvt_index();
        if self.mode() == ApicMode::Disabled || (index == LVT_CMCI && !self.s.config.cmci) {
            return LocalEvent::None;
        }
        let lvt = Lvt::from_bits(self.s.lvt.get(index).copied().unwrap_or(LVT_MASKED));
        if lvt.masked() {
            return LocalEvent::None;
        }
        let pin = matches!(source, LocalInterrupt::Lint0 | LocalInterrupt::Lint1);
        match LvtDeliveryMode::decode(lvt.delivery_mode(), pin) {
            LvtDeliveryMode::Fixed => {
                let trigger = if pin && lvt.level() {
                    Trigger::Level
                } else {
                    Trigger::Edge
                };
                let _ = self.request(lvt.vector(), trigger);
                LocalEvent::None
            }
            LvtDeliveryMode::Nmi => LocalEvent::Nmi,
            LvtDeliveryMode::ExtInt => LocalEvent::ExtInt,
            other => LocalEvent::Unsupported(other),
        }
    }
}
