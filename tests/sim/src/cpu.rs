//! VMPL0's run loop around the real engine and the hardware's VMRUN for an
//! Alternate-Injection VMSA (the guest's execution is in `guest_ops.rs`,
//! its protocol calls in `guest_calls.rs`).
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

use altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR;
use altinj_vmsa::{EventInj, EventType, ExitCode, ExitKind, RFLAGS_IF, VmsaAccess};

use crate::guest::{Call, Frame, FrameKind, HOSTILE_CALLS, SELF_IPI_VECTOR, SetupStep};
use crate::ledger::Debit;
use crate::world::{EXIT_LATENCY, NEVER, Sim};

/// ExitCode of HLT (AMD APM vol. 2 appendix C).
pub(crate) const EXIT_HLT: ExitCode = ExitCode(0x78);

/// How a guest operation ended.
pub(crate) enum Op {
    /// Kept running; the operation took this long.
    Ran(u64),
    /// The run ended (exit set up).
    Exited,
}

impl Sim {
    pub(crate) fn vmsa_mut(&mut self, i: usize) -> Option<&mut altinj_vmsa::VmsaPage> {
        self.m.vmsas.get_mut(i)
    }

    pub(crate) fn guest_if(&self, i: usize) -> bool {
        self.m
            .vmsas
            .get(i)
            .is_some_and(|v| v.rflags() & RFLAGS_IF != 0)
    }

    pub(crate) fn set_guest_if(&mut self, i: usize, on: bool) {
        if let Some(v) = self.vmsa_mut(i) {
            let rflags = v.rflags();
            v.set_rflags(if on {
                rflags | RFLAGS_IF
            } else {
                rflags & !RFLAGS_IF
            });
        }
    }

    pub(crate) fn set_shadow(&mut self, i: usize, on: bool) {
        if let Some(v) = self.vmsa_mut(i) {
            let ctrl = v.vintr_ctrl();
            if ctrl.int_shadow() != on {
                v.set_vintr_ctrl(ctrl.with_int_shadow(on));
            }
        }
    }

    pub(crate) fn set_cr8(&mut self, i: usize, class: u8) {
        if let Some(v) = self.vmsa_mut(i) {
            let ctrl = v.vintr_ctrl();
            v.set_vintr_ctrl(ctrl.with_v_tpr(class & 0xF));
        }
    }

    pub(crate) fn cr8(&self, i: usize) -> u8 {
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
                (Some(d), Some(s)) => altinj_kernel::handle_hv(d, s, altinj_kernel::Vmpl0Tpr::ZERO),
                _ => altinj_kernel::HvEvents::default(),
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
    pub(crate) fn end_run_soon(&mut self, i: usize) {
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
    pub(crate) fn hw_poll(&mut self, i: usize) -> bool {
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
