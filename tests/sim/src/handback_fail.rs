//! Failing disable-AI (issue 9 path 5, scenario `handback-fail`).
//!
//! The host model fails a seeded share of disable-AI calls. After a failed
//! one the vCPU stays emulated (the guest's call answers INVALID_REQUEST,
//! the VM-wide count stays 0) and the guest retries later with DEREGISTER
//! or QUERY (spec §5: either hands back the caller at 0). Two checks:
//! - right after the failed call, the doorbell descriptor holds exactly
//!   the ISR words it held before it and no IRR/status bit it did not hold
//!   (the engine took its writeback back; spec §3, handback.rs step 4);
//! - at every hand-back the host model takes over, each vector in the
//!   descriptor's ISR is one the guest really has in service (a handler
//!   frame, or an acknowledged delivery being re-injected): a vector the
//!   guest has since EOI'd there is a stale writeback of a failed attempt.

use alloc::{format, vec::Vec};

use core::sync::atomic::Ordering;

use altinj_apic::VectorSet;
use altinj_vmsa::{EventType, VmsaAccess};

use crate::guest::{Call, FrameKind};
use crate::world::{GUEST_VMPL, Sabotage, Sim};

/// The descriptor words: status, IRR words 1-7, ISR words 0-7.
pub(crate) type DescriptorWords = [u32; 16];

impl Sim {
    /// The descriptor of vCPU `j` as the host would read it.
    pub(crate) fn descriptor_words(&self, j: usize) -> DescriptorWords {
        let mut out = [0u32; 16];
        if let Some(d) = self
            .m
            .doorbells
            .get(j)
            .and_then(|p| p.descriptor(GUEST_VMPL).ok())
        {
            let words = core::iter::once(&d.status)
                .chain(d.irr.iter())
                .chain(d.isr.iter());
            for (o, w) in out.iter_mut().zip(words) {
                *o = w.load(Ordering::Acquire);
            }
        }
        out
    }

    /// Before VMPL0 answers vCPU `i`'s call: when it is a CONFIGURE that may
    /// hand back, decide (seeded) whether the disable-AI call fails, and
    /// take the descriptor snapshot. Draws from the generator only in
    /// scenarios that fail disable-AI, so others replay as before.
    pub(crate) fn arm_disable_ai_failure(&mut self, i: usize) -> Option<(DescriptorWords, u64)> {
        let configure = matches!(
            self.vcpus.get(i).and_then(|v| v.guest.call),
            Some(Call::Configure(_))
        );
        if self.profile.disable_ai_fail == 0 || !configure {
            return None;
        }
        let fail = self.rng.chance(self.profile.disable_ai_fail);
        self.m.platform.fail_disable_ai.set(fail);
        Some((
            self.descriptor_words(i),
            self.m.platform.disable_ai_failures.get(),
        ))
    }

    /// After the call: whether a disable-AI failed in it; if so the
    /// descriptor must be as before (module doc).
    pub(crate) fn check_failed_disable_ai(
        &mut self,
        i: usize,
        armed: Option<(DescriptorWords, u64)>,
    ) -> bool {
        self.m.platform.fail_disable_ai.set(false);
        let Some((before, failures)) = armed else {
            return false;
        };
        if self.m.platform.disable_ai_failures.get() == failures {
            return false;
        }
        self.stats.disable_ai_failed = self.stats.disable_ai_failed.saturating_add(1);
        if self.config.sabotage == Some(Sabotage::StaleIsrAfterFailedDisableAi) {
            self.leave_stale_isr(i);
        }
        let after = self.descriptor_words(i);
        let isr_changed = after.get(8..) != before.get(8..);
        let new_bits = after
            .iter()
            .zip(before.iter())
            .take(8)
            .any(|(a, b)| a & !b != 0);
        if isr_changed || new_bits {
            self.violation(
                i,
                format!(
                    "failed disable-AI left the descriptor changed: before {before:08x?}, after {after:08x?}"
                ),
            );
        }
        true
    }

    /// Sabotage: the engine's ISR words stay in the descriptor after the
    /// failed attempt (what the engine did before the path-5 fix).
    fn leave_stale_isr(&self, i: usize) {
        let Some(engine) = self.m.engines.get(i).and_then(Option::as_ref) else {
            return;
        };
        let words = engine.apic().isr().words();
        if let Some(d) = self
            .m
            .doorbells
            .get(i)
            .and_then(|p| p.descriptor(GUEST_VMPL).ok())
        {
            for (w, bits) in d.isr.iter().zip(words) {
                w.fetch_or(bits, Ordering::AcqRel);
            }
        }
    }

    /// At a hand-back: every vector in the descriptor's ISR (`isr`) must
    /// be in service in vCPU `j`'s guest (module doc).
    pub(crate) fn check_handed_isr(&mut self, j: usize, isr: &VectorSet) {
        let Some(v) = self.vcpus.get(j) else { return };
        let mut serviced: Vec<u8> = v
            .guest
            .frames
            .iter()
            .filter(|f| f.kind == FrameKind::Intr)
            .map(|f| f.vector)
            .collect();
        serviced.extend(v.cut_in_service);
        if let Some(vmsa) = self.m.vmsas.get(j) {
            let ev = vmsa.event_inj();
            if ev.valid() && ev.event_type() == EventType::Intr {
                serviced.push(ev.vector());
            }
        }
        let stale = isr.iter().filter(|x| !serviced.contains(x));
        for vector in stale {
            self.violation(
                j,
                format!(
                    "hand-back: descriptor ISR holds {vector:#x}, which the guest is not servicing (EOI'd already: a stale writeback)"
                ),
            );
        }
    }
}

impl Sim {
    /// A deregistration made from inside an interrupt handler
    /// (`deregister_in_handler`): while the guest has never seen a
    /// hand-back fail, it makes its deregistration calls only there, so the
    /// hand-back's writeback carries the handler's vector in ISR.
    pub(crate) fn call_in_handler(&self, i: usize) -> Option<Call> {
        let v = self.vcpus.get(i)?;
        let g = &v.guest;
        let top = g.frames.last()?;
        let due = g.deregister_step.is_some_and(|s| self.step >= s);
        (self.profile.deregister_in_handler
            && due
            && !v.handed_back
            && !g.deregistered
            && g.handback_failures == 0
            && top.kind == FrameKind::Intr
            && top.work > 0)
            .then_some(Call::Configure(
                altinj_kernel::protocol::configure::DEREGISTER,
            ))
    }

    /// The guest reads the answer to a CONFIGURE whose hand-back failed:
    /// INVALID_REQUEST, the count stays 0, the APIC stays emulated
    /// (registration.rs \[choice\]); it will retry.
    pub(crate) fn complete_failed_handback(
        &mut self,
        i: usize,
        res: Option<altinj_kernel::protocol::CallResult>,
    ) {
        let call = self.vcpus.get_mut(i).and_then(|v| v.guest.call.take());
        let code = res.map(|r| r.code);
        if code != Some(altinj_kernel::protocol::ResultCode::InvalidRequest) {
            self.violation(
                i,
                format!("{call:?} with a failed disable-AI answered {code:?}, want InvalidRequest"),
            );
        }
        if self.vcpus.get(i).is_some_and(|v| v.handed_back) {
            self.violation(i, "disable-AI failed but the host took the APIC");
        }
        self.stats.registration_calls = self.stats.registration_calls.saturating_add(1);
        self.vm_registrations = 0;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.guest.registered = 0;
            v.guest.handback_failures = v.guest.handback_failures.saturating_add(1);
        }
    }
}
