//! A compact harness for the cargo-fuzz targets in `tests/fuzz`: a few
//! vCPUs with their pages and real engines, driven one hostile input at a
//! time, with the invariants that must hold after each step. Every check
//! returns `Err(what)`; the fuzz targets turn it into a crash.

use alloc::{format, string::String, vec, vec::Vec};
use core::sync::atomic::{AtomicU8, Ordering};

use altinj_doorbell::DoorbellPage;
use altinj_kernel::protocol::CallResult;
use altinj_kernel::{Env, Fabric, VcpuEngine, VcpuShared, VmShared};
use altinj_vmsa::{
    EFER_SVME, EventInj, EventType, ExitCode, RFLAGS_IF, VIntrCtrl, VmsaAccess, VmsaPage,
};

use crate::platform::{Effect, SimPlatform};

/// What the hardware and the guest do in one [`Harness::run`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RunChoice {
    /// The EVENTINJ delivery is cut by an exit (EXITINTINFO).
    pub cut: bool,
    /// The guest opens its window (RFLAGS.IF = 1, no shadow) during the run.
    pub open_window: bool,
    /// The guest's CR8 at the exit.
    pub v_tpr: u8,
    /// The guest EOIs what it took: lazily when the calling area allows.
    pub guest_eoi: bool,
    /// A hostile value for EXITINTINFO at the exit.
    pub exit_int_info: Option<u64>,
    /// The host sets BUSY before VMRUN.
    pub busy: bool,
    /// The guest exits in an interrupt shadow with IF clear.
    pub shadow: bool,
}

/// A few vCPUs with real engines.
pub struct Harness {
    /// The platform (its effects are drained after each step).
    pub platform: SimPlatform,
    /// Shared slots.
    pub shared: Vec<VcpuShared>,
    /// The VM-wide state (registration count).
    pub vm: VmShared,
    /// Doorbell pages (the host writes anything into them).
    pub doorbells: Vec<DoorbellPage>,
    /// Guest VMSAs.
    pub vmsas: Vec<VmsaPage>,
    /// Calling-area byte 2 per vCPU.
    pub caa: Vec<AtomicU8>,
    /// The engines.
    pub engines: Vec<VcpuEngine>,
    /// vCPUs whose engine reported a fatal state (stopped).
    pub stopped: Vec<bool>,
    /// Vectors the guest has in service (its own view), per vCPU.
    pub guest_isr: Vec<Vec<u8>>,
    /// Simulated time.
    pub now: u64,
}

impl Harness {
    /// `n` vCPUs (1..=8), each in x2APIC mode, software-enabled, every host
    /// vector allowed.
    pub fn new(n: usize) -> Result<Self, String> {
        let n = n.clamp(1, 8);
        let shared: Vec<VcpuShared> = (0..n).map(|_| VcpuShared::new()).collect();
        let vm = VmShared::new();
        let mut engines = Vec::with_capacity(n);
        for i in 0..n {
            engines.push(
                VcpuEngine::new(crate::world::engine_config(i), Fabric::new(&shared, &vm))
                    .map_err(|e| format!("{e:?}"))?,
            );
        }
        let vmsas = (0..n)
            .map(|_| {
                let mut page = VmsaPage::new();
                page.set_rflags(RFLAGS_IF | 2);
                page.set_efer(EFER_SVME);
                page.set_vintr_ctrl(VIntrCtrl::new().with_v_nmi_enable(true).with_busy(true));
                page
            })
            .collect();
        let mut h = Self {
            platform: SimPlatform::new(n),
            shared,
            vm,
            doorbells: (0..n).map(|_| DoorbellPage::new()).collect(),
            vmsas,
            caa: (0..n).map(|_| AtomicU8::new(0)).collect(),
            engines,
            stopped: vec![false; n],
            guest_isr: vec![Vec::new(); n],
            now: 1,
        };
        for i in 0..n {
            let bsp = if i == 0 { 1 << 8 } else { 0 };
            h.call(
                i,
                3 << 32 | 3,
                0x1B,
                0xFEE0_0000 | (1 << 11) | (1 << 10) | bsp,
                0,
            )?;
            h.call(i, 3 << 32 | 3, 0x80F, 0x1FF, 0)?;
            h.call(i, 3 << 32 | 4, (1 << 9) | (1 << 8), 0, 0)?;
        }
        Ok(h)
    }

    /// Number of vCPUs.
    pub fn n(&self) -> usize {
        self.engines.len()
    }

    fn with<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(&mut VcpuEngine, &Env<'_, SimPlatform>, &mut VmsaPage) -> R,
    ) -> Option<R> {
        self.platform.current.set(i);
        self.platform.now.set(self.now);
        let env = Env::new(
            &self.platform,
            Fabric::new(&self.shared, &self.vm),
            self.doorbells.get(i)?,
        )
        .with_no_eoi_byte(self.caa.get(i));
        let engine = self.engines.get_mut(i)?;
        let vmsa = self.vmsas.get_mut(i)?;
        Some(f(engine, &env, vmsa))
    }

    /// The GHCB calls made so far, taken.
    pub fn effects(&mut self) -> Vec<Effect> {
        self.platform
            .effects
            .try_borrow_mut()
            .map(|mut e| core::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// Checks of the engine's APIC state: nothing below 16, ISR classes
    /// strictly nested, one NMI pending at most.
    pub fn check_engine(&self, i: usize) -> Result<(), String> {
        let Some(e) = self.engines.get(i) else {
            return Ok(());
        };
        let a = e.apic();
        if a.irr().iter().chain(a.isr().iter()).any(|v| v < 16) {
            return Err(format!("vCPU {i}: vector below 16 in IRR/ISR"));
        }
        let mut last_class = None;
        for v in a.isr().iter() {
            if last_class == Some(v >> 4) {
                return Err(format!(
                    "vCPU {i}: two in-service vectors in class {:#x}",
                    v >> 4
                ));
            }
            last_class = Some(v >> 4);
        }
        if e.nmi().pending() && e.nmi().presented().is_some() {
            return Err(format!("vCPU {i}: two NMIs pending"));
        }
        Ok(())
    }

    /// An SVSM call from vCPU `i`'s guest (VMPL0 has the VMSA: BUSY set).
    pub fn call(
        &mut self,
        i: usize,
        rax: u64,
        rcx: u64,
        rdx: u64,
        r8: u64,
    ) -> Result<CallResult, String> {
        if self.stopped.get(i).copied().unwrap_or(true) {
            return Err("stopped".into());
        }
        if let Some(v) = self.vmsas.get_mut(i) {
            v.set_rax(rax);
            v.set_rcx(rcx);
            v.set_rdx(rdx);
            v.set_r8(r8);
        }
        let res = self
            .with(i, |e, env, vmsa| e.handle_apic_call_in_vmsa(env, vmsa))
            .ok_or("no vCPU")?;
        if !self.vmsas.get(i).is_some_and(|v| v.vintr_ctrl().busy()) {
            return Err(format!("vCPU {i}: BUSY cleared by an SVSM call"));
        }
        self.check_engine(i)?;
        Ok(res)
    }

    /// VMPL0's #HV handler on vCPU `i`.
    pub fn hv(&mut self, i: usize) {
        if let (Some(d), Some(s)) = (self.doorbells.get(i), self.shared.get(i)) {
            let _ = altinj_kernel::handle_hv(d, s, altinj_kernel::Vmpl0Tpr::ZERO);
        }
    }

    /// One guest run of vCPU `i`: `before_run`, entry checks, the hardware
    /// and guest as `choice` says, `after_exit`, exit checks. Returns the
    /// INTR vectors the guest took.
    pub fn run(&mut self, i: usize, choice: RunChoice) -> Result<Vec<u8>, String> {
        if self.stopped.get(i).copied().unwrap_or(true) {
            return Ok(Vec::new());
        }
        self.now = self.now.saturating_add(1000);
        match self.with(i, |e, env, vmsa| e.before_run(env, vmsa)) {
            Some(Ok(())) => {}
            Some(Err(_)) => {
                if let Some(s) = self.stopped.get_mut(i) {
                    *s = true;
                }
                return Ok(Vec::new());
            }
            None => return Err("no vCPU".into()),
        }
        let vmsa = self.vmsas.get_mut(i).ok_or("no VMSA")?;
        let ctrl = vmsa.vintr_ctrl();
        if ctrl.busy() {
            return Err(format!("vCPU {i}: BUSY set at VMRUN"));
        }
        let ev = vmsa.event_inj();
        if ev.valid() {
            let ty = ev.event_type();
            if ty.is_reserved() || (ty == EventType::Intr && ev.vector() < 16) {
                return Err(format!("vCPU {i}: illegal EVENTINJ {:#x}", ev.into_bits()));
            }
        }
        if ctrl.v_irq() && ctrl.v_intr_vector() < 16 {
            return Err(format!(
                "vCPU {i}: V_IRQ vector {:#x}",
                ctrl.v_intr_vector()
            ));
        }
        let mut taken = Vec::new();
        // The hardware.
        if choice.busy {
            vmsa.set_vintr_ctrl(ctrl.with_busy(true));
            vmsa.set_exit_code(ExitCode::BUSY);
        } else {
            if ev.valid() {
                vmsa.set_event_inj(EventInj::new());
                if choice.cut {
                    vmsa.set_exit_int_info(ev);
                } else if ev.event_type() == EventType::Intr {
                    taken.push(ev.vector());
                }
            }
            let mut c = vmsa.vintr_ctrl();
            if choice.open_window {
                vmsa.set_rflags(vmsa.rflags() | RFLAGS_IF);
                if c.v_nmi_enable() && c.v_nmi() && !c.v_nmi_mask() {
                    c = c.with_v_nmi(false);
                }
                if c.v_irq() && c.vgif() && c.v_intr_prio() > c.v_tpr() & 0xF {
                    c = c.with_v_irq(false);
                    taken.push(c.v_intr_vector());
                }
            }
            c = c
                .with_v_tpr(choice.v_tpr & 0xF)
                .with_int_shadow(choice.shadow);
            if choice.shadow {
                vmsa.set_rflags(vmsa.rflags() & !RFLAGS_IF);
            }
            vmsa.set_vintr_ctrl(c);
            if let Some(raw) = choice.exit_int_info {
                vmsa.set_exit_int_info(EventInj::from_bits(raw));
            }
            vmsa.set_exit_code(ExitCode::VMGEXIT);
        }
        // The guest's lazy EOI.
        let mut eoi_calls = 0;
        if let Some(isr) = self.guest_isr.get_mut(i) {
            isr.extend_from_slice(&taken);
            if choice.guest_eoi && !isr.is_empty() {
                let lazy = self
                    .caa
                    .get(i)
                    .is_some_and(|b| b.swap(0, Ordering::AcqRel) == 1);
                isr.pop();
                if !lazy {
                    eoi_calls = 1;
                }
            }
        }
        match self.with(i, |e, env, vmsa| e.after_exit(env, vmsa)) {
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                if let Some(s) = self.stopped.get_mut(i) {
                    *s = true;
                }
                return Ok(taken);
            }
            None => return Err("no vCPU".into()),
        }
        if !self.vmsas.get(i).is_some_and(|v| v.vintr_ctrl().busy()) {
            return Err(format!("vCPU {i}: BUSY clear after the exit"));
        }
        for _ in 0..eoi_calls {
            self.call(i, 3 << 32 | 3, 0x80B, 0, 0)?;
        }
        self.check_engine(i)?;
        Ok(taken)
    }
}
