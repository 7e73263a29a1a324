//! The Linux guest's run loop: per vCPU the docs/integration.md loop
//! (`before_run` -> VMRUN -> `after_exit` -> exit handling) on a real VMCB,
//! with VMLOAD/VMSAVE around VMRUN (Linux owns FS/GS/TR and the SYSCALL
//! MSRs), all vCPUs round-robin on this CPU.

use core::arch::asm;

use core::sync::atomic::Ordering;
use guest_boot::linux::bootparams::Layout;
use kernel::protocol::{ApicCall, ResultCode};
use kernel::{Env, Fabric, VcpuEngine};

use vmsa::{EventInj, EventType, VIntrCtrl, VmsaAccess};

use super::host::{self, DOORBELLS, GUEST_VMPL, LinuxPlatform, MAX_VCPUS, SLOTS};
use super::report::{Report, Stop};
use super::{LinuxConfig, exits, setup, smp};
use crate::svm::harness::Rng;
use crate::svm::host::HOST_TIMER_VECTOR;
use crate::svm::hw::{self, Page, exit, off};
use crate::svm::vmcb::{self, Vcpu};
use crate::{cpu, lapic, time};

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

/// The host's VMSAVE area (FS, GS, TR, LDTR, SYSCALL MSRs of the host).
static HOST_SAVE: Page = Page::new();

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

/// Everything one run owns.
struct World<'a> {
    cfg: LinuxConfig,
    vcpus: &'a mut [Vcpu],
    engines: &'a mut [Option<VcpuEngine>],
    tpb: u32,
    platforms: &'a [LinuxPlatform],
    halted: [bool; MAX_VCPUS],
    started: [bool; MAX_VCPUS],
    rng: Rng,
    report: Report,
}

/// Boots the loaded kernel and runs it until it powers off, hangs or fails.
pub fn run(cfg: LinuxConfig, layout: &Layout) -> Report {
    let n = cfg.vcpus.clamp(1, MAX_VCPUS);
    let mut vcpus: [Vcpu; MAX_VCPUS] = [const { Vcpu::new() }; MAX_VCPUS];
    let platforms: [LinuxPlatform; MAX_VCPUS] = [const { LinuxPlatform::new() }; MAX_VCPUS];
    let tpb = (time::tsc_per_ms() / 1_000_000).max(1) as u32;
    // The BSP exists from the start; an AP's engine is created when Linux
    // asks for it (`smp`).
    let mut engines: [Option<VcpuEngine>; MAX_VCPUS] = [const { None }; MAX_VCPUS];
    if let Some(bsp) = engines.first_mut() {
        *bsp = smp::new_engine(0, cfg.x2apic, tpb);
    }
    for v in &mut vcpus {
        v.break_recall = cfg.broken;
    }
    if let Some(v) = vcpus.first_mut() {
        setup::init_vmcb(&v.vmcb, layout);
        v.gprs.rsi = layout.zero_page;
        v.sev_features.store(
            (vmsa::SevFeatures::SNP_ACTIVE | vmsa::SevFeatures::ALTERNATE_INJECTION).bits(),
            core::sync::atomic::Ordering::SeqCst,
        );
    }
    let mut world = World {
        cfg,
        vcpus: vcpus.get_mut(..n).unwrap_or_default(),
        engines: engines.get_mut(..n).unwrap_or_default(),
        tpb,
        platforms: platforms.get(..n).unwrap_or_default(),
        halted: [false; MAX_VCPUS],
        started: [false; MAX_VCPUS],
        rng: Rng::new(cfg.seed),
        report: Report::new(cfg),
    };
    if let Some(s) = world.started.first_mut() {
        *s = true;
    }
    cpu::cli();
    host::activate(true);
    let started = cpu::rdtsc();
    world.main_loop();
    world.report.tsc = cpu::rdtsc().saturating_sub(started);
    lapic::stop_timer();
    hw::irq_window();
    cpu::cli();
    host::activate(false);
    world.finish();
    world.report
}

fn tsc_to_ns(ticks: u64) -> u64 {
    ticks
        .saturating_mul(1_000_000)
        .checked_div(time::tsc_per_ms())
        .unwrap_or(0)
}

/// Arms the host timer (vector 22) for the earliest engine deadline or the
/// end of the slice.
fn arm_host_timer(platforms: &[LinuxPlatform], slice: bool) {
    let now = cpu::rdtsc();
    let slice_end = if slice {
        now.saturating_add(SLICE_NS.saturating_mul(time::tsc_per_ms()) / 1_000_000)
    } else {
        u64::MAX
    };
    let next = platforms
        .iter()
        .filter_map(|p| p.deadline.get())
        .fold(slice_end, u64::min);
    if next == u64::MAX {
        lapic::stop_timer();
        return;
    }
    let ns = tsc_to_ns(next.saturating_sub(now)).clamp(1_000, u64::from(u32::MAX));
    lapic::start_timer(HOST_TIMER_VECTOR, ns as u32, false);
}

impl<'a> World<'a> {
    fn env(&self, k: usize) -> Option<Env<'a, LinuxPlatform>> {
        Some(Env {
            platform: self.platforms.get(k)?,
            fabric: Fabric::new(&SLOTS),
            doorbell: DOORBELLS.get(k)?,
            caa_no_eoi: None,
        })
    }

    fn main_loop(&mut self) {
        let n = self.cfg.vcpus;
        let limit = time::Deadline::after_ms(self.cfg.limit_ms);
        let mut progress = time::Deadline::after_ms(PROGRESS_MS);
        loop {
            if limit.passed() {
                self.report.stop = Stop::Hang;
                return;
            }
            if progress.passed() {
                progress = time::Deadline::after_ms(PROGRESS_MS);
                let rip = self.vcpus.first().map_or(0, Vcpu::rip);
                let halted = self.halted.first().copied().unwrap_or(false);
                self.report.progress(rip, halted);
            }
            hw::irq_window();
            let mut ran = false;
            for k in 0..n {
                if !self.started.get(k).copied().unwrap_or(false) {
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
            if !ran {
                arm_host_timer(self.platforms, false);
                self.report.idles = self.report.idles.saturating_add(1);
                hw::idle();
            }
        }
    }

    /// One pass of vCPU `k`'s run loop; false when it stayed halted.
    fn cycle(&mut self, k: usize) -> Result<bool, Stop> {
        if self.cfg.hostile {
            self.hostile_before(k);
        }
        let Some(env) = self.env(k) else {
            return Err(Stop::Fatal);
        };
        let (Some(engine), Some(vcpu)) = (
            self.engines.get_mut(k).and_then(Option::as_mut),
            self.vcpus.get_mut(k),
        ) else {
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
        arm_host_timer(self.platforms, self.cfg.vcpus > 1);
        vmsave(HOST_SAVE.pa());
        vmload(vcpu.vmcb.pa());
        let code = vmcb::run(vcpu);
        vmsave(vcpu.vmcb.pa());
        vmload(HOST_SAVE.pa());
        self.report.note_run(before, vcpu, cpu::rdtsc());
        // The first run flushed the TLB; later ones keep it.
        vcpu.vmcb.set(off::ASID, 1);
        if self.cfg.hostile {
            self.hostile_after(k, before);
        }
        let (Some(engine), Some(vcpu)) = (
            self.engines.get_mut(k).and_then(Option::as_mut),
            self.vcpus.get_mut(k),
        ) else {
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
        let Some(vcpu) = self.vcpus.get_mut(k) else {
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
                if let (Some(vcpu), Some(got)) = (self.vcpus.get_mut(k), read) {
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
        let (Some(engine), Some(vcpu)) = (
            self.engines.get_mut(k).and_then(Option::as_mut),
            self.vcpus.get_mut(k),
        ) else {
            return None;
        };
        let call = match write {
            Some(value) => ApicCall::WriteRegister { msr, value },
            None => ApicCall::ReadRegister { msr },
        };
        self.report.count_protocol(msr, write.is_some());
        let result = engine.handle_apic_call(&env, vcpu, call);
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
        let x2apic = self
            .engines
            .get(k)
            .and_then(Option::as_ref)
            .is_some_and(|e| e.apic().mode() == apic::ApicMode::X2Apic);
        let dest = if x2apic {
            icr >> 32
        } else {
            let high = self.apic_access(k, 0x831, None).flatten().unwrap_or(0);
            (high >> 24) & 0xFF
        };
        let t = usize::try_from(dest)
            .ok()
            .filter(|&t| t < self.cfg.vcpus && t != k)?;
        self.report.start_ipis = self.report.start_ipis.saturating_add(1);
        match request {
            smp::StartIpi::Init => {
                if let Some(slot) = self.engines.get_mut(t)
                    && slot.is_none()
                {
                    *slot = smp::new_engine(t, self.cfg.x2apic, self.tpb);
                }
            }
            smp::StartIpi::Startup(vector) => {
                let created = self.engines.get(t).is_some_and(Option::is_some);
                let started = self.started.get(t).copied().unwrap_or(true);
                if created && !started {
                    let [bsp, rest @ ..] = &mut *self.vcpus else {
                        return None;
                    };
                    let ap = rest.get_mut(t.checked_sub(1)?)?;
                    smp::init_ap_vmcb(&ap.vmcb, &bsp.vmcb, vector);
                    ap.gprs = hw::Gprs::default();
                    ap.sev_features.store(
                        bsp.sev_features.load(core::sync::atomic::Ordering::SeqCst),
                        core::sync::atomic::Ordering::SeqCst,
                    );
                    if let Some(s) = self.started.get_mut(t) {
                        *s = true;
                    }
                }
            }
        }
        Some(None)
    }

    fn port_io(&mut self, k: usize) -> Result<(), Stop> {
        let Some(vcpu) = self.vcpus.get_mut(k) else {
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
        let Some(vcpu) = self.vcpus.get_mut(k) else {
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
            let (Some(vcpu), Some(d)) = (self.vcpus.get_mut(k), dest) else {
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
        if let Some(vcpu) = self.vcpus.get_mut(k) {
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
        let Some(vcpu) = self.vcpus.get_mut(k) else {
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

    fn finish(&mut self) {
        for (k, (engine, vcpu)) in self.engines.iter().zip(self.vcpus.iter()).enumerate() {
            let Some(engine) = engine else { continue };
            let kicks = self.platforms.get(k).map_or(0, |p| p.kicks.get());
            self.report.add_vcpu(engine, vcpu, kicks);
        }
        self.report.verdict();
    }
}

/// The vector `before_run` presented, through EVENTINJ or V_IRQ.
fn presented_vector(vcpu: &Vcpu) -> Option<u8> {
    let ev = vcpu.event_inj();
    if ev.valid() && ev.event_type() == vmsa::EventType::Intr {
        return Some(ev.vector());
    }
    let ctrl = vcpu.vintr_ctrl();
    ctrl.v_irq().then(|| ctrl.v_intr_vector())
}
