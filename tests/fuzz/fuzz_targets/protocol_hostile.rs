//! Hostile SVSM APIC protocol call sequences against the real engine: any
//! RAX/RCX/RDX/R8 from any of a few vCPUs (biased towards the APIC
//! protocol's calls and registers), IPIs between them, runs with fuzzed
//! hardware and guest behaviour (lazy EOIs, cut deliveries, shadows, hostile
//! EXITINTINFO) and time steps. Nothing may panic; result codes are the
//! protocol's; BUSY is never cleared by a call, clear at VMRUN, set after
//! the exit; EVENTINJ and V_IRQ are never illegal; the APIC never holds a
//! vector below 16, its ISR stays nested, one NMI is pending at most.
#![no_main]

use arbitrary::Arbitrary;
use altinj_kernel::protocol::ResultCode;
use libfuzzer_sys::fuzz_target;
use sim::fuzzing::{Harness, RunChoice};

#[derive(Arbitrary, Debug)]
enum Op {
    /// An APIC protocol call (RAX = 3 << 32 | call) on an x2APIC MSR.
    Msr {
        write: bool,
        reg: u8,
        value: u64,
    },
    /// APIC_BASE or TSC_DEADLINE.
    Special {
        write: bool,
        deadline: bool,
        value: u64,
    },
    Configure(u64),
    ConfigureVector(u64),
    /// ICR write with this value (IPIs to the others, shorthands, modes).
    Icr(u64),
    /// Anything at all.
    Raw {
        rax: u64,
        rcx: u64,
        rdx: u64,
        r8: u64,
    },
    Run {
        cut: bool,
        open: bool,
        v_tpr: u8,
        eoi: bool,
        shadow: bool,
        exit_int_info: Option<u64>,
    },
    Time(u32),
}

#[derive(Arbitrary, Debug)]
struct Input {
    vcpus: u8,
    ops: Vec<(u8, Op)>,
}

const APIC: u64 = 3 << 32;

fn known(code: ResultCode) -> bool {
    matches!(
        code,
        ResultCode::Success
            | ResultCode::UnsupportedProtocol
            | ResultCode::UnsupportedCall
            | ResultCode::InvalidAddress
            | ResultCode::InvalidParameter
            | ResultCode::InvalidRequest
            | ResultCode::CannotRegister
    )
}

fuzz_target!(|input: Input| {
    let Ok(mut h) = Harness::new(usize::from(input.vcpus % 4) + 1) else {
        return;
    };
    let n = h.n();
    for (who, op) in input.ops.into_iter().take(256) {
        let i = usize::from(who) % n;
        let result = match op {
            Op::Msr { write, reg, value } => {
                let msr = 0x800 | u64::from(reg);
                if write {
                    h.call(i, APIC | 3, msr, value, 0)
                } else {
                    h.call(i, APIC | 2, msr, 0, 0)
                }
            }
            Op::Special {
                write,
                deadline,
                value,
            } => {
                let msr = if deadline { 0x6E0 } else { 0x1B };
                h.call(i, APIC | if write { 3 } else { 2 }, msr, value, 0)
            }
            Op::Configure(rcx) => h.call(i, APIC | 1, rcx % 8, 0, 0),
            Op::ConfigureVector(rcx) => h.call(i, APIC | 4, rcx, 0, 0),
            Op::Icr(value) => h.call(i, APIC | 3, 0x830, value, 0),
            Op::Raw { rax, rcx, rdx, r8 } => h.call(i, rax, rcx, rdx, r8),
            Op::Run {
                cut,
                open,
                v_tpr,
                eoi,
                shadow,
                exit_int_info,
            } => {
                let choice = RunChoice {
                    cut,
                    open_window: open,
                    v_tpr,
                    guest_eoi: eoi,
                    exit_int_info,
                    busy: false,
                    shadow,
                };
                if let Err(e) = h.run(i, choice) {
                    panic!("{e}");
                }
                continue;
            }
            Op::Time(dt) => {
                h.now = h.now.saturating_add(u64::from(dt));
                continue;
            }
        };
        match result {
            Ok(res) => assert!(known(res.code), "unexpected result {:?}", res.code),
            Err(e) if e == "stopped" => {}
            Err(e) => panic!("{e}"),
        }
        let _ = h.effects();
    }
});
