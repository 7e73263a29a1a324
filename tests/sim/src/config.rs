//! How one simulation is set up ([`Config`]) and the deliberate faults the
//! checks' own tests inject ([`Sabotage`]).

use alloc::{format, string::String};

use crate::scenario::Scenario;

/// How one simulation is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The scenario.
    pub scenario: Scenario,
    /// Number of vCPUs (1..=512).
    pub vcpus: usize,
    /// Seed of the one random generator.
    pub seed: u64,
    /// Scheduler steps of the main phase (a drain phase follows).
    pub steps: u64,
    /// Record a trace (see [`Trace`]).
    pub trace: bool,
    /// Show a progress bar (only honoured on a terminal).
    pub progress: bool,
    /// Leave INTR vectors 0-31 out of the garbage EXITINTINFO values.
    pub no_forged_intr: bool,
    /// A deliberate fault in the hardware model, to show the checks catch
    /// it (tests only).
    pub sabotage: Option<Sabotage>,
    /// Test-only stand-in for the fix of issue 9 path 1: the host model
    /// clears SEV_FEATURES.AlternateInjection itself when disable-AI
    /// succeeds, so the other hand-back checks can be seen on an engine
    /// that leaves it set.
    pub host_clears_ai: bool,
}

/// Deliberate hardware-model faults for the checker's own tests.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sabotage {
    /// Now and then an EVENTINJ interrupt is consumed but never delivered.
    DropEventInj,
    /// Now and then an EVENTINJ interrupt is delivered twice.
    DoubleDeliver,
    /// V_IRQ is taken without comparing V_INTR_PRIO with V_TPR.
    IgnoreVTpr,
    /// BUSY is left set at some VMRUNs VMPL0 asked for.
    BusyAtVmrun,
    /// VMPL0 writes EVENTINJ back after `before_run` cleared BUSY, as an
    /// engine that edits a runnable VMSA would (BUSY audit).
    WriteAfterBusyClear,
    /// The hand-back leaves SEV_FEATURES.AlternateInjection set, as issue 9
    /// path 1 did (the host model's check).
    KeepAlternateInjection,
    /// After a failed disable-AI the descriptor keeps the writeback's ISR
    /// words, as issue 9 path 5 did (`handback-fail`'s checks).
    StaleIsrAfterFailedDisableAi,
    /// The reopen wipes the half-done post's PIR word, as the plain stores
    /// of issue 9 path 7 did (`recreate`; the ledger).
    ReopenWipesPost,
    /// The APIC disable sends no specific EOI for the host level vectors in
    /// flight, as issue 9 path 10 did (`apic-disable`; the level EOI check).
    NoEoiAtApicDisable,
}

impl Config {
    /// `scenario` on `vcpus` vCPUs from `seed` for `steps` steps, no trace,
    /// no progress bar, every hostile behaviour of the scenario on.
    pub fn new(scenario: Scenario, vcpus: usize, seed: u64, steps: u64) -> Self {
        Self {
            scenario,
            vcpus,
            seed,
            steps,
            trace: false,
            progress: false,
            no_forged_intr: false,
            sabotage: None,
            host_clears_ai: false,
        }
    }

    /// The table's title: `SCENARIO (N vCPUs, seed S, K steps)`, as the CLI
    /// and the test image's demo print it.
    pub fn title(&self) -> String {
        format!(
            "{} ({} vCPUs, seed {}, {} steps)",
            self.scenario, self.vcpus, self.seed, self.steps
        )
    }
}
