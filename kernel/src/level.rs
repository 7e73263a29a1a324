//! Host-presented level-triggered vectors (a "host TMR").
//!
//! A level vector from the host's descriptor (status bit 10) stays asserted
//! at the host until VMPL0 sends it the specific EOI (GHCB 0x8000_001D).
//! The engine records such vectors here when it accepts them and, when the
//! guest's EOI retires one of them, sends the specific EOI exactly once: the
//! bit is taken out before the call. The gate is this record, never the
//! guest-visible TMR, which an edge request of the same vector clears. When
//! the guest disables its APIC (APIC_BASE EN = 0, which clears IRR/ISR/TMR)
//! every recorded vector gets its specific EOI at once. Level interrupts generated inside
//! the SVSM (LVT entries, device models) are never in this set, so their
//! EOIs never reach the host. When the guest enabled EOI-broadcast
//! suppression (SVR bit 12, directed EOI) it EOIs the host's IOAPIC itself
//! and the engine sends nothing. Like Secure AVIC's shadow ISR (spec §7) this
//! is one bit per vector: the host does not re-assert a level vector before
//! its EOI.

use altinj_apic::VectorSet;

/// Which vectors currently in the APIC came from the host as level-triggered.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct HostLevel {
    tmr: VectorSet,
}

impl HostLevel {
    /// Nothing tracked.
    pub const fn new() -> Self {
        Self {
            tmr: VectorSet::EMPTY,
        }
    }

    /// The host presented `vector` as level-triggered and the APIC took it.
    pub fn record(&mut self, vector: u8) {
        self.tmr.insert(vector);
    }

    /// The guest EOI'd `vector`: true when the host must get the specific
    /// EOI (it is true once per recorded presentation).
    pub fn complete(&mut self, vector: u8) -> bool {
        self.tmr.remove(vector)
    }

    /// Whether `vector` is a host level vector awaiting its EOI.
    pub fn contains(&self, vector: u8) -> bool {
        self.tmr.contains(vector)
    }

    /// The tracked set.
    pub fn set(&self) -> &VectorSet {
        &self.tmr
    }

    /// Forgets everything (the APIC went back to the host).
    pub fn clear(&mut self) {
        self.tmr = VectorSet::EMPTY;
    }
}
