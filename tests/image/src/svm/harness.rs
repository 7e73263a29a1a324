//! The small SVSM + hypervisor around real guests: per vCPU the
//! docs/integration.md run loop (`before_run` -> VMRUN -> `after_exit` ->
//! exit handling) on a real VMCB, the APIC MSR intercepts answered through
//! `handle_apic_call`, and the host's part: doorbell posts with #HV raised
//! through the real local APIC (vector 28), the engine's one-shot timer on
//! the real LAPIC timer (vector 22), devices posting at seeded random times.
//!
//! All vCPUs of a run share the one CPU the image runs on, round-robin with
//! a time slice (the host timer preempts a spinning guest).

use core::cell::Cell;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

use apic::ApicConfig;
use doorbell::DoorbellPage;
use kernel::platform::DisableAiRequest;
use kernel::protocol::{ApicCall, ResultCode};
use kernel::{EngineConfig, Env, Fabric, NoTimer, Platform, PlatformError, VcpuEngine, VcpuShared};
use vmsa::{EventInj, SevFeatures, VmsaAccess};

use super::guest::{self, HCALL, OP_DONE, OP_POST_SELF, Program, vec};
use super::hw::{self, exit, off};
use super::ledger::{self, HOST, MAX_VCPUS};
use super::report::{Report, Stop};
use super::vmcb::{self, Vcpu};
use crate::{cpu, lapic, time};

/// The host's own vectors, in 16-31 where no guest vector lives.
pub const HOST_TIMER_VECTOR: u8 = 22;
/// Guest VMPL (spec §1).
const GUEST_VMPL: u8 = 2;
/// Time slice of a guest vCPU.
const SLICE_NS: u64 = 500_000;

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

/// The run's doorbell pages and shared slots, for the #HV handler.
static DOORBELLS: AtomicPtr<[DoorbellPage; MAX_VCPUS]> = AtomicPtr::new(core::ptr::null_mut());
static SLOTS: AtomicPtr<[VcpuShared; MAX_VCPUS]> = AtomicPtr::new(core::ptr::null_mut());
/// vCPUs the devices raised #HV for (bit k).
static HV_PENDING: AtomicU32 = AtomicU32::new(0);
/// #HVs taken through the LAPIC, and per-VMPL events they found.
static HV_TAKEN: AtomicU32 = AtomicU32::new(0);
static HV_EVENTS: AtomicU32 = AtomicU32::new(0);
/// Host timer interrupts taken.
static TIMER_IRQS: AtomicU32 = AtomicU32::new(0);

/// Whether a run is in progress (the IDT routes vectors 22 and 28 here).
pub fn active() -> bool {
    !DOORBELLS.load(Ordering::SeqCst).is_null()
}

/// Vector 28 from the real LAPIC: the engine's #HV logic for every vCPU a
/// device signalled (on one CPU, each vCPU's "own" #HV runs here).
pub fn on_hv() {
    HV_TAKEN.fetch_add(1, Ordering::SeqCst);
    let pending = HV_PENDING.swap(0, Ordering::SeqCst);
    let (db, sl) = (
        DOORBELLS.load(Ordering::SeqCst),
        SLOTS.load(Ordering::SeqCst),
    );
    // SAFETY: `run` publishes these pointers to its own locals only for
    // the run's duration and nulls them (interrupts off) before they go;
    // only atomics are accessed through them.
    if let (Some(db), Some(sl)) = (unsafe { db.as_ref() }, unsafe { sl.as_ref() }) {
        for (k, (page, slot)) in db.iter().zip(sl.iter()).enumerate() {
            if pending & (1 << k) != 0 {
                let ev = kernel::handle_hv(page, slot, 0);
                if ev.vmpl_events != 0 {
                    HV_EVENTS.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    lapic::eoi();
}

/// Vector 22: the host timer (slice end or an engine deadline). The exit it
/// caused is all it is for.
pub fn on_timer() {
    TIMER_IRQS.fetch_add(1, Ordering::SeqCst);
    lapic::eoi();
}

/// The engine's platform for one vCPU: GHCB calls become direct actions.
pub struct HostPlatform {
    k: usize,
    deadline: Cell<Option<u64>>,
    pub specific_eois: Cell<u64>,
    pub kicks: Cell<u64>,
    pub level_up: Cell<bool>,
}

impl HostPlatform {
    fn new(k: usize) -> Self {
        Self {
            k,
            deadline: Cell::new(None),
            specific_eois: Cell::new(0),
            kicks: Cell::new(0),
            level_up: Cell::new(false),
        }
    }
}

impl Platform for HostPlatform {
    fn hv_ipi(&self, _icr: u64) -> Result<(), PlatformError> {
        // A kick: every vCPU shares this CPU, whose loop visits the target.
        self.kicks.set(self.kicks.get().saturating_add(1));
        Ok(())
    }
    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        if vmpl != GUEST_VMPL || vector != vec::LEVEL {
            ledger::violation(((self.k as u64) << 16) | (0xE0 << 8) | u64::from(vector));
        }
        self.specific_eois
            .set(self.specific_eois.get().saturating_add(1));
        self.level_up.set(false);
        Ok(())
    }
    fn disable_alternate_injection(&self, _r: DisableAiRequest) -> Result<(), PlatformError> {
        Ok(())
    }
    fn configure_notification_vector(&self, _v: u8) -> Result<(), PlatformError> {
        Ok(())
    }
    fn doorbell_page(&self, _r: kernel::platform::DoorbellRequest) -> Result<u64, PlatformError> {
        Ok(0)
    }
    fn now(&self) -> u64 {
        cpu::rdtsc()
    }
    fn has_timer(&self) -> bool {
        true
    }
    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer> {
        self.deadline.set(deadline);
        Ok(())
    }
}

/// Prepares `vcpu`'s VMCB: the host's mode, paging and GDT, the guest IDT,
/// `guest_entry(k)` on its own stack, intercepts (INTR, NMI, HLT, MSR via
/// the permission map, VMRUN, VMMCALL, shutdown, CR8 writes), ASID 1 and
/// V_INTR_MASKING.
pub fn init_vmcb(vcpu: &mut Vcpu, k: usize, entry: u64) {
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

/// Everything one run owns.
pub struct World<'a> {
    cfg: RunConfig,
    vcpus: &'a mut [Vcpu],
    engines: &'a mut [VcpuEngine],
    platforms: &'a [HostPlatform],
    doorbells: &'a [DoorbellPage; MAX_VCPUS],
    slots: &'a [VcpuShared; MAX_VCPUS],
    halted: [bool; MAX_VCPUS],
    done: [bool; MAX_VCPUS],
    configured: [bool; MAX_VCPUS],
    report: Report,
}

/// Runs one program; returns its report (the verdict is `report.pass()`).
pub fn run(cfg: RunConfig) -> Report {
    let n = cfg.vcpus.clamp(1, MAX_VCPUS);
    let cfg = RunConfig { vcpus: n, ..cfg };
    ledger::reset();
    guest::reset();
    guest::PROGRAM.store(cfg.program as u8, Ordering::SeqCst);
    guest::VCPUS.store(n as u32, Ordering::SeqCst);
    guest::ROUNDS.store(cfg.rounds, Ordering::SeqCst);
    let doorbells: [DoorbellPage; MAX_VCPUS] = [const { DoorbellPage::new() }; MAX_VCPUS];
    let slots: [VcpuShared; MAX_VCPUS] = [const { VcpuShared::new() }; MAX_VCPUS];
    let mut vcpus: [Vcpu; MAX_VCPUS] = [const { Vcpu::new() }; MAX_VCPUS];
    let platforms: [HostPlatform; MAX_VCPUS] = core::array::from_fn(HostPlatform::new);
    let tpb = (time::tsc_per_ms() / 1_000_000).max(1) as u32;
    let mut engines: [Option<VcpuEngine>; MAX_VCPUS] = [const { None }; MAX_VCPUS];
    let entry = guest::guest_entry as *const () as u64;
    for (k, (vcpu, engine)) in vcpus.iter_mut().zip(engines.iter_mut()).enumerate().take(n) {
        init_vmcb(vcpu, k, entry);
        vcpu.break_recall = cfg.break_recall;
        let config = EngineConfig {
            index: k,
            host_apic_id: 0,
            apic: ApicConfig {
                apic_id: k as u32,
                bsp: k == 0,
                ticks_per_bus_cycle: tpb,
                directed_eoi: false,
            },
            guest_vmpl: GUEST_VMPL,
            notification_vector: kernel::platform::DEFAULT_NOTIFICATION_VECTOR,
            emulate: true,
        };
        *engine = VcpuEngine::new(config, Fabric::new(&slots)).ok();
    }
    let mut live: [VcpuEngine; MAX_VCPUS] = core::array::from_fn(|k| {
        engines
            .get_mut(k)
            .and_then(Option::take)
            .unwrap_or_else(|| placeholder_engine(k, &slots))
    });
    cpu::cli();
    DOORBELLS.store(core::ptr::from_ref(&doorbells).cast_mut(), Ordering::SeqCst);
    SLOTS.store(core::ptr::from_ref(&slots).cast_mut(), Ordering::SeqCst);
    HV_PENDING.store(0, Ordering::SeqCst);
    HV_TAKEN.store(0, Ordering::SeqCst);
    HV_EVENTS.store(0, Ordering::SeqCst);
    TIMER_IRQS.store(0, Ordering::SeqCst);
    let mut world = World {
        cfg,
        vcpus: vcpus.get_mut(..n).unwrap_or_default(),
        engines: live.get_mut(..n).unwrap_or_default(),
        platforms: platforms.get(..n).unwrap_or_default(),
        doorbells: &doorbells,
        slots: &slots,
        halted: [false; MAX_VCPUS],
        done: [false; MAX_VCPUS],
        configured: [false; MAX_VCPUS],
        report: Report::new(cfg),
    };
    let started = cpu::rdtsc();
    world.main_loop();
    world.report.tsc = cpu::rdtsc().saturating_sub(started);
    lapic::stop_timer();
    hw::irq_window();
    cpu::cli();
    DOORBELLS.store(core::ptr::null_mut(), Ordering::SeqCst);
    SLOTS.store(core::ptr::null_mut(), Ordering::SeqCst);
    world.report.hv_taken = u64::from(HV_TAKEN.load(Ordering::SeqCst));
    world.report.timer_irqs = u64::from(TIMER_IRQS.load(Ordering::SeqCst));
    world.finish();
    world.report
}

/// An engine for an unused slot index (never run).
fn placeholder_engine(k: usize, slots: &[VcpuShared; MAX_VCPUS]) -> VcpuEngine {
    let config = EngineConfig {
        index: k,
        host_apic_id: 0,
        apic: ApicConfig {
            apic_id: k as u32,
            bsp: false,
            ticks_per_bus_cycle: 1,
            directed_eoi: false,
        },
        guest_vmpl: GUEST_VMPL,
        notification_vector: kernel::platform::DEFAULT_NOTIFICATION_VECTOR,
        emulate: false,
    };
    match VcpuEngine::new(config, Fabric::new(slots)) {
        Ok(e) => e,
        Err(_) => crate::runner::fail(format_args!("svm: cannot create engine {k}")),
    }
}

/// Converts a TSC interval to LAPIC timer ticks (QEMU: 1 GHz, divide by 1).
fn tsc_to_ns(ticks: u64) -> u64 {
    ticks.saturating_mul(1_000_000) / time::tsc_per_ms().max(1)
}

/// Arms the host timer for the earliest engine deadline or the slice.
fn arm_host_timer(platforms: &[HostPlatform]) {
    let now = cpu::rdtsc();
    let slice_end = now.saturating_add(SLICE_NS.saturating_mul(time::tsc_per_ms()) / 1_000_000);
    let next = platforms
        .iter()
        .filter_map(|p| p.deadline.get())
        .fold(slice_end, u64::min);
    let ns = tsc_to_ns(next.saturating_sub(now)).clamp(1_000, u64::from(u32::MAX));
    lapic::start_timer(HOST_TIMER_VECTOR, ns as u32, false);
}

impl<'a> World<'a> {
    /// vCPU `k`'s engine environment (borrows nothing of `self`).
    fn env(&self, k: usize) -> Option<Env<'a, HostPlatform>> {
        Some(Env {
            platform: self.platforms.get(k)?,
            fabric: Fabric::new(self.slots),
            doorbell: self.doorbells.get(k)?,
            caa_no_eoi: None,
        })
    }

    fn main_loop(&mut self) {
        let n = self.cfg.vcpus;
        let limit = time::Deadline::after_ms(self.cfg.limit_ms);
        let mut devices = super::devices::Devices::new(self.cfg);
        let mut next = 0usize;
        loop {
            if self.done.iter().take(n).all(|&d| d) {
                self.report.stop = Stop::Done;
                return;
            }
            if limit.passed() {
                self.report.stop = Stop::Hang;
                return;
            }
            if self.cfg.program == Program::Device && self.configured.iter().take(n).all(|&c| c) {
                devices.step(self);
            }
            hw::irq_window();
            let mut ran = false;
            for step in 0..n {
                let k = (next.wrapping_add(step)) % n;
                if self.done.get(k).copied().unwrap_or(true) {
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
                arm_host_timer(self.platforms);
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
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(k), self.vcpus.get_mut(k)) else {
            return Err(Stop::Fatal);
        };
        let timer_in_irr = engine.apic().irr().contains(vec::TIMER);
        let fires = engine.counters().timer_fires;
        if engine.before_run(&env, vcpu).is_err() {
            return Err(Stop::Fatal);
        }
        if engine.counters().timer_fires > fires && !timer_in_irr {
            HOST.add(k, usize::from(vec::TIMER));
        }
        if let Some(halted) = self.halted.get_mut(k)
            && *halted
        {
            let presented =
                vcpu.event_inj().valid() || vmcb::apm_virq_deliverable(vcpu.vintr_ctrl());
            if !presented {
                return Ok(false);
            }
            *halted = false;
        }
        arm_host_timer(self.platforms);
        let code = vmcb::run(vcpu);
        let info = match engine.after_exit(&env, vcpu) {
            Ok(info) => info,
            Err(_) => return Err(Stop::Fatal),
        };
        let _ = info;
        self.report.count_exit(code);
        self.handle_exit(k, code)?;
        Ok(true)
    }

    fn handle_exit(&mut self, k: usize, code: u64) -> Result<(), Stop> {
        match code {
            exit::HLT => {
                if let Some(v) = self.vcpus.get_mut(k) {
                    v.skip(1);
                }
                if let Some(h) = self.halted.get_mut(k) {
                    *h = true;
                }
                Ok(())
            }
            exit::MSR => {
                self.msr(k);
                Ok(())
            }
            exit::VMMCALL => {
                self.vmmcall(k);
                Ok(())
            }
            exit::INTR | exit::NMI | exit::BUSY => Ok(()),
            other => {
                self.report.bad_exit = other;
                self.report.bad_rip = self.vcpus.get(k).map_or(0, Vcpu::rip);
                Err(Stop::BadExit)
            }
        }
    }

    /// RDMSR/WRMSR of an intercepted APIC MSR -> protocol 3 register call.
    fn msr(&mut self, k: usize) {
        let Some(env) = self.env(k) else { return };
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(k), self.vcpus.get_mut(k)) else {
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
        let result = engine.handle_apic_call(&env, vcpu, call);
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
        let (Some(engine), Some(vcpu)) = (self.engines.get_mut(k), self.vcpus.get_mut(k)) else {
            return;
        };
        vcpu.skip(3);
        let rax = vcpu.rax();
        if rax >> 32 == 3 {
            let result = engine.handle_apic_call_in_vmsa(&env, vcpu);
            if rax & 0xFFFF_FFFF == 4 && result.code == ResultCode::Success {
                if let Some(c) = self.configured.get_mut(k) {
                    *c = true;
                }
            }
            return;
        }
        match rax.wrapping_sub(HCALL) {
            OP_DONE => {
                if let Some(d) = self.done.get_mut(k) {
                    *d = true;
                }
                vcpu.set_rax(0);
            }
            OP_POST_SELF => {
                let vector = (vcpu.rcx() & 0xFF) as u8;
                let ok = post_edge(self.doorbells, k, vector);
                vcpu.set_rax(u64::from(!ok));
            }
            _ => vcpu.set_rax(ResultCode::UnsupportedProtocol.value()),
        }
    }

    /// After the loop: the report's per-vCPU figures and the verdict.
    fn finish(&mut self) {
        for k in 0..self.cfg.vcpus {
            let (Some(engine), Some(vcpu), Some(p)) = (
                self.engines.get(k),
                self.vcpus.get(k),
                self.platforms.get(k),
            ) else {
                continue;
            };
            self.report.add_vcpu(
                k,
                engine,
                &vcpu.fixups,
                p.specific_eois.get(),
                p.kicks.get(),
            );
        }
        self.report.verdict();
    }
}

/// A device posts edge `vector` to vCPU `k` through its doorbell page and
/// raises #HV through the real LAPIC if NoFurtherSignal was clear. Claims
/// the instance first; false (nothing posted) if one is outstanding.
pub fn post_edge(doorbells: &[DoorbellPage; MAX_VCPUS], k: usize, vector: u8) -> bool {
    let Some(page) = doorbells.get(k) else {
        return false;
    };
    if !ledger::claim(k, usize::from(vector), cpu::rdtsc()) {
        return false;
    }
    if page.host().post_vector(GUEST_VMPL, vector).is_err() {
        ledger::unclaim(k, usize::from(vector));
        return false;
    }
    HOST.add(k, usize::from(vector));
    signal(page, k);
    true
}

/// Raises #HV for vCPU `k` (vector 28 self-IPI on the real LAPIC) when the
/// doorbell protocol allows (NoFurtherSignal was clear).
pub fn signal(page: &DoorbellPage, k: usize) {
    if page.host().raise_no_further_signal() {
        HV_PENDING.fetch_or(1 << k, Ordering::SeqCst);
        lapic::self_ipi(crate::idt::HV_VECTOR);
    }
}

/// Access for the devices model.
impl World<'_> {
    pub(super) fn doorbells(&self) -> &[DoorbellPage; MAX_VCPUS] {
        self.doorbells
    }
    pub(super) fn platform(&self, k: usize) -> Option<&HostPlatform> {
        self.platforms.get(k)
    }
    pub(super) fn cfg(&self) -> RunConfig {
        self.cfg
    }
    pub(super) fn halted_all(&self) -> bool {
        self.halted.iter().take(self.cfg.vcpus).all(|&h| h)
    }
}

/// The run's state as the devices model sees it.
pub type HarnessWorld<'a> = World<'a>;
