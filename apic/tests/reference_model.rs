//! Property tests: the APIC against small, obviously correct reference
//! models (Intel SDM vol. 3A, spec §6).
//!
//! - IRR/ISR/PPR (§11.8.3-11.8.5): random requests, acknowledges (of the
//!   highest deliverable vector), recalls of a delivery, EOIs, TPR writes
//!   (direct and through the TPR MSR) and save/restore must produce the
//!   same delivered-vector sequence, the same EOI answers and the same PPR
//!   (the APIC caches PPR, so every way TPR or ISR changes is exercised).
//! - Timer (§11.5.4): a tick-by-tick simulation of the counter over every
//!   mode, divider, mode switch (running or expired), initial-count and
//!   TSC-deadline write; the current count, the deadline and the timer
//!   interrupt must agree with it at every call that gives the APIC `now`.
//! - ESR (§11.5.2, §11.5.3 Table 11-6): every illegal-vector path (ICR,
//!   SELF_IPI, requests, LVT writes and firings) and the newly-set rule of
//!   the error interrupt, against a latch-and-compare model.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    missing_docs
)]

use altinj_apic::{
    ApicConfig, EoiInfo, LocalApic, LocalInterrupt, MSR_APIC_BASE, MSR_ESR, MSR_ICR, MSR_LVT_CMCI,
    MSR_LVT_ERROR, MSR_LVT_TIMER, MSR_SELF_IPI, MSR_SVR, MSR_TIMER_CURRENT, MSR_TIMER_DIVIDE,
    MSR_TIMER_INITIAL, MSR_TPR, RequestOutcome, Trigger, WriteEffect, timer_divisor,
};
use proptest::prelude::*;

/// The reference: plain arrays and linear scans, straight from the SDM text.
struct Model {
    irr: [bool; 256],
    isr: [bool; 256],
    tmr: [bool; 256],
    tpr: u8,
}

impl Model {
    fn new() -> Self {
        Self {
            irr: [false; 256],
            isr: [false; 256],
            tmr: [false; 256],
            tpr: 0,
        }
    }

    fn highest(set: &[bool; 256]) -> Option<usize> {
        (0..256).rev().find(|&v| set[v])
    }

    /// PPR: TPR if its class is at least the highest in-service class, else
    /// that class (§11.8.3.1).
    fn ppr(&self) -> u8 {
        let isrv = Self::highest(&self.isr).unwrap_or(0) as u8;
        if self.tpr >> 4 >= isrv >> 4 {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    fn request(&mut self, v: u8, level: bool) -> RequestOutcome {
        if v < 16 {
            return RequestOutcome::Illegal;
        }
        self.tmr[v as usize] = level;
        if self.irr[v as usize] {
            RequestOutcome::Coalesced
        } else {
            self.irr[v as usize] = true;
            RequestOutcome::Accepted
        }
    }

    /// Highest pending vector whose class is above PPR's class.
    fn deliverable(&self) -> Option<u8> {
        let v = Self::highest(&self.irr)? as u8;
        (v >> 4 > self.ppr() >> 4).then_some(v)
    }

    fn deliver(&mut self) -> Option<u8> {
        let v = self.deliverable()?;
        self.irr[v as usize] = false;
        self.isr[v as usize] = true;
        Some(v)
    }

    /// A delivery did not happen: ISR -> IRR.
    fn undeliver(&mut self, v: u8) {
        if self.isr[v as usize] {
            self.isr[v as usize] = false;
            self.irr[v as usize] = true;
        }
    }

    fn eoi(&mut self) -> Option<(u8, bool)> {
        let v = Self::highest(&self.isr)?;
        self.isr[v] = false;
        Some((v as u8, self.tmr[v]))
    }
}

#[derive(Clone, Debug)]
enum Op {
    Request(u8, bool),
    Deliver,
    Eoi,
    Tpr(u8),
    TprMsr(u8),
    /// Recall the most recently delivered vector.
    Undeliver,
    SaveRestore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u8>(), any::<bool>()).prop_map(|(v, l)| Op::Request(v, l)),
        3 => Just(Op::Deliver),
        2 => Just(Op::Eoi),
        1 => any::<u8>().prop_map(Op::Tpr),
        1 => any::<u8>().prop_map(Op::TprMsr),
        1 => Just(Op::Undeliver),
        1 => Just(Op::SaveRestore),
    ]
}

fn enabled_apic() -> LocalApic {
    let mut a = LocalApic::new(ApicConfig {
        bsp: true,
        ..ApicConfig::default()
    });
    a.write_msr(MSR_APIC_BASE, 0xFEE0_0000 | (1 << 11) | (1 << 10), 0)
        .unwrap();
    a.write_msr(MSR_SVR, 0x1FF, 0).unwrap();
    a
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn apic_matches_reference_model(ops in proptest::collection::vec(op(), 1..300)) {
        let mut apic = enabled_apic();
        let mut model = Model::new();
        let mut got = Vec::new();
        let mut want = Vec::new();
        for op in &ops {
            match *op {
                Op::Request(v, level) => {
                    let trig = if level { Trigger::Level } else { Trigger::Edge };
                    prop_assert_eq!(apic.request(v, trig), model.request(v, level));
                }
                Op::Deliver => {
                    if let Some(v) = apic.highest_deliverable() {
                        prop_assert!(apic.acknowledge(v));
                        got.push(v);
                    }
                    if let Some(v) = model.deliver() {
                        want.push(v);
                    }
                }
                Op::Eoi => {
                    let e = apic.eoi().map(|EoiInfo { vector, level, .. }| (vector, level));
                    prop_assert_eq!(e, model.eoi());
                }
                Op::Tpr(t) => {
                    apic.set_tpr(t);
                    model.tpr = t;
                }
                Op::TprMsr(t) => {
                    apic.write_msr(MSR_TPR, u64::from(t), 0).unwrap();
                    model.tpr = t;
                }
                Op::Undeliver => {
                    if let Some(v) = got.pop() {
                        apic.unacknowledge(v);
                        model.undeliver(v);
                        want.pop();
                    }
                }
                Op::SaveRestore => apic = LocalApic::restore(&apic.save()),
            }
            prop_assert_eq!(apic.ppr(), model.ppr());
            prop_assert_eq!(apic.highest_deliverable(), model.deliverable());
            prop_assert_eq!(&got, &want);
        }
    }
}

// ---------------------------------------------------------------- timer

const TIMER_VECTOR: u8 = 0xEC;

/// The timer, one tick at a time, as the SDM describes the counter: the
/// count drops by one every `divisor` ticks; at 0 a one-shot stops and a
/// periodic reloads the initial count; a TSC deadline fires once reached.
/// Spec §6: a mode switch one-shot <-> periodic keeps the count; entering
/// or leaving TSC-deadline clears the count, the initial count and the
/// deadline. A divide write restarts the prescaler (the count carries on).
struct TimerModel {
    now: u64,
    mode: u8,
    masked: bool,
    divide: u32,
    initial: u32,
    count: u32,
    /// Ticks since the last decrement.
    sub: u64,
    tsc: u64,
    pending: bool,
}

impl TimerModel {
    fn period(&self) -> u64 {
        u64::from(timer_divisor(self.divide))
    }

    fn fire(&mut self) {
        if !self.masked {
            self.pending = true;
        }
    }

    fn tick(&mut self) {
        self.now += 1;
        if self.mode == 2 {
            if self.tsc != 0 && self.now >= self.tsc {
                self.tsc = 0;
                self.fire();
            }
        } else if self.count > 0 {
            self.sub += 1;
            if self.sub == self.period() {
                self.sub = 0;
                self.count -= 1;
                if self.count == 0 {
                    self.fire();
                    if self.mode == 1 {
                        self.count = self.initial;
                    }
                }
            }
        }
    }

    fn deadline(&self) -> Option<u64> {
        if self.mode == 2 {
            (self.tsc != 0).then_some(self.tsc)
        } else if self.count > 0 {
            Some(self.now + u64::from(self.count) * self.period() - self.sub)
        } else {
            None
        }
    }

    fn current(&self) -> u64 {
        if self.mode == 2 {
            0
        } else {
            u64::from(self.count)
        }
    }

    fn set_lvt(&mut self, mode: u8, masked: bool) {
        let mode = if mode == 3 { self.mode } else { mode };
        if mode != self.mode && (mode == 2 || self.mode == 2) {
            self.count = 0;
            self.initial = 0;
            self.tsc = 0;
        }
        self.mode = mode;
        self.masked = masked;
    }
}

#[derive(Clone, Debug)]
enum TimerOp {
    Lvt(u8, bool),
    Divide(u8),
    Initial(u32),
    /// Deadline relative to now (may be past); 0 disarms.
    TscDeadline(u16),
    Advance(u16),
    Poll,
    ReadCount,
    Take,
}

fn timer_op() -> impl Strategy<Value = TimerOp> {
    prop_oneof![
        2 => (0u8..4, proptest::bool::weighted(0.2)).prop_map(|(m, k)| TimerOp::Lvt(m, k)),
        1 => (0u8..8).prop_map(TimerOp::Divide),
        2 => (0u32..20).prop_map(TimerOp::Initial),
        1 => any::<u16>().prop_map(|d| TimerOp::TscDeadline(d % 400)),
        4 => (0u16..300).prop_map(TimerOp::Advance),
        2 => Just(TimerOp::Poll),
        3 => Just(TimerOp::ReadCount),
        2 => Just(TimerOp::Take),
    ]
}

/// Divide-configuration code for index 0-7 (Figure 11-10 order).
fn divide_code(i: u8) -> u32 {
    [0u32, 1, 2, 3, 8, 9, 0xA, 0xB][usize::from(i % 8)]
}

fn lvt_timer(mode: u8, masked: bool) -> u64 {
    u64::from(TIMER_VECTOR) | (u64::from(mode) << 17) | if masked { 1 << 16 } else { 0 }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn timer_matches_reference_model(start in 0u64..1000, ops in proptest::collection::vec(timer_op(), 1..80)) {
        let mut apic = enabled_apic();
        let mut m = TimerModel {
            now: start, mode: 0, masked: false, divide: 0, initial: 0, count: 0, sub: 0, tsc: 0, pending: false,
        };
        apic.write_msr(MSR_LVT_TIMER, lvt_timer(0, false), start).unwrap();
        for op in &ops {
            let now = m.now;
            // Whether the APIC was given `now` by this op (it then must agree).
            let mut settled = true;
            match *op {
                TimerOp::Lvt(mode, masked) => {
                    apic.write_msr(MSR_LVT_TIMER, lvt_timer(mode, masked), now).unwrap();
                    m.set_lvt(mode, masked);
                }
                TimerOp::Divide(i) => {
                    apic.write_msr(MSR_TIMER_DIVIDE, u64::from(divide_code(i)), now).unwrap();
                    m.divide = divide_code(i);
                    m.sub = 0;
                }
                TimerOp::Initial(v) => {
                    apic.write_msr(MSR_TIMER_INITIAL, u64::from(v), now).unwrap();
                    if m.mode != 2 {
                        m.initial = v;
                        m.count = v;
                        m.sub = 0;
                    }
                }
                TimerOp::TscDeadline(d) => {
                    let deadline = if d == 0 { 0 } else { (now + u64::from(d)).saturating_sub(50).max(1) };
                    apic.set_tsc_deadline(deadline, now);
                    if m.mode == 2 {
                        m.tsc = deadline;
                        if deadline != 0 && deadline <= now {
                            m.tsc = 0;
                            m.fire();
                        }
                    }
                }
                TimerOp::Advance(dt) => {
                    for _ in 0..dt {
                        m.tick();
                    }
                    settled = false;
                }
                TimerOp::Poll => {
                    apic.poll_timer(now);
                }
                TimerOp::ReadCount => {
                    let count = apic.read_msr(MSR_TIMER_CURRENT, now).unwrap();
                    prop_assert_eq!(count, m.current(), "TMCCT at {}", now);
                }
                TimerOp::Take => {
                    apic.poll_timer(now);
                    prop_assert_eq!(apic.irr().contains(TIMER_VECTOR), m.pending);
                    if apic.acknowledge(TIMER_VECTOR) {
                        apic.eoi();
                    }
                    m.pending = false;
                }
            }
            if settled {
                prop_assert_eq!(apic.irr().contains(TIMER_VECTOR), m.pending, "IRR at {}", now);
                prop_assert_eq!(apic.next_timer_deadline(), m.deadline(), "deadline at {}", now);
                if let Some(d) = apic.next_timer_deadline() {
                    prop_assert!(d > now, "deadline {} not after {}", d, now);
                }
            }
        }
    }
}

// ------------------------------------------------------------------ ESR

const SEND: u32 = 1 << 5;
const RECEIVE: u32 = 1 << 6;

/// ESR latch and the error interrupt: illegal vectors latch bit 5 at a
/// send (ICR fixed / lowest priority, SELF_IPI) or bit 6 at a receive
/// (requests, LVT firings, LVT writes of fixed entries); the error
/// interrupt is raised when a bit is newly latched, the ESR write shows the
/// latch and rearms.
struct EsrModel {
    pending: u32,
    visible: u32,
    error_lvt: u32,
    irr: [bool; 256],
}

impl EsrModel {
    fn latch(&mut self, bits: u32) {
        let new = bits & !self.pending;
        self.pending |= bits;
        let vector = (self.error_lvt & 0xFF) as usize;
        if new != 0 && self.error_lvt & (1 << 16) == 0 {
            if vector < 16 {
                self.pending |= RECEIVE;
            } else {
                self.irr[vector] = true;
            }
        }
    }

    fn request(&mut self, v: u8) {
        if v < 16 {
            self.latch(RECEIVE);
        } else {
            self.irr[usize::from(v)] = true;
        }
    }
}

#[derive(Clone, Debug)]
enum EsrOp {
    SelfIpi(u8),
    /// Shorthand, delivery mode, vector.
    Icr(u8, u8, u8),
    Request(u8),
    /// LVT (CMCI, timer, error), vector, delivery mode, masked.
    Lvt(u8, u8, u8, bool),
    Pmc,
    EsrWrite,
    Drain,
}

fn small_vector() -> impl Strategy<Value = u8> {
    prop_oneof![0u8..20, 0xF0u8..=0xFF]
}

fn esr_op() -> impl Strategy<Value = EsrOp> {
    prop_oneof![
        2 => small_vector().prop_map(EsrOp::SelfIpi),
        2 => (0u8..4, 0u8..8, small_vector()).prop_map(|(s, m, v)| EsrOp::Icr(s, m, v)),
        2 => small_vector().prop_map(EsrOp::Request),
        3 => (0u8..3, small_vector(), 0u8..8, proptest::bool::weighted(0.3)).prop_map(|(l, v, m, k)| EsrOp::Lvt(l, v, m, k)),
        1 => Just(EsrOp::Pmc),
        2 => Just(EsrOp::EsrWrite),
        2 => Just(EsrOp::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn esr_matches_reference_model(ops in proptest::collection::vec(esr_op(), 1..60)) {
        let mut apic = enabled_apic();
        let mut m = EsrModel { pending: 0, visible: 0, error_lvt: 1 << 16, irr: [false; 256] };
        // The PMC entry raises fixed vector 0x05 (illegal) when fired.
        apic.write_msr(altinj_apic::MSR_LVT_PMC, 0x05, 0).unwrap();
        m.latch(RECEIVE);
        for op in &ops {
            match *op {
                EsrOp::SelfIpi(v) => {
                    prop_assert_eq!(apic.write_msr(MSR_SELF_IPI, u64::from(v), 0), Ok(WriteEffect::None));
                    if v < 16 { m.latch(SEND) } else { m.request(v) }
                }
                EsrOp::Icr(shorthand, mode, v) => {
                    let icr = (1u64 << 32) | (u64::from(shorthand) << 18) | (u64::from(mode) << 8) | u64::from(v);
                    let effect = apic.write_msr(MSR_ICR, icr, 0).unwrap();
                    let illegal = mode <= 1 && v < 16;
                    prop_assert_eq!(matches!(effect, WriteEffect::SendIpi(_)), !illegal);
                    if illegal {
                        m.latch(SEND);
                    }
                }
                EsrOp::Request(v) => {
                    apic.request(v, Trigger::Edge);
                    m.request(v);
                }
                EsrOp::Lvt(which, v, mode, masked) => {
                    let msr = [MSR_LVT_CMCI, MSR_LVT_TIMER, MSR_LVT_ERROR][usize::from(which)];
                    // Timer (one-shot, never started) and error entries have
                    // no delivery mode: always fixed.
                    let mode = if which == 0 { mode } else { 0 };
                    let value = u32::from(v) | (u32::from(mode) << 8) | if masked { 1 << 16 } else { 0 };
                    apic.write_msr(msr, u64::from(value), 0).unwrap();
                    if which == 2 {
                        m.error_lvt = value;
                    }
                    if mode == 0 && v < 16 {
                        m.latch(RECEIVE);
                    }
                }
                EsrOp::Pmc => {
                    apic.local_interrupt(LocalInterrupt::Pmc);
                    m.latch(RECEIVE);
                }
                EsrOp::EsrWrite => {
                    apic.write_msr(MSR_ESR, 0, 0).unwrap();
                    m.visible = m.pending;
                    m.pending = 0;
                }
                EsrOp::Drain => {
                    while let Some(v) = apic.highest_deliverable() {
                        prop_assert!(apic.acknowledge(v));
                        apic.eoi();
                    }
                    m.irr = [false; 256];
                }
            }
            prop_assert_eq!(apic.pending_esr(), m.pending, "latched ESR after {:?}", op);
            prop_assert_eq!(apic.read_msr(MSR_ESR, 0).unwrap(), u64::from(m.visible));
            let irr: Vec<u8> = apic.irr().iter().collect();
            let want: Vec<u8> = (0..=255u8).filter(|v| m.irr[usize::from(*v)]).collect();
            prop_assert_eq!(irr, want, "IRR after {:?}", op);
        }
    }
}
