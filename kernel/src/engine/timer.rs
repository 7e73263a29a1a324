//! The APIC timer on the platform's one-shot timer (spec §4 #HV timer).
//!
//! The APIC timer is polled against `Platform::now` in `before_run` and
//! before every register write that changes it (the `apic` crate polls for
//! the LVT, count and divide registers; the engine for IA32_TSC_DEADLINE),
//! so no expiry is lost to a rewrite. The platform timer is one-shot: when
//! it fires before the APIC deadline (clock skew, a coarse platform timer)
//! the SVSM's note ([`crate::VcpuShared::note_timer_fired`]) makes the next
//! `before_run` arm it again instead of waiting for an unrelated exit.

use super::{Env, VcpuEngine};
use crate::counters::bump;
use crate::fabric::VcpuShared;
use crate::platform::Platform;

impl VcpuEngine {
    /// `before_run`'s timer step: inject a due expiry, keep the platform
    /// timer armed for the next deadline.
    pub(super) fn collect_timer<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        slot: &VcpuShared,
    ) {
        let fired = slot.take_timer_fired();
        let Some(deadline) = self.apic.next_timer_deadline() else {
            return;
        };
        let now = env.platform.now();
        if now >= deadline {
            if self.apic.poll_timer(now) {
                bump(&mut self.counters.timer_fires);
            }
            self.rearm_timer(env);
            return;
        }
        if fired && self.timer_armed == Some(deadline) {
            // The one-shot fired early and is spent: arm it again.
            bump(&mut self.counters.timer_early);
            self.timer_armed = None;
        }
        if self.timer_armed != Some(deadline) {
            self.rearm_timer(env);
        }
    }

    /// Delivers an expiry already due now (before a timer register changes,
    /// and before the hand-back snapshots IRR).
    pub(super) fn poll_timer_now<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        self.poll_timer_at(env.platform.now());
    }

    /// Delivers an APIC timer expiry due at `now`.
    pub(super) fn poll_timer_at(&mut self, now: u64) {
        if self.apic.next_timer_deadline().is_some() && self.apic.poll_timer(now) {
            bump(&mut self.counters.timer_fires);
        }
    }

    /// Arms the platform timer for the APIC's next deadline.
    pub(super) fn rearm_timer<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        let deadline = self.apic.next_timer_deadline();
        if deadline == self.timer_armed {
            return;
        }
        match env.platform.arm_timer(deadline) {
            Ok(()) => self.timer_armed = deadline,
            Err(_) => {
                self.timer_armed = None;
                if !self.timer_missing_logged {
                    self.timer_missing_logged = true;
                    log::warn!(
                        "vCPU {}: no platform timer; the guest must use the host's timer",
                        self.index
                    );
                }
            }
        }
    }
}
