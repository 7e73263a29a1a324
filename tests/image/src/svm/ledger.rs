//! The two ledgers the verdict compares, per vCPU and per vector instance.
//!
//! - Host side ([`HOST`]): every instance the "hypervisor and devices"
//!   had accepted for a vCPU: a post into its doorbell page, an IPI whose
//!   ICR write the engine accepted, a timer expiry that set a new IRR bit,
//!   an NMI.
//! - Guest side ([`GUEST`]): what the guest's IDT actually saw, written by
//!   the guest's own handlers (guest code of this image, same memory).
//!
//! Posters only post an instance that is not outstanding (claim bit), so
//! nothing coalesces and the counts are exact: a delivery whose claim bit is
//! clear is a duplicate, a claim left at the end is a loss.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Most guest vCPUs a run has.
pub const MAX_VCPUS: usize = 4;

/// Index of NMI and #GP in the per-vector tables (exception vectors).
pub const NMI: usize = 2;
pub const GP: usize = 13;

/// One side's counts: `[vcpu][vector]`.
pub struct Counts(pub [[AtomicU32; 256]; MAX_VCPUS]);

impl Counts {
    const fn new() -> Self {
        Self([const { [const { AtomicU32::new(0) }; 256] }; MAX_VCPUS])
    }

    /// Adds one instance of `vector` on `vcpu`.
    pub fn add(&self, vcpu: usize, vector: usize) {
        if let Some(c) = self.0.get(vcpu).and_then(|v| v.get(vector)) {
            c.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Instances of `vector` on `vcpu`.
    pub fn get(&self, vcpu: usize, vector: usize) -> u32 {
        self.0
            .get(vcpu)
            .and_then(|v| v.get(vector))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    /// Instances on `vcpu` of every vector in `range`.
    pub fn sum(&self, vcpu: usize, range: core::ops::Range<usize>) -> u64 {
        range.map(|v| u64::from(self.get(vcpu, v))).sum()
    }

    fn clear(&self) {
        self.0
            .iter()
            .flatten()
            .for_each(|c| c.store(0, Ordering::SeqCst));
    }
}

/// Accepted instances (host side).
pub static HOST: Counts = Counts::new();
/// Received instances (guest IDT).
pub static GUEST: Counts = Counts::new();

/// Outstanding claims of posted vectors: bit v of word v / 64, and NMI as
/// vector 2.
static OUTSTANDING: [[AtomicU64; 4]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 4] }; MAX_VCPUS];
/// TSC of each outstanding post, for the request-to-handler latency.
static POSTED_AT: [[AtomicU64; 256]; MAX_VCPUS] =
    [const { [const { AtomicU64::new(0) }; 256] }; MAX_VCPUS];

/// Deliveries of claimed vectors that found no claim (duplicates).
pub static DUPLICATES: AtomicU64 = AtomicU64::new(0);
/// Guest-side rule violations (TPR, EOI order, nesting), with the first.
pub static VIOLATIONS: AtomicU64 = AtomicU64::new(0);
pub static FIRST_VIOLATION: AtomicU64 = AtomicU64::new(0);
/// Longest post-to-guest-handler latency seen, in TSC ticks.
pub static MAX_LATENCY: AtomicU64 = AtomicU64::new(0);
/// Sum and count of latencies.
pub static LATENCY_SUM: AtomicU64 = AtomicU64::new(0);
pub static LATENCY_N: AtomicU64 = AtomicU64::new(0);

fn word(vcpu: usize, vector: usize) -> Option<(&'static AtomicU64, u64)> {
    let w = OUTSTANDING.get(vcpu)?.get(vector / 64)?;
    Some((w, 1u64 << (vector % 64)))
}

/// Claims `vector` on `vcpu` for a post at TSC `now`; false when one is
/// still outstanding (the caller skips the post).
pub fn claim(vcpu: usize, vector: usize, now: u64) -> bool {
    let Some((w, bit)) = word(vcpu, vector) else {
        return false;
    };
    if w.fetch_or(bit, Ordering::SeqCst) & bit != 0 {
        return false;
    }
    if let Some(at) = POSTED_AT.get(vcpu).and_then(|v| v.get(vector)) {
        at.store(now, Ordering::SeqCst);
    }
    true
}

/// Gives a claim back (the post failed).
pub fn unclaim(vcpu: usize, vector: usize) {
    if let Some((w, bit)) = word(vcpu, vector) {
        w.fetch_and(!bit, Ordering::SeqCst);
    }
}

/// Whether any claim is outstanding on `vcpu`.
pub fn outstanding_on(vcpu: usize) -> bool {
    OUTSTANDING
        .get(vcpu)
        .is_some_and(|words| words.iter().any(|w| w.load(Ordering::SeqCst) != 0))
}

/// Claims still outstanding on any vCPU.
pub fn outstanding_total() -> u32 {
    OUTSTANDING
        .iter()
        .flatten()
        .map(|w| w.load(Ordering::SeqCst).count_ones())
        .sum()
}

/// Called by the guest's handler for a claimed vector at guest TSC `now`:
/// clears the claim and records the latency; a delivery without a claim
/// counts as a duplicate.
pub fn delivered(vcpu: usize, vector: usize, now: u64) {
    let Some((w, bit)) = word(vcpu, vector) else {
        return;
    };
    if w.fetch_and(!bit, Ordering::SeqCst) & bit == 0 {
        DUPLICATES.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let posted = POSTED_AT
        .get(vcpu)
        .and_then(|v| v.get(vector))
        .map_or(now, |a| a.load(Ordering::SeqCst));
    let latency = now.saturating_sub(posted);
    MAX_LATENCY.fetch_max(latency, Ordering::SeqCst);
    LATENCY_SUM.fetch_add(latency, Ordering::SeqCst);
    LATENCY_N.fetch_add(1, Ordering::SeqCst);
}

/// A guest-side rule violation (`code` identifies it: vCPU << 16 | what << 8 | vector).
pub fn violation(code: u64) {
    if VIOLATIONS.fetch_add(1, Ordering::SeqCst) == 0 {
        FIRST_VIOLATION.store(code, Ordering::SeqCst);
    }
}

/// Empties both ledgers and every claim (before a run).
pub fn reset() {
    HOST.clear();
    GUEST.clear();
    OUTSTANDING
        .iter()
        .flatten()
        .for_each(|w| w.store(0, Ordering::SeqCst));
    for s in [
        &DUPLICATES,
        &VIOLATIONS,
        &FIRST_VIOLATION,
        &MAX_LATENCY,
        &LATENCY_SUM,
        &LATENCY_N,
    ] {
        s.store(0, Ordering::SeqCst);
    }
}
