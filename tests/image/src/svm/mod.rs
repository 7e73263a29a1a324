//! Guests on a real CPU: the engine drives QEMU's SVM (issue 12; see
//! docs/testing.md, "The SVM harness").
//!
//! - `hw`: SVM enable, VMCB layout, MSR permission map, VMRUN;
//! - `vmcb`: the VMCB behind `altinj_vmsa::VmsaAccess` (BUSY beside it) and the
//!   harness fix-ups of QEMU's quirks;
//! - `guest`: the guest programs, their IDT and handlers (guest ledger);
//! - `harness`: the run loop, platform, exits, #HV through the real LAPIC;
//! - `devices`: seeded device posters; `ledger`, `report`: the verdict;
//! - `quirks`: in-kernel tests pinning QEMU's SVM quirks.
//!
//! Command line `svm PROGRAM VCPUS SEED ROUNDS [broken]` runs one program
//! (`tests/image/run-svm.sh`); `svm all SEEDS` runs every program over
//! seeds 1..=SEEDS.

pub mod devices;
pub mod guest;
pub mod handback;
pub mod harness;
pub mod host;
pub mod hw;
pub mod ledger;
pub mod npt;
pub mod programs;
pub mod quirks;
pub mod report;
pub mod smp;
pub mod vmcb;

use crate::runner;
use crate::serial::println;
use guest::Program;
use harness::RunConfig;

/// Default rounds per program (ticks, hops per vCPU, posts per vCPU, ...).
pub fn default_rounds(program: Program) -> u32 {
    match program {
        Program::Timer => 40,
        Program::Ipi => 10,
        Program::Device => 40,
        Program::Tpr => 10,
        Program::Nested => 20,
        Program::Deadline => 40,
        Program::Xapic => 20,
        Program::Handback => 10,
    }
}

/// Enables SVM once and builds the shared tables.
pub fn init() -> Result<hw::SvmFeatures, &'static str> {
    let features = hw::enable()?;
    hw::init_msrpm();
    guest::init_idt();
    Ok(features)
}

/// One run: one vCPU per AP when there are enough APs (the BSP then plays
/// the devices), else every vCPU round-robin on the BSP.
fn run(aps: u32, cfg: RunConfig) -> report::Report {
    if aps as usize >= cfg.vcpus {
        smp::run(cfg)
    } else {
        harness::run(cfg)
    }
}

fn usage() -> ! {
    println!(
        "usage: svm PROGRAM [VCPUS [SEED [ROUNDS [broken]]]] | svm all [SEEDS [VCPUS]]\n\
         programs: timer deadline ipi device tpr nested xapic handback"
    );
    runner::exit(false)
}

/// The `svm` command line mode; exits QEMU with the verdict.
pub fn main(args: &str) -> ! {
    let features = match init() {
        Ok(f) => f,
        Err(e) => runner::fail(format_args!("svm: {e}")),
    };
    let aps = smp::start_aps();
    println!("svm: SVM on, {features:?}; {aps} application processors up");
    let mut words = args.split_whitespace();
    let what = words.next().unwrap_or("all");
    let mut num = |default: u64| {
        words
            .next()
            .map_or(Some(default), |w| w.parse::<u64>().ok())
    };
    if what == "all" {
        let (Some(seeds), Some(vcpus)) = (num(3), num(4)) else {
            usage()
        };
        let mut failed = 0u32;
        let mut runs = 0u32;
        for program in Program::ALL {
            for seed in 1..=seeds {
                let report = run(
                    aps,
                    RunConfig {
                        program,
                        vcpus: vcpus as usize,
                        seed,
                        rounds: default_rounds(program),
                        break_recall: false,
                        limit_ms: 20_000,
                    },
                );
                report.print();
                runs = runs.saturating_add(1);
                if !report.pass {
                    failed = failed.saturating_add(1);
                }
            }
        }
        println!("svm: {runs} runs, {failed} failed");
        runner::exit(failed == 0)
    }
    let Some(program) = Program::parse(what) else {
        usage()
    };
    let (Some(vcpus), Some(seed), Some(rounds)) =
        (num(4), num(1), num(u64::from(default_rounds(program))))
    else {
        usage()
    };
    let broken = words.next() == Some("broken");
    let report = run(
        aps,
        RunConfig {
            program,
            vcpus: vcpus as usize,
            seed,
            rounds: rounds as u32,
            break_recall: broken,
            limit_ms: if broken { 5_000 } else { 20_000 },
        },
    );
    report.print();
    runner::exit(report.pass)
}
