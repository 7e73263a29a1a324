//! The small SVSM + hypervisor around real guests: per vCPU the
//! docs/integration.md run loop (`before_run` -> VMRUN -> `after_exit` ->
//! exit handling) on a real VMCB, the APIC MSR intercepts answered through
//! `handle_apic_call`, and the host's part: doorbell posts with #HV raised
//! through the real local APIC (vector 28), the engine's one-shot timer on
//! the real LAPIC timer (vector 22), devices posting at seeded random times.
//!
//! A [`World`] is the run loop of the vCPUs one CPU owns: all of them
//! round-robin with a seeded time slice on a single CPU ([`run`] without
//! APs), or exactly one per application processor (`smp::run`), the BSP
//! then playing the devices.

use core::ops::Range;
use core::sync::atomic::Ordering;

use altinj_apic::ApicConfig;
use altinj_kernel::protocol::{ApicCall, ResultCode};
use altinj_kernel::{EngineConfig, Env, Fabric, VcpuEngine};
use altinj_vmsa::{EventInj, SevFeatures, VmsaAccess};

use super::devices::Devices;
use super::guest::{self, HCALL, OP_DONE, OP_POST_SELF, OP_QUIESCE, Program, vec};
use super::handback::HostApic;
use super::host::{
    self, FLAGS, GUEST_VMPL, HOST_TIMER_VECTOR, HostPlatform, KICK_VECTOR, RunShared,
};
use super::hw::{self, exit, off};
use super::ledger::{self, HOST, MAX_VCPUS};
use super::npt::{self, Mmio};
use super::report::{Report, Stop};
use super::vmcb::{self, Vcpu};
use crate::{cpu, lapic, time};

/// Time slice of a guest vCPU: 100 µs to 1 ms, from the seed.
fn slice_ns(seed: u64) -> u64 {
    Rng::new(seed ^ 0x51CE).below(900_000).wrapping_add(100_000)
}

/// What one run does.
#[derive(Clone, Copy, Debug)]
pub struct RunConfig {
    pub program: Program,
    pub vcpus: usize,
    pub seed: u64,
    pub rounds: u32,
    /// Test-only break: hide undelivered presentations from the engine.
    pub break_recall: bool,
    /// The run counts as hung after this long.
    pub limit_ms: u64,
}

/// Prepares `vcpu`'s VMCB: the host's mode, paging and GDT, the guest IDT,
/// `guest_entry(k)` on its own stack, intercepts (INTR, NMI, HLT, MSR via
/// the permission map, VMRUN, VMMCALL, shutdown, CR8 writes), ASID 1 and
/// V_INTR_MASKING.
pub fn init_vmcb(vcpu: &mut Vcpu, k: usize, entry: u64, npt: bool) {
    let v = &vcpu.vmcb;
    v.clear();
    let (cr0, cr3, cr4, efer) = hw::host_state();
    let (gdt_base, gdt_limit) = hw::host_gdt();
    hw::set_intercepts(
        v,
        0,
        hw::icpt::INTR
            | hw::icpt::NMI
            | hw::icpt::HLT
            | hw::icpt::MSR_PROT
            | hw::icpt::SHUTDOWN
            | hw::icpt::VMRUN
            | hw::icpt::VMMCALL,
    );
    v.set(off::CR_INTERCEPTS, 1 << (16 + 8));
    v.set(off::MSRPM_BASE, core::ptr::from_ref(&hw::MSRPM) as u64);
    v.set(off::ASID, 1);
    v.set(off::INT_CTL, hw::V_INTR_MASKING);
    hw::set_segment(v, off::CS, 0x08, 0x0A9B, 0xFFFF_FFFF, 0);
    for seg in [off::ES, off::SS, off::DS] {
        hw::set_segment(v, seg, 0x10, 0x0C93, 0xFFFF_FFFF, 0);
    }
    hw::set_segment(v, off::GDTR, 0, 0, u32::from(gdt_limit), gdt_base);
    let idt = core::ptr::from_ref(&guest::GUEST_IDT) as u64;
    hw::set_segment(v, off::IDTR, 0, 0, 4095, idt);
    hw::set_segment(v, off::TR, 0x18, 0x008B, 103, 0);
    v.set(off::EFER, efer);
    v.set(off::CR0, cr0);
    v.set(off::CR3, cr3);
    v.set(off::CR4, cr4);
    v.set(off::DR6, 0xFFFF_0FF0);
    v.set(off::DR7, 0x400);
    v.set(off::RFLAGS, 0x2);
    v.set(off::RIP, entry);
    v.set(off::RSP, guest::stack_top(k));
    if npt {
        v.set(off::NESTED_CTL, 1);
        v.set(off::NESTED_CR3, super::npt::nested_cr3());
        v.set(off::G_PAT, 0x0007_0406_0007_0406);
    }
    vcpu.gprs = hw::Gprs::default();
    vcpu.gprs.rdi = k as u64;
    vcpu.busy.store(false, Ordering::SeqCst);
    vcpu.sev_features.store(
        (SevFeatures::SNP_ACTIVE | SevFeatures::ALTERNATE_INJECTION).bits(),
        Ordering::SeqCst,
    );
}

/// xorshift64, the seed's stream.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next().checked_rem(n).unwrap_or(0)
    }
}

/// The vCPUs one CPU runs, and what it needs of the whole run.
pub struct World<'a> {
    cfg: RunConfig,
    /// The vCPU indices this world owns; `vcpus`, `engines` and
    /// `platforms` hold exactly these, in order.
    own: Range<usize>,
    vcpus: &'a mut [Vcpu],
    engines: &'a mut [VcpuEngine],
    platforms: &'a [HostPlatform],
    run: &'a RunShared,
    halted: [bool; MAX_VCPUS],
    done: [bool; MAX_VCPUS],
    /// The guest asked to stop while posts to it were outstanding: the
    /// loop stops it once they are delivered (or withdrawn).
    done_pending: [bool; MAX_VCPUS],
    slice_ns: u64,
    /// The host's APIC emulation of each handed-back vCPU.
    handed: [Option<HostApic>; MAX_VCPUS],
    /// The devices, when this world also plays them (single CPU).
    devices: Option<Devices>,
    report: Report,
}

/// Resets the ledgers and the guests' shared state for a run of `cfg`.
pub fn prepare(cfg: RunConfig) -> RunConfig {
    let n = cfg.vcpus.clamp(1, MAX_VCPUS);
    let cfg = RunConfig { vcpus: n, ..cfg };
    ledger::reset();
    guest::reset();
    guest::PROGRAM.store(cfg.program as u8, Ordering::SeqCst);
    guest::VCPUS.store(n as u32, Ordering::SeqCst);
    guest::ROUNDS.store(cfg.rounds, Ordering::SeqCst);
    guest::TSC_PER_US.store(
        (time::tsc_per_ms() / 1000).clamp(1, u64::from(u32::MAX)) as u32,
        Ordering::SeqCst,
    );
    cfg
}

/// vCPU `k`'s engine configuration. Its host APIC ID is `k` (the platform
/// maps it to the CPU running the vCPU); kicks use vector 23.
fn engine_config(k: usize, host_apic_id: u32, emulate: bool) -> EngineConfig {
    let tpb = (time::tsc_per_ms() / 1_000_000).max(1) as u32;
    EngineConfig {
        index: k,
        host_apic_id,
        apic: ApicConfig {
            apic_id: k as u32,
            bsp: k == 0,
            ticks_per_bus_cycle: tpb,
            directed_eoi: false,
            ..Default::default()
        },
        guest_vmpl: GUEST_VMPL,
        notification_vector: KICK_VECTOR,
        emulate,
    }
}

fn new_engine(k: usize, host_apic_id: u32, emulate: bool, run: &RunShared) -> VcpuEngine {
    match VcpuEngine::new(
        engine_config(k, host_apic_id, emulate),
        Fabric::new(&run.slots, &run.vm),
    ) {
        Ok(e) => e,
        Err(e) => crate::runner::fail(format_args!("svm: cannot create engine {k}: {e:?}")),
    }
}

/// Runs one program on this CPU alone: every vCPU round-robin, the devices
/// between runs. Returns its report (verdict in `report.pass`).
pub fn run(cfg: RunConfig) -> Report {
    let cfg = prepare(cfg);
    let n = cfg.vcpus;
    let me = lapic::id();
    host::reset(|_| me);
    let shared = RunShared::new(cfg);
    let mut vcpus: [Vcpu; MAX_VCPUS] = [const { Vcpu::new() }; MAX_VCPUS];
    let platforms: [HostPlatform; MAX_VCPUS] = core::array::from_fn(HostPlatform::new);
    let entry = guest::guest_entry as *const () as u64;
    for (k, vcpu) in vcpus.iter_mut().enumerate().take(n) {
        init_vmcb(vcpu, k, entry, cfg.program == Program::Xapic);
        vcpu.break_recall = cfg.break_recall;
    }
    let mut engines: [VcpuEngine; MAX_VCPUS] =
        core::array::from_fn(|k| new_engine(k, k as u32, k < n, &shared));
    cpu::cli();
    // SAFETY: `shared` outlives the publication, retracted below with
    // interrupts off after the loop; it is only read through atomics.
    unsafe { host::publish(&shared) };
    let mut world = World {
        cfg,
        own: 0..n,
        vcpus: vcpus.get_mut(..n).unwrap_or_default(),
        engines: engines.get_mut(..n).unwrap_or_default(),
        platforms: platforms.get(..n).unwrap_or_default(),
        run: &shared,
        halted: [false; MAX_VCPUS],
        done: [false; MAX_VCPUS],
        done_pending: [false; MAX_VCPUS],
        handed: [const { None }; MAX_VCPUS],
        slice_ns: slice_ns(cfg.seed),
        devices: Some(Devices::new(cfg)),
        report: Report::new(cfg),
    };
    let started = cpu::rdtsc();
    world.main_loop();
    world.report.tsc = cpu::rdtsc().saturating_sub(started);
    lapic::stop_timer();
    hw::irq_window();
    cpu::cli();
    host::retract();
    world.finish();
    let mut report = world.report;
    report.host_counters();
    report.verdict();
    report
}

/// Runs vCPU `k` of the published run on this CPU (an AP) until its guest
/// is done or the BSP says stop; returns this CPU's part of the report.
pub fn run_owned(shared: &RunShared, k: usize) -> Report {
    let cfg = shared.cfg;
    let mut vcpu = Vcpu::new();
    init_vmcb(
        &mut vcpu,
        k,
        guest::guest_entry as *const () as u64,
        cfg.program == Program::Xapic,
    );
    vcpu.break_recall = cfg.break_recall;
    let platform = HostPlatform::new(k);
    let mut engine = new_engine(k, k as u32, true, shared);
    let mut world = World {
        cfg,
        own: k..k.saturating_add(1),
        vcpus: core::slice::from_mut(&mut vcpu),
        engines: core::slice::from_mut(&mut engine),
        platforms: core::slice::from_ref(&platform),
        run: shared,
        halted: [false; MAX_VCPUS],
        done: [false; MAX_VCPUS],
        done_pending: [false; MAX_VCPUS],
        handed: [const { None }; MAX_VCPUS],
        slice_ns: slice_ns(cfg.seed),
        devices: None,
        report: Report::new(cfg),
    };
    cpu::cli();
    world.main_loop();
    lapic::stop_timer();
    hw::irq_window();
    cpu::cli();
    world.finish();
    world.report
}

/// Host-side ledger of the guest's APIC timer around one engine call: an
/// expiry is a new instance only when it put the vector into IRR (a masked
/// timer expires without a request, a vector already in IRR coalesces), or
/// straight into EVENTINJ (IRR -> ISR within `before_run`).
struct TimerWatch {
    fires: u64,
    in_irr: bool,
    eventinj_busy: bool,
}

impl TimerWatch {
    fn before(engine: &VcpuEngine, vcpu: &Vcpu) -> Self {
        Self {
            fires: engine.counters().timer_fires,
            in_irr: engine.apic().irr().contains(vec::TIMER),
            eventinj_busy: vcpu.event_inj().valid(),
        }
    }

    /// `call`: after a register call, where the APIC polls the timer
    /// itself (LVT, initial count and divide writes) without the engine's
    /// `timer_fires` and nothing is presented.
    fn after(&self, k: usize, engine: &VcpuEngine, vcpu: &Vcpu, call: bool) {
        if self.in_irr || (!call && engine.counters().timer_fires == self.fires) {
            return;
        }
        let ev = vcpu.event_inj();
        let injected = !self.eventinj_busy
            && ev.valid()
            && ev.event_type() == altinj_vmsa::EventType::Intr
            && ev.vector() == vec::TIMER;
        if engine.apic().irr().contains(vec::TIMER) || injected {
            HOST.add(k, usize::from(vec::TIMER));
        }
    }
}

/// Converts a TSC interval to LAPIC timer ticks (QEMU: 1 GHz, divide by 1).
fn tsc_to_ns(ticks: u64) -> u64 {
    ticks
        .saturating_mul(1_000_000)
        .checked_div(time::tsc_per_ms())
        .unwrap_or(0)
}

/// Whether vCPU `k`, which asked to stop, may: every device post to it
/// was delivered (and, in `device`, its wake-up, the devices' last post to
/// it, arrived).
fn drained(program: Program, k: usize) -> bool {
    let woken = program != Program::Device || ledger::GUEST.get(k, usize::from(vec::WAKE)) > 0;
    woken && !ledger::outstanding_on(k)
}

/// Arms the host timer for the earliest engine deadline or the slice.
fn arm_host_timer(platforms: &[HostPlatform], slice_ns: u64) {
    let now = cpu::rdtsc();
    let slice_end = now.saturating_add(slice_ns.saturating_mul(time::tsc_per_ms()) / 1_000_000);
    let next = platforms
        .iter()
        .filter_map(|p| p.deadline.get())
        .fold(slice_end, u64::min);
    let ns = tsc_to_ns(next.saturating_sub(now)).clamp(1_000, u64::from(u32::MAX));
    lapic::start_timer(HOST_TIMER_VECTOR, ns as u32, false);
}

impl<'a> World<'a> {
    /// Position of vCPU `k` in the owned slices.
    fn local(&self, k: usize) -> usize {
        k.wrapping_sub(self.own.start)
    }

    /// vCPU `k`'s engine environment (borrows nothing of `self`).
    fn env(&self, k: usize) -> Option<Env<'a, HostPlatform>> {
        Some(Env::new(
            self.platforms.get(self.local(k))?,
            Fabric::new(&self.run.slots, &self.run.vm),
            self.run.doorbells.get(k)?,
        ))
    }

    /// vCPU `k`'s engine and VMCB.
    fn parts(&mut self, k: usize) -> Option<(&mut VcpuEngine, &mut Vcpu)> {
        let i = self.local(k);
        Some((self.engines.get_mut(i)?, self.vcpus.get_mut(i)?))
    }

    fn main_loop(&mut self) {
        let own = self.own.clone();
        let n = own.len();
        let limit = time::Deadline::after_ms(self.cfg.limit_ms);
        let mut next = 0usize;
        loop {
            if own
                .clone()
                .all(|k| self.done.get(k).copied().unwrap_or(true))
            {
                self.report.stop = Stop::Done;
                return;
            }
            if limit.passed() || host::STOP.load(Ordering::SeqCst) {
                self.report.stop = Stop::Hang;
                return;
            }
            if let Some(devices) = self.devices.as_mut()
                && host::all_configured(self.cfg.vcpus)
            {
                devices.step(self.run);
            }
            hw::irq_window();
            let mut ran = false;
            for step in 0..n {
                let k = own
                    .start
                    .wrapping_add(next.wrapping_add(step).checked_rem(n).unwrap_or(0));
                if self.done.get(k).copied().unwrap_or(true) {
                    continue;
                }
                if self.done_pending.get(k).copied().unwrap_or(false)
                    && drained(self.cfg.program, k)
                {
                    if let Some(d) = self.done.get_mut(k) {
                        *d = true;
                    }
                    continue;
                }
                match self.cycle(k) {
                    Ok(r) => ran |= r,
                    Err(stop) => {
                        self.report.stop = stop;
                        return;
                    }
                }
                hw::irq_window();
            }
            next = next.wrapping_add(1);
            if !ran {
                arm_host_timer(self.platforms, self.slice_ns);
                self.report.idles = self.report.idles.saturating_add(1);
                hw::idle();
            }
        }
    }

    /// One pass of vCPU `k`'s run loop; false when it stayed halted.
    fn cycle(&mut self, k: usize) -> Result<bool, Stop> {
        let Some(env) = self.env(k) else {
            return Err(Stop::Fatal);
        };
        let i = self.local(k);
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(i), self.vcpus.get_mut(i)) else {
            return Err(Stop::Fatal);
        };
        let timer = TimerWatch::before(engine, vcpu);
        if engine.before_run(&env, vcpu).is_err() {
            return Err(Stop::Fatal);
        }
        timer.after(k, engine, vcpu, false);
        let host_apic = self.handed.get_mut(k).and_then(Option::as_mut);
        if let Some(h) = host_apic {
            h.before_run(k, vcpu);
        }
        if let Some(halted) = self.halted.get_mut(k)
            && *halted
        {
            let presented =
                vcpu.event_inj().valid() || vmcb::apm_virq_deliverable(vcpu.vintr_ctrl());
            // An NMI delivered through EVENTINJ stays in service until the
            // next exit (altinj_kernel::nmi, no IRET signal without vNMI): a pending
            // one needs that exit, so the halted guest runs once more.
            let nmi_waits = engine.nmi().pending();
            if !presented && !nmi_waits {
                return Ok(false);
            }
            if !presented {
                self.report.nmi_wakes = self.report.nmi_wakes.saturating_add(1);
            }
            *halted = false;
        }
        arm_host_timer(self.platforms, self.slice_ns);
        let code = vmcb::run(vcpu);
        if engine.after_exit(&env, vcpu).is_err() {
            return Err(Stop::Fatal);
        }
        if let Some(h) = self.handed.get_mut(k).and_then(Option::as_mut) {
            h.after_exit(vcpu);
        }
        self.report.count_exit(code);
        self.handle_exit(k, code)?;
        Ok(true)
    }

    fn handle_exit(&mut self, k: usize, code: u64) -> Result<(), Stop> {
        match code {
            exit::HLT => {
                if let Some((_, v)) = self.parts(k) {
                    v.skip(1);
                }
                if let Some(h) = self.halted.get_mut(k) {
                    *h = true;
                }
                Ok(())
            }
            exit::MSR => {
                if self.handed.get(k).is_some_and(Option::is_some) {
                    self.host_msr(k);
                } else {
                    self.msr(k);
                }
                Ok(())
            }
            exit::VMMCALL => {
                self.vmmcall(k);
                Ok(())
            }
            exit::NPF if self.mmio(k) => Ok(()),
            exit::INTR | exit::NMI | exit::BUSY => Ok(()),
            other => {
                self.report.bad_exit = other;
                self.report.bad_rip = self.vcpus.get(self.local(k)).map_or(0, Vcpu::rip);
                Err(Stop::BadExit)
            }
        }
    }

    /// RDMSR/WRMSR of an intercepted APIC MSR -> protocol 3 register call.
    fn msr(&mut self, k: usize) {
        let Some(env) = self.env(k) else { return };
        let i = self.local(k);
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(i), self.vcpus.get_mut(i)) else {
            return;
        };
        let msr = vcpu.rcx() & 0xFFFF_FFFF;
        let write = vcpu.exit_info_1() & 1 != 0;
        let call = if write {
            let value = (vcpu.rdx() << 32) | (vcpu.rax() & 0xFFFF_FFFF);
            ApicCall::WriteRegister { msr, value }
        } else {
            ApicCall::ReadRegister { msr }
        };
        let timer = TimerWatch::before(engine, vcpu);
        let result = {
            let outcome = engine.handle_apic_call(&env, call);
            engine.finish_apic_call(&env, vcpu, outcome)
        };
        timer.after(k, engine, vcpu, true);
        if result.code != ResultCode::Success {
            // The guest's #VC handler would raise #GP(0).
            if vcpu.event_inj().valid() {
                self.report.gp_displaced = self.report.gp_displaced.saturating_add(1);
            } else {
                vcpu.set_event_inj(EventInj::exception(13, Some(0)));
                HOST.add(k, ledger::GP);
            }
            return;
        }
        if let Some(value) = result.rdx.filter(|_| !write) {
            vcpu.set_rax(value & 0xFFFF_FFFF);
            vcpu.set_rdx(value >> 32);
        }
        vcpu.skip(2);
        if write {
            let value = (vcpu.rdx() << 32) | (vcpu.rax() & 0xFFFF_FFFF);
            self.ledger_ipi(k, msr, value);
        }
    }

    /// A #NPF on the xAPIC page: the access goes through the engine's MMIO
    /// path (MSR 0x800 + offset / 16 in xAPIC mode). False: not one the
    /// harness emulates.
    fn mmio(&mut self, k: usize) -> bool {
        let Some(env) = self.env(k) else { return false };
        let i = self.local(k);
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(i), self.vcpus.get_mut(i)) else {
            return false;
        };
        let gpa = vcpu.exit_info_2();
        let code = vmcb::code_at(vcpu.rip()).and_then(|b| npt::decode([b[0], b[1]]));
        let (Some(access), true) = (code, gpa & !0xFFF == npt::XAPIC_BASE) else {
            return false;
        };
        let msr = 0x800 | ((gpa & 0xFF0) >> 4);
        let call = match access {
            Mmio::WriteEsi => ApicCall::WriteRegister {
                msr,
                value: vcpu.gprs.rsi & 0xFFFF_FFFF,
            },
            Mmio::ReadEax => ApicCall::ReadRegister { msr },
        };
        let timer = TimerWatch::before(engine, vcpu);
        let result = {
            let outcome = engine.handle_apic_call(&env, call);
            engine.finish_apic_call(&env, vcpu, outcome)
        };
        timer.after(k, engine, vcpu, true);
        if result.code != ResultCode::Success {
            if !vcpu.event_inj().valid() {
                vcpu.set_event_inj(EventInj::exception(13, Some(0)));
                HOST.add(k, ledger::GP);
            }
            return true;
        }
        if access == Mmio::ReadEax {
            vcpu.set_rax(result.rdx.unwrap_or(0) & 0xFFFF_FFFF);
        }
        vcpu.skip(2);
        if let ApicCall::WriteRegister { msr: 0x830, value } = call {
            // xAPIC ICR low: the destination is in ICR high (offset 0x310).
            let dest = engine.read_register(&env, 0x831).unwrap_or(0) >> 24;
            self.ledger_ipi(k, 0x830, value | (dest << 32));
        }
        true
    }

    /// An APIC MSR access of a handed-back vCPU: the host's emulation
    /// answers; its IPIs go to their targets' doorbell pages.
    fn host_msr(&mut self, k: usize) {
        let i = self.local(k);
        let (Some(Some(h)), Some(vcpu)) = (self.handed.get_mut(k), self.vcpus.get_mut(i)) else {
            return;
        };
        let Some((msr, value)) = h.msr(vcpu) else {
            return;
        };
        let vector = (value & 0xFF) as u8;
        match msr {
            0x830 => {
                let n = self.cfg.vcpus;
                let targets: [bool; MAX_VCPUS] = core::array::from_fn(|t| {
                    t < n
                        && match (value >> 18) & 3 {
                            0 => (value >> 32) as usize == t,
                            1 => t == k,
                            2 => true,
                            _ => t != k,
                        }
                });
                for (t, _) in targets.iter().enumerate().filter(|(_, on)| **on) {
                    if t == k {
                        ledger::violation(((k as u64) << 16) | (0xF3 << 8));
                    } else {
                        host::post_ipi(self.run, t, vector);
                    }
                }
                self.ledger_ipi(k, msr, value);
            }
            0x83F => ledger::violation(((k as u64) << 16) | (0xF3 << 8)),
            _ => {}
        }
    }

    /// Host-side ledger of an accepted IPI (ICR or SELF_IPI write).
    fn ledger_ipi(&self, k: usize, msr: u64, value: u64) {
        let n = self.cfg.vcpus;
        let vector = (value & 0xFF) as usize;
        match msr {
            0x83F => HOST.add(k, vector),
            0x830 => match (value >> 18) & 3 {
                0 => {
                    let dest = (value >> 32) as usize;
                    if dest < n {
                        HOST.add(dest, vector);
                    }
                }
                1 => HOST.add(k, vector),
                2 => (0..n).for_each(|t| HOST.add(t, vector)),
                _ => (0..n).filter(|&t| t != k).for_each(|t| HOST.add(t, vector)),
            },
            _ => {}
        }
    }

    fn vmmcall(&mut self, k: usize) {
        let Some(env) = self.env(k) else { return };
        let i = self.local(k);
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(i), self.vcpus.get_mut(i)) else {
            return;
        };
        vcpu.skip(3);
        let rax = vcpu.rax();
        if rax >> 32 == 3 {
            let result = engine.handle_apic_call_in_vmsa(&env, vcpu);
            if engine.registration() == altinj_kernel::registration::Registration::HandedBack
                && let Some(slot @ None) = self.handed.get_mut(k)
                && let Some(page) = self.run.doorbells.get(k)
            {
                *slot = Some(HostApic::take_over(k, page));
                if let Some(f) = FLAGS.get(k) {
                    f.handed_back.store(true, Ordering::SeqCst);
                }
            }
            if rax & 0xFFFF_FFFF == 4
                && result.code == ResultCode::Success
                && let Some(f) = FLAGS.get(k)
            {
                f.configured.store(true, Ordering::SeqCst);
            }
            return;
        }
        match rax.wrapping_sub(HCALL) {
            OP_DONE => {
                if let Some(f) = FLAGS.get(k) {
                    f.done_asked.store(true, Ordering::SeqCst);
                }
                let drained = drained(self.cfg.program, k);
                if let Some(d) = self.done.get_mut(k) {
                    *d = drained;
                }
                if let Some(p) = self.done_pending.get_mut(k) {
                    *p = !drained;
                }
                vcpu.set_rax(u64::from(!drained));
            }
            OP_QUIESCE => {
                // Devices stop posting to it; answers whether some post is
                // still on its way.
                if let Some(f) = FLAGS.get(k) {
                    f.done_asked.store(true, Ordering::SeqCst);
                }
                vcpu.set_rax(u64::from(ledger::outstanding_on(k)));
            }
            OP_POST_SELF => {
                let vector = (vcpu.rcx() & 0xFF) as u8;
                let ok = host::post_edge(self.run, k, vector);
                vcpu.set_rax(u64::from(!ok));
            }
            _ => vcpu.set_rax(ResultCode::UnsupportedProtocol.value()),
        }
    }

    /// After the loop: the report's per-vCPU figures and the verdict.
    fn finish(&mut self) {
        for k in self.own.clone() {
            let i = self.local(k);
            let (Some(engine), Some(vcpu), Some(p)) = (
                self.engines.get(i),
                self.vcpus.get(i),
                self.platforms.get(i),
            ) else {
                continue;
            };
            let host_pending = self
                .handed
                .get(k)
                .and_then(Option::as_ref)
                .map(HostApic::pending_words);
            self.report.add_vcpu(
                k,
                engine,
                &vcpu.fixups,
                p.specific_eois.get(),
                p.kicks.get(),
                host_pending,
            );
        }
    }
}
