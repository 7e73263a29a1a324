//! The Linux guest's run loop: per vCPU the docs/integration.md loop
//! (`before_run` -> VMRUN -> `after_exit` -> exit handling) on a real VMCB,
//! with VMLOAD/VMSAVE around VMRUN (Linux owns FS/GS/TR and the SYSCALL
//! MSRs). All vCPUs round-robin on CPU 0, or (`real`) vCPU k on the CPU
//! with APIC ID k, each running its own loop (QEMU runs each CPU on its own
//! host thread: real concurrency).

use core::arch::asm;

use altinj_kernel::protocol::{ApicCall, ResultCode};
use altinj_kernel::{Env, Fabric};
use core::cell::UnsafeCell;
use core::ops::Range;
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, Ordering};
use guest_boot::linux::bootparams::Layout;

use altinj_vmsa::{EventInj, EventType, VIntrCtrl, VmsaAccess};

use super::host::{self, DOORBELLS, GUEST_VMPL, LinuxPlatform, MAX_VCPUS, REAL_CPUS, SLOTS, VM};
use super::report::{Report, Stop};
use super::state::{CELLS, CREATED, STARTED};
use super::{LinuxConfig, exits, setup, smp};
use crate::svm::harness::Rng;
use crate::svm::host::{HOST_TIMER_VECTOR, KICK_VECTOR};
use crate::svm::hw::{self, Page, exit, off};
use crate::svm::vmcb::{self, Vcpu};
use crate::{cpu, lapic, time};
use altinj_kernel::VcpuEngine as Engine;

/// Interval of the progress line.
const PROGRESS_MS: u64 = 5_000;
/// Time slice of a vCPU when several share the CPU.
const SLICE_NS: u64 = 1_000_000;
/// Exit code of CPUID and IOIO (APM vol. 2 appendix C).
const EXIT_CPUID: u64 = 0x72;
const EXIT_IOIO: u64 = 0x7B;
/// Triple fault, and nested page fault.
const EXIT_SHUTDOWN: u64 = 0x7F;
pub const EXIT_NPF: u64 = 0x400;
/// SLP_EN in PM1 control (ACPI 6.5 §4.8.3.2.1).
const SLP_EN: u32 = 1 << 13;

/// Each CPU's VMSAVE area (FS, GS, TR, LDTR, SYSCALL MSRs of the host).
static HOST_SAVE: [Page; MAX_VCPUS] = [const { Page::new() }; MAX_VCPUS];

/// How the run ended, once some CPU ended it (`Stop as u8 + 1`; 0 = running).
static STOP: AtomicU8 = AtomicU8::new(0);
/// The run the APs join (`real`), published by the BSP.
static AP_RUN: AtomicPtr<LinuxConfig> = AtomicPtr::new(core::ptr::null_mut());
/// APs (bit = APIC ID) that joined the run, and those that finished it.
static AP_JOINED: AtomicU32 = AtomicU32::new(0);
static AP_DONE: AtomicU32 = AtomicU32::new(0);

/// An AP's report, handed to the BSP.
struct ResultSlot(UnsafeCell<Option<Report>>);
// SAFETY: AP k writes slot k before setting its AP_DONE bit (release); the
// BSP reads it only after it saw the bit (acquire). Never concurrently.
unsafe impl Sync for ResultSlot {}
static AP_RESULTS: [ResultSlot; MAX_VCPUS] =
    [const { ResultSlot(UnsafeCell::new(None)) }; MAX_VCPUS];

fn stop_code(stop: Stop) -> u8 {
    match stop {
        Stop::Running => 0,
        Stop::PowerOff => 1,
        Stop::Shutdown => 2,
        Stop::Hang => 3,
        Stop::BadExit => 4,
        Stop::Fatal => 5,
    }
}

fn stop_of(code: u8) -> Stop {
    match code {
        1 => Stop::PowerOff,
        2 => Stop::Shutdown,
        3 => Stop::Hang,
        4 => Stop::BadExit,
        5 => Stop::Fatal,
        _ => Stop::Running,
    }
}

/// Ends the run for every CPU (the first reason wins) and wakes them.
fn stop_all(stop: Stop, n: usize) {
    let _ = STOP.compare_exchange(0, stop_code(stop), Ordering::SeqCst, Ordering::SeqCst);
    if REAL_CPUS.load(Ordering::SeqCst) {
        let me = lapic::id();
        for k in (0..n as u32).filter(|&k| k != me) {
            lapic::send_ipi(k, u32::from(KICK_VECTOR));
        }
    }
}

/// vCPU `k`'s engine and VMCB.
///
/// The caller's World runs vCPU `k` (or creates it, before it is started):
/// the ownership rule of `state`.
fn parts(k: usize) -> Option<(&'static mut Engine, &'static mut Vcpu)> {
    let cell = CELLS.get(k)?;
    // SAFETY: see above; callers drop the references before fetching again.
    let (engine, vcpu) = unsafe { cell.parts() };
    Some((engine.as_mut()?, vcpu))
}

/// vCPU `k`'s VMCB (same rule as [`parts`]).
fn vmcb_of(k: usize) -> Option<&'static mut Vcpu> {
    let cell = CELLS.get(k)?;
    // SAFETY: as for `parts`.
    Some(unsafe { cell.parts() }.1)
}

fn vmsave(pa: u64) {
    // SAFETY: `pa` is a page-aligned VMCB-format save area of this image;
    // VMSAVE only writes it (SVM enabled by `svm::init`).
    unsafe { asm!("vmsave rax", in("rax") pa, options(nostack)) };
}

fn vmload(pa: u64) {
    // SAFETY: `pa` holds state a VMSAVE stored (host) or the guest's VMCB
    // (guest state); interrupts are masked until the host's is back.
    unsafe { asm!("vmload rax", in("rax") pa, options(nostack)) };
}

/// What one CPU's loop owns: the vCPUs it runs and its report.
struct World {
    cfg: LinuxConfig,
    own: Range<usize>,
    tpb: u32,
    halted: [bool; MAX_VCPUS],
    rng: Rng,
    report: Report,
}

/// Boots the loaded kernel and runs it until it powers off, hangs or fails.
pub fn run(cfg: LinuxConfig, layout: &Layout) -> Report {
    let n = cfg.vcpus.clamp(1, MAX_VCPUS);
    let real = cfg.real_cpus && n > 1;
    REAL_CPUS.store(real, Ordering::SeqCst);
    let tpb = (time::tsc_per_ms() / 1_000_000).max(1) as u32;
    // The BSP exists from the start; an AP's engine is created when Linux
    // asks for it (`smp`).
    let Some(bsp) = CELLS.first() else {
        return Report::new(cfg);
    };
    {
        // SAFETY: no vCPU runs yet: this CPU owns every cell.
        let (engine, v) = unsafe { bsp.parts() };
        *engine = smp::new_engine(0, cfg.x2apic, tpb);
        setup::init_vmcb(&v.vmcb, layout);
        v.gprs.rsi = layout.zero_page;
        v.break_recall = cfg.broken;
        v.sev_features.store(
            (altinj_vmsa::SevFeatures::SNP_ACTIVE | altinj_vmsa::SevFeatures::ALTERNATE_INJECTION)
                .bits(),
            Ordering::SeqCst,
        );
    }
    bsp.state.store(STARTED, Ordering::Release);
    cpu::cli();
    host::activate(true);
    let started = cpu::rdtsc();
    let mut cfg_slot = cfg;
    if real {
        let aps = crate::svm::smp::start_aps();
        if (aps as usize) < n.saturating_sub(1) {
            crate::runner::fail(format_args!("linux: {aps} APs up, {n} vCPUs asked"));
        }
        AP_RUN.store(&raw mut cfg_slot, Ordering::SeqCst);
        for k in 1..n as u32 {
            lapic::send_ipi(k, u32::from(crate::svm::host::GO_VECTOR));
        }
    }
    let own = if real { 0..1 } else { 0..n };
    let mut world = World::new(cfg, own, tpb, 0);
    world.main_loop();
    stop_all(world.report.stop, n);
    if real {
        // n <= MAX_VCPUS = 4: the mask fits.
        let all = (1u32 << n).wrapping_sub(1) & !1;
        let deadline = time::Deadline::after_ms(10_000);
        while AP_DONE.load(Ordering::Acquire) & all != all & AP_JOINED.load(Ordering::SeqCst)
            || AP_JOINED.load(Ordering::SeqCst) & all != all && !deadline.passed()
        {
            hw::irq_window();
            cpu::pause();
            if deadline.passed() {
                break;
            }
        }
        AP_RUN.store(core::ptr::null_mut(), Ordering::SeqCst);
        world.report.print_share(0);
        for (k, slot) in AP_RESULTS.iter().enumerate().take(n).skip(1) {
            if AP_DONE.load(Ordering::Acquire) & (1 << k) != 0 {
                // SAFETY: see `ResultSlot`: AP k is done with it.
                if let Some(r) = unsafe { (*slot.0.get()).take() } {
                    r.print_share(k);
                    world.report.merge(&r);
                }
            }
        }
    }
    world.report.stop = stop_of(STOP.load(Ordering::SeqCst));
    world.report.tsc = cpu::rdtsc().saturating_sub(started);
    lapic::stop_timer();
    hw::irq_window();
    cpu::cli();
    host::activate(false);
    world.finish(n);
    world.report
}

/// Called by the APs' idle loop (`svm::smp::ap_serve`): joins a `real`
/// Linux run with the vCPU of this CPU's APIC ID, once.
pub fn ap_poll() {
    let cfg = AP_RUN.load(Ordering::SeqCst);
    // SAFETY: the BSP publishes its config for the run's duration and
    // retracts it only after every AP that joined reported done.
    let Some(cfg) = (unsafe { cfg.as_ref() }).copied() else {
        return;
    };
    let k = lapic::id() as usize;
    let bit = 1u32.checked_shl(k as u32).unwrap_or(0);
    if k == 0 || k >= cfg.vcpus || AP_JOINED.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return;
    }
    cpu::cli();
    lapic::set_flat_logical_id(k as u8);
    let tpb = (time::tsc_per_ms() / 1_000_000).max(1) as u32;
    let mut world = World::new(cfg, k..k.saturating_add(1), tpb, k);
    world.main_loop();
    stop_all(world.report.stop, cfg.vcpus);
    lapic::stop_timer();
    if let Some(slot) = AP_RESULTS.get(k) {
        // SAFETY: see `ResultSlot`.
        unsafe { *slot.0.get() = Some(world.report) };
    }
    AP_DONE.fetch_or(bit, Ordering::Release);
}

fn tsc_to_ns(ticks: u64) -> u64 {
    ticks
        .saturating_mul(1_000_000)
        .checked_div(time::tsc_per_ms())
        .unwrap_or(0)
}

/// Arms this CPU's host timer (vector 22) for the earliest engine deadline
/// of the vCPUs in `own`, or the end of the slice when they time-share.
fn arm_host_timer(own: Range<usize>, slice: bool) {
    let now = cpu::rdtsc();
    let slice_end = if slice {
        now.saturating_add(SLICE_NS.saturating_mul(time::tsc_per_ms()) / 1_000_000)
    } else {
        u64::MAX
    };
    let next = CELLS
        .get(own)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c.platform.deadline())
        .fold(slice_end, u64::min);
    if next == u64::MAX {
        lapic::stop_timer();
        return;
    }
    let ns = tsc_to_ns(next.saturating_sub(now)).clamp(1_000, u64::from(u32::MAX));
    lapic::start_timer(HOST_TIMER_VECTOR, ns as u32, false);
}

impl World {
    fn new(cfg: LinuxConfig, own: Range<usize>, tpb: u32, cpu: usize) -> Self {
        Self {
            cfg,
            own,
            tpb,
            halted: [false; MAX_VCPUS],
            rng: Rng::new(cfg.seed ^ (cpu as u64).wrapping_mul(0x9E37)),
            report: Report::new(cfg),
        }
    }

    /// This CPU's host save area.
    fn host_save(&self) -> u64 {
        HOST_SAVE.get(self.own.start).map_or(0, Page::pa)
    }

    fn env(&self, k: usize) -> Option<Env<'static, LinuxPlatform>> {
        Some(Env::new(
            &CELLS.get(k)?.platform,
            Fabric::new(&SLOTS, &VM),
            DOORBELLS.get(k)?,
        ))
    }

    fn main_loop(&mut self) {
        let limit = time::Deadline::after_ms(self.cfg.limit_ms);
        let mut progress = time::Deadline::after_ms(PROGRESS_MS);
        loop {
            if limit.passed() {
                self.report.stop = Stop::Hang;
                return;
            }
            if progress.passed() && self.own.start == 0 {
                progress = time::Deadline::after_ms(PROGRESS_MS);
                let rip = vmcb_of(self.own.start).map_or(0, |v| v.rip());
                let halted = self.halted.get(self.own.start).copied().unwrap_or(false);
                self.report.progress(rip, halted);
            }
            hw::irq_window();
            let mut ran = false;
            if STOP.load(Ordering::SeqCst) != 0 {
                self.report.stop = stop_of(STOP.load(Ordering::SeqCst));
                return;
            }
            for k in self.own.clone() {
                if !CELLS.get(k).is_some_and(|c| c.started()) {
                    continue;
                }
                if k != self.own.start {
                    hw::irq_window();
                }
                match self.cycle(k) {
                    Ok(r) => ran |= r,
                    Err(stop) => {
                        self.report.stop = stop;
                        return;
                    }
                }
            }
            // No interrupt window between the last `before_run` and the idle
            // below: a kick, device post or #HV that arrives after the
            // mailbox and doorbell were drained stays pending and ends the
            // STI;HLT at once instead of being taken and then slept over.
            if !ran {
                arm_host_timer(self.own.clone(), false);
                self.report.idles = self.report.idles.saturating_add(1);
                hw::idle();
            }
        }
    }

    /// One pass of vCPU `k`'s run loop; false when it stayed halted.
    fn cycle(&mut self, k: usize) -> Result<bool, Stop> {
        // Device posts the doorbell refused earlier (busy) go in now.
        host::flush(k);
        if self.cfg.hostile {
            self.hostile_before(k);
        }
        let Some(env) = self.env(k) else {
            return Err(Stop::Fatal);
        };
        let Some((engine, vcpu)) = parts(k) else {
            return Err(Stop::Fatal);
        };
        if engine.before_run(&env, vcpu).is_err() {
            return Err(Stop::Fatal);
        }
        let presented = presented_vector(vcpu);
        let before = (vcpu.event_inj(), vcpu.vintr_ctrl());
        if let Some(halted) = self.halted.get_mut(k)
            && *halted
        {
            if presented.is_none() && !vcpu.event_inj().valid() {
                return Ok(false);
            }
            *halted = false;
        }
        arm_host_timer(self.own.clone(), self.own.len() > 1);
        let host_save = self.host_save();
        vmsave(host_save);
        vmload(vcpu.vmcb.pa());
        let code = vmcb::run(vcpu);
        vmsave(vcpu.vmcb.pa());
        vmload(host_save);
        self.report.note_run(before, vcpu, cpu::rdtsc());
        // The first run flushed the TLB; later ones keep it.
        vcpu.vmcb.set(off::ASID, 1);
        if self.cfg.hostile {
            self.hostile_after(k, before);
        }
        let Some((engine, vcpu)) = parts(k) else {
            return Err(Stop::Fatal);
        };
        if engine.after_exit(&env, vcpu).is_err() {
            return Err(Stop::Fatal);
        }
        self.report.count_exit(code);
        self.handle_exit(k, code)?;
        Ok(true)
    }

    fn handle_exit(&mut self, k: usize, code: u64) -> Result<(), Stop> {
        let Some(vcpu) = vmcb_of(k) else {
            return Err(Stop::Fatal);
        };
        match code {
            exit::HLT => {
                vcpu.skip(1);
                if let Some(h) = self.halted.get_mut(k) {
                    *h = true;
                }
                Ok(())
            }
            exit::MSR => {
                let msr = vcpu.gprs.rcx & 0xFFFF_FFFF;
                let write = vcpu.exit_info_1() & 1 != 0;
                let value = (vcpu.gprs.rdx << 32) | (vcpu.rax() & 0xFFFF_FFFF);
                let read = self.apic_access(k, msr, write.then_some(value));
                if let (Some(vcpu), Some(got)) = (vmcb_of(k), read) {
                    if let Some(v) = got {
                        vcpu.set_rax(v & 0xFFFF_FFFF);
                        vcpu.gprs.rdx = v >> 32;
                    }
                    vcpu.skip(2);
                }
                Ok(())
            }
            EXIT_CPUID => {
                exits::on_cpuid(vcpu, k as u32);
                Ok(())
            }
            EXIT_IOIO => self.port_io(k),
            EXIT_NPF => self.npf(k),
            exit::VMMCALL => {
                // No paravirtual interface: KVM's -KVM_ENOSYS.
                vcpu.set_rax((-1000i64) as u64);
                vcpu.skip(3);
                Ok(())
            }
            exit::INTR | exit::NMI | exit::BUSY => Ok(()),
            EXIT_SHUTDOWN => {
                self.report.bad_rip = vcpu.rip();
                Err(Stop::Shutdown)
            }
            other => {
                self.report.bad_exit = other;
                self.report.bad_rip = vcpu.rip();
                Err(Stop::BadExit)
            }
        }
    }

    /// An APIC register access (RDMSR/WRMSR, or decoded xAPIC MMIO as MSR
    /// 0x800 + offset / 16) through the engine's protocol path. Returns the
    /// value read (`Some(None)` for a completed write); `None` when the
    /// engine refused it, after injecting #GP as the guest's #VC handler
    /// would.
    fn apic_access(&mut self, k: usize, msr: u64, write: Option<u64>) -> Option<Option<u64>> {
        if let (0x830, Some(value)) = (msr, write)
            && let Some(request) = smp::start_ipi(value)
        {
            return self.start_ap(k, value, request);
        }
        let env = self.env(k)?;
        let (engine, vcpu) = parts(k)?;
        let call = match write {
            Some(value) => ApicCall::WriteRegister { msr, value },
            None => ApicCall::ReadRegister { msr },
        };
        self.report.count_protocol(msr, write.is_some());
        if (msr, write) == (0x80B, Some(0)) {
            self.report.note_eoi(engine.apic().isr().highest());
        }
        // Register calls need no VMSA; only a hand-back would (Linux never
        // deregisters).
        let outcome = engine.handle_apic_call(&env, call);
        let result = engine.finish_apic_call(&env, vcpu, outcome);
        if result.code != ResultCode::Success {
            self.report.refused = self.report.refused.saturating_add(1);
            if !vcpu.event_inj().valid() {
                vcpu.set_event_inj(EventInj::exception(13, Some(0)));
            }
            return None;
        }
        Some(if write.is_some() {
            None
        } else {
            Some(result.rdx.unwrap_or(0))
        })
    }

    /// Linux's INIT or STARTUP IPI from vCPU `k` (ICR low `icr`): the AP
    /// creation request (`smp`). The destination is ICR bits 63:32 in x2APIC
    /// mode, the ICR high register's bits 31:24 in xAPIC mode.
    fn start_ap(&mut self, k: usize, icr: u64, request: smp::StartIpi) -> Option<Option<u64>> {
        let x2apic =
            parts(k).is_some_and(|(e, _)| e.apic().mode() == altinj_apic::ApicMode::X2Apic);
        let dest = if x2apic {
            icr >> 32
        } else {
            let high = self.apic_access(k, 0x831, None).flatten().unwrap_or(0);
            (high >> 24) & 0xFF
        };
        let t = usize::try_from(dest)
            .ok()
            .filter(|&t| t < self.cfg.vcpus && t != k)?;
        let target = CELLS.get(t)?;
        self.report.start_ipis = self.report.start_ipis.saturating_add(1);
        match request {
            smp::StartIpi::Init => {
                if target.state.load(Ordering::Acquire) == super::state::ABSENT {
                    // SAFETY: an absent vCPU belongs to its creator (Linux's
                    // BSP, which boots the APs one at a time).
                    let (engine, _) = unsafe { target.parts() };
                    *engine = smp::new_engine(t, self.cfg.x2apic, self.tpb);
                    target.state.store(CREATED, Ordering::Release);
                }
            }
            smp::StartIpi::Startup(vector) => {
                if target.state.load(Ordering::Acquire) == CREATED {
                    let sender = vmcb_of(k)?;
                    // SAFETY: a created, not started vCPU belongs to its
                    // creator until the release below.
                    let (_, ap) = unsafe { target.parts() };
                    smp::init_ap_vmcb(&ap.vmcb, &sender.vmcb, vector);
                    ap.gprs = hw::Gprs::default();
                    ap.break_recall = self.cfg.broken;
                    ap.sev_features
                        .store(sender.sev_features.load(Ordering::SeqCst), Ordering::SeqCst);
                    target.state.store(STARTED, Ordering::Release);
                    if REAL_CPUS.load(Ordering::SeqCst) {
                        lapic::send_ipi(t as u32, u32::from(KICK_VECTOR));
                    }
                }
            }
        }
        Some(None)
    }

    fn port_io(&mut self, k: usize) -> Result<(), Stop> {
        let Some(vcpu) = vmcb_of(k) else {
            return Err(Stop::Fatal);
        };
        let io = exits::port_io(vcpu.exit_info_1());
        let next_rip = vcpu.exit_info_2();
        if io.string {
            self.report.bad_exit = EXIT_IOIO;
            return Err(Stop::BadExit);
        }
        let value = vcpu.rax() as u32;
        if !io.input && io.port == setup::PM1A_CNT && value & SLP_EN != 0 {
            // ACPI power-off (S5): the guest is done.
            return Err(Stop::PowerOff);
        }
        let got = exits::port_passthrough(io, value);
        if io.input {
            let mask = match io.size {
                1 => 0xFF,
                2 => 0xFFFF,
                _ => 0xFFFF_FFFF,
            };
            vcpu.set_rax((vcpu.rax() & !mask) | (u64::from(got) & mask));
        }
        vcpu.set_rip(next_rip);
        Ok(())
    }

    /// #NPF: an access to the APIC's unmapped 2 MiB (xAPIC MMIO) is decoded
    /// and served through the engine; anything else stops the run.
    fn npf(&mut self, k: usize) -> Result<(), Stop> {
        let Some(vcpu) = vmcb_of(k) else {
            return Err(Stop::Fatal);
        };
        let gpa = vcpu.exit_info_2();
        if gpa & !0xFFF != setup::APIC_REGION {
            self.report.bad_exit = EXIT_NPF;
            self.report.bad_rip = gpa;
            return Err(Stop::BadExit);
        }
        let Some(insn) = exits::decode_at_rip(vcpu) else {
            self.report.bad_exit = EXIT_NPF;
            self.report.bad_rip = vcpu.rip();
            return Err(Stop::BadExit);
        };
        self.report.mmio = self.report.mmio.saturating_add(1);
        let offset = gpa & 0xFFF;
        let msr = 0x800 | (offset >> 4);
        let write = exits::mmio_write_value(vcpu, &insn);
        let dest = exits::mmio_read_dest(&insn);
        if insn.size != 4 || offset & 0xF != 0 {
            // Not a register access the APIC defines: reads give 0, writes
            // are dropped (SDM vol. 3A §11.4.1: 32-bit aligned accesses only).
            if let Some(d) = dest {
                exits::set_gpr(vcpu, d, 0);
            }
            vcpu.skip(u64::from(insn.len));
            return Ok(());
        }
        if dest.is_some() {
            let got = self.apic_access(k, msr, None);
            let (Some(vcpu), Some(d)) = (vmcb_of(k), dest) else {
                return Err(Stop::Fatal);
            };
            match got {
                Some(Some(v)) => exits::set_gpr(vcpu, d, v & 0xFFFF_FFFF),
                _ => return Ok(()),
            }
        }
        if let Some(v) = write
            && self.apic_access(k, msr, Some(v & 0xFFFF_FFFF)).is_none()
        {
            return Ok(());
        }
        if let Some(vcpu) = vmcb_of(k) {
            vcpu.skip(u64::from(insn.len));
        }
        Ok(())
    }

    /// Hostile host, before the run (as the simulator's hostile host,
    /// tests/sim): spurious #HV, an illegal vector (1-30) in VMPL0's byte or
    /// in the guest VMPL's status, reserved status bits, garbage per-VMPL
    /// event bits; each signalled with #HV.
    fn hostile_before(&mut self, k: usize) {
        let Some(page) = DOORBELLS.get(k) else { return };
        let desc = page.descriptors.get(usize::from(GUEST_VMPL - 1));
        let illegal = (self.rng.below(30) as u8).saturating_add(1);
        let garbage = match self.rng.below(24) {
            0 => {
                host::spurious_hv(k);
                return;
            }
            1 => {
                let _ =
                    page.vector
                        .compare_exchange(0, illegal, Ordering::AcqRel, Ordering::Acquire);
                true
            }
            2 => desc.is_some_and(|d| {
                let s = d.status.load(Ordering::Acquire);
                s & 0xFF == 0
                    && d.status
                        .compare_exchange(
                            s,
                            s | u32::from(illegal),
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        )
                        .is_ok()
            }),
            3 => desc.is_some_and(|d| {
                d.status.fetch_or(0x7000_3800, Ordering::AcqRel);
                true
            }),
            4 => {
                page.per_vmpl_events.fetch_or(0x10, Ordering::AcqRel);
                true
            }
            _ => false,
        };
        if garbage {
            self.report.garbage = self.report.garbage.saturating_add(1);
            host::signal(k);
        }
    }

    /// Hostile host, after the exit, when the CPU left no EXITINTINFO: a
    /// forged one the engine must drop: an INTR with vector 0-31, a reserved
    /// event type, reserved bits, an error code on an INTR, or an INTR or
    /// NMI it never presented. A forged copy of the very interrupt the
    /// engine presented (and the CPU delivered) is not made: nothing can
    /// tell it from a delivery the exit cut, which the engine re-injects.
    fn hostile_after(&mut self, k: usize, presented: (EventInj, VIntrCtrl)) {
        let Some(vcpu) = vmcb_of(k) else {
            return;
        };
        if vcpu.exit_int_info().valid() || self.rng.below(8) != 0 {
            return;
        }
        let vector = self.rng.below(256) as u8;
        let forged = match self.rng.below(6) {
            0 => EventInj::external_interrupt(vector & 31),
            1 => EventInj::new()
                .with_vector(vector)
                .with_event_type(EventType::from_bits(match vector & 3 {
                    0 => 1,
                    1 => 5,
                    2 => 6,
                    _ => 7,
                }))
                .with_valid(true),
            2 => EventInj::from_bits(EventInj::external_interrupt(0x40).into_bits() | (1 << 20)),
            3 => EventInj::external_interrupt(0x40).with_error_code_valid(true),
            4 => EventInj::nmi(),
            _ => EventInj::external_interrupt(vector.max(32)),
        };
        let (ev, ctrl) = presented;
        let same_as_presented = (ev.valid()
            && ev.into_bits() & 0x7FF == forged.into_bits() & 0x7FF)
            || (ctrl.v_irq()
                && forged.event_type() == EventType::Intr
                && forged.vector() == ctrl.v_intr_vector());
        if same_as_presented {
            return;
        }
        vcpu.set_exit_int_info(forged);
        self.report.forged = self.report.forged.saturating_add(1);
    }

    /// After the run (every CPU done): each vCPU's figures and the verdict.
    fn finish(&mut self, n: usize) {
        for cell in CELLS.iter().take(n) {
            // SAFETY: no vCPU runs any more: this CPU owns every cell.
            let (engine, vcpu) = unsafe { cell.parts() };
            let Some(engine) = engine.as_ref() else {
                continue;
            };
            let kicks = cell.platform.kicks.load(Ordering::Relaxed);
            self.report.add_vcpu(engine, vcpu, kicks);
        }
        self.report.verdict();
    }
}

/// The vector `before_run` presented, through EVENTINJ or V_IRQ.
fn presented_vector(vcpu: &Vcpu) -> Option<u8> {
    let ev = vcpu.event_inj();
    if ev.valid() && ev.event_type() == altinj_vmsa::EventType::Intr {
        return Some(ev.vector());
    }
    let ctrl = vcpu.vintr_ctrl();
    ctrl.v_irq().then(|| ctrl.v_intr_vector())
}
