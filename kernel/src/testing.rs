//! A mock platform, a model of the hardware's side of a guest run, and a
//! fixture of N vCPUs with in-memory VMSA and doorbell pages, for the unit
//! tests and for the simulator.
//!
//! Everything is `no_std` and fixed-size: recorded calls live in atomics
//! (the last [`LOG_LEN`] of each kind), so a [`MockPlatform`] can be shared
//! by several vCPUs, also across threads.

use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};

use altinj_apic::ApicConfig;
use altinj_doorbell::DoorbellPage;
use altinj_vmsa::{EventInj, EventType, ExitCode, RFLAGS_IF, VmsaAccess, VmsaPage};

use crate::busy_audit::BusyAudit;
use crate::engine::{EngineConfig, Env, ExitInfo, Fatal, VcpuEngine};
use crate::fabric::{Fabric, VcpuShared, VmShared};
use crate::platform::{
    DEFAULT_NOTIFICATION_VECTOR, DisableAiRequest, DoorbellRequest, GuestTimer, NoTimer, Platform,
    PlatformError,
};
use crate::protocol::{ApicCall, CallResult};

/// The doorbell GPA the mock hypervisor prefers.
pub const PREFERRED_DOORBELL_GPA: u64 = 0x7F_F000;

/// How many calls of each kind the mock remembers.
pub const LOG_LEN: usize = 16;

/// A fixed ring of recorded u64 values plus a total count.
#[derive(Debug)]
pub struct CallLog {
    count: AtomicU32,
    entries: [AtomicU64; LOG_LEN],
}

impl Default for CallLog {
    fn default() -> Self {
        Self::new()
    }
}

impl CallLog {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            count: AtomicU32::new(0),
            entries: [const { AtomicU64::new(0) }; LOG_LEN],
        }
    }

    fn record(&self, value: u64) {
        let n = self.count.fetch_add(1, Ordering::AcqRel);
        if let Some(slot) = self.entries.get(n as usize % LOG_LEN) {
            slot.store(value, Ordering::Release);
        }
    }

    /// The entries recorded (the last `LOG_LEN`, in ring order).
    pub fn entries(&self) -> [u64; LOG_LEN] {
        core::array::from_fn(|i| self.entries.get(i).map_or(0, |e| e.load(Ordering::Acquire)))
    }

    /// Calls recorded so far.
    pub fn count(&self) -> u32 {
        self.count.load(Ordering::Acquire)
    }

    /// The `i`-th call (0-based) if it is still in the ring.
    pub fn get(&self, i: u32) -> Option<u64> {
        let n = self.count();
        if i >= n || n.saturating_sub(i) > LOG_LEN as u32 {
            return None;
        }
        self.entries
            .get(i as usize % LOG_LEN)
            .map(|e| e.load(Ordering::Acquire))
    }

    /// The most recent call.
    pub fn last(&self) -> Option<u64> {
        self.count().checked_sub(1).and_then(|i| self.get(i))
    }

    /// Whether `value` is among the remembered calls.
    pub fn contains(&self, value: u64) -> bool {
        (0..self.count()).any(|i| self.get(i) == Some(value))
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.count.store(0, Ordering::Release);
    }
}

/// A platform that records every GHCB call (see the module doc).
#[derive(Debug)]
pub struct MockPlatform {
    /// #HV IPI ICRs.
    pub hv_ipis: CallLog,
    /// Specific EOIs, as `VMPL << 16 | vector`.
    pub specific_eois: CallLog,
    /// Disable-AI requests, as EXITINFO1.
    pub disable_ai: CallLog,
    /// Notification vectors configured.
    pub notification_vectors: CallLog,
    /// Doorbell calls, as EXITINFO1 (sub-function).
    pub doorbell_calls: CallLog,
    /// Timer arms (`u64::MAX` = disarm).
    pub timer_arms: CallLog,
    /// The registered doorbell GPA (0: none).
    pub doorbell_gpa: AtomicU64,
    /// Current time.
    pub now: AtomicU64,
    /// Whether the platform has a timer.
    pub timer: AtomicBool,
    /// Make #HV IPI calls fail.
    pub fail_hv_ipi: AtomicBool,
    /// Make specific EOI calls fail.
    pub fail_specific_eoi: AtomicBool,
    /// Make disable-AI calls fail.
    pub fail_disable_ai: AtomicBool,
    /// A host without the doorbell's get-preferred sub-function.
    pub no_preferred_doorbell: AtomicBool,
    /// Guest timers handed back, as (lvt, divide, initial, current, tsc
    /// deadline, deadline or `u64::MAX`), the last one.
    pub guest_timers: CallLog,
    last_guest_timer: [AtomicU64; 6],
}

impl Default for MockPlatform {
    fn default() -> Self {
        Self::new()
    }
}

impl MockPlatform {
    /// A platform with a timer, time 0, every call succeeding.
    pub const fn new() -> Self {
        Self {
            hv_ipis: CallLog::new(),
            specific_eois: CallLog::new(),
            disable_ai: CallLog::new(),
            notification_vectors: CallLog::new(),
            doorbell_calls: CallLog::new(),
            timer_arms: CallLog::new(),
            doorbell_gpa: AtomicU64::new(0),
            now: AtomicU64::new(0),
            timer: AtomicBool::new(true),
            fail_hv_ipi: AtomicBool::new(false),
            fail_specific_eoi: AtomicBool::new(false),
            fail_disable_ai: AtomicBool::new(false),
            no_preferred_doorbell: AtomicBool::new(false),
            guest_timers: CallLog::new(),
            last_guest_timer: [const { AtomicU64::new(0) }; 6],
        }
    }

    /// Sets the time.
    pub fn set_now(&self, now: u64) {
        self.now.store(now, Ordering::Release);
    }

    /// The last guest timer handed back (`Platform::hand_back_timer`).
    pub fn guest_timer(&self) -> Option<GuestTimer> {
        self.guest_timers.count().checked_sub(1)?;
        let [lvt, divide, initial, current, tsc, deadline] = self
            .last_guest_timer
            .each_ref()
            .map(|w| w.load(Ordering::Acquire));
        let low = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Some(GuestTimer {
            lvt_timer: low(lvt),
            divide_config: low(divide),
            initial_count: low(initial),
            current_count: low(current),
            tsc_deadline: tsc,
            deadline: (deadline != u64::MAX).then_some(deadline),
        })
    }

    /// The deadline the timer is armed for (`None`: never armed or disarmed).
    pub fn armed_deadline(&self) -> Option<u64> {
        self.timer_arms.last().filter(|d| *d != u64::MAX)
    }
}

impl Platform for MockPlatform {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        if self.fail_hv_ipi.load(Ordering::Acquire) {
            return Err(PlatformError::ghcb(1, 0));
        }
        self.hv_ipis.record(icr);
        Ok(())
    }

    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        if self.fail_specific_eoi.load(Ordering::Acquire) {
            return Err(PlatformError::ghcb(1, 0));
        }
        self.specific_eois
            .record(crate::platform::specific_eoi_info(vmpl, vector));
        Ok(())
    }

    fn disable_alternate_injection(&self, request: DisableAiRequest) -> Result<(), PlatformError> {
        if self.fail_disable_ai.load(Ordering::Acquire) {
            return Err(PlatformError::ghcb(1, 0));
        }
        self.disable_ai.record(request.exit_info1());
        Ok(())
    }

    fn configure_notification_vector(&self, vector: u8) -> Result<(), PlatformError> {
        self.notification_vectors.record(u64::from(vector));
        Ok(())
    }

    fn doorbell_page(&self, request: DoorbellRequest) -> Result<u64, PlatformError> {
        let (info1, _) = request.exit_info();
        self.doorbell_calls.record(info1);
        if request == DoorbellRequest::GetPreferred
            && self.no_preferred_doorbell.load(Ordering::Acquire)
        {
            return Err(PlatformError::ghcb(1, 0));
        }
        Ok(match request {
            DoorbellRequest::GetPreferred => PREFERRED_DOORBELL_GPA,
            DoorbellRequest::Set(gpa) => {
                self.doorbell_gpa.store(gpa, Ordering::Release);
                gpa
            }
            DoorbellRequest::Query => self.doorbell_gpa.load(Ordering::Acquire),
            DoorbellRequest::Clear => {
                self.doorbell_gpa.store(0, Ordering::Release);
                0
            }
        })
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    fn has_timer(&self) -> bool {
        self.timer.load(Ordering::Acquire)
    }

    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer> {
        if !self.has_timer() {
            return Err(NoTimer);
        }
        self.timer_arms.record(deadline.unwrap_or(u64::MAX));
        Ok(())
    }

    fn hand_back_timer(&self, vmpl: u8, timer: &GuestTimer) -> Result<(), PlatformError> {
        let values = [
            u64::from(timer.lvt_timer),
            u64::from(timer.divide_config),
            u64::from(timer.initial_count),
            u64::from(timer.current_count),
            timer.tsc_deadline,
            timer.deadline.unwrap_or(u64::MAX),
        ];
        for (slot, value) in self.last_guest_timer.iter().zip(values) {
            slot.store(value, Ordering::Release);
        }
        self.guest_timers.record(u64::from(vmpl));
        Ok(())
    }
}

/// What the modelled guest does during one run ([`hw_run`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GuestRun {
    /// The exit code the run ends with.
    pub exit: ExitCode,
    /// The exit happens while EVENTINJ is being delivered: the event lands
    /// in EXITINTINFO instead of the guest, and the exit is the nested page
    /// fault that cut the delivery (`ExitCode::NPF` replaces `exit`: an
    /// instruction intercept cannot interrupt a delivery).
    pub interrupt_delivery: bool,
    /// The guest opens its window for a queued V_IRQ / V_NMI during the run.
    pub open_window: bool,
    /// The guest returns from an NMI handler (IRET) at the start of the
    /// run, which clears V_NMI_MASK.
    pub nmi_iret: bool,
}

impl GuestRun {
    /// A run that takes whatever is offered and exits with VMGEXIT.
    pub const NORMAL: Self = Self {
        exit: ExitCode::VMGEXIT,
        interrupt_delivery: false,
        open_window: true,
        nmi_iret: true,
    };
}

/// What [`hw_run`] delivered.
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug)]
pub struct HwDelivery {
    /// The VMRUN did not enter the guest (BUSY set).
    pub vmrun_failed: bool,
    /// The event taken from EVENTINJ.
    pub event: Option<EventInj>,
    /// The vector taken from V_IRQ.
    pub virq: Option<u8>,
    /// A V_NMI was taken.
    pub v_nmi: bool,
}

/// Models what the CPU does with the VMSA's injection fields across one
/// VMRUN with Alternate Injection (AMD APM vol. 2 §15.20, §15.21; spec §2):
/// BUSY set -> VMEXIT_BUSY with nothing consumed; otherwise an IRET from
/// an NMI handler clears V_NMI_MASK (`nmi_iret`), EVENTINJ is
/// delivered (or, when `interrupt_delivery`, moved to EXITINTINFO), a V_NMI
/// is taken when enabled and unmasked (setting V_NMI_MASK), a V_IRQ is
/// taken when VGIF, RFLAGS.IF and its priority above V_TPR allow (clearing
/// V_IRQ), and the exit code is written.
pub fn hw_run<V: VmsaAccess + ?Sized>(vmsa: &mut V, run: GuestRun) -> HwDelivery {
    let mut out = HwDelivery::default();
    if vmsa.vintr_ctrl().busy() {
        vmsa.set_exit_code(ExitCode::BUSY);
        out.vmrun_failed = true;
        return out;
    }
    if run.nmi_iret {
        let ctrl = vmsa.vintr_ctrl();
        vmsa.set_vintr_ctrl(ctrl.with_v_nmi_mask(false));
    }
    let ev = vmsa.event_inj();
    let mut exit = run.exit;
    if ev.valid() {
        vmsa.set_event_inj(EventInj::new());
        if run.interrupt_delivery {
            vmsa.set_exit_int_info(ev);
            exit = ExitCode::NPF;
        } else {
            out.event = Some(ev);
        }
    }
    let mut ctrl = vmsa.vintr_ctrl();
    if run.open_window && ctrl.v_nmi_enable() && ctrl.v_nmi() && !ctrl.v_nmi_mask() {
        ctrl = ctrl.with_v_nmi(false).with_v_nmi_mask(true);
        out.v_nmi = true;
    }
    let if_set = vmsa.rflags() & RFLAGS_IF != 0;
    if run.open_window
        && ctrl.v_irq()
        && ctrl.vgif()
        && if_set
        && (ctrl.v_ign_tpr() || ctrl.v_intr_prio() > ctrl.v_tpr() & 0xF)
    {
        ctrl = ctrl.with_v_irq(false);
        out.virq = Some(ctrl.v_intr_vector());
    }
    // Hardware does not touch V_INTR_VECTOR on exit; the interrupt shadow
    // ends with the run.
    vmsa.set_vintr_ctrl(ctrl.with_int_shadow(false));
    vmsa.set_exit_code(exit);
    out
}

/// Whether `event` is an external interrupt with `vector`.
pub fn is_intr(event: Option<EventInj>, vector: u8) -> bool {
    event.is_some_and(|e| e.event_type() == EventType::Intr && e.vector() == vector)
}

/// Whether every [`Fixture`] engine call panics on a VMSA write made while
/// BUSY was clear (spec §2), instead of only counting it in
/// [`Fixture::busy_writes`]: on, so every fixture test is a BUSY audit
/// (issue 9 path 6; the sabotage tests turn it off for one fixture).
pub const STRICT_BUSY_AUDIT: bool = true;

/// N vCPUs with their pages, a shared mock platform and calling areas.
///
/// `before_run`, `after_exit` and `call` go through [`BusyAudit`]: writes
/// the engine makes while BUSY is clear are counted per vCPU.
pub struct Fixture<const N: usize> {
    /// The platform every vCPU uses.
    pub platform: MockPlatform,
    /// The shared slots.
    pub shared: [VcpuShared; N],
    /// The VM-wide state (registration count).
    pub vm: VmShared,
    /// One doorbell page per vCPU.
    pub doorbells: [DoorbellPage; N],
    /// One guest VMSA per vCPU.
    pub vmsas: [VmsaPage; N],
    /// Calling-area byte 2 per vCPU.
    pub caa: [AtomicU8; N],
    /// The engines (`None` until created).
    pub engines: [Option<VcpuEngine>; N],
    /// Per vCPU: engine writes to its VMSA while BUSY was clear.
    pub busy_writes: [u32; N],
    /// The field of the first such write.
    pub busy_first: Option<&'static str>,
    /// Panic on such a write (starts as [`STRICT_BUSY_AUDIT`]).
    pub strict_busy: bool,
}

impl<const N: usize> Default for Fixture<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// The guest VMPL the fixture uses.
pub const GUEST_VMPL: u8 = 2;

impl<const N: usize> Fixture<N> {
    /// No engine yet; every VMSA has RFLAGS.IF set.
    pub fn new() -> Self {
        let vmsas = core::array::from_fn(|_| {
            let mut page = VmsaPage::new();
            page.set_rflags(RFLAGS_IF | 2);
            page
        });
        Self {
            platform: MockPlatform::new(),
            shared: [const { VcpuShared::new() }; N],
            vm: VmShared::new(),
            doorbells: [const { DoorbellPage::new() }; N],
            vmsas,
            caa: [const { AtomicU8::new(0) }; N],
            engines: [const { None }; N],
            busy_writes: [0; N],
            busy_first: None,
            strict_busy: STRICT_BUSY_AUDIT,
        }
    }

    /// Records what an audited engine call wrote while BUSY was clear.
    fn audit(&mut self, i: usize, writes: u32, first: Option<&'static str>) {
        if writes == 0 {
            return;
        }
        if let Some(count) = self.busy_writes.get_mut(i) {
            *count = count.saturating_add(writes);
        }
        self.busy_first = self.busy_first.or(first);
        assert!(
            !self.strict_busy,
            "vCPU {i}: {writes} VMSA writes while BUSY was clear (first: {first:?})"
        );
    }

    /// The configuration the fixture gives vCPU `i` (APIC ID = host ID = i).
    pub fn config(i: usize) -> EngineConfig {
        let id = u32::try_from(i).unwrap_or(u32::MAX);
        EngineConfig {
            index: i,
            host_apic_id: id,
            apic: ApicConfig {
                apic_id: id,
                bsp: i == 0,
                ticks_per_bus_cycle: 1,
                directed_eoi: false,
                ..ApicConfig::default()
            },
            guest_vmpl: GUEST_VMPL,
            notification_vector: DEFAULT_NOTIFICATION_VECTOR,
            emulate: true,
        }
    }

    /// Creates vCPU `i`'s engine with `config`.
    pub fn create_with(&mut self, i: usize, config: EngineConfig) -> Result<(), Fatal> {
        let engine = VcpuEngine::new(config, Fabric::new(&self.shared, &self.vm))?;
        if let Some(slot) = self.engines.get_mut(i) {
            *slot = Some(engine);
        }
        Ok(())
    }

    /// Creates vCPU `i`'s engine, then switches its APIC to x2APIC mode,
    /// software-enables it (SVR = 0x1FF) and allows every host vector.
    pub fn create(&mut self, i: usize) -> Result<(), Fatal> {
        self.create_with(i, Self::config(i))?;
        let base = 0xFEE0_0000 | (1 << 11) | (1 << 10) | if i == 0 { 1 << 8 } else { 0 };
        let _ = self.write_msr(i, u64::from(altinj_apic::MSR_APIC_BASE), base);
        let _ = self.write_msr(i, u64::from(altinj_apic::MSR_SVR), 0x1FF);
        let _ = self.call(i, ApicCall::ConfigureVector((1 << 9) | (1 << 8)));
        Ok(())
    }

    /// Splits out everything one engine call needs.
    pub fn parts(
        &mut self,
        i: usize,
    ) -> Option<(&mut VcpuEngine, Env<'_, MockPlatform>, &mut VmsaPage)> {
        let Self {
            platform,
            shared,
            vm,
            doorbells,
            vmsas,
            caa,
            engines,
            ..
        } = self;
        let engine = engines.get_mut(i)?.as_mut()?;
        let env = Env::new(
            &*platform,
            Fabric::new(shared.as_slice(), vm),
            doorbells.get(i)?,
        )
        .with_no_eoi_byte(caa.get(i));
        Some((engine, env, vmsas.get_mut(i)?))
    }

    /// vCPU `i`'s engine.
    pub fn engine(&self, i: usize) -> Option<&VcpuEngine> {
        self.engines.get(i)?.as_ref()
    }

    /// vCPU `i`'s VMSA.
    pub fn vmsa(&mut self, i: usize) -> Option<&mut VmsaPage> {
        self.vmsas.get_mut(i)
    }

    /// vCPU `i`'s doorbell page.
    pub fn doorbell(&self, i: usize) -> Option<&DoorbellPage> {
        self.doorbells.get(i)
    }

    /// `before_run` of vCPU `i`.
    pub fn before_run(&mut self, i: usize) -> Result<(), Fatal> {
        let (engine, env, vmsa) = self.parts(i).ok_or(Fatal::NoSlot)?;
        let mut vmsa = BusyAudit::new(vmsa);
        let res = engine.before_run(&env, &mut vmsa);
        let (writes, first) = (vmsa.writes_while_runnable(), vmsa.first_field());
        self.audit(i, writes, first);
        res
    }

    /// `after_exit` of vCPU `i`.
    pub fn after_exit(&mut self, i: usize) -> Result<ExitInfo, Fatal> {
        let (engine, env, vmsa) = self.parts(i).ok_or(Fatal::NoSlot)?;
        let mut vmsa = BusyAudit::new(vmsa);
        let res = engine.after_exit(&env, &mut vmsa);
        let (writes, first) = (vmsa.writes_while_runnable(), vmsa.first_field());
        self.audit(i, writes, first);
        res
    }

    /// `cancel_run` of vCPU `i` (a run the SVSM did not make).
    pub fn cancel_run(&mut self, i: usize) -> Result<(), Fatal> {
        let (engine, env, vmsa) = self.parts(i).ok_or(Fatal::NoSlot)?;
        engine.cancel_run(&env, vmsa);
        Ok(())
    }

    /// One whole cycle: `before_run`, the modelled hardware run, `after_exit`.
    pub fn cycle(&mut self, i: usize, run: GuestRun) -> Result<HwDelivery, Fatal> {
        self.before_run(i)?;
        let vmsa = self.vmsas.get_mut(i).ok_or(Fatal::NoSlot)?;
        let delivered = hw_run(vmsa, run);
        self.after_exit(i)?;
        Ok(delivered)
    }

    /// An APIC protocol call on vCPU `i`.
    pub fn call(&mut self, i: usize, call: ApicCall) -> Option<CallResult> {
        let (engine, env, vmsa) = self.parts(i)?;
        // A call reaches VMPL0 after an exit (BUSY set by `after_exit`);
        // tests that call without a run first are not a BUSY question.
        let after_exit = vmsa.vintr_ctrl().busy();
        let outcome = engine.handle_apic_call(&env, call);
        let mut vmsa = BusyAudit::new(vmsa);
        let res = engine.finish_apic_call(&env, &mut vmsa, outcome);
        let (writes, first) = (vmsa.writes_while_runnable(), vmsa.first_field());
        if after_exit {
            self.audit(i, writes, first);
        }
        Some(res)
    }

    /// WRITE_REGISTER through the protocol.
    pub fn write_msr(&mut self, i: usize, msr: u64, value: u64) -> Option<CallResult> {
        self.call(i, ApicCall::WriteRegister { msr, value })
    }

    /// READ_REGISTER through the protocol; the value on success.
    pub fn read_msr(&mut self, i: usize, msr: u64) -> Option<u64> {
        self.call(i, ApicCall::ReadRegister { msr })?.rdx
    }
}
