//! The per-vCPU engine: what the SVSM runs around each guest run (spec §2,
//! §3, §5).
//!
//! One [`VcpuEngine`] per guest vCPU, owned by the SVSM (no global state). It
//! owns the emulated [`LocalApic`], the NMI state, the host-level tracking,
//! the registration count and the counters; what other vCPUs must see lives
//! in the vCPU's [`VcpuShared`] slot of the [`Fabric`].
//!
//! # Before each run ([`VcpuEngine::before_run`])
//! 0. Test-and-set BUSY, every time, before any VMSA write (spec §2).
//! 1. Collect: the guest VMPL's doorbell descriptor (host vectors through
//!    the CONFIGURE_VECTOR filter, vectors 0-30 rejected; level vectors
//!    recorded for their specific EOI; NMI; #MC), the mailbox (cross-vCPU
//!    vectors and NMIs), the APIC timer.
//! 2. Present, BUSY still set: a pending #MC as exception 18, then an NMI
//!    (V_NMI when V_NMI_ENABLE, else EVENTINJ type 2), then the highest
//!    deliverable vector: through EVENTINJ when the guest can take it now
//!    (RFLAGS.IF, no shadow, EVENTINJ free; the vector moves IRR -> ISR at
//!    once), else queued in V_IRQ. A vector held back by TPR alone (its
//!    class is above every in-service class) is queued in V_IRQ as well,
//!    V_INTR_PRIO = its class: CR8 writes do not exit, and hardware takes it
//!    when V_TPR drops below that class (spec §2). An event re-injected
//!    from EXITINTINFO owns EVENTINJ for this run and is never overwritten.
//! 3. Lazy EOI: the calling area's `no_eoi_required` byte is set to 1 only
//!    when after this delivery exactly one vector is in service, it is edge,
//!    and nothing else is pending; otherwise it is set to 0.
//! 4. V_TPR = APIC TPR class; BUSY cleared last.
//!
//! Between `before_run` and Run VMPL the SVSM may ask
//! [`VcpuEngine::work_pending`] whether anything arrived since the collect.
//! IPI routing, the timer and the hand-back live in `engine/ipi.rs`,
//! `engine/timer.rs` and `engine/handback.rs`.
//!
//! # After each exit ([`VcpuEngine::after_exit`])
//! Test-and-set BUSY; recall what was not delivered (EVENTINJ still valid:
//! ISR -> IRR; V_IRQ still set: stays in IRR), account for a taken V_IRQ
//! (IRR -> ISR), re-inject EXITINTINFO when the engine can account for it
//! (see `exit_event`: its own presentations, guest-raised exceptions;
//! anything else is dropped and counted), resolve the NMI, sync TPR from V_TPR,
//! perform an EOI the guest signalled lazily. A VMEXIT_BUSY exit is repaired
//! by the same recall; more than [`MAX_BUSY_REPAIRS`] in a row is fatal.
//!
//! # Lazy EOI protocol \[choice\]
//! Calling-area byte 2 (`no_eoi_required`, SVSM spec 58019 calling area).
//! Engine, before a run: writes 1 only when safe (above), else 0. Guest, at
//! EOI: atomically swaps the byte to 0; if it read 1 it skips the EOI MSR
//! write (Linux PV-EOI style). Engine, after the exit: swaps the byte to 0;
//! if it had written 1 and reads 0, the guest skipped an EOI and the engine
//! performs it (edge only, so the host never needs it).
//!
//! # Machine checks \[choice\]
//! A #MC posted for the guest VMPL is injected as exception 18 (no error
//! code) as soon as EVENTINJ is free. A second #MC while one is pending or
//! being re-injected is reported as [`Fatal::NestedMachineCheck`] (on
//! hardware a #MC during #MC delivery shuts the CPU down), never a panic.

mod cancel;
mod fast;
mod handback;
mod ipi;
mod timer;

use core::sync::atomic::Ordering;

use apic::{ApicConfig, ApicMode, LocalApic, RequestOutcome, Trigger, WriteEffect};
use doorbell::{Descriptor, DescriptorStatus, DoorbellPage, PendingInterrupts};
use vmsa::rules::{self, Reinjection, VirqOutcome};
use vmsa::{EventInj, EventType, ExitKind, RFLAGS_IF, VmsaAccess};

use crate::caa::NoEoiByte;
use crate::counters::{Counters, bump};
use crate::exit_event::{self, Presented};
use crate::fabric::{Fabric, VcpuShared, pack_address};
use crate::level::HostLevel;
use crate::nmi::{NmiExit, NmiState, NmiVia};
use crate::platform::Platform;
use crate::protocol::{
    ApicCall, CallRegs, CallResult, ResultCode, configure_vector, feature, register_error,
};
use crate::registration::{ConfigureStep, Registration};

/// Consecutive VMEXIT_BUSY exits repaired before the engine reports
/// [`Fatal::BusyStorm`] (project choice: a correct SVSM clears BUSY before
/// every run, so even one repeat means another agent is setting it).
pub const MAX_BUSY_REPAIRS: u8 = 3;

/// Exception vector of #MC.
const MC_VECTOR: u8 = 18;

/// x2APIC MSR range (Intel SDM vol. 3A §11.12.1.2).
const X2APIC_FIRST: u64 = 0x800;
const X2APIC_LAST: u64 = 0x8FF;
/// Spurious-interrupt vector register (x2APIC MSR; xAPIC offset 0xF0).
const SVR: u32 = 0x80F;

/// How one vCPU's engine is set up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EngineConfig {
    /// Index of this vCPU in the [`Fabric`].
    pub index: usize,
    /// The APIC ID the host knows this vCPU by (destination of kicks).
    pub host_apic_id: u32,
    /// The emulated APIC.
    pub apic: ApicConfig,
    /// The guest's VMPL (1-3; normally 2).
    pub guest_vmpl: u8,
    /// Vector the host raises in a vCPU's VMPL0 for a kick (GHCB 0x8000_001B).
    pub notification_vector: u8,
    /// Whether the SVSM emulates this vCPU's APIC (false: protocol 3 answers
    /// UNSUPPORTED_PROTOCOL and the engine injects nothing).
    pub emulate: bool,
}

/// What the platform provides to one engine call.
#[derive(Clone, Copy)]
pub struct Env<'a, P: ?Sized> {
    /// GHCB calls, time, timer.
    pub platform: &'a P,
    /// Every vCPU's shared slot.
    pub fabric: Fabric<'a>,
    /// This vCPU's #HV doorbell page.
    pub doorbell: &'a DoorbellPage,
    /// Byte 2 (`no_eoi_required`) of the guest's calling area, when the
    /// guest has one; `None` disables lazy EOI.
    pub caa_no_eoi: Option<&'a dyn NoEoiByte>,
}

impl<'a, P: ?Sized> Env<'a, P> {
    /// An environment without lazy EOI.
    pub fn new(platform: &'a P, fabric: Fabric<'a>, doorbell: &'a DoorbellPage) -> Self {
        Self {
            platform,
            fabric,
            doorbell,
            caa_no_eoi: None,
        }
    }

    /// The same, with lazy EOI through the guest's `no_eoi_required` byte
    /// (`None`: without).
    pub fn with_no_eoi_byte(self, byte: Option<&'a dyn NoEoiByte>) -> Self {
        Self {
            caa_no_eoi: byte,
            ..self
        }
    }
}

/// A state the engine cannot repair: the SVSM must stop the guest.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fatal {
    /// VMRUN kept failing with VMEXIT_BUSY although BUSY was cleared.
    BusyStorm,
    /// A machine check arrived while another was pending or being delivered.
    NestedMachineCheck,
    /// The engine's vCPU index has no slot in the fabric.
    NoSlot,
    /// The configured guest VMPL has no doorbell descriptor (only 1-3 do).
    BadVmpl,
}

/// What [`VcpuEngine::after_exit`] tells the SVSM.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ExitInfo {
    /// Why the guest exited (VMGEXIT: look for an SVSM call).
    pub exit: ExitKind,
    /// The exit was a VMRUN failure that the engine repaired.
    pub repaired: bool,
}

/// Which event the engine left in EVENTINJ for the next run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum InEventInj {
    /// An APIC vector, already in ISR.
    Apic(u8),
    /// An NMI.
    Nmi,
    /// #MC.
    MachineCheck,
    /// An event the engine does not own (re-injected exception, or an event
    /// the SVSM injected itself): kept until delivered.
    Other(EventInj),
}

/// One vCPU's injection engine.
#[derive(Clone, Debug)]
pub struct VcpuEngine {
    apic: LocalApic,
    counters: Counters,
    host_level: HostLevel,
    nmi: NmiState,
    registration: Registration,
    index: u32,
    guest_vmpl: u8,
    notification_vector: u8,
    /// What the engine put in EVENTINJ for the run in flight.
    eventinj: Option<InEventInj>,
    /// The APIC vector in EVENTINJ is a re-injection (EXITINTINFO): its
    /// delivery had begun, so it is in service and never returns to IRR,
    /// where a later instance would merge with it (issue 9 path 2).
    eventinj_reinjected: bool,
    /// Vector queued in V_IRQ for the run in flight.
    virq: Option<u8>,
    /// V_TPR written before the run (a different value after the exit means
    /// the guest wrote CR8).
    written_v_tpr: u8,
    /// `no_eoi_required` was set to 1 for the run in flight.
    lazy_eoi_armed: bool,
    /// A #MC waits for EVENTINJ.
    mc_pending: bool,
    /// `before_run` ran and `after_exit` has not yet.
    in_flight: bool,
    busy_streak: u8,
    fatal: Option<Fatal>,
    /// The deadline the platform timer is armed for.
    timer_armed: Option<u64>,
    timer_missing_logged: bool,
    /// A kick this vCPU sent failed: its next `before_run` retries every
    /// kick marked failed in the fabric.
    kick_retry: bool,
}

// Engine state per vCPU, APIC included, must stay within 1 KiB (the shared
// slot and the doorbell/VMSA pages are separate).
const _: () = assert!(core::mem::size_of::<VcpuEngine>() <= 1024);

impl VcpuEngine {
    /// Creates the engine of vCPU `config.index` and makes its slot present
    /// in `fabric` (an AP created later calls this when its VMSA is made).
    pub fn new(config: EngineConfig, fabric: Fabric<'_>) -> Result<Self, Fatal> {
        let slot = fabric.slot(config.index).ok_or(Fatal::NoSlot)?;
        let index = u32::try_from(config.index).map_err(|_| Fatal::NoSlot)?;
        if !(1..=3).contains(&config.guest_vmpl) {
            return Err(Fatal::BadVmpl);
        }
        let apic = LocalApic::new(config.apic);
        if config.emulate {
            slot.activate(config.host_apic_id, &apic.address());
        }
        Ok(Self {
            apic,
            counters: Counters::default(),
            host_level: HostLevel::new(),
            nmi: NmiState::default(),
            registration: Registration::new(config.emulate),
            index,
            guest_vmpl: config.guest_vmpl,
            notification_vector: config.notification_vector,
            eventinj: None,
            eventinj_reinjected: false,
            virq: None,
            written_v_tpr: 0,
            lazy_eoi_armed: false,
            mc_pending: false,
            in_flight: false,
            busy_streak: 0,
            fatal: None,
            timer_armed: None,
            timer_missing_logged: false,
            kick_retry: false,
        })
    }

    /// The emulated APIC.
    pub fn apic(&self) -> &LocalApic {
        &self.apic
    }

    /// The emulated APIC, for device models of the SVSM (e.g. an IOAPIC
    /// raising a locally generated level interrupt). Host vectors are
    /// refused until the guest allows them with CONFIGURE_VECTOR (the APIC's
    /// power-on state, like Secure AVIC's empty ALLOWED_IRR); an SVSM whose
    /// guests do not use CONFIGURE_VECTOR opens them at creation with
    /// `apic_mut().set_all_host_vectors_allowed(true)`.
    pub fn apic_mut(&mut self) -> &mut LocalApic {
        &mut self.apic
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The NMI state.
    pub fn nmi(&self) -> &NmiState {
        &self.nmi
    }

    /// Host-presented level vectors awaiting their EOI.
    pub fn host_level(&self) -> &HostLevel {
        &self.host_level
    }

    /// The registration state.
    pub fn registration(&self) -> Registration {
        self.registration
    }

    /// The fatal state, once reported.
    pub fn fatal(&self) -> Option<Fatal> {
        self.fatal
    }

    /// This vCPU's index.
    pub fn index(&self) -> usize {
        // Lossless on every target this crate supports (usize >= 32 bits).
        self.index as usize
    }

    /// A machine check is waiting for EVENTINJ.
    pub fn machine_check_pending(&self) -> bool {
        self.mc_pending
    }

    fn slot<'a, P: ?Sized>(&self, env: &Env<'a, P>) -> Option<&'a VcpuShared> {
        env.fabric.slot(self.index())
    }

    fn fail(&mut self, fatal: Fatal) -> Fatal {
        if self.fatal.is_none() {
            log::error!("vCPU {}: fatal injection state {:?}", self.index, fatal);
        }
        self.fatal = Some(fatal);
        fatal
    }

    // ----------------------------------------------------------------- run

    /// Prepares the guest VMSA for the next run and clears BUSY last.
    pub fn before_run<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        self.before_run_with::<true, P, V>(env, vmsa)
    }

    /// [`VcpuEngine::before_run`] without its fast paths, for the tests
    /// that compare both (`kernel/tests/props.rs`).
    #[cfg(feature = "ktests")]
    pub fn before_run_without_fast_paths<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        self.before_run_with::<false, P, V>(env, vmsa)
    }

    /// `before_run`, with (`FAST`) or without the cheap tests that skip
    /// work (`fast`).
    #[inline(always)]
    fn before_run_with<const FAST: bool, P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<(), Fatal> {
        if let Some(fatal) = self.fatal {
            return Err(fatal);
        }
        let slot = self.slot(env).ok_or(Fatal::NoSlot)?;
        // BUSY before the first VMSA write, every time (spec §2): a VMSA the
        // SVSM has not claimed yet (first run, or BUSY cleared by anyone
        // else) may be runnable on another CPU.
        vmsa.test_and_set_busy();
        if self.in_flight {
            // Called twice without a run: take back what the first call
            // presented, exactly as after a failed VMRUN.
            self.resolve_exit(env, vmsa, None);
        }
        if !self.registration.emulating() {
            slot.set_running(true);
            self.in_flight = false;
            vmsa.clear_busy();
            return Ok(());
        }

        self.collect::<FAST, P>(env, slot)?;
        self.present::<FAST, V>(vmsa);
        self.arm_lazy_eoi(env);

        let v_tpr = self.apic.tpr() >> 4;
        rules::set_v_tpr(vmsa, v_tpr);
        self.written_v_tpr = v_tpr;
        self.in_flight = true;
        slot.set_running(true);
        vmsa.clear_busy();
        Ok(())
    }

    /// Whether anything arrived since `before_run` collected: a post in
    /// the mailbox (a kick), a host post in the guest VMPL's descriptor or
    /// a platform timer fire ([`VcpuShared::note_timer_fired`]). A few
    /// atomic loads, no GHCB call: the run loop checks it between
    /// `before_run` and Run VMPL with VMPL0 interrupts disabled and calls
    /// `before_run` again when it is true (`docs/integration.md`).
    pub fn work_pending<P: ?Sized>(&self, env: &Env<'_, P>) -> bool {
        if !self.registration.emulating() {
            return false;
        }
        let Some(slot) = self.slot(env) else {
            return false;
        };
        slot.mailbox().outstanding()
            || slot.timer_fire_noted()
            || env
                .doorbell
                .descriptor(self.guest_vmpl)
                .is_ok_and(has_host_posts)
    }

    /// Takes everything pending for this vCPU into the APIC / NMI state.
    #[inline(always)]
    fn collect<const FAST: bool, P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        slot: &VcpuShared,
    ) -> Result<(), Fatal> {
        // The #HV handler's notes are informative: the descriptor is
        // consumed every time, so a lost #HV costs nothing.
        let _ = slot.take_hv_events();
        // Nothing, or one edge vector, without the general consume (`fast`).
        if !(FAST && self.collect_host_fast(env)) {
            self.collect_host(env)?;
        }
        if self.kick_retry {
            self.retry_failed_kicks(env);
        }
        if slot.mailbox().outstanding() {
            // The drain also clears a failed-kick mark: it takes every post
            // announced so far, so the kick needs no retry.
            let posted = slot.mailbox().drain();
            for vector in posted.iter() {
                let _ = self.apic.request(vector, Trigger::Edge);
            }
            if posted.nmi {
                self.request_nmi();
            }
        }
        // Cheap test first: with no deadline and no fire noted, the timer
        // step does nothing.
        if !FAST || slot.timer_fire_noted() || self.apic.timer_may_be_armed() {
            self.collect_timer(env, slot);
        }
        Ok(())
    }

    /// Takes and accepts everything in the guest VMPL's descriptor.
    #[inline(never)]
    fn collect_host<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) -> Result<(), Fatal> {
        match env.doorbell.consume(self.guest_vmpl) {
            Ok(host) => self.accept_host(env, &host),
            Err(_) => Ok(()),
        }
    }

    /// Host-presented interrupts from the descriptor (spec §3).
    fn accept_host<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        host: &PendingInterrupts,
    ) -> Result<(), Fatal> {
        let rejected = u64::from(host.rejected);
        self.counters.host_vectors_rejected =
            self.counters.host_vectors_rejected.saturating_add(rejected);
        for (word, base) in host.vectors.iter().zip((0u8..).step_by(32)) {
            let mut bits = *word;
            while bits != 0 {
                // trailing_zeros < 32 since bits != 0.
                let vector = base.wrapping_add(bits.trailing_zeros() as u8);
                bits &= bits.wrapping_sub(1);
                self.host_vector(vector, Trigger::Edge);
            }
        }
        if let Some(vector) = host.level {
            if self.host_vector(vector, Trigger::Level) {
                self.host_level.record(vector);
            } else {
                // Refused: the host still waits for an EOI of the level
                // line, so give it one now rather than wedge it.
                self.host_eoi(env, vector);
            }
        }
        if host.nmi {
            self.request_nmi();
        }
        if host.mc {
            bump(&mut self.counters.machine_checks);
            let nested = self.mc_pending || self.eventinj == Some(InEventInj::MachineCheck);
            if nested {
                return Err(self.fail(Fatal::NestedMachineCheck));
            }
            log::warn!("vCPU {}: machine check for the guest", self.index);
            self.mc_pending = true;
        }
        if host.ipi_requested {
            log::debug!("vCPU {}: host set IPI requested (ignored)", self.index);
        }
        Ok(())
    }

    /// One host vector through the filter; true when the APIC holds it.
    #[inline]
    fn host_vector(&mut self, vector: u8, trigger: Trigger) -> bool {
        if !doorbell::is_legal_vector(vector) {
            bump(&mut self.counters.host_vectors_rejected);
            return false;
        }
        match self.apic.request_from_host(vector, trigger) {
            RequestOutcome::Accepted | RequestOutcome::Coalesced => {
                bump(&mut self.counters.host_vectors_accepted);
                true
            }
            RequestOutcome::Illegal | RequestOutcome::Dropped | RequestOutcome::Denied => {
                bump(&mut self.counters.host_vectors_rejected);
                false
            }
        }
    }

    fn request_nmi(&mut self) {
        if !self.nmi.request() {
            bump(&mut self.counters.nmis_collapsed);
        }
    }

    /// Writes #MC, NMI and the highest deliverable vector into the VMSA.
    #[inline(always)]
    fn present<const FAST: bool, V: VmsaAccess + ?Sized>(&mut self, vmsa: &mut V) {
        // A re-injected or foreign event owns EVENTINJ this run.
        let mut eventinj_free = !vmsa.event_inj().valid();
        // Cheap test first: without a #MC or an NMI pending neither block
        // below does anything.
        if !FAST || self.mc_pending || self.nmi.pending() {
            self.present_mc_nmi(vmsa, &mut eventinj_free);
        }
        self.present_vector(vmsa, eventinj_free);
    }

    /// The #MC and NMI part of [`VcpuEngine::present`].
    fn present_mc_nmi<V: VmsaAccess + ?Sized>(&mut self, vmsa: &mut V, eventinj_free: &mut bool) {
        if self.mc_pending && *eventinj_free {
            vmsa.set_event_inj(EventInj::exception(MC_VECTOR, None));
            self.eventinj = Some(InEventInj::MachineCheck);
            self.mc_pending = false;
            *eventinj_free = false;
        }

        let ctrl = vmsa.vintr_ctrl();
        if let Some(via) = self.nmi.choose(
            ctrl.v_nmi_enable(),
            ctrl.v_nmi(),
            ctrl.v_nmi_mask(),
            ctrl.int_shadow(),
            *eventinj_free,
        ) {
            match via {
                NmiVia::VNmi => vmsa.set_vintr_ctrl(ctrl.with_v_nmi(true)),
                NmiVia::EventInj => {
                    vmsa.set_event_inj(EventInj::nmi());
                    self.eventinj = Some(InEventInj::Nmi);
                    *eventinj_free = false;
                }
            }
            self.nmi.mark_presented(via);
        }
    }

    /// The APIC vector part of [`VcpuEngine::present`].
    #[inline]
    fn present_vector<V: VmsaAccess + ?Sized>(&mut self, vmsa: &mut V, eventinj_free: bool) {
        let (vector, behind_tpr) = match self.apic.highest_deliverable() {
            Some(vector) => (vector, false),
            None => match self.highest_behind_tpr() {
                Some(vector) => (vector, true),
                None => return,
            },
        };
        let rflags = vmsa.rflags();
        let ctrl = vmsa.vintr_ctrl();
        let window_open = rflags & RFLAGS_IF != 0 && !ctrl.int_shadow();
        if !behind_tpr && eventinj_free && window_open {
            vmsa.set_event_inj(EventInj::external_interrupt(vector));
            self.apic.acknowledge(vector);
            self.eventinj = Some(InEventInj::Apic(vector));
            self.eventinj_reinjected = false;
            bump(&mut self.counters.presented_eventinj);
        } else if !ctrl.v_irq() && rules::queue_v_irq(vmsa, vector).is_ok() {
            // V_INTR_PRIO = the vector's class, V_IGN_TPR = 0: hardware takes
            // it only while V_INTR_PRIO > V_TPR (spec §2), so a vector held
            // back by TPR alone is delivered as soon as the guest lowers CR8,
            // which does not exit with Alternate Injection.
            self.virq = Some(vector);
            bump(&mut self.counters.presented_virq);
            if behind_tpr {
                bump(&mut self.counters.virq_behind_tpr);
            }
        }
    }

    /// The highest pending vector when TPR alone holds it back: its class
    /// is above every in-service class, so it becomes deliverable as soon as
    /// TPR drops below its class (PPR = max(TPR, ISRV class), Intel SDM
    /// vol. 3A §11.8.3.1). Call when `highest_deliverable()` is `None`.
    fn highest_behind_tpr(&self) -> Option<u8> {
        let vector = self.apic.irr().highest()?;
        let in_service = self.apic.isr().highest().unwrap_or(0);
        (vector & 0xF0 > in_service & 0xF0).then_some(vector)
    }

    /// Sets or clears the calling area's `no_eoi_required` (module doc).
    #[inline(always)]
    fn arm_lazy_eoi<P: ?Sized>(&mut self, env: &Env<'_, P>) {
        // Armed still: the last exit could not read the byte back, so
        // whether the guest skipped its EOI is unknown; it is read again at
        // the next exit, and the byte is left as the guest left it.
        if self.lazy_eoi_armed {
            return;
        }
        let Some(byte) = env.caa_no_eoi else {
            return;
        };
        let isr = self.apic.isr();
        let irr = self.apic.irr();
        // The one vector that will be in service after this run, if there
        // is exactly one and nothing else is pending (no popcount: it is
        // not a baseline x86-64 instruction).
        let lone = match self.virq {
            // The queued vector joins ISR when the guest takes it.
            Some(v) => (isr.is_empty() && irr.is_only(v)).then_some(v),
            None if irr.is_empty() => match self.apic.highest_in_service() {
                Some(h) if isr.is_only(h) => Some(h),
                _ => None,
            },
            None => None,
        };
        // A host level vector is never skipped lazily, even when an edge
        // request of it cleared its TMR bit: the host waits for its EOI.
        let safe =
            lone.is_some_and(|v| !self.apic.tmr().contains(v) && !self.host_level.contains(v));
        if byte.store(u8::from(safe)).is_err() {
            bump(&mut self.counters.platform_errors);
            self.lazy_eoi_armed = false;
            return;
        }
        self.lazy_eoi_armed = safe;
    }

    /// Processes the guest exit; BUSY stays set until the next
    /// [`VcpuEngine::before_run`].
    pub fn after_exit<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> Result<ExitInfo, Fatal> {
        let slot = self.slot(env).ok_or(Fatal::NoSlot)?;
        slot.set_running(false);
        let was_busy = vmsa.test_and_set_busy();
        let exit = vmsa.exit_code().kind();
        let busy_exit = exit == ExitKind::Busy;
        if busy_exit || was_busy {
            bump(&mut self.counters.busy_repairs);
            if rare(self.counters.busy_repairs) {
                log::warn!(
                    "vCPU {}: BUSY found at exit ({:?}), repairing",
                    self.index,
                    exit
                );
            }
        }
        if busy_exit {
            self.busy_streak = self.busy_streak.saturating_add(1);
        } else {
            self.busy_streak = 0;
        }
        if self.registration.emulating() {
            self.resolve_exit(env, vmsa, Some(exit));
        }
        self.in_flight = false;
        if self.busy_streak > MAX_BUSY_REPAIRS {
            return Err(self.fail(Fatal::BusyStorm));
        }
        if let Some(fatal) = self.fatal {
            return Err(fatal);
        }
        Ok(ExitInfo {
            exit,
            repaired: busy_exit || was_busy,
        })
    }

    /// Everything after BUSY is set: recall, acknowledge, re-inject, NMI,
    /// TPR, lazy EOI. `exit` is `None` when a second `before_run` recalls.
    fn resolve_exit<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
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
        let reinjected = core::mem::take(&mut self.eventinj_reinjected);
        let mut nmi_outcome = None;
        let mut keep = None;
        match (presented, run.undelivered_event) {
            // A re-injected vector stays in ISR and in EVENTINJ until the
            // guest takes it: recalled to IRR it would merge with an
            // instance still in the mailbox, drained at the next run.
            (Some(InEventInj::Apic(v)), Some(ev)) if reinjected => {
                keep = Some((ev, InEventInj::Apic(v)));
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
            (Some(InEventInj::Apic(v)), None) => taken.eventinj_vector = Some(v),
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
                    self.eventinj_reinjected = matches!(owner, InEventInj::Apic(_));
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
                self.eventinj_reinjected = reinjected && matches!(owner, InEventInj::Apic(_));
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
    fn recall(&mut self, vector: u8) -> bool {
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
    fn drop_exit_event(&mut self, event: EventInj, why: &str) {
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

    fn classify_reinjected(&self, event: EventInj) -> InEventInj {
        match event.event_type() {
            EventType::Intr if self.apic.isr().contains(event.vector()) => {
                InEventInj::Apic(event.vector())
            }
            EventType::Nmi => InEventInj::Nmi,
            EventType::Exception if event.vector() == MC_VECTOR => InEventInj::MachineCheck,
            _ => InEventInj::Other(event),
        }
    }

    // ------------------------------------------------------------ EOI, IPI

    /// Retires the highest in-service vector; a host level vector gets its
    /// specific EOI exactly once.
    fn eoi<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        if let Some(info) = self.apic.eoi() {
            self.eoi_done(env, info);
        }
    }

    #[inline(never)]
    fn eoi_done<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, info: apic::EoiInfo) {
        // With EOI-broadcast suppression (SVR bit 12) the guest EOIs the
        // (host's) IOAPIC itself, so the host must not get a second EOI
        // (Intel SDM vol. 3A §11.8.5).
        // Gated on the engine's own record, not the guest-visible TMR: an
        // edge request of the same vector clears TMR (Intel SDM vol. 3A
        // §11.8.4), yet the host line still waits for exactly one EOI.
        if self.host_level.complete(info.vector) && !self.apic.eoi_broadcast_suppressed() {
            self.host_eoi(env, info.vector);
        }
    }

    /// APIC_BASE EN = 0 cleared IRR, ISR and TMR (and the timer): every
    /// host level vector still outstanding gets its specific EOI now, since
    /// no guest EOI will ever retire it (Intel SDM vol. 3A §11.4.3).
    fn apic_disabled<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>) {
        let outstanding = *self.host_level.set();
        self.host_level.clear();
        for vector in outstanding.iter() {
            self.host_eoi(env, vector);
        }
        self.rearm_timer(env);
    }

    fn host_eoi<P: Platform + ?Sized>(&mut self, env: &Env<'_, P>, vector: u8) {
        match env.platform.specific_eoi(self.guest_vmpl, vector) {
            Ok(()) => bump(&mut self.counters.host_level_eois),
            Err(_) => {
                bump(&mut self.counters.platform_errors);
                if rare(self.counters.platform_errors) {
                    log::warn!("vCPU {}: specific EOI of {vector:#x} failed", self.index);
                }
            }
        }
    }

    /// Applies what a register write asks for.
    fn apply<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        effect: &WriteEffect,
    ) -> Result<(), ResultCode> {
        match effect {
            WriteEffect::Eoi(info) => self.eoi_done(env, *info),
            WriteEffect::SendIpi(ipi) => return self.send_ipi(env, ipi),
            WriteEffect::TimerChanged => self.rearm_timer(env),
            WriteEffect::ModeChanged(ApicMode::Disabled) => {
                self.apic_disabled(env);
                self.publish(env);
            }
            WriteEffect::ModeChanged(_) | WriteEffect::AddressChanged => self.publish(env),
            WriteEffect::None => {}
        }
        Ok(())
    }

    /// Republishes the APIC address (mode, ID, LDR, DFR may have changed).
    fn publish<P: ?Sized>(&self, env: &Env<'_, P>) {
        if let Some(slot) = self.slot(env)
            && self.registration.emulating()
        {
            slot.publish_packed(pack_address(&self.apic.address()));
        }
    }

    // ------------------------------------------------------------- protocol

    /// Answers one APIC protocol call (RAX/RCX/RDX already decoded).
    #[inline]
    pub fn handle_apic_call<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        call: ApicCall,
    ) -> CallResult {
        // The hottest call first (`fast`): the EOI write.
        if call
            == (ApicCall::WriteRegister {
                msr: fast::MSR_EOI,
                value: 0,
            })
            && self.registration.emulating()
            && self.fast_eoi(env)
        {
            bump(&mut self.counters.protocol_calls);
            return CallResult::SUCCESS;
        }
        self.handle_apic_call_general::<true, P, V>(env, vmsa, call)
    }

    /// [`VcpuEngine::handle_apic_call`] without its fast paths (nor those
    /// of `write_register`), for the tests that compare both.
    #[cfg(feature = "ktests")]
    pub fn handle_apic_call_without_fast_paths<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        call: ApicCall,
    ) -> CallResult {
        self.handle_apic_call_general::<false, P, V>(env, vmsa, call)
    }

    #[inline(never)]
    fn handle_apic_call_general<const FAST: bool, P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
        call: ApicCall,
    ) -> CallResult {
        bump(&mut self.counters.protocol_calls);
        if !self.registration.emulating() {
            // Off, or handed back: the protocol is gone on this vCPU (spec §5).
            return CallResult::code(ResultCode::UnsupportedProtocol);
        }
        match call {
            ApicCall::QueryFeatures => {
                let mut features = feature::LAZY_EOI;
                if env.platform.has_timer() {
                    features |= feature::TIMER;
                }
                CallResult::rcx(features)
            }
            ApicCall::Configure(op) => match env.fabric.vm().registrations().configure(op) {
                Ok(ConfigureStep::Count(count)) => CallResult::rcx(u64::from(count)),
                Ok(ConfigureStep::HandBack) => match self.hand_back(env, vmsa) {
                    Ok(()) => CallResult::rcx(0),
                    Err(code) => CallResult::code(code),
                },
                Err(code) => CallResult::code(code),
            },
            ApicCall::ReadRegister { msr } => match self.read_register(env, msr) {
                Ok(value) => CallResult::rdx(value),
                Err(code) => CallResult::code(code),
            },
            ApicCall::WriteRegister { msr, value } => {
                let result = if FAST {
                    self.write_register(env, msr, value)
                } else {
                    self.write_register_general(env, msr, value)
                };
                match result {
                    Ok(()) => CallResult::SUCCESS,
                    Err(code) => CallResult::code(code),
                }
            }
            ApicCall::ConfigureVector(rcx) => CallResult::code(self.configure_vector(rcx)),
            ApicCall::Unknown(_) => CallResult::code(ResultCode::UnsupportedCall),
        }
    }

    /// Reads RAX/RCX/RDX from the VMSA, answers the APIC protocol call and
    /// writes RAX (and RCX/RDX outputs) back.
    pub fn handle_apic_call_in_vmsa<P: Platform + ?Sized, V: VmsaAccess + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        vmsa: &mut V,
    ) -> CallResult {
        let regs = CallRegs {
            rax: vmsa.rax(),
            rcx: vmsa.rcx(),
            rdx: vmsa.rdx(),
            r8: vmsa.r8(),
        };
        let result = if regs.is_apic_protocol() {
            self.handle_apic_call(env, vmsa, ApicCall::decode(&regs))
        } else {
            CallResult::code(ResultCode::UnsupportedProtocol)
        };
        vmsa.set_rax(result.code.value());
        if let Some(rcx) = result.rcx {
            vmsa.set_rcx(rcx);
        }
        if let Some(rdx) = result.rdx {
            vmsa.set_rdx(rdx);
        }
        result
    }

    fn configure_vector(&mut self, rcx: u64) -> ResultCode {
        if rcx & configure_vector::RESERVED != 0 {
            return ResultCode::InvalidParameter;
        }
        let allow = rcx & configure_vector::ALLOW != 0;
        if rcx & configure_vector::ALL != 0 {
            self.apic.set_all_host_vectors_allowed(allow);
            return ResultCode::Success;
        }
        // Lossless: masked to 8 bits.
        let vector = (rcx & configure_vector::VECTOR_MASK) as u8;
        if allow && !doorbell::is_legal_vector(vector) {
            // Host vectors 0-30 are never accepted (spec §6).
            return ResultCode::InvalidParameter;
        }
        self.apic.set_host_vector_allowed(vector, allow);
        ResultCode::Success
    }

    /// READ_REGISTER: APIC_BASE, TSC_DEADLINE, or 0x800-0x8FF (in xAPIC
    /// mode the MSR is mapped to MMIO offset (msr - 0x800) << 4 \[choice\]).
    pub fn read_register<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
    ) -> Result<u64, ResultCode> {
        match msr {
            m if m == u64::from(apic::MSR_APIC_BASE) => Ok(self.apic.apic_base()),
            m if m == u64::from(apic::MSR_TSC_DEADLINE) => Ok(self.apic.tsc_deadline()),
            X2APIC_FIRST..=X2APIC_LAST => {
                // Lossless: at most 0x8FF.
                let msr32 = msr as u32;
                let now = time_for(env, msr32);
                match self.apic.mode() {
                    ApicMode::XApic => self.apic.read_mmio(mmio_offset(msr32), now).map(u64::from),
                    ApicMode::X2Apic | ApicMode::Disabled => self.apic.read_msr(msr32, now),
                }
                .map_err(register_error)
            }
            _ => Err(ResultCode::InvalidAddress),
        }
    }

    /// WRITE_REGISTER (see [`VcpuEngine::read_register`] for the mapping).
    #[inline]
    pub fn write_register<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        // The two hot registers first (`fast`); small enough to inline.
        if msr == fast::MSR_EOI && value == 0 && self.fast_eoi(env) {
            return Ok(());
        }
        if msr == fast::MSR_ICR {
            return self.write_icr(env, value);
        }
        self.write_register_general(env, msr, value)
    }

    /// [`VcpuEngine::write_register`] without its fast paths, for the
    /// tests that compare both (`kernel/tests/props.rs`).
    #[cfg(feature = "ktests")]
    pub fn write_register_without_fast_paths<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        self.write_register_general(env, msr, value)
    }

    #[inline(never)]
    fn write_register_general<P: Platform + ?Sized>(
        &mut self,
        env: &Env<'_, P>,
        msr: u64,
        value: u64,
    ) -> Result<(), ResultCode> {
        let result = match msr {
            m if m == u64::from(apic::MSR_APIC_BASE) => self.apic.set_apic_base(value),
            m if m == u64::from(apic::MSR_TSC_DEADLINE) => {
                // An expiry already due is delivered before the deadline
                // changes, as for the other timer registers.
                self.poll_timer_now(env);
                Ok(self.apic.set_tsc_deadline(value, env.platform.now()))
            }
            X2APIC_FIRST..=X2APIC_LAST => {
                // Lossless: at most 0x8FF.
                let msr32 = msr as u32;
                if msr32 == SVR {
                    // A software disable masks the LVT timer: an expiry
                    // already due must reach IRR first (it stays there).
                    self.poll_timer_now(env);
                }
                match self.apic.mode() {
                    ApicMode::XApic => {
                        let value32 =
                            u32::try_from(value).map_err(|_| ResultCode::InvalidParameter)?;
                        self.apic
                            .write_mmio(mmio_offset(msr32), value32, time_for(env, msr32))
                    }
                    ApicMode::X2Apic | ApicMode::Disabled => {
                        self.apic.write_msr(msr32, value, time_for(env, msr32))
                    }
                }
            }
            _ => return Err(ResultCode::InvalidAddress),
        };
        // By reference: the effect (an `Ipi` for ICR writes) is read in
        // place, field by field, rather than copied out of the result.
        match &result {
            Ok(effect) => self.apply(env, effect),
            Err(error) => Err(register_error(*error)),
        }
    }
}

/// Log rate limit for events a guest or host can repeat at will: the 1st,
/// 2nd, 4th, 8th, ... occurrence (the counters keep the exact number).
fn rare(count: u64) -> bool {
    count.is_power_of_two()
}

/// Whether the host posted something `Descriptor::consume` takes (one
/// load of the status word; reserved bits, which it leaves, do not count).
fn has_host_posts(descriptor: &Descriptor) -> bool {
    const POSTS: u32 = DescriptorStatus::VECTOR_MASK
        | DescriptorStatus::NMI
        | DescriptorStatus::MC
        | DescriptorStatus::LEVEL
        | DescriptorStatus::MULTIPLE
        | DescriptorStatus::VECTOR_31;
    descriptor.status.load(Ordering::Acquire) & POSTS != 0
}

/// xAPIC MMIO offset of x2APIC MSR `msr` (Intel SDM vol. 3A §11.12.1.2).
fn mmio_offset(msr: u32) -> u32 {
    (msr & 0xFF) << 4
}

/// `now` for a register access: only the LVT, initial/current count and
/// divide registers look at time, so the hot registers (EOI, ICR, TPR)
/// never pay for a clock read (on SEV-SNP a TSC read may even trap).
fn time_for<P: Platform + ?Sized>(env: &Env<'_, P>, msr: u32) -> u64 {
    match msr {
        0x82F | 0x832..=0x839 | 0x83E => env.platform.now(),
        _ => 0,
    }
}
