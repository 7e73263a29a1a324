//! The #HV (vector 28) logic of the test kernel, and a test-only hypervisor model.
//!
//! In the SVSM the hypervisor posts VMPL0's events to the #HV doorbell page and
//! injects #HV (AMD APM vol. 2 §15.36.16; GHCB spec 56421 "#HV doorbell page").
//! Here the model posts to a static doorbell page with `doorbell`'s host API and
//! raises #HV either synchronously (`int 28`) or asynchronously through the
//! emulated machine's local APIC timer programmed with vector 28, so #HV lands at
//! any instruction boundary where IF = 1 (and on STI when it fired with IF = 0).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use doorbell::DoorbellPage;
use doorbell::host::PostError;

use crate::idt::HV_VECTOR;
use crate::{cpu, lapic};

/// VMPL0's #HV doorbell page (the SVSM's would be the shared page registered with
/// the hypervisor).
pub static DOORBELL: DoorbellPage = DoorbellPage::new();

/// Counters the #HV handler keeps, for the tests.
pub struct HvStats {
    /// Every #HV taken.
    pub hv: AtomicU64,
    /// #HVs delivered by the local APIC (the timer), i.e. with vector 28 in service.
    pub apic_hv: AtomicU64,
    /// Vectors taken from the doorbell page.
    pub vectors: AtomicU64,
    /// Sum of the vectors taken (to check each post was taken exactly once).
    pub vector_sum: AtomicU64,
    /// The last vector taken.
    pub last_vector: AtomicU32,
    /// NMIs taken from the doorbell page.
    pub nmis: AtomicU64,
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
    nmis: AtomicU64::new(0),
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
        lapic::eoi();
    }
}

/// The #HV logic proper. The engine (`kernel` crate) will be called here once it
/// exists; for now this takes VMPL0's own doorbell events, as its first step does.
fn hv_handler_body() {
    // The test kernel runs with TPR 0: every legal vector's class is above it.
    let events = DOORBELL.take_events(0);
    if let Some(vector) = events.vector {
        STATS.vectors.fetch_add(1, Ordering::Relaxed);
        STATS
            .vector_sum
            .fetch_add(u64::from(vector), Ordering::Relaxed);
        STATS
            .last_vector
            .store(u32::from(vector), Ordering::Relaxed);
    }
    if events.nmi {
        STATS.nmis.fetch_add(1, Ordering::Relaxed);
    }
    STATS
        .rejected
        .fetch_add(u64::from(events.rejected), Ordering::Relaxed);
}

/// The test-only hypervisor model.
pub mod model {
    use super::{DOORBELL, HV_VECTOR, PostError, cpu, lapic};

    /// Posts `vector` for VMPL0 and, as the host protocol says, raises #HV
    /// synchronously (`int 28`) only if NoFurtherSignal was clear. Returns whether
    /// it signalled.
    pub fn post_and_signal(vector: u8) -> Result<bool, PostError> {
        post(vector)?;
        let signal = DOORBELL.host().raise_no_further_signal();
        if signal {
            cpu::int28();
        }
        Ok(signal)
    }

    /// Posts `vector` for VMPL0 without signalling (a timer #HV will find it).
    pub fn post(vector: u8) -> Result<(), PostError> {
        DOORBELL.host().set_vmpl0_vector(vector)
    }

    /// Posts an NMI for VMPL0 and signals it synchronously if allowed.
    pub fn post_nmi_and_signal() -> bool {
        let host = DOORBELL.host();
        host.post_vmpl0_nmi();
        let signal = host.raise_no_further_signal();
        if signal {
            cpu::int28();
        }
        signal
    }

    /// Arms the local APIC timer to raise #HV after `ns` nanoseconds (QEMU's APIC
    /// timer counts at 1 GHz with divide-by-1), once or every `ns`.
    pub fn arm_timer(ns: u32, periodic: bool) {
        lapic::start_timer(HV_VECTOR, ns, periodic);
    }

    /// Stops the timer.
    pub fn disarm_timer() {
        lapic::stop_timer();
    }

    /// Clears VMPL0's bytes of the doorbell page (between tests).
    pub fn reset_doorbell() {
        use core::sync::atomic::Ordering::SeqCst;
        DOORBELL.vector.store(0, SeqCst);
        DOORBELL.flags.store(0, SeqCst);
        DOORBELL.no_eoi_required.store(0, SeqCst);
        DOORBELL.per_vmpl_events.store(0, SeqCst);
    }
}
