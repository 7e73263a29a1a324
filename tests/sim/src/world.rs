//! The simulated machine: every vCPU's pages and engine, the models around
//! them, and the seeded discrete-event scheduler that drives everything.
//!
//! # Scheduler
//! Actors, each with the time of its next action: every vCPU (its guest
//! runs a batch of instructions, or its run ended and VMPL0 / the host must
//! act), every vCPU's timer (armed by the engine through
//! [`Platform::arm_timer`](altinj_kernel::Platform::arm_timer), or by the host's
//! APIC after a hand-back), every IOAPIC line, the edge device source and
//! the hostile injector. A step takes the actor with the earliest time
//! (ties: lowest index), sets the clock to it and runs it. All choices come
//! from one [`Rng`] seeded by `--seed`, and nothing depends on wall time or
//! hashing, so a seed replays exactly.

use alloc::{format, string::String, vec::Vec};
use core::sync::atomic::AtomicU8;

use altinj_apic::LocalApic;
use altinj_doorbell::DoorbellPage;
use altinj_kernel::{EngineConfig, Env, Fabric, VcpuEngine, VcpuShared, VmShared};
use altinj_vmsa::{EFER_SVME, RFLAGS_IF, SevFeatures, VIntrCtrl, VmsaAccess, VmsaPage};

use crate::guest::Guest;
use crate::ledger::Ledger;
use crate::platform::SimPlatform;
use crate::report::Stats;
use crate::rng::Rng;
use crate::scenario::Profile;
use crate::trace::Trace;

/// The guest's VMPL (spec §1: normally VMPL2).
pub const GUEST_VMPL: u8 = 2;
/// Never.
pub const NEVER: u64 = u64::MAX;
/// Ticks from a host event to the VMPL0 entry it causes.
pub const EXIT_LATENCY: u64 = 400;

/// The engine configuration of vCPU `i` (APIC ID = host APIC ID = i); the
/// fuzz harness uses it too.
pub fn engine_config(i: usize) -> EngineConfig {
    let id = u32::try_from(i).unwrap_or(u32::MAX);
    EngineConfig {
        index: i,
        host_apic_id: id,
        apic: altinj_apic::ApicConfig {
            apic_id: id,
            bsp: i == 0,
            ticks_per_bus_cycle: 1,
            directed_eoi: false,
            ..altinj_apic::ApicConfig::default()
        },
        guest_vmpl: GUEST_VMPL,
        notification_vector: altinj_kernel::platform::DEFAULT_NOTIFICATION_VECTOR,
        emulate: true,
    }
}

/// A new guest VMSA as the SVSM creates it: AlternateInjection on, vNMI.
pub fn fresh_vmsa(profile: &Profile) -> VmsaPage {
    let mut page = VmsaPage::new();
    let rflags = if profile.boot_xapic { 2 } else { RFLAGS_IF | 2 };
    page.set_rflags(rflags);
    page.set_efer(EFER_SVME);
    page.set_sev_features(SevFeatures::from_bits_retain(1 << 4));
    // vNMI is on (AMD APM vol. 2 §15.21.10): hardware tracks the
    // guest's NMI masking in V_NMI_MASK.
    page.set_vintr_ctrl(VIntrCtrl::new().with_v_nmi_enable(true).with_vgif(true));
    page
}

pub use crate::config::{Config, Sabotage};

/// The pages and engines the real SVSM would own.
pub struct Machine {
    /// GHCB calls, time, timers.
    pub platform: SimPlatform,
    /// Every vCPU's shared slot.
    pub shared: Vec<VcpuShared>,
    /// The VM-wide state (registration count).
    pub vm: VmShared,
    /// One #HV doorbell page per vCPU.
    pub doorbells: Vec<DoorbellPage>,
    /// One guest VMSA per vCPU.
    pub vmsas: Vec<VmsaPage>,
    /// Calling-area byte 2 (`no_eoi_required`) per vCPU.
    pub caa: Vec<AtomicU8>,
    /// The engines (`None` until the vCPU's VMSA is created).
    pub engines: Vec<Option<VcpuEngine>>,
}

impl Machine {
    /// Calls `f` with vCPU `i`'s engine, its environment and its VMSA
    /// behind the BUSY auditor; returns what `f` returned and the writes
    /// the engine made while BUSY was clear (count, first field).
    pub fn with_engine<R>(
        &mut self,
        i: usize,
        f: impl FnOnce(
            &mut VcpuEngine,
            &Env<'_, SimPlatform>,
            &mut altinj_kernel::busy_audit::BusyAudit<'_, VmsaPage>,
        ) -> R,
    ) -> Option<(R, u32, Option<&'static str>)> {
        let Machine {
            platform,
            shared,
            vm,
            doorbells,
            vmsas,
            caa,
            engines,
        } = self;
        platform.current.set(i);
        let engine = engines.get_mut(i)?.as_mut()?;
        let env = Env::new(
            &*platform,
            Fabric::new(shared.as_slice(), vm),
            doorbells.get(i)?,
        )
        .with_no_eoi_byte(caa.get(i));
        let mut vmsa = altinj_kernel::busy_audit::BusyAudit::new(vmsas.get_mut(i)?);
        let r = f(engine, &env, &mut vmsa);
        Some((r, vmsa.writes_while_runnable(), vmsa.first_field()))
    }
}

/// Where a vCPU's simulated execution stands.
#[derive(Clone, Debug)]
pub struct Vcpu {
    /// The engine exists.
    pub created: bool,
    /// The engine reported a fatal state: the SVSM stopped this guest.
    pub stopped: bool,
    /// When the VMSA is created (APs in `boot`).
    pub create_at: u64,
    /// The next action of this actor.
    pub next_at: u64,
    /// The guest halted (waits for an event).
    pub halted: bool,
    /// The run ended: VMPL0 (or the host) acts at `next_at`.
    pub exit_due: bool,
    /// `before_run` ran and `after_exit` has not yet.
    pub run_in_flight: bool,
    /// The host injected #HV into VMPL0 and it is not handled yet.
    pub hv_signalled: bool,
    /// The APIC was handed back: the host emulates it.
    pub handed_back: bool,
    /// The host's APIC after the hand-back.
    pub host_apic: Option<LocalApic>,
    /// Host NMI pending for a handed-back vCPU.
    pub host_nmi: bool,
    /// The host's injector put this vector in EVENTINJ / V_IRQ.
    pub kvm_eventinj: Option<u8>,
    /// Vector the guest took from V_IRQ in the current run (the emulated
    /// IRR still shows it until the exit is processed).
    pub virq_taken: Option<u8>,
    /// INTR vector whose delivery an exit cut (EXITINTINFO): the CPU had
    /// acknowledged it, so it is in service until its handler runs, also
    /// while re-injected through EVENTINJ.
    pub cut_in_service: Option<u8>,
    /// #MC the host got back at the hand-back (descriptor status bit 9)
    /// and has not yet injected.
    pub host_mc: bool,
    /// Vector the host's injector queued in V_IRQ.
    pub kvm_virq: Option<u8>,
    /// The host's injector set V_NMI.
    pub kvm_vnmi: bool,
    /// The host found an interrupt it cannot inject because the VMSA kept
    /// AlternateInjection after the hand-back (reported once).
    pub ai_stuck_reported: bool,
    /// Consecutive VMRUNs the hostile host made fail with BUSY.
    pub busy_streak: u8,
    /// Kicks delivered since the engine last drained the mailbox.
    pub kicks_in_batch: u32,
    /// When the SVSM creates this handed-back vCPU's engine again
    /// (`recreate.rs`; [`NEVER`]: not planned).
    pub recreate_at: u64,
    /// A post to this vCPU split across its mailbox's reopen, as (sender,
    /// vector): its second half runs once the restarted guest has booted.
    pub split_post: Option<(usize, u8)>,
    /// The guest model.
    pub guest: Guest,
}

/// One IOAPIC line: a level-triggered device wired to one vCPU.
#[derive(Clone, Debug)]
pub struct Line {
    /// Target vCPU.
    pub target: usize,
    /// Vector (level-triggered, host-presented).
    pub vector: u8,
    /// The device asserts the line.
    pub asserted: bool,
    /// Posted (or pending in the host APIC) and not yet EOI'd.
    pub outstanding: bool,
    /// When the outstanding presentation was posted.
    pub posted_at: u64,
    /// Next device action.
    pub next_at: u64,
    /// Level presentations posted.
    pub posts: u64,
    /// EOIs received.
    pub eois: u64,
}

/// The simulator.
pub struct Sim {
    /// Setup.
    pub config: Config,
    /// The scenario's knobs.
    pub profile: Profile,
    /// The one random generator.
    pub rng: Rng,
    /// Simulated time (ticks, 1 ns each).
    pub now: u64,
    /// Steps taken.
    pub step: u64,
    /// The SVSM-owned state and the engines.
    pub m: Machine,
    /// Per-vCPU models.
    pub vcpus: Vec<Vcpu>,
    /// Per-vCPU ledgers.
    pub ledgers: Vec<Ledger>,
    /// IOAPIC lines.
    pub lines: Vec<Line>,
    /// Next edge device interrupt.
    pub device_next: u64,
    /// Next hostile host action.
    pub hostile_next: u64,
    /// The host keeps NoFurtherSignal set (hostile phase).
    pub nfs_stuck: bool,
    /// Sources and hostile behaviour are off (drain phase).
    pub draining: bool,
    /// When the drain phase started.
    pub drain_started: u64,
    /// Figures and violations.
    pub stats: Stats,
    /// The timeline, when asked for.
    pub trace: Option<Trace>,
    /// The vector of the IPI call VMPL0 is answering and, per vCPU, whether
    /// it was pending before the call (`credit_ipi` tells the ledger).
    pub ipi_pending_before: (u8, Vec<crate::ledger::Pending>),
    /// Reused buffer for the engine's GHCB calls.
    pub effect_buf: Vec<crate::platform::Effect>,
    /// Guest IPIs the engine forwarded to the host since the last SVSM
    /// call completed, as (target, vector, NMI): each IPI the guest sent to
    /// a handed-back vCPU must be among them (`credit_ipi`).
    pub forwarded: Vec<(usize, u8, bool)>,
    /// The VM-wide APIC registration count the guests expect (spec §5:
    /// one per VM, starting at 1).
    pub vm_registrations: u32,
}

impl Sim {
    /// Builds the machine for `config`.
    pub fn new(config: Config) -> Self {
        let n = config.vcpus.clamp(1, 512);
        let mut profile = config.scenario.profile();
        if config.no_forged_intr {
            profile.forged_low_intr = false;
        }
        let mut rng = Rng::new(config.seed);
        let vmsas = (0..n).map(|_| fresh_vmsa(&profile)).collect();
        let m = Machine {
            platform: SimPlatform::new(n),
            shared: (0..n).map(|_| VcpuShared::new()).collect(),
            vm: VmShared::new(),
            doorbells: (0..n).map(|_| DoorbellPage::new()).collect(),
            vmsas,
            caa: (0..n).map(|_| AtomicU8::new(0)).collect(),
            engines: (0..n).map(|_| None).collect(),
        };
        let vcpus = (0..n)
            .map(|i| {
                let create_at = if profile.boot_xapic && i != 0 {
                    profile
                        .ap_delay
                        .saturating_mul(i as u64)
                        .saturating_add(rng.below(profile.ap_delay.max(1)))
                } else {
                    rng.below(1000)
                };
                let hostile_last = profile.hostile_guest && n >= 2 && i.checked_add(1) == Some(n);
                let dereg = if profile.deregister || hostile_last {
                    Some((config.steps / 3).saturating_add(rng.below((config.steps / 3).max(1))))
                } else {
                    None
                };
                Vcpu {
                    created: false,
                    stopped: false,
                    create_at,
                    next_at: create_at,
                    halted: false,
                    exit_due: false,
                    run_in_flight: false,
                    hv_signalled: false,
                    handed_back: false,
                    host_apic: None,
                    host_nmi: false,
                    kvm_eventinj: None,
                    kvm_virq: None,
                    kvm_vnmi: false,
                    virq_taken: None,
                    cut_in_service: None,
                    host_mc: false,
                    ai_stuck_reported: false,
                    busy_streak: 0,
                    kicks_in_batch: 0,
                    recreate_at: NEVER,
                    split_post: None,
                    guest: Guest::new(i, &profile, dereg),
                }
            })
            .collect();
        let mut lines = Vec::new();
        if profile.level_lines {
            for (k, target) in (0..n).step_by(2).enumerate() {
                lines.push(Line {
                    target,
                    vector: if k % 2 == 0 { 0x61 } else { 0x92 },
                    asserted: false,
                    outstanding: false,
                    posted_at: 0,
                    next_at: 5_000_000u64.saturating_add(rng.below(1_000_000)),
                    posts: 0,
                    eois: 0,
                });
            }
        }
        let device_next = match profile.edge_device_gap {
            Some(gap) => 5_000_000u64.saturating_add(rng.below(gap)),
            None => NEVER,
        };
        let hostile_next = if profile.hostile_hv {
            5_000_000u64.saturating_add(rng.below(100_000))
        } else {
            NEVER
        };
        let trace = config.trace.then(|| Trace::new(n));
        Self {
            config: Config { vcpus: n, ..config },
            profile,
            rng,
            now: 0,
            step: 0,
            m,
            vcpus,
            ledgers: (0..n).map(|_| Ledger::new()).collect(),
            lines,
            device_next,
            hostile_next,
            nfs_stuck: false,
            draining: false,
            drain_started: 0,
            stats: Stats::default(),
            trace,
            ipi_pending_before: (0, Vec::new()),
            effect_buf: Vec::with_capacity(256),
            forwarded: Vec::new(),
            vm_registrations: 1,
        }
    }

    /// Number of vCPUs.
    pub fn n(&self) -> usize {
        self.vcpus.len()
    }

    /// Calls vCPU `i`'s engine (`what` names the call) through
    /// [`Machine::with_engine`]; a VMSA write while BUSY was clear is a
    /// violation (spec §2).
    pub fn engine_call<R>(
        &mut self,
        i: usize,
        what: &str,
        f: impl FnOnce(
            &mut VcpuEngine,
            &Env<'_, SimPlatform>,
            &mut altinj_kernel::busy_audit::BusyAudit<'_, VmsaPage>,
        ) -> R,
    ) -> Option<R> {
        let (r, writes, first) = self.m.with_engine(i, f)?;
        if writes != 0 {
            self.stats.busy_audit_writes = self
                .stats
                .busy_audit_writes
                .saturating_add(u64::from(writes));
            self.violation(
                i,
                format!(
                    "BUSY audit: {what} wrote the VMSA {writes} times while BUSY was clear (first: {})",
                    first.unwrap_or("?")
                ),
            );
        }
        Some(r)
    }

    /// Records an invariant violation.
    pub fn violation(&mut self, vcpu: usize, what: impl Into<String>) {
        let what = what.into();
        self.stats.violations = self.stats.violations.saturating_add(1);
        let kind = self
            .stats
            .violation_kinds
            .entry(normalize(&what))
            .or_insert(0);
        *kind = kind.saturating_add(1);
        // The first 50, at most 10 of one kind (one kind must not hide the
        // others).
        if self.stats.violation_log.len() < 50 && *kind <= 10 {
            self.stats.violation_log.push(format!(
                "step {} t={} vCPU {}: {}",
                self.step, self.now, vcpu, what
            ));
        }
        if let Some(trace) = self.trace.as_mut() {
            trace.instant(vcpu, self.now, "VIOLATION", &what);
        }
    }

    /// Runs one scheduler step. Returns false when nothing can happen.
    pub fn step(&mut self) -> bool {
        #[derive(Clone, Copy)]
        enum Actor {
            Vcpu(usize),
            Timer(usize),
            Line(usize),
            Device,
            Hostile,
        }
        let mut best = (NEVER, Actor::Device);
        for (i, v) in self.vcpus.iter().enumerate() {
            let next = v.next_at.min(v.recreate_at);
            if next < best.0 {
                best = (next, Actor::Vcpu(i));
            }
            let timer = if v.handed_back {
                v.host_apic
                    .as_ref()
                    .and_then(LocalApic::next_timer_deadline)
            } else {
                self.m
                    .platform
                    .timers
                    .get(i)
                    .and_then(core::cell::Cell::get)
            };
            if let Some(t) = timer
                && t < best.0
            {
                best = (t, Actor::Timer(i));
            }
        }
        for (k, line) in self.lines.iter().enumerate() {
            if line.next_at < best.0 {
                best = (line.next_at, Actor::Line(k));
            }
        }
        if self.device_next < best.0 {
            best = (self.device_next, Actor::Device);
        }
        if self.hostile_next < best.0 {
            best = (self.hostile_next, Actor::Hostile);
        }
        if best.0 == NEVER {
            return false;
        }
        self.now = self.now.max(best.0);
        self.m.platform.now.set(self.now);
        self.step = self.step.saturating_add(1);
        match best.1 {
            Actor::Vcpu(i) => self.vcpu_step(i),
            Actor::Timer(i) => self.timer_fired(i),
            Actor::Line(k) => self.line_step(k),
            Actor::Device => self.device_step(),
            Actor::Hostile => self.hostile_step(),
        }
        true
    }

    /// One action of vCPU `i`.
    fn vcpu_step(&mut self, i: usize) {
        let Some(v) = self.vcpus.get(i) else { return };
        if !v.created {
            self.create_vcpu(i);
            return;
        }
        if v.handed_back && v.recreate_at <= self.now {
            self.recreate_vcpu(i);
            return;
        }
        if v.exit_due {
            if v.handed_back {
                self.host_entry(i);
            } else {
                self.vmpl0_entry(i);
            }
            return;
        }
        if v.halted {
            if let Some(v) = self.vcpus.get_mut(i) {
                v.next_at = NEVER;
            }
            return;
        }
        self.guest_batch(i);
    }

    /// Creates vCPU `i`'s engine (its VMSA is made) and starts it.
    fn create_vcpu(&mut self, i: usize) {
        let config = engine_config(i);
        let created =
            match VcpuEngine::new(config, Fabric::new(self.m.shared.as_slice(), &self.m.vm)) {
                Ok(engine) => {
                    if let Some(slot) = self.m.engines.get_mut(i) {
                        *slot = Some(engine);
                    }
                    true
                }
                Err(fatal) => {
                    self.violation(i, format!("engine creation failed: {fatal:?}"));
                    false
                }
            };
        let now = self.now;
        if created {
            self.stats.vcpus_created = self.stats.vcpus_created.saturating_add(1);
        }
        if let Some(v) = self.vcpus.get_mut(i) {
            v.created = created;
            // The first entry: VMPL0 prepares the first run.
            v.exit_due = created;
            v.next_at = if created { now } else { NEVER };
        }
        if let Some(trace) = self.trace.as_mut() {
            trace.instant(i, now, "vCPU created", "");
        }
    }

    /// The host wants vCPU `i`'s VMPL0 (or, after a hand-back, itself) to
    /// act: #HV when NoFurtherSignal allows, and the guest's run ends.
    pub fn host_notify(&mut self, i: usize) {
        let Some(v) = self.vcpus.get(i) else { return };
        if !v.created {
            return;
        }
        if !v.handed_back {
            let signal = if self.nfs_stuck {
                false
            } else {
                self.m
                    .doorbells
                    .get(i)
                    .is_some_and(|d| d.host().raise_no_further_signal())
            };
            if signal {
                self.stats.hv_signals = self.stats.hv_signals.saturating_add(1);
            } else {
                self.stats.hv_suppressed = self.stats.hv_suppressed.saturating_add(1);
            }
            if let Some(v) = self.vcpus.get_mut(i) {
                v.hv_signalled |= signal;
            }
        }
        self.wake(i);
    }

    /// Ends vCPU `i`'s run soon (an interrupt for it arrived).
    pub fn wake(&mut self, i: usize) {
        let now = self.now;
        if let Some(v) = self.vcpus.get_mut(i) {
            if !v.created {
                return;
            }
            if !v.exit_due {
                v.exit_due = true;
                if !v.halted {
                    // The run is cut by the host interrupt (exit code INTR).
                    if let Some(vmsa) = self.m.vmsas.get_mut(i) {
                        vmsa.set_exit_code(altinj_vmsa::ExitCode(0x60));
                    }
                }
            }
            v.halted = false;
            v.next_at = v.next_at.min(now.saturating_add(EXIT_LATENCY));
        }
    }

    /// Runs the main phase, then drains: sources and hostility stop and
    /// every vCPU runs until nothing accepted is owed.
    pub fn run(&mut self, mut progress: impl FnMut(u64)) {
        let steps = self.config.steps;
        let mut done = 0u64;
        while done < steps {
            if !self.step() {
                break;
            }
            done = done.saturating_add(1);
            if done.is_multiple_of(65_536) {
                progress(done);
            }
        }
        progress(done);
        self.stats.main_steps = done;
        self.drain();
    }

    /// The drain phase (see [`Sim::run`]).
    fn drain(&mut self) {
        self.draining = true;
        self.nfs_stuck = false;
        self.drain_started = self.now;
        self.device_next = NEVER;
        self.hostile_next = NEVER;
        // No forced wake-ups: only the guests' own timers end their idle
        // periods, so an interrupt left pending without a way to reach the
        // guest shows as lost (or as latency) instead of being rescued.
        let n = self.n();
        let budget = 4000u64.saturating_mul(n as u64).saturating_add(20_000);
        let mut taken = 0u64;
        // At least 20 ms of simulated time, then until nothing is owed.
        let min_end = self.now.saturating_add(20_000_000);
        while taken < budget {
            if !self.step() {
                break;
            }
            taken = taken.saturating_add(1);
            if taken.is_multiple_of(2048) && self.now >= min_end && self.settled() {
                break;
            }
        }
        self.stats.drain_steps = taken;
        self.final_checks();
    }

    /// Whether everything accepted before the drain has been delivered.
    fn settled(&self) -> bool {
        let cutoff = self.drain_started;
        self.ledgers.iter().all(|l| l.lost(cutoff).is_empty())
            && self
                .lines
                .iter()
                .all(|l| !l.outstanding || l.posted_at >= cutoff)
    }

    /// End-of-run checks: nothing lost, every level vector EOI'd, counters.
    fn final_checks(&mut self) {
        let cutoff = self.drain_started;
        let mut lost = self.lost_instances(cutoff);
        // NMI and #MC keep the older rule (ledger.rs).
        for (i, ledger) in self.ledgers.iter().enumerate() {
            for (vector, at) in ledger.lost(cutoff) {
                if vector == 2 || vector == 18 {
                    lost.push((i, vector, at));
                }
            }
        }
        for (i, vector, at) in lost {
            let what = match vector {
                2 => String::from("NMI"),
                18 => String::from("#MC"),
                v => format!("vector {v:#x}"),
            };
            self.violation(
                i,
                format!("accepted {what} (requested at t={at}) never delivered"),
            );
        }
        let mut unacked = Vec::new();
        for line in &self.lines {
            if line.outstanding && line.posted_at < cutoff {
                unacked.push((line.target, line.vector));
            }
        }
        for (target, vector) in unacked {
            self.violation(
                target,
                format!("level vector {vector:#x} never EOI'd to the host"),
            );
        }
        for (i, engine) in self.m.engines.iter().enumerate() {
            if let Some(engine) = engine {
                self.stats.absorb_engine(i, &engine.counters());
            }
        }
        for (i, ledger) in self.ledgers.iter().enumerate() {
            self.stats.requested = self.stats.requested.saturating_add(ledger.requested);
            self.stats.delivered = self.stats.delivered.saturating_add(ledger.delivered);
            self.stats.coalesced = self.stats.coalesced.saturating_add(ledger.coalesced);
            if ledger.max_latency > self.stats.max_latency {
                let (vector, at) = ledger.max_latency_of;
                self.stats.max_latency_of = (i, vector, at);
            }
            self.stats.max_latency = self.stats.max_latency.max(ledger.max_latency);
            self.stats.latency_sum = self.stats.latency_sum.saturating_add(ledger.latency_sum);
            self.stats.latency_count = self
                .stats
                .latency_count
                .saturating_add(ledger.latency_count);
        }
        for line in &self.lines {
            self.stats.level_posts = self.stats.level_posts.saturating_add(line.posts);
            self.stats.level_eois = self.stats.level_eois.saturating_add(line.eois);
        }
        self.stats.sim_time = self.now;
    }
}

/// A violation message with its numbers blanked, to count kinds.
fn normalize(what: &str) -> String {
    let mut out = String::with_capacity(what.len());
    let mut chars = what.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '0' && chars.peek() == Some(&'x') {
            chars.next();
            while chars.peek().is_some_and(char::is_ascii_hexdigit) {
                chars.next();
            }
            out.push_str("0x_");
        } else if c.is_ascii_digit() {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}
