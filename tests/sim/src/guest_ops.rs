//! The guest's execution: batches of instructions, handlers and their
//! EOIs, CLI sections, CR8 raises, STI shadows and `STI; HLT`, IPI bursts,
//! the deregistration moments, TSC-deadline re-arms and the hostile
//! guest's calls (`docs/simulator.md`, "Guest OS").

use altinj_kernel::protocol::configure;
use altinj_vmsa::VmsaAccess;

use crate::cpu::{EXIT_HLT, Op};
use crate::guest::{Call, Dest, Frame, FrameKind, HOSTILE_CALLS, IPI_VECTORS, SELF_IPI_VECTOR};
use crate::world::{EXIT_LATENCY, NEVER, Sim};

impl Sim {
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

    pub(crate) fn op_cost(&mut self) -> u64 {
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
            .is_some_and(altinj_kernel::VcpuEngine::machine_check_pending);
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
                        .and_then(altinj_apic::LocalApic::highest_deliverable)
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
}
