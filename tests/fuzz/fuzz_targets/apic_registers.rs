//! Fuzzes one local APIC of any CPU model (x2APIC or not, MAXPHYADDR, CMCI,
//! directed EOI) through every entry point: x2APIC MSRs, xAPIC MMIO,
//! APIC_BASE, requests (local and host), the LVT sources (LINT, thermal,
//! PMC, CMCI), deliveries, EOIs, TPR, IPIs received, time steps and
//! save/restore. Nothing may panic, and after every step the invariants
//! hold: ISR classes strictly increase (at most one in-service vector per
//! class), PPR follows its formula (Intel SDM vol. 3A §11.8.3.1), nothing
//! below 16 in IRR or ISR, the highest deliverable vector is the highest IRR
//! vector above PPR, save/restore round-trips, the model's limits hold (no
//! x2APIC mode without x2APIC, no APIC_BASE bit at or above MAXPHYADDR, the
//! LVT CMCI register only with CMCI), and after a call that took `now` the
//! timer deadline is `None` or after `now`.
#![no_main]

use altinj_apic::{
    ApicConfig, ApicMode, Ipi, LocalApic, LocalInterrupt, MSR_APIC_BASE, MSR_LVT_CMCI, MSR_PPR,
    MSR_TPR, Trigger,
};
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
    Local(u8),
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
    x2apic: bool,
    max_phys_addr: u8,
    cmci: bool,
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
    let config = *a.config();
    assert!(config.x2apic || a.mode() != ApicMode::X2Apic, "x2APIC without x2APIC");
    let top = 1u64 << config.phys_addr_bits();
    assert!(a.apic_base() < top, "APIC_BASE {:#x} above MAXPHYADDR", a.apic_base());
    if let Some(d) = a.next_timer_deadline() {
        assert!(d > now, "deadline {d} not after {now}");
    }
    if a.mode() == ApicMode::X2Apic {
        let mut view = a.clone();
        assert_eq!(view.read_msr(MSR_PPR, now), Ok(u64::from(ppr)));
        assert_eq!(view.read_msr(MSR_TPR, now), Ok(u64::from(tpr)));
        assert_eq!(view.read_msr(MSR_LVT_CMCI, now).is_ok(), config.cmci);
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
        x2apic: input.x2apic,
        max_phys_addr: input.max_phys_addr,
        cmci: input.cmci,
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
            Op::Local(n) => {
                let source = match n % 5 {
                    0 => LocalInterrupt::Lint0,
                    1 => LocalInterrupt::Lint1,
                    2 => LocalInterrupt::Thermal,
                    3 => LocalInterrupt::Pmc,
                    _ => LocalInterrupt::Cmci,
                };
                a.local_interrupt(source);
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
                a.set_tsc_deadline(*d, now);
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
        // Time moves only in Advance, which polls: every op leaves the
        // APIC settled at `now`.
        check(&a, now);
    }
});
