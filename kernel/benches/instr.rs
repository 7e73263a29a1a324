//! Instructions per operation on the hot paths, counted with callgrind
//! (`make bench-instr`, `tests/perf/bench-instr.sh`).
//!
//! Each path runs inside its own `#[inline(never)]` function `measure_*`,
//! called `N` times; the untimed set-up between calls (re-posting, EOI,
//! drains) runs outside it. The script runs this binary under
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect=...`
//! with collection on inside the measured function only, so the total it
//! reports divided by `N` is the instructions of one operation (the call's
//! own `ret` included). Instruction counts repeat exactly on a busy
//! machine, unlike times.
//!
//! `instr <path> <N>` runs one path; `instr ghcb` prints the GHCB (#HV IPI)
//! calls per ICR write of the broadcast, counted by the platform below;
//! `instr` alone (as `cargo bench` runs it) checks every path once.
//!
//! Set-up as the comparison: 64 vCPUs in x2APIC mode, the GHCB
//! calls stubbed (a counter increment).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

mod common;

use std::hint::black_box;
use std::sync::atomic::AtomicU8;

use altinj_apic::{LocalApic, Trigger};
use altinj_doorbell::DoorbellPage;
use altinj_kernel::protocol::{ApicCall, CallOutcome, CallResult};
use altinj_kernel::{Env, Fabric, VcpuEngine, VcpuShared, VmShared};
use altinj_vmsa::{EventInj, ExitCode, RFLAGS_IF, VmsaAccess, VmsaPage};
use common::{CountingPlatform, VMPL, X2APIC_BASE, config};

const VCPUS: usize = 64;
/// A host device vector.
const HOST_VECTOR: u8 = 0x41;
/// Linux's reschedule IPI vector.
const IPI_VECTOR: u64 = 0xFD;
/// Linux's call-function IPI vector (what a broadcast usually carries).
const BROADCAST_VECTOR: u64 = 0xFC;
/// ICR: fixed, all excluding self (shorthand 11b in bits 19:18).
const BROADCAST_ICR: u64 = (3 << 18) | BROADCAST_VECTOR;

type E<'a> = Env<'a, CountingPlatform>;

/// An engine in x2APIC mode, software-enabled, every host vector allowed.
fn engine(i: usize, env: &E<'_>, _vmsa: &mut VmsaPage) -> VcpuEngine {
    let mut e = VcpuEngine::new(config(i), env.fabric).unwrap();
    let base = X2APIC_BASE | if i == 0 { 1 << 8 } else { 0 };
    e.write_register(env, 0x1B, base).unwrap();
    e.write_register(env, 0x80F, 0x1FF).unwrap();
    let _ = e.handle_apic_call(env, ApicCall::ConfigureVector(0x300));
    e
}

// ------------------------------------------------------- measured functions

#[inline(never)]
fn measure_before_run(e: &mut VcpuEngine, env: &E<'_>, vmsa: &mut VmsaPage) -> bool {
    e.before_run(env, vmsa).is_ok()
}

// Arguments and results pass in registers; the caller black-boxes them.
#[inline(never)]
fn measure_eoi(e: &mut VcpuEngine, env: &E<'_>, value: u64) -> bool {
    e.write_register(env, 0x80B, value).is_ok()
}

#[inline(never)]
fn measure_eoi_protocol(e: &mut VcpuEngine, env: &E<'_>, call: ApicCall) -> CallOutcome {
    e.handle_apic_call(env, call)
}

/// Every ICR path (to vCPU 1, to vCPU 63, the broadcast) runs this one;
/// the script runs them separately.
#[inline(never)]
fn measure_icr(e: &mut VcpuEngine, env: &E<'_>, icr: u64) -> bool {
    e.write_register(env, 0x830, icr).is_ok()
}

#[inline(never)]
fn measure_highest(apic: &LocalApic) -> Option<u8> {
    apic.highest_deliverable()
}

// ------------------------------------------------------------------- paths

struct World {
    platform: CountingPlatform,
    slots: Vec<VcpuShared>,
    vm: VmShared,
    doorbell: Box<DoorbellPage>,
    caa: AtomicU8,
}

impl World {
    fn new() -> Self {
        Self {
            platform: CountingPlatform::default(),
            slots: (0..VCPUS).map(|_| VcpuShared::new()).collect(),
            vm: VmShared::new(),
            doorbell: Box::new(DoorbellPage::new()),
            caa: AtomicU8::new(0),
        }
    }

    fn env(&self) -> E<'_> {
        Env {
            platform: &self.platform,
            fabric: Fabric::new(&self.slots, &self.vm),
            doorbell: &self.doorbell,
            caa_no_eoi: Some(&self.caa),
        }
    }
}

/// Runs `path` `n` times; checks once that it does what it says.
fn run(path: &str, n: u64) {
    let w = World::new();
    let env = w.env();
    let mut vmsa = Box::new(VmsaPage::new());
    vmsa.set_rflags(RFLAGS_IF);
    let mut e0 = engine(0, &env, &mut vmsa);
    let mut others: Vec<VcpuEngine> = (1..VCPUS)
        .map(|i| engine(i, &env, &mut VmsaPage::new()))
        .collect();
    black_box(&mut others);
    let host = w.doorbell.host();
    match path {
        // Host vector in the doorbell -> EVENTINJ: the whole before_run.
        // Set-up: the modelled delivery, exit and EOI of the previous one.
        "before_run" => {
            for i in 0..n {
                if i > 0 {
                    vmsa.set_event_inj(EventInj::new());
                    vmsa.set_exit_code(ExitCode::VMGEXIT);
                    e0.after_exit(&env, &mut *vmsa).unwrap();
                    e0.write_register(&env, 0x80B, 0).unwrap();
                }
                host.post_vector(VMPL, HOST_VECTOR).unwrap();
                assert!(black_box(measure_before_run(&mut e0, &env, &mut vmsa)));
                assert_eq!(vmsa.event_inj(), EventInj::external_interrupt(HOST_VECTOR));
            }
        }
        // Guest EOI with one edge vector in service.
        "eoi" | "eoi_protocol" => {
            for _ in 0..n {
                e0.apic_mut().request(HOST_VECTOR, Trigger::Edge);
                assert!(e0.apic_mut().acknowledge(HOST_VECTOR));
                if path == "eoi" {
                    assert!(black_box(measure_eoi(&mut e0, &env, black_box(0))));
                } else {
                    let call = black_box(ApicCall::WriteRegister {
                        msr: 0x80B,
                        value: 0,
                    });
                    let r = measure_eoi_protocol(&mut e0, &env, call);
                    assert_eq!(black_box(r), CallOutcome::Done(CallResult::SUCCESS));
                }
                assert!(e0.apic().isr().is_empty());
            }
        }
        // Fixed IPI to one vCPU, physical destination, its mailbox empty.
        "icr_1" | "icr_63" => {
            let dest: usize = if path == "icr_1" { 1 } else { 63 };
            for _ in 0..n {
                let before = w.platform.hv_ipis.get();
                let icr = ((dest as u64) << 32) | IPI_VECTOR;
                assert!(black_box(measure_icr(&mut e0, &env, black_box(icr))));
                assert_eq!(w.platform.hv_ipis.get(), before + 1);
                assert!(w.slots[dest].mailbox().drain().contains(IPI_VECTOR as u8));
            }
        }
        // Highest deliverable with every legal vector in IRR.
        "highest" => {
            let mut a = e0.apic().clone();
            for v in 16..=255u8 {
                a.request(v, Trigger::Edge);
            }
            for _ in 0..n {
                assert_eq!(measure_highest(black_box(&a)), Some(255));
            }
        }
        // Broadcast (all excluding self) to the 63 others, every mailbox
        // empty, so every target needs waking.
        "broadcast" => {
            for _ in 0..n {
                assert!(black_box(measure_icr(
                    &mut e0,
                    &env,
                    black_box(BROADCAST_ICR)
                )));
                for s in &w.slots[1..] {
                    assert!(s.mailbox().drain().contains(BROADCAST_VECTOR as u8));
                }
            }
        }
        other => panic!("unknown path {other}"),
    }
}

/// GHCB calls per broadcast ICR write (every target needs waking).
fn ghcb_per_broadcast() -> f64 {
    let w = World::new();
    let env = w.env();
    let mut vmsa = VmsaPage::new();
    let mut e0 = engine(0, &env, &mut vmsa);
    let _others: Vec<VcpuEngine> = (1..VCPUS)
        .map(|i| engine(i, &env, &mut VmsaPage::new()))
        .collect();
    const N: u64 = 10;
    let before = w.platform.hv_ipis.get();
    for _ in 0..N {
        assert!(black_box(measure_icr(
            &mut e0,
            &env,
            black_box(BROADCAST_ICR)
        )));
        for s in &w.slots[1..] {
            s.mailbox().drain();
        }
    }
    (w.platform.hv_ipis.get() - before) as f64 / N as f64
}

const PATHS: [&str; 7] = [
    "before_run",
    "eoi",
    "eoi_protocol",
    "icr_1",
    "icr_63",
    "highest",
    "broadcast",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd] if cmd == "ghcb" => println!("{}", ghcb_per_broadcast()),
        [cmd] if cmd == "list" => println!("{}", PATHS.join(" ")),
        [path, n] if PATHS.contains(&path.as_str()) => run(path, n.parse().unwrap()),
        // `cargo bench` (or no argument): every path once, as a check.
        _ => {
            for path in PATHS {
                run(path, 2);
            }
            println!(
                "instr: every path checked; GHCB calls per broadcast: {} (counts: make bench-instr)",
                ghcb_per_broadcast()
            );
        }
    }
}
