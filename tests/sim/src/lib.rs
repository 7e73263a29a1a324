//! End-to-end simulator of SEV-SNP Alternate Injection with the real
//! injection engine (`kernel`) in the loop.
//!
//! Models around the engine (see `docs/simulator.md`):
//! - [`cpu`]: VMPL0's run loop calling the engine, the hardware's VMRUN for
//!   an AI VMSA, and the guest's execution;
//! - [`host`]: the hypervisor (KVM with planes): doorbell posts, #HV,
//!   kicks, specific EOI, disable-AI and its own APIC afterwards, an IOAPIC
//!   level source, devices, timers, and its hostile behaviours;
//! - [`guest`]: the guest OS of each vCPU;
//! - [`world`]: the machine and the seeded discrete-event scheduler;
//! - [`ledger`], [`report`], [`trace`]: the checks and the output.
//!
//! [`run`] is the whole simulation for one configuration.
// A std test tool, not SVSM code: the workspace's no-panic arithmetic and
// indexing lints guard hostile input in the no_std crates. Here indexing of
// fixed-size tables by u8 vectors and float formatting of figures are the
// clear way to write it; every value the engine sees still comes through
// its own checked API.

pub mod cpu;
pub mod fuzzing;
pub mod guest;
pub mod host;
pub mod ledger;
pub mod platform;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod trace;
pub mod world;

pub use report::Stats;
pub use scenario::{Profile, Scenario};
pub use world::{Config, Sabotage, Sim};

/// What one simulation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The figures and the violations.
    pub stats: Stats,
    /// The trace JSON, when asked for.
    pub trace: Option<String>,
}

/// Runs `config` to the end (main phase, drain, final checks). A panic
/// anywhere (engine included) is caught and reported as a violation.
/// `progress(steps_done)` is called now and then.
pub fn run(config: Config, progress: impl FnMut(u64)) -> Outcome {
    let started = std::time::Instant::now();
    let mut sim = Sim::new(config);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run(progress)));
    if let Err(payload) = result {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".to_string());
        sim.violation(0, format!("panic: {what}"));
    }
    sim.stats.wall_seconds = started.elapsed().as_secs_f64();
    let now = sim.now;
    Outcome {
        stats: sim.stats,
        trace: sim.trace.map(|t| t.finish(now)),
    }
}
