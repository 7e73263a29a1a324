//! The host's part for the Linux guest: what KVM does with Alternate
//! Injection. A device interrupt the guest programmed into the machine's
//! IOAPIC arrives at this CPU's real local APIC while the guest runs
//! (#VMEXIT INTR); the host takes it here, posts the vector into the target
//! vCPU's #HV doorbell page (level-triggered when the real LAPIC's TMR says
//! so) and raises #HV through the real LAPIC (vector 28). An edge vector is
//! EOI'd to the real LAPIC at once; a level vector stays in service there
//! until the engine sends its specific EOI (`Platform::specific_eoi`).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use altinj_doorbell::DoorbellPage;
use altinj_kernel::platform::{DisableAiRequest, DoorbellRequest};
use altinj_kernel::{NoTimer, Platform, PlatformError, VcpuShared};

use crate::{cpu, lapic};

/// vCPUs the Linux harness runs at most.
pub const MAX_VCPUS: usize = 4;
/// Guest VMPL (spec §1).
pub const GUEST_VMPL: u8 = 2;

/// The run's doorbell pages and shared slots (statics: the #HV and device
/// handlers reach them with atomics only).
pub static DOORBELLS: [DoorbellPage; MAX_VCPUS] = [const { DoorbellPage::new() }; MAX_VCPUS];
/// The fabric's slots.
pub static SLOTS: [VcpuShared; MAX_VCPUS] = [const { VcpuShared::new() }; MAX_VCPUS];
/// The VM-wide state (registration count, spec §5).
pub static VM: altinj_kernel::VmShared = altinj_kernel::VmShared::new();

/// Whether a Linux run is in progress (the IDT routes 28 and 32-254 here).
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// vCPUs #HV was raised for (bit k).
static HV_PENDING: AtomicU32 = AtomicU32::new(0);
/// Device vectors taken but not yet posted (the doorbell was busy), per
/// trigger mode: bit v of word v / 64.
static DEFERRED_EDGE: [[AtomicU64; 4]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_VCPUS];
static DEFERRED_LEVEL: [[AtomicU64; 4]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_VCPUS];
/// TSC at which each vector was last posted (0: none outstanding), for the
/// injection latency.
pub static POSTED_AT: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];
/// Device interrupts taken, per vector.
pub static DEVICE_IRQS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
/// Of those, level-triggered.
pub static LEVEL_IRQS: AtomicU64 = AtomicU64::new(0);
/// Real-LAPIC EOIs the engine's specific EOIs released.
pub static LEVEL_EOIS: AtomicU64 = AtomicU64::new(0);
/// #HVs taken through the LAPIC, and spurious ones (nothing signalled).
pub static HV_TAKEN: AtomicU64 = AtomicU64::new(0);
/// #HVs the hostile host raised with nothing posted.
pub static HV_SPURIOUS: AtomicU64 = AtomicU64::new(0);

/// Starts routing host vectors to the Linux harness.
pub fn activate(on: bool) {
    ACTIVE.store(on, Ordering::SeqCst);
}

/// Whether a Linux run is in progress.
pub fn active() -> bool {
    ACTIVE.load(Ordering::SeqCst)
}

/// The vCPU whose lines this CPU's real LAPIC receives: vCPU 0 when all
/// vCPUs share CPU 0 (the guest runs with `irqaffinity=0`), else the vCPU
/// with this CPU's APIC ID (the guest programs the IOAPIC with it).
pub fn this_vcpu() -> usize {
    if REAL_CPUS.load(Ordering::Relaxed) {
        lapic::id() as usize
    } else {
        0
    }
}

/// A device vector from the real LAPIC (interrupts masked).
pub fn on_device(vector: u8) {
    if let Some(c) = DEVICE_IRQS.get(usize::from(vector)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let level = lapic::level_triggered(vector);
    if level {
        LEVEL_IRQS.fetch_add(1, Ordering::Relaxed);
    }
    let word = usize::from(vector / 64);
    let bit = 1u64 << (vector % 64);
    let k = this_vcpu();
    let deferred = if level {
        &DEFERRED_LEVEL
    } else {
        &DEFERRED_EDGE
    };
    if let Some(w) = deferred.get(k).and_then(|d| d.get(word)) {
        w.fetch_or(bit, Ordering::SeqCst);
    }
    flush(k);
    if !level {
        lapic::eoi();
    }
}

/// Posts what `on_device` could not (doorbell busy) into vCPU `k`'s page and
/// raises #HV if anything went in. Run with interrupts masked.
pub fn flush(k: usize) {
    let Some(page) = DOORBELLS.get(k) else { return };
    let mut posted = false;
    let (Some(edge), Some(lvl)) = (DEFERRED_EDGE.get(k), DEFERRED_LEVEL.get(k)) else {
        return;
    };
    for (level, set) in [(false, edge), (true, lvl)] {
        for (word, w) in set.iter().enumerate() {
            let mut bits = w.load(Ordering::SeqCst);
            while bits != 0 {
                let b = bits.trailing_zeros();
                bits &= bits.wrapping_sub(1);
                // word < 4, b < 64: the vector fits a byte.
                let vector = ((word << 6) as u32 | b) as u8;
                let host = page.host();
                let result = if level {
                    host.post_level(GUEST_VMPL, vector)
                } else {
                    host.post_vector(GUEST_VMPL, vector)
                };
                if result.is_ok() {
                    w.fetch_and(!(1u64 << b), Ordering::SeqCst);
                    if let Some(t) = POSTED_AT.get(usize::from(vector)) {
                        let _ =
                            t.compare_exchange(0, cpu::rdtsc(), Ordering::SeqCst, Ordering::SeqCst);
                    }
                    posted = true;
                }
            }
        }
    }
    if posted {
        signal(k);
    }
}

/// Raises #HV for vCPU `k` (vector 28 self-IPI) when NoFurtherSignal was
/// clear, as the hypervisor does after a post (GHCB spec, #HV doorbell).
pub fn signal(k: usize) {
    let Some(page) = DOORBELLS.get(k) else { return };
    if page.host().raise_no_further_signal() {
        HV_PENDING.fetch_or(1 << k, Ordering::SeqCst);
        lapic::self_ipi(crate::idt::HV_VECTOR);
    }
}

/// Hostile host: #HV with nothing posted for vCPU `k`.
pub fn spurious_hv(k: usize) {
    HV_SPURIOUS.fetch_add(1, Ordering::Relaxed);
    HV_PENDING.fetch_or(1 << k, Ordering::SeqCst);
    lapic::self_ipi(crate::idt::HV_VECTOR);
}

/// Vector 28: the engine's #HV logic for every vCPU signalled (on this
/// CPU: all of them when time-shared, else its own).
pub fn on_hv() {
    HV_TAKEN.fetch_add(1, Ordering::Relaxed);
    let pending = if REAL_CPUS.load(Ordering::Relaxed) {
        let mine = 1u32.checked_shl(this_vcpu() as u32).unwrap_or(0);
        HV_PENDING.fetch_and(!mine, Ordering::SeqCst) & mine
    } else {
        HV_PENDING.swap(0, Ordering::SeqCst)
    };
    for (k, (page, slot)) in DOORBELLS.iter().zip(SLOTS.iter()).enumerate() {
        if pending & (1 << k) != 0 {
            let _ = altinj_kernel::handle_hv(page, slot, altinj_kernel::Vmpl0Tpr::ZERO);
        }
    }
    lapic::eoi();
}

/// The engine's platform for one vCPU: GHCB calls become direct actions.
/// Atomics: the vCPU's CPU uses it, the report reads it at the end.
pub struct LinuxPlatform {
    /// The engine's one-shot timer deadline (TSC), `u64::MAX` when unarmed.
    pub deadline: AtomicU64,
    /// Specific EOIs the engine sent.
    pub specific_eois: AtomicU64,
    /// #HV IPIs (kicks) the engine sent.
    pub kicks: AtomicU64,
}

impl LinuxPlatform {
    /// A platform with nothing armed.
    pub const fn new() -> Self {
        Self {
            deadline: AtomicU64::new(u64::MAX),
            specific_eois: AtomicU64::new(0),
            kicks: AtomicU64::new(0),
        }
    }

    /// The armed deadline, if any.
    pub fn deadline(&self) -> Option<u64> {
        Some(self.deadline.load(Ordering::Relaxed)).filter(|&d| d != u64::MAX)
    }
}

/// Whether each vCPU runs on its own CPU (APIC ID = vCPU index) rather
/// than all on CPU 0.
pub static REAL_CPUS: AtomicBool = AtomicBool::new(false);

impl Platform for LinuxPlatform {
    fn hv_ipi(&self, icr: u64) -> Result<(), PlatformError> {
        self.kicks.fetch_add(1, Ordering::Relaxed);
        if REAL_CPUS.load(Ordering::Relaxed) {
            // The notification IPI to the target's CPU (x2APIC ICR format:
            // destination in 63:32, the host APIC ID = the vCPU index).
            lapic::send_ipi((icr >> 32) as u32, u32::from(crate::svm::host::KICK_VECTOR));
        }
        // Time-shared: the loop on this CPU visits the target next.
        Ok(())
    }
    fn specific_eoi(&self, _vmpl: u8, _vector: u8) -> Result<(), PlatformError> {
        // The level vector has stayed in service on the real LAPIC since
        // `on_device` (on this CPU: the vCPU runs where its lines arrive);
        // its EOI re-arms the IOAPIC line (non-specific: the held level
        // vectors are the only ones in service there).
        self.specific_eois.fetch_add(1, Ordering::Relaxed);
        LEVEL_EOIS.fetch_add(1, Ordering::Relaxed);
        lapic::eoi();
        Ok(())
    }
    fn disable_alternate_injection(&self, _r: DisableAiRequest) -> Result<(), PlatformError> {
        Err(PlatformError::UNSPECIFIED)
    }
    fn configure_notification_vector(&self, _v: u8) -> Result<(), PlatformError> {
        Ok(())
    }
    fn doorbell_page(&self, _r: DoorbellRequest) -> Result<u64, PlatformError> {
        Ok(0)
    }
    fn now(&self) -> u64 {
        cpu::rdtsc()
    }
    fn has_timer(&self) -> bool {
        true
    }
    fn arm_timer(&self, deadline: Option<u64>) -> Result<(), NoTimer> {
        self.deadline
            .store(deadline.unwrap_or(u64::MAX), Ordering::Relaxed);
        Ok(())
    }
}
