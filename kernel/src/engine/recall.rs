//! Recall (`after_exit`, and a second `before_run` or `cancel_run` without a
//! run): what hardware took of what was presented, what goes back to IRR,
//! EXITINTINFO re-injection (see `exit_event`), the NMI outcome, TPR from
//! V_TPR, and an EOI the guest signalled lazily (spec §2).

use super::{Env, InEventInj, MC_VECTOR, VcpuEngine, rare};
use crate::counters::bump;
use crate::exit_event::{self, Presented};
use crate::nmi::{NmiExit, NmiVia};
use crate::platform::Platform;
use altinj_apic::Trigger;
use altinj_vmsa::rules::{self, Reinjection, VirqOutcome};
use altinj_vmsa::{EventInj, EventType, ExitKind, VmsaAccess};

impl VcpuEngine {
    /// Everything after BUSY is set: recall, acknowledge, re-inject, NMI,
    /// TPR, lazy EOI. `exit` is `None` when a second `before_run` recalls.
    pub(super) fn resolve_exit<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        exit: Option<ExitKind>,
    ) {
        let ctrl = vmsa.vintr_ctrl();
        self.nmi.exit_begin(ctrl.v_nmi_mask());

        let run = rules::take_undelivered(vmsa);
        // What hardware took of what the engine presented: the only INTR,
        // NMI and #MC that EXITINTINFO may name (see `exit_event`).
        let mut taken = Presented::default();
        // V_IRQ first, so a taken vector is in ISR before EXITINTINFO names it.
        match run.v_irq {
            VirqOutcome::Taken(v) if self.virq == Some(v) => {
                taken.virq_vector = Some(v);
                if !self.apic.acknowledge(v) {
                    // Cannot happen with the priorities checked at
                    // presentation; the guest has the vector either way.
                    log::warn!(
                        "vCPU {}: taken V_IRQ {v:#x} not acknowledgeable",
                        self.index
                    );
                }
                bump(&mut self.counters.virq_acknowledged);
            }
            VirqOutcome::Undelivered(v) if self.virq == Some(v) => {
                bump(&mut self.counters.recalled);
            }
            VirqOutcome::Empty => {}
            other => log::warn!("vCPU {}: unexpected V_IRQ state {:?}", self.index, other),
        }
        self.virq = None;

        // EVENTINJ still valid: not delivered.
        let presented = self.eventinj.take();
        let mut nmi_outcome = None;
        let mut keep = None;
        match (presented, run.undelivered_event) {
            // A re-injected vector stays in ISR and in EVENTINJ until the
            // guest takes it: recalled to IRR it would merge with an
            // instance still in the mailbox, drained at the next run.
            (Some(InEventInj::ReinjectedApic(v)), Some(ev)) => {
                keep = Some((ev, InEventInj::ReinjectedApic(v)));
            }
            (Some(InEventInj::Apic(v)), Some(ev)) => {
                bump(&mut self.counters.recalled);
                if !self.recall(v) {
                    keep = Some((ev, InEventInj::Apic(v)));
                }
            }
            (Some(InEventInj::Nmi), Some(_)) => nmi_outcome = Some(NmiExit::NotDelivered),
            (Some(InEventInj::MachineCheck), Some(_)) => self.mc_pending = true,
            (Some(InEventInj::Other(_)), Some(ev)) | (None, Some(ev)) => {
                keep = Some((ev, InEventInj::Other(ev)));
            }
            (Some(InEventInj::Nmi), None) => {
                taken.nmi = true;
                nmi_outcome = Some(NmiExit::Taken);
            }
            (Some(InEventInj::Apic(v) | InEventInj::ReinjectedApic(v)), None) => {
                taken.eventinj_vector = Some(v);
            }
            (Some(InEventInj::MachineCheck), None) => taken.machine_check = true,
            // An INTR the engine itself re-injected earlier whose vector
            // was no longer in service (the guest EOI'd ahead of it).
            (Some(InEventInj::Other(ev)), None) if ev.event_type() == EventType::Intr => {
                taken.eventinj_vector = Some(ev.vector());
            }
            (Some(InEventInj::Other(_)), None) | (None, None) => {}
        }
        if self.nmi.presented() == Some(NmiVia::VNmi) && !ctrl.v_nmi() {
            taken.nmi = true;
        }

        // EXITINTINFO: the delivery the exit interrupted happens again,
        // exactly once, through EVENTINJ.
        // EVENTINJ still valid: VMRUN never entered the guest; or an exit no
        // event delivery can be in progress at (see `exit_event`): nothing
        // was interrupted, so an EXITINTINFO is forged (re-injecting it
        // would duplicate an event or displace the one kept in EVENTINJ).
        let entered =
            run.undelivered_event.is_none() && exit.is_some_and(exit_event::may_interrupt_delivery);
        if exit.is_some() {
            match rules::reinject_exit_int_info(vmsa) {
                Reinjection::None => {}
                Reinjection::Reinjected { event, .. }
                    if entered && exit_event::may_reinject(event, &taken) =>
                {
                    bump(&mut self.counters.reinjected);
                    let owner = self.classify_reinjected(event);
                    if owner == InEventInj::Nmi {
                        nmi_outcome = Some(NmiExit::Reinjected);
                    }
                    self.eventinj = Some(owner);
                }
                Reinjection::Reinjected { event, .. } => {
                    // Not ours to deliver: take it out of EVENTINJ again
                    // (empty before: `take_undelivered` cleared it).
                    vmsa.set_event_inj(EventInj::new());
                    let why = if entered {
                        "not presented by the engine"
                    } else {
                        "no delivery can have been interrupted"
                    };
                    self.drop_exit_event(event, why);
                }
                Reinjection::GuestReexecutes(_) => {}
                Reinjection::Rejected(event) => self.drop_exit_event(event, "malformed"),
            }
        }
        if let Some((ev, owner)) = keep {
            if vmsa.event_inj().valid() {
                log::warn!(
                    "vCPU {}: undelivered event {:#x} displaced",
                    self.index,
                    ev.into_bits()
                );
            } else {
                vmsa.set_event_inj(ev);
                self.eventinj = Some(owner);
            }
        }

        // NMI through V_NMI: hardware clears V_NMI when the guest takes it.
        if nmi_outcome.is_none() && self.nmi.presented() == Some(NmiVia::VNmi) {
            nmi_outcome = Some(if ctrl.v_nmi() {
                NmiExit::StillQueued
            } else {
                NmiExit::Taken
            });
        }
        if let Some(outcome) = nmi_outcome
            && self.nmi.exit_outcome(outcome)
        {
            bump(&mut self.counters.nmis_injected);
        }

        // The guest's CR8 writes land in V_TPR.
        let v_tpr = ctrl.v_tpr() & 0xF;
        if v_tpr != self.written_v_tpr {
            self.apic.set_tpr(v_tpr << 4);
        }

        if self.lazy_eoi_armed {
            match env.caa_no_eoi.map(|byte| byte.swap(0)) {
                Some(Ok(0)) => {
                    self.lazy_eoi_armed = false;
                    bump(&mut self.counters.lazy_eois);
                    self.eoi(env);
                }
                // Unreachable now: stays armed and is read at the next exit
                // (an EOI on a guess could retire the wrong vector).
                Some(Err(_)) => bump(&mut self.counters.platform_errors),
                Some(Ok(_)) | None => self.lazy_eoi_armed = false,
            }
        }
    }

    /// A presented vector was not delivered: back to IRR, out of ISR. If
    /// the guest retired it meanwhile (an EOI for an interrupt it had not
    /// received yet), it is still owed, so it is requested again. False
    /// when a second instance is already pending in IRR: the APIC holds one
    /// instance in IRR and one in ISR (spec §6), so moving this one would
    /// merge the two; it stays in ISR and the caller keeps it in EVENTINJ.
    pub(super) fn recall(&mut self, vector: u8) -> bool {
        if self.apic.isr().contains(vector) {
            if self.apic.irr().contains(vector) {
                return false;
            }
            self.apic.unacknowledge(vector);
        } else {
            let trigger = if self.apic.tmr().contains(vector) {
                Trigger::Level
            } else {
                Trigger::Edge
            };
            let _ = self.apic.request(vector, trigger);
        }
        true
    }

    /// Counts (and rarely logs) an EXITINTINFO event that is not re-injected.
    pub(super) fn drop_exit_event(&mut self, event: EventInj, why: &str) {
        bump(&mut self.counters.forged_exit_events);
        if rare(self.counters.forged_exit_events) {
            log::warn!(
                "vCPU {}: EXITINTINFO {:#x} dropped ({why}; {} so far)",
                self.index,
                event.into_bits(),
                self.counters.forged_exit_events
            );
        }
    }

    pub(super) fn classify_reinjected(&self, event: EventInj) -> InEventInj {
        match event.event_type() {
            EventType::Intr if self.apic.isr().contains(event.vector()) => {
                InEventInj::ReinjectedApic(event.vector())
            }
            EventType::Nmi => InEventInj::Nmi,
            EventType::Exception if event.vector() == MC_VECTOR => InEventInj::MachineCheck,
            _ => InEventInj::Other(event),
        }
    }
}
