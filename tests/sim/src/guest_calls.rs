//! The guest's protocol calls (SVSM APIC protocol, spec §5, §6): how a
//! call is made (RAX/RCX/RDX and a VMGEXIT), the architected answer the
//! guest checks when VMPL0 has answered, the VM-wide registration count,
//! and the ledger credits of every IPI the engine accepted.

use alloc::format;

use altinj_kernel::protocol::{CallResult, ResultCode, configure};
use altinj_vmsa::{ExitCode, VmsaAccess};

use crate::cpu::Op;
use crate::guest::{
    Call, Dest, HOSTILE_CALLS, OTHER_PROTOCOL, SELF_IPI_VECTOR, SetupStep, TIMER_VECTOR,
};
use crate::world::Sim;

/// IA32_TSC_DEADLINE (Intel SDM vol. 3A §11.5.4.1).
const TSC_DEADLINE_MSR: u64 = 0x6E0;

impl Sim {
    /// Makes a protocol call (an exit), or, after a hand-back, an APIC
    /// access the host handles without VMPL0.
    pub(crate) fn issue_call(&mut self, i: usize, call: Call) -> Op {
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
    pub(crate) fn complete_call(&mut self, i: usize, res: Option<CallResult>) {
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
                    .is_some_and(|a| a.mode != altinj_apic::ApicMode::Disabled)
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
                // A target whose APIC is enabled but software-disabled now
                // may have set SVR by the time it drains the post (the
                // mailbox feeds IRR at the drain; an IPI in transit arrives
                // after the SVR write): one more delivery is allowed, not
                // owed.
                let enabled = self
                    .m
                    .shared
                    .get(j)
                    .and_then(|s| s.address())
                    .is_some_and(|a| a.mode != altinj_apic::ApicMode::Disabled);
                if !nmi
                    && vector >= 16
                    && !handed_back
                    && enabled
                    && let Some(l) = self.ledgers.get_mut(j)
                {
                    l.allow_one(vector);
                }
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
}
