//! The demo mode (`qemu -append "demo [SCENARIO [VCPUS [SEED [STEPS]]]]"`):
//! runs the simulator (`tests/sim`, built without `std`) inside the test
//! kernel and prints the same table as the host CLI (`cargo run -p sim`),
//! through the serial console.
//!
//! The simulator allocates: a global allocator (`linked_list_allocator`)
//! serves it from a static heap in .bss. Meanwhile the real #HV path stays
//! alive: the local APIC timer raises #HV (vector 28) every
//! [`HV_PERIOD_NS`], the handler runs `altinj_kernel::handle_hv` on VMPL0's doorbell
//! page, and each timer #HV posts the next VMPL0 vector (`hv::host_posts`),
//! which the following one takes. A line after the table gives the counts.
//!
//! QEMU exits with the pass status (33) only when the simulation found no
//! invariant violation and every VMPL0 vector posted by the #HV model was
//! taken exactly once.

use alloc::string::{String, ToString};
use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

use linked_list_allocator::LockedHeap;
use sim::{Config, Scenario};

use crate::hv::{self, STATS, host_posts, model};
use crate::serial::{print, println};
use crate::{cpu, runner, time};

/// Size of the static heap.
pub const HEAP_SIZE: usize = 32 << 20;

/// Period of the timer #HV while the simulation runs.
pub const HV_PERIOD_NS: u32 = 200_000;

/// Defaults: a short run that finishes well under a minute under TCG.
const DEFAULT_SCENARIO: Scenario = Scenario::IdleTimer;
const DEFAULT_VCPUS: usize = 4;
const DEFAULT_SEED: u64 = 1;
const DEFAULT_STEPS: u64 = 200_000;

const USAGE: &str = "usage: demo [SCENARIO [VCPUS [SEED [STEPS]]]]\n\
scenarios: idle-timer ipi-storm device-level boot hostile-hv hostile-guest deregister";

core::arch::global_asm!(
    // The heap, page-aligned in .bss (zeroed at boot, not stored in the ELF).
    ".section .bss.demo_heap, \"aw\", @nobits",
    ".balign 4096",
    ".global demo_heap",
    "demo_heap: .skip {size}",
    ".text",
    size = const HEAP_SIZE,
);

static HEAP: LockedHeap = LockedHeap::empty();

/// Bytes allocated now and at most, for the figure after the table.
static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `HEAP` with a peak-usage count.
struct CountingHeap;

// SAFETY: forwards to `LockedHeap`'s `GlobalAlloc` implementation unchanged;
// the counters only observe the sizes.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let ptr = unsafe { HEAP.alloc(layout) };
        if !ptr.is_null() {
            let now = IN_USE
                .fetch_add(layout.size(), Ordering::Relaxed)
                .saturating_add(layout.size());
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { HEAP.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingHeap = CountingHeap;

/// Hands the static heap to the allocator (once: later calls do nothing).
pub fn init_heap() {
    static DONE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    unsafe extern "C" {
        static mut demo_heap: u8;
    }
    let bottom = &raw mut demo_heap;
    // SAFETY: `demo_heap` is HEAP_SIZE bytes of .bss reserved above for the
    // allocator alone, identity-mapped (first GiB) and never otherwise used;
    // `DONE` makes this run once.
    unsafe { HEAP.lock().init(bottom, HEAP_SIZE) };
}

/// Parses `SCENARIO VCPUS SEED STEPS` (each optional, in order).
fn parse(args: &str) -> Result<Config, String> {
    let mut words = args.split_whitespace();
    let scenario = match words.next() {
        Some(name) => name.parse::<Scenario>()?,
        None => DEFAULT_SCENARIO,
    };
    let mut number = |what: &str, default: u64| -> Result<u64, String> {
        match words.next() {
            Some(w) => w.parse::<u64>().map_err(|e| alloc::format!("{what}: {e}")),
            None => Ok(default),
        }
    };
    let vcpus = number("VCPUS", DEFAULT_VCPUS as u64)?;
    let seed = number("SEED", DEFAULT_SEED)?;
    let steps = number("STEPS", DEFAULT_STEPS)?;
    let vcpus = usize::try_from(vcpus)
        .ok()
        .filter(|n| (1..=512).contains(n))
        .ok_or_else(|| "VCPUS must be 1..=512".to_string())?;
    if words.next().is_some() {
        return Err("too many arguments".to_string());
    }
    Ok(Config::new(scenario, vcpus, seed, steps))
}

/// Runs the demo for `args` (the command line after `demo`) and exits QEMU.
pub fn run(args: &str) -> ! {
    init_heap();
    let config = match parse(args) {
        Ok(config) => config,
        Err(e) => {
            println!("demo: {e}\n{USAGE}");
            runner::exit(false)
        }
    };
    let title = config.title();
    println!(
        "demo: simulating {title} in the test kernel; #HV timer every {} us",
        HV_PERIOD_NS / 1000
    );

    model::reset_doorbell();
    let before = (
        STATS.hv.load(Ordering::SeqCst),
        STATS.apic_hv.load(Ordering::SeqCst),
        STATS.vectors.load(Ordering::SeqCst),
        STATS.vector_sum.load(Ordering::SeqCst),
    );
    host_posts::set(true);
    model::arm_timer(HV_PERIOD_NS, true);
    let start = cpu::rdtsc();
    cpu::sti();
    let mut outcome = sim::run(config, |_| {});
    cpu::cli();
    let wall = time::seconds_since(start);
    model::disarm_timer();
    // The last timer #HV's post is taken by one more entry.
    cpu::int28();
    outcome.stats.wall_seconds = wall;

    print!("{}", outcome.stats.report(&title));
    let hv_entries = STATS.hv.load(Ordering::SeqCst).saturating_sub(before.0);
    let timer_hv = STATS
        .apic_hv
        .load(Ordering::SeqCst)
        .saturating_sub(before.1);
    let taken = STATS
        .vectors
        .load(Ordering::SeqCst)
        .saturating_sub(before.2);
    let taken_sum = STATS
        .vector_sum
        .load(Ordering::SeqCst)
        .saturating_sub(before.3);
    let posted = host_posts::POSTED.load(Ordering::SeqCst);
    let posted_sum = host_posts::POSTED_SUM.load(Ordering::SeqCst);
    println!(
        "  {:<44} {:>14}",
        "real #HV (vector 28) via altinj_kernel::handle_hv",
        alloc::format!("{hv_entries} ({timer_hv} from the LAPIC timer)")
    );
    println!(
        "  {:<44} {:>14}",
        "  VMPL0 vectors posted / taken",
        alloc::format!("{posted} / {taken}")
    );
    println!(
        "  {:<44} {:>14}",
        "heap peak / size (KiB)",
        alloc::format!(
            "{} / {}",
            PEAK.load(Ordering::Relaxed).div_ceil(1024),
            HEAP_SIZE / 1024
        )
    );
    let hv_ok = taken == posted
        && taken_sum == posted_sum
        && hv::DOORBELL.vector.load(Ordering::SeqCst) == 0;
    if !hv_ok {
        println!("FAILED: the #HV path lost or duplicated a VMPL0 vector");
    }
    if outcome.stats.violations != 0 {
        println!("FAILED: replay with the same --scenario/--vcpus/--seed/--steps");
    }
    runner::exit(outcome.stats.violations == 0 && hv_ok)
}
