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
//!
//! The library is `no_std` + `alloc` without its default `std` feature, so
//! the QEMU test image (`tests/image`, `demo` mode) runs the same models and
//! prints the same table. `std` adds only what needs an OS: [`run`] catches
//! panics and measures wall time, and the binary (progress bar, trace file)
//! requires it.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod apic_disable;
pub mod config;
pub mod cpu;
pub mod fuzzing;
pub mod guest;
pub mod guest_calls;
pub mod guest_ops;
pub mod handback_fail;
pub mod host;
pub mod hostile_host;
pub mod instances;
pub mod kvm;
pub mod ledger;
pub mod platform;
pub mod recreate;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod trace;
pub mod world;

pub use report::Stats;
pub use scenario::{Profile, Scenario};
pub use world::{Config, Sabotage, Sim};

use alloc::string::String;

/// What one simulation produced.
#[derive(Debug)]
pub struct Outcome {
    /// The figures and the violations.
    pub stats: Stats,
    /// The trace JSON, when asked for.
    pub trace: Option<String>,
}

impl Outcome {
    fn of(sim: Sim) -> Self {
        let now = sim.now;
        Self {
            stats: sim.stats,
            trace: sim.trace.map(|t| t.finish(now)),
        }
    }
}

/// Runs `config` to the end (main phase, drain, final checks). A panic
/// anywhere (engine included) is caught and reported as a violation.
/// `progress(steps_done)` is called now and then.
#[cfg(feature = "std")]
pub fn run(config: Config, progress: impl FnMut(u64)) -> Outcome {
    use alloc::string::ToString;

    let started = std::time::Instant::now();
    let mut sim = Sim::new(config);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim.run(progress)));
    if let Err(payload) = result {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown payload".to_string());
        sim.violation(0, alloc::format!("panic: {what}"));
    }
    sim.stats.wall_seconds = started.elapsed().as_secs_f64();
    Outcome::of(sim)
}

/// Runs `config` to the end (main phase, drain, final checks), as the `std`
/// version does, but without an OS: a panic is not caught (it reaches the
/// program's panic handler, which the test image turns into a failure) and
/// `stats.wall_seconds` stays 0 for the caller to fill from its own clock.
/// `progress(steps_done)` is called now and then.
#[cfg(not(feature = "std"))]
pub fn run(config: Config, progress: impl FnMut(u64)) -> Outcome {
    let mut sim = Sim::new(config);
    sim.run(progress);
    Outcome::of(sim)
}
