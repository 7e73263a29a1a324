//! Handing the APIC back to the host when the guest deregisters (SVSM spec
//! 58019 APIC protocol CONFIGURE; disable-alternate-injection, spec §4).

use crate::page::{Descriptor, DescriptorStatus};
use crate::sync::Ordering;

/// The emulated APIC state given back to the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandoffState {
    /// Pending vectors, APIC register order (vector `v`: word `v >> 5`, bit `v & 31`).
    pub irr: [u32; 8],
    /// In-service vectors, APIC register order.
    pub isr: [u32; 8],
    /// An NMI is pending.
    pub nmi_pending: bool,
}

impl Descriptor {
    /// Writes `state` into the descriptor for the host to take over.
    ///
    /// IRR vectors 32-255 go to the `irr` words, vector 31 to status bit 31,
    /// all eight ISR words to `isr`; multiple-vectors is raised so the host
    /// scans `irr`, and NMI when one is pending (as COCONUT-SVSM does).
    /// Everything is merged with `fetch_or`, never stored, so what the host
    /// posted meanwhile stays; the words are written before the status bits
    /// (the poster's order). Returns how many IRR vectors 0-30 were dropped:
    /// the descriptor cannot hold them (spec §6).
    pub fn hand_off(&self, state: &HandoffState) -> u32 {
        let mut status = DescriptorStatus::MULTIPLE;
        let mut dropped = 0;
        if let Some(&low) = state.irr.first() {
            if low & (1 << 31) != 0 {
                status |= DescriptorStatus::VECTOR_31;
            }
            dropped = (low & !(1 << 31)).count_ones();
        }
        for (irr, &bits) in self.irr.iter().zip(state.irr.iter().skip(1)) {
            if bits != 0 {
                irr.fetch_or(bits, Ordering::AcqRel);
            }
        }
        for (isr, &bits) in self.isr.iter().zip(state.isr.iter()) {
            if bits != 0 {
                isr.fetch_or(bits, Ordering::AcqRel);
            }
        }
        if state.nmi_pending {
            status |= DescriptorStatus::NMI;
        }
        self.status.fetch_or(status, Ordering::AcqRel);
        dropped
    }
}
