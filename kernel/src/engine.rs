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
//!
//! # The path of one interrupt, module by module
//! | module | concern |
//! |---|---|
//! | `run` | the entry points: `before_run`, `work_pending`, `after_exit` |
//! | `collect` | descriptor, mailbox and timer into the APIC (step 1) |
//! | `present` | EVENTINJ / V_NMI / V_IRQ and the lazy-EOI offer (steps 2-3) |
//! | `recall` | after the exit: taken, recalled, re-injected, TPR, lazy EOI |
//! | `cancel` | a run the SVSM did not make |
//! | `eoi` | the guest's EOI and the host's specific EOI |
//! | `ipi` | guest IPIs: routing, posts, kicks, retries, forwards |
//! | `fast` | the fast paths of the common cases |
//! | `timer` | the APIC timer against the platform's one-shot timer |
//! | `protocol` | SVSM protocol 3 calls and register accesses |
//! | `handback` | giving one vCPU's APIC back to the host |
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
mod collect;
mod eoi;
mod fast;
mod handback;
mod ipi;
mod present;
mod protocol;
mod recall;
mod run;
mod timer;

use altinj_apic::{ApicConfig, LocalApic};
use altinj_doorbell::DoorbellPage;
use altinj_vmsa::{EventInj, ExitKind};

use crate::caa::NoEoiByte;
use crate::counters::Counters;
use crate::fabric::{Fabric, VcpuShared};
use crate::level::HostLevel;
use crate::nmi::NmiState;
use crate::registration::Registration;

/// Consecutive VMEXIT_BUSY exits repaired before the engine reports
/// [`Fatal::BusyStorm`] (project choice: a correct SVSM clears BUSY before
/// every run, so even one repeat means another agent is setting it).
pub const MAX_BUSY_REPAIRS: u8 = 3;

/// Exception vector of #MC.
const MC_VECTOR: u8 = 18;

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
    pub fn with_no_eoi_byte<B: NoEoiByte>(self, byte: Option<&'a B>) -> Self {
        Self {
            caa_no_eoi: byte.map(|b| b as &'a dyn NoEoiByte),
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
    /// An APIC vector re-injected from EXITINTINFO: its delivery had
    /// begun, so it stays in service and in EVENTINJ until the guest takes
    /// it; recalled to IRR it would merge with a later instance (issue 9
    /// path 2).
    ReinjectedApic(u8),
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
    /// Creates the engine of vCPU `config.index` on its own CPU and makes
    /// its slot present in `fabric` (an AP created later: after the
    /// creating CPU announced it with [`VcpuShared::announce`]; IPIs posted
    /// since wait in the mailbox for the first `before_run`).
    pub fn new(config: EngineConfig, fabric: Fabric<'_>) -> Result<Self, Fatal> {
        let slot = fabric.slot(config.index).ok_or(Fatal::NoSlot)?;
        let index = u32::try_from(config.index).map_err(|_| Fatal::NoSlot)?;
        if !(1..=3).contains(&config.guest_vmpl) {
            return Err(Fatal::BadVmpl);
        }
        let apic = LocalApic::new(config.apic);
        if config.emulate {
            slot.activate(config.host_apic_id, &apic.address());
        } else if slot.present() {
            // Announced, but the vCPU came up without emulation.
            slot.withdraw();
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
}

/// Log rate limit for events a guest or host can repeat at will: the 1st,
/// 2nd, 4th, 8th, ... occurrence (the counters keep the exact number).
fn rare(count: u64) -> bool {
    count.is_power_of_two()
}
