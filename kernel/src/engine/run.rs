//! The entry points around one guest run: [`VcpuEngine::before_run`]
//! (BUSY, then collect, present, lazy EOI, V_TPR), [`VcpuEngine::work_pending`]
//! for the window before Run VMPL, and [`VcpuEngine::after_exit`] (BUSY,
//! then the recall in `recall`). The steps live in `collect`, `present` and
//! `recall`; the module doc of `engine` gives the order.

use super::collect::has_host_posts;
use super::{Env, ExitInfo, Fatal, MAX_BUSY_REPAIRS, VcpuEngine, rare};
use crate::counters::bump;
use crate::platform::Platform;
use altinj_vmsa::rules;
use altinj_vmsa::{ExitKind, VmsaAccess};

impl VcpuEngine {
    /// Prepares the guest VMSA for the next run and clears BUSY last.
    pub fn before_run<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        self.before_run_with::<true, P, V>(env, vmsa)
    }

    /// [`VcpuEngine::before_run`] without its fast paths, for the tests
    /// that compare both (`kernel/tests/props.rs`).
    #[cfg(feature = "ktests")]
    pub fn before_run_without_fast_paths<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        self.before_run_with::<false, P, V>(env, vmsa)
    }

    /// `before_run`, with (`FAST`) or without the cheap tests that skip
    /// work (`fast`).
    #[inline(always)]
    pub(super) fn before_run_with<
        const FAST: bool,
        P: Platform + ?Sized,
        V: VmsaAccess + ?Sized,
    >(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        if let Some(fatal) = self.fatal {
            return Err(fatal);
        }
        let slot = self.slot(env).ok_or(Fatal::NoSlot)?;
        // BUSY before the first VMSA write, every time (spec §2): a VMSA the
        // SVSM has not claimed yet (first run, or BUSY cleared by anyone
        // else) may be runnable on another CPU.
        vmsa.test_and_set_busy();
        if self.in_flight {
            // Called twice without a run: take back what the first call
            // presented, exactly as after a failed VMRUN.
            self.resolve_exit(env, vmsa, None);
        }
        if !self.registration.emulating() {
            slot.set_running(true);
            self.in_flight = false;
            vmsa.clear_busy();
            return Ok(());
        }

        self.collect::<FAST, P>(env, slot)?;
        self.present::<FAST, V>(vmsa);
        self.arm_lazy_eoi(env);

        let v_tpr = self.apic.tpr() >> 4;
        rules::set_v_tpr(vmsa, v_tpr);
        self.written_v_tpr = v_tpr;
        self.in_flight = true;
        slot.set_running(true);
        vmsa.clear_busy();
        Ok(())
    }

    /// Whether anything arrived since `before_run` collected: a post in
    /// the mailbox (a kick), a host post in the guest VMPL's descriptor or
    /// a platform timer fire ([`crate::VcpuShared::note_timer_fired`]). A few
    /// atomic loads, no GHCB call: the run loop checks it between
    /// `before_run` and Run VMPL with VMPL0 interrupts disabled and calls
    /// `before_run` again when it is true (`docs/integration.md`).
    pub fn work_pending<P: ?Sized>(&self, env: &Env<'_, P>) -> bool {
        if !self.registration.emulating() {
            return false;
        }
        let Some(slot) = self.slot(env) else {
            return false;
        };
        slot.mailbox().outstanding()
            || slot.timer_fire_noted()
            || env
                .doorbell
                .descriptor(self.guest_vmpl)
                .is_ok_and(has_host_posts)
    }

    /// Processes the guest exit; BUSY stays set until the next
    /// [`VcpuEngine::before_run`].
    pub fn after_exit<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<ExitInfo, Fatal> {
        let slot = self.slot(env).ok_or(Fatal::NoSlot)?;
        slot.set_running(false);
        let was_busy = vmsa.test_and_set_busy();
        let exit = vmsa.exit_code().kind();
        let busy_exit = exit == ExitKind::Busy;
        if busy_exit || was_busy {
            bump(&mut self.counters.busy_repairs);
            if rare(self.counters.busy_repairs) {
                log::warn!(
                    "vCPU {}: BUSY found at exit ({:?}), repairing",
                    self.index,
                    exit
                );
            }
        }
        if busy_exit {
            self.busy_streak = self.busy_streak.saturating_add(1);
        } else {
            self.busy_streak = 0;
        }
        if self.registration.emulating() {
            self.resolve_exit(env, vmsa, Some(exit));
        }
        self.in_flight = false;
        if self.busy_streak > MAX_BUSY_REPAIRS {
            return Err(self.fail(Fatal::BusyStorm));
        }
        if let Some(fatal) = self.fatal {
            return Err(fatal);
        }
        Ok(ExitInfo {
            exit,
            repaired: busy_exit || was_busy,
        })
    }
}
