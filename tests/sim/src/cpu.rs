//! VMPL0's run loop around the real engine, the hardware's VMRUN for an
//! Alternate-Injection VMSA, and the guest's execution.
//!
//! # Hardware model (AMD APM vol. 2 §15.20, §15.21, §15.36.16; spec §2)
//! - VMRUN with BUSY set fails with VMEXIT_BUSY; nothing is consumed.
//! - A valid EVENTINJ is taken at entry (V cleared) and delivered, unless
//!   the delivery is cut by an exit: then it lands in EXITINTINFO.
//! - Between guest instructions a V_NMI is taken when V_NMI_ENABLE is set
//!   and V_NMI_MASK clear (setting the mask; IRET clears it), and a V_IRQ
//!   when VGIF, RFLAGS.IF, no INT_SHADOW and V_INTR_PRIO > V_TPR\[3:0\]
//!   (clearing V_IRQ). Either delivery can be cut by an exit too.
//! - The guest changes only what the hardware writes back on #VMEXIT:
//!   V_TPR (CR8), V_IRQ, INT_SHADOW (STI), V_NMI, V_NMI_MASK, RFLAGS.
//! - The STI shadow covers one instruction, also one that exits.
//! - \[choice\] `STI; HLT` while a queued V_IRQ or V_NMI is deliverable
//!   takes it at once (as on bare metal); otherwise the guest halts and its
//!   exit reaches VMPL0 only when the host wakes it.

use alloc::{format, string::String, vec::Vec};

use kernel::platform::DEFAULT_NOTIFICATION_VECTOR;
use kernel::protocol::{CallResult, ResultCode, configure};
use vmsa::{EventInj, EventType, ExitCode, ExitKind, RFLAGS_IF, VmsaAccess};

use crate::guest::{
    Call, Dest, Frame, FrameKind, HOSTILE_CALLS, IPI_VECTORS, OTHER_PROTOCOL, SELF_IPI_VECTOR,
    SetupStep, TIMER_VECTOR,
};
use crate::ledger::Debit;
use crate::world::{EXIT_LATENCY, NEVER, Sim};

/// IA32_TSC_DEADLINE (Intel SDM vol. 3A §11.5.4.1).
const TSC_DEADLINE_MSR: u64 = 0x6E0;

/// ExitCode of HLT (AMD APM vol. 2 appendix C).
const EXIT_HLT: ExitCode = ExitCode(0x78);

/// How a guest operation ended.
enum Op {
    /// Kept running; the operation took this long.
    Ran(u64),
    /// The run ended (exit set up).
    Exited,
}

impl Sim {
    fn vmsa_mut(&mut self, i: usize) -> Option<&mut vmsa::VmsaPage> {
        self.m.vmsas.get_mut(i)
    }

    fn guest_if(&self, i: usize) -> bool {
        self.m
            .vmsas
            .get(i)
            .is_some_and(|v| v.rflags() & RFLAGS_IF != 0)
    }

    fn set_guest_if(&mut self, i: usize, on: bool) {
        if let Some(v) = self.vmsa_mut(i) {
            let rflags = v.rflags();
            v.set_rflags(if on {
                rflags | RFLAGS_IF
            } else {
                rflags & !RFLAGS_IF
            });
        }
    }

    fn set_shadow(&mut self, i: usize, on: bool) {
        if let Some(v) = self.vmsa_mut(i) {
            let ctrl = v.vintr_ctrl();
            if ctrl.int_shadow() != on {
                v.set_vintr_ctrl(ctrl.with_int_shadow(on));
            }
        }
    }

    fn set_cr8(&mut self, i: usize, class: u8) {
        if let Some(v) = self.vmsa_mut(i) {
            let ctrl = v.vintr_ctrl();
            v.set_vintr_ctrl(ctrl.with_v_tpr(class & 0xF));
        }
    }

    fn cr8(&self, i: usize) -> u8 {
        self.m
            .vmsas
            .get(i)
            .map_or(0, |v| v.vintr_ctrl().v_tpr() & 0xF)
    }

    /// The engine's GHCB calls, applied by the hypervisor model.
    pub fn process_effects(&mut self) {
        let mut effects = core::mem::take(&mut self.effect_buf);
        if let Ok(mut pending) = self.m.platform.effects.try_borrow_mut() {
            core::mem::swap(&mut *pending, &mut effects);
        }
        for effect in effects.drain(..) {
            self.apply_effect(effect);
        }
        self.effect_buf = effects;
    }

    /// Stops a vCPU whose engine reported a fatal state (the SVSM stops
    /// the guest).
    fn stop_vcpu(&mut self, i: usize, why: String) {
        self.violation(i, why);
        if let Some(v) = self.vcpus.get_mut(i) {
            v.exit_due = false;
            v.halted = true;
            v.next_at = NEVER;
            v.created = true;
            v.stopped = true;
        }
    }

    // ------------------------------------------------------------ VMPL0

    /// VMPL0 runs for vCPU `i`: the exit of the last run, an SVSM call,
    /// the #HV handler, then the next run.
    pub(crate) fn vmpl0_entry(&mut self, i: usize) {
        self.stats.vmpl0_entries = self.stats.vmpl0_entries.saturating_add(1);
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.end(i, now, "guest");
            t.instant(i, now, "VMPL0 entry", "");
        }
        // A deadline that fell due at this very tick expired before VMPL0
        // acts (the engine may poll it in the call below).
        self.timer_due(i);
        let hostile = self.profile.hostile_hv && !self.draining;
        let in_flight = self.vcpus.get(i).is_some_and(|v| v.run_in_flight);
        let mut exit = None;
        if in_flight {
            if hostile && self.rng.chance(20_000) {
                self.garbage_exit_int_info(i);
            }
            let res = self.engine_call(i, "after_exit", |e, env, vmsa| e.after_exit(env, vmsa));
            if let Some(v) = self.vcpus.get_mut(i) {
                v.run_in_flight = false;
                v.virq_taken = None;
            }
            match res {
                Some(Ok(info)) => exit = Some(info.exit),
                Some(Err(fatal)) => {
                    self.stop_vcpu(i, format!("engine fatal after exit: {fatal:?}"));
                    return;
                }
                None => {}
            }
            if !self.m.vmsas.get(i).is_some_and(|v| v.vintr_ctrl().busy()) {
                self.violation(i, "BUSY clear after the exit while VMPL0 edits the VMSA");
            }
            self.process_effects();
        }
        let call_pending = self.vcpus.get(i).is_some_and(|v| v.guest.call.is_some());
        if exit == Some(ExitKind::Vmgexit) && call_pending {
            self.stats.protocol_calls = self.stats.protocol_calls.saturating_add(1);
            self.snapshot_ipi_targets(i);
            let armed = self.arm_disable_ai_failure(i);
            let eois_before = self.level_eois_of(i);
            let res = self.engine_call(i, "the SVSM call", |e, env, vmsa| {
                e.handle_apic_call_in_vmsa(env, vmsa)
            });
            if !self.m.vmsas.get(i).is_some_and(|v| v.vintr_ctrl().busy()) {
                self.violation(i, "BUSY clear while VMPL0 answers an SVSM call");
            }
            let disable_ai_failed = self.check_failed_disable_ai(i, armed);
            self.sabotage_disable_eois(i);
            self.process_effects();
            self.note_disable_eois(i, eois_before);
            if disable_ai_failed {
                self.complete_failed_handback(i, res);
            } else {
                self.complete_call(i, res);
            }
            self.forwarded.clear();
        }
        if self.vcpus.get(i).is_some_and(|v| v.hv_signalled) {
            if let Some(v) = self.vcpus.get_mut(i) {
                v.hv_signalled = false;
            }
            self.stats.hv_entries = self.stats.hv_entries.saturating_add(1);
            let events = match (self.m.doorbells.get(i), self.m.shared.get(i)) {
                (Some(d), Some(s)) => kernel::handle_hv(d, s, kernel::Vmpl0Tpr::ZERO),
                _ => kernel::HvEvents::default(),
            };
            if events.is_empty() {
                self.stats.spurious_hv = self.stats.spurious_hv.saturating_add(1);
            }
            if events.vmpl0_vector == Some(DEFAULT_NOTIFICATION_VECTOR) {
                self.stats.notification_vectors = self.stats.notification_vectors.saturating_add(1);
            }
            self.stats.hv_rejected = self
                .stats
                .hv_rejected
                .saturating_add(u64::from(events.rejected));
        }
        if hostile && self.rng.chance(150_000) {
            self.hostile_between_reads(i);
        }
        self.prepare_and_vmrun(i, true);
    }

    /// Before VMPL0 answers an IPI call: whether its vector is already
    /// pending at each vCPU (the per-instance ledger's coalescing check).
    fn snapshot_ipi_targets(&mut self, i: usize) {
        let vector = match self.vcpus.get(i).and_then(|v| v.guest.call) {
            Some(Call::Ipi { vector, .. }) => vector,
            Some(Call::Setup(SetupStep::XapicIcrLow)) => SELF_IPI_VECTOR,
            // A hostile ICR or SELF_IPI write that the engine may accept.
            Some(Call::Hostile(k)) => match HOSTILE_CALLS.get(k) {
                Some(h) if h.call == 3 && matches!(h.rcx, 0x830 | 0x83F) => h.rdx as u8,
                _ => return,
            },
            _ => return,
        };
        let mut before = core::mem::take(&mut self.ipi_pending_before.1);
        before.clear();
        for j in 0..self.n() {
            before.push(self.vector_pending(j, vector));
        }
        self.ipi_pending_before = (vector, before);
    }

    /// `before_run` (when VMPL0 is entered), the host's own injection after
    /// a hand-back, the entry checks, then VMRUN.
    pub(crate) fn prepare_and_vmrun(&mut self, i: usize, vmpl0: bool) {
        if vmpl0 {
            // A timer deadline that passed before VMPL0 got here expires now
            // (the entry may have come first for another reason).
            self.timer_due(i);
            let sabotage = self.config.sabotage
                == Some(crate::world::Sabotage::WriteAfterBusyClear)
                && self.rng.chance(20_000);
            let res = self.engine_call(i, "before_run", |e, env, vmsa| {
                let res = e.before_run(env, vmsa);
                if sabotage {
                    let ev = vmsa.event_inj();
                    vmsa.set_event_inj(ev);
                }
                res
            });
            match res {
                Some(Ok(())) => {}
                Some(Err(fatal)) => {
                    self.stop_vcpu(i, format!("engine fatal before run: {fatal:?}"));
                    return;
                }
                None => return,
            }
            self.process_effects();
            if let Some(v) = self.vcpus.get_mut(i) {
                v.run_in_flight = true;
                v.kicks_in_batch = 0;
            }
            if !self.draining && self.rng.chance(self.profile.host_returns_at_once) {
                // The host returns to VMPL0 without VMRUN (it had work of its
                // own): the VMSA is untouched, what VMPL0 presented was not
                // delivered and must be recalled without losing an instance.
                self.stats.runs_not_entered = self.stats.runs_not_entered.saturating_add(1);
                self.end_run_soon(i);
                return;
            }
        }
        if self.vcpus.get(i).is_some_and(|v| v.handed_back) {
            self.kvm_present(i);
        }
        if self.config.sabotage == Some(crate::world::Sabotage::BusyAtVmrun)
            && self.rng.chance(20_000)
            && let Some(v) = self.vmsa_mut(i)
        {
            let ctrl = v.vintr_ctrl();
            v.set_vintr_ctrl(ctrl.with_busy(true));
        }
        self.check_entry(i);
        let hostile = self.profile.hostile_hv && !self.draining;
        let streak = self.vcpus.get(i).map_or(0, |v| v.busy_streak);
        if hostile && streak < 2 && self.rng.chance(30_000) {
            // The host sets BUSY itself before VMRUN (spec §2: it must then
            // invoke the SVSM, which repairs the VMSA).
            if let Some(v) = self.vmsa_mut(i) {
                let ctrl = v.vintr_ctrl();
                v.set_vintr_ctrl(ctrl.with_busy(true));
            }
            self.stats.hostile_busy = self.stats.hostile_busy.saturating_add(1);
            if let Some(v) = self.vcpus.get_mut(i) {
                v.busy_streak = v.busy_streak.saturating_add(1);
            }
        } else if let Some(v) = self.vcpus.get_mut(i) {
            v.busy_streak = 0;
        }
        self.vmrun(i);
    }

    /// The entry invariants: BUSY clear, EVENTINJ / V_IRQ legal, one NMI.
    fn check_entry(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get(i) else {
            return;
        };
        let ctrl = vmsa.vintr_ctrl();
        let ev = vmsa.event_inj();
        let mut bad: Vec<String> = Vec::new();
        if ctrl.busy() {
            bad.push("BUSY set at a VMRUN the SVSM asked for".into());
        }
        let ledger = self.ledgers.get(i);
        let owed = |v: u8| ledger.is_some_and(|l| l.owed(v));
        if ev.valid() {
            let ty = ev.event_type();
            if ty.is_reserved() {
                bad.push(format!("EVENTINJ with reserved type {:#x}", ev.into_bits()));
            }
            if ty == EventType::Intr && ev.vector() < 31 && !owed(ev.vector()) {
                bad.push(format!(
                    "INTR event with vector {:#x} below 31",
                    ev.vector()
                ));
            }
            if ev.error_code_valid() && ty != EventType::Exception {
                bad.push(format!(
                    "EVENTINJ with EV on a non-exception {:#x}",
                    ev.into_bits()
                ));
            }
        }
        if ctrl.v_irq() && ctrl.v_intr_vector() < 31 && !owed(ctrl.v_intr_vector()) {
            bad.push(format!(
                "V_IRQ with vector {:#x} below 31",
                ctrl.v_intr_vector()
            ));
        }
        if ctrl.v_nmi() && ev.valid() && ev.event_type() == EventType::Nmi {
            bad.push("two NMIs pending (V_NMI and EVENTINJ)".into());
        }
        if let Some(Some(engine)) = self.m.engines.get(i) {
            let nmi = engine.nmi();
            if nmi.pending() && nmi.presented().is_some() {
                bad.push("two NMIs pending in the engine".into());
            }
        }
        for what in bad {
            self.violation(i, what);
        }
    }

    /// The hardware's VMRUN.
    fn vmrun(&mut self, i: usize) {
        self.stats.vmruns = self.stats.vmruns.saturating_add(1);
        let now = self.now;
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return;
        };
        if vmsa.vintr_ctrl().busy() {
            vmsa.set_exit_code(ExitCode::BUSY);
            self.stats.vmrun_busy = self.stats.vmrun_busy.saturating_add(1);
            // The host gets VMEXIT_BUSY and must invoke the SVSM.
            self.end_run_soon(i);
            return;
        }
        let ev = vmsa.event_inj();
        if ev.valid() {
            vmsa.set_event_inj(EventInj::new());
            if self.rng.chance(self.profile.exit_in_delivery) {
                self.cut_delivery(i, ev);
                return;
            }
            let sabotage = self.config.sabotage;
            let intr = ev.event_type() == EventType::Intr;
            match sabotage {
                Some(crate::world::Sabotage::DropEventInj) if intr && self.rng.chance(20_000) => {
                    self.stats.sabotage_drops = self.stats.sabotage_drops.saturating_add(1);
                }
                Some(crate::world::Sabotage::DoubleDeliver) if intr && self.rng.chance(20_000) => {
                    self.deliver_event(i, ev);
                    self.deliver_event(i, ev);
                }
                _ => self.deliver_event(i, ev),
            }
        }
        if let Some(t) = self.trace.as_mut() {
            t.begin(i, now, "guest");
        }
        let jitter = self.rng.range(200, 1000);
        if let Some(v) = self.vcpus.get_mut(i) {
            v.exit_due = false;
            v.halted = false;
            v.next_at = now.saturating_add(jitter);
        }
    }

    /// The run ends at once (exit code already written).
    fn end_run_soon(&mut self, i: usize) {
        let now = self.now;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.exit_due = true;
            v.halted = false;
            v.next_at = now.saturating_add(EXIT_LATENCY);
        }
    }

    /// An exit in the middle of delivering `ev`: EXITINTINFO holds it.
    fn cut_delivery(&mut self, i: usize, ev: EventInj) {
        if ev.event_type() == EventType::Intr
            && let Some(v) = self.vcpus.get_mut(i)
        {
            v.cut_in_service = Some(ev.vector());
        }
        if let Some(vmsa) = self.vmsa_mut(i) {
            vmsa.set_exit_int_info(ev);
            vmsa.set_exit_code(ExitCode::NPF);
        }
        self.stats.cut_deliveries = self.stats.cut_deliveries.saturating_add(1);
        if self.profile.mc_at_cut && !self.draining && self.host_target_ok(i) {
            self.host_post_mc(i);
        }
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.instant(
                i,
                now,
                "delivery cut (EXITINTINFO)",
                &format!("{:#x}", ev.into_bits()),
            );
        }
        self.end_run_soon(i);
    }

    fn deliver_event(&mut self, i: usize, ev: EventInj) {
        match ev.event_type() {
            EventType::Intr => self.deliver_intr(i, ev.vector(), "EVENTINJ"),
            EventType::Nmi => {
                // With vNMI the CPU also masks NMIs for one injected through
                // EVENTINJ (AMD APM vol. 2 §15.21.10; KVM's svm_inject_nmi
                // relies on it): V_NMI_MASK is set until the guest's IRET.
                if let Some(vmsa) = self.vmsa_mut(i) {
                    let ctrl = vmsa.vintr_ctrl();
                    if ctrl.v_nmi_enable() {
                        vmsa.set_vintr_ctrl(ctrl.with_v_nmi_mask(true));
                    }
                }
                self.deliver_nmi(i)
            }
            EventType::Exception if ev.vector() == 18 => self.deliver_mc(i),
            _ => {
                // An exception or software interrupt the engine re-injected
                // from EXITINTINFO: architected, not an APIC delivery.
                self.stats.foreign_events = self.stats.foreign_events.saturating_add(1);
            }
        }
    }

    /// The guest's handler for `vector` runs: the delivery invariants.
    fn deliver_intr(&mut self, i: usize, vector: u8, via: &str) {
        let now = self.now;
        let cr8 = self.cr8(i);
        let Some(isc) = self.vcpus.get(i).map(|v| v.guest.in_service_class()) else {
            return;
        };
        let owed = self.ledgers.get(i).is_some_and(|l| l.owed(vector));
        if vector < 31 && !owed {
            self.violation(i, format!("INTR {vector:#x} below 31 delivered via {via}"));
        }
        let ppr = cr8.max(isc);
        if vector >> 4 <= ppr {
            self.violation(
                i,
                format!("vector {vector:#x} delivered via {via} at PPR class {ppr:#x}"),
            );
        }
        if let Some(v) = self.vcpus.get_mut(i)
            && v.cut_in_service == Some(vector)
        {
            v.cut_in_service = None;
        }
        let debit = self.ledgers.get_mut(i).map(|l| l.deliver(vector, now));
        if debit == Some(Debit::Unrequested) {
            self.violation(
                i,
                format!("vector {vector:#x} delivered via {via} without a request (duplicate)"),
            );
        }
        if let Some(t) = self.trace.as_mut() {
            t.instant(i, now, "deliver", &format!("{vector:#x} via {via}"));
        }
        let saved_if = self.guest_if(i);
        let work = self.rng.below(3) as u8;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.guest.frames.push(Frame {
                kind: FrameKind::Intr,
                vector,
                work,
                saved_if,
            });
        }
        // Interrupt gate: IF cleared.
        self.set_guest_if(i, false);
    }

    fn deliver_nmi(&mut self, i: usize) {
        let now = self.now;
        if self.vcpus.get(i).is_some_and(|v| v.guest.in_nmi) {
            self.violation(i, "NMI delivered while the guest is in its NMI handler");
        }
        if self.ledgers.get_mut(i).map(|l| l.deliver_nmi(now)) == Some(Debit::Unrequested) {
            self.violation(i, "NMI delivered without a request (duplicate)");
        }
        if let Some(t) = self.trace.as_mut() {
            t.instant(i, now, "deliver NMI", "");
        }
        let saved_if = self.guest_if(i);
        let work = self.rng.below(3) as u8;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.guest.in_nmi = true;
            v.guest.frames.push(Frame {
                kind: FrameKind::Nmi,
                vector: 2,
                work,
                saved_if,
            });
        }
        self.set_guest_if(i, false);
    }

    fn deliver_mc(&mut self, i: usize) {
        let now = self.now;
        if self.ledgers.get_mut(i).map(|l| l.deliver_mc(now)) == Some(Debit::Unrequested) {
            self.violation(i, "#MC delivered without a request (duplicate)");
        }
        self.stats.mc_delivered = self.stats.mc_delivered.saturating_add(1);
    }

    /// Hardware between two guest instructions: V_NMI, then V_IRQ.
    /// Returns false when a cut delivery ended the run.
    fn hw_poll(&mut self, i: usize) -> bool {
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return true;
        };
        let mut ctrl = vmsa.vintr_ctrl();
        if ctrl.v_nmi_enable() && ctrl.v_nmi() && !ctrl.v_nmi_mask() {
            ctrl = ctrl.with_v_nmi(false);
            if self.rng.chance(self.profile.exit_in_delivery) {
                vmsa.set_vintr_ctrl(ctrl);
                self.cut_delivery(i, EventInj::nmi());
                return false;
            }
            ctrl = ctrl.with_v_nmi_mask(true);
            vmsa.set_vintr_ctrl(ctrl);
            self.deliver_nmi(i);
        }
        let Some(vmsa) = self.m.vmsas.get_mut(i) else {
            return true;
        };
        let ctrl = vmsa.vintr_ctrl();
        let if_set = vmsa.rflags() & RFLAGS_IF != 0;
        if ctrl.v_irq()
            && ctrl.vgif()
            && if_set
            && !ctrl.int_shadow()
            && (ctrl.v_ign_tpr()
                || ctrl.v_intr_prio() > ctrl.v_tpr() & 0xF
                || self.config.sabotage == Some(crate::world::Sabotage::IgnoreVTpr))
        {
            vmsa.set_vintr_ctrl(ctrl.with_v_irq(false));
            let vector = ctrl.v_intr_vector();
            if let Some(v) = self.vcpus.get_mut(i) {
                v.virq_taken = Some(vector);
            }
            if self.rng.chance(self.profile.exit_in_delivery) {
                self.cut_delivery(i, EventInj::external_interrupt(vector));
                return false;
            }
            self.deliver_intr(i, vector, "V_IRQ");
        }
        true
    }

    // ------------------------------------------------------------ guest

    /// The guest runs a batch of instructions.
    pub(crate) fn guest_batch(&mut self, i: usize) {
        let mut spent = 0u64;
        for _ in 0..8 {
            if !self.hw_poll(i) {
                return;
            }
            let shadow_before = self
                .m
                .vmsas
                .get(i)
                .is_some_and(|v| v.vintr_ctrl().int_shadow());
            let op = self.guest_op(i);
            // The STI shadow covers one instruction, also one that exits.
            if shadow_before {
                self.set_shadow(i, false);
            }
            match op {
                Op::Ran(cost) => spent = spent.saturating_add(cost),
                Op::Exited => return,
            }
        }
        let now = self.now;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.next_at = now.saturating_add(spent.max(1));
        }
    }

    fn op_cost(&mut self) -> u64 {
        self.rng.range(300, 3000)
    }

    /// One guest instruction (or a short sequence acting as one).
    fn guest_op(&mut self, i: usize) -> Op {
        let cost = self.op_cost();
        let handback_moment = self.handback_moment(i);
        if let Some(call) = self.tsc_deadline_op(i) {
            return self.issue_call(i, call);
        }
        if let Some(call) = self.apic_disable_op(i) {
            return self.issue_call(i, call);
        }
        if let Some(call) = self.call_in_handler(i) {
            return self.issue_call(i, call);
        }
        let Some(v) = self.vcpus.get_mut(i) else {
            return Op::Ran(cost);
        };
        let handed_back = v.handed_back;
        let g = &mut v.guest;
        if let Some(top) = g.frames.last_mut() {
            if top.work > 0 {
                top.work = top.work.saturating_sub(1);
                return Op::Ran(cost);
            }
            let top = *top;
            return match top.kind {
                FrameKind::Nmi => {
                    g.frames.pop();
                    g.in_nmi = false;
                    self.set_guest_if(i, top.saved_if);
                    // IRET unmasks NMIs (V_NMI_MASK is written back).
                    if let Some(vmsa) = self.vmsa_mut(i) {
                        let ctrl = vmsa.vintr_ctrl();
                        vmsa.set_vintr_ctrl(ctrl.with_v_nmi_mask(false));
                    }
                    Op::Ran(cost)
                }
                FrameKind::Intr => self.finish_intr(i, top, cost),
            };
        }
        if !g.booted() {
            let step = g.setup.get(g.setup_pos).copied();
            return match step {
                Some(step) => self.issue_call(i, Call::Setup(step)),
                None => Op::Ran(cost),
            };
        }
        if self.draining {
            let g = &mut v.guest;
            g.cli_left = 0;
            g.burst_left = 0;
            g.cr8_left = 0;
            if self.cr8(i) != 0 {
                self.set_cr8(i, 0);
                return Op::Ran(cost);
            }
            return self.safe_halt(i);
        }
        if g.cli_left > 0 {
            g.cli_left = g.cli_left.saturating_sub(1);
            let raise = g.cr8_left == 0 && g.cli_left > 0;
            if g.cli_left == 0 {
                self.sti(i);
            } else if raise && self.rng.chance(200_000) {
                // Raise CR8 with interrupts off (like an irqsave lock that
                // also masks by priority): a V_IRQ queued for the closed
                // window must now wait for CR8 to drop (V_TPR check).
                let class = self.rng.range(1, 0xF) as u8;
                let n = self.rng.range(2, 8) as u8;
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.guest.cr8_left = n;
                }
                self.set_cr8(i, class);
            }
            return Op::Ran(cost);
        }
        if g.cr8_left > 0 {
            g.cr8_left = g.cr8_left.saturating_sub(1);
            if g.cr8_left == 0 {
                self.set_cr8(i, 0);
            }
            return Op::Ran(cost);
        }
        if g.burst_left > 0 {
            g.burst_left = g.burst_left.saturating_sub(1);
            let all = g.burst_all;
            let call = self.pick_ipi(i, all);
            return self.issue_call(i, call);
        }
        let step = self.step;
        let in_handler_first = self.profile.deregister_in_handler && g.handback_failures == 0;
        if !g.deregistered && g.deregister_step.is_some_and(|s| step >= s) && !in_handler_first {
            if handback_moment {
                // After a failed hand-back the guest retries with a QUERY
                // every other time (spec §5: at 0 it hands back too).
                let op = if g.handback_failures % 2 == 1 {
                    configure::QUERY
                } else {
                    configure::DEREGISTER
                };
                return self.issue_call(i, Call::Configure(op));
            }
            // Waiting for the moment: spin in short steps (no HLT) so the
            // window before the timer expiry is not missed.
            return Op::Ran(self.rng.range(50, 300));
        }
        if handed_back && g.games_after_handback > 0 {
            g.games_after_handback = g.games_after_handback.saturating_sub(1);
            let call = match g.games_after_handback % 4 {
                3 => Call::Configure(configure::REGISTER),
                2 => Call::Configure(configure::DEREGISTER),
                1 => Call::ReadWhenHandedBack,
                _ => Call::Configure(configure::QUERY),
            };
            return self.issue_call(i, call);
        }
        if !self.guest_if(i) {
            self.sti(i);
            return Op::Ran(cost);
        }
        if !self.rng.chance(self.profile.busy_work) {
            return self.safe_halt(i);
        }
        let r = self.rng.below(100);
        if self.profile.hostile_guest && r < 30 {
            return self.hostile_guest_op(i, cost);
        }
        if self.profile.ipi_per_run > 0 && self.rng.chance(self.profile.ipi_per_run) {
            let burst = self.rng.range(1, u64::from(self.profile.ipi_burst.max(1))) as u32;
            let all = self.rng.chance(self.profile.ipi_broadcast);
            if let Some(v) = self.vcpus.get_mut(i) {
                v.guest.burst_left = burst.saturating_sub(1);
                v.guest.burst_all = all;
            }
            let call = self.pick_ipi(i, all);
            return self.issue_call(i, call);
        }
        if r < 45 {
            let n = self.rng.range(1, 6) as u8;
            if let Some(v) = self.vcpus.get_mut(i) {
                v.guest.cli_left = n;
            }
            self.set_guest_if(i, false);
        } else if r < 55 {
            let class = self.rng.range(1, 0xF) as u8;
            let n = self.rng.range(1, 6) as u8;
            if let Some(v) = self.vcpus.get_mut(i) {
                v.guest.cr8_left = n;
            }
            self.set_cr8(i, class);
        }
        Op::Ran(cost)
    }

    /// Whether now is a moment for the deregistration: always, or with
    /// `deregister_when_due` only when the engine-armed timer expires before
    /// VMPL0 gets to the call ([`EXIT_LATENCY`]; even vCPUs) or a #MC waits
    /// in the engine (odd vCPUs) (issue 9 paths 8 and 4).
    fn handback_moment(&self, i: usize) -> bool {
        if !self.profile.deregister_when_due {
            return true;
        }
        let now = self.now;
        let timer_due = self
            .m
            .platform
            .timers
            .get(i)
            .and_then(core::cell::Cell::get)
            .is_some_and(|d| d > now && d <= now.saturating_add(EXIT_LATENCY));
        let mc = self
            .m
            .engines
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(kernel::VcpuEngine::machine_check_pending);
        // Even vCPUs wait for the timer, odd ones for a #MC.
        if i.is_multiple_of(2) { timer_due } else { mc }
    }

    /// TSC-deadline mode: re-arm once the deadline passed (as Linux does
    /// after the tick), and now and then rewrite it within 1.5 µs of
    /// expiry, before or after (issue 9 path 3).
    fn tsc_deadline_op(&mut self, i: usize) -> Option<Call> {
        let v = self.vcpus.get(i)?;
        if !self.profile.tsc_deadline
            || !v.guest.timer_on
            || v.handed_back
            || !v.guest.frames.is_empty()
        {
            return None;
        }
        let now = self.now;
        let deadline = v.guest.tsc_deadline;
        let period = self.profile.timer_period.unwrap_or(0);
        let near = deadline.abs_diff(now) < 1_500;
        if deadline <= now || (near && self.rng.chance(300_000)) {
            return Some(Call::TscDeadline(now.saturating_add(period)));
        }
        None
    }

    fn sti(&mut self, i: usize) {
        self.set_guest_if(i, true);
        self.set_shadow(i, true);
    }

    /// STI; HLT. HLT is the instruction in the STI shadow, so the shadow
    /// is over once the guest halts.
    fn safe_halt(&mut self, i: usize) -> Op {
        let cost = self.op_cost();
        self.set_guest_if(i, true);
        // An interrupt already deliverable but for the shadow wakes HLT.
        let wake = self.m.vmsas.get(i).is_some_and(|vmsa| {
            let c = vmsa.vintr_ctrl();
            (c.v_irq() && c.vgif() && c.v_intr_prio() > c.v_tpr() & 0xF)
                || (c.v_nmi_enable() && c.v_nmi() && !c.v_nmi_mask())
        });
        if wake {
            return Op::Ran(cost);
        }
        let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
        if handed_back {
            let pending = self.vcpus.get(i).is_some_and(|v| {
                v.host_nmi
                    || v.host_apic
                        .as_ref()
                        .and_then(apic::LocalApic::highest_deliverable)
                        .is_some()
            });
            if pending {
                // KVM sees a pending interrupt at HLT and re-enters at once.
                if let Some(vmsa) = self.vmsa_mut(i) {
                    vmsa.set_exit_code(EXIT_HLT);
                }
                self.end_run_soon(i);
                return Op::Exited;
            }
        }
        if let Some(vmsa) = self.vmsa_mut(i) {
            vmsa.set_exit_code(EXIT_HLT);
        }
        let now = self.now;
        if let Some(v) = self.vcpus.get_mut(i) {
            v.halted = true;
            v.exit_due = false;
            v.next_at = NEVER;
        }
        if let Some(t) = self.trace.as_mut() {
            t.end(i, now, "guest");
            t.instant(i, now, "HLT", "");
        }
        self.stats.halts = self.stats.halts.saturating_add(1);
        Op::Exited
    }

    /// The end of a maskable-interrupt handler: service a level device,
    /// then EOI (lazily when the calling area allows it), then IRET.
    fn finish_intr(&mut self, i: usize, top: Frame, cost: u64) -> Op {
        // A level device is serviced: it de-asserts, or keeps asserting
        // when it has more work (then it is presented again after the EOI).
        let keep = self.rng.chance(250_000);
        for line in self.lines.iter_mut() {
            if line.target == i && line.vector == top.vector {
                line.asserted = keep;
            }
        }
        let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
        if handed_back {
            self.host_eoi(i);
            self.pop_frame(i);
            return Op::Ran(cost);
        }
        if self.end_stale_frame(i) {
            return Op::Ran(cost);
        }
        let lazy = self
            .m
            .caa
            .get(i)
            .is_some_and(|b| b.swap(0, core::sync::atomic::Ordering::AcqRel) == 1);
        if lazy {
            self.stats.guest_lazy_eois = self.stats.guest_lazy_eois.saturating_add(1);
            self.pop_frame(i);
            return Op::Ran(cost);
        }
        self.issue_call(i, Call::Eoi)
    }

    pub(crate) fn pop_frame(&mut self, i: usize) {
        let frame = self.vcpus.get_mut(i).and_then(|v| v.guest.frames.pop());
        if let Some(frame) = frame {
            self.set_guest_if(i, frame.saved_if);
        }
    }

    fn pick_ipi(&mut self, i: usize, all: bool) -> Call {
        let n = self.n() as u64;
        let nmi = self.rng.chance(self.profile.nmi_ipi);
        let self_ipi = Call::Ipi {
            dest: Dest::SelfIpi,
            vector: SELF_IPI_VECTOR,
            nmi: false,
        };
        let restarting = self.profile.recreate_after.is_some();
        if all {
            let vector = self.rng.pick(&IPI_VECTORS, 0xFD);
            if restarting && !(0..self.n()).all(|j| self.ipi_target_online(j)) {
                return self_ipi;
            }
            return Call::Ipi {
                dest: Dest::AllButSelf,
                vector,
                nmi,
            };
        }
        if !nmi && (n < 2 || self.rng.chance(100_000)) {
            return Call::Ipi {
                dest: Dest::SelfIpi,
                vector: SELF_IPI_VECTOR,
                nmi: false,
            };
        }
        let mut target = self.rng.below(n.saturating_sub(1).max(1));
        if target >= i as u64 && n > 1 {
            target = target.saturating_add(1);
        }
        let vector = self.rng.pick(&IPI_VECTORS, 0xFD);
        if restarting && !self.ipi_target_online(target as usize) {
            return self_ipi;
        }
        Call::Ipi {
            dest: Dest::Physical(target as u32),
            vector,
            nmi,
        }
    }

    fn hostile_guest_op(&mut self, i: usize, cost: u64) -> Op {
        let k = self.rng.index(HOSTILE_CALLS.len().saturating_add(5));
        let registered = self.vm_registrations;
        let in_service = self.vcpus.get(i).is_some_and(|v| v.guest.has_intr_frame());
        let call = match k.checked_sub(HOSTILE_CALLS.len()) {
            None => Call::Hostile(k),
            Some(0) => Call::Hostile(usize::MAX),
            Some(1) if !in_service => Call::EoiNothing,
            Some(1) => return Op::Ran(cost),
            Some(2) => Call::Configure(configure::REGISTER),
            Some(3) if registered >= 2 => Call::Configure(configure::DEREGISTER),
            Some(3) => Call::Configure(configure::QUERY),
            Some(_) => {
                // IPI storm to all.
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.guest.burst_left = 15;
                    v.guest.burst_all = true;
                }
                self.stats.guest_storms = self.stats.guest_storms.saturating_add(1);
                self.pick_ipi(i, true)
            }
        };
        self.issue_call(i, call)
    }

    /// Makes a protocol call (an exit), or, after a hand-back, an APIC
    /// access the host handles without VMPL0.
    fn issue_call(&mut self, i: usize, call: Call) -> Op {
        let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
        if handed_back && let Call::Ipi { dest, vector, nmi } = call {
            self.host_route_ipi(i, dest, vector, nmi);
            return Op::Ran(self.op_cost());
        }
        let x2apic = self.vcpus.get(i).is_some_and(|v| v.guest.x2apic);
        let period = self.profile.timer_period.unwrap_or(0);
        let tsc_deadline = self.now.saturating_add(period);
        match call {
            Call::Setup(SetupStep::TscDeadline) => {
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.guest.tsc_deadline = tsc_deadline;
                }
            }
            Call::TscDeadline(d) => {
                if let Some(v) = self.vcpus.get_mut(i) {
                    v.guest.tsc_deadline = d;
                }
                self.stats.tsc_deadline_writes = self.stats.tsc_deadline_writes.saturating_add(1);
            }
            _ => {}
        }
        let id = i as u64;
        let bsp = if i == 0 { 1u64 << 8 } else { 0 };
        let (protocol, number, rcx, rdx) = match call {
            Call::Setup(step) => match step {
                SetupStep::XapicSvr | SetupStep::Svr => (3, 3, 0x80F, 0x1FF),
                SetupStep::XapicIcrHigh => (3, 3, 0x831, (id & 0xFF) << 24),
                SetupStep::XapicIcrLow => (3, 3, 0x830, u64::from(SELF_IPI_VECTOR)),
                SetupStep::X2apic => (3, 3, 0x1B, 0xFEE0_0000 | (1 << 11) | (1 << 10) | bsp),
                SetupStep::AllowHost => (3, 4, (1 << 9) | (1 << 8), 0),
                SetupStep::Register => (3, 1, configure::REGISTER, 0),
                SetupStep::TimerDivide => (3, 3, 0x83E, 0xB),
                SetupStep::TimerLvt if self.profile.tsc_deadline => {
                    (3, 3, 0x832, (2 << 17) | u64::from(TIMER_VECTOR))
                }
                SetupStep::TimerLvt => (3, 3, 0x832, (1 << 17) | u64::from(TIMER_VECTOR)),
                SetupStep::TimerInitial => (3, 3, 0x838, period.min(u64::from(u32::MAX))),
                SetupStep::TscDeadline => (3, 3, TSC_DEADLINE_MSR, tsc_deadline),
                SetupStep::XapicEnable => (3, 3, 0x1B, 0xFEE0_0000 | (1 << 11) | bsp),
            },
            Call::ApicDisable => (3, 3, 0x1B, 0xFEE0_0000 | bsp),
            Call::Eoi | Call::EoiNothing => (3, 3, 0x80B, 0),
            Call::Ipi { dest, vector, nmi } => {
                let mode = if nmi { 4u64 << 8 } else { 0 };
                match dest {
                    Dest::SelfIpi if x2apic => (3, 3, 0x83F, u64::from(vector)),
                    Dest::SelfIpi => (3, 3, 0x830, (1 << 18) | u64::from(vector)),
                    Dest::AllButSelf => (3, 3, 0x830, (3 << 18) | mode | u64::from(vector)),
                    Dest::Physical(t) => {
                        (3, 3, 0x830, (u64::from(t) << 32) | mode | u64::from(vector))
                    }
                }
            }
            Call::Hostile(k) => match HOSTILE_CALLS.get(k) {
                Some(h) => (h.protocol, h.call, h.rcx, h.rdx),
                None => (OTHER_PROTOCOL, 0, 0, 0),
            },
            Call::Configure(op) => (3, 1, op, 0),
            Call::ReadWhenHandedBack => (3, 2, 0x808, 0),
            Call::TscDeadline(deadline) => (3, 3, TSC_DEADLINE_MSR, deadline),
        };
        let now = self.now;
        if let Some(vmsa) = self.vmsa_mut(i) {
            vmsa.set_rax((u64::from(protocol) << 32) | u64::from(number));
            vmsa.set_rcx(rcx);
            vmsa.set_rdx(rdx);
            vmsa.set_exit_code(ExitCode::VMGEXIT);
        }
        if let Some(v) = self.vcpus.get_mut(i) {
            v.guest.call = Some(call);
        }
        if let Some(t) = self.trace.as_mut() {
            t.end(i, now, "guest");
            t.instant(i, now, "SVSM call", &format!("{call:?}"));
        }
        self.end_run_soon(i);
        Op::Exited
    }

    /// The guest reads the answer to its call (RAX/RCX/RDX) and acts on it.
    fn complete_call(&mut self, i: usize, res: Option<CallResult>) {
        let Some(call) = self.vcpus.get_mut(i).and_then(|v| v.guest.call.take()) else {
            return;
        };
        let Some(res) = res else { return };
        let code = res.code;
        if code != ResultCode::Success {
            self.stats.guest_rejected = self.stats.guest_rejected.saturating_add(1);
        }
        let expect = |s: &mut Sim, what: &str, want: ResultCode| {
            if code != want {
                s.violation(
                    i,
                    format!("{what}: answered {code:?}, the spec says {want:?}"),
                );
            }
        };
        match call {
            Call::Setup(step) => {
                // Registering fails once the VM-wide count is 0 (spec §5).
                let want = if step == SetupStep::Register && self.vm_registrations == 0 {
                    ResultCode::CannotRegister
                } else {
                    ResultCode::Success
                };
                expect(self, &format!("boot step {step:?}"), want);
                let ok = code == ResultCode::Success;
                let mut rcx_bad = None;
                if let Some(v) = self.vcpus.get_mut(i) {
                    let g = &mut v.guest;
                    g.setup_pos = g.setup_pos.saturating_add(1);
                    if ok {
                        match step {
                            SetupStep::XapicSvr | SetupStep::Svr => g.sw_enabled = true,
                            SetupStep::AllowHost => g.host_allowed = true,
                            SetupStep::X2apic => g.x2apic = true,
                            SetupStep::TimerInitial | SetupStep::TscDeadline => g.timer_on = true,
                            SetupStep::Register => {
                                let want = self.vm_registrations.saturating_add(1);
                                self.vm_registrations = want;
                                g.registered = want;
                                if res.rcx != Some(u64::from(want)) {
                                    rcx_bad = Some(want);
                                }
                            }
                            _ => {}
                        }
                    }
                }
                if let Some(want) = rcx_bad {
                    self.violation(i, format!("REGISTER returned {:?}, want {want}", res.rcx));
                }
                if ok && step == SetupStep::X2apic {
                    self.stats.x2apic_switches = self.stats.x2apic_switches.saturating_add(1);
                }
                if ok && step == SetupStep::XapicIcrLow {
                    self.stats.xapic_ipis = self.stats.xapic_ipis.saturating_add(1);
                    self.credit_ipi(i, Dest::Physical(i as u32), SELF_IPI_VECTOR, false);
                }
                self.finish_split_post(i);
            }
            Call::Eoi => {
                expect(self, "EOI", ResultCode::Success);
                self.pop_frame(i);
            }
            Call::EoiNothing => {
                let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
                let want = if handed_back {
                    ResultCode::UnsupportedProtocol
                } else {
                    ResultCode::Success
                };
                expect(self, "EOI with nothing in service", want);
            }
            Call::Ipi { dest, vector, nmi } => {
                expect(self, "IPI", ResultCode::Success);
                if code == ResultCode::Success {
                    self.stats.guest_ipis = self.stats.guest_ipis.saturating_add(1);
                    self.credit_ipi(i, dest, vector, nmi);
                }
            }
            Call::Hostile(k) => {
                self.stats.hostile_calls = self.stats.hostile_calls.saturating_add(1);
                let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
                match HOSTILE_CALLS.get(k) {
                    // After the hand-back every protocol-3 call answers
                    // UNSUPPORTED_PROTOCOL on that vCPU (spec §5).
                    Some(h) if handed_back => {
                        expect(self, h.what, ResultCode::UnsupportedProtocol);
                    }
                    Some(h) => {
                        expect(self, h.what, h.expect);
                        if code == ResultCode::Success && h.rcx == 0x830 && (h.rdx >> 8) & 7 == 1 {
                            self.credit_lowest_priority(i, h.rdx);
                        }
                    }
                    None => expect(self, "call of protocol 7", ResultCode::UnsupportedProtocol),
                }
            }
            Call::TscDeadline(_) => expect(self, "IA32_TSC_DEADLINE write", ResultCode::Success),
            Call::ReadWhenHandedBack => {
                expect(
                    self,
                    "READ_REGISTER after the hand-back",
                    ResultCode::UnsupportedProtocol,
                );
            }
            Call::Configure(op) => self.complete_configure(i, op, res),
            Call::ApicDisable => self.complete_apic_disable(i, code),
        }
    }

    /// CONFIGURE against the VM-wide count (spec §5): register fails once
    /// it is 0; a deregister that leaves 0 or a query that finds 0 hands
    /// back the calling vCPU only; after that every call on it answers
    /// UNSUPPORTED_PROTOCOL.
    fn complete_configure(&mut self, i: usize, op: u64, res: CallResult) {
        let deregistered = self.vcpus.get(i).is_some_and(|v| v.guest.deregistered);
        let handed_back = self.vcpus.get(i).is_some_and(|v| v.handed_back);
        let vm = self.vm_registrations;
        let code = res.code;
        let (want_code, want_rcx, new_count, hand_back) = match op {
            _ if deregistered => (ResultCode::UnsupportedProtocol, None, vm, false),
            configure::QUERY => (ResultCode::Success, Some(u64::from(vm)), vm, vm == 0),
            configure::REGISTER if vm == 0 => (ResultCode::CannotRegister, None, 0, false),
            configure::REGISTER => {
                let c = vm.saturating_add(1);
                (ResultCode::Success, Some(u64::from(c)), c, false)
            }
            configure::DEREGISTER => {
                let c = vm.saturating_sub(1);
                (ResultCode::Success, Some(u64::from(c)), c, c == 0)
            }
            _ => (ResultCode::InvalidParameter, None, vm, false),
        };
        if code != want_code || (want_rcx.is_some() && res.rcx != want_rcx) {
            self.violation(
                i,
                format!(
                    "CONFIGURE {op}: answered {code:?} rcx {:?}, want {want_code:?} rcx {want_rcx:?}",
                    res.rcx
                ),
            );
        }
        self.stats.registration_calls = self.stats.registration_calls.saturating_add(1);
        self.vm_registrations = new_count;
        if hand_back && !handed_back {
            self.violation(
                i,
                "count at 0 but the calling vCPU's APIC was not handed back to the host",
            );
        }
        if let Some(v) = self.vcpus.get_mut(i) {
            v.guest.registered = new_count;
            if hand_back && !v.guest.deregistered {
                v.guest.deregistered = true;
                if self.profile.hostile_guest {
                    v.guest.games_after_handback = 8;
                }
            }
        }
    }

    /// A lowest-priority IPI the engine accepted (spec §6) reaches exactly
    /// one target: the lowest APIC ID (= index here) among the others
    /// whose APIC is enabled (all-excluding-self is the only destination
    /// the hostile table uses).
    fn credit_lowest_priority(&mut self, from: usize, icr: u64) {
        // Lossless: masked to 8 bits.
        let vector = (icr & 0xFF) as u8;
        let target = (0..self.n()).find(|&j| {
            j != from
                && self
                    .m
                    .shared
                    .get(j)
                    .and_then(|s| s.address())
                    .is_some_and(|a| a.mode != apic::ApicMode::Disabled)
        });
        if let Some(j) = target {
            self.credit_ipi(from, Dest::Physical(j as u32), vector, false);
        }
    }

    /// Credits the ledger of every vCPU an accepted IPI reaches (the
    /// architecture's answer: present and enabled). A vCPU whose APIC was
    /// handed back is credited too: the engine must forward the IPI to the
    /// host, which delivers it (`host_forwarded_ipi`).
    pub(crate) fn credit_ipi(&mut self, from: usize, dest: Dest, vector: u8, nmi: bool) {
        let n = self.n();
        let now = self.now;
        let (lo, hi, skip) = match dest {
            Dest::Physical(id) => {
                let j = id as usize;
                (j, j.saturating_add(1).min(n), usize::MAX)
            }
            Dest::AllButSelf => (0, n, from),
            Dest::SelfIpi => (from, from.saturating_add(1).min(n), usize::MAX),
        };
        for j in lo..hi {
            if j == skip {
                continue;
            }
            let Some(v) = self.vcpus.get(j) else { continue };
            if !v.created || v.stopped {
                continue;
            }
            let handed_back = v.handed_back;
            let credit = nmi || (v.guest.accepts_fixed() && vector >= 16);
            if !credit {
                continue;
            }
            if nmi {
                if let Some(l) = self.ledgers.get_mut(j) {
                    l.request_nmi(now);
                }
            } else {
                let (snap_vector, ref before) = self.ipi_pending_before;
                let pending = match before.get(j) {
                    Some(p) if snap_vector == vector => *p,
                    _ => crate::ledger::Pending::No,
                };
                self.request_vector(j, vector, pending);
            }
            if handed_back {
                self.stats.ipis_to_handed_back = self.stats.ipis_to_handed_back.saturating_add(1);
                // The engine forwarded it to the host during this call
                // (its post found the mailbox closed).
                let want = (j, if nmi { 0 } else { vector }, nmi);
                match self.forwarded.iter().position(|f| *f == want) {
                    Some(k) => {
                        self.forwarded.swap_remove(k);
                    }
                    None => self.violation(
                        from,
                        format!("IPI to handed-back vCPU {j} not forwarded to the host"),
                    ),
                }
            }
        }
    }

    /// vCPU `i`'s run ended and its APIC belongs to the host: the host
    /// resolves the run, lets VMPL0 answer an SVSM call, and re-enters.
    pub(crate) fn host_entry(&mut self, i: usize) {
        self.stats.host_entries = self.stats.host_entries.saturating_add(1);
        let now = self.now;
        if let Some(t) = self.trace.as_mut() {
            t.end(i, now, "guest");
        }
        self.kvm_resolve(i);
        let exit = self.m.vmsas.get(i).map(|v| v.exit_code().kind());
        let call = self.vcpus.get(i).is_some_and(|v| v.guest.call.is_some());
        if exit == Some(ExitKind::Vmgexit) && call {
            self.vmpl0_entry(i);
        } else {
            self.prepare_and_vmrun(i, false);
        }
    }

    /// Garbage in EXITINTINFO at an exit (hostile host, spec §2).
    fn garbage_exit_int_info(&mut self, i: usize) {
        let Some(vmsa) = self.m.vmsas.get(i) else {
            return;
        };
        if vmsa.exit_int_info().valid() || vmsa.exit_code().kind() == ExitKind::Busy {
            return;
        }
        // 0-30: a forged INTR 31 could be one the engine really presented, which
        // no one can tell from a real cut delivery (and would be re-injected).
        let vector = self.rng.below(31) as u8;
        let kinds = if self.profile.forged_low_intr { 4 } else { 3 };
        let garbage = match self.rng.below(kinds).wrapping_add(1) % 4 {
            1 => {
                let ty = self.rng.pick(&[1u8, 5, 6, 7], 1);
                EventInj::new()
                    .with_vector(self.rng.below(256) as u8)
                    .with_event_type(EventType::from_bits(ty))
                    .with_valid(true)
            }
            0 => EventInj::external_interrupt(vector),
            2 => EventInj::from_bits(EventInj::external_interrupt(0x40).into_bits() | (1 << 20)),
            _ => EventInj::external_interrupt(0x40).with_error_code_valid(true),
        };
        if let Some(vmsa) = self.vmsa_mut(i) {
            vmsa.set_exit_int_info(garbage);
        }
        self.stats.hostile_exit_int_info = self.stats.hostile_exit_int_info.saturating_add(1);
    }
}
