//! Fuzzes one local APIC through every entry point: x2APIC MSRs, xAPIC MMIO,
//! APIC_BASE, requests (local and host), LINT pins, deliveries, EOIs, TPR,
//! IPIs received, time steps and save/restore. Nothing may panic, and after
//! every step the invariants hold: ISR classes strictly increase (at most one
//! in-service vector per class), PPR follows its formula (Intel SDM vol. 3A
//! §11.8.3.1), nothing below 16 in IRR or ISR, the highest deliverable
//! vector is the highest IRR vector above PPR, and save/restore round-trips.
#![no_main]

use apic::{ApicConfig, ApicMode, Ipi, Lint, LocalApic, MSR_APIC_BASE, MSR_PPR, MSR_TPR, Trigger};
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Msr {
    /// 0x800 + n.
    X2(u8),
    ApicBase,
    TscDeadline,
    Raw(u32),
}

impl Msr {
    fn number(&self) -> u32 {
        match *self {
            Msr::X2(n) => 0x800 + u32::from(n),
            Msr::ApicBase => 0x1B,
            Msr::TscDeadline => 0x6E0,
            Msr::Raw(m) => m,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    ReadMsr(Msr),
    WriteMsr(Msr, u64),
    /// Offset is `n << 4` mostly; `Raw` tests misaligned ones.
    ReadMmio(u8),
    WriteMmio(u8, u32),
    RawMmio(u32, u32),
    SetApicBase(u64),
    /// A legal mode change, so the fuzzer reaches every mode often.
    Mode(u8),
    Request(u8, bool),
    HostRequest(u8, bool),
    AllowHost(u8, bool),
    AllowAllHost(bool),
    Lint(bool),
    Deliver,
    Acknowledge(u8),
    Unacknowledge(u8),
    Eoi,
    SetTpr(u8),
    Advance(u32, u8),
    Poll,
    SetTscDeadline(u64),
    AcceptIpi(u64, bool),
    InitReset,
    SaveRestore,
}

#[derive(Arbitrary, Debug)]
struct Input {
    apic_id: u32,
    bsp: bool,
    ticks_per_bus_cycle: u32,
    directed_eoi: bool,
    start: u64,
    ops: Vec<Op>,
}

fn check(a: &LocalApic, now: u64) {
    let irr = a.irr();
    let isr = a.isr();
    assert!(irr.iter().all(|v| v >= 16), "IRR below 16: {irr:?}");
    assert!(isr.iter().all(|v| v >= 16), "ISR below 16: {isr:?}");
    let mut last: Option<u8> = None;
    for v in isr.iter() {
        if let Some(l) = last {
            assert!(v >> 4 > l >> 4, "ISR classes not increasing: {isr:?}");
        }
        last = Some(v);
    }
    let isrv = isr.highest().unwrap_or(0);
    let tpr = a.tpr();
    let ppr = if tpr >> 4 >= isrv >> 4 {
        tpr
    } else {
        isrv & 0xF0
    };
    assert_eq!(a.ppr(), ppr);
    match a.highest_deliverable() {
        Some(v) => {
            assert_eq!(irr.highest(), Some(v));
            assert!(v >> 4 > ppr >> 4);
        }
        None => assert!(irr.highest().is_none_or(|v| v >> 4 <= ppr >> 4)),
    }
    if a.mode() == ApicMode::X2Apic {
        assert_eq!(a.read_msr(MSR_PPR, now), Ok(u64::from(ppr)));
        assert_eq!(a.read_msr(MSR_TPR, now), Ok(u64::from(tpr)));
    }
    let s = a.save();
    assert_eq!(LocalApic::restore(&s).save(), s);
}

fuzz_target!(|input: Input| {
    let mut a = LocalApic::new(ApicConfig {
        apic_id: input.apic_id,
        bsp: input.bsp,
        ticks_per_bus_cycle: input.ticks_per_bus_cycle,
        directed_eoi: input.directed_eoi,
    });
    let mut now = input.start;
    for op in &input.ops {
        match op {
            Op::ReadMsr(m) => {
                let _ = a.read_msr(m.number(), now);
            }
            Op::WriteMsr(m, v) => {
                let _ = a.write_msr(m.number(), *v, now);
            }
            Op::ReadMmio(n) => {
                let _ = a.read_mmio(u32::from(*n) << 4, now);
            }
            Op::WriteMmio(n, v) => {
                let _ = a.write_mmio(u32::from(*n) << 4, *v, now);
            }
            Op::RawMmio(off, v) => {
                let _ = a.read_mmio(*off, now);
                let _ = a.write_mmio(*off, *v, now);
            }
            Op::SetApicBase(v) => {
                let _ = a.set_apic_base(*v);
            }
            Op::Mode(m) => {
                let base = 0xFEE0_0000u64;
                let v = match m % 3 {
                    0 => base,
                    1 => base | (1 << 11),
                    _ => base | (1 << 11) | (1 << 10),
                };
                let _ = a.write_msr(MSR_APIC_BASE, v, now);
            }
            Op::Request(v, l) => {
                a.request(*v, if *l { Trigger::Level } else { Trigger::Edge });
            }
            Op::HostRequest(v, l) => {
                a.request_from_host(*v, if *l { Trigger::Level } else { Trigger::Edge });
            }
            Op::AllowHost(v, on) => a.set_host_vector_allowed(*v, *on),
            Op::AllowAllHost(on) => a.set_all_host_vectors_allowed(*on),
            Op::Lint(one) => {
                a.local_interrupt(if *one { Lint::Lint1 } else { Lint::Lint0 });
            }
            Op::Deliver => {
                if let Some(v) = a.highest_deliverable() {
                    assert!(a.acknowledge(v), "deliverable {v:#x} refused");
                }
            }
            Op::Acknowledge(v) => {
                a.acknowledge(*v);
            }
            Op::Unacknowledge(v) => a.unacknowledge(*v),
            Op::Eoi => {
                let before = a.isr().highest();
                let e = a.eoi();
                assert_eq!(e.map(|e| e.vector), before);
            }
            Op::SetTpr(t) => a.set_tpr(*t),
            Op::Advance(dt, shift) => {
                now = now.saturating_add(u64::from(*dt) << (shift % 32));
                a.poll_timer(now);
            }
            Op::Poll => {
                a.poll_timer(now);
                if let Some(d) = a.next_timer_deadline() {
                    assert!(d > now, "deadline {d} not after {now} after a poll");
                }
            }
            Op::SetTscDeadline(d) => {
                a.set_tsc_deadline(*d);
            }
            Op::AcceptIpi(icr, x2) => {
                let mode = if *x2 {
                    ApicMode::X2Apic
                } else {
                    ApicMode::XApic
                };
                let ipi = Ipi::decode(*icr, mode, 0);
                let _ = ipi.destination.matches(0, &a.address());
                a.accept_ipi(&ipi);
            }
            Op::InitReset => a.init_reset(),
            Op::SaveRestore => a = LocalApic::restore(&a.save()),
        }
        check(&a, now);
    }
});
