//! The #HV (vector 28) handler of the test kernel, which runs the engine's #HV
//! logic (`altinj_kernel::handle_hv`), and a test-only hypervisor model.
//!
//! In the SVSM the hypervisor posts VMPL0's events to the #HV doorbell page and
//! injects #HV (AMD APM vol. 2 §15.36.16; GHCB spec 56421 "#HV doorbell page").
//! Here the model posts to a static doorbell page with `doorbell`'s host API and
//! raises #HV either synchronously (`int 28`) or asynchronously through the
//! emulated machine's local APIC timer programmed with vector 28, so #HV lands at
//! any instruction boundary where IF = 1 (and on STI when it fired with IF = 0).
//!
//! Two optional hooks run in the handler after the engine call, for the tests
//! and the demo (both touch atomics only, as the real handler may):
//! - [`guests::set`]: the simulated vCPUs of a `altinj_kernel::testing::Fixture`.
//!   Each #HV then also acts as their hypervisor and as their other vCPUs:
//!   it posts vectors into their doorbell pages and IPI mailboxes and runs
//!   `handle_hv` for the target, wherever the main flow is in its engine
//!   calls (see `hv_tests`).
//! - [`host_posts::set`]: every APIC-delivered #HV posts the next VMPL0 vector,
//!   which the following #HV takes (the demo's host model).

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};

use altinj_doorbell::DoorbellPage;
use altinj_doorbell::host::PostError;
use altinj_kernel::{HvEvents, VcpuShared};

use crate::idt::HV_VECTOR;
use crate::{cpu, lapic};

/// VMPL0's #HV doorbell page (the SVSM's would be the shared page registered with
/// the hypervisor).
pub static DOORBELL: DoorbellPage = DoorbellPage::new();

/// This (only) CPU's shared slot, where `handle_hv` notes per-VMPL events for
/// the next `before_run`.
pub static SHARED: VcpuShared = VcpuShared::new();

/// VMPL0's own task priority, passed to `handle_hv` (vectors at or below its
/// class stay pending in the doorbell page).
pub static VMPL0_TPR: AtomicU8 = AtomicU8::new(0);

/// Counters the #HV handler keeps, for the tests.
pub struct HvStats {
    /// Every #HV taken.
    pub hv: AtomicU64,
    /// #HVs delivered by the local APIC (the timer), i.e. with vector 28 in service.
    pub apic_hv: AtomicU64,
    /// VMPL0 vectors the engine took from the doorbell page.
    pub vectors: AtomicU64,
    /// Sum of the vectors taken (to check each post was taken exactly once).
    pub vector_sum: AtomicU64,
    /// The last vector taken.
    pub last_vector: AtomicU32,
    /// Entries that left a vector pending because of VMPL0's TPR.
    pub deferred: AtomicU64,
    /// The last deferred vector.
    pub last_deferred: AtomicU32,
    /// NMIs for VMPL0.
    pub nmis: AtomicU64,
    /// Machine checks for VMPL0.
    pub mcs: AtomicU64,
    /// Entries that found per-VMPL events (posts for a guest VMPL).
    pub vmpl_event_entries: AtomicU64,
    /// Every per-VMPL event bit seen, OR-ed.
    pub vmpl_events: AtomicU32,
    /// Entries that found nothing (spurious #HV).
    pub empty: AtomicU64,
    /// Items the doorbell code rejected.
    pub rejected: AtomicU64,
}

/// The handler's counters.
pub static STATS: HvStats = HvStats {
    hv: AtomicU64::new(0),
    apic_hv: AtomicU64::new(0),
    vectors: AtomicU64::new(0),
    vector_sum: AtomicU64::new(0),
    last_vector: AtomicU32::new(0),
    deferred: AtomicU64::new(0),
    last_deferred: AtomicU32::new(0),
    nmis: AtomicU64::new(0),
    mcs: AtomicU64::new(0),
    vmpl_event_entries: AtomicU64::new(0),
    vmpl_events: AtomicU32::new(0),
    empty: AtomicU64::new(0),
    rejected: AtomicU64::new(0),
};

/// Entry from the IDT stub for vector 28 (interrupts masked).
pub fn on_hv() {
    // Whether the APIC delivered this #HV (an `int 28` leaves ISR untouched): only
    // then does it need an EOI (Intel SDM vol. 3A §11.8.5).
    let from_apic = lapic::in_service(HV_VECTOR);
    STATS.hv.fetch_add(1, Ordering::Relaxed);
    if from_apic {
        STATS.apic_hv.fetch_add(1, Ordering::Relaxed);
    }
    hv_handler_body();
    if from_apic {
        guests::on_apic_hv();
        host_posts::on_apic_hv();
        lapic::eoi();
    }
}

/// The #HV logic proper: the engine's `handle_hv` on this CPU's doorbell page
/// and shared slot, as the SVSM's handler calls it (docs/integration.md).
fn hv_handler_body() {
    let events = altinj_kernel::handle_hv(
        &DOORBELL,
        &SHARED,
        altinj_kernel::Vmpl0Tpr::from_tpr(VMPL0_TPR.load(Ordering::Relaxed)),
    );
    record(&events);
}

/// Counts what one `handle_hv` call returned.
fn record(events: &HvEvents) {
    if let Some(vector) = events.vmpl0_vector {
        STATS.vectors.fetch_add(1, Ordering::Relaxed);
        STATS
            .vector_sum
            .fetch_add(u64::from(vector), Ordering::Relaxed);
        STATS
            .last_vector
            .store(u32::from(vector), Ordering::Relaxed);
    }
    if let Some(vector) = events.deferred_vector {
        STATS.deferred.fetch_add(1, Ordering::Relaxed);
        STATS
            .last_deferred
            .store(u32::from(vector), Ordering::Relaxed);
    }
    if events.vmpl0_nmi {
        STATS.nmis.fetch_add(1, Ordering::Relaxed);
    }
    if events.vmpl0_mc {
        STATS.mcs.fetch_add(1, Ordering::Relaxed);
    }
    if events.vmpl_events != 0 {
        STATS.vmpl_event_entries.fetch_add(1, Ordering::Relaxed);
        STATS
            .vmpl_events
            .fetch_or(u32::from(events.vmpl_events), Ordering::Relaxed);
    }
    if events.is_empty() {
        STATS.empty.fetch_add(1, Ordering::Relaxed);
    }
    STATS
        .rejected
        .fetch_add(u64::from(events.rejected), Ordering::Relaxed);
}

/// Number of simulated vCPUs [`guests::set`] takes.
pub const GUESTS: usize = 4;

/// The simulated vCPUs' pages the handler posts into (see the module doc).
pub mod guests {
    use super::{AtomicBool, AtomicPtr, AtomicU64, DoorbellPage, GUESTS, Ordering, VcpuShared};

    static DOORBELLS: AtomicPtr<[DoorbellPage; GUESTS]> = AtomicPtr::new(core::ptr::null_mut());
    static SLOTS: AtomicPtr<[VcpuShared; GUESTS]> = AtomicPtr::new(core::ptr::null_mut());
    /// The guest VMPL posted to.
    static VMPL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(2);
    /// Vectors posted and not yet delivered, per vCPU (bit v of word v / 64).
    pub static OUTSTANDING: [[AtomicU64; 4]; GUESTS] =
        [const { [const { AtomicU64::new(0) }; 4] }; GUESTS];
    /// Posts made into doorbell pages (for the guest VMPL).
    pub static DOORBELL_POSTS: AtomicU64 = AtomicU64::new(0);
    /// Posts made into IPI mailboxes.
    pub static MAILBOX_POSTS: AtomicU64 = AtomicU64::new(0);
    /// `handle_hv` calls for a simulated vCPU that found its guest VMPL flagged.
    pub static GUEST_HV_NOTED: AtomicU64 = AtomicU64::new(0);
    /// Set by the main flow while it is inside an engine call.
    pub static IN_ENGINE: AtomicBool = AtomicBool::new(false);
    /// APIC #HVs that landed while [`IN_ENGINE`] was set.
    pub static HITS_IN_ENGINE: AtomicU64 = AtomicU64::new(0);
    /// Whether posting is on.
    static ON: AtomicBool = AtomicBool::new(false);
    /// The model's pseudo-random state (xorshift64).
    static RNG: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

    /// Lets every APIC-delivered #HV post into these pages until [`clear`]
    /// (which `model::disarm_timer` calls; `runner` calls that after every test).
    ///
    /// # Safety
    /// `doorbells` and `shared` must stay alive, and never be borrowed `&mut`,
    /// until [`clear`] has run: the handler keeps using them through pointers
    /// (atomics only, so shared aliasing is fine).
    pub unsafe fn set(doorbells: &[DoorbellPage; GUESTS], shared: &[VcpuShared; GUESTS], vmpl: u8) {
        for words in &OUTSTANDING {
            words.iter().for_each(|w| w.store(0, Ordering::SeqCst));
        }
        VMPL.store(vmpl, Ordering::SeqCst);
        DOORBELLS.store(core::ptr::from_ref(doorbells).cast_mut(), Ordering::SeqCst);
        SLOTS.store(core::ptr::from_ref(shared).cast_mut(), Ordering::SeqCst);
        ON.store(true, Ordering::SeqCst);
    }

    /// Stops posting (interrupts must be off or the timer stopped).
    pub fn clear() {
        ON.store(false, Ordering::SeqCst);
        DOORBELLS.store(core::ptr::null_mut(), Ordering::SeqCst);
        SLOTS.store(core::ptr::null_mut(), Ordering::SeqCst);
    }

    fn next_random() -> u64 {
        // Only the handler (interrupts masked) updates it: load/store is enough.
        let mut x = RNG.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        RNG.store(x, Ordering::Relaxed);
        x
    }

    /// Marks `vector` outstanding on `vcpu`; false if it already was (a second
    /// post would coalesce, so the model skips it to keep exact accounting).
    fn claim(vcpu: usize, vector: u8) -> bool {
        let bit = 1u64 << (vector & 63);
        OUTSTANDING
            .get(vcpu)
            .and_then(|words| words.get(usize::from(vector >> 6)))
            .is_some_and(|w| w.fetch_or(bit, Ordering::SeqCst) & bit == 0)
    }

    fn unclaim(vcpu: usize, vector: u8) {
        let bit = 1u64 << (vector & 63);
        if let Some(w) = OUTSTANDING
            .get(vcpu)
            .and_then(|words| words.get(usize::from(vector >> 6)))
        {
            w.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Called by the main flow when `vcpu`'s guest received `vector`; false if
    /// it was not outstanding (a duplicate or an invented delivery).
    pub fn delivered(vcpu: usize, vector: u8) -> bool {
        let bit = 1u64 << (vector & 63);
        OUTSTANDING
            .get(vcpu)
            .and_then(|words| words.get(usize::from(vector >> 6)))
            .is_some_and(|w| w.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
    }

    /// Vectors still outstanding on any vCPU.
    pub fn outstanding() -> u32 {
        OUTSTANDING
            .iter()
            .flatten()
            .map(|w| w.load(Ordering::SeqCst).count_ones())
            .sum()
    }

    /// One APIC #HV's worth of the model: two posts to random vCPUs, each
    /// either through the doorbell page (the host; followed by the target's
    /// #HV when NoFurtherSignal was clear) or the IPI mailbox (another vCPU).
    pub(super) fn on_apic_hv() {
        if !ON.load(Ordering::SeqCst) {
            return;
        }
        if IN_ENGINE.load(Ordering::SeqCst) {
            HITS_IN_ENGINE.fetch_add(1, Ordering::SeqCst);
        }
        let (doorbells, shared) = (
            DOORBELLS.load(Ordering::SeqCst),
            SLOTS.load(Ordering::SeqCst),
        );
        // SAFETY: `set`'s contract keeps the pointees alive and only shared
        // until `clear` nulls the pointers; null means off. Only atomics are
        // accessed through them.
        let (Some(doorbells), Some(shared)) =
            (unsafe { doorbells.as_ref() }, unsafe { shared.as_ref() })
        else {
            return;
        };
        let vmpl = VMPL.load(Ordering::Relaxed);
        for _ in 0..2 {
            let r = next_random();
            let vcpu = (r as usize).checked_rem(GUESTS).unwrap_or(0);
            // Vectors 0x30-0xEF: legal for both paths, below the engine's own.
            let vector = 0x30u8.wrapping_add(((r >> 8).wrapping_rem(0xC0)) as u8);
            if !claim(vcpu, vector) {
                continue;
            }
            let (Some(page), Some(slot)) = (doorbells.get(vcpu), shared.get(vcpu)) else {
                unclaim(vcpu, vector);
                continue;
            };
            if (r >> 20) & 1 == 0 {
                if page.host().post_vector(vmpl, vector).is_err() {
                    unclaim(vcpu, vector);
                    continue;
                }
                DOORBELL_POSTS.fetch_add(1, Ordering::SeqCst);
                // The target's #HV, run here: in the SVSM it runs on the target's
                // CPU, wherever that CPU is in its run loop.
                if page.host().raise_no_further_signal() {
                    let events =
                        altinj_kernel::handle_hv(page, slot, altinj_kernel::Vmpl0Tpr::ZERO);
                    if events.vmpl_events != 0 {
                        GUEST_HV_NOTED.fetch_add(1, Ordering::SeqCst);
                    }
                }
            } else {
                // An IPI from another vCPU: a mailbox post; the kick that would
                // follow only hurries the target, whose next before_run drains it.
                let _ = slot.mailbox().post(vector);
                MAILBOX_POSTS.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// The demo's host model: each APIC #HV posts the next VMPL0 vector.
pub mod host_posts {
    use super::{AtomicBool, AtomicU64, DOORBELL, Ordering};

    static ON: AtomicBool = AtomicBool::new(false);
    /// Vectors posted.
    pub static POSTED: AtomicU64 = AtomicU64::new(0);
    /// Sum of the vectors posted.
    pub static POSTED_SUM: AtomicU64 = AtomicU64::new(0);

    /// Turns the posting on or off.
    pub fn set(on: bool) {
        ON.store(on, Ordering::SeqCst);
    }

    pub(super) fn on_apic_hv() {
        if !ON.load(Ordering::SeqCst) {
            return;
        }
        let n = POSTED.load(Ordering::Relaxed);
        let vector = 0x30u8.wrapping_add(n.wrapping_rem(0xC0) as u8);
        // The byte is empty: this handler's `handle_hv` just took the last one.
        if DOORBELL.host().set_vmpl0_vector(vector).is_ok() {
            POSTED.fetch_add(1, Ordering::Relaxed);
            POSTED_SUM.fetch_add(u64::from(vector), Ordering::Relaxed);
            DOORBELL.host().raise_no_further_signal();
        }
    }
}

/// The test-only hypervisor model.
pub mod model {
    use super::{DOORBELL, HV_VECTOR, PostError, cpu, lapic};

    /// Posts `vector` for VMPL0 and, as the host protocol says, raises #HV
    /// synchronously (`int 28`) only if NoFurtherSignal was clear. Returns whether
    /// it signalled.
    pub fn post_and_signal(vector: u8) -> Result<bool, PostError> {
        post(vector)?;
        Ok(signal())
    }

    /// Raises NoFurtherSignal and, if it was clear, #HV with `int 28`.
    pub fn signal() -> bool {
        let signal = DOORBELL.host().raise_no_further_signal();
        if signal {
            cpu::int28();
        }
        signal
    }

    /// Posts `vector` for VMPL0 without signalling (a timer #HV will find it).
    pub fn post(vector: u8) -> Result<(), PostError> {
        DOORBELL.host().set_vmpl0_vector(vector)
    }

    /// Posts an NMI for VMPL0 and signals it synchronously if allowed.
    pub fn post_nmi_and_signal() -> bool {
        DOORBELL.host().post_vmpl0_nmi();
        signal()
    }

    /// Arms the local APIC timer to raise #HV after `ns` nanoseconds (QEMU's APIC
    /// timer counts at 1 GHz with divide-by-1), once or every `ns`.
    pub fn arm_timer(ns: u32, periodic: bool) {
        lapic::start_timer(HV_VECTOR, ns, periodic);
    }

    /// Stops the timer and the handler's extra posting.
    pub fn disarm_timer() {
        lapic::stop_timer();
        super::guests::clear();
        super::host_posts::set(false);
    }

    /// Clears VMPL0's bytes and every descriptor of the doorbell page, VMPL0's
    /// TPR and the shared slot's noted events (between tests).
    pub fn reset_doorbell() {
        use core::sync::atomic::Ordering::SeqCst;
        DOORBELL.vector.store(0, SeqCst);
        DOORBELL.flags.store(0, SeqCst);
        DOORBELL.no_eoi_required.store(0, SeqCst);
        DOORBELL.per_vmpl_events.store(0, SeqCst);
        for vmpl in 1..=3 {
            // Taking the descriptor empties it.
            let _ = DOORBELL.consume(vmpl);
        }
        super::VMPL0_TPR.store(0, SeqCst);
        // Noted per-VMPL events are taken by an engine's before_run only; none
        // runs on SHARED, so a later test reads what `record` counted instead.
    }
}
