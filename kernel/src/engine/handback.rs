//! Handing the APIC back to the host (spec §5 CONFIGURE, §4 0x8000_001C).

use apic::Trigger;
use doorbell::HandoffState;
use vmsa::{EventInj, RFLAGS_IF, VIntrCtrl, VmsaAccess};

use super::{Env, InEventInj, VcpuEngine};
use crate::counters::bump;
use crate::nmi::{NmiExit, NmiVia};
use crate::platform::{DisableAiRequest, Platform};
use crate::protocol::ResultCode;

impl VcpuEngine {
    /// Gives the APIC back to the host: descriptor writeback, then
    /// disable-AI (spec §5 CONFIGURE, §4 0x8000_001C), then the mailbox is
    /// closed.
    ///
    /// Order \[choice\]: a post can land at any time, so the mailbox is
    /// drained into the APIC before the writeback (the common case), and
    /// closed only once the host has taken the APIC: [`Mailbox::close`]
    /// takes what arrived in between, which goes to the host by #HV IPI
    /// like every later post (whose sender sees the mailbox closed and
    /// forwards it). Nothing is stranded in a mailbox nobody drains, and a
    /// failed disable-AI leaves the mailbox open and the APIC emulated.
    ///
    /// [`Mailbox::close`]: crate::mailbox::Mailbox::close
    pub(super) fn hand_back<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), ResultCode> {
        let descriptor = env
            .doorbell
            .descriptor(self.guest_vmpl)
            .map_err(|_| ResultCode::InvalidRequest)?;
        // Whatever is still posted to this vCPU goes to the host too.
        if let Some(slot) = self.slot(env) {
            let posted = slot.mailbox().drain();
            for vector in posted.iter() {
                let _ = self.apic.request(vector, Trigger::Edge);
            }
            if posted.nmi {
                self.request_nmi();
            }
        }
        // An APIC vector or NMI parked in EVENTINJ / V_NMI goes back to
        // pending state so it is handed over, not lost.
        let mut ctrl: VIntrCtrl = vmsa.vintr_ctrl();
        match self.eventinj {
            Some(InEventInj::Apic(v)) => {
                vmsa.set_event_inj(EventInj::new());
                self.recall(v);
                self.eventinj = None;
            }
            Some(InEventInj::Nmi) => {
                vmsa.set_event_inj(EventInj::new());
                self.nmi.exit_outcome(NmiExit::NotDelivered);
                self.eventinj = None;
            }
            _ => {}
        }
        if self.nmi.presented() == Some(NmiVia::VNmi) && ctrl.v_nmi() {
            ctrl = ctrl.with_v_nmi(false);
            vmsa.set_vintr_ctrl(ctrl);
            self.nmi.exit_outcome(NmiExit::NotDelivered);
        }
        let nmi_pending = self.nmi.pending();
        let state = HandoffState {
            irr: self.apic.irr().words(),
            isr: self.apic.isr().words(),
            nmi_pending,
        };
        let dropped = descriptor.hand_off(&state);
        if dropped != 0 {
            log::warn!(
                "vCPU {}: {dropped} pending vectors 16-30 cannot be handed to the host",
                self.index
            );
        }
        let request = DisableAiRequest {
            vmpl: self.guest_vmpl,
            tpr: self.apic.tpr(),
            int_shadow: ctrl.int_shadow(),
            interrupts_enabled: vmsa.rflags() & RFLAGS_IF != 0,
        };
        if env.platform.disable_alternate_injection(request).is_err() {
            bump(&mut self.counters.platform_errors);
            log::warn!("vCPU {}: disable-AI failed; keeping the APIC", self.index);
            // Take our own writeback out again; it coalesces with the APIC.
            let back = descriptor.consume();
            let _ = self.accept_host(env, &back);
            return Err(ResultCode::InvalidRequest);
        }
        self.nmi.take_for_hand_back();
        self.host_level.clear();
        self.registration.complete_hand_back();
        if let Some(slot) = self.slot(env) {
            // Closing also clears a failed-kick mark (moot now).
            let late = slot.mailbox().close();
            for vector in late.iter() {
                self.forward_ipi(env, slot, vector, false);
            }
            if late.nmi {
                self.forward_ipi(env, slot, 0, true);
            }
        }
        let _ = env.platform.arm_timer(None);
        self.timer_armed = None;
        log::info!("vCPU {}: APIC handed back to the host", self.index);
        Ok(())
    }
}
