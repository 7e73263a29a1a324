//! Where the per-instance ledger (`ledger.rs`) learns whether a request
//! coalesces: is the vector already pending for the target, read from the
//! real state at the moment of the request (spec §3, §6; Intel SDM vol. 3A
//! §11.8.4: a request coalesces only into an IRR bit that is already set).
//!
//! Pending means not yet in service: in the doorbell descriptor the host
//! posts into, in the IPI mailbox, or in the IRR of the APIC that emulates
//! the vCPU (the engine's, or the host's after a hand-back), except a
//! vector the guest took from V_IRQ during the current run (the hardware
//! acknowledged it; the emulated IRR catches up at the exit).

use core::sync::atomic::Ordering;

use doorbell::DescriptorStatus;

use crate::world::{GUEST_VMPL, Sim};

impl Sim {
    /// Whether `vector` is pending (not in service) for vCPU `j` now.
    pub(crate) fn vector_pending(&self, j: usize, vector: u8) -> bool {
        let Some(v) = self.vcpus.get(j) else {
            return false;
        };
        let taken = v.virq_taken == Some(vector);
        if v.handed_back {
            return !taken
                && v.host_apic
                    .as_ref()
                    .is_some_and(|a| a.irr().contains(vector));
        }
        let in_page = self
            .m
            .doorbells
            .get(j)
            .and_then(|p| p.descriptor(GUEST_VMPL).ok())
            .is_some_and(|d| {
                let status = DescriptorStatus::from_bits(d.status.load(Ordering::Acquire));
                let word = usize::from(vector >> 5)
                    .checked_sub(1)
                    .and_then(|k| d.irr.get(k))
                    .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (vector & 31)) != 0);
                (status.pending_vector() == vector && vector != 0)
                    || (vector == 31 && status.vector_31())
                    || word
            });
        let in_mailbox = self
            .m
            .shared
            .get(j)
            .is_some_and(|s| s.mailbox().peek().contains(vector));
        let in_irr = !taken
            && self
                .m
                .engines
                .get(j)
                .and_then(Option::as_ref)
                .is_some_and(|e| e.apic().irr().contains(vector));
        in_page || in_mailbox || in_irr
    }

    /// Records a request of `vector` for vCPU `j` that was (`pending`) or
    /// was not already pending just before it was made.
    pub(crate) fn request_vector(&mut self, j: usize, vector: u8, pending: bool) {
        let now = self.now;
        let owed = self
            .ledgers
            .get_mut(j)
            .map_or(0, |l| l.request(vector, now, pending));
        // IRR holds one instance and one more can be in service (spec §6):
        // a third owed instance means two were already merged into one.
        if owed > 2 {
            self.violation(
                j,
                alloc::format!(
                    "vector {vector:#x}: {owed} instances owed while none is pending: an accepted instance was merged away"
                ),
            );
        }
    }
}
