//! The hypervisor after a hand-back (KVM with its own APIC for the vCPU):
//! disable-AI takes the APIC from the descriptor, then the host injects
//! (only with SEV_FEATURES.AlternateInjection clear), resolves each run,
//! takes the guest's EOIs and routes its IPIs.

use alloc::{format, vec, vec::Vec};
use core::sync::atomic::Ordering;

use altinj_apic::{LocalApic, VectorSet};
use altinj_doorbell::DescriptorStatus;
use altinj_kernel::platform::DisableAiRequest;
use altinj_vmsa::rules::{self, Reinjection, VirqOutcome};
use altinj_vmsa::{EventType, SevFeatures, VmsaAccess};

use crate::guest::{Dest, TIMER_VECTOR};
use crate::world::{GUEST_VMPL, Sim};

impl Sim {
    /// Disable-AI: the host takes vCPU `j`'s APIC from the descriptor the
    /// engine wrote back and emulates it from now on.
    pub(crate) fn host_takeover(&mut self, j: usize, request: DisableAiRequest) {
        if request.vmpl != GUEST_VMPL {
            self.violation(j, format!("disable-AI for VMPL {}", request.vmpl));
        }
        let mut irr = VectorSet::EMPTY;
        let mut isr = VectorSet::EMPTY;
        let mut nmi = false;
        let mut mc = false;
        if let Some(desc) = self
            .m
            .doorbells
            .get(j)
            .and_then(|p| p.descriptor(GUEST_VMPL).ok())
        {
            let status = DescriptorStatus::from_bits(desc.status.swap(0, Ordering::AcqRel));
            let vector = status.pending_vector();
            if vector >= 31 {
                irr.insert(vector);
            }
            if status.vector_31() {
                irr.insert(31);
            }
            nmi = status.nmi_pending();
            // A machine check handed back (status bit 9, spec §3) is the
            // host's to inject now.
            mc = status.mc_pending();
            let mut words = [0u32; 8];
            for (w, a) in words.iter_mut().skip(1).zip(desc.irr.iter()) {
                *w = a.swap(0, Ordering::AcqRel);
            }
            irr = irr.union(&VectorSet::from_words(words));
            let mut iwords = [0u32; 8];
            for (w, a) in iwords.iter_mut().zip(desc.isr.iter()) {
                *w = a.swap(0, Ordering::AcqRel);
            }
            isr = VectorSet::from_words(iwords);
        }
        self.check_handed_isr(j, &isr);
        let mut tmr = VectorSet::EMPTY;
        for line in &self.lines {
            if line.target == j && line.outstanding {
                tmr.insert(line.vector);
            }
        }
        let config = crate::world::engine_config(j).apic;
        let mut state = LocalApic::new(config).save();
        state.apic_base = altinj_apic::APIC_DEFAULT_BASE
            | altinj_apic::APIC_BASE_EN
            | altinj_apic::APIC_BASE_EXTD
            | if j == 0 {
                altinj_apic::APIC_BASE_BSP
            } else {
                0
            };
        state.svr = 0x1FF;
        state.tpr = request.tpr;
        state.irr = irr;
        state.isr = isr;
        state.tmr = tmr;
        let mut host_apic = LocalApic::restore(&state);
        let timer_on = self.vcpus.get(j).is_some_and(|v| v.guest.timer_on);
        if timer_on && let Some(period) = self.profile.timer_period {
            let now = self.now;
            let _ = host_apic.write_msr(altinj_apic::MSR_TIMER_DIVIDE, 0xB, now);
            let _ = host_apic.write_msr(
                altinj_apic::MSR_LVT_TIMER,
                (1 << 17) | u64::from(TIMER_VECTOR),
                now,
            );
            let _ = host_apic.write_msr(altinj_apic::MSR_TIMER_INITIAL, period, now);
        }
        if let Some(vmsa) = self.m.vmsas.get_mut(j) {
            let features = vmsa.sev_features();
            if self.config.host_clears_ai {
                vmsa.set_sev_features(features.difference(SevFeatures::ALTERNATE_INJECTION));
            }
            if self.config.sabotage == Some(crate::world::Sabotage::KeepAlternateInjection) {
                vmsa.set_sev_features(features.union(SevFeatures::ALTERNATE_INJECTION));
            }
        }
        if let Some(v) = self.vcpus.get_mut(j) {
            v.handed_back = true;
            v.host_apic = Some(host_apic);
            v.host_nmi |= nmi;
            v.host_mc |= mc;
        }
        self.stats.handbacks = self.stats.handbacks.saturating_add(1);
        self.schedule_recreate(j);
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.instant(j, now, "APIC handed back to the host", "");
        }
    }

    /// KVM's injection into the guest after a hand-back (its own APIC).
    ///
    /// Only while SEV_FEATURES.AlternateInjection is clear in the guest
    /// VMSA: with it set the hardware takes event injection from fields only
    /// VMPL0 writes (spec §1, §2), so the host cannot inject at all. A host
    /// interrupt pending then can never reach the guest: a violation, not
    /// a silent wait (the hand-back must clear the bit, spec §5).
    pub(crate) fn kvm_present(&mut self, i: usize) {
        let ai = self
            .m
            .vmsas
            .get(i)
            .is_some_and(|v| v.sev_features().contains(SevFeatures::ALTERNATE_INJECTION));
        if ai {
            let pending = self.vcpus.get(i).is_some_and(|v| {
                v.host_nmi
                    || v.host_mc
                    || v.host_apic
                        .as_ref()
                        .is_some_and(|a| a.irr().highest().is_some())
            });
            let first = self.vcpus.get(i).is_some_and(|v| !v.ai_stuck_reported);
            if pending && first {
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.ai_stuck_reported = true;
                }
                self.violation(
                    i,
                    "host interrupt pending after the hand-back, but AlternateInjection is still set in the VMSA: the host can never inject it",
                );
            }
            return;
        }
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        if v.host_mc && !vmsa.event_inj().valid() {
            vmsa.set_event_inj(altinj_vmsa::EventInj::exception(18, None));
            v.host_mc = false;
        }
        let ctrl = vmsa.vintr_ctrl();
        if v.host_nmi && !ctrl.v_nmi() {
            vmsa.set_vintr_ctrl(ctrl.with_v_nmi(true));
            v.host_nmi = false;
            v.kvm_vnmi = true;
        }
        rules::set_v_tpr(vmsa, host_apic.tpr() >> 4);
        if let Some(vector) = host_apic.highest_deliverable() {
            if rules::can_take_interrupt(vmsa) {
                if rules::inject_interrupt(vmsa, vector).is_ok() {
                    host_apic.acknowledge(vector);
                    v.kvm_eventinj = Some(vector);
                }
            } else if !vmsa.vintr_ctrl().v_irq() && rules::queue_v_irq(vmsa, vector).is_ok() {
                v.kvm_virq = Some(vector);
            }
        } else if let Some(vector) = host_apic.irr().highest() {
            // Blocked only by TPR: queued in V_IRQ with V_INTR_PRIO = its
            // class, so the hardware's V_TPR comparison delivers it when the
            // guest lowers CR8 (AMD APM vol. 2 §15.21.4). Real KVM gets the
            // same effect from its CR8-write intercept; without either the
            // vector would wait for an unrelated exit.
            let in_service = host_apic.isr().highest().unwrap_or(0);
            if vector & 0xF0 > in_service & 0xF0
                && !vmsa.vintr_ctrl().v_irq()
                && rules::queue_v_irq(vmsa, vector).is_ok()
            {
                v.kvm_virq = Some(vector);
            }
        }
    }

    /// KVM resolves a run of a handed-back vCPU.
    pub(crate) fn kvm_resolve(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        v.virq_taken = None;
        let ctrl = vmsa.vintr_ctrl();
        let out = rules::take_undelivered(vmsa);
        if let Some(vector) = v.kvm_eventinj.take()
            && out.undelivered_event.is_some()
        {
            host_apic.unacknowledge(vector);
        }
        if out
            .undelivered_event
            .is_some_and(|e| e.event_type() == EventType::Exception && e.vector() == 18)
        {
            v.host_mc = true;
        }
        if let VirqOutcome::Taken(vector) = out.v_irq
            && v.kvm_virq == Some(vector)
        {
            host_apic.acknowledge(vector);
        }
        v.kvm_virq = None;
        if let Reinjection::Reinjected { event, .. } = rules::reinject_exit_int_info(vmsa)
            && event.event_type() == EventType::Intr
        {
            v.kvm_eventinj = Some(event.vector());
        }
        if v.kvm_vnmi && !ctrl.v_nmi() {
            v.kvm_vnmi = false;
        }
        host_apic.set_tpr((ctrl.v_tpr() & 0xF) << 4);
    }

    /// A host exit of a handed-back vCPU: like KVM at every exit, first
    /// account for a V_IRQ the guest took during the run (IRR -> ISR).
    pub(crate) fn kvm_sync_virq(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        let Some(v) = self.vcpus.get_mut(i) else {
            return;
        };
        let Some(host_apic) = v.host_apic.as_mut() else {
            return;
        };
        if let Some(vector) = v.kvm_virq
            && !vmsa.vintr_ctrl().v_irq()
        {
            let ctrl = vmsa.vintr_ctrl();
            vmsa.set_vintr_ctrl(ctrl.with_v_intr_vector(0).with_v_intr_prio(0));
            host_apic.acknowledge(vector);
            v.kvm_virq = None;
            v.virq_taken = None;
        }
    }

    /// The guest's EOI after the hand-back: to the host's APIC.
    pub(crate) fn host_eoi(&mut self, i: usize) {
        self.stats.host_exits = self.stats.host_exits.saturating_add(1);
        self.kvm_sync_virq(i);
        let info = self
            .vcpus
            .get_mut(i)
            .and_then(|v| v.host_apic.as_mut())
            .and_then(LocalApic::eoi);
        if let Some(info) = info
            && info.level
        {
            self.line_eoi(i, info.vector);
        }
    }

    /// A handed-back guest's IPI, routed by the host.
    pub(crate) fn host_route_ipi(&mut self, from: usize, dest: Dest, vector: u8, nmi: bool) {
        self.stats.host_exits = self.stats.host_exits.saturating_add(1);
        self.kvm_sync_virq(from);
        self.stats.guest_ipis = self.stats.guest_ipis.saturating_add(1);
        let n = self.n();
        let targets: Vec<usize> = match dest {
            Dest::Physical(id) => vec![id as usize],
            Dest::AllButSelf => (0..n).filter(|j| *j != from).collect(),
            Dest::SelfIpi => vec![from],
        };
        for j in targets {
            if !self.vcpus.get(j).is_some_and(|v| v.created && !v.stopped) {
                continue;
            }
            if nmi {
                self.host_post_nmi(j);
            } else if self.vcpus.get(j).is_some_and(|v| v.handed_back) || self.host_target_ok(j) {
                self.host_post_edge(j, vector);
            }
            self.notify_any(j);
        }
    }
}
