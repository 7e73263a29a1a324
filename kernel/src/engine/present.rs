//! Present (steps 2-3 of `before_run`): #MC, NMI and the highest
//! deliverable vector written into the guest VMSA (EVENTINJ, V_NMI, V_IRQ,
//! spec §2), and the lazy-EOI offer in the calling area.

use super::{Env, InEventInj, MC_VECTOR, VcpuEngine};
use crate::counters::bump;
use crate::nmi::NmiVia;
use altinj_vmsa::rules;
use altinj_vmsa::{EventInj, RFLAGS_IF, VmsaAccess};

impl VcpuEngine {
    /// Writes #MC, NMI and the highest deliverable vector into the VMSA.
    #[inline(always)]
    pub(super) fn present<const FAST: bool, V: VmsaAccess + ?Sized>(&mut self, vmsa: &mut V) {
        // A re-injected or foreign event owns EVENTINJ this run.
        let mut eventinj_free = !vmsa.event_inj().valid();
        // Cheap test first: without a #MC or an NMI pending neither block
        // below does anything.
        if !FAST || self.mc_pending || self.nmi.pending() {
            self.present_mc_nmi(vmsa, &mut eventinj_free);
        }
        self.present_vector(vmsa, eventinj_free);
    }

    /// The #MC and NMI part of [`VcpuEngine::present`].
    pub(super) fn present_mc_nmi<V: VmsaAccess + ?Sized>(
        &mut self,
        vmsa: &mut V,
        eventinj_free: &mut bool,
    ) {
        if self.mc_pending && *eventinj_free {
            vmsa.set_event_inj(EventInj::exception(MC_VECTOR, None));
            self.eventinj = Some(InEventInj::MachineCheck);
            self.mc_pending = false;
            *eventinj_free = false;
        }

        let ctrl = vmsa.vintr_ctrl();
        if let Some(via) = self.nmi.choose(
            ctrl.v_nmi_enable(),
            ctrl.v_nmi(),
            ctrl.v_nmi_mask(),
            ctrl.int_shadow(),
            *eventinj_free,
        ) {
            match via {
                NmiVia::VNmi => vmsa.set_vintr_ctrl(ctrl.with_v_nmi(true)),
                NmiVia::EventInj => {
                    vmsa.set_event_inj(EventInj::nmi());
                    self.eventinj = Some(InEventInj::Nmi);
                    *eventinj_free = false;
                }
            }
            self.nmi.mark_presented(via);
        }
    }

    /// The APIC vector part of [`VcpuEngine::present`].
    #[inline]
    pub(super) fn present_vector<V: VmsaAccess + ?Sized>(
        &mut self,
        vmsa: &mut V,
        eventinj_free: bool,
    ) {
        let (vector, behind_tpr) = match self.apic.highest_deliverable() {
            Some(vector) => (vector, false),
            None => match self.highest_behind_tpr() {
                Some(vector) => (vector, true),
                None => return,
            },
        };
        let rflags = vmsa.rflags();
        let ctrl = vmsa.vintr_ctrl();
        let window_open = rflags & RFLAGS_IF != 0 && !ctrl.int_shadow();
        if !behind_tpr && eventinj_free && window_open {
            vmsa.set_event_inj(EventInj::external_interrupt(vector));
            self.apic.acknowledge(vector);
            self.eventinj = Some(InEventInj::Apic(vector));
            bump(&mut self.counters.presented_eventinj);
        } else if !ctrl.v_irq() && rules::queue_v_irq(vmsa, vector).is_ok() {
            // V_INTR_PRIO = the vector's class, V_IGN_TPR = 0: hardware takes
            // it only while V_INTR_PRIO > V_TPR (spec §2), so a vector held
            // back by TPR alone is delivered as soon as the guest lowers CR8,
            // which does not exit with Alternate Injection.
            self.virq = Some(vector);
            bump(&mut self.counters.presented_virq);
            if behind_tpr {
                bump(&mut self.counters.virq_behind_tpr);
            }
        }
    }

    /// The highest pending vector when TPR alone holds it back: its class
    /// is above every in-service class, so it becomes deliverable as soon as
    /// TPR drops below its class (PPR = max(TPR, ISRV class), Intel SDM
    /// vol. 3A §11.8.3.1). Call when `highest_deliverable()` is `None`.
    pub(super) fn highest_behind_tpr(&self) -> Option<u8> {
        let vector = self.apic.irr().highest()?;
        let in_service = self.apic.isr().highest().unwrap_or(0);
        (vector & 0xF0 > in_service & 0xF0).then_some(vector)
    }

    /// Sets or clears the calling area's `no_eoi_required` (module doc).
    #[inline(always)]
    pub(super) fn arm_lazy_eoi<P: ?Sized>(&mut self, env: &Env<'_, P>) {
        // Armed still: the last exit could not read the byte back, so
        // whether the guest skipped its EOI is unknown; it is read again at
        // the next exit, and the byte is left as the guest left it.
        if self.lazy_eoi_armed {
            return;
        }
        let Some(byte) = env.caa_no_eoi else {
            return;
        };
        let isr = self.apic.isr();
        let irr = self.apic.irr();
        // The one vector that will be in service after this run, if there
        // is exactly one and nothing else is pending (no popcount: it is
        // not a baseline x86-64 instruction).
        let lone = match self.virq {
            // The queued vector joins ISR when the guest takes it.
            Some(v) => (isr.is_empty() && irr.is_only(v)).then_some(v),
            None if irr.is_empty() => match self.apic.highest_in_service() {
                Some(h) if isr.is_only(h) => Some(h),
                _ => None,
            },
            None => None,
        };
        // A host level vector is never skipped lazily, even when an edge
        // request of it cleared its TMR bit: the host waits for its EOI.
        let safe =
            lone.is_some_and(|v| !self.apic.tmr().contains(v) && !self.host_level.contains(v));
        if byte.store(u8::from(safe)).is_err() {
            bump(&mut self.counters.platform_errors);
            self.lazy_eoi_armed = false;
            return;
        }
        self.lazy_eoi_armed = safe;
    }
}
