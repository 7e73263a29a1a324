//! Collect (step 1 of `before_run`): the guest VMPL's descriptor (host
//! vectors through the CONFIGURE_VECTOR filter, level vectors recorded for
//! their specific EOI, NMI, #MC), the mailbox (cross-vCPU vectors and NMIs)
//! and the APIC timer (spec §3).

use super::{Env, Fatal, InEventInj, VcpuEngine};
use crate::counters::bump;
use crate::fabric::VcpuShared;
use crate::mailbox::Drained;
use crate::platform::Platform;
use altinj_apic::{RequestOutcome, Trigger};
use altinj_doorbell::{Descriptor, DescriptorStatus, PendingInterrupts};
use core::sync::atomic::Ordering;

impl VcpuEngine {
    /// Takes everything pending for this vCPU into the APIC / NMI state.
    #[inline(always)]
    pub(super) fn collect<const FAST: bool, P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        slot: &VcpuShared,
    ) -> Result<(), Fatal> {
        // The #HV handler's notes are informative: the descriptor is
        // consumed every time, so a lost #HV costs nothing.
        let _ = slot.take_hv_events();
        // Nothing, or one edge vector, without the general consume (`fast`).
        if !(FAST && self.collect_host_fast(env)) {
            self.collect_host(env)?;
        }
        if self.kick_retry {
            self.retry_failed_kicks(env);
        }
        if slot.mailbox().outstanding() {
            // The drain also clears a failed-kick mark: it takes every post
            // announced so far, so the kick needs no retry.
            self.accept_posted(slot.mailbox().drain());
        }
        // Cheap test first: with no deadline and no fire noted, the timer
        // step does nothing.
        if !FAST || slot.timer_fire_noted() || self.apic.timer_may_be_armed() {
            self.collect_timer(env, slot);
        }
        Ok(())
    }

    /// Takes and accepts everything in the guest VMPL's descriptor.
    #[inline(never)]
    pub(super) fn collect_host<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
    ) -> Result<(), Fatal> {
        match env.doorbell.consume(self.guest_vmpl) {
            Ok(host) => self.accept_host(env, &host),
            Err(_) => Ok(()),
        }
    }

    /// Host-presented interrupts from the descriptor (spec §3).
    pub(super) fn accept_host<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        host: &PendingInterrupts,
    ) -> Result<(), Fatal> {
        let rejected = u64::from(host.rejected);
        self.counters.host_vectors_rejected =
            self.counters.host_vectors_rejected.saturating_add(rejected);
        for (word, base) in host.vectors.iter().zip((0u8..).step_by(32)) {
            let mut bits = *word;
            while bits != 0 {
                // trailing_zeros < 32 since bits != 0.
                let vector = base.wrapping_add(bits.trailing_zeros() as u8);
                bits &= bits.wrapping_sub(1);
                self.host_vector(vector, Trigger::Edge);
            }
        }
        if let Some(vector) = host.level {
            if self.host_vector(vector, Trigger::Level) {
                self.host_level.record(vector);
            } else {
                // Refused: the host still waits for an EOI of the level
                // line, so give it one now rather than wedge it.
                self.host_eoi(env, vector);
            }
        }
        if host.nmi {
            self.request_nmi();
        }
        if host.mc {
            bump(&mut self.counters.machine_checks);
            let nested = self.mc_pending || self.eventinj == Some(InEventInj::MachineCheck);
            if nested {
                return Err(self.fail(Fatal::NestedMachineCheck));
            }
            log::warn!("vCPU {}: machine check for the guest", self.index);
            self.mc_pending = true;
        }
        if host.ipi_requested {
            log::debug!("vCPU {}: host set IPI requested (ignored)", self.index);
        }
        Ok(())
    }

    /// One host vector through the filter; true when the APIC holds it.
    #[inline]
    pub(super) fn host_vector(&mut self, vector: u8, trigger: Trigger) -> bool {
        if !altinj_doorbell::is_legal_vector(vector) {
            bump(&mut self.counters.host_vectors_rejected);
            return false;
        }
        match self.apic.request_from_host(vector, trigger) {
            RequestOutcome::Accepted | RequestOutcome::Coalesced => {
                bump(&mut self.counters.host_vectors_accepted);
                true
            }
            RequestOutcome::Illegal | RequestOutcome::Dropped | RequestOutcome::Denied => {
                bump(&mut self.counters.host_vectors_rejected);
                false
            }
        }
    }

    /// What other vCPUs posted into the mailbox: edge requests and an NMI.
    pub(super) fn accept_posted(&mut self, posted: Drained) {
        for vector in posted.iter() {
            let _ = self.apic.request(vector, Trigger::Edge);
        }
        if posted.nmi {
            self.request_nmi();
        }
    }

    pub(super) fn request_nmi(&mut self) {
        if !self.nmi.request() {
            bump(&mut self.counters.nmis_collapsed);
        }
    }
}

/// Whether the host posted something `Descriptor::consume` takes (one
/// load of the status word; reserved bits, which it leaves, do not count).
pub(super) fn has_host_posts(descriptor: &Descriptor) -> bool {
    const POSTS: u32 = DescriptorStatus::VECTOR_MASK
        | DescriptorStatus::NMI
        | DescriptorStatus::MC
        | DescriptorStatus::LEVEL
        | DescriptorStatus::MULTIPLE
        | DescriptorStatus::VECTOR_31;
    descriptor.status.load(Ordering::Acquire) & POSTS != 0
}
