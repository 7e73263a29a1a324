//! Where the per-instance ledger (`ledger.rs`) learns whether a request
//! coalesces: is the vector already pending for the target, read from the
//! real state at the moment of the request (spec §3, §6; Intel SDM vol. 3A
//! §11.8.4: a request coalesces only into an IRR bit that is already set).
//!
//! Pending means not yet in service: in the doorbell descriptor the host
//! posts into, in the IPI mailbox, or in the IRR of the APIC that emulates
//! the vCPU (the engine's, or the host's after a hand-back), except a
//! vector the guest took from V_IRQ during the current run (the hardware
//! acknowledged it; the emulated IRR catches up at the exit). A vector
//! written into EVENTINJ that the CPU has not begun to deliver is pending
//! too: the emulating APIC moved it to ISR early, but the guest's CPU never
//! acknowledged it (a run that never entered the guest, a VMRUN that failed
//! with BUSY), so a new request coalesces with it. One whose delivery an
//! exit cut (EXITINTINFO) was acknowledged: it is in service, also while
//! re-injected, and a new request is a second instance (spec §6; the
//! instance issue 9 path 2 lost). A vector pending only as a V_IRQ the
//! guest has not taken yet is ambiguous: the guest may take it before the
//! new request reaches the engine's IRR, and nobody can tell which came
//! first, so one more delivery is allowed but not owed.

use core::sync::atomic::Ordering;

use altinj_doorbell::DescriptorStatus;
use altinj_vmsa::{EventType, VmsaAccess};

use crate::guest::TIMER_VECTOR;
use crate::ledger::Pending;
use crate::world::{GUEST_VMPL, Sim};

impl Sim {
    /// Whether `vector` is pending (not in service) for vCPU `j` now.
    pub(crate) fn vector_pending(&self, j: usize, vector: u8) -> Pending {
        let Some(v) = self.vcpus.get(j) else {
            return Pending::No;
        };
        let taken = v.virq_taken == Some(vector);
        let in_eventinj = self.m.vmsas.get(j).is_some_and(|vmsa| {
            let ev = vmsa.event_inj();
            ev.valid() && ev.event_type() == EventType::Intr && ev.vector() == vector
        }) && v.cut_in_service != Some(vector);
        if in_eventinj {
            return Pending::Yes;
        }
        if v.handed_back {
            let in_irr = !taken
                && v.host_apic
                    .as_ref()
                    .is_some_and(|a| a.irr().contains(vector));
            return if in_irr { Pending::Yes } else { Pending::No };
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
        // Queued in V_IRQ and not taken yet: the guest may take it before
        // this request reaches the engine's IRR (module doc).
        let in_virq = self.m.vmsas.get(j).is_some_and(|vmsa| {
            let c = vmsa.vintr_ctrl();
            c.v_irq() && c.v_intr_vector() == vector
        });
        if in_page || in_mailbox {
            Pending::Yes
        } else if in_irr && in_virq {
            Pending::Ambiguous
        } else if in_irr {
            Pending::Yes
        } else {
            Pending::No
        }
    }

    /// Instances of `vector` that may legitimately be owed to vCPU `j` at
    /// the end of the run: one pending (IRR or what feeds it) and one
    /// presented but not yet taken by the guest's handler (in the emulating
    /// APIC's ISR with no handler frame of it).
    pub(crate) fn in_flight(&self, j: usize, vector: u8) -> usize {
        let Some(v) = self.vcpus.get(j) else {
            return 0;
        };
        let isr = if v.handed_back {
            v.host_apic
                .as_ref()
                .is_some_and(|a| a.isr().contains(vector))
        } else {
            self.m
                .engines
                .get(j)
                .and_then(Option::as_ref)
                .is_some_and(|e| e.apic().isr().contains(vector))
        };
        let handling = v.guest.frames.iter().any(|f| f.vector == vector);
        // A timer expiry the emulating APIC has not polled yet (the run
        // ended as it fell due).
        let now = self.now;
        let deadline = if v.handed_back {
            v.host_apic
                .as_ref()
                .and_then(altinj_apic::LocalApic::next_timer_deadline)
        } else {
            self.m
                .engines
                .get(j)
                .and_then(Option::as_ref)
                .and_then(|e| e.apic().next_timer_deadline())
        };
        let expired = vector == TIMER_VECTOR && deadline.is_some_and(|d| d <= now);
        usize::from(self.vector_pending(j, vector) != Pending::No || expired)
            .saturating_add(usize::from(isr && !handling))
    }

    /// Per vCPU and vector: owed instances that are lost at the end of the
    /// run (requested before `cutoff`, or more than can be in flight), as
    /// (vCPU, vector, request time of the newest such instance).
    pub(crate) fn lost_instances(&self, cutoff: u64) -> alloc::vec::Vec<(usize, u8, u64)> {
        let mut out = alloc::vec::Vec::new();
        for (j, ledger) in self.ledgers.iter().enumerate() {
            for vector in 0u8..=255 {
                let owed = ledger.owed_count(vector);
                if owed == 0 {
                    continue;
                }
                let old = ledger.owed_times(vector).filter(|t| *t < cutoff).count();
                let lost = old.max(owed.saturating_sub(self.in_flight(j, vector)));
                let times: alloc::vec::Vec<u64> = ledger.owed_times(vector).collect();
                for at in times.iter().take(lost) {
                    out.push((j, vector, *at));
                }
            }
        }
        out
    }

    /// Records a request of `vector` for vCPU `j` that was (`pending`) or
    /// was not already pending just before it was made.
    pub(crate) fn request_vector(&mut self, j: usize, vector: u8, pending: Pending) {
        let now = self.now;
        let owed = self
            .ledgers
            .get_mut(j)
            .map_or(0, |l| l.request(vector, now, pending));
        // IRR holds one instance and one more can be in service (spec §6):
        // a third owed instance while none is pending means two were
        // merged into one already. The oldest is reported lost now (and
        // written off, so each loss is reported once).
        if owed > 2 {
            let at = self
                .ledgers
                .get_mut(j)
                .and_then(|l| l.write_off_oldest(vector));
            self.violation(
                j,
                alloc::format!(
                    "vector {vector:#x}: a third instance accepted while none is pending: an owed instance was lost (merged; oldest owed requested at t={})",
                    at.unwrap_or(0)
                ),
            );
        }
    }
}
