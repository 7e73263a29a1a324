//! Loom models of the doorbell protocol (spec §3): a model hypervisor posts
//! with the `host` poster while VMPL0 consumes concurrently. Every posted
//! item must come back exactly once: never lost, never duplicated.
//!
//! Run with `make loom` (`cargo test --release -p altinj-doorbell --features loom --test loom`).
#![cfg(feature = "loom")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_doorbell::host::PostError;
use altinj_doorbell::{DoorbellPage, HandoffState, PendingInterrupts};
use loom::sync::Arc;
use loom::thread;

/// Descriptor all models post into (the guest's usual VMPL).
const VMPL: u8 = 2;

/// Concurrent VMPL0 passes while the host thread runs.
const PASSES: usize = 2;

fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    // A failing assertion must not capture a backtrace (RUST_BACKTRACE=1)
    // on loom's small coroutine stacks: that overflows and hangs the run.
    static QUIET_PANICS: std::sync::Once = std::sync::Once::new();
    QUIET_PANICS.call_once(|| std::panic::set_hook(Box::new(|info| eprintln!("{info}"))));
    let mut builder = loom::model::Builder::new();
    // Bounded so `make loom` stays fast; LOOM_MAX_PREEMPTIONS overrides it.
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Everything VMPL0 has taken so far.
#[derive(Default, Debug)]
struct Seen {
    vectors: [u32; 8],
    level: Option<u8>,
    nmi: u32,
    mc: u32,
}

impl Seen {
    /// Adds one pass's result, failing on anything returned a second time.
    fn add(&mut self, taken: &PendingInterrupts) {
        assert_eq!(taken.rejected, 0, "a legal post was rejected");
        for (seen, &new) in self.vectors.iter_mut().zip(taken.vectors.iter()) {
            assert_eq!(*seen & new, 0, "vector returned twice");
            *seen |= new;
        }
        if let Some(level) = taken.level {
            assert!(self.level.is_none(), "level vector returned twice");
            self.level = Some(level);
        }
        self.nmi += u32::from(taken.nmi);
        self.mc += u32::from(taken.mc);
    }

    fn has(&self, vector: u8) -> bool {
        self.vectors[usize::from(vector >> 5)] & (1 << (vector & 31)) != 0
    }

    fn count(&self) -> u32 {
        self.vectors.iter().map(|w| w.count_ones()).sum()
    }
}

/// VMPL0 consumes `PASSES` times while `host` runs, then once more after it.
fn run<R: Send + 'static>(
    host: impl FnOnce(&DoorbellPage) -> R + Send + 'static,
) -> (Arc<DoorbellPage>, Seen, R) {
    let page = Arc::new(DoorbellPage::new());
    let host_page = page.clone();
    let host = thread::spawn(move || host(&host_page));
    let mut seen = Seen::default();
    for _ in 0..PASSES {
        seen.add(&page.consume(VMPL).unwrap());
    }
    let result = host.join().unwrap();
    seen.add(&page.consume(VMPL).unwrap());
    (page, seen, result)
}

fn assert_descriptor_empty(page: &DoorbellPage) {
    let descriptor = page.descriptor(VMPL).unwrap();
    assert_eq!(
        descriptor.status.load(loom::sync::atomic::Ordering::SeqCst),
        0
    );
    for word in &descriptor.irr {
        assert_eq!(word.load(loom::sync::atomic::Ordering::SeqCst), 0);
    }
}

#[test]
fn single_and_multiple_vectors_come_back_exactly_once() {
    model(|| {
        let (page, seen, ()) = run(|page| {
            let host = page.host();
            host.post_vector(VMPL, 0x41).unwrap(); // status byte if empty
            host.post_vector(VMPL, 0x62).unwrap(); // irr + multiple-vectors
            host.post_vector(VMPL, 0x83).unwrap(); // irr again, racing the scan
            host.post_vector(VMPL, 31).unwrap(); // byte or status bit 31
        });
        assert!(seen.has(0x41) && seen.has(0x62) && seen.has(0x83) && seen.has(31));
        assert_eq!(seen.count(), 4);
        assert_descriptor_empty(&page);
    });
}

#[test]
fn level_vector_edge_vector_and_nmi_come_back_exactly_once() {
    model(|| {
        let (page, seen, ()) = run(|page| {
            let host = page.host();
            host.post_level(VMPL, 0x90).unwrap(); // the byte is empty: first post
            host.post_vector(VMPL, 0x41).unwrap();
            host.post_nmi(VMPL).unwrap();
        });
        assert_eq!(seen.level, Some(0x90));
        assert!(seen.has(0x41));
        assert_eq!(seen.count(), 1);
        assert_eq!(seen.nmi, 1);
        assert_descriptor_empty(&page);
    });
}

#[test]
fn level_post_racing_an_edge_vector_is_posted_or_refused_never_lost() {
    model(|| {
        let (page, seen, level_posted) = run(|page| {
            let host = page.host();
            host.post_vector(VMPL, 0x41).unwrap();
            // Busy while 0x41 still occupies the byte; a real host retries
            // later, so the model only expects it back if it was accepted.
            let level = host.post_level(VMPL, 0x90);
            assert!(matches!(level, Ok(()) | Err(PostError::Busy)));
            host.post_mc(VMPL).unwrap();
            level.is_ok()
        });
        assert!(seen.has(0x41));
        assert_eq!(seen.count(), 1);
        assert_eq!(seen.level, level_posted.then_some(0x90));
        assert_eq!(seen.mc, 1);
        assert_descriptor_empty(&page);
    });
}

/// VMPL0 consumes a descriptor only when byte 0x03 flags it, as the #HV
/// handler does: the flag protocol must strand nothing.
#[test]
fn flagged_consumption_strands_nothing() {
    model(|| {
        let page = Arc::new(DoorbellPage::new());
        let host_page = page.clone();
        let host = thread::spawn(move || {
            let host = host_page.host();
            host.post_vector(VMPL, 0x41).unwrap();
            host.post_vector(VMPL, 0x62).unwrap();
            host.raise_no_further_signal();
        });
        let mut seen = Seen::default();
        let pass = |seen: &mut Seen| {
            let events = page.take_events(0);
            assert_eq!(events.rejected, 0);
            if events.vmpl_posted(VMPL) {
                seen.add(&page.consume(VMPL).unwrap());
            }
        };
        pass(&mut seen);
        host.join().unwrap();
        // The final pass stands for the one the host's #HV (or the one still
        // outstanding under NoFurtherSignal) triggers.
        pass(&mut seen);
        assert!(seen.has(0x41) && seen.has(0x62));
        assert_eq!(seen.count(), 2);
        assert_descriptor_empty(&page);
    });
}

#[test]
fn vmpl0_vector_and_nmi_are_taken_exactly_once() {
    model(|| {
        let page = Arc::new(DoorbellPage::new());
        let host_page = page.clone();
        let host = thread::spawn(move || {
            let host = host_page.host();
            host.set_vmpl0_vector(0x40).unwrap();
            host.post_vmpl0_nmi();
            host.raise_no_further_signal();
        });
        let (mut vectors, mut nmis) = (0, 0);
        for _ in 0..PASSES {
            let events = page.take_events(0);
            vectors += u32::from(events.vector == Some(0x40));
            nmis += u32::from(events.nmi);
        }
        host.join().unwrap();
        let events = page.take_events(0);
        vectors += u32::from(events.vector == Some(0x40));
        nmis += u32::from(events.nmi);
        assert_eq!((vectors, nmis), (1, 1));
        assert_eq!(page.vector.load(loom::sync::atomic::Ordering::SeqCst), 0);
        assert_eq!(page.flags.load(loom::sync::atomic::Ordering::SeqCst), 0);
    });
}

/// Handoff merges with concurrent host posts instead of overwriting them.
#[test]
fn handoff_keeps_concurrent_host_posts() {
    model(|| {
        let page = Arc::new(DoorbellPage::new());
        let host_page = page.clone();
        let host = thread::spawn(move || {
            let host = host_page.host();
            host.post_vector(VMPL, 0x41).unwrap();
            host.post_vector(VMPL, 0x62).unwrap();
        });
        let mut state = HandoffState::default();
        state.irr[2] = 1 << 3; // vector 0x43
        assert_eq!(page.descriptor(VMPL).unwrap().hand_off(&state), 0);
        host.join().unwrap();
        let mut seen = Seen::default();
        seen.add(&page.consume(VMPL).unwrap());
        assert!(seen.has(0x41) && seen.has(0x62) && seen.has(0x43));
        assert_eq!(seen.count(), 3);
    });
}
