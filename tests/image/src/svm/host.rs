//! The hypervisor's part, shared by every CPU of a run: the run's doorbell
//! pages and fabric slots, the per-vCPU flags devices and run loops
//! exchange, the host interrupt handlers (#HV on vector 28, the host timer
//! on 22, kicks on 23, "a run starts" on 24: host vectors stay in 16-31,
//! where no guest vector lives), the engine's `Platform` and the posts.

use core::cell::Cell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use altinj_doorbell::DoorbellPage;
use altinj_kernel::platform::DisableAiRequest;
use altinj_kernel::{NoTimer, Platform, PlatformError, VcpuShared, VmShared};

use super::guest::vec;
use super::harness::RunConfig;
use super::ledger::{self, HOST, MAX_VCPUS};
use crate::{cpu, lapic};

/// The host timer (slice end or an engine deadline).
pub const HOST_TIMER_VECTOR: u8 = 22;
/// A kick: the engine's notification vector (GHCB 0x8000_001B).
pub const KICK_VECTOR: u8 = 23;
/// Wakes the APs when a run starts.
pub const GO_VECTOR: u8 = 24;
/// Guest VMPL (spec §1).
pub const GUEST_VMPL: u8 = 2;

/// A run's configuration, pages and slots, on the stack of the CPU that
/// runs it.
pub struct RunShared {
    pub cfg: RunConfig,
    pub doorbells: [DoorbellPage; MAX_VCPUS],
    pub slots: [VcpuShared; MAX_VCPUS],
    /// The VM-wide state (registration count, spec §5).
    pub vm: VmShared,
}

impl RunShared {
    pub const fn new(cfg: RunConfig) -> Self {
        Self {
            cfg,
            doorbells: [const { DoorbellPage::new() }; MAX_VCPUS],
            slots: [const { VcpuShared::new() }; MAX_VCPUS],
            vm: VmShared::new(),
        }
    }
}

/// Set by the BSP when a multi-CPU run hung: every run loop stops.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Whether the guests of all `n` vCPUs accept host vectors yet.
pub fn all_configured(n: usize) -> bool {
    FLAGS
        .iter()
        .take(n)
        .all(|f| f.configured.load(Ordering::SeqCst))
}

/// Whether vCPU `k` asked to stop or was handed back (devices leave it
/// alone).
pub fn done_asked(k: usize) -> bool {
    FLAGS
        .get(k)
        .is_none_or(|f| f.done_asked.load(Ordering::SeqCst) || f.handed_back.load(Ordering::SeqCst))
}

static SHARED: AtomicPtr<RunShared> = AtomicPtr::new(core::ptr::null_mut());

/// Publishes `shared` to the handlers and the other CPUs until [`retract`].
///
/// # Safety
/// `shared` must outlive the publication and never be borrowed `&mut`
/// meanwhile (only atomics are accessed through it).
pub unsafe fn publish(shared: &RunShared) {
    SHARED.store(core::ptr::from_ref(shared).cast_mut(), Ordering::SeqCst);
}

/// Ends the publication (every CPU of the run has stopped using it).
pub fn retract() {
    SHARED.store(core::ptr::null_mut(), Ordering::SeqCst);
}

/// The published run, if any.
pub fn shared() -> Option<&'static RunShared> {
    // SAFETY: `publish`'s contract keeps the pointee alive and shared until
    // `retract` nulls the pointer; only atomics are accessed through it.
    unsafe { SHARED.load(Ordering::SeqCst).as_ref() }
}

/// Whether a run is in progress (the IDT routes vector 28 here).
pub fn active() -> bool {
    !SHARED.load(Ordering::SeqCst).is_null()
}

/// Per-vCPU flags, cross-CPU.
pub struct VcpuFlags {
    /// Its guest enabled host vectors (CONFIGURE_VECTOR): devices may post.
    pub configured: AtomicBool,
    /// Its guest asked to stop: devices no longer post to it.
    pub done_asked: AtomicBool,
    /// Its level line is asserted (until the specific EOI).
    pub level_up: AtomicBool,
    /// APIC ID of the CPU running it.
    pub apic_id: AtomicU32,
    /// Its APIC was handed back: devices leave it alone.
    pub handed_back: AtomicBool,
}

pub static FLAGS: [VcpuFlags; MAX_VCPUS] = [const {
    VcpuFlags {
        configured: AtomicBool::new(false),
        done_asked: AtomicBool::new(false),
        level_up: AtomicBool::new(false),
        apic_id: AtomicU32::new(0),
        handed_back: AtomicBool::new(false),
    }
}; MAX_VCPUS];

/// vCPUs the devices raised #HV for (bit k).
static HV_PENDING: AtomicU32 = AtomicU32::new(0);
/// Host interrupts taken, all CPUs: #HV, timer, kicks (received and sent).
pub static HV_TAKEN: AtomicU64 = AtomicU64::new(0);
pub static TIMER_IRQS: AtomicU64 = AtomicU64::new(0);
pub static KICKS_RECEIVED: AtomicU64 = AtomicU64::new(0);
pub static KICK_IPIS: AtomicU64 = AtomicU64::new(0);
/// Guest IPIs forwarded to handed-back vCPUs.
pub static FORWARDS: AtomicU64 = AtomicU64::new(0);

/// Clears the flags and counters before a run; vCPU k runs on `apic_id(k)`.
pub fn reset(apic_id: impl Fn(usize) -> u32) {
    for (k, f) in FLAGS.iter().enumerate() {
        f.configured.store(false, Ordering::SeqCst);
        f.done_asked.store(false, Ordering::SeqCst);
        f.level_up.store(false, Ordering::SeqCst);
        f.handed_back.store(false, Ordering::SeqCst);
        f.apic_id.store(apic_id(k), Ordering::SeqCst);
    }
    HV_PENDING.store(0, Ordering::SeqCst);
    STOP.store(false, Ordering::SeqCst);
    super::handback::reset();
    for c in [
        &HV_TAKEN,
        &TIMER_IRQS,
        &KICKS_RECEIVED,
        &KICK_IPIS,
        &FORWARDS,
    ] {
        c.store(0, Ordering::SeqCst);
    }
}

fn flags(k: usize) -> Option<&'static VcpuFlags> {
    FLAGS.get(k)
}

/// Vector 28 from the real LAPIC: the engine's #HV logic for each vCPU of
/// this CPU that a device signalled.
pub fn on_hv() {
    HV_TAKEN.fetch_add(1, Ordering::SeqCst);
    let me = lapic::id();
    if let Some(run) = shared() {
        for (k, (page, slot)) in run.doorbells.iter().zip(run.slots.iter()).enumerate() {
            let mine = flags(k).is_some_and(|f| f.apic_id.load(Ordering::SeqCst) == me);
            let bit = 1u32 << k;
            if mine && HV_PENDING.fetch_and(!bit, Ordering::SeqCst) & bit != 0 {
                let _ = altinj_kernel::handle_hv(page, slot, altinj_kernel::Vmpl0Tpr::ZERO);
            }
        }
    }
    lapic::eoi();
}

/// Vector 22: the exit it caused is all it is for.
pub fn on_timer() {
    TIMER_IRQS.fetch_add(1, Ordering::SeqCst);
    lapic::eoi();
}

/// Vectors 23 and 24: a kick or a run start; waking the CPU is the point.
pub fn on_wake(vector: u8) {
    if vector == KICK_VECTOR {
        KICKS_RECEIVED.fetch_add(1, Ordering::SeqCst);
    }
    lapic::eoi();
}

/// Sends `vector` to the CPU of vCPU `k` (a self-IPI when it is this one).
fn interrupt_vcpu_cpu(k: usize, vector: u8) {
    let me = lapic::id();
    let dest = flags(k).map_or(me, |f| f.apic_id.load(Ordering::SeqCst));
    if dest == me {
        lapic::self_ipi(vector);
    } else {
        lapic::send_ipi(dest, u32::from(vector));
    }
}

/// The engine's platform for one vCPU: GHCB calls become direct actions.
pub struct HostPlatform {
    k: usize,
    pub deadline: Cell<Option<u64>>,
    pub specific_eois: Cell<u64>,
    pub kicks: Cell<u64>,
}

impl HostPlatform {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            deadline: Cell::new(None),
            specific_eois: Cell::new(0),
            kicks: Cell::new(0),
        }
    }
}

impl Platform for HostPlatform {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        // x2APIC ICR format, destination in 63:32: the engines' host APIC
        // ID is their vCPU index. The notification vector with fixed
        // delivery is a kick: a real IPI to the target's CPU (on this CPU
        // the run loop visits it anyway). Anything else is a guest IPI
        // forwarded to a handed-back vCPU (`platform::forward_icr`): the
        // host's APIC emulation of it takes it, and its CPU is woken.
        let k = (icr >> 32) as usize;
        let vector = (icr & 0xFF) as u8;
        let nmi = (icr >> 8) & 0b111 == 0b100;
        if nmi || vector != KICK_VECTOR {
            super::handback::forward(k, vector, nmi);
            FORWARDS.fetch_add(1, Ordering::SeqCst);
        } else {
            self.kicks.set(self.kicks.get().saturating_add(1));
        }
        let me = lapic::id();
        let dest = flags(k).map_or(me, |f| f.apic_id.load(Ordering::SeqCst));
        if dest != me {
            KICK_IPIS.fetch_add(1, Ordering::SeqCst);
            lapic::send_ipi(dest, u32::from(KICK_VECTOR));
        }
        Ok(())
    }
    fn specific_eoi(&self, vmpl: u8, vector: u8) -> Result<(), PlatformError> {
        if vmpl != GUEST_VMPL || vector != vec::LEVEL {
            ledger::violation(((self.k as u64) << 16) | (0xE0 << 8) | u64::from(vector));
        }
        self.specific_eois
            .set(self.specific_eois.get().saturating_add(1));
        if let Some(f) = flags(self.k) {
            f.level_up.store(false, Ordering::SeqCst);
        }
        Ok(())
    }
    fn disable_alternate_injection(&self, _r: DisableAiRequest) -> Result<(), PlatformError> {
        Ok(())
    }
    fn configure_notification_vector(&self, _v: u8) -> Result<(), PlatformError> {
        Ok(())
    }
    fn doorbell_page(
        &self,
        _r: altinj_kernel::platform::DoorbellRequest,
    ) -> Result<u64, PlatformError> {
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

/// Claims an instance for a post to vCPU `k`. With `respect_done`, a vCPU
/// that asked to stop gets nothing: the poster claims, then looks; the
/// vCPU's loop marks, then looks for claims (all sequentially consistent),
/// so either the post is dropped or the vCPU waits for it.
fn claim_for(k: usize, vector: usize, respect_done: bool) -> bool {
    if !ledger::claim(k, vector, cpu::rdtsc()) {
        return false;
    }
    if respect_done && done_asked(k) {
        ledger::unclaim(k, vector);
        return false;
    }
    true
}

/// Raises #HV for vCPU `k` on its CPU (vector 28 through the real LAPIC)
/// when the doorbell protocol allows (NoFurtherSignal was clear).
pub fn signal(page: &DoorbellPage, k: usize) {
    if page.host().raise_no_further_signal() {
        HV_PENDING.fetch_or(1 << k, Ordering::SeqCst);
        interrupt_vcpu_cpu(k, crate::idt::HV_VECTOR);
    }
}

/// The host delivers a guest IPI from a handed-back vCPU to vCPU `k`
/// through its doorbell page (not claimed: IPI vectors are ledgered at the
/// ICR write).
pub fn post_ipi(run: &RunShared, k: usize, vector: u8) {
    if let Some(page) = run.doorbells.get(k)
        && page.host().post_vector(GUEST_VMPL, vector).is_ok()
    {
        signal(page, k);
    }
}

/// A device posts edge `vector` to vCPU `k` through its doorbell page and
/// signals it. Claims the instance first; false (nothing posted) if one is
/// outstanding.
pub fn post_edge(run: &RunShared, k: usize, vector: u8) -> bool {
    let Some(page) = run.doorbells.get(k) else {
        return false;
    };
    if !claim_for(k, usize::from(vector), vector != vec::WAKE) {
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

/// vCPU `k`'s level line: posted only while deasserted.
pub fn post_level(run: &RunShared, k: usize) -> bool {
    let (Some(page), Some(f)) = (run.doorbells.get(k), flags(k)) else {
        return false;
    };
    if f.level_up.load(Ordering::SeqCst) || !claim_for(k, usize::from(vec::LEVEL), true) {
        return false;
    }
    f.level_up.store(true, Ordering::SeqCst);
    if page.host().post_level(GUEST_VMPL, vec::LEVEL).is_err() {
        f.level_up.store(false, Ordering::SeqCst);
        ledger::unclaim(k, usize::from(vec::LEVEL));
        return false;
    }
    HOST.add(k, usize::from(vec::LEVEL));
    signal(page, k);
    true
}

/// An NMI for vCPU `k`, posted only while none is outstanding.
pub fn post_nmi(run: &RunShared, k: usize) -> bool {
    let Some(page) = run.doorbells.get(k) else {
        return false;
    };
    if !claim_for(k, ledger::NMI, true) {
        return false;
    }
    if page.host().post_nmi(GUEST_VMPL).is_err() {
        ledger::unclaim(k, ledger::NMI);
        return false;
    }
    HOST.add(k, ledger::NMI);
    signal(page, k);
    true
}
