//! The logic behind the SVSM's #HV handler (vector 28; spec §1, §3).
//!
//! [`handle_hv`] takes VMPL0's events from the doorbell page in the order
//! the GHCB spec requires (NoFurtherSignal and NMI cleared before anything
//! is read, the VMPL0 vector acknowledged with a compare-exchange), notes
//! the per-VMPL events in the vCPU's [`VcpuShared`] slot for the next
//! `before_run`, and hands VMPL0's own vector, NMI and #MC to the SVSM.
//!
//! It only touches atomics: no GHCB call, no lock, no allocation, so it is
//! safe with interrupts disabled, from an interrupt frame that interrupted
//! the run loop, and when called spuriously or repeatedly (a second call
//! finds nothing and reports [`HvEvents::is_empty`]). The guest's own
//! interrupts are *not* taken here: `before_run` consumes the guest VMPL's
//! descriptor every time, so an #HV lost or coalesced by the host delays
//! nothing beyond the next run.

use altinj_doorbell::DoorbellPage;

use crate::fabric::VcpuShared;

/// What one #HV entry found for the SVSM.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct HvEvents {
    /// VMPL0's own vector (e.g. the notification vector, or a device of the
    /// SVSM), already acknowledged in the doorbell page.
    pub vmpl0_vector: Option<u8>,
    /// A legal vector left pending because VMPL0's TPR blocks it.
    pub deferred_vector: Option<u8>,
    /// An NMI for VMPL0.
    pub vmpl0_nmi: bool,
    /// A machine check for VMPL0 (a clear report; the SVSM decides).
    pub vmpl0_mc: bool,
    /// Per-VMPL events (bit `VMPL - 1`): the host posted for that VMPL; the
    /// SVSM should leave any idle wait and run that VMPL's `before_run`.
    pub vmpl_events: u8,
    /// Illegal items the doorbell code dropped.
    pub rejected: u32,
}

impl HvEvents {
    /// Whether the entry found nothing (a spurious #HV).
    pub fn is_empty(&self) -> bool {
        self.vmpl0_vector.is_none()
            && self.deferred_vector.is_none()
            && !self.vmpl0_nmi
            && !self.vmpl0_mc
            && self.vmpl_events == 0
    }
}

/// VMPL0's own task priority, in the 8-bit APIC TPR format (class in bits
/// 7:4). A newtype because CR8 holds the class alone (CR8 bits 3:0 = TPR bits 7:4,
/// AMD APM vol. 2 §16.6.4 / Intel SDM vol. 3A §11.8.6): passing CR8 where
/// the TPR is meant would accept vectors the SVSM's priority should block.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Vmpl0Tpr(u8);

impl Vmpl0Tpr {
    /// Priority 0: every legal vector is accepted.
    pub const ZERO: Self = Self(0);

    /// From the 8-bit APIC TPR register value.
    pub const fn from_tpr(tpr: u8) -> Self {
        Self(tpr)
    }

    /// From CR8, which holds the priority class in bits 3:0 (higher bits are
    /// reserved and ignored here).
    pub const fn from_cr8(cr8: u64) -> Self {
        Self(((cr8 & 0xF) as u8) << 4)
    }

    /// The 8-bit TPR value.
    pub const fn tpr(self) -> u8 {
        self.0
    }
}

/// Handles one #HV entry for the vCPU owning `doorbell` and `shared`.
/// Vectors at or below `vmpl0_tpr`'s class stay pending in the doorbell page.
pub fn handle_hv(doorbell: &DoorbellPage, shared: &VcpuShared, vmpl0_tpr: Vmpl0Tpr) -> HvEvents {
    let taken = doorbell.take_events(vmpl0_tpr.tpr());
    shared.note_hv_events(taken.vmpl_events);
    if taken.mc {
        log::warn!("#HV: machine check pending for VMPL0");
    }
    HvEvents {
        vmpl0_vector: taken.vector,
        deferred_vector: taken.deferred_vector,
        vmpl0_nmi: taken.nmi,
        vmpl0_mc: taken.mc,
        vmpl_events: taken.vmpl_events,
        rejected: taken.rejected,
    }
}
